//! Golden HTTP metrics as a tower layer: requests, responses by classification and status, and a
//! latency histogram, per target.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use http::{Extensions, HeaderMap, Request, Response};
use mesh_balance::clock;
use pin_project_lite::pin_project;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Unit;

use super::classify::{classify_default, Classification, ClassifyFn};
use super::histogram::LatencyHistogram;
use super::registry::MetricsRegistry;
use crate::classify::{LateClass, ResponseClass};
use crate::graph::{DestinationEdges, EdgeStats};
use crate::stat::ServiceStats;

/// Where in the stack a set of golden metrics is measured; it gives the metric name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A server's inbound requests (`meshwork_inbound_*`), before the application.
    Inbound,
    /// A client's logical route (`meshwork_route_*`), before retries: what the application saw.
    Route,
    /// One backend of a route (`meshwork_backend_*`), e.g. one side of a traffic split.
    Backend,
    /// One endpoint (`meshwork_endpoint_*`): every attempt, retries and hedges included.
    Endpoint,
}

impl Scope {
    /// The metric name prefix, e.g. `meshwork_route`.
    pub fn prefix(self) -> &'static str {
        match self {
            Scope::Inbound => "meshwork_inbound",
            Scope::Route => "meshwork_route",
            Scope::Backend => "meshwork_backend",
            Scope::Endpoint => "meshwork_endpoint",
        }
    }
}

/// The labels that identify one target (a route, backend, endpoint or inbound service).
///
/// Built once when the target's stack is built; cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TargetLabels(Arc<[(&'static str, String)]>);

/// The labels of one `*_responses_total` series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ResponseLabels {
    target: TargetLabels,
    classification: Classification,
    /// `None` when the inner service failed without a response.
    status: Option<u16>,
}

/// The three metric families of one [`Scope`], registered once in a [`MetricsRegistry`].
#[derive(Clone, Debug)]
pub struct HttpMetricFamilies {
    scope: Scope,
    requests: Family<TargetLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<TargetLabels, LatencyHistogram>,
}

/// The metric handles of one target, looked up once.
#[derive(Clone, Debug)]
pub struct TargetMetrics {
    requests: Counter,
    latency: LatencyHistogram,
    responses: Arc<ResponseCache>,
    /// The families, to remove this target's series when it goes away.
    requests_family: Family<TargetLabels, Counter>,
    latency_family: Family<TargetLabels, LatencyHistogram>,
}

/// Per-target cache of `*_responses_total` children: a handful of (status, classification) pairs
/// cover nearly all traffic, so they are kept in lock-free slots filled on first use; anything
/// beyond falls back to the family's map.
struct ResponseCache {
    family: Family<ResponseLabels, Counter>,
    target: TargetLabels,
    slots: [OnceLock<(u32, Counter)>; RESPONSE_SLOTS],
    /// Statuses recorded beyond the slots (rare), so [`TargetMetrics::remove`] finds them.
    overflow: parking_lot::Mutex<Vec<(Classification, Option<u16>)>>,
    /// Set by [`TargetMetrics::remove`]: a response still in flight then must not create its
    /// series again (it would stay in the exposition forever).
    removed: std::sync::atomic::AtomicBool,
}

const RESPONSE_SLOTS: usize = 8;

/// Extracts the name of the calling workload from an inbound request (its verified TLS identity
/// or a trusted header), for the service graph.
pub type SourceFn = for<'a> fn(&'a HeaderMap, &'a Extensions) -> Option<&'a str>;

/// Makes [`HttpMetricsLayer`]s, one per target: `NewHttpMetrics` is shared by the whole stack and
/// [`NewHttpMetrics::layer_for`] resolves the target's metric handles once.
#[derive(Clone, Debug)]
pub struct NewHttpMetrics {
    families: HttpMetricFamilies,
    classify: ClassifyFn,
}

/// The layer for one target; see [`HttpMetrics::layer`].
#[derive(Clone)]
pub struct HttpMetricsLayer {
    handles: Arc<Handles>,
}

