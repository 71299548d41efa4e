//! What one `DiscoveryResponse` or `DeltaDiscoveryResponse` says, decided before it
//! touches any state: per named resource an [`Outcome`], the names it mentions, and whether
//! to ACK or NACK it. Both kinds of response go through one decoder, so a resource is valid
//! or not the same way whichever stream brought it.
//!
//! The rules are those of grpc-go's `xdsresource` unmarshalling and gRFC A46/A88: every
//! `Any` is validated on its own; a rejected resource whose name could be read is NACKed by
//! name (its last good value stays), one whose name could not be read only adds its reason
//! to the NACK; a name given twice in one response is rejected (every copy); a server error
//! (`resource_errors`) counts only for a name the resources do not carry, first one wins.
//!
//! A delta `Resource` is named by its wrapper: a body that decodes to another name is
//! invalid under the wrapper's name (under the body's when the wrapper has none), and a
//! wrapper without a body is a TTL heartbeat (the xDS protocol's "TTL" section), which
//! changes nothing here as meshwork keeps no TTLs. A name in both the resources and
//! `removed_resources`, or twice among them, is a duplicate (Envoy rejects such a response
//! whole; here only that name is).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, ResourceError as ServerError,
};
use envoy_types::pb::google::protobuf::Any;

use super::{MAX_NACK_DETAIL, NOT_FOUND, ResourceFailure, truncate};
use crate::resource::{self, Resource, ResourceType};

/// What a response says about one named resource.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A valid value, the resource as the server sent it (for CSDS), and its own version
    /// (a delta `Resource.version`; `None` in SotW, where the response's version counts).
    Accepted(Resource, Any, Option<String>),
    /// A value we rejected, or an error the server reported for the name (gRFC A88).
    Invalid(ResourceFailure),
    /// The server reports that the resource does not exist (`NOT_FOUND`, gRFC A88).
    NotFound,
    /// A delta server's `removed_resources` names it: deleted, or it does not exist.
    Removed,
}

/// A decoded response.
#[derive(Debug)]
pub(super) struct Decoded {
    /// Per named resource, in the order they are applied (and their watchers told): the
    /// valid ones by name, the rejected ones by name, the removed ones (delta), then the
    /// server's errors as sent.
    pub(super) outcomes: Vec<(String, Outcome)>,
    /// Every name the response mentions, valid or not: for a full-state type (LDS, CDS) a
    /// cached resource missing here was deleted.
    pub(super) present: BTreeSet<String>,
    /// `None` to ACK; else the NACK.
    pub(super) nack: Option<Nack>,
}

/// Why a response is NACKed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Nack {
    /// The `error_detail` text, bounded by [`MAX_NACK_DETAIL`].
    pub(super) message: String,
    /// How many errors it covers (some may be only counted).
    pub(super) errors: usize,
}

/// One resource of a response, as the decoder takes it.
struct Item<'a> {
    /// The body; `None` for a delta heartbeat.
    body: Option<&'a Any>,
    /// The delta wrapper's `name` (empty when it has none, and in SotW).
    name: &'a str,
    /// The delta wrapper's `version` (`None` in SotW).
    version: Option<&'a str>,
}

/// Decodes and validates every resource of a SotW response of type `resource_type`.
pub(super) fn decode(resource_type: ResourceType, response: &DiscoveryResponse) -> Decoded {
    let items = response.resources.iter().map(|any| Item {
        body: Some(any),
        name: "",
        version: None,
    });
    decode_items(
        resource_type,
        items,
        &[],
        &response.resource_errors,
        &|_| None,
    )
}

/// The version of the value the client holds under a name, if it holds one.
pub(super) type Held<'h> = dyn Fn(&str) -> Option<&'h str> + 'h;

/// Decodes and validates every resource of a delta response of type `resource_type`, and
/// its removals. A `Resource` without a body is a heartbeat when it names a value the client
/// holds at that version (`held`), and invalid otherwise (as Envoy has it).
pub(super) fn decode_delta<'h>(
    resource_type: ResourceType,
    response: &DeltaDiscoveryResponse,
    held: &Held<'h>,
) -> Decoded {
    let items = response.resources.iter().map(|r| Item {
        body: r.resource.as_ref(),
        name: &r.name,
        version: Some(&r.version),
    });
    let removed: Vec<&str> = response
        .removed_resources
        .iter()
        .map(String::as_str)
        .chain(
            response
                .removed_resource_names
                .iter()
                .map(|r| r.name.as_str()),
        )
        .collect();
    decode_items(
        resource_type,
        items,
        &removed,
        &response.resource_errors,
        held,
    )
}

