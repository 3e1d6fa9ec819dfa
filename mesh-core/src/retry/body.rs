//! Request bodies that can be sent more than once.
//!
//! A retry or a hedge resends the request, so its body must still be there. [`ReplayBody::prepare`]
//! buffers a body before the first attempt when it is known to be small: empty, its `size_hint`
//! upper bound, or its `Content-Length`, at most the limit (64 KiB by default, docs/design.md). Such a
//! body is held as one [`Bytes`] (plus trailers) and every attempt gets a cheap clone. A body of
//! unknown size is buffered as far as its frames are ready at once, up to the limit: a unary gRPC
//! request (tonic encodes it in one go, without a length) becomes replayable, while a body that
//! would make us wait (a client stream, an upload still being produced) is never waited for and
//! streams through once, not retried. A body larger than the limit, or announced small and turning
//! out larger, continues as a stream (what was read first, then the rest), not retried.
//!
//! We buffer before the first attempt rather than replaying while the first attempt streams
//! (linkerd2-proxy's `ReplayBody`) because every body we retry is small by definition: waiting for
//! at most 64 KiB costs little and keeps the body type simple.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// Default buffer limit: 64 KiB.
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

/// The body's next frame if it is ready now; `None` if the body would have to wait for it.
async fn ready_frame<B: Body + Unpin>(
    body: &mut B,
) -> Option<Option<Result<Frame<B::Data>, B::Error>>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(next) => Some(next),
            Poll::Pending => None,
        })
    })
    .await
}

/// A fully buffered body that can be replayed any number of times.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

// === impl Replay ===

impl Replay {
    /// A body for one attempt.
    pub fn body<B>(&self) -> ReplayBody<B> {
        ReplayBody::Buffered {
            data: self.data.clone(),
            trailers: self.trailers.clone(),
        }
    }

