//! Retries under a budget.
//!
//! The [`Retry`] layer resends a request whose response (or error) the shared [`Classify`] calls a
//! [`Class::RetryableFailure`], when all of these hold:
//!
//! - the body was buffered ([`ReplayBody`]; ≤ 64 KiB by default) — a streaming body goes once;
//! - the [`Budget`] has a retry to spend (Finagle's 20 % + 10/s over 10 s; see [`budget`]);
//! - the request's [`Deadline`], if any, leaves more time than the endpoint set's median latency
//!   plus the backoff wait (docs/design.md: no retry starts when it cannot finish in time);
//! - fewer than [`RetryConfig::max_retries`] retries were made (a guard against loops; the budget
//!   is the real limit);
//! - the request does not carry the [`NoRetry`] extension.
//!
//! A [`ClassifyOverride`](crate::classify::ClassifyOverride) request extension (the route's
//! classifier) replaces the layer's classifier for that request.
//!
//! Every retry of a request carries the same [`AvoidEndpoint`], so a retry goes to an endpoint no
//! earlier attempt used whenever the balancer has one. A first attempt sent from `call` carries
//! none: it is sent under a recording loan ([`Loan::recording`]), into which the balancer records
//! the endpoint it chose, and the hint is made only if a retry follows. A balancer below finds
//! either with [`AvoidEndpoint::take`] (or [`AvoidEndpoint::of`], which makes the hint at once).
//!
//! Between attempts it waits a decorrelated-jitter [`Backoff`] (25 ms base). Each attempt may have a
//! per-try timeout (an attempt that times out is classified as [`ErrorKind::Timeout`](crate::classify::ErrorKind::Timeout), retryable
//! for idempotent methods under the default preset). Before a retry the deadline headers are
//! rewritten with the time then left ([`crate::deadline::propagate`]).
//!
//! Classification happens before the response is handed on. Trailers-only gRPC responses
//! (`grpc-status` in the headers, how most servers answer UNAVAILABLE) are classified by their head.
//! For a gRPC attempt this layer could retry, it sets [`PeekTrailers`](crate::classify::PeekTrailers),
//! so the endpoint's circuit breaker reads the body's first frame when the head leaves the status
//! open: an error sent as an empty body with its status in the trailers is then known with the
//! head ([`ResponseClass`](crate::classify::ResponseClass), which this layer reads) and retried
//! like a trailers-only one. A status after data is known only when the body ends, too late to
//! retry: the body has been streaming to the caller.
//!
//! Responses the mesh made itself carry their [`crate::error::Error`] as an extension: a full
//! pending queue ([`crate::shed::Shed`]) is never retried; an endpoint's concurrency cap is retried
//! for any method (the request never reached the endpoint).
//!
//! Counters ([`RetryStats`]) are atomics, ready for the metrics layer.
//!
//! The layer's error type is `tower::BoxError`; the inner service sees requests with a
//! [`ReplayBody`] body. The request body must be `Unpin` (hyper's `Incoming` and boxed bodies are).
//!
//! ```
//! use mesh_core::retry::{Budget, BudgetConfig, Retry, RetryConfig};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let calls = Arc::new(AtomicUsize::new(0));
//! let c = calls.clone();
//! let backend = service_fn(move |_req: http::Request<_>| {
//!     let n = c.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let status = if n == 0 { 503 } else { 200 };
//!         let mut rsp = http::Response::new(());
//!         *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
//!         Ok::<_, std::convert::Infallible>(rsp)
//!     }
//! });
//! let layer = Retry::layer(RetryConfig::default(), Budget::new(BudgetConfig::default()).unwrap());
//! let stats = layer.stats();
//! let svc = tower::Layer::layer(&layer, backend);
//! let rsp = svc.oneshot(http::Request::new(Full::new(Bytes::from_static(b"hi")))).await.unwrap();
//! assert_eq!(rsp.status(), 200);
//! assert_eq!(stats.retries(), 1);
//! # }
//! ```

mod backoff;
mod body;
pub mod budget;

