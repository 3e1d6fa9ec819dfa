//! Circuit breaking (failure accrual) per endpoint.
//!
//! An endpoint that keeps failing is taken out of the balancer's choice for a while, then one real
//! request probes it; success puts it back. The rules (docs/design.md):
//!
//! - **trip** on 7 consecutive failures (Linkerd 2's default), or when the success rate over the
//!   last 10 s falls below 0.8 with at least 5 requests (Finagle's success-rate failure accrual),
//!   judged only once the window has been observed for at least 1 s (see [`SuccessRate`]);
//! - **eject** for an exponential backoff, 1 s doubling to 60 s, with jitter 0.5 (each wait is drawn
//!   from `[½ × b, b]`), through [`mesh_balance::Health::eject`];
//! - then [`mesh_balance::Health::probe`]: the balancer sends exactly one real request; its success
//!   [`restore`](mesh_balance::Health::restore)s the endpoint and resets the backoff, its failure
//!   ejects it again for the next, longer backoff.
//!
//! ## Off the request path
//!
//! As in Linkerd 2, the per-endpoint [`Breaker`] service only classifies responses (with the shared
//! [`Classify`], observing gRPC trailers through [`ClassifyBody`]), and a
//! task per endpoint decides and flips the [`Health`]. Each outcome is counted where it is
//! classified: the consecutive failures and the success-rate window are atomics, shared with the
//! task, with no lock. Only what the task must judge is `try_send`t on a bounded channel: a
//! failure, and every outcome while the endpoint is ejected or probing. A success while the
//! breaker is closed cannot trip a rule, so it does not wake the task. A full channel drops the
//! message and counts it ([`BreakerStats::dropped`]) rather than slow a request; the outcome is
//! still counted. The balancer reads `Health` with one atomic load per candidate.
//!
//! Outcomes that arrive while the endpoint is ejected (requests that were in flight, or panic-mode
//! traffic) are discarded, including those still queued when the ejection ends; the first outcome
//! after `probe()` decides.
//!
//! ## Every outcome is seen, and a probe is never lost
//!
//! - A request dropped before its response once its deadline ([`crate::deadline::Deadline`]) or
//!   its attempt's per-try timeout ([`crate::retry::AttemptDeadline`]) has passed is a timeout:
//!   classified as [`ErrorKind::Timeout`], a failure. Dropped
//!   earlier (the caller left, a hedge won), it gives no verdict.
//! - A response body dropped before its end reports its end of stream then ([`ClassifyBody`]).
//! - A response the mesh made itself (e.g. the endpoint's concurrency cap) gives no verdict.
//! - "No verdict" while probing hands the probe back ([`Health::cancel_probe`]): another request
//!   probes, so an endpoint never stays [`Probing`](mesh_balance::HealthState::Probing) forever.
//!
//! ## Active health checks
//!
//! Optional, off by default: [`HealthCheck`] connects (TCP) or sends `GET path` (HTTP) every
//! interval and ejects or restores the endpoint through the same [`Health`] handle, with
//! HAProxy-style thresholds ([`HealthCheckConfig`]).
//!
//! ## Refused connections
//!
//! An endpoint ejected while its connections are refused (the process is down or restarting) is
//! probed every [`BreakerConfig::refused_backoff`] (500 ms; no doubling), and any success reported
//! during that ejection (a panic-mode request, a health check) restores it at once: a restarted
//! backend is back in the choice within about a second of accepting connections, instead of after
//! a backoff that has grown to a minute while it was down.
//!
//! ```
//! use mesh_balance::{Health, HealthState};
//! use mesh_core::breaker::{Breaker, BreakerConfig};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let health = Health::new();
//! let layer = Breaker::layer(BreakerConfig::default());
//! let stats = layer.stats();
//! let endpoint = layer.layer(
//!     service_fn(|_req: http::Request<()>| async {
//!         let mut rsp = http::Response::new(String::new());
//!         *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
//!         Ok::<_, std::convert::Infallible>(rsp)
//!     }),
//!     health.clone(),
//! );
//! for _ in 0..7 {
//!     endpoint.clone().oneshot(http::Request::new(())).await.unwrap();
//! }
//! while health.state() == HealthState::Available {
//!     tokio::task::yield_now().await; // let the breaker task read the outcomes
//! }
//! assert_eq!(health.state(), HealthState::Ejected);
//! assert_eq!(stats.ejections(), 1);
//! # }
//! ```

