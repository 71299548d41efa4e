//! xDS at mesh scale (issue #16): heap held per cluster and per endpoint with 10,000
//! clusters and 100,000 endpoints, bytes on the wire for one endpoint changing in a
//! 10,000-endpoint cluster, and the heap of a whole `XdsClient` holding 1,000 targets.
//! Heap figures are dhat's live bytes after minus before; apply *times* are criterion's
//! (`xds_apply`), since dhat's allocator slows every allocation.
//!
//! Run: `cargo bench -p meshwork-benches --bench xds_scale`. The 1,000-target client talks
//! to an `XdsTestServer` in a child process (this binary again), so the server's own heap is
//! not counted.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use meshwork_benches::child_server::{self, ChildServer};
use meshwork_benches::xds_fixtures::{
    cds_response, cla, eds_response_many, sotw_response, watched_assignments,
};
use meshwork_xds::client::XdsClient;
use meshwork_xds::protocol::{AdsState, ProtocolConfig};
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::{Snapshot, build};
use prost::Message;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Set in the child process that serves the 1,000-target mesh.
const SERVER_ROLE: &str = "MESHWORK_XDS_SCALE_SERVE_TARGETS";

const CLUSTERS: u32 = 10_000;
const ENDPOINTS_EACH: u32 = 10;
/// The endpoints of `watched_assignments`' big cluster.
const BIG_CLUSTER: u32 = 10_000;
const TARGETS: u32 = 1_000;
const TARGET_ENDPOINTS: u32 = 3;

fn main() {
    if let Ok(targets) = std::env::var(SERVER_ROLE) {
        serve(targets.parse().expect("a target count"));
        return;
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    clusters_and_endpoints();
    one_endpoint_change();
    thousand_targets();
}

fn live_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}

/// 10,000 EDS clusters (CDS wildcard) and their 100,000 endpoints (10 each), in one state
/// machine, as a client watching every cluster of a big mesh holds them.
fn clusters_and_endpoints() {
    let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
    let stream = ads.on_stream_open();
    ads.subscribe(ResourceType::Cluster, "*");
    while ads.poll_request(Instant::now()).is_some() {}

    let cds = cds_response(CLUSTERS, "v1");
    let cds_wire = cds.encoded_len();
    let before = live_bytes();
    ads.on_response(stream, cds, Instant::now());
    let mut events = 0;
    while ads.poll_event().is_some() {
        events += 1;
    }
    while ads.poll_request(Instant::now()).is_some() {}
    let clusters_bytes = live_bytes().saturating_sub(before);
    assert_eq!(events, CLUSTERS as usize);

    for i in 0..CLUSTERS {
        ads.subscribe(ResourceType::ClusterLoadAssignment, &format!("cluster-{i}"));
    }
    while ads.poll_request(Instant::now()).is_some() {}
    let eds = eds_response_many(CLUSTERS, ENDPOINTS_EACH, "v1");
    let eds_wire = eds.encoded_len();
    let before = live_bytes();
    ads.on_response(stream, eds, Instant::now());
    while ads.poll_event().is_some() {}
    let ack = ads.poll_request(Instant::now()).expect("ACK");
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let endpoints_bytes = live_bytes().saturating_sub(before);
    assert!(
        ads.get(ResourceType::ClusterLoadAssignment, "cluster-9999")
            .is_some()
    );

    let endpoints = CLUSTERS * ENDPOINTS_EACH;
    println!(
        "xds_scale: {CLUSTERS} clusters held in {clusters_bytes} bytes = {:.0} bytes/cluster \
         (CDS response {cds_wire} bytes on the wire)",
        clusters_bytes as f64 / f64::from(CLUSTERS)
    );
    println!(
        "xds_scale: {endpoints} endpoints ({ENDPOINTS_EACH} in each of {CLUSTERS} \
         ClusterLoadAssignments) held in {endpoints_bytes} bytes = {:.0} bytes/endpoint, \
         ClusterLoadAssignment overhead included (EDS response {eds_wire} bytes on the wire)",
        endpoints_bytes as f64 / f64::from(endpoints)
    );
}

