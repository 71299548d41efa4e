//! The fail-static rules for outages that are not a clean "every server refused": a control
//! plane that holds requests without a word, a NACK of a seeded value, channels rebuilt while
//! the control plane is down, and files someone else could have written. Written by a review
//! of the first version, which failed each of them.

#![cfg(feature = "server")]

use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;

use super::file::{self, Expected, SnapshotFile, SnapshotRecord};
use crate::protocol::{
    AdsState, DEFAULT_DOES_NOT_EXIST_TIMEOUT, ProtocolConfig, ResourceStatus, Seed, StreamId,
    XdsEvent,
};
use crate::resource::ResourceType;
use crate::server::build;

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

fn cluster(name: &str) -> Any {
    build::pack(&build::eds_cluster(name))
}

fn cla(name: &str) -> Any {
    build::pack(&build::endpoints(name, &["127.0.0.1:1".parse().unwrap()]))
}

/// A cluster the validator rejects (STATIC is not supported).
fn bad_cluster(name: &str) -> Any {
    build::pack(&ClusterProto {
        name: name.into(),
        ..Default::default()
    })
}

fn seed(t: ResourceType, any: Any) -> Seed {
    Seed {
        value: crate::resource::decode(t, &any).expect("valid"),
        raw: any,
        version: "s".into(),
    }
}

fn response(t: ResourceType, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: t.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

/// An `AdsState` as the worker holds it after every server failed its first attempt and
/// the snapshot (clusters `a`, `b`, endpoints `a`) was seeded.
struct Seeded {
    ads: AdsState,
    now: Instant,
    stream: Option<StreamId>,
}

impl Seeded {
    fn new() -> Self {
        let node = Node {
            id: "review".into(),
            ..Default::default()
        };
        let mut ads = AdsState::new(ProtocolConfig::new(node));
        let now = Instant::now();
        let sid = ads.on_stream_connecting();
        ads.on_stream_closed(sid);
        ads.seed(
            [
                seed(CDS, cluster("a")),
                seed(CDS, cluster("b")),
                seed(EDS, cla("a")),
            ],
            now,
        );
        Self {
            ads,
            now,
            stream: None,
        }
    }

    fn events(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.ads.poll_event())
            .map(|e| match e {
                XdsEvent::Changed(r) => format!("changed:{}", r.name()),
                XdsEvent::Invalid { name, .. } => format!("invalid:{name}"),
                XdsEvent::DoesNotExist { name, .. } => format!("gone:{name}"),
            })
            .collect()
    }

    /// A server accepts the stream and the requests go out.
    fn connect(&mut self) {
        let sid = self.ads.on_stream_connecting();
        while self.ads.poll_request(self.now).is_some() {}
        self.ads.on_stream_connected(sid, self.now);
        self.stream = Some(sid);
    }

    fn respond(&mut self, r: DiscoveryResponse) {
        self.ads
            .on_response(self.stream.expect("connected"), r, self.now);
        while self.ads.poll_request(self.now).is_some() {}
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.ads.poll_timeout().is_some_and(|t| t <= self.now) {
            self.ads.handle_timeout(self.now);
        }
    }

    fn seeded_rows(&self) -> Vec<String> {
        self.ads
            .resources()
            .filter(|v| v.from_snapshot)
            .map(|v| format!("{}:{}", v.resource_type.short_name(), v.name))
            .collect()
    }
}

/// While no server answers, a watcher that goes away and comes back (a channel dropped and
/// built again, a target re-resolved) finds the snapshot's value again: it is the only
/// configuration there is, so an unsubscribed seeded value goes back to the pool.
#[test]
fn a_seeded_value_unsubscribed_then_subscribed_again_is_served_again() {
    let mut s = Seeded::new();
    s.ads.subscribe(CDS, "a");
    assert_eq!(s.events(), ["changed:a"]);
    s.ads.unsubscribe(CDS, "a");
    s.ads.subscribe(CDS, "a");
    assert_eq!(
        s.events(),
        ["changed:a"],
        "the snapshot's value is lost after one unsubscribe while every server is down"
    );
    assert!(s.ads.get(CDS, "a").is_some());
}

/// The same for a wildcard: dropped and subscribed again, it takes every seeded value of the
/// type again.
#[test]
fn a_wildcard_dropped_and_renewed_takes_the_seeds_again() {
    let mut s = Seeded::new();
    s.ads.subscribe_legacy_wildcard(CDS);
    assert_eq!(s.events().len(), 2);
    s.ads.unsubscribe(CDS, "*");
    s.ads.subscribe_legacy_wildcard(CDS);
    assert_eq!(
        s.events().len(),
        2,
        "the seeded clusters are gone after the wildcard was renewed"
    );
}

