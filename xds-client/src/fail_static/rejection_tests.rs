//! The fail-static rules in the sans-io state for a rejected response that names no
//! resource.

#![cfg(feature = "server")]

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;

use crate::protocol::{AdsState, DEFAULT_DOES_NOT_EXIST_TIMEOUT, ProtocolConfig, Seed, XdsEvent};
use crate::resource::ResourceType;
use crate::server::build;

const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

fn cla(name: &str) -> Any {
    build::pack(&build::endpoints(name, &["127.0.0.1:1".parse().unwrap()]))
}

/// A response whose only resource does not decode, so the NACK names no resource.
fn undecodable(t: ResourceType) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: "1".into(),
        resources: vec![Any {
            type_url: t.type_url().into(),
            value: vec![0xff; 4],
        }],
        type_url: t.type_url().into(),
        nonce: "n1".into(),
        ..Default::default()
    }
}

/// A NACK keeps a seeded value in use past the does-not-exist timeout, also when the
/// response is rejected whole and names nothing: it is no answer about `a`, so the timers
/// of the seeds it leaves out start only with the type's first accepted response.
#[test]
fn a_response_that_does_not_decode_does_not_end_a_seeded_value() {
    let node = Node {
        id: "review2".into(),
        ..Default::default()
    };
    let mut ads = AdsState::new(ProtocolConfig::new(node));
    let now = Instant::now();
    let value = cla("a");
    let seed = Seed {
        value: crate::resource::decode(EDS, &value).expect("valid"),
        raw: value,
        version: "s".into(),
    };
    ads.seed([seed], now);
    ads.subscribe(EDS, "a");
    while ads.poll_event().is_some() {}

    let sid = ads.on_stream_connecting();
    while ads.poll_request(now).is_some() {}
    ads.on_stream_connected(sid, now);
    ads.on_response(sid, undecodable(EDS), now);
    let nack = ads.poll_request(now).expect("a NACK");
    assert!(nack.error_detail.is_some(), "the response is NACKed");

    let later = now + DEFAULT_DOES_NOT_EXIST_TIMEOUT + Duration::from_secs(1);
    if ads.poll_timeout().is_some_and(|t| t <= later) {
        ads.handle_timeout(later);
    }
    let events: Vec<XdsEvent> = std::iter::from_fn(|| ads.poll_event()).collect();
    assert!(
        ads.get(EDS, "a").is_some(),
        "a response that names nothing ended the seeded value: {events:?}"
    );
}
