//! The breaker task: reads an endpoint's outcomes and drives its `Health`.

use mesh_balance::Health;
use rand::Rng;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BreakerConfig, BreakerStats, SuccessRate, Verdict};

/// Buckets the success-rate window is divided into.
const BUCKETS: usize = 10;

/// Success rate over a sliding window, in buckets. Task-local: no atomics needed.
#[derive(Debug)]
struct RateWindow {
    config: SuccessRate,
    start: Instant,
    /// When the window was last (re)started: at creation and on every restore.
    since: Instant,
    bucket_ns: u128,
    /// (bucket epoch, requests, failures)
    buckets: [(u128, u32, u32); BUCKETS],
}

impl RateWindow {
    fn new(config: SuccessRate) -> Self {
        let now = Instant::now();
        Self {
            config,
            start: now,
            since: now,
            bucket_ns: (config.window.as_nanos() / BUCKETS as u128).max(1),
            buckets: [(u128::MAX, 0, 0); BUCKETS],
        }
    }

    fn epoch(&self) -> u128 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_nanos()
            / self.bucket_ns
    }

    fn record(&mut self, failed: bool) {
        let epoch = self.epoch();
        let b = &mut self.buckets[(epoch % BUCKETS as u128) as usize];
        if b.0 != epoch {
            *b = (epoch, 0, 0);
        }
        b.1 += 1;
        b.2 += u32::from(failed);
    }

    /// When the minimum observation time ends, if it has not yet.
    fn judge_at(&self) -> Option<Instant> {
        let at = self.since + self.config.min_observation;
        (Instant::now() < at).then_some(at)
    }

    fn tripped(&self) -> bool {
        // Outcomes arrive in completion order and failures are often faster than successes: the
        // first outcomes after a (re)start over-represent failures. Judge only once the slow
        // outcomes of the same period have had time to arrive (`SuccessRate` docs).
        if self.since.elapsed() < self.config.min_observation {
            return false;
        }
        let epoch = self.epoch();
        let (mut total, mut failures) = (0u64, 0u64);
        for &(e, n, f) in &self.buckets {
            if e <= epoch && epoch - e < BUCKETS as u128 {
                total += u64::from(n);
                failures += u64::from(f);
            }
        }
        total >= u64::from(self.config.min_requests)
            && total > 0
            && ((total - failures) as f64 / total as f64) < self.config.threshold
    }

    fn reset(&mut self) {
        self.buckets = [(u128::MAX, 0, 0); BUCKETS];
        self.since = Instant::now();
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
) {
    let stats = &stats.0;
    let mut consecutive = 0u32;
    let mut refused = false;
    let mut window = config.success_rate.map(RateWindow::new);
    loop {
        // Closed: count outcomes until a rule trips. While the window's minimum observation time
        // runs, also wake when it ends, to judge what the window holds then: an endpoint the
        // balancer stopped choosing sends no further outcome that would trigger the judgment.
        let judge_at = window.as_ref().and_then(RateWindow::judge_at);
        let outcome = match judge_at {
            Some(at) => tokio::select! {
                // An outcome first: it is recorded before the judgment.
                biased;
                msg = rx.recv() => Some(msg),
                () = tokio::time::sleep_until(at) => None,
            },
            None => Some(rx.recv().await),
        };
        match outcome {
            Some(None) => return,
            Some(Some(Verdict::None)) => continue,
            Some(Some(verdict)) => {
                let failed = !is_success(verdict);
                refused = verdict == Verdict::Refused;
                consecutive = if failed { consecutive + 1 } else { 0 };
                if let Some(w) = window.as_mut() {
                    w.record(failed);
                }
            }
            // The minimum observation time ended: judge the window as it is.
            None => {}
        }
        let tripped = (config.consecutive_failures > 0
            && consecutive >= config.consecutive_failures)
            || window.as_ref().is_some_and(RateWindow::tripped);
        if !tripped {
            continue;
        }
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
            consecutive = 0;
            refused = false;
            if let Some(w) = window.as_mut() {
                w.reset();
            }
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
        let mut w = RateWindow::new(SuccessRate::default());
        // Past the minimum observation time, which the next test covers.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..3 {
            w.record(true);
        }
        assert!(!w.tripped(), "3 requests are below min_requests");
        w.record(false);
        w.record(false);
        assert!(w.tripped(), "2/5 = 0.4 < 0.8");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!w.tripped(), "the window slid past them");
        for _ in 0..9 {
            w.record(false);
        }
        w.record(true);
        assert!(!w.tripped(), "0.9 >= 0.8");
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_waits_for_min_observation_after_each_reset() {
        let mut w = RateWindow::new(SuccessRate::default());
        for _ in 0..5 {
            w.record(true);
        }
        assert!(!w.tripped(), "0/5 successes, but observed for 0 s < 1 s");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!w.tripped(), "observed for 999 ms");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(w.tripped(), "observed for 1 s: 0/5 < 0.8");
        w.reset();
        for _ in 0..5 {
            w.record(true);
        }
        assert!(!w.tripped(), "the reset restarts the observation");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(w.tripped());
    }
}
