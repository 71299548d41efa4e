use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The request body the retry layer sends: the caller's body as it is (no retries
/// possible), a replay of a buffered body (every attempt of a retriable call), or a buffered
/// prefix followed by the rest of a body too large to buffer (sent once).
#[derive(Debug)]
pub struct RetryBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    Passthrough(B),
    Replay {
        buf: Arc<Buffered>,
        pos: usize,
    },
    Once {
        prefix: VecDeque<Frame<Bytes>>,
        rest: Option<B>,
    },
}

/// A complete request body, kept for replay.
#[derive(Debug, Default)]
pub(crate) struct Buffered {
    pub(crate) data: Vec<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) len: usize,
}

impl<B> RetryBody<B> {
    /// The caller's body, untouched.
    pub fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough(body),
        }
    }

    pub(crate) fn replay(buf: Arc<Buffered>) -> Self {
        Self {
            kind: Kind::Replay { buf, pos: 0 },
        }
    }

    pub(crate) fn once(prefix: VecDeque<Frame<Bytes>>, rest: Option<B>) -> Self {
        Self {
            kind: Kind::Once { prefix, rest },
        }
    }

    /// Whether every attempt sends the same buffered bytes.
    pub fn is_replay(&self) -> bool {
        matches!(self.kind, Kind::Replay { .. })
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B> Body for RetryBody<B>
where
    B: Body + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Passthrough(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map(to_bytes))),
            Kind::Replay { buf, pos } => {
                let i = *pos;
                *pos += 1;
                Poll::Ready(match buf.data.get(i) {
                    Some(d) => Some(Ok(Frame::data(d.clone()))),
                    None if i == buf.data.len() => {
                        buf.trailers.clone().map(|t| Ok(Frame::trailers(t)))
                    }
                    None => None,
                })
            }
            Kind::Once { prefix, rest } => {
                if let Some(f) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(f)));
                }
                match rest {
                    Some(b) => Pin::new(b)
                        .poll_frame(cx)
                        .map(|f| f.map(|r| r.map(to_bytes))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough(b) => b.is_end_stream(),
            Kind::Replay { buf, pos } => {
                *pos > buf.data.len() || (*pos == buf.data.len() && buf.trailers.is_none())
            }
            Kind::Once { prefix, rest } => {
                prefix.is_empty() && rest.as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough(b) => b.size_hint(),
            Kind::Replay { buf, pos } => {
                let left: usize = if *pos == 0 {
                    buf.len
                } else {
                    buf.data.iter().skip(*pos).map(Bytes::len).sum()
                };
                SizeHint::with_exact(left as u64)
            }
            Kind::Once { prefix, rest } => {
                let buffered: u64 = prefix
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(|d| d.len() as u64)
                    .sum();
                let mut hint = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
                hint.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}