/// For contrast with the next test: a value a server sent survives a reconnect to a server
/// that accepts the stream and says nothing (no timer runs for a resource with a value).
#[test]
fn a_live_value_survives_a_silent_server() {
    let mut s = Seeded::new();
    s.ads.subscribe(CDS, "z");
    s.connect();
    s.respond(response(CDS, "1", "n1", vec![cluster("z")]));
    s.events();
    s.ads.on_stream_closed(s.stream.take().unwrap());
    s.connect();
    s.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT * 10);
    assert!(s.events().is_empty());
    assert!(s.ads.get(CDS, "z").is_some());
}

/// A control plane that accepts the stream but has nothing to say yet (go-control-plane's
/// `SnapshotCache` parks the watch of a node it has no snapshot for; a control plane
/// restarting and still building its config) must not end the seeded values, as it would
/// not end a live cache (test above): a seeded value is given up only on an answer for its
/// type (a full-state response leaving it out, or the does-not-exist timer started by the
/// first response of the type).
#[test]
fn a_server_that_has_not_answered_the_type_does_not_delete_seeded_values() {
    let mut s = Seeded::new();
    s.ads.subscribe(CDS, "a");
    s.ads.subscribe(EDS, "a");
    s.events();
    s.connect();
    s.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT);
    assert_eq!(
        s.events(),
        Vec::<String>::new(),
        "a silent server made the snapshot's values not exist"
    );
    assert!(s.ads.get(CDS, "a").is_some());
    assert!(s.ads.get(EDS, "a").is_some());
}

/// A rejected update keeps the seeded value in use, still marked, as a NACK keeps a live
/// value, also past the does-not-exist timeout: a control plane coming back with one bad
/// resource does not take the restarted process's last good value away.
#[test]
fn a_nacked_seed_stays_in_use_after_the_timeout() {
    let mut s = Seeded::new();
    s.ads.subscribe(CDS, "a");
    s.ads.subscribe(EDS, "a");
    s.events();
    s.connect();
    // EDS answered live: only the NACKed cluster is from the snapshot.
    s.respond(response(EDS, "1", "e1", vec![cla("a")]));
    s.respond(response(CDS, "1", "c1", vec![bad_cluster("a")]));
    assert_eq!(s.ads.status(CDS, "a"), Some(ResourceStatus::Nacked));
    assert_eq!(s.events(), ["invalid:a"]);
    assert_eq!(s.seeded_rows(), ["CDS:a"], "kept and marked, as designed");
    s.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT);
    assert_eq!(
        s.events(),
        Vec::<String>::new(),
        "the NACK restarted the timer of the seeded value"
    );
    assert!(s.ads.get(CDS, "a").is_some(), "the last good value is gone");
}

/// Writes a valid snapshot for node `review` on one server into `dir`; returns its path.
fn write_valid(dir: &std::path::Path) -> std::path::PathBuf {
    let snapshot = SnapshotFile {
        node_id: "review".into(),
        servers: vec!["http://cp:1".into()],
        written_at: SystemTime::now(),
        records: vec![SnapshotRecord {
            type_url: CDS.type_url().into(),
            name: "a".into(),
            version: "1".into(),
            resource: cluster("a"),
        }],
    };
    file::write(dir, &snapshot, 1 << 20).expect("written");
    dir.join(file::file_name("review", &snapshot.servers))
}

fn read(dir: &std::path::Path) -> Result<SnapshotFile, super::SnapshotError> {
    let servers = vec!["http://cp:1".to_string()];
    let expected = Expected {
        node_id: "review",
        servers: &servers,
        max_age: Duration::from_secs(3600),
        now: SystemTime::now(),
        max_bytes: 1 << 20,
    };
    file::read(dir, &expected)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("meshwork-review-fs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The file decides where traffic goes and which callers a server admits (its Listener's
/// RBAC), and its SHA-256 is a checksum, not a MAC: anyone who can write it can configure
/// the process. A file another user could have written (group/world-writable, or in such a
/// directory, e.g. `MESHWORK_XDS_SNAPSHOT_DIR=/tmp`, the hash in its name being computable
/// from the node id and server URIs) must be refused, as ssh does for its keys.
#[cfg(unix)]
#[test]
fn a_snapshot_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("world-writable");
    let path = write_valid(&dir);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let file_result = read(&dir);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir_result = read(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(file_result.is_err(), "a world-writable file was used");
    assert!(
        dir_result.is_err(),
        "a file in a world-writable directory was used"
    );
}

/// A symlink planted under the snapshot's name (pointing at a file of someone else's
/// choosing) is not followed: the file is opened with `O_NOFOLLOW` (and `O_NONBLOCK`, then
/// checked through the open handle).
#[cfg(unix)]
#[test]
fn a_symlink_under_the_snapshot_name_is_not_followed() {
    let elsewhere = temp_dir("symlink-target");
    let planted = write_valid(&elsewhere);
    let dir = temp_dir("symlink");
    let path = dir.join(planted.file_name().unwrap());
    std::os::unix::fs::symlink(&planted, &path).unwrap();
    let result = read(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&elsewhere);
    assert!(
        result.is_err(),
        "a symlink to another directory's file was read"
    );
}
