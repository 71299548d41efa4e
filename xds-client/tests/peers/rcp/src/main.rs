//! `meshwork-rcp-peer`: a SotW ADS server built on rust-control-plane 0.1.2, a control-plane
//! library nobody in meshwork wrote, so that meshwork-xds can be checked against it.
//!
//! ```text
//! meshwork-rcp-peer --resources FILE --port PORT [--node-id ID]
//! ```
//!
//! FILE holds one binary `envoy.service.discovery.v3.DiscoveryResponse` whose `resources` are
//! Any-wrapped Listener / RouteConfiguration / Cluster / ClusterLoadAssignment (and the other
//! types rust-control-plane knows). They are served as one snapshot through
//! rust-control-plane's `Cache` and its ADS `Service`. The peer prints exactly one line,
//! `listening on 127.0.0.1:PORT`, once it accepts connections; it re-reads FILE when it
//! changes and exits when its stdin closes. See README.md for versions and quirks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::error::Error;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use data_plane_api::envoy::config::cluster::v3::Cluster;
use data_plane_api::envoy::config::core::v3::TypedExtensionConfig;
use data_plane_api::envoy::config::endpoint::v3::ClusterLoadAssignment;
use data_plane_api::envoy::config::listener::v3::Listener;
use data_plane_api::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use data_plane_api::envoy::extensions::transport_sockets::tls::v3::Secret;
use data_plane_api::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use data_plane_api::envoy::service::discovery::v3::DiscoveryResponse;
use data_plane_api::envoy::service::runtime::v3::Runtime;
use data_plane_api::google::protobuf::Any;
use prost::Message;
use rust_control_plane::cache::Cache;
use rust_control_plane::service::common::Service;
use rust_control_plane::snapshot::{type_url, Resource, Resources, Snapshot};
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: meshwork-rcp-peer --resources FILE --port PORT(0 = any) [--node-id ID]";

/// How often FILE's modification time is checked.
const FILE_POLL: Duration = Duration::from_millis(200);
/// How often the cache is asked which node ids have connected (only without `--node-id`).
const NODE_POLL: Duration = Duration::from_millis(20);

/// Every type URL rust-control-plane serves. Each one is put in every snapshot, empty if FILE
/// has none of it: the library never answers a request for a type its snapshot lacks.
const TYPE_URLS: [&str; 9] = [
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::SECRET,
    type_url::RUNTIME,
    type_url::SCOPED_ROUTE,
    type_url::EXTENSION_CONFIG,
    type_url::VIRTUAL_HOST,
];

/// A failure with the context that led to it; `source()` keeps the chain.
#[derive(Debug)]
struct PeerError {
    context: String,
    source: Option<Box<dyn Error + Send + Sync>>,
}