pub use backoff::{Backoff, BackoffConfig, BackoffConfigError};
pub use body::{Prepared, Replay, ReplayBody, DEFAULT_BUFFER_LIMIT};
pub use budget::{Budget, BudgetConfig, BudgetConfigError};

use futures_util::future::BoxFuture;
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body::Body;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, ServiceExt};

use crate::classify::{
    default_error_kind, Class, Classifier, Classify, ErrorInspector, HeadClass, RequestInfo,
    SharedClassify,
};
use crate::deadline::{Deadline, NoEstimate, SharedLatency};
use crate::hedge::{AvoidEndpoint, Loan, Recorded};

/// A request extension that turns retries off for this request (e.g. set by the router for a
/// route whose policy disables them). The request still deposits into the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoRetry;

/// Configuration of the [`Retry`] layer. `Default`: 3 retries at most, 64 KiB buffer, 25 ms–1 s
/// backoff, no per-try timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Retries per request at most (the budget usually stops them first).
    pub max_retries: u32,
    /// Request bodies up to this size are buffered and can be retried.
    pub buffer_limit: usize,
    /// The backoff between attempts.
    pub backoff: BackoffConfig,
    /// The timeout of each attempt (none by default; the request's deadline still applies).
    pub per_try_timeout: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            backoff: BackoffConfig::default(),
            per_try_timeout: None,
        }
    }
}

/// An invalid [`RetryConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetryConfigError {
    /// The backoff is invalid.
    #[error("retry backoff: {0}")]
    Backoff(#[from] BackoffConfigError),
    /// A zero per-try timeout would fail every attempt.
    #[error("per_try_timeout must be greater than zero, got {0:?}")]
    PerTryTimeout(Duration),
}

// === impl RetryConfig ===

impl RetryConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        self.backoff.validate()?;
        match self.per_try_timeout {
            Some(t) if t.is_zero() => Err(RetryConfigError::PerTryTimeout(t)),
            _ => Ok(()),
        }
    }
}

/// Retry counters (cheap to clone; clones share the counts).
#[derive(Clone, Debug, Default)]
pub struct RetryStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    requests: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    not_replayable: AtomicU64,
    deadline_skipped: AtomicU64,
    limit_reached: AtomicU64,
}

// === impl RetryStats ===

impl RetryStats {
    /// Original requests seen.
    pub fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::Relaxed)
    }
    /// Retries sent.
    pub fn retries(&self) -> u64 {
        self.0.retries.load(Ordering::Relaxed)
    }
    /// Retryable failures not retried because the budget was spent.
    pub fn budget_exhausted(&self) -> u64 {
        self.0.budget_exhausted.load(Ordering::Relaxed)
    }
    /// Retryable failures not retried because the body streamed (not buffered).
    pub fn not_replayable(&self) -> u64 {
        self.0.not_replayable.load(Ordering::Relaxed)
    }
    /// Retryable failures not retried because the deadline left too little time.
    pub fn deadline_skipped(&self) -> u64 {
        self.0.deadline_skipped.load(Ordering::Relaxed)
    }
    /// Retryable failures not retried because `max_retries` was reached.
    pub fn limit_reached(&self) -> u64 {
        self.0.limit_reached.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Shared {
    config: RetryConfig,
    budget: Budget,
    classify: SharedClassify,
    latency: SharedLatency,
    inspect: ErrorInspector,
    stats: RetryStats,
}

/// The retry middleware (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    own: Arc<Own<S>>,
}

/// What every request through one [`Retry`] shares: the layer's settings, and a clone of the
/// inner service made with the layer, from which a retry takes its own. A request that is never
/// retried then clones no service (for the balancer, reference counts and a seed shared by every
/// thread). The mutex, taken only to clone for a retry, keeps the inner service free of a `Sync`
/// bound (tower's `BoxCloneService` is not `Sync`).
#[derive(Debug)]
struct Own<S> {
    shared: Arc<Shared>,
    template: std::sync::Mutex<S>,
}

