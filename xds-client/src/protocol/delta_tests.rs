//! The delta (incremental) ADS rules of [`AdsState`], without sockets.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::tests::{CDS, EDS, Harness, cla, eds_cluster, names, node, seed_of, static_cluster};
use super::*;

const LDS: ResourceType = ResourceType::Listener;

/// The harness's delta side: it opens a delta stream and speaks delta.
impl Harness {
    fn delta() -> Self {
        Self::delta_with(ProtocolConfig::new(node()))
    }

    fn delta_with(config: ProtocolConfig) -> Self {
        let mut h = Harness::with(config);
        h.ads.on_stream_closed(h.stream);
        h.stream = h.ads.on_delta_stream_open();
        h
    }

    fn delta_requests(&mut self) -> Vec<DeltaDiscoveryRequest> {
        std::iter::from_fn(|| self.ads.poll_delta_request(self.now)).collect()
    }

    fn delta_respond(&mut self, r: DeltaDiscoveryResponse) {
        self.ads.on_delta_response(self.stream, r, self.now);
    }

    /// Answers `t`'s pending requests with `resources` and returns the ACK or NACK.
    fn answer(
        &mut self,
        t: ResourceType,
        nonce: &str,
        resources: Vec<DeltaResource>,
        removed: &[&str],
    ) -> DeltaDiscoveryRequest {
        self.delta_requests();
        self.delta_respond(response(t, nonce, resources, removed));
        let mut reqs = self.delta_requests();
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        reqs.remove(0)
    }
}

/// A delta `Resource` named `name` carrying `body` at `version`.
fn res(name: &str, version: &str, body: Any) -> DeltaResource {
    DeltaResource {
        name: name.into(),
        version: version.into(),
        resource: Some(body),
        ..Default::default()
    }
}

/// A delta `Resource` named `name` at `version` without a body (a TTL heartbeat when the
/// client holds that version).
fn bodyless(name: &str, version: &str) -> DeltaResource {
    DeltaResource {
        name: name.into(),
        version: version.into(),
        resource: None,
        ..Default::default()
    }
}

fn response(
    t: ResourceType,
    nonce: &str,
    resources: Vec<DeltaResource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sys-{nonce}"),
        type_url: t.type_url().into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

fn sorted(names: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = names.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

#[test]
fn the_first_request_subscribes_every_name_with_the_node_and_no_versions() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "b");
    h.ads.subscribe(CDS, "a");
    h.ads.subscribe(EDS, "a");
    let reqs = h.delta_requests();
    assert_eq!(reqs.len(), 2, "one per type");
    assert_eq!(reqs[0].type_url, CDS.type_url());
    assert_eq!(reqs[0].node.as_ref().expect("node").id, "test-node");
    assert_eq!(reqs[0].resource_names_subscribe, ["a", "b"]);
    assert!(reqs[0].resource_names_unsubscribe.is_empty());
    assert!(reqs[0].initial_resource_versions.is_empty());
    assert!(reqs[0].response_nonce.is_empty());
    assert!(reqs[0].error_detail.is_none());
    assert!(
        reqs[1].node.is_none(),
        "node only on the stream's first request"
    );
    assert_eq!(reqs[1].resource_names_subscribe, ["a"]);
    assert!(
        h.ads.poll_request(h.now).is_none(),
        "no SotW request on a delta stream"
    );
}

#[test]
fn later_requests_carry_only_the_changes() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.ads.subscribe(CDS, "b");
    h.delta_requests();
    h.ads.subscribe(CDS, "c");
    h.ads.unsubscribe(CDS, "b");
    let reqs = h.delta_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].resource_names_subscribe, ["c"]);
    assert_eq!(reqs[0].resource_names_unsubscribe, ["b"]);
    assert!(reqs[0].initial_resource_versions.is_empty());
    assert!(reqs[0].node.is_none());

    // A name subscribed and dropped again before anything was sent is no change.
    h.ads.subscribe(CDS, "d");
    h.ads.unsubscribe(CDS, "d");
    assert!(h.delta_requests().is_empty());
}

