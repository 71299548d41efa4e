//! Memory per endpoint held by the xDS client's cache after an EDS of 10,000 endpoints,
//! measured with dhat's heap accounting (live bytes after minus before the update).
//!
//! Run: `cargo bench -p meshwork-benches --bench xds_memory`.

use std::time::Instant;

use meshwork_benches::xds_fixtures::eds_response;
use meshwork_xds::protocol::{AdsState, ProtocolConfig};
use meshwork_xds::resource::ResourceType;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    const ENDPOINTS: u32 = 10_000;
    let response = eds_response(ENDPOINTS, "v1", 8);
    let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
    let stream = ads.on_stream_open();
    ads.subscribe(ResourceType::ClusterLoadAssignment, "bench-cluster");
    while ads.poll_request(Instant::now()).is_some() {}

    let before = dhat::HeapStats::get().curr_bytes;
    let started = Instant::now();
    ads.on_response(stream, response, Instant::now());
    while ads.poll_event().is_some() {}
    while ads.poll_request(Instant::now()).is_some() {}
    let elapsed = started.elapsed();
    let after = dhat::HeapStats::get().curr_bytes;
    assert!(
        ads.get(ResourceType::ClusterLoadAssignment, "bench-cluster")
            .is_some()
    );

    let per_endpoint = (after.saturating_sub(before)) as f64 / f64::from(ENDPOINTS);
    println!(
        "xds_memory: {ENDPOINTS} endpoints cached in {} bytes = {per_endpoint:.1} bytes/endpoint \
         (applied in {elapsed:?} under dhat's allocator, slower than criterion's number)",
        after.saturating_sub(before)
    );
}