mod check;
mod task;

pub use check::{CheckKind, HealthCheck, HealthCheckConfig, HealthCheckConfigError};

use http::{Request, Response};
use mesh_balance::Health;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tower::BoxError;

use crate::classify::{
    default_error_kind, route_classifier, Class, Classifier, Classify, ClassifyBody,
    ErrorInspector, ErrorKind, HeadClass, LateClass, OnClass, PeekTrailers, RequestInfo,
    ResponseClass, SharedClassify,
};

/// Success-rate failure accrual. `Default`: threshold 0.8 over 10 s, at least 5 requests
/// (docs/design.md), judged once the window has been observed for at least 1 s.
///
/// ## Why a minimum observation time
///
/// Outcomes reach the breaker in *completion* order, not dispatch order, and failures are often
/// much faster than successes (a 503 "at the door" in 1 ms against a 10 ms success). Right after
/// the window starts (at the endpoint's creation, or when a probe restores it) the first outcomes
/// are therefore biased towards failures: with 10 % of calls failing in 1 ms, 2 failures among
/// the first 5 outcomes (a success rate of 0.6) are common, and a healthy endpoint was ejected;
/// its load then moved to the others, whose successes slowed down in turn, and ejections
/// cascaded through the fleet (the resilience bench's `random-503-10pct` scenario: 30–45
/// ejections and a p99 of 0.7–1.7 s, against ≈ 0.1 s without a breaker). Waiting
/// `min_observation` after a reset lets the slow outcomes of the same requests arrive, so the
/// rate is judged on a sample that reflects the endpoint rather than latency differences. 1 s is
/// 100 typical request times, a tenth of the window, and the first ejection's length: short enough
/// that an endpoint failing half its calls is still ejected well within the window, while an
/// endpoint that fails outright is caught sooner by the consecutive-failures rule, which has no
/// such delay. When the minimum observation time ends the window is judged as it stands, without
/// waiting for a further outcome (the balancer may have stopped choosing a failing endpoint).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuccessRate {
    /// Trip when the success rate falls below this (0.8).
    pub threshold: f64,
    /// Over this window (10 s).
    pub window: Duration,
    /// Only once the window holds at least this many requests (5).
    pub min_requests: u32,
    /// Only once the window has been observed this long since it (re)started, at the endpoint's
    /// creation or restoration (1 s; at most `window`). See above for why.
    pub min_observation: Duration,
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            threshold: 0.8,
            window: Duration::from_secs(10),
            min_requests: 5,
            min_observation: Duration::from_secs(1),
        }
    }
}

/// Configuration of the breaker. `Default` = docs/design.md's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Trip after this many consecutive failures (7, Linkerd 2); 0 turns this rule off.
    pub consecutive_failures: u32,
    /// Trip on a low success rate (`None` turns this rule off).
    pub success_rate: Option<SuccessRate>,
    /// The first ejection's length (1 s).
    pub min_backoff: Duration,
    /// The longest ejection (60 s).
    pub max_backoff: Duration,
    /// Jitter: each ejection lasts `b × (1 − jitter × u)`, `u` uniform in `[0, 1)` (0.5).
    pub jitter: f64,
    /// Messages buffered between the endpoint and its breaker task (1024): failures, and every
    /// outcome while the endpoint is ejected or probing. Successes while closed are only counted.
    pub channel_capacity: usize,
    /// The ejection length, constant and jittered like the others, when the endpoint was ejected
    /// because its connections were refused (500 ms): such an endpoint is down, not struggling, so
    /// there is no load to back off from, and it should be back soon after it listens again.
    pub refused_backoff: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            success_rate: Some(SuccessRate::default()),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: 0.5,
            channel_capacity: 1024,
            refused_backoff: Duration::from_millis(500),
        }
    }
}

