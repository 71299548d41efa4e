//! `MeshServer::from_xds` end to end: the server's Listener, mTLS and RBAC come from our xDS
//! test server over a real ADS stream (Istio-shaped inbound resources, gRFC A36/A29/A41), its
//! certificates from the bootstrap's `file_watcher` provider; callers are `MeshChannel`s
//! over real mTLS handshakes and HTTP/2.

mod support;

use support::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{MtlsConfig, PeerIdentity, StaticSource};
use meshwork_grpc::{MeshChannel, MeshChannelOptions, MeshServer, ServingState};
use meshwork_test_support::certs;
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::client::XdsClient;
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::{Code, Status};

const TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";
const GREETER_ID: &str = "spiffe://example.org/ns/default/sa/greeter";
const ALICE: &str = "/ns/default/sa/alice";
const BOB: &str = "/ns/default/sa/bob";

/// `helloworld.Greeter` replying `"hello <name> from <caller's SPIFFE ID>"`.
#[derive(Clone)]
struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

struct SayHello;

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<PeerIdentity>()
            .map_or_else(|| "nobody".to_owned(), |p| p.spiffe_id().to_string());
        let message = format!("hello {} from {caller}", req.get_ref().name);
        Box::pin(async move { Ok(tonic::Response::new(HelloReply { message })) })
    }
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move { Ok(dispatch(req, SayHello).await) })
    }
}

/// The bootstrap: our test server, Istio's listener name template, and a `default`
/// certificate provider with the greeter's SVID and the CA's root in `dir`.
fn bootstrap(xds: &XdsTestServer, dir: &Path) -> Bootstrap {
    let json = format!(
        r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}]}}],
            "node": {{"id": "greeter-node"}},
            "server_listener_resource_name_template": "{TEMPLATE}",
            {}}}"#,
        xds.uri(),
        certs::file_watcher_providers(dir)
    );
    Bootstrap::from_json_str(&json).unwrap()
}

struct Fixture {
    ca: TestCa,
    xds: XdsTestServer,
    client: XdsClient,
    addr: SocketAddr,
    name: String,
    states: mpsc::UnboundedReceiver<ServingState>,
    /// The server's task.
    task: tokio::task::JoinHandle<()>,
    dir: std::path::PathBuf,
}

impl Fixture {
    /// A `MeshServer::from_xds` on 127.0.0.1:0 with no Listener on the control plane yet.
    async fn start() -> Self {
        Self::start_with(|s| s).await
    }

    async fn start_with(server: impl FnOnce(MeshServer) -> MeshServer) -> Self {
        let ca = TestCa::new("example.org");
        let dir = certs::istio_dir(&ca, "/ns/default/sa/greeter");
        let xds = XdsTestServer::start().await.unwrap();
        let bootstrap = bootstrap(&xds, &dir);
        let client = XdsClient::builder(&bootstrap)
            .unwrap()
            .fail_static(FailStatic::new(dir.join("xds-snapshot")))
            .start();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = bootstrap.server_listener_resource_name(addr).unwrap();
        let (task, states) = serve(&client, listener, server);
        Self {
            ca,
            xds,
            client,
            addr,
            name,
            states,
            task,
            dir,
        }
    }

    /// Publishes `listener` and nothing else.
    fn publish(&self, listener: Listener) {
        self.xds.set_snapshot(Snapshot::new().listener(listener));
    }