impl<S: Clone> Own<S> {
    /// A service for a request's retries.
    fn service(&self) -> S {
        // A panic in a clone cannot leave the template half-made: it is only read.
        self.template
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The [`Retry`] layer; built by [`Retry::layer`], refined with its builder methods.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

// === impl RetryLayer ===

impl RetryLayer {
    fn map(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|arc| Shared {
            config: arc.config,
            budget: arc.budget.clone(),
            classify: arc.classify.clone(),
            latency: arc.latency.clone(),
            inspect: arc.inspect,
            stats: arc.stats.clone(),
        });
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Uses this classifier (default: [`Classifier::default`], `retryable-idempotent-5xx`).
    pub fn classify(self, classify: SharedClassify) -> Self {
        self.map(|s| s.classify = classify)
    }

    /// Uses this latency estimate for the deadline check (default: none, no check).
    pub fn latency(self, latency: SharedLatency) -> Self {
        self.map(|s| s.latency = latency)
    }

    /// Uses this error inspector (default: [`default_error_kind`]).
    pub fn error_inspector(self, inspect: ErrorInspector) -> Self {
        self.map(|s| s.inspect = inspect)
    }

    /// Counts into these stats (default: fresh ones, see [`RetryLayer::stats`]).
    pub fn with_stats(self, stats: RetryStats) -> Self {
        self.map(|s| s.stats = stats)
    }

    /// The counters of the services this layer makes.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.clone()
    }
}

impl<S: Clone> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            own: Arc::new(Own {
                shared: self.shared.clone(),
                template: std::sync::Mutex::new(inner.clone()),
            }),
            inner,
        }
    }
}

// === impl Retry ===

impl Retry<()> {
    /// The layer, with the default classifier, no latency estimate and fresh stats. The budget is
    /// passed in so that several layers (routes, hedging) can share one.
    pub fn layer(config: RetryConfig, budget: Budget) -> RetryLayer {
        RetryLayer {
            shared: Arc::new(Shared {
                config,
                budget,
                classify: Classifier::default().shared(),
                latency: Arc::new(NoEstimate),
                inspect: default_error_kind,
                stats: RetryStats::default(),
            }),
        }
    }
}

