//! The sans-io ADS state machine (`meshwork_xds::protocol::AdsState`) driven by a fuzzed
//! sequence of subscriptions, stream events, responses and time steps.
//!
//! Input: a program of operations (see `Op` below, read with `meshwork_fuzz::Reader`).
//! Responses mix resources built by `meshwork_xds::server::build` (valid, with fuzzed names
//! and contents drawn from small pools, so the accept path is reached often) with raw fuzzed
//! bytes (the reject path), plus server-reported `resource_errors`. All requests and events
//! are drained after each operation, as the client task does.
//!
//! Invariants, checked against a model kept by the harness:
//! - no panic;
//! - every response on the current stream of a type we asked for (or of an unknown type)
//!   is answered by exactly one request carrying its nonce and type: an ACK (no
//!   `error_detail`, the response's version) or a NACK (`error_detail`, the previously
//!   accepted version); a response from an old stream or of a type never requested is
//!   answered by nothing;
//! - without a wildcard, the state holds only subscribed names (bounded by what we asked
//!   for, not by what the server sends);
//! - after `handle_timeout(now)` no timer is due at `now`; a cached value is `ACKED` or
//!   `NACKED`; requests only go out on a live stream.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryResponse, ResourceError, ResourceName,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use libfuzzer_sys::fuzz_target;
use meshwork_fuzz::Reader;
use meshwork_xds::protocol::{AdsState, ProtocolConfig, ResourceStatus, StreamId};
use meshwork_xds::resource::{RESOURCE_WRAPPER_TYPE_URL, ResourceType, canonical_name};
use meshwork_xds::server::build;

/// Names come from a small pool most of the time so subscriptions and responses meet.
const NAMES: [&str; 6] = [
    "a",
    "b",
    "c",
    "*",
    "xdstp://auth/envoy.config.listener.v3.Listener/a",
    "",
];

/// Bounds that keep one input cheap (libFuzzer's own length limit bounds the rest).
const MAX_OPS: usize = 64;
const MAX_RESOURCES: usize = 8;

fn name(r: &mut Reader<'_>) -> String {
    let b = r.u8();
    if b >= 0xF0 {
        r.string()
    } else {
        NAMES[usize::from(b) % NAMES.len()].to_owned()
    }
}

/// One resource for a response of type `ty`.
fn resource(r: &mut Reader<'_>, ty: ResourceType) -> Any {
    let kind = r.u8();
    let n = name(r);
    let other = name(r);
    let addr: SocketAddr = ([127, 0, 0, 1], r.u16()).into();
    match kind % 8 {
        // Raw fuzzed bytes under the right type URL.
        0 => Any {
            type_url: ty.type_url().to_owned(),
            value: r.bytes().to_vec(),
        },
        // Raw bytes under the wrapper URL.
        1 => Any {
            type_url: RESOURCE_WRAPPER_TYPE_URL.to_owned(),
            value: r.bytes().to_vec(),
        },
        // A different type's URL.
        2 => Any {
            type_url: ResourceType::ALL[usize::from(r.u8()) % 4]
                .type_url()
                .to_owned(),
            value: r.bytes().to_vec(),
        },
        // A valid resource of the type, possibly with a broken field.
        _ => {
            let mut any = match ty {
                ResourceType::Listener => build::pack(&build::api_listener(&n, &other)),
                ResourceType::RouteConfiguration => build::pack(&build::route_config(
                    &n,
                    vec![build::virtual_host(
                        &other,
                        ["*"],
                        vec![build::route_to("/", &other)],
                    )],
                )),
                ResourceType::Cluster => build::pack(&build::eds_cluster(&n)),
                ResourceType::ClusterLoadAssignment => build::pack(&build::endpoints(&n, &[addr])),
            };
            if kind % 8 == 7 {
                // Flip or append fuzzed bytes: near-valid protos reach deep validation.
                let patch = r.bytes();
                if let Some(&at) = patch.first()
                    && !any.value.is_empty()
                {
                    let i = usize::from(at) % any.value.len();
                    any.value.truncate(i);
                }
                any.value
                    .extend_from_slice(patch.get(1..).unwrap_or_default());
            }
            any
        }
    }
}

