//! Starts the real `meshwork-rcp-peer` binary and talks ADS to it with a tonic 0.8 client:
//! subscribe, get a version and a nonce, ACK, see an update after the file changes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use data_plane_api::envoy::config::cluster::v3::Cluster;
use data_plane_api::envoy::config::core::v3::Node;
use data_plane_api::envoy::config::endpoint::v3::ClusterLoadAssignment;
use data_plane_api::envoy::config::listener::v3::Listener;
use data_plane_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use data_plane_api::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use data_plane_api::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// A guard against a hung peer, not a synchronisation: every wait ends as soon as the
/// awaited message arrives.
const PATIENCE: Duration = Duration::from_secs(10);

fn cluster(name: &str, connect_timeout_secs: i64) -> Any {
    let c = Cluster {
        name: name.into(),
        connect_timeout: Some(PbDuration {
            seconds: connect_timeout_secs,
            nanos: 0,
        }),
        ..Default::default()
    };
    Any {
        type_url: CLUSTER.into(),
        value: c.encode_to_vec(),
    }
}

fn endpoints(cluster: &str) -> Any {
    let e = ClusterLoadAssignment {
        cluster_name: cluster.into(),
        ..Default::default()
    };
    Any {
        type_url: ENDPOINT.into(),
        value: e.encode_to_vec(),
    }
}

fn listener(name: &str) -> Any {
    let l = Listener {
        name: name.into(),
        ..Default::default()
    };
    Any {
        type_url: LISTENER.into(),
        value: l.encode_to_vec(),
    }
}

