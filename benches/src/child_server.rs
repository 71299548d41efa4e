//! A bench's xDS test server in a child process (the bench binary again, told its role by
//! an environment variable), so that the server's heap and CPU are not the measured
//! client's.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::server::{Snapshot, XdsTestServer};

/// The child's side: serves `snapshot` from a new `XdsTestServer` on a runtime of one
/// worker, prints the server's URI (the line [`ChildServer::spawn`] reads), then runs
/// `then` with the server, which stops when `then` returns.
///
/// # Panics
/// If the runtime or the server cannot be started (a bench's set-up).
pub fn serve<F, Fut>(snapshot: Snapshot, then: F)
where
    F: FnOnce(XdsTestServer) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let server = XdsTestServer::start().await.expect("the xDS test server");
        server.set_snapshot(snapshot);
        println!("{}", server.uri());
        std::io::stdout().flush().expect("stdout");
        then(server).await;
    });
}

/// A running child server: the process, its stdin (closing it stops the server) and its
/// stdout, past the first line, which was the server's URI.
pub struct ChildServer {
    /// The process.
    pub child: Child,
    /// Its stdin.
    pub to_child: ChildStdin,
    /// Its stdout, after the URI.
    pub from_child: BufReader<ChildStdout>,
    /// The URI the server printed first.
    pub uri: String,
}

impl ChildServer {
    /// Runs this binary again with `role` set to `value` in its environment, and reads the
    /// URI it prints first.
    ///
    /// # Panics
    /// If the process cannot be started or prints no first line (a bench's set-up).
    pub fn spawn(role: &str, value: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env(role, value)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server process");
        let to_child = child.stdin.take().expect("stdin");
        let mut from_child = BufReader::new(child.stdout.take().expect("stdout"));
        let mut uri = String::new();
        from_child.read_line(&mut uri).expect("the server's URI");
        Self {
            child,
            to_child,
            from_child,
            uri: uri.trim().to_owned(),
        }
    }

    /// A bootstrap naming the server, with node ID `node_id`.
    ///
    /// # Panics
    /// If the server printed an invalid URI.
    pub fn bootstrap(&self, node_id: &str) -> Bootstrap {
        Bootstrap::builder()
            .node_id(node_id)
            .server(XdsServer::new(self.uri.as_str()).expect("a server URI"))
            .build()
            .expect("a bootstrap")
    }

    /// Closes the server's stdin (which stops it) and waits for it to exit.
    pub fn stop(self) {
        let Self {
            mut child,
            to_child,
            ..
        } = self;
        drop(to_child);
        let _ = child.wait();
    }
}
