//! The simulation scaffolding shared by the `lb_quality` and `resilience` benches.
//!
//! Both benches simulate the same fleet on tokio's paused clock and report the same statistics, so
//! the parts that define *how* they measure live here, once: the fleet's constants and lognormal
//! service times, the 1 ms Poisson arrival loop, the per-request latency recorder with its exact
//! (nearest-rank) percentiles, and the markdown/JSON writers. What each bench studies — its
//! scenarios, its endpoints' faults and its policies — stays in the bench. Included with
//! `#[path = "support/sim.rs"] mod sim;`; every item is used by both benches.
//!
//! Time resolution: tokio's timer resolution is 1 ms, also on a paused clock, so service times are
//! rounded to whole milliseconds and arrivals are released at the start of their millisecond (see
//! the benches' module docs).

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Endpoints in the fleet.
pub(crate) const ENDPOINTS: usize = 10;
/// Requests an endpoint serves at once; the rest queue FIFO.
pub(crate) const SLOTS: usize = 8;
/// σ of the lognormal service time.
pub(crate) const SIGMA: f64 = 0.6;
/// Median service time of a healthy endpoint (ms).
pub(crate) const MEDIAN_MS: f64 = 10.0;
/// Offered load as a share of the healthy fleet's capacity.
pub(crate) const LOAD: f64 = 0.7;

/// A recorded latency meaning "the request failed".
const FAILED: u32 = u32::MAX;

/// The environment variable `name` parsed as `T`, or `default` when unset or unparsable.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Whether `scenario` is selected by the comma-separated list in the environment variable
/// `only_var` (for tuning runs); an unset or empty list selects every scenario.
pub(crate) fn selected(only_var: &str, scenario: &str) -> bool {
    let only = std::env::var(only_var).unwrap_or_default();
    only.is_empty() || only.split(',').any(|s| s == scenario)
}

/// Service time for a request with factor `z ~ N(0, 1)` at an endpoint with this median:
/// median · exp(σ z), rounded to whole milliseconds, at least 1 ms.
#[allow(dead_code)] // `resilience` uses it, `lb_quality` varies σ per scenario
pub(crate) fn service_time(median_ms: f64, z: f64) -> Duration {
    service_time_with(median_ms, SIGMA, z)
}

/// [`service_time`] with another σ (a scenario whose endpoints vary less).
#[allow(dead_code)] // `lb_quality` uses it, `resilience` does not
pub(crate) fn service_time_with(median_ms: f64, sigma: f64, z: f64) -> Duration {
    let ms = (median_ms * (sigma * z).exp()).round().max(1.0);
    Duration::from_millis(ms as u64)
}

/// A fresh current-thread runtime on a paused clock, one per cell: identical starting conditions.
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Open-loop Poisson arrivals, released a millisecond at a time.
///
/// Arrival times are drawn exactly from one seeded generator; each request's own draws come from
/// the same generator, before the next gap, so every policy of a scenario sees the same arrivals
/// and the same per-request numbers (common random numbers).
#[derive(Debug)]
pub(crate) struct Arrivals {
    rng: SmallRng,
    gaps: Exp<f64>,
    next_arrival: f64,
    sent: usize,
    total: usize,
    tick_ms: u64,
    start: Instant,
}

impl Arrivals {
    /// `total` arrivals at `rate_per_ms`, starting now.
    pub(crate) fn new(seed: u64, rate_per_ms: f64, total: usize) -> Self {
        let start = Instant::now();
        let mut rng = SmallRng::seed_from_u64(seed);
        let gaps = Exp::new(rate_per_ms).unwrap();
        let next_arrival = gaps.sample(&mut rng);
        Self {
            rng,
            gaps,
            next_arrival,
            sent: 0,
            total,
            tick_ms: 0,
            start,
        }
    }

