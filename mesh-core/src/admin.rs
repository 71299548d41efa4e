//! An opt-in admin HTTP endpoint (feature `admin`): what the mesh sees, for people and
//! probes. Serve it on loopback (the default of [`Admin::bind`]); it has no authentication.
//!
//! | path | answer |
//! |---|---|
//! | `GET /config_dump` | the xDS client's view of every resource, as JSON (the CSDS shape) |
//! | `GET /svid` | the current SVID: `spiffe_id`, `serial` (hex), `not_before`, `not_after` (Unix seconds) |
//! | `GET /ready` | `200 ready` once [`Readiness::set`] said so, `503 not ready` before |
//! | gRPC `envoy.service.status.v3.ClientStatusDiscoveryService` | CSDS (gRFC A40) over the xDS client ([`meshwork_xds::csds`]), for `grpcdebug` and any CSDS client; `UNIMPLEMENTED` without an xDS client |
//!
//! The endpoint speaks HTTP/1.1 and HTTP/2 (told apart by the client's first bytes), so
//! that gRPC's CSDS clients reach it on the same port as `curl`.
//!
//! ```no_run
//! # async fn f(xds: meshwork_core::xds::client::XdsClient) -> std::io::Result<()> {
//! use meshwork_core::admin::{Admin, Readiness};
//! let ready = Readiness::new();
//! let admin = Admin::new().xds(xds).readiness(ready.clone()).bind(None).await?;
//! println!("admin on http://{}", admin.local_addr());
//! ready.set(true);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use tokio::net::TcpListener;
use tower::{BoxError, ServiceExt as _};

use crate::identity::SvidSource;
use crate::inbound::{HttpVersions, MeshAcceptor, ServerLimits};
use crate::xds::client::XdsClient;
use crate::xds::csds::CsdsService;

/// The path prefix of CSDS's gRPC methods.
const CSDS_PREFIX: &str = "/envoy.service.status.v3.ClientStatusDiscoveryService/";

/// A response body of either kind the endpoint answers with (text or JSON, gRPC).
type AdminBody = UnsyncBoxBody<Bytes, BoxError>;

/// The address [`Admin::bind`] uses by default: loopback only.
pub const DEFAULT_ADDRESS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    15000,
));

/// A readiness flag the application sets; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether it is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the admin endpoint reports; see the [module docs](self).
#[derive(Clone, Default)]
pub struct Admin {
    xds: Option<XdsClient>,
    svid: Option<Arc<dyn SvidSource>>,
    ready: Readiness,
    limits: ServerLimits,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("xds", &self.xds.is_some())
            .field("svid", &self.svid.is_some())
            .field("ready", &self.ready.get())
            .field("limits", &self.limits)
            .finish()
    }
}

