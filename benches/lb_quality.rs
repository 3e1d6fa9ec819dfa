//! Balancing quality: a deterministic simulation of a fleet under load, for each balancing policy
//! and against an oracle that knows everything a balancer could know.
//!
//! Run with `cargo bench --bench lb_quality`. It prints a markdown table
//! `| scenario | policy | p50_ms | p99_ms | p999_ms | success_pct |` and writes the same rows as a JSON
//! array to `target/lb_quality.json` (relative to the `meshwork` package root).
//!
//! # Model
//! - 10 endpoints; each serves at most 8 requests at once and queues the rest FIFO (a tokio
//!   `Semaphore`, which is fair). Service times are lognormal, median 10 ms, σ = 0.6 unless the
//!   scenario says otherwise.
//! - Open-loop Poisson arrivals at 70 % of the *healthy* fleet's capacity, where capacity =
//!   Σ 8 / mean service time and mean = median · exp(σ²/2). "Healthy" means the scenario's fleet
//!   without its fault: 10 × 10 ms endpoints for `one-slow`, `latency-shift`, `fast-fail`, `churn` and `stall`
//!   (so the faulty scenarios load the remaining endpoints harder), the 5–50 ms fleet itself for
//!   `heterogeneous` and `multi-client`. 100,000 requests per cell.
//! - Latency is measured from dispatch (the moment the policy is asked for an endpoint) to the
//!   response, queueing included; percentiles are over successful requests, computed exactly (nearest
//!   rank) from every recorded sample, so no histogram error. Success is over all requests.
//! - Everything runs on tokio's paused clock in one current-thread runtime with seeded generators:
//!   the numbers are the same on every run and machine, and the whole run takes seconds of wall time.
//!
//! # Time resolution
//! tokio's timer resolution is 1 ms, also on a paused clock (docs/design.md "Practical notes"). So the
//! simulation works in whole milliseconds: each service time is drawn from the lognormal and rounded
//! to the nearest millisecond, at least 1 ms (at a 10 ms median the rounding is ≤ 5 % of a typical
//! request and the same for every policy); arrival times are drawn exactly and released at the start
//! of their millisecond. Recorded latencies are therefore whole milliseconds. The same draws
//! (arrivals and per-request service-time factors) are used for every policy of a scenario (common
//! random numbers), so differences between rows come from the policies, not from luck.
//!
//! # Scenarios
//! `healthy`; `one-slow` (endpoint 0 has a 100 ms median); `latency-shift` (endpoint 0 goes from
//! 10 ms to 200 ms half-way through the run); `fast-fail` (endpoint 0 answers 503 in 1 ms; a 503 is a
//! failure response); `heterogeneous` (medians 5–50 ms, geometric spacing); `churn` (every 5 s the
//! oldest endpoint is removed and a fresh one added); `stall` (endpoint 0 never answers, and every
//! request gives up after 50 ms: a balancer learns of the stall only from the dropped requests; the
//! healthy endpoints there have σ = 0.3, so that their own service times fit under the timeout:
//! with σ = 0.6 a 10 ms-median endpoint exceeds 50 ms for 0.35 % of requests, which no balancer
//! can avoid, and the scenario would measure the model's tail rather than the stall);
//! `slow-start-half` (endpoints 0–4 serve 10× slower, 100 ms median, for the first 5 s, then 10 ms;
//! the offered load is 5 % above what the fleet serves while they are slow, 5.5 endpoints' worth,
//! so a queue builds somewhere during those 5 s and the question is where);
//! `multi-client` (the `heterogeneous` fleet behind 8 independent balancer instances, each taking
//! every 8th request: each sees only its own requests in flight).
//!
//! # Policies
//! - `meshwork`: `mesh_balance::Balance` with default config (30 ms default RTT, 10 s decay,
//!   failure penalty 5×), a classifier saying 5xx is a failure, discovery through a channel; the
//!   endpoints report no load, so this is the peak-EWMA power of two choices.
//! - `tower-p2c`: `tower::balance::p2c::Balance` over `tower::load::PeakEwma` (30 ms default RTT,
//!   10 s decay, `CompleteOnResponse`), fed by a discover stream, driven the way a single owner drives
//!   it: `ready().await` then `call` for each request, response futures spawned. (A `Buffer` in front
//!   would add a channel hop but not change the choices.) tower's PeakEwma charges a 503 like any
//!   response.
//! - `round-robin` and `random` over the current endpoint list.
//! - `meshwork-load`: `meshwork` with the endpoints reporting their load on every response, as a
//!   meshwork server does: requests in flight (queued included), capacity 8 and the mean service
//!   time (exponentially weighted, queueing excluded), through `mesh_balance::LoadTracker`.
//!   `LB_QUALITY_CHOICES` and `LB_QUALITY_SERVICE_WEIGHT` override its candidates per request and
//!   the tracker's sample weight (for tuning).
//! - `oracle`: full, instantaneous knowledge of each endpoint's true queue, capacity, current
//!   service-time distribution and failure probability, but not of the request's own random
//!   draw; it maximises the success probability, then minimises the expected completion time
//!   `mean · (1 + max(0, q + 1 − c) / c)` over every endpoint (ties: the first from a random
//!   offset). Not a bound in the strict sense (a smarter rule could beat its expectation), but
//!   what a balancer with perfect information and this model does.
//! - Ablations, in the scenarios where they tell something: `meshwork-load-d2` (reports, but two
//!   candidates instead of the default five) and `meshwork-load-d3` (three).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "support/sim.rs"]
mod sim;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream;
use mesh_balance::{BoxError, Classify, Config, Endpoint, LoadReport, LoadTracker};
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use sim::{service_time_with, Arrivals, Recorder, ENDPOINTS, LOAD, MEDIAN_MS, SIGMA, SLOTS};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Service, ServiceExt};

