//! The balancer: power of two choices over peak-EWMA cost, as a cheaply clonable [`tower::Service`].
//!
//! **Choice.** For each request the balancer draws two distinct endpoints at random and sends the
//! request to the one with the lower cost, `peak-EWMA RTT × (pending + 1) / weight` (Mitzenmacher's
//! "power of two choices"; the cost is Finagle's and Linkerd 2's peak-EWMA load, see [`crate::ewma`]).
//! Two random choices avoid both the herd behaviour of "always the least loaded" (every client piles
//! onto the same endpoint between updates) and the blindness of round robin, at O(1) per request.
//! A weight of 0 drains an endpoint: it is chosen only if every endpoint is drained. Weights shape
//! the share *under load* (with equal latencies, pending counts settle where `(pending + 1) / weight`
//! is equal, so a weight-2 endpoint carries about twice the requests); at very low concurrency the
//! heavier endpoint simply wins most comparisons. Exact traffic splits (canaries) belong to the router,
//! not to endpoint weights.
//!
//! Cost of a choice: two random numbers, two health loads, two cost reads (three atomic loads each);
//! no allocation, no lock. Only when a drawn endpoint is ejected, probing or drained does the balancer
//! scan the set (O(n) atomic loads) to count what is available and decide on panic mode.
//!
//! **Health.** Each endpoint carries a [`Health`] handle that a circuit breaker flips. Ejected
//! endpoints are not candidates; an endpoint in [`HealthState::Probing`] gets exactly one request when
//! it is drawn ([`Health::try_acquire_probe`]). When fewer than
//! [`Config::panic_threshold`] (default 50 %, Envoy's) of the non-drained endpoints are available,
//! the balancer is in *panic mode* and balances over all of them: better to spread load over endpoints
//! the breaker distrusts than to crush the few that are left (Envoy's reasoning).
//!
//! **Every outcome is seen.** A request dropped before its endpoint answered (a timeout, a
//! deadline, a hedge that lost) is charged too (see [`crate::ewma`]): otherwise a stalled
//! endpoint's estimate would only fade, and it would win the comparisons. The classifier's finer
//! [`Outcome`] marks endpoints that refuse connections; panic mode leaves them out while any other
//! endpoint is left, and a mesh-made answer ([`Outcome::NoVerdict`]) records nothing. An endpoint
//! that takes a probe starts again from the default estimate: it is judged by the process that
//! answers now, not by the penalties that got it ejected.
//!
//! **Server-reported load.** An endpoint whose responses carry a load report (its requests in
//! flight, capacity and service time, see [`crate::report`]) is ranked by the time a new request
//! would take there instead: wait for a slot plus service time
//! ([`Classify::take_load_report`] reads the report and takes it off the response). The service
//! time the server measures excludes queueing, so it is unbiased where the client's own RTT is
//! inflated by it, and the server's in-flight count includes other clients' requests. Such a
//! request compares [`Config::choices`] random candidates (default 5) rather than two: with a
//! fresh view of each, more candidates remove the cases where both of two are busy or slow.
//! Endpoints that have never reported keep exactly the peak-EWMA power of two choices (the first
//! two draws are the same; more are drawn only when one of them reports). Failures of a reporting
//! endpoint raise a penalty that overrides the completion time, charged as the peak-EWMA
//! estimate's is. Each report is a handful of relaxed atomic stores on its endpoint; no lock.
//!
//! **Retries go elsewhere.** [`Balance::call_avoiding`] takes the endpoints earlier attempts of
//! the same request used ([`Avoid`]) and picks another whenever one is available. When every
//! available endpoint has been tried, an untried one the breaker has ejected comes before one
//! that already failed the request (a restarted process may be back before its ejection ends).
//!
//! **Why not `tower::balance::p2c`.** tower's balancer owns its endpoints and needs `&mut self`, so a
//! shared client puts it behind a `Buffer` task: every request crosses a channel, and the balancer only
//! learns of discovery changes and endpoint readiness when a request polls it (tower#824); after a
//! removal its cached ready index can point at the wrong endpoint (tower#856). Here, instead:
//! - the endpoint set is an immutable snapshot behind an [`arc_swap::ArcSwap`], rebuilt by one
//!   background task ([`Driver`]) that consumes the discovery stream; updates never block requests,
//!   and a removed endpoint's in-flight requests hold an `Arc` and finish;
//! - [`Balance`] is a handle (an `Arc` and a per-handle random generator): clone it into every task,
//!   no `Buffer` needed;
//! - per-endpoint load (estimate, pending count) is in atomics on the endpoint, never behind a global
//!   lock; `call` picks and increments `pending` at once, and a guard decrements it when the response
//!   future completes *or is dropped*, so cancellation cannot leak load;
//! - the endpoint services are `Clone` (a connection handle, typically). Each endpoint keeps one
//!   instance that a request calls in place, under a lock held only for its `poll_ready` and `call`
//!   and only taken with `try_lock`: while another request holds it, or when it is not ready at
//!   once, the request gets a clone, whose readiness its response future drives. Cloning a
//!   meshwork endpoint's stack costs about ten reference-count updates and as many on its drop, so
//!   the usual request makes none. The balancer's own `poll_ready` is always ready.
//!
//! **Empty set.** When the set is empty, a request waits in a bounded queue
//! ([`Config::queue_capacity`], default 1024, Envoy's pending cap) for at most
//! [`Config::failfast_timeout`] (default 3 s) for an endpoint to appear, then fails with
//! [`Error::NoEndpoints`]; beyond the queue's capacity it fails at once with [`Error::QueueFull`].
//!
//! **Observed latency.** [`Balance::latency`] gives the set's recent p50/p95/p99 (see
//! [`crate::latency`]) for retry and hedging decisions; [`Balance::endpoints`] the per-endpoint state.
//!
//! ```
//! use std::convert::Infallible;
//! use futures_util::stream;
//! use mesh_balance::{Balance, Config, Endpoint};
//! use tower::discover::Change;
//! use tower::{service_fn, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_balance::BoxError> {
//! let echo = |name: &'static str| service_fn(move |req: u32| async move {
//!     Ok::<_, Infallible>(format!("{name}: {req}"))
//! });
//! let discover = stream::iter([
//!     Ok::<_, Infallible>(Change::Insert("a", Endpoint::new(echo("a")))),
//!     Ok(Change::Insert("b", Endpoint::new(echo("b")).weight(2))),
//! ]);
//! let mut balance = Balance::builder(Config::default()).spawn(discover)?;
//! let rsp = balance.ready().await?.call(7).await?;
//! assert!(rsp.ends_with(": 7"));
//! # Ok(())
//! # }
//! ```

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_core::Stream;
use futures_util::{FutureExt, StreamExt};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::discover::Change;
use tower::Service;

