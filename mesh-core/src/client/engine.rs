//! [`Engine`]: the client both adapters are built on, and the [`Outbound`] service it makes
//! per target.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use meshwork_xds::client::XdsClient;
use pin_project_lite::pin_project;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder};

use super::ResolveError;
use super::options::{ClientOptions, Upstream};
use super::resolve::{follow, resolve_first};
use super::targets::TargetCache;
use crate::config::{self, ConfigReceiver, TargetConfig};
use crate::retry::RetryBody;
use crate::route::Router;
use crate::stack::{Applier, ApplyConfig, ClusterSet, Connect, SharedClusters, StackOptions};
use crate::telemetry::{CallLayer, Telemetry, TelemetryBody};
use crate::timeout::TimeoutBody;

/// Makes a target's cluster set with the engine's connector (whose type it hides), and the
/// [`ApplyConfig`] through which a publisher applies its configs.
type MakeClusters<B, RB> = dyn Fn(
        ConfigReceiver,
        StackOptions,
        SharedClusters<B, RB>,
        Applier,
    ) -> (ClusterSet<B, RB>, ApplyConfig)
    + Send
    + Sync;

/// A mesh client: the options, the adapter's connector, the cluster stacks its targets
/// share and, with an xDS client, a bounded cache of resolved targets. Both adapters are
/// built on it (meshwork-grpc's `MeshChannel`, meshwork-http's `MeshClient`); they add only
/// their transport (the connector) and their request and response types. Cheap to clone.
///
/// `B` is the request body the connector sends, `RB` the response body it returns. Two
/// targets that route to the same cluster (same name, same `Cluster` resource) share its
/// stack: one balancer, one connection pool, one breaker, one outlier detector.
pub struct Engine<B, RB> {
    inner: Arc<Inner<B, RB>>,
}

struct Inner<B, RB> {
    options: ClientOptions,
    telemetry: Telemetry,
    xds: Option<XdsClient>,
    clusters: SharedClusters<B, RB>,
    make_clusters: Box<MakeClusters<B, RB>>,
    targets: TargetCache<Outbound<B, RB>>,
}

impl<B, RB> Clone for Engine<B, RB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B, RB> fmt::Debug for Engine<B, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("xds", &self.inner.xds.is_some())
            .field("targets", &self.inner.targets.names())
            .field("clusters", &self.inner.clusters.cluster_names())
            .finish_non_exhaustive()
    }
}

impl<B, RB> Engine<B, RB>
where
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    /// An engine whose connections are made by the connector `connector` returns for the
    /// [`Upstream`] chosen from `options` (and from `xds`'s bootstrap, when
    /// [`ClientIdentity::FromBootstrap`](super::ClientIdentity::FromBootstrap)). With `xds`,
    /// [`resolve`](Self::resolve) resolves `xds:` targets; without, only
    /// [`outbound`](Self::outbound) over a config the application publishes.
    ///
    /// Telemetry is taken now ([`Telemetry::global`] unless the options name one).
    pub fn new<C, F>(options: ClientOptions, xds: Option<XdsClient>, connector: F) -> Self
    where
        F: FnOnce(Upstream) -> C,
        C: Connect<B>,
        C::Service: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Error: Into<BoxError>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Future: Send + 'static,
    {
        let connect = connector(options.upstream(xds.as_ref().map(XdsClient::bootstrap)));
        let make_clusters: Box<MakeClusters<B, RB>> =
            Box::new(move |config, stack, shared, applier| {
                ClusterSet::with_shared(config, connect.clone(), stack, shared, applier)
            });
        Self {
            inner: Arc::new(Inner {
                telemetry: options.telemetry_or_global(),
                targets: TargetCache::new(
                    options.max_targets_value(),
                    options.negative_ttl_value(),
                ),
                options,
                xds,
                clusters: SharedClusters::new(),
                make_clusters,
            }),
        }
    }

    /// The engine's options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The xDS client, if the engine has one.
    pub fn xds_client(&self) -> Option<&XdsClient> {
        self.inner.xds.as_ref()
    }

    /// The outbound service for the configs published on `config`; `target` names it in
    /// telemetry (`grpc.target`). Must be called within a tokio runtime.
    pub fn outbound(&self, config: ConfigReceiver, target: &str) -> Outbound<B, RB> {
        self.make_outbound(config, target, Applier::OwnTask).0
    }

    /// [`outbound`](Self::outbound), and its clusters' [`ApplyConfig`]; with
    /// [`Applier::Publisher`], they are kept in step with `config` by whoever publishes on
    /// it, through that, rather than by a task of their own.
    fn make_outbound(
        &self,
        config: ConfigReceiver,
        target: &str,
        applier: Applier,
    ) -> (Outbound<B, RB>, ApplyConfig) {
        let telemetry = self.inner.telemetry.clone().with_target(target);
        let stack = self.inner.options.stack_options().clone();
        let (clusters, apply) = (self.inner.make_clusters)(
            config.clone(),
            stack.telemetry(telemetry.clone()),
            self.inner.clusters.clone(),
            applier,
        );
        // Read top-down: a call meets the layers in this order; below the router, each
        // cluster's own stack (see `crate::stack`).
        let service = ServiceBuilder::new()
            .map_response(|rsp: http::Response<_>| rsp.map(|inner| OutboundBody { inner }))
            .layer(CallLayer::new(telemetry))
            .service(Router::new(config, clusters));
        let outbound = Outbound {
            inner: BoxCloneSyncService::new(service),
        };
        (outbound, apply)
    }

    /// The outbound service for a hand-written config that never changes; `static` in
    /// telemetry. Must be called within a tokio runtime.
    pub fn outbound_static(&self, config: TargetConfig) -> Outbound<B, RB> {
        let (_tx, rx) = config::channel(config);
        // With the sender gone the config never changes; the stack keeps the last one.
        self.outbound(rx, "static")
    }

    /// The outbound service for the xDS target `target` (`xds:///name[:port]`), resolved
    /// through the engine's xDS client (as [`resolve_xds`](super::resolve_xds) does) on
    /// first use and kept, up to [`ClientOptions::max_targets`]: the first call waits, at most
    /// [`ClientOptions::ready_timeout`], for the target's first complete config; later
    /// calls get the kept service. A target that fails to resolve fails at once, with the
    /// same error, for [`ClientOptions::negative_ttl`]. Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`ResolveError`]; [`ResolveError::NoXdsClient`] for an engine made without one.
    pub async fn resolve(&self, target: &str) -> Result<Outbound<B, RB>, ResolveError> {
        let Some(xds) = &self.inner.xds else {
            return Err(ResolveError::NoXdsClient {
                target: target.to_owned(),
            });
        };
        self.inner
            .targets
            .get_or_resolve(target, || async {
                let resolved =
                    resolve_first(xds, target, self.inner.options.ready_timeout_value()).await?;
                let (tx, rx) = config::channel(resolved.first);
                let (outbound, apply) = self.make_outbound(rx, target, Applier::Publisher);
                // One task publishes each new config and applies it to the clusters.
                tokio::spawn(follow(resolved.watch, tx, resolved.target, apply));
                Ok(outbound)
            })
            .await
    }

    /// The xDS targets kept now, sorted.
    pub fn targets(&self) -> Vec<String> {
        self.inner.targets.names()
    }
}