/// One endpoint of a 10,000-endpoint cluster changes: what each protocol puts on the wire.
/// SotW re-sends every subscribed ClusterLoadAssignment of a client (a snapshot server such
/// as go-control-plane's, or ours); delta sends the one changed resource whole (without
/// LEDS a resource is the unit, so the 10,000-endpoint assignment goes whole either way).
fn one_endpoint_change() {
    // The first endpoint of cluster-0 moves to a new address: one endpoint changed.
    let alone = sotw_response("v2", watched_assignments(1, true)).encoded_len();
    let with_others = watched_assignments(TARGETS, true);
    let moved = with_others[0].clone();
    let sotw_many = sotw_response("v2", with_others).encoded_len();
    let delta = DeltaDiscoveryResponse {
        system_version_info: "v2".into(),
        resources: vec![Resource {
            name: "cluster-0".into(),
            version: "v2".into(),
            resource: Some(moved),
            ..Default::default()
        }],
        type_url: ResourceType::ClusterLoadAssignment.type_url().into(),
        nonce: "nonce-v2".into(),
        ..Default::default()
    }
    .encoded_len();
    println!(
        "xds_scale: one endpoint changes in a {BIG_CLUSTER}-endpoint cluster: SotW {alone} bytes \
         when the client watches that cluster alone, {sotw_many} bytes when it watches \
         {TARGETS} clusters ({} others of {ENDPOINTS_EACH} endpoints re-sent); delta {delta} \
         bytes either way",
        TARGETS - 1
    );
}

/// Listener -> RouteConfiguration -> EDS cluster -> 3 endpoints for each of `targets`
/// services, named as Istio names them for proxyless gRPC.
fn mesh(targets: u32) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for i in 0..targets {
        let host = format!("svc-{i}.ns.svc.cluster.local:8080");
        let cluster = format!("outbound|8080||svc-{i}.ns.svc.cluster.local");
        snapshot.insert_listener(build::api_listener(&host, &host));
        snapshot.insert_route(build::route_config(
            &host,
            vec![build::virtual_host(
                "vh",
                [host.as_str()],
                vec![build::route_to("", &cluster)],
            )],
        ));
        snapshot.insert_cluster(build::eds_cluster(&cluster));
        snapshot.insert_endpoints(cla(&cluster, TARGET_ENDPOINTS, 1, i * TARGET_ENDPOINTS));
    }
    snapshot
}

/// The child process: serve the mesh, print the server's URI, stop when stdin closes.
fn serve(targets: u32) {
    child_server::serve(mesh(targets), |server| async move {
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await
        .expect("stdin reader");
        drop(server);
    });
}

/// A whole `XdsClient` (its worker, cache, watchers and resolved configs) holding 1,000
/// targets, each ready.
fn thousand_targets() {
    let server = ChildServer::spawn(SERVER_ROLE, &TARGETS.to_string());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (bytes, elapsed) = runtime.block_on(async {
        let bootstrap = server.bootstrap("scale-bench");
        let before = live_bytes();
        let started = Instant::now();
        let client = XdsClient::builder(&bootstrap)
            .expect("a client")
            .without_fail_static()
            .start();
        let mut watches = Vec::with_capacity(TARGETS as usize);
        for i in 0..TARGETS {
            let host = format!("svc-{i}.ns.svc.cluster.local:8080");
            watches.push(client.watch_target(&host, &host).await);
        }
        for watch in &mut watches {
            let config = watch
                .ready(Duration::from_secs(60))
                .await
                .expect("every target resolves");
            assert!(!config.clusters.is_empty());
        }
        let elapsed = started.elapsed();
        assert_eq!(client.dump().await.len(), 4 * TARGETS as usize);
        let bytes = live_bytes().saturating_sub(before);
        drop(watches);
        drop(client);
        (bytes, elapsed)
    });
    server.stop();
    println!(
        "xds_scale: one XdsClient holding {TARGETS} targets (4 resources and \
         {TARGET_ENDPOINTS} endpoints each) is {bytes} bytes of heap = {:.0} bytes/target; \
         all ready {elapsed:?} after start (under dhat's allocator)",
        bytes as f64 / f64::from(TARGETS)
    );
}
