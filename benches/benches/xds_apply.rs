//! xDS apply cost: decode, validate and publish one EDS update of 10,000 endpoints and one
//! CDS update of 1,000 clusters, through the sans-io protocol state machine (what the client
//! task does per response, minus the socket read); and the mesh-scale cases of issue #16.
//!
//! `xds_scale/cds_10000_clusters_decode_alone` and `.._apply_decoded` split the 10,000-cluster
//! push into the decode the client does before locking its state and the apply under the
//! lock.
//!
//! Run: `cargo bench -p meshwork-benches --bench xds_apply`. The target (issue 3) is an EDS
//! of 10,000 endpoints applied in under 10 ms on the 2-core CI machine.

use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use meshwork_benches::xds_fixtures::{
    cds_response, eds_response, eds_response_many, sotw_response, watched_assignments,
};
use meshwork_xds::protocol::{AdsState, ProtocolConfig, StreamId};
use meshwork_xds::resource::ResourceType;

/// A state machine on a new SotW stream, subscribed to `names` of `resource_type`, with
/// its requests sent.
fn subscribed(
    resource_type: ResourceType,
    names: impl IntoIterator<Item = String>,
) -> (AdsState, StreamId) {
    let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
    let stream = ads.on_stream_open();
    for name in names {
        ads.subscribe(resource_type, &name);
    }
    while ads.poll_request(Instant::now()).is_some() {}
    (ads, stream)
}

/// Apply `response` and take what it published; returns the number of events.
fn apply_response(ads: &mut AdsState, stream: StreamId, response: DiscoveryResponse) -> usize {
    ads.on_response(stream, response, Instant::now());
    let mut events = 0;
    while ads.poll_event().is_some() {
        events += 1;
    }
    events
}

/// `cluster-0` .. `cluster-{n-1}`.
fn clusters(n: u32) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("cluster-{i}"))
}

/// Benchmark applying `response` to a state subscribed to `names` of `resource_type`,
/// checking it publishes `events` events.
fn bench_apply(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    (resource_type, names): (ResourceType, Vec<String>),
    response: &DiscoveryResponse,
    events: usize,
) {
    c.bench_function(id, |b| {
        b.iter_batched(
            || {
                let (ads, stream) = subscribed(resource_type, names.iter().cloned());
                (ads, stream, response.clone())
            },
            |(mut ads, stream, response)| {
                assert_eq!(apply_response(&mut ads, stream, response), events);
                let ack = ads.poll_request(Instant::now()).expect("ACK");
                assert!(ack.error_detail.is_none());
                ads
            },
            BatchSize::LargeInput,
        )
    });
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("xds_apply");
    group.sample_size(30);
    let eds = (
        ResourceType::ClusterLoadAssignment,
        vec!["bench-cluster".to_owned()],
    );
    bench_apply(
        &mut group,
        "eds_10000_endpoints",
        eds,
        &eds_response(10_000, "v2", 8),
        1,
    );
    let cds = (ResourceType::Cluster, vec!["*".to_owned()]);
    bench_apply(
        &mut group,
        "cds_1000_clusters",
        cds,
        &cds_response(1_000, "v2"),
        1_000,
    );
    group.finish();
    scale(c);
}

