//! The protocol state machine, driven without I/O.

use std::collections::BTreeSet;

use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::oneshot;

use super::state::{OutboundRx, State};
use super::*;

fn listener(name: &str, stat_prefix: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        stat_prefix: stat_prefix.to_owned(),
        ..Default::default()
    }
}

fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        ..Default::default()
    }
}

fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        ..Default::default()
    }
}

fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        version_info: version.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn nack(
    type_url: &str,
    names: &[&str],
    version: &str,
    nonce: &str,
    message: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 3,
            message: message.to_owned(),
            details: vec![],
        }),
        ..request(type_url, names, version, nonce)
    }
}

struct Stream {
    id: u64,
    rx: OutboundRx,
    _closed: oneshot::Receiver<()>,
}

fn open(state: &mut State) -> Stream {
    let (id, rx, closed) = state.open_stream().expect("open");
    Stream {
        id,
        rx,
        _closed: closed,
    }
}

impl Stream {
    /// The next queued response, if any.
    fn next(&mut self) -> Option<DiscoveryResponse> {
        match self.rx.try_recv() {
            Ok(Ok(response)) => Some(response),
            Ok(Err(status)) => panic!("stream ended with {status:?}"),
            Err(_) => None,
        }
    }

    fn expect(&mut self) -> DiscoveryResponse {
        self.next().expect("a response")
    }

    fn expect_nothing(&mut self) {
        if let Some(response) = self.next() {
            panic!("unexpected response: {response:?}");
        }
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .filter_map(resource_name)
        .collect()
}

fn send(state: &mut State, stream: &Stream, request: DiscoveryRequest) -> RequestKind {
    state
        .handle_request(stream.id, request)
        .expect("valid request");
    state.requests().last().expect("recorded").kind
}

fn three_listeners() -> Snapshot {
    Snapshot::new()
        .listener(listener("a", "a"))
        .listener(listener("b", "b"))
        .listener(listener("c", "c"))
}

#[test]
fn initial_request_gets_the_named_resources_that_exist() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    let kind = send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a", "c", "zz"], "", ""),
    );
    assert_eq!(kind, RequestKind::Initial);
    let r = s.expect();
    assert_eq!(r.type_url, type_url::LISTENER);
    assert_eq!(r.version_info, "1");
    assert_eq!(r.nonce, "1");
    assert_eq!(names(&r), ["a", "c"]);
    s.expect_nothing();
}

#[test]
fn initial_request_is_answered_even_with_the_current_version_and_nothing_to_send() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    // A reconnecting client names the version it has.
    send(&mut state, &s, request(type_url::LISTENER, &["a"], "1", ""));
    assert_eq!(names(&s.expect()), ["a"]);
    // A type with no resources at all is at version "0".
    send(&mut state, &s, request(type_url::ROUTE, &["r"], "", ""));
    let r = s.expect();
    assert_eq!(r.version_info, "0");
    assert!(r.resources.is_empty());
    assert_eq!(r.nonce, "2", "nonces count per stream, across types");
}

#[test]
fn legacy_wildcard_lasts_while_requests_stay_empty() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::LISTENER, &[], "", ""));
    let r = s.expect();
    assert_eq!(names(&r), ["a", "b", "c"]);
    let sub = state.subscription(s.id, type_url::LISTENER).unwrap();
    assert!(sub.wildcard && sub.legacy_wildcard);

    // Envoy ACKs a wildcard with empty names: still wildcard, nothing sent.
    let kind = send(
        &mut state,
        &s,
        request(type_url::LISTENER, &[], "1", &r.nonce),
    );
    assert_eq!(kind, RequestKind::Ack);
    s.expect_nothing();
    assert!(
        state
            .subscription(s.id, type_url::LISTENER)
            .unwrap()
            .wildcard
    );

    // A new listener is pushed with the full set.
    let mut next = three_listeners();
    next.insert_listener(listener("d", "d"));
    state.apply_snapshot(next);
    let r = s.expect();
    assert_eq!(r.version_info, "2");
    assert_eq!(names(&r), ["a", "b", "c", "d"]);
}