#[test]
fn partial_acceptance_applies_the_valid_and_nacks_the_rest_by_name() {
    let mut h = Harness::delta();
    for n in ["a", "b", "c"] {
        h.ads.subscribe(CDS, n);
    }
    let ack = h.answer(
        CDS,
        "n1",
        vec![
            res("a", "va1", eds_cluster("a")),
            res("b", "vb1", eds_cluster("b")),
        ],
        &[],
    );
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    assert!(ack.resource_names_subscribe.is_empty(), "nothing changed");
    assert_eq!(names(&h.events()), ["changed:a", "changed:b"]);
    assert_eq!(h.ads.version(CDS), "sys-n1");
    assert_eq!(h.ads.view(CDS, "a").unwrap().version, Some("va1"));

    // b turns invalid; c's wrapper carries another cluster; a body-less `Resource` is a
    // heartbeat that changes nothing.
    let heartbeat = DeltaResource {
        name: "a".into(),
        version: "va1".into(),
        ..Default::default()
    };
    // A change made while the response is on its way goes out after its ACK or NACK, in a
    // request of its own.
    h.ads.subscribe(CDS, "d");
    h.delta_respond(response(
        CDS,
        "n2",
        vec![
            heartbeat,
            res("b", "vb2", static_cluster("b")),
            res("c", "vc2", eds_cluster("x")),
        ],
        &[],
    ));
    let mut reqs = h.delta_requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let nack = reqs.remove(0);
    assert_eq!(nack.response_nonce, "n2");
    assert!(
        nack.resource_names_subscribe.is_empty(),
        "Istio ignores a NACK's changes"
    );
    assert_eq!(reqs[0].resource_names_subscribe, ["d"]);
    assert!(reqs[0].response_nonce.is_empty() && reqs[0].error_detail.is_none());
    let detail = nack.error_detail.as_ref().expect("NACK");
    assert_eq!(detail.code, INVALID_ARGUMENT);
    assert!(
        detail.message.contains("carries a resource named \"x\""),
        "{}",
        detail.message
    );
    assert_eq!(
        detail.message.matches("; ").count(),
        1,
        "{}",
        detail.message
    );
    assert_eq!(names(&h.events()), ["invalid:b", "invalid:c"]);
    assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Acked));
    assert_eq!(h.ads.status(CDS, "b"), Some(ResourceStatus::Nacked));
    assert!(h.ads.get(CDS, "b").is_some(), "b keeps its last good value");
    assert_eq!(h.ads.view(CDS, "b").unwrap().version, Some("vb1"));
    assert_eq!(h.ads.status(CDS, "c"), Some(ResourceStatus::Nacked));
    assert!(h.ads.get(CDS, "x").is_none());
    assert_eq!(
        h.ads.version(CDS),
        "sys-n1",
        "a NACK does not move the version"
    );

    let ack = h.answer(CDS, "n3", vec![res("b", "vb3", eds_cluster("b"))], &[]);
    assert!(ack.error_detail.is_none());
    assert_eq!(names(&h.events()), ["changed:b"]);
    assert_eq!(h.ads.version(CDS), "sys-n3");
    assert_eq!(h.ads.view(CDS, "b").unwrap().version, Some("vb3"));
    assert_eq!(h.ads.view(CDS, "a").unwrap().version, Some("va1"));
}

#[test]
fn removed_resources_are_deleted_or_do_not_exist() {
    let mut h = Harness::delta();
    h.ads.subscribe(EDS, "a");
    h.ads.subscribe(EDS, "b");
    h.answer(EDS, "n1", vec![res("a", "1", cla("a"))], &[]);
    names(&h.events());
    // Nothing is inferred from what a delta response leaves out.
    h.answer(EDS, "n1b", vec![], &[]);
    assert_eq!(h.ads.status(EDS, "a"), Some(ResourceStatus::Acked));
    let ack = h.answer(EDS, "n2", vec![], &["a", "b", "unwanted"]);
    assert!(ack.error_detail.is_none());
    assert_eq!(names(&h.events()), ["gone:a", "gone:b"]);
    let a = h.ads.view(EDS, "a").unwrap();
    assert_eq!(a.status, ResourceStatus::DoesNotExist);
    assert!(a.value.is_none() && a.version.is_none());
    assert_eq!(h.ads.status(EDS, "b"), Some(ResourceStatus::DoesNotExist));
    assert_eq!(h.ads.status(EDS, "unwanted"), None);
    assert_eq!(
        h.ads.poll_timeout(),
        None,
        "b's timer stopped: the server answered"
    );
    // Said again, it is news to nobody.
    h.answer(EDS, "n3", vec![], &["b"]);
    assert!(names(&h.events()).is_empty());
}

