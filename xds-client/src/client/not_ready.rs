//! Why a target has no complete config yet: the cause [`ReadyError::Timeout`] carries, so
//! that a user learns from the error itself whether the control plane is unreachable (which
//! server, and why), or which resources it has not answered, rejected, or does not have.
//! gRPC reports the same two kinds of cause on a channel without a config (gRFC A57's
//! connectivity errors, and A88's per-resource errors).
//!
//! [`ReadyError::Timeout`]: super::ReadyError::Timeout

use std::collections::BTreeSet;
use std::fmt;

use crate::protocol::{ResourceFailure, ResourceStatus, truncate};
use crate::resource::ResourceType;
use crate::transport::{ErrorChain, TransportError};
use crate::watch::{Cache, ResourceKey};

/// How many missing resources a [`NotReady`] names; the rest are counted ("and N more"), so
/// that a target routing to thousands of unanswered clusters does not make an error of
/// megabytes.
const MAX_MISSING: usize = 8;

/// The longest one entry (a missing resource, an unreachable server) may be in the message,
/// in bytes.
const MAX_ENTRY: usize = 2048;

/// Why a target had no complete config when [`TargetWatch::ready`](super::TargetWatch::ready)
/// stopped waiting.
///
/// Either no xDS server has an ADS stream open ([`unreachable`](Self::unreachable): each
/// server's latest failure), or the servers answer but some resources the target needs have
/// no usable value ([`missing`](Self::missing): each with its status). Its `Display` names
/// them; its `source()` is the first unreachable server's [`TransportError`], whose own
/// chain ends at the cause (connection refused, a TLS alert, the connect deadline).
#[derive(Debug, Clone)]
pub struct NotReady {
    unreachable: Vec<TransportError>,
    connecting: Option<String>,
    missing: Vec<MissingResource>,
    more_missing: usize,
}

/// One resource a target needs that has no usable value: never answered, rejected with no
/// earlier value to keep, or not existing.
#[derive(Debug, Clone)]
pub struct MissingResource {
    resource_type: ResourceType,
    name: String,
    status: ResourceStatus,
    error: Option<ResourceFailure>,
}

impl MissingResource {
    /// The resource's type.
    pub fn resource_type(&self) -> ResourceType {
        self.resource_type
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`Requested`](ResourceStatus::Requested) (no answer yet),
    /// [`Nacked`](ResourceStatus::Nacked) (rejected, see [`error`](Self::error)) or
    /// [`DoesNotExist`](ResourceStatus::DoesNotExist).
    pub fn status(&self) -> ResourceStatus {
        self.status
    }

    /// Why the resource was rejected, when it was (the NACK's detail).
    pub fn error(&self) -> Option<&ResourceFailure> {
        self.error.as_ref()
    }
}

impl fmt::Display for MissingResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = (kind(self.resource_type), &self.name);
        match (self.status, &self.error) {
            (ResourceStatus::Nacked, Some(error)) => write!(f, "{kind} {name} NACKed: {error}"),
            (ResourceStatus::Nacked, None) => write!(f, "{kind} {name} NACKed"),
            (ResourceStatus::DoesNotExist, _) => write!(f, "{kind} {name} does not exist"),
            _ => write!(f, "{kind} {name} requested, not answered yet"),
        }
    }
}

/// The resource kind as users name it in errors.
fn kind(t: ResourceType) -> &'static str {
    match t {
        ResourceType::Listener => "Listener",
        ResourceType::RouteConfiguration => "RouteConfiguration",
        ResourceType::Cluster => "Cluster",
        ResourceType::ClusterLoadAssignment => "ClusterLoadAssignment",
    }
}

impl NotReady {
    /// The latest failure of each server the client could not reach or keep a stream to, in
    /// the configured order, when no ADS stream is open; empty while one is.
    pub fn unreachable(&self) -> &[TransportError] {
        &self.unreachable
    }

    /// Whether no xDS server has an ADS stream open: every server tried failed, or the
    /// first attempt has not ended yet.
    pub fn is_unreachable(&self) -> bool {
        !self.unreachable.is_empty() || self.connecting.is_some()
    }

    /// The resources the target needs that have no usable value, the ones it waits for
    /// (never answered) first; at most eight, [`more_missing`](Self::more_missing) counts
    /// the rest.
    pub fn missing(&self) -> &[MissingResource] {
        &self.missing
    }

    /// How many missing resources [`missing`](Self::missing) leaves out.
    pub fn more_missing(&self) -> usize {
        self.more_missing
    }

    /// The cause as the client sees it now: `errors` are the servers' latest failures when
    /// no stream is open (`None` while one is), `connecting` the server being tried, `needs`
    /// the resources the target's last walk needed.
    pub(super) fn new(
        ads: &dyn Cache,
        errors: Option<Vec<TransportError>>,
        connecting: &str,
        needs: &BTreeSet<ResourceKey>,
    ) -> Self {
        let (unreachable, connecting) = match errors {
            Some(errors) if errors.is_empty() => (errors, Some(connecting.to_string())),
            Some(errors) => (errors, None),
            None => (Vec::new(), None),
        };
        // What the target waits for first, then what it already carries as an error.
        let mut absent: Vec<(&ResourceKey, ResourceStatus)> = needs
            .iter()
            .filter(|(t, name)| ads.get(*t, name).is_none())
            .map(|key @ (t, name)| {
                let status = ads.status(*t, name).unwrap_or(ResourceStatus::Requested);
                (key, status)
            })
            .collect();
        absent.sort_by_key(|(_, status)| *status != ResourceStatus::Requested);
        let more_missing = absent.len().saturating_sub(MAX_MISSING);
        absent.truncate(MAX_MISSING);
        let missing = absent
            .into_iter()
            .map(|((t, name), status)| MissingResource {
                resource_type: *t,
                name: name.clone(),
                status,
                error: (status == ResourceStatus::Nacked)
                    .then(|| ads.failure(*t, name).map(std::borrow::Cow::into_owned))
                    .flatten(),
            })
            .collect();
        Self {
            unreachable,
            connecting,
            missing,
            more_missing,
        }
    }

