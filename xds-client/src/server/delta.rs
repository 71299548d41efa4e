//! Delta (incremental) ADS streams of the test server: per stream and type URL, the
//! subscription and what the client holds (name to per-resource version), so that a
//! response carries only what changed for the stream and names what it lost.
//!
//! The rules, after the xDS protocol's "Incremental xDS" section (Envoy's
//! `xds_protocol.rst`) and go-control-plane's delta server:
//!
//! - `resource_names_subscribe` / `_unsubscribe` edit the subscription on every request,
//!   whatever its nonce (they are never repeated, unlike SotW's full lists). `"*"`
//!   subscribes to (or unsubscribes from) every resource of the type; an empty first
//!   request for LDS or CDS is the legacy wildcard, which ends once names are subscribed
//!   without `"*"`.
//! - A resource's version is a hash of its bytes, so it is stable across streams and server
//!   restarts. On the first request of a type, `initial_resource_versions` say what the
//!   client already holds: it is sent only what differs, and a held resource that no
//!   longer exists is named in `removed_resources`.
//! - A resource is sent when the stream gains interest in it or its version changes; it is
//!   named in `removed_resources` when it is deleted while the stream holds it, and when a
//!   name the stream subscribes to explicitly does not exist (once, so a client need not
//!   wait for a does-not-exist timer). Unsubscribed names are forgotten silently.
//! - The first request of a type is always answered (possibly with nothing), later ones
//!   only when there is something to send. `system_version_info` is the type's version in
//!   the snapshot, as in SotW.
//! - What a client makes the server hold is bounded: [`MAX_STREAMS`] delta streams, each
//!   with at most [`MAX_TYPES`] type URLs and [`MAX_NAME_BYTES`] of subscribed names and
//!   initial versions; past that the stream ends with `RESOURCE_EXHAUSTED`.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::oneshot;
use tonic::Status;

use super::outbox::{Inbox, Outbox, outbox};
use super::record::{RecordedRequest, RequestKind, SentResponse, Subscription, push_rank};
use super::snapshot::Snapshot;
use super::type_url;

/// The most delta streams open at once; a further one is refused with `RESOURCE_EXHAUSTED`.
pub(crate) const MAX_STREAMS: usize = 1024;
/// The most type URLs one delta stream may request.
pub(crate) const MAX_TYPES: usize = 32;
/// The most bytes of subscribed names and initial versions one delta stream may make the
/// server hold (each name counts one byte more than its length).
pub(crate) const MAX_NAME_BYTES: usize = 16 << 20;

// Bounded as SotW's is (see `outbox`): a push never waits on a client under the lock.
pub(crate) type DeltaOutbound = Outbox<DeltaDiscoveryResponse>;
pub(crate) type DeltaOutboundRx = Inbox<DeltaDiscoveryResponse>;

/// What a stream holds of one name, as far as the server told it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Held {
    /// The resource at this version.
    Version(String),
    /// Told that the (explicitly subscribed) resource does not exist.
    Absent,
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    held: BTreeMap<String, Held>,
    last_nonce: Option<String>,
    /// The `system_version_info` of the response `last_nonce` names.
    last_version: String,
    /// Bytes of `initial_resource_versions` counted against [`MAX_NAME_BYTES`].
    initial_bytes: usize,
    /// Bytes of `sub.names` counted against [`MAX_NAME_BYTES`].
    name_bytes: usize,
}

struct DeltaStream {
    tx: DeltaOutbound,
    // Dropped with the stream; that stops the stream's reader task.
    _close: oneshot::Sender<()>,
    next_nonce: u64,
    types: HashMap<String, TypeState>,
}

impl DeltaStream {
    fn held_bytes(&self) -> usize {
        self.types
            .values()
            .map(|ts| ts.initial_bytes + ts.name_bytes)
            .sum()
    }
}

/// Every open delta stream; the snapshot and the record stay in the SotW state.
#[derive(Default)]
pub(crate) struct DeltaStreams {
    streams: BTreeMap<u64, DeltaStream>,
}

/// The per-resource version: XXH64 of the type URL and bytes of the `Any`, in hex.
pub(crate) fn resource_version(resource: &Any) -> String {
    let mut hasher = xxhash_rust::xxh64::Xxh64::new(0);
    hasher.update(resource.type_url.as_bytes());
    hasher.update(&[0]);
    hasher.update(&resource.value);
    format!("{:016x}", hasher.digest())
}

/// LDS and CDS accept the legacy wildcard (an empty first request).
fn legacy_wildcard_type(type_url: &str) -> bool {
    type_url == type_url::LISTENER || type_url == type_url::CLUSTER
}

/// The bytes `names` count against [`MAX_NAME_BYTES`] (SotW streams' too).
pub(super) fn name_bytes<'a>(names: impl IntoIterator<Item = &'a String>) -> usize {
    names.into_iter().map(|n| n.len() + 1).sum()
}