const REQUESTS: usize = 100_000;
const DEFAULT_SEED: u64 = 0x6d65_7368_776f_726b;

/// The simulation seed: fixed, overridable with `LB_QUALITY_SEED` to check that a difference between
/// policies is not the luck of one seed.
fn seed() -> u64 {
    sim::env_or("LB_QUALITY_SEED", DEFAULT_SEED)
}
const CHURN_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Healthy,
    OneSlow,
    LatencyShift,
    FastFail,
    Heterogeneous,
    Churn,
    Stall,
    SlowStartHalf,
    MultiClient,
}

const SCENARIOS: [Scenario; 9] = [
    Scenario::Healthy,
    Scenario::OneSlow,
    Scenario::LatencyShift,
    Scenario::FastFail,
    Scenario::Heterogeneous,
    Scenario::Churn,
    Scenario::Stall,
    Scenario::SlowStartHalf,
    Scenario::MultiClient,
];

/// `slow-start-half`: how long the slow half stays slow, and how much slower it is.
const SLOW_START: Duration = Duration::from_secs(5);
const SLOW_FACTOR: f64 = 10.0;
/// `multi-client`: independent balancer instances.
const CLIENTS: usize = 8;

/// In the `stall` scenario every request gives up after this long.
const STALL_TIMEOUT: Duration = Duration::from_millis(50);

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::OneSlow => "one-slow",
            Scenario::LatencyShift => "latency-shift",
            Scenario::FastFail => "fast-fail",
            Scenario::Heterogeneous => "heterogeneous",
            Scenario::Churn => "churn",
            Scenario::Stall => "stall",
            Scenario::SlowStartHalf => "slow-start-half",
            Scenario::MultiClient => "multi-client",
        }
    }

    /// σ of the healthy endpoints' lognormal service time.
    fn sigma(self) -> f64 {
        match self {
            Scenario::Stall => 0.3,
            _ => SIGMA,
        }
    }

    /// Balancer instances sharing the fleet.
    fn clients(self) -> usize {
        match self {
            Scenario::MultiClient => CLIENTS,
            _ => 1,
        }
    }

    /// Median service time of endpoint `i` of the initial fleet, when healthy.
    fn healthy_median(self, i: usize) -> f64 {
        match self {
            Scenario::Heterogeneous | Scenario::MultiClient => {
                5.0 * 10f64.powf(i as f64 / (ENDPOINTS - 1) as f64)
            }
            _ => MEDIAN_MS,
        }
    }

    /// Arrivals per millisecond: 70 % of the healthy fleet's capacity; for `slow-start-half`, 5 %
    /// above the capacity while half the fleet is slow.
    fn rate_per_ms(self) -> f64 {
        let sigma = self.sigma();
        let mean_factor = (sigma * sigma / 2.0).exp();
        let capacity: f64 = (0..ENDPOINTS)
            .map(|i| SLOTS as f64 / (self.healthy_median(i) * mean_factor))
            .sum();
        match self {
            Scenario::SlowStartHalf => {
                let slow_share = (ENDPOINTS / 2) as f64 / ENDPOINTS as f64;
                let serving = 1.0 - slow_share + slow_share / SLOW_FACTOR;
                1.05 * serving * capacity
            }
            _ => LOAD * capacity,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Meshwork,
    MeshworkLoad,
    TowerP2c,
    RoundRobin,
    Random,
    Oracle,
    /// Ablation: reports, two candidates.
    MeshworkLoadD2,
    /// Ablation: reports, three candidates.
    MeshworkLoadD3,
}

const POLICIES: [Policy; 8] = [
    Policy::Meshwork,
    Policy::MeshworkLoad,
    Policy::TowerP2c,
    Policy::RoundRobin,
    Policy::Random,
    Policy::Oracle,
    Policy::MeshworkLoadD2,
    Policy::MeshworkLoadD3,
];

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Meshwork => "meshwork",
            Policy::MeshworkLoad => "meshwork-load",
            Policy::TowerP2c => "tower-p2c",
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::Oracle => "oracle",
            Policy::MeshworkLoadD2 => "meshwork-load-d2",
            Policy::MeshworkLoadD3 => "meshwork-load-d3",
        }
    }

    /// Whether the endpoints attach load reports for this policy.
    fn reports(self) -> bool {
        matches!(
            self,
            Policy::MeshworkLoad | Policy::MeshworkLoadD2 | Policy::MeshworkLoadD3
        )
    }

    /// Whether this policy is run in `scenario` (ablations only where they tell something).
    fn runs_in(self, scenario: Scenario) -> bool {
        match self {
            Policy::MeshworkLoadD2 | Policy::MeshworkLoadD3 => matches!(
                scenario,
                Scenario::OneSlow
                    | Scenario::Heterogeneous
                    | Scenario::SlowStartHalf
                    | Scenario::MultiClient
            ),
            _ => true,
        }
    }

    /// Candidates per request for the meshwork policies.
    fn choices(self) -> usize {
        match self {
            Policy::MeshworkLoadD2 => 2,
            Policy::MeshworkLoadD3 => 3,
            _ => sim::env_or("LB_QUALITY_CHOICES", Config::default().choices),
        }
    }
}

