//! [`MeshClient`]: hosts resolved to mesh targets, requests sent through the outbound stack.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use meshwork_core::client::resolve_xds;
use meshwork_core::config::{self, ConfigReceiver, TargetConfig};
use meshwork_core::identity::{CertificateProviders, MtlsConfig};
use meshwork_core::route::Router;
use meshwork_core::stack::{ClusterSet, SharedClusters, StackOptions};
use meshwork_core::telemetry::{CallLayer, Telemetry};
use meshwork_core::xds::client::XdsClient;
use meshwork_core::xds::resource::Cluster;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer as _, Service, ServiceExt as _};

use crate::connect::Endpoint;
use crate::{Body, Error, ResolveError};
use meshwork_core::upstream::{UpstreamIdentity, UpstreamPolicy};

/// Options of a [`MeshClient`].
#[derive(Debug, Clone)]
pub struct MeshClientOptions {
    mtls: Option<MtlsConfig>,
    certificate_providers: Option<Arc<CertificateProviders>>,
    upstream_policy: UpstreamPolicy,
    ready_timeout: Duration,
    http2_prior_knowledge: bool,
    stack: StackOptions,
    telemetry: Option<Telemetry>,
    max_hosts: usize,
    negative_ttl: Duration,
}

impl Default for MeshClientOptions {
    fn default() -> Self {
        Self {
            mtls: None,
            certificate_providers: None,
            upstream_policy: UpstreamPolicy::default(),
            ready_timeout: Duration::from_secs(10),
            http2_prior_knowledge: false,
            stack: StackOptions::default(),
            telemetry: None,
            max_hosts: DEFAULT_MAX_HOSTS,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
        }
    }
}

/// Envoy's dynamic forward proxy keeps at most 1024 hosts (`dns_cache_config.max_hosts`).
const DEFAULT_MAX_HOSTS: usize = 1024;

/// Envoy re-resolves a failing name every `dns_refresh_rate` (5 s for clusters) unless
/// `dns_failure_refresh_rate` says otherwise.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);

impl MeshClientOptions {
    /// Default options: the identity for TLS clusters comes from the bootstrap's
    /// certificate providers with [`MeshClient::from_xds`] and is absent otherwise (TLS
    /// clusters then fail to connect); a 10 s wait for a host's first xDS config; HTTP/1.1
    /// to plaintext clusters; the stack's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// One identity for every cluster that asks for TLS, in place of the certificate
    /// provider instances the clusters name. Its authorizer is replaced per cluster by the
    /// cluster's SAN matchers, and its ALPN by `h2`, `http/1.1` (only `h2` for clusters
    /// that ask for HTTP/2).
    pub fn mtls(mut self, mtls: MtlsConfig) -> Self {
        self.mtls = Some(mtls);
        self
    }

