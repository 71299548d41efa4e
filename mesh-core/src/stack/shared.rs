//! A service shared by its clones without a buffer task: [`Shared`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use pin_project_lite::pin_project;
use tower::{BoxError, Service};

/// Shares one service among its clones, in place of a `tower::buffer::Buffer` (which costs a
/// channel send and a task hop per call).
///
/// `poll_ready` is always ready; each call's future locks the service, polls its readiness
/// and calls it, all at once, so no clone can take the readiness another saw. The inner
/// service is always polled with one waker of its own, which wakes every call waiting for it
/// (a service keeps only the last waker it is given, and several tasks wait on this one).
pub(crate) struct Shared<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    service: Mutex<T>,
    notify: Arc<Notify>,
    waker: Waker,
}

/// The calls waiting for the inner service to become ready.
#[derive(Default)]
struct Notify {
    waiters: Mutex<Vec<Waker>>,
    // Bumped on every wake, under the `waiters` lock: a call that saw the service pending
    // registers only if no wake came since it polled, or it would miss that wake.
    generation: AtomicU64,
}

impl Notify {
    fn lock(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `waker` unless a wake came after `seen`; false means poll again.
    fn register(&self, seen: u64, waker: &Waker) -> bool {
        let mut waiters = self.lock();
        if self.generation.load(Ordering::Acquire) != seen {
            return false;
        }
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
        true
    }
}

impl Wake for Notify {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waiters = {
            let mut waiters = self.lock();
            self.generation.fetch_add(1, Ordering::Release);
            std::mem::take(&mut *waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl<T> Shared<T> {
    pub(crate) fn new(service: T) -> Self {
        let notify = Arc::new(Notify::default());
        Self {
            inner: Arc::new(Inner {
                service: Mutex::new(service),
                waker: Waker::from(notify.clone()),
                notify,
            }),
        }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T, R> Service<R> for Shared<T>
where
    T: Service<R>,
    T::Error: Into<BoxError>,
{
    type Response = T::Response;
    type Error = BoxError;
    type Future = SharedFuture<T, R>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        SharedFuture {
            state: State::Waiting {
                request: Some(request),
                inner: self.inner.clone(),
            },
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<T, R, F> {
        Waiting { request: Option<R>, inner: Arc<Inner<T>> },
        Called { #[pin] future: F },
    }
}

pin_project! {
    /// The future of a [`Shared`] call: waits for the inner service to be ready, calls it,
    /// then is its future.
    pub(crate) struct SharedFuture<T, R>
    where
        T: Service<R>,
    {
        #[pin]
        state: State<T, R, T::Future>,
    }
}

impl<T, R> Future for SharedFuture<T, R>
where
    T: Service<R>,
    T::Error: Into<BoxError>,
{
    type Output = Result<T::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let future = match state.as_mut().project() {
                StateProj::Called { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Waiting { request, inner } => {
                    let seen = inner.notify.generation.load(Ordering::Acquire);
                    let mut service = inner.service.lock().unwrap_or_else(|e| e.into_inner());
                    match service.poll_ready(&mut Context::from_waker(&inner.waker)) {
                        Poll::Ready(Ok(())) => match request.take() {
                            Some(request) => service.call(request),
                            // Only `Called` follows a taken request.
                            None => unreachable!("a waiting call has its request"),
                        },
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Pending => {
                            drop(service);
                            if !inner.notify.register(seen, cx.waker()) {
                                // Woken since the poll: try again, but from the executor,
                                // not in a loop (a service that wakes itself at once, as
                                // tokio's budget does, would spin here).
                                cx.waker().wake_by_ref();
                            }
                            return Poll::Pending;
                        }
                    }
                }
            };
            state.set(State::Called { future });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn every_waiting_call_is_woken_when_the_service_becomes_ready() {
        let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
        handle.allow(0);
        let shared = Shared::new(mock);
        let mut calls: Vec<_> = (0..3)
            .map(|i| tokio_test::task::spawn(shared.clone().oneshot(i)))
            .collect();
        for c in &mut calls {
            assert!(c.poll().is_pending());
        }
        handle.allow(3);
        for c in &mut calls {
            assert!(c.is_woken());
        }
        for c in &mut calls {
            assert!(c.poll().is_pending()); // called, waiting for the response
        }
        for _ in 0..3 {
            let (req, send) = handle.next_request().await.unwrap();
            send.send_response(req * 10);
        }
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), i as u32 * 10);
        }
    }

    /// Pending once, waking itself at once (as tokio's cooperative budget does).
    struct YieldOnce(bool);

    impl Service<u32> for YieldOnce {
        type Response = u32;
        type Error = BoxError;
        type Future = std::future::Ready<Result<u32, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(Ok(()))
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }

        fn call(&mut self, req: u32) -> Self::Future {
            std::future::ready(Ok(req + 1))
        }
    }

    #[tokio::test]
    async fn a_service_that_wakes_itself_is_polled_again_from_the_executor() {
        let mut call = tokio_test::task::spawn(Shared::new(YieldOnce(false)).oneshot(1));
        assert!(call.poll().is_pending());
        assert!(call.is_woken());
        match call.poll() {
            Poll::Ready(Ok(2)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Many tasks on several threads share a service that is ready for one call at a time:
    /// every call completes (no wake is lost between a poll and its registration).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_on_several_threads_all_complete() {
        let inner = tower::ServiceBuilder::new()
            .concurrency_limit(1)
            .service_fn(|req: u32| async move {
                tokio::task::yield_now().await;
                Ok::<_, std::convert::Infallible>(req)
            });
        let shared = Shared::new(inner);
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        let n = t * 1000 + i;
                        assert_eq!(shared.clone().oneshot(n).await.unwrap(), n);
                    }
                })
            })
            .collect();
        let all = futures_util::future::try_join_all(tasks);
        // A guard against a hang, not a synchronisation.
        tokio::time::timeout(std::time::Duration::from_secs(30), all)
            .await
            .expect("every call completes")
            .unwrap();
    }

    #[tokio::test]
    async fn errors_from_readiness_reach_the_call() {
        let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
        handle.send_error("gone");
        let e = Shared::new(mock).oneshot(1).await.unwrap_err();
        assert_eq!(e.to_string(), "gone");
    }
}