/// Why a retryable failure was not retried, if it was not.
fn may_retry(
    shared: &Shared,
    budget: &Budget,
    retries: u32,
    deadline: Option<Deadline>,
    wait: Duration,
) -> bool {
    let stats = &shared.stats.0;
    if retries >= shared.config.max_retries {
        stats.limit_reached.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if let Some(d) = deadline {
        let needed = shared.latency.median().unwrap_or(Duration::ZERO) + wait;
        if d.remaining() <= needed {
            stats.deadline_skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    }
    if !budget.withdraw() {
        stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// Classifies one attempt's outcome by its head or error.
pub(crate) fn classify_outcome<RB>(
    classify: &dyn Classify,
    inspect: ErrorInspector,
    info: RequestInfo,
    result: &Result<Response<RB>, BoxError>,
) -> Class {
    match result {
        Ok(rsp) => match rsp.extensions().get::<crate::error::Error>() {
            // The whole service is saturated: a retry would only add load (as Envoy does not
            // retry its `x-envoy-overloaded` responses).
            Some(crate::error::Error::PendingQueueFull(_)) => Class::Failure,
            // One endpoint was at its cap: the request never reached it, so another attempt (the
            // balancer chooses again) is safe for any method.
            Some(crate::error::Error::ConcurrencyCapReached(_)) => Class::RetryableFailure,
            // The endpoint's breaker classified it with the same classifier (the request's),
            // possibly from the trailers of an empty body ([`crate::classify::PeekTrailers`]).
            _ => match rsp.extensions().get::<crate::classify::ResponseClass>() {
                Some(crate::classify::ResponseClass(class)) => *class,
                None => match classify.classify_head(info, rsp.status(), rsp.headers()) {
                    HeadClass::Done(class) => class,
                    // Decided by trailers; the body streams to the caller, so no retry.
                    HeadClass::AwaitEos => Class::Success,
                },
            },
        },
        Err(e) => classify.classify_error(info, inspect(&**e)),
    }
}

/// A request extension: when this attempt's per-try timeout expires. Set by the retry layer on
/// each attempt it times, so that layers below (the circuit breaker) can tell a timed-out attempt,
/// which is the endpoint's failure, from a cancelled one, which says nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptDeadline(pub tokio::time::Instant);

/// Sends one attempt, with the per-try timeout.
pub(crate) async fn attempt<S, B, RB>(
    mut svc: S,
    req: Request<B>,
    per_try_timeout: Option<Duration>,
) -> Result<Response<RB>, BoxError>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    attempt_on(&mut svc, req, per_try_timeout).await
}

/// Sends one attempt through `svc` (waiting for it to be ready), with the per-try timeout; the
/// same service can send the next attempt.
pub(crate) async fn attempt_on<S, B, RB>(
    svc: &mut S,
    mut req: Request<B>,
    per_try_timeout: Option<Duration>,
) -> Result<Response<RB>, BoxError>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    if let Some(t) = per_try_timeout {
        req.extensions_mut()
            .insert(AttemptDeadline(tokio::time::Instant::now() + t));
    }
    let fut = async {
        let svc = svc.ready().await?;
        svc.call(req).await
    };
    match per_try_timeout {
        None => fut.await.map_err(Into::into),
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(Box::new(crate::error::Error::PerTryTimeout(t))),
        },
    }
}

/// What a request's retries need, set aside while its first attempt is in flight.
struct Retries<S> {
    /// The service that serves every retry: the one the first attempt used when it was sent from
    /// the response future, else a clone of [`Own::template`] taken for the first retry.
    svc: Option<S>,
    own: Arc<Own<S>>,
    /// The route's own budget, if it has one; else the layer's ([`Shared::budget`]).
    route_budget: Option<Budget>,
    /// The route's classifier ([`ClassifyOverride`](crate::classify::ClassifyOverride)), if it
    /// has one; else the layer's ([`Shared::classify`]).
    route_classify: Option<SharedClassify>,
    info: RequestInfo,
    /// The request's head, copied before the first attempt's was marked ([`mark_attempt`]).
    parts: http::request::Parts,
    /// Where the first attempt went, if this layer asked ([`Loan::recording`]); `None` when the
    /// request carries a hint of its own (the copy of the head has it).
    first: Option<Recorded>,
    replay: Replay,
    deadline: Option<Deadline>,
}

impl<S> Retries<S> {
    /// The request's classifier: its route's, else the layer's.
    fn classifier(&self) -> &dyn Classify {
        self.route_classify
            .as_deref()
            .unwrap_or(&*self.own.shared.classify)
    }
}

/// Classifies the first attempt's outcome and retries while the outcome is retryable and the
/// budget, the deadline and `max_retries` allow.
async fn retry_after_first<S, B, RB>(
    mut r: Retries<S>,
    mut result: Result<Response<RB>, BoxError>,
) -> Result<Response<RB>, BoxError>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
{
    let shared = r.own.shared.clone();
    let stats = &shared.stats.0;
    let per_try = shared.config.per_try_timeout;
    let mut backoff = Backoff::new(shared.config.backoff);
    let mut retries = 0;
    mark_attempt(
        &mut r.parts,
        r.first.take().map(Recorded::into_hint),
        r.info,
    );
    loop {
        let class = classify_outcome(r.classifier(), shared.inspect, r.info, &result);
        if !class.is_retryable() {
            return result;
        }
        let wait = backoff.next_wait();
        let budget = r.route_budget.as_ref().unwrap_or(&shared.budget);
        if !may_retry(&shared, budget, retries, r.deadline, wait) {
            return result;
        }
        // Release the failed response (and its connection stream) before waiting.
        drop(result);
        retries += 1;
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(retries, ?wait, "retrying");
        tokio::time::sleep(wait).await;
        if let Some(d) = r.deadline {
            crate::deadline::propagate(&mut r.parts.headers, d);
        }
        let req = Request::from_parts(r.parts.clone(), r.replay.body());
        let svc = r.svc.get_or_insert_with(|| r.own.service());
        result = attempt_on(svc, req, per_try).await;
    }
}

/// A boxed response future.
type BoxResponse<RB> = BoxFuture<'static, Result<Response<RB>, BoxError>>;

/// The rest of a request whose first attempt went in place: its [`Retries`], boxed and with the
/// service's type erased (the response future does not name it).
type ThenRetry<RB> = Box<dyn PendingRetries<RB>>;

/// What the response future asks of a request's set-aside [`Retries`].
trait PendingRetries<RB>: Send {
    /// The first attempt's outcome, by the request's classifier.
    fn classify(&self, result: &Result<Response<RB>, BoxError>) -> Class;
    /// Starts the retry loop after a retryable first attempt.
    fn start(self: Box<Self>, result: Result<Response<RB>, BoxError>) -> BoxResponse<RB>;
}

/// [`Retries`] with the request body type its service takes.
struct Pending<S, B> {
    retries: Retries<S>,
    _body: std::marker::PhantomData<fn(B)>,
}

impl<S, B, RB> PendingRetries<RB> for Pending<S, B>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    fn classify(&self, result: &Result<Response<RB>, BoxError>) -> Class {
        let r = &self.retries;
        classify_outcome(r.classifier(), r.own.shared.inspect, r.info, result)
    }

    fn start(self: Box<Self>, result: Result<Response<RB>, BoxError>) -> BoxResponse<RB> {
        Box::pin(retry_after_first(self.retries, result))
    }
}