impl DeltaStreams {
    /// Registers stream `id`; `Err` when [`MAX_STREAMS`] are open.
    pub(crate) fn open(
        &mut self,
        id: u64,
    ) -> Result<(DeltaOutboundRx, oneshot::Receiver<()>), Status> {
        if self.streams.len() >= MAX_STREAMS {
            return Err(Status::resource_exhausted(format!(
                "the xDS test server holds at most {MAX_STREAMS} delta streams"
            )));
        }
        let (tx, rx) = outbox();
        let (close_tx, close_rx) = oneshot::channel();
        self.streams.insert(
            id,
            DeltaStream {
                tx,
                _close: close_tx,
                next_nonce: 0,
                types: HashMap::new(),
            },
        );
        Ok((rx, close_rx))
    }

    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.streams.remove(&id).is_some()
    }

    /// Ends stream `id` with `status`; returns whether it was open.
    pub(crate) fn end(&mut self, id: u64, status: Status) -> bool {
        match self.streams.remove(&id) {
            Some(stream) => {
                stream.tx.end(status);
                true
            }
            None => false,
        }
    }

    pub(crate) fn close_all(&mut self, status: &impl Fn() -> Status) -> usize {
        let streams = std::mem::take(&mut self.streams);
        for stream in streams.values() {
            stream.tx.end(status());
        }
        streams.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.streams.keys().copied()
    }

    pub(crate) fn subscription(&self, id: u64, type_url: &str) -> Option<Subscription> {
        Some(self.streams.get(&id)?.types.get(type_url)?.sub.clone())
    }

    /// Handles one request of delta stream `id`, recording it in `requests` and what it
    /// sends in `responses`. An `Err` is the status to end the stream with.
    pub(crate) fn handle(
        &mut self,
        id: u64,
        request: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
        requests: &mut Vec<RecordedRequest>,
        responses: &mut Vec<SentResponse>,
    ) -> Result<(), Status> {
        let Some(stream) = self.streams.get_mut(&id) else {
            // Closed by the server while the request was in flight.
            return Ok(());
        };
        let record = |kind, version_info: String, request: DeltaDiscoveryRequest| {
            RecordedRequest::delta(id, kind, version_info, request)
        };
        if request.type_url.is_empty() {
            requests.push(record(RequestKind::Invalid, String::new(), request));
            return Err(Status::invalid_argument(
                "DeltaDiscoveryRequest.type_url: empty; every request on an ADS stream must name its type",
            ));
        }
        let type_url = request.type_url.clone();
        let first = !stream.types.contains_key(&type_url);
        if first && stream.types.len() >= MAX_TYPES {
            requests.push(record(RequestKind::Invalid, String::new(), request));
            return Err(Status::resource_exhausted(format!(
                "a delta stream of the xDS test server may request at most {MAX_TYPES} types"
            )));
        }
        let held_elsewhere = stream.held_bytes()
            - stream
                .types
                .get(&type_url)
                .map_or(0, |ts| ts.initial_bytes + ts.name_bytes);

        let mut next = stream.types.remove(&type_url).unwrap_or_default();
        let kind = if first {
            RequestKind::Initial
        } else if !request.response_nonce.is_empty()
            && next.last_nonce.as_deref() == Some(request.response_nonce.as_str())
        {
            if request.error_detail.is_some() {
                RequestKind::Nack
            } else {
                RequestKind::Ack
            }
        } else if request.response_nonce.is_empty() {
            RequestKind::Update
        } else {
            RequestKind::Stale
        };
        if first {
            next.initial_bytes = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| name.len() + version.len() + 2)
                .sum();
        }
        update_subscription(
            &mut next.sub,
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
            first && legacy_wildcard_type(&type_url),
        );
        next.name_bytes = name_bytes(&next.sub.names);
        let version_info = if matches!(kind, RequestKind::Ack | RequestKind::Nack) {
            next.last_version.clone()
        } else {
            String::new()
        };
        if held_elsewhere + next.initial_bytes + next.name_bytes > MAX_NAME_BYTES {
            requests.push(record(RequestKind::Invalid, version_info, request));
            return Err(Status::resource_exhausted(format!(
                "a delta stream of the xDS test server may subscribe to at most {MAX_NAME_BYTES} bytes of names"
            )));
        }
        if first {
            next.held = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| (name.clone(), Held::Version(version.clone())))
                .collect();
        } else {
            // A name subscribed again is one the client forgot: it is sent again (xDS
            // protocol, "Subscribing to Resources"); "*" again, every value the wildcard
            // alone covered.
            for name in &request.resource_names_subscribe {
                if name == "*" {
                    let named = &next.sub.names;
                    next.held.retain(|held, _| named.contains(held));
                } else {
                    next.held.remove(name);
                }
            }
        }
        requests.push(record(kind, version_info, request));

        // The client forgets what it unsubscribed from; so do we, so that a later
        // subscription sends the resource again.
        let sub = &next.sub;
        next.held
            .retain(|name, _| sub.wildcard || sub.names.contains(name));
        stream.types.insert(type_url.clone(), next);
        let (resources, removed) = diff(stream, snapshot, &type_url);
        if kind == RequestKind::Initial || !resources.is_empty() || !removed.is_empty() {
            send(
                id, stream, responses, snapshot, &type_url, resources, removed,
            );
        }
        Ok(())
    }

    /// Sends every stream what changed for it in `snapshot` (just applied).
    pub(crate) fn push_changes(&mut self, snapshot: &Snapshot, responses: &mut Vec<SentResponse>) {
        for (&id, stream) in &mut self.streams {
            let mut urls: Vec<String> = stream.types.keys().cloned().collect();
            urls.sort_by(|a, b| push_rank(a).cmp(&push_rank(b)).then_with(|| a.cmp(b)));
            for url in urls {
                let (resources, removed) = diff(stream, snapshot, &url);
                if !resources.is_empty() || !removed.is_empty() {
                    send(id, stream, responses, snapshot, &url, resources, removed);
                }
            }
        }
    }
}

