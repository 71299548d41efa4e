//! `MeshClient` end to end: real hyper backends on loopback (HTTP/1.1 and HTTP/2, plaintext
//! and SPIFFE mTLS), configured through an in-process xDS server or by hand.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, Route, retry_policy, route};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use meshwork_core::config::StaticConfig;
use meshwork_core::identity::VerifyError;
use meshwork_core::identity::testing::TestCa;
use meshwork_core::xds::client::ReadyError;
use meshwork_http::{ConnectError, MeshClient, MeshClientOptions, ResolveError};
use meshwork_test_support::xds::target_routes;
use meshwork_xds::resource::UpstreamProtocol;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use support::{
    Backend, Proto, body, h2c_cluster, identity, static_cluster, tls_cluster, xds_client,
};

const GREETER_SAN: &str = "spiffe://example.org/ns/default/sa/greeter";

fn with_action(
    mut route: Route,
    f: impl FnOnce(&mut envoy_types::pb::envoy::config::route::v3::RouteAction),
) -> Route {
    if let Some(route::Action::Route(action)) = &mut route.action {
        f(action);
    }
    route
}

/// One host, `greeter`, whose routes reach: mTLS to an HTTP/1.1-only and an HTTP/2-only
/// backend; mTLS to a backend that speaks either, through clusters that say HTTP/1.1,
/// HTTP/2 or nothing (Envoy's `HttpProtocolOptions`); plaintext HTTP/1.1; plaintext h2c
/// (one cluster by the deprecated `http2_protocol_options`, one by `HttpProtocolOptions`);
/// and a cluster whose SAN matcher names someone else. A second host, `other`, is served by
/// the same xDS client.
#[tokio::test]
async fn xds_mtls_speaks_the_protocol_the_backend_and_cluster_ask_for() {
    let ca = TestCa::new("example.org");
    let greeter = identity(&ca, "/ns/default/sa/greeter");
    let (tls_h1, _) = Backend::new("tls-h1", Proto::H1)
        .tls(greeter.clone())
        .start()
        .await;
    let (tls_h2, _) = Backend::new("tls-h2", Proto::H2)
        .tls(greeter.clone())
        .start()
        .await;
    let (tls_both, _) = Backend::new("tls-both", Proto::Both)
        .tls(greeter)
        .start()
        .await;
    let (plain_h1, _) = Backend::new("plain-h1", Proto::H1).start().await;
    let (plain_h2, _) = Backend::new("plain-h2", Proto::H2).start().await;
    let (other, _) = Backend::new("other", Proto::H1).start().await;

    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        target_routes(
            "greeter",
            vec![
                build::route_to("/tls-h1", "tls-h1"),
                build::route_to("/tls-h2", "tls-h2"),
                build::route_to("/plain-h2", "plain-h2"),
                build::route_to("/typed-h2c", "typed-h2c"),
                build::route_to("/both-h1", "both-h1"),
                build::route_to("/both-h2", "both-h2"),
                build::route_to("/both-auto", "both-auto"),
                build::route_to("/plain-h1", "plain-h1"),
                build::route_to("/wrong-san", "wrong-san"),
            ],
        )
        .cluster(tls_cluster("tls-h1", GREETER_SAN))
        .cluster(tls_cluster("tls-h2", GREETER_SAN))
        .cluster(build::eds_cluster("plain-h1"))
        .cluster(h2c_cluster("plain-h2"))
        .cluster(build::with_http_protocol(
            build::eds_cluster("typed-h2c"),
            UpstreamProtocol::Http2,
        ))
        .cluster(build::with_http_protocol(
            tls_cluster("both-h1", GREETER_SAN),
            UpstreamProtocol::Http1,
        ))
        .cluster(build::with_http_protocol(
            tls_cluster("both-h2", GREETER_SAN),
            UpstreamProtocol::Http2,
        ))
        .cluster(build::with_http_protocol(
            tls_cluster("both-auto", GREETER_SAN),
            UpstreamProtocol::Auto,
        ))
        .cluster(tls_cluster(
            "wrong-san",
            "spiffe://example.org/ns/default/sa/someone-else",
        ))
        .endpoints(build::endpoints("tls-h1", &[tls_h1]))
        .endpoints(build::endpoints("tls-h2", &[tls_h2]))
        .endpoints(build::endpoints("plain-h1", &[plain_h1]))
        .endpoints(build::endpoints("plain-h2", &[plain_h2]))
        .endpoints(build::endpoints("typed-h2c", &[plain_h2]))
        .endpoints(build::endpoints("both-h1", &[tls_both]))
        .endpoints(build::endpoints("both-h2", &[tls_both]))
        .endpoints(build::endpoints("both-auto", &[tls_both]))
        .endpoints(build::endpoints("wrong-san", &[tls_h2]))
        .listener(build::api_listener("other:8080", "other-routes"))
        .route(build::route_config(
            "other-routes",
            vec![build::virtual_host(
                "other",
                ["other:8080"],
                vec![build::route_to("", "other")],
            )],
        ))
        .cluster(build::eds_cluster("other"))
        .endpoints(build::endpoints("other", &[other])),
    );
    let client = MeshClient::from_xds(
        &xds_client(&server, None),
        MeshClientOptions::new().mtls(identity(&ca, "/ns/default/sa/client")),
    );

    for _ in 0..3 {
        assert_eq!(
            body(&client, "http://greeter/tls-h1").await.unwrap(),
            "tls-h1:HTTP/1.1"
        );
        assert_eq!(
            body(&client, "http://greeter/tls-h2").await.unwrap(),
            "tls-h2:HTTP/2.0"
        );
        assert_eq!(
            body(&client, "http://greeter/plain-h1").await.unwrap(),
            "plain-h1:HTTP/1.1"
        );
        assert_eq!(
            body(&client, "http://greeter/plain-h2").await.unwrap(),
            "plain-h2:HTTP/2.0"
        );
        assert_eq!(
            body(&client, "http://greeter/typed-h2c").await.unwrap(),
            "plain-h2:HTTP/2.0"
        );
        // One backend, three clusters: each gets the version its cluster asks for.
        assert_eq!(
            body(&client, "http://greeter/both-h1").await.unwrap(),
            "tls-both:HTTP/1.1"
        );
        assert_eq!(
            body(&client, "http://greeter/both-h2").await.unwrap(),
            "tls-both:HTTP/2.0"
        );
        assert_eq!(
            body(&client, "http://greeter/both-auto").await.unwrap(),
            "tls-both:HTTP/2.0"
        );
        assert_eq!(
            body(&client, "http://other:8080/").await.unwrap(),
            "other:HTTP/1.1"
        );
    }
    // A request with a path and a Host header goes to the same place.
    let req = http::Request::get("/tls-h2")
        .header(http::header::HOST, "greeter")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);

    // The server's SVID is not the one the cluster names: a typed connect error, 503.
    let err = client.get("http://greeter/wrong-san").await.unwrap_err();
    assert_eq!(err.status(), 503, "{err}");
    assert!(err.is_connect(), "{err:?}");
    let ce = err.connect_error().unwrap();
    assert!(matches!(ce, ConnectError::PeerRejected { .. }), "{ce}");
    match ce.verify_error() {
        Some(VerifyError::Unauthorized { spiffe_id, .. }) => {
            assert_eq!(spiffe_id.to_string(), GREETER_SAN);
        }
        other => panic!("{other:?}"),
    }

    // Without a fixed identity, a client takes the one the cluster names from the bootstrap's
    // certificate providers; this bootstrap has none, so the cluster cannot connect.
    let anonymous = MeshClient::from_xds(&xds_client(&server, None), MeshClientOptions::new());
    let err = anonymous.get("http://greeter/tls-h1").await.unwrap_err();
    let ce = err.connect_error();
    assert!(
        matches!(ce, Some(ConnectError::TlsConfig { .. })),
        "{err:?}"
    );
    assert!(ce.unwrap().to_string().contains("\"default\""), "{ce:?}");
}

