//! A stream's responses on their way to its client, bounded by what the client has left
//! unread.
//!
//! The state pushes a response under its lock and never waits on a client, so a full queue
//! cannot make the push wait; instead, a client that has left more than
//! [`MAX_UNREAD_RESPONSES`] responses, or more than [`MAX_UNREAD_BYTES`] bytes in more than
//! one response, unread (it stopped reading, or reads far slower than the snapshot
//! changes) has its stream ended with `RESOURCE_EXHAUSTED`: what is queued is freed at once,
//! nothing more is queued, and the client is told as soon as it reads again (a client that
//! never does holds the stream, not the responses). Once it reconnects it is sent the
//! current state, which is all a state of the world (or a delta stream's fresh start)
//! needs. One response larger than the byte bound still goes out on its own.
//!
//! Not a channel: the state's end must be able to free what the stream's end has not taken,
//! and the stream's end is not polled while the client's flow-control window is closed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use tonic::Status;

/// The most responses a stream's client may leave unread.
pub(crate) const MAX_UNREAD_RESPONSES: usize = 4096;
/// The most bytes of responses (encoded) a stream's client may leave unread, unless they
/// are one response.
pub(crate) const MAX_UNREAD_BYTES: usize = 64 << 20;

/// The state's end of a stream's queue. Dropping it ends the stream once what is queued
/// has been sent.
pub(crate) struct Outbox<T> {
    queue: Arc<Mutex<Queue<T>>>,
}

/// The stream's end: what tonic sends to the client.
pub(crate) struct Inbox<T> {
    queue: Arc<Mutex<Queue<T>>>,
    /// The stream has ended: nothing more comes.
    ended: bool,
}

struct Queue<T> {
    /// Responses with their encoded size, and at most one status ending the stream.
    items: VecDeque<(usize, Result<T, Status>)>,
    /// The responses in `items`, and their bytes.
    responses: usize,
    bytes: usize,
    /// The client left too much unread: the stream ends with `RESOURCE_EXHAUSTED`.
    overflowed: bool,
    /// The outbox is gone: the stream ends once `items` is empty.
    closed: bool,
    waker: Option<Waker>,
}

impl<T> Queue<T> {
    fn push(&mut self, item: (usize, Result<T, Status>)) {
        self.items.push_back(item);
        self.wake();
    }

    /// Wakes the stream's end, if it waits for something.
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A new stream's queue.
pub(crate) fn outbox<T>() -> (Outbox<T>, Inbox<T>) {
    let queue = Arc::new(Mutex::new(Queue {
        items: VecDeque::new(),
        responses: 0,
        bytes: 0,
        overflowed: false,
        closed: false,
        waker: None,
    }));
    (
        Outbox {
            queue: queue.clone(),
        },
        Inbox {
            queue,
            ended: false,
        },
    )
}

impl<T> std::fmt::Debug for Inbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

fn lock<T>(queue: &Mutex<Queue<T>>) -> MutexGuard<'_, Queue<T>> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: prost::Message> Outbox<T> {
    /// Queues `response`, unless the client has left too much unread: then the stream ends
    /// with `RESOURCE_EXHAUSTED`, what was queued is freed, and this and every later
    /// response are dropped.
    pub(crate) fn send(&self, response: T) {
        let mut q = lock(&self.queue);
        if q.overflowed || q.closed {
            return;
        }
        let size = response.encoded_len();
        let responses = q.responses + 1;
        let bytes = q.bytes.saturating_add(size);
        if responses > MAX_UNREAD_RESPONSES || (responses > 1 && bytes > MAX_UNREAD_BYTES) {
            q.overflowed = true;
            q.items.clear();
            q.items.shrink_to_fit();
            (q.responses, q.bytes) = (0, 0);
            q.wake();
            return;
        }
        (q.responses, q.bytes) = (responses, bytes);
        q.push((size, Ok(response)));
    }
}

impl<T> Outbox<T> {
    /// Ends the stream with `status` once the client has read what is queued.
    pub(crate) fn end(&self, status: Status) {
        let mut q = lock(&self.queue);
        if !q.overflowed && !q.closed {
            q.push((0, Err(status)));
        }
    }
}

impl<T> Drop for Outbox<T> {
    fn drop(&mut self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        q.wake();
    }
}