#[test]
fn legacy_wildcard_ends_when_names_arrive_and_a_later_empty_list_unsubscribes_all() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::LISTENER, &[], "", ""));
    let r = s.expect();

    // Names without "*": the wildcard is gone, only "a" remains; nothing new to send.
    send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a"], "1", &r.nonce),
    );
    let sub = state.subscription(s.id, type_url::LISTENER).unwrap();
    assert!(!sub.wildcard && !sub.legacy_wildcard);
    assert_eq!(sub.names, BTreeSet::from(["a".to_owned()]));
    s.expect_nothing();

    // Changing "b" no longer concerns this stream.
    state.apply_snapshot(three_listeners().listener(listener("b", "changed")));
    s.expect_nothing();

    // Empty after names: unsubscribe from everything (not wildcard again).
    send(
        &mut state,
        &s,
        request(type_url::LISTENER, &[], "1", &r.nonce),
    );
    let sub = state.subscription(s.id, type_url::LISTENER).unwrap();
    assert!(!sub.wildcard && sub.names.is_empty());
    s.expect_nothing();
    state.apply_snapshot(three_listeners().listener(listener("a", "changed")));
    s.expect_nothing();
}

#[test]
fn empty_first_request_is_wildcard_only_for_lds_and_cds() {
    let mut state = State::default();
    state.apply_snapshot(Snapshot::new().route(route("r1")).cluster(cluster("c1")));
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::ROUTE, &[], "", ""));
    let r = s.expect();
    assert!(
        r.resources.is_empty(),
        "an empty RDS request subscribes to nothing"
    );
    assert!(!state.subscription(s.id, type_url::ROUTE).unwrap().wildcard);
    send(&mut state, &s, request(type_url::CLUSTER, &[], "", ""));
    assert_eq!(names(&s.expect()), ["c1"]);
}

#[test]
fn explicit_wildcard_mixes_with_names() {
    let mut state = State::default();
    state.apply_snapshot(Snapshot::new().route(route("r1")).route(route("r2")));
    let mut s = open(&mut state);
    send(
        &mut state,
        &s,
        request(type_url::ROUTE, &["*", "r1", "missing"], "", ""),
    );
    let r = s.expect();
    assert_eq!(names(&r), ["r1", "r2"]);
    let sub = state.subscription(s.id, type_url::ROUTE).unwrap();
    assert!(sub.wildcard && !sub.legacy_wildcard);
    assert_eq!(sub.names.len(), 2, "'*' is not kept as a name");

    // Dropping "*" keeps r1 only; nothing new to send.
    send(
        &mut state,
        &s,
        request(type_url::ROUTE, &["r1"], &r.version_info, &r.nonce),
    );
    s.expect_nothing();
    state.apply_snapshot(
        Snapshot::new()
            .route(route("r1"))
            .route(RouteConfiguration {
                name: "r2".into(),
                validate_clusters: Some(Default::default()),
                ..Default::default()
            }),
    );
    s.expect_nothing();
}

#[test]
fn ack_and_nack_send_nothing_and_are_classified() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::LISTENER, &["a"], "", ""));
    let r = s.expect();
    let kind = send(
        &mut state,
        &s,
        nack(type_url::LISTENER, &["a"], "", &r.nonce, "bad listener a"),
    );
    assert_eq!(kind, RequestKind::Nack);
    s.expect_nothing();
    let kind = send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a"], "1", &r.nonce),
    );
    assert_eq!(kind, RequestKind::Ack);
    s.expect_nothing();
    let nacks: Vec<_> = state
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::Nack)
        .map(|r| r.error_message().unwrap().to_owned())
        .collect();
    assert_eq!(nacks, ["bad listener a"]);
    // A NACKed version is not resent; the next change is.
    state.apply_snapshot(three_listeners().listener(listener("a", "fixed")));
    let r = s.expect();
    assert_eq!(r.version_info, "2");
}

