//! The delta protocol state, driven without I/O.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::Code;

use super::*;
use crate::server::state::State;

fn cluster(name: &str, stat: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        alt_stat_name: stat.to_owned(),
        ..Default::default()
    }
}

fn endpoints(name: &str, policy_overprovisioning: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        policy: Some(
            envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy {
                overprovisioning_factor: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: policy_overprovisioning,
                }),
                ..Default::default()
            },
        ),
        ..Default::default()
    }
}

fn three_clusters() -> Snapshot {
    Snapshot::new()
        .cluster(cluster("a", "a"))
        .cluster(cluster("b", "b"))
        .cluster(cluster("c", "c"))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

fn request(
    type_url: &str,
    subscribe: &[&str],
    unsubscribe: &[&str],
    nonce: &str,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: names(subscribe),
        resource_names_unsubscribe: names(unsubscribe),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    request(type_url, &[], &[], nonce)
}

struct Stream {
    id: u64,
    rx: DeltaOutboundRx,
    _closed: oneshot::Receiver<()>,
}

fn open(state: &mut State) -> Stream {
    let (id, rx, closed) = state.open_delta_stream().expect("open");
    Stream {
        id,
        rx,
        _closed: closed,
    }
}

impl Stream {
    fn next(&mut self) -> Option<DeltaDiscoveryResponse> {
        match self.rx.try_recv() {
            Ok(Ok(response)) => Some(response),
            Ok(Err(status)) => panic!("stream ended with {status:?}"),
            Err(_) => None,
        }
    }

    fn expect(&mut self) -> DeltaDiscoveryResponse {
        self.next().expect("a response")
    }

    fn expect_nothing(&mut self) {
        if let Some(response) = self.next() {
            panic!("unexpected response: {response:?}");
        }
    }

    /// The status the stream ended with, after any responses still queued.
    fn ended_with(&mut self) -> Code {
        loop {
            match self.rx.try_recv() {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => return status.code(),
                Err(e) => panic!("the stream did not end: {e:?}"),
            }
        }
    }
}

fn send(state: &mut State, stream: &Stream, request: DeltaDiscoveryRequest) -> RequestKind {
    state
        .handle_delta_request(stream.id, request)
        .expect("valid request");
    state.requests().last().expect("recorded").kind
}

fn sent(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

fn edit(state: &mut State, f: impl FnOnce(&mut Snapshot)) {
    let mut next = state.snapshot().clone();
    f(&mut next);
    state.apply_snapshot(next);
}

fn version_of(state: &State, type_url: &str, name: &str) -> String {
    resource_version(state.snapshot().get(type_url, name).expect("resource"))
}

#[test]
fn subscribed_resources_come_with_their_versions_and_a_missing_name_as_removed() {
    let mut state = State::default();
    state.apply_snapshot(three_clusters());
    let mut s = open(&mut state);
    let kind = send(
        &mut state,
        &s,
        request(type_url::CLUSTER, &["a", "zz"], &[], ""),
    );
    assert_eq!(kind, RequestKind::Initial);
    let r = s.expect();
    assert_eq!(r.type_url, type_url::CLUSTER);
    assert_eq!(r.system_version_info, "1");
    assert_eq!(r.nonce, "1");
    assert_eq!(sent(&r), ["a"]);
    assert_eq!(
        r.resources[0].version,
        version_of(&state, type_url::CLUSTER, "a")
    );
    assert_eq!(
        r.resources[0].resource.as_ref(),
        state.snapshot().get(type_url::CLUSTER, "a")
    );
    assert_eq!(r.removed_resources, ["zz"], "a name that does not exist");
    s.expect_nothing();

    // The record holds the delta response, and its SotW summary.
    let record = state.responses().last().unwrap();
    assert_eq!(record.resource_names(), ["a"]);
    assert_eq!(record.response.version_info, "1");
    assert_eq!(record.delta.as_ref(), Some(&r));

    // The absent name is told once: an unrelated change says nothing more about it.
    state.apply_snapshot(three_clusters().cluster(cluster("d", "d")));
    s.expect_nothing();
    // It is sent once it exists.
    state.apply_snapshot(three_clusters().cluster(cluster("zz", "zz")));
    let r = s.expect();
    assert_eq!(sent(&r), ["zz"]);
    assert!(r.removed_resources.is_empty());
}

#[test]
fn versions_are_stable_hashes_of_the_bytes() {
    let a = three_clusters()
        .get(type_url::CLUSTER, "a")
        .unwrap()
        .clone();
    let also_a = three_clusters()
        .get(type_url::CLUSTER, "a")
        .unwrap()
        .clone();
    let b = three_clusters()
        .get(type_url::CLUSTER, "b")
        .unwrap()
        .clone();
    assert_eq!(resource_version(&a), resource_version(&also_a));
    assert_ne!(resource_version(&a), resource_version(&b));
    assert_eq!(resource_version(&a).len(), 16);
}

#[test]
fn legacy_wildcard_gets_everything_then_only_changes_and_removals() {
    let mut state = State::default();
    state.apply_snapshot(three_clusters());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::CLUSTER, &[], &[], ""));
    let r = s.expect();
    assert_eq!(sent(&r), ["a", "b", "c"]);
    let sub = state.subscription(s.id, type_url::CLUSTER).unwrap();
    assert!(sub.wildcard && sub.legacy_wildcard);

    assert_eq!(
        send(&mut state, &s, ack(type_url::CLUSTER, &r.nonce)),
        RequestKind::Ack
    );
    s.expect_nothing();
    let acked = state.requests().last().unwrap();
    assert_eq!(
        acked.version_info(),
        "1",
        "an ACK records the version it accepted"
    );
    assert!(acked.delta.is_some());

    // a changes, b goes, c stays: only a is sent, b is removed.
    state.apply_snapshot(
        Snapshot::new()
            .cluster(cluster("a", "a2"))
            .cluster(cluster("c", "c")),
    );
    let r = s.expect();
    assert_eq!(r.system_version_info, "2");
    assert_eq!(sent(&r), ["a"]);
    assert_eq!(r.removed_resources, ["b"]);
    s.expect_nothing();

    // A change of another type says nothing about clusters.
    edit(&mut state, |snapshot| {
        snapshot.insert_endpoints(endpoints("a", 140));
    });
    s.expect_nothing();
}