use crate::classify::{Classify, ErrIsFailure, Outcome};
use crate::config::Config;
use crate::error::{BoxError, BuildError, Error};
use crate::ewma::{nanos, EndpointLoad, Penalty};
use crate::health::{Health, HealthState};
use crate::latency::{LatencyHistogram, LatencySummary};

/// What discovery inserts: the endpoint's service, its weight and its health handle.
///
/// ```
/// use mesh_balance::{Endpoint, Health};
///
/// let health = Health::new(); // keep a clone for the circuit breaker
/// let ep = Endpoint::new(()).weight(3).health(health.clone());
/// assert_eq!(ep.weight, 3);
/// ```
#[derive(Clone, Debug)]
pub struct Endpoint<S> {
    /// The endpoint's service. The balancer keeps one clone of it that requests call in place,
    /// and clones it again for a request only while that one is in use or not ready.
    pub service: S,
    /// Relative share: the cost is divided by it. `0` drains the endpoint. Default 1.
    pub weight: u32,
    /// The health handle the circuit breaker drives. Default: a fresh, available handle.
    pub health: Health,
}

// === impl Endpoint ===

impl<S> Endpoint<S> {
    /// An endpoint of weight 1 with a fresh [`Health`].
    pub fn new(service: S) -> Self {
        Self {
            service,
            weight: 1,
            health: Health::new(),
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Uses `health` (shared with a circuit breaker) as the endpoint's health handle.
    pub fn health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }
}

/// The endpoints that earlier attempts of one request went to, so that a retry or a hedge goes
/// elsewhere whenever another endpoint is available (Envoy's *previous hosts* retry predicate).
///
/// A retry layer keeps one value per request and passes it to every attempt through
/// [`Balance::call_avoiding`]; the balancer skips the endpoints it [`avoids`](Avoid::avoids) when it
/// can and [`record`](Avoid::record)s the one it picks. Without this, each attempt is an
/// independent draw, and with two of three endpoints dead and ejected (panic mode: all three are
/// candidates) the retries of a request keep landing on the dead ones.
///
/// ```
/// use std::sync::Mutex;
/// use mesh_balance::Avoid;
///
/// #[derive(Default)]
/// struct Tried(Mutex<Vec<u32>>);
/// impl Avoid<u32> for Tried {
///     fn avoids(&self, key: &u32) -> bool { self.0.lock().unwrap().contains(key) }
///     fn record(&self, key: &u32) { self.0.lock().unwrap().push(*key) }
/// }
/// let tried = Tried::default();
/// tried.record(&7);
/// assert!(tried.avoids(&7) && !tried.avoids(&8));
/// ```
pub trait Avoid<K>: Send + Sync {
    /// Whether an earlier attempt of the request went to `key`.
    fn avoids(&self, key: &K) -> bool;
    /// Records that this attempt goes to `key`.
    fn record(&self, key: &K);
}

/// The latest load report an endpoint sent, as the balancer holds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReportedLoad {
    /// Requests in flight at the server when it answered (that response excluded).
    pub in_flight: u32,
    /// How many it serves at once.
    pub capacity: u32,
    /// Its recent mean time in the application.
    pub service_time: Duration,
    /// How long ago the report arrived.
    pub age: Duration,
}

/// A read-only view of one endpoint's balancing state.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStats<K> {
    /// The discovery key.
    pub key: K,
    /// The peak-EWMA latency estimate as the balancer reads it now.
    pub rtt_estimate: Duration,
    /// Requests in flight to this endpoint through this balancer.
    pub pending: usize,
    /// Its health state.
    pub health: HealthState,
    /// Its weight.
    pub weight: u32,
    /// Its latest usable load report; `None` if it never sent one (peak-EWMA cost).
    pub report: Option<ReportedLoad>,
    /// Load reports read from its responses (usable or not, malformed excluded).
    pub reports: u64,
    /// Malformed load reports ignored.
    pub malformed_reports: u64,
}