#[test]
fn stale_requests_are_recorded_and_change_nothing() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::LISTENER, &["a"], "", ""));
    let first = s.expect();
    state.apply_snapshot(three_listeners().listener(listener("a", "v2")));
    let second = s.expect();
    assert_ne!(first.nonce, second.nonce);

    // The ACK of the first response crossed the second one: stale, even if it adds "b".
    let kind = send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a", "b"], "1", &first.nonce),
    );
    assert_eq!(kind, RequestKind::Stale);
    s.expect_nothing();
    assert_eq!(
        state.subscription(s.id, type_url::LISTENER).unwrap().names,
        BTreeSet::from(["a".to_owned()])
    );
    // Unknown nonces and a later empty nonce are stale as well.
    assert_eq!(
        send(
            &mut state,
            &s,
            request(type_url::LISTENER, &["a"], "", "nope")
        ),
        RequestKind::Stale
    );
    assert_eq!(
        send(&mut state, &s, request(type_url::LISTENER, &["a"], "", "")),
        RequestKind::Stale
    );
    s.expect_nothing();

    // Answering the latest response with the new names works.
    let kind = send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a", "b"], "2", &second.nonce),
    );
    assert_eq!(kind, RequestKind::Ack);
    assert_eq!(names(&s.expect()), ["a", "b"]);
}

#[test]
fn snapshot_changes_reach_only_interested_streams() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners().cluster(cluster("c1")));
    let mut lds = open(&mut state);
    let mut cds = open(&mut state);
    send(
        &mut state,
        &lds,
        request(type_url::LISTENER, &["a"], "", ""),
    );
    send(&mut state, &cds, request(type_url::CLUSTER, &[], "", ""));
    let l1 = lds.expect();
    let c1 = cds.expect();
    assert_eq!(
        (l1.version_info.as_str(), c1.version_info.as_str()),
        ("1", "1")
    );

    // A new cluster: only the CDS stream hears of it; listener versions stay.
    state.apply_snapshot(
        three_listeners()
            .cluster(cluster("c1"))
            .cluster(cluster("c2")),
    );
    lds.expect_nothing();
    let c2 = cds.expect();
    assert_eq!(c2.version_info, "2");
    assert_eq!(names(&c2), ["c1", "c2"]);
    assert_eq!(state.version(type_url::LISTENER), "1");

    // Listener "b" changes: the version of LDS moves, but stream `lds` only wants "a".
    state.apply_snapshot(
        three_listeners()
            .listener(listener("b", "changed"))
            .cluster(cluster("c1"))
            .cluster(cluster("c2")),
    );
    assert_eq!(state.version(type_url::LISTENER), "2");
    lds.expect_nothing();
    cds.expect_nothing();

    // Setting the very same snapshot again changes nothing at all.
    let same = state.snapshot().clone();
    state.apply_snapshot(same);
    assert_eq!(state.version(type_url::LISTENER), "2");
    lds.expect_nothing();
    cds.expect_nothing();
}

#[test]
fn lds_and_cds_carry_the_full_state_and_absence_is_deletion() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a", "b"], "", ""),
    );
    let r = s.expect();
    send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a", "b"], "1", &r.nonce),
    );

    // "b" changes: the response still carries "a" as well.
    state.apply_snapshot(three_listeners().listener(listener("b", "new")));
    assert_eq!(names(&s.expect()), ["a", "b"]);
    // "b" is deleted: the response omits it.
    let mut without_b = three_listeners();
    without_b.remove(type_url::LISTENER, "b");
    state.apply_snapshot(without_b);
    let r = s.expect();
    assert_eq!(names(&r), ["a"]);
    assert_eq!(r.version_info, "3");

    // Subscribing to a name that does not exist is answered too (it tells the client).
    send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a", "zz"], "3", &r.nonce),
    );
    assert_eq!(names(&s.expect()), ["a"]);
}