#[derive(Clone)]
struct Handles {
    metrics: TargetMetrics,
    classify: ClassifyFn,
    stats: Option<Arc<ServiceStats>>,
    edge: Option<Arc<EdgeStats>>,
    inbound: Option<(Arc<DestinationEdges>, SourceFn)>,
}

/// Records golden metrics (and optionally the stat window and service-graph edges) for every
/// request that passes through to `S`.
#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    handles: Arc<Handles>,
}

pin_project! {
    /// Response future of [`HttpMetrics`]: records the latency when the response headers arrive,
    /// and the outcome then too, unless it waits for the trailers ([`LateClass`]): then when
    /// the body ends, or is dropped before its end.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // When the request was sent, as `clock::nanos`.
        start_ns: u64,
        handles: Arc<Handles>,
        edge: Option<Arc<EdgeStats>>,
    }
}

// === impl TargetLabels ===

impl TargetLabels {
    /// Arbitrary labels, in order.
    pub fn new<V: Into<String>>(labels: impl IntoIterator<Item = (&'static str, V)>) -> Self {
        Self(labels.into_iter().map(|(k, v)| (k, v.into())).collect())
    }

    /// `{service}` for [`Scope::Inbound`].
    pub fn inbound(service: impl Into<String>) -> Self {
        Self::new([("service", service.into())])
    }

    /// `{route}` for [`Scope::Route`].
    pub fn route(route: impl Into<String>) -> Self {
        Self::new([("route", route.into())])
    }

    /// `{route, backend}` for [`Scope::Backend`].
    pub fn backend(route: impl Into<String>, backend: impl Into<String>) -> Self {
        Self::new([("route", route.into()), ("backend", backend.into())])
    }

    /// `{backend, endpoint}` for [`Scope::Endpoint`]; `endpoint` is the socket address.
    pub fn endpoint(backend: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self::new([("backend", backend.into()), ("endpoint", endpoint.into())])
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for TargetLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl EncodeLabelSet for TargetLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        self.0.as_ref().encode(encoder)
    }
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        self.target.encode(encoder)?;
        EncodeLabel::encode(
            &("classification", self.classification.as_str()),
            encoder.encode_label(),
        )?;
        if let Some(status) = self.status {
            EncodeLabel::encode(&("status", status), encoder.encode_label())?;
        }
        Ok(())
    }
}

// === impl HttpMetricFamilies ===

impl HttpMetricFamilies {
    /// Registers `<prefix>_requests_total`, `<prefix>_responses_total` and
    /// `<prefix>_response_latency_seconds` for `scope` in `registry`. Call it once per scope.
    pub fn register(registry: &MetricsRegistry, scope: Scope) -> Self {
        let families = Self {
            scope,
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::default(),
        };
        let prefix = scope.prefix();
        registry.register(
            &format!("{prefix}_requests"),
            "Requests received, counted when the request is dispatched",
            families.requests.clone(),
        );
        registry.register(
            &format!("{prefix}_responses"),
            "Responses by classification (success or failure) and HTTP status",
            families.responses.clone(),
        );
        registry.register_with_unit(
            &format!("{prefix}_response_latency"),
            "Time from dispatching the request to receiving the response headers",
            Unit::Seconds,
            families.latency.clone(),
        );
        families
    }

    /// The scope these families were registered for.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Looks up (creating if needed) the handles of one target. Done once per target.
    pub fn target(&self, labels: &TargetLabels) -> TargetMetrics {
        TargetMetrics {
            requests: self.requests.get_or_create_owned(labels),
            latency: self.latency.get_or_create_owned(labels),
            responses: Arc::new(ResponseCache {
                family: self.responses.clone(),
                target: labels.clone(),
                slots: Default::default(),
                overflow: parking_lot::Mutex::default(),
                removed: std::sync::atomic::AtomicBool::new(false),
            }),
            requests_family: self.requests.clone(),
            latency_family: self.latency.clone(),
        }
    }
}

// === impl TargetMetrics ===

