//! The rules a route configuration obeys whether it came from xDS or was written by hand.
//!
//! Each rule is one function here. The RDS decoder applies them to each value as it builds
//! it, at the value's position in the proto (a route it leaves out or a zero weight it drops
//! must not shift the path of a later error); [`RouteConfiguration::validate`] applies the
//! same functions to a finished value, for configurations built by hand. So both are refused
//! for the same reasons, with the same words and the same field path.
//!
//! What the types alone cannot say and gRPC's xDS client (grpc-go, gRFC A28) NACKs is
//! checked; what grpc-go accepts is accepted here too, even when it can never match (a
//! virtual host without domains, a header range whose start is past its end) or is ignored
//! (a `source_ip` hash policy).

use std::fmt;
use std::time::Duration;

use super::types::*;
use crate::resource::FieldPath;

/// A route configuration value that breaks a rule: which field, and why.
///
/// The path is written from the route configuration's root, in the form xDS errors use
/// (`virtual_hosts[0].routes[2].route.weighted_clusters`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A field has a value that cannot be used.
    #[error("{path}: {reason}")]
    Invalid {
        /// The field path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights of a weighted cluster action sum to zero (or the list is empty).
    #[error("{path}: {}", ZERO_TOTAL_WEIGHT)]
    ZeroTotalWeight {
        /// The path of the `weighted_clusters` field.
        path: String,
    },
}

const ZERO_TOTAL_WEIGHT: &str = "the cluster weights sum to zero";

impl ValidationError {
    /// The path of the field the error concerns.
    pub fn path(&self) -> &str {
        match self {
            ValidationError::Invalid { path, .. } | ValidationError::ZeroTotalWeight { path } => {
                path
            }
        }
    }

    /// What is wrong with the field, without its path.
    pub fn reason(&self) -> &str {
        match self {
            ValidationError::Invalid { reason, .. } => reason,
            ValidationError::ZeroTotalWeight { .. } => ZERO_TOTAL_WEIGHT,
        }
    }

    fn invalid(path: impl fmt::Display, reason: impl Into<String>) -> Self {
        ValidationError::Invalid {
            path: path.to_string(),
            reason: reason.into(),
        }
    }
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

/// A name or other string the field needs (`cluster`, a query parameter's `name`, …).
pub(crate) fn not_empty(value: &str, path: impl fmt::Display) -> Result {
    if value.is_empty() {
        return Err(ValidationError::invalid(path, "must not be empty"));
    }
    Ok(())
}

/// A header matcher's name: set, and lower case as the matcher compares it (the decoder
/// lower-cases what a control plane sends).
pub(crate) fn header_name(name: &str, path: impl fmt::Display) -> Result {
    not_empty(name, &path)?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ValidationError::invalid(path, "must be lower case"));
    }
    Ok(())
}

/// A route's `runtime_fraction`, in parts per million (the decoder caps what it reads).
pub(crate) fn runtime_fraction(ppm: u32, path: impl fmt::Display) -> Result {
    if ppm > 1_000_000 {
        return Err(ValidationError::invalid(
            path,
            format!("{ppm} parts per million is more than one million"),
        ));
    }
    Ok(())
}

/// The sum of a weighted cluster action's weights, added up entry by entry so that an
/// error names the first entry (in the order given) that breaks a rule.
#[derive(Default)]
pub(crate) struct WeightSum(u32);

impl WeightSum {
    /// One entry, at `entry`, of the list at `list`. A zero weight is allowed (the decoder
    /// drops such entries; a hand-built one is never picked).
    pub(crate) fn add(
        &mut self,
        name: &str,
        weight: u32,
        entry: &FieldPath<'_>,
        list: &FieldPath<'_>,
    ) -> Result {
        not_empty(name, entry.field("name"))?;
        self.0 = self.0.checked_add(weight).ok_or_else(|| {
            ValidationError::invalid(list, "the sum of the cluster weights overflows a u32")
        })?;
        Ok(())
    }

    /// After the last entry: a choice needs some weight.
    pub(crate) fn finish(self, list: &FieldPath<'_>) -> Result {
        if self.0 == 0 {
            return Err(ValidationError::ZeroTotalWeight {
                path: list.to_string(),
            });
        }
        Ok(())
    }
}

/// A retry backoff's `base_interval`.
pub(crate) fn backoff_base(base: Duration, path: impl fmt::Display) -> Result {
    if base.is_zero() {
        return Err(ValidationError::invalid(path, "must be greater than zero"));
    }
    Ok(())
}

/// A retry backoff's `max_interval`, against its `base_interval`.
pub(crate) fn backoff_max(max: Duration, base: Duration, path: impl fmt::Display) -> Result {
    if max < base {
        return Err(ValidationError::invalid(
            path,
            format!("{max:?} is less than base_interval {base:?}"),
        ));
    }
    Ok(())
}