#[test]
fn rds_and_eds_responses_carry_only_what_is_new_to_say() {
    let mut state = State::default();
    state.apply_snapshot(Snapshot::new().route(route("r1")).route(route("r2")));
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::ROUTE, &["r1"], "", ""));
    let r = s.expect();
    assert_eq!(names(&r), ["r1"]);

    // Subscribing to a route that does not exist: nothing to send (no deletion in RDS).
    send(
        &mut state,
        &s,
        request(type_url::ROUTE, &["r1", "r3"], "1", &r.nonce),
    );
    s.expect_nothing();
    // It appears: sent, with r1 (the subscribed resources that exist).
    state.apply_snapshot(
        Snapshot::new()
            .route(route("r1"))
            .route(route("r2"))
            .route(route("r3")),
    );
    let r = s.expect();
    assert_eq!(names(&r), ["r1", "r3"]);
    // Subscribing to one that exists: sent at once.
    send(
        &mut state,
        &s,
        request(type_url::ROUTE, &["r1", "r2", "r3"], "2", &r.nonce),
    );
    assert_eq!(names(&s.expect()), ["r1", "r2", "r3"]);
}

#[test]
fn unsubscribing_sends_nothing_and_stops_pushes() {
    let mut state = State::default();
    state.apply_snapshot(Snapshot::new().route(route("r1")).route(route("r2")));
    let mut s = open(&mut state);
    send(
        &mut state,
        &s,
        request(type_url::ROUTE, &["r1", "r2"], "", ""),
    );
    let r = s.expect();
    send(
        &mut state,
        &s,
        request(type_url::ROUTE, &["r1"], "1", &r.nonce),
    );
    s.expect_nothing();
    let mut changed = state.snapshot().clone();
    changed.insert_route(RouteConfiguration {
        name: "r2".into(),
        validate_clusters: Some(Default::default()),
        ..Default::default()
    });
    state.apply_snapshot(changed);
    s.expect_nothing();
}

#[test]
fn pushes_go_clusters_first_then_endpoints_listeners_routes() {
    let mut state = State::default();
    let mut s = open(&mut state);
    for url in [
        type_url::ROUTE,
        type_url::LISTENER,
        type_url::ENDPOINTS,
        type_url::CLUSTER,
    ] {
        send(&mut state, &s, request(url, &["x"], "", ""));
        s.expect();
    }
    state.apply_snapshot(
        Snapshot::new()
            .listener(listener("x", "x"))
            .route(route("x"))
            .cluster(cluster("x"))
            .endpoints(ClusterLoadAssignment {
                cluster_name: "x".into(),
                ..Default::default()
            }),
    );
    let order: Vec<String> = std::iter::from_fn(|| s.next())
        .map(|r| r.type_url)
        .collect();
    assert_eq!(
        order,
        [
            type_url::CLUSTER,
            type_url::ENDPOINTS,
            type_url::LISTENER,
            type_url::ROUTE
        ]
    );
}

#[test]
fn versions_change_only_with_content_and_named_versions_are_used() {
    let mut state = State::default();
    state.apply_snapshot(
        Snapshot::new()
            .cluster(cluster("c"))
            .with_version(type_url::CLUSTER, "v-a"),
    );
    assert_eq!(state.version(type_url::CLUSTER), "v-a");
    // Same content, another name: the version stays.
    state.apply_snapshot(
        Snapshot::new()
            .cluster(cluster("c"))
            .with_version(type_url::CLUSTER, "v-b"),
    );
    assert_eq!(state.version(type_url::CLUSTER), "v-a");
    // New content with the old name: the server picks a fresh version.
    state.apply_snapshot(
        Snapshot::new()
            .cluster(cluster("d"))
            .with_version(type_url::CLUSTER, "v-a"),
    );
    assert_eq!(state.version(type_url::CLUSTER), "2");
    // Removing every cluster is a change too.
    state.apply_snapshot(Snapshot::new());
    assert_eq!(state.version(type_url::CLUSTER), "3");
    assert_eq!(state.version(type_url::LISTENER), "0");
}

