//! The request path of meshwork: routing, resilience and observability, each a `tower::Layer`.
//!
//! docs/design.md's outbound path, and where each box lives:
//!
//! ```text
//! app ─▶ [route metrics] ─▶ deadline ─▶ router ─▶ retry (budget, classify) ─▶ per-try timeout
//!     ─▶ balancer (mesh-balance) ─▶ per endpoint: [endpoint metrics] ─▶ breaker ─▶ concurrency cap
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`route`] | route tables (host, path, method, header matches), weighted splits, the [`route::Router`] layer |
//! | [`dtab`] | Finagle/Linkerd 1 delegation tables: parser, evaluator, `l5d-dtab` overrides, explain |
//! | [`classify`] | success / retryable failure / failure for HTTP and gRPC (headers and trailers) |
//! | [`retry`] | retries under a Finagle budget, with replayable bodies and jittered backoff |
//! | [`deadline`] | `grpc-timeout`, `l5d-ctx-deadline`, `x-envoy-expected-rq-timeout-ms`: read, enforce, propagate |
//! | [`breaker`] | failure accrual per endpoint, decided by a task off the request path |
//! | [`shed`] | pending-queue and per-endpoint concurrency caps that fail fast |
//! | [`hedge`] | a second attempt after the set's observed p95, charged to the retry budget |
//! | [`error`] | errors the mesh makes itself, and their `l5d-err` responses |
//! | [`metrics`] | golden metrics in Prometheus/OpenMetrics text, per route, backend and endpoint |
//! | [`stat`] | `linkerd viz stat`-style success, RPS and latency percentiles over a sliding window |
//! | [`trace`] | W3C and B3 trace context, server and client spans, OTLP export |
//! | [`graph`] | the observed service graph, as JSON and Graphviz DOT |
//! | [`clock`] | one clock reading shared by the layers a call or a poll passes through (from `mesh-balance`) |
//!
//! Every layer can be used on its own in a `tower::ServiceBuilder`; the `meshwork` facade crate
//! stacks them in the order above.

pub mod breaker;
pub mod classify;
pub use mesh_balance::clock;
pub mod deadline;
pub mod dtab;
pub mod error;
pub mod graph;
pub mod headers;
pub mod hedge;
pub mod metrics;
pub mod retry;
pub mod route;
pub mod shed;
pub mod stat;
#[cfg(test)]
mod test_util;
pub mod trace;