#[test]
fn names_subscribe_and_unsubscribe_one_request_at_a_time() {
    let mut state = State::default();
    state.apply_snapshot(
        Snapshot::new()
            .endpoints(endpoints("x", 100))
            .endpoints(endpoints("y", 100)),
    );
    let mut s = open(&mut state);
    send(
        &mut state,
        &s,
        request(type_url::ENDPOINTS, &["x"], &[], ""),
    );
    let r = s.expect();
    assert_eq!(sent(&r), ["x"]);
    send(&mut state, &s, ack(type_url::ENDPOINTS, &r.nonce));

    // Adding y sends y alone; an empty nonce makes it an update.
    let kind = send(
        &mut state,
        &s,
        request(type_url::ENDPOINTS, &["y"], &[], ""),
    );
    assert_eq!(kind, RequestKind::Update);
    let r = s.expect();
    assert_eq!(sent(&r), ["y"]);
    assert!(r.removed_resources.is_empty());
    let sub = state.subscription(s.id, type_url::ENDPOINTS).unwrap();
    assert_eq!(sub.names.iter().collect::<Vec<_>>(), ["x", "y"]);
    assert!(!sub.wildcard, "no legacy wildcard for EDS");

    // Unsubscribing sends nothing, and a change of x is not sent any more.
    send(
        &mut state,
        &s,
        request(type_url::ENDPOINTS, &[], &["x"], ""),
    );
    s.expect_nothing();
    edit(&mut state, |snapshot| {
        snapshot.insert_endpoints(endpoints("x", 150));
    });
    s.expect_nothing();

    // Subscribing again sends x again.
    send(
        &mut state,
        &s,
        request(type_url::ENDPOINTS, &["x"], &[], ""),
    );
    assert_eq!(sent(&s.expect()), ["x"]);
    s.expect_nothing();
}