/// An invalid [`BreakerConfig`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BreakerConfigError {
    /// Backoffs must be positive and ordered.
    #[error("backoff must satisfy 0 < min_backoff ({min:?}) <= max_backoff ({max:?})")]
    Backoff {
        /// min_backoff.
        min: Duration,
        /// max_backoff.
        max: Duration,
    },
    /// Jitter must be in `0.0..=1.0`.
    #[error("jitter {0} must be in 0.0..=1.0")]
    Jitter(f64),
    /// The success-rate threshold must be in `0.0..=1.0` and the window positive.
    #[error(
        "success rate threshold {threshold} must be in 0.0..=1.0 and window {window:?} positive"
    )]
    SuccessRate {
        /// The threshold.
        threshold: f64,
        /// The window.
        window: Duration,
    },
    /// The success rate's minimum observation time must not exceed its window.
    #[error("success rate min_observation {min_observation:?} must not exceed window {window:?}")]
    MinObservation {
        /// The minimum observation time.
        min_observation: Duration,
        /// The window.
        window: Duration,
    },
    /// The channel needs room for at least one outcome.
    #[error("channel_capacity must be at least 1")]
    Channel,
}

// === impl BreakerConfig ===

impl BreakerConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        if self.min_backoff.is_zero() || self.max_backoff < self.min_backoff {
            return Err(BreakerConfigError::Backoff {
                min: self.min_backoff,
                max: self.max_backoff,
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(BreakerConfigError::Jitter(self.jitter));
        }
        if let Some(sr) = self.success_rate {
            if !(0.0..=1.0).contains(&sr.threshold) || sr.window.is_zero() {
                return Err(BreakerConfigError::SuccessRate {
                    threshold: sr.threshold,
                    window: sr.window,
                });
            }
            if sr.min_observation > sr.window {
                return Err(BreakerConfigError::MinObservation {
                    min_observation: sr.min_observation,
                    window: sr.window,
                });
            }
        }
        if self.channel_capacity == 0 {
            return Err(BreakerConfigError::Channel);
        }
        if self.refused_backoff.is_zero() {
            return Err(BreakerConfigError::Backoff {
                min: self.refused_backoff,
                max: self.max_backoff,
            });
        }
        Ok(())
    }
}

/// Breaker counters, shared by every endpoint of a layer (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct BreakerStats(Arc<StatsInner>);

#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    ejections: AtomicU64,
    restorations: AtomicU64,
    failed_probes: AtomicU64,
    dropped: AtomicU64,
}

// === impl BreakerStats ===

impl BreakerStats {
    /// Times an endpoint was ejected (including after a failed probe).
    pub fn ejections(&self) -> u64 {
        self.0.ejections.load(Ordering::Relaxed)
    }
    /// Times a probe succeeded and an endpoint was restored.
    pub fn restorations(&self) -> u64 {
        self.0.restorations.load(Ordering::Relaxed)
    }
    /// Probes that failed.
    pub fn failed_probes(&self) -> u64 {
        self.0.failed_probes.load(Ordering::Relaxed)
    }
    /// Messages to a breaker task dropped because its channel was full (their outcomes were still
    /// counted).
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// What one request tells the breaker task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A classified response or error.
    Class(Class),
    /// The connection was refused: a failure, and the endpoint is down rather than struggling.
    Refused,
    /// Nothing about the endpoint (a mesh-made answer, a cancelled request).
    None,
}

/// Sends one outcome to the breaker task, without waiting.
#[derive(Clone, Debug)]
pub struct Report {
    /// Where outcomes go: one reference count to copy into each request's future, not four.
    to: Arc<ReportTo>,
    /// Whether this report comes after the response head: a failure known only then (gRPC
    /// trailers) is also charged to the balancer's cost, through the endpoint's health.
    late: bool,
    /// Layers above waiting for a class known only at the end of the body (metrics).
    late_class: Option<LateClass>,
}

/// What every [`Report`] of one endpoint shares.
#[derive(Debug)]
struct ReportTo {
    tx: mpsc::Sender<Verdict>,
    /// The endpoint's counts, kept here; only what the task must judge goes on `tx`.
    counts: Arc<task::Counts>,
    stats: BreakerStats,
    health: Health,
    /// The layer's classifier, for requests whose route has none of its own.
    classify: SharedClassify,
}

