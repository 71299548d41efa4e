//! The Workload API source against a Workload API server nobody here wrote the client for:
//! `tests/peers/workload_api.py`, built on the workload.proto stubs py-spiffe ships. Both
//! SVIDs and then the CA rotate several times while four clients keep calling; no call
//! may fail and each new handshake must present the current certificate.
//!
//! Needs the interop venv (`MESHWORK_PEERS_VENV`, made by `scripts/test`).

mod support;

use meshwork_test_support::{peers, temp_dir};
use support::call;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshwork_core::identity::{Authorizer, MtlsConfig, SvidSource, WorkloadApiSource};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn workload_api_rotation_under_load_drops_no_call() {
    let venv = peers::venv();
    let dir = temp_dir("wl");
    let server_sock = dir.join("server.sock");
    let client_sock = dir.join("client.sock");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/workload_api.py");
    let mut child = tokio::process::Command::new(venv.join("bin/python"))
        .arg(script)
        .arg("--socket")
        .arg(format!(
            "{}=spiffe://example.org/ns/default/sa/server",
            server_sock.display()
        ))
        .arg("--socket")
        .arg(format!(
            "{}=spiffe://example.org/ns/default/sa/client",
            client_sock.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Workload API server");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("server ready in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some("ready"));

    let server_src = Arc::new(
        WorkloadApiSource::connect_to(&format!("unix:{}", server_sock.display()))
            .await
            .unwrap(),
    );
    let client_src = Arc::new(
        WorkloadApiSource::connect_to(&format!("unix:{}", client_sock.display()))
            .await
            .unwrap(),
    );
    let acceptor = TlsAcceptor::from(Arc::new(
        MtlsConfig::new(server_src.clone())
            .authorizer(Authorizer::Exact(
                "spiffe://example.org/ns/default/sa/client".parse().unwrap(),
            ))
            .server_config()
            .unwrap(),
    ));
    let connector = TlsConnector::from(Arc::new(
        MtlsConfig::new(client_src.clone())
            .authorizer(Authorizer::Exact(
                "spiffe://example.org/ns/default/sa/server".parse().unwrap(),
            ))
            .client_config()
            .unwrap(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    // Completed calls, as a watch so the test can wait for load to pass through each step.
    let (ok_tx, mut ok) = tokio::sync::watch::channel(0u64);
    let ok_tx = Arc::new(ok_tx);
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (connector, acceptor) = (connector.clone(), acceptor.clone());
        let (stop, ok, failures) = (stop.clone(), ok_tx.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(&connector, &acceptor).await {
                    Ok(_) => ok.send_modify(|n| *n += 1),
                    Err(e) => failures.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    let steps = [
        "rotate",
        "rotate",
        "rotate",
        "add-ca",
        "use-new-ca",
        "drop-old-ca",
        "add-ca",
        "use-new-ca",
        "drop-old-ca",
    ];
    let mut seen_leaves = Vec::new();
    for step in steps {
        let (mut s_status, mut c_status) = (server_src.status(), client_src.status());
        let (s_gen, c_gen) = (s_status.borrow().generation, c_status.borrow().generation);
        stdin
            .write_all(format!("{step}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        assert!(reply.starts_with("ok "), "{step}: {reply}");
        for (status, generation) in [(&mut s_status, s_gen), (&mut c_status, c_gen)] {
            tokio::time::timeout(
                Duration::from_secs(20),
                status.wait_for(|s| s.generation > generation),
            )
            .await
            .unwrap_or_else(|_| panic!("{step}: no update from the Workload API"))
            .unwrap();
        }
        assert!(server_src.status().borrow().last_error.is_none());
        let expected = server_src.snapshot().svid.as_ref().unwrap().cert_chain()[0].clone();
        let (leaf, peer) = call(&connector, &acceptor).await.unwrap();
        assert_eq!(
            leaf, expected,
            "{step}: new handshakes present the current SVID"
        );
        assert_eq!(peer.spiffe_id().path(), "/ns/default/sa/client");
        seen_leaves.push(leaf);
        // Let the steady load run across this state before the next change.
        let target = *ok.borrow() + 40;
        tokio::time::timeout(Duration::from_secs(60), ok.wait_for(|n| *n >= target))
            .await
            .expect("load keeps calling")
            .unwrap();
    }
    seen_leaves.dedup();
    // rotate x3 and use-new-ca x2 issue new SVIDs; add-ca/drop-old-ca only change bundles.
    assert_eq!(seen_leaves.len(), 5);

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    assert!(*ok.borrow() >= 40 * steps.len() as u64);
    drop(stdin);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server these tests rely on must follow the Workload API spec: py-spiffe, the SPIFFE
/// project's own client, fetches an X.509 context from it.
#[tokio::test]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn pyspiffe_accepts_the_workload_api_server() {
    let venv = peers::venv();
    let dir = temp_dir("wl-py");
    let sock = dir.join("workload.sock");
    let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let mut server = tokio::process::Command::new(venv.join("bin/python"))
        .arg(peers.join("workload_api.py"))
        .arg("--socket")
        .arg(format!(
            "{}=spiffe://example.org/ns/default/sa/web",
            sock.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Workload API server");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("server ready in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some("ready"));

    let out = tokio::process::Command::new(venv.join("bin/python"))
        .arg(peers.join("pyspiffe_fetch.py"))
        .arg(format!("unix://{}", sock.display()))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "py-spiffe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["spiffe_id"], "spiffe://example.org/ns/default/sa/web");
    assert!(got["chain"].as_u64().unwrap() >= 1);
    assert_eq!(got["trust_domains"], serde_json::json!(["example.org"]));
}
