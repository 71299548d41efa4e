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
    /// Whether the caller's body knew its exact length. A replay says what the body it
    /// replays said: an exact size hint makes hyper add a `content-length` the caller's
    /// request would not have had (a gRPC body streams; bare tonic sends none), costing
    /// a header on every attempt at both ends.
    pub(crate) exact: bool,
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
                if buf.exact {
                    SizeHint::with_exact(left as u64)
                } else {
                    let mut hint = SizeHint::new();
                    hint.set_lower(left as u64);
                    hint
                }
            }
            Kind::Once { prefix, rest } => {
                let buffered: u64 = prefix
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(|d| d.len() as u64)
                    .sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
                shifted(&rest, buffered)
            }
        }
    }
}

/// `hint` plus `extra` bytes. `SizeHint`'s setters assert `lower <= upper` at every step, so
/// the upper bound is set first (raising the lower one first would panic on an exact hint);
/// an upper bound that would overflow becomes unknown.
fn shifted(hint: &SizeHint, extra: u64) -> SizeHint {
    let mut out = SizeHint::new();
    if let Some(upper) = hint.upper().and_then(|u| u.checked_add(extra)) {
        out.set_upper(upper);
    }
    out.set_lower(hint.lower().saturating_add(extra));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use http_body::{Body, Frame, SizeHint};
    use proptest::prelude::*;

    use super::RetryBody;

    /// What a test body says about its length.
    #[derive(Debug, Clone, Copy)]
    enum Hint {
        Exact,
        /// Half the remaining bytes as the lower bound, no upper bound.
        Lower,
        /// Half and twice the remaining bytes.
        Range,
        Unknown,
        /// A lower bound of `u64::MAX - 1`, no upper bound (a lying body).
        Huge,
    }

    /// A body of chunks that stalls (pending, waking itself) before the chunks marked so.
    struct Scripted {
        chunks: VecDeque<(Bytes, bool)>,
        hint: Hint,
    }

    impl Scripted {
        fn remaining(&self) -> u64 {
            self.chunks.iter().map(|(c, _)| c.len() as u64).sum()
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.chunks.front_mut() {
                None => Poll::Ready(None),
                Some((_, stall)) if *stall => {
                    *stall = false;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(_) => {
                    let (chunk, _) = self.chunks.pop_front().unwrap_or_default();
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
            }
        }

        fn is_end_stream(&self) -> bool {
            self.chunks.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            let left = self.remaining();
            let mut h = SizeHint::new();
            match self.hint {
                Hint::Exact => h.set_exact(left),
                Hint::Lower => h.set_lower(left / 2),
                Hint::Range => {
                    h.set_upper(left * 2);
                    h.set_lower(left / 2);
                }
                Hint::Unknown => {}
                Hint::Huge => h.set_lower(u64::MAX - 1),
            }
            h
        }
    }

    fn body(chunks: &[(usize, bool)], hint: Hint) -> Scripted {
        Scripted {
            chunks: chunks
                .iter()
                .map(|&(n, stall)| (Bytes::from(vec![b'x'; n]), stall))
                .collect(),
            hint,
        }
    }

    /// The retry layer's shape for a body it could not buffer: the frames it read before
    /// the body stalled (or outgrew the buffer), then the rest of the body.
    fn once(mut b: Scripted, buffered: usize) -> RetryBody<Scripted> {
        let mut prefix = VecDeque::new();
        for _ in 0..buffered {
            match b.chunks.pop_front() {
                Some((chunk, _)) => prefix.push_back(Frame::data(chunk)),
                None => break,
            }
        }
        RetryBody::once(prefix, Some(b))
    }

    /// Reads `body` to its end, checking its size hint before every read: consistent, and
    /// true of the bytes that are left when the inner body's hint is.
    fn check_hints(mut body: RetryBody<Scripted>, total: u64, honest: bool) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut read = 0u64;
        loop {
            let hint = body.size_hint();
            let left = total - read;
            assert!(
                hint.upper().is_none_or(|u| hint.lower() <= u),
                "{hint:?} after {read} bytes"
            );
            if honest {
                assert!(hint.lower() <= left, "{hint:?}, {left} left");
                assert!(
                    hint.upper().is_none_or(|u| u >= left),
                    "{hint:?}, {left} left"
                );
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => break,
                Poll::Ready(Some(Ok(frame))) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Pending => {}
            }
        }
        assert_eq!(read, total);
        if honest {
            assert_eq!(body.size_hint().lower(), 0);
        }
    }

    /// Like [`check_hints`], for bodies with no inner body left: the hint is exact.
    fn check_replay(mut body: RetryBody<Scripted>, total: u64) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut read = 0u64;
        loop {
            assert_eq!(body.size_hint().exact(), Some(total - read));
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Poll::Ready(None) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(read, total);
    }

    #[test]
    fn a_partly_read_stalled_body_of_known_length_keeps_its_hint_consistent() {
        // Four bytes read into the buffer, then the body stalls with three more to come.
        let b = body(&[(4, false), (3, true)], Hint::Exact);
        let once = once(b, 1);
        assert_eq!(once.size_hint().exact(), Some(7));
        check_hints(once, 7, true);
    }

    #[test]
    fn an_overflowing_hint_saturates() {
        let once = once(body(&[(4, false), (3, true)], Hint::Huge), 1);
        let hint = once.size_hint();
        assert_eq!((hint.lower(), hint.upper()), (u64::MAX, None));
    }

    fn hints() -> impl Strategy<Value = Hint> {
        prop_oneof![
            Just(Hint::Exact),
            Just(Hint::Lower),
            Just(Hint::Range),
            Just(Hint::Unknown),
            Just(Hint::Huge),
        ]
    }

    proptest! {
        #[test]
        fn size_hints_stay_consistent_through_any_read_sequence(
            chunks in proptest::collection::vec((0usize..64, any::<bool>()), 0..12),
            buffered in 0usize..12,
            hint in hints(),
        ) {
            let total: u64 = chunks.iter().map(|&(n, _)| n as u64).sum();
            let honest = !matches!(hint, Hint::Huge);
            check_hints(once(body(&chunks, hint), buffered), total, honest);
            check_hints(RetryBody::passthrough(body(&chunks, hint)), total, honest);
            // A buffered body replayed, and a prefix with no rest.
            let data: Vec<Bytes> = chunks.iter().map(|&(n, _)| Bytes::from(vec![0; n])).collect();
            let replay = RetryBody::<Scripted>::replay(std::sync::Arc::new(super::Buffered {
                data: data.clone(),
                trailers: None,
                len: total as usize,
                exact: true,
            }));
            check_replay(replay, total);
            let prefix = data.into_iter().map(Frame::data).collect();
            check_replay(RetryBody::<Scripted>::once(prefix, None), total);
        }
    }
}
