//! Golden metrics for every meshwork client and server, exposed in the Prometheus (OpenMetrics)
//! text format.
//!
//! # What is measured, and where
//! The same three families are measured at four places in the stack ([`Scope`]), so a user can
//! tell what the application saw from what each endpoint did:
//!
//! ```text
//! app ─▶ [route] ─▶ deadline ─▶ router ─▶ [backend] ─▶ retry ─▶ balancer ─▶ [endpoint] ─▶ network
//! network ─▶ TLS ─▶ identity ─▶ authz ─▶ deadline ─▶ [inbound] ─▶ app
//! ```
//!
//! A retried request is one `meshwork_route_requests_total` and one
//! `meshwork_endpoint_requests_total` per attempt. Latency is measured from dispatching the request
//! to receiving the response headers (time to first byte, as Linkerd's `response_latency`).
//!
//! # The metrics
//! | Metric | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `meshwork_inbound_requests_total` | counter | `service` | Requests a server received. |
//! | `meshwork_inbound_responses_total` | counter | `service`, `classification`, `status` | Responses a server sent, by success/failure and HTTP status. |
//! | `meshwork_inbound_response_latency_seconds` | histogram | `service` | Server latency to response headers. |
//! | `meshwork_route_requests_total` | counter | `route` | Requests the application sent on a route. |
//! | `meshwork_route_responses_total` | counter | `route`, `classification`, `status` | Responses the application got, after retries. |
//! | `meshwork_route_response_latency_seconds` | histogram | `route` | Route latency, retries included. |
//! | `meshwork_backend_requests_total` | counter | `route`, `backend` | Requests sent to one backend of a route (a split's side). |
//! | `meshwork_backend_responses_total` | counter | `route`, `backend`, `classification`, `status` | Responses from that backend. |
//! | `meshwork_backend_response_latency_seconds` | histogram | `route`, `backend` | Backend latency. |
//! | `meshwork_endpoint_requests_total` | counter | `backend`, `endpoint` | Attempts sent to one endpoint (retries and hedges included). |
//! | `meshwork_endpoint_responses_total` | counter | `backend`, `endpoint`, `classification`, `status` | Responses from that endpoint. |
//! | `meshwork_endpoint_response_latency_seconds` | histogram | `backend`, `endpoint` | Endpoint latency. |
//! | `meshwork_route_retries_total` | counter | `route` | Retries issued ([`names::ROUTE_RETRIES`]). |
//! | `meshwork_route_retry_budget_exhausted_total` | counter | `route` | Retries refused because the budget was spent ([`names::ROUTE_BUDGET_EXHAUSTED`]). |
//! | `meshwork_route_hedges_total` | counter | `route` | Hedged requests issued ([`names::ROUTE_HEDGES`]). |
//! | `meshwork_route_deadline_expired_total` | counter | `route` | Requests failed because their deadline passed ([`names::ROUTE_DEADLINE_EXPIRED`]). |
//! | `meshwork_endpoint_ejections_total` | counter | `backend` | Times the breaker ejected an endpoint of the backend ([`names::ENDPOINT_EJECTIONS`]). |
//! | `meshwork_backend_endpoints` | gauge | `backend`, `state` (`available`, `ejected`, `probing`) | Endpoints by breaker state ([`names::BACKEND_ENDPOINTS`]). |
//! | `meshwork_discovery_updates_total` | counter | `source` | Endpoint-set updates applied ([`names::DISCOVERY_UPDATES`]). |
//! | `meshwork_discovery_errors_total` | counter | `source` | Discovery errors; the last good set is kept ([`names::DISCOVERY_ERRORS`]). |
//! | `meshwork_discovery_healthy` | gauge | `source` | 1 when the source has read its input and is not failing now, else 0 (a DNS name that does not exist is 0) ([`names::DISCOVERY_HEALTHY`]). |
//! | `meshwork_discovery_last_success_timestamp_seconds` | gauge | `source` | When the source last read its input successfully, in seconds since the Unix epoch; 0 before the first success ([`names::DISCOVERY_LAST_SUCCESS`]). |
//! | `meshwork_tls_handshake_failures_total` | counter | `direction` (`outbound`), `backend`, `reason` | Failed TLS handshakes of a client's endpoint connections ([`names::TLS_HANDSHAKE_FAILURES`]). |
//! | `meshwork_trace_spans_exported_total` | counter | | Spans handed to the OTLP exporter ([`crate::trace::Tracing::register_metrics`]). |
//! | `meshwork_trace_spans_dropped_total` | counter | | Spans dropped because the export queue was full. |
//!
//! `classification` is `success` or `failure` ([`classify_default`]: status ≥ 500, or a
//! `grpc-status` other than `0` in the response headers, is a failure); `status` is the HTTP
//! status code, absent when the inner service failed without a response. Latency buckets are
//! [`LATENCY_BUCKETS_SECONDS`]: 1 ms to 10 s.
//!
//! # Why it is built this way
//! * **Handles are resolved once per target.** [`NewHttpMetrics::layer_for`] looks the target's
//!   children up in the families when the route, backend or endpoint stack is built and keeps the
//!   counter and histogram handles; per request there is no label hashing, no map lookup and no
//!   allocation. The status label is the one thing only known per response: each target keeps a
//!   few lock-free slots for the statuses it sees.
//! * **The histogram is atomic.** prometheus-client's `Histogram` takes a mutex per observation;
//!   [`LatencyHistogram`] is an array of atomics.
//! * **Counters other components own are read at scrape time.** Retries, ejections, discovery and
//!   TLS failures are counted by their own crates in atomics; [`MetricsRegistry::register_counter_fn`]
//!   and [`MetricsRegistry::register_gauge_fn`] export them through a prometheus-client
//!   `Collector` that calls a closure when `/metrics` is scraped, instead of counting twice.
//!
//! # Putting it together
//! [`Telemetry`] registers the four scopes in one registry next to the stat windows
//! ([`crate::stat`]), the service graph ([`crate::graph`]) and the tracing handle
//! ([`crate::trace`]), and hands out each target's layers in stack order:
//! [`Telemetry::inbound_layer`], [`Telemetry::route`], [`Telemetry::backend`],
//! [`Telemetry::endpoint`]. [`serve_metrics`] serves `/metrics` until the admin server does.
//!
//! # Example
//! ```
//! use mesh_core::metrics::{HttpMetricFamilies, MetricsRegistry, NewHttpMetrics, Scope, TargetLabels};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = MetricsRegistry::new();
//! let routes = NewHttpMetrics::new(HttpMetricFamilies::register(&registry, Scope::Route));
//! let layer = routes.layer_for(&TargetLabels::route("books"));
//! let mut svc = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//! svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! let text = registry.encode().unwrap();
//! assert!(text.contains(r#"meshwork_route_requests_total{route="books"} 1"#));
//! # }
//! ```