type Valid = BTreeMap<String, (Resource, Any, Option<String>)>;

/// The first mention of `name` in a response returns it; a later one rejects it (and
/// forgets a value it had) and returns `None`. Names are keyed in their canonical form
/// (gRFC A47): two spellings of one `xdstp:` name are one name, mentioned twice.
fn first_mention(
    name: String,
    present: &mut BTreeSet<String>,
    valid: &mut Valid,
    invalid: &mut BTreeMap<String, ResourceFailure>,
    errors: &mut NackDetail,
) -> Option<String> {
    let name = match crate::resource::canonical_name(&name) {
        std::borrow::Cow::Borrowed(_) => name,
        std::borrow::Cow::Owned(canonical) => canonical,
    };
    if present.insert(name.clone()) {
        return Some(name);
    }
    valid.remove(&name);
    let dup = ResourceFailure::Duplicate { name: name.clone() };
    errors.push(&dup);
    invalid.insert(name, dup);
    None
}

fn decode_items<'a, 'h>(
    resource_type: ResourceType,
    items: impl Iterator<Item = Item<'a>>,
    removed: &[&str],
    resource_errors: &[ServerError],
    held: &Held<'h>,
) -> Decoded {
    let mut errors = NackDetail::default();
    let mut valid: Valid = BTreeMap::new();
    let mut invalid: BTreeMap<String, ResourceFailure> = BTreeMap::new();
    let mut present: BTreeSet<String> = BTreeSet::new();
    for item in items {
        let Some(any) = item.body else {
            // A heartbeat names a value the client holds, at its version, and changes
            // nothing; any other body-less resource is invalid.
            if item.name.is_empty() {
                continue;
            }
            let Some(name) = first_mention(
                item.name.to_owned(),
                &mut present,
                &mut valid,
                &mut invalid,
                &mut errors,
            ) else {
                continue;
            };
            let version = item.version.unwrap_or_default();
            if held(&name) != Some(version) {
                let failure = ResourceFailure::MissingBody {
                    name: name.clone(),
                    version: version.to_owned(),
                };
                errors.push(&failure);
                invalid.insert(name, failure);
            }
            continue;
        };
        let wrapper = (!item.name.is_empty()).then_some(item.name);
        let (name, outcome) = match resource::decode(resource_type, any) {
            Ok(res) => match wrapper {
                // Two spellings of one xdstp: name are one name (gRFC A47).
                Some(wrapper)
                    if wrapper != res.name()
                        && resource::canonical_name(wrapper)
                            != resource::canonical_name(res.name()) =>
                {
                    (
                        wrapper.to_owned(),
                        Err(ResourceFailure::NameMismatch {
                            name: wrapper.to_owned(),
                            body_name: res.name().to_owned(),
                        }),
                    )
                }
                _ => (res.name().to_owned(), Ok(res)),
            },
            Err(err) => match wrapper.or(err.name()) {
                Some(name) => (name.to_owned(), Err(ResourceFailure::from(err))),
                None => {
                    errors.push(err);
                    continue;
                }
            },
        };
        let Some(name) = first_mention(name, &mut present, &mut valid, &mut invalid, &mut errors)
        else {
            continue;
        };
        match outcome {
            Ok(res) => {
                let version = item.version.map(str::to_owned);
                valid.insert(name, (res, any.clone(), version));
            }
            Err(failure) => {
                errors.push(&failure);
                invalid.insert(name, failure);
            }
        }
    }
    let mut gone = Vec::new();
    for name in removed {
        if let Some(name) = first_mention(
            (*name).to_owned(),
            &mut present,
            &mut valid,
            &mut invalid,
            &mut errors,
        ) {
            gone.push(name);
        }
    }
    // A removal named again (or also sent as a resource) is a duplicate, not a removal.
    gone.retain(|name| !invalid.contains_key(name));

    let mut outcomes: Vec<(String, Outcome)> = valid
        .into_iter()
        .map(|(name, (res, raw, version))| (name, Outcome::Accepted(res, raw, version)))
        .chain(
            invalid
                .into_iter()
                .map(|(name, failure)| (name, Outcome::Invalid(failure))),
        )
        .chain(gone.into_iter().map(|name| (name, Outcome::Removed)))
        .collect();
    for server_error in resource_errors {
        let Some(name) = server_error
            .resource_name
            .as_ref()
            .map(|n| crate::resource::canonical_name(&n.name).into_owned())
        else {
            continue;
        };
        if !present.insert(name.clone()) {
            continue;
        }
        let detail = server_error.error_detail.clone().unwrap_or_default();
        let outcome = if detail.code == NOT_FOUND {
            Outcome::NotFound
        } else {
            // The server's text is kept in the dump and repeated in errors: bounded like
            // our own NACK detail.
            let mut message = detail.message;
            truncate(&mut message, MAX_NACK_DETAIL);
            Outcome::Invalid(ResourceFailure::ServerReported {
                code: detail.code,
                message,
            })
        };
        outcomes.push((name, outcome));
    }

    let nack = (!errors.is_empty()).then(|| Nack {
        errors: errors.count,
        message: errors.finish(),
    });
    Decoded {
        outcomes,
        present,
        nack,
    }
}

