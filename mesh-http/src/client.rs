//! [`MeshClient`]: hosts resolved to mesh targets, requests sent through the outbound stack.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use meshwork_core::client::{self, ClientOptions, Outbound, OutboundBody};
use meshwork_core::config::{ConfigReceiver, TargetConfig};
use meshwork_core::xds::client::XdsClient;
use meshwork_core::xds::resource::Cluster;
use tower::{BoxError, Service, ServiceExt as _};

use crate::connect::Endpoint;
use crate::{Body, Error};

/// Options of a [`MeshClient`]: the engine's [`ClientOptions`] (identity, upstream policy,
/// the wait for a host's first xDS config, telemetry, balancer defaults, how many hosts are
/// kept and how long a failure is remembered, HTTP/2 to every cluster), the same type
/// meshwork-grpc's channel takes. Each host of an xDS client is one target
/// ([`ClientOptions::max_targets`] bounds the hosts kept).
pub type MeshClientOptions = ClientOptions;

type Engine = client::Engine<Body, Incoming>;

#[derive(Clone)]
enum Targets {
    /// One config for every host; its virtual hosts are chosen by the request's authority.
    One(Outbound<Body, Incoming>),
    /// A target per host, resolved on first use.
    Xds(Engine),
}

/// An HTTP client into the mesh; see the [crate docs](crate). Cheap to clone; clones share
/// the targets, clusters, connections and config.
#[derive(Clone)]
pub struct MeshClient {
    targets: Targets,
}

impl fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MeshClient");
        if let Targets::Xds(engine) = &self.targets {
            let hosts: Vec<String> = engine
                .targets()
                .into_iter()
                .map(|t| t.strip_prefix(XDS_PREFIX).map(str::to_owned).unwrap_or(t))
                .collect();
            d.field("hosts", &hosts);
        }
        d.finish_non_exhaustive()
    }
}

impl MeshClient {
    /// A client over a hand-written config, for every host: the config's virtual hosts are
    /// matched against each request's authority. Must be called within a tokio runtime.
    pub fn from_static(config: TargetConfig, options: MeshClientOptions) -> Self {
        Self {
            targets: Targets::One(engine(options, None).outbound_static(config)),
        }
    }

    /// A client following the configs published on `config`, for every host. Must be
    /// called within a tokio runtime.
    pub fn from_config(config: ConfigReceiver, options: MeshClientOptions) -> Self {
        Self {
            targets: Targets::One(engine(options, None).outbound(config, "static")),
        }
    }

    /// A client whose hosts are xDS targets of `client`: a request to `http://greeter/hi`
    /// goes where `xds:///greeter` would (the listener named by the bootstrap's
    /// `client_default_listener_resource_name_template`, the virtual host chosen by
    /// `greeter`). The authority is the target name as written, port included
    /// (`http://greeter:8080/` is `xds:///greeter:8080`).
    ///
    /// Hosts are watched on first use and kept while they are used, up to
    /// [`ClientOptions::max_targets`]: the first request to a host waits, at most
    /// [`ClientOptions::ready_timeout`], for its first complete config; later configs
    /// apply as they arrive, and if the host's config later turns into an error the last
    /// good one keeps serving. A host that fails to resolve fails at once for
    /// [`ClientOptions::negative_ttl`], then the next request tries again. Must be
    /// called within a tokio runtime.
    pub fn from_xds(client: &XdsClient, options: MeshClientOptions) -> Self {
        Self {
            targets: Targets::Xds(engine(options, Some(client.clone()))),
        }
    }

    /// Resolves `host` (an authority: `greeter`, `greeter:8080`) ahead of its first
    /// request, waiting for its config as that request would. With a static config this
    /// does nothing.
    pub async fn resolve(&self, host: &str) -> Result<(), Error> {
        self.outbound_for(host).await.map(drop)
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
        let (req, authority) = normalize(req)?;
        let outbound = self.outbound_for(authority.as_str()).await?;
        // Boxed as a `dyn Future + Send`, so that the compiler need not prove the stack's
        // future `Send` for every lifetime of the boxed errors inside it (a known
        // limitation of async Send inference).
        let call: OutboundCall = Box::pin(outbound.oneshot(req));
        let rsp = call.await.map_err(Error::stack)?;
        Ok(rsp.map(|b| b.boxed_unsync()))
    }

    /// The outbound service of `host` (an authority, in any case).
    async fn outbound_for(&self, host: &str) -> Result<Outbound<Body, Incoming>, Error> {
        match &self.targets {
            Targets::One(outbound) => Ok(outbound.clone()),
            Targets::Xds(engine) => engine
                .resolve(&xds_target(host))
                .await
                .map_err(Error::resolve),
        }
    }
}

/// One call through an [`Outbound`], boxed as a `dyn Future + Send` (see `send`).
type OutboundCall =
    Pin<Box<dyn Future<Output = Result<Response<OutboundBody<Incoming>>, BoxError>> + Send>>;

/// A host `h` is the xDS target `xds:///h`.
const XDS_PREFIX: &str = "xds:///";

/// `xds:///` and `host` lowercased, in one allocation.
fn xds_target(host: &str) -> String {
    let mut target = String::with_capacity(XDS_PREFIX.len() + host.len());
    target.push_str(XDS_PREFIX);
    target.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    target
}

/// The engine of a client: its connections are hyper-util clients over TCP or SPIFFE mTLS,
/// HTTP/1.1 or HTTP/2 as each cluster says.
fn engine(options: ClientOptions, xds: Option<XdsClient>) -> Engine {
    Engine::new(options, xds, |upstream| {
        move |cluster: &Arc<Cluster>, address| {
            Endpoint::new(
                cluster,
                address,
                upstream.identity(),
                upstream.policy(),
                upstream.http2_prior_knowledge(),
            )
        }
    })
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

/// Makes the URI absolute (`http://host/path`) and returns its authority (the host).
fn normalize(mut req: Request<Body>) -> Result<(Request<Body>, Authority), Error> {
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
    Ok((req, authority))
}
