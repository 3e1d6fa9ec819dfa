//! The breaker task: reads an endpoint's outcomes and drives its `Health`.

use mesh_balance::Health;
use rand::Rng;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BreakerConfig, BreakerStats, SuccessRate, Verdict};

/// Buckets the success-rate window is divided into.
const BUCKETS: usize = 10;

/// One endpoint's outcome counts. The requests' reports keep them (atomics, no lock); the breaker
/// task reads them when a failure or its judgment timer wakes it. While the breaker is closed, a
/// success is only counted: nothing it says could trip a rule, so it does not wake the task.
#[derive(Debug)]
pub(super) struct Counts {
    /// Closed: the endpoint is neither ejected nor probing.
    closed: AtomicBool,
    /// Failures since the last success.
    consecutive: AtomicU32,
    /// Whether the latest outcome was a refused connection.
    refused: AtomicBool,
    window: Option<RateWindow>,
}

impl Counts {
    pub(super) fn new(config: &BreakerConfig) -> Self {
        Self {
            closed: AtomicBool::new(true),
            consecutive: AtomicU32::new(0),
            refused: AtomicBool::new(false),
            window: config.success_rate.map(RateWindow::new),
        }
    }

    /// Counts one outcome; returns whether the task must hear of it.
    #[inline]
    pub(super) fn record(&self, verdict: Verdict) -> bool {
        let closed = self.closed.load(Ordering::Acquire);
        if verdict == Verdict::None {
            // Nothing to count; only a probe waits for it.
            return !closed;
        }
        let failed = !is_success(verdict);
        if failed {
            self.consecutive.fetch_add(1, Ordering::AcqRel);
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Release);
        }
        let refused = verdict == Verdict::Refused;
        if self.refused.load(Ordering::Relaxed) != refused {
            self.refused.store(refused, Ordering::Relaxed);
        }
        if let Some(w) = &self.window {
            w.record_ns(mesh_balance::clock::now_ns(), failed);
        }
        failed || !closed
    }

    fn tripped(&self, config: &BreakerConfig) -> bool {
        (config.consecutive_failures > 0
            && self.consecutive.load(Ordering::Acquire) >= config.consecutive_failures)
            || self
                .window
                .as_ref()
                .is_some_and(|w| w.tripped(Instant::now()))
    }

    /// Restarts the counts, and closes the breaker, after a restoration.
    fn restart(&self) {
        self.consecutive.store(0, Ordering::Release);
        self.refused.store(false, Ordering::Relaxed);
        if let Some(w) = &self.window {
            w.reset(Instant::now());
        }
        self.closed.store(true, Ordering::Release);
    }
}

/// One bucket of the success-rate window: which period it holds (+1; 0 before the first), and
/// its requests (high 32 bits) and failures (low 32 bits).
#[derive(Debug, Default)]
struct Bucket {
    tag: AtomicU64,
    counts: AtomicU64,
}

/// Success rate over a sliding window, in buckets, recorded by the requests' reports.
#[derive(Debug)]
struct RateWindow {
    config: SuccessRate,
    start: Instant,
    /// `start` as [`mesh_balance::clock::nanos`].
    start_ns: u64,
    /// When the window was last (re)started, in ns after `start`: at creation and on every
    /// restore.
    since_ns: AtomicU64,
    bucket_ns: u64,
    buckets: [Bucket; BUCKETS],
}

