//! The inbound Listener the demo's control plane sends its xDS-driven server, shaped as
//! istiod sends one to a proxyless gRPC server (gRFC A36, A29, A41): filter chains
//! `inbound-mtls` (and `inbound-plaintext`), RBAC filters named
//! `envoy.filters.http.rbac.DENY` then `...ALLOW` before the router, principals matched on
//! `authenticated.principal_name`, routes with `non_forwarding_action`.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::google::protobuf::UInt32Value;

use meshwork_xds::server::build::{
    exact, mtls_chain, non_forwarding_route, permission_any, plaintext_chain, principal_name,
    rbac_filter, rbac_policy, route_config, server_hcm_inline, server_listener, virtual_host,
};

/// Istio's `server_listener_resource_name_template`.
pub const LISTENER_NAME_TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";

/// The peer-authentication mode of the inbound Listener (Istio's `PeerAuthentication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// One chain, mTLS with a client certificate required.
    Strict,
    /// The mTLS chain, and beside it a plaintext chain for connections to
    /// [`Inbound::plaintext_address`]. A gRPC server cannot tell a TLS connection from a
    /// plaintext one before choosing its chain (A36 has no TLS inspector), so the two are
    /// told apart by the destination address.
    Permissive,
}

/// What the inbound Listener says: who is denied, who is allowed, and the mTLS mode.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The Listener's resource name (the bootstrap's template expanded with `address`).
    pub name: String,
    /// The address the server listens on.
    pub address: SocketAddr,
    /// The mTLS mode.
    pub mode: MtlsMode,
    /// The SPIFFE IDs the DENY filter refuses.
    pub deny: Vec<String>,
    /// The SPIFFE IDs the ALLOW filter admits (on the mTLS chain; plaintext callers have
    /// no principal to match, so the plaintext chain has only the DENY filter).
    pub allow: Vec<String>,
    /// The destination address the plaintext chain of [`MtlsMode::Permissive`] takes.
    pub plaintext_address: IpAddr,
}

impl Inbound {
    /// The Listener as istiod would send it.
    pub fn listener(&self) -> Listener {
        let ids = |ids: &[String]| {
            rbac_policy(
                vec![permission_any()],
                ids.iter().map(|id| principal_name(exact(id))).collect(),
            )
        };
        let deny = rbac_filter(
            Action::Deny,
            [("ns[shop]-policy[deny]-rule[0]", ids(&self.deny))],
        );
        let allow = rbac_filter(
            Action::Allow,
            [("ns[shop]-policy[allow]-rule[0]", ids(&self.allow))],
        );
        let hcm = |filters: Vec<HttpFilter>| {
            let port = self.address.port();
            server_hcm_inline(
                route_config(
                    &format!("inbound|{port}||"),
                    vec![virtual_host(
                        &format!("inbound|http|{port}"),
                        ["*"],
                        vec![non_forwarding_route("/")],
                    )],
                ),
                filters,
            )
        };
        let mut chains = vec![mtls_chain(
            "inbound-mtls",
            hcm(vec![deny.clone(), allow]),
            "default",
            true,
        )];
        if self.mode == MtlsMode::Permissive {
            let mut plaintext = plaintext_chain("inbound-plaintext", hcm(vec![deny]));
            plaintext.filter_chain_match = Some(FilterChainMatch {
                prefix_ranges: vec![CidrRange {
                    address_prefix: self.plaintext_address.to_string(),
                    prefix_len: Some(UInt32Value {
                        value: if self.plaintext_address.is_ipv4() {
                            32
                        } else {
                            128
                        },
                    }),
                }],
                ..Default::default()
            });
            chains.push(plaintext);
        }
        server_listener(&self.name, self.address, chains, None)
    }
}

#[cfg(test)]
mod tests {
    use meshwork_xds::resource::ServerListener;
    use prost::Message as _;

    use super::*;

    fn inbound(mode: MtlsMode) -> Inbound {
        Inbound {
            name: "xds.istio.io/grpc/lds/inbound/0.0.0.0:7070".into(),
            address: "0.0.0.0:7070".parse().unwrap(),
            mode,
            deny: vec!["spiffe://demo.local/ns/shop/sa/intruder".into()],
            allow: vec!["spiffe://demo.local/ns/shop/sa/frontend".into()],
            plaintext_address: "127.0.0.2".parse().unwrap(),
        }
    }

    #[test]
    fn the_listener_decodes_as_a_server_listener() {
        let strict =
            ServerListener::decode(&inbound(MtlsMode::Strict).listener().encode_to_vec()).unwrap();
        assert_eq!(strict.filter_chains.len(), 1);
        assert!(
            strict.filter_chains[0]
                .tls
                .as_ref()
                .unwrap()
                .require_client_certificate
        );
        let permissive =
            ServerListener::decode(&inbound(MtlsMode::Permissive).listener().encode_to_vec())
                .unwrap();
        assert_eq!(permissive.filter_chains.len(), 2);
        assert!(permissive.filter_chains[1].tls.is_none());
    }
}