/// Applies a request's subscribe and unsubscribe lists to `sub`.
fn update_subscription(
    sub: &mut Subscription,
    subscribe: &[String],
    unsubscribe: &[String],
    legacy_allowed: bool,
) {
    if legacy_allowed && subscribe.is_empty() && unsubscribe.is_empty() {
        sub.wildcard = true;
        sub.legacy_wildcard = true;
        return;
    }
    if sub.legacy_wildcard && !subscribe.is_empty() {
        // Names end the legacy wildcard unless the client asks for "*" explicitly.
        sub.legacy_wildcard = false;
        sub.wildcard = false;
    }
    for name in subscribe {
        if name == "*" {
            sub.wildcard = true;
        } else {
            sub.names.insert(name.clone());
        }
    }
    for name in unsubscribe {
        if name == "*" {
            sub.wildcard = false;
            sub.legacy_wildcard = false;
        } else {
            sub.names.remove(name);
        }
    }
}

/// What stream must be sent for `type_url` to hold what it subscribes to in `snapshot`;
/// records it as held.
fn diff(
    stream: &mut DeltaStream,
    snapshot: &Snapshot,
    type_url: &str,
) -> (Vec<Resource>, Vec<String>) {
    let Some(ts) = stream.types.get_mut(type_url) else {
        return (Vec::new(), Vec::new());
    };
    let empty = BTreeMap::new();
    let existing = snapshot.resources(type_url).unwrap_or(&empty);
    let mut candidates: Vec<String> = ts.held.keys().cloned().collect();
    candidates.extend(ts.sub.names.iter().cloned());
    if ts.sub.wildcard {
        candidates.extend(existing.keys().cloned());
    }
    candidates.sort_unstable();
    candidates.dedup();

    let mut resources = Vec::new();
    let mut removed = Vec::new();
    for name in candidates {
        let named = ts.sub.names.contains(&name);
        let current = match existing.get(&name) {
            Some(any) if named || ts.sub.wildcard => {
                Some((Held::Version(resource_version(any)), Some(any)))
            }
            None if named => Some((Held::Absent, None)),
            _ => None,
        };
        match (current, ts.held.get(&name).cloned()) {
            (Some((now, _)), Some(before)) if now == before => {}
            (Some((Held::Version(version), Some(any))), _) => {
                resources.push(Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                });
                ts.held.insert(name, Held::Version(version));
            }
            (Some(_), _) => {
                removed.push(name.clone());
                ts.held.insert(name, Held::Absent);
            }
            (None, Some(Held::Version(_))) => {
                // Deleted while the wildcard had it.
                removed.push(name.clone());
                ts.held.remove(&name);
            }
            (None, _) => {
                ts.held.remove(&name);
            }
        }
    }
    (resources, removed)
}

fn send(
    id: u64,
    stream: &mut DeltaStream,
    responses: &mut Vec<SentResponse>,
    snapshot: &Snapshot,
    type_url: &str,
    resources: Vec<Resource>,
    removed_resources: Vec<String>,
) {
    stream.next_nonce += 1;
    let nonce = stream.next_nonce.to_string();
    let version = snapshot.version(type_url).unwrap_or("0").to_owned();
    let response = DeltaDiscoveryResponse {
        system_version_info: version.clone(),
        resources,
        type_url: type_url.to_owned(),
        removed_resources,
        nonce: nonce.clone(),
        ..Default::default()
    };
    if let Some(ts) = stream.types.get_mut(type_url) {
        ts.last_nonce = Some(nonce.clone());
        ts.last_version = version.clone();
    }
    responses.push(SentResponse::delta(
        id,
        DiscoveryResponse {
            version_info: version,
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        },
        response.clone(),
    ));
    stream.tx.send(response);
}

#[cfg(test)]
mod tests;