/// A running admin endpoint; stops accepting when dropped (connections already open
/// finish their requests and close at their limits).
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminHandle {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Admin {
    /// Reports nothing yet: `/config_dump` is `[]`, `/svid` is 404, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// The xDS client whose view `/config_dump` serves.
    pub fn xds(mut self, client: XdsClient) -> Self {
        self.xds = Some(client);
        self
    }

    /// The identity source whose SVID `/svid` shows.
    pub fn svid_source(mut self, source: Arc<dyn SvidSource>) -> Self {
        self.svid = Some(source);
        self
    }

    /// The flag `/ready` reports.
    pub fn readiness(mut self, ready: Readiness) -> Self {
        self.ready = ready;
        self
    }

    /// Bounds what clients may hold (default [`ServerLimits::default`]: among others a 30 s
    /// header-read timeout, a 1 h idle timeout and 10 000 connections; for CSDS's HTTP/2
    /// connections, the HTTP/2 limits too).
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Listens on `address` ([`DEFAULT_ADDRESS`], loopback, when `None`) and serves in a
    /// task on the current runtime.
    pub async fn bind(self, address: Option<SocketAddr>) -> std::io::Result<AdminHandle> {
        let listener = TcpListener::bind(address.unwrap_or(DEFAULT_ADDRESS)).await?;
        Ok(self.serve(listener))
    }

    /// Serves on `listener` in a task on the current runtime.
    pub fn serve(self, listener: TcpListener) -> AdminHandle {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let acceptor = MeshAcceptor::plaintext(listener).limits(self.limits.clone());
        let csds = self
            .xds
            .clone()
            .map(|xds| CsdsService::new(xds).into_server());
        let admin = Arc::new(self);
        let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let admin = admin.clone();
            let csds = csds.clone();
            async move {
                if !req.uri().path().starts_with(CSDS_PREFIX) {
                    return Ok::<_, Infallible>(admin.answer(req).await.map(boxed));
                }
                let Some(csds) = csds else {
                    return Ok(grpc_unimplemented());
                };
                Ok(match csds.oneshot(req).await {
                    Ok(rsp) => rsp.map(|b| b.map_err(BoxError::from).boxed_unsync()),
                    Err(never) => match never {},
                })
            }
        });
        let task = tokio::spawn(crate::inbound::serve(
            acceptor,
            HttpVersions::Any,
            svc,
            std::future::pending(),
        ));
        AdminHandle { local_addr, task }
    }

    async fn answer<B>(&self, req: http::Request<B>) -> http::Response<Full<Bytes>> {
        if req.method() != http::Method::GET {
            return text(http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/config_dump" => {
                let dump = match &self.xds {
                    Some(xds) => xds.dump().await,
                    None => Vec::new(),
                };
                json(&dump)
            }
            "/svid" => match self.svid.as_ref().and_then(|s| s.snapshot().svid.clone()) {
                Some(svid) => {
                    let serial = svid
                        .cert_chain()
                        .first()
                        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
                        .map(|(_, cert)| cert.tbs_certificate.raw_serial_as_string());
                    json(&serde_json::json!({
                        "spiffe_id": svid.spiffe_id().to_string(),
                        "serial": serial,
                        "not_before": svid.not_before(),
                        "not_after": svid.not_after(),
                    }))
                }
                None => text(http::StatusCode::NOT_FOUND, "no SVID\n"),
            },
            "/ready" if self.ready.get() => text(http::StatusCode::OK, "ready\n"),
            "/ready" => text(http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(http::StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn boxed(body: Full<Bytes>) -> AdminBody {
    body.map_err(|never| match never {}).boxed_unsync()
}

/// A gRPC `UNIMPLEMENTED` answer: CSDS asked of an endpoint without an xDS client.
fn grpc_unimplemented() -> http::Response<AdminBody> {
    let mut rsp = http::Response::new(boxed(Full::new(Bytes::new())));
    let headers = rsp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from_static("12"));
    headers.insert(
        "grpc-message",
        http::HeaderValue::from_static("no xDS client on this admin endpoint"),
    );
    rsp
}

fn text(status: http::StatusCode, body: &'static str) -> http::Response<Full<Bytes>> {
    let mut rsp = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    rsp
}

fn json(value: &impl serde::Serialize) -> http::Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut rsp = http::Response::new(Full::new(Bytes::from(body)));
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        Err(_) => text(http::StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioExecutor;

    use super::*;
    use crate::identity::StaticSource;
    use crate::identity::testing::{Flaw, TestCa};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let rsp = client
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// CSDS (gRPC over HTTP/2) on the same port as the HTTP/1.1 pages: with an xDS client
    /// its view (here the node and the listener it asked for, not answered: the control
    /// plane refuses connections), without one UNIMPLEMENTED.
    #[tokio::test]
    async fn serves_csds_over_http2_beside_the_pages() {
        use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
        use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
        use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
        use meshwork_xds::bootstrap::{Bootstrap, XdsServer};

        let refused = meshwork_test_support::refused_addr();
        let bootstrap = Bootstrap::builder()
            .node_id("admin-test")
            .server(XdsServer::new(format!("http://{refused}")).unwrap())
            .build()
            .unwrap();
        let xds = XdsClient::builder(&bootstrap).unwrap().start();
        let _watch = xds.watch_target("greeter:50051", "greeter:50051").await;
        let admin = Admin::new()
            .xds(xds)
            .bind(Some(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let addr = admin.local_addr();
        let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let rsp = csds
            .fetch_client_status(ClientStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        let config = &rsp.config[0];
        assert_eq!(config.node.as_ref().unwrap().id, "admin-test");
        let listener = config
            .generic_xds_configs
            .iter()
            .find(|c| c.name == "greeter:50051")
            .unwrap_or_else(|| panic!("{config:?}"));
        assert_eq!(
            listener.client_status,
            ClientResourceStatus::Requested as i32
        );
        assert_eq!(
            get(addr, "/ready").await.0,
            503,
            "HTTP/1.1 on the same port"
        );

        let bare = Admin::new()
            .bind(Some(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let mut csds =
            ClientStatusDiscoveryServiceClient::connect(format!("http://{}", bare.local_addr()))
                .await
                .unwrap();
        let status = csds
            .fetch_client_status(ClientStatusRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    }

    #[tokio::test]
    async fn serves_svid_readiness_and_an_empty_dump_on_loopback() {
        let ca = TestCa::new("example.org");
        let svid = ca
            .mint("/ns/default/sa/greeter", Flaw::None)
            .svid()
            .unwrap();
        let source = StaticSource::new(Some(svid), ca.bundles());
        let ready = Readiness::new();
        let admin = Admin::new()
            .svid_source(Arc::new(source))
            .readiness(ready.clone())
            .bind(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .unwrap();
        let addr = admin.local_addr();
        assert!(addr.ip().is_loopback());

        assert_eq!(get(addr, "/ready").await.0, 503);
        ready.set(true);
        assert_eq!(get(addr, "/ready").await, (200, "ready\n".into()));
        let (status, body) = get(addr, "/svid").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["spiffe_id"], "spiffe://example.org/ns/default/sa/greeter");
        assert!(v["serial"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(v["not_after"].as_i64().unwrap() > v["not_before"].as_i64().unwrap());
        assert_eq!(get(addr, "/config_dump").await, (200, "[]".into()));
        assert_eq!(get(addr, "/nope").await.0, 404);
    }

    #[tokio::test]
    async fn silent_and_slow_clients_neither_starve_the_endpoint_nor_stay_connected() {
        use std::time::Duration;

        use crate::inbound::testing::{closed_within, silent, slowloris};

        let limits = ServerLimits::new()
            .header_read_timeout(Duration::from_millis(800))
            .idle_timeout(Some(Duration::from_millis(800)))
            .drain_grace(Duration::from_millis(300));
        let admin = Admin::new()
            .limits(limits)
            .bind(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .unwrap();
        let addr = admin.local_addr();
        let mut slow = Vec::new();
        for _ in 0..3 {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            slow.push(slowloris(tcp, Duration::from_millis(50)));
        }
        let flood = silent(addr, 32).await.unwrap();

        let answered = tokio::time::timeout(Duration::from_secs(2), get(addr, "/ready")).await;
        assert_eq!(answered.expect("the admin endpoint was starved").0, 503);

        let bound = Duration::from_secs(5);
        let (slow, flood) = futures_util::future::join(
            futures_util::future::join_all(slow.into_iter().map(|c| closed_within(c, bound))),
            futures_util::future::join_all(flood.into_iter().map(|c| closed_within(c, bound))),
        )
        .await;
        assert!(slow.iter().all(|c| *c), "slowloris still open: {slow:?}");
        assert!(
            flood.iter().all(|c| *c),
            "silent connections still open: {flood:?}"
        );
    }
}