type Inner2<B, RB> =
    BoxCloneSyncService<http::Request<B>, http::Response<OutboundBody<RB>>, BoxError>;

/// One target's outbound service: the call's telemetry, the router, and per cluster
/// timeout, retries, attempt telemetry, circuit breaker and balancer, over the engine's
/// connections. Cheap to clone; clones share everything. Its layers are not part of its
/// type, so that reordering them is not a breaking change.
pub struct Outbound<B, RB> {
    inner: Inner2<B, RB>,
}

impl<B, RB> Clone for Outbound<B, RB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B, RB> fmt::Debug for Outbound<B, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl<B, RB> Service<http::Request<B>> for Outbound<B, RB> {
    type Response = http::Response<OutboundBody<RB>>;
    type Error = BoxError;
    type Future = <Inner2<B, RB> as Service<http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.inner.call(req)
    }
}

pin_project! {
    /// The response body of an [`Outbound`] call: the endpoint's body (`RB`), with the
    /// call's and the attempt's telemetry and the route's deadline on it.
    pub struct OutboundBody<RB> {
        #[pin]
        inner: TelemetryBody<TimeoutBody<TelemetryBody<RB>>>,
    }
}

impl<RB> fmt::Debug for OutboundBody<RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundBody").finish_non_exhaustive()
    }
}

impl<RB> Body for OutboundBody<RB>
where
    RB: Body,
    RB::Error: Into<BoxError>,
{
    type Data = RB::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::{ServiceExt as _, service_fn};

    use super::*;
    use crate::config::StaticConfig;
    use crate::xds::resource::Cluster;

    /// An engine whose endpoints answer 200 and count how often the connector made one.
    fn engine(made: Arc<AtomicUsize>) -> Engine<String, String> {
        Engine::new(ClientOptions::new(), None, move |_upstream| {
            move |_c: &Arc<Cluster>, _a: SocketAddr| {
                made.fetch_add(1, Ordering::Relaxed);
                service_fn(|_req: http::Request<RetryBody<String>>| async {
                    Ok::<_, Infallible>(http::Response::new(String::from("ok")))
                })
            }
        })
    }

    /// Each target's own config (a config per target, as xDS gives), both routing to the
    /// same cluster.
    fn config() -> TargetConfig {
        StaticConfig::new()
            .route_all_to("shared")
            .endpoints("shared", ["127.0.0.1:1".parse().unwrap()])
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn targets_of_one_engine_share_a_cluster_they_both_route_to() {
        let made = Arc::new(AtomicUsize::new(0));
        let engine = engine(made.clone());
        let (_a_tx, a_rx) = config::channel(config());
        let (_b_tx, b_rx) = config::channel(config());
        let a = engine.outbound(a_rx, "a");
        let b = engine.outbound(b_rx, "b");
        for (svc, host) in [(&a, "a"), (&b, "b")] {
            let req = http::Request::get(format!("http://{host}/x"))
                .body(String::new())
                .unwrap();
            let rsp = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(rsp.status(), http::StatusCode::OK);
        }
        assert_eq!(
            made.load(Ordering::Relaxed),
            1,
            "one endpoint service for both targets"
        );
        assert!(format!("{engine:?}").contains("shared"), "{engine:?}");
    }

    #[tokio::test]
    async fn an_engine_without_an_xds_client_cannot_resolve_xds_targets() {
        let engine = engine(Arc::default());
        let err = engine.resolve("xds:///greeter").await.unwrap_err();
        assert!(
            matches!(&err, ResolveError::NoXdsClient { target } if target == "xds:///greeter"),
            "{err:?}"
        );
        assert!(engine.targets().is_empty());
    }
}
