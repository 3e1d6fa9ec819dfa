//! One service's ring of time buckets.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{StatConfig, StatRow};

/// Latency buckets per time bucket: values below 4 µs exactly, then four per power of two up to
/// 2^27 µs (about 134 s); anything slower lands in the last bucket.
const LATENCY_BUCKETS: usize = 108;

/// One service's sliding window. Get it from [`super::Stats::service`] once per target and call
/// [`ServiceStats::record`] per request.
pub struct ServiceStats {
    created: Instant,
    /// `created` as [`mesh_balance::clock::nanos`].
    created_ns: u64,
    bucket_nanos: u64,
    slots: Box<[Slot]>,
}

struct Slot {
    /// Period number + 1 this slot holds (0: never used).
    period: AtomicU64,
    success: AtomicU64,
    failure: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

// === impl ServiceStats ===

impl ServiceStats {
    pub(super) fn new(config: &StatConfig) -> Self {
        let bucket_nanos = u64::try_from(config.bucket.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let full = u64::try_from(config.window.as_nanos() / u128::from(bucket_nanos)).unwrap_or(1);
        let count = usize::try_from(full).unwrap_or(600).clamp(1, 600) + 1;
        let created = Instant::now();
        Self {
            created,
            created_ns: mesh_balance::clock::nanos(created),
            bucket_nanos,
            slots: (0..count).map(|_| Slot::new()).collect(),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        self.period_ns(mesh_balance::clock::nanos(now))
    }

    fn period_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.created_ns) / self.bucket_nanos
    }

    /// Records one request's latency and outcome, now.
    #[inline]
    pub fn record(&self, latency: Duration, success: bool) {
        self.record_at_ns(mesh_balance::clock::now_ns(), latency, success);
    }

    /// Records one request's latency and outcome as of `now`.
    pub fn record_at(&self, now: Instant, latency: Duration, success: bool) {
        self.record_at_ns(mesh_balance::clock::nanos(now), latency, success);
    }

    /// Records one request's latency and outcome as of `now_ns`, a time on the scale of
    /// [`mesh_balance::clock::nanos`] (as [`mesh_balance::clock::now_ns`] gives it).
    pub fn record_at_ns(&self, now_ns: u64, latency: Duration, success: bool) {
        let period = self.period_ns(now_ns);
        let tag = period + 1;
        let slot = &self.slots[(period % self.slots.len() as u64) as usize];
        let held = slot.period.load(Ordering::Acquire);
        if held < tag
            && slot
                .period
                .compare_exchange(held, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.reset();
        }
        // If the slot already moved on (held > tag), this late request is counted in the newer
        // period, which is as close as it can get.
        if success {
            slot.success.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.failure.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The service's row as of `now`.
    pub fn row(&self, name: &str, now: Instant) -> StatRow {
        let current = self.period(now);
        let oldest = current.saturating_sub(self.slots.len() as u64 - 1);
        let (mut success, mut failure) = (0u64, 0u64);
        let mut latency = [0u64; LATENCY_BUCKETS];
        for slot in self.slots.iter() {
            let tag = slot.period.load(Ordering::Acquire);
            if tag == 0 || tag - 1 < oldest || tag - 1 > current {
                continue;
            }
            success += slot.success.load(Ordering::Relaxed);
            failure += slot.failure.load(Ordering::Relaxed);
            for (acc, c) in latency.iter_mut().zip(slot.latency.iter()) {
                *acc += c.load(Ordering::Relaxed);
            }
        }
        let requests = success + failure;
        let elapsed = now.saturating_duration_since(self.created);
        let in_current = Duration::from_nanos(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) % self.bucket_nanos,
        );
        let full = Duration::from_nanos(self.bucket_nanos) * (self.slots.len() as u32 - 1);
        let covered = elapsed.min(full + in_current).max(Duration::from_secs(1));
        StatRow {
            name: name.to_string(),
            success_rate: (requests > 0).then(|| success as f64 / requests as f64),
            rps: requests as f64 / covered.as_secs_f64(),
            requests,
            latency_p50_ms: quantile_ms(&latency, 0.50),
            latency_p95_ms: quantile_ms(&latency, 0.95),
            latency_p99_ms: quantile_ms(&latency, 0.99),
        }
    }
}

impl fmt::Debug for ServiceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceStats")
            .field("bucket", &Duration::from_nanos(self.bucket_nanos))
            .field("slots", &self.slots.len())
            .finish()
    }
}

// === impl Slot ===

impl Slot {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(0),
            success: AtomicU64::new(0),
            failure: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn reset(&self) {
        self.success.store(0, Ordering::Relaxed);
        self.failure.store(0, Ordering::Relaxed);
        for c in &self.latency {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The latency bucket of `latency`: exact below 4 µs, then four buckets per power of two.
pub(super) fn latency_bucket(latency: Duration) -> usize {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if micros < 4 {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros() as usize; // >= 2
    let sub = ((micros >> (exp - 2)) & 3) as usize;
    (exp * 4 + sub).min(LATENCY_BUCKETS - 1)
}

/// `[lower, upper)` of a latency bucket, in microseconds.
pub(super) fn bucket_bounds(idx: usize) -> (f64, f64) {
    if idx < 4 {
        return (idx as f64, idx as f64 + 1.0);
    }
    let exp = idx / 4;
    let sub = (idx % 4) as f64;
    let unit = 2f64.powi(exp as i32 - 2);
    ((4.0 + sub) * unit, (5.0 + sub) * unit)
}

/// The `q` quantile in milliseconds, interpolated linearly inside its bucket (as Prometheus's
/// `histogram_quantile` does).
fn quantile_ms(counts: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (idx, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let (lo, hi) = bucket_bounds(idx);
            let frac = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
            return Some((lo + (hi - lo) * frac) / 1000.0);
        }
        seen += c;
    }
    let (_, hi) = bucket_bounds(LATENCY_BUCKETS - 1);
    Some(hi / 1000.0)
}