#[test]
fn push_raw_sets_the_nonce_to_answer_and_the_next_change_resends() {
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::LISTENER, &["a"], "", ""));
    let r = s.expect();
    send(
        &mut state,
        &s,
        request(type_url::LISTENER, &["a"], "1", &r.nonce),
    );

    let sent = state.push_raw(&DiscoveryResponse {
        version_info: "evil".into(),
        type_url: type_url::LISTENER.into(),
        resources: vec![Any {
            type_url: type_url::LISTENER.into(),
            value: vec![0xff],
        }],
        ..Default::default()
    });
    assert_eq!(sent, 1);
    let raw = s.expect();
    assert_eq!(raw.version_info, "evil");
    assert!(!raw.nonce.is_empty() && raw.nonce != r.nonce);
    let kind = send(
        &mut state,
        &s,
        nack(type_url::LISTENER, &["a"], "1", &raw.nonce, "undecodable"),
    );
    assert_eq!(kind, RequestKind::Nack);
    s.expect_nothing();

    // Any later snapshot change resends the real state of the type.
    state.apply_snapshot(three_listeners().cluster(cluster("unrelated")));
    let r = s.expect();
    assert_eq!(r.version_info, "1");
    assert_eq!(names(&r), ["a"]);

    // A raw response of a type the stream never asked for, with its own nonce.
    state.push_raw(&DiscoveryResponse {
        type_url: "type.googleapis.com/unknown.Type".into(),
        nonce: "mine".into(),
        ..Default::default()
    });
    assert_eq!(s.expect().nonce, "mine");
    let kind = send(
        &mut state,
        &s,
        nack(
            "type.googleapis.com/unknown.Type",
            &[],
            "",
            "mine",
            "unknown type",
        ),
    );
    assert_eq!(kind, RequestKind::Nack);
    s.expect_nothing();
}

#[test]
fn a_request_without_type_url_is_invalid() {
    let mut state = State::default();
    let s = open(&mut state);
    let err = state
        .handle_request(s.id, request("", &["a"], "", ""))
        .expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("type_url"), "{}", err.message());
    assert_eq!(state.requests()[0].kind, RequestKind::Invalid);
}

#[test]
fn close_all_ends_streams_with_unavailable_and_shutdown_refuses_new_ones() {
    let mut state = State::default();
    let mut a = open(&mut state);
    let mut b = open(&mut state);
    assert_eq!(state.stream_count(), 2);
    assert_eq!(state.close_all(|| Status::unavailable("bye")), 2);
    assert_eq!(state.stream_count(), 0);
    for s in [&mut a, &mut b] {
        let status = s.rx.try_recv().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(s.rx.try_recv().is_err(), "the stream ends after the status");
    }
    // Requests of a closed stream are dropped.
    assert!(
        state
            .handle_request(a.id, request(type_url::LISTENER, &[], "", ""))
            .is_ok()
    );
    assert!(state.requests().is_empty());
    state.begin_shutdown();
    assert_eq!(
        state.open_stream().unwrap_err().code(),
        tonic::Code::Unavailable
    );
    assert_eq!(state.total_streams(), 2);
}

/// A server that runs long (`xds-serve`, the soak harness) keeps a bounded record: the
/// newest requests and responses, and `wait_for_nack`'s count of handed-out NACKs shrinks
/// with the NACKs dropped.
#[test]
fn the_record_of_requests_and_responses_is_bounded() {
    use super::state::MAX_RECORDED;
    let mut state = State::default();
    state.apply_snapshot(three_listeners());
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::LISTENER, &["a"], "", ""));
    let r = s.expect();
    send(
        &mut state,
        &s,
        nack(type_url::LISTENER, &["a"], "", &r.nonce, "bad listener a"),
    );
    state.nacks_taken.insert(type_url::LISTENER.to_owned(), 1);
    for _ in 0..2 * MAX_RECORDED {
        send(
            &mut state,
            &s,
            request(type_url::LISTENER, &["a"], "1", "stale"),
        );
    }
    let kept = state.requests().len();
    assert!((MAX_RECORDED..=2 * MAX_RECORDED).contains(&kept), "{kept}");
    assert!(
        state
            .requests()
            .iter()
            .all(|r| r.kind == RequestKind::Stale)
    );
    assert_eq!(state.nacks_taken[type_url::LISTENER], 0);
    assert!(state.responses().len() <= 2 * MAX_RECORDED);
}

