//! Upstream connections under hostile or aging servers, over real TLS on loopback: the
//! application's floor under xDS security ([`UpstreamPolicy`]), readiness only after the
//! server's preface, and retiring connections at their maximum age or the server
//! certificate's expiry.

mod support;

use support::*;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{Authorizer, StaticSource, VerifyError};
use meshwork_grpc::{ConnectError, MeshChannelOptions, UpstreamPolicy, connect_error};
use meshwork_test_support::backend::{
    Backend, Conn, client_mtls, server_tls, silent_tls, skip, source,
};
use meshwork_xds::resource::Cluster;
use tokio::net::TcpStream;
use tonic::Status;

const GREETER: &str = "spiffe://example.org/ns/default/sa/greeter";

/// Answers `<name> from conn-<n>`, `n` the number of its connection; a request named
/// `wait` is held until the test releases it.
struct SayHello {
    conn: Conn,
}

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let name = req.into_inner().name;
        let message = format!("{name} from conn-{}", self.conn.number());
        let conn = self.conn.clone();
        Box::pin(async move {
            if name == "wait" {
                conn.hold().await;
            }
            Ok(tonic::Response::new(HelloReply { message }))
        })
    }
}

/// A Greeter on 127.0.0.1:0, over h2c or, with `tls`, over TLS.
async fn backend(tls: Option<Arc<rustls::ServerConfig>>) -> Backend {
    Backend::start(tls, |conn, req: http::Request<hyper::body::Incoming>| {
        dispatch(req.map(tonic::body::Body::new), SayHello { conn })
    })
    .await
}

fn tls_cluster(sans: &[&str]) -> Arc<Cluster> {
    cluster("greeter", Some(upstream_tls(sans)))
}

// Hole 13: a server that refuses our certificate.

#[tokio::test]
async fn a_server_refusing_our_certificate_fails_every_call_fast_with_unavailable() {
    let ca = TestCa::new("example.org");
    // TLS 1.3 (rustls' default): our handshake ends before the server checks our SVID, so
    // its refusal is an alert we only see when reading.
    let refusing = Authorizer::Exact(
        "spiffe://example.org/ns/default/sa/not-you"
            .parse()
            .unwrap(),
    );
    let server = backend(Some(server_tls(
        source(&ca, "/ns/default/sa/greeter"),
        refusing,
    )))
    .await;
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[]), &[server.addr], options);
    let calls = async {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(hello(&channel, "hi").await.unwrap_err());
        }
        statuses
    };
    // gRPC fails these at once; waiting out a reconnect backoff per call takes far longer.
    let statuses = tokio::time::timeout(Duration::from_secs(5), calls)
        .await
        .expect("20 calls fail within 5 s");
    for status in &statuses {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let ce = connect_error(status).unwrap_or_else(|| panic!("no ConnectError: {status:?}"));
        let ConnectError::Preface { source, .. } = ce else {
            panic!("{ce}");
        };
        let tls = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a TLS error: {source:?}"));
        assert!(matches!(tls, rustls::Error::AlertReceived(_)), "{tls:?}");
        assert!(status.message().contains("alert"), "{}", status.message());
    }
}

#[tokio::test]
async fn a_server_that_never_sends_settings_fails_the_connect_at_the_connect_timeout() {
    let ca = TestCa::new("example.org");
    let config = server_tls(source(&ca, "/ns/default/sa/greeter"), Authorizer::Any);
    let addr = silent_tls(config).await;
    let c = Arc::new(Cluster {
        connect_timeout: Duration::from_millis(500),
        ..Cluster::clone(&tls_cluster(&[]))
    });
    let channel = static_channel(c, &[addr], MeshChannelOptions::new().mtls(client_mtls(&ca)));
    // A guard against a hang, not a synchronisation: the connect timeout is 0.5 s.
    let status = tokio::time::timeout(Duration::from_secs(10), hello(&channel, "hi"))
        .await
        .expect("the call does not hang")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let ce = connect_error(&status).unwrap_or_else(|| panic!("{status:?}"));
    assert!(matches!(ce, ConnectError::Timeout { .. }), "{ce}");
}

// Hole 11: the application's floor under xDS security.