#[test]
fn ignore_resource_deletion_keeps_a_removed_value_of_any_type() {
    let mut config = ProtocolConfig::new(node());
    config.ignore_resource_deletion = true;
    let mut h = Harness::delta_with(config);
    h.ads.subscribe(EDS, "a");
    h.ads.subscribe(EDS, "b");
    h.answer(EDS, "n1", vec![res("a", "1", cla("a"))], &[]);
    names(&h.events());
    h.answer(EDS, "n2", vec![], &["a", "b"]);
    assert_eq!(
        names(&h.events()),
        ["gone:b"],
        "a name without a value still does not exist"
    );
    assert_eq!(h.ads.status(EDS, "a"), Some(ResourceStatus::Acked));
    assert!(h.ads.get(EDS, "a").is_some());
}

#[test]
fn wildcards_are_star_and_removals_leave_no_tombstone() {
    let mut h = Harness::delta();
    h.ads.subscribe_legacy_wildcard(LDS);
    h.ads.subscribe(CDS, "*");
    h.ads.subscribe(CDS, "named");
    let reqs = h.delta_requests();
    let lds = reqs.iter().find(|r| r.type_url == LDS.type_url()).unwrap();
    assert_eq!(
        lds.resource_names_subscribe,
        ["*"],
        "a delta wildcard is always \"*\""
    );
    let cds = reqs.iter().find(|r| r.type_url == CDS.type_url()).unwrap();
    assert_eq!(sorted(&cds.resource_names_subscribe), ["*", "named"]);

    h.answer(
        CDS,
        "n1",
        vec![
            res("x", "1", eds_cluster("x")),
            res("y", "1", eds_cluster("y")),
        ],
        &[],
    );
    assert_eq!(names(&h.events()), ["changed:x", "changed:y"]);
    h.answer(CDS, "n2", vec![], &["x", "named"]);
    assert_eq!(names(&h.events()), ["gone:x", "gone:named"]);
    assert_eq!(
        h.ads.status(CDS, "x"),
        None,
        "a wildcard-only name is forgotten"
    );
    assert_eq!(
        h.ads.status(CDS, "named"),
        Some(ResourceStatus::DoesNotExist)
    );

    h.ads.unsubscribe(CDS, "*");
    let reqs = h.delta_requests();
    assert_eq!(reqs[0].resource_names_unsubscribe, ["*"]);
    assert!(reqs[0].resource_names_subscribe.is_empty());
}

#[test]
fn the_does_not_exist_timer_starts_on_a_connected_stream() {
    let mut ads = AdsState::new(ProtocolConfig::new(node()));
    let sid = ads.on_delta_stream_connecting();
    ads.subscribe(CDS, "a");
    let t0 = Instant::now();
    assert_eq!(
        ads.poll_delta_request(t0).unwrap().resource_names_subscribe,
        ["a"]
    );
    assert_eq!(ads.poll_timeout(), None, "not connected yet");
    let t1 = t0 + Duration::from_secs(30);
    ads.on_stream_connected(sid, t1);
    assert_eq!(
        ads.poll_timeout(),
        Some(t1 + DEFAULT_DOES_NOT_EXIST_TIMEOUT)
    );
    ads.handle_timeout(t1 + DEFAULT_DOES_NOT_EXIST_TIMEOUT);
    assert_eq!(ads.status(CDS, "a"), Some(ResourceStatus::DoesNotExist));

    // A name subscribed later on the connected stream waits from its own request.
    let mut h = Harness::delta();
    h.ads.subscribe(EDS, "a");
    h.delta_requests();
    h.advance(Duration::from_secs(10));
    h.ads.subscribe(EDS, "b");
    h.delta_requests();
    h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT - Duration::from_secs(10));
    assert_eq!(names(&h.events()), ["gone:a"]);
    h.advance(Duration::from_secs(10));
    assert_eq!(names(&h.events()), ["gone:b"]);
}