#[test]
fn names_end_the_legacy_wildcard_and_an_explicit_wildcard_mixes_with_names() {
    let mut state = State::default();
    state.apply_snapshot(three_clusters());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::CLUSTER, &[], &[], ""));
    s.expect();
    // A name subscribed is sent again even if the stream had it (the client may have
    // forgotten it, as go-control-plane has it since its #586).
    send(&mut state, &s, request(type_url::CLUSTER, &["a"], &[], ""));
    assert_eq!(sent(&s.expect()), ["a"]);
    let sub = state.subscription(s.id, type_url::CLUSTER).unwrap();
    assert!(!sub.wildcard && !sub.legacy_wildcard);
    // The stream no longer holds b: its change is not sent.
    state.apply_snapshot(
        Snapshot::new()
            .cluster(cluster("a", "a"))
            .cluster(cluster("b", "b2"))
            .cluster(cluster("c", "c")),
    );
    s.expect_nothing();

    // "*" brings back everything the stream does not hold.
    send(&mut state, &s, request(type_url::CLUSTER, &["*"], &[], ""));
    let r = s.expect();
    assert_eq!(sent(&r), ["b", "c"]);
    let sub = state.subscription(s.id, type_url::CLUSTER).unwrap();
    assert!(sub.wildcard && !sub.legacy_wildcard);
    assert_eq!(sub.names.iter().collect::<Vec<_>>(), ["a"]);

    // Unsubscribing a name the wildcard covers keeps it; a deletion is still removed.
    send(&mut state, &s, request(type_url::CLUSTER, &[], &["a"], ""));
    s.expect_nothing();
    state.apply_snapshot(
        Snapshot::new()
            .cluster(cluster("b", "b2"))
            .cluster(cluster("c", "c")),
    );
    assert_eq!(s.expect().removed_resources, ["a"]);

    // Without "*", only the named remain (c, named, is sent again).
    send(
        &mut state,
        &s,
        request(type_url::CLUSTER, &["c"], &["*"], ""),
    );
    assert_eq!(sent(&s.expect()), ["c"]);
    state.apply_snapshot(
        Snapshot::new()
            .cluster(cluster("b", "b3"))
            .cluster(cluster("c", "c")),
    );
    s.expect_nothing();
}

#[test]
fn initial_versions_send_only_what_differs_and_remove_what_is_gone() {
    let mut state = State::default();
    state.apply_snapshot(three_clusters());
    let mut s = open(&mut state);
    let a = version_of(&state, type_url::CLUSTER, "a");
    let initial: HashMap<String, String> = [
        ("a".to_owned(), a),
        ("b".to_owned(), "an older version".to_owned()),
        ("gone".to_owned(), "v".to_owned()),
    ]
    .into();
    let first = DeltaDiscoveryRequest {
        initial_resource_versions: initial.clone(),
        ..request(type_url::CLUSTER, &[], &[], "")
    };
    send(&mut state, &s, first);
    let r = s.expect();
    assert_eq!(sent(&r), ["b", "c"], "a is current");
    assert_eq!(r.removed_resources, ["gone"]);

    // With names: a held name that does not exist is removed too.
    let mut s = open(&mut state);
    let first = DeltaDiscoveryRequest {
        initial_resource_versions: initial,
        ..request(type_url::CLUSTER, &["a", "gone"], &[], "")
    };
    send(&mut state, &s, first);
    let r = s.expect();
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["gone"]);
    s.expect_nothing();

    // Everything current: the first request is still answered, with nothing.
    let mut s = open(&mut state);
    let current: HashMap<String, String> = ["a", "b", "c"]
        .iter()
        .map(|n| ((*n).to_owned(), version_of(&state, type_url::CLUSTER, n)))
        .collect();
    send(
        &mut state,
        &s,
        DeltaDiscoveryRequest {
            initial_resource_versions: current,
            ..request(type_url::CLUSTER, &["*"], &[], "")
        },
    );
    let r = s.expect();
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    assert_eq!(r.system_version_info, "1");
}