fn count(replies: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in replies {
        let id = r.split(':').next().unwrap().to_owned();
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn xds_weighted_split_over_mtls() {
    let ca = TestCa::new("example.org");
    let greeter = identity(&ca, "/ns/default/sa/greeter");
    let (a, _) = Backend::new("A", Proto::H2)
        .tls(greeter.clone())
        .start()
        .await;
    let (b, _) = Backend::new("B", Proto::H1).tls(greeter).start().await;
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        target_routes(
            "greeter",
            vec![build::route_weighted("", &[("a", 75), ("b", 25)])],
        )
        .cluster(tls_cluster("a", GREETER_SAN))
        .cluster(tls_cluster("b", GREETER_SAN))
        .endpoints(build::endpoints("a", &[a]))
        .endpoints(build::endpoints("b", &[b])),
    );
    let client = MeshClient::from_xds(
        &xds_client(&server, None),
        MeshClientOptions::new().mtls(identity(&ca, "/ns/default/sa/client")),
    );
    let n = 400;
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(body(&client, "http://greeter/hello").await.unwrap());
    }
    let counts = count(&replies);
    let to_a = counts.get("A").copied().unwrap_or(0);
    assert_eq!(to_a + counts.get("B").copied().unwrap_or(0), n);
    // 300 expected; the binomial standard deviation is about 8.7, so ±40 is over 4.5σ.
    assert!((260..=340).contains(&to_a), "{counts:?}");
}