/// What the harness remembers to check the state machine against.
#[derive(Default)]
struct Model {
    stream: Option<StreamId>,
    /// Types for which a request went out on the current stream.
    sent: BTreeSet<ResourceType>,
    /// The version of the last ACK per type.
    acked: BTreeMap<ResourceType, String>,
    /// Named subscriptions and wildcards per type.
    names: BTreeMap<ResourceType, BTreeSet<String>>,
    wildcard: BTreeSet<ResourceType>,
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut config = ProtocolConfig::new(Node {
        id: "fuzz".into(),
        ..Default::default()
    });
    let flags = r.u8();
    config.ignore_resource_deletion = flags & 1 != 0;
    config.fail_on_data_errors = flags & 2 != 0;
    config.does_not_exist_timeout = Duration::from_secs(u64::from(r.u8() % 32) + 1);
    let mut state = AdsState::new(config);
    let mut model = Model::default();
    let start = Instant::now();
    let mut now = start;
    let mut old_streams: Vec<StreamId> = Vec::new();

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        let ty = ResourceType::ALL[usize::from(op >> 4) % 4];
        let mut expect_answer: Option<(String, String)> = None;
        match op % 8 {
            0 => {
                let n = name(&mut r);
                state.subscribe(ty, &n);
                if n == "*" {
                    model.wildcard.insert(ty);
                } else {
                    // Keyed as the state keys it: two spellings of one xdstp: name are one.
                    let n = canonical_name(&n).into_owned();
                    model.names.entry(ty).or_default().insert(n);
                }
            }
            1 => {
                let n = name(&mut r);
                state.unsubscribe(ty, &n);
                if n == "*" {
                    model.wildcard.remove(&ty);
                } else {
                    let n = canonical_name(&n).into_owned();
                    model.names.entry(ty).or_default().remove(&n);
                }
            }
            2 => {
                if ty.is_full_state() {
                    state.subscribe_legacy_wildcard(ty);
                    model.wildcard.insert(ty);
                }
            }
            3 => {
                if let Some(old) = model.stream.take() {
                    old_streams.push(old);
                }
                model.stream = Some(state.on_stream_open());
                model.sent.clear();
            }
            4 => {
                if let Some(s) = model.stream.take() {
                    state.on_stream_closed(s);
                    old_streams.push(s);
                    model.sent.clear();
                }
            }
            5 | 6 => {
                // A response, on the current stream or (rarely) an old one.
                let on_old = r.u8() == 0xFF;
                let type_url = match r.u8() {
                    0xFF => r.string(),
                    _ => ty.type_url().to_owned(),
                };
                let version = r.string();
                let nonce = format!("n{}", r.u16());
                let count = usize::from(r.u8()) % (MAX_RESOURCES + 1);
                let resources = (0..count).map(|_| resource(&mut r, ty)).collect();
                let errors = (0..usize::from(r.u8() % 3))
                    .map(|_| ResourceError {
                        resource_name: Some(ResourceName {
                            name: name(&mut r),
                            ..Default::default()
                        }),
                        error_detail: Some(Status {
                            code: i32::from(r.u8() % 17),
                            message: "fuzz".into(),
                            details: Vec::new(),
                        }),
                    })
                    .collect();
                let response = DiscoveryResponse {
                    version_info: version.clone(),
                    resources,
                    type_url: type_url.clone(),
                    nonce: nonce.clone(),
                    resource_errors: errors,
                    ..Default::default()
                };
                let stream = match (on_old, old_streams.last(), model.stream) {
                    (true, Some(&old), _) => Some(old),
                    (_, _, current) => current,
                };
                if let Some(stream) = stream {
                    let current = Some(stream) == model.stream;
                    let known = ResourceType::from_type_url(&type_url);
                    if current && known.is_none_or(|t| model.sent.contains(&t)) {
                        expect_answer = Some((nonce, version));
                    }
                    state.on_response(stream, response, now);
                }
            }
            _ => {
                let step = Duration::from_millis(u64::from(r.u16()) * 16);
                now += step;
                if state.poll_timeout().is_some_and(|t| t <= now) {
                    state.handle_timeout(now);
                }
                assert!(
                    state.poll_timeout().is_none_or(|t| t > now),
                    "a timer is still due after handle_timeout"
                );
            }
        }

        // Drain what the client task would send and deliver.
        let mut requests = Vec::new();
        while let Some(req) = state.poll_request(now) {
            assert!(model.stream.is_some(), "a request with no stream");
            assert!(requests.len() < 16, "requests do not drain");
            requests.push(req);
        }
        while state.poll_event().is_some() {}

        match expect_answer {
            Some((nonce, version)) => {
                let answer = requests.first().expect("a response was not answered");
                assert_eq!(
                    answer.response_nonce, nonce,
                    "the answer is not to this response"
                );
                assert_eq!(
                    requests
                        .iter()
                        .filter(|q| q.response_nonce == nonce)
                        .count(),
                    1,
                    "a response answered twice"
                );
                if let Some(t) = ResourceType::from_type_url(&answer.type_url) {
                    let previous = model.acked.get(&t).cloned().unwrap_or_default();
                    if answer.error_detail.is_none() {
                        assert_eq!(
                            answer.version_info, version,
                            "an ACK must carry the version"
                        );
                        model.acked.insert(t, version);
                    } else {
                        assert_eq!(
                            answer.version_info, previous,
                            "a NACK must carry the last accepted version"
                        );
                    }
                } else {
                    assert!(
                        answer.error_detail.is_some(),
                        "an unknown type must be NACKed"
                    );
                }
            }
            None => {
                if op % 8 == 5 || op % 8 == 6 {
                    assert!(requests.is_empty(), "an unexpected response was answered");
                }
            }
        }
        for req in &requests {
            if let Some(t) = ResourceType::from_type_url(&req.type_url) {
                model.sent.insert(t);
            }
        }

        // Bounded state: without a wildcard, only subscribed names are kept.
        for view in state.resources() {
            if !model.wildcard.contains(&view.resource_type) {
                assert!(view.subscribed, "{} kept though not subscribed", view.name);
                assert!(
                    model
                        .names
                        .get(&view.resource_type)
                        .is_some_and(|n| n.contains(view.name)),
                    "{} kept though never subscribed",
                    view.name
                );
            }
            if view.value.is_some() {
                assert!(
                    matches!(view.status, ResourceStatus::Acked | ResourceStatus::Nacked),
                    "a cached value with status {}",
                    view.status
                );
            }
        }
    }
});