// === the simulated endpoint ===

#[derive(Clone, Copy, Debug)]
enum Behavior {
    /// Lognormal service with this median (ms).
    Normal(f64),
    /// `before` ms median until `at`, `after` ms from then on.
    Shift {
        before: f64,
        after: f64,
        at: Instant,
    },
    /// Answers 503 after 1 ms, without queueing.
    FastFail,
    /// Never answers (a hung process whose socket stays open).
    Stall,
}

/// One endpoint: a FIFO queue in front of `SLOTS` servers, and its load as a meshwork server
/// tracks it (requests in flight, queued included; mean service time).
#[derive(Clone)]
struct SimEndpoint {
    slots: Arc<Semaphore>,
    behavior: Behavior,
    sigma: f64,
    calls: Arc<AtomicUsize>,
    load: Arc<LoadTracker>,
    /// Attach the load report to each response.
    reports: bool,
}

/// A response: its status, and the server's load report when the endpoint reports.
struct SimRsp {
    status: u16,
    report: Option<LoadReport>,
}

/// A request carries its service-time factor `z ~ N(0, 1)`: service = median · exp(σ z).
#[derive(Clone, Copy)]
struct Req(f64);

impl SimEndpoint {
    fn new(behavior: Behavior, sigma: f64, reports: bool) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(SLOTS)),
            behavior,
            sigma,
            calls: Arc::new(AtomicUsize::new(0)),
            load: Arc::new(LoadTracker::with_service_weight(
                SLOTS as u32,
                sim::env_or(
                    "LB_QUALITY_SERVICE_WEIGHT",
                    mesh_balance::report::SERVICE_TIME_WEIGHT,
                ),
            )),
            reports,
        }
    }

    /// What the oracle knows: whether a request here can succeed, and its expected completion
    /// time (ms) given the true queue and the current service-time distribution.
    fn truth(&self, now: Instant) -> (bool, f64) {
        let median = match self.behavior {
            Behavior::FastFail | Behavior::Stall => return (false, 0.0),
            Behavior::Normal(m) => m,
            Behavior::Shift { before, after, at } => {
                if now >= at {
                    after
                } else {
                    before
                }
            }
        };
        let mean = median * (self.sigma * self.sigma / 2.0).exp();
        let q = f64::from(self.load.in_flight());
        let c = SLOTS as f64;
        (true, mean * (1.0 + (q + 1.0 - c).max(0.0) / c))
    }
}

