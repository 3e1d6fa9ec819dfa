//! Request deadlines: read, combine, enforce, propagate.
//!
//! A request's deadline is the **earliest** of: a [`Deadline`] already on the request (set by an
//! outer layer), the route's timeout ([`RouteTimeout`] extension, else
//! [`DeadlineConfig::route_timeout`]), and the incoming headers `grpc-timeout`, `l5d-ctx-deadline`
//! and `x-envoy-expected-rq-timeout-ms` (formats in [`header`]). The [`Deadlines`] layer:
//!
//! - puts the result on the request as a typed [`Deadline`] extension (a `tokio::time::Instant`),
//!   so the layers below (retries, hedging) can see how much time is left;
//! - **enforces** it: when it passes before the response head arrives, the inner future is dropped
//!   (which cancels the request all the way down to the connection) and the caller gets a 504 with
//!   `l5d-err: deadline exceeded after 100ms`, or for gRPC a trailers-only 200 with
//!   `grpc-status: 4` ([`crate::error`]). The deadline covers the wait for the response head, as
//!   `tower::timeout` does; a body that streams past it is the caller's to bound;
//! - never dispatches a request whose deadline has already passed;
//! - **propagates** the remaining time downstream by rewriting the deadline headers the request
//!   came with (and `grpc-timeout` on every gRPC request, as gRPC clients always send one), so the
//!   next hop sees the time that is really left ([`propagate`], also called by the retry layer
//!   before each attempt).
//!
//! A malformed deadline header never fails the request and never panics: it is ignored, logged at
//! debug level, and counted in [`DeadlineStats::malformed`].
//!
//! Why a typed extension and not a `tower::timeout`: the deadline must be visible to the layers
//! below (a retry must not start when too little time is left — docs/design.md) and must travel to the
//! next hop; Linkerd 2 carries it the same way.
//!
//! ```
//! use mesh_core::deadline::{DeadlineConfig, Deadlines, DeadlineStats};
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let stats = DeadlineStats::default();
//! let config = DeadlineConfig { route_timeout: Some(Duration::from_millis(100)), ..Default::default() };
//! let svc = ServiceBuilder::new()
//!     .layer(Deadlines::layer(config, stats.clone()))
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(10)).await; // a hanging backend
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     }));
//! let rsp = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(rsp.status(), http::StatusCode::GATEWAY_TIMEOUT);
//! assert_eq!(rsp.headers()["l5d-err"], "deadline exceeded after 100ms");
//! assert_eq!(stats.exceeded(), 1);
//! # }
//! ```

pub mod header;
mod latency;

pub use latency::{FixedLatency, LatencyCell, LatencyEstimate, NoEstimate, SharedLatency};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{Instant, Sleep};

use crate::error::{is_grpc, Error};

/// `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `l5d-ctx-deadline`.
pub const L5D_CTX_DEADLINE: HeaderName = HeaderName::from_static("l5d-ctx-deadline");
/// `x-envoy-expected-rq-timeout-ms`.
pub const ENVOY_EXPECTED_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// The instant by which a request must be answered: a request extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

/// The farthest deadline [`Deadline::after`] makes: about 30 years, as tokio's own far future.
const FARTHEST: Duration = Duration::from_secs(86_400 * 365 * 30);

// === impl Deadline ===

impl Deadline {
    /// The deadline `timeout` from now; a timeout too large for the clock (e.g.
    /// `Duration::MAX`) gives the farthest deadline the clock can hold (about 30 years) rather
    /// than overflowing.
    pub fn after(timeout: Duration) -> Self {
        let now = Instant::now();
        Self(
            now.checked_add(timeout)
                .or_else(|| now.checked_add(FARTHEST))
                .unwrap_or(now),
        )
    }

    /// The instant.
    pub fn at(self) -> Instant {
        self.0
    }

    /// The time left (zero once passed).
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(self) -> bool {
        self.0 <= Instant::now()
    }
}

/// The route's timeout, as a request extension a router sets; it overrides
/// [`DeadlineConfig::route_timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTimeout(pub Duration);

/// Configuration of the [`Deadlines`] layer. `Default`: no route timeout, incoming headers read,
/// remaining time propagated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadlineConfig {
    /// The timeout applied to every request when no [`RouteTimeout`] extension is present.
    pub route_timeout: Option<Duration>,
    /// Whether incoming deadline headers are honoured (turn off at an ingress that does not trust
    /// its callers).
    pub read_headers: bool,
    /// Whether the remaining time is written into the outgoing headers.
    pub propagate: bool,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            route_timeout: None,
            read_headers: true,
            propagate: true,
        }
    }
}