    /// The certificate provider instances that clusters' `UpstreamTlsContext`s name (gRFC
    /// A29): each TLS cluster takes our SVID from its identity instance and its roots from
    /// its root instance. [`MeshClient::from_xds`] makes them from the xDS client's
    /// bootstrap when neither this nor [`mtls`](Self::mtls) is set; pass one shared set to
    /// several clients (or channels) so that each file is watched once.
    pub fn certificate_providers(mut self, providers: Arc<CertificateProviders>) -> Self {
        self.certificate_providers = Some(providers);
        self
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

    /// How long the first request to a host waits for the host's xDS config (default
    /// 10 s). Requests that find the config already there do not wait.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Speak HTTP/2 to every cluster, not only to those whose CDS resource asks for it
    /// (`HttpProtocolOptions` with `explicit_http_config.http2_protocol_options`, or the
    /// deprecated `http2_protocol_options`): with prior knowledge ("h2c") in plaintext,
    /// offering only `h2` by ALPN over TLS. Default: false, each cluster's own setting.
    pub fn http2_prior_knowledge(mut self, enabled: bool) -> Self {
        self.http2_prior_knowledge = enabled;
        self
    }

    /// The per-cluster stack's options (default [`StackOptions::default`]).
    pub fn stack(mut self, options: StackOptions) -> Self {
        self.stack = options;
        self
    }

    /// Records the client's requests (a client span and `http.client.request.duration` per
    /// attempt under a span per request, the traffic layers' counters) through `telemetry`,
    /// with `grpc.target` set to the host's xDS target (or `static`); it replaces any
    /// telemetry in [`stack`](Self::stack). Default: [`Telemetry::global`], taken when the
    /// client is built, so install the application's OpenTelemetry providers first.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// How many hosts a [`MeshClient::from_xds`] client keeps (default 1024, as Envoy's
    /// dynamic forward proxy): each kept host holds its xDS watch and its stack. A new host
    /// beyond the limit evicts one: a host whose resolution failed or is under way first,
    /// then the least recently used one, whose xDS resources are unwatched once its last
    /// request ends; a request to an evicted host resolves it again. Zero counts as one.
    pub fn max_hosts(mut self, max: usize) -> Self {
        self.max_hosts = max.max(1);
        self
    }

    /// How long a host that failed to resolve keeps failing at once, with the same
    /// [`ResolveError`], before a request resolves it again (default 5 s, Envoy's
    /// `dns_refresh_rate`; like a DNS negative cache). This covers the control plane's
    /// answer that the host's listener does not exist or is invalid, and
    /// [`ready_timeout`](Self::ready_timeout) passing with no answer. Zero remembers no
    /// failure.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }
}

type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

enum Targets {
    /// One config for every host; its virtual hosts are chosen by the request's authority.
    One(Stack),
    /// A target per host, watched on first use.
    Xds(XdsTargets),
}

struct Inner {
    targets: Targets,
    options: MeshClientOptions,
}

/// An HTTP client into the mesh; see the [crate docs](crate). Cheap to clone; clones share
/// the targets, clusters, connections and config.
#[derive(Clone)]
pub struct MeshClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MeshClient");
        if let Targets::Xds(x) = &self.inner.targets {
            let mut hosts: Vec<String> = x.hosts.load().keys().cloned().collect();
            hosts.sort();
            d.field("hosts", &hosts);
        }
        d.finish_non_exhaustive()
    }
}

impl MeshClient {
    /// A client over a hand-written config, for every host: the config's virtual hosts are
    /// matched against each request's authority. Must be called within a tokio runtime.
    pub fn from_static(config: TargetConfig, options: MeshClientOptions) -> Self {
        let (_tx, rx) = config::channel(config);
        // With the sender gone the config never changes; the stack keeps the last one.
        Self::from_config(rx, options)
    }

    /// A client following the configs published on `config`, for every host. Must be
    /// called within a tokio runtime.
    pub fn from_config(config: ConfigReceiver, mut options: MeshClientOptions) -> Self {
        options.telemetry.get_or_insert_with(Telemetry::global);
        let stack = build_stack(config, &options, "static", None);
        Self {
            inner: Arc::new(Inner {
                targets: Targets::One(stack),
                options,
            }),
        }
    }

    /// A client whose hosts are xDS targets of `client`: a request to `http://greeter/hi`
    /// goes where `xds:///greeter` would (the listener named by the bootstrap's
    /// `client_default_listener_resource_name_template`, the virtual host chosen by
    /// `greeter`). The authority is the target name as written, port included
    /// (`http://greeter:8080/` is `xds:///greeter:8080`).
    ///
    /// Hosts are watched on first use and kept while they are used, up to
    /// [`MeshClientOptions::max_hosts`]: the first request to a host waits, at most
    /// [`MeshClientOptions::ready_timeout`], for its first complete config; later configs
    /// apply as they arrive, and if the host's config later turns into an error the last
    /// good one keeps serving. A host that fails to resolve fails at once for
    /// [`MeshClientOptions::negative_ttl`], then the next request tries again. Must be
    /// called within a tokio runtime.
    pub fn from_xds(client: XdsClient, mut options: MeshClientOptions) -> Self {
        if options.mtls.is_none() && options.certificate_providers.is_none() {
            options.certificate_providers = Some(Arc::new(CertificateProviders::from_bootstrap(
                client.bootstrap(),
            )));
        }
        options.telemetry.get_or_insert_with(Telemetry::global);
        Self {
            inner: Arc::new(Inner {
                targets: Targets::Xds(XdsTargets {
                    client,
                    hosts: ArcSwap::from_pointee(HashMap::new()),
                    insert: Mutex::new(()),
                    clusters: SharedClusters::new(),
                    epoch: Instant::now(),
                }),
                options,
            }),
        }
    }