/// Configuration shared by every endpoint and request, resolved once at construction.
struct Common<C> {
    classify: C,
    latency: LatencyHistogram,
    /// When the balancer was built, as [`crate::clock::nanos`].
    base_ns: u64,
    decay_ns: f64,
    default_rtt_ns: f64,
    penalty: Penalty,
    panic_threshold: f64,
    queue_capacity: usize,
    failfast_timeout: Duration,
    choices: usize,
}

impl<C> Common<C> {
    #[inline]
    fn now_ns(&self) -> u64 {
        crate::clock::now_ns().saturating_sub(self.base_ns)
    }
}

/// One endpoint in a snapshot.
struct Member<K, S, C> {
    key: K,
    /// Cloned for a request that cannot use `own`.
    service: S,
    /// The instance requests call in place (see the module docs): a clone of `service`, made
    /// by the first request that finds it missing.
    own: std::sync::Mutex<Option<S>>,
    weight: u32,
    /// `1 / weight`, or 1 for a drained endpoint (only used when everything is drained).
    inv_weight: f64,
    health: Health,
    load: Arc<EndpointLoad>,
    common: Arc<Common<C>>,
}

impl<K, S, C> Member<K, S, C> {
    #[inline]
    fn eligible(&self) -> bool {
        self.weight > 0 && self.health.is_available()
    }

    #[inline]
    fn cost(&self, now_ns: u64) -> f64 {
        let late = self.health.take_late_failures();
        if late > 0 {
            let common = &self.common;
            for _ in 0..late.min(8) {
                self.load
                    .observe(0.0, Some(&common.penalty), now_ns, common.decay_ns);
            }
        }
        self.load.cost(now_ns, self.common.decay_ns) * self.inv_weight
    }
}

struct Snapshot<K, S, C> {
    members: Vec<Arc<Member<K, S, C>>>,
}

struct Shared<K, S, C> {
    snapshot: Arc<ArcSwap<Snapshot<K, S, C>>>,
    updates: watch::Receiver<u64>,
    common: Arc<Common<C>>,
    waiting: AtomicUsize,
    seeds: AtomicU64,
}

/// The balancer handle: a [`tower::Service`] that sends each request to one endpoint of the current
/// set. Clone it freely; clones share the endpoint set and its state. See the [module docs](self).
pub struct Balance<K, S, C = ErrIsFailure> {
    shared: Arc<Shared<K, S, C>>,
    rng: Rng,
}

/// Builds a [`Balance`]: configuration and failure classification, then the discovery stream.
#[derive(Debug)]
pub struct Builder<C = ErrIsFailure> {
    config: Config,
    classify: C,
}

/// The background task that applies discovery changes to the balancer's endpoint set.
///
/// [`Builder::spawn`] spawns it; [`Builder::build`] returns it for you to run (e.g. on a runtime of
/// your choice). It ends when the discovery stream ends or every [`Balance`] handle is dropped. If it
/// is not running, the set never changes.
#[must_use = "the endpoint set only changes while the driver runs"]
pub struct Driver {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
}

// === impl Builder ===

impl Builder<ErrIsFailure> {
    /// A builder with `config` and the default classifier ([`ErrIsFailure`]).
    pub fn new(config: Config) -> Self {
        Self {
            config,
            classify: ErrIsFailure,
        }
    }
}

impl<C> Builder<C> {
    /// Uses `classify` to decide which outcomes are failures (e.g. HTTP 5xx).
    pub fn classify<C2>(self, classify: C2) -> Builder<C2> {
        Builder {
            config: self.config,
            classify,
        }
    }

    /// Builds the balancer and spawns its [`Driver`] on the current tokio runtime.
    pub fn spawn<K, S, D, E>(self, discover: D) -> Result<Balance<K, S, C>, BuildError>
    where
        D: Stream<Item = Result<Change<K, Endpoint<S>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: Send + Sync + 'static,
        C: Send + Sync + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current()?;
        let (balance, driver) = self.build(discover)?;
        runtime.spawn(driver);
        Ok(balance)
    }

    /// Builds the balancer and returns the [`Driver`] that must run for the set to change.
    pub fn build<K, S, D, E>(self, discover: D) -> Result<(Balance<K, S, C>, Driver), BuildError>
    where
        D: Stream<Item = Result<Change<K, Endpoint<S>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: Send + Sync + 'static,
        C: Send + Sync + 'static,
    {
        let config = self.config;
        config.validate()?;
        let common = Arc::new(Common {
            classify: self.classify,
            latency: LatencyHistogram::new(config.latency_half_life),
            base_ns: crate::clock::nanos(Instant::now()),
            decay_ns: nanos(config.decay),
            default_rtt_ns: nanos(config.default_rtt),
            penalty: Penalty {
                factor: config.failure_penalty,
                floor: config.default_rtt,
                max: config.max_failure_rtt,
            },
            panic_threshold: config.panic_threshold,
            queue_capacity: config.queue_capacity,
            failfast_timeout: config.failfast_timeout,
            choices: config.choices,
        });
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot {
            members: Vec::new(),
        }));
        let (tx, rx) = watch::channel(0u64);
        let seed = config
            .seed
            .unwrap_or_else(|| RandomState::new().hash_one(0x6d65_7368u64));
        let shared = Arc::new(Shared {
            snapshot: snapshot.clone(),
            updates: rx,
            common: common.clone(),
            waiting: AtomicUsize::new(0),
            seeds: AtomicU64::new(seed),
        });
        let driver = Driver {
            future: Box::pin(drive(discover, tx, snapshot, common)),
        };
        let rng = Rng::new(shared.seeds.fetch_add(GOLDEN, Ordering::Relaxed));
        Ok((Balance { shared, rng }, driver))
    }
}