    /// Waits (at most 10 s) until the client has NACKed the server's Listener.
    async fn nacked(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self
            .client
            .dump()
            .await
            .iter()
            .any(|r| r.name == self.name && r.error.is_some())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Listener was not NACKed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next serving state reported.
    async fn next_state(&mut self) -> ServingState {
        tokio::time::timeout(Duration::from_secs(10), self.states.recv())
            .await
            .expect("a serving state within 10 s")
            .expect("the server is running")
    }

    /// A channel to the greeter over mTLS as `path`, verifying the greeter's SVID.
    fn caller(&self, path: &str) -> MeshChannel {
        let mtls = MtlsConfig::new(Arc::new(StaticSource::new(
            Some(self.ca.svid(path)),
            self.ca.bundles(),
        )));
        static_channel(
            cluster("greeter", Some(upstream_tls(&[GREETER_ID]))),
            &[self.addr],
            MeshChannelOptions::new().mtls(mtls),
        )
    }

    /// A plaintext (h2c) channel to the greeter.
    fn plaintext_caller(&self) -> MeshChannel {
        static_channel(
            cluster("greeter", None),
            &[self.addr],
            MeshChannelOptions::new(),
        )
    }
}

/// Serve the greeter on `listener` with `MeshServer::from_xds(client)`, reporting its
/// serving states.
fn serve(
    client: &XdsClient,
    listener: TcpListener,
    server: impl FnOnce(MeshServer) -> MeshServer,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<ServingState>,
) {
    let (tx, states) = mpsc::unbounded_channel();
    let server = server(
        MeshServer::from_xds(client)
            .on_serving_state(move |s| {
                let _ = tx.send(s.clone());
            })
            .add_service(Greeter),
    );
    let task = tokio::spawn(async move {
        server
            .serve(listener)
            .await
            .expect("the server stops cleanly");
    });
    (task, states)
}

/// An RBAC ALLOW filter admitting exactly the SPIFFE IDs `allowed` (paths under
/// spiffe://example.org).
fn allow_only(allowed: &[&str]) -> HttpFilter {
    let principals = allowed
        .iter()
        .map(|p| build::principal_name(build::exact(&format!("spiffe://example.org{p}"))))
        .collect();
    build::rbac_filter(
        Action::Allow,
        [(
            "ns[default]-policy[greeter]-rule[0]",
            build::rbac_policy(vec![build::permission_any()], principals),
        )],
    )
}

/// Istio's STRICT inbound Listener for the fixture's server: one mTLS chain requiring client
/// certificates, non-forwarding routes, RBAC allowing `allowed`.
fn strict(f: &Fixture, allowed: &[&str]) -> Listener {
    strict_at(f, f.addr, allowed)
}

fn strict_at(f: &Fixture, addr: SocketAddr, allowed: &[&str]) -> Listener {
    let routes = build::route_config(
        "inbound|greeter",
        vec![build::virtual_host(
            "inbound|http|50051",
            ["*"],
            vec![build::non_forwarding_route("/")],
        )],
    );
    let hcm = build::server_hcm_inline(routes, vec![allow_only(allowed)]);
    build::server_listener(
        &f.name,
        addr,
        vec![build::mtls_chain("inbound-mtls", hcm, "default", true)],
        None,
    )
}

async fn code(channel: &MeshChannel) -> Result<String, Code> {
    match tokio::time::timeout(Duration::from_secs(10), hello(channel, "x")).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => panic!("the call did not end within 10 s"),
    }
}