#[tokio::test]
async fn xds_retries_hide_a_flaky_backend() {
    let (flaky, seen) = Backend::new("flaky", Proto::H1).flaky().start().await;
    let server = XdsTestServer::start().await.unwrap();
    let retrying = with_action(build::route_to("/retry", "flaky"), |a| {
        a.retry_policy = Some(RetryPolicy {
            retry_on: "5xx".into(),
            num_retries: Some(UInt32Value { value: 2 }),
            retry_back_off: Some(retry_policy::RetryBackOff {
                base_interval: Some(PbDuration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
                max_interval: None,
            }),
            ..Default::default()
        });
    });
    server.set_snapshot(
        target_routes("flaky", vec![retrying, build::route_to("/", "flaky")])
            .cluster(build::eds_cluster("flaky"))
            .endpoints(build::endpoints("flaky", &[flaky])),
    );
    let client = MeshClient::from_xds(&xds_client(&server, None), MeshClientOptions::new());
    let n = 20;
    for _ in 0..n {
        assert_eq!(
            body(&client, "http://flaky/retry").await.unwrap(),
            "flaky:HTTP/1.1"
        );
    }
    // Every other attempt failed and was retried.
    assert_eq!(seen.load(Ordering::SeqCst), 2 * n);

    // Without a retry policy the failures show: the 503 is the backend's own answer, a
    // response, not an error.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(client.get("http://flaky/").await.unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503]);
}

#[tokio::test]
async fn unknown_host_no_route_timeout_and_bad_uris_are_typed_errors() {
    let (hang, _) = Backend::new("hang", Proto::H1).hang().start().await;
    let server = XdsTestServer::start().await.unwrap();
    let slow = with_action(build::route_to("/slow", "hang"), |a| {
        a.timeout = Some(PbDuration {
            seconds: 0,
            nanos: 100_000_000,
        });
    });
    server.set_snapshot(
        target_routes("greeter", vec![slow])
            .cluster(build::eds_cluster("hang"))
            .endpoints(build::endpoints("hang", &[hang])),
    );
    let client = MeshClient::from_xds(
        &xds_client(&server, None),
        MeshClientOptions::new().ready_timeout(Duration::from_secs(10)),
    );

    let err = client.get("http://nothing/").await.unwrap_err();
    assert!(err.is_resolve(), "{err:?}");
    assert_eq!(err.status(), 503);
    match err.resolve_error() {
        Some(ResolveError::Xds { target, source }) => {
            assert_eq!(target, "xds:///nothing");
            assert!(matches!(source, ReadyError::Target(_)), "{source:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(client.resolve("nothing").await.unwrap_err().is_resolve());
    client.resolve("greeter").await.unwrap();

    let err = client.get("http://greeter/elsewhere").await.unwrap_err();
    assert!(err.is_no_route(), "{err:?}");
    assert_eq!(err.status(), 404);

    let err = client.get("http://greeter/slow").await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.status(), 504);

    let err = client.get("https://greeter/").await.unwrap_err();
    assert!(err.is_invalid_request(), "{err:?}");
    assert_eq!(err.status(), 400);
    let err = client.get("/no-host").await.unwrap_err();
    assert!(err.is_invalid_request(), "{err:?}");
}

/// The listener is named by the bootstrap's `client_default_listener_resource_name_template`
/// (gRFC A47), while the virtual host is still chosen by the host.
#[tokio::test]
async fn xds_listener_name_follows_the_bootstrap_template() {
    let (a, _) = Backend::new("a", Proto::H1).start().await;
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener("listeners.example/greeter", "routes"))
            .route(build::route_config(
                "routes",
                vec![build::virtual_host(
                    "greeter",
                    ["greeter"],
                    vec![build::route_to("", "a")],
                )],
            ))
            .cluster(build::eds_cluster("a"))
            .endpoints(build::endpoints("a", &[a])),
    );
    let client = MeshClient::from_xds(
        &xds_client(&server, Some("listeners.example/%s")),
        MeshClientOptions::new(),
    );
    assert_eq!(
        body(&client, "http://GREETER/x").await.unwrap(),
        "a:HTTP/1.1"
    );
}

#[tokio::test]
async fn static_config_h2_prior_knowledge_and_no_endpoint() {
    let (h2, _) = Backend::new("h2", Proto::H2).start().await;
    let cfg = StaticConfig::new()
        .route_all_to("h2")
        .cluster("h2", static_cluster("h2", &[h2], None))
        .build()
        .unwrap();
    let client = MeshClient::from_static(cfg, MeshClientOptions::new().http2_prior_knowledge(true));
    assert_eq!(
        body(&client, "http://anything/").await.unwrap(),
        "h2:HTTP/2.0"
    );

    let cfg = StaticConfig::new()
        .route_all_to("empty")
        .cluster("empty", static_cluster("empty", &[], None))
        .build()
        .unwrap();
    let client = MeshClient::from_static(cfg, MeshClientOptions::new());
    let err = client.get("http://anything/").await.unwrap_err();
    assert!(err.is_no_endpoint(), "{err:?}");
    assert_eq!(err.status(), 503);
}

/// Two host names of one service (`greeter` and `greeter.default.svc`), each its own xDS
/// listener and route, both routing to the cluster `greeter`: one cluster stack serves both,
/// as Envoy shares a cluster among listeners. Its circuit breaker allows one request at a
/// time; with a request from the first host in flight, the second host's request is refused
/// by the same breaker at once (503), where separate stacks would send it on to hang until
/// the route's timeout (504).
#[tokio::test]
async fn hosts_that_route_to_one_cluster_share_its_stack() {
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
    let (hang, seen) = Backend::new("hang", Proto::H2).hang().start().await;
    let timeout = |route| {
        with_action(route, |a| {
            a.timeout = Some(PbDuration {
                seconds: 5,
                nanos: 0,
            });
        })
    };
    let mut cluster = h2c_cluster("greeter");
    cluster.circuit_breakers = Some(
        envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
            thresholds: vec![Thresholds {
                max_requests: Some(UInt32Value { value: 1 }),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        target_routes("greeter", vec![timeout(build::route_to("", "greeter"))])
            .listener(build::api_listener("greeter.default.svc", "long"))
            .route(build::route_config(
                "long",
                vec![build::virtual_host(
                    "long",
                    ["greeter.default.svc"],
                    vec![timeout(build::route_to("", "greeter"))],
                )],
            ))
            .cluster(cluster)
            .endpoints(build::endpoints("greeter", &[hang])),
    );
    let client = MeshClient::from_xds(&xds_client(&server, None), MeshClientOptions::new());

    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get("http://greeter/").await }
    });
    // Wait (bounded) until the first request holds the breaker's slot at the backend.
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first request reaches the backend");

    let started = std::time::Instant::now();
    let err = client
        .get("http://greeter.default.svc/")
        .await
        .expect_err("the breaker is full");
    assert!(
        err.is_no_endpoint(),
        "refused by the shared breaker: {err:?}"
    );
    assert_eq!(err.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after the route timeout"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the second never reached the backend"
    );
    first.abort();
}