/// Applies discovery changes, in batches, to the snapshot.
async fn drive<K, S, C, D, E>(
    discover: D,
    tx: watch::Sender<u64>,
    snapshot: Arc<ArcSwap<Snapshot<K, S, C>>>,
    common: Arc<Common<C>>,
) where
    D: Stream<Item = Result<Change<K, Endpoint<S>>, E>>,
    E: Into<BoxError>,
    K: Hash + Eq + Clone,
{
    let mut discover = std::pin::pin!(discover);
    let mut members: Vec<Arc<Member<K, S, C>>> = Vec::new();
    let mut index: HashMap<K, usize> = HashMap::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = tx.closed() => {
                tracing::debug!("every balancer handle was dropped; stopping discovery");
                return;
            }
            next = discover.next() => next,
        };
        let mut changed = false;
        let mut item = next;
        loop {
            match item {
                None => {
                    if changed {
                        publish(&snapshot, &tx, &members);
                    }
                    tracing::debug!(
                        endpoints = members.len(),
                        "discovery stream ended; keeping the last endpoint set"
                    );
                    return;
                }
                Some(Err(e)) => {
                    let e: BoxError = e.into();
                    tracing::warn!(error = %e, "discovery error; keeping the current endpoint set");
                }
                Some(Ok(change)) => {
                    apply(change, &mut members, &mut index, &common);
                    changed = true;
                }
            }
            // Take every change that is already available, then publish once.
            match discover.next().now_or_never() {
                Some(next) => item = next,
                None => break,
            }
        }
        if changed {
            publish(&snapshot, &tx, &members);
        }
    }
}

fn apply<K, S, C>(
    change: Change<K, Endpoint<S>>,
    members: &mut Vec<Arc<Member<K, S, C>>>,
    index: &mut HashMap<K, usize>,
    common: &Arc<Common<C>>,
) where
    K: Hash + Eq + Clone,
{
    match change {
        Change::Insert(key, ep) => {
            let existing = index.get(&key).copied();
            // A re-inserted key (new weight, new connection) keeps its learned latency.
            let load = match existing {
                Some(i) => members[i].load.clone(),
                None => Arc::new(EndpointLoad::new(common.default_rtt_ns, common.now_ns())),
            };
            let member = Arc::new(Member {
                key: key.clone(),
                own: std::sync::Mutex::new(None),
                service: ep.service,
                weight: ep.weight,
                inv_weight: if ep.weight == 0 {
                    1.0
                } else {
                    1.0 / f64::from(ep.weight)
                },
                health: ep.health,
                load,
                common: common.clone(),
            });
            match existing {
                Some(i) => members[i] = member,
                None => {
                    index.insert(key, members.len());
                    members.push(member);
                }
            }
        }
        Change::Remove(key) => {
            if let Some(i) = index.remove(&key) {
                members.swap_remove(i);
                if let Some(moved) = members.get(i) {
                    index.insert(moved.key.clone(), i);
                }
            }
        }
    }
}

fn publish<K, S, C>(
    snapshot: &ArcSwap<Snapshot<K, S, C>>,
    tx: &watch::Sender<u64>,
    members: &[Arc<Member<K, S, C>>],
) {
    snapshot.store(Arc::new(Snapshot {
        members: members.to_vec(),
    }));
    tx.send_modify(|version| *version = version.wrapping_add(1));
}

// === impl Driver ===

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

// === impl Balance ===

impl Balance<(), (), ErrIsFailure> {
    /// A [`Builder`] with `config`.
    pub fn builder(config: Config) -> Builder<ErrIsFailure> {
        Builder::new(config)
    }
}

impl<K: Clone, S, C> Balance<K, S, C> {
    /// The number of endpoints in the current set (drained and ejected included).
    pub fn len(&self) -> usize {
        self.shared.snapshot.load().members.len()
    }

    /// Whether the current set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many requests are waiting for the empty set to fill.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Each endpoint's current balancing state, in snapshot order. Allocates; not for the request path.
    pub fn endpoints(&self) -> Vec<EndpointStats<K>> {
        let now = self.shared.common.now_ns();
        let decay = self.shared.common.decay_ns;
        self.shared
            .snapshot
            .load()
            .members
            .iter()
            .map(|m| {
                let (reports, malformed_reports) = m.load.report_counts();
                EndpointStats {
                    key: m.key.clone(),
                    rtt_estimate: Duration::from_nanos(m.load.estimate_ns(now, decay) as u64),
                    pending: m.load.pending(),
                    health: m.health.state(),
                    weight: m.weight,
                    report: m.load.reported_load(now).map(|r| ReportedLoad {
                        in_flight: r.in_flight,
                        capacity: r.capacity,
                        service_time: Duration::from_nanos(r.service_ns as u64),
                        age: Duration::from_nanos(r.age_ns),
                    }),
                    reports,
                    malformed_reports,
                }
            })
            .collect()
    }

    /// The set's recent latency percentiles (successful responses), or `None` before the first one.
    pub fn latency(&self) -> Option<LatencySummary> {
        self.shared.common.latency.summary()
    }
}

impl<K, S, C> Clone for Balance<K, S, C> {
    fn clone(&self) -> Self {
        let seed = self.shared.seeds.fetch_add(GOLDEN, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
            rng: Rng::new(seed),
        }
    }
}