/// Calls until the outcome is `want` (the control plane's change takes a moment to arrive),
/// at most 10 s.
async fn until(channel: &MeshChannel, want: Result<(), Code>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = code(channel).await.map(|_| ());
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {got:?}, want {want:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_strict_listener_with_rbac_serves_allowed_callers_and_denies_the_rest() {
    let mut f = Fixture::start().await;
    assert!(
        !f.client
            .bootstrap()
            .server_listener_resource_name_template()
            .unwrap()
            .is_empty()
    );
    // No Listener yet: not serving, connections are closed.
    let alice = f.caller(ALICE);
    assert_eq!(code(&alice).await, Err(Code::Unavailable));

    f.publish(strict(&f, &[ALICE]));
    assert!(f.next_state().await.is_serving());
    // The channel reconnects after its backoff.
    until(&alice, Ok(())).await;
    assert_eq!(
        code(&alice).await.unwrap(),
        "hello x from spiffe://example.org/ns/default/sa/alice"
    );
    assert_eq!(code(&f.caller(BOB)).await, Err(Code::PermissionDenied));
    // STRICT: a caller without a certificate does not get through the handshake.
    assert_eq!(code(&f.plaintext_caller()).await, Err(Code::Unavailable));
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_call_on_the_same_connection() {
    let mut f = Fixture::start().await;
    f.publish(strict(&f, &[ALICE]));
    assert!(f.next_state().await.is_serving());
    let (alice, bob) = (f.caller(ALICE), f.caller(BOB));
    assert!(code(&alice).await.is_ok());
    assert_eq!(code(&bob).await, Err(Code::PermissionDenied));

    f.publish(strict(&f, &[BOB]));
    until(&alice, Err(Code::PermissionDenied)).await;
    assert!(code(&bob).await.is_ok());

    f.publish(strict(&f, &[ALICE, BOB]));
    until(&alice, Ok(())).await;
    assert!(code(&bob).await.is_ok());
}

#[tokio::test]
async fn a_deleted_listener_stops_serving_and_a_new_one_serves_again() {
    let mut f = Fixture::start().await;
    f.publish(strict(&f, &[ALICE]));
    assert!(f.next_state().await.is_serving());
    let alice = f.caller(ALICE);
    assert!(code(&alice).await.is_ok());

    f.xds.set_snapshot(Snapshot::new());
    match f.next_state().await {
        ServingState::NotServing(why) => {
            assert!(why.to_string().contains("does not exist"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    until(&alice, Err(Code::Unavailable)).await;

    f.publish(strict(&f, &[ALICE]));
    assert!(f.next_state().await.is_serving());
    until(&alice, Ok(())).await;
}

#[tokio::test]
async fn a_listener_for_another_address_is_not_served() {
    let mut f = Fixture::start().await;
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], f.addr.port().wrapping_add(1)));
    f.publish(strict_at(&f, elsewhere, &[ALICE]));
    match f.next_state().await {
        ServingState::NotServing(why) => {
            assert!(why.to_string().contains("listens on"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(code(&f.caller(ALICE)).await, Err(Code::Unavailable));
}

#[tokio::test]
async fn a_rejected_update_keeps_the_listener_being_served() {
    let mut f = Fixture::start().await;
    f.publish(strict(&f, &[ALICE]));
    assert!(f.next_state().await.is_serving());
    let alice = f.caller(ALICE);
    assert!(code(&alice).await.is_ok());

    // No chain and no default chain: NACKed.
    f.publish(build::server_listener(&f.name, f.addr, Vec::new(), None));
    // The NACK reaches the client; the server keeps serving what it had.
    f.nacked().await;
    assert!(code(&alice).await.is_ok());
    assert!(f.states.try_recv().is_err(), "no state change");
}

#[tokio::test]
async fn only_non_forwarding_routes_are_served() {
    let mut f = Fixture::start().await;
    let routes = build::route_config(
        "inbound|greeter",
        vec![build::virtual_host(
            "inbound|http|50051",
            ["*"],
            vec![build::route_to("/", "somewhere")],
        )],
    );
    let hcm = build::server_hcm_inline(routes, Vec::new());
    f.publish(build::server_listener(
        &f.name,
        f.addr,
        vec![build::mtls_chain("inbound-mtls", hcm, "default", true)],
        None,
    ));
    assert!(f.next_state().await.is_serving());
    assert_eq!(code(&f.caller(ALICE)).await, Err(Code::Unavailable));
}

#[tokio::test]
async fn a_code_policy_and_the_xds_policy_must_both_allow() {
    use meshwork_core::inbound::{AuthorizationPolicy, Principal, Rule};
    let policy = AuthorizationPolicy::new().allow(Rule::any().principal(Principal::Id(
        format!("spiffe://example.org{BOB}").parse().unwrap(),
    )));
    let mut f = Fixture::start_with(|s| s.policy(policy)).await;
    f.publish(strict(&f, &[ALICE, BOB]));
    assert!(f.next_state().await.is_serving());
    // xDS allows both; the code allows only bob.
    assert_eq!(code(&f.caller(ALICE)).await, Err(Code::PermissionDenied));
    assert!(code(&f.caller(BOB)).await.is_ok());
}

/// A36: a rejected update is an ambient error while a Listener is served, also while the
/// Listener that replaces it waits for its RDS route configuration.
#[tokio::test]
async fn a_rejected_update_while_another_waits_for_its_routes_keeps_serving() {
    let mut f = Fixture::start().await;
    let routes = |name: &str| {
        build::route_config(
            name,
            vec![build::virtual_host(
                "inbound|http|50051",
                ["*"],
                vec![build::non_forwarding_route("/")],
            )],
        )
    };
    let over_rds = |f: &Fixture, rds: &str| {
        let hcm = build::server_hcm_rds(rds, vec![allow_only(&[ALICE])]);
        build::server_listener(
            &f.name,
            f.addr,
            vec![build::mtls_chain("inbound-mtls", hcm, "default", true)],
            None,
        )
    };
    f.xds.set_snapshot(
        Snapshot::new()
            .listener(over_rds(&f, "a"))
            .route(routes("a")),
    );
    assert!(f.next_state().await.is_serving());
    let alice = f.caller(ALICE);
    until(&alice, Ok(())).await;

    // L2 names route configuration `b`, which never comes: still serving L1.
    f.xds.set_snapshot(
        Snapshot::new()
            .listener(over_rds(&f, "b"))
            .route(routes("a")),
    );
    // L3 is rejected.
    f.xds.set_snapshot(
        Snapshot::new()
            .listener(build::server_listener(&f.name, f.addr, Vec::new(), None))
            .route(routes("a")),
    );
    f.nacked().await;
    assert!(code(&alice).await.is_ok());
    assert!(f.states.try_recv().is_err(), "no state change");
}

/// Issue #15: a server restarted while its control plane is down serves the last Listener
/// it had (fail-static snapshot), with that Listener's mTLS and RBAC, instead of nothing.
#[tokio::test]
async fn a_server_restarted_while_the_control_plane_is_down_serves_its_last_listener() {
    let mut f = Fixture::start().await;
    f.publish(strict(&f, &[ALICE]));
    assert!(f.next_state().await.is_serving());
    let alice = f.caller(ALICE);
    assert!(code(&alice).await.is_ok());
    let snapshot = f.client.save_snapshot().await.unwrap().expect("written");

    // The process stops; its control plane is down when it starts again on the same port.
    f.task.abort();
    let _ = (&mut f.task).await;
    let Fixture {
        ca,
        xds,
        client,
        addr,
        dir,
        ..
    } = f;
    drop(client);
    let bootstrap = bootstrap(&xds, &dir);
    xds.shutdown().await.unwrap();
    let client = XdsClient::builder(&bootstrap)
        .unwrap()
        .fail_static(FailStatic::new(dir.join("xds-snapshot")))
        .start();
    assert_eq!(
        FailStatic::new(dir.join("xds-snapshot")).path_for(&bootstrap),
        snapshot
    );
    let listener = TcpListener::bind(addr).await.unwrap();
    let (_task, mut states) = serve(&client, listener, |s| s);
    let state = tokio::time::timeout(Duration::from_secs(10), states.recv())
        .await
        .expect("a serving state within 10 s")
        .expect("the server is running");
    assert!(state.is_serving(), "{state:?}");

    // The snapshot's Listener, whole: mTLS with its RBAC.
    let caller = |path: &str| {
        let mtls = MtlsConfig::new(Arc::new(StaticSource::new(
            Some(ca.svid(path)),
            ca.bundles(),
        )));
        static_channel(
            cluster("greeter", Some(upstream_tls(&[GREETER_ID]))),
            &[addr],
            MeshChannelOptions::new().mtls(mtls),
        )
    };
    until(&caller(ALICE), Ok(())).await;
    assert_eq!(code(&caller(BOB)).await, Err(Code::PermissionDenied));
    let dump = client.dump().await;
    assert!(
        !dump.is_empty() && dump.iter().all(|row| row.from_snapshot),
        "{dump:#?}"
    );
}