/// The avoid hint a replayable request's attempts share: a new one, unless the request came
/// with one.
fn new_avoid_hint(parts: &http::request::Parts) -> Option<crate::hedge::AvoidEndpoint> {
    match parts.extensions.get::<crate::hedge::AvoidEndpoint>() {
        Some(_) => None,
        None => Some(crate::hedge::AvoidEndpoint::default()),
    }
}

/// Marks an attempt's head: the avoid hint its request's attempts share (the balancer reads it,
/// so a retry goes elsewhere) and, for gRPC, trailer peeking (a status that only the trailers of
/// an empty body carry can then still be retried, as the breaker reads that far before handing
/// the response on).
///
/// The retries' copy of the head is taken before the first attempt's is marked, and marked only
/// when a retry is sent: one extension fewer to copy for the requests that never retry.
fn mark_attempt(
    parts: &mut http::request::Parts,
    avoid: Option<crate::hedge::AvoidEndpoint>,
    info: RequestInfo,
) {
    if let Some(avoid) = avoid {
        parts.extensions.insert(avoid);
    }
    if info.grpc {
        parts.extensions.insert(crate::classify::PeekTrailers);
    }
}

pin_project_lite::pin_project! {
    /// The [`Retry`] response future.
    ///
    /// A request with nothing to buffer (an empty body) and no per-try timeout has its first
    /// attempt sent in place, from `call`; only a retryable outcome starts the boxed retry loop.
    /// A request whose body must first be buffered, or whose attempts are timed, runs boxed.
    pub struct ResponseFuture<F, RB> {
        #[pin]
        state: State<F, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, RB> {
        // The first attempt, sent in place; `then` is `None` when the request goes once.
        First { #[pin] fut: F, then: Option<ThenRetry<RB>> },
        // Buffering the body, timing attempts, or retrying.
        Boxed { fut: BoxFuture<'static, Result<Response<RB>, BoxError>> },
    }
}

impl<F, RB> std::fmt::Debug for ResponseFuture<F, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::First { .. } => "first attempt",
            State::Boxed { .. } => "boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, RB, E> std::future::Future for ResponseFuture<F, RB>
where
    F: std::future::Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Boxed { fut } => return fut.as_mut().poll(cx),
                StateProj::First { fut, then } => {
                    let result = std::task::ready!(fut.poll(cx)).map_err(Into::into);
                    let Some(then) = then.take() else {
                        return Poll::Ready(result);
                    };
                    if !then.classify(&result).is_retryable() {
                        return Poll::Ready(result);
                    }
                    State::Boxed {
                        fut: then.start(result),
                    }
                }
            };
            state.set(next);
        }
    }
}

