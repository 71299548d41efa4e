//! xDS apply cost: decode, validate and publish one EDS update of 10,000 endpoints and one
//! CDS update of 1,000 clusters, through the sans-io protocol state machine (what the client
//! task does per response, minus the socket read).
//!
//! Run: `cargo bench -p meshwork-benches --bench xds_apply`. The target (issue 3) is an EDS
//! of 10,000 endpoints applied in under 10 ms on the 2-core CI machine.

use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use meshwork_benches::xds_fixtures::{
    cds_response, cla, eds_response, eds_response_many, sotw_response,
};
use meshwork_xds::protocol::{AdsState, ProtocolConfig};
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::build;

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
    scale(c);
}

/// The mesh-scale cases of issue #16: 10,000 clusters, 100,000 endpoints, and one endpoint
/// changing in a 10,000-endpoint cluster (SotW re-sending that assignment alone, or with
/// the 999 other assignments a client watching 1,000 clusters is sent by a snapshot server).
fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("xds_scale");
    group.sample_size(10);

    let cds = cds_response(10_000, "v1");
    group.bench_function("cds_10000_clusters", |b| {
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
                while ads.poll_event().is_some() {}
                ads
            },
            BatchSize::LargeInput,
        )
    });

    let eds = eds_response_many(10_000, 10, "v1");
    group.bench_function("eds_100000_endpoints_in_10000_clusters", |b| {
        b.iter_batched(
            || {
                let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
                let stream = ads.on_stream_open();
                for i in 0..10_000 {
                    ads.subscribe(ResourceType::ClusterLoadAssignment, &format!("cluster-{i}"));
                }
                while ads.poll_request(Instant::now()).is_some() {}
                (ads, stream, eds.clone())
            },
            |(mut ads, stream, response)| {
                ads.on_response(stream, response, Instant::now());
                while ads.poll_event().is_some() {}
                ads
            },
            BatchSize::LargeInput,
        )
    });

    // A client watching `watched` clusters; cluster-0 has 10,000 endpoints, the others 10.
    let assignments = |version: &str, watched: u32, moved: bool| {
        let mut big = cla("cluster-0", 10_000, 8, 0);
        if moved {
            big.endpoints[0].lb_endpoints[0] = build::lb_endpoint(([10, 200, 0, 1], 8080).into());
        }
        let mut resources = vec![build::pack(&big)];
        resources.extend(
            (1..watched)
                .map(|i| build::pack(&cla(&format!("cluster-{i}"), 10, 1, 100_000 + i * 10))),
        );
        sotw_response(version, resources)
    };
    for watched in [1, 1_000] {
        let initial = assignments("v1", watched, false);
        let update = assignments("v2", watched, true);
        group.bench_function(
            format!("one_endpoint_change_sotw_watching_{watched}"),
            |b| {
                b.iter_batched(
                    || {
                        let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
                        let stream = ads.on_stream_open();
                        for i in 0..watched {
                            ads.subscribe(
                                ResourceType::ClusterLoadAssignment,
                                &format!("cluster-{i}"),
                            );
                        }
                        while ads.poll_request(Instant::now()).is_some() {}
                        ads.on_response(stream, initial.clone(), Instant::now());
                        while ads.poll_event().is_some() {}
                        while ads.poll_request(Instant::now()).is_some() {}
                        (ads, stream, update.clone())
                    },
                    |(mut ads, stream, response)| {
                        ads.on_response(stream, response, Instant::now());
                        let mut events = 0;
                        while ads.poll_event().is_some() {
                            events += 1;
                        }
                        assert_eq!(events, 1, "only the changed assignment is published");
                        ads
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
