//! Balancer cost: one pick-and-call among 10,000 endpoints for each policy (P2C over
//! PeakEWMA, round robin, weighted round robin, least request, ring hash), through the whole
//! `Balancer` service (`poll_ready`, `call`, response) over always-ready endpoints, next to a
//! bare endpoint service for reference.
//!
//! Run: `cargo bench -p meshwork-benches --bench balance`. Targets (issue 5): O(1) picks for
//! P2C and round robin, O(log n) for weighted round robin and ring hash, no lock on a pick.
//! The ring-hash case asks for up to 8M entries; the balancer's default cap (gRPC's, 4096
//! entries) decides its ring's size.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use meshwork_core::balance::{BalancePolicy, Balancer, RequestHash};
use meshwork_core::xds::resource::{
    ClusterLoadAssignment, Endpoint, HealthStatus, Locality, LocalityEndpoints,
};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

const ENDPOINTS: u32 = 10_000;

fn endpoint_service(
    _: SocketAddr,
) -> impl Service<http::Request<()>, Response = http::Response<()>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|_req: http::Request<()>| async { Ok(http::Response::new(())) })
}

/// 10,000 endpoints in 10 localities; `weighted` gives endpoints weights 1 to 4.
fn endpoints(weighted: bool) -> Arc<ClusterLoadAssignment> {
    let per = ENDPOINTS / 10;
    Arc::new(ClusterLoadAssignment {
        cluster_name: "bench".into(),
        localities: (0..10)
            .map(|l| LocalityEndpoints {
                locality: Locality {
                    region: "r".into(),
                    zone: format!("z{l}"),
                    sub_zone: String::new(),
                },
                weight: 1,
                priority: 0,
                endpoints: (0..per)
                    .map(|i| {
                        let n = l * per + i;
                        Endpoint {
                            address: SocketAddr::from((
                                [10, (n >> 16) as u8, (n >> 8) as u8, n as u8],
                                8080,
                            )),
                            additional_addresses: vec![],
                            health: HealthStatus::Healthy,
                            weight: if weighted { 1 + n % 4 } else { 1 },
                            hostname: None,
                            hash_key: None,
                        }
                    })
                    .collect(),
            })
            .collect(),
        drop_overloads: vec![],
        unsupported_fields: vec![],
    })
}

fn pick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("balance_pick_10000");

    let mut bare = endpoint_service(SocketAddr::from(([10, 0, 0, 1], 80)));
    group.bench_function("bare_endpoint_service", |b| {
        b.iter(|| {
            bare.ready().now_or_never().unwrap().unwrap();
            bare.call(http::Request::new(()))
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });

    let cases = [
        ("p2c_peak_ewma", BalancePolicy::P2cPeakEwma, false),
        ("round_robin", BalancePolicy::RoundRobin, false),
        ("weighted_round_robin", BalancePolicy::RoundRobin, true),
        (
            "least_request",
            BalancePolicy::LeastRequest { choice_count: 2 },
            false,
        ),
        (
            "ring_hash",
            BalancePolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8 * 1024 * 1024,
            },
            false,
        ),
    ];
    for (name, policy, weighted) in cases {
        let (_tx, rx) = watch::channel(endpoints(weighted));
        // Every endpoint is ready as the balancer is built (its service is ready at once).
        let mut lb = Balancer::builder(policy)
            .seed(1)
            .build(rx, endpoint_service);
        lb.ready().now_or_never().unwrap().unwrap();
        let mut h = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut req = http::Request::new(());
                req.extensions_mut().insert(RequestHash::new(h));
                lb.ready().now_or_never().unwrap().unwrap();
                lb.call(req).now_or_never().unwrap().unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