#[test]
fn a_reconnect_names_the_servers_values_not_the_snapshots() {
    let mut h = Harness::delta();
    h.ads.on_stream_closed(h.stream);
    h.ads.seed([seed_of(CDS, eds_cluster("s"), "snap")], h.now);
    h.stream = h.ads.on_delta_stream_open();
    for n in ["a", "s", "missing"] {
        h.ads.subscribe(CDS, n);
    }
    h.ads.subscribe(EDS, "a");
    let first = h.delta_requests();
    assert!(
        first.iter().all(|r| r.initial_resource_versions.is_empty()),
        "a seed's version is never sent: {first:?}"
    );
    h.answer(CDS, "n1", vec![res("a", "va", eds_cluster("a"))], &[]);
    h.answer(EDS, "n1", vec![res("a", "ea", cla("a"))], &[]);
    names(&h.events());

    let old = h.stream;
    h.ads.on_stream_closed(old);
    h.stream = h.ads.on_delta_stream_open();
    let reqs = h.delta_requests();
    assert_eq!(reqs.len(), 2);
    let cds = &reqs[0];
    assert!(cds.node.is_some());
    assert_eq!(cds.response_nonce, "", "nonces start afresh");
    assert_eq!(cds.resource_names_subscribe, ["a", "missing", "s"]);
    assert_eq!(
        cds.initial_resource_versions,
        HashMap::from([("a".to_owned(), "va".to_owned())])
    );
    assert_eq!(
        reqs[1].initial_resource_versions,
        HashMap::from([("a".to_owned(), "ea".to_owned())])
    );
    assert!(h.ads.is_from_snapshot(CDS, "s"));

    // The old stream's responses are dropped; a SotW response on a delta stream too.
    h.ads
        .on_delta_response(old, response(CDS, "late", vec![], &["a"]), h.now);
    h.ads.on_response(
        h.stream,
        DiscoveryResponse {
            type_url: CDS.type_url().into(),
            nonce: "sotw".into(),
            ..Default::default()
        },
        h.now,
    );
    assert!(h.delta_requests().is_empty());
    assert!(names(&h.events()).is_empty());
    assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Acked));
    // Nor does a SotW stream take delta responses or poll delta requests.
    h.stream = h.ads.on_stream_open();
    h.ads
        .on_delta_response(h.stream, response(CDS, "d", vec![], &["a"]), h.now);
    assert!(h.ads.poll_delta_request(h.now).is_none());
    assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Acked));
}

#[test]
fn names_not_subscribed_and_types_not_requested_are_ignored() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.delta_requests();
    h.delta_respond(response(EDS, "e", vec![res("a", "1", cla("a"))], &[]));
    assert!(
        h.delta_requests().is_empty(),
        "a type never asked for is not answered"
    );
    let ack = h.answer(
        CDS,
        "n1",
        vec![res("other", "1", eds_cluster("other"))],
        &[],
    );
    assert!(ack.error_detail.is_none());
    assert!(names(&h.events()).is_empty());
    assert_eq!(h.ads.status(CDS, "other"), None);
}

#[test]
fn hostile_responses_are_bounded_and_nacked_by_name() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.ads.subscribe(CDS, "b");
    h.ads.subscribe(CDS, "c");
    // The same name twice among the resources, and once in both lists: those names are
    // rejected, the rest applies.
    let nack = h.answer(
        CDS,
        "n1",
        vec![
            res("a", "1", eds_cluster("a")),
            res("a", "2", eds_cluster("a")),
            res("b", "1", eds_cluster("b")),
            res("c", "1", eds_cluster("c")),
        ],
        &["b"],
    );
    let detail = nack.error_detail.expect("NACK");
    assert!(
        detail.message.contains("resource a appears more than once"),
        "{}",
        detail.message
    );
    assert!(
        detail.message.contains("resource b appears more than once"),
        "{}",
        detail.message
    );
    assert_eq!(names(&h.events()), ["changed:c", "invalid:a", "invalid:b"]);

    // 200,000 removed names, none of them ours: no state grows, the ACK is small.
    let many: Vec<String> = (0..200_000).map(|i| format!("r{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let ack = h.answer(CDS, "n2", vec![], &many);
    assert!(ack.error_detail.is_none());
    assert_eq!(h.ads.resources().count(), 3);
    assert!(ack.encoded_len() < 256, "{}", ack.encoded_len());

    // An empty or unknown type URL is NACKed with its nonce.
    for type_url in ["", "type.googleapis.com/unknown.Type"] {
        h.delta_respond(DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: "u".into(),
            ..Default::default()
        });
        let reqs = h.delta_requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].type_url, type_url);
        assert_eq!(reqs[0].response_nonce, "u");
        assert!(
            reqs[0]
                .error_detail
                .as_ref()
                .unwrap()
                .message
                .contains("unknown resource type")
        );
    }
}

