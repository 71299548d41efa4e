//! The server's protocol state: the snapshot, every open stream's subscriptions, versions
//! and nonces, and the record of requests and responses. No I/O: responses go into each
//! stream's queue without waiting (bounded by what its client leaves unread, see
//! `outbox`), so every decision is made (and tested) synchronously under one lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;
use tokio::sync::oneshot;
use tonic::Status;

use super::delta::{DeltaOutboundRx, DeltaStreams, name_bytes};
use super::outbox::{Inbox, Outbox, outbox};
use super::record::{RecordedRequest, RequestKind, SentResponse, Subscription, push_rank};
use super::snapshot::Snapshot;
use super::type_url;

// A push never waits on a slow client while the state is locked; a client that leaves too
// much unread has its stream ended (see `outbox`).
pub(crate) type Outbound = Outbox<DiscoveryResponse>;
pub(crate) type OutboundRx = Inbox<DiscoveryResponse>;

struct StreamState {
    tx: Outbound,
    // Dropped with the stream's state; that wakes the stream's reader task, which stops.
    _close: oneshot::Sender<()>,
    next_nonce: u64,
    types: HashMap<String, TypeState>,
}

#[derive(Default)]
struct TypeState {
    /// A request for this type arrived on the stream (a `push_raw` alone does not count).
    requested: bool,
    sub: Subscription,
    last_nonce: Option<String>,
    /// What the stream was last sent for this type; `None` before the first response and
    /// after a `push_raw`, so the next evaluation resends the real state.
    last_sent: Option<BTreeMap<String, Any>>,
    /// Bytes of `sub.names` counted against [`MAX_NAME_BYTES`].
    name_bytes: usize,
}

/// The most requests (and, apart, responses) the server keeps a record of, the newest.
pub(crate) const MAX_RECORDED: usize = 10_000;
/// The most bytes (encoded) of requests, and apart of responses, the record keeps: a
/// long-running server pushing large snapshots would otherwise hold [`MAX_RECORDED`] of
/// them.
pub(crate) const MAX_RECORDED_BYTES: usize = 64 << 20;
/// The most type URLs one SotW stream may request.
pub(crate) const MAX_TYPES: usize = super::delta::MAX_TYPES;
/// The most bytes of subscribed names one SotW stream may make the server hold (each name
/// counts one byte more than its length).
pub(crate) const MAX_NAME_BYTES: usize = super::delta::MAX_NAME_BYTES;

#[derive(Default)]
pub(crate) struct State {
    snapshot: Snapshot,
    counters: HashMap<String, u64>,
    streams: BTreeMap<u64, StreamState>,
    next_stream_id: u64,
    total_streams: u64,
    requests: Vec<RecordedRequest>,
    responses: Vec<SentResponse>,
    /// The bytes of `requests[..requests_counted]` (see [`trim`]).
    requests_bytes: usize,
    requests_counted: usize,
    /// The bytes of `responses[..responses_counted]`.
    responses_bytes: usize,
    responses_counted: usize,
    delta: DeltaStreams,
    shutting_down: bool,
    /// Per type URL, how many NACKs `wait_for_nack` has already handed out.
    pub(crate) nacks_taken: HashMap<String, usize>,
}

/// Keeps a record (`log`) within `max` entries and `max_bytes` ([`MAX_RECORDED`] and
/// [`MAX_RECORDED_BYTES`] for the server's): past twice either, the oldest entries are
/// dropped (each handed to `dropped`) until both hold again, the newest entry always kept.
/// Amortised: an entry's size is taken once when it is first counted (`bytes` is the size
/// of `log[..counted]`) and once when dropped.
pub(super) fn trim<T>(
    (max, max_bytes): (usize, usize),
    log: &mut Vec<T>,
    bytes: &mut usize,
    counted: &mut usize,
    size: impl Fn(&T) -> usize,
    mut dropped: impl FnMut(&T),
) {
    *bytes += log[*counted..].iter().map(&size).sum::<usize>();
    *counted = log.len();
    if log.len() <= 2 * max && *bytes <= 2 * max_bytes {
        return;
    }
    let mut excess = 0;
    while excess + 1 < log.len() && (log.len() - excess > max || *bytes > max_bytes) {
        *bytes -= size(&log[excess]);
        excess += 1;
    }
    for old in log.drain(..excess) {
        dropped(&old);
    }
    *counted = log.len();
}

/// LDS and CDS responses carry every subscribed resource that exists; a missing one is
/// deleted. RDS and EDS responses may carry a subset.
fn is_full_state(type_url: &str) -> bool {
    type_url == type_url::LISTENER || type_url == type_url::CLUSTER
}

