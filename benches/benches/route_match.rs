//! Route matching on a 1,000-route config: the router's per-request work (virtual host,
//! first matching route, weighted cluster, request hash) with no service call.
//!
//! Run: `cargo bench -p meshwork-benches --bench route_match`. Routes are gRPC methods
//! (`/pkg.ServiceN/MethodM`, exact paths), every tenth one also matching a header, and a
//! catch-all at the end; matching is linear in the routes, so the last route is the worst
//! case.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meshwork_grpc::core::config::{
    ClusterSpecifier, ForwardAction, HashPolicy, HashPolicyKind, HeaderMatchKind, HeaderMatcher,
    PathMatch, Route, RouteAction, RouteMatch, StaticConfig, TargetConfig, VirtualHost,
    WeightedCluster,
};
use meshwork_grpc::core::route::Router;

const ROUTES: usize = 1_000;

fn config() -> Arc<TargetConfig> {
    let mut routes = Vec::with_capacity(ROUTES);
    for i in 0..ROUTES - 1 {
        let mut headers = Vec::new();
        if i % 10 == 0 {
            headers.push(HeaderMatcher {
                name: "x-tenant".into(),
                kind: HeaderMatchKind::Prefix("team-".into()),
                invert: false,
            });
        }
        routes.push(Route {
            name: format!("r{i}"),
            matcher: RouteMatch {
                path: PathMatch::Path(format!("/pkg.Service{}/Method{}", i / 10, i % 10)),
                case_sensitive: true,
                headers,
                query_parameters: Vec::new(),
                runtime_fraction: None,
            },
            action: RouteAction::Forward(ForwardAction {
                clusters: ClusterSpecifier::Weighted(vec![
                    WeightedCluster {
                        name: format!("c{i}-v1"),
                        weight: 90,
                    },
                    WeightedCluster {
                        name: format!("c{i}-v2"),
                        weight: 10,
                    },
                ]),
                timeout: Some(Duration::from_secs(1)),
                max_stream_duration: None,
                retry_policy: None,
                hash_policies: vec![HashPolicy {
                    kind: HashPolicyKind::Header {
                        name: "x-user".into(),
                        regex_rewrite: None,
                    },
                    terminal: false,
                }],
            }),
            filter_overrides: Default::default(),
        });
    }
    routes.push(Route {
        name: "default".into(),
        matcher: RouteMatch {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            runtime_fraction: None,
        },
        action: RouteAction::Forward(ForwardAction {
            clusters: ClusterSpecifier::Cluster("default".into()),
            timeout: None,
            max_stream_duration: None,
            retry_policy: None,
            hash_policies: Vec::new(),
        }),
        filter_overrides: Default::default(),
    });
    let cfg = StaticConfig::new()
        .virtual_host(VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes,
            retry_policy: None,
            filter_overrides: Default::default(),
        })
        .build()
        .expect("a valid config");
    Arc::new(cfg)
}

fn request(path: &str) -> http::Request<()> {
    http::Request::post(format!("http://greeter.default.svc:7070{path}"))
        .header("content-type", "application/grpc")
        .header("x-tenant", "team-a")
        .header("x-user", "alice")
        .body(())
        .expect("a valid request")
}

fn route_match(c: &mut Criterion) {
    let (_tx, rx) = tokio::sync::watch::channel(config());
    // Only routing is measured: no cluster is called, so the router needs none.
    let mut router = Router::with_seed(rx, (), 1);
    let mut group = c.benchmark_group("route_match_1000_routes");
    for (name, path) in [
        ("first", "/pkg.Service0/Method0"),
        ("middle", "/pkg.Service50/Method5"),
        ("last_exact", "/pkg.Service99/Method8"),
        ("catch_all", "/other.Service/Method"),
    ] {
        let req = request(path);
        group.bench_function(name, |b| {
            b.iter(|| router.route(&req).expect("a route matches"))
        });
    }
    group.finish();
}

criterion_group!(benches, route_match);
criterion_main!(benches);
