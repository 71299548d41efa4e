//! The checks a hand-built route configuration gets (xDS ones were checked when decoded).

use super::{
    ClusterSpecifier, ConfigError, HashPolicyKind, HeaderMatchKind, RetryPolicy, Route,
    RouteAction, RouteConfiguration,
};

pub(super) fn route_configuration(rc: &RouteConfiguration) -> Result<(), ConfigError> {
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let p = format!("virtual_hosts[{i}]");
        if vh.domains.is_empty() {
            return Err(ConfigError::invalid(
                format!("{p}.domains"),
                "must not be empty",
            ));
        }
        if vh.domains.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                format!("{p}.domains"),
                "a domain must not be empty",
            ));
        }
        if let Some(rp) = &vh.retry_policy {
            retry_policy(rp, &format!("{p}.retry_policy"))?;
        }
        for (j, r) in vh.routes.iter().enumerate() {
            route(r, &format!("{p}.routes[{j}]"))?;
        }
    }
    Ok(())
}

fn route(r: &Route, p: &str) -> Result<(), ConfigError> {
    let m = &r.matcher;
    for (k, h) in m.headers.iter().enumerate() {
        let hp = format!("{p}.match.headers[{k}]");
        if h.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("{hp}.name"),
                "must not be empty",
            ));
        }
        if h.name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::invalid(
                format!("{hp}.name"),
                "must be lower case",
            ));
        }
        if let HeaderMatchKind::Range { start, end } = h.kind
            && start > end
        {
            return Err(ConfigError::invalid(
                format!("{hp}.range_match"),
                format!("start {start} is greater than end {end}"),
            ));
        }
    }
    for (k, q) in m.query_parameters.iter().enumerate() {
        if q.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("{p}.match.query_parameters[{k}].name"),
                "must not be empty",
            ));
        }
    }
    if let Some(f) = m.runtime_fraction
        && f > 1_000_000
    {
        return Err(ConfigError::invalid(
            format!("{p}.match.runtime_fraction"),
            format!("{f} parts per million is more than one million"),
        ));
    }
    let RouteAction::Forward(fa) = &r.action else {
        return Ok(());
    };
    let ap = format!("{p}.route");
    match &fa.clusters {
        ClusterSpecifier::Cluster(name) | ClusterSpecifier::ClusterHeader(name) => {
            if name.is_empty() {
                let field = match fa.clusters {
                    ClusterSpecifier::Cluster(_) => "cluster",
                    _ => "cluster_header",
                };
                return Err(ConfigError::invalid(
                    format!("{ap}.{field}"),
                    "must not be empty",
                ));
            }
        }
        ClusterSpecifier::Weighted(list) => {
            let wp = format!("{ap}.weighted_clusters");
            let mut total: u32 = 0;
            for (k, w) in list.iter().enumerate() {
                if w.name.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{wp}.clusters[{k}].name"),
                        "must not be empty",
                    ));
                }
                total = total.checked_add(w.weight).ok_or_else(|| {
                    ConfigError::invalid(&wp, "the sum of the cluster weights overflows a u32")
                })?;
            }
            if total == 0 {
                return Err(ConfigError::ZeroTotalWeight { path: wp });
            }
        }
    }
    if let Some(rp) = &fa.retry_policy {
        retry_policy(rp, &format!("{ap}.retry_policy"))?;
    }
    for (k, hp) in fa.hash_policies.iter().enumerate() {
        let hpp = format!("{ap}.hash_policy[{k}]");
        match &hp.kind {
            HashPolicyKind::Header { name, .. } if name.is_empty() => {
                return Err(ConfigError::invalid(
                    format!("{hpp}.header.header_name"),
                    "must not be empty",
                ));
            }
            HashPolicyKind::Header { .. } | HashPolicyKind::ChannelId => {}
            HashPolicyKind::SourceIp => {
                return Err(ConfigError::UnsupportedHashPolicy {
                    path: hpp,
                    policy: "source_ip",
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn retry_policy(rp: &RetryPolicy, p: &str) -> Result<(), ConfigError> {
    if rp.base_interval.is_zero() {
        return Err(ConfigError::invalid(
            format!("{p}.retry_back_off.base_interval"),
            "must be greater than zero",
        ));
    }
    if rp.max_interval < rp.base_interval {
        return Err(ConfigError::invalid(
            format!("{p}.retry_back_off.max_interval"),
            format!(
                "{:?} is less than base_interval {:?}",
                rp.max_interval, rp.base_interval
            ),
        ));
    }
    if let Some(code) = rp
        .retriable_status_codes
        .iter()
        .find(|c| !(100..=599).contains(*c))
    {
        return Err(ConfigError::invalid(
            format!("{p}.retriable_status_codes"),
            format!("{code} is not an HTTP status code"),
        ));
    }
    Ok(())
}