impl RateWindow {
    fn new(config: SuccessRate) -> Self {
        let bucket_ns = config.window.as_nanos() / BUCKETS as u128;
        let start = Instant::now();
        Self {
            config,
            start,
            start_ns: mesh_balance::clock::nanos(start),
            since_ns: AtomicU64::new(0),
            bucket_ns: u64::try_from(bucket_ns).unwrap_or(u64::MAX).max(1),
            buckets: Default::default(),
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn epoch(&self, now: Instant) -> u64 {
        self.ns(now) / self.bucket_ns
    }

    #[cfg(test)]
    fn record(&self, now: Instant, failed: bool) {
        self.record_ns(mesh_balance::clock::nanos(now), failed);
    }

    /// [`Self::record`] at `now_ns` ([`mesh_balance::clock::nanos`] of now).
    fn record_ns(&self, now_ns: u64, failed: bool) {
        let epoch = now_ns.saturating_sub(self.start_ns) / self.bucket_ns;
        let tag = epoch.saturating_add(1);
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let held = b.tag.load(Ordering::Acquire);
        // The first outcome of a new period empties the bucket it takes over.
        if held < tag
            && b.tag
                .compare_exchange(held, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.counts.store(0, Ordering::Release);
        }
        b.counts
            .fetch_add((1 << 32) | u64::from(failed), Ordering::AcqRel);
    }

    /// When the minimum observation time ends, if it has not yet.
    fn judge_at(&self) -> Option<Instant> {
        let now = Instant::now();
        let at = self.start
            + Duration::from_nanos(self.since_ns.load(Ordering::Acquire))
            + self.config.min_observation;
        (now < at).then_some(at)
    }

    fn tripped(&self, now: Instant) -> bool {
        // Outcomes arrive in completion order and failures are often faster than successes: the
        // first outcomes after a (re)start over-represent failures. Judge only once the slow
        // outcomes of the same period have had time to arrive (`SuccessRate` docs).
        let observed = self
            .ns(now)
            .saturating_sub(self.since_ns.load(Ordering::Acquire));
        if Duration::from_nanos(observed) < self.config.min_observation {
            return false;
        }
        let epoch = self.epoch(now);
        let (mut total, mut failures) = (0u64, 0u64);
        for b in &self.buckets {
            let tag = b.tag.load(Ordering::Acquire);
            if tag == 0 {
                continue;
            }
            let e = tag - 1;
            if e <= epoch && epoch - e < BUCKETS as u64 {
                let counts = b.counts.load(Ordering::Acquire);
                total += counts >> 32;
                failures += counts & 0xFFFF_FFFF;
            }
        }
        total >= u64::from(self.config.min_requests)
            && total > 0
            && ((total - failures) as f64 / total as f64) < self.config.threshold
    }

    fn reset(&self, now: Instant) {
        for b in &self.buckets {
            b.tag.store(0, Ordering::Release);
            b.counts.store(0, Ordering::Release);
        }
        self.since_ns.store(self.ns(now), Ordering::Release);
    }
}

/// The ejection length for the `n`th consecutive ejection (0-based), with jitter.
fn ejection(config: &BreakerConfig, n: u32) -> Duration {
    let base = config
        .min_backoff
        .saturating_mul(2u32.saturating_pow(n.min(31)))
        .min(config.max_backoff);
    jittered(config, base)
}

fn jittered(config: &BreakerConfig, base: Duration) -> Duration {
    let u: f64 = rand::rng().random_range(0.0..1.0);
    base.mul_f64(1.0 - config.jitter * u)
}

pub(super) async fn run(
    mut rx: mpsc::Receiver<Verdict>,
    health: Health,
    config: BreakerConfig,
    stats: BreakerStats,
    counts: Arc<Counts>,
) {
    let stats = &stats.0;
    loop {
        // Closed: the reports count the outcomes and send the failures. While the window's
        // minimum observation time runs, also wake when it ends, to judge what the window holds
        // then: an endpoint the balancer stopped choosing sends no further outcome that would
        // trigger the judgment.
        let judge_at = counts.window.as_ref().and_then(RateWindow::judge_at);
        let outcome = match judge_at {
            Some(at) => tokio::select! {
                // An outcome first: it was counted before the judgment.
                biased;
                msg = rx.recv() => Some(msg),
                () = tokio::time::sleep_until(at) => None,
            },
            None => Some(rx.recv().await),
        };
        match outcome {
            Some(None) => return,
            Some(Some(Verdict::None)) => continue,
            // Counted by the report that sent it.
            Some(Some(_)) => {}
            // The minimum observation time ended: judge the window as it is.
            None => {}
        }
        if !counts.tripped(&config) {
            continue;
        }
        counts.closed.store(false, Ordering::Release);
        let consecutive = counts.consecutive.load(Ordering::Acquire);
        let mut refused = counts.refused.load(Ordering::Acquire);
        // Open: eject, wait, probe; repeat with longer waits until a probe succeeds. An endpoint
        // refusing connections is down, not overloaded: it is probed at a short constant interval,
        // and a success seen meanwhile (panic-mode traffic) restores it at once.
        let mut n = 0u32;
        loop {
            health.eject();
            stats.ejections.fetch_add(1, Ordering::Relaxed);
            let wait = if refused {
                jittered(&config, config.refused_backoff)
            } else {
                let wait = ejection(&config, n);
                n = n.saturating_add(1);
                wait
            };
            tracing::debug!(?wait, consecutive, refused, "endpoint ejected");
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            let mut restored = false;
            loop {
                tokio::select! {
                    // The ejection's end first: a steady stream of outcomes (in-flight requests,
                    // panic-mode traffic) must not keep the ejection going past its length.
                    biased;
                    _ = &mut sleep => break,
                    msg = rx.recv() => match msg {
                        None => return,
                        Some(v) if refused && is_success(v) => {
                            restored = true;
                            break;
                        }
                        Some(_) => {}
                    },
                }
            }
            if !restored {
                // Outcomes still queued belong to the ejection: discard them, so that one of them
                // does not stand in for the probe's.
                loop {
                    match rx.try_recv() {
                        Ok(_) => {}
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                health.probe();
                tracing::debug!("endpoint probing");
                let verdict = loop {
                    match rx.recv().await {
                        None => return,
                        // No verdict (the probe was cancelled early, or the mesh answered it):
                        // hand the probe back so that another request probes.
                        Some(Verdict::None) => health.cancel_probe(),
                        Some(v) => break v,
                    }
                };
                if !is_success(verdict) {
                    stats.failed_probes.fetch_add(1, Ordering::Relaxed);
                    refused = verdict == Verdict::Refused;
                    continue;
                }
            }
            health.restore();
            stats.restorations.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("endpoint restored");
            counts.restart();
            break;
        }
    }
}

fn is_success(verdict: Verdict) -> bool {
    matches!(verdict, Verdict::Class(c) if c.is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_grow_exponentially_within_jitter() {
        let config = BreakerConfig::default();
        for (n, secs) in [(0u32, 1u64), (1, 2), (2, 4), (5, 32), (6, 60), (40, 60)] {
            for _ in 0..20 {
                let d = ejection(&config, n);
                let b = Duration::from_secs(secs);
                assert!(d <= b && d >= b / 2, "n={n}: {d:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_trips_below_threshold_with_enough_requests() {
        let w = RateWindow::new(SuccessRate::default());
        // Past the minimum observation time, which the next test covers.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..3 {
            w.record(Instant::now(), true);
        }
        assert!(
            !w.tripped(Instant::now()),
            "3 requests are below min_requests"
        );
        w.record(Instant::now(), false);
        w.record(Instant::now(), false);
        assert!(w.tripped(Instant::now()), "2/5 = 0.4 < 0.8");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!w.tripped(Instant::now()), "the window slid past them");
        for _ in 0..9 {
            w.record(Instant::now(), false);
        }
        w.record(Instant::now(), true);
        assert!(!w.tripped(Instant::now()), "0.9 >= 0.8");
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_waits_for_min_observation_after_each_reset() {
        let w = RateWindow::new(SuccessRate::default());
        for _ in 0..5 {
            w.record(Instant::now(), true);
        }
        assert!(
            !w.tripped(Instant::now()),
            "0/5 successes, but observed for 0 s < 1 s"
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!w.tripped(Instant::now()), "observed for 999 ms");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(w.tripped(Instant::now()), "observed for 1 s: 0/5 < 0.8");
        w.reset(Instant::now());
        for _ in 0..5 {
            w.record(Instant::now(), true);
        }
        assert!(
            !w.tripped(Instant::now()),
            "the reset restarts the observation"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(w.tripped(Instant::now()));
    }
}