impl TargetMetrics {
    /// Requests counted so far for this target.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// The target's latency histogram.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Removes this target's series from the exposition (an endpoint that left discovery), so
    /// the number of series follows the live set rather than every endpoint ever seen. Requests
    /// still in flight record into handles no longer exported. A target made again later starts
    /// from zero.
    pub fn remove(&self) {
        let target = &self.responses.target;
        // Under the overflow lock, so no response creates a series between the flag and the
        // removals below.
        let overflow = self.responses.overflow.lock();
        self.responses
            .removed
            .store(true, std::sync::atomic::Ordering::Release);
        self.requests_family.remove(target);
        self.latency_family.remove(target);
        let cache = &self.responses;
        for slot in &cache.slots {
            if let Some((key, _)) = slot.get() {
                let classification = if key & 1 == 1 {
                    Classification::Failure
                } else {
                    Classification::Success
                };
                let status = u16::try_from(key >> 1).ok().filter(|s| *s != 0);
                cache.family.remove(&cache.labels(classification, status));
            }
        }
        for (classification, status) in overflow.iter() {
            cache.family.remove(&cache.labels(*classification, *status));
        }
    }

    /// Responses counted so far with this classification and status (`None`: no response).
    pub fn responses(&self, classification: Classification, status: Option<u16>) -> u64 {
        self.responses
            .family
            .get(&self.responses.labels(classification, status))
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

// === impl ResponseCache ===

impl ResponseCache {
    fn labels(&self, classification: Classification, status: Option<u16>) -> ResponseLabels {
        ResponseLabels {
            target: self.target.clone(),
            classification,
            status,
        }
    }

    #[inline]
    fn inc(&self, classification: Classification, status: Option<u16>) {
        let key = (u32::from(status.unwrap_or(0)) << 1) | u32::from(!classification.is_success());
        for slot in &self.slots {
            match slot.get() {
                Some((k, counter)) if *k == key => {
                    counter.inc();
                    return;
                }
                Some(_) => continue,
                None => {
                    // First response with this status: rare, so the lock costs nothing.
                    let _guard = self.overflow.lock();
                    if self.removed.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    let counter = self
                        .family
                        .get_or_create_owned(&self.labels(classification, status));
                    counter.inc();
                    // Losing the race for the slot is fine: the counter is the family's child.
                    let _ = slot.set((key, counter));
                    return;
                }
            }
        }
        let mut overflow = self.overflow.lock();
        if self.removed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if !overflow.contains(&(classification, status)) {
            overflow.push((classification, status));
        }
        self.family
            .get_or_create(&self.labels(classification, status))
            .inc();
    }
}

impl fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

// === impl NewHttpMetrics ===

impl NewHttpMetrics {
    /// Uses `families` and the default classifier ([`classify_default`]).
    pub fn new(families: HttpMetricFamilies) -> Self {
        Self {
            families,
            classify: classify_default,
        }
    }

    /// Replaces the success/failure classifier (e.g. with the resilience layer's).
    pub fn with_classifier(mut self, classify: ClassifyFn) -> Self {
        self.classify = classify;
        self
    }

    /// The families this records into.
    pub fn families(&self) -> &HttpMetricFamilies {
        &self.families
    }

    /// The layer for one target: its metric handles are resolved here, once.
    pub fn layer_for(&self, target: &TargetLabels) -> HttpMetricsLayer {
        HttpMetrics::layer(self.families.target(target), self.classify)
    }
}

// === impl HttpMetricsLayer ===

impl HttpMetricsLayer {
    /// The target's metric handles (to read them, or to [`TargetMetrics::remove`] its series).
    pub fn metrics(&self) -> &TargetMetrics {
        &self.handles.metrics
    }

    fn handles_mut(&mut self) -> &mut Handles {
        // Builder methods run before the layer is cloned into services, so this rarely copies.
        Arc::make_mut(&mut self.handles)
    }

    /// Also records every request in a stat window (see [`crate::stat`]).
    pub fn with_stats(mut self, stats: Arc<ServiceStats>) -> Self {
        self.handles_mut().stats = Some(stats);
        self
    }

    /// Also records every request on one fixed service-graph edge (outbound: this workload →
    /// the route's service).
    pub fn with_edge(mut self, edge: Arc<EdgeStats>) -> Self {
        self.handles_mut().edge = Some(edge);
        self
    }

    /// Also records every inbound request on the edge from its caller (named by `source`, or
    /// `unknown`) to this service.
    pub fn with_inbound_edges(
        mut self,
        destination: Arc<DestinationEdges>,
        source: SourceFn,
    ) -> Self {
        self.handles_mut().inbound = Some((destination, source));
        self
    }
}

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> HttpMetrics<S> {
        HttpMetrics {
            inner,
            handles: self.handles.clone(),
        }
    }
}

impl fmt::Debug for HttpMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetricsLayer")
            .field("metrics", &self.handles.metrics)
            .finish_non_exhaustive()
    }
}