impl State {
    pub(crate) fn open_stream(
        &mut self,
    ) -> Result<(u64, OutboundRx, oneshot::Receiver<()>), Status> {
        if self.shutting_down {
            return Err(Status::unavailable("the xDS test server is shutting down"));
        }
        if self.streams.len() >= super::delta::MAX_STREAMS {
            return Err(Status::resource_exhausted(format!(
                "the xDS test server holds at most {} SotW streams",
                super::delta::MAX_STREAMS
            )));
        }
        let (tx, rx) = outbox();
        let (close_tx, close_rx) = oneshot::channel();
        self.next_stream_id += 1;
        self.total_streams += 1;
        let id = self.next_stream_id;
        self.streams.insert(
            id,
            StreamState {
                tx,
                _close: close_tx,
                next_nonce: 0,
                types: HashMap::new(),
            },
        );
        Ok((id, rx, close_rx))
    }

    /// Opens a delta stream; its id comes from the same sequence as SotW streams'.
    pub(crate) fn open_delta_stream(
        &mut self,
    ) -> Result<(u64, DeltaOutboundRx, oneshot::Receiver<()>), Status> {
        if self.shutting_down {
            return Err(Status::unavailable("the xDS test server is shutting down"));
        }
        let id = self.next_stream_id + 1;
        let (rx, closed) = self.delta.open(id)?;
        self.next_stream_id = id;
        self.total_streams += 1;
        Ok((id, rx, closed))
    }

    /// Forgets the stream; returns whether it was open. Dropping its sender ends the
    /// response stream with `OK` once the queued responses are out.
    pub(crate) fn remove_stream(&mut self, id: u64) -> bool {
        self.streams.remove(&id).is_some() || self.delta.remove(id)
    }

    /// Ends stream `id` with `status`.
    pub(crate) fn end_stream(&mut self, id: u64, status: Status) {
        if let Some(stream) = self.streams.remove(&id) {
            stream.tx.end(status);
        } else {
            self.delta.end(id, status);
        }
    }