/// A scratch directory unique to one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "meshwork-rcp-peer-{test}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("resources.pb")
    }

    /// Replaces the resources file atomically, as the README asks of a writer.
    fn write(&self, resources: Vec<Any>) {
        let bytes = DiscoveryResponse {
            resources,
            ..Default::default()
        }
        .encode_to_vec();
        self.write_bytes(&bytes);
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let tmp = self.0.join("resources.pb.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.file()).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running peer; killed on drop if a test failed before closing its stdin.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    stderr: std_mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Peer {
    fn start(file: &Path, node_id: Option<&str>) -> Self {
        Self::start_with(file, node_id, false)
    }

    /// `log`: turn on rust-control-plane's own log lines.
    fn start_with(file: &Path, node_id: Option<&str>, log: bool) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshwork-rcp-peer"));
        cmd.env_remove("MESHWORK_RCP_PEER_LOG");
        if log {
            cmd.env("MESHWORK_RCP_PEER_LOG", "1");
        }
        cmd.arg("--resources").arg(file).args(["--port", "0"]);
        if let Some(id) = node_id {
            cmd.args(["--node-id", id]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Self::collect_stderr(&mut child);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            stdin: child.stdin.take(),
            child,
            addr,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    fn collect_stderr(child: &mut Child) -> std_mpsc::Receiver<String> {
        let (tx, rx) = std_mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Waits for a stderr line that contains `needle`.
    fn wait_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stderr line with {needle:?} ({e}); saw {:?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// Closes stdin and waits for the peer to exit; returns its status and whole stderr.
    fn close(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "peer still running after stdin closed"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut lines = std::mem::take(&mut self.stderr_seen);
        lines.extend(self.stderr.iter());
        (status, lines)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One ADS stream.
struct Ads {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    node: Node,
}

impl Ads {
    async fn connect(addr: SocketAddr, node_id: &str) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(16);
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let node = Node {
            id: node_id.into(),
            ..Default::default()
        };
        Self {
            requests,
            responses,
            node,
        }
    }

    async fn send(&self, type_url: &str, names: &[&str], version: &str, nonce: &str) {
        let req = DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        self.requests.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(PATIENCE, self.responses.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    /// Whether anything arrives within `wait`: only for asserting that nothing does.
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.responses.message())
            .await
            .is_err()
    }

    async fn ack(&self, rep: &DiscoveryResponse, names: &[&str]) {
        self.send(&rep.type_url, names, &rep.version_info, &rep.nonce)
            .await;
    }
}

fn clusters(rep: &DiscoveryResponse) -> Vec<Cluster> {
    rep.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, CLUSTER);
            Cluster::decode(a.value.as_slice()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn serves_a_cluster_takes_the_ack_and_pushes_an_update() {
    let scratch = Scratch::new("update");
    scratch.write(vec![cluster("c1", 1), cluster("c2", 1)]);
    let mut peer = Peer::start(&scratch.file(), None);
    let mut ads = Ads::connect(peer.addr, "meshwork-test").await;

    ads.send(CLUSTER, &["c1"], "", "").await;
    let rep = ads.recv().await;
    assert_eq!(
        (rep.type_url.as_str(), rep.version_info.as_str()),
        (CLUSTER, "1")
    );
    assert!(!rep.nonce.is_empty());
    let got = clusters(&rep);
    assert_eq!(got.len(), 1, "only the subscribed cluster");
    assert_eq!(got[0].name, "c1");
    assert_eq!(got[0].connect_timeout.as_ref().unwrap().seconds, 1);
    ads.ack(&rep, &["c1"]).await;

    // A type the file has none of is answered too, empty.
    ads.send(LISTENER, &[], "", "").await;
    let lds = ads.recv().await;
    assert_eq!(
        (lds.type_url.as_str(), lds.version_info.as_str()),
        (LISTENER, "1")
    );
    assert!(lds.resources.is_empty());
    ads.ack(&lds, &[]).await;

    // A broken file is reported and the snapshot kept.
    scratch.write_bytes(&[0xff, 0xff]);
    let line = peer.wait_stderr("keeping version 1");
    assert!(line.contains("DiscoveryResponse: decode"), "{line}");

    scratch.write(vec![cluster("c1", 7), cluster("c2", 1)]);
    let update = ads.recv().await;
    assert_eq!(update.type_url, CLUSTER);
    assert_eq!(update.version_info, "2");
    assert!(!update.nonce.is_empty() && update.nonce != rep.nonce);
    let got = clusters(&update);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].connect_timeout.as_ref().unwrap().seconds, 7);
    ads.ack(&update, &["c1"]).await;

    // A second update reaches the client too (the ACK above re-armed the watch); the
    // listener type, unchanged until now, moves to the new version.
    scratch.write(vec![cluster("c1", 9), listener("l1")]);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let rep = ads.recv().await;
        seen.push((
            rep.type_url.clone(),
            rep.version_info.clone(),
            rep.resources.len(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            (CLUSTER.to_string(), "3".to_string(), 1),
            (LISTENER.to_string(), "3".to_string(), 1)
        ]
    );

    let (status, stderr) = peer.close();
    assert!(status.success(), "{status}; stderr {stderr:?}");
}

#[tokio::test]
async fn with_node_id_serves_only_that_node() {
    let scratch = Scratch::new("node-id");
    scratch.write(vec![cluster("c1", 1)]);
    let mut peer = Peer::start_with(&scratch.file(), Some("only-me"), true);

    let mut me = Ads::connect(peer.addr, "only-me").await;
    me.send(CLUSTER, &[], "", "").await;
    let rep = me.recv().await;
    assert_eq!(rep.version_info, "1");
    assert_eq!(clusters(&rep)[0].name, "c1");

    let mut other = Ads::connect(peer.addr, "someone-else").await;
    other.send(CLUSTER, &[], "", "").await;
    assert!(other.quiet_for(Duration::from_millis(500)).await);
    // The library's log says why: no snapshot for that node.
    peer.wait_stderr("set watch: no snapshot");
}

#[tokio::test]
async fn survives_clients_that_go_away_and_exits_when_stdin_closes() {
    let scratch = Scratch::new("close");
    scratch.write(vec![cluster("c1", 1), endpoints("c1")]);
    let peer = Peer::start(&scratch.file(), None);

    for round in 0..3 {
        let mut ads = Ads::connect(peer.addr, &format!("client-{round}")).await;
        ads.send(ENDPOINT, &["c1"], "", "").await;
        let rep = ads.recv().await;
        assert_eq!((rep.type_url.as_str(), rep.resources.len()), (ENDPOINT, 1));
        // Dropping the stream closes it: rust-control-plane's stream task panics.
    }

    let (status, stderr) = peer.close();
    assert!(status.success(), "{status}");
    // Each library panic is one line, with no backtrace hint, and nothing else is printed.
    assert!(stderr.len() <= 3, "{stderr:?}");
    for line in &stderr {
        assert!(
            line.contains("rust-control-plane task panicked at"),
            "{line}"
        );
    }
}

#[test]
fn refuses_a_bad_file_before_listening() {
    let scratch = Scratch::new("bad");
    scratch.write(vec![cluster("c1", 1), cluster("c1", 2)]);
    let out = Command::new(env!("CARGO_BIN_EXE_meshwork-rcp-peer"))
        .arg("--resources")
        .arg(scratch.file())
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("resources[1]: duplicate {CLUSTER} named \"c1\"")),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_meshwork-rcp-peer"))
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--resources is required") && stderr.contains("usage:"));
}

/// Characterises a rust-control-plane 0.1.2 bug the README describes: its ADS stream keeps one
/// nonce counter for all types and re-arms a type's watch only when the ACK carries the
/// stream's latest nonce. When two types are pushed at once, the ACK of the first is ignored
/// and that type gets no further updates on this stream. If this test fails, the library got
/// better: update the README.
#[tokio::test]
async fn quirk_an_ack_is_lost_when_two_types_are_pushed_at_once() {
    let scratch = Scratch::new("quirk");
    scratch.write(vec![cluster("c1", 1), endpoints("c1")]);
    let peer = Peer::start(&scratch.file(), None);
    let mut ads = Ads::connect(peer.addr, "quirk").await;
    for type_url in [CLUSTER, ENDPOINT] {
        ads.send(type_url, &["c1"], "", "").await;
        let rep = ads.recv().await;
        assert_eq!(rep.version_info, "1");
        ads.ack(&rep, &["c1"]).await;
    }

    // Both types change: both are pushed, and both ACKed.
    scratch.write(vec![cluster("c1", 2), endpoints("c1"), endpoints("c2")]);
    let first = ads.recv().await;
    let second = ads.recv().await;
    assert_ne!(first.type_url, second.type_url);
    assert_eq!(
        (first.version_info.as_str(), second.version_info.as_str()),
        ("2", "2")
    );
    ads.ack(&first, &["c1"]).await;
    ads.ack(&second, &["c1"]).await;

    // Both change again: only the type pushed second is pushed again.
    scratch.write(vec![cluster("c1", 3), endpoints("c1")]);
    let rep = ads.recv().await;
    assert_eq!(rep.type_url, second.type_url);
    assert_eq!(rep.version_info, "3");
    assert!(ads.quiet_for(Duration::from_millis(500)).await);
}

/// Delta ADS is `unimplemented!()` in the library: the call fails, the server lives on.
#[tokio::test]
async fn delta_ads_fails_but_the_server_lives_on() {
    let scratch = Scratch::new("delta");
    scratch.write(vec![cluster("c1", 1)]);
    let peer = Peer::start(&scratch.file(), None);

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", peer.addr))
        .await
        .unwrap();
    let (_tx, rx) = mpsc::channel(1);
    let delta = tokio::time::timeout(
        PATIENCE,
        client.delta_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .expect("no answer in time");
    if let Ok(stream) = delta {
        let mut stream = stream.into_inner();
        let next = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("no answer in time");
        assert!(next.is_err(), "{next:?}");
    }

    let mut ads = Ads::connect(peer.addr, "after-delta").await;
    ads.send(CLUSTER, &["c1"], "", "").await;
    assert_eq!(ads.recv().await.version_info, "1");
    let (status, stderr) = peer.close();
    assert!(status.success());
    assert!(
        stderr.iter().any(|l| l.contains("discovery/aggregated.rs")),
        "{stderr:?}"
    );
}
