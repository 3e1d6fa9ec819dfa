//! Load shedding: bounded queues and concurrency caps that fail fast.
//!
//! When a service is saturated, waiting makes things worse: callers time out anyway, after holding
//! memory and connections. So every wait in the mesh is bounded, and overflow fails at once with a
//! 503 that names the cause in `l5d-err` (for gRPC: `grpc-status: 14` UNAVAILABLE):
//!
//! - [`Shed`] sits **before the balancer**: at most `max_in_flight` requests are dispatched at once
//!   and at most `max_pending` wait for a slot or for the balancer to become ready (a FIFO queue:
//!   while anyone waits, a newcomer queues behind). A free slot is taken and given back with one
//!   atomic operation each; the queue's lock is touched only while requests wait. Request 1025 in
//!   the queue gets
//!   `503 l5d-err: load shed: pending queue full (1024)`.
//! - [`ConcurrencyCap`] sits **per endpoint**: more than `max` requests in flight to one endpoint get
//!   `503 l5d-err: load shed: endpoint concurrency cap reached (N)` at once.
//!
//! Defaults are Envoy's circuit-breaker thresholds: 1024 pending requests, 1024 requests in flight
//! (`max_pending_requests`, `max_requests`). A request counts as in flight until its response head
//! arrives.
//!
//! The responses carry the [`Error`] as a response extension: the retry layer does not retry a
//! full pending queue (retrying a saturated service only adds load, as Envoy does not retry its
//! `x-envoy-overloaded` responses) but does retry an endpoint's cap for any method (the request
//! never reached the endpoint; the balancer chooses again), and the breaker does not count either as
//! the endpoint's failure.
//!
//! [`Shed`] drives the inner service's readiness inside the response future, so it needs a `Clone`
//! inner service (a balancer handle, or `tower::buffer::Buffer`) and never makes its caller wait in
//! `poll_ready`.
//!
//! ```
//! use mesh_core::shed::{Shed, ShedConfig};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = Shed::layer(ShedConfig { max_pending: 0, max_in_flight: 1 });
//! let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     std::future::pending::<()>().await; // a backend that never answers
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! }));
//! let first = tokio::spawn(svc.clone().oneshot(http::Request::new(())));
//! tokio::task::yield_now().await; // the first request takes the only slot
//! let rsp = svc.oneshot(http::Request::new(())).await.unwrap();
//! // Nothing may queue: the second request is shed at once.
//! assert_eq!(rsp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(rsp.headers()["l5d-err"], "load shed: pending queue full (0)");
//! first.abort();
//! # }
//! ```

use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Notify;
use tower::{BoxError, ServiceExt};

use crate::error::{is_grpc, Error};

/// The largest `max_in_flight` (tokio's semaphore limit, which this cap once used).
const MAX_IN_FLIGHT: usize = usize::MAX >> 3;

/// Configuration of [`Shed`]. `Default`: Envoy's 1024 pending, 1024 in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShedConfig {
    /// Requests that may wait for capacity (0: none may wait).
    pub max_pending: usize,
    /// Requests dispatched at once.
    pub max_in_flight: usize,
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            max_pending: 1024,
            max_in_flight: 1024,
        }
    }
}

/// An invalid shedding configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShedConfigError {
    /// At least one request must be allowed in flight.
    #[error("max_in_flight must be at least 1 (and at most {max}), got {got}")]
    InFlight {
        /// The value given.
        got: usize,
        /// The largest allowed.
        max: usize,
    },
}

// === impl ShedConfig ===

impl ShedConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ShedConfigError> {
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            return Err(ShedConfigError::InFlight {
                got: self.max_in_flight,
                max: MAX_IN_FLIGHT,
            });
        }
        Ok(())
    }
}

/// Shedding counters (cheap to clone; clones share the counts).
#[derive(Clone, Debug, Default)]
pub struct ShedStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    pending_full: AtomicU64,
    cap_reached: AtomicU64,
}

// === impl ShedStats ===

impl ShedStats {
    /// Requests shed because the pending queue was full.
    pub fn pending_full(&self) -> u64 {
        self.0.pending_full.load(Ordering::Relaxed)
    }