#[test]
fn a_body_of_another_type_or_garbage_is_invalid_under_the_wrappers_name() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.ads.subscribe(CDS, "b");
    let listener = Any {
        type_url: Listener::type_url(),
        value: Listener {
            name: "a".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    };
    let garbage = Any {
        type_url: CDS.type_url().into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let nack = h.answer(
        CDS,
        "n1",
        vec![res("a", "1", listener), res("b", "1", garbage)],
        &[],
    );
    assert!(nack.error_detail.is_some());
    assert_eq!(
        names(&h.events()),
        ["invalid:a", "invalid:b"],
        "a delta resource is named by its wrapper even when its body cannot be read"
    );
}

/// Fail-static over delta: a seeded value is replaced by the delta server's answer, and a
/// seeded value the server never sends ends by its timer, counted from the type's first
/// ACKed response.
#[test]
fn seeded_values_are_replaced_or_time_out_after_the_first_ack() {
    let mut h = Harness::delta();
    h.ads.on_stream_closed(h.stream);
    h.ads.seed(
        [
            seed_of(CDS, eds_cluster("a"), "s"),
            seed_of(CDS, eds_cluster("b"), "s"),
        ],
        h.now,
    );
    h.ads.subscribe(CDS, "a");
    h.ads.subscribe(CDS, "b");
    assert_eq!(names(&h.events()), ["changed:a", "changed:b"]);
    h.stream = h.ads.on_delta_stream_open();
    h.delta_requests();
    h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT * 2);
    assert!(
        names(&h.events()).is_empty(),
        "silence says nothing about a seeded value"
    );
    assert!(h.ads.is_from_snapshot(CDS, "b"));

    h.answer(CDS, "n1", vec![res("a", "va", eds_cluster("a"))], &[]);
    assert!(
        names(&h.events()).is_empty(),
        "the same value again is news to nobody"
    );
    assert!(!h.ads.is_from_snapshot(CDS, "a"));
    assert_eq!(h.ads.view(CDS, "a").unwrap().version, Some("va"));
    assert!(h.ads.is_from_snapshot(CDS, "b"));
    assert!(!h.ads.holds_unanswered_snapshot_values());
    h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT - Duration::from_millis(1));
    assert!(names(&h.events()).is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(names(&h.events()), ["gone:b"]);
    assert!(!h.ads.is_from_snapshot(CDS, "b"));
}
/// xds_protocol.rst, "Subscribing to Resources": a client may have "forgotten" a resource
/// it stays subscribed to, and then names it again in `resource_names_subscribe`; Envoy's
/// `DeltaSubscriptionState::updateSubscriptionInterest` turns remove-then-add before a
/// request into an add. `unsubscribe` drops the value; the name subscribed again before a
/// request went out is named again (else the server, believing it held, never resends it
/// and no timer runs: the watcher would wait forever).
#[test]
fn a_name_unsubscribed_and_subscribed_again_before_a_request_is_named_again() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.answer(CDS, "n1", vec![res("a", "1", eds_cluster("a"))], &[]);
    h.events();
    // One deliver() releases the key (last holder) and another target acquires it.
    h.ads.unsubscribe(CDS, "a");
    h.ads.subscribe(CDS, "a");
    assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Requested));
    let reqs = h.delta_requests();
    assert!(
        reqs.iter()
            .any(|r| r.resource_names_subscribe.iter().any(|n| n == "a")),
        "the forgotten name must be subscribed again: {reqs:?}"
    );
}

