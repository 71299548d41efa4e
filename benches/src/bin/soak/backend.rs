//! The backends: each is a child process (this binary with `--backend`), so killing one
//! with SIGKILL is a real crash: the kernel resets its connections and nothing says
//! goodbye. A backend serves the echo over SPIFFE mTLS with meshwork-core's
//! `FileWatcherSource`, so the harness rotates its identity by rewriting files, as a
//! node agent does.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshwork_core::identity::{Authorizer, FileWatcherSource, MtlsConfig, SvidSource};
use meshwork_xds::bootstrap::FileWatcherConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::Error;

/// How often a backend looks at its identity files.
const REFRESH: Duration = Duration::from_millis(500);

/// How long a started backend may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a backend may take to answer a question.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The identity files every backend watches, in the directory the harness names.
pub(crate) const CERT: &str = "cert.pem";
pub(crate) const KEY: &str = "key.pem";
pub(crate) const CA: &str = "ca.pem";

/// The one question the harness asks a backend: how many calls it is serving.
const IN_FLIGHT: &str = "in-flight";

/// What `--backend` runs with.
#[derive(Debug)]
pub(crate) struct ChildArgs {
    pub(crate) name: String,
    pub(crate) listen: SocketAddr,
    pub(crate) certs: PathBuf,
    /// How long each call takes.
    pub(crate) work: Duration,
}

/// The child's `main`: serves until its stdin closes (the harness is gone) or it is killed.
pub(crate) fn child_main(args: ChildArgs) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = FileWatcherConfig::from_identity(args.certs.join(CERT), args.certs.join(KEY))
            .with_ca_certificate_file(args.certs.join(CA))
            .with_refresh_interval(REFRESH);
        let source: Arc<dyn SvidSource> = Arc::new(FileWatcherSource::start(&config)?);
        let trust_domain = source
            .snapshot()
            .svid
            .as_ref()
            .ok_or("the identity files hold no SVID")?
            .spiffe_id()
            .trust_domain()
            .clone();
        let tls = MtlsConfig::new(source.clone())
            .authorizer(Authorizer::MemberOf(trust_domain))
            .alpn_protocols(vec![b"h2".to_vec()])
            .server_config()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        // A restarted backend takes its old port back while the old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(args.listen)?;
        let listener = socket.listen(1024)?;
        println!("listening {}", listener.local_addr()?);
        let in_flight = Arc::new(AtomicUsize::new(0));
        tokio::spawn(crate::echo::serve(
            listener,
            Arc::new(tls),
            args.name.clone(),
            source.clone(),
            args.work,
            in_flight.clone(),
        ));
        // The harness's questions come on stdin, one a line; its end means the harness is
        // gone.
        tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lock().lines() {
                if line?.trim() == IN_FLIGHT {
                    println!("{IN_FLIGHT} {}", in_flight.load(Ordering::SeqCst));
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await??;
        Ok(())
    })
}

/// A running backend, seen from the harness.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    child: Child,
    /// Questions go here; the child exits when it closes.
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Backend {
    /// Starts backend `name` on `listen` (port 0: any) with the identity files in `certs`,
    /// each call taking `work`.
    pub(crate) async fn start(
        name: &str,
        listen: SocketAddr,
        certs: &Path,
        work: Duration,
    ) -> Result<Self, Error> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--backend")
            .arg(name)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--certs")
            .arg(certs)
            .arg("--work")
            .arg(format!("{}ms", work.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        match tokio::time::timeout(START_TIMEOUT, read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return Err(format!("backend {name} exited at start").into()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(format!("backend {name} did not start in {START_TIMEOUT:?}").into());
            }
        }
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("backend {name} said {line:?}"))?
            .parse()?;
        Ok(Self {
            name: name.to_owned(),
            addr,
            child,
            stdin,
            stdout,
        })
    }

    /// How many calls the backend is serving now.
    pub(crate) async fn in_flight(&mut self) -> Result<usize, Error> {
        self.stdin
            .write_all(format!("{IN_FLIGHT}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let mut line = String::new();
        read_line(&mut self.stdout, &mut line, ANSWER_TIMEOUT, &self.name).await?;
        Ok(line
            .trim()
            .strip_prefix(IN_FLIGHT)
            .ok_or_else(|| format!("backend {} said {line:?}", self.name))?
            .trim()
            .parse()?)
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(crate) async fn kill(mut self) -> Result<(), Error> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// Reads one line from backend `name` within `timeout`; its end is an error.
async fn read_line(
    from: &mut BufReader<ChildStdout>,
    line: &mut String,
    timeout: Duration,
    name: &str,
) -> Result<(), Error> {
    match tokio::time::timeout(timeout, from.read_line(line)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err(format!("backend {name} exited").into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(format!("backend {name} did not answer in {timeout:?}").into()),
    }
}