impl<K, S, C> fmt::Debug for Balance<K, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("endpoints", &self.shared.snapshot.load().members.len())
            .field("waiting", &self.shared.waiting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K, S, C, Req> Service<Req> for Balance<K, S, C>
where
    K: Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<K, S, C, Req>;

    /// Always ready: waiting for endpoints happens in the response future, bounded.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.dispatch(req, None)
    }
}

impl<K, S, C> Balance<K, S, C> {
    /// Like [`Service::call`], but avoids the endpoints earlier attempts of the same request went
    /// to (see [`Avoid`]) whenever another is available, and records the one it picks. While the
    /// set is empty the request waits as usual and the hint is not used.
    #[inline]
    pub fn call_avoiding<Req>(
        &mut self,
        req: Req,
        avoid: &dyn Avoid<K>,
    ) -> ResponseFuture<K, S, C, Req>
    where
        K: Send + Sync + 'static,
        S: Service<Req> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        C: Classify<S::Response, S::Error>,
    {
        self.dispatch(req, Some(avoid))
    }

    #[inline]
    fn dispatch<Req>(
        &mut self,
        req: Req,
        avoid: Option<&dyn Avoid<K>>,
    ) -> ResponseFuture<K, S, C, Req>
    where
        K: Send + Sync + 'static,
        S: Service<Req> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        C: Classify<S::Response, S::Error>,
    {
        let state = match self.shared.try_pick(&mut self.rng, avoid) {
            Picked::Member(mut in_flight) => {
                // The endpoint's own instance, if no other request is in it and it is ready.
                // Busy (another request, perhaps on this very thread) or poisoned by a panic
                // inside it, it is left alone: the request gets a clone, as tower does.
                let called = match in_flight.member.own.try_lock() {
                    Ok(mut slot) => {
                        let own = slot.get_or_insert_with(|| in_flight.member.service.clone());
                        let called = call_if_ready(own, req);
                        if !matches!(called, Ok(Ok(_))) {
                            // Failed (a service whose readiness failed is done, by tower's
                            // contract) or waiting on a waker that will never wake it: the next
                            // request starts from a fresh clone, as every request did before.
                            *slot = None;
                        }
                        called
                    }
                    Err(_) => Err(req),
                };
                let req = match called {
                    Ok(Ok(future)) => {
                        return ResponseFuture {
                            state: State::Called {
                                future,
                                in_flight: Some(in_flight),
                            },
                        }
                    }
                    Ok(Err(e)) => {
                        let mut result = Err(e);
                        in_flight.complete(&mut result);
                        return ResponseFuture {
                            state: State::Failed {
                                error: result.err().map(Into::into),
                            },
                        };
                    }
                    Err(req) => req,
                };
                let mut service = in_flight.member.service.clone();
                // An endpoint that is ready now (the usual case) gets the request at once, so the
                // future holds neither the request nor the service. Polling with a no-op waker
                // is only a look: if it is not ready, the future polls the same service again
                // with the caller's waker.
                let mut look = Context::from_waker(std::task::Waker::noop());
                match service.poll_ready(&mut look) {
                    Poll::Ready(Ok(())) => State::Called {
                        future: service.call(req),
                        in_flight: Some(in_flight),
                    },
                    Poll::Ready(Err(e)) => {
                        let mut result = Err(e);
                        in_flight.complete(&mut result);
                        State::Failed {
                            error: result.err().map(Into::into),
                        }
                    }
                    Poll::Pending => State::Ready {
                        pending: Box::new(Readying {
                            in_flight: Some(in_flight),
                            service,
                            req: Some(req),
                        }),
                    },
                }
            }
            Picked::Empty => {
                let capacity = self.shared.common.queue_capacity;
                if self.shared.waiting.fetch_add(1, Ordering::AcqRel) >= capacity {
                    self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
                    State::Failed {
                        error: Some(Error::QueueFull { capacity }.into()),
                    }
                } else {
                    let slot = WaitSlot(self.shared.clone());
                    let rng = Rng::new(self.rng.next_u64());
                    State::Waiting {
                        wait: Box::pin(wait_for_endpoints(slot, rng)),
                        req: Some(Box::new(req)),
                    }
                }
            }
            Picked::NoneAvailable { endpoints } => State::Failed {
                error: Some(Error::NoneAvailable { endpoints }.into()),
            },
        };
        ResponseFuture { state }
    }
}

/// Calls `service` if a look (a no-op waker) finds it ready; else hands the request back.
#[inline]
fn call_if_ready<S, Req>(service: &mut S, req: Req) -> Result<Result<S::Future, S::Error>, Req>
where
    S: Service<Req>,
{
    let mut look = Context::from_waker(std::task::Waker::noop());
    match service.poll_ready(&mut look) {
        Poll::Ready(Ok(())) => Ok(Ok(service.call(req))),
        Poll::Ready(Err(e)) => Ok(Err(e)),
        Poll::Pending => Err(req),
    }
}

enum Picked<K, S, C> {
    Member(InFlight<K, S, C>),
    Empty,
    NoneAvailable { endpoints: usize },
}

// === impl Shared ===