/// The same for the wildcard: `unsubscribe("*")` drops every wildcard-only value.
#[test]
fn a_wildcard_dropped_and_taken_again_before_a_request_is_sent_again() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "*");
    h.answer(CDS, "n1", vec![res("x", "1", eds_cluster("x"))], &[]);
    h.events();
    h.ads.unsubscribe(CDS, "*");
    h.ads.subscribe(CDS, "*");
    assert_eq!(h.ads.status(CDS, "x"), None, "x was forgotten");
    let reqs = h.delta_requests();
    assert!(
        reqs.iter()
            .any(|r| r.resource_names_subscribe.iter().any(|n| n == "*")),
        "\"*\" must be sent again so the server resends what the client forgot: {reqs:?}"
    );
}

/// A seed planted by a wildcard (fail-static, CDS "*") that the delta server does not
/// have: over SotW the first CDS response leaving it out deletes it. Over delta the server
/// never names it (seeds are, rightly, not in initial_resource_versions, so the server does
/// not know the client holds it) and it is not requested by name: its timer runs from the
/// first ACK, or it would be served as current forever.
#[test]
fn a_seed_only_the_wildcard_covers_ends_when_the_server_lacks_it() {
    let mut h = Harness::delta();
    h.ads.on_stream_closed(h.stream);
    h.ads.seed([seed_of(CDS, eds_cluster("old"), "s")], h.now);
    h.ads.subscribe(CDS, "*");
    assert_eq!(names(&h.events()), ["changed:old"]);
    h.stream = h.ads.on_delta_stream_open();
    let ack = h.answer(CDS, "n1", vec![res("new", "1", eds_cluster("new"))], &[]);
    assert!(ack.error_detail.is_none());
    h.events();
    for _ in 0..10 {
        h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT);
    }
    assert!(
        !h.ads.is_from_snapshot(CDS, "old"),
        "status {:?}: a seed no server has is still served",
        h.ads.status(CDS, "old")
    );
}

/// The reconnect request names the versions of what is held, however many responses
/// brought them; per-resource versions are the server's, of any length. Each response here
/// is under the 4 MiB decoding limit; unbounded, the first request of the next stream would
/// be over the transport's encoding limit (4 x 4 MiB), tonic would fail it on every stream
/// and every server (A71 fallback included), and the client would never reconnect.
#[test]
fn initial_resource_versions_stay_under_the_encoding_limit() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "*");
    h.delta_requests();
    let long = "v".repeat(3 << 20);
    for i in 0..6 {
        let name = format!("c{i}");
        let r = response(
            CDS,
            &format!("n{i}"),
            vec![res(&name, &long, eds_cluster(&name))],
            &[],
        );
        assert!(r.encoded_len() < crate::transport::DEFAULT_MAX_MESSAGE_SIZE);
        h.delta_respond(r);
        h.delta_requests();
    }
    h.ads.on_stream_closed(h.stream);
    h.stream = h.ads.on_delta_stream_open();
    let first = h.delta_requests().remove(0);
    assert!(
        first.encoded_len() <= 4 * crate::transport::DEFAULT_MAX_MESSAGE_SIZE,
        "first request of the new stream: {} bytes",
        first.encoded_len()
    );
}

/// A body-less `Resource` is a TTL heartbeat only when it names a value the client holds at
/// that version (Envoy's `isHeartbeatResponse`); otherwise Envoy NACKs it, and so do we, by
/// name, keeping what is held.
#[test]
fn a_bodyless_resource_is_a_heartbeat_only_for_a_held_version() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    let reply = h.answer(CDS, "n1", vec![bodyless("a", "1")], &[]);
    assert!(reply.error_detail.is_some(), "nothing held: {reply:?}");

    h.answer(CDS, "n2", vec![res("a", "1", eds_cluster("a"))], &[]);
    h.events();
    let reply = h.answer(CDS, "n3", vec![bodyless("a", "1")], &[]);
    assert!(reply.error_detail.is_none(), "a heartbeat: {reply:?}");
    assert!(h.events().is_empty(), "a heartbeat changes nothing");
    let reply = h.answer(CDS, "n4", vec![bodyless("a", "2")], &[]);
    assert!(reply.error_detail.is_some(), "another version: {reply:?}");
    assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Nacked));
    assert!(h.ads.get(CDS, "a").is_some(), "the held value stays");
}