impl Service<Req> for SimEndpoint {
    type Response = SimRsp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<SimRsp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let slots = self.slots.clone();
        let behavior = self.behavior;
        let sigma = self.sigma;
        let reports = self.reports;
        let started = LoadTracker::start(&self.load);
        Box::pin(async move {
            let median = match behavior {
                Behavior::FastFail => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let report = started.finish(Duration::from_millis(1));
                    return Ok(SimRsp {
                        status: 503,
                        report: reports.then_some(report),
                    });
                }
                Behavior::Stall => std::future::pending().await,
                Behavior::Normal(m) => m,
                Behavior::Shift { .. } => 0.0, // decided once served
            };
            let _permit = slots.acquire_owned().await.unwrap();
            let median = match behavior {
                Behavior::Shift { before, after, at } => {
                    if Instant::now() >= at {
                        after
                    } else {
                        before
                    }
                }
                _ => median,
            };
            let service = service_time_with(median, sigma, req.0);
            tokio::time::sleep(service).await;
            let report = started.finish(service);
            Ok(SimRsp {
                status: 200,
                report: reports.then_some(report),
            })
        })
    }
}

// === policies under test ===

type Rsp = Pin<Box<dyn Future<Output = Result<u16, BoxError>> + Send>>;
type DiscoverTx = mpsc::UnboundedSender<Change<usize, SimEndpoint>>;

/// 5xx is a failure; the load report, when there is one, is taken off the response.
#[derive(Clone, Copy)]
struct SimClassify;

impl Classify<SimRsp, Infallible> for SimClassify {
    fn is_failure(&self, r: &Result<SimRsp, Infallible>) -> bool {
        matches!(r, Ok(rsp) if rsp.status >= 500)
    }

    fn take_load_report(
        &self,
        rsp: &mut SimRsp,
    ) -> Option<Result<LoadReport, mesh_balance::ReportError>> {
        rsp.report.take().map(Ok)
    }
}

fn status(r: Result<SimRsp, Infallible>) -> Result<u16, BoxError> {
    match r {
        Ok(rsp) => Ok(rsp.status),
        Err(never) => match never {},
    }
}

/// tower's `Rng` over a seeded `SmallRng`, so tower's choices are reproducible too.
struct TowerRng(SmallRng);

impl tower::util::rng::Rng for TowerRng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

type TowerDiscover = PeakEwmaDiscover<
    Pin<
        Box<dyn futures_util::Stream<Item = Result<Change<usize, SimEndpoint>, Infallible>> + Send>,
    >,
    CompleteOnResponse,
>;

enum Balancer {
    Meshwork {
        lb: mesh_balance::Balance<usize, SimEndpoint, SimClassify>,
        tx: DiscoverTx,
    },
    Tower {
        lb: tower::balance::p2c::Balance<TowerDiscover, Req>,
        tx: DiscoverTx,
    },
    RoundRobin {
        list: Vec<(usize, SimEndpoint)>,
        next: usize,
    },
    Random {
        list: Vec<(usize, SimEndpoint)>,
        rng: SmallRng,
    },
    Oracle {
        list: Vec<(usize, SimEndpoint)>,
        rng: SmallRng,
    },
}

fn channel_stream(
    mut rx: mpsc::UnboundedReceiver<Change<usize, SimEndpoint>>,
) -> impl futures_util::Stream<Item = Result<Change<usize, SimEndpoint>, Infallible>> + Send {
    stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)))
}