/// An invalid [`DeadlineConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineConfigError {
    /// A zero route timeout would fail every request.
    #[error("route_timeout must be greater than zero, got {0:?}")]
    ZeroRouteTimeout(Duration),
}

// === impl DeadlineConfig ===

impl DeadlineConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), DeadlineConfigError> {
        match self.route_timeout {
            Some(t) if t.is_zero() => Err(DeadlineConfigError::ZeroRouteTimeout(t)),
            _ => Ok(()),
        }
    }
}

/// Counters of the deadline layer (cheap to clone; clones share the counts).
#[derive(Clone, Debug, Default)]
pub struct DeadlineStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    malformed: AtomicU64,
    exceeded: AtomicU64,
    expired_on_arrival: AtomicU64,
}

// === impl DeadlineStats ===

impl DeadlineStats {
    /// Deadline headers that did not parse (ignored).
    pub fn malformed(&self) -> u64 {
        self.0.malformed.load(Ordering::Relaxed)
    }

    /// Requests cancelled because their deadline passed in flight.
    pub fn exceeded(&self) -> u64 {
        self.0.exceeded.load(Ordering::Relaxed)
    }

    /// Requests answered without dispatch because their deadline had already passed.
    pub fn expired_on_arrival(&self) -> u64 {
        self.0.expired_on_arrival.load(Ordering::Relaxed)
    }
}

/// Wall-clock nanoseconds since the Unix epoch (for `l5d-ctx-deadline`, which is absolute).
fn wall_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The deadline the request's headers ask for, counting malformed headers in `stats`.
/// Whether any deadline header is present. Most requests carry none: this says so without a
/// lookup per header.
fn carries_deadline(headers: &HeaderMap) -> bool {
    crate::headers::contains_any(
        headers,
        &[&GRPC_TIMEOUT, &ENVOY_EXPECTED_TIMEOUT, &L5D_CTX_DEADLINE],
    )
}

/// The earliest deadline the headers give (the caller checked [`carries_deadline`]).
fn from_headers(headers: &HeaderMap, now: Instant, stats: &StatsInner) -> Option<Instant> {
    let mut earliest: Option<Instant> = None;
    let mut consider = |t: Option<Instant>| {
        if let Some(t) = t {
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
    };
    let malformed = |name: &HeaderName, err: header::HeaderError| {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(header = %name, error = %err, "ignoring malformed deadline header");
    };
    if let Some(v) = headers.get(GRPC_TIMEOUT) {
        match header::parse_grpc_timeout(v.as_bytes()) {
            Ok(d) => consider(now.checked_add(d)),
            Err(e) => malformed(&GRPC_TIMEOUT, e),
        }
    }
    if let Some(v) = headers.get(ENVOY_EXPECTED_TIMEOUT) {
        match header::parse_envoy_timeout_ms(v.as_bytes()) {
            Ok(d) => consider(now.checked_add(d)),
            Err(e) => malformed(&ENVOY_EXPECTED_TIMEOUT, e),
        }
    }
    if let Some(v) = headers.get(L5D_CTX_DEADLINE) {
        match header::parse_l5d_ctx_deadline(v.as_bytes()) {
            Ok((_timestamp, deadline_ns)) => {
                let left = Duration::from_nanos(deadline_ns.saturating_sub(wall_now_ns()));
                consider(now.checked_add(left));
            }
            Err(e) => malformed(&L5D_CTX_DEADLINE, e),
        }
    }
    earliest
}

/// Rewrites the deadline headers present in `headers` with the time left until `deadline`, and sets
/// `grpc-timeout` when the request is gRPC. Call before dispatching each attempt.
pub fn propagate(headers: &mut HeaderMap, deadline: Deadline) {
    let left = deadline.remaining();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    };
    if headers.contains_key(GRPC_TIMEOUT) || is_grpc(headers) {
        set(headers, GRPC_TIMEOUT, header::format_grpc_timeout(left));
    }
    if headers.contains_key(ENVOY_EXPECTED_TIMEOUT) {
        set(
            headers,
            ENVOY_EXPECTED_TIMEOUT,
            header::format_envoy_timeout_ms(left),
        );
    }
    if headers.contains_key(L5D_CTX_DEADLINE) {
        let now = wall_now_ns();
        let at = now.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX));
        set(
            headers,
            L5D_CTX_DEADLINE,
            header::format_l5d_ctx_deadline(now, at),
        );
    }
}

