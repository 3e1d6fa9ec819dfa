//! Hedged requests: a second attempt when the first is slow.
//!
//! Tail latency often comes from one slow endpoint (a GC pause, a cold cache, a noisy neighbour).
//! Hedging ("The Tail at Scale", Dean & Barroso) sends a second copy of a request that has not
//! answered after the endpoint set's observed p95 latency; whichever answers first wins and the
//! other is dropped (cancelling it down to its connection). Only 5 % of requests should wait that
//! long, so hedging costs about 5 % more load — and to keep that bound under trouble, every hedge is
//! **charged to the retry budget** ([`Budget`]): when the budget is spent, no hedges.
//!
//! Hedging is optional: put the layer in a client's stack (per client), and/or set
//! [`HedgeConfig::enabled`] to `false` and let routes opt in with a [`HedgeDelay`] request
//! extension ([`NoHedge`] opts out). It applies only to idempotent requests (GET HEAD OPTIONS TRACE PUT DELETE) whose bodies were buffered ([`ReplayBody`], ≤ 64
//! KiB by default).
//!
//! The balancer picks an endpoint for each attempt; to let it pick a *different* one for the hedge,
//! both attempts carry the same [`AvoidEndpoint`] hint (shared with the retry layer's attempts of
//! the same request): the balancer records the endpoint it chose for the first and avoids it for
//! the second whenever another is available.
//!
//! If the attempt that finishes first failed with an error (not a response), the other one is
//! awaited instead: an error is no reason to throw away an attempt that may still succeed.
//!
//! ```
//! use mesh_core::hedge::{Hedge, HedgeConfig, HedgeDelay};
//! use mesh_core::retry::{Budget, BudgetConfig};
//! use std::time::Duration;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let calls = Arc::new(AtomicUsize::new(0));
//! let c = calls.clone();
//! let backend = service_fn(move |_req: http::Request<_>| {
//!     let slow = c.fetch_add(1, Ordering::SeqCst) == 0;
//!     async move {
//!         if slow { tokio::time::sleep(Duration::from_secs(5)).await; }
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     }
//! });
//! let config = HedgeConfig { delay: HedgeDelay::Fixed(Duration::from_millis(50)), ..Default::default() };
//! let layer = Hedge::layer(config, Budget::new(BudgetConfig::default()).unwrap());
//! let stats = layer.stats();
//! let start = tokio::time::Instant::now();
//! let rsp = layer.layer(backend).oneshot(http::Request::new(String::new())).await.unwrap();
//! assert!(start.elapsed() < Duration::from_secs(1)); // the hedge answered, not the slow first try
//! assert_eq!(stats.hedges(), 1);
//! # }
//! ```

use futures_util::future::{self, BoxFuture, Either};
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body::Body;
use smallvec::SmallVec;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::BoxError;

use crate::classify::RequestInfo;
use crate::deadline::{LatencyEstimate, NoEstimate, SharedLatency};
use crate::retry::{attempt, Budget, Prepared, ReplayBody, DEFAULT_BUFFER_LIMIT};

/// A hint shared by the attempts of one request (the retry layer's retries and the hedge layer's
/// hedge): the endpoints earlier attempts went to, which later attempts avoid whenever another
/// endpoint is available (Envoy's *previous hosts* predicate). The balancer reads and writes it
/// through [`mesh_balance::Avoid`] ([`mesh_balance::Balance::call_avoiding`]).
///
/// A request carries it in one of two ways, and [`AvoidEndpoint::of`] finds either:
/// - as a request extension (retries and hedges, and a hint the caller set);
/// - *lent* ([`AvoidEndpoint::lend`]) while the request is handed down synchronously. The retry
///   layer sends a first attempt under a *recording* loan ([`Loan::recording`]) instead, which
///   lends no hint at all: the balancer records the endpoint it chose into the loan, and the
///   hint is made only for a retry. A request that never retries allocates neither a hint nor the
///   extension map to carry one. A layer that keeps a request to send later (a queue, a hedge)
///   moves a lent hint into the request, or makes one from a recording loan
///   ([`AvoidEndpoint::attach_lent`]).
///
/// A balancer placed under these layers reads the hint in its `call`: with
/// [`AvoidEndpoint::take`], which takes a recording loan as a [`Recorder`], or with
/// [`AvoidEndpoint::of`], which makes a hint from it.
/// A layer of another crate that sends a request later, from another task (tower's `Buffer`),
/// does not carry a loan along: between the retry layer and the balancer, a first attempt sent
/// through one records nothing, and its retry may go back to the same endpoint. Put such layers
/// above the retry layer or below the balancer.
///
/// One small lock per hint, taken when an attempt records its endpoint and when a later attempt
/// asks about one; never shared between requests. While nothing is recorded asking takes no
/// lock, and a first attempt sent under a recording loan has no hint to lock at all. The first
/// three endpoints (a request and two retries or hedges) are kept without a further allocation.
///
/// ```
/// use mesh_core::hedge::AvoidEndpoint;
/// use std::net::SocketAddr;
///
/// let hint = AvoidEndpoint::default();
/// let req = http::Request::new(());
/// // While a layer lends it (around its inner service's `call`), the hint is the request's ...
/// let found = {
///     let _loan = hint.clone().lend();
///     AvoidEndpoint::of(&req) // as a balancer below would ask
/// };
/// let first = SocketAddr::from(([127, 0, 0, 1], 8080));
/// found.unwrap().record(first);
/// assert_eq!(hint.avoided(), Some(first));
/// // ... and once the loan has ended, it is nobody's.
/// assert!(AvoidEndpoint::of(&req).is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct AvoidEndpoint(Arc<AvoidList>);

#[derive(Debug, Default)]
struct AvoidList {
    /// How many endpoints `list` holds, readable without its lock.
    len: std::sync::atomic::AtomicUsize,
    list: Mutex<SmallVec<[SocketAddr; 3]>>,
}