    /// Ends every open stream with `status`; returns how many there were.
    pub(crate) fn close_all(&mut self, status: impl Fn() -> Status) -> usize {
        let streams = std::mem::take(&mut self.streams);
        for stream in streams.values() {
            stream.tx.end(status());
        }
        streams.len() + self.delta.close_all(&status)
    }

    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len() + self.delta.len()
    }

    pub(crate) fn stream_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .streams
            .keys()
            .copied()
            .chain(self.delta.ids())
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(crate) fn total_streams(&self) -> u64 {
        self.total_streams
    }

    pub(crate) fn requests(&self) -> &[RecordedRequest] {
        &self.requests
    }

    pub(crate) fn responses(&self) -> &[SentResponse] {
        &self.responses
    }

    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub(crate) fn version(&self, type_url: &str) -> String {
        self.snapshot.version(type_url).unwrap_or("0").to_owned()
    }

    pub(crate) fn subscription(&self, stream_id: u64, type_url: &str) -> Option<Subscription> {
        let Some(stream) = self.streams.get(&stream_id) else {
            return self.delta.subscription(stream_id, type_url);
        };
        let ts = stream.types.get(type_url)?;
        ts.requested.then(|| ts.sub.clone())
    }

    /// Handles one request of delta stream `id`. An `Err` is the status to end the stream
    /// with.
    pub(crate) fn handle_delta_request(
        &mut self,
        id: u64,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), Status> {
        let handled = self.delta.handle(
            id,
            request,
            &self.snapshot,
            &mut self.requests,
            &mut self.responses,
        );
        self.trim_records();
        handled
    }

    /// Handles one request of stream `id`. An `Err` is the status to end the stream with.
    pub(crate) fn handle_request(
        &mut self,
        id: u64,
        request: DiscoveryRequest,
    ) -> Result<(), Status> {
        let handled = self.handle(id, request);
        self.trim_records();
        handled
    }

    /// Keeps the record of requests and responses bounded for a server that runs long
    /// (`xds-serve`, the soak harness): past twice [`MAX_RECORDED`] entries, the oldest are
    /// dropped down to [`MAX_RECORDED`] (amortised), and the NACKs `wait_for_nack` handed
    /// out among them are forgotten with them.
    fn trim_records(&mut self) {
        let nacks_taken = &mut self.nacks_taken;
        let bounds = (MAX_RECORDED, MAX_RECORDED_BYTES);
        trim(
            bounds,
            &mut self.requests,
            &mut self.requests_bytes,
            &mut self.requests_counted,
            |r| r.request.encoded_len() + r.delta.as_ref().map_or(0, |d| d.encoded_len()),
            |old| {
                if old.kind == RequestKind::Nack
                    && let Some(taken) = nacks_taken.get_mut(&old.request.type_url)
                {
                    *taken = taken.saturating_sub(1);
                }
            },
        );
        trim(
            bounds,
            &mut self.responses,
            &mut self.responses_bytes,
            &mut self.responses_counted,
            |r| r.response.encoded_len() + r.delta.as_ref().map_or(0, |d| d.encoded_len()),
            |_| {},
        );
    }

    fn handle(&mut self, id: u64, request: DiscoveryRequest) -> Result<(), Status> {
        let Self {
            snapshot,
            streams,
            requests,
            responses,
            ..
        } = self;
        let Some(stream) = streams.get_mut(&id) else {
            // Closed by the server while the request was in flight.
            return Ok(());
        };
        if request.type_url.is_empty() {
            requests.push(RecordedRequest {
                stream_id: id,
                kind: RequestKind::Invalid,
                request,
                delta: None,
            });
            return Err(Status::invalid_argument(
                "DiscoveryRequest.type_url: empty; every request on an ADS stream must name its type",
            ));
        }
        let type_url = request.type_url.clone();
        if let Some(refused) = over_bounds(stream, &request) {
            requests.push(RecordedRequest {
                stream_id: id,
                kind: RequestKind::Invalid,
                request,
                delta: None,
            });
            return Err(refused);
        }
        let ts = stream.types.entry(type_url.clone()).or_default();
        let first = !ts.requested;
        let kind = if ts.last_nonce.as_deref() == Some(request.response_nonce.as_str()) {
            if request.error_detail.is_some() {
                RequestKind::Nack
            } else {
                RequestKind::Ack
            }
        } else if first {
            RequestKind::Initial
        } else {
            RequestKind::Stale
        };
        let names = request.resource_names.clone();
        requests.push(RecordedRequest {
            stream_id: id,
            kind,
            request,
            delta: None,
        });
        if kind == RequestKind::Stale {
            return Ok(());
        }

        ts.requested = true;
        let added = update_subscription(&mut ts.sub, &names, first, is_full_state(&type_url));
        ts.name_bytes = name_bytes(&ts.sub.names);
        if let Some(sent) = &mut ts.last_sent {
            // The client forgets what it unsubscribed from; so do we, so that a later
            // change elsewhere does not look like a change for this stream.
            let sub = &ts.sub;
            sent.retain(|name, _| sub.wildcard || sub.names.contains(name));
        }
        let contents = select(snapshot, &type_url, &ts.sub);
        let changed = ts.last_sent.as_ref() != Some(&contents);
        // For LDS and CDS a response also says that a newly subscribed name does not
        // exist, so it is worth sending even when it carries nothing new.
        if kind == RequestKind::Initial || (added && (changed || is_full_state(&type_url))) {
            let version = snapshot.version(&type_url).unwrap_or("0").to_owned();
            send(id, stream, responses, &type_url, version, contents);
        }
        Ok(())
    }

    /// Replaces the snapshot, assigns versions, and pushes to every stream whose view of a
    /// subscribed type changed.
    pub(crate) fn apply_snapshot(&mut self, mut next: Snapshot) {
        let mut type_urls: BTreeSet<String> = self.snapshot.types().keys().cloned().collect();
        type_urls.extend(next.types().keys().cloned());
        for url in &type_urls {
            let old = self.snapshot.types().get(url);
            let old_version = old.and_then(|t| t.version.clone());
            let entry = next.types_mut().entry(url.clone()).or_default();
            let empty = BTreeMap::new();
            let old_resources = old.map_or(&empty, |t| &t.resources);
            entry.version = if *old_resources == entry.resources {
                old_version
            } else {
                let counter = self.counters.entry(url.clone()).or_insert(0);
                *counter += 1;
                match entry.version.take() {
                    Some(named) if Some(&named) != old_version.as_ref() => Some(named),
                    _ => Some(counter.to_string()),
                }
            };
        }
        self.snapshot = next;
        self.push_changes();
    }

    fn push_changes(&mut self) {
        self.push_changes_unrecorded();
        self.trim_records();
    }

    fn push_changes_unrecorded(&mut self) {
        let Self {
            snapshot,
            streams,
            responses,
            delta,
            ..
        } = self;
        delta.push_changes(snapshot, responses);
        for (&id, stream) in streams.iter_mut() {
            let mut urls: Vec<String> = stream
                .types
                .iter()
                .filter(|(_, ts)| ts.requested)
                .map(|(url, _)| url.clone())
                .collect();
            urls.sort_by(|a, b| push_rank(a).cmp(&push_rank(b)).then_with(|| a.cmp(b)));
            for url in urls {
                let Some(ts) = stream.types.get(&url) else {
                    continue;
                };
                let contents = select(snapshot, &url, &ts.sub);
                if ts.last_sent.as_ref() != Some(&contents) {
                    let version = snapshot.version(&url).unwrap_or("0").to_owned();
                    send(id, stream, responses, &url, version, contents);
                }
            }
        }
    }

    /// Sends `response` on every open stream; an empty nonce is replaced by a fresh one.
    pub(crate) fn push_raw(&mut self, response: &DiscoveryResponse) -> usize {
        let streams = self.push_raw_unrecorded(response);
        self.trim_records();
        streams
    }

    fn push_raw_unrecorded(&mut self, response: &DiscoveryResponse) -> usize {
        let Self {
            streams, responses, ..
        } = self;
        for (&id, stream) in streams.iter_mut() {
            let mut response = response.clone();
            if response.nonce.is_empty() {
                response.nonce = next_nonce(stream);
            }
            let ts = stream.types.entry(response.type_url.clone()).or_default();
            ts.last_nonce = Some(response.nonce.clone());
            ts.last_sent = None;
            responses.push(SentResponse {
                stream_id: id,
                response: response.clone(),
                delta: None,
            });
            stream.tx.send(response);
        }
        streams.len()
    }
}