/// One of `retriable_status_codes`: an HTTP status (the proto field is a `uint32`).
pub(crate) fn status_code(code: u32, path: impl fmt::Display) -> Result<u16> {
    match u16::try_from(code) {
        Ok(c) if (100..=599).contains(&c) => Ok(c),
        _ => Err(ValidationError::invalid(
            path,
            format!("{code} is not an HTTP status code"),
        )),
    }
}

impl RouteConfiguration {
    /// Checks the rules the RDS decoder applies to what a control plane sends (a cluster
    /// name is set, weights sum to more than zero, a backoff's base interval is positive,
    /// …), for a configuration built by hand. A decoded one always passes.
    ///
    /// ```
    /// use meshwork_xds::resource::{FilterOverride, RbacPerRoute, RouteConfiguration, VirtualHost};
    ///
    /// let rc = RouteConfiguration {
    ///     name: "static".into(),
    ///     virtual_hosts: vec![VirtualHost {
    ///         name: "vh".into(),
    ///         domains: vec!["*".into()],
    ///         routes: Vec::new(),
    ///         retry_policy: None,
    ///         // No RBAC on this host's routes.
    ///         filter_overrides: [(
    ///             "envoy.filters.http.rbac".to_owned(),
    ///             FilterOverride::Rbac(RbacPerRoute::default()),
    ///         )]
    ///         .into(),
    ///     }],
    ///     unsupported_fields: Vec::new(),
    /// };
    /// assert!(rc.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result {
        let root = FieldPath::ROOT;
        for (i, vh) in self.virtual_hosts.iter().enumerate() {
            let p = root.at("virtual_hosts", i);
            if let Some(rp) = &vh.retry_policy {
                rp.check(&p.field("retry_policy"))?;
            }
            for (j, r) in vh.routes.iter().enumerate() {
                r.check(&p.at("routes", j))?;
            }
        }
        Ok(())
    }
}

impl Route {
    fn check(&self, p: &FieldPath<'_>) -> Result {
        let mp = p.field("match");
        for (k, h) in self.matcher.headers.iter().enumerate() {
            header_name(&h.name, mp.at("headers", k).field("name"))?;
        }
        for (k, q) in self.matcher.query_parameters.iter().enumerate() {
            not_empty(&q.name, mp.at("query_parameters", k).field("name"))?;
        }
        if let Some(ppm) = self.matcher.runtime_fraction {
            runtime_fraction(ppm, mp.field("runtime_fraction"))?;
        }
        match &self.action {
            RouteAction::Forward(fa) => fa.check(&p.field("route")),
            RouteAction::NonForwarding | RouteAction::Unsupported(_) => Ok(()),
        }
    }
}

impl ForwardAction {
    fn check(&self, p: &FieldPath<'_>) -> Result {
        match &self.clusters {
            ClusterSpecifier::Cluster(name) => not_empty(name, p.field("cluster"))?,
            ClusterSpecifier::ClusterHeader(name) => not_empty(name, p.field("cluster_header"))?,
            ClusterSpecifier::Weighted(list) => {
                let wp = p.field("weighted_clusters");
                let mut sum = WeightSum::default();
                for (k, w) in list.iter().enumerate() {
                    sum.add(&w.name, w.weight, &wp.at("clusters", k), &wp)?;
                }
                sum.finish(&wp)?;
            }
        }
        if let Some(rp) = &self.retry_policy {
            rp.check(&p.field("retry_policy"))?;
        }
        for (k, hp) in self.hash_policies.iter().enumerate() {
            if let HashPolicyKind::Header { name, .. } = &hp.kind {
                not_empty(name, p.at("hash_policy", k).field("header.header_name"))?;
            }
        }
        Ok(())
    }
}

impl RetryPolicy {
    /// Checks the rules the RDS decoder applies to a retry policy (the backoff's base
    /// interval is positive and not above its max, each retriable status is an HTTP
    /// status); the paths are relative to the policy (`retry_back_off.base_interval`).
    pub fn validate(&self) -> Result {
        self.check(&FieldPath::ROOT)
    }

    fn check(&self, p: &FieldPath<'_>) -> Result {
        backoff_base(self.base_interval, p.field("retry_back_off.base_interval"))?;
        backoff_max(
            self.max_interval,
            self.base_interval,
            p.field("retry_back_off.max_interval"),
        )?;
        for (k, &code) in self.retriable_status_codes.iter().enumerate() {
            status_code(code.into(), p.at("retriable_status_codes", k))?;
        }
        Ok(())
    }
}