thread_local! {
    /// The state of this thread's loan ([`AvoidEndpoint::lend`], [`Loan::recording`]). One byte,
    /// so a recording loan (every first attempt's) costs a few loads and stores.
    static LOAN: std::cell::Cell<LoanState> = const { std::cell::Cell::new(LoanState::Nothing) };
    /// The endpoint of a [`LoanState::Recorded`] loan.
    static RECORDED: std::cell::Cell<Option<SocketAddr>> = const { std::cell::Cell::new(None) };
    /// The hint of a [`LoanState::Hint`] or [`LoanState::Made`] loan.
    static HINT: std::cell::Cell<Option<AvoidEndpoint>> = const { std::cell::Cell::new(None) };
}

/// The state of this thread's loan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoanState {
    /// Nothing lent, or what was lent has been taken.
    Nothing,
    /// A hint lent by [`AvoidEndpoint::lend`] (in [`HINT`]), for the first taker.
    Hint,
    /// A recording loan ([`Loan::recording`]) nobody has taken yet.
    Record,
    /// Taken from a recording loan: the endpoint the taker recorded (in [`RECORDED`]), for the
    /// lender.
    Recorded,
    /// Taken from a recording loan by a taker that needed a hint of its own (a queue, a hedge,
    /// a balancer asking with [`AvoidEndpoint::of`]): that hint (in [`HINT`]), for the lender.
    Made,
}

/// What a taker took from this thread's loan.
enum Lent {
    Nothing,
    Hint(AvoidEndpoint),
    Record,
}

impl Lent {
    /// Takes what a taker may take (a lent hint or a recording loan) and leaves the rest.
    #[inline]
    fn take_lent() -> Lent {
        match LOAN.get() {
            LoanState::Record => {
                LOAN.set(LoanState::Nothing);
                Lent::Record
            }
            LoanState::Hint => {
                LOAN.set(LoanState::Nothing);
                match HINT.try_with(std::cell::Cell::take).ok().flatten() {
                    Some(hint) => Lent::Hint(hint),
                    None => Lent::Nothing,
                }
            }
            _ => Lent::Nothing,
        }
    }

    /// The hint a taker of a recording loan makes for itself; its lender gets it too.
    fn make_for_lender() -> AvoidEndpoint {
        let hint = AvoidEndpoint::default();
        if HINT.try_with(|h| h.set(Some(hint.clone()))).is_ok() {
            LOAN.set(LoanState::Made);
        }
        hint
    }
}

/// A loan of an [`AvoidEndpoint`] to the calls below ([`AvoidEndpoint::lend`]), for as long as
/// it is held. Dropping it (when the call returns or unwinds) ends the loan: a hint nobody took is
/// dropped, and a loan made before (loans nest) is in force again. It stays on its thread, and
/// loans end in the reverse order of their making (hold each for one call, as a guard).
///
/// A *recording* loan ([`Loan::recording`]) lends no hint: it asks the first taker to say which
/// endpoint it chose, and [`Loan::recorded`] tells the lender. The retry layer sends a first
/// attempt under one, so a request that never retries allocates no hint at all.
#[must_use = "the hint is lent only while the loan is held"]
pub struct Loan {
    /// The state of the loan in force before this one; `None` once this one has ended.
    before: Option<LoanState>,
    /// That loan's hint or recorded endpoint, when it had one.
    before_value: Before,
    /// A loan belongs to the thread it was made on.
    _thread: std::marker::PhantomData<*const ()>,
}

/// What a loan keeps of the loan in force before it, besides its state.
enum Before {
    Nothing,
    Hint(Option<AvoidEndpoint>),
    Recorded(Option<SocketAddr>),
}

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("in_force", &self.before.is_some())
            .finish()
    }
}

/// What the first attempt sent under a recording loan ([`Loan::recording`]) went to.
#[derive(Clone, Debug, Default)]
pub enum Recorded {
    /// Nothing was recorded: no balancer took the loan, or it sent the request nowhere (yet).
    #[default]
    Nothing,
    /// The endpoint the balancer chose.
    Endpoint(SocketAddr),
    /// The hint a layer below made from the loan (it sends the request later, or the balancer
    /// asked with [`AvoidEndpoint::of`]); the balancer records the endpoint in it when it sends.
    Hint(AvoidEndpoint),
}

impl Recorded {
    /// A hint for the request's next attempts, holding what the first one went to.
    pub fn into_hint(self) -> AvoidEndpoint {
        match self {
            Recorded::Nothing => AvoidEndpoint::default(),
            Recorded::Endpoint(endpoint) => {
                let hint = AvoidEndpoint::default();
                hint.record(endpoint);
                hint
            }
            Recorded::Hint(hint) => hint,
        }
    }
}

impl Loan {
    /// Puts `state` (and `hint`, for a [`LoanState::Hint`]) in force, keeping what it replaces.
    #[inline]
    fn lending(state: LoanState, hint: Option<AvoidEndpoint>) -> Loan {
        let before = LOAN.replace(state);
        let before_value = match before {
            // Without the thread's locals (torn down) there is no hint to keep or lend; the
            // attempt goes without it.
            LoanState::Hint | LoanState::Made => {
                Before::Hint(HINT.try_with(|h| h.replace(hint)).ok().flatten())
            }
            LoanState::Recorded => {
                if let Some(hint) = hint {
                    let _ = HINT.try_with(|h| h.set(Some(hint)));
                }
                Before::Recorded(RECORDED.get())
            }
            LoanState::Nothing | LoanState::Record => {
                if let Some(hint) = hint {
                    let _ = HINT.try_with(|h| h.set(Some(hint)));
                }
                Before::Nothing
            }
        };
        Loan {
            before: Some(before),
            before_value,
            _thread: std::marker::PhantomData,
        }
    }

    /// Ends the loan, putting the one before it in force again, and returns what this one
    /// leaves for its lender.
    #[inline]
    fn end(&mut self) -> Recorded {
        let Some(before) = self.before.take() else {
            return Recorded::Nothing;
        };
        let state = LOAN.replace(before);
        let left = match state {
            LoanState::Recorded => RECORDED.get().map_or(Recorded::Nothing, Recorded::Endpoint),
            LoanState::Hint | LoanState::Made => {
                match HINT.try_with(std::cell::Cell::take).ok().flatten() {
                    Some(hint) if state == LoanState::Made => Recorded::Hint(hint),
                    _ => Recorded::Nothing,
                }
            }
            LoanState::Nothing | LoanState::Record => Recorded::Nothing,
        };
        match std::mem::replace(&mut self.before_value, Before::Nothing) {
            Before::Nothing => {}
            Before::Hint(hint) => {
                let _ = HINT.try_with(|h| h.set(hint));
            }
            Before::Recorded(endpoint) => RECORDED.set(endpoint),
        }
        left
    }

