//! What the server records of each stream (requests as received, responses as sent), what
//! a stream subscribes to, and the order of a push: shared by the SotW and delta states.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::type_url;

/// What the server made of a received `DiscoveryRequest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// The first request for its type URL on its stream (unless it answers a
    /// [`push_raw`](super::XdsTestServer::push_raw) of that type). The server answers it with
    /// the current resources, even if the client names the current version.
    Initial,
    /// Its `response_nonce` is the latest nonce sent for the type and it has no
    /// `error_detail`: the client accepted `version_info`.
    Ack,
    /// Its `response_nonce` is the latest nonce sent for the type and it has an
    /// `error_detail`: the client rejected the response.
    Nack,
    /// Its `response_nonce` is not the latest nonce sent for the type (the client had not
    /// yet seen a newer response). On a SotW stream it is recorded and otherwise ignored:
    /// it changes no subscription and gets no response; the client's answer to the newer
    /// response will say what it wants. On a delta stream its subscription changes still
    /// apply (a delta client does not repeat them).
    Stale,
    /// The server ended the stream because of it: it had no `type_url`
    /// (`INVALID_ARGUMENT`), or it would make a delta stream hold more types or names than
    /// the server allows (`RESOURCE_EXHAUSTED`).
    Invalid,
    /// A delta request after the first of its type that answers no response (an empty
    /// `response_nonce`): a change of the subscription.
    Update,
}

/// One `DiscoveryRequest` (or `DeltaDiscoveryRequest`) as the server received it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The stream it arrived on (streams are numbered from 1 in the order they opened).
    pub stream_id: u64,
    /// How the server classified it.
    pub kind: RequestKind,
    /// The request itself. For a delta request, its SotW summary: `node`, `type_url`,
    /// `response_nonce`, `error_detail`, and as `version_info` the `system_version_info`
    /// of the response an ACK or NACK answers (empty otherwise); no names (see `delta`).
    pub request: DiscoveryRequest,
    /// The delta request as received, for a request on a delta stream.
    pub delta: Option<DeltaDiscoveryRequest>,
}

impl RecordedRequest {
    pub(crate) fn delta(
        stream_id: u64,
        kind: RequestKind,
        version_info: String,
        request: DeltaDiscoveryRequest,
    ) -> Self {
        Self {
            stream_id,
            kind,
            request: DiscoveryRequest {
                version_info,
                node: request.node.clone(),
                type_url: request.type_url.clone(),
                response_nonce: request.response_nonce.clone(),
                error_detail: request.error_detail.clone(),
                ..Default::default()
            },
            delta: Some(request),
        }
    }

    /// The request's type URL.
    pub fn type_url(&self) -> &str {
        &self.request.type_url
    }

    /// The request's `version_info` (the version the client last accepted).
    pub fn version_info(&self) -> &str {
        &self.request.version_info
    }

    /// The message of the request's `error_detail`, if it has one.
    pub fn error_message(&self) -> Option<&str> {
        self.request
            .error_detail
            .as_ref()
            .map(|s| s.message.as_str())
    }
}

/// One `DiscoveryResponse` (or `DeltaDiscoveryResponse`) the server sent (snapshot
/// responses and [`push_raw`](super::XdsTestServer::push_raw) alike).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SentResponse {
    /// The stream it was sent on.
    pub stream_id: u64,
    /// The response itself. For a delta response, its SotW summary: `system_version_info`
    /// as `version_info`, `type_url` and `nonce`, no resources (see `delta`).
    pub response: DiscoveryResponse,
    /// The delta response as sent, for a response on a delta stream.
    pub delta: Option<DeltaDiscoveryResponse>,
}

impl SentResponse {
    pub(crate) fn delta(
        stream_id: u64,
        response: DiscoveryResponse,
        delta: DeltaDiscoveryResponse,
    ) -> Self {
        Self {
            stream_id,
            response,
            delta: Some(delta),
        }
    }

    /// The names of the response's resources, decoded from their `name` fields where the
    /// type is known (see [`resource_name`](super::resource_name)); for a delta response,
    /// the names its resources carry.
    pub fn resource_names(&self) -> Vec<String> {
        if let Some(delta) = &self.delta {
            return delta.resources.iter().map(|r| r.name.clone()).collect();
        }
        self.response
            .resources
            .iter()
            .filter_map(super::resource_name)
            .collect()
    }
}

/// What one stream subscribes to for one type URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subscription {
    /// The stream receives every resource of the type (legacy or explicit wildcard).
    pub wildcard: bool,
    /// The wildcard comes from an empty first request (LDS and CDS only); it lasts while
    /// the client keeps sending empty `resource_names`.
    pub legacy_wildcard: bool,
    /// The names subscribed explicitly (never `"*"`).
    pub names: BTreeSet<String>,
}

/// The order in which one snapshot change is pushed, so that a client such as Envoy sees
/// clusters before their endpoints and listeners before their routes, and never a
/// reference to something it could not yet have.
pub(crate) fn push_rank(type_url: &str) -> u8 {
    match type_url {
        type_url::CLUSTER => 0,
        type_url::ENDPOINTS => 1,
        type_url::LISTENER => 2,
        type_url::ROUTE => 3,
        _ => 4,
    }
}