impl<K, S, C> Shared<K, S, C> {
    fn try_pick(&self, rng: &mut Rng, avoid: Option<&dyn Avoid<K>>) -> Picked<K, S, C> {
        let snapshot = self.snapshot.load();
        let now_ns = self.common.now_ns();
        match pick(
            &snapshot.members,
            rng,
            now_ns,
            self.common.panic_threshold,
            self.common.choices,
            avoid,
        ) {
            Choice::Member(member, probe) => {
                if probe {
                    // Restored endpoints are judged afresh: the estimate that got it ejected
                    // (penalties up to `max_failure_rtt`) says nothing about the process that now
                    // answers, and would keep it out of the choice for tens of seconds.
                    member.load.reset(self.common.default_rtt_ns, now_ns);
                }
                if let Some(avoid) = avoid {
                    avoid.record(&member.key);
                }
                member.load.start();
                Picked::Member(InFlight {
                    member: member.clone(),
                    start_ns: now_ns,
                    probe,
                    done: false,
                })
            }
            Choice::Empty => Picked::Empty,
            Choice::NoneAvailable => Picked::NoneAvailable {
                endpoints: snapshot.members.len(),
            },
        }
    }
}

enum Choice<'a, K, S, C> {
    Member(&'a Arc<Member<K, S, C>>, bool),
    Empty,
    NoneAvailable,
}

/// Power of two choices with health, probes, panic mode, drained and avoided endpoints.
///
/// Fast path (the common case): two distinct random members, both available, weighted and not
/// avoided: the cheaper wins; no scan. When one of them reports its load, `choices - 2` more are
/// drawn and the cheapest usable one of all wins. Because the pair is uniform over the whole set, this is also a
/// correct draw in panic mode. Otherwise one O(n) pass counts available and weighted members, picks
/// the pool (available; all weighted in panic mode; everything if all are drained) and draws two from
/// it, preferring, in this order, members that are neither refusing connections (panic mode only)
/// nor avoided, then weighted members outside the pool (ejected) that are neither, then not
/// refusing, then not avoided, then the whole pool.
#[inline]
fn pick<'a, K, S, C>(
    members: &'a [Arc<Member<K, S, C>>],
    rng: &mut Rng,
    now_ns: u64,
    panic_threshold: f64,
    choices: usize,
    avoid: Option<&dyn Avoid<K>>,
) -> Choice<'a, K, S, C> {
    let n = members.len();
    if n == 0 {
        return Choice::Empty;
    }
    let avoided = |m: &Member<K, S, C>| avoid.is_some_and(|a| a.avoids(&m.key));
    if n == 1 {
        let m = &members[0];
        if m.eligible() {
            return Choice::Member(m, false);
        }
        if m.health.state() == HealthState::Probing && m.health.try_acquire_probe() {
            return Choice::Member(m, true);
        }
    } else {
        let (i, j) = rng.two_distinct(n);
        let (a, b) = (&members[i], &members[j]);
        if a.eligible() && b.eligible() {
            match (avoided(a), avoided(b)) {
                (false, false) => {
                    if choices > 2 && (a.load.reported() || b.load.reported()) {
                        return Choice::Member(
                            cheapest_of_more(members, (i, j), rng, now_ns, choices, &avoided),
                            false,
                        );
                    }
                    return Choice::Member(cheaper(a, b, now_ns), false);
                }
                (true, false) => return Choice::Member(b, false),
                (false, true) => return Choice::Member(a, false),
                (true, true) => {}
            }
        }
        // A drawn endpoint waiting for its probe gets this request (not a retry's: a probe
        // should not be a request's second try at the same endpoint).
        for m in [a, b] {
            if m.weight > 0
                && m.health.state() == HealthState::Probing
                && !avoided(m)
                && m.health.try_acquire_probe()
            {
                return Choice::Member(m, true);
            }
        }
    }

    let (mut weighted, mut available) = (0usize, 0usize);
    for m in members {
        if m.weight > 0 {
            weighted += 1;
            if m.health.is_available() {
                available += 1;
            }
        }
    }
    let panic = weighted > 0 && (available as f64) < panic_threshold * weighted as f64;
    let pool: Pool<K, S, C> = if weighted == 0 {
        |_| true
    } else if panic {
        |m| m.weight > 0
    } else if available == 0 {
        return Choice::NoneAvailable;
    } else {
        Member::eligible
    };
    // Panic mode spreads load over endpoints the breaker distrusts, but not over those refusing
    // connections right now: a process that is not listening cannot take any of it.
    let serving = |m: &Member<K, S, C>| !(panic && m.load.refused());
    // A retry that has tried every endpoint of the pool goes to one it has not tried, even one
    // the breaker distrusts (it may be back: a restarted process), before going back to one that
    // already failed this request (e.g. fresh endpoints that all refuse while the only live one
    // is still ejected).
    let tiers: [&Tier<'_, K, S, C>; 5] = [
        &|m| pool(m) && serving(m) && !avoided(m),
        &|m| m.weight > 0 && serving(m) && !avoided(m),
        &|m| pool(m) && serving(m),
        &|m| pool(m) && !avoided(m),
        &|m| pool(m),
    ];
    for tier in tiers {
        let size = members.iter().filter(|m| tier(m)).count();
        match size {
            0 => continue,
            1 => {
                if let Some(m) = nth(members, tier, 0) {
                    return Choice::Member(m, false);
                }
            }
            _ => {
                let (r1, r2) = rng.two_distinct(size);
                return match (nth(members, tier, r1), nth(members, tier, r2)) {
                    (Some(a), Some(b)) => Choice::Member(cheaper(a, b, now_ns), false),
                    (Some(m), None) | (None, Some(m)) => Choice::Member(m, false),
                    (None, None) => Choice::Empty,
                };
            }
        }
    }
    Choice::Empty
}

/// Which members a fallback draw is from.
type Pool<K, S, C> = fn(&Member<K, S, C>) -> bool;