fn overflow() -> Status {
    Status::resource_exhausted(format!(
        "the client left more than {MAX_UNREAD_RESPONSES} responses or {MAX_UNREAD_BYTES} \
         bytes unread; reconnect to be sent the current state"
    ))
}

impl<T> Inbox<T> {
    /// The next item, if there is one now; `Err(true)` when the stream has ended,
    /// `Err(false)` when nothing is queued yet (then `waker`, if given, is woken by the
    /// next).
    fn next(&mut self, waker: Option<&Waker>) -> Result<Result<T, Status>, bool> {
        if self.ended {
            return Err(true);
        }
        let mut q = lock(&self.queue);
        if q.overflowed {
            self.ended = true;
            return Ok(Err(overflow()));
        }
        match q.items.pop_front() {
            Some((size, item)) => {
                if item.is_ok() {
                    q.responses -= 1;
                    q.bytes -= size;
                } else {
                    self.ended = true;
                }
                Ok(item)
            }
            None if q.closed => {
                self.ended = true;
                Err(true)
            }
            None => {
                if let Some(waker) = waker {
                    q.waker = Some(waker.clone());
                }
                Err(false)
            }
        }
    }

    /// The next queued item without waiting (for tests that drive the state by hand):
    /// `Err(true)` once the stream has ended, `Err(false)` when nothing is queued.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Result<Result<T, Status>, bool> {
        self.next(None)
    }

    /// The responses queued and not yet taken.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        lock(&self.queue).items.len()
    }
}

impl<T> Stream for Inbox<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.next(Some(cx.waker())) {
            Ok(item) => Poll::Ready(Some(item)),
            Err(true) => Poll::Ready(None),
            Err(false) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use prost::Message as _;

    use super::*;

    fn response(bytes: usize) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "v".repeat(bytes),
            ..Default::default()
        }
    }

    #[test]
    fn a_client_that_reads_is_sent_everything_and_one_that_does_not_is_ended() {
        let (out, mut inbox) = outbox();
        // Read as it comes: never more than one unread, however many are sent.
        for _ in 0..2 * MAX_UNREAD_RESPONSES {
            out.send(response(10));
            assert!(inbox.try_recv().unwrap().is_ok());
        }
        // Left unread: the bound is reached, and what follows is not queued.
        for _ in 0..MAX_UNREAD_RESPONSES {
            out.send(response(10));
        }
        assert_eq!(inbox.queued(), MAX_UNREAD_RESPONSES);
        out.send(response(10));
        assert_eq!(inbox.queued(), 0, "what was queued is freed at once");
        out.send(response(10));
        out.end(Status::unavailable("late"));
        assert_eq!(inbox.queued(), 0, "nothing more is queued");
        let end = inbox.try_recv().unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(end.message().contains("unread"), "{end:?}");
        assert!(inbox.try_recv().unwrap_err(), "nothing after the end");
    }

    #[test]
    fn the_unread_bytes_are_bounded_but_one_large_response_goes_out() {
        let (out, mut inbox) = outbox();
        let size = response(1 << 20).encoded_len();
        let fit = MAX_UNREAD_BYTES / size;
        for _ in 0..fit {
            out.send(response(1 << 20));
        }
        assert_eq!(inbox.queued(), fit);
        out.send(response(1 << 20));
        assert_eq!(
            inbox.try_recv().unwrap().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );

        // One response over the bound, alone in the queue, is sent.
        let (out, mut inbox) = outbox();
        out.send(response(MAX_UNREAD_BYTES + 1));
        assert!(inbox.try_recv().unwrap().is_ok());
        out.send(response(MAX_UNREAD_BYTES + 1));
        assert!(inbox.try_recv().unwrap().is_ok(), "read, so alone again");
    }

    #[test]
    fn an_ended_or_dropped_outbox_ends_the_stream_after_what_is_queued() {
        let (out, mut inbox) = outbox();
        out.send(response(1));
        out.end(Status::unavailable("closed"));
        assert!(inbox.try_recv().unwrap().is_ok());
        assert_eq!(
            inbox.try_recv().unwrap().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert!(inbox.try_recv().unwrap_err(), "ended");

        let (out, mut inbox) = outbox();
        out.send(response(1));
        assert!(inbox.try_recv().is_ok());
        assert!(!inbox.try_recv().unwrap_err(), "open, nothing queued");
        drop(out);
        assert!(inbox.try_recv().unwrap_err(), "ended");
    }
}