impl Balancer {
    /// Instance `client` of `policy` (instances of one cell get different seeds).
    fn new(policy: Policy, client: usize) -> Self {
        let seed = seed().wrapping_add(client as u64 * 0x9E37_79B9);
        match policy {
            Policy::Meshwork
            | Policy::MeshworkLoad
            | Policy::MeshworkLoadD2
            | Policy::MeshworkLoadD3 => {
                let (tx, rx) = mpsc::unbounded_channel();
                let discover = channel_stream(rx);
                let config = Config {
                    seed: Some(seed),
                    choices: policy.choices(),
                    ..Config::default()
                };
                let lb = mesh_balance::Balance::builder(config)
                    .classify(SimClassify)
                    .spawn(futures_util::StreamExt::map(discover, |c| {
                        c.map(|c| match c {
                            Change::Insert(k, s) => Change::Insert(k, Endpoint::new(s)),
                            Change::Remove(k) => Change::Remove(k),
                        })
                    }))
                    .unwrap();
                Balancer::Meshwork { lb, tx }
            }
            Policy::TowerP2c => {
                let (tx, rx) = mpsc::unbounded_channel();
                let discover: Pin<Box<dyn futures_util::Stream<Item = _> + Send>> =
                    Box::pin(channel_stream(rx));
                let discover = PeakEwmaDiscover::new::<Req>(
                    discover,
                    Duration::from_millis(30),
                    Duration::from_secs(10),
                    CompleteOnResponse::default(),
                );
                let rng = TowerRng(SmallRng::seed_from_u64(seed));
                let lb = tower::balance::p2c::Balance::from_rng(discover, rng);
                Balancer::Tower { lb, tx }
            }
            Policy::RoundRobin => Balancer::RoundRobin {
                list: Vec::new(),
                next: 0,
            },
            Policy::Random => Balancer::Random {
                list: Vec::new(),
                rng: SmallRng::seed_from_u64(seed),
            },
            Policy::Oracle => Balancer::Oracle {
                list: Vec::new(),
                rng: SmallRng::seed_from_u64(seed),
            },
        }
    }

    fn insert(&mut self, key: usize, ep: SimEndpoint) {
        match self {
            Balancer::Meshwork { tx, .. } | Balancer::Tower { tx, .. } => {
                tx.send(Change::Insert(key, ep)).unwrap()
            }
            Balancer::RoundRobin { list, .. }
            | Balancer::Random { list, .. }
            | Balancer::Oracle { list, .. } => list.push((key, ep)),
        }
    }

    fn remove(&mut self, key: usize) {
        match self {
            Balancer::Meshwork { tx, .. } | Balancer::Tower { tx, .. } => {
                tx.send(Change::Remove(key)).unwrap()
            }
            Balancer::RoundRobin { list, .. }
            | Balancer::Random { list, .. }
            | Balancer::Oracle { list, .. } => list.retain(|(k, _)| *k != key),
        }
    }

    async fn dispatch(&mut self, req: Req) -> Rsp {
        match self {
            Balancer::Meshwork { lb, .. } => {
                let fut = lb.ready().await.unwrap().call(req);
                Box::pin(async move { Ok(fut.await?.status) })
            }
            Balancer::Tower { lb, .. } => {
                let fut = lb.ready().await.unwrap().call(req);
                Box::pin(async move { Ok(fut.await?.status) })
            }
            Balancer::RoundRobin { list, next } => {
                let i = *next % list.len();
                *next = next.wrapping_add(1);
                let fut = list[i].1.call(req);
                Box::pin(async move { status(fut.await) })
            }
            Balancer::Random { list, rng } => {
                let i = rng.random_range(0..list.len());
                let fut = list[i].1.call(req);
                Box::pin(async move { status(fut.await) })
            }
            Balancer::Oracle { list, rng } => {
                // Success first, then the least expected completion time; ties: the first from
                // a random offset.
                let now = Instant::now();
                let n = list.len();
                let offset = rng.random_range(0..n);
                let mut best = (offset, (false, f64::INFINITY));
                for k in 0..n {
                    let i = (offset + k) % n;
                    let (ok, cost) = list[i].1.truth(now);
                    let better = match (ok, best.1 .0) {
                        (true, false) => true,
                        (false, true) => false,
                        _ => cost < best.1 .1,
                    };
                    if better {
                        best = (i, (ok, cost));
                    }
                }
                let fut = list[best.0].1.call(req);
                Box::pin(async move { status(fut.await) })
            }
        }
    }
}

// === one cell ===

struct Outcome {
    summary: sim::Summary,
    /// Share of requests sent to endpoint 0 (the odd one out in most scenarios).
    first_share_pct: f64,
}