#[test]
fn nacks_and_stale_nonces_are_recorded_and_nothing_is_resent() {
    let mut state = State::default();
    state.apply_snapshot(three_clusters());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::LISTENER, &[], &[], ""));
    let empty = s.expect();
    assert!(empty.resources.is_empty(), "no listeners yet");
    send(&mut state, &s, request(type_url::CLUSTER, &["a"], &[], ""));
    let r = s.expect();
    assert_eq!(r.nonce, "2", "nonces count per stream, across types");

    let nack = DeltaDiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 3,
            message: "bad cluster".to_owned(),
            details: vec![],
        }),
        ..ack(type_url::CLUSTER, &r.nonce)
    };
    assert_eq!(send(&mut state, &s, nack), RequestKind::Nack);
    let recorded = state.requests().last().unwrap();
    assert_eq!(recorded.error_message(), Some("bad cluster"));
    assert_eq!(recorded.version_info(), "1");
    s.expect_nothing();

    // An answer to an older response is stale, but its names still count.
    let kind = send(&mut state, &s, request(type_url::CLUSTER, &["b"], &[], "1"));
    assert_eq!(kind, RequestKind::Stale);
    assert_eq!(sent(&s.expect()), ["b"]);
}

#[test]
fn streams_are_counted_closed_and_bounded() {
    let mut state = State::default();
    let mut s = open(&mut state);
    assert_eq!(state.stream_count(), 1);
    assert_eq!(state.stream_ids(), [s.id]);

    // An empty type URL ends the stream.
    let err = state
        .handle_delta_request(s.id, request("", &["a"], &[], ""))
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(state.requests().last().unwrap().kind, RequestKind::Invalid);

    // Too many types.
    for i in 0..MAX_TYPES {
        send(&mut state, &s, request(&format!("type/{i}"), &[], &[], ""));
    }
    let err = state
        .handle_delta_request(s.id, request("type/one-too-many", &[], &[], ""))
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // Too many bytes of names, over several requests and types.
    let mut s2 = open(&mut state);
    let long = "n".repeat(1 << 20);
    let mut refused = None;
    for i in 0..(MAX_NAME_BYTES >> 20) + 1 {
        let url = if i % 2 == 0 {
            type_url::CLUSTER
        } else {
            type_url::ENDPOINTS
        };
        let name = format!("{long}{i}");
        if let Err(status) = state.handle_delta_request(s2.id, request(url, &[&name], &[], "")) {
            refused = Some((i, status.code()));
            break;
        }
    }
    let (at, code) = refused.expect("refused once past the bound");
    assert_eq!(code, Code::ResourceExhausted);
    assert_eq!(
        at,
        (MAX_NAME_BYTES >> 20) - 1,
        "each name is a little over 1 MiB"
    );
    while s2.next().is_some() {}

    // close_all ends delta streams too.
    assert_eq!(state.close_all(|| tonic::Status::unavailable("bye")), 2);
    assert_eq!(s.ended_with(), Code::Unavailable);
    assert_eq!(state.stream_count(), 0);
}

#[test]
fn delta_streams_are_refused_past_the_bound() {
    let mut state = State::default();
    let streams: Vec<Stream> = (0..MAX_STREAMS).map(|_| open(&mut state)).collect();
    let err = state.open_delta_stream().expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(state.total_streams(), MAX_STREAMS as u64);
    drop(streams);
}

#[test]
fn sotw_and_delta_streams_share_stream_ids_and_the_snapshot() {
    let mut state = State::default();
    state.apply_snapshot(Snapshot::new().listener(Listener {
        name: "l".to_owned(),
        ..Default::default()
    }));
    let (sotw, mut sotw_rx, _closed) = state.open_stream().unwrap();
    let mut d = open(&mut state);
    assert_eq!(d.id, sotw + 1, "one sequence of stream ids");
    send(&mut state, &d, request(type_url::LISTENER, &[], &[], ""));
    assert_eq!(sent(&d.expect()), ["l"]);
    state.remove_stream(d.id);
    assert_eq!(state.stream_ids(), [sotw]);
    assert!(sotw_rx.try_recv().is_err());
}