/// A pool narrowed by what the request and the endpoints' recent answers prefer.
type Tier<'t, K, S, C> = dyn Fn(&Member<K, S, C>) -> bool + 't;

#[inline]
fn cheaper<'a, K, S, C>(
    a: &'a Arc<Member<K, S, C>>,
    b: &'a Arc<Member<K, S, C>>,
    now_ns: u64,
) -> &'a Arc<Member<K, S, C>> {
    if b.cost(now_ns) < a.cost(now_ns) {
        b
    } else {
        a
    }
}

/// The most candidates one request compares ([`Config::choices`]).
pub(crate) const MAX_CHOICES: usize = 8;

/// The cheapest of the drawn pair `(i, j)` and `choices - 2` more distinct random members that are
/// eligible and not avoided (drawn without allocation; with `choices` or fewer members, all of
/// them).
#[inline]
fn cheapest_of_more<'a, K, S, C>(
    members: &'a [Arc<Member<K, S, C>>],
    (i, j): (usize, usize),
    rng: &mut Rng,
    now_ns: u64,
    choices: usize,
    avoided: &dyn Fn(&Member<K, S, C>) -> bool,
) -> &'a Arc<Member<K, S, C>> {
    let n = members.len();
    let mut best = cheaper(&members[i], &members[j], now_ns);
    let mut best_cost = best.cost(now_ns);
    let mut consider = |m: &'a Arc<Member<K, S, C>>, best: &mut &'a Arc<Member<K, S, C>>| {
        if m.eligible() && !avoided(m) {
            let cost = m.cost(now_ns);
            if cost < best_cost {
                best_cost = cost;
                *best = m;
            }
        }
    };
    if n <= choices {
        for (k, m) in members.iter().enumerate() {
            if k != i && k != j {
                consider(m, &mut best);
            }
        }
        return best;
    }
    let mut drawn = [usize::MAX; MAX_CHOICES];
    drawn[0] = i;
    drawn[1] = j;
    let want = choices.min(MAX_CHOICES);
    let mut have = 2;
    // Rejection sampling: with n > choices, each draw is new with probability > 1/2 at worst.
    let mut tries = 0;
    while have < want && tries < 4 * MAX_CHOICES {
        tries += 1;
        let k = rng.below(n);
        if drawn[..have].contains(&k) {
            continue;
        }
        drawn[have] = k;
        have += 1;
        consider(&members[k], &mut best);
    }
    best
}

fn nth<'a, K, S, C>(
    members: &'a [Arc<Member<K, S, C>>],
    pool: &Tier<'_, K, S, C>,
    k: usize,
) -> Option<&'a Arc<Member<K, S, C>>> {
    members.iter().filter(|m| pool(m)).nth(k)
}

// === waiting for endpoints ===

/// One place in the bounded wait queue; released on drop.
struct WaitSlot<K, S, C>(Arc<Shared<K, S, C>>);

impl<K, S, C> Drop for WaitSlot<K, S, C> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

type WaitFuture<K, S, C> = Pin<Box<dyn Future<Output = Result<InFlight<K, S, C>, Error>> + Send>>;

async fn wait_for_endpoints<K, S, C>(
    slot: WaitSlot<K, S, C>,
    mut rng: Rng,
) -> Result<InFlight<K, S, C>, Error> {
    let shared = &slot.0;
    let start = Instant::now();
    let deadline = start + shared.common.failfast_timeout;
    let mut updates = shared.updates.clone();
    loop {
        // Mark first, then look: a change published after the look wakes `changed()`.
        updates.mark_unchanged();
        match shared.try_pick(&mut rng, None) {
            Picked::Member(in_flight) => return Ok(in_flight),
            Picked::NoneAvailable { endpoints } => return Err(Error::NoneAvailable { endpoints }),
            Picked::Empty => {}
        }
        match tokio::time::timeout_at(deadline, updates.changed()).await {
            Ok(Ok(())) => continue,
            // The driver stopped: the set will not change any more.
            Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
            Err(_elapsed) => {}
        }
        return Err(Error::NoEndpoints {
            waited: Instant::now().saturating_duration_since(start),
        });
    }
}

// === in-flight accounting ===

/// A request charged to an endpoint: holds it alive, counts it pending until dropped.
struct InFlight<K, S, C> {
    member: Arc<Member<K, S, C>>,
    start_ns: u64,
    probe: bool,
    done: bool,
}