async fn run_cell(scenario: Scenario, policy: Policy) -> Outcome {
    let start = Instant::now();
    let rate = scenario.rate_per_ms();
    let duration_ms = REQUESTS as f64 / rate;
    let mut balancers: Vec<Balancer> = (0..scenario.clients())
        .map(|c| Balancer::new(policy, c))
        .collect();
    let sigma = scenario.sigma();
    let reports = policy.reports();

    let mut live: VecDeque<usize> = VecDeque::new();
    let mut first_calls = None;
    for i in 0..ENDPOINTS {
        let behavior = match (scenario, i) {
            (Scenario::OneSlow, 0) => Behavior::Normal(10.0 * MEDIAN_MS),
            (Scenario::LatencyShift, 0) => Behavior::Shift {
                before: MEDIAN_MS,
                after: 200.0,
                at: start + Duration::from_secs_f64(duration_ms / 2e3),
            },
            (Scenario::FastFail, 0) => Behavior::FastFail,
            (Scenario::Stall, 0) => Behavior::Stall,
            (Scenario::SlowStartHalf, i) if i < ENDPOINTS / 2 => Behavior::Shift {
                before: SLOW_FACTOR * MEDIAN_MS,
                after: MEDIAN_MS,
                at: start + SLOW_START,
            },
            _ => Behavior::Normal(scenario.healthy_median(i)),
        };
        let ep = SimEndpoint::new(behavior, sigma, reports);
        if i == 0 {
            first_calls = Some(ep.calls.clone());
        }
        for balancer in &mut balancers {
            balancer.insert(i, ep.clone());
        }
        live.push_back(i);
    }
    let mut next_key = ENDPOINTS;
    // Let discovery-fed balancers see the initial set.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;

    // Common random numbers: the same arrival and service draws for every policy of a scenario.
    let mut arrivals = Arrivals::new(seed() ^ scenario as u64, rate, REQUESTS);
    let recorder = Recorder::new(REQUESTS);
    let mut next_churn = CHURN_EVERY;
    while !arrivals.done() {
        if scenario == Scenario::Churn && arrivals.now() >= next_churn {
            next_churn += CHURN_EVERY;
            let fresh = SimEndpoint::new(Behavior::Normal(MEDIAN_MS), sigma, reports);
            let old = live.pop_front();
            for balancer in &mut balancers {
                if let Some(old) = old {
                    balancer.remove(old);
                }
                balancer.insert(next_key, fresh.clone());
            }
            live.push_back(next_key);
            next_key += 1;
            tokio::task::yield_now().await;
        }
        while let Some((id, z)) = arrivals.next_due(|rng| StandardNormal.sample(rng)) {
            let dispatched = Instant::now();
            let clients = balancers.len();
            let rsp = balancers[id % clients].dispatch(Req(z)).await;
            let timeout = (scenario == Scenario::Stall).then_some(STALL_TIMEOUT);
            recorder.spawn(id, dispatched, async move {
                match timeout {
                    // Dropping the response future on timeout is how the balancer learns of it.
                    Some(t) => matches!(tokio::time::timeout(t, rsp).await, Ok(Ok(s)) if s < 500),
                    None => matches!(rsp.await, Ok(s) if s < 500),
                }
            });
        }
        arrivals.next_tick().await;
    }
    recorder.wait().await;

    Outcome {
        summary: recorder.summary(),
        first_share_pct: first_calls.map_or(0.0, |c| {
            100.0 * c.load(Ordering::Relaxed) as f64 / REQUESTS as f64
        }),
    }
}

#[derive(Serialize)]
struct Row {
    scenario: &'static str,
    policy: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    success_pct: f64,
}

fn main() {
    let wall = std::time::Instant::now();
    let mut rows = Vec::new();
    sim::print_header(&[
        "scenario",
        "policy",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "success_pct",
    ]);
    for scenario in SCENARIOS {
        // `LB_QUALITY_ONLY=one-slow,fast-fail` runs a subset of scenarios (for tuning).
        if !sim::selected("LB_QUALITY_ONLY", scenario.name()) {
            continue;
        }
        for policy in POLICIES {
            // `LB_QUALITY_POLICIES=meshwork,oracle` runs a subset of policies (for tuning).
            if !policy.runs_in(scenario) || !sim::selected("LB_QUALITY_POLICIES", policy.name()) {
                continue;
            }
            let o = sim::paused_runtime().block_on(run_cell(scenario, policy));
            let s = &o.summary;
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
                scenario.name(),
                policy.name(),
                s.p50,
                s.p99,
                s.p999,
                s.success_pct
            );
            eprintln!(
                "{}/{}: endpoint 0 got {:.2} % of requests",
                scenario.name(),
                policy.name(),
                o.first_share_pct
            );
            rows.push(Row {
                scenario: scenario.name(),
                policy: policy.name(),
                p50_ms: s.p50,
                p99_ms: s.p99,
                p999_ms: s.p999,
                success_pct: (s.success_pct * 100.0).round() / 100.0,
            });
        }
    }
    sim::write_json("lb_quality", &rows, wall);
}
