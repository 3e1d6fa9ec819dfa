//! The propagated trace context and the task-local "current" context.

use http::HeaderValue;
use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
pub use opentelemetry::trace::{SpanId, TraceId};
use std::str::FromStr;

/// Which header family a context arrived in; it decides what is injected downstream (W3C always,
/// plus the caller's B3 flavour).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// W3C `traceparent` / `tracestate`.
    W3c,
    /// B3 single header `b3`.
    B3Single,
    /// B3 multi headers `x-b3-traceid`, `x-b3-spanid`, ...
    B3Multi,
}

/// A trace context as it travels between hops: the trace, the span that is the parent of the
/// next hop's span, and the sampling decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (never all zeros).
    pub trace_id: TraceId,
    /// The span the next hop is a child of (never all zeros).
    pub span_id: SpanId,
    /// The parent of `span_id`, when known (B3 carries it).
    pub parent_span_id: Option<SpanId>,
    /// The sampling decision: `None` when the caller deferred it (B3 without `x-b3-sampled`).
    pub sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1` or `b3: ...-d`): sampled, and asks to be kept.
    pub debug: bool,
    /// The header family the context came in.
    pub format: Format,
    /// The W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Whether this context asks for the trace to be recorded.
    pub fn is_sampled(&self) -> bool {
        self.debug || self.sampled == Some(true)
    }

    /// This context as an OpenTelemetry remote parent (`sampled` as decided by the caller of this
    /// method).
    pub(crate) fn to_remote_span_context(&self, sampled: bool) -> SpanContext {
        let state = self
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(self.trace_id, self.span_id, flags, true, state)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace context of the request this task is serving, set by the server span layer
/// ([`super::ServerSpan`]) for the duration of the application's handler. The client span layer
/// uses it as the parent of outgoing requests, so a handler that calls other services joins the
/// trace without passing anything along. A task the handler spawns does not inherit it; pass it
/// on as a [`TraceContext`] request extension instead.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| c.clone()).ok()
}

/// Runs `f` with `context` as [`current`]: for work a service starts in its `call` rather than
/// in its future (a router that calls its leaf service in place, say).
pub fn sync_scope<R>(context: TraceContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(context, f)
}

/// Runs `future` with `context` as [`current`].
pub fn scope<F: std::future::Future>(
    context: TraceContext,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<TraceContext, F> {
    CURRENT.scope(context, future)
}
