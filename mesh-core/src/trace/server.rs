//! The server span layer: one span per inbound request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use opentelemetry::trace::{Span as _, SpanKind};
use opentelemetry_sdk::trace::Span;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;

use super::context::{self, TraceContext};
use super::propagation::extract;
use super::{attrs, Tracing};

/// Makes [`ServerSpanLayer`]s, one per served target (named in the spans' `service` attribute).
#[derive(Clone, Debug)]
pub struct NewServerSpan {
    tracing: Tracing,
}

/// The layer of [`ServerSpan`].
#[derive(Clone, Debug)]
pub struct ServerSpanLayer {
    tracing: Tracing,
}

/// Extracts the caller's trace context, records a server span when the trace is sampled, and
/// makes the context [`context::current`] while the inner service handles the request.
///
/// When the trace is not sampled nothing is built: the caller's context (if any) is only made
/// current, so outgoing requests carry it on.
#[derive(Clone)]
pub struct ServerSpan<S> {
    inner: S,
    tracing: Tracing,
}

pin_project! {
    /// Response future of [`ServerSpan`].
    pub struct ServerSpanFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    /// State of the response future of [`ServerSpan`].
    #[project = StateProj]
    enum State<F> {
        /// No trace context: the request is served as is.
        Plain { #[pin] inner: F },
        /// An unsampled context, made current.
        Propagated { #[pin] inner: TaskLocalFuture<TraceContext, F> },
        /// A sampled request with its span.
        Traced { #[pin] inner: TaskLocalFuture<TraceContext, F>, span: Option<Span> },
    }
}

// === impl NewServerSpan ===

impl NewServerSpan {
    /// Uses `tracing` for every target.
    pub fn new(tracing: Tracing) -> Self {
        Self { tracing }
    }

    /// The layer for one target.
    pub fn layer_for(&self) -> ServerSpanLayer {
        ServerSpan::layer(self.tracing.clone())
    }
}

// === impl ServerSpan ===

impl ServerSpan<()> {
    /// The layer: spans go to `tracing`.
    pub fn layer(tracing: Tracing) -> ServerSpanLayer {
        ServerSpanLayer { tracing }
    }
}

impl<S> tower::Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> ServerSpan<S> {
        ServerSpan {
            inner,
            tracing: self.tracing.clone(),
        }
    }
}

impl<S> fmt::Debug for ServerSpan<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSpan")
            .field("tracing", &self.tracing)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> tower::Service<Request<B>> for ServerSpan<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ServerSpanFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let parent = extract(req.headers());
        if !self.tracing.should_sample(parent.as_ref()) {
            return match parent {
                None => ServerSpanFuture::from(State::Plain {
                    inner: self.inner.call(req),
                }),
                Some(parent) => {
                    // The handler's `call` runs in the context too, not only its future.
                    let inner = context::sync_scope(parent.clone(), || self.inner.call(req));
                    ServerSpanFuture::from(State::Propagated {
                        inner: context::scope(parent, inner),
                    })
                }
            };
        }
        let Some(tracer) = self.tracing.tracer() else {
            // should_sample is false without a tracer; kept for exhaustiveness.
            return ServerSpanFuture::from(State::Plain {
                inner: self.inner.call(req),
            });
        };
        let (span, ctx) = tracer.start(
            SpanKind::Server,
            parent.as_ref(),
            attrs::request(&req, true),
        );
        let inner = context::sync_scope(ctx.clone(), || self.inner.call(req));
        ServerSpanFuture::from(State::Traced {
            inner: context::scope(ctx, inner),
            span: Some(span),
        })
    }
}

impl<F, RB, E> Future for ServerSpanFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Plain { inner } => inner.poll(cx),
            StateProj::Propagated { inner } => inner.poll(cx),
            StateProj::Traced { inner, span } => {
                let result = ready!(inner.poll(cx));
                if let Some(mut span) = span.take() {
                    attrs::response(&mut span, &result, true);
                    span.end();
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<F> From<State<F>> for ServerSpanFuture<F> {
    fn from(state: State<F>) -> Self {
        Self { state }
    }
}

impl<F> fmt::Debug for ServerSpanFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Plain { .. } => "Plain",
            State::Propagated { .. } => "Propagated",
            State::Traced { .. } => "Traced",
        };
        f.debug_tuple("ServerSpanFuture").field(&state).finish()
    }
}