impl PeerError {
    fn msg(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    fn wrap(context: impl Into<String>, source: impl Error + Send + Sync + 'static) -> Self {
        Self {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        // The binary prints errors with Display only, so show the whole chain here.
        let mut next = self.source.as_deref().map(|e| e as &(dyn Error + 'static));
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl Error for PeerError {}

#[derive(Debug, PartialEq)]
struct Args {
    resources: PathBuf,
    port: u16,
    node_id: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, PeerError> {
    let mut resources = None;
    let mut port = None;
    let mut node_id = None;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| PeerError::msg(format!("{flag}: missing value")))
        };
        match flag.as_str() {
            "--resources" => resources = Some(PathBuf::from(value()?)),
            "--port" => {
                let v = value()?;
                port = Some(
                    v.parse::<u16>()
                        .map_err(|e| PeerError::wrap(format!("--port {v:?}"), e))?,
                );
            }
            "--node-id" => node_id = Some(value()?),
            other => return Err(PeerError::msg(format!("unknown argument {other:?}"))),
        }
    }
    Ok(Args {
        resources: resources.ok_or_else(|| PeerError::msg("--resources is required"))?,
        port: port.ok_or_else(|| PeerError::msg("--port is required"))?,
        node_id,
    })
}

/// The resources of FILE by type URL, then by name, with each one's encoding (to tell what
/// changed between two versions of FILE).
type Contents = BTreeMap<&'static str, BTreeMap<String, (Resource, Vec<u8>)>>;

/// Decodes FILE's bytes. Every resource must decode as its type and carry a unique name.
fn parse_resources(bytes: &[u8]) -> Result<Contents, PeerError> {
    let response = DiscoveryResponse::decode(bytes)
        .map_err(|e| PeerError::wrap("DiscoveryResponse: decode", e))?;
    let mut contents = Contents::new();
    for (i, any) in response.resources.iter().enumerate() {
        let (type_url, name, resource) =
            decode_resource(any).map_err(|e| PeerError::wrap(format!("resources[{i}]"), e))?;
        // prost keeps no unknown fields, so anything newer than data-plane-api 0.1.1's protos
        // is lost when the library re-encodes the resource: say so rather than hide it.
        let encoded = resource.into_any().value;
        if encoded != any.value {
            eprintln!(
                "meshwork-rcp-peer: warning: resources[{i}] ({type_url} {name:?}) re-encodes to \
                 {} bytes instead of {}: fields unknown to data-plane-api 0.1.1 are dropped",
                encoded.len(),
                any.value.len()
            );
        }
        let by_name = contents.entry(type_url).or_default();
        if by_name.contains_key(&name) {
            return Err(PeerError::msg(format!(
                "resources[{i}]: duplicate {type_url} named {name:?}"
            )));
        }
        by_name.insert(name, (resource, encoded));
    }
    Ok(contents)
}

fn decode_resource(any: &Any) -> Result<(&'static str, String, Resource), PeerError> {
    fn decode<M: Message + Default>(any: &Any) -> Result<M, PeerError> {
        M::decode(any.value.as_slice()).map_err(|e| PeerError::wrap("value: decode", e))
    }
    // Accept any type URL prefix, as Any does; the library re-wraps with its own constant.
    let message = any.type_url.rsplit('/').next().unwrap_or_default();
    let full = |t: &'static str| t.rsplit('/').next() == Some(message);
    let (type_url, name, resource) = if full(type_url::LISTENER) {
        let r: Listener = decode(any)?;
        (type_url::LISTENER, r.name.clone(), Resource::Listener(r))
    } else if full(type_url::ROUTE) {
        let r: RouteConfiguration = decode(any)?;
        (type_url::ROUTE, r.name.clone(), Resource::Route(r))
    } else if full(type_url::CLUSTER) {
        let r: Cluster = decode(any)?;
        (type_url::CLUSTER, r.name.clone(), Resource::Cluster(r))
    } else if full(type_url::ENDPOINT) {
        let r: ClusterLoadAssignment = decode(any)?;
        (
            type_url::ENDPOINT,
            r.cluster_name.clone(),
            Resource::Endpoint(r),
        )
    } else if full(type_url::SECRET) {
        let r: Secret = decode(any)?;
        (type_url::SECRET, r.name.clone(), Resource::Secret(r))
    } else if full(type_url::RUNTIME) {
        let r: Runtime = decode(any)?;
        (type_url::RUNTIME, r.name.clone(), Resource::Runtime(r))
    } else if full(type_url::SCOPED_ROUTE) {
        let r: ScopedRouteConfiguration = decode(any)?;
        (
            type_url::SCOPED_ROUTE,
            r.name.clone(),
            Resource::ScopedRoute(r),
        )
    } else if full(type_url::EXTENSION_CONFIG) {
        let r: TypedExtensionConfig = decode(any)?;
        (
            type_url::EXTENSION_CONFIG,
            r.name.clone(),
            Resource::ExtensionConfig(r),
        )
    } else {
        return Err(PeerError::msg(format!(
            "type_url: {:?} is not a type rust-control-plane serves",
            any.type_url
        )));
    };
    if name.is_empty() {
        return Err(PeerError::msg(format!("{type_url}: empty name")));
    }
    Ok((type_url, name, resource))
}

/// What is being served: FILE's contents and, per type URL, the version they were given.
struct Published {
    generation: u64,
    contents: Contents,
    versions: HashMap<&'static str, String>,
}

impl Published {
    fn first(contents: Contents) -> Self {
        let versions = TYPE_URLS.iter().map(|t| (*t, "1".to_string())).collect();
        Self {
            generation: 1,
            contents,
            versions,
        }
    }

    /// Moves to new contents. Only types whose resources changed get the next version: the
    /// library's ADS stream loses ACKs when several types are answered at once (README.md).
    fn update(&mut self, contents: Contents) -> Vec<&'static str> {
        self.generation += 1;
        let version = self.generation.to_string();
        let empty = BTreeMap::new();
        let mut changed = Vec::new();
        for t in TYPE_URLS {
            let old = self.contents.get(t).unwrap_or(&empty);
            let new = contents.get(t).unwrap_or(&empty);
            let same = old.len() == new.len()
                && old
                    .iter()
                    .zip(new)
                    .all(|((n1, (_, b1)), (n2, (_, b2)))| n1 == n2 && b1 == b2);
            if !same {
                self.versions.insert(t, version.clone());
                changed.push(t);
            }
        }
        self.contents = contents;
        changed
    }

    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::new();
        for t in TYPE_URLS {
            let mut resources = Resources::new(self.versions[t].clone());
            if let Some(by_name) = self.contents.get(t) {
                for (name, (resource, _)) in by_name {
                    resources.items.insert(name.clone(), resource.clone());
                }
            }
            snapshot.insert(t.to_string(), resources);
        }
        snapshot
    }
}

/// Sets `snapshot` for `node`. `Cache::set_snapshot` panics if a watch belongs to a stream
/// whose task has already died (its channel is closed), leaving the remaining watches
/// untriggered; the panicking watch is gone by then, so running it again finishes the job.
async fn publish(cache: &Arc<Cache>, node: &str, snapshot: &Snapshot) {
    for _ in 0..8 {
        let (cache, node, snapshot) = (cache.clone(), node.to_string(), snapshot.clone());
        match tokio::spawn(async move { cache.set_snapshot(&node, snapshot).await }).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => continue,
            Err(e) => {
                eprintln!("meshwork-rcp-peer: set_snapshot did not finish: {e}");
                return;
            }
        }
    }
    eprintln!("meshwork-rcp-peer: set_snapshot for node {node:?} kept panicking; gave up");
}

/// FILE's modification time and length; a change in either makes the peer read it again.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Publishes the snapshot to the nodes that should get it, and follows FILE's changes.
async fn run_publisher(
    cache: Arc<Cache>,
    path: PathBuf,
    node_id: Option<String>,
    mut published: Published,
    mut last_bytes: Vec<u8>,
) {
    let mut nodes: HashSet<String> = HashSet::new();
    let mut snapshot = published.snapshot();
    if let Some(id) = &node_id {
        publish(&cache, id, &snapshot).await;
        nodes.insert(id.clone());
    }
    let mut last_stamp = stamp(&path);
    let mut file_tick = tokio::time::interval(FILE_POLL);
    let mut node_tick = tokio::time::interval(NODE_POLL);
    for tick in [&mut file_tick, &mut node_tick] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // After a failed read, try again on the next tick even if the stamp is unchanged: the
    // writer may finish within the file system's timestamp granularity.
    let mut retry = false;
    loop {
        tokio::select! {
            _ = node_tick.tick(), if node_id.is_none() => {
                // rust-control-plane keys snapshots by exact node id and has no wildcard, so
                // serve any node by publishing to every id the cache has seen a request from.
                for id in cache.node_status().await.into_keys() {
                    if !nodes.contains(&id) {
                        publish(&cache, &id, &snapshot).await;
                        nodes.insert(id);
                    }
                }
            }
            _ = file_tick.tick() => {
                let now = stamp(&path);
                if now == last_stamp && !retry {
                    continue;
                }
                last_stamp = now;
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("meshwork-rcp-peer: {}: read: {e}; keeping version {}",
                            path.display(), published.generation);
                        retry = true;
                        continue;
                    }
                };
                if bytes == last_bytes {
                    retry = false;
                    continue;
                }
                match parse_resources(&bytes) {
                    Ok(contents) => {
                        retry = false;
                        last_bytes = bytes;
                        let changed = published.update(contents);
                        snapshot = published.snapshot();
                        eprintln!("meshwork-rcp-peer: {} changed: version {} for {changed:?}",
                            path.display(), published.generation);
                        for id in &nodes {
                            publish(&cache, id, &snapshot).await;
                        }
                    }
                    Err(e) => {
                        eprintln!("meshwork-rcp-peer: {}: {e}; keeping version {}",
                            path.display(), published.generation);
                        retry = true;
                    }
                }
            }
        }
    }
}