impl Report {
    /// This report, for a class learned after the response head was handed on: a failure is then
    /// charged to the balancer through the endpoint's health, and settles `late_class`.
    fn late(self, late_class: LateClass) -> Self {
        Self {
            late: true,
            late_class: Some(late_class),
            ..self
        }
    }

    fn send(&self, verdict: Verdict) {
        let to = &*self.to;
        if !to.counts.record(verdict) {
            return;
        }
        if to.tx.try_send(verdict).is_err() {
            to.stats.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl OnClass for Report {
    fn on_class(self, class: Class) {
        if self.late && !class.is_success() {
            self.to.health.report_late_failure();
        }
        self.send(Verdict::Class(class));
        if let Some(late_class) = self.late_class {
            late_class.settle(class);
        }
    }
}

/// The per-endpoint breaker service: classifies outcomes and reports them to its task.
#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
    /// Also holds the layer's classifier ([`ReportTo::classify`]).
    report: Report,
    inspect: ErrorInspector,
    /// The breaker task, when the layer was applied outside a Tokio runtime: spawned by the
    /// first `poll_ready` (which runs inside one). `None` on the usual path.
    start: Option<Arc<Deferred>>,
}

/// A breaker task not spawned yet (the layer was applied outside a runtime).
struct Deferred(std::sync::Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>);

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

impl Deferred {
    /// Spawns the task if a runtime is running now; `false` if not (try again later).
    fn spawn(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let pending = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(run) = pending {
            drop(runtime.spawn(run));
        }
        true
    }
}

/// Makes a [`Breaker`] per endpoint (the `NewBreaker` of the triplet): [`BreakerLayer::layer`]
/// takes the endpoint's service and its [`Health`] and spawns the endpoint's breaker task (so it
/// must be called within a Tokio runtime). The task ends when the endpoint's service (all its
/// clones) is dropped.
#[derive(Clone, Debug)]
pub struct BreakerLayer {
    config: BreakerConfig,
    classify: SharedClassify,
    inspect: ErrorInspector,
    stats: BreakerStats,
}

/// The name of the per-target constructor in the `X` / `X::layer` / `NewX` triplet.
pub type NewBreaker = BreakerLayer;

// === impl BreakerLayer ===

impl BreakerLayer {
    /// Uses this classifier (default: [`Classifier::default`]).
    pub fn classify(mut self, classify: SharedClassify) -> Self {
        self.classify = classify;
        self
    }

    /// Uses this error inspector (default: [`default_error_kind`]).
    pub fn error_inspector(mut self, inspect: ErrorInspector) -> Self {
        self.inspect = inspect;
        self
    }

    /// The counters of every endpoint this layer wraps.
    pub fn stats(&self) -> BreakerStats {
        self.stats.clone()
    }

    /// Wraps one endpoint's service; spawns its breaker task, which drives `health`. Outside a
    /// Tokio runtime the task is spawned by the service's first `poll_ready` instead.
    pub fn layer<S>(&self, inner: S, health: Health) -> Breaker<S> {
        let (tx, rx) = mpsc::channel(self.config.channel_capacity.max(1));
        let counts = Arc::new(task::Counts::new(&self.config));
        let run = task::run(
            rx,
            health.clone(),
            self.config,
            self.stats.clone(),
            counts.clone(),
        );
        let start = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drop(runtime.spawn(run));
                None
            }
            Err(_) => Some(Arc::new(Deferred(std::sync::Mutex::new(Some(Box::pin(
                run,
            )))))),
        };
        Breaker {
            start,
            inner,
            report: Report {
                to: Arc::new(ReportTo {
                    tx,
                    counts,
                    stats: self.stats.clone(),
                    health,
                    classify: self.classify.clone(),
                }),
                late: false,
                late_class: None,
            },
            inspect: self.inspect,
        }
    }
}

/// A [`tower::Layer`] for one endpoint: [`BreakerLayer`] bound to that endpoint's [`Health`], for
/// use in a `ServiceBuilder`. Each `layer` call spawns a breaker task driving the same `Health`, so
/// apply it once per endpoint.
#[derive(Clone, Debug)]
pub struct EndpointBreakerLayer {
    layer: BreakerLayer,
    health: Health,
}