    /// Requests shed because an endpoint was at its concurrency cap.
    pub fn cap_reached(&self) -> u64 {
        self.0.cap_reached.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct ShedShared {
    config: ShedConfig,
    /// Requests in the queue (waiting for a slot, then for the inner service).
    pending: AtomicUsize,
    /// Slots taken: requests dispatched and not yet answered.
    in_flight: AtomicUsize,
    /// Wakes a queued request when a slot is given back while requests are queued.
    freed: Notify,
    stats: ShedStats,
}

impl ShedShared {
    /// Takes a slot if one is free.
    ///
    /// `SeqCst` here, on `pending` and in [`Slot::drop`]: a request that queues (bumps `pending`,
    /// then tries) and a slot given back (drops `in_flight`, then reads `pending`) must not both
    /// miss the other's write, or the request would sleep beside a free slot.
    fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        let max = self.config.max_in_flight;
        let mut taken = self.in_flight.load(Ordering::SeqCst);
        loop {
            if taken >= max {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => taken = now,
            }
        }
    }

    /// Waits in the queue (FIFO, as `Notify` wakes its waiters) for a slot.
    async fn wait_for_slot(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // In line before looking, so a slot given back after the look wakes this one.
            freed.as_mut().enable();
            if let Some(slot) = self.take_slot() {
                return slot;
            }
            freed.await;
        }
    }
}

/// A taken slot, given back when the request is answered or dropped.
#[derive(Debug)]
pub struct Slot(Arc<ShedShared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.0.pending.load(Ordering::SeqCst) != 0 {
            self.0.freed.notify_one();
        }
    }
}

/// The bounded queue in front of the balancer (see the [module docs](self)).
#[derive(Debug)]
pub struct Shed<S> {
    inner: S,
    /// Whether `inner` has been polled ready and not called since: the fast path calls it in
    /// place, so the inner service (the balancer) is not cloned per request.
    inner_ready: bool,
    shared: Arc<ShedShared>,
}

/// The [`Shed`] layer. Every service it makes has its own queue and slots.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    config: ShedConfig,
    stats: ShedStats,
}

// === impl ShedLayer ===

impl ShedLayer {
    /// The counters of the services this layer makes.
    pub fn stats(&self) -> ShedStats {
        self.stats.clone()
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        let max_in_flight = self.config.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        Shed {
            inner,
            inner_ready: false,
            shared: Arc::new(ShedShared {
                config: ShedConfig {
                    max_in_flight,
                    ..self.config
                },
                pending: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                freed: Notify::new(),
                stats: self.stats.clone(),
            }),
        }
    }
}

// === impl Shed ===

impl<S: Clone> Clone for Shed<S> {
    fn clone(&self) -> Self {
        Shed {
            inner: self.inner.clone(),
            // The clone's inner service has not been polled ready.
            inner_ready: false,
            shared: self.shared.clone(),
        }
    }
}

impl Shed<()> {
    /// The layer.
    pub fn layer(config: ShedConfig) -> ShedLayer {
        ShedLayer {
            config,
            stats: ShedStats::default(),
        }
    }
}

/// Decrements the pending count when the request leaves the queue (or is cancelled in it).
struct PendingGuard(Arc<ShedShared>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for Shed<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ShedFuture<S, Request<ReqB>, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Always ready: waiting happens in the bounded queue, inside the response future. The
        // inner service is polled here so that, when it is ready, `call` can use it in place.
        if !self.inner_ready {
            match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => self.inner_ready = true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Fast path, no allocation and no clone of the inner service: it is ready, nobody is
        // queued (a newcomer does not overtake the queue) and a slot is free now.
        if self.inner_ready && self.shared.pending.load(Ordering::SeqCst) == 0 {
            if let Some(slot) = self.shared.take_slot() {
                self.inner_ready = false;
                return ShedFuture::Dispatched {
                    inner: self.inner.call(req),
                    permit: Some(slot),
                };
            }
        }
        let shared = self.shared.clone();
        let max = shared.config.max_pending;
        if shared.pending.fetch_add(1, Ordering::SeqCst) >= max {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            shared.stats.0.pending_full.fetch_add(1, Ordering::Relaxed);
            let rsp = Error::PendingQueueFull(max).to_response(is_grpc(req.headers()));
            return ShedFuture::Shed { rsp: Some(rsp) };
        }
        let guard = PendingGuard(shared);
        let inner = self.inner.clone();
        // Sent later, from the queue: a hint lent for this call (or made from a recording
        // loan) goes with the request.
        let mut req = req;
        crate::hedge::AvoidEndpoint::attach_lent(&mut req);
        ShedFuture::Queued {
            fut: Box::pin(async move {
                let permit = guard.0.wait_for_slot().await;
                let svc = inner.ready_oneshot().await.map_err(Into::into)?;
                drop(guard);
                let rsp = svc.oneshot(req).await.map_err(Into::into);
                drop(permit);
                rsp
            }),
        }
    }
}