/// A server that answers one type but never another (go-control-plane's caches hold a
/// request for names they lack) is not a silent one: a seeded value of the unanswered type
/// runs out by its timer from the stream's first ACK, as a value never received would.
#[test]
fn a_seed_of_a_type_the_server_never_answers_ends_after_another_types_ack() {
    let mut h = Harness::delta();
    h.ads.on_stream_closed(h.stream);
    h.ads.seed([seed_of(EDS, cla("e"), "s")], h.now);
    h.ads.subscribe(EDS, "e");
    h.ads.subscribe(CDS, "c");
    assert_eq!(names(&h.events()), ["changed:e"]);
    h.stream = h.ads.on_delta_stream_open();
    h.delta_requests();
    h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT * 2);
    assert_eq!(
        names(&h.events()),
        ["gone:c"],
        "silence ends what was never received (A57), not the seed"
    );
    assert!(h.ads.is_from_snapshot(EDS, "e"));

    let ack = h.answer(CDS, "n1", vec![res("c", "1", eds_cluster("c"))], &[]);
    assert!(ack.error_detail.is_none());
    assert_eq!(names(&h.events()), ["changed:c"]);
    h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT - Duration::from_millis(1));
    assert!(names(&h.events()).is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(names(&h.events()), ["gone:e"]);
}

/// A server that sends responses but does not read its stream leaves, per type, the
/// latest NACK and the latest ACK, in the order they came; the subscription changes made
/// meanwhile follow them, in a request with no nonce.
#[test]
fn unread_delta_answers_keep_the_latest_ack_and_nack_of_a_type() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.delta_requests();
    let good = |v: &str| vec![res("a", v, eds_cluster("a"))];
    let bad = |v: &str| vec![res("a", v, static_cluster("a"))];
    h.delta_respond(response(CDS, "n1", bad("1"), &[]));
    for i in 2..=500 {
        h.delta_respond(response(CDS, &format!("n{i}"), good(&i.to_string()), &[]));
    }
    h.delta_respond(response(CDS, "n501", bad("501"), &[]));
    h.delta_respond(response(CDS, "n502", good("502"), &[]));
    h.ads.subscribe(CDS, "b");
    let r = h.delta_requests();
    let seen: Vec<(&str, bool)> = r
        .iter()
        .map(|r| (r.response_nonce.as_str(), r.error_detail.is_some()))
        .collect();
    assert_eq!(seen, [("n501", true), ("n502", false), ("", false)]);
    assert!(r[0].resource_names_subscribe.is_empty());
    assert!(r[1].resource_names_subscribe.is_empty());
    assert_eq!(r[2].resource_names_subscribe, ["b"]);
    assert!(!h.ads.has_request());
}

/// Subscription changes made while answers wait unpolled go out once, after them: an
/// unsubscribe, and a name unsubscribed and subscribed again (named again, so the server
/// sends its value again).
#[test]
fn unread_delta_answers_carry_the_changes_made_meanwhile_once() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.ads.subscribe(CDS, "b");
    h.delta_requests();
    let both = |v: &str| vec![res("a", v, eds_cluster("a")), res("b", v, eds_cluster("b"))];
    h.delta_respond(response(CDS, "n1", both("1"), &[]));
    h.ads.unsubscribe(CDS, "b");
    h.ads.unsubscribe(CDS, "a");
    h.ads.subscribe(CDS, "a");
    h.delta_respond(response(CDS, "n2", both("2"), &[]));
    assert!(h.ads.has_request());
    let r = h.delta_requests();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].response_nonce, "n2");
    assert!(r[0].resource_names_subscribe.is_empty() && r[0].resource_names_unsubscribe.is_empty());
    assert!(r[1].response_nonce.is_empty());
    assert_eq!(r[1].resource_names_unsubscribe, ["b"]);
    assert_eq!(
        r[1].resource_names_subscribe,
        ["a"],
        "a's value was forgotten"
    );
    assert!(!h.ads.has_request());
    assert!(
        h.ads.get(CDS, "b").is_none(),
        "b's value in n2 was not wanted"
    );
}