    /// A recording loan: the first taker below ([`AvoidEndpoint::take`], [`AvoidEndpoint::of`],
    /// [`AvoidEndpoint::attach_lent`]) has nothing to avoid and records the endpoint it sends
    /// to; [`Loan::recorded`] ends the loan and says what was recorded. Only a taker that keeps
    /// the request, or asks with [`AvoidEndpoint::of`], makes (allocates) a hint.
    ///
    /// ```
    /// use mesh_core::hedge::{AvoidEndpoint, Loan, Recorded, TakenHint};
    /// use mesh_balance::Avoid;
    /// use std::net::SocketAddr;
    ///
    /// let req = http::Request::new(());
    /// let endpoint = SocketAddr::from(([127, 0, 0, 1], 8080));
    /// let loan = Loan::recording();
    /// // A balancer below, in its `call`:
    /// if let TakenHint::Recorder(recorder) = AvoidEndpoint::take(&req) {
    ///     assert!(!recorder.avoids(&endpoint));
    ///     recorder.record(&endpoint);
    /// }
    /// assert!(matches!(loan.recorded(), Recorded::Endpoint(e) if e == endpoint));
    /// ```
    #[inline]
    pub fn recording() -> Loan {
        Loan::lending(LoanState::Record, None)
    }

    /// Ends the loan and says what the first attempt sent under it went to (always
    /// [`Recorded::Nothing`] for a loan of a hint, which its lender holds itself).
    #[inline]
    pub fn recorded(mut self) -> Recorded {
        self.end()
    }
}

impl Drop for Loan {
    #[inline]
    fn drop(&mut self) {
        if self.before.is_some() {
            self.end();
        }
    }
}

/// What a balancer takes for one request ([`AvoidEndpoint::take`]).
#[derive(Debug)]
pub enum TakenHint {
    /// No hint: the request goes anywhere, and nobody asks where.
    None,
    /// The request's hint (its extension or a lent one): avoid what it holds, record in it.
    Hint(AvoidEndpoint),
    /// A recording loan's first attempt: nothing to avoid; record the endpoint for the lender.
    Recorder(Recorder),
}

/// Records the endpoint a first attempt sent under a recording loan ([`Loan::recording`]) goes to,
/// for its lender; avoids nothing. Use it within the `call` that took it
/// ([`AvoidEndpoint::take`]), on the same thread: it records into the thread's loan.
#[derive(Debug)]
pub struct Recorder {
    _private: (),
}

impl mesh_balance::Avoid<SocketAddr> for Recorder {
    #[inline]
    fn avoids(&self, _: &SocketAddr) -> bool {
        false
    }

    /// Keeps the first endpoint recorded. Nothing is kept while a loan made after the take is
    /// in force (that loan is another request's).
    #[inline]
    fn record(&self, key: &SocketAddr) {
        if LOAN.get() == LoanState::Nothing {
            LOAN.set(LoanState::Recorded);
            RECORDED.set(Some(*key));
        }
    }
}

// === impl AvoidEndpoint ===

impl AvoidEndpoint {
    fn endpoints_mut(&self) -> std::sync::MutexGuard<'_, SmallVec<[SocketAddr; 3]>> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.0
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_empty(&self) -> bool {
        self.0.len.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Records the endpoint chosen for an attempt; returns whether it was new.
    pub fn record(&self, endpoint: SocketAddr) -> bool {
        let mut list = self.endpoints_mut();
        if list.contains(&endpoint) {
            return false;
        }
        list.push(endpoint);
        self.0
            .len
            .store(list.len(), std::sync::atomic::Ordering::Release);
        true
    }

    /// The endpoint the first attempt went to, once one has been recorded.
    pub fn avoided(&self) -> Option<SocketAddr> {
        if self.is_empty() {
            return None;
        }
        self.endpoints_mut().first().copied()
    }

    /// Whether an attempt went to `endpoint`.
    pub fn contains(&self, endpoint: SocketAddr) -> bool {
        !self.is_empty() && self.endpoints_mut().contains(&endpoint)
    }

    /// Every endpoint attempts went to, in order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.endpoints_mut().to_vec()
    }

    /// Lends this hint to what runs below on this thread while the returned [`Loan`] is held (a
    /// synchronous hand-down of one request: a service's `call`): the first
    /// [`AvoidEndpoint::of`] there takes it. A hint nobody took is dropped with the loan, so it
    /// never reaches another request.
    #[inline]
    pub fn lend(self) -> Loan {
        Loan::lending(LoanState::Hint, Some(self))
    }

    /// The hint of a request being handed down: the one it carries as an extension, else the one
    /// a layer above lent ([`AvoidEndpoint::lend`]), which is then taken (so a client nested
    /// below does not take it too). Under a recording loan ([`Loan::recording`]) it makes a
    /// hint, which the lender gets too; a balancer that records in its `call` spares that
    /// allocation with [`AvoidEndpoint::take`].
    #[inline]
    pub fn of<B>(req: &Request<B>) -> Option<AvoidEndpoint> {
        if let Some(hint) = req.extensions().get::<AvoidEndpoint>() {
            return Some(hint.clone());
        }
        match Lent::take_lent() {
            Lent::Hint(hint) => Some(hint),
            Lent::Record => Some(Lent::make_for_lender()),
            _ => None,
        }
    }

