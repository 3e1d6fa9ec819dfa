//! The endpoint set's recent latency distribution: median, p95, p99 of successful responses.
//!
//! The resilience layers above the balancer need "how long does this service usually take": a retry is
//! not started when the deadline leaves less than the observed median, and a hedge is sent after the
//! observed p95 (docs/design.md "Resilience"; Google's "The Tail at Scale" hedges at p95). Per-endpoint
//! EWMAs answer a different question (which endpoint now), so the set keeps its own histogram.
//!
//! Design: a fixed log-scale histogram of atomic counters, 8 buckets per power of two from 1 µs to
//! ~69 s (208 counters, relative error ≤ 6.25 % of a value), so recording is one `fetch_add` and no
//! lock. Every [`crate::Config::latency_half_life`] (default 10 s) the recorder that notices first
//! halves all counts, so old traffic fades with that half-life. Only successes are recorded: a fast
//! failure says nothing about how long a useful answer takes, and would pull the hedge delay down.
//!
//! ```
//! use std::time::Duration;
//! use mesh_balance::LatencyHistogram;
//!
//! let h = LatencyHistogram::new(Duration::from_secs(10));
//! for ms in 1..=100u64 {
//!     h.record(Duration::from_millis(ms), 0);
//! }
//! let s = h.summary().expect("samples");
//! assert!((45..=55).contains(&s.p50.as_millis()), "{s:?}");
//! assert!((90..=100).contains(&s.p95.as_millis()), "{s:?}");
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const MIN_EXP: u32 = 10; // 1024 ns
const MAX_EXP: u32 = 36; // 2^36 ns ≈ 68.7 s
const BUCKETS: usize = (MAX_EXP - MIN_EXP) as usize * SUB;

/// Percentiles of recent successful response times across the endpoint set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySummary {
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// How many (decayed) samples the figures rest on.
    pub samples: u64,
}

/// A lock-free log-bucket latency histogram with periodic halving (see the [module docs](self)).
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    half_life_ns: u64,
    last_halving_ns: AtomicU64,
}

// === impl LatencyHistogram ===

impl LatencyHistogram {
    /// An empty histogram whose counts halve every `half_life`.
    pub fn new(half_life: Duration) -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            half_life_ns: u64::try_from(half_life.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            last_halving_ns: AtomicU64::new(0),
        }
    }

    /// Records one response time; `now_ns` is a monotonic clock reading in nanoseconds (any base),
    /// used only to decide when to halve.
    pub fn record(&self, rtt: Duration, now_ns: u64) {
        let last = self.last_halving_ns.load(Ordering::Relaxed);
        if now_ns.saturating_sub(last) >= self.half_life_ns
            && self
                .last_halving_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            for b in self.buckets.iter() {
                let _ = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
            }
        }
        let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The value below which a fraction `q` (in `[0, 1]`) of the recorded samples fall, or `None` if
    /// nothing has been recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts = self.counts();
        quantile_of(&counts, q)
    }

    /// p50, p95 and p99 from one consistent read, or `None` if nothing has been recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        let counts = self.counts();
        Some(LatencySummary {
            p50: quantile_of(&counts, 0.50)?,
            p95: quantile_of(&counts, 0.95)?,
            p99: quantile_of(&counts, 0.99)?,
            samples: counts.iter().sum(),
        })
    }

    fn counts(&self) -> [u64; BUCKETS] {
        let mut counts = [0u64; BUCKETS];
        for (c, b) in counts.iter_mut().zip(self.buckets.iter()) {
            *c = b.load(Ordering::Relaxed);
        }
        counts
    }
}

fn quantile_of(counts: &[u64; BUCKETS], q: f64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(Duration::from_nanos(midpoint_of(i)));
        }
    }
    Some(Duration::from_nanos(midpoint_of(BUCKETS - 1)))
}

/// Bucket index: exponent (from `MIN_EXP`) × 8 + the next three mantissa bits.
#[inline]
fn bucket_of(ns: u64) -> usize {
    let v = ns.clamp(1 << MIN_EXP, (1 << MAX_EXP) - 1);
    let exp = 63 - v.leading_zeros();
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    (exp - MIN_EXP) as usize * SUB + sub
}

fn midpoint_of(index: usize) -> u64 {
    let exp = (index / SUB) as u32 + MIN_EXP;
    let sub = (index % SUB) as u64;
    let lo = (SUB as u64 + sub) << (exp - SUB_BITS);
    let width = 1u64 << (exp - SUB_BITS);
    lo + width / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order() {
        let mut prev = 0;
        for i in 0..BUCKETS {
            let mid = midpoint_of(i);
            assert!(mid > prev);
            assert_eq!(bucket_of(mid), i);
            prev = mid;
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let h = LatencyHistogram::new(Duration::from_secs(10));
        assert_eq!(h.summary(), None);
        // 1..=1000 ms: p50 = 500, p95 = 950, p99 = 990.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms), 1);
        }
        let s = h.summary().expect("samples");
        for (got, want) in [(s.p50, 500.0), (s.p95, 950.0), (s.p99, 990.0)] {
            let got = got.as_secs_f64() * 1e3;
            assert!((got - want).abs() / want < 0.07, "{got} vs {want}");
        }
        assert_eq!(s.samples, 1000);
    }

    #[test]
    fn old_samples_fade_with_the_half_life() {
        let h = LatencyHistogram::new(Duration::from_secs(10));
        let sec = 1_000_000_000u64;
        for _ in 0..1000 {
            h.record(Duration::from_millis(100), sec);
        }
        // Four half-lives later the old mode is 1000 / 16 ≈ 62 samples; 500 new ones dominate.
        for t in 1..=4u64 {
            h.record(Duration::from_millis(10), sec + t * 10 * sec);
        }
        for _ in 0..500 {
            h.record(Duration::from_millis(10), 50 * sec);
        }
        let p50 = h.quantile(0.5).expect("samples").as_millis();
        assert!((9..=11).contains(&p50), "{p50}");
        assert!(h.summary().expect("samples").samples < 600);
    }
}