mod classify;
mod golden;
mod histogram;
mod registry;
mod serve;
mod telemetry;

pub use self::classify::{classify_default, Classification, ClassifyFn};
pub use self::golden::{
    HttpMetricFamilies, HttpMetrics, HttpMetricsLayer, NewHttpMetrics, ResponseFuture, Scope,
    SourceFn, TargetLabels, TargetMetrics,
};
pub use self::histogram::{LatencyHistogram, LATENCY_BUCKETS_SECONDS};
pub use self::registry::{CallbackHandle, MetricsRegistry, NameClaim, Succession};
pub use self::serve::{serve_metrics, MetricsService, OPENMETRICS_CONTENT_TYPE};
pub use self::telemetry::{Telemetry, TelemetryError};

/// Names (without `_total`) for the metrics that other components own and export through
/// [`MetricsRegistry::register_counter_fn`] / [`MetricsRegistry::register_gauge_fn`], so every
/// crate uses the same names and the table above stays true.
pub mod names {
    /// Counter `{route}`: retries issued.
    pub const ROUTE_RETRIES: &str = "meshwork_route_retries";
    /// Counter `{route}`: retries refused because the retry budget was spent.
    pub const ROUTE_BUDGET_EXHAUSTED: &str = "meshwork_route_retry_budget_exhausted";
    /// Counter `{route}`: hedged requests issued.
    pub const ROUTE_HEDGES: &str = "meshwork_route_hedges";
    /// Counter `{route}`: requests failed because their deadline passed.
    pub const ROUTE_DEADLINE_EXPIRED: &str = "meshwork_route_deadline_expired";
    /// Counter `{backend}`: breaker ejections.
    pub const ENDPOINT_EJECTIONS: &str = "meshwork_endpoint_ejections";
    /// Gauge `{backend, state}`: endpoints by breaker state.
    pub const BACKEND_ENDPOINTS: &str = "meshwork_backend_endpoints";
    /// Counter `{source}`: endpoint-set updates applied.
    pub const DISCOVERY_UPDATES: &str = "meshwork_discovery_updates";
    /// Counter `{source}`: discovery errors.
    pub const DISCOVERY_ERRORS: &str = "meshwork_discovery_errors";
    /// Gauge `{source}`: 1 when the discovery source works, 0 when it is failing.
    pub const DISCOVERY_HEALTHY: &str = "meshwork_discovery_healthy";
    /// Gauge `{source}`: Unix time of the discovery source's last successful read (0: never).
    pub const DISCOVERY_LAST_SUCCESS: &str = "meshwork_discovery_last_success_timestamp_seconds";
    /// Counter `{direction, backend, reason}`: failed TLS handshakes.
    pub const TLS_HANDSHAKE_FAILURES: &str = "meshwork_tls_handshake_failures";
    /// Counter: spans handed to the OTLP exporter.
    pub const TRACE_SPANS_EXPORTED: &str = "meshwork_trace_spans_exported";
    /// Counter: spans dropped because the export queue was full.
    pub const TRACE_SPANS_DROPPED: &str = "meshwork_trace_spans_dropped";
}

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Rendering the registry failed (a metric's encoder returned an error).
    #[error("failed to encode the metrics registry as OpenMetrics text")]
    Encode,
    /// A metric or label name is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric or label name {name:?}: unexpected character at byte {offset}")]
    InvalidName {
        /// The name.
        name: String,
        /// Byte offset of the first bad character.
        offset: usize,
    },
    /// Two targets recording into one registry claimed the same name
    /// ([`MetricsRegistry::claim_name`]).
    #[error("the name {name:?} is already used by another client of this registry; give each client its own name (an authority, or ClientBuilder::name)")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// A callback series was registered as a counter under a gauge's name, or the reverse.
    #[error("metric {name:?} is already registered with another type")]
    KindMismatch {
        /// The name.
        name: String,
    },
}

#[cfg(test)]
mod tests;
