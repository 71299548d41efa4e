//! [`BoxedExecutor`]: the hyper executor the adapters' connections spawn their tasks with.

use std::future::Future;
use std::pin::Pin;

/// A hyper executor that boxes each future hyper hands it, then spawns it on the current
/// tokio runtime (as `hyper_util`'s `TokioExecutor` does, without the box).
///
/// hyper's HTTP/2 client spawns a task for every request (and one more for a request whose
/// body is not sent at once), and every one of them has the type of hyper's task enum,
/// whose largest variant is the whole connection: about 1.4 KB for a meshwork connection.
/// Spawned as it is, each request's task copies those bytes several times on its way into
/// the task's own allocation and on completion; boxed first, it is copied once, and the
/// task itself is a pointer. The copies are few instructions but many cache lines, which
/// is what a call costs when it finds the caches cold. tonic's own channel boxes every
/// future it spawns the same way, and so does `hyper_util`'s pooled client before it hands
/// one to its executor (so there `TokioExecutor` is the right one).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use hyper::rt::Executor;
/// use meshwork_core::executor::BoxedExecutor;
///
/// let (tx, rx) = tokio::sync::oneshot::channel();
/// BoxedExecutor.execute(async move {
///     let _ = tx.send(7);
/// });
/// assert_eq!(rx.await, Ok(7));
/// # }
/// ```
///
/// # Panics
///
/// Like `tokio::spawn`, `execute` panics outside a tokio runtime; hyper calls it from the
/// connection's own task, which runs on one.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxedExecutor;

impl<F> hyper::rt::Executor<F> for BoxedExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let future: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(future);
        tokio::spawn(future);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    /// The boxed task runs to completion on the current runtime.
    #[tokio::test]
    async fn runs_what_it_is_given() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        BoxedExecutor.execute(async move {
            let _ = tx.send("ran");
        });
        assert_eq!(rx.await, Ok("ran"));
    }
}