/// A snapshot whose listeners `names` all route every authority to cluster `a` at `addr`.
fn listeners_to(addr: std::net::SocketAddr, names: impl IntoIterator<Item = String>) -> Snapshot {
    let mut snapshot = Snapshot::new()
        .route(build::route_config(
            "any",
            vec![build::virtual_host(
                "any",
                ["*"],
                vec![build::route_to("", "a")],
            )],
        ))
        .cluster(build::eds_cluster("a"))
        .endpoints(build::endpoints("a", &[addr]));
    for name in names {
        snapshot = snapshot.listener(build::api_listener(&name, "any"));
    }
    snapshot
}

/// The hosts a client keeps, from its `Debug` output.
fn kept_hosts(client: &MeshClient) -> usize {
    format!("{client:?}").matches('"').count() / 2
}

/// A proxy forwarding arbitrary `Host` headers meets any number of hosts: the client keeps
/// at most `max_hosts` of them, and the evicted ones release their xDS subscriptions, so the
/// listeners it asks the control plane for stay within the cap too. An evicted host still
/// resolves again.
#[tokio::test]
async fn ten_thousand_hosts_stay_within_max_hosts_and_unwatch_the_evicted() {
    use meshwork_xds::server::type_url::LISTENER;
    const HOSTS: usize = 10_000;
    const MAX: usize = 8;
    let (backend, _) = Backend::new("a", Proto::H1).start().await;
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(listeners_to(backend, (0..HOSTS).map(|i| format!("h{i}"))));
    let client = MeshClient::from_xds(
        &xds_client(&server, None),
        MeshClientOptions::new().max_targets(MAX),
    );
    for i in 0..HOSTS {
        client.resolve(&format!("h{i}")).await.unwrap();
        assert!(kept_hosts(&client) <= MAX, "{i}: {client:?}");
    }
    // The evicted hosts' watches end as their stacks go: the last LDS request names at
    // most the kept hosts.
    let subscribed = |reqs: &[meshwork_xds::server::RecordedRequest]| {
        reqs.iter()
            .rev()
            .find(|r| r.type_url() == LISTENER)
            .map(|r| r.request.resource_names.len())
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        server.wait_for(|reqs| subscribed(reqs).is_some_and(|n| n <= MAX)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "LDS still subscribes to {:?}",
            subscribed(&server.requests())
        )
    });
    assert_eq!(body(&client, "http://h0/").await.unwrap(), "a:HTTP/1.1");
    assert_eq!(
        body(&client, &format!("http://h{}/", HOSTS - 1))
            .await
            .unwrap(),
        "a:HTTP/1.1"
    );
    assert!(kept_hosts(&client) <= MAX);
}

