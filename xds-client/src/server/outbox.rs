//! A stream's responses on their way to its client, bounded by what the client has left
//! unread.
//!
//! The state pushes a response under its lock and never waits on a client, so the queue
//! cannot make the push wait when it is full; instead, a client that has left more than
//! [`MAX_UNREAD_RESPONSES`] responses or [`MAX_UNREAD_BYTES`] bytes unread (a client that
//! stopped reading, or reads far slower than the snapshot changes) has its stream ended with
//! `RESOURCE_EXHAUSTED`: what is queued is dropped with the stream, nothing more is queued,
//! and the client, once it reconnects, is sent the current state, which is all a state of
//! the world (or a delta stream's fresh start) needs. So a stream holds at most those bounds
//! of responses, whatever its client does.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;
#[cfg(test)]
use tokio::sync::mpsc::error::TryRecvError;
use tonic::Status;

/// The most responses a stream's client may leave unread.
pub(crate) const MAX_UNREAD_RESPONSES: usize = 4096;
/// The most bytes of responses (encoded) a stream's client may leave unread.
pub(crate) const MAX_UNREAD_BYTES: usize = 64 << 20;

/// The state's end of a stream's queue.
pub(crate) struct Outbox<T> {
    tx: mpsc::UnboundedSender<(usize, Result<T, Status>)>,
    unread: Arc<Unread>,
}

/// The stream's end: what tonic sends to the client.
#[derive(Debug)]
pub(crate) struct Inbox<T> {
    rx: mpsc::UnboundedReceiver<(usize, Result<T, Status>)>,
    unread: Arc<Unread>,
    /// The overflow was reported: the stream has ended.
    ended: bool,
}

#[derive(Debug, Default)]
struct Unread {
    responses: AtomicUsize,
    bytes: AtomicUsize,
    /// Set once the client left too much unread; the inbox then ends the stream.
    overflowed: AtomicBool,
}

/// A new stream's queue.
pub(crate) fn outbox<T>() -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let unread = Arc::new(Unread::default());
    (
        Outbox {
            tx,
            unread: unread.clone(),
        },
        Inbox {
            rx,
            unread,
            ended: false,
        },
    )
}

impl<T: prost::Message> Outbox<T> {
    /// Queues `response`, unless the client has left too much unread: then the stream ends
    /// with `RESOURCE_EXHAUSTED` and this and every later response are dropped. A failed
    /// send means the client is gone (its reader task removes the stream).
    pub(crate) fn send(&self, response: T) {
        let unread = &*self.unread;
        if unread.overflowed.load(Ordering::Acquire) {
            return;
        }
        let size = response.encoded_len();
        let responses = unread.responses.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = unread.bytes.fetch_add(size, Ordering::AcqRel) + size;
        if responses > MAX_UNREAD_RESPONSES || bytes > MAX_UNREAD_BYTES {
            unread.overflowed.store(true, Ordering::Release);
            // Wakes the inbox, which ends the stream without reading what is queued.
            let _ = self.tx.send((0, Err(overflow())));
            return;
        }
        let _ = self.tx.send((size, Ok(response)));
    }
}

impl<T> Outbox<T> {
    /// Ends the stream with `status` once the client has read what is queued.
    pub(crate) fn end(&self, status: Status) {
        let _ = self.tx.send((0, Err(status)));
    }
}

fn overflow() -> Status {
    Status::resource_exhausted(format!(
        "the client left more than {MAX_UNREAD_RESPONSES} responses or {MAX_UNREAD_BYTES} \
         bytes unread; reconnect to be sent the current state"
    ))
}

impl<T> Inbox<T> {
    /// Takes `item` off the queue: what the client is now sent.
    fn take(&mut self, (size, item): (usize, Result<T, Status>)) -> Result<T, Status> {
        if item.is_ok() {
            self.unread.responses.fetch_sub(1, Ordering::AcqRel);
            self.unread.bytes.fetch_sub(size, Ordering::AcqRel);
        }
        item
    }

    /// Whether the client left too much unread: then the stream ends now, with
    /// `RESOURCE_EXHAUSTED`, instead of sending what is queued.
    fn overflowed(&mut self) -> Option<Result<T, Status>> {
        if self.ended || !self.unread.overflowed.load(Ordering::Acquire) {
            return None;
        }
        self.ended = true;
        // Nothing more comes in, and what is queued is freed now.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        Some(Err(overflow()))
    }

    /// The next queued item without waiting (for tests that drive the state by hand).
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Result<Result<T, Status>, TryRecvError> {
        if let Some(end) = self.overflowed() {
            return Ok(end);
        }
        if self.ended {
            return Err(TryRecvError::Disconnected);
        }
        let item = self.rx.try_recv()?;
        Ok(self.take(item))
    }
}

impl<T> Stream for Inbox<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(end) = self.overflowed() {
            return Poll::Ready(Some(end));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(self.rx.poll_recv(cx));
        Poll::Ready(item.map(|item| self.take(item)))
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
        assert_eq!(inbox.rx.len(), MAX_UNREAD_RESPONSES);
        out.send(response(10));
        out.send(response(10));
        assert_eq!(inbox.rx.len(), MAX_UNREAD_RESPONSES + 1, "one end, no more");
        let end = inbox.try_recv().unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(end.message().contains("unread"), "{end:?}");
        assert!(inbox.try_recv().is_err(), "nothing after the end");
        assert!(
            inbox.rx.is_closed() && inbox.rx.is_empty(),
            "the queue is dropped"
        );
    }

    #[test]
    fn the_unread_bytes_are_bounded_too() {
        let (out, mut inbox) = outbox();
        let size = response(1 << 20).encoded_len();
        let fit = MAX_UNREAD_BYTES / size;
        for _ in 0..fit {
            out.send(response(1 << 20));
        }
        assert!(!inbox.unread.overflowed.load(Ordering::Acquire));
        out.send(response(1 << 20));
        assert_eq!(
            inbox.try_recv().unwrap().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn an_ended_stream_sends_what_is_queued_then_its_status() {
        let (out, mut inbox) = outbox();
        out.send(response(1));
        out.end(Status::unavailable("closed"));
        assert!(inbox.try_recv().unwrap().is_ok());
        assert_eq!(
            inbox.try_recv().unwrap().unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }
}