// === impl HttpMetrics ===

impl HttpMetrics<()> {
    /// A layer recording into `metrics` (one target's handles, from
    /// [`HttpMetricFamilies::target`]) and classifying responses with `classify`.
    pub fn layer(metrics: TargetMetrics, classify: ClassifyFn) -> HttpMetricsLayer {
        HttpMetricsLayer {
            handles: Arc::new(Handles {
                metrics,
                classify,
                stats: None,
                edge: None,
                inbound: None,
            }),
        }
    }
}

impl<S> fmt::Debug for HttpMetrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("metrics", &self.handles.metrics)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> tower::Service<Request<B>> for HttpMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.handles.metrics.requests.inc();
        let edge = self.handles.inbound.as_ref().map(|(destination, source)| {
            destination.source(source(req.headers(), req.extensions()))
        });
        ResponseFuture {
            start_ns: clock::now_ns(),
            inner: self.inner.call(req),
            handles: self.handles.clone(),
            edge,
        }
    }
}

// === impl ResponseFuture ===

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // One clock read serves the latency and the stat window's bucket (the reading the
        // facade's scope shares with the layers below, when there is one).
        let now = clock::now_ns();
        let latency = std::time::Duration::from_nanos(now.saturating_sub(*this.start_ns));
        let handles = &**this.handles;
        handles.metrics.latency.observe(latency);
        let rsp = match &result {
            Ok(rsp) => rsp,
            Err(_) => {
                handles.record(
                    Classification::Failure,
                    None,
                    latency,
                    this.edge.take(),
                    now,
                );
                return Poll::Ready(result);
            }
        };
        let status = Some(rsp.status().as_u16());
        let extensions = rsp.extensions();
        // The verdict the endpoint's breaker gave with the request's (route's) classifier, so
        // metrics agree with the breaker, balancer and retries; else the hook.
        let class = if let Some(ResponseClass(class)) = extensions.get::<ResponseClass>() {
            Classification::from(*class)
        } else if let Some(late) = extensions.get::<LateClass>() {
            // Decided by the trailers: recorded when the breaker's body wrapper settles it (at
            // the trailers, the end of the stream, or when the body is dropped).
            let handles = this.handles.clone();
            let edge = this.edge.take();
            late.on_class(move |class| {
                handles.record(
                    Classification::from(class),
                    status,
                    latency,
                    edge,
                    clock::now_ns(),
                );
            });
            return Poll::Ready(result);
        } else {
            (handles.classify)(rsp.status(), rsp.headers())
        };
        handles.record(class, status, latency, this.edge.take(), now);
        Poll::Ready(result)
    }
}

// === impl Handles ===

impl Handles {
    /// Records one response's class (its latency is recorded with its head), as of `now`.
    #[inline]
    fn record(
        &self,
        class: Classification,
        status: Option<u16>,
        latency: std::time::Duration,
        edge: Option<Arc<EdgeStats>>,
        now_ns: u64,
    ) {
        self.metrics.responses.inc(class, status);
        let success = class.is_success();
        if let Some(stats) = &self.stats {
            stats.record_at_ns(now_ns, latency, success);
        }
        if let Some(edge) = &self.edge {
            edge.record(success);
        }
        if let Some(edge) = edge {
            edge.record(success);
        }
    }
}

impl From<crate::classify::Class> for Classification {
    fn from(class: crate::classify::Class) -> Self {
        if class.is_success() {
            Classification::Success
        } else {
            Classification::Failure
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("start_ns", &self.start_ns)
            .finish_non_exhaustive()
    }
}
