//! Peak memory of a client whose server announces a ~4 GiB response and then pushes
//! 256 MiB of it. Alone in its test binary, since it reads the process's peak RSS
//! (`VmHWM` in `/proc/self/status`). Run with `--nocapture` to see the numbers.
#![cfg(target_os = "linux")]

mod fake_ads;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use fake_ads::{FakeAds, Script, Step};
use meshwork_test_support::within;
use meshwork_test_support::xds::builder;
use meshwork_xds::client::WatchState;
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::{build, type_url};

const PUSHED_MIB: usize = 256;

/// Peak resident set size of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_announced_4_gib_response_does_not_grow_the_client() {
    let cluster_a = DiscoveryResponse {
        version_info: "1".into(),
        type_url: type_url::CLUSTER.into(),
        nonce: "n1".into(),
        resources: vec![build::pack(&build::eds_cluster("a"))],
        ..Default::default()
    };
    let push = move |n: usize| {
        let mut steps = Vec::new();
        if n == 0 {
            steps.push(Step::Message(cluster_a.clone()));
            steps.push(Step::Wait(Duration::from_millis(100)));
        }
        steps.push(Step::Announce(u32::MAX - 15));
        steps.push(Step::Trickle {
            count: PUSHED_MIB,
            size: 1 << 20,
        });
        steps
    };
    let fake = FakeAds::start(Script::new(push)).await;
    let (min, max) = (Duration::from_millis(100), Duration::from_millis(500));
    let client = builder("oversized-memory-test", &[fake.uri()], min, max).start();
    let mut watch = client.watch(ResourceType::Cluster, "a").await;
    assert!(matches!(
        within(10, watch.settled()).await,
        Some(WatchState::Ready(_))
    ));
    let before = vm_hwm_kib();

    // Either the client refused the message and came back (twice), or it swallowed the
    // whole push of the first stream.
    within(
        60,
        fake.wait_for(|s| s.streams.len() >= 3 || s.finished >= 1),
    )
    .await;
    let after = vm_hwm_kib();
    let grown_mib = (after.saturating_sub(before)) / 1024;
    println!(
        "VmHWM before {} MiB, after {} MiB: grew {grown_mib} MiB while the server pushed up to {PUSHED_MIB} MiB",
        before / 1024,
        after / 1024
    );
    assert!(
        grown_mib < 32,
        "the client buffered an oversized message: +{grown_mib} MiB"
    );
    assert!(fake.streams() >= 3, "the client reconnected");
    assert!(matches!(watch.current(), WatchState::Ready(_)));
}
