//! Balancing quality: a deterministic simulation of a fleet under load, for four policies.
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
//!   `heterogeneous`. 100,000 requests per cell.
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
//! request gives up after 50 ms: a balancer learns of the stall only from the dropped requests).
//!
//! # Policies
//! - `meshwork`: `mesh_balance::Balance` with default config (30 ms default RTT, 10 s decay,
//!   failure penalty 5×), a classifier saying 5xx is a failure, discovery through a channel.
//! - `tower-p2c`: `tower::balance::p2c::Balance` over `tower::load::PeakEwma` (30 ms default RTT,
//!   10 s decay, `CompleteOnResponse`), fed by a discover stream, driven the way a single owner drives
//!   it: `ready().await` then `call` for each request, response futures spawned. (A `Buffer` in front
//!   would add a channel hop but not change the choices.) tower's PeakEwma charges a 503 like any
//!   response.
//! - `round-robin` and `random` over the current endpoint list.
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
use mesh_balance::{BoxError, Config, Endpoint};
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use sim::{service_time, Arrivals, Recorder, ENDPOINTS, LOAD, MEDIAN_MS, SIGMA, SLOTS};
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
}

const SCENARIOS: [Scenario; 7] = [
    Scenario::Healthy,
    Scenario::OneSlow,
    Scenario::LatencyShift,
    Scenario::FastFail,
    Scenario::Heterogeneous,
    Scenario::Churn,
    Scenario::Stall,
];

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
        }
    }

    /// Median service time of endpoint `i` of the initial fleet, when healthy.
    fn healthy_median(self, i: usize) -> f64 {
        match self {
            Scenario::Heterogeneous => 5.0 * 10f64.powf(i as f64 / (ENDPOINTS - 1) as f64),
            _ => MEDIAN_MS,
        }
    }

    /// Arrivals per millisecond: 70 % of the healthy fleet's capacity.
    fn rate_per_ms(self) -> f64 {
        let mean_factor = (SIGMA * SIGMA / 2.0).exp();
        let capacity: f64 = (0..ENDPOINTS)
            .map(|i| SLOTS as f64 / (self.healthy_median(i) * mean_factor))
            .sum();
        LOAD * capacity
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Meshwork,
    TowerP2c,
    RoundRobin,
    Random,
}

const POLICIES: [Policy; 4] = [
    Policy::Meshwork,
    Policy::TowerP2c,
    Policy::RoundRobin,
    Policy::Random,
];

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Meshwork => "meshwork",
            Policy::TowerP2c => "tower-p2c",
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
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

/// One endpoint: a FIFO queue in front of `SLOTS` servers.
#[derive(Clone)]
struct SimEndpoint {
    slots: Arc<Semaphore>,
    behavior: Behavior,
    calls: Arc<AtomicUsize>,
}

/// A request carries its service-time factor `z ~ N(0, 1)`: service = median · exp(σ z).
#[derive(Clone, Copy)]
struct Req(f64);

impl SimEndpoint {
    fn new(behavior: Behavior) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(SLOTS)),
            behavior,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Service<Req> for SimEndpoint {
    type Response = u16;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u16, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let slots = self.slots.clone();
        let behavior = self.behavior;
        Box::pin(async move {
            let median = match behavior {
                Behavior::FastFail => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    return Ok(503);
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
            tokio::time::sleep(service_time(median, req.0)).await;
            Ok(200)
        })
    }
}

// === policies under test ===

type Rsp = Pin<Box<dyn Future<Output = Result<u16, BoxError>> + Send>>;
type DiscoverTx = mpsc::UnboundedSender<Change<usize, SimEndpoint>>;
type Http5xx = fn(&Result<u16, Infallible>) -> bool;

fn is_5xx(r: &Result<u16, Infallible>) -> bool {
    matches!(r, Ok(s) if *s >= 500)
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
        lb: mesh_balance::Balance<usize, SimEndpoint, Http5xx>,
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
}

fn channel_stream(
    mut rx: mpsc::UnboundedReceiver<Change<usize, SimEndpoint>>,
) -> impl futures_util::Stream<Item = Result<Change<usize, SimEndpoint>, Infallible>> + Send {
    stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)))
}

impl Balancer {
    fn new(policy: Policy) -> Self {
        match policy {
            Policy::Meshwork => {
                let (tx, rx) = mpsc::unbounded_channel();
                let discover = channel_stream(rx);
                let config = Config {
                    seed: Some(seed()),
                    ..Config::default()
                };
                let lb = mesh_balance::Balance::builder(config)
                    .classify(is_5xx as Http5xx)
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
                let rng = TowerRng(SmallRng::seed_from_u64(seed()));
                let lb = tower::balance::p2c::Balance::from_rng(discover, rng);
                Balancer::Tower { lb, tx }
            }
            Policy::RoundRobin => Balancer::RoundRobin {
                list: Vec::new(),
                next: 0,
            },
            Policy::Random => Balancer::Random {
                list: Vec::new(),
                rng: SmallRng::seed_from_u64(seed()),
            },
        }
    }

    fn insert(&mut self, key: usize, ep: SimEndpoint) {
        match self {
            Balancer::Meshwork { tx, .. } | Balancer::Tower { tx, .. } => {
                tx.send(Change::Insert(key, ep)).unwrap()
            }
            Balancer::RoundRobin { list, .. } | Balancer::Random { list, .. } => {
                list.push((key, ep))
            }
        }
    }

    fn remove(&mut self, key: usize) {
        match self {
            Balancer::Meshwork { tx, .. } | Balancer::Tower { tx, .. } => {
                tx.send(Change::Remove(key)).unwrap()
            }
            Balancer::RoundRobin { list, .. } | Balancer::Random { list, .. } => {
                list.retain(|(k, _)| *k != key)
            }
        }
    }

    async fn dispatch(&mut self, req: Req) -> Rsp {
        match self {
            Balancer::Meshwork { lb, .. } => {
                let fut = lb.ready().await.unwrap().call(req);
                Box::pin(fut)
            }
            Balancer::Tower { lb, .. } => {
                let fut = lb.ready().await.unwrap().call(req);
                Box::pin(fut)
            }
            Balancer::RoundRobin { list, next } => {
                let i = *next % list.len();
                *next = next.wrapping_add(1);
                let fut = list[i].1.call(req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Balancer::Random { list, rng } => {
                let i = rng.random_range(0..list.len());
                let fut = list[i].1.call(req);
                Box::pin(async move { fut.await.map_err(Into::into) })
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
    let mut balancer = Balancer::new(policy);

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
            _ => Behavior::Normal(scenario.healthy_median(i)),
        };
        let ep = SimEndpoint::new(behavior);
        if i == 0 {
            first_calls = Some(ep.calls.clone());
        }
        balancer.insert(i, ep);
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
            if let Some(old) = live.pop_front() {
                balancer.remove(old);
            }
            balancer.insert(next_key, SimEndpoint::new(Behavior::Normal(MEDIAN_MS)));
            live.push_back(next_key);
            next_key += 1;
            tokio::task::yield_now().await;
        }
        while let Some((id, z)) = arrivals.next_due(|rng| StandardNormal.sample(rng)) {
            let dispatched = Instant::now();
            let rsp = balancer.dispatch(Req(z)).await;
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