/// Why `request` would make `stream` hold more than a stream may ([`MAX_TYPES`] type URLs,
/// [`MAX_NAME_BYTES`] of names), if it would: the stream then ends with that status.
fn over_bounds(stream: &StreamState, request: &DiscoveryRequest) -> Option<Status> {
    let known = stream.types.contains_key(&request.type_url);
    if !known && stream.types.len() >= MAX_TYPES {
        return Some(Status::resource_exhausted(format!(
            "a stream may request at most {MAX_TYPES} type URLs"
        )));
    }
    // A SotW request replaces its type's names: count the others' and this one's.
    let others: usize = stream
        .types
        .iter()
        .filter(|(url, _)| **url != request.type_url)
        .map(|(_, ts)| ts.name_bytes)
        .sum();
    (others + name_bytes(&request.resource_names) > MAX_NAME_BYTES).then(|| {
        Status::resource_exhausted(format!(
            "a stream may subscribe to at most {MAX_NAME_BYTES} bytes of names"
        ))
    })
}

/// Applies the names of a request to `sub`; returns whether it now covers something it did
/// not (a name or the wildcard).
fn update_subscription(
    sub: &mut Subscription,
    names: &[String],
    first: bool,
    full_state: bool,
) -> bool {
    let before = sub.clone();
    if names.is_empty() {
        if (first && full_state) || sub.legacy_wildcard {
            sub.legacy_wildcard = true;
            sub.wildcard = true;
            sub.names.clear();
        } else {
            // An empty list after the first request unsubscribes from everything.
            *sub = Subscription::default();
        }
    } else {
        sub.legacy_wildcard = false;
        sub.wildcard = names.iter().any(|n| n == "*");
        sub.names = names.iter().filter(|n| *n != "*").cloned().collect();
    }
    // A name the old wildcard covered is nothing new.
    !before.wildcard && (sub.wildcard || sub.names.difference(&before.names).next().is_some())
}

/// The resources of `type_url` that `sub` selects and that exist.
fn select(snapshot: &Snapshot, type_url: &str, sub: &Subscription) -> BTreeMap<String, Any> {
    let Some(resources) = snapshot.resources(type_url) else {
        return BTreeMap::new();
    };
    if sub.wildcard {
        return resources.clone();
    }
    sub.names
        .iter()
        .filter_map(|name| resources.get(name).map(|r| (name.clone(), r.clone())))
        .collect()
}

fn next_nonce(stream: &mut StreamState) -> String {
    stream.next_nonce += 1;
    stream.next_nonce.to_string()
}

fn send(
    id: u64,
    stream: &mut StreamState,
    responses: &mut Vec<SentResponse>,
    type_url: &str,
    version: String,
    contents: BTreeMap<String, Any>,
) {
    let nonce = next_nonce(stream);
    let response = DiscoveryResponse {
        version_info: version,
        resources: contents.values().cloned().collect(),
        type_url: type_url.to_owned(),
        nonce: nonce.clone(),
        ..Default::default()
    };
    let ts = stream.types.entry(type_url.to_owned()).or_default();
    ts.last_nonce = Some(nonce);
    ts.last_sent = Some(contents);
    responses.push(SentResponse {
        stream_id: id,
        response: response.clone(),
        delta: None,
    });
    stream.tx.send(response);
}