    /// What a balancer applies to a request in its `call`, as [`AvoidEndpoint::of`] finds it,
    /// except that a recording loan ([`Loan::recording`]) is taken as a [`Recorder`] (no hint to
    /// allocate). The balancer must record the endpoint before its `call` returns.
    #[inline]
    pub fn take<B>(req: &Request<B>) -> TakenHint {
        if let Some(hint) = req.extensions().get::<AvoidEndpoint>() {
            return TakenHint::Hint(hint.clone());
        }
        match Lent::take_lent() {
            Lent::Hint(hint) => TakenHint::Hint(hint),
            Lent::Record => TakenHint::Recorder(Recorder { _private: () }),
            _ => TakenHint::None,
        }
    }

    /// Moves a lent hint into `req`'s extensions, for a layer that keeps the request to send it
    /// after its own `call` has returned (a queue, a hedge); under a recording loan, a hint made
    /// for it, which the lender gets too. A request that carries a hint already keeps its own.
    pub fn attach_lent<B>(req: &mut Request<B>) {
        if req.extensions().get::<AvoidEndpoint>().is_some() {
            return;
        }
        let hint = match Lent::take_lent() {
            Lent::Hint(hint) => hint,
            Lent::Record => Lent::make_for_lender(),
            _ => return,
        };
        req.extensions_mut().insert(hint);
    }
}

impl mesh_balance::Avoid<SocketAddr> for AvoidEndpoint {
    fn avoids(&self, key: &SocketAddr) -> bool {
        self.contains(*key)
    }

    fn record(&self, key: &SocketAddr) {
        AvoidEndpoint::record(self, *key);
    }
}

/// When the hedge is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeDelay {
    /// After a fixed delay.
    Fixed(Duration),
    /// After the endpoint set's observed p95 ([`LatencyEstimate::p95`]), but never sooner than
    /// `min`; `fallback` while no estimate is known.
    P95 {
        /// The shortest delay, whatever the estimate (guards against hedging everything).
        min: Duration,
        /// The delay while the estimate is unknown.
        fallback: Duration,
    },
}

/// A request extension that turns hedging off for this request (e.g. set by the router for a route
/// without a hedging policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoHedge;

/// Configuration of [`Hedge`]. `Default`: enabled, after the p95 (at least 10 ms; 100 ms while
/// unknown), 64 KiB body limit, deposits each request into the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HedgeConfig {
    /// Whether requests are hedged unless they say otherwise. When `false`, only requests that
    /// carry a [`HedgeDelay`] extension (a route's hedging policy) are hedged. A [`NoHedge`]
    /// extension always turns hedging off.
    pub enabled: bool,
    /// When to hedge (a [`HedgeDelay`] request extension overrides it for that request).
    pub delay: HedgeDelay,
    /// Request bodies up to this size are buffered and can be hedged.
    pub buffer_limit: usize,
    /// Whether each request deposits into the budget. Set `false` when the layer sits under a
    /// [`crate::retry::Retry`] that shares the same budget (it deposits already).
    pub deposit: bool,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            delay: HedgeDelay::P95 {
                min: Duration::from_millis(10),
                fallback: Duration::from_millis(100),
            },
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            deposit: true,
        }
    }
}

/// An invalid [`HedgeConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("hedge delay {0:?} must be greater than zero")]
pub struct HedgeConfigError(pub Duration);

// === impl HedgeConfig ===

impl HedgeConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), HedgeConfigError> {
        match self.delay {
            HedgeDelay::Fixed(d) | HedgeDelay::P95 { fallback: d, .. } if d.is_zero() => {
                Err(HedgeConfigError(d))
            }
            _ => Ok(()),
        }
    }

    fn delay(&self, delay: HedgeDelay, latency: &dyn LatencyEstimate) -> Duration {
        match delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::P95 { min, fallback } => latency.p95().map_or(fallback, |p| p.max(min)),
        }
    }
}

/// Hedging counters (cheap to clone; clones share the counts).
#[derive(Clone, Debug, Default)]
pub struct HedgeStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    hedges: AtomicU64,
    hedge_wins: AtomicU64,
    budget_exhausted: AtomicU64,
}

// === impl HedgeStats ===