pin_project! {
    /// The [`Shed`] response future.
    #[project = ShedProj]
    #[allow(missing_docs)]
    pub enum ShedFuture<S, Req, B>
    where
        S: tower::Service<Req>,
    {
        /// A slot was free: dispatched at once (no allocation).
        Dispatched { #[pin] inner: S::Future, permit: Option<Slot> },
        /// Waiting in the bounded queue.
        Queued { fut: BoxFuture<'static, Result<Response<B>, BoxError>> },
        /// The queue was full.
        Shed { rsp: Option<Response<B>> },
    }
}

impl<S, Req, B> std::fmt::Debug for ShedFuture<S, Req, B>
where
    S: tower::Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShedFuture").finish_non_exhaustive()
    }
}

impl<S, Req, B> Future for ShedFuture<S, Req, B>
where
    S: tower::Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Default,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ShedProj::Dispatched { inner, permit } => {
                let out = std::task::ready!(inner.poll(cx));
                drop(permit.take());
                Poll::Ready(out.map_err(Into::into))
            }
            ShedProj::Queued { fut } => fut.as_mut().poll(cx),
            ShedProj::Shed { rsp } => Poll::Ready(Ok(rsp
                .take()
                .unwrap_or_else(|| Error::PendingQueueFull(0).to_response(false)))),
        }
    }
}

/// A per-endpoint cap on requests in flight that fails fast (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct ConcurrencyCap<S> {
    inner: S,
    max: usize,
    in_flight: Arc<AtomicUsize>,
    stats: ShedStats,
}

/// The [`ConcurrencyCap`] layer: every service it makes (one per endpoint) has its own count.
#[derive(Clone, Debug)]
pub struct ConcurrencyCapLayer {
    max: usize,
    stats: ShedStats,
}

// === impl ConcurrencyCapLayer ===

impl ConcurrencyCapLayer {
    /// Counts into these stats (e.g. the [`ShedLayer`]'s).
    pub fn with_stats(mut self, stats: ShedStats) -> Self {
        self.stats = stats;
        self
    }

    /// The counters of the services this layer makes.
    pub fn stats(&self) -> ShedStats {
        self.stats.clone()
    }
}

impl<S> tower::Layer<S> for ConcurrencyCapLayer {
    type Service = ConcurrencyCap<S>;

    fn layer(&self, inner: S) -> ConcurrencyCap<S> {
        ConcurrencyCap {
            inner,
            max: self.max,
            in_flight: Arc::new(AtomicUsize::new(0)),
            stats: self.stats.clone(),
        }
    }
}

// === impl ConcurrencyCap ===

impl ConcurrencyCap<()> {
    /// The layer; `max` requests in flight per endpoint (Envoy's default `max_requests`: 1024).
    pub fn layer(max: usize) -> ConcurrencyCapLayer {
        ConcurrencyCapLayer {
            max,
            stats: ShedStats::default(),
        }
    }
}

impl<S> ConcurrencyCap<S> {
    /// Requests in flight to this endpoint now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Decrements the endpoint's in-flight count when the request completes or is dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for ConcurrencyCap<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = CapFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.stats.0.cap_reached.fetch_add(1, Ordering::Relaxed);
            return CapFuture::Shed {
                error: Some(Error::ConcurrencyCapReached(self.max)),
                grpc: is_grpc(req.headers()),
            };
        }
        CapFuture::Running {
            inner: self.inner.call(req),
            guard: Some(InFlightGuard(self.in_flight.clone())),
        }
    }
}