    /// The buffered data.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// The result of [`ReplayBody::prepare`].
#[derive(Debug)]
pub enum Prepared<B> {
    /// Buffered: may be sent any number of times.
    Replayable(Replay),
    /// Too large or of unknown size: sent once.
    Once(ReplayBody<B>),
}

pin_project_lite::pin_project! {
    /// A request body as the retry and hedge layers send it: a replay of a buffered body, or the
    /// original body streaming through once. (`Buffered`: the data and trailers not yet sent;
    /// `Streaming`: data read while trying to buffer, then the rest of the original body.)
    #[project = Proj]
    #[allow(missing_docs)]
    #[derive(Debug)]
    pub enum ReplayBody<B> {
        /// A buffered body (one attempt's copy).
        Buffered { data: Bytes, trailers: Option<HeaderMap> },
        /// The original body, after what was already read of it.
        Streaming { prefix: Option<Bytes>, #[pin] inner: B },
    }
}

// === impl ReplayBody ===

impl<B> ReplayBody<B>
where
    B: Body + Unpin,
{
    /// Buffers `body` if it is known to be at most `limit` bytes (see the module docs);
    /// `content_length` is the request's `Content-Length`, if any.
    pub async fn prepare(
        mut body: B,
        content_length: Option<u64>,
        limit: usize,
    ) -> Result<Prepared<B>, B::Error> {
        if body.is_end_stream() {
            return Ok(Prepared::Replayable(Replay::default()));
        }
        let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
        // A body known to be small is buffered whole, waiting for its frames. A body of unknown
        // size (a chunked upload, a tonic request) is buffered only as far as its frames are ready
        // now: a unary gRPC request is encoded in one go and becomes replayable, while a streaming
        // one (whose next message waits on the caller, maybe on the response) is never waited for
        // and goes once, with what was already read as its prefix.
        let known_small = body.size_hint().upper().is_some_and(|u| u <= limit64)
            || content_length.is_some_and(|l| l <= limit64);
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        let mut len = 0usize;
        let mut trailers = None;
        loop {
            let next = if known_small {
                body.frame().await
            } else {
                match ready_frame(&mut body).await {
                    Some(next) => next,
                    None => {
                        let prefix = match first.take() {
                            Some(first) => Some(first),
                            None if rest.is_empty() => None,
                            None => Some(rest.split().freeze()),
                        };
                        return Ok(Prepared::Once(ReplayBody::Streaming {
                            prefix,
                            inner: body,
                        }));
                    }
                }
            };
            let Some(frame) = next else { break };
            let frame = frame?;
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    len += chunk.len();
                    match &first {
                        None if rest.is_empty() => first = Some(chunk),
                        _ => {
                            if let Some(f) = first.take() {
                                rest.extend_from_slice(&f);
                            }
                            rest.extend_from_slice(&chunk);
                        }
                    }
                    if len > limit {
                        let prefix = first.take().unwrap_or_else(|| rest.split().freeze());
                        return Ok(Prepared::Once(ReplayBody::Streaming {
                            prefix: Some(prefix),
                            inner: body,
                        }));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                    // Trailers end a body (RFC 9110 §6.5).
                    break;
                }
            }
        }
        let data = first.unwrap_or_else(|| rest.freeze());
        Ok(Prepared::Replayable(Replay { data, trailers }))
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            Proj::Buffered { data, trailers } => {
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(data)))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Proj::Streaming { prefix, inner } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                let frame = ready!(inner.poll_frame(cx));
                Poll::Ready(
                    frame.map(|r| r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))),
                )
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Buffered { data, trailers } => data.is_empty() && trailers.is_none(),
            Self::Streaming { prefix, inner } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Buffered { data, .. } => SizeHint::with_exact(data.len() as u64),
            Self::Streaming { prefix, inner } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let h = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + extra);
                if let Some(u) = h.upper() {
                    out.set_upper(u + extra);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{Full, StreamBody};
    use std::convert::Infallible;

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read<B: Body<Data = Bytes> + Unpin>(b: B) -> Bytes
    where
        B::Error: std::fmt::Debug,
    {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn small_known_body_is_replayable() {
        let prepared = ReplayBody::prepare(Full::new(Bytes::from_static(b"hello")), None, 64)
            .await
            .unwrap();
        let Prepared::Replayable(replay) = prepared else {
            panic!("expected a replayable body");
        };
        for _ in 0..3 {
            assert_eq!(read(replay.body::<Full<Bytes>>()).await, "hello");
        }
    }

    #[tokio::test]
    async fn unknown_size_ready_at_once_is_buffered() {
        // What a tonic unary request looks like: no length, every frame ready.
        let prepared = ReplayBody::prepare(chunks(&[b"a", b"b"]), None, 64)
            .await
            .unwrap();
        let Prepared::Replayable(replay) = prepared else {
            panic!("expected a replayable body");
        };
        assert_eq!(read(replay.body::<Full<Bytes>>()).await, "ab");
    }

    #[tokio::test]
    async fn unknown_size_that_makes_us_wait_streams_once() {
        use futures_util::StreamExt;
        let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from_static(b"a"),
        ))]);
        // The second frame is not ready at once (a client stream waiting on its caller).
        let later = futures_util::stream::once(async {
            tokio::task::yield_now().await;
            Ok(Frame::data(Bytes::from_static(b"b")))
        });
        let body = http_body_util::StreamBody::new(first.chain(later).boxed());
        let prepared = ReplayBody::prepare(body, None, 64).await.unwrap();
        let Prepared::Once(body) = prepared else {
            panic!("expected a streaming body");
        };
        assert_eq!(read(body).await, "ab");
    }

    #[tokio::test]
    async fn content_length_allows_buffering_chunks() {
        let prepared = ReplayBody::prepare(chunks(&[b"ab", b"cd"]), Some(4), 64)
            .await
            .unwrap();
        let Prepared::Replayable(replay) = prepared else {
            panic!("expected a replayable body");
        };
        assert_eq!(replay.data(), "abcd");
    }

    #[tokio::test]
    async fn body_larger_than_announced_continues_as_stream() {
        let prepared = ReplayBody::prepare(chunks(&[b"abc", b"def", b"gh"]), Some(4), 4)
            .await
            .unwrap();
        let Prepared::Once(body) = prepared else {
            panic!("expected a streaming body");
        };
        assert_eq!(read(body).await, "abcdefgh");
    }

    #[tokio::test]
    async fn large_known_body_is_not_buffered() {
        let big = Bytes::from(vec![7u8; 100]);
        let prepared = ReplayBody::prepare(Full::new(big), None, 64).await.unwrap();
        assert!(matches!(prepared, Prepared::Once(_)));
    }
}