#[tokio::test]
async fn require_mtls_refuses_a_plaintext_cluster_without_opening_a_connection() {
    let server = backend(None).await;
    let options =
        MeshChannelOptions::new().upstream_policy(UpstreamPolicy::new().require_mtls(true));
    let channel = static_channel(cluster("greeter", None), &[server.addr], options);
    for _ in 0..3 {
        let status = hello(&channel, "hi").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let ce = connect_error(&status).unwrap_or_else(|| panic!("{status:?}"));
        assert!(
            matches!(ce, ConnectError::PlaintextRefused { cluster } if cluster == "greeter"),
            "{ce}"
        );
    }
    // Had the channel connected, its connection would be ahead of this probe in the
    // listener's queue.
    let probe = TcpStream::connect(server.addr).await.unwrap();
    let probe_addr = probe.local_addr().unwrap();
    while server.connections() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        server.peers()[0],
        probe_addr,
        "a plaintext connection was opened"
    );

    // Without the floor the same cluster is dialled in plaintext (gRFC A29).
    let channel = static_channel(
        cluster("greeter", None),
        &[server.addr],
        MeshChannelOptions::new(),
    );
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
}

#[tokio::test]
async fn a_pinned_authorizer_refuses_servers_the_san_matchers_allow() {
    let ca = TestCa::new("example.org");
    let intruder_id = "spiffe://example.org/ns/default/sa/intruder";
    let intruder = backend(Some(server_tls(
        source(&ca, "/ns/default/sa/intruder"),
        Authorizer::Any,
    )))
    .await;
    let greeter = backend(Some(server_tls(
        source(&ca, "/ns/default/sa/greeter"),
        Authorizer::Any,
    )))
    .await;
    let pinned = MeshChannelOptions::new()
        .mtls(client_mtls(&ca))
        .upstream_policy(UpstreamPolicy::new().pin(Authorizer::Exact(GREETER.parse().unwrap())));

    // An empty SAN list (any trusted peer) and one naming the intruder: both still refused.
    for sans in [&[][..], &[intruder_id][..]] {
        let channel = static_channel(tls_cluster(sans), &[intruder.addr], pinned.clone());
        let status = hello(&channel, "hi").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let ce = connect_error(&status).unwrap_or_else(|| panic!("{status:?}"));
        match ce.verify_error() {
            Some(VerifyError::Unauthorized { spiffe_id, policy }) => {
                assert_eq!(spiffe_id.to_string(), intruder_id);
                assert!(policy.contains(GREETER), "{policy}");
            }
            other => panic!("{sans:?}: {other:?} ({ce})"),
        }
    }
    // The pinned server passes, and the SAN matchers still apply on top of the pin.
    let channel = static_channel(tls_cluster(&[]), &[greeter.addr], pinned.clone());
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");
    let channel = static_channel(tls_cluster(&[intruder_id]), &[greeter.addr], pinned);
    let status = hello(&channel, "hi").await.unwrap_err();
    assert!(
        matches!(
            connect_error(&status).and_then(ConnectError::verify_error),
            Some(VerifyError::Unauthorized { .. })
        ),
        "{status:?}"
    );

    // Without the pin, the control plane's empty SAN list lets the intruder answer (A29).
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[]), &[intruder.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-3");
}

// Hole 12: long-lived connections.

#[tokio::test]
async fn a_connection_is_retired_when_the_server_certificate_expires() {
    let ca = TestCa::new("example.org");
    let source = Arc::new(StaticSource::new(
        Some(ca.svid_valid_for("/ns/default/sa/greeter", Duration::from_secs(60))),
        ca.bundles(),
    ));
    let server = backend(Some(server_tls(source.clone(), Authorizer::Any))).await;
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[GREETER]), &[server.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");

    // The server rotates; the connection made under the old SVID lives on until that SVID
    // expires (tokio's clock stands for the wall clock the deadline was taken from). The
    // steps keep 10 s from the expiry: notAfter has whole seconds, and the wall clock runs
    // on between minting the SVID and dialling, more so on a loaded machine.
    source.set(Some(ca.svid("/ns/default/sa/greeter")), ca.bundles());
    skip(Duration::from_secs(50)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");
    skip(Duration::from_secs(20)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_maximum_age_moves_new_calls_to_a_new_connection_and_in_flight_calls_finish() {
    let ca = TestCa::new("example.org");
    let mut server = backend(Some(server_tls(
        source(&ca, "/ns/default/sa/greeter"),
        Authorizer::Any,
    )))
    .await;
    let options = MeshChannelOptions::new()
        .mtls(client_mtls(&ca))
        .upstream_policy(UpstreamPolicy::new().max_connection_age(Duration::from_secs(30)));
    let channel = static_channel(tls_cluster(&[GREETER]), &[server.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");

    let in_flight = tokio::spawn({
        let channel = channel.clone();
        async move { hello(&channel, "wait").await }
    });
    server.held().await;
    skip(Duration::from_secs(31)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
    assert_eq!(server.connections(), 2);
    // The old connection still carries the call that was on it when it retired.
    server.release();
    assert_eq!(in_flight.await.unwrap().unwrap(), "wait from conn-1");

    // Without a maximum age the connection stays.
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[GREETER]), &[server.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-3");
    skip(Duration::from_secs(3600)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-3");
}
