//! The ADS protocol, state of the world (SotW) and delta, as a sans-io state machine.
//!
//! [`AdsState`] owns everything the xDS protocol needs to remember — subscriptions per type,
//! the accepted version and last nonce per type, the cache of validated resources with their
//! status, and the resource-does-not-exist timers — and does no I/O. The transport feeds it
//! stream lifecycle, responses and the time; it answers with requests to send
//! ([`AdsState::poll_request`]), events ([`AdsState::poll_event`]) and the next deadline
//! ([`AdsState::poll_timeout`]). Every rule below is unit-tested without sockets.
//!
//! A response is handled in two steps: decoding (`response`) validates every resource and
//! decides, from the response alone, what it says about each named resource and whether it
//! is ACKed; applying moves each wanted resource through one transition of its status
//! (`state`: accepted, rejected, not found, deleted), the one place a resource's status,
//! value, version or error changes.
//!
//! Rules, with the gRFC or xDS-spec clause each follows:
//! - **ACK/NACK** (xDS spec): an ACK carries the response's `version_info` and nonce; a NACK
//!   carries the *previously accepted* version, the response's nonce and `error_detail`.
//!   Both name the resources wanted then; istiod ignores the names a NACK carries, so a
//!   subscription change a NACK carried is sent again after it, in a request that is no
//!   NACK (the same nonce, the accepted version), as any subscription change is.
//!   An ACK or NACK is built when it is polled, from the type's state then, and one not yet
//!   polled is replaced by the next of its type (the latest nonce and accepted version are
//!   all a SotW server reads; on delta the latest NACK is kept beside the latest ACK), so a
//!   driver that stops polling while responses keep coming (a server that does not read
//!   its stream) holds at most two per type, not one request per response.
//! - **Partial acceptance** (gRFC A46): one response may mix valid and invalid resources. The
//!   valid ones are applied; the response is NACKed with the reason of every invalid one. An
//!   invalid resource whose name could be read keeps its last good value and is marked
//!   `NACKED` with the error, and its watchers are told. The NACK's text (and its log line)
//!   is bounded: the first errors up to 16 KiB, then how many more there
//!   were. grpc-go and grpc core join every error; a 4 MiB response of ~2 million empty
//!   resources would make that a ~200 MB request, which a control plane refuses (then the
//!   stream fails and the same response comes again). The resources in a response are
//!   bounded only by the message limit (4 MiB by default, a few bytes each at least), and
//!   validating them is linear, so no separate count limit is applied.
//! - **Deletion**: for the full-state types (LDS, CDS) a cached resource that a response
//!   leaves out is deleted — unless the server has the `ignore_resource_deletion` feature
//!   (gRFC A53), when it is kept and the deletion is only logged. RDS/EDS responses are never
//!   read as deletions.
//! - **Does-not-exist timer** (gRFC A57): a subscribed resource with no value starts a timer
//!   (15 s by default) when the request naming it is sent on a *connected* stream, as
//!   grpc-go starts it after the write: a driver that queues requests while the connection
//!   is still being made ([`AdsState::on_stream_connecting`]) starts their timers only when
//!   it reports the connection up ([`AdsState::on_stream_connected`]), so a slow or silent
//!   server cannot make a resource "not exist". The timer stops while disconnected and
//!   restarts in full on the next connected stream.
//! - **Wildcard**: legacy (empty `resource_names` on the first request of a stream, LDS/CDS
//!   only) and explicit (`"*"`, possibly with names). Once a stream has named resources for a
//!   type, an empty list means "unsubscribe from all", so a request is only sent empty when
//!   that is what we mean.
//! - **Streams**: a new stream resets every nonce and re-sends every subscription with the
//!   last accepted version, so an unchanged server answers with nothing new; responses that
//!   arrive on a stream that is no longer current are dropped.
//! - **Server-reported errors** (gRFC A88): `resource_errors` in a response mark the named
//!   resources: `NOT_FOUND` as does-not-exist, anything else as an error that keeps the cache.
//! - **Data errors on a cached resource** (gRFC A88): a rejected update (ours or the
//!   server's) keeps the last good value in use, unless the server has the
//!   `fail_on_data_errors` feature: then a NACKed resource, or one the server reports
//!   `PERMISSION_DENIED`, loses its cached value and its watchers fail, so a bad config
//!   shows at once instead of when clients restart.
//!
//! # Delta
//!
//! A stream's kind is fixed when it opens ([`AdsState::on_delta_stream_connecting`] or
//! [`AdsState::on_delta_stream_open`] for delta, the others for SotW); on a delta stream
//! [`AdsState::poll_request`] and [`AdsState::on_response`] do nothing, and the delta ones
//! likewise on a SotW stream. Statuses, values, timers, seeds, the dump and the metrics are
//! the same for both: a delta response goes through the same decoder and transitions.
//! The rules, after the xDS protocol's "Incremental xDS" section and Envoy's
//! `DeltaSubscriptionState`:
//! - **Requests**: a type's first request on a stream subscribes every wanted name, `"*"`
//!   for a wildcard (a legacy one too: `"*"` says it without the "empty first request"
//!   rule), with the node on the stream's first request, and `initial_resource_versions`:
//!   the version of each value this process received from a server. Not a fail-static
//!   seed's: that value was never this stream's, and a server that found its version
//!   current would stay silent and the seed be served as current forever. The versions
//!   named are bounded (4 KiB per entry, 4 MiB in all): a value left out is only sent
//!   again, while a first request over the transport's encoding limit would fail every
//!   stream. Later requests carry only `resource_names_subscribe` / `_unsubscribe`
//!   changes; a name unsubscribed (its value forgotten) and subscribed again before the
//!   next request is named again, so the server sends it again (the protocol's
//!   "Subscribing to Resources"; Envoy's `updateSubscriptionInterest`). Subscription
//!   changes go only in requests with no nonce (the protocol's spontaneous requests),
//!   never in an ACK or NACK: Istio ignores the changes a NACK (or an ACK of an older
//!   nonce) carries and takes those of an ACK for a mistake (`shouldRespondDelta`), where
//!   Envoy sends them with whatever request goes next. A change made while a response is
//!   on its way so costs a request of its own after that response's ACK/NACK.
//! - **ACK/NACK**: the response's nonce; a NACK adds `error_detail`, the same bounded text
//!   as SotW. Nothing else. Partial acceptance (A46) as in SotW, per resource.
//! - **Responses**: each `Resource` is decoded by the SotW decoders; its wrapper names it,
//!   so a body of another name is invalid (under the wrapper's name), as is a body that
//!   does not decode. A `Resource` without a body is a TTL heartbeat, which changes
//!   nothing, when it names a value held at that version, and invalid otherwise (as Envoy
//!   has it). meshwork keeps no TTLs: a value whose TTL runs out stays in use until the
//!   server removes it. A value's version is the resource's own `version`;
//!   `system_version_info` is the type's version. Names not wanted are ignored.
//! - **Removals**: a name in `removed_resources` with a value is deleted (kept under
//!   `ignore_resource_deletion`, for every type: in delta any type can be deleted
//!   explicitly, and the feature guards against a control plane's mistaken deletions); a
//!   subscribed name without one does not exist (A57: a delta server says so this way).
//!   Nothing is inferred from what a response leaves out, so a fail-static seed that only
//!   the wildcard covers (never named, never sent as held) runs out by its timer once a
//!   server has ACKed anything, as a named one does. A name given twice, or both sent and removed,
//!   is a duplicate: only that name is rejected and the rest applied, as A46 has it for
//!   SotW (a deliberate difference: Envoy rejects such a delta response whole).
//! - **Reconnect**: a new stream subscribes everything again with
//!   `initial_resource_versions`, so an unchanged server sends nothing and the cache keeps
//!   serving; what the server then removes is deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;

use crate::resource::{Resource, ResourceError, ResourceType};

#[cfg(test)]
mod delta_tests;
mod response;
mod state;

#[cfg(test)]
use response::NackDetail;
use response::{Decoded, Outcome};
use state::{ResourceState, Transition};

/// The default resource-does-not-exist timeout (gRFC A57).
pub(crate) const DEFAULT_DOES_NOT_EXIST_TIMEOUT: Duration = Duration::from_secs(15);

/// gRPC status code `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;
/// gRPC status code `NOT_FOUND`, a server's way to say a resource does not exist (A88).
const NOT_FOUND: i32 = 5;
/// gRPC status code `PERMISSION_DENIED`: with `fail_on_data_errors`, drops a cached value
/// (A88).
const PERMISSION_DENIED: i32 = 7;

/// The most bytes of error text a NACK carries in its `error_detail` (and its log line):
/// the first errors, then "and N more". 16 KiB holds a hundred typical reasons, which is
/// what an operator reads; the count says the rest.
pub(crate) const MAX_NACK_DETAIL: usize = 16 * 1024;

/// The most a delta stream's first request of a type names in `initial_resource_versions`
/// (names and versions, bytes): well under the transport's encoding limit.
const MAX_INITIAL_VERSIONS_BYTES: usize = 4 * 1024 * 1024;

/// A held value whose name and version together are longer is not named in
/// `initial_resource_versions` (the server sends it again).
const MAX_INITIAL_VERSION_ENTRY: usize = 4 * 1024;

/// The NACKs of responses of unknown types that wait to be sent, at most.
const MAX_UNKNOWN_TYPE_ANSWERS: usize = 4;

/// Cut `text` to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

/// The NACK of a response whose `type_url` is no resource type meshwork knows (an empty
/// one included); `None` for a known type.
fn unknown_type(type_url: &str) -> Option<Status> {
    if ResourceType::from_type_url(type_url).is_some() {
        return None;
    }
    let mut type_url = type_url.to_owned();
    truncate(&mut type_url, MAX_NACK_DETAIL);
    tracing::warn!(%type_url, "NACK: response of an unknown type");
    Some(Status {
        code: INVALID_ARGUMENT,
        message: format!("unknown resource type {type_url}"),
        details: Vec::new(),
    })
}

/// How the protocol state machine behaves; built from the bootstrap.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    /// The node sent on the first request of every stream.
    pub node: Node,
    /// How long a requested resource may stay unanswered before it is declared not to exist.
    pub does_not_exist_timeout: Duration,
    /// The server's `ignore_resource_deletion` feature (gRFC A53): LDS/CDS deletions are
    /// logged and ignored, the last value keeps serving.
    pub ignore_resource_deletion: bool,
    /// The server's `fail_on_data_errors` feature (gRFC A88): a rejected update of a cached
    /// resource drops the cached value instead of keeping it in use.
    pub fail_on_data_errors: bool,
}

impl ProtocolConfig {
    /// A config with the given node and the defaults: a 15 s does-not-exist timeout and
    /// deletions honoured.
    pub fn new(node: Node) -> Self {
        Self {
            node,
            does_not_exist_timeout: DEFAULT_DOES_NOT_EXIST_TIMEOUT,
            ignore_resource_deletion: false,
            fail_on_data_errors: false,
        }
    }
}

/// Identifies one ADS stream; responses from an older stream are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(u64);

/// A response decoded and validated away from the state ([`AdsState::decode_response`],
/// [`AdsState::decode_delta_response`]), to apply with [`AdsState::on_decoded_response`].
/// It carries what the ACK or NACK needs (type, nonce, version), so it cannot be applied
/// with another response's.
#[derive(Debug)]
pub struct DecodedResponse {
    /// Decoded from a delta response.
    delta: bool,
    type_url: String,
    nonce: String,
    /// The response's `version_info` (SotW) or `system_version_info` (delta).
    version: String,
    /// `None` for a type this client does not know.
    decoded: Option<Decoded>,
}

/// The versions of the values a delta response's heartbeats name, as the state held them
/// ([`AdsState::heartbeats`]): what decoding the response needs from the state.
#[derive(Debug, Default)]
pub struct HeldVersions(HashMap<String, String>);