impl<S> tower::Layer<S> for EndpointBreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        self.layer.layer(inner, self.health.clone())
    }
}

/// As a plain [`tower::Layer`], each service gets a [`Health`] of its own (read by no balancer);
/// to give a balancer the endpoint's health, use [`BreakerLayer::with_health`].
impl<S> tower::Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        BreakerLayer::layer(self, inner, Health::new())
    }
}

impl BreakerLayer {
    /// This layer bound to one endpoint's `health`, as a [`tower::Layer`].
    pub fn with_health(&self, health: Health) -> EndpointBreakerLayer {
        EndpointBreakerLayer {
            layer: self.clone(),
            health,
        }
    }
}

// === impl Breaker ===

impl Breaker<()> {
    /// The per-endpoint layer with the default classifier.
    pub fn layer(config: BreakerConfig) -> BreakerLayer {
        BreakerLayer {
            config,
            classify: Classifier::default().shared(),
            inspect: default_error_kind,
            stats: BreakerStats::default(),
        }
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for Breaker<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body + Unpin,
{
    type Response = Response<ClassifyBody<ResB, Report>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Some(start) = &self.start {
            if start.spawn() {
                self.start = None;
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let info = RequestInfo::of(&req);
        // The route's classifier, if it has one; else the layer's, reached through the report.
        let route_classify = route_classifier(req.extensions());
        let timeout_at = timeout_at(req.extensions());
        let peek = info.grpc && req.extensions().get::<PeekTrailers>().is_some();
        ResponseFuture {
            inner: self.inner.call(req),
            state: Some(Pending {
                info,
                report: self.report.clone(),
                route_classify,
                inspect: self.inspect,
                timeout_at,
                peek,
            }),
            peeking: None,
        }
    }
}

/// When the request times out: the earlier of its deadline and its attempt's per-try timeout.
fn timeout_at(extensions: &http::Extensions) -> Option<tokio::time::Instant> {
    let deadline = extensions
        .get::<crate::deadline::Deadline>()
        .map(|d| d.at());
    let attempt = extensions
        .get::<crate::retry::AttemptDeadline>()
        .map(|d| d.0);
    match (deadline, attempt) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Pending {
    info: RequestInfo,
    report: Report,
    /// The route's classifier, if it has one (else [`ReportTo::classify`]): the layer's is not
    /// copied into each request.
    route_classify: Option<SharedClassify>,
    inspect: ErrorInspector,
    timeout_at: Option<tokio::time::Instant>,
    /// Read the body's first frame before handing the response on when the head leaves the
    /// class open ([`PeekTrailers`]).
    peek: bool,
}

impl Pending {
    /// The request's classifier: its route's, else the layer's.
    fn classify(&self) -> &dyn Classify {
        self.route_classify
            .as_deref()
            .unwrap_or(&*self.report.to.classify)
    }

    /// The request's classifier, to keep (for a body classified at its end).
    fn owned_classify(&self) -> SharedClassify {
        self.route_classify
            .clone()
            .unwrap_or_else(|| self.report.to.classify.clone())
    }
}

pin_project! {
    /// The [`Breaker`] response future. Dropped before the response, it reports a timeout if
    /// the request's deadline or per-try timeout has passed, else no verdict.
    pub struct ResponseFuture<F, B>
    where
        B: http_body::Body,
    {
        #[pin]
        inner: F,
        state: Option<Pending>,
        // A response whose class waits for the end of its body, while its first frame is read
        // (`PeekTrailers`). Dropped here, its body reports the end of the stream. Boxed: rare (gRPC
        // with the status in an empty body's trailers) and large, and inline it would make every
        // request's future that much larger.
        peeking: Option<Box<(http::response::Parts, ClassifyBody<B, Report>)>>,
    }

    impl<F, B> PinnedDrop for ResponseFuture<F, B>
    where
        B: http_body::Body,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(p) = this.state.take() {
                // Timers fire at or after their instant, with millisecond resolution.
                let timed_out = p.timeout_at.is_some_and(|at| {
                    tokio::time::Instant::now() + Duration::from_millis(1) >= at
                });
                if timed_out {
                    let class = p.classify().classify_error(p.info, ErrorKind::Timeout);
                    p.report.send(Verdict::Class(class));
                } else {
                    p.report.send(Verdict::None);
                }
            }
        }
    }
}

impl<F, B: http_body::Body> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body + Unpin,
    E: Into<BoxError>,
{
    type Output = Result<Response<ClassifyBody<B, Report>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            if let Some(mut peeking) = this.peeking.take() {
                let Poll::Ready(peeked) = peeking.1.poll_peek(cx) else {
                    *this.peeking = Some(peeking);
                    return Poll::Pending;
                };
                let (parts, mut body) = *peeking;
                let mut rsp = Response::from_parts(parts, ());
                match peeked {
                    // Decided by the first frame: known with the head, as if the head had said it.
                    Some(class) => {
                        rsp.extensions_mut().insert(ResponseClass(class));
                    }
                    // Data first: the class comes at the end of the body, after the head.
                    None => {
                        let late_class = LateClass::new();
                        if let Some(report) = body.report_mut() {
                            report.late = true;
                            report.late_class = Some(late_class.clone());
                        }
                        rsp.extensions_mut().insert(late_class);
                    }
                }
                return Poll::Ready(Ok(rsp.map(|()| body)));
            }
            let result = std::task::ready!(this.inner.poll(cx));
            let Some(p) = this.state.take() else {
                // Polled after completion: report nothing more.
                return Poll::Ready(
                    result
                        .map(|r| r.map(ClassifyBody::passthrough))
                        .map_err(Into::into),
                );
            };
            return Poll::Ready(match result {
                // A response the mesh made itself (e.g. the endpoint's concurrency cap shed it) says
                // nothing about the endpoint's health: no verdict (a probe is handed back).
                Ok(rsp) if rsp.extensions().get::<crate::error::Error>().is_some() => {
                    p.report.send(Verdict::None);
                    Ok(rsp.map(ClassifyBody::passthrough))
                }
                Ok(mut rsp) => {
                    let head = p
                        .classify()
                        .classify_head(p.info, rsp.status(), rsp.headers());
                    Ok(match head {
                        HeadClass::Done(class) => {
                            p.report.on_class(class);
                            // The layers above read the same verdict (one classification),
                            // except where every reader's own reading of the head agrees (a
                            // success below 500 without a gRPC status): that common case costs
                            // no extension (an allocation or three).
                            if !class.is_success()
                                || rsp.status().is_server_error()
                                || crate::headers::first(rsp.headers(), &crate::error::GRPC_STATUS)
                                    .is_some()
                            {
                                rsp.extensions_mut().insert(ResponseClass(class));
                            }
                            rsp.map(ClassifyBody::passthrough)
                        }
                        HeadClass::AwaitEos if rsp.body().is_end_stream() => {
                            let class = p.classify().classify_eos(p.info, None);
                            p.report.on_class(class);
                            rsp.extensions_mut().insert(ResponseClass(class));
                            rsp.map(ClassifyBody::passthrough)
                        }
                        HeadClass::AwaitEos if p.peek => {
                            let (parts, body) = rsp.into_parts();
                            let body =
                                ClassifyBody::new(body, p.owned_classify(), p.info, p.report);
                            *this.peeking = Some(Box::new((parts, body)));
                            // Read the first frame now.
                            continue;
                        }
                        HeadClass::AwaitEos => {
                            let late_class = LateClass::new();
                            rsp.extensions_mut().insert(late_class.clone());
                            let classify = p.owned_classify();
                            let report = p.report.late(late_class);
                            rsp.map(|b| ClassifyBody::new(b, classify, p.info, report))
                        }
                    })
                }
                Err(e) => {
                    let e: BoxError = e.into();
                    let kind = (p.inspect)(&*e);
                    if kind == ErrorKind::Connect {
                        p.report.send(Verdict::Refused);
                    } else {
                        let class = p.classify().classify_error(p.info, kind);
                        p.report.on_class(class);
                    }
                    Err(e)
                }
            });
        }
    }
}

#[cfg(test)]
mod tests;
