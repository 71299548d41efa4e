//! The balancer's response future: wait for a ready endpoint if none is, check the picked
//! handle's readiness, call it, and record the outcome.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{BoxError, Service};

use super::endpoint::Endpoint;
use super::error::{EndpointError, NoHealthyEndpoint};
use super::{AvoidEndpoints, Inner, Pick, RequestHash, ServedBy};
use crate::outlier::Outcome;

/// How many picked endpoints may turn out broken (their handle fails its readiness check)
/// before a call gives up with the last one's error.
const MAX_REPICKS: u32 = 3;

/// Counts a call in flight on an endpoint from its pick until the response (or the error)
/// arrives or the future is dropped.
pub(crate) struct InFlight<S> {
    pub(crate) endpoint: Arc<Endpoint<S>>,
    pub(crate) address: SocketAddr,
    /// The handle's id, for a failure report.
    pub(crate) id: u64,
    start: Instant,
    /// Whether the response (or the error) arrived and was recorded.
    answered: bool,
}

impl<S> InFlight<S> {
    pub(crate) fn new(endpoint: Arc<Endpoint<S>>, address: SocketAddr, id: u64) -> Self {
        endpoint.load.start();
        Self {
            endpoint,
            address,
            id,
            start: Instant::now(),
            answered: false,
        }
    }

    /// The call never reached the endpoint (its handle turned out broken): it says nothing
    /// about the endpoint's latency.
    fn discard(&mut self) {
        self.answered = true;
    }

    /// Records the response's latency; the call is no longer in flight once this drops.
    fn answered(&mut self) {
        self.endpoint.load.observe(self.start.elapsed());
        self.answered = true;
    }
}

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        if !self.answered {
            // Given up on before the endpoint answered (a timeout, a cancelled call): its
            // latency is at least this long. tower's PeakEwma likewise records the time when
            // its handle drops; without it, an endpoint that never answers looks as fast as
            // its first guess once its callers give up, and keeps its share of calls.
            self.endpoint.load.observe_at_least(self.start.elapsed());
        }
        self.endpoint.load.end();
    }
}

/// A picked endpoint: its in-flight count and a clone of its service handle.
pub(crate) struct Picked<S> {
    pub(crate) in_flight: InFlight<S>,
    pub(crate) service: S,
}

type Wait<S> = Pin<Box<dyn Future<Output = Result<Picked<S>, BoxError>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<S, R, F> {
        // No endpoint was ready: waiting for the driver's next publication.
        Waiting { request: Option<Box<R>>, wait: Wait<S> },
        // The picked handle was not ready when checked (a multiplexed connection is ready at
        // once, and is called at once).
        Picked { parked: Option<Box<(R, Picked<S>)>> },
        Called { #[pin] future: F, in_flight: Option<InFlight<S>> },
        Failed { error: Option<BoxError> },
    }
}