/// A NACK's error text under construction, bounded by [`MAX_NACK_DETAIL`].
#[derive(Debug, Default)]
pub(super) struct NackDetail {
    text: String,
    count: usize,
    left_out: usize,
}

impl NackDetail {
    pub(super) fn push(&mut self, error: impl fmt::Display) {
        use fmt::Write as _;
        self.count += 1;
        if self.text.len() >= MAX_NACK_DETAIL {
            self.left_out += 1;
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str("; ");
        }
        let _ = write!(self.text, "{error}");
        truncate(&mut self.text, MAX_NACK_DETAIL);
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(super) fn finish(mut self) -> String {
        if self.left_out > 0 {
            use fmt::Write as _;
            let _ = write!(self.text, "; and {} more", self.left_out);
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::{
        ResourceError as ServerError, ResourceName,
    };
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};
    use envoy_types::pb::google::rpc::Status;
    use prost::{Message, Name};

    use super::*;

    const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

    fn cla(name: &str) -> Any {
        Any {
            type_url: ClusterLoadAssignment::type_url(),
            value: ClusterLoadAssignment {
                cluster_name: name.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    fn server_error(name: Option<&str>, code: i32) -> ServerError {
        ServerError {
            resource_name: name.map(|name| ResourceName {
                name: name.into(),
                ..Default::default()
            }),
            error_detail: Some(Status {
                code,
                message: "server says".into(),
                details: vec![],
            }),
        }
    }

    fn response(resources: Vec<Any>, resource_errors: Vec<ServerError>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "1".into(),
            type_url: EDS.type_url().into(),
            nonce: "n".into(),
            resources,
            resource_errors,
            ..Default::default()
        }
    }

    /// The outcomes as `name:kind` strings, in order.
    fn outcomes(d: &Decoded) -> Vec<String> {
        d.outcomes
            .iter()
            .map(|(name, o)| match o {
                Outcome::Accepted(r, _, _) => format!("{name}:accepted:{}", r.name()),
                Outcome::Invalid(ResourceFailure::Duplicate { .. }) => format!("{name}:duplicate"),
                Outcome::Invalid(ResourceFailure::ServerReported { code, .. }) => {
                    format!("{name}:server:{code}")
                }
                Outcome::Invalid(ResourceFailure::Validation(_)) => format!("{name}:invalid"),
                Outcome::NotFound => format!("{name}:not-found"),
                Outcome::Removed => format!("{name}:removed"),
                Outcome::Invalid(ResourceFailure::NameMismatch { .. }) => {
                    format!("{name}:mismatch")
                }
                Outcome::Invalid(ResourceFailure::MissingBody { .. }) => {
                    format!("{name}:no-body")
                }
                Outcome::Invalid(ResourceFailure::UnknownAuthority { .. }) => {
                    format!("{name}:unknown-authority")
                }
            })
            .collect()
    }

    #[test]
    fn valid_resources_are_accepted_by_name_and_acked() {
        let d = decode(EDS, &response(vec![cla("b"), cla("a")], vec![]));
        assert_eq!(outcomes(&d), ["a:accepted:a", "b:accepted:b"]);
        assert_eq!(d.present, BTreeSet::from(["a".into(), "b".into()]));
        assert_eq!(d.nack, None);
    }

    #[test]
    fn a_name_given_twice_is_rejected_once_and_nacked() {
        let d = decode(EDS, &response(vec![cla("a"), cla("b"), cla("a")], vec![]));
        assert_eq!(outcomes(&d), ["b:accepted:b", "a:duplicate"]);
        let nack = d.nack.expect("NACK");
        assert_eq!(nack.errors, 1);
        assert_eq!(
            nack.message,
            "resource a appears more than once in one response"
        );
    }

    /// A resource whose name cannot be read has no outcome (nothing to mark), only its
    /// reason in the NACK; one whose name can be read is invalid by name, after the valid.
    #[test]
    fn rejected_resources_are_invalid_by_name_or_only_in_the_nack() {
        let nameless = Any {
            type_url: EDS.type_url().into(),
            value: vec![0xff, 0xff],
        };
        let mut bad = ClusterLoadAssignment {
            cluster_name: "a".into(),
            ..Default::default()
        };
        bad.endpoints.push(Default::default());
        bad.endpoints[0].load_balancing_weight = Some(UInt32Value { value: 1 });
        bad.endpoints[0].priority = 1;
        let bad = Any {
            type_url: ClusterLoadAssignment::type_url(),
            value: bad.encode_to_vec(),
        };
        let d = decode(EDS, &response(vec![nameless, bad, cla("z")], vec![]));
        assert_eq!(outcomes(&d), ["z:accepted:z", "a:invalid"]);
        let nack = d.nack.expect("NACK");
        assert_eq!(nack.errors, 2);
        assert!(
            nack.message.contains("; resource \"a\": "),
            "{}",
            nack.message
        );
    }

    /// gRFC A88: a server error counts for a name the resources do not carry, the first one
    /// per name; it is not ours to NACK.
    #[test]
    fn server_errors_count_once_for_names_not_among_the_resources() {
        let d = decode(
            EDS,
            &response(
                vec![cla("a")],
                vec![
                    server_error(Some("a"), NOT_FOUND),
                    server_error(Some("b"), 13),
                    server_error(Some("b"), NOT_FOUND),
                    server_error(Some("c"), NOT_FOUND),
                    server_error(None, 13),
                ],
            ),
        );
        assert_eq!(outcomes(&d), ["a:accepted:a", "b:server:13", "c:not-found"]);
        assert_eq!(
            d.present,
            BTreeSet::from(["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(d.nack, None);
    }

    /// gRFC A47: a server error names an `xdstp:` resource in its canonical form too, so
    /// it reaches the subscription (keyed canonical) whatever order the server wrote the
    /// context parameters in, and counts once with a resource of the same name.
    #[test]
    fn server_errors_name_xdstp_resources_in_canonical_form() {
        let t = "xdstp://a/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let (canonical, spelled) = (format!("{t}/c?a=1&b=2"), format!("{t}/c?b=2&a=1"));
        let d = decode(
            EDS,
            &response(
                vec![cla(&canonical)],
                vec![
                    server_error(Some(&spelled), 13),
                    server_error(Some(&format!("{t}/d?b=2&a=1")), NOT_FOUND),
                ],
            ),
        );
        assert_eq!(
            outcomes(&d),
            [
                format!("{canonical}:accepted:{canonical}"),
                format!("{t}/d?a=1&b=2:not-found")
            ]
        );
    }

    #[test]
    fn a_server_error_text_is_bounded_like_our_own() {
        let mut huge = server_error(Some("a"), 13);
        if let Some(detail) = huge.error_detail.as_mut() {
            detail.message = "é".repeat(MAX_NACK_DETAIL);
        }
        let d = decode(EDS, &response(vec![], vec![huge]));
        match &d.outcomes[..] {
            [(_, Outcome::Invalid(ResourceFailure::ServerReported { message, .. }))] => {
                assert!(message.len() <= MAX_NACK_DETAIL, "{}", message.len());
                assert!(message.len() > MAX_NACK_DETAIL - 4);
            }
            other => panic!("{other:?}"),
        }
    }
}
