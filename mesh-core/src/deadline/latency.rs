//! The endpoint set's observed latency, as the resilience layers need it.
//!
//! Retries start only if the request's remaining deadline exceeds the set's median latency, and
//! hedges fire after its p95. The balancer observes latencies; these layers only read an estimate
//! through [`LatencyEstimate`], so any source can be plugged in: the balancer's own estimate, a
//! fixed configuration ([`FixedLatency`]), or a cell that someone updates ([`LatencyCell`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Observed latency percentiles of an endpoint set. `None` means "not known yet"; the layers then
/// behave as if there were no estimate (retries are not held back; hedging uses its fallback).
pub trait LatencyEstimate: fmt::Debug + Send + Sync + 'static {
    /// The median (p50) response latency.
    fn median(&self) -> Option<Duration>;
    /// The 95th percentile response latency.
    fn p95(&self) -> Option<Duration>;
}

/// A latency estimate shared between layers.
pub type SharedLatency = Arc<dyn LatencyEstimate>;

/// No estimate: both percentiles are unknown.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEstimate;

impl LatencyEstimate for NoEstimate {
    fn median(&self) -> Option<Duration> {
        None
    }
    fn p95(&self) -> Option<Duration> {
        None
    }
}

/// A fixed estimate, e.g. from configuration or in tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedLatency {
    /// The median.
    pub median: Option<Duration>,
    /// The 95th percentile.
    pub p95: Option<Duration>,
}

impl LatencyEstimate for FixedLatency {
    fn median(&self) -> Option<Duration> {
        self.median
    }
    fn p95(&self) -> Option<Duration> {
        self.p95
    }
}

/// An estimate that its owner updates (e.g. the balancer, periodically) and the layers read with one
/// atomic load each. Stored in nanoseconds; `0` means unknown.
#[derive(Debug, Default)]
pub struct LatencyCell {
    median_ns: AtomicU64,
    p95_ns: AtomicU64,
}

// === impl LatencyCell ===

impl LatencyCell {
    /// A cell with both percentiles unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the median (`None` = unknown).
    pub fn set_median(&self, median: Option<Duration>) {
        self.median_ns.store(to_ns(median), Ordering::Relaxed);
    }

    /// Sets the 95th percentile (`None` = unknown).
    pub fn set_p95(&self, p95: Option<Duration>) {
        self.p95_ns.store(to_ns(p95), Ordering::Relaxed);
    }
}

fn to_ns(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
}

fn from_ns(ns: u64) -> Option<Duration> {
    (ns != 0).then(|| Duration::from_nanos(ns))
}

impl LatencyEstimate for LatencyCell {
    fn median(&self) -> Option<Duration> {
        from_ns(self.median_ns.load(Ordering::Relaxed))
    }
    fn p95(&self) -> Option<Duration> {
        from_ns(self.p95_ns.load(Ordering::Relaxed))
    }
}

/// The balancer's own estimate: the set's recent p50/p95 ([`mesh_balance::Balance::latency`]).
/// Each read summarises the balancer's latency histogram (a few hundred atomic loads), so it suits
/// the retry path; for a per-request read (hedging), a [`LatencyCell`] refreshed periodically from
/// it is cheaper.
impl<K: Clone, S, C> LatencyEstimate for mesh_balance::Balance<K, S, C>
where
    Self: Send + Sync + 'static,
{
    fn median(&self) -> Option<Duration> {
        self.latency().map(|s| s.p50)
    }
    fn p95(&self) -> Option<Duration> {
        self.latency().map(|s| s.p95)
    }
}