    /// When the arrivals started.
    #[allow(dead_code)] // `resilience` uses it, `lb_quality` does not
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// The current millisecond, as time since the start.
    #[allow(dead_code)] // `lb_quality` uses it (for churn), `resilience` does not
    pub(crate) fn now(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Whether every arrival has been released.
    pub(crate) fn done(&self) -> bool {
        self.sent >= self.total
    }

    /// The next request due in the current millisecond, if any: its id (0, 1, …) and its draws,
    /// made by `draw` from the arrival generator.
    pub(crate) fn next_due<T>(
        &mut self,
        draw: impl FnOnce(&mut SmallRng) -> T,
    ) -> Option<(usize, T)> {
        if self.next_arrival >= (self.tick_ms + 1) as f64 || self.done() {
            return None;
        }
        let draws = draw(&mut self.rng);
        let id = self.sent;
        self.sent += 1;
        self.next_arrival += self.gaps.sample(&mut self.rng);
        Some((id, draws))
    }

    /// Sleeps until the start of the next millisecond.
    pub(crate) async fn next_tick(&mut self) {
        self.tick_ms += 1;
        tokio::time::sleep_until(self.start + Duration::from_millis(self.tick_ms)).await;
    }
}

/// Every request's latency (µs from dispatch, or failed), for exact percentiles.
#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    latencies: Arc<Vec<AtomicU32>>,
    finished: Arc<AtomicUsize>,
    all_done: Arc<Notify>,
    total: usize,
}

/// What a cell measured over all its requests.
#[derive(Debug)]
pub(crate) struct Summary {
    /// Latency percentiles of successful requests (ms); NaN when none succeeded.
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    /// Successful requests as a share of all requests (%).
    pub(crate) success_pct: f64,
}

impl Recorder {
    /// A recorder for requests with ids `0..total`.
    pub(crate) fn new(total: usize) -> Self {
        Self {
            latencies: Arc::new((0..total).map(|_| AtomicU32::new(0)).collect()),
            finished: Arc::new(AtomicUsize::new(0)),
            all_done: Arc::new(Notify::new()),
            total,
        }
    }

    /// Spawns a task that awaits `outcome` (true for success) and records request `id`'s latency
    /// from `dispatched` to then.
    pub(crate) fn spawn(
        &self,
        id: usize,
        dispatched: Instant,
        outcome: impl Future<Output = bool> + Send + 'static,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let v = if outcome.await {
                let us = dispatched.elapsed().as_micros();
                u32::try_from(us).unwrap_or(FAILED - 1)
            } else {
                FAILED
            };
            this.latencies[id].store(v, Ordering::Relaxed);
            if this.finished.fetch_add(1, Ordering::AcqRel) + 1 == this.total {
                this.all_done.notify_one();
            }
        });
    }

    /// Waits until every request has been recorded.
    pub(crate) async fn wait(&self) {
        if self.finished.load(Ordering::Acquire) < self.total {
            self.all_done.notified().await;
        }
    }

    /// Percentiles (nearest rank over every successful sample) and the success rate.
    pub(crate) fn summary(&self) -> Summary {
        let mut ok: Vec<u32> = self
            .latencies
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .filter(|v| *v != FAILED)
            .collect();
        ok.sort_unstable();
        let pct = |q: f64| -> f64 {
            if ok.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * ok.len() as f64).ceil() as usize).clamp(1, ok.len());
            f64::from(ok[rank - 1]) / 1e3
        };
        Summary {
            p50: pct(0.50),
            p99: pct(0.99),
            p999: pct(0.999),
            success_pct: 100.0 * ok.len() as f64 / self.total as f64,
        }
    }
}

/// Prints the markdown table's header and separator lines for these columns.
pub(crate) fn print_header(columns: &[&str]) {
    println!("| {} |", columns.join(" | "));
    println!("|{}", "---|".repeat(columns.len()));
}

/// Writes `rows` as a pretty JSON array to `target/<name>.json` (relative to the `meshwork`
/// package root) and says so on stderr, with the wall time since `wall`.
pub(crate) fn write_json<T: Serialize>(name: &str, rows: &[T], wall: std::time::Instant) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(rows).unwrap()).unwrap();
    eprintln!(
        "wrote {} ({} rows) in {:.1}s wall time",
        path.display(),
        rows.len(),
        wall.elapsed().as_secs_f64()
    );
}
