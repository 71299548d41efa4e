//! [`ClientOptions`]: one options type for every client the adapters build.

use std::sync::Arc;
use std::time::Duration;

use meshwork_xds::bootstrap::Bootstrap;

use crate::balance::{BalancePolicy, BalancerConfigError};
use crate::identity::{CertificateProviders, MtlsConfig};
use crate::stack::StackOptions;
use crate::telemetry::Telemetry;
use crate::upstream::{UpstreamIdentity, UpstreamPolicy};

/// Envoy's dynamic forward proxy keeps at most 1024 hosts (`dns_cache_config.max_hosts`).
const DEFAULT_MAX_TARGETS: usize = 1024;

/// Envoy re-resolves a failing name every `dns_refresh_rate` (5 s for clusters) unless
/// `dns_failure_refresh_rate` says otherwise.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// gRPC's default wait for a channel's first xDS config is its connection timeout; ours is
/// shorter, so that a misconfigured target fails while the operator still watches.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client's connections take their identity (our SVID and the roots that check the
/// server's) for clusters that ask for TLS.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum ClientIdentity {
    /// The certificate provider instances of the xDS client's bootstrap (gRFC A29, as Istio
    /// configures proxyless gRPC): each cluster's `UpstreamTlsContext` names the instance of
    /// its SVID and of its roots. A client without an xDS client has none (then as
    /// [`None`](Self::None)).
    #[default]
    FromBootstrap,
    /// One identity for every cluster that asks for TLS, in place of the instances the
    /// clusters name. Its authorizer is replaced per cluster by the cluster's SAN matchers,
    /// and ALPN is set as the transport needs.
    Mtls(MtlsConfig),
    /// Explicit certificate provider instances, named by the clusters as with
    /// [`FromBootstrap`](Self::FromBootstrap): pass one shared set to several clients so
    /// that each file is watched once.
    Providers(Arc<CertificateProviders>),
    /// No identity: clusters that ask for TLS fail to connect with
    /// [`ConnectError::NoIdentity`](crate::upstream::ConnectError::NoIdentity).
    None,
}

/// The options of a mesh client, whichever adapter builds it (meshwork-grpc's
/// `MeshChannel`, meshwork-http's `MeshClient`): its identity, the floor under the control
/// plane's upstream security, how long to wait for a target's first config, telemetry, the
/// balancer defaults and the bounds of the target cache. One knob per setting.
///
/// ```
/// use std::time::Duration;
/// use meshwork_core::client::ClientOptions;
/// use meshwork_core::upstream::UpstreamPolicy;
///
/// let options = ClientOptions::new()
///     .upstream_policy(UpstreamPolicy::new().require_mtls(true))
///     .ready_timeout(Duration::from_secs(3));
/// # drop(options);
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    identity: ClientIdentity,
    upstream_policy: UpstreamPolicy,
    ready_timeout: Duration,
    telemetry: Option<Telemetry>,
    stack: StackOptions,
    max_targets: usize,
    negative_ttl: Duration,
    http2_prior_knowledge: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            identity: ClientIdentity::default(),
            upstream_policy: UpstreamPolicy::default(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            telemetry: None,
            stack: StackOptions::default(),
            max_targets: DEFAULT_MAX_TARGETS,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            http2_prior_knowledge: false,
        }
    }
}

impl ClientOptions {
    /// Default options: the identity from the xDS client's bootstrap
    /// ([`ClientIdentity::FromBootstrap`]); no floor under upstream security; a 10 s wait
    /// for a target's first xDS config; [`Telemetry::global`]; round robin for clusters
    /// that name no policy; at most 1024 targets, failures remembered for 5 s; HTTP/1.1 to
    /// plaintext HTTP clusters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where connections take their identity for clusters that ask for TLS (default
    /// [`ClientIdentity::FromBootstrap`]).
    pub fn identity(mut self, identity: ClientIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// Shorthand for [`identity`](Self::identity)`(ClientIdentity::Mtls(mtls))`: one
    /// identity for every cluster that asks for TLS.
    pub fn mtls(self, mtls: MtlsConfig) -> Self {
        self.identity(ClientIdentity::Mtls(mtls))
    }

    /// Shorthand for [`identity`](Self::identity)`(ClientIdentity::Providers(providers))`:
    /// the certificate provider instances that clusters' `UpstreamTlsContext`s name (gRFC
    /// A29).
    pub fn certificate_providers(self, providers: Arc<CertificateProviders>) -> Self {
        self.identity(ClientIdentity::Providers(providers))
    }

    /// The application's floor under what the control plane says about upstream security,
    /// and the maximum connection age: refuse clusters without TLS, pin which servers may
    /// answer whatever the SAN matchers say, retire connections after an age (see
    /// [`UpstreamPolicy`]). Default: no floor and no age limit, gRFC A29's behaviour.
    /// Connections are retired when the server's certificate expires in any case.
    pub fn upstream_policy(mut self, policy: UpstreamPolicy) -> Self {
        self.upstream_policy = policy;
        self
    }

    /// How long resolving an xDS target waits for its first complete config (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    pub(crate) fn ready_timeout_value(&self) -> Duration {
        self.ready_timeout
    }

