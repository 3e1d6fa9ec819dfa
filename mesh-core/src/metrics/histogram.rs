//! A latency histogram made of atomics.
//!
//! prometheus-client's own `Histogram` keeps its buckets behind a mutex, which every request of a
//! target would take. This one is a fixed array of atomic counters, so recording a latency is a
//! handful of relaxed atomic adds and never waits on another request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the latency buckets, in seconds: 1 ms to 10 s in 1-2.5-5 steps (the `+Inf`
/// bucket is implicit). These buckets match the range Linkerd's
/// `response_latency_ms` histogram covers.
pub const LATENCY_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in microseconds, compared against on the request path (integer compares).
const BOUNDS_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// A response-latency histogram with the fixed buckets [`LATENCY_BUCKETS_SECONDS`].
///
/// Cloning shares the counters (it is a handle, like prometheus-client's metric types).
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per-bucket (not cumulative) counts; the last slot is the `+Inf` overflow.
    buckets: [AtomicU64; 14],
    sum_micros: AtomicU64,
}

// === impl LatencyHistogram ===

impl LatencyHistogram {
    /// Records one latency.
    #[inline]
    pub fn observe(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let idx = BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BOUNDS_MICROS.len());
        // No separate count: it is the buckets' sum, read off the request path.
        self.inner.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the latencies recorded, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Cumulative `(upper bound in seconds, count)` pairs, ending with `+Inf`, as exposed.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len() + 1);
        for (i, bucket) in self.inner.buckets.iter().enumerate() {
            acc += bucket.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS_SECONDS
                .get(i)
                .copied()
                .unwrap_or(f64::INFINITY);
            out.push((bound, acc));
        }
        out
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // The encoder accumulates the per-bucket counts itself.
        let mut count = 0;
        let mut buckets = [(0.0, 0); 14];
        for (i, (slot, bucket)) in buckets.iter_mut().zip(&self.inner.buckets).enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            *slot = (
                LATENCY_BUCKETS_SECONDS
                    .get(i)
                    .copied()
                    .unwrap_or(f64::INFINITY),
                n,
            );
        }
        // `_count` is the sum of the buckets so that it equals the `+Inf` bucket even while a
        // request is being recorded concurrently.
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