pin_project! {
    /// The [`ConcurrencyCap`] response future.
    #[project = CapProj]
    #[allow(missing_docs)]
    pub enum CapFuture<F> {
        /// Dispatched; holds an in-flight slot.
        Running { #[pin] inner: F, guard: Option<InFlightGuard> },
        /// Over the cap: answered at once.
        Shed { error: Option<Error>, grpc: bool },
    }
}

impl<F> std::fmt::Debug for CapFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for CapFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CapProj::Running { inner, guard } => {
                let out = std::task::ready!(inner.poll(cx));
                drop(guard.take());
                Poll::Ready(out)
            }
            CapProj::Shed { error, grpc } => {
                let err = error.take().unwrap_or(Error::ConcurrencyCapReached(0));
                Poll::Ready(Ok(err.to_response(*grpc)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::StatusCode;
    use std::time::Duration;
    use tokio::sync::Notify;
    use tower::Layer;

    /// A backend that holds every request until `release` is notified.
    fn held(
        release: Arc<Notify>,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<String>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<Response<String>, std::convert::Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |_req: Request<()>| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(Response::new("ok".to_owned()))
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn pending_queue_overflow_is_shed_at_once() {
        let release = Arc::new(Notify::new());
        let layer = Shed::layer(ShedConfig {
            max_pending: 2,
            max_in_flight: 1,
        });
        let stats = layer.stats();
        let svc = layer.layer(held(release.clone()));
        // One in flight, two waiting.
        let mut running = Vec::new();
        for _ in 0..3 {
            running.push(tokio::spawn(svc.clone().oneshot(Request::new(()))));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let start = tokio::time::Instant::now();
        let rsp = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "shed without waiting");
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            rsp.headers()["l5d-err"],
            "load shed: pending queue full (2)"
        );
        assert_eq!(stats.pending_full(), 1);
        // The queued requests complete, in order, as capacity frees up.
        for task in running {
            release.notify_one();
            let rsp = task.await.unwrap().unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
        }
        // The queue is empty again.
        release.notify_one();
        let rsp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
    }

    /// With `first` holding the only slot and `second` queued behind it: `hint` is empty while
    /// `second` waits and holds `endpoint` once it has been sent; both then finish.
    async fn queued_request_records_when_sent<E: std::fmt::Debug>(
        release: &Notify,
        first: impl Future<Output = Result<Response<String>, E>>,
        second: tokio::task::JoinHandle<Result<Response<String>, E>>,
        hint: &crate::hedge::AvoidEndpoint,
        endpoint: std::net::SocketAddr,
    ) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(hint.endpoints().is_empty(), "still queued");
        release.notify_one();
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            hint.endpoints(),
            vec![endpoint],
            "the queued request took its hint along"
        );
        release.notify_one();
        assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_lent_to_a_queued_request_reaches_the_service_when_it_is_sent() {
        use crate::hedge::tests::with_loan;
        use crate::hedge::AvoidEndpoint;
        use std::net::SocketAddr;
        use tower::{Service, ServiceExt};
        let release = Arc::new(Notify::new());
        let held = held(release.clone());
        // Plays the balancer: takes the request's hint in `call` and records an endpoint in it.
        let inner = tower::service_fn(move |req: Request<()>| {
            if let Some(hint) = AvoidEndpoint::of(&req) {
                hint.record(SocketAddr::from(([127, 0, 0, 1], 1)));
            }
            held.clone().oneshot(req)
        });
        let mut svc = Shed::layer(ShedConfig {
            max_pending: 4,
            max_in_flight: 1,
        })
        .layer(inner);
        // Sent at once: the loan reaches the service within the call.
        let at_once = AvoidEndpoint::default();
        svc.ready().await.unwrap();
        let first = with_loan(&at_once, || svc.call(Request::new(())));
        assert_eq!(at_once.endpoints().len(), 1);
        // Queued behind it: sent after the call (and the loan) has ended.
        let queued = AvoidEndpoint::default();
        svc.ready().await.unwrap();
        let second = tokio::spawn(with_loan(&queued, || svc.call(Request::new(()))));
        let endpoint = SocketAddr::from(([127, 0, 0, 1], 1));
        queued_request_records_when_sent(&release, first, second, &queued, endpoint).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_under_a_recording_loan_takes_along_a_hint_its_lender_gets() {
        use crate::hedge::{AvoidEndpoint, Loan, Recorded, TakenHint};
        use mesh_balance::Avoid as _;
        use std::net::SocketAddr;
        use tower::{Service, ServiceExt};
        let endpoint = SocketAddr::from(([127, 0, 0, 1], 1));
        let release = Arc::new(Notify::new());
        let held = held(release.clone());
        // Plays the client's balancer: takes what the request has in `call` and records in it.
        let inner = tower::service_fn(move |req: Request<()>| {
            match AvoidEndpoint::take(&req) {
                TakenHint::Recorder(recorder) => recorder.record(&endpoint),
                TakenHint::Hint(hint) => {
                    hint.record(endpoint);
                }
                TakenHint::None => {}
            }
            held.clone().oneshot(req)
        });
        let mut svc = Shed::layer(ShedConfig {
            max_pending: 4,
            max_in_flight: 1,
        })
        .layer(inner);
        // Sent at once: the balancer records into the loan itself, no hint is made.
        svc.ready().await.unwrap();
        let loan = Loan::recording();
        let first = svc.call(Request::new(()));
        assert!(matches!(loan.recorded(), Recorded::Endpoint(e) if e == endpoint));
        // Queued: a hint is made for the request, and the lender holds the same one.
        svc.ready().await.unwrap();
        let loan = Loan::recording();
        let second = svc.call(Request::new(()));
        let Recorded::Hint(hint) = loan.recorded() else {
            panic!("a queued request takes a hint along");
        };
        let second = tokio::spawn(second);
        queued_request_records_when_sent(&release, first, second, &hint, endpoint).await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_leave_the_queue() {
        let release = Arc::new(Notify::new());
        let svc = Shed::layer(ShedConfig {
            max_pending: 1,
            max_in_flight: 1,
        })
        .layer(held(release.clone()));
        let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let waiter = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::time::sleep(Duration::from_millis(1)).await;
        waiter.abort();
        let _ = waiter.await;
        // The slot the cancelled waiter held is free: this one queues instead of being shed.
        let third = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::time::sleep(Duration::from_millis(1)).await;
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        release.notify_one();
        assert_eq!(third.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_cap_fails_fast_and_frees_on_completion() {
        let release = Arc::new(Notify::new());
        let layer = ConcurrencyCap::layer(1);
        let stats = layer.stats();
        let svc = layer.layer(held(release.clone()));
        let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(svc.in_flight(), 1);
        let mut grpc = Request::new(());
        grpc.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let rsp = svc.clone().oneshot(grpc).await.unwrap();
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(
            rsp.headers()["l5d-err"],
            "load shed: endpoint concurrency cap reached (1)"
        );
        assert_eq!(stats.cap_reached(), 1);
        release.notify_one();
        first.await.unwrap().unwrap();
        assert_eq!(svc.in_flight(), 0);
    }

    #[test]
    fn config_is_validated() {
        assert!(ShedConfig::default().validate().is_ok());
        let bad = ShedConfig {
            max_in_flight: 0,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("max_in_flight must be at least 1"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn threads_racing_for_few_slots_never_exceed_them_and_none_sleeps_beside_a_free_one() {
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (n, m) = (now.clone(), most.clone());
        let inner = tower::service_fn(move |_: Request<()>| {
            let (now, most) = (n.clone(), m.clone());
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                tokio::task::yield_now().await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(Response::new(String::new()))
            }
        });
        let svc = Shed::layer(ShedConfig {
            max_pending: 1024,
            max_in_flight: 3,
        })
        .layer(inner);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..300 {
                        let rsp = svc.clone().oneshot(Request::new(())).await.unwrap();
                        assert_eq!(rsp.status(), StatusCode::OK);
                    }
                })
            })
            .collect();
        let all = futures_util::future::join_all(tasks);
        let done = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("no request waited forever for a slot");
        for task in done {
            task.unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} in flight at once");
    }

    #[tokio::test]
    async fn a_free_slot_dispatches_without_cloning_the_inner_service() {
        use tower::{Service, ServiceExt};
        let clones = Arc::new(AtomicUsize::new(0));
        let ok = tower::service_fn(|_: Request<()>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                "ok".to_owned(),
            )))
        });
        let mut svc = Shed::layer(ShedConfig::default())
            .layer(crate::test_util::CountClones::new(ok, clones.clone()));
        for _ in 0..100 {
            let rsp = svc
                .ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
        }
        assert_eq!(
            clones.load(Ordering::SeqCst),
            0,
            "the balancer was cloned per request"
        );
    }
}