impl<K, S, C> InFlight<K, S, C> {
    /// Records the outcome: the load report the response carries (taken off it), RTT (from the
    /// pick, endpoint readiness included) and classification.
    fn complete<Rsp, E>(&mut self, result: &mut Result<Rsp, E>)
    where
        C: Classify<Rsp, E>,
    {
        self.done = true;
        let common = &self.member.common;
        if let Ok(rsp) = result {
            match common.classify.take_load_report(rsp) {
                None => {}
                Some(Ok(report)) => {
                    // Ours in flight when it answered: this request is still counted.
                    let ours = self.member.load.pending().saturating_sub(1);
                    self.member
                        .load
                        .record_report(&report, common.now_ns(), ours);
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "ignoring a malformed load report");
                    self.member.load.record_malformed();
                }
            }
        }
        let outcome = common.classify.outcome(result);
        if outcome == Outcome::NoVerdict {
            // Nothing learned; an unused probe goes back so another request can probe.
            if self.probe {
                self.member.health.cancel_probe();
            }
            return;
        }
        let load = &self.member.load;
        let now_ns = common.now_ns();
        let rtt_ns = now_ns.saturating_sub(self.start_ns);
        let failed = outcome != Outcome::Success;
        load.answered();
        load.set_refused(outcome == Outcome::Refused);
        load.observe(
            rtt_ns as f64,
            failed.then_some(&common.penalty),
            now_ns,
            common.decay_ns,
        );
        if !failed {
            common.latency.record(Duration::from_nanos(rtt_ns), now_ns);
        }
    }

    /// The request was dropped before its endpoint answered (a timeout, a deadline, a hedge that
    /// lost, a caller that left). It took at least the elapsed time, so that is charged when it
    /// exceeds the estimate; and from the second request in a row dropped unanswered, with no
    /// answer in between, each is charged as a failure: an endpoint that answers nothing is
    /// stalled, and without this its idle decay would make it the cheapest of the set.
    fn charge_drop(&self) {
        let common = &self.member.common;
        let load = &self.member.load;
        let now_ns = common.now_ns();
        let elapsed = now_ns.saturating_sub(self.start_ns) as f64;
        let in_a_row = load.unanswered();
        if in_a_row >= 2 {
            load.observe(elapsed, Some(&common.penalty), now_ns, common.decay_ns);
        } else if elapsed > load.estimate_ns(now_ns, common.decay_ns) {
            load.observe(elapsed, None, now_ns, common.decay_ns);
        }
    }
}

impl<K, S, C> Drop for InFlight<K, S, C> {
    fn drop(&mut self) {
        if !self.done {
            self.charge_drop();
            if self.probe {
                self.member.health.cancel_probe();
            }
        }
        self.member.load.finish();
    }
}

// === impl ResponseFuture ===

pin_project! {
    /// The response of [`Balance`]: records the outcome into the chosen endpoint's load.
    ///
    /// An endpoint that is ready when it is chosen gets the request from [`Service::call`], so
    /// this future holds only the endpoint's own future; otherwise it drives the endpoint's
    /// `ready()` and then `call`, or first waits for an endpoint if the set is empty.
    pub struct ResponseFuture<K, S, C, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<K, S, C, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<K, S, C, Req>
    where
        S: Service<Req>,
    {
        Failed { error: Option<BoxError> },
        // The set was empty: waits for an endpoint (rare, so the request is boxed).
        Waiting { wait: WaitFuture<K, S, C>, req: Option<Box<Req>> },
        // The chosen endpoint was not ready at once (rare, so this is boxed).
        Ready { pending: Box<Readying<K, S, C, Req>> },
        Called { in_flight: Option<InFlight<K, S, C>>, #[pin] future: S::Future },
        Done,
    }
}

/// A request waiting for its chosen endpoint to be ready.
struct Readying<K, S, C, Req> {
    in_flight: Option<InFlight<K, S, C>>,
    service: S,
    req: Option<Req>,
}

impl<K, S, C, Req> Future for ResponseFuture<K, S, C, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Waiting { wait, req } => match ready!(wait.as_mut().poll(cx)) {
                    Ok(in_flight) => {
                        let req = req.take().map(|req| *req);
                        let service = in_flight.member.service.clone();
                        this.state.set(State::Ready {
                            pending: Box::new(Readying {
                                in_flight: Some(in_flight),
                                service,
                                req,
                            }),
                        });
                    }
                    Err(error) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                },
                StateProj::Ready { pending } => match ready!(pending.service.poll_ready(cx)) {
                    Ok(()) => {
                        let req = pending
                            .req
                            .take()
                            .expect("ResponseFuture polled after completion");
                        let future = pending.service.call(req);
                        let in_flight = pending.in_flight.take();
                        this.state.set(State::Called { in_flight, future });
                    }
                    Err(e) => {
                        let mut result = Err(e);
                        if let Some(mut in_flight) = pending.in_flight.take() {
                            in_flight.complete(&mut result);
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(result.map_err(Into::into));
                    }
                },
                StateProj::Called { in_flight, future } => {
                    let mut result = ready!(future.poll(cx));
                    if let Some(mut in_flight) = in_flight.take() {
                        in_flight.complete(&mut result);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<K, S, C, Req> fmt::Debug for ResponseFuture<K, S, C, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed { .. } => "failed",
            State::Waiting { .. } => "waiting for endpoints",
            State::Ready { .. } => "waiting for endpoint readiness",
            State::Called { .. } => "in flight",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

// === random numbers ===

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function: a bijection that scatters nearby inputs over the whole range.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64: one add and three multiply-xorshifts per draw, no shared state. Each [`Balance`]
/// handle owns one, seeded from a shared counter, so handles never contend on the generator.
///
/// The counter steps by the same constant as the generator, so a raw counter value as the state
/// would put clone `k + 1` exactly one draw ahead of clone `k` (a pick is two draws: clone `k + 2`
/// would repeat clone `k`'s picks one step later, and a few clones in rotation would pile onto the
/// same endpoints). The seed is therefore mixed before use: the clones' states are unrelated points
/// of the sequence.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(mix(seed ^ 0x6A09_E667_F3BC_C909))
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for any set size).
    #[inline]
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Two distinct uniform indices in `0..n`, `n >= 2`.
    #[inline]
    fn two_distinct(&mut self, n: usize) -> (usize, usize) {
        let i = self.below(n);
        let mut j = self.below(n - 1);
        if j >= i {
            j += 1;
        }
        (i, j)
    }
}
