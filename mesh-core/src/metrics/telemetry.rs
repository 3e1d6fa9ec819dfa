//! Everything observability in one bundle, for the facade's client and server builders.

use tower::layer::util::Stack;

use super::golden::{
    HttpMetricFamilies, HttpMetricsLayer, NewHttpMetrics, Scope, SourceFn, TargetLabels,
    TargetMetrics,
};
use super::{MetricsError, MetricsRegistry};
use crate::graph::ServiceGraph;
use crate::stat::{StatConfig, StatConfigError, Stats};
use crate::trace::{ClientSpan, ClientSpanLayer, ServerSpan, ServerSpanLayer, Tracing};

/// The registry with the four golden-metric scopes registered, the stat windows, the service
/// graph and the tracing handle, plus the per-target layers put together in the order
/// docs/design.md's stack diagram gives. Cloning shares everything.
///
/// ```
/// use mesh_core::metrics::Telemetry;
/// use mesh_core::stat::StatConfig;
/// use mesh_core::trace::Tracing;
///
/// let telemetry = Telemetry::new(StatConfig::default(), Tracing::disabled()).unwrap();
/// let route = telemetry.route("web", "books");         // outermost on a client route
/// let endpoint = telemetry.endpoint("books", "10.0.0.7:8080"); // per endpoint, below retries
/// # let _ = (route, endpoint);
/// assert!(telemetry.registry.encode().unwrap().ends_with("# EOF\n"));
/// ```
#[derive(Clone, Debug)]
pub struct Telemetry {
    /// The Prometheus registry (`/metrics`).
    pub registry: MetricsRegistry,
    /// `meshwork_inbound_*`.
    pub inbound: NewHttpMetrics,
    /// `meshwork_route_*`.
    pub route: NewHttpMetrics,
    /// `meshwork_backend_*`.
    pub backend: NewHttpMetrics,
    /// `meshwork_endpoint_*`.
    pub endpoint: NewHttpMetrics,
    /// Per-service SUCCESS / RPS / latency windows (inbound services and client routes).
    pub stats: Stats,
    /// Observed edges.
    pub graph: ServiceGraph,
    /// Spans and propagation.
    pub tracing: Tracing,
}

impl Telemetry {
    /// A new registry with every scope registered, and `tracing`'s export counters registered.
    pub fn new(stat: StatConfig, tracing: Tracing) -> Result<Self, TelemetryError> {
        let registry = MetricsRegistry::new();
        let new = |scope| NewHttpMetrics::new(HttpMetricFamilies::register(&registry, scope));
        let telemetry = Self {
            inbound: new(Scope::Inbound),
            route: new(Scope::Route),
            backend: new(Scope::Backend),
            endpoint: new(Scope::Endpoint),
            stats: Stats::new(stat)?,
            graph: ServiceGraph::new(),
            registry,
            tracing,
        };
        telemetry.tracing.register_metrics(&telemetry.registry)?;
        Ok(telemetry)
    }

    /// For a server's `service`: a server span around inbound golden metrics, which also feed the
    /// stat window `service` and the graph edges `source(request) → service`. Apply it right
    /// around the application's service.
    pub fn inbound_layer(
        &self,
        service: &str,
        source: SourceFn,
    ) -> Stack<HttpMetricsLayer, ServerSpanLayer> {
        let metrics = self
            .inbound
            .layer_for(&TargetLabels::inbound(service))
            .with_stats(self.stats.service(service))
            .with_inbound_edges(self.graph.destination(service), source);
        Stack::new(metrics, ServerSpan::layer(self.tracing.clone()))
    }

    /// For a client's route `route` in workload `local`: route golden metrics that also feed the
    /// stat window `route` and the graph edge `local → route`. Apply it outermost, before
    /// deadlines, routing and retries. (A route and an inbound service with the same name share
    /// one stat row; a proxy that serves and calls the same name should prefix one of them.)
    pub fn route(&self, local: &str, route: &str) -> HttpMetricsLayer {
        self.route
            .layer_for(&TargetLabels::route(route))
            .with_stats(self.stats.service(route))
            .with_edge(self.graph.edge(local, route))
    }

    /// For one backend of a route (after the router picked it).
    pub fn backend(&self, route: &str, backend: &str) -> HttpMetricsLayer {
        self.backend
            .layer_for(&TargetLabels::backend(route, backend))
    }

    /// For one endpoint (below the balancer and retries): endpoint golden metrics around a
    /// client span per attempt.
    pub fn endpoint(
        &self,
        backend: &str,
        endpoint: &str,
    ) -> Stack<ClientSpanLayer, HttpMetricsLayer> {
        let metrics = self
            .endpoint
            .layer_for(&TargetLabels::endpoint(backend, endpoint));
        Stack::new(ClientSpan::layer(self.tracing.clone()), metrics)
    }

    /// [`Telemetry::endpoint`], plus the endpoint's metric handles, to remove its series with
    /// [`TargetMetrics::remove`] when the endpoint leaves.
    pub fn endpoint_with_series(
        &self,
        backend: &str,
        endpoint: &str,
    ) -> (Stack<ClientSpanLayer, HttpMetricsLayer>, TargetMetrics) {
        let metrics = self
            .endpoint
            .layer_for(&TargetLabels::endpoint(backend, endpoint));
        let series = metrics.metrics().clone();
        (
            Stack::new(ClientSpan::layer(self.tracing.clone()), metrics),
            series,
        )
    }

    /// The stat windows as JSON (`{"window_seconds":60,"rows":[...]}`).
    pub fn stat_json(&self) -> serde_json::Value {
        self.stats.to_json()
    }

    /// The service graph as JSON (`{"edges":[...]}`).
    pub fn graph_json(&self) -> serde_json::Value {
        self.graph.to_json()
    }
}

/// Why [`Telemetry::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The stat configuration is invalid.
    #[error(transparent)]
    Stat(#[from] StatConfigError),
    /// Registering the trace export counters failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}
