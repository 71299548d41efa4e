//! Endpoint connections: one hyper HTTP/2 connection per endpoint, dialled by
//! [`meshwork_core::upstream::Dialer`] (TCP, with SPIFFE mTLS when the cluster asks for TLS),
//! ready once the server's preface arrives and retired at its deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshwork_core::executor::BoxedExecutor;
use meshwork_core::retry::{RefusedStream, RetryBody};
use meshwork_core::upstream::{
    ConnectError, ConnectionRetired, Dialer, ServerPreface, UpstreamIdentity, UpstreamPolicy,
};
use meshwork_core::xds::resource::Cluster;
use tokio::time::Instant;
use tower::BoxError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

type Sender = hyper::client::conn::http2::SendRequest<RetryBody<tonic::body::Body>>;

/// A made connection: its sender and when to retire it.
#[derive(Clone)]
struct Connection {
    sender: Sender,
    retire_at: Option<Instant>,
}

/// One endpoint: one HTTP/2 connection (TCP, or TLS with SPIFFE mTLS when the cluster asks
/// for it), dialled in `poll_ready`. Connected, it is a cheap handle: clones share the
/// connection and multiplex their calls on it. Its `poll_ready` fails once the connection
/// is gone, or once it is due to retire ([`ConnectionRetired`]: its maximum age or the
/// server certificate's expiry), which tells the balancer to make a new endpoint and to
/// send calls elsewhere meanwhile; calls already on the old connection finish there.
pub(crate) struct Endpoint {
    address: SocketAddr,
    /// `address` as a URI authority, for requests whose URI names none (every socket
    /// address is one; `None` is not expected).
    authority: Option<Authority>,
    dialer: Dialer,
    connection: Option<Connection>,
    // Only ever touched through `&mut self` (`get_mut`, no locking): the mutex is there to
    // make the endpoint `Sync`, which the dial future is not.
    connecting: Option<std::sync::Mutex<BoxFuture<Result<Connection, BoxError>>>>,
}

impl Clone for Endpoint {
    /// A clone of a connected endpoint shares its connection; a clone of one not connected
    /// yet dials its own.
    fn clone(&self) -> Self {
        Self {
            address: self.address,
            authority: self.authority.clone(),
            dialer: self.dialer.clone(),
            connection: self.connection.clone(),
            connecting: None,
        }
    }
}

impl Endpoint {
    pub(crate) fn new(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &UpstreamIdentity,
        policy: &UpstreamPolicy,
    ) -> Self {
        Self {
            address,
            authority: Authority::try_from(address.to_string().as_str()).ok(),
            dialer: Dialer::with_policy(cluster, address, identity, policy, vec![b"h2".to_vec()]),
            connection: None,
            connecting: None,
        }
    }
}

/// Aborts the connection's task unless disarmed: a connect that fails or times out after
/// the HTTP/2 handshake leaves nothing running.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Dials, runs the HTTP/2 handshake and waits for the server's preface, all within the
/// cluster's connect timeout (as grpc-go's transport counts as ready only once the server's
/// SETTINGS arrived); the connection is then driven by a task of its own until it closes.
async fn connect(dialer: Dialer) -> Result<Connection, BoxError> {
    let address = dialer.address();
    let timeout = dialer.timeout();
    let deadline = Instant::now() + timeout;
    let stream = dialer.dial().await?;
    let retire_at = dialer.retire_at(&stream);
    let (io, preface) = ServerPreface::watch(address, stream);
    let ready = async move {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(BoxedExecutor)
            .handshake(TokioIo::new(io))
            .await?;
        let mut task = AbortOnDrop(Some(tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(endpoint = %address, %error, "HTTP/2 connection ended");
            }
        })));
        preface.wait().await?;
        task.0 = None;
        Ok::<_, BoxError>(sender)
    };
    let sender = match tokio::time::timeout_at(deadline, ready).await {
        Ok(r) => r?,
        Err(_) => return Err(ConnectError::Timeout { address, timeout }.into()),
    };
    Ok(Connection { sender, retire_at })
}

impl tower::Service<http::Request<RetryBody<tonic::body::Body>>> for Endpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.connection.is_none() {
            let dialer = self.dialer.clone();
            let connecting = self
                .connecting
                .get_or_insert_with(|| std::sync::Mutex::new(Box::pin(connect(dialer))))
                .get_mut()
                .unwrap_or_else(|e| e.into_inner());
            let result = std::task::ready!(connecting.as_mut().poll(cx));
            self.connecting = None;
            self.connection = Some(result?);
        }
        match &mut self.connection {
            Some(c) if c.retire_at.is_some_and(|t| t <= Instant::now()) => {
                Poll::Ready(Err(ConnectionRetired::new(self.address).into()))
            }
            Some(c) => c.sender.poll_ready(cx).map_err(Into::into),
            None => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: http::Request<RetryBody<tonic::body::Body>>) -> Self::Future {
        // An absolute URI gives the HTTP/2 request its `:scheme` and `:authority`: the
        // caller's authority when it set one, else the endpoint's address. Built from the
        // URI's parts (shared bytes), not by formatting and re-parsing strings: this runs
        // on every call.
        if let Err(e) = absolute_uri(req.uri_mut(), self.authority.as_ref(), self.address) {
            return Box::pin(async move { Err(e) });
        }
        let Some(Connection { sender, .. }) = &mut self.connection else {
            return Box::pin(async { Err("endpoint called before it was ready".into()) });
        };
        let fut = sender.send_request(req);
        Box::pin(async move { fut.await.map_err(classify) })
    }
}