#[test]
fn sotw_streams_are_refused_past_the_bound() {
    let mut state = State::default();
    let streams: Vec<Stream> = (0..delta::MAX_STREAMS).map(|_| open(&mut state)).collect();
    let err = state.open_stream().expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(state.total_streams(), delta::MAX_STREAMS as u64);
    state.remove_stream(streams[0].id);
    assert!(state.open_stream().is_ok(), "room again once one is gone");
}

#[test]
fn a_sotw_stream_past_its_types_or_names_is_ended() {
    let mut state = State::default();
    let s = open(&mut state);
    for i in 0..state::MAX_TYPES {
        let url = format!("type.example/T{i}");
        send(&mut state, &s, request(&url, &["a"], "", ""));
    }
    let err = state
        .handle_request(s.id, request("type.example/OneTooMany", &["a"], "", ""))
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(state.requests().last().unwrap().kind, RequestKind::Invalid);

    let s = open(&mut state);
    let long = "n".repeat(1 << 20);
    let names: Vec<String> = (0..15).map(|i| format!("{i}{long}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    send(&mut state, &s, request(type_url::CLUSTER, &names, "", ""));
    // Replacing a type's names counts the new list, not both.
    send(&mut state, &s, request(type_url::CLUSTER, &names, "", "1"));
    let err = state
        .handle_request(s.id, request(type_url::LISTENER, &names[..2], "", ""))
        .expect_err("past the name bytes");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("bytes of names"), "{err:?}");
}

#[test]
fn a_client_that_leaves_responses_unread_has_its_stream_ended() {
    let mut state = State::default();
    let mut s = open(&mut state);
    send(&mut state, &s, request(type_url::CLUSTER, &[], "", ""));
    s.expect();
    for i in 0..=outbox::MAX_UNREAD_RESPONSES {
        state.apply_snapshot(Snapshot::new().cluster(cluster(&format!("c{i}"))));
    }
    let end = s.rx.try_recv().unwrap().unwrap_err();
    assert_eq!(end.code(), tonic::Code::ResourceExhausted);
    assert!(s.rx.try_recv().is_err(), "what was queued is dropped");
}

#[test]
fn the_record_is_bounded_in_entries_and_bytes() {
    let (mut log, mut bytes, mut counted) = (Vec::new(), 0, 0);
    let mut dropped = Vec::new();
    let mut add = |log: &mut Vec<usize>, size: usize, dropped: &mut Vec<usize>| {
        log.push(size);
        state::trim(
            (4, 100),
            log,
            &mut bytes,
            &mut counted,
            |s| *s,
            |s| dropped.push(*s),
        );
    };
    for _ in 0..8 {
        add(&mut log, 1, &mut dropped);
    }
    assert_eq!(
        (log.len(), dropped.len()),
        (8, 0),
        "trimmed past twice the bound"
    );
    add(&mut log, 1, &mut dropped);
    assert_eq!((log.len(), dropped.len()), (4, 5), "down to the bound");
    add(&mut log, 150, &mut dropped);
    assert_eq!(log.len(), 5, "150 bytes of 200 allowed before trimming");
    add(&mut log, 60, &mut dropped);
    assert_eq!(log, [60], "down to 100 bytes, the newest kept");
    add(&mut log, 500, &mut dropped);
    assert_eq!(log, [500], "an entry larger than the bound is the one kept");
}