/// The mesh-scale cases of issue #16: 10,000 clusters, 100,000 endpoints, and one endpoint
/// changing in a 10,000-endpoint cluster (SotW re-sending that assignment alone, or with
/// the 999 other assignments a client watching 1,000 clusters is sent by a snapshot server;
/// delta sending the changed assignment alone).
fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("xds_scale");
    group.sample_size(10);
    let cds = (ResourceType::Cluster, vec!["*".to_owned()]);
    bench_apply(
        &mut group,
        "cds_10000_clusters",
        cds,
        &cds_response(10_000, "v1"),
        10_000,
    );
    // The same push in its two halves: the decode, which the client does before it locks
    // the state, and the apply, under the lock (what other readers of the state wait for).
    let push = cds_response(10_000, "v1");
    group.bench_function("cds_10000_clusters_decode_alone", |b| {
        b.iter_batched(
            || push.clone(),
            AdsState::decode_response,
            BatchSize::LargeInput,
        )
    });
    group.bench_function("cds_10000_clusters_apply_decoded", |b| {
        b.iter_batched(
            || {
                let (ads, stream) = subscribed(ResourceType::Cluster, ["*".to_owned()]);
                (ads, stream, AdsState::decode_response(push.clone()))
            },
            |(mut ads, stream, decoded)| {
                ads.on_decoded_response(stream, decoded, Instant::now());
                let mut events = 0;
                while ads.poll_event().is_some() {
                    events += 1;
                }
                assert_eq!(events, 10_000);
                ads
            },
            BatchSize::LargeInput,
        )
    });
    let eds = (
        ResourceType::ClusterLoadAssignment,
        clusters(10_000).collect(),
    );
    bench_apply(
        &mut group,
        "eds_100000_endpoints_in_10000_clusters",
        eds,
        &eds_response_many(10_000, 10, "v1"),
        10_000,
    );

    // A client watching `watched` clusters; cluster-0 has 10,000 endpoints, the others 10.
    let assignments = |version: &str, watched: u32, moved: bool| {
        sotw_response(version, watched_assignments(watched, moved))
    };
    for watched in [1, 1_000] {
        let initial = assignments("v1", watched, false);
        let update = assignments("v2", watched, true);
        group.bench_function(
            format!("one_endpoint_change_sotw_watching_{watched}"),
            |b| {
                b.iter_batched(
                    || {
                        let (mut ads, stream) =
                            subscribed(ResourceType::ClusterLoadAssignment, clusters(watched));
                        apply_response(&mut ads, stream, initial.clone());
                        while ads.poll_request(Instant::now()).is_some() {}
                        (ads, stream, update.clone())
                    },
                    |(mut ads, stream, response)| {
                        let events = apply_response(&mut ads, stream, response);
                        assert_eq!(events, 1, "only the changed assignment is published");
                        ads
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }

    // The same change over delta: only the changed assignment comes, whatever is watched.
    let delta = |version: &str, watched: u32, moved: bool| {
        let sotw = assignments(version, watched, moved);
        DeltaDiscoveryResponse {
            system_version_info: version.into(),
            resources: sotw
                .resources
                .into_iter()
                .take(if moved { 1 } else { watched as usize })
                .enumerate()
                .map(|(i, any)| Resource {
                    name: format!("cluster-{i}"),
                    version: version.into(),
                    resource: Some(any),
                    ..Default::default()
                })
                .collect(),
            type_url: ResourceType::ClusterLoadAssignment.type_url().into(),
            nonce: format!("nonce-{version}"),
            ..Default::default()
        }
    };
    let watched = 1_000;
    let (initial, update) = (delta("v1", watched, false), delta("v2", watched, true));
    group.bench_function(
        format!("one_endpoint_change_delta_watching_{watched}"),
        |b| {
            b.iter_batched(
                || {
                    let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
                    let stream = ads.on_delta_stream_open();
                    for name in clusters(watched) {
                        ads.subscribe(ResourceType::ClusterLoadAssignment, &name);
                    }
                    while ads.poll_delta_request(Instant::now()).is_some() {}
                    ads.on_delta_response(stream, initial.clone(), Instant::now());
                    while ads.poll_event().is_some() {}
                    while ads.poll_delta_request(Instant::now()).is_some() {}
                    (ads, stream, update.clone())
                },
                |(mut ads, stream, response)| {
                    ads.on_delta_response(stream, response, Instant::now());
                    let mut events = 0;
                    while ads.poll_event().is_some() {
                        events += 1;
                    }
                    assert_eq!(events, 1, "the changed assignment is published");
                    let ack = ads.poll_delta_request(Instant::now()).expect("ACK");
                    assert!(ack.error_detail.is_none());
                    ads
                },
                BatchSize::LargeInput,
            )
        },
    );
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