/// Makes `uri` absolute: scheme `http` (the transport, TLS or not, is the connection's
/// business), the URI's own authority or else the endpoint's (`authority`, `address`
/// formatted), and its path (`/` if none).
fn absolute_uri(
    uri: &mut Uri,
    authority: Option<&Authority>,
    address: SocketAddr,
) -> Result<(), BoxError> {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    if parts.authority.is_none() {
        parts.authority = Some(match authority {
            Some(a) => a.clone(),
            None => Authority::try_from(address.to_string().as_str())?,
        });
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts)?;
    Ok(())
}

/// hyper's error, wrapped in [`RefusedStream`] when the server reset the stream with
/// `REFUSED_STREAM` (the reason is on the `h2::Error` in hyper's source chain), so that the
/// retry layer's `refused-stream` condition can see it.
fn classify(err: hyper::Error) -> BoxError {
    if refused_stream(&err) {
        Box::new(RefusedStream::new(err))
    } else {
        Box::new(err)
    }
}

fn refused_stream(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    // Source chains are short; the bound guards against a cyclic one.
    for _ in 0..16 {
        let Some(e) = cur else { return false };
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use meshwork_core::config::RetryOn;
    use meshwork_core::retry::error_conditions;
    use tokio::net::TcpListener;
    use tower::{Service as _, ServiceExt as _};

    use super::*;

    /// An HTTP/2 server that resets every stream with `reason`.
    async fn resetting_server(reason: h2::Reason) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                return;
            };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                respond.send_reset(reason);
            }
        });
        address
    }

    fn cluster() -> Cluster {
        Cluster::eds("c")
    }

    async fn call(address: SocketAddr) -> BoxError {
        let cluster = cluster();
        let req = http::Request::post("/svc/Method")
            .body(RetryBody::passthrough(tonic::body::Body::empty()))
            .unwrap();
        Endpoint::new(
            &cluster,
            address,
            &UpstreamIdentity::None,
            &UpstreamPolicy::new(),
        )
        .oneshot(req)
        .await
        .expect_err("the stream is reset")
    }

    #[tokio::test]
    async fn a_closed_connection_fails_readiness_and_a_clone_shares_the_connection() {
        // A server that answers one stream per connection, then closes it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    if let Some(Ok((_req, mut respond))) = conn.accept().await {
                        let rsp = http::Response::new(());
                        respond.send_response(rsp, true).unwrap();
                    }
                    conn.graceful_shutdown();
                    let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                });
            }
        });
        let req = || {
            http::Request::post("/svc/Method")
                .body(RetryBody::passthrough(tonic::body::Body::empty()))
                .unwrap()
        };
        let mut endpoint = Endpoint::new(
            &cluster(),
            address,
            &UpstreamIdentity::None,
            &UpstreamPolicy::new(),
        );
        endpoint.ready().await.unwrap();
        let mut clone = endpoint.clone();
        let rsp = clone.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one connection"
        );
        // The server closes the connection: readiness fails from then on (the balancer then
        // makes a new endpoint, which dials again).
        let closed = async {
            loop {
                if endpoint.ready().await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        // A guard against a hang, not a synchronisation.
        tokio::time::timeout(std::time::Duration::from_secs(10), closed)
            .await
            .expect("readiness fails once the connection is closed");
    }

    #[test]
    fn a_request_uri_is_made_absolute_with_its_own_or_the_endpoints_authority() {
        let address: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let endpoint_authority = Authority::from_static("127.0.0.1:8080");
        let cases = [
            ("/svc/Method?x=1", "http://127.0.0.1:8080/svc/Method?x=1"),
            ("https://echo.mesh:443/svc/M", "http://echo.mesh:443/svc/M"),
            ("http://echo.mesh", "http://echo.mesh/"),
            ("/", "http://127.0.0.1:8080/"),
        ];
        for (given, want) in cases {
            for authority in [Some(&endpoint_authority), None] {
                let mut uri: Uri = given.parse().unwrap();
                absolute_uri(&mut uri, authority, address).unwrap();
                assert_eq!(uri.to_string(), want, "{given}");
            }
        }
        let v6: SocketAddr = "[::1]:50051".parse().unwrap();
        let mut uri: Uri = "/svc/M".parse().unwrap();
        absolute_uri(&mut uri, None, v6).unwrap();
        assert_eq!(uri.to_string(), "http://[::1]:50051/svc/M");
    }

    #[tokio::test]
    async fn a_refused_stream_is_marked_for_the_retry_layer() {
        let e = call(resetting_server(h2::Reason::REFUSED_STREAM).await).await;
        assert!(e.is::<RefusedStream>(), "{e:?}");
        assert!(error_conditions(e.as_ref()).contains(RetryOn::REFUSED_STREAM));
    }

    #[tokio::test]
    async fn another_reset_is_not_a_refused_stream() {
        let e = call(resetting_server(h2::Reason::INTERNAL_ERROR).await).await;
        assert!(!e.is::<RefusedStream>(), "{e:?}");
        assert!(!error_conditions(e.as_ref()).contains(RetryOn::REFUSED_STREAM));
    }
}
