//! Latency-aware load balancing for meshwork: power of two choices over peak-EWMA cost, with
//! weights, circuit-breaker ejection, panic mode and failure-aware cost.
//!
//! This is the balancing box of docs/design.md's request path:
//! `retry ─▶ per-try timeout ─▶ **balancer** ─▶ per endpoint: breaker ─▶ concurrency cap ─▶ …`.
//! Each endpoint is its own `tower::Service` (its own connection pool); discovery inserts and removes
//! them as a `Stream` of [`tower::discover::Change`]s carrying an [`Endpoint`] (service, weight,
//! [`Health`]); [`Balance`] is a cheaply clonable `tower::Service` that picks one per request.
//!
//! Modules, one idea each:
//! - [`p2c`]: the balancer service and its discovery [`Driver`] (why not `tower::balance`: see there);
//! - [`ewma`]: the peak-EWMA estimate and how failures are charged;
//! - [`health`]: the per-endpoint ejection handle a circuit breaker drives;
//! - [`classify`]: which outcomes are failures;
//! - [`latency`]: the set's observed p50/p95/p99, for retry and hedging decisions;
//! - [`report`]: server-reported load (ORCA's `endpoint-load-metrics`), written and read;
//! - [`config`]: every knob with its default and origin; [`error`]: typed errors;
//! - [`clock`]: one clock reading shared by the layers a call or a poll passes through.
//!
//! The design is Finagle's `p2cPeakEwma` balancer as Linkerd 2 runs it (defaults: 30 ms default RTT,
//! 10 s decay), plus Envoy's panic threshold and outlier-ejection split. `benches/lb_quality.rs` in the
//! `meshwork` crate compares it with tower's p2c, round robin and random on a simulated fleet.

pub mod classify;
pub mod clock;
pub mod config;
pub mod error;
pub mod ewma;
pub mod health;
pub mod latency;
pub mod p2c;
pub mod report;

#[cfg(test)]
mod tests;

pub use classify::{Classify, ErrIsFailure, Outcome};
pub use config::Config;
pub use error::{BoxError, BuildError, ConfigError, Error};
pub use ewma::{Penalty, RttEstimate};
pub use health::{Health, HealthState};
pub use latency::{LatencyHistogram, LatencySummary};
pub use p2c::{
    Avoid, Balance, Builder, Driver, Endpoint, EndpointStats, ReportedLoad, ResponseFuture,
};
pub use report::{LoadReport, LoadTracker, ReportError};