impl HedgeStats {
    /// Hedges sent.
    pub fn hedges(&self) -> u64 {
        self.0.hedges.load(Ordering::Relaxed)
    }
    /// Hedges that answered first.
    pub fn hedge_wins(&self) -> u64 {
        self.0.hedge_wins.load(Ordering::Relaxed)
    }
    /// Hedges not sent because the budget was spent.
    pub fn budget_exhausted(&self) -> u64 {
        self.0.budget_exhausted.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Shared {
    config: HedgeConfig,
    budget: Budget,
    latency: SharedLatency,
    stats: HedgeStats,
}

/// The hedging middleware (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Hedge<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The [`Hedge`] layer.
#[derive(Clone, Debug)]
pub struct HedgeLayer {
    shared: Arc<Shared>,
}

// === impl HedgeLayer ===

impl HedgeLayer {
    /// Uses this latency estimate for [`HedgeDelay::P95`] (default: none, so the fallback).
    pub fn latency(self, latency: SharedLatency) -> Self {
        Self {
            shared: Arc::new(Shared {
                config: self.shared.config,
                budget: self.shared.budget.clone(),
                latency,
                stats: self.shared.stats.clone(),
            }),
        }
    }

    /// The counters of the services this layer makes.
    pub fn stats(&self) -> HedgeStats {
        self.shared.stats.clone()
    }
}

impl<S> tower::Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Hedge<S> {
        Hedge {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Hedge ===

impl Hedge<()> {
    /// The layer, charging hedges to `budget` (share it with the retry layer).
    pub fn layer(config: HedgeConfig, budget: Budget) -> HedgeLayer {
        HedgeLayer {
            shared: Arc::new(Shared {
                config,
                budget,
                latency: Arc::new(NoEstimate),
                stats: HedgeStats::default(),
            }),
        }
    }
}

impl<S, B, RB> tower::Service<Request<B>> for Hedge<S>
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
        let extensions = req.extensions();
        let delay = match extensions.get::<HedgeDelay>() {
            _ if extensions.get::<NoHedge>().is_some() => None,
            Some(d) => Some(*d),
            None => self
                .shared
                .config
                .enabled
                .then_some(self.shared.config.delay),
        }
        .filter(|_| RequestInfo::new(req.method(), req.headers()).idempotent);
        let Some(delay) = delay else {
            // Not hedged: the request goes once, through the service made ready, with no clone,
            // no allocation and no wait (a deposit, if this layer makes them, is made now).
            if self.shared.config.deposit {
                budget_for(&req, &self.shared).deposit();
            }
            let (parts, body) = req.into_parts();
            let once = Request::from_parts(
                parts,
                ReplayBody::Streaming {
                    prefix: None,
                    inner: body,
                },
            );
            return ResponseFuture::Once {
                inner: self.inner.call(once),
            };
        };
        let mut req = req;
        // The attempts are sent later, from the future: a hint lent for this call (or made
        // from a recording loan) goes with them.
        AvoidEndpoint::attach_lent(&mut req);
        let shared = self.shared.clone();
        // The ready service serves the first attempt; a hedge needs a second one.
        let spare = self.inner.clone();
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::Hedging {
            fut: Box::pin(async move {
                let budget = budget_for(&req, &shared);
                if shared.config.deposit {
                    budget.deposit();
                }
                let (mut parts, body) = req.into_parts();
                let content_length = parts
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let replay =
                    match ReplayBody::prepare(body, content_length, shared.config.buffer_limit)
                        .await
                        .map_err(Into::into)?
                    {
                        Prepared::Replayable(replay) => replay,
                        Prepared::Once(body) => {
                            return attempt(ready, Request::from_parts(parts, body), None).await
                        }
                    };
                if parts.extensions.get::<AvoidEndpoint>().is_none() {
                    parts.extensions.insert(AvoidEndpoint::default());
                }
                let first_req = Request::from_parts(parts.clone(), replay.body());
                let mut first = Box::pin(attempt(ready, first_req, None));
                let delay = shared.config.delay(delay, &*shared.latency);
                let sleep = Box::pin(tokio::time::sleep(delay));
                let first = match future::select(first.as_mut(), sleep).await {
                    Either::Left((result, _)) => return result,
                    Either::Right(((), _)) => first,
                };
                if !budget.withdraw() {
                    shared
                        .stats
                        .0
                        .budget_exhausted
                        .fetch_add(1, Ordering::Relaxed);
                    return first.await;
                }
                shared.stats.0.hedges.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?delay, "hedging");
                let second = Box::pin(attempt(
                    spare,
                    Request::from_parts(parts, replay.body()),
                    None,
                ));
                match future::select(first, second).await {
                    Either::Left((Err(_), second)) => second.await,
                    Either::Left((ok, _)) => ok,
                    Either::Right((Err(_), first)) => first.await,
                    Either::Right((ok, _)) => {
                        shared.stats.0.hedge_wins.fetch_add(1, Ordering::Relaxed);
                        ok
                    }
                }
            }),
        }
    }
}

/// The budget a request's hedges are charged to: its route's own, else the layer's.
fn budget_for<B>(req: &Request<B>, shared: &Shared) -> Budget {
    match req.extensions().get::<crate::route::RouteBudget>() {
        Some(route) => route.0.clone(),
        None => shared.budget.clone(),
    }
}

pin_project_lite::pin_project! {
    /// The [`Hedge`] response future: a request that may not be hedged goes once, in place; one
    /// that may be races its attempts in a boxed future.
    #[project = ResponseFutureProj]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F, RB> {
        /// Sent once, unhedged.
        Once { #[pin] inner: F },
        /// May be hedged.
        Hedging { fut: BoxFuture<'static, Result<Response<RB>, BoxError>> },
    }
}

impl<F, RB, E> Future for ResponseFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Once { inner } => inner.poll(cx).map_err(Into::into),
            ResponseFutureProj::Hedging { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, RB> std::fmt::Debug for ResponseFuture<F, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseFuture::Once { .. } => f.write_str("ResponseFuture::Once"),
            ResponseFuture::Hedging { .. } => f.write_str("ResponseFuture::Hedging"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::deadline::FixedLatency;
    use crate::retry::BudgetConfig;
    use crate::test_util::CountClones;

    #[test]
    fn an_avoid_hint_shared_by_clones_answers_before_and_after_its_first_record() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        let hint = AvoidEndpoint::default();
        let other_attempt = hint.clone();
        assert!(!hint.contains(a));
        assert_eq!(hint.avoided(), None);
        assert!(hint.endpoints().is_empty());
        // Recorded from another thread, as a hedge's attempt may be.
        std::thread::spawn(move || assert!(other_attempt.record(a)))
            .join()
            .unwrap();
        assert!(hint.contains(a));
        assert!(!hint.contains(b));
        assert_eq!(hint.avoided(), Some(a));
        assert!(!hint.record(a), "already there");
        assert!(hint.record(b));
        assert_eq!(hint.endpoints(), vec![a, b]);
        assert_eq!(hint.avoided(), Some(a), "still the first");
    }
    use bytes::Bytes;
    use http::Method;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use tokio::time::Instant;
    use tower::{Layer, ServiceExt};

    #[test]
    fn avoid_endpoint_keeps_every_attempt_in_order_past_its_inline_room() {
        let avoid = AvoidEndpoint::default();
        assert_eq!(avoid.avoided(), None);
        let addrs: Vec<SocketAddr> = (1..=5)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 8000 + i)))
            .collect();
        for addr in &addrs {
            assert!(avoid.record(*addr), "{addr} is new");
            assert!(!avoid.record(*addr), "{addr} is known");
        }
        assert_eq!(avoid.endpoints(), addrs);
        assert_eq!(avoid.avoided(), Some(addrs[0]));
        assert!(addrs.iter().all(|a| avoid.contains(*a)));
        assert!(!avoid.contains(SocketAddr::from(([127, 0, 0, 1], 9000))));
        // Clones are one list (the attempts of one request).
        let clone = avoid.clone();
        clone.record(SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(avoid.endpoints().len(), 6);
    }

    /// Sets a flag when dropped: detects cancelled attempts.
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[derive(Clone, Default)]
    struct Backend {
        calls: Arc<AtomicUsize>,
        first_dropped: Arc<AtomicBool>,
        avoided: Arc<std::sync::Mutex<Vec<Option<SocketAddr>>>>,
    }

