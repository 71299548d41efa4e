//! Which verified peers are allowed: by exact ID, a set of IDs, a trust domain, or xDS SAN
//! matchers (gRFC A29).

use std::collections::BTreeSet;
use std::fmt;

use meshwork_xds::resource::StringMatcher;
use spiffe::{SpiffeId, TrustDomain};

use super::error::VerifyError;
use super::svid::LeafInfo;

/// The policy applied to a peer after its SVID verified.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum Authorizer {
    /// Any peer with a valid SVID from a trusted trust domain.
    Any,
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any ID in this set.
    OneOf(BTreeSet<SpiffeId>),
    /// Any ID in this trust domain.
    MemberOf(TrustDomain),
    /// xDS SAN matchers (gRFC A29): the peer is allowed when any matcher matches any of
    /// the leaf's subject alternative names (URI, DNS, email, IP). An empty list allows
    /// every peer, as in xDS.
    SanMatchers(Vec<StringMatcher>),
    /// Every one of these (none: any peer); a rejection names the first that refused.
    /// How an application's pinned policy is added to what xDS configures
    /// ([`UpstreamPolicy::pin`](crate::upstream::UpstreamPolicy::pin)).
    AllOf(Vec<Authorizer>),
}

impl Authorizer {
    /// Any ID in `ids`.
    pub fn one_of(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::OneOf(ids.into_iter().collect())
    }

    pub(crate) fn check(&self, leaf: &LeafInfo) -> Result<(), VerifyError> {
        if let Self::AllOf(all) = self {
            return all.iter().try_for_each(|a| a.check(leaf));
        }
        let id = &leaf.spiffe_id;
        let ok = match self {
            Self::Any => true,
            Self::Exact(want) => want == id,
            Self::OneOf(set) => set.contains(id),
            Self::MemberOf(td) => id.is_member_of(td),
            Self::SanMatchers(ms) => {
                ms.is_empty() || ms.iter().any(|m| leaf.sans.iter().any(|s| m.matches(s)))
            }
            Self::AllOf(_) => true,
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError::Unauthorized {
                spiffe_id: id.clone(),
                policy: self.to_string(),
            })
        }
    }
}

impl fmt::Display for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any trusted ID"),
            Self::Exact(id) => write!(f, "ID must be {id}"),
            Self::OneOf(set) => {
                f.write_str("ID must be one of [")?;
                for (i, id) in set.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                f.write_str("]")
            }
            Self::MemberOf(td) => write!(f, "ID must be in trust domain {td}"),
            Self::SanMatchers(ms) => write!(f, "no SAN matches any of {ms:?}"),
            Self::AllOf(all) => {
                f.write_str("all of [")?;
                for (i, a) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authorizer({self})")
    }
}