/// The deadline middleware (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Deadlines<S> {
    inner: S,
    config: DeadlineConfig,
    stats: DeadlineStats,
}

/// The [`Deadlines`] layer.
#[derive(Clone, Debug)]
pub struct DeadlinesLayer {
    config: DeadlineConfig,
    stats: DeadlineStats,
}

// === impl Deadlines ===

impl Deadlines<()> {
    /// The layer; `stats` receives the counts of every service it makes.
    pub fn layer(config: DeadlineConfig, stats: DeadlineStats) -> DeadlinesLayer {
        DeadlinesLayer { config, stats }
    }
}

impl<S> tower::Layer<S> for DeadlinesLayer {
    type Service = Deadlines<S>;

    fn layer(&self, inner: S) -> Deadlines<S> {
        Deadlines {
            inner,
            config: self.config,
            stats: self.stats.clone(),
        }
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for Deadlines<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let mut earliest = req.extensions().get::<Deadline>().map(|d| d.0);
        let route = req
            .extensions()
            .get::<RouteTimeout>()
            .map(|t| t.0)
            .or(self.config.route_timeout);
        let read_headers = self.config.read_headers && carries_deadline(req.headers());
        if earliest.is_none() && route.is_none() && !read_headers {
            // No deadline to enforce, nor a clock reading to take.
            return ResponseFuture::Passthrough {
                inner: self.inner.call(req),
            };
        }
        let now = Instant::now();
        for t in [
            route.and_then(|r| now.checked_add(r)),
            read_headers
                .then(|| from_headers(req.headers(), now, &self.stats.0))
                .flatten(),
        ]
        .into_iter()
        .flatten()
        {
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
        let Some(at) = earliest else {
            return ResponseFuture::Passthrough {
                inner: self.inner.call(req),
            };
        };
        let grpc = is_grpc(req.headers());
        let budget = at.saturating_duration_since(now);
        if budget.is_zero() {
            self.stats
                .0
                .expired_on_arrival
                .fetch_add(1, Ordering::Relaxed);
            return ResponseFuture::Expired {
                error: Some(Error::DeadlineExceeded(budget)),
                grpc,
            };
        }
        let deadline = Deadline(at);
        req.extensions_mut().insert(deadline);
        if self.config.propagate {
            propagate(req.headers_mut(), deadline);
        }
        ResponseFuture::Running {
            inner: self.inner.call(req),
            sleep: Box::pin(tokio::time::sleep_until(at)),
            budget,
            grpc,
            stats: self.stats.clone(),
        }
    }
}

pin_project! {
    /// The [`Deadlines`] response future.
    #[project = Proj]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F> {
        /// No deadline.
        Passthrough { #[pin] inner: F },
        /// Racing the inner future against the deadline.
        Running {
            #[pin] inner: F,
            // Boxed: inline, the timer (112 bytes) made every request's future and the futures
            // of the layers above larger, with or without a deadline, and each move copied it.
            sleep: Pin<Box<Sleep>>,
            budget: Duration,
            grpc: bool,
            stats: DeadlineStats,
        },
        /// The deadline had passed on arrival.
        Expired { error: Option<Error>, grpc: bool },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self {
            Self::Passthrough { .. } => "Passthrough",
            Self::Running { .. } => "Running",
            Self::Expired { .. } => "Expired",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (error, grpc) = match self.as_mut().project() {
            Proj::Passthrough { inner } => return inner.poll(cx),
            Proj::Running {
                inner,
                sleep,
                budget,
                grpc,
                stats,
            } => {
                if let Poll::Ready(out) = inner.poll(cx) {
                    return Poll::Ready(out);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                stats.0.exceeded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?budget, "deadline exceeded; cancelling the request");
                (Error::DeadlineExceeded(*budget), *grpc)
            }
            Proj::Expired { error, grpc } => {
                let err = error
                    .take()
                    .unwrap_or(Error::DeadlineExceeded(Duration::ZERO));
                return Poll::Ready(Ok(err.to_response(*grpc)));
            }
        };
        // Drop the inner future now: this cancels the request down to the connection.
        self.set(ResponseFuture::Expired { error: None, grpc });
        Poll::Ready(Ok(error.to_response(grpc)))
    }
}

#[cfg(test)]
mod tests;