    impl Backend {
        /// The first call takes `first`, the others 10 ms.
        fn service(
            &self,
            first: Duration,
        ) -> impl tower::Service<
            Request<ReplayBody<Full<Bytes>>>,
            Response = Response<u32>,
            Error = std::convert::Infallible,
            Future = impl std::future::Future<
                Output = Result<Response<u32>, std::convert::Infallible>,
            > + Send,
        > + Clone
               + Send
               + 'static {
            let this = self.clone();
            tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
                let this = this.clone();
                async move {
                    let n = this.calls.fetch_add(1, Ordering::SeqCst);
                    // Play the balancer: record the endpoint of the first attempt.
                    let hint = req.extensions().get::<AvoidEndpoint>().cloned();
                    this.avoided
                        .lock()
                        .unwrap()
                        .push(hint.as_ref().and_then(AvoidEndpoint::avoided));
                    if let Some(h) = hint {
                        h.record(SocketAddr::from(([127, 0, 0, 1], 1000 + n as u16)));
                    }
                    let _flag = (n == 0).then(|| DropFlag(this.first_dropped.clone()));
                    let wait = if n == 0 {
                        first
                    } else {
                        Duration::from_millis(10)
                    };
                    tokio::time::sleep(wait).await;
                    Ok(Response::new(n as u32))
                }
            })
        }
    }

    /// Runs `f` with `hint` lent to it.
    pub(crate) fn with_loan<R>(hint: &AvoidEndpoint, f: impl FnOnce() -> R) -> R {
        let _loan = hint.clone().lend();
        f()
    }

    fn budget(min_per_sec: u32, ratio: f64) -> Budget {
        Budget::new(BudgetConfig {
            min_per_sec,
            ratio,
            ..Default::default()
        })
        .unwrap()
    }

    fn fixed(ms: u64) -> HedgeConfig {
        HedgeConfig {
            delay: HedgeDelay::Fixed(Duration::from_millis(ms)),
            ..Default::default()
        }
    }

    fn request(method: Method) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .body(Full::new(Bytes::from_static(b"q")))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_may_not_be_hedged_goes_once_in_place_and_still_deposits() {
        let backend = Backend::default();
        let clones = Arc::new(AtomicUsize::new(0));
        let budget = budget(0, 1.0);
        // Hedging off for the layer (a route may still opt in), then a POST with it on.
        let off = HedgeConfig {
            enabled: false,
            ..fixed(50)
        };
        for (config, method) in [(off, Method::GET), (fixed(50), Method::POST)] {
            let layer = Hedge::layer(config, budget.clone());
            let stats = layer.stats();
            let mut svc = layer.layer(CountClones::new(
                backend.service(Duration::from_millis(200)),
                clones.clone(),
            ));
            for _ in 0..3 {
                let fut = tower::Service::call(svc.ready().await.unwrap(), request(method.clone()));
                assert!(matches!(fut, ResponseFuture::Once { .. }), "{fut:?}");
                let sent = backend.calls.load(Ordering::SeqCst) as u32;
                assert_eq!(*fut.await.unwrap().body(), sent, "one attempt");
            }
            assert_eq!(stats.hedges(), 0);
        }
        assert_eq!(clones.load(Ordering::SeqCst), 0, "the service was cloned");
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            6,
            "each request went once"
        );
        // Six deposits at ratio 1.0: six withdrawals, not seven.
        assert_eq!(budget.available(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_first_attempt_is_hedged_and_cancelled() {
        let backend = Backend::default();
        let layer = Hedge::layer(fixed(50), budget(10, 0.2));
        let stats = layer.stats();
        let svc = layer.layer(backend.service(Duration::from_secs(5)));
        let start = Instant::now();
        let rsp = svc.oneshot(request(Method::GET)).await.unwrap();
        assert_eq!(*rsp.body(), 1, "the hedge answered");
        assert_eq!(start.elapsed(), Duration::from_millis(60));
        assert_eq!((stats.hedges(), stats.hedge_wins()), (1, 1));
        assert!(
            backend.first_dropped.load(Ordering::SeqCst),
            "the slow attempt was cancelled"
        );
        let avoided = backend.avoided.lock().unwrap().clone();
        assert_eq!(
            avoided,
            vec![None, Some(SocketAddr::from(([127, 0, 0, 1], 1000)))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_lent_to_a_hedged_request_is_the_one_both_attempts_share() {
        use tower::Service as _;
        let backend = Backend::default();
        let mut svc =
            Hedge::layer(fixed(50), budget(10, 0.2)).layer(backend.service(Duration::from_secs(5)));
        let lent = AvoidEndpoint::default();
        svc.ready().await.unwrap();
        // The attempts are sent from the future, after `call` (and the loan) has returned.
        let fut = with_loan(&lent, || svc.call(request(Method::GET)));
        assert_eq!(*fut.await.unwrap().body(), 1, "the hedge answered");
        let first = SocketAddr::from(([127, 0, 0, 1], 1000));
        let hedge = SocketAddr::from(([127, 0, 0, 1], 1001));
        assert_eq!(*backend.avoided.lock().unwrap(), vec![None, Some(first)]);
        assert_eq!(lent.endpoints(), vec![first, hedge], "the lent hint itself");
    }

    #[test]
    fn a_lent_hint_is_taken_once_below_its_lender_and_never_outlives_the_call() {
        let bare = Request::new(());
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let hint = AvoidEndpoint::default();
        with_loan(&hint, || {
            let taken = AvoidEndpoint::of(&bare).expect("lent");
            taken.record(a);
            assert!(
                AvoidEndpoint::of(&bare).is_none(),
                "taken by the first asker"
            );
        });
        assert_eq!(
            hint.avoided(),
            Some(a),
            "the lender's hint was the one recorded in"
        );
        // Not taken: gone when the call returns, so the next request cannot find it.
        with_loan(&hint, || ());
        assert!(AvoidEndpoint::of(&bare).is_none());
        // Nor after a call that panicked.
        let unwound = std::panic::catch_unwind(|| with_loan(&hint, || panic!("in the call")));
        assert!(unwound.is_err());
        assert!(AvoidEndpoint::of(&bare).is_none());
        assert_eq!(Arc::strong_count(&hint.0), 1, "no loan kept a reference");
    }

    #[test]
    fn lending_nests_and_a_request_s_own_hint_comes_first() {
        let (outer, inner, own): (AvoidEndpoint, AvoidEndpoint, AvoidEndpoint) = Default::default();
        let (a, b, c) = (
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
            SocketAddr::from(([127, 0, 0, 1], 3)),
        );
        let bare = Request::new(());
        let mut carrying = Request::new(());
        carrying.extensions_mut().insert(AvoidEndpoint::clone(&own));
        with_loan(&outer, || {
            with_loan(&inner, || {
                AvoidEndpoint::of(&carrying).unwrap().record(c);
                AvoidEndpoint::of(&bare).unwrap().record(b);
            });
            // The inner loan ended: the outer one is lent again.
            AvoidEndpoint::of(&bare).unwrap().record(a);
        });
        let endpoints = |h: &AvoidEndpoint| h.endpoints();
        assert_eq!(
            [&outer, &inner, &own].map(endpoints),
            [vec![a], vec![b], vec![c]]
        );
    }

    #[test]
    fn attaching_moves_a_lent_hint_into_a_request_that_has_none() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let (lent, own): (AvoidEndpoint, AvoidEndpoint) = Default::default();
        let mut kept = Request::new(());
        let mut carrying = Request::new(());
        carrying.extensions_mut().insert(own.clone());
        with_loan(&lent, || {
            AvoidEndpoint::attach_lent(&mut carrying);
            AvoidEndpoint::attach_lent(&mut kept);
        });
        // Later, from the request itself.
        AvoidEndpoint::of(&kept).unwrap().record(a);
        assert_eq!(lent.endpoints(), vec![a]);
        assert!(own.endpoints().is_empty());
        assert!(Arc::ptr_eq(
            &carrying.extensions().get::<AvoidEndpoint>().unwrap().0,
            &own.0
        ));
    }

    /// Records `endpoint` as a balancer does in its `call`; whether it found a recording loan.
    fn record_as_balancer(req: &Request<()>, endpoint: SocketAddr) -> bool {
        use mesh_balance::Avoid as _;
        match AvoidEndpoint::take(req) {
            TakenHint::Recorder(recorder) => {
                assert!(
                    !recorder.avoids(&endpoint),
                    "a first attempt avoids nothing"
                );
                recorder.record(&endpoint);
                true
            }
            TakenHint::Hint(hint) => {
                hint.record(endpoint);
                false
            }
            TakenHint::None => false,
        }
    }

    fn recorded_endpoint(recorded: Recorded) -> Option<SocketAddr> {
        match recorded {
            Recorded::Endpoint(endpoint) => Some(endpoint),
            Recorded::Nothing | Recorded::Hint(_) => None,
        }
    }

    #[test]
    fn a_recording_loan_tells_its_lender_the_first_endpoint_its_taker_chose() {
        let bare = Request::new(());
        let (a, b) = (
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
        );
        let loan = Loan::recording();
        assert!(record_as_balancer(&bare, a), "taken as a recorder");
        // Taken once: a second taker (a client nested below) finds nothing lent ...
        assert!(matches!(AvoidEndpoint::take(&bare), TakenHint::None));
        assert!(AvoidEndpoint::of(&bare).is_none());
        // ... and a second record (by a taker that kept its recorder) keeps the first.
        mesh_balance::Avoid::record(&Recorder { _private: () }, &b);
        assert_eq!(recorded_endpoint(loan.recorded()), Some(a));
        // The loan has ended: nothing is lent, and nothing left over reaches the next request.
        assert!(matches!(AvoidEndpoint::take(&bare), TakenHint::None));
        let next = Loan::recording();
        assert!(matches!(next.recorded(), Recorded::Nothing), "not taken");
        // A recorder whose loan has ended records nothing that a later loan would report.
        mesh_balance::Avoid::record(&Recorder { _private: () }, &b);
        let later = Loan::recording();
        assert!(matches!(later.recorded(), Recorded::Nothing));
        // Nor after a call that panicked under the loan.
        let unwound = std::panic::catch_unwind(|| {
            let _loan = Loan::recording();
            panic!("in the call");
        });
        assert!(unwound.is_err());
        assert!(matches!(AvoidEndpoint::take(&bare), TakenHint::None));
    }

    #[test]
    fn a_request_s_own_hint_comes_before_a_recording_loan() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let own = AvoidEndpoint::default();
        let mut carrying = Request::new(());
        carrying.extensions_mut().insert(own.clone());
        let loan = Loan::recording();
        assert!(!record_as_balancer(&carrying, a), "the request's own hint");
        assert_eq!(own.endpoints(), vec![a]);
        assert!(
            matches!(loan.recorded(), Recorded::Nothing),
            "still untaken"
        );
    }

    #[test]
    fn a_taker_that_needs_a_hint_makes_one_and_its_lender_gets_the_same() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        // A queue or a hedge: the request keeps the hint to be sent later.
        let mut kept = Request::new(());
        let loan = Loan::recording();
        AvoidEndpoint::attach_lent(&mut kept);
        let Recorded::Hint(lenders) = loan.recorded() else {
            panic!("the lender gets the hint made for the request");
        };
        AvoidEndpoint::of(&kept).unwrap().record(a);
        assert_eq!(lenders.endpoints(), vec![a], "one hint, shared");
        // A balancer asking with `of`.
        let bare = Request::new(());
        let loan = Loan::recording();
        let asked = AvoidEndpoint::of(&bare).expect("a hint made from the loan");
        asked.record(a);
        let Recorded::Hint(lenders) = loan.recorded() else {
            panic!("the lender gets the hint made for the balancer");
        };
        assert!(Arc::ptr_eq(&lenders.0, &asked.0));
        assert_eq!(Arc::strong_count(&asked.0), 2, "no loan kept a reference");
    }

    #[test]
    fn recording_loans_nest_with_each_other_and_with_lent_hints() {
        let (a, b, c, d) = (
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
            SocketAddr::from(([127, 0, 0, 1], 3)),
            SocketAddr::from(([127, 0, 0, 1], 4)),
        );
        let bare = Request::new(());
        let hint = AvoidEndpoint::default();
        let outer = Loan::recording();
        assert!(record_as_balancer(&bare, a));
        // Below the endpoint the first attempt went to, a nested client's own loans.
        let nested = Loan::recording();
        assert!(record_as_balancer(&bare, b));
        let innermost = hint.clone().lend();
        assert!(!record_as_balancer(&bare, c), "the lent hint, innermost");
        drop(innermost);
        assert_eq!(recorded_endpoint(nested.recorded()), Some(b));
        // The outer loan was taken already: the next taker finds nothing ...
        assert!(!record_as_balancer(&bare, d));
        // ... and the outer lender still learns its own endpoint.
        assert_eq!(recorded_endpoint(outer.recorded()), Some(a));
        assert_eq!(hint.endpoints(), vec![c]);
        // A recording loan inside an untaken lent hint, and the hint lent again after it.
        let lent = hint.clone().lend();
        let inner = Loan::recording();
        assert!(record_as_balancer(&bare, d));
        assert_eq!(recorded_endpoint(inner.recorded()), Some(d));
        assert!(!record_as_balancer(&bare, a), "the hint, lent again");
        drop(lent);
        assert_eq!(hint.endpoints(), vec![c, a]);
        assert_eq!(Arc::strong_count(&hint.0), 1, "no loan kept a reference");
    }

    #[test]
    fn what_was_recorded_becomes_the_hint_of_the_next_attempts() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(Recorded::Endpoint(a).into_hint().endpoints(), vec![a]);
        assert!(Recorded::Nothing.into_hint().endpoints().is_empty());
        let made = AvoidEndpoint::default();
        made.record(a);
        let hint = Recorded::Hint(made.clone()).into_hint();
        assert!(Arc::ptr_eq(&hint.0, &made.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedged_request_under_a_recording_loan_gives_its_lender_both_endpoints() {
        use tower::Service as _;
        let backend = Backend::default();
        let mut svc =
            Hedge::layer(fixed(50), budget(10, 0.2)).layer(backend.service(Duration::from_secs(5)));
        svc.ready().await.unwrap();
        let loan = Loan::recording();
        let fut = svc.call(request(Method::GET));
        let recorded = loan.recorded();
        assert_eq!(*fut.await.unwrap().body(), 1, "the hedge answered");
        let Recorded::Hint(hint) = recorded else {
            panic!("the hedge keeps the request: a hint was made for it");
        };
        let first = SocketAddr::from(([127, 0, 0, 1], 1000));
        let hedge = SocketAddr::from(([127, 0, 0, 1], 1001));
        assert_eq!(*backend.avoided.lock().unwrap(), vec![None, Some(first)]);
        assert_eq!(hint.endpoints(), vec![first, hedge]);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_first_attempt_is_not_hedged() {
        let backend = Backend::default();
        let layer = Hedge::layer(fixed(50), budget(10, 0.2));
        let stats = layer.stats();
        let rsp = layer
            .layer(backend.service(Duration::from_millis(20)))
            .oneshot(request(Method::GET))
            .await
            .unwrap();
        assert_eq!(*rsp.body(), 0);
        assert_eq!(stats.hedges(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_requests_are_not_hedged() {
        let backend = Backend::default();
        let layer = Hedge::layer(fixed(50), budget(10, 0.2));
        let stats = layer.stats();
        let start = Instant::now();
        let rsp = layer
            .layer(backend.service(Duration::from_secs(1)))
            .oneshot(request(Method::POST))
            .await
            .unwrap();
        assert_eq!(*rsp.body(), 0);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(stats.hedges(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_are_charged_to_the_budget() {
        let backend = Backend::default();
        let layer = Hedge::layer(fixed(50), budget(0, 0.0));
        let stats = layer.stats();
        let rsp = layer
            .layer(backend.service(Duration::from_millis(200)))
            .oneshot(request(Method::GET))
            .await
            .unwrap();
        assert_eq!(*rsp.body(), 0);
        assert_eq!((stats.hedges(), stats.budget_exhausted()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn p95_sets_the_delay() {
        let backend = Backend::default();
        let config = HedgeConfig::default();
        let layer = Hedge::layer(config, budget(10, 0.2)).latency(Arc::new(FixedLatency {
            median: Some(Duration::from_millis(20)),
            p95: Some(Duration::from_millis(80)),
        }));
        let start = Instant::now();
        let rsp = layer
            .layer(backend.service(Duration::from_secs(5)))
            .oneshot(request(Method::PUT))
            .await
            .unwrap();
        assert_eq!(*rsp.body(), 1);
        assert_eq!(start.elapsed(), Duration::from_millis(90));
        assert_eq!(
            config.delay(config.delay, &NoEstimate),
            Duration::from_millis(100),
            "fallback"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn routes_opt_in_and_out_by_extension() {
        // Off by default; a route's HedgeDelay turns it on for its requests.
        let backend = Backend::default();
        let config = HedgeConfig {
            enabled: false,
            ..fixed(50)
        };
        let layer = Hedge::layer(config, budget(10, 0.2));
        let stats = layer.stats();
        let svc = layer.layer(backend.service(Duration::from_secs(5)));
        let mut req = request(Method::GET);
        req.extensions_mut()
            .insert(HedgeDelay::Fixed(Duration::from_millis(20)));
        let rsp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(*rsp.body(), 1);
        assert_eq!(stats.hedges(), 1);
        // On by default; NoHedge turns it off.
        let backend = Backend::default();
        let layer = Hedge::layer(fixed(50), budget(10, 0.2));
        let stats = layer.stats();
        let mut req = request(Method::GET);
        req.extensions_mut().insert(NoHedge);
        let rsp = layer
            .layer(backend.service(Duration::from_millis(200)))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(*rsp.body(), 0);
        assert_eq!(stats.hedges(), 0);
    }

    #[test]
    fn config_is_validated() {
        assert!(HedgeConfig::default().validate().is_ok());
        assert!(fixed(0).validate().is_err());
    }
}