    /// The servers' failures as the dump shows them beside a requested resource.
    pub(super) fn transport_error(errors: &[TransportError]) -> Option<String> {
        (!errors.is_empty()).then(|| Unreachable(errors).to_string())
    }
}

/// Each failure with its chain, `; ` between servers.
struct Unreachable<'a>(&'a [TransportError]);

impl fmt::Display for Unreachable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write_entry(f, ErrorChain(error).to_string())?;
        }
        Ok(())
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.unreachable.is_empty() {
            return write!(f, "{}", Unreachable(&self.unreachable));
        }
        if let Some(uri) = &self.connecting {
            return write!(f, "xDS server {uri}: still connecting");
        }
        if self.missing.is_empty() {
            return f.write_str("waiting for the xDS server");
        }
        for (i, missing) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write_entry(f, missing.to_string())?;
        }
        if self.more_missing > 0 {
            write!(f, ", and {} more", self.more_missing)?;
        }
        Ok(())
    }
}

/// Writes `entry` cut to [`MAX_ENTRY`] bytes on a char boundary, marked `…` when cut: a
/// resource name (bounded only by the message size), a NACK detail or a server's status
/// message can be long, and the whole must stay a readable error.
fn write_entry(f: &mut fmt::Formatter<'_>, mut entry: String) -> fmt::Result {
    if entry.len() > MAX_ENTRY {
        truncate(&mut entry, MAX_ENTRY);
        entry.push('…');
    }
    f.write_str(&entry)
}

impl std::error::Error for NotReady {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.unreachable
            .first()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Two causes are equal when they name the same servers with the same failures and the same
/// resources in the same states (the failures have no equality of their own, so their
/// messages are compared).
impl PartialEq for NotReady {
    fn eq(&self, other: &Self) -> bool {
        let chains = |errors: &[TransportError]| -> Vec<String> {
            errors.iter().map(|e| ErrorChain(e).to_string()).collect()
        };
        chains(&self.unreachable) == chains(&other.unreachable)
            && self.connecting == other.connecting
            && self.missing == other.missing
            && self.more_missing == other.more_missing
    }
}

impl PartialEq for MissingResource {
    fn eq(&self, other: &Self) -> bool {
        self.resource_type == other.resource_type
            && self.name == other.name
            && self.status == other.status
            && self.error.as_ref().map(ToString::to_string)
                == other.error.as_ref().map(ToString::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AdsState, ProtocolConfig};
    use envoy_types::pb::envoy::config::core::v3::Node;

    /// A server's status message of ~10 KiB (a hostile or broken control plane) comes out
    /// cut to 2 KiB and the marker, on a char boundary, in the error and in the dump's
    /// `transport_error`.
    #[test]
    fn a_transport_error_over_2_kib_is_cut_on_a_char_boundary() {
        let ads = AdsState::new(ProtocolConfig::new(Node::default()));
        // Three-byte chars after one ASCII byte: the 2 KiB mark falls inside a char.
        let status = tonic::Status::unavailable(format!("!{}", "€".repeat(3500)));
        let error = TransportError::stream("http://xds:1", status, 4 << 20);
        let full = ErrorChain(&error).to_string();
        assert!(full.len() > 10_000);
        assert!(
            !full.is_char_boundary(MAX_ENTRY),
            "the mark falls inside a char"
        );
        let cause = NotReady::new(&ads, Some(vec![error.clone()]), "", &BTreeSet::new());

        let message = cause.to_string();
        assert!(
            message.len() <= MAX_ENTRY + '…'.len_utf8(),
            "{}",
            message.len()
        );
        assert!(
            message.len() > MAX_ENTRY - 4 + '…'.len_utf8(),
            "{}",
            message.len()
        );
        let kept = message.strip_suffix('…').expect("the cut is marked");
        assert!(full.starts_with(kept));
        assert_eq!(NotReady::transport_error(&[error]), Some(message));
    }

    /// Two servers: each one's entry is cut on its own.
    #[test]
    fn each_unreachable_server_is_cut_on_its_own() {
        let ads = AdsState::new(ProtocolConfig::new(Node::default()));
        let long = |uri| {
            TransportError::stream(uri, tonic::Status::unavailable("x".repeat(9000)), 4 << 20)
        };
        let errors = vec![long("http://a:1"), long("http://b:1")];
        let cause = NotReady::new(&ads, Some(errors), "", &BTreeSet::new());
        let message = cause.to_string();
        let entries: Vec<&str> = message.split("; ").collect();
        assert_eq!(entries.len(), 2, "{message}");
        assert!(entries[0].starts_with("xDS server http://a:1: "));
        assert!(entries[1].starts_with("xDS server http://b:1: "));
        for entry in entries {
            assert_eq!(entry.len(), MAX_ENTRY + '…'.len_utf8());
        }
    }
}