    /// Resolves `host` (an authority: `greeter`, `greeter:8080`) ahead of its first
    /// request, waiting for its config as that request would. With a static config this
    /// does nothing.
    pub async fn resolve(&self, host: &str) -> Result<(), Error> {
        self.stack_for(&host.to_ascii_lowercase()).await.map(drop)
    }

    /// Sends a `GET` for `uri` (`http://host/path`) with an empty body.
    pub async fn get<U>(&self, uri: U) -> Result<Response<Body>, Error>
    where
        U: TryInto<Uri>,
        U::Error: Into<http::Error>,
    {
        let req = Request::get(uri)
            .body(crate::empty())
            .map_err(Error::invalid_request)?;
        self.send(req).await
    }

    /// Sends `req` through the mesh. Its URI is `http://host/path` (or a path with a `Host`
    /// header); the host picks the target, the target's routes pick the cluster, and the
    /// cluster says whether the connection uses mTLS and which HTTP version it speaks. An
    /// `https` URI is refused: the cluster, not the URI, decides on TLS.
    pub async fn request<B>(&self, req: Request<B>) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.send(req.map(|b| b.map_err(Into::into).boxed_unsync()))
            .await
    }

    async fn send(&self, req: Request<Body>) -> Result<Response<Body>, Error> {
        let (req, host) = normalize(req)?;
        let stack = self.stack_for(&host).await?;
        // Boxed as a `dyn Future + Send`, so that the compiler need not prove the stack's
        // future `Send` for every lifetime of the boxed errors inside it (a known
        // limitation of async Send inference).
        let call: Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>> =
            Box::pin(stack.oneshot(req));
        call.await.map_err(Error::stack)
    }

    async fn stack_for(&self, host: &str) -> Result<Stack, Error> {
        match &self.inner.targets {
            Targets::One(stack) => Ok(stack.clone()),
            Targets::Xds(x) => x
                .stack(host, &self.inner.options)
                .await
                .map_err(Error::resolve),
        }
    }
}

impl Service<Request<Body>> for MeshClient {
    type Response = Response<Body>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Readiness belongs to each cluster's stack, reached once the request is routed.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}

/// Makes the URI absolute (`http://host/path`) and returns the host, lowercased.
fn normalize(mut req: Request<Body>) -> Result<(Request<Body>, String), Error> {
    let uri = req.uri();
    if let Some(scheme) = uri.scheme()
        && *scheme != Scheme::HTTP
    {
        return Err(Error::invalid_request(format!(
            "{uri}: the scheme must be http (the cluster decides on TLS)"
        )));
    }
    let authority = match uri.authority() {
        Some(a) => a.clone(),
        None => {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or_else(|| Error::invalid_request(format!("{uri}: no host")))?;
            host.parse::<Authority>()
                .map_err(|e| Error::invalid_request(format!("host {host:?}: {e}")))?
        }
    };
    if uri.scheme().is_none() {
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(Error::invalid_request)?;
    }
    Ok((req, authority.as_str().to_ascii_lowercase()))
}

/// The stack of one target; with `shared`, its clusters are shared with the other hosts'
/// (two hosts that route to one cluster get one balancer, one connection pool, one breaker).
fn build_stack(
    config: ConfigReceiver,
    options: &MeshClientOptions,
    target: &str,
    shared: Option<&SharedClusters<Body, Incoming>>,
) -> Stack {
    let telemetry = options
        .telemetry
        .clone()
        .unwrap_or_else(Telemetry::global)
        .with_target(target);
    let identity = UpstreamIdentity::choose(
        options.mtls.as_ref(),
        options.certificate_providers.as_ref(),
    );
    let h2 = options.http2_prior_knowledge;
    let policy = options.upstream_policy.clone();
    let connect = move |cluster: &Arc<Cluster>, address| {
        Endpoint::new(cluster, address, &identity, &policy, h2)
    };
    let stack_options = options.stack.clone().telemetry(telemetry.clone());
    let clusters = match shared {
        Some(shared) => {
            ClusterSet::with_shared(config.clone(), connect, stack_options, shared.clone())
        }
        None => ClusterSet::new(config.clone(), connect, stack_options),
    };
    let router = Router::new(config, clusters);
    let call = CallLayer::new(telemetry).layer(router);
    BoxCloneSyncService::new(call.map_response(|rsp: Response<_>| rsp.map(|b| b.boxed_unsync())))
}

/// The per-host targets of an xDS client. Lookups of known hosts take no lock (an
/// `ArcSwap` load); a new host is inserted under a mutex, evicting one when the map is full,
/// and its `OnceCell` makes concurrent first requests share one resolution.
struct XdsTargets {
    client: XdsClient,
    hosts: ArcSwap<HashMap<String, Arc<Host>>>,
    insert: Mutex<()>,
    /// The cluster stacks, shared by every host's stack.
    clusters: SharedClusters<Body, Incoming>,
    /// The origin of [`Host::last_used`].
    epoch: Instant,
}

/// One host of an xDS client: its stack once resolved, or its last failure.
struct Host {
    stack: OnceCell<Stack>,
    /// The last failure, and until when it answers for the host.
    failed: Mutex<Option<(Instant, ResolveError)>>,
    /// When a request last asked for the host, in milliseconds since the targets' epoch.
    last_used: AtomicU64,
}

impl Host {
    fn touch(&self, now: u64) {
        // At most one write per millisecond: a hot host's cache line is not bounced
        // between cores by every request.
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    fn failure(&self, now: Instant) -> Option<ResolveError> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .as_ref()
            .filter(|(until, _)| now < *until)
            .map(|(_, e)| e.clone())
    }