/// Under paused time tokio moves the clock to the next timer whenever every task waits,
/// even while loopback IO is in flight, which would fire the xDS client's timers before the
/// server's answer is read. A 1 ms ticker makes the clock crawl instead.
fn crawl_clock() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    })
}

/// A host whose listener does not exist fails its first request once the control plane
/// says so (here the 500 ms does-not-exist timer), and later requests at once with the same
/// error, for the negative TTL, even after the listener appears; then it resolves.
#[tokio::test(start_paused = true)]
async fn an_unknown_host_fails_at_once_until_its_negative_ttl_passes() {
    use tokio::time::Instant;
    let ticker = crawl_clock();
    let (backend, _) = Backend::new("a", Proto::H1).start().await;
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(listeners_to(backend, ["known".to_string()]));
    let client = MeshClient::from_xds(
        &xds_client(&server, None),
        MeshClientOptions::new()
            .ready_timeout(Duration::from_secs(10))
            .negative_ttl(Duration::from_secs(5)),
    );
    assert_eq!(body(&client, "http://known/").await.unwrap(), "a:HTTP/1.1");

    let start = Instant::now();
    let first = client.get("http://late/").await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(500), "{first}");
    let is_missing = |e: &meshwork_http::Error| {
        matches!(
            e.resolve_error(),
            Some(ResolveError::Xds {
                source: ReadyError::Target(meshwork_xds::watch::TargetError::ListenerDoesNotExist(
                    _
                )),
                ..
            })
        )
    };
    assert!(is_missing(&first), "{first:?}");

    let again = Instant::now();
    let second = client.get("http://late/").await.unwrap_err();
    assert!(
        again.elapsed() < Duration::from_millis(50),
        "the second request waited {:?}",
        again.elapsed()
    );
    assert!(is_missing(&second), "{second:?}");
    assert_eq!(second.status(), 503);

    // The listener appears; the failure stays remembered for the rest of its TTL.
    server.update(|s| {
        s.insert_listener(build::api_listener("late", "any"));
    });
    tokio::time::advance(Duration::from_secs(2)).await;
    let within = Instant::now();
    assert!(client.resolve("late").await.unwrap_err().is_resolve());
    assert!(within.elapsed() < Duration::from_millis(50));

    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(body(&client, "http://late/").await.unwrap(), "a:HTTP/1.1");
    ticker.abort();
}

/// Unknown hosts beyond the cap evict each other, not a resolved host: a flood of bogus
/// `Host` headers does not push the real hosts out.
#[tokio::test(start_paused = true)]
async fn a_flood_of_unknown_hosts_does_not_evict_a_resolved_one() {
    let ticker = crawl_clock();
    let (backend, _) = Backend::new("a", Proto::H1).start().await;
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(listeners_to(backend, ["known".to_string()]));
    let client = MeshClient::from_xds(
        &xds_client(&server, None),
        MeshClientOptions::new().max_targets(2),
    );
    assert_eq!(body(&client, "http://known/").await.unwrap(), "a:HTTP/1.1");
    for i in 0..20 {
        assert!(client.resolve(&format!("bogus{i}")).await.is_err());
        let kept = format!("{client:?}");
        assert!(kept.contains("\"known\""), "{i}: {kept}");
        assert_eq!(kept_hosts(&client), 2, "{kept}");
    }
    assert_eq!(body(&client, "http://known/").await.unwrap(), "a:HTTP/1.1");
    ticker.abort();
}