/// The client's view of one resource, as the config dump shows it (CSDS's
/// `ClientResourceStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ResourceStatus {
    /// Subscribed, nothing received yet.
    Requested,
    /// The last value received was valid and is in use.
    Acked,
    /// The last value received was invalid; the previous valid value (if any) is in use.
    Nacked,
    /// The server said, or the timer decided, that the resource does not exist.
    DoesNotExist,
}

impl fmt::Display for ResourceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Requested => "REQUESTED",
            Self::Acked => "ACKED",
            Self::Nacked => "NACKED",
            Self::DoesNotExist => "DOES_NOT_EXIST",
        })
    }
}

/// What a resource's watchers need to hear about.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum XdsEvent {
    /// A resource was received (or changed) and is valid.
    Changed(Resource),
    /// A new value of the resource was rejected. The last good value, if any, is still in
    /// the cache and still in use, unless the server has `fail_on_data_errors` (gRFC A88),
    /// when it was dropped.
    Invalid {
        /// The resource's type.
        resource_type: ResourceType,
        /// The resource's name.
        name: String,
        /// Why it was rejected.
        error: ResourceFailure,
    },
    /// The resource does not exist: deleted by the server, reported `NOT_FOUND`, or not
    /// received within the does-not-exist timeout.
    DoesNotExist {
        /// The resource's type.
        resource_type: ResourceType,
        /// The resource's name.
        name: String,
    },
}

/// Why a resource's latest value was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceFailure {
    /// Our validation rejected it.
    #[error(transparent)]
    Validation(#[from] ResourceError),
    /// The control plane reported an error for it in `resource_errors` (gRFC A88).
    #[error("control plane reported error code {code}: {message}")]
    ServerReported {
        /// The gRPC status code the server sent.
        code: i32,
        /// The server's message.
        message: String,
    },
    /// The same name appeared more than once in one response.
    #[error("resource {name} appears more than once in one response")]
    Duplicate {
        /// The duplicated name.
        name: String,
    },
    /// A delta response's `Resource` named `name` carries the resource `body_name`.
    #[error("resource {name} carries a resource named {body_name:?}")]
    NameMismatch {
        /// The name the delta `Resource` gives.
        name: String,
        /// The name of the resource it carries.
        body_name: String,
    },
    /// A delta response's `Resource` has no body and is not a heartbeat (one naming a
    /// resource the client holds, at the version it holds).
    #[error("resource {name} has no body and the client holds no version {version:?} of it")]
    MissingBody {
        /// The resource's name.
        name: String,
        /// The version the `Resource` gives.
        version: String,
    },
    /// An `xdstp:` name whose authority the bootstrap does not list (gRFC A47): no server
    /// is asked for it.
    #[error("resource {name}: authority {authority:?} is not in the bootstrap's authorities")]
    UnknownAuthority {
        /// The resource's name.
        name: String,
        /// Its authority.
        authority: String,
    },
}

/// Two failures are equal when a watcher could not tell them apart: the same kind with the
/// same text. [`ResourceError`] compares by its text, as its sources (protobuf and regex
/// errors) are other crates' types; a watch republishes a target only when its state is
/// unequal to the last one, so a rejection repeated word for word wakes no one.
impl PartialEq for ResourceFailure {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ResourceFailure::Validation(a), ResourceFailure::Validation(b)) => {
                a.to_string() == b.to_string()
            }
            (
                ResourceFailure::ServerReported { code, message },
                ResourceFailure::ServerReported {
                    code: other_code,
                    message: other_message,
                },
            ) => code == other_code && message == other_message,
            (
                ResourceFailure::Duplicate { name },
                ResourceFailure::Duplicate { name: other_name },
            ) => name == other_name,
            (
                ResourceFailure::NameMismatch { name, body_name },
                ResourceFailure::NameMismatch {
                    name: other_name,
                    body_name: other_body,
                },
            ) => name == other_name && body_name == other_body,
            (
                ResourceFailure::MissingBody { name, version },
                ResourceFailure::MissingBody {
                    name: other_name,
                    version: other_version,
                },
            ) => name == other_name && version == other_version,
            (
                ResourceFailure::UnknownAuthority { name, authority },
                ResourceFailure::UnknownAuthority {
                    name: other_name,
                    authority: other_authority,
                },
            ) => name == other_name && authority == other_authority,
            _ => false,
        }
    }
}

impl Eq for ResourceFailure {}

impl ResourceFailure {
    /// Whether, under the server's `fail_on_data_errors` (gRFC A88), this failure drops the
    /// resource's cached value: any rejection of ours, and of the server's only
    /// `PERMISSION_DENIED`.
    fn drops_cached_value(&self) -> bool {
        match self {
            ResourceFailure::Validation(_)
            | ResourceFailure::Duplicate { .. }
            | ResourceFailure::NameMismatch { .. } => true,
            ResourceFailure::ServerReported { code, .. } => *code == PERMISSION_DENIED,
            // No data came: nothing says the value held is bad.
            ResourceFailure::MissingBody { .. } | ResourceFailure::UnknownAuthority { .. } => false,
        }
    }
}

/// One row of the config dump: the client's view of one resource.
#[derive(Debug, Clone)]
pub struct ResourceView<'a> {
    /// The resource's type.
    pub resource_type: ResourceType,
    /// The resource's name.
    pub name: &'a str,
    /// The version of the response that last delivered a valid value.
    pub version: Option<&'a str>,
    /// The resource's status.
    pub status: ResourceStatus,
    /// The current valid value, if any.
    pub value: Option<&'a Resource>,
    /// The current valid value as the server sent it (CSDS's `xds_config`).
    pub raw: Option<&'a Any>,
    /// Why the last value was rejected, if it was.
    pub error: Option<&'a ResourceFailure>,
    /// When the status last changed, in the protocol's clock.
    pub last_updated: Option<Instant>,
    /// Whether the client subscribed to it by name (otherwise it came through a wildcard).
    pub subscribed: bool,
    /// Whether the value came from a fail-static snapshot and no server has replaced it.
    pub from_snapshot: bool,
}

/// Wildcard subscription of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Wildcard {
    #[default]
    None,
    /// Empty `resource_names` on the stream's first request, and on every later one.
    Legacy,
    /// `"*"` in `resource_names`.
    Explicit,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: Wildcard,
    resources: BTreeMap<String, ResourceState>,
    /// The version of the last accepted response.
    version: String,
    /// The nonce of the last response on the current stream.
    nonce: String,
    /// Whether a request for this type went out on the current stream.
    sent_on_stream: bool,
    /// Whether the names in the last request sent were non-empty (an empty list after a
    /// non-empty one unsubscribes).
    sent_names: bool,
    /// The subscription changed since the last request.
    dirty: bool,
    /// Delta: the names (and `"*"`) the current stream has been sent subscribed.
    delta_sent: BTreeSet<String>,
    /// Delta: names (and `"*"`) the stream was sent whose values were since forgotten by an
    /// unsubscribe; subscribed again before the next request, they must be named again so
    /// the server resends them (xDS protocol, "Subscribing to Resources").
    delta_forgotten: BTreeSet<String>,
    /// A server has answered for this type: snapshot values are no longer wanted.
    answered: bool,
    /// A server has sent a response of this type that was ACKed: the seeded values in use
    /// that it left out must now come in time (a response rejected whole says nothing).
    acked: bool,
    /// Values from a fail-static snapshot for names not subscribed yet, given to a
    /// subscription that comes before any server answers for the type.
    /// When they were seeded.
    seeds: BTreeMap<String, (Seed, Instant)>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard != Wildcard::None || self.resources.get(name).is_some_and(|r| r.subscribed)
    }

    fn is_subscribed(&self) -> bool {
        self.wildcard != Wildcard::None || self.resources.values().any(|r| r.subscribed)
    }

    /// Delta: every name the client wants, with `"*"` for a wildcard (legacy or not: a
    /// delta stream always says `"*"`, which needs no "empty first request" rule).
    fn delta_wanted(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .resources
            .iter()
            .filter(|(_, r)| r.subscribed)
            .map(|(n, _)| n.clone())
            .collect();
        if self.wildcard != Wildcard::None {
            names.insert("*".to_owned());
        }
        names
    }

    /// Delta: whether the wanted names differ from those the stream was sent.
    fn delta_changed(&self) -> bool {
        self.delta_wanted() != self.delta_sent || !self.delta_forgotten.is_empty()
    }

    /// Delta: whether a subscription change waits to be sent.
    fn delta_due(&self) -> bool {
        self.dirty && self.delta_changed()
    }

    /// SotW: whether a subscription change waits to be sent. An empty list is only sent
    /// when it means something: the legacy wildcard, or unsubscribing from names sent
    /// earlier on this stream.
    fn sotw_due(&self) -> bool {
        self.dirty && (self.is_subscribed() || (self.sent_on_stream && self.sent_names))
    }

    fn resource_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .resources
            .iter()
            .filter(|(_, r)| r.subscribed)
            .map(|(n, _)| n.clone())
            .collect();
        match self.wildcard {
            Wildcard::None => {}
            Wildcard::Legacy if names.is_empty() => {}
            Wildcard::Legacy | Wildcard::Explicit => names.insert(0, "*".to_string()),
        }
        names
    }
}

/// An ACK or NACK waiting to be sent ([`AdsState::answer`]).
#[derive(Debug)]
struct Answer {
    type_url: String,
    /// `None` for a type this client does not know.
    resource_type: Option<ResourceType>,
    nonce: String,
    /// Set for a NACK.
    error_detail: Option<Status>,
}

/// One resource of a fail-static snapshot, for [`AdsState::seed`].
#[derive(Debug, Clone)]
pub struct Seed {
    /// The validated value.
    pub value: Resource,
    /// The value as a server sent it in the earlier run.
    pub raw: Any,
    /// The version it had then.
    pub version: String,
}

/// The ADS protocol state: subscriptions, versions, nonces, cache and timers.
#[derive(Debug)]
pub struct AdsState {
    config: ProtocolConfig,
    types: BTreeMap<ResourceType, TypeState>,
    stream: Option<StreamId>,
    /// Whether the current stream's connection is up: requests polled before that start no
    /// timer until [`AdsState::on_stream_connected`].
    connected: bool,
    next_stream: u64,
    /// The current stream's kind: delta or SotW.
    delta: bool,
    /// ACKs and NACKs waiting to be sent, in order, at most a few per type
    /// ([`AdsState::answer`]).
    outbox: VecDeque<Answer>,
    events: VecDeque<XdsEvent>,
}