pin_project! {
    /// The future [`Balancer`](super::Balancer) returns: the endpoint's response, with
    /// [`ServedBy`] in its extensions, and the call's latency and outcome recorded.
    ///
    /// The states that keep the request while the call waits (for an endpoint, for the
    /// picked handle's readiness) keep it in a box of their own: the future every call
    /// carries, and every layer above embeds and moves, is only as large as the common
    /// case, the endpoint's own future.
    pub struct ResponseFuture<S, B>
    where
        S: Service<http::Request<B>>,
    {
        #[pin]
        state: State<S, http::Request<B>, S::Future>,
        inner: Arc<Inner<S>>,
        repicks: u32,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<http::Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Picked { .. } => "picked",
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<http::Request<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    /// The future of a call that picked `pick`: a ready endpoint is called here, at once.
    pub(crate) fn new(pick: Pick<S>, request: http::Request<B>, inner: &Arc<Inner<S>>) -> Self {
        let mut repicks = 0;
        let state = Next {
            inner,
            repicks: &mut repicks,
            cx: &mut Context::from_waker(Waker::noop()),
        }
        .state(pick, request);
        Self {
            state,
            inner: inner.clone(),
            repicks,
        }
    }
}

type StateOf<S, B> = State<S, http::Request<B>, <S as Service<http::Request<B>>>::Future>;

/// What works out the state that follows a pick: the balancer, the call's repicks so far,
/// and the context a picked handle's readiness is checked with (the call's own waker when
/// the future is polled; a no-op one in `call`, where a handle not ready yet is checked
/// again, with the call's waker, at the first poll).
struct Next<'a, 'c, S> {
    inner: &'a Arc<Inner<S>>,
    repicks: &'a mut u32,
    cx: &'a mut Context<'c>,
}

impl<S> Next<'_, '_, S>
where
    S: Clone + Send + Sync + 'static,
{
    /// The state that follows a pick.
    fn state<B>(self, pick: Pick<S>, request: http::Request<B>) -> StateOf<S, B>
    where
        S: Service<http::Request<B>>,
        S::Error: Into<BoxError>,
    {
        match pick {
            Pick::Found(picked) => self.ready_or_parked(picked, request),
            Pick::NotReady => {
                let hash = request.extensions().get::<RequestHash>().map(|h| h.value());
                let avoid = request.extensions().get::<AvoidEndpoints>().cloned();
                State::Waiting {
                    request: Some(Box::new(request)),
                    wait: Box::pin(wait(self.inner.clone(), hash, avoid)),
                }
            }
            Pick::Unusable { known } => State::Failed {
                error: Some(NoHealthyEndpoint { known }.into()),
            },
            Pick::Failing(e) => State::Failed {
                error: Some(e.into()),
            },
        }
    }

    /// Calls the picked handle if it is ready, else parks the call until it is.
    fn ready_or_parked<B>(self, mut picked: Picked<S>, request: http::Request<B>) -> StateOf<S, B>
    where
        S: Service<http::Request<B>>,
        S::Error: Into<BoxError>,
    {
        match picked.service.poll_ready(self.cx) {
            Poll::Ready(ready) => self.after_ready(picked, request, ready),
            Poll::Pending => State::Picked {
                parked: Some(Box::new((request, picked))),
            },
        }
    }

    /// What follows the picked handle's readiness check: the call, or (the connection
    /// behind the handle is gone) a report to the driver and another pick.
    fn after_ready<B>(
        self,
        mut p: Picked<S>,
        request: http::Request<B>,
        ready: Result<(), S::Error>,
    ) -> StateOf<S, B>
    where
        S: Service<http::Request<B>>,
        S::Error: Into<BoxError>,
    {
        let e = match ready {
            Ok(()) => {
                return State::Called {
                    future: p.service.call(request),
                    in_flight: Some(p.in_flight),
                };
            }
            Err(e) => e,
        };
        let error: BoxError = e.into();
        let (address, id) = (p.in_flight.address, p.in_flight.id);
        tracing::debug!(endpoint = %address, %error, "endpoint handle broken");
        // Not a call the endpoint was slow to answer: no latency sample.
        p.in_flight.discard();
        drop(p);
        self.inner.report_broken(address, id);
        if *self.repicks >= MAX_REPICKS {
            return State::Failed {
                error: Some(
                    EndpointError {
                        address,
                        source: error,
                    }
                    .into(),
                ),
            };
        }
        *self.repicks += 1;
        let hash = request.extensions().get::<RequestHash>().map(|h| h.value());
        let pick = self
            .inner
            .pick(hash, request.extensions().get::<AvoidEndpoints>());
        self.state(pick, request)
    }
}

/// Picks again each time the driver publishes, until an endpoint is ready (or none can ever
/// be). Only calls that found nothing ready come here; the caller's timeout bounds the wait.
async fn wait<S>(
    inner: Arc<Inner<S>>,
    hash: Option<u64>,
    avoid: Option<AvoidEndpoints>,
) -> Result<Picked<S>, BoxError>
where
    S: Clone + Send + Sync + 'static,
{
    loop {
        let notified = inner.published.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the pick, so a publication between the two is not missed.
        notified.as_mut().enable();
        match inner.pick(hash, avoid.as_ref()) {
            Pick::Found(picked) => return Ok(picked),
            Pick::Unusable { known } => return Err(NoHealthyEndpoint { known }.into()),
            Pick::Failing(e) => return Err(e.into()),
            Pick::NotReady => notified.await,
        }
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    type Output = Result<http::Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let e = error
                        .take()
                        .unwrap_or_else(|| NoHealthyEndpoint { known: 0 }.into());
                    return Poll::Ready(Err(e));
                }
                StateProj::Waiting { request, wait } => match ready!(wait.as_mut().poll(cx)) {
                    Ok(picked) => {
                        let Some(req) = request.take() else {
                            return Poll::Ready(Err(NoHealthyEndpoint { known: 0 }.into()));
                        };
                        let next = Next {
                            inner: this.inner,
                            repicks: this.repicks,
                            cx,
                        };
                        next.ready_or_parked(picked, *req)
                    }
                    Err(e) => State::Failed { error: Some(e) },
                },
                StateProj::Picked { parked } => {
                    let Some(p) = parked.as_mut() else {
                        return Poll::Ready(Err(NoHealthyEndpoint { known: 0 }.into()));
                    };
                    let ready = ready!(p.1.service.poll_ready(cx));
                    let Some(p) = parked.take() else {
                        return Poll::Ready(Err(NoHealthyEndpoint { known: 0 }.into()));
                    };
                    let (req, picked) = *p;
                    let next = Next {
                        inner: this.inner,
                        repicks: this.repicks,
                        cx,
                    };
                    next.after_ready(picked, req, ready)
                }
                StateProj::Called { future, in_flight } => {
                    let result = ready!(future.poll(cx));
                    let Some(mut f) = in_flight.take() else {
                        // Polled after completion: the inner future decides what that means.
                        return Poll::Ready(result.map_err(Into::into));
                    };
                    f.answered();
                    return Poll::Ready(match result {
                        Ok(mut response) => {
                            if let Some(o) = &f.endpoint.outlier {
                                o.record(Outcome::from_response(&response));
                            }
                            response.extensions_mut().insert(ServedBy::new(f.address));
                            Ok(response)
                        }
                        Err(e) => {
                            if let Some(o) = &f.endpoint.outlier {
                                o.record(Outcome::LocalOriginFailure);
                            }
                            Err(EndpointError {
                                address: f.address,
                                source: e.into(),
                            }
                            .into())
                        }
                    });
                }
            };
            this.state.set(next);
        }
    }
}
