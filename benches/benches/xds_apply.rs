//! xDS apply cost: decode, validate and publish one EDS update of 10,000 endpoints and one
//! CDS update of 1,000 clusters, through the sans-io protocol state machine (what the client
//! task does per response, minus the socket read).
//!
//! Run: `cargo bench -p meshwork-benches --bench xds_apply`. The target (issue 3) is an EDS
//! of 10,000 endpoints applied in under 10 ms on the 2-core CI machine.

use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use meshwork_benches::xds_fixtures::{cds_response, eds_response};
use meshwork_xds::protocol::{AdsState, ProtocolConfig};
use meshwork_xds::resource::ResourceType;

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("xds_apply");
    group.sample_size(30);

    let eds = eds_response(10_000, "v2", 8);
    group.bench_function("eds_10000_endpoints", |b| {
        b.iter_batched(
            || {
                let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
                let stream = ads.on_stream_open();
                ads.subscribe(ResourceType::ClusterLoadAssignment, "bench-cluster");
                while ads.poll_request(Instant::now()).is_some() {}
                (ads, stream, eds.clone())
            },
            |(mut ads, stream, response)| {
                ads.on_response(stream, response, Instant::now());
                let event = ads.poll_event().expect("the update is published");
                let ack = ads.poll_request(Instant::now()).expect("ACK");
                assert!(ack.error_detail.is_none());
                (ads, event)
            },
            BatchSize::LargeInput,
        )
    });

    let cds = cds_response(1_000, "v2");
    group.bench_function("cds_1000_clusters", |b| {
        b.iter_batched(
            || {
                let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
                let stream = ads.on_stream_open();
                ads.subscribe(ResourceType::Cluster, "*");
                while ads.poll_request(Instant::now()).is_some() {}
                (ads, stream, cds.clone())
            },
            |(mut ads, stream, response)| {
                ads.on_response(stream, response, Instant::now());
                let mut events = 0;
                while ads.poll_event().is_some() {
                    events += 1;
                }
                assert_eq!(events, 1_000);
                ads
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