impl AdsState {
    /// A state machine with no subscriptions and no stream.
    pub fn new(config: ProtocolConfig) -> Self {
        Self {
            config,
            types: BTreeMap::new(),
            stream: None,
            connected: false,
            next_stream: 0,
            delta: false,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration this state machine runs with.
    pub fn config(&self) -> &ProtocolConfig {
        &self.config
    }

    /// Subscribe to a resource by name, or to every resource of the type with `"*"`.
    ///
    /// If the resource is already cached (through a wildcard or an earlier subscription), a
    /// [`XdsEvent::Changed`] is queued at once so a new watcher needs no special path.
    ///
    /// An `xdstp:` name is subscribed in its canonical form (gRFC A47: context parameters
    /// sorted), as the cache keys it.
    pub fn subscribe(&mut self, resource_type: ResourceType, name: &str) {
        let name = &*crate::resource::canonical_name(name);
        let ts = self.types.entry(resource_type).or_default();
        if name == "*" {
            if ts.wildcard == Wildcard::None {
                ts.wildcard = Wildcard::Explicit;
                ts.dirty = true;
            }
            Self::plant_all(ts, resource_type, &mut self.events);
            return;
        }
        let rs = ts.resources.entry(name.to_string()).or_default();
        if !rs.subscribed {
            rs.subscribed = true;
            ts.dirty = true;
        }
        if let Some(value) = &rs.value {
            self.events.push_back(XdsEvent::Changed(value.clone()));
        } else if let Some((seed, at)) = ts.seeds.remove(name) {
            Self::plant(rs, seed, at, name, resource_type, &mut self.events);
        }
    }

    /// Serve values of an earlier run (a fail-static snapshot) until a server answers:
    /// each becomes ACKED with its old version, marked as from the snapshot
    /// ([`ResourceView::from_snapshot`]), and its watchers hear of it as of any new value.
    /// Names not subscribed yet wait for their subscription. Types a server has already
    /// answered for on any stream, and resources that have a value, are left alone, and
    /// nothing is ACKed: the next request still carries the last version a server gave
    /// (none), so the server sends everything.
    ///
    /// A seeded value is replaced by the first response that names the resource, deleted
    /// by the first LDS/CDS response that leaves it out, and declared not to exist if a
    /// connected server does not send it within the does-not-exist timeout.
    ///
    /// Returns how many it took (in use or waiting for a subscription).
    pub fn seed(&mut self, seeds: impl IntoIterator<Item = Seed>, now: Instant) -> usize {
        let mut taken = 0;
        for seed in seeds {
            let resource_type = seed.value.resource_type();
            // Keyed as subscriptions are: the body may spell an `xdstp:` name otherwise.
            let name = crate::resource::canonical_name(seed.value.name()).into_owned();
            let ts = self.types.entry(resource_type).or_default();
            if ts.answered {
                continue;
            }
            if !ts.wants(&name) {
                ts.seeds.insert(name, (seed, now));
                taken += 1;
                continue;
            }
            let rs = ts.resources.entry(name.clone()).or_default();
            if rs.value.is_none() {
                taken += 1;
            }
            Self::plant(rs, seed, now, &name, resource_type, &mut self.events);
        }
        taken
    }

    fn plant(
        rs: &mut ResourceState,
        seed: Seed,
        at: Instant,
        name: &str,
        resource_type: ResourceType,
        events: &mut VecDeque<XdsEvent>,
    ) {
        let transition = Transition::Seed {
            value: seed.value,
            raw: seed.raw,
            version: seed.version,
        };
        if let Some(notice) = rs.transition(transition, at) {
            events.push_back(notice.into_event(resource_type, name.to_owned()));
        }
    }

    /// Whether values of a fail-static snapshot are in use, or waiting for a subscription,
    /// in a type no server has answered yet: the configuration is then partly an earlier
    /// run's, and a snapshot written now would present it as new. (A seeded value a server
    /// rejected an update of is kept as a last good value and does not count.)
    pub fn holds_unanswered_snapshot_values(&self) -> bool {
        self.types.values().any(|ts| {
            !ts.answered
                && (!ts.seeds.is_empty() || ts.resources.values().any(|rs| rs.from_snapshot))
        })
    }

    /// Whether values of a snapshot wait in a pool for their subscription.
    pub fn has_pooled_seeds(&self) -> bool {
        self.types.values().any(|ts| !ts.seeds.is_empty())
    }

    /// Forget the values of a snapshot that wait for a subscription: a client that has a
    /// server's answer for everything it watches no longer needs them.
    pub fn drop_pooled_seeds(&mut self) {
        for ts in self.types.values_mut() {
            ts.seeds.clear();
        }
    }

    /// Whether a resource's value came from a fail-static snapshot and no server has
    /// replaced it yet.
    pub fn is_from_snapshot(&self, resource_type: ResourceType, name: &str) -> bool {
        self.types
            .get(&resource_type)
            .and_then(|ts| ts.resources.get(name))
            .is_some_and(|rs| rs.from_snapshot)
    }

    /// Subscribe to every resource of an LDS or CDS type the legacy way: an empty
    /// `resource_names` list on the first request of each stream.
    pub fn subscribe_legacy_wildcard(&mut self, resource_type: ResourceType) {
        let ts = self.types.entry(resource_type).or_default();
        if ts.wildcard == Wildcard::None {
            ts.wildcard = Wildcard::Legacy;
            ts.dirty = true;
        }
        Self::plant_all(ts, resource_type, &mut self.events);
    }

    /// A wildcard subscription wants every seeded value of its type.
    fn plant_all(ts: &mut TypeState, resource_type: ResourceType, events: &mut VecDeque<XdsEvent>) {
        for (name, (seed, at)) in std::mem::take(&mut ts.seeds) {
            let rs = ts.resources.entry(name.clone()).or_default();
            Self::plant(rs, seed, at, &name, resource_type, events);
        }
    }

    /// Drop a subscription (by name, or the wildcard with `"*"`). The cached value is
    /// forgotten unless a wildcard still covers it.
    pub fn unsubscribe(&mut self, resource_type: ResourceType, name: &str) {
        let name = &*crate::resource::canonical_name(name);
        let Some(ts) = self.types.get_mut(&resource_type) else {
            return;
        };
        if name == "*" {
            if ts.wildcard != Wildcard::None {
                ts.wildcard = Wildcard::None;
                ts.dirty = true;
                if ts.delta_sent.contains("*") {
                    ts.delta_forgotten.insert("*".to_owned());
                }
                let dropped: Vec<String> = ts
                    .resources
                    .iter()
                    .filter(|(_, r)| !r.subscribed)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in dropped {
                    if let Some(rs) = ts.resources.remove(&name) {
                        Self::return_seed(ts.answered, &mut ts.seeds, name, &rs);
                    }
                }
            }
            return;
        }
        let Some(rs) = ts.resources.get_mut(name) else {
            return;
        };
        if rs.subscribed {
            rs.subscribed = false;
            ts.dirty = true;
            if ts.wildcard == Wildcard::None {
                if let Some(rs) = ts.resources.remove(name) {
                    Self::return_seed(ts.answered, &mut ts.seeds, name.to_owned(), &rs);
                }
                if ts.delta_sent.contains(name) {
                    ts.delta_forgotten.insert(name.to_owned());
                }
            } else {
                rs.does_not_exist_at = None;
            }
        }
    }

    /// A seeded value nobody wants any more goes back to the pool while no server has
    /// answered its type, so a subscription made again (a channel rebuilt while the control
    /// plane is still down) is served again.
    fn return_seed(
        answered: bool,
        seeds: &mut BTreeMap<String, (Seed, Instant)>,
        name: String,
        rs: &ResourceState,
    ) {
        if !answered && let Some(seed) = rs.seed() {
            seeds.insert(name, seed);
        }
    }

    /// A new ADS stream is open on a connected transport. Every subscription is re-sent
    /// (with the last accepted version, so an unchanged server sends nothing new) and nonces
    /// start afresh. The same as [`on_stream_connecting`](Self::on_stream_connecting)
    /// followed at once by [`on_stream_connected`](Self::on_stream_connected).
    pub fn on_stream_open(&mut self) -> StreamId {
        let id = self.on_stream_connecting();
        self.connected = true;
        id
    }

    /// A new ADS stream is being opened while its connection is still being made. Requests
    /// can be polled at once (so the server sees them with the stream), but the
    /// does-not-exist timers of the names they carry start only at
    /// [`on_stream_connected`](Self::on_stream_connected) (gRFC A57).
    pub fn on_stream_connecting(&mut self) -> StreamId {
        self.begin_stream(false)
    }

    /// A new delta (incremental) ADS stream is open on a connected transport: as
    /// [`on_stream_open`](Self::on_stream_open), but requests come from
    /// [`poll_delta_request`](Self::poll_delta_request) and responses go to
    /// [`on_delta_response`](Self::on_delta_response). Its first request of each type
    /// subscribes to every wanted name and says which values the client holds.
    pub fn on_delta_stream_open(&mut self) -> StreamId {
        let id = self.on_delta_stream_connecting();
        self.connected = true;
        id
    }

    /// A new delta ADS stream is being opened while its connection is still being made: as
    /// [`on_stream_connecting`](Self::on_stream_connecting), for a delta stream.
    pub fn on_delta_stream_connecting(&mut self) -> StreamId {
        self.begin_stream(true)
    }

    fn begin_stream(&mut self, delta: bool) -> StreamId {
        self.next_stream += 1;
        let id = StreamId(self.next_stream);
        self.stream = Some(id);
        self.delta = delta;
        self.connected = false;
        self.outbox.clear();
        for ts in self.types.values_mut() {
            ts.nonce.clear();
            ts.sent_on_stream = false;
            ts.sent_names = false;
            ts.delta_sent.clear();
            ts.delta_forgotten.clear();
            ts.dirty = ts.is_subscribed();
            for rs in ts.resources.values_mut() {
                rs.requested_on_stream = false;
                rs.does_not_exist_at = None;
            }
        }
        id
    }

    /// The connection of `stream` is up at `now`: the requests polled so far are on the
    /// wire, so the does-not-exist timers of the names they carried start now.
    pub fn on_stream_connected(&mut self, stream: StreamId, now: Instant) {
        if self.stream != Some(stream) || self.connected {
            return;
        }
        self.connected = true;
        let deadline = now.checked_add(self.config.does_not_exist_timeout);
        let acked = self.any_acked();
        for ts in self.types.values_mut() {
            for rs in ts.resources.values_mut() {
                if rs.requested_on_stream {
                    rs.start_timer(deadline, acked);
                }
            }
        }
    }

    /// The stream ended. Timers stop until the next stream (gRFC A57); the cache keeps
    /// serving.
    pub fn on_stream_closed(&mut self, stream: StreamId) {
        if self.stream != Some(stream) {
            return;
        }
        self.stream = None;
        self.connected = false;
        self.outbox.clear();
        for ts in self.types.values_mut() {
            for rs in ts.resources.values_mut() {
                rs.does_not_exist_at = None;
                rs.requested_on_stream = false;
            }
        }
    }

    /// Whether a stream is open (connected or still connecting).
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Apply a response received on `stream` at `now`: decode it, apply it, and queue its
    /// ACK or NACK. A response on a delta stream is dropped.
    ///
    /// The same as [`decode_response`](Self::decode_response) then
    /// [`on_decoded_response`](Self::on_decoded_response); a caller that shares the state
    /// behind a lock decodes first, without it.
    pub fn on_response(&mut self, stream: StreamId, response: DiscoveryResponse, now: Instant) {
        self.on_decoded_response(stream, Self::decode_response(response), now);
    }

    /// Decodes and validates a SotW response without touching any state: the slow part of
    /// [`on_response`](Self::on_response) (a push of 10,000 clusters takes tens of
    /// milliseconds), which a caller that shares the state behind a lock can do before
    /// taking it. Apply the result with [`on_decoded_response`](Self::on_decoded_response).
    pub fn decode_response(response: DiscoveryResponse) -> DecodedResponse {
        let decoded = ResourceType::from_type_url(&response.type_url)
            .map(|resource_type| response::decode(resource_type, &response));
        DecodedResponse {
            delta: false,
            type_url: response.type_url,
            nonce: response.nonce,
            version: response.version_info,
            decoded,
        }
    }

    /// Apply a response decoded by [`decode_response`](Self::decode_response) (or
    /// [`decode_delta_response`](Self::decode_delta_response)) and received on `stream` at
    /// `now`, and queue its ACK or NACK. A response of the other kind of stream than the
    /// current one, or of an old stream, is dropped.
    pub fn on_decoded_response(
        &mut self,
        stream: StreamId,
        response: DecodedResponse,
        now: Instant,
    ) {
        if self.stream != Some(stream) || self.delta != response.delta {
            tracing::debug!(
                nonce = %response.nonce,
                "dropping a response from an old stream, or of the other protocol"
            );
            return;
        }
        let DecodedResponse {
            delta,
            type_url,
            nonce,
            version,
            decoded,
        } = response;
        let Some((resource_type, ts)) = self.answering(&type_url) else {
            self.answer_unknown(type_url, nonce);
            return;
        };
        if !delta {
            ts.nonce = nonce.clone();
        }
        // `answering` knows the type, so the decoder did too.
        let error_detail = match decoded {
            Some(decoded) => self.apply_response(resource_type, decoded, &version, now),
            None => None,
        };
        self.answer(Answer {
            type_url,
            resource_type: Some(resource_type),
            nonce,
            error_detail,
        });
    }

    /// Apply a delta response received on `stream` at `now`: decode it, apply it (each
    /// resource at its own version, `removed_resources` as deletions), and queue its ACK or
    /// NACK (the subscription changes made since the last request follow it in a request
    /// of their own). A response on a SotW stream is dropped.
    ///
    /// The same as [`heartbeats`](Self::heartbeats),
    /// [`decode_delta_response`](Self::decode_delta_response) then
    /// [`on_decoded_response`](Self::on_decoded_response); a caller that shares the state
    /// behind a lock decodes between the two, without it.
    pub fn on_delta_response(
        &mut self,
        stream: StreamId,
        response: DeltaDiscoveryResponse,
        now: Instant,
    ) {
        let held = self.heartbeats(&response);
        self.on_decoded_response(stream, Self::decode_delta_response(response, &held), now);
    }

    /// What a delta response's body-less resources (TTL heartbeats) need from the state to
    /// be decoded: the version of the value held under each of their names. Cheap: one
    /// lookup per heartbeat, none for a resource with a body.
    pub fn heartbeats(&self, response: &DeltaDiscoveryResponse) -> HeldVersions {
        let mut held = HashMap::new();
        let Some(ts) = ResourceType::from_type_url(&response.type_url)
            .and_then(|resource_type| self.types.get(&resource_type))
        else {
            return HeldVersions(held);
        };
        for r in response.resources.iter().filter(|r| r.resource.is_none()) {
            let name = crate::resource::canonical_name(&r.name);
            if let Some(version) = ts
                .resources
                .get(name.as_ref())
                .and_then(|rs| rs.value.as_ref().and(rs.version.as_deref()))
            {
                held.insert(name.into_owned(), version.to_owned());
            }
        }
        HeldVersions(held)
    }

    /// Decodes and validates a delta response without touching any state, given its
    /// [`heartbeats`](Self::heartbeats); see [`decode_response`](Self::decode_response).
    pub fn decode_delta_response(
        response: DeltaDiscoveryResponse,
        held: &HeldVersions,
    ) -> DecodedResponse {
        let lookup = |name: &str| held.0.get(name).map(String::as_str);
        let decoded = ResourceType::from_type_url(&response.type_url)
            .map(|resource_type| response::decode_delta(resource_type, &response, &lookup));
        DecodedResponse {
            delta: true,
            type_url: response.type_url,
            nonce: response.nonce,
            version: response.system_version_info,
            decoded,
        }
    }

    /// Queue the ACK or NACK of a response. Its request is built when it is polled, from
    /// the type's state then, and a newer answer replaces an older one of its type that
    /// no longer tells the server anything: on SotW, any (the latest nonce and the version
    /// accepted so far are all a server reads); on delta, the one of the same kind (the
    /// latest ACK and the latest NACK are kept, in the order they came, as a NACK is the
    /// server's only word of a rejected response). So a server that sends responses faster
    /// than it reads requests makes the client hold at most two answers per type, not one
    /// request (which on SotW names every subscribed resource) per response.
    fn answer(&mut self, answer: Answer) {
        let delta = self.delta;
        let nack = answer.error_detail.is_some();
        self.outbox.retain(|queued| {
            queued.type_url != answer.type_url || (delta && queued.error_detail.is_some() != nack)
        });
        self.outbox.push_back(answer);
    }

    /// NACK a response of a type this client does not know (at most
    /// [`MAX_UNKNOWN_TYPE_ANSWERS`] wait to be sent, the oldest dropped first: their type
    /// URLs are the server's).
    fn answer_unknown(&mut self, type_url: String, nonce: String) {
        let Some(error_detail) = unknown_type(&type_url) else {
            return;
        };
        self.answer(Answer {
            type_url,
            resource_type: None,
            nonce,
            error_detail: Some(error_detail),
        });
        let unknown = self
            .outbox
            .iter()
            .filter(|a| a.resource_type.is_none())
            .count();
        for _ in MAX_UNKNOWN_TYPE_ANSWERS..unknown {
            if let Some(oldest) = self.outbox.iter().position(|a| a.resource_type.is_none()) {
                self.outbox.remove(oldest);
            }
        }
    }

    /// Whether a request is waiting to be polled on the current stream: an ACK or NACK, or
    /// a subscription change.
    pub(crate) fn has_request(&self) -> bool {
        self.stream.is_some()
            && (!self.outbox.is_empty()
                || self.types.values().any(|ts| {
                    if self.delta {
                        ts.delta_due()
                    } else {
                        ts.sotw_due()
                    }
                }))
    }

    /// The type a response of `type_url` answers, if the client asked for it on this stream:
    /// the server has now answered for it, so values of an earlier run are no longer
    /// offered. `None` for a type unknown or not asked for (answering would subscribe us:
    /// an empty list is the legacy wildcard).
    fn answering(&mut self, type_url: &str) -> Option<(ResourceType, &mut TypeState)> {
        let resource_type = ResourceType::from_type_url(type_url)?;
        let Some(ts) = self
            .types
            .get_mut(&resource_type)
            .filter(|ts| ts.sent_on_stream)
        else {
            tracing::debug!(
                r#type = resource_type.short_name(),
                "ignoring a response we did not ask for"
            );
            return None;
        };
        // Those in use are replaced or deleted by this response and the timers.
        ts.answered = true;
        ts.seeds.clear();
        Some((resource_type, ts))
    }

    /// Applies a decoded response of `version` (SotW or delta) and starts the timers of
    /// seeded values at the type's first ACK. Returns the NACK's `error_detail`, if it is
    /// one.
    fn apply_response(
        &mut self,
        resource_type: ResourceType,
        decoded: Decoded,
        version: &str,
        now: Instant,
    ) -> Option<Status> {
        let ts = self.types.get_mut(&resource_type)?;
        let full_state = !self.delta && resource_type.is_full_state();
        let error_detail = Self::apply(
            ts,
            &mut self.events,
            &self.config,
            resource_type,
            decoded,
            version,
            now,
            full_state,
        );
        let first_ack = error_detail.is_none() && !ts.acked;
        ts.acked |= error_detail.is_none();
        if first_ack && self.connected {
            // A server that answers is not a silent one: the seeded values requested so far
            // must now come in time, of this type (those the answer left out) and of every
            // other (a server with nothing for a name may never answer its type at all:
            // go-control-plane's caches hold such a request).
            let deadline = now.checked_add(self.config.does_not_exist_timeout);
            for rs in self
                .types
                .values_mut()
                .flat_map(|ts| ts.resources.values_mut())
            {
                if rs.requested_on_stream {
                    rs.start_timer(deadline, true);
                }
            }
        }
        error_detail
    }

    /// Whether a server has sent an ACKed response of any type: from then on the seeded
    /// values of a snapshot run out like any value a server does not send.
    fn any_acked(&self) -> bool {
        self.types.values().any(|ts| ts.acked)
    }

    /// Applies a decoded response of `version` to the resources of `ts`: each outcome for a
    /// name the client wants becomes its resource's transition (other names are ignored),
    /// a removal (delta) deletes a cached value or says the name does not exist, a
    /// full-state type's cached resources that a SotW response leaves out are deleted, and
    /// an ACK moves the type's version. Returns the NACK's `error_detail`, if it is one.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        ts: &mut TypeState,
        events: &mut VecDeque<XdsEvent>,
        config: &ProtocolConfig,
        resource_type: ResourceType,
        decoded: Decoded,
        version: &str,
        now: Instant,
        full_state: bool,
    ) -> Option<Status> {
        for (name, outcome) in decoded.outcomes {
            if matches!(outcome, Outcome::Removed) {
                Self::remove(ts, events, config, resource_type, name, now);
                continue;
            }
            if !ts.wants(&name) {
                continue;
            }
            let rs = ts.resources.entry(name.clone()).or_default();
            let transition = match outcome {
                Outcome::Accepted(value, raw, own_version) => Transition::Accept {
                    value,
                    raw,
                    version: own_version.unwrap_or_else(|| version.to_owned()),
                },
                Outcome::Invalid(failure) => {
                    let drop_cached = config.fail_on_data_errors
                        && failure.drops_cached_value()
                        && rs.value.is_some();
                    if drop_cached {
                        tracing::warn!(
                            %name, r#type = resource_type.short_name(), error = %failure,
                            "dropping the cached value of a rejected resource (fail_on_data_errors)"
                        );
                    }
                    Transition::Reject {
                        failure,
                        drop_cached,
                    }
                }
                Outcome::NotFound | Outcome::Removed => Transition::NotFound,
            };
            if let Some(notice) = rs.transition(transition, now) {
                events.push_back(notice.into_event(resource_type, name));
            }
        }
        if full_state {
            for (name, rs) in ts.resources.iter_mut() {
                if decoded.present.contains(name) || rs.value.is_none() {
                    continue;
                }
                if config.ignore_resource_deletion {
                    tracing::warn!(
                        %name, r#type = resource_type.short_name(),
                        "the server left a resource out; keeping it (ignore_resource_deletion)"
                    );
                    continue;
                }
                if let Some(notice) = rs.transition(Transition::Deleted, now) {
                    events.push_back(notice.into_event(resource_type, name.clone()));
                }
            }
            if ts.wildcard != Wildcard::None {
                // Wildcard-only entries that are gone need no tombstone.
                ts.resources.retain(|name, rs| {
                    rs.subscribed || decoded.present.contains(name) || rs.value.is_some()
                });
            }
        }

        match decoded.nack {
            None => {
                ts.version = version.to_owned();
                None
            }
            Some(nack) => {
                tracing::warn!(
                    r#type = resource_type.short_name(),
                    version = %version,
                    errors = nack.errors,
                    "NACK: {}",
                    nack.message
                );
                Some(Status {
                    code: INVALID_ARGUMENT,
                    message: nack.message,
                    details: Vec::new(),
                })
            }
        }
    }

    /// A delta server removed `name`: a cached value is deleted (kept, and the removal
    /// logged, under `ignore_resource_deletion`, for every type: in delta any type can be
    /// deleted, and the feature guards against a control plane's mistaken deletions), a
    /// subscribed name without one does not exist (A57: this is how a delta server says
    /// so). A name only a wildcard covered leaves no tombstone, as in SotW.
    fn remove(
        ts: &mut TypeState,
        events: &mut VecDeque<XdsEvent>,
        config: &ProtocolConfig,
        resource_type: ResourceType,
        name: String,
        now: Instant,
    ) {
        let Some(rs) = ts.resources.get_mut(&name) else {
            return;
        };
        let transition = if rs.value.is_some() {
            if config.ignore_resource_deletion {
                tracing::warn!(
                    %name, r#type = resource_type.short_name(),
                    "the server removed a resource; keeping it (ignore_resource_deletion)"
                );
                return;
            }
            Transition::Deleted
        } else if rs.subscribed && rs.status() != ResourceStatus::DoesNotExist {
            Transition::NotFound
        } else {
            return;
        };
        let subscribed = rs.subscribed;
        if let Some(notice) = rs.transition(transition, now) {
            events.push_back(notice.into_event(resource_type, name.clone()));
        }
        if !subscribed {
            ts.resources.remove(&name);
        }
    }

    /// The next delta subscription request of a type: the names to subscribe and
    /// unsubscribe since the last request and, on a type's first request of the stream,
    /// the versions of the values the client holds from a server. No nonce: ACKs and NACKs
    /// are requests of their own.
    fn delta_request(ts: &mut TypeState, resource_type: ResourceType) -> DeltaDiscoveryRequest {
        let wanted = ts.delta_wanted();
        let forgotten = std::mem::take(&mut ts.delta_forgotten);
        let resource_names_subscribe = wanted
            .iter()
            .filter(|n| !ts.delta_sent.contains(*n) || forgotten.contains(*n))
            .cloned()
            .collect();
        let resource_names_unsubscribe = ts.delta_sent.difference(&wanted).cloned().collect();
        // Only what a server sent: a snapshot's value was never this stream's, and naming
        // its version could keep the server silent and the old value served as current.
        // Bounded: the versions are the server's, held across any number of responses, and a
        // first request over the transport's encoding limit would fail every stream after.
        // Leaving a value out only makes the server send it again.
        let mut initial_resource_versions: HashMap<String, String> = HashMap::new();
        if !ts.sent_on_stream {
            let mut budget = MAX_INITIAL_VERSIONS_BYTES;
            for (name, rs) in &ts.resources {
                let Some(version) = rs.version.as_ref() else {
                    continue;
                };
                let size = name.len() + version.len();
                if rs.value.is_none() || rs.from_snapshot || size > MAX_INITIAL_VERSION_ENTRY {
                    continue;
                }
                let Some(left) = budget.checked_sub(size) else {
                    break;
                };
                budget = left;
                initial_resource_versions.insert(name.clone(), version.clone());
            }
        }
        ts.sent_on_stream = true;
        ts.delta_sent = wanted;
        DeltaDiscoveryRequest {
            type_url: resource_type.type_url().to_string(),
            resource_names_subscribe,
            resource_names_unsubscribe,
            initial_resource_versions,
            ..Default::default()
        }
    }

    fn request(
        ts: &mut TypeState,
        resource_type: ResourceType,
        node: Option<Node>,
        error_detail: Option<Status>,
    ) -> DiscoveryRequest {
        let resource_names = ts.resource_names();
        ts.sent_on_stream = true;
        ts.sent_names = !resource_names.is_empty();
        DiscoveryRequest {
            version_info: ts.version.clone(),
            node,
            resource_names,
            type_url: resource_type.type_url().to_string(),
            response_nonce: ts.nonce.clone(),
            error_detail,
            ..Default::default()
        }
    }

    /// The next request to send on the current stream, if any: queued ACKs/NACKs first,
    /// then subscription changes. Starts the does-not-exist timers of the names it carries.
    /// Nothing on a delta stream ([`poll_delta_request`](Self::poll_delta_request)).
    pub fn poll_request(&mut self, now: Instant) -> Option<DiscoveryRequest> {
        self.stream?;
        if self.delta {
            return None;
        }
        let first_of_stream = self.types.values().all(|ts| !ts.sent_on_stream);
        let mut request = if let Some(answer) = self.outbox.pop_front() {
            match answer
                .resource_type
                .and_then(|t| Some((t, self.types.get_mut(&t)?)))
            {
                Some((resource_type, ts)) => {
                    // A NACK names what is wanted now too, but istiod ignores the names a
                    // NACK carries: a change made since the last request goes again after
                    // it, in a request that is no NACK (the same nonce, the version
                    // accepted), as a subscription change is.
                    if answer.error_detail.is_none() {
                        ts.dirty = false;
                    }
                    Self::request(ts, resource_type, None, answer.error_detail)
                }
                None => DiscoveryRequest {
                    type_url: answer.type_url,
                    response_nonce: answer.nonce,
                    error_detail: answer.error_detail,
                    ..Default::default()
                },
            }
        } else {
            let (&resource_type, ts) = self.types.iter_mut().find(|(_, ts)| ts.sotw_due())?;
            ts.dirty = false;
            Self::request(ts, resource_type, None, None)
        };
        if first_of_stream {
            request.node = Some(self.config.node.clone());
        }
        self.requested(&request.type_url, &request.resource_names, now);
        Some(request)
    }

    /// The next request to send on the current delta stream, if any: queued ACKs/NACKs
    /// first, then the subscription changes of each type, in requests of their own with no
    /// nonce (Istio ignores the changes a NACK carries and takes those of an ACK for a
    /// mistake). Starts the does-not-exist timers of the names it subscribes.
    /// Nothing on a SotW stream ([`poll_request`](Self::poll_request)).
    pub fn poll_delta_request(&mut self, now: Instant) -> Option<DeltaDiscoveryRequest> {
        self.stream?;
        if !self.delta {
            return None;
        }
        let first_of_stream = self.types.values().all(|ts| !ts.sent_on_stream);
        let mut request = if let Some(answer) = self.outbox.pop_front() {
            DeltaDiscoveryRequest {
                type_url: answer.type_url,
                response_nonce: answer.nonce,
                error_detail: answer.error_detail,
                ..Default::default()
            }
        } else {
            let (&resource_type, ts) = self.types.iter_mut().find(|(_, ts)| ts.delta_due())?;
            ts.dirty = false;
            Self::delta_request(ts, resource_type)
        };
        if first_of_stream {
            request.node = Some(self.config.node.clone());
        }
        self.requested(&request.type_url, &request.resource_names_subscribe, now);
        Some(request)
    }

    /// A request naming `names` of `type_url` goes out: their timers start if the stream is
    /// connected, else when it is (gRFC A57).
    fn requested(&mut self, type_url: &str, names: &[String], now: Instant) {
        let Some(resource_type) = ResourceType::from_type_url(type_url) else {
            return;
        };
        let deadline = now.checked_add(self.config.does_not_exist_timeout);
        let acked = self.any_acked();
        if let Some(ts) = self.types.get_mut(&resource_type) {
            for name in names {
                if let Some(rs) = ts.resources.get_mut(name) {
                    rs.requested_on_stream = true;
                    if self.connected {
                        rs.start_timer(deadline, acked);
                    }
                }
            }
            // A delta server never names a value it does not know the client holds, and a
            // seed is never sent as held: a seed only the wildcard covers must run out like a
            // named one (its timer from the type's first ACK), or it is served forever.
            if self.delta && names.iter().any(|n| n == "*") {
                for rs in ts.resources.values_mut().filter(|rs| rs.from_snapshot) {
                    rs.requested_on_stream = true;
                    if self.connected {
                        rs.start_timer(deadline, acked);
                    }
                }
            }
        }
    }

    /// The next event for watchers, if any.
    pub fn poll_event(&mut self) -> Option<XdsEvent> {
        self.events.pop_front()
    }

    /// The earliest does-not-exist deadline, if a timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.types
            .values()
            .flat_map(|ts| ts.resources.values())
            .filter_map(|rs| rs.does_not_exist_at)
            .min()
    }