/// Prints rust-control-plane's own `log` lines (every request and response decision) to
/// stderr when `MESHWORK_RCP_PEER_LOG` is set; they are off by default.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!(
            "meshwork-rcp-peer: {} {}: {}",
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

fn install_logger() {
    static LOGGER: StderrLog = StderrLog;
    if std::env::var_os("MESHWORK_RCP_PEER_LOG").is_some() && log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Keeps panics raised inside rust-control-plane to one line each. Its ADS stream task
/// unwraps the next request, so every client that closes its stream panics that task; the
/// server and the other streams carry on.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let Some(location) = info.location() else {
            return default(info);
        };
        if !location.file().contains("rust-control-plane") {
            return default(info);
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        eprintln!(
            "meshwork-rcp-peer: rust-control-plane task panicked at {}:{} ({message}); \
             the server keeps running",
            location
                .file()
                .rsplit("/src/")
                .next()
                .unwrap_or(location.file()),
            location.line()
        );
    }));
}

async fn run(args: Args) -> Result<(), PeerError> {
    let bytes = std::fs::read(&args.resources)
        .map_err(|e| PeerError::wrap(format!("{}: read", args.resources.display()), e))?;
    let contents = parse_resources(&bytes)
        .map_err(|e| PeerError::wrap(args.resources.display().to_string(), e))?;
    let published = Published::first(contents);

    // `ads: false`: with `true`, rust-control-plane 0.1.2 never answers a wildcard request
    // (its consistency check is inverted), and ADS ordering is not needed here.
    let cache = Arc::new(Cache::new(false));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| PeerError::wrap(format!("bind 127.0.0.1:{}", args.port), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| PeerError::wrap("local_addr", e))?;

    tokio::spawn(run_publisher(
        cache.clone(),
        args.resources.clone(),
        args.node_id.clone(),
        published,
        bytes,
    ));
    tokio::spawn(async {
        // Exit when stdin closes, so a test that dies never leaves the peer running.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    let server = tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(Service::new(cache)))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let serving = tokio::spawn(server);

    // The socket is listening (connections queue until accepted), so a client may connect.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|e| PeerError::wrap("stdout", e))?;
    drop(stdout);

    match serving.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PeerError::wrap("ADS server", e)),
        Err(e) => Err(PeerError::wrap("ADS server task", e)),
    }
}