    /// Records the client's calls (a `Sent.…` span and call metrics per call, an
    /// `Attempt.…` span and attempt metrics per attempt, the traffic layers' counters)
    /// through `telemetry`, with `grpc.target` set to the target (`static` for a
    /// hand-written config). Default: [`Telemetry::global`], taken when the client is
    /// built, so install the application's OpenTelemetry providers first.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Caps every ring-hash cluster's ring at `cap` entries, whatever its CDS resource asks
    /// for (gRPC's ring size cap). Default:
    /// [`DEFAULT_RING_SIZE_CAP`](crate::balance::DEFAULT_RING_SIZE_CAP) (4096, gRPC's
    /// default).
    pub fn ring_size_cap(mut self, cap: u64) -> Self {
        self.stack = self.stack.ring_size_cap(cap);
        self
    }

    /// The balancer for clusters that name no load-balancing policy (what Istio sends for a
    /// service without a `DestinationRule`). Default: round robin, as gRPC and Envoy
    /// balance such clusters; [`BalancePolicy::P2cPeakEwma`] is Linkerd's choice
    /// (latency-aware, and it avoids a slow endpoint). A cluster that names a policy gets
    /// that policy whatever this says.
    ///
    /// # Errors
    /// When the policy's parameters are out of range ([`BalancePolicy::validate`]).
    pub fn default_balancer(mut self, policy: BalancePolicy) -> Result<Self, BalancerConfigError> {
        self.stack = self.stack.default_balancer(policy)?;
        Ok(self)
    }

    /// How many xDS targets a client keeps resolved (default 1024, as Envoy's dynamic
    /// forward proxy keeps hosts; meshwork-http's `MeshClient` makes a target per host):
    /// each kept target holds its xDS watch and its stack. A new target beyond the limit
    /// evicts one: a target whose resolution failed or is under way first, then the least
    /// recently used one, whose xDS resources are unwatched once its last call ends; a call
    /// to an evicted target resolves it again. Zero counts as one.
    pub fn max_targets(mut self, max: usize) -> Self {
        self.max_targets = max.max(1);
        self
    }

    /// How long a target that failed to resolve keeps failing at once, with the same
    /// [`ResolveError`](super::ResolveError), before a call resolves it again (default 5 s,
    /// Envoy's `dns_refresh_rate`; like a DNS negative cache). This covers the control
    /// plane's answer that the target's listener does not exist or is invalid, and
    /// [`ready_timeout`](Self::ready_timeout) passing with no answer. Zero remembers no
    /// failure.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Speak HTTP/2 to every HTTP cluster, not only to those whose CDS resource asks for it
    /// (`HttpProtocolOptions` with `explicit_http_config.http2_protocol_options`, or the
    /// deprecated `http2_protocol_options`): with prior knowledge ("h2c") in plaintext,
    /// offering only `h2` by ALPN over TLS. Default: false, each cluster's own setting. For
    /// meshwork-http's `MeshClient`; a gRPC channel always speaks HTTP/2.
    pub fn http2_prior_knowledge(mut self, enabled: bool) -> Self {
        self.http2_prior_knowledge = enabled;
        self
    }

    /// Whether [`http2_prior_knowledge`](Self::http2_prior_knowledge) is set.
    pub fn http2_prior_knowledge_enabled(&self) -> bool {
        self.http2_prior_knowledge
    }

    pub(crate) fn max_targets_value(&self) -> usize {
        self.max_targets
    }

    pub(crate) fn negative_ttl_value(&self) -> Duration {
        self.negative_ttl
    }

    pub(crate) fn telemetry_or_global(&self) -> Telemetry {
        self.telemetry.clone().unwrap_or_else(Telemetry::global)
    }

    pub(crate) fn stack_options(&self) -> &StackOptions {
        &self.stack
    }

    /// What connections dial with: the identity chosen for `bootstrap` (the xDS client's,
    /// if any) and the upstream policy.
    pub(crate) fn upstream(&self, bootstrap: Option<&Bootstrap>) -> Upstream {
        let identity = match (&self.identity, bootstrap) {
            (ClientIdentity::FromBootstrap, Some(bootstrap)) => UpstreamIdentity::Providers(
                Arc::new(CertificateProviders::from_bootstrap(bootstrap)),
            ),
            (ClientIdentity::FromBootstrap | ClientIdentity::None, _) => UpstreamIdentity::None,
            (ClientIdentity::Mtls(mtls), _) => UpstreamIdentity::Fixed(mtls.clone()),
            (ClientIdentity::Providers(providers), _) => {
                UpstreamIdentity::Providers(providers.clone())
            }
        };
        Upstream {
            identity,
            policy: self.upstream_policy.clone(),
            http2_prior_knowledge: self.http2_prior_knowledge,
        }
    }
}

/// What an adapter's connector needs to dial an endpoint: the identity chosen from
/// [`ClientOptions`] (and the xDS client's bootstrap) and the upstream policy. Handed to
/// the connector factory of [`Engine::new`](super::Engine::new).
#[derive(Debug, Clone)]
pub struct Upstream {
    identity: UpstreamIdentity,
    policy: UpstreamPolicy,
    http2_prior_knowledge: bool,
}

impl Upstream {
    /// Where TLS clusters' connections take their identity.
    pub fn identity(&self) -> &UpstreamIdentity {
        &self.identity
    }

    /// The floor under the control plane's upstream security.
    pub fn policy(&self) -> &UpstreamPolicy {
        &self.policy
    }

    /// Whether plaintext HTTP clusters speak HTTP/2 without negotiation.
    pub fn http2_prior_knowledge(&self) -> bool {
        self.http2_prior_knowledge
    }
}