impl<S, B, RB> tower::Service<Request<B>> for Retry<S>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.own.shared;
        let stats = &shared.stats.0;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        // A route's own budget replaces the shared one.
        let route_budget = req
            .extensions()
            .get::<crate::route::RouteBudget>()
            .map(|route| route.0.clone());
        route_budget.as_ref().unwrap_or(&shared.budget).deposit();
        let per_try = shared.config.per_try_timeout;
        let (mut parts, body) = req.into_parts();
        let no_retry = parts.extensions.get::<NoRetry>().is_some();
        if per_try.is_none() && no_retry {
            // Sent once, in place, on the service made ready.
            let body = ReplayBody::Streaming {
                prefix: None,
                inner: body,
            };
            let fut = self.inner.call(Request::from_parts(parts, body));
            return ResponseFuture {
                state: State::First { fut, then: None },
            };
        }
        if per_try.is_none() && body.is_end_stream() {
            // The first attempt goes in place, on the service made ready; what a retry needs is
            // set aside in one box (built in place: the head's copy is taken inside it).
            let info = RequestInfo::new(&parts.method, &parts.headers);
            let own_hint = parts.extensions.get::<AvoidEndpoint>().is_some();
            let mut pending = Box::new(Pending::<_, B> {
                retries: Retries {
                    svc: None,
                    own: self.own.clone(),
                    route_budget,
                    route_classify: crate::classify::route_classifier(&parts.extensions),
                    info,
                    parts: parts.clone(),
                    first: None,
                    deadline: parts.extensions.get::<Deadline>().copied(),
                    replay: Replay::default(),
                },
                _body: std::marker::PhantomData,
            });
            // The first attempt carries no hint: the balancer records the endpoint it chose
            // into a recording loan, and a hint is made only for a retry (a request that never
            // retries allocates none, nor an extension map to carry one).
            mark_attempt(&mut parts, None, info);
            let loan = (!own_hint).then(Loan::recording);
            let fut = self
                .inner
                .call(Request::from_parts(parts, Replay::default().body()));
            pending.retries.first = loan.map(Loan::recorded);
            let then: ThenRetry<RB> = pending;
            return ResponseFuture {
                state: State::First {
                    fut,
                    then: Some(then),
                },
            };
        }
        // The ready service goes into the future and serves every attempt.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let own = self.own.clone();
        let fut = Box::pin(async move {
            let shared = &own.shared;
            let stats = &shared.stats.0;
            if no_retry {
                let body = ReplayBody::Streaming {
                    prefix: None,
                    inner: body,
                };
                let req = Request::from_parts(parts, body);
                return attempt_on(&mut ready, req, per_try).await;
            }
            let info = RequestInfo::new(&parts.method, &parts.headers);
            let route_classify = crate::classify::route_classifier(&parts.extensions);
            let classify = route_classify.as_deref().unwrap_or(&*shared.classify);
            let content_length = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let prepared = ReplayBody::prepare(body, content_length, shared.config.buffer_limit)
                .await
                .map_err(Into::into)?;
            let replay = match prepared {
                body::Prepared::Replayable(replay) => replay,
                body::Prepared::Once(body) => {
                    let req = Request::from_parts(parts, body);
                    let result = attempt_on(&mut ready, req, per_try).await;
                    if classify_outcome(classify, shared.inspect, info, &result).is_retryable() {
                        stats.not_replayable.fetch_add(1, Ordering::Relaxed);
                    }
                    return result;
                }
            };
            let avoid = new_avoid_hint(&parts);
            let saved = parts.clone();
            mark_attempt(&mut parts, avoid.clone(), info);
            let req = Request::from_parts(parts, replay.body());
            let result = attempt_on(&mut ready, req, per_try).await;
            let retries = Retries {
                svc: Some(ready),
                deadline: saved.extensions.get::<Deadline>().copied(),
                own: own.clone(),
                route_budget,
                route_classify,
                info,
                parts: saved,
                first: avoid.map(Recorded::Hint),
                replay,
            };
            retry_after_first(retries, result).await
        });
        ResponseFuture {
            state: State::Boxed { fut },
        }
    }
}

#[cfg(test)]
mod tests;