#[tokio::main]
async fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("meshwork-rcp-peer: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    install_panic_hook();
    install_logger();
    if let Err(e) = run(args).await {
        eprintln!("meshwork-rcp-peer: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, PeerError> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    fn cluster(name: &str, timeout_secs: i64) -> Any {
        let c = Cluster {
            name: name.to_string(),
            connect_timeout: Some(data_plane_api::google::protobuf::Duration {
                seconds: timeout_secs,
                nanos: 0,
            }),
            ..Default::default()
        };
        Any {
            type_url: type_url::CLUSTER.to_string(),
            value: c.encode_to_vec(),
        }
    }

    fn file(resources: Vec<Any>) -> Vec<u8> {
        DiscoveryResponse {
            resources,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn parses_arguments() {
        let a = args(&["--resources", "f.pb", "--port", "0", "--node-id", "n"]).unwrap();
        assert_eq!(
            a,
            Args {
                resources: "f.pb".into(),
                port: 0,
                node_id: Some("n".into())
            }
        );
        assert_eq!(
            args(&["--port", "1", "--resources", "x"]).unwrap().node_id,
            None
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        let e = args(&["--resources", "f", "--port", "70000"]).unwrap_err();
        assert!(e.to_string().starts_with("--port \"70000\": "), "{e}");
        let e = args(&["--resources", "f"]).unwrap_err();
        assert_eq!(e.to_string(), "--port is required");
        let e = args(&["--port", "0", "--resources"]).unwrap_err();
        assert_eq!(e.to_string(), "--resources: missing value");
        let e = args(&["--resources", "f", "--port", "0", "--verbose"]).unwrap_err();
        assert_eq!(e.to_string(), "unknown argument \"--verbose\"");
    }

    #[test]
    fn parses_every_served_type_by_name() {
        let endpoints = ClusterLoadAssignment {
            cluster_name: "c1".into(),
            ..Default::default()
        };
        let contents = parse_resources(&file(vec![
            cluster("c1", 1),
            cluster("c2", 1),
            Any {
                // Any allows any host in the type URL.
                type_url: "example.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
                value: endpoints.encode_to_vec(),
            },
        ]))
        .unwrap();
        let names = |t| contents[t].keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(type_url::CLUSTER), ["c1", "c2"]);
        assert_eq!(names(type_url::ENDPOINT), ["c1"]);
        assert!(!contents.contains_key(type_url::LISTENER));
    }

    #[test]
    fn rejects_bad_resources_naming_the_index() {
        let e = parse_resources(&file(vec![cluster("c1", 1), cluster("c1", 2)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("resources[1]: duplicate {} named \"c1\"", type_url::CLUSTER)
        );
        let unknown = Any {
            type_url: "type.googleapis.com/google.protobuf.Empty".into(),
            value: vec![],
        };
        let e = parse_resources(&file(vec![cluster("c1", 1), unknown])).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "resources[1]: type_url: \"type.googleapis.com/google.protobuf.Empty\""
            ),
            "{e}"
        );
        let garbage = Any {
            type_url: type_url::CLUSTER.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        let e = parse_resources(&file(vec![garbage])).unwrap_err();
        assert!(
            e.to_string().starts_with("resources[0]: value: decode: "),
            "{e}"
        );
        let e = parse_resources(&file(vec![cluster("", 1)])).unwrap_err();
        assert!(e.to_string().ends_with(": empty name"), "{e}");
        let e = parse_resources(&[0xff]).unwrap_err();
        assert!(
            e.to_string().starts_with("DiscoveryResponse: decode: "),
            "{e}"
        );
    }

    #[test]
    fn every_type_is_in_the_snapshot_and_only_changed_types_get_a_new_version() {
        let mut p = Published::first(parse_resources(&file(vec![cluster("c1", 1)])).unwrap());
        let s = p.snapshot();
        for t in TYPE_URLS {
            assert_eq!(s.version(t), "1", "{t}");
        }
        assert_eq!(s.resources(type_url::CLUSTER).unwrap().items.len(), 1);
        assert!(s.resources(type_url::LISTENER).unwrap().items.is_empty());

        // Same resources: nothing changes, though the generation moves on.
        assert!(p
            .update(parse_resources(&file(vec![cluster("c1", 1)])).unwrap())
            .is_empty());
        let changed = p.update(parse_resources(&file(vec![cluster("c1", 5)])).unwrap());
        assert_eq!(changed, [type_url::CLUSTER]);
        let s = p.snapshot();
        assert_eq!(s.version(type_url::CLUSTER), "3");
        assert_eq!(s.version(type_url::LISTENER), "1");

        // Removing the last cluster is a change too.
        assert_eq!(
            p.update(parse_resources(&file(vec![])).unwrap()),
            [type_url::CLUSTER]
        );
        assert!(p
            .snapshot()
            .resources(type_url::CLUSTER)
            .unwrap()
            .items
            .is_empty());
    }
}