    /// Fire the timers due at `now`: each resource still unanswered is declared not to exist.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (&resource_type, ts) in self.types.iter_mut() {
            for (name, rs) in ts.resources.iter_mut() {
                if rs.does_not_exist_at.is_some_and(|at| at <= now) {
                    tracing::warn!(
                        %name, r#type = resource_type.short_name(),
                        "resource not received within the does-not-exist timeout"
                    );
                    if let Some(notice) = rs.transition(Transition::NotFound, now) {
                        self.events
                            .push_back(notice.into_event(resource_type, name.clone()));
                    }
                }
            }
        }
    }

    /// Whether anything is subscribed: a name, or a wildcard.
    pub fn has_subscriptions(&self) -> bool {
        self.types.values().any(TypeState::is_subscribed)
    }

    /// Whether some subscribed resource has never been received from a server (nor
    /// declared missing), a value from a snapshot counting as not received: the condition
    /// under which a client falls back to its next server (gRFC A71).
    pub fn has_missing_resources(&self) -> bool {
        self.types
            .values()
            .flat_map(|ts| ts.resources.values())
            .any(|rs| {
                rs.subscribed
                    && (rs.from_snapshot
                        || (rs.value.is_none() && rs.status() == ResourceStatus::Requested))
            })
    }

    /// The cached value of a resource, if valid and present.
    pub fn get(&self, resource_type: ResourceType, name: &str) -> Option<&Resource> {
        self.types
            .get(&resource_type)?
            .resources
            .get(name)?
            .value
            .as_ref()
    }

    /// The status of a resource the client knows of.
    pub fn status(&self, resource_type: ResourceType, name: &str) -> Option<ResourceStatus> {
        Some(
            self.types
                .get(&resource_type)?
                .resources
                .get(name)?
                .status(),
        )
    }

    /// Why a resource's latest value was rejected, while it is NACKED.
    pub(crate) fn failure(
        &self,
        resource_type: ResourceType,
        name: &str,
    ) -> Option<&ResourceFailure> {
        self.types
            .get(&resource_type)?
            .resources
            .get(name)?
            .error
            .as_ref()
    }

    /// The accepted version of a type (empty before the first ACK).
    pub fn version(&self, resource_type: ResourceType) -> &str {
        self.types
            .get(&resource_type)
            .map_or("", |ts| ts.version.as_str())
    }

    /// The client's view of one resource, if it knows of it.
    pub fn view(&self, resource_type: ResourceType, name: &str) -> Option<ResourceView<'_>> {
        let (name, rs) = self
            .types
            .get(&resource_type)?
            .resources
            .get_key_value(name)?;
        Some(Self::view_of(resource_type, name, rs))
    }

    fn view_of<'a>(
        resource_type: ResourceType,
        name: &'a str,
        rs: &'a ResourceState,
    ) -> ResourceView<'a> {
        ResourceView {
            resource_type,
            name,
            version: rs.version.as_deref(),
            status: rs.status(),
            value: rs.value.as_ref(),
            raw: rs.raw.as_ref(),
            error: rs.error.as_ref(),
            last_updated: rs.last_updated,
            subscribed: rs.subscribed,
            from_snapshot: rs.from_snapshot,
        }
    }

    /// Every resource the client knows of, by type then name.
    pub fn resources(&self) -> impl Iterator<Item = ResourceView<'_>> {
        self.types.iter().flat_map(|(&resource_type, ts)| {
            ts.resources
                .iter()
                .map(move |(name, rs)| Self::view_of(resource_type, name, rs))
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ConfigSource, config_source,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::{
        ResourceError as ServerError, ResourceName,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};

    use super::*;

    pub(super) const CDS: ResourceType = ResourceType::Cluster;
    pub(super) const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

    pub(super) fn eds_cluster(name: &str) -> Any {
        let c = Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                service_name: String::new(),
            }),
            ..Default::default()
        };
        Any {
            type_url: Cluster::type_url(),
            value: c.encode_to_vec(),
        }
    }

    /// A cluster every validator rejects (STATIC is not supported), with a readable name.
    pub(super) fn static_cluster(name: &str) -> Any {
        let c = Cluster {
            name: name.into(),
            ..Default::default()
        };
        Any {
            type_url: Cluster::type_url(),
            value: c.encode_to_vec(),
        }
    }

    pub(super) fn cla(name: &str) -> Any {
        let c = ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        };
        Any {
            type_url: ClusterLoadAssignment::type_url(),
            value: c.encode_to_vec(),
        }
    }

    fn response(
        t: ResourceType,
        version: &str,
        nonce: &str,
        resources: Vec<Any>,
    ) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: t.type_url().into(),
            nonce: nonce.into(),
            ..Default::default()
        }
    }

    pub(super) fn node() -> Node {
        Node {
            id: "test-node".into(),
            ..Default::default()
        }
    }

    /// A state on an open stream (SotW; `delta_tests` opens delta ones) and its clock.
    pub(super) struct Harness {
        pub(super) ads: AdsState,
        pub(super) now: Instant,
        pub(super) stream: StreamId,
    }

    impl Harness {
        pub(super) fn new() -> Self {
            Self::with(ProtocolConfig::new(node()))
        }
        pub(super) fn with(config: ProtocolConfig) -> Self {
            let mut ads = AdsState::new(config);
            let stream = ads.on_stream_open();
            Self {
                ads,
                now: Instant::now(),
                stream,
            }
        }
        fn requests(&mut self) -> Vec<DiscoveryRequest> {
            std::iter::from_fn(|| self.ads.poll_request(self.now)).collect()
        }
        pub(super) fn events(&mut self) -> Vec<XdsEvent> {
            std::iter::from_fn(|| self.ads.poll_event()).collect()
        }
        fn respond(&mut self, r: DiscoveryResponse) {
            self.ads.on_response(self.stream, r, self.now);
        }
        pub(super) fn advance(&mut self, d: Duration) {
            self.now += d;
            if self.ads.poll_timeout().is_some_and(|t| t <= self.now) {
                self.ads.handle_timeout(self.now);
            }
        }
    }

    pub(super) fn names(e: &[XdsEvent]) -> Vec<String> {
        e.iter()
            .map(|e| match e {
                XdsEvent::Changed(r) => format!("changed:{}", r.name()),
                XdsEvent::Invalid { name, .. } => format!("invalid:{name}"),
                XdsEvent::DoesNotExist { name, .. } => format!("gone:{name}"),
            })
            .collect()
    }

    #[test]
    fn first_request_carries_node_and_names_then_ack_carries_version_and_nonce() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "b");
        h.ads.subscribe(CDS, "a");
        let reqs = h.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].node.as_ref().unwrap().id, "test-node");
        assert_eq!(reqs[0].resource_names, ["a", "b"]);
        assert_eq!(reqs[0].version_info, "");
        assert_eq!(reqs[0].response_nonce, "");
        assert_eq!(reqs[0].type_url, CDS.type_url());

        h.ads.subscribe(EDS, "a");
        let reqs = h.requests();
        assert!(
            reqs[0].node.is_none(),
            "node only on the first request of a stream"
        );

        h.respond(response(
            CDS,
            "v1",
            "n1",
            vec![eds_cluster("a"), eds_cluster("b")],
        ));
        let ack = h.requests();
        assert_eq!(ack.len(), 1);
        assert_eq!(
            (ack[0].version_info.as_str(), ack[0].response_nonce.as_str()),
            ("v1", "n1")
        );
        assert!(ack[0].error_detail.is_none());
        assert_eq!(ack[0].resource_names, ["a", "b"]);
        assert_eq!(names(&h.events()), ["changed:a", "changed:b"]);
        assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Acked));
        assert_eq!(h.ads.version(CDS), "v1");
    }

    /// A response of 200,000 empty resources (2 bytes each on the wire, so 400 KB: ten
    /// times that still fits the 4 MiB limit) is NACKed with a bounded text that says how
    /// many reasons it left out, not with every reason joined (~14 MB here, ~150 MB at
    /// 2 million), and the resource that was valid before keeps its value.
    #[test]
    fn the_nack_text_is_bounded() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.requests();
        h.respond(response(CDS, "v1", "n1", vec![eds_cluster("a")]));
        h.requests();
        h.events();

        let mut resources = vec![Any::default(); 200_000];
        resources.push(eds_cluster("a"));
        h.respond(response(CDS, "v2", "n2", resources));
        let nack = h.requests();
        assert_eq!(nack.len(), 1);
        let detail = nack[0].error_detail.as_ref().expect("NACK");
        assert!(
            detail.message.len() < 64 * 1024,
            "{} bytes of NACK text",
            detail.message.len()
        );
        assert!(
            detail.message.len() > MAX_NACK_DETAIL / 2,
            "as many reasons as fit"
        );
        let more = detail.message.rsplit("; and ").next().unwrap();
        let left_out: usize = more.strip_suffix(" more").unwrap().parse().unwrap();
        let kept = detail.message.matches("; ").count();
        assert_eq!(kept + left_out, 200_000, "{}", &detail.message[..200]);
        assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Acked));
    }

    /// One reason longer than the whole budget is cut at a character boundary.
    #[test]
    fn a_long_reason_is_cut_at_a_char_boundary() {
        let mut detail = NackDetail::default();
        detail.push("é".repeat(MAX_NACK_DETAIL));
        detail.push("next");
        let text = detail.finish();
        assert!(text.starts_with('é'));
        assert!(
            text.ends_with("; and 1 more"),
            "{}",
            &text[text.len() - 20..]
        );
        assert!(text.len() <= MAX_NACK_DETAIL + 16);
    }

    #[test]
    fn partial_nack_keeps_valid_resources_and_last_good_value() {
        let mut h = Harness::new();
        for n in ["a", "b", "c"] {
            h.ads.subscribe(CDS, n);
        }
        h.requests();
        h.respond(response(
            CDS,
            "v1",
            "n1",
            vec![eds_cluster("a"), eds_cluster("b")],
        ));
        h.requests();
        h.events();

        // v2: a is still valid, b turns invalid, c arrives, plus a nameless garbage Any.
        let garbage = Any {
            type_url: CDS.type_url().into(),
            value: vec![0xff, 0xff, 0xff],
        };
        h.respond(response(
            CDS,
            "v2",
            "n2",
            vec![
                eds_cluster("a"),
                static_cluster("b"),
                eds_cluster("c"),
                garbage,
            ],
        ));
        let nack = h.requests();
        assert_eq!(nack.len(), 1);
        assert_eq!(
            nack[0].version_info, "v1",
            "a NACK carries the last accepted version"
        );
        assert_eq!(nack[0].response_nonce, "n2");
        let detail = nack[0].error_detail.as_ref().expect("NACK");
        assert_eq!(detail.code, INVALID_ARGUMENT);
        assert!(detail.message.contains('b'), "{}", detail.message);
        assert_eq!(
            detail.message.matches("; ").count(),
            1,
            "two reasons: {}",
            detail.message
        );

        assert_eq!(names(&h.events()), ["changed:c", "invalid:b"]);
        assert_eq!(h.ads.status(CDS, "b"), Some(ResourceStatus::Nacked));
        assert!(h.ads.get(CDS, "b").is_some(), "b keeps its last good value");
        assert_eq!(h.ads.status(CDS, "c"), Some(ResourceStatus::Acked));
        assert_eq!(h.ads.version(CDS), "v1");
        let b = h.ads.resources().find(|r| r.name == "b").unwrap();
        assert_eq!(b.version, Some("v1"));
        assert!(b.error.is_some());

        // Fixed in v3: everything ACKED again, version moves.
        h.respond(response(
            CDS,
            "v3",
            "n3",
            vec![eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
        ));
        let ack = h.requests();
        assert_eq!(ack[0].version_info, "v3");
        assert!(ack[0].error_detail.is_none());
        assert_eq!(
            names(&h.events()),
            ["changed:b"],
            "b recovers; a and c did not change"
        );
        assert!(
            h.ads
                .resources()
                .all(|r| r.status == ResourceStatus::Acked && r.error.is_none())
        );
    }

    #[test]
    fn unchanged_resources_raise_no_event() {
        let mut h = Harness::new();
        h.ads.subscribe(EDS, "a");
        h.requests();
        h.respond(response(EDS, "1", "n1", vec![cla("a")]));
        assert_eq!(h.events().len(), 1);
        h.respond(response(EDS, "2", "n2", vec![cla("a")]));
        assert!(h.events().is_empty());
        let acks = h.requests();
        assert_eq!(acks.len(), 1, "the second ACK replaced the unsent first");
        assert_eq!(acks[0].version_info, "2");
    }

    #[test]
    fn duplicate_names_in_one_response_are_rejected_for_that_name() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(CDS, "b");
        h.requests();
        h.respond(response(
            CDS,
            "1",
            "n1",
            vec![eds_cluster("a"), eds_cluster("b"), eds_cluster("a")],
        ));
        let nack = h.requests();
        assert!(
            nack[0]
                .error_detail
                .as_ref()
                .unwrap()
                .message
                .contains("more than once")
        );
        assert_eq!(names(&h.events()), ["changed:b", "invalid:a"]);
        assert!(h.ads.get(CDS, "a").is_none());
    }

    #[test]
    fn full_state_types_delete_missing_resources_and_partial_types_do_not() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(CDS, "b");
        h.ads.subscribe(EDS, "a");
        h.ads.subscribe(EDS, "b");
        h.requests();
        h.respond(response(
            CDS,
            "1",
            "c1",
            vec![eds_cluster("a"), eds_cluster("b")],
        ));
        h.respond(response(EDS, "1", "e1", vec![cla("a"), cla("b")]));
        h.events();
        h.respond(response(CDS, "2", "c2", vec![eds_cluster("a")]));
        h.respond(response(EDS, "2", "e2", vec![cla("a")]));
        assert_eq!(names(&h.events()), ["gone:b"]);
        assert_eq!(h.ads.status(CDS, "b"), Some(ResourceStatus::DoesNotExist));
        assert!(h.ads.get(CDS, "b").is_none());
        assert!(
            h.ads.get(EDS, "b").is_some(),
            "an EDS response is not a deletion"
        );
    }

    #[test]
    fn ignore_resource_deletion_keeps_the_last_value() {
        let mut config = ProtocolConfig::new(node());
        config.ignore_resource_deletion = true;
        let mut h = Harness::with(config);
        h.ads.subscribe(CDS, "a");
        h.requests();
        h.respond(response(CDS, "1", "c1", vec![eds_cluster("a")]));
        h.events();
        h.respond(response(CDS, "2", "c2", vec![]));
        assert!(h.events().is_empty());
        assert!(h.ads.get(CDS, "a").is_some());
        assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Acked));
    }

    #[test]
    fn does_not_exist_timer_fires_after_the_request_and_only_while_connected() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "missing");
        assert!(
            h.ads.poll_timeout().is_none(),
            "no timer before the request is sent"
        );
        h.requests();
        assert_eq!(
            h.ads.poll_timeout(),
            Some(h.now + DEFAULT_DOES_NOT_EXIST_TIMEOUT)
        );
        h.advance(Duration::from_secs(14));
        assert!(h.events().is_empty());

        // Disconnected: the timer stops; a new stream restarts it in full.
        h.ads.on_stream_closed(h.stream);
        assert!(h.ads.poll_timeout().is_none());
        h.advance(Duration::from_secs(60));
        assert!(h.events().is_empty());
        h.stream = h.ads.on_stream_open();
        h.requests();
        h.advance(Duration::from_secs(14));
        assert!(h.events().is_empty());
        h.advance(Duration::from_secs(1));
        assert_eq!(names(&h.events()), ["gone:missing"]);
        assert_eq!(
            h.ads.status(CDS, "missing"),
            Some(ResourceStatus::DoesNotExist)
        );

        // It may still arrive later.
        h.respond(response(CDS, "1", "n1", vec![eds_cluster("missing")]));
        assert_eq!(names(&h.events()), ["changed:missing"]);
    }

    /// gRFC A57: the timer starts when the request is on a connected stream, not when it is
    /// queued while the connection is still being made.
    #[test]
    fn does_not_exist_timer_starts_when_the_stream_is_connected() {
        let mut h = Harness::new();
        h.ads.on_stream_closed(h.stream);
        h.stream = h.ads.on_stream_connecting();
        h.ads.subscribe(CDS, "missing");
        assert_eq!(h.requests().len(), 1, "queued for the stream being opened");
        assert!(
            h.ads.poll_timeout().is_none(),
            "no timer while the connection is being made"
        );
        h.advance(Duration::from_secs(60));
        assert!(h.events().is_empty());

        h.ads.on_stream_connected(h.stream, h.now);
        assert_eq!(
            h.ads.poll_timeout(),
            Some(h.now + DEFAULT_DOES_NOT_EXIST_TIMEOUT)
        );
        // A name subscribed once connected starts its own timer when its request goes out.
        h.advance(Duration::from_secs(5));
        h.ads.subscribe(CDS, "later");
        h.requests();
        h.advance(Duration::from_secs(10));
        assert_eq!(names(&h.events()), ["gone:missing"]);
        h.advance(Duration::from_secs(5));
        assert_eq!(names(&h.events()), ["gone:later"]);

        // A connection that never comes up starts nothing, and a stale report is ignored.
        h.ads.subscribe(EDS, "e");
        let old = h.stream;
        h.ads.on_stream_closed(old);
        h.stream = h.ads.on_stream_connecting();
        h.requests();
        h.ads.on_stream_connected(old, h.now);
        assert!(h.ads.poll_timeout().is_none());
    }

    #[test]
    fn a_timeout_too_large_for_the_clock_never_fires() {
        let mut config = ProtocolConfig::new(node());
        config.does_not_exist_timeout = Duration::MAX;
        let mut h = Harness::with(config);
        h.ads.subscribe(CDS, "a");
        h.requests();
        assert!(h.ads.poll_timeout().is_none());
    }

    #[test]
    fn timer_is_cancelled_by_the_resource_and_is_configurable() {
        let mut config = ProtocolConfig::new(node());
        config.does_not_exist_timeout = Duration::from_secs(2);
        let mut h = Harness::with(config);
        h.ads.subscribe(EDS, "a");
        h.requests();
        h.advance(Duration::from_secs(1));
        h.respond(response(EDS, "1", "n1", vec![cla("a")]));
        assert!(h.ads.poll_timeout().is_none());
        h.advance(Duration::from_secs(5));
        assert_eq!(names(&h.events()), ["changed:a"]);
    }

    #[test]
    fn reconnect_resends_subscriptions_with_last_acked_version_and_fresh_nonce() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(EDS, "a");
        h.requests();
        h.respond(response(CDS, "7", "n1", vec![eds_cluster("a")]));
        h.respond(response(EDS, "3", "n2", vec![cla("a")]));
        h.requests();
        h.ads.on_stream_closed(h.stream);
        assert!(
            h.ads.poll_request(h.now).is_none(),
            "nothing is sent while disconnected"
        );
        assert!(
            h.ads.get(CDS, "a").is_some(),
            "the cache keeps serving while disconnected"
        );

        h.stream = h.ads.on_stream_open();
        let reqs = h.requests();
        assert_eq!(reqs.len(), 2);
        assert!(reqs[0].node.is_some());
        for r in &reqs {
            assert_eq!(r.response_nonce, "");
            assert_eq!(r.resource_names, ["a"]);
        }
        assert_eq!(reqs[0].version_info, "7");
        assert_eq!(reqs[1].version_info, "3");
        assert!(
            h.ads.poll_timeout().is_none(),
            "cached resources start no timer"
        );
    }

    #[test]
    fn responses_from_an_old_stream_are_dropped() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.requests();
        let old = h.stream;
        h.ads.on_stream_closed(old);
        h.stream = h.ads.on_stream_open();
        h.requests();
        h.ads.on_response(
            old,
            response(CDS, "1", "old-nonce", vec![eds_cluster("a")]),
            h.now,
        );
        assert!(h.events().is_empty());
        assert!(h.requests().is_empty());
        assert!(h.ads.get(CDS, "a").is_none());
    }

    #[test]
    fn unknown_type_url_is_nacked() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.requests();
        h.respond(DiscoveryResponse {
            type_url: "type.googleapis.com/envoy.config.listener.v3.Nonsense".into(),
            nonce: "n1".into(),
            version_info: "1".into(),
            ..Default::default()
        });
        let nack = h.requests();
        assert_eq!(nack.len(), 1);
        assert_eq!(nack[0].response_nonce, "n1");
        assert!(
            nack[0]
                .error_detail
                .as_ref()
                .unwrap()
                .message
                .contains("unknown resource type")
        );
        assert!(nack[0].resource_names.is_empty());
    }

    #[test]
    fn mismatched_any_type_is_nacked() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.requests();
        h.respond(response(CDS, "1", "n1", vec![cla("a")]));
        let nack = h.requests();
        assert!(nack[0].error_detail.is_some());
        assert!(h.events().is_empty());
    }

    #[test]
    fn responses_to_types_never_requested_are_not_answered() {
        let mut h = Harness::new();
        h.respond(response(CDS, "1", "n1", vec![eds_cluster("a")]));
        assert!(
            h.requests().is_empty(),
            "an answer would be a legacy-wildcard subscription"
        );
        assert!(h.events().is_empty());
    }

    #[test]
    fn unrequested_resources_are_ignored() {
        let mut h = Harness::new();
        h.ads.subscribe(EDS, "a");
        h.requests();
        h.respond(response(EDS, "1", "n1", vec![cla("a"), cla("other")]));
        assert_eq!(names(&h.events()), ["changed:a"]);
        assert!(h.ads.get(EDS, "other").is_none());
    }

    #[test]
    fn wildcard_legacy_and_explicit() {
        let mut h = Harness::new();
        h.ads.subscribe_legacy_wildcard(CDS);
        let reqs = h.requests();
        assert_eq!(reqs.len(), 1);
        assert!(
            reqs[0].resource_names.is_empty(),
            "legacy wildcard is an empty list"
        );
        h.respond(response(
            CDS,
            "1",
            "n1",
            vec![eds_cluster("x"), eds_cluster("y")],
        ));
        assert!(
            h.requests()[0].resource_names.is_empty(),
            "the ACK stays legacy"
        );
        assert_eq!(names(&h.events()), ["changed:x", "changed:y"]);

        // Naming a resource on top of a legacy wildcard must switch to "*" explicitly.
        h.ads.subscribe(CDS, "x");
        assert_eq!(
            names(&h.events()),
            ["changed:x"],
            "cached value is delivered at once"
        );
        assert_eq!(h.requests()[0].resource_names, ["*", "x"]);

        // Wildcard deletion: y gone from the full state.
        h.respond(response(CDS, "2", "n2", vec![eds_cluster("x")]));
        assert_eq!(names(&h.events()), ["gone:y"]);

        let mut h = Harness::new();
        h.ads.subscribe(EDS, "*");
        assert_eq!(h.requests()[0].resource_names, ["*"]);
        h.respond(response(EDS, "1", "n1", vec![cla("p"), cla("q")]));
        h.requests();
        assert_eq!(h.events().len(), 2);
        h.ads.unsubscribe(EDS, "*");
        let r = h.requests();
        assert!(
            r[0].resource_names.is_empty(),
            "unsubscribe-all after names is an empty list"
        );
        assert!(h.ads.get(EDS, "p").is_none());
    }

    #[test]
    fn unsubscribe_sends_the_smaller_set_and_forgets_the_value() {
        let mut h = Harness::new();
        h.ads.subscribe(EDS, "a");
        h.ads.subscribe(EDS, "b");
        h.requests();
        h.respond(response(EDS, "1", "n1", vec![cla("a"), cla("b")]));
        h.requests();
        h.ads.unsubscribe(EDS, "a");
        let r = h.requests();
        assert_eq!(r[0].resource_names, ["b"]);
        assert_eq!(r[0].version_info, "1");
        assert_eq!(r[0].response_nonce, "n1");
        assert!(h.ads.get(EDS, "a").is_none());
        h.ads.unsubscribe(EDS, "b");
        let r = h.requests();
        assert_eq!(r.len(), 1);
        assert!(r[0].resource_names.is_empty());
        // Nothing named, nothing sent on a new stream.
        h.ads.on_stream_closed(h.stream);
        h.stream = h.ads.on_stream_open();
        assert!(h.requests().is_empty());
    }

    #[test]
    fn unsubscribe_before_anything_was_sent_sends_nothing() {
        let mut h = Harness::new();
        h.ads.subscribe(EDS, "a");
        h.ads.unsubscribe(EDS, "a");
        assert!(h.requests().is_empty());
    }

    #[test]
    fn server_reported_resource_errors() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(CDS, "b");
        h.requests();
        h.respond(response(
            CDS,
            "1",
            "n1",
            vec![eds_cluster("a"), eds_cluster("b")],
        ));
        h.events();
        let mut r = response(CDS, "2", "n2", vec![]);
        for (name, code) in [("a", NOT_FOUND), ("b", 13)] {
            r.resource_errors.push(ServerError {
                resource_name: Some(ResourceName {
                    name: name.into(),
                    ..Default::default()
                }),
                error_detail: Some(Status {
                    code,
                    message: "boom".into(),
                    details: vec![],
                }),
            });
        }
        h.respond(r);
        assert_eq!(names(&h.events()), ["gone:a", "invalid:b"]);
        assert!(
            h.ads.get(CDS, "b").is_some(),
            "a server error keeps the cache"
        );
        assert_eq!(h.ads.status(CDS, "b"), Some(ResourceStatus::Nacked));
    }

    #[test]
    fn fail_on_data_errors_drops_a_rejected_cached_value() {
        let denied = |name: &str| ServerError {
            resource_name: Some(ResourceName {
                name: name.into(),
                ..Default::default()
            }),
            error_detail: Some(Status {
                code: PERMISSION_DENIED,
                message: "no".into(),
                details: vec![],
            }),
        };
        for fail in [false, true] {
            let mut config = ProtocolConfig::new(node());
            config.fail_on_data_errors = fail;
            let mut h = Harness::with(config);
            for n in ["a", "b", "c"] {
                h.ads.subscribe(CDS, n);
            }
            h.requests();
            h.respond(response(
                CDS,
                "1",
                "n1",
                vec![eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
            ));
            h.requests();
            h.events();
            // b turns invalid; the server denies c; a stays.
            let mut r = response(
                CDS,
                "2",
                "n2",
                vec![eds_cluster("a"), static_cluster("b"), eds_cluster("c")],
            );
            r.resources.pop();
            r.resource_errors.push(denied("c"));
            h.respond(r);
            assert_eq!(names(&h.events()), ["invalid:b", "invalid:c"]);
            assert_eq!(h.ads.status(CDS, "b"), Some(ResourceStatus::Nacked));
            assert_eq!(h.ads.status(CDS, "c"), Some(ResourceStatus::Nacked));
            assert!(h.ads.get(CDS, "a").is_some());
            assert_eq!(
                h.ads.get(CDS, "b").is_some(),
                !fail,
                "fail_on_data_errors={fail}"
            );
            assert_eq!(
                h.ads.get(CDS, "c").is_some(),
                !fail,
                "fail_on_data_errors={fail}"
            );
            // A valid value later is accepted either way.
            h.respond(response(
                CDS,
                "3",
                "n3",
                vec![eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
            ));
            assert!(h.ads.get(CDS, "b").is_some());
            assert_eq!(h.ads.status(CDS, "b"), Some(ResourceStatus::Acked));
        }
    }

    #[test]
    fn subscription_change_between_response_and_ack_is_carried_by_the_ack() {
        let mut h = Harness::new();
        h.ads.subscribe(EDS, "a");
        h.requests();
        h.ads.subscribe(EDS, "b");
        h.respond(response(EDS, "1", "n1", vec![cla("a")]));
        let r = h.requests();
        assert_eq!(
            r.len(),
            1,
            "the ACK carries the new name; no second request"
        );
        assert_eq!(r[0].resource_names, ["a", "b"]);
        assert!(h.ads.poll_timeout().is_some(), "b's timer started");
    }

    /// A server that sends responses but does not read its stream (the driver polls no
    /// request meanwhile) leaves one answer per type, built when polled: the latest
    /// nonce, the version accepted so far, the names wanted then.
    #[test]
    fn unread_answers_of_a_type_coalesce_into_the_latest() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(EDS, "a");
        h.requests();
        for i in 1..=1000 {
            let (version, nonce) = (i.to_string(), format!("n{i}"));
            let body = if i == 999 {
                static_cluster("a")
            } else {
                eds_cluster("a")
            };
            h.respond(response(CDS, &version, &nonce, vec![body]));
            h.respond(response(EDS, &version, &format!("e{i}"), vec![cla("a")]));
        }
        h.ads.subscribe(CDS, "b");
        assert!(h.ads.has_request());
        let r = h.requests();
        assert_eq!(r.len(), 2, "one request per type: {r:?}");
        let (cds, eds) = if r[0].type_url == CDS.type_url() {
            (&r[0], &r[1])
        } else {
            (&r[1], &r[0])
        };
        assert_eq!(cds.response_nonce, "n1000");
        assert_eq!(cds.version_info, "1000");
        assert!(
            cds.error_detail.is_none(),
            "the latest response was accepted"
        );
        assert_eq!(
            cds.resource_names,
            ["a", "b"],
            "with the names wanted when sent"
        );
        assert_eq!(eds.response_nonce, "e1000");
        assert!(!h.ads.has_request());

        // A NACK that is the latest answer is the one sent, with the accepted version.
        h.respond(response(CDS, "1001", "n1001", vec![static_cluster("a")]));
        h.respond(response(CDS, "1002", "n1002", vec![static_cluster("a")]));
        let r = h.requests();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].response_nonce, "n1002");
        assert_eq!(r[0].version_info, "1000");
        assert!(r[0].error_detail.is_some());
    }

    /// A name subscribed while an answer waits unpolled (the driver's channel is full)
    /// starts its does-not-exist timer only when the request naming it is polled: the
    /// server cannot have been asked for it before.
    #[test]
    fn a_name_subscribed_while_answers_wait_is_timed_from_its_request() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.requests();
        h.respond(response(CDS, "1", "n1", vec![eds_cluster("a")]));
        h.events();
        h.ads.subscribe(CDS, "b");
        assert!(h.ads.has_request());
        assert_eq!(h.ads.poll_timeout(), None, "b is not asked for yet");
        h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT * 2);
        assert!(h.events().is_empty());
        let r = h.requests();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].resource_names, ["a", "b"]);
        assert_eq!(r[0].response_nonce, "n1");
        let started = h
            .ads
            .poll_timeout()
            .expect("b's timer started with its request");
        assert_eq!(started, h.now + DEFAULT_DOES_NOT_EXIST_TIMEOUT);
        h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT);
        assert_eq!(names(&h.events()), ["gone:b"]);
    }

    /// Answers still waiting when their stream ends are not sent on the next stream: its
    /// requests are its first ones, with the latest accepted version and no nonce.
    #[test]
    fn answers_waiting_when_the_stream_ends_are_dropped() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(EDS, "a");
        h.requests();
        h.respond(response(CDS, "1", "n1", vec![eds_cluster("a")]));
        h.respond(response(EDS, "2", "e2", vec![static_cluster("a")]));
        h.respond(DiscoveryResponse {
            type_url: "example.com/Unknown".into(),
            nonce: "u1".into(),
            ..Default::default()
        });
        assert!(h.ads.has_request());
        h.ads.on_stream_closed(h.stream);
        assert!(!h.ads.has_request(), "nothing to send without a stream");
        assert!(h.requests().is_empty());
        h.stream = h.ads.on_stream_open();
        let r = h.requests();
        let seen: Vec<(&str, &str, &str, bool)> = r
            .iter()
            .map(|r| {
                (
                    r.type_url.as_str(),
                    r.version_info.as_str(),
                    r.response_nonce.as_str(),
                    r.error_detail.is_some(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (CDS.type_url(), "1", "", false),
                (EDS.type_url(), "", "", false)
            ]
        );
        assert!(r[0].node.is_some());
        assert!(!h.ads.has_request());
    }

    /// NACKs of unknown types wait to be sent four at most, the latest ones; one type URL
    /// answered again is answered once.
    #[test]
    fn unread_nacks_of_unknown_types_are_bounded() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.requests();
        for i in 0..100 {
            for url in [format!("example.com/T{i}"), "example.com/Same".to_owned()] {
                h.respond(DiscoveryResponse {
                    type_url: url,
                    nonce: format!("n{i}"),
                    ..Default::default()
                });
            }
        }
        let r = h.requests();
        let urls: Vec<&str> = r.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "example.com/T97",
                "example.com/T98",
                "example.com/T99",
                "example.com/Same"
            ]
        );
        assert!(r.iter().all(|r| r.error_detail.is_some()));
        assert_eq!(r[3].response_nonce, "n99");
    }

    /// istiod ignores the names a SotW NACK carries: a subscription change that a NACK
    /// carried is sent again after it, in a request with the same nonce and no error.
    #[test]
    fn a_subscription_change_a_nack_carried_is_sent_again_after_it() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.requests();
        h.respond(response(CDS, "1", "n1", vec![eds_cluster("a")]));
        h.requests();
        h.ads.subscribe(CDS, "b");
        h.respond(response(CDS, "2", "n2", vec![static_cluster("a")]));
        let r = h.requests();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].error_detail.is_some());
        assert_eq!(r[0].resource_names, ["a", "b"]);
        assert!(r[1].error_detail.is_none());
        assert_eq!(
            (r[1].response_nonce.as_str(), r[1].version_info.as_str()),
            ("n2", "1")
        );
        assert_eq!(r[1].resource_names, ["a", "b"]);

        // A NACK with no change since the last request goes alone.
        h.respond(response(CDS, "3", "n3", vec![static_cluster("a")]));
        let r = h.requests();
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].error_detail.is_some());
    }

    /// A target's state is republished only when unequal to the last, so two failures are
    /// equal exactly when their kind and text are: the same rejection again is no news.
    #[test]
    fn failures_compare_by_kind_and_text() {
        use crate::resource::ResourceErrorKind;

        let invalid = |reason: &str| {
            ResourceFailure::Validation(ResourceError::new(
                Some("a".into()),
                ResourceErrorKind::invalid("name", reason),
            ))
        };
        let reported = |code, message: &str| ResourceFailure::ServerReported {
            code,
            message: message.into(),
        };
        let duplicate = |name: &str| ResourceFailure::Duplicate { name: name.into() };
        assert_eq!(invalid("bad"), invalid("bad"));
        assert_ne!(invalid("bad"), invalid("worse"));
        assert_eq!(reported(7, "no"), reported(7, "no"));
        assert_ne!(reported(7, "no"), reported(3, "no"));
        assert_ne!(reported(7, "no"), reported(7, "never"));
        assert_eq!(duplicate("a"), duplicate("a"));
        assert_ne!(duplicate("a"), duplicate("b"));
        assert_ne!(invalid("a"), duplicate("a"));
        assert_ne!(reported(7, "a"), duplicate("a"));
    }

    pub(super) fn seed_of(t: ResourceType, any: Any, version: &str) -> Seed {
        Seed {
            value: crate::resource::decode(t, &any).expect("valid"),
            raw: any,
            version: version.into(),
        }
    }

    /// A state with no stream, as at a start whose every server failed, seeded with
    /// clusters `a` and `b` and the endpoints of `a` at snapshot version "s".
    fn seeded() -> Harness {
        let mut h = Harness::new();
        h.ads.on_stream_closed(h.stream);
        let seeds = vec![
            seed_of(CDS, eds_cluster("a"), "s"),
            seed_of(CDS, eds_cluster("b"), "s"),
            seed_of(EDS, cla("a"), "s"),
        ];
        h.ads.seed(seeds, h.now);
        h
    }

    fn from_snapshot(h: &Harness) -> Vec<String> {
        h.ads
            .resources()
            .filter(|v| v.from_snapshot)
            .map(|v| format!("{}:{}", v.resource_type.short_name(), v.name))
            .collect()
    }

    #[test]
    fn seeded_values_wait_for_their_subscription_and_are_acked_from_the_snapshot() {
        let mut h = seeded();
        assert!(h.events().is_empty(), "nobody subscribed yet");
        assert!(h.ads.get(CDS, "a").is_none());
        h.ads.subscribe(CDS, "a");
        assert_eq!(names(&h.events()), ["changed:a"]);
        assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Acked));
        assert!(h.ads.is_from_snapshot(CDS, "a"));
        let view = h.ads.resources().find(|v| v.name == "a").expect("a");
        assert_eq!(view.version, Some("s"));
        assert!(view.raw.is_some());
        // Nothing is ACKed to a server on the snapshot's behalf: the next stream asks with
        // no version, so the server sends everything.
        h.stream = h.ads.on_stream_open();
        let reqs = h.requests();
        assert_eq!(reqs[0].version_info, "");
        assert_eq!(reqs[0].resource_names, ["a"]);
        assert!(
            h.ads.has_missing_resources(),
            "a value from a snapshot is not a server's answer (A71 fallback goes on)"
        );
    }

    /// A snapshot's value whose body spells its `xdstp:` name with the context parameters
    /// in another order (as its server sent it; the cache keys it canonical) serves the
    /// subscription of that resource, whichever spelling subscribes.
    #[test]
    fn a_seed_of_an_xdstp_name_serves_its_canonical_subscription() {
        let t = "xdstp://a/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let (canonical, spelled) = (format!("{t}/c?a=1&b=2"), format!("{t}/c?b=2&a=1"));
        let mut h = Harness::new();
        h.ads.on_stream_closed(h.stream);
        assert_eq!(h.ads.seed(vec![seed_of(EDS, cla(&spelled), "s")], h.now), 1);
        h.ads.subscribe(EDS, &spelled);
        assert_eq!(h.events().len(), 1, "served from the snapshot");
        assert!(h.ads.is_from_snapshot(EDS, &canonical));
    }

    #[test]
    fn the_first_response_of_a_type_replaces_the_snapshot_of_that_type() {
        let mut h = seeded();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(CDS, "b");
        h.ads.subscribe(EDS, "a");
        h.events();
        h.stream = h.ads.on_stream_open();
        h.requests();
        // CDS: `a` comes again unchanged (no event, no longer from the snapshot), `b` is
        // left out of a full-state response: deleted.
        h.respond(response(CDS, "1", "c1", vec![eds_cluster("a")]));
        assert_eq!(names(&h.events()), ["gone:b"]);
        assert_eq!(from_snapshot(&h), ["EDS:a"]);
        assert_eq!(h.ads.version(CDS), "1");
        let view = h.ads.resources().find(|v| v.name == "a").expect("a");
        assert_eq!(view.version, Some("1"));
        // A later subscription of the answered type waits for the server, not the snapshot.
        h.ads.subscribe(CDS, "c");
        assert!(h.events().is_empty());
        assert!(h.ads.has_missing_resources());
    }

    #[test]
    fn a_seeded_value_a_server_answering_its_type_leaves_out_stops_existing_in_time() {
        let mut h = seeded();
        h.ads.subscribe(EDS, "a");
        h.events();
        assert!(
            h.ads.poll_timeout().is_none(),
            "no timer while disconnected"
        );
        h.stream = h.ads.on_stream_open();
        h.requests();
        assert!(
            h.ads.poll_timeout().is_none(),
            "a server's silence says nothing about a seeded value"
        );
        h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT * 2);
        assert!(h.events().is_empty());
        // The server answers for EDS, without `a`: now it must come in time.
        h.respond(response(EDS, "1", "e1", vec![]));
        assert!(h.events().is_empty(), "an EDS response is no deletion");
        h.advance(DEFAULT_DOES_NOT_EXIST_TIMEOUT - Duration::from_millis(1));
        assert!(h.events().is_empty());
        assert!(h.ads.get(EDS, "a").is_some(), "served until then");
        h.advance(Duration::from_millis(1));
        assert_eq!(names(&h.events()), ["gone:a"]);
        assert!(from_snapshot(&h).is_empty());
    }

    #[test]
    fn a_rejected_update_keeps_the_seeded_value_in_use_and_marked() {
        let mut h = seeded();
        h.ads.subscribe(CDS, "a");
        h.events();
        h.stream = h.ads.on_stream_open();
        h.requests();
        h.respond(response(CDS, "1", "c1", vec![static_cluster("a")]));
        assert_eq!(names(&h.events()), ["invalid:a"]);
        assert!(h.ads.get(CDS, "a").is_some());
        assert_eq!(h.ads.status(CDS, "a"), Some(ResourceStatus::Nacked));
        assert_eq!(from_snapshot(&h), ["CDS:a"]);
    }

    #[test]
    fn seeding_after_an_answer_or_over_a_value_changes_nothing() {
        let mut h = Harness::new();
        h.ads.subscribe(CDS, "a");
        h.ads.subscribe(EDS, "a");
        h.requests();
        h.respond(response(CDS, "1", "c1", vec![eds_cluster("a")]));
        h.events();
        h.ads.on_stream_closed(h.stream);
        let seeds = vec![
            seed_of(CDS, eds_cluster("a"), "s"),
            seed_of(CDS, eds_cluster("b"), "s"),
            seed_of(EDS, cla("a"), "s"),
        ];
        h.ads.seed(seeds, h.now);
        // CDS was answered: no seed is taken, not even for a name subscribed later.
        h.ads.subscribe(CDS, "b");
        // EDS was not: its subscribed name takes the seed.
        assert_eq!(names(&h.events()), ["changed:a"]);
        assert_eq!(from_snapshot(&h), ["EDS:a"]);
        assert_eq!(
            h.ads
                .resources()
                .find(|v| v.name == "a" && v.resource_type == CDS)
                .and_then(|v| v.version),
            Some("1")
        );
    }

    #[test]
    fn a_wildcard_takes_every_seed_of_its_type() {
        let mut h = seeded();
        h.ads.subscribe_legacy_wildcard(CDS);
        let mut got = names(&h.events());
        got.sort();
        assert_eq!(got, ["changed:a", "changed:b"]);
    }
}