    fn remember(&self, until: Instant, error: ResolveError) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((until, error));
    }
}

impl XdsTargets {
    async fn stack(&self, host: &str, options: &MeshClientOptions) -> Result<Stack, ResolveError> {
        let entry = self.host(host, options.max_hosts);
        if let Some(stack) = entry.stack.get() {
            return Ok(stack.clone());
        }
        // A failed init leaves the cell empty for the next waiter, which then finds the
        // failure remembered rather than resolving again.
        entry
            .stack
            .get_or_try_init(|| async {
                if let Some(error) = entry.failure(Instant::now()) {
                    return Err(error);
                }
                let resolved = self.resolve(host, options).await;
                if let Err(error) = &resolved
                    && !options.negative_ttl.is_zero()
                {
                    entry.remember(Instant::now() + options.negative_ttl, error.clone());
                }
                resolved
            })
            .await
            .cloned()
    }

    /// The entry of `host`, made (and another evicted, if `max` are kept) on first use.
    fn host(&self, host: &str, max: usize) -> Arc<Host> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(entry) = self.hosts.load().get(host) {
            entry.touch(now);
            return entry.clone();
        }
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let hosts = self.hosts.load();
        if let Some(entry) = hosts.get(host) {
            entry.touch(now);
            return entry.clone();
        }
        let mut next = HashMap::clone(&hosts);
        while next.len() >= max.max(1) {
            // Hosts without a stack (failed, or resolving) go first: they cost only a
            // resolution to make again, and a flood of unknown hosts then evicts itself.
            let victim = next
                .iter()
                .min_by_key(|(_, h)| (h.stack.initialized(), h.last_used.load(Ordering::Relaxed)))
                .map(|(name, _)| name.clone());
            let Some(name) = victim else { break };
            next.remove(&name);
        }
        let entry = Arc::new(Host {
            stack: OnceCell::new(),
            failed: Mutex::new(None),
            last_used: AtomicU64::new(now),
        });
        next.insert(host.to_owned(), entry.clone());
        self.hosts.store(Arc::new(next));
        entry
    }

    async fn resolve(
        &self,
        host: &str,
        options: &MeshClientOptions,
    ) -> Result<Stack, ResolveError> {
        let target = format!("xds:///{host}");
        let rx = resolve_xds(&self.client, &target, options.ready_timeout).await?;
        Ok(build_stack(rx, options, &target, Some(&self.clusters)))
    }
}
