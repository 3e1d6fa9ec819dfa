//! The client span layer: one span per attempt.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use opentelemetry::trace::{Span as _, SpanKind};
use opentelemetry_sdk::trace::Span;
use pin_project_lite::pin_project;

use super::context::{self, TraceContext};
use super::propagation::{extract, inject};
use super::{attrs, Tracing};

/// Makes [`ClientSpanLayer`]s, one per endpoint or route.
#[derive(Clone, Debug)]
pub struct NewClientSpan {
    tracing: Tracing,
}

/// The layer of [`ClientSpan`].
#[derive(Clone, Debug)]
pub struct ClientSpanLayer {
    tracing: Tracing,
}

/// Records a client span for each request it sends (put it below the retry and hedge layers, so
/// every attempt is its own span) and injects the trace context into the outgoing headers: W3C
/// `traceparent` always, plus B3 when the caller used B3.
///
/// The parent is, in order: a [`TraceContext`] request extension; the task's
/// [`context::current`] (set by [`super::ServerSpan`] around the handler); trace headers already
/// on the request (a proxy forwarding them). When the parent is not sampled, no span is built and
/// the parent's context is passed on as it is.
#[derive(Clone)]
pub struct ClientSpan<S> {
    inner: S,
    tracing: Tracing,
}

pin_project! {
    /// Response future of [`ClientSpan`].
    pub struct ClientSpanFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    /// State of the response future of [`ClientSpan`].
    #[project = StateProj]
    enum State<F> {
        /// Not sampled.
        Plain { #[pin] inner: F },
        /// A sampled attempt and its span (boxed: a span is large, and most attempts are not
        /// sampled; an unboxed one would make every attempt's future that size).
        Traced { #[pin] inner: F, span: Option<Box<Span>> },
    }
}

// === impl NewClientSpan ===

impl NewClientSpan {
    /// Uses `tracing` for every target.
    pub fn new(tracing: Tracing) -> Self {
        Self { tracing }
    }

    /// The layer for one target.
    pub fn layer_for(&self) -> ClientSpanLayer {
        ClientSpan::layer(self.tracing.clone())
    }
}

// === impl ClientSpan ===

impl ClientSpan<()> {
    /// The layer: spans go to `tracing`.
    pub fn layer(tracing: Tracing) -> ClientSpanLayer {
        ClientSpanLayer { tracing }
    }
}

impl<S> tower::Layer<S> for ClientSpanLayer {
    type Service = ClientSpan<S>;

    fn layer(&self, inner: S) -> ClientSpan<S> {
        ClientSpan {
            inner,
            tracing: self.tracing.clone(),
        }
    }
}

impl<S> fmt::Debug for ClientSpan<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSpan")
            .field("tracing", &self.tracing)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> tower::Service<Request<B>> for ClientSpan<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ClientSpanFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Where the parent came from decides whether headers must be written when unsampled.
        let (parent, from_headers): (Option<TraceContext>, bool) =
            match req.extensions().get::<TraceContext>() {
                Some(ctx) => (Some(ctx.clone()), false),
                None => match context::current() {
                    Some(ctx) => (Some(ctx), false),
                    None => (extract(req.headers()), true),
                },
            };
        if !self.tracing.should_sample(parent.as_ref()) {
            if let (Some(parent), false) = (&parent, from_headers) {
                inject(parent, req.headers_mut());
            }
            return ClientSpanFuture::from(State::Plain {
                inner: self.inner.call(req),
            });
        }
        let Some(tracer) = self.tracing.tracer() else {
            return ClientSpanFuture::from(State::Plain {
                inner: self.inner.call(req),
            });
        };
        let (span, ctx) = tracer.start(
            SpanKind::Client,
            parent.as_ref(),
            attrs::request(&req, false),
        );
        inject(&ctx, req.headers_mut());
        ClientSpanFuture::from(State::Traced {
            inner: self.inner.call(req),
            span: Some(Box::new(span)),
        })
    }
}

impl<F, RB, E> Future for ClientSpanFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Plain { inner } => inner.poll(cx),
            StateProj::Traced { inner, span } => {
                let result = ready!(inner.poll(cx));
                if let Some(mut span) = span.take() {
                    attrs::response(&mut span, &result, false);
                    span.end();
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<F> From<State<F>> for ClientSpanFuture<F> {
    fn from(state: State<F>) -> Self {
        Self { state }
    }
}

impl<F> fmt::Debug for ClientSpanFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Plain { .. } => "Plain",
            State::Traced { .. } => "Traced",
        };
        f.debug_tuple("ClientSpanFuture").field(&state).finish()
    }
}