/// Answers still waiting when a delta stream ends are not sent on the next: its first
/// request subscribes again with the versions held, without a nonce.
#[test]
fn unread_delta_answers_are_dropped_with_their_stream() {
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.delta_requests();
    h.delta_respond(response(
        CDS,
        "n1",
        vec![res("a", "1", eds_cluster("a"))],
        &[],
    ));
    h.delta_respond(response(
        CDS,
        "n2",
        vec![res("a", "2", static_cluster("a"))],
        &[],
    ));
    h.ads.on_stream_closed(h.stream);
    h.stream = h.ads.on_delta_stream_open();
    let r = h.delta_requests();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].response_nonce, "");
    assert!(r[0].error_detail.is_none());
    assert_eq!(r[0].resource_names_subscribe, ["a"]);
    assert_eq!(
        r[0].initial_resource_versions,
        HashMap::from([("a".to_owned(), "1".to_owned())])
    );
    assert!(r[0].node.is_some());
}

/// A response decoded before the state is touched ([`AdsState::decode_response`],
/// [`AdsState::heartbeats`] and [`AdsState::decode_delta_response`], as the client's group
/// does outside its lock) applies as one decoded in place: the same events and the same
/// ACKs and NACKs, heartbeats included; one decoded for the other kind of stream, or for an
/// older stream, is dropped unanswered.
#[test]
fn a_response_decoded_apart_applies_as_one_decoded_in_place() {
    let script = [
        response(
            CDS,
            "n1",
            vec![
                res("a", "1", eds_cluster("a")),
                res("b", "1", static_cluster("b")),
            ],
            &[],
        ),
        response(CDS, "n2", vec![bodyless("a", "1"), bodyless("b", "7")], &[]),
        response(CDS, "n3", vec![res("b", "2", eds_cluster("b"))], &["a"]),
    ];
    let mut in_place = Harness::delta();
    let mut apart = Harness::delta();
    for h in [&mut in_place, &mut apart] {
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(CDS, "b");
        h.delta_requests();
    }
    for r in script {
        in_place.delta_respond(r.clone());
        let held = apart.ads.heartbeats(&r);
        let decoded = AdsState::decode_delta_response(r, &held);
        apart
            .ads
            .on_decoded_response(apart.stream, decoded, apart.now);
        let (a, b) = (in_place.delta_requests(), apart.delta_requests());
        assert_eq!(a, b);
        assert_eq!(a.len(), 1, "one answer per response");
        assert_eq!(names(&in_place.events()), names(&apart.events()));
    }
    assert_eq!(apart.ads.get(CDS, "a"), None, "removed");
    assert!(apart.ads.get(CDS, "b").is_some());

    // The same on SotW, where decoding needs nothing from the state.
    let sotw = |nonce: &str, resources: Vec<Any>| DiscoveryResponse {
        version_info: format!("v-{nonce}"),
        resources,
        type_url: CDS.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    };
    let mut in_place = Harness::new();
    let mut apart = Harness::new();
    for h in [&mut in_place, &mut apart] {
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(CDS, "b");
        std::iter::from_fn(|| h.ads.poll_request(h.now)).count();
    }
    for r in [
        sotw("n1", vec![eds_cluster("a"), static_cluster("b")]),
        sotw("n2", vec![eds_cluster("b")]),
    ] {
        in_place
            .ads
            .on_response(in_place.stream, r.clone(), in_place.now);
        let decoded = AdsState::decode_response(r);
        apart
            .ads
            .on_decoded_response(apart.stream, decoded, apart.now);
        let a: Vec<_> = std::iter::from_fn(|| in_place.ads.poll_request(in_place.now)).collect();
        let b: Vec<_> = std::iter::from_fn(|| apart.ads.poll_request(apart.now)).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
        assert_eq!(names(&in_place.events()), names(&apart.events()));
    }

    // A SotW response on a delta stream, and a response of a closed stream: dropped.
    let mut h = Harness::delta();
    h.ads.subscribe(CDS, "a");
    h.delta_requests();
    let decoded = AdsState::decode_response(sotw("n1", vec![eds_cluster("a")]));
    h.ads.on_decoded_response(h.stream, decoded, h.now);
    assert!(h.delta_requests().is_empty() && h.events().is_empty());
    let old = h.stream;
    h.ads.on_stream_closed(old);
    h.stream = h.ads.on_delta_stream_open();
    h.delta_requests();
    let r = response(CDS, "n1", vec![res("a", "1", eds_cluster("a"))], &[]);
    let decoded = AdsState::decode_delta_response(r, &HeldVersions::default());
    h.ads.on_decoded_response(old, decoded, h.now);
    assert!(h.delta_requests().is_empty() && h.events().is_empty());
}
