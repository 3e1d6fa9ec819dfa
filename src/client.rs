//! The meshwork client: a discovery source and hyper-util's pooled client, turned into one
//! `tower::Service<http::Request<B>>` that balances each request over the service's endpoints,
//! with deadlines, budgeted retries, optional hedging, load shedding and circuit breaking.
//!
//! # Shape
//!
//! The builder stacks the layers in docs/design.md's order:
//!
//! ```text
//! request ─▶ [route metrics] ─▶ deadline ─▶ retry (budget, classify) ─▶ hedge (optional) ─▶ shed (pending cap)
//!         ─▶ balancer: P2C over peak-EWMA cost
//!         ─▶ per endpoint: [endpoint metrics, client span] ─▶ breaker ─▶ concurrency cap
//!         ─▶ [mTLS] connect ─▶ hyper pool ─▶ network
//! ```
//!
//! For every endpoint that discovery reports, the client builds **one hyper-util client of its own**
//! (its own connection pool, dialing only that endpoint's address through an
//! [`EndpointConnector`]), wraps it in that endpoint's circuit breaker and concurrency cap, and hands
//! it to the [`mesh_balance::Balance`] with the endpoint's weight and the breaker's [`Health`]
//! handle. The request keeps its logical `Host` / `:authority`: only the TCP connection goes to the
//! endpoint. Per-endpoint services are kept across discovery updates of the same address, so a weight
//! change does not drop the endpoint's warm connections (or its breaker state).
//!
//! # Defaults
//!
//! | layer | default | set with |
//! |---|---|---|
//! | deadline | honour `grpc-timeout`, `l5d-ctx-deadline`, `x-envoy-expected-rq-timeout-ms`; no timeout of its own | [`ClientBuilder::deadline`] |
//! | classification | `retryable-idempotent-5xx`, gRPC UNAVAILABLE retryable | [`ClientBuilder::classify`] |
//! | retries | on; budget 20 % + 10/s over 10 s (Finagle); bodies ≤ 64 KiB replayable | [`ClientBuilder::retry`], [`ClientBuilder::budget`] |
//! | hedging | off; when on, after the set's observed p95 | [`ClientBuilder::hedge`] |
//! | shedding | 1,024 pending requests, 1,024 in flight (Envoy) | [`ClientBuilder::shed`] |
//! | balancer | P2C peak-EWMA, 30 ms default RTT, 10 s decay, 3 s failfast | [`ClientBuilder::balance`] |
//! | breaker | 7 consecutive failures or < 80 % success over 10 s; 1 s → 60 s ejection (500 ms probes while connections are refused) | [`ClientBuilder::breaker`] |
//! | active health checks | off | [`ClientBuilder::health_check`] |
//! | endpoint concurrency cap | 1,024 | [`ClientBuilder::endpoint_concurrency`] |
//! | protocol | each request's own version: HTTP/2 (prior knowledge, or ALPN `h2` with TLS) for HTTP/2 requests, HTTP/1.1 for the others | [`ClientBuilder::protocol`], endpoint label `protocol`, route policy |
//! | connect timeout | 1 s | [`ClientBuilder::connect_timeout`] |
//! | connections | HTTP/1.1: a stack of idle connections per endpoint ([`crate::pool`]); HTTP/2: one multiplexed connection per endpoint; idle connections closed after 90 s; HTTP/2 PING every 20 s, closed if unanswered for 20 s | [`ClientBuilder::idle_timeout`], [`ClientBuilder::hyper`] |
//! | mutual TLS | off; [`ClientBuilder::tls`] turns it on for endpoints with an expected identity | [`ClientBuilder::tls`] |
//! | metrics | on: `meshwork_route_*` around the whole stack, `meshwork_endpoint_*` per endpoint, plus retry, hedge, deadline and ejection counters | [`ClientBuilder::telemetry`] |
//! | tracing | context propagated (W3C, B3), no spans exported; a span per attempt when a [`Tracing`] exporter is set | [`ClientBuilder::tracing`] |
//!
//! Requests the mesh fails itself (deadline passed, queue full, no endpoints) are answered with a
//! response carrying an `l5d-err` header (504, 503) where the layer can make one, so a caller can
//! tell a mesh failure from an application failure.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use meshwork::discovery::{Discovery, Endpoint};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let discovery = Discovery::fixed([
//!     Endpoint::new("127.0.0.1:8081".parse()?),
//!     Endpoint::new("127.0.0.1:8082".parse()?),
//! ])?;
//! let client = meshwork::client(discovery).authority("world.svc").build::<Empty<Bytes>>()?;
//! let rsp = client.request(http::Request::get("/hello").body(Empty::new())?).await?;
//! println!("{}", rsp.status());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_balance::Outcome;
use mesh_balance::{clock, Balance, Health, HealthState};
use mesh_core::breaker::{
    Breaker, BreakerConfig, BreakerLayer, BreakerStats, HealthCheck, HealthCheckConfig,
};
use mesh_core::classify::{
    Classifier, ClassifyBody, ErrorKind, GrpcClasses, ResponseClass, SharedClassify,
};
use mesh_core::deadline::{DeadlineConfig, DeadlineStats, Deadlines, SharedLatency};
use mesh_core::hedge::{AvoidEndpoint, TakenHint};
use mesh_core::hedge::{Hedge, HedgeConfig, HedgeStats};
use mesh_core::metrics::HttpMetrics;
use mesh_core::metrics::{names, CallbackHandle, MetricsError, NameClaim, Succession, Telemetry};
use mesh_core::retry::{Budget, BudgetConfig, ReplayBody, Retry, RetryConfig, RetryStats};
use mesh_core::shed::{ConcurrencyCap, Shed, ShedConfig, ShedStats};
use mesh_core::stat::StatConfig;
use mesh_core::trace::ClientSpan;
use mesh_core::trace::Tracing;
use mesh_discovery::Discovery;
use tower::discover::Change;
use tower::util::future::EitherResponseFuture;
use tower::util::{BoxCloneSyncService, Either, MapRequest, MapResponse};
use tower::{Layer, Service, ServiceExt};

use crate::body::{boxed, Body, BoxError};
use crate::connect::{EndpointClient, EndpointConnector, DEFAULT_CONNECT_TIMEOUT};
use mesh_core::route::Protocol;

/// The per-endpoint service the balancer chooses among: metrics ─▶ span ─▶ breaker ─▶ cap ─▶
/// transport. A concrete type, not a boxed one: the balancer clones it for every request, and a
/// clone of this is a handful of reference counts, where a boxed service's is an allocation.
type EndpointService = HttpMetrics<ClientSpan<Either<BrokenEndpoint, CappedEndpoint>>>;

/// An endpoint with a breaker: its classifying response body is unwrapped again.
type BrokenEndpoint = MapResponse<Breaker<CappedEndpoint>, UnwrapClassified>;

/// An endpoint below the breaker.
type CappedEndpoint = ConcurrencyCap<EndpointTransport>;

/// [`unwrap_classified`], as the type [`MapResponse`] holds.
type UnwrapClassified =
    fn(http::Response<ClassifyBody<Body, mesh_core::breaker::Report>>) -> http::Response<Body>;

/// What carries a request to one endpoint, below the per-endpoint layers: the hyper pools by
/// default, or what [`ClientBuilder::transport`] makes.
pub type Transport = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// Makes an endpoint's [`Transport`].
type MakeTransport = Arc<dyn Fn(&mesh_discovery::Endpoint) -> Transport + Send + Sync>;

/// The services below the retry layer, shared by every attempt: hedging (if on) ─▶ shed ─▶
/// balancer.
type BelowRetry = Either<Hedge<MapRequest<BelowHedge, Unreplay<Body>>>, BelowHedge>;

/// The shedding layer over the balancer.
type BelowHedge = Shed<PreviousHosts>;

/// [`unreplay`], as the type [`MapRequest`] holds.
type Unreplay<B> = fn(http::Request<ReplayBody<B>>) -> http::Request<Body>;

/// The whole client stack: route metrics ─▶ deadlines ─▶ backend metrics ─▶ retries (if on) ─▶
/// [`BelowRetry`]. Concrete (no boxed service, so no boxed future or service clone per layer);
/// the retry layer sends a first attempt in place unless the body must be buffered first, and
/// boxes only what retrying needs.
type Stack<B> = HttpMetrics<Deadlines<HttpMetrics<Either<Retrying<B>, NotRetrying<B>>>>>;

/// The stack's retry layer, when retries are on.
type Retrying<B> = Retry<MapRequest<BelowRetry, Unreplay<B>>>;

/// The stack below the backend metrics when retries are off.
type NotRetrying<B> = MapRequest<BelowRetry, fn(http::Request<B>) -> http::Request<Body>>;

/// A boxed response future (a hedged request's, a transport's).
type BoxResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// The response future of [`BelowRetry`].
type BelowRetryFuture = EitherResponseFuture<
    mesh_core::hedge::ResponseFuture<BelowHedgeFuture, Body>,
    BelowHedgeFuture,
>;

/// The response future of [`BelowHedge`].
type BelowHedgeFuture = mesh_core::shed::ShedFuture<PreviousHosts, http::Request<Body>, Body>;

/// The response future of [`Stack`], whatever the request body (below the retry layer the body
/// is [`Body`]).
type StackFuture = mesh_core::metrics::ResponseFuture<
    mesh_core::deadline::ResponseFuture<
        mesh_core::metrics::ResponseFuture<
            EitherResponseFuture<
                mesh_core::retry::ResponseFuture<BelowRetryFuture, Body>,
                BelowRetryFuture,
            >,
        >,
    >,
>;

/// Starts building a client over the endpoints `discovery` reports.
///
/// See [`ClientBuilder`] for the settings and [the module docs](mod@crate::client) for the shape.
pub fn client(discovery: Discovery) -> ClientBuilder {
    ClientBuilder::new(discovery)
}

/// Starts building a client for a gRPC service (e.g. the transport of a tonic client) over the
/// endpoints `discovery` reports: every request goes over HTTP/2 (prior knowledge in plaintext,
/// ALPN `h2` with TLS), responses are classified by `grpc-status` (in headers or trailers;
/// UNAVAILABLE is retryable), and requests without an authority (tonic's, unless given an origin)
/// get one: the DNS name for DNS discovery, else `localhost`. Override it with
/// [`ClientBuilder::authority`].
///
/// ```no_run
/// use meshwork::discovery::{Discovery, Endpoint};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let discovery = Discovery::fixed([Endpoint::new("127.0.0.1:50051".parse()?)])?;
/// let transport = meshwork::grpc(discovery).build::<tonic::body::Body>()?;
/// // let client = GreeterClient::new(transport);
/// # Ok(()) }
/// ```
pub fn grpc(discovery: Discovery) -> ClientBuilder {
    let authority = discovery
        .source()
        .strip_prefix("dns:")
        .and_then(|name| Authority::try_from(name).ok())
        .unwrap_or_else(|| Authority::from_static("localhost"));
    ClientBuilder::new(discovery)
        .protocol(Protocol::Http2)
        .classify(Classifier::default())
        .authority(authority)
}

/// Builds a [`Client`]. Every setting has a production default (see [the module docs](self)).
pub struct ClientBuilder {
    discovery: Discovery,
    transport: Option<MakeTransport>,
    balance: mesh_balance::Config,
    hyper: legacy::Builder,
    idle_timeout: Option<Duration>,
    protocol: Protocol,
    connect_timeout: Duration,
    authority: Option<Authority>,
    /// Why the last [`ClientBuilder::authority`] was rejected, reported by `build`.
    invalid_authority: Option<String>,
    /// The name in the client's metrics (`route`, `backend` labels); see [`ClientBuilder::name`].
    name: Option<String>,
    /// The succession the client's name is claimed in; see [`ClientBuilder::succession`].
    succession: Option<Succession>,
    classify: Classifier,
    deadline: DeadlineConfig,
    retry: Option<RetryConfig>,
    budget: BudgetConfig,
    hedge: Option<HedgeConfig>,
    shed: ShedConfig,
    breaker: Option<BreakerConfig>,
    health_check: Option<HealthCheckConfig>,
    endpoint_concurrency: usize,
    telemetry: Option<Telemetry>,
    #[cfg(feature = "tls")]
    tls: Option<TlsSettings>,
}

/// Mutual TLS settings of a client (feature `tls`).
#[cfg(feature = "tls")]
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// This workload's certificate, key and trust bundle (watch them for rotation with
    /// [`mesh_tls::Credentials::watch`]).
    pub credentials: mesh_tls::Credentials,
    /// When `true` (the default), an endpoint without an expected identity in discovery is left out
    /// of the balancer rather than dialed in plaintext. When `false`, such endpoints are dialed in
    /// plaintext (Istio's permissive mode, for a migration).
    pub require_identity: bool,
}

/// Counters of the client's layers, for metrics and tests. Clones share the counters.
#[derive(Clone, Debug)]
pub struct ClientStats {
    /// Retries made, budget exhaustion, requests not retried and why.
    pub retry: RetryStats,
    /// Hedges sent and won.
    pub hedge: HedgeStats,
    /// Deadline expirations and malformed deadline headers.
    pub deadline: DeadlineStats,
    /// Requests shed because the pending queue or an endpoint's cap was full.
    pub shed: ShedStats,
    /// Breaker ejections, restorations and failed probes, over all endpoints.
    pub breaker: BreakerStats,
}

/// A balanced hyper client over one logical service's endpoints.
///
/// Cheap to clone; clones share the endpoint set, its balancing state, the retry budget and the
/// connection pools.
pub struct Client<B> {
    stack: Stack<B>,
    /// The handles a request does not use, behind one reference count: a clone of the client
    /// (one per request for a caller that uses `oneshot`, as tower's services are used) counts
    /// one reference here instead of one per handle.
    shared: Arc<ClientShared>,
}

/// The parts of a [`Client`] that its clones share and only its accessors (and a failed
/// request) read.
struct ClientShared {
    balance: mesh_balance::Balance<SocketAddr, EndpointService, ClassifyHttp>,
    authority: Option<Authority>,
    discovery: Discovery,
    stats: ClientStats,
    telemetry: Telemetry,
    /// Endpoints discovery reported that the client left out (mTLS required, no usable expected
    /// identity), named in the error when the balancer has nothing to send to.
    left_out: LeftOut,
    /// Keeps the scrape-time counters registered, and the client's name claimed in the registry,
    /// while any clone of the client lives.
    _callbacks: (Vec<CallbackHandle>, NameClaim),
}

/// The addresses left out of the balancer because they cannot be dialed as required.
type LeftOut = Arc<std::sync::Mutex<Vec<SocketAddr>>>;

fn left_out_update(left_out: &LeftOut, addr: SocketAddr, out: bool) {
    let mut list = left_out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let present = list.contains(&addr);
    if out && !present {
        list.push(addr);
    } else if !out && present {
        list.retain(|a| *a != addr);
    }
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The balancer rejected its configuration, or no tokio runtime was running.
    #[error("cannot build the balancer")]
    Balance(#[from] mesh_balance::BuildError),
    /// A layer's configuration is invalid.
    #[error("invalid {layer} configuration: {reason}")]
    Config {
        /// Which layer.
        layer: &'static str,
        /// What is wrong, with the offending value.
        reason: String,
    },
    /// The client's counters could not be registered (e.g. a name already taken in a shared
    /// registry).
    #[error("cannot register the client's metrics")]
    Metrics(#[from] MetricsError),
}

/// Why a request through a [`Client`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request had no authority in its URI nor a `Host` header, and the client has no
    /// [`ClientBuilder::authority`] to fall back on.
    #[error("request has no authority: set the URI's authority, a Host header, or ClientBuilder::authority")]
    MissingAuthority,
    /// The request's URI could not be made absolute.
    #[error("invalid request URI")]
    InvalidUri(#[from] http::Error),
    /// The balancer had no endpoint to send the request to.
    #[error(transparent)]
    Balance(mesh_balance::Error),
    /// The balancer had no endpoint to send the request to, and these endpoints from discovery
    /// were left out because mutual TLS is required and discovery gives no usable expected
    /// identity for them.
    #[error("{error}; left out because mutual TLS is required and discovery gives no usable expected identity: {endpoints:?}")]
    LeftOut {
        /// The balancer's error.
        error: mesh_balance::Error,
        /// The endpoints left out.
        endpoints: Vec<SocketAddr>,
    },
    /// The endpoint's connection failed, or the endpoint closed it mid-request.
    #[error("request to endpoint failed")]
    Http(#[source] legacy::Error),
    /// A mesh layer failed the request (e.g. a per-try timeout).
    #[error(transparent)]
    Mesh(mesh_core::error::Error),
    /// Any other failure.
    #[error(transparent)]
    Other(BoxError),
}

/// The balancer's view of an endpoint's outcome, read from the one classification the endpoint's
/// circuit breaker made with the request's (route's) classifier ([`ResponseClass`]), so balancer,
/// breaker, retries and metrics agree. Without that verdict (breaker off) it charges 5xx
/// responses and failing gRPC statuses in the response head. A response the mesh made itself (the
/// endpoint's concurrency cap) is no verdict; a refused connection is [`Outcome::Refused`]; other
/// errors are failures. So an endpoint that fails fast does not look fast to the balancer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassifyHttp {
    grpc: GrpcClasses,
}

/// What kind of error an endpoint's error is, for [`ClassifyHttp`] (implemented for the boxed
/// errors of the client's endpoints, and for `Infallible`).
pub trait EndpointErrorKind {
    /// The error's kind ([`error_kind`]).
    fn error_kind(&self) -> ErrorKind;
}

impl EndpointErrorKind for BoxError {
    fn error_kind(&self) -> ErrorKind {
        error_kind(&**self)
    }
}

impl EndpointErrorKind for std::convert::Infallible {
    fn error_kind(&self) -> ErrorKind {
        match *self {}
    }
}

/// The client's [`ErrorInspector`](mesh_core::classify::ErrorInspector):
/// [`crate::connect::endpoint_error_kind`], except that TLS identity and trust failures are
/// [`ErrorKind::Identity`] (another handshake would fail the same way, so they are not retried).
pub fn error_kind(err: &(dyn std::error::Error + 'static)) -> ErrorKind {
    #[cfg(feature = "tls")]
    {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(crate::connect::ConnectError::Tls { source, .. }) =
                e.downcast_ref::<crate::connect::ConnectError>()
            {
                if !matches!(source, mesh_tls::TlsError::HandshakeTimeout { .. }) {
                    return ErrorKind::Identity;
                }
            }
            cur = e.source();
        }
    }
    crate::connect::endpoint_error_kind(err)
}

// === impl ClassifyHttp ===

impl<B, E: EndpointErrorKind> mesh_balance::Classify<http::Response<B>, E> for ClassifyHttp {
    #[inline]
    fn is_failure(&self, result: &Result<http::Response<B>, E>) -> bool {
        let Ok(rsp) = result else { return true };
        if let Some(ResponseClass(class)) = rsp.extensions().get::<ResponseClass>() {
            return !class.is_success();
        }
        if rsp.status().is_server_error() {
            return true;
        }
        mesh_core::headers::first(rsp.headers(), &mesh_core::error::GRPC_STATUS)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|s| s.trim().parse::<u16>().ok())
            .is_some_and(|code| self.grpc.classify(code) != mesh_core::classify::Class::Success)
    }

    /// The endpoint's load report, taken off the response so it goes no further than this hop.
    #[inline]
    fn take_load_report(
        &self,
        rsp: &mut http::Response<B>,
    ) -> Option<Result<mesh_balance::LoadReport, mesh_balance::ReportError>> {
        mesh_balance::report::take_from_headers(rsp.headers_mut())
    }

    #[inline]
    fn outcome(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Err(e) if e.error_kind() == ErrorKind::Connect => Outcome::Refused,
            Err(_) => Outcome::Failure,
            Ok(rsp) if rsp.extensions().get::<mesh_core::error::Error>().is_some() => {
                Outcome::NoVerdict
            }
            Ok(_) if self.is_failure(result) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        }
    }
}

/// The balancer as the client's innermost shared service: every attempt of a request avoids the
/// endpoints earlier attempts used ([`AvoidEndpoint`], set by the retry and hedge layers).
#[derive(Clone)]
struct PreviousHosts(Balance<SocketAddr, EndpointService, ClassifyHttp>);

impl Service<http::Request<Body>> for PreviousHosts {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = mesh_balance::ResponseFuture<
        SocketAddr,
        EndpointService,
        ClassifyHttp,
        http::Request<Body>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.0, cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match AvoidEndpoint::take(&req) {
            TakenHint::Hint(avoid) => self.0.call_avoiding(req, &avoid),
            TakenHint::Recorder(recorder) => self.0.call_avoiding(req, &recorder),
            TakenHint::None => self.0.call(req),
        }
    }
}

// === impl ClientBuilder ===

impl ClientBuilder {
    /// A builder with production defaults over the endpoints `discovery` reports.
    pub fn new(discovery: Discovery) -> Self {
        let mut hyper = legacy::Client::builder(TokioExecutor::new());
        hyper
            .http2_keep_alive_interval(Some(Duration::from_secs(20)))
            .http2_keep_alive_timeout(Duration::from_secs(20));
        Self {
            discovery,
            transport: None,
            balance: mesh_balance::Config::default(),
            hyper,
            idle_timeout: Some(crate::pool::DEFAULT_IDLE_TIMEOUT),
            protocol: Protocol::Auto,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            authority: None,
            invalid_authority: None,
            name: None,
            succession: None,
            classify: Classifier::default(),
            deadline: DeadlineConfig::default(),
            retry: Some(RetryConfig::default()),
            budget: BudgetConfig::default(),
            hedge: None,
            shed: ShedConfig::default(),
            breaker: Some(BreakerConfig::default()),
            health_check: None,
            endpoint_concurrency: 1024,
            telemetry: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The balancer's settings (defaults: docs/design.md, "Balancing").
    pub fn balance(mut self, config: mesh_balance::Config) -> Self {
        self.balance = config;
        self
    }

    /// The hyper-util client settings each endpoint's HTTP/2 connection is made with (windows,
    /// keepalive, stream limits). Default: hyper-util's defaults with HTTP/2 keepalive PINGs every
    /// 20 s (closed when unanswered for 20 s). The client always gives the builder tokio's timer,
    /// so keepalives take effect. HTTP/1.1 connections are meshwork's own ([`crate::pool`]);
    /// the idle timeout of both is [`ClientBuilder::idle_timeout`]'s.
    pub fn hyper(mut self, builder: legacy::Builder) -> Self {
        self.hyper = builder;
        self
    }

    /// How long an endpoint's connection may stay idle before it is closed (default 90 s, as
    /// hyper-util's; `None`: never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The HTTP version requests are sent to endpoints with (default [`Protocol::Auto`]: each
    /// request's own, so HTTP/2 requests go over HTTP/2 and HTTP/1 ones over HTTP/1.1). An
    /// endpoint's `protocol` label (`http1`, `http2`), a route's policy and a [`Protocol`] request
    /// extension override it, in that order.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Carries requests to each endpoint with what `make` returns for it instead of meshwork's
    /// connection pools (connect timeout, TLS, protocol and hyper settings then do not apply):
    /// an in-memory transport for tests and benchmarks, or a transport of your own. Every layer
    /// above it (per-endpoint metrics, cap, breaker, balancer, retries, ...) stays.
    pub fn transport(
        mut self,
        make: impl Fn(&mesh_discovery::Endpoint) -> Transport + Send + Sync + 'static,
    ) -> Self {
        self.transport = Some(Arc::new(make));
        self
    }

    /// The TCP connect timeout to each endpoint (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The logical authority (`host[:port]`) given to requests that carry neither an absolute URI
    /// nor a `Host` header. An invalid one makes [`ClientBuilder::build`] fail with
    /// [`BuildError::Config`].
    pub fn authority<A>(mut self, authority: A) -> Self
    where
        A: TryInto<Authority>,
        A::Error: fmt::Display,
    {
        match authority.try_into() {
            Ok(authority) => {
                self.authority = Some(authority);
                self.invalid_authority = None;
            }
            Err(error) => self.invalid_authority = Some(error.to_string()),
        }
        self
    }

    /// The client's name in its metrics (the `route` and `backend` labels). Default: the
    /// authority, else the discovery source's name (`static`, `file:PATH`, `dns:NAME`). Names are
    /// unique per metrics registry: building a second client under a name in use fails with
    /// [`BuildError::Metrics`] rather than merge the two clients' series (unless the new client
    /// replaces the old one: [`ClientBuilder::succession`]).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Makes the client a member of `succession`, so that it takes its name over from a live
    /// client of an earlier generation of the same succession instead of failing (e.g. the clients
    /// a configuration reload builds replace the running ones, which finish their requests in
    /// flight). A name held by any other live client still fails the build.
    pub fn succession(mut self, succession: Succession) -> Self {
        self.succession = Some(succession);
        self
    }

    /// Makes the client rebuild `n` of its succession (the template's, else `own`), so that it
    /// takes its name over from an earlier build of the same name that is still held (a routed
    /// client's leaf rebuilt after eviction).
    pub(crate) fn rebuild(mut self, own: Succession, n: u64) -> Self {
        self.succession = Some(self.succession.unwrap_or(own).rebuilt(n));
        self
    }

    /// Sets the name unless one is set already (a routed client names its leaves).
    pub(crate) fn name_if_unset(mut self, name: impl FnOnce() -> String) -> Self {
        if self.name.is_none() {
            self.name = Some(name());
        }
        self
    }

    /// How responses are classified for retries and the breaker (default
    /// `retryable-idempotent-5xx`, gRPC UNAVAILABLE retryable).
    pub fn classify(mut self, classifier: Classifier) -> Self {
        self.classify = classifier;
        self
    }

    /// Deadline handling: a timeout for every request, whether incoming deadline headers are
    /// honoured and whether the remaining time is propagated (all on by default, no timeout).
    pub fn deadline(mut self, config: DeadlineConfig) -> Self {
        self.deadline = config;
        self
    }

    /// Retry settings, or `None` to turn retries off (default: on, 3 at most per request, the
    /// budget being the real limit).
    pub fn retry(mut self, config: Option<RetryConfig>) -> Self {
        self.retry = config;
        self
    }

    /// The retry budget shared by retries and hedges (default: Finagle's 20 % + 10/s over 10 s).
    pub fn budget(mut self, config: BudgetConfig) -> Self {
        self.budget = config;
        self
    }

    /// Hedging settings, or `None` (the default) for no hedging layer at all. With
    /// `HedgeConfig { enabled: false, .. }` the layer is there but hedges only the requests that
    /// carry a [`mesh_core::hedge::HedgeDelay`] extension (a route's policy). Only idempotent
    /// requests with replayable bodies are hedged, and hedges spend the retry budget.
    pub fn hedge(mut self, config: Option<HedgeConfig>) -> Self {
        self.hedge = config;
        self
    }

    /// Load-shedding limits in front of the balancer (default: Envoy's 1,024 pending).
    pub fn shed(mut self, config: ShedConfig) -> Self {
        self.shed = config;
        self
    }

    /// Circuit-breaker settings per endpoint, or `None` to turn breaking off.
    pub fn breaker(mut self, config: Option<BreakerConfig>) -> Self {
        self.breaker = config;
        self
    }

    /// Active health checks per endpoint (TCP connect or HTTP GET, see [`HealthCheckConfig`]), or
    /// `None` (the default): the breaker's passive checks find failed and restarted endpoints from
    /// real traffic. Checks eject and restore endpoints through the same health handle.
    pub fn health_check(mut self, config: Option<HealthCheckConfig>) -> Self {
        self.health_check = config;
        self
    }

    /// Requests in flight to one endpoint at most; more fail at once with 503 (and are retried
    /// elsewhere, since they never reached the endpoint). Default 1,024.
    pub fn endpoint_concurrency(mut self, max: usize) -> Self {
        self.endpoint_concurrency = max;
        self
    }

    /// Records metrics (and spans, if its [`Tracing`] exports) into `telemetry`, shared with
    /// other clients and servers of the process. Without this, each client has a registry of its
    /// own ([`Client::telemetry`]).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Exports a client span per attempt through `tracing` (e.g. [`Tracing::otlp`]), into a
    /// registry of the client's own. To share a registry, build a [`Telemetry`] with the tracing
    /// and pass it to [`ClientBuilder::telemetry`].
    ///
    /// # Errors
    ///
    /// [`BuildError::Metrics`] if the tracing counters cannot be registered.
    pub fn tracing(mut self, tracing: Tracing) -> Result<Self, BuildError> {
        let telemetry =
            Telemetry::new(StatConfig::default(), tracing).map_err(|e| BuildError::Config {
                layer: "telemetry",
                reason: e.to_string(),
            })?;
        self.telemetry = Some(telemetry);
        Ok(self)
    }

    /// Speaks mutual TLS to every endpoint whose expected identity discovery gives, presenting
    /// `credentials` and requiring the server to prove that identity. Endpoints without an identity
    /// are left out (see [`TlsSettings::require_identity`] to dial them in plaintext instead).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, credentials: mesh_tls::Credentials) -> Self {
        self.tls = Some(TlsSettings {
            credentials,
            require_identity: true,
        });
        self
    }

    /// Like [`ClientBuilder::tls`], with every TLS setting given.
    #[cfg(feature = "tls")]
    pub fn tls_settings(mut self, settings: TlsSettings) -> Self {
        self.tls = Some(settings);
        self
    }

    /// Puts a hedge layer that hedges only the requests asking for it (a route's hedging
    /// policy) into a client built without one, so route policies take effect.
    pub(crate) fn with_route_hedging(mut self) -> Self {
        if self.hedge.is_none() {
            self.hedge = Some(HedgeConfig {
                enabled: false,
                // Under a retry layer sharing the budget, requests deposit there already.
                deposit: self.retry.is_none(),
                ..HedgeConfig::default()
            });
        }
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        fn invalid(layer: &'static str, e: impl fmt::Display) -> BuildError {
            BuildError::Config {
                layer,
                reason: e.to_string(),
            }
        }
        if let Some(reason) = &self.invalid_authority {
            return Err(invalid("authority", reason));
        }
        self.deadline
            .validate()
            .map_err(|e| invalid("deadline", e))?;
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|e| invalid("retry", e))?;
        }
        if let Some(hedge) = &self.hedge {
            hedge.validate().map_err(|e| invalid("hedge", e))?;
        }
        self.shed.validate().map_err(|e| invalid("shed", e))?;
        if let Some(breaker) = &self.breaker {
            breaker.validate().map_err(|e| invalid("breaker", e))?;
        }
        if let Some(check) = &self.health_check {
            check.validate().map_err(|e| invalid("health check", e))?;
        }
        if self.endpoint_concurrency == 0 {
            return Err(invalid(
                "endpoint concurrency",
                "the cap must be at least 1, got 0",
            ));
        }
        Ok(())
    }

    /// Builds the client and spawns its discovery task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] if a layer's configuration is invalid, [`BuildError::Balance`] if the
    /// balancer's is or no runtime is running.
    pub fn build<B>(self) -> Result<Client<B>, BuildError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.validate()?;
        let telemetry = match self.telemetry {
            Some(telemetry) => telemetry,
            None => Telemetry::new(StatConfig::default(), Tracing::disabled()).map_err(|e| {
                BuildError::Config {
                    layer: "telemetry",
                    reason: e.to_string(),
                }
            })?,
        };
        // The metrics' `route` / `backend` label: the name given, else the authority, else the
        // discovery source. It must be unique per registry, or two clients' series would merge.
        let name = match (&self.name, &self.authority) {
            (Some(name), _) => name.clone(),
            (None, Some(authority)) => authority.to_string(),
            (None, None) => self.discovery.source().to_owned(),
        };
        let claim = format!("client/{name}");
        let name_claim = match self.succession {
            Some(succession) => telemetry.registry.claim_name_in(&claim, succession)?,
            None => telemetry.registry.claim_name(&claim)?,
        };
        let classify: SharedClassify = Arc::new(self.classify);
        let budget = Budget::new(self.budget).map_err(|e| BuildError::Config {
            layer: "retry budget",
            reason: e.to_string(),
        })?;
        let mut breaker_layer = self.breaker.map(|config| {
            Breaker::layer(config)
                .classify(classify.clone())
                .error_inspector(error_kind)
        });
        let breaker_stats = breaker_layer
            .as_ref()
            .map_or_else(BreakerStats::default, BreakerLayer::stats);
        let shed_layer = Shed::layer(self.shed);
        let shed_stats = shed_layer.stats();
        // Without timers hyper's pool never closes idle connections and HTTP/2 keepalive
        // never pings, whatever the settings say: give every builder tokio's.
        let mut hyper = self.hyper;
        hyper.timer(TokioTimer::new()).pool_timer(TokioTimer::new());
        let new_endpoint = NewEndpoint {
            health_check: self.health_check,
            transport: self.transport,
            hyper,
            idle_timeout: self.idle_timeout,
            protocol: self.protocol,
            connect_timeout: self.connect_timeout,
            breaker: breaker_layer.take(),
            cap: self.endpoint_concurrency,
            shed_stats: shed_stats.clone(),
            telemetry: telemetry.clone(),
            name: name.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls,
            #[cfg(feature = "tls")]
            tls_failures: Arc::default(),
        };
        #[cfg(feature = "tls")]
        let tls_failures = new_endpoint.tls_failures.clone();

        // One endpoint service per address, kept while the address stays in the set and its
        // expected identity stays the same.
        let mut endpoints: HashMap<SocketAddr, CachedEndpoint> = HashMap::new();
        let left_out = LeftOut::default();
        let left_out_of_set = left_out.clone();
        let changes = self
            .discovery
            .changes()
            .filter_map(move |change| {
                let change = match change {
                    Ok(Change::Insert(addr, endpoint)) => {
                        let known = endpoints.contains_key(&addr);
                        let made = new_endpoint.get_or_make(&mut endpoints, &endpoint);
                        left_out_update(&left_out_of_set, addr, made.is_none());
                        match made {
                            Some((service, health)) => Some(Ok(Change::Insert(
                                addr,
                                mesh_balance::Endpoint::new(service)
                                    .weight(balance_weight(endpoint.weight))
                                    .health(health),
                            ))),
                            // Unusable (e.g. mTLS required but no identity): leave it out.
                            None => {
                                endpoints.remove(&addr);
                                known.then_some(Ok(Change::Remove(addr)))
                            }
                        }
                    }
                    Ok(Change::Remove(addr)) => {
                        left_out_update(&left_out_of_set, addr, false);
                        endpoints.remove(&addr);
                        Some(Ok(Change::Remove(addr)))
                    }
                    Err(never) => match never {},
                };
                std::future::ready(change)
            })
            .map(|change: Result<_, std::convert::Infallible>| change);
        let balance = Balance::builder(self.balance)
            .classify(ClassifyHttp::default())
            .spawn(changes)?;
        let latency: SharedLatency = Arc::new(balance.clone());

        // Below the retry and hedge layers every request body is a `Body`, so the balancer and
        // the endpoints have one type whichever layers are on.
        let below_hedge: BelowHedge = shed_layer.layer(PreviousHosts(balance.clone()));
        // Under the retry layer, which deposits each request into the shared budget once, the
        // hedge layer must not deposit too (it sees every attempt: retries would fund retries).
        let retrying = self.retry.is_some();
        let hedge_layer = self.hedge.map(|config| {
            let config = HedgeConfig {
                deposit: config.deposit && !retrying,
                ..config
            };
            Hedge::layer(config, budget.clone()).latency(latency.clone())
        });
        let hedge_stats = hedge_layer
            .as_ref()
            .map_or_else(HedgeStats::default, |h| h.stats());
        let below_retry: BelowRetry = match hedge_layer {
            Some(hedge) => Either::Left(hedge.layer(MapRequest::new(
                below_hedge,
                unreplay::<Body> as Unreplay<Body>,
            ))),
            None => Either::Right(below_hedge),
        };
        let retry_layer = Retry::layer(self.retry.unwrap_or_default(), budget)
            .classify(classify)
            .error_inspector(error_kind)
            .latency(latency);
        let retry_stats = retry_layer.stats();
        let deadline_stats = DeadlineStats::default();
        let deadlines = Deadlines::layer(self.deadline, deadline_stats.clone());
        let route_metrics = telemetry.route("client", &name);
        // A client is one route with one backend (itself); a router in front adds its own routes.
        // Backend series sit where the stack diagram puts them: below deadlines, above retries.
        let backend_metrics = telemetry.backend(&name, &name);
        let attempts: Either<Retrying<B>, NotRetrying<B>> = match self.retry {
            Some(_) => Either::Left(
                retry_layer.layer(MapRequest::new(below_retry, unreplay::<B> as Unreplay<B>)),
            ),
            None => Either::Right(MapRequest::new(below_retry, box_request::<B> as fn(_) -> _)),
        };
        let stack: Stack<B> = route_metrics.layer(deadlines.layer(backend_metrics.layer(attempts)));

        let stats = ClientStats {
            retry: retry_stats,
            hedge: hedge_stats,
            deadline: deadline_stats,
            shed: shed_stats,
            breaker: breaker_stats,
        };
        #[allow(unused_mut)]
        let mut callbacks =
            register_counters(&telemetry, &name, &stats, &self.discovery, &balance)?;
        #[cfg(feature = "tls")]
        for (index, reason) in crate::connect::TlsFailures::REASONS.iter().enumerate() {
            let failures = tls_failures.clone();
            callbacks.push(telemetry.registry.register_counter_fn(
                names::TLS_HANDSHAKE_FAILURES,
                "Failed TLS handshakes.",
                &[
                    ("direction", "outbound"),
                    ("backend", &name),
                    ("reason", reason),
                ],
                move || failures.count(index),
            )?);
        }
        Ok(Client {
            stack,
            shared: Arc::new(ClientShared {
                balance,
                authority: self.authority,
                discovery: self.discovery,
                stats,
                telemetry,
                left_out,
                _callbacks: (callbacks, name_claim),
            }),
        })
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("discovery", &self.discovery)
            .field("balance", &self.balance)
            .field("connect_timeout", &self.connect_timeout)
            .field("authority", &self.authority)
            .field("retry", &self.retry)
            .field("hedge", &self.hedge)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// Exports the layers' own atomic counters at scrape time (nothing is counted twice on the
/// request path).
fn register_counters(
    telemetry: &Telemetry,
    name: &str,
    stats: &ClientStats,
    discovery: &Discovery,
    balance: &Balance<SocketAddr, EndpointService, ClassifyHttp>,
) -> Result<Vec<CallbackHandle>, MetricsError> {
    let registry = &telemetry.registry;
    let route = [("route", name)];
    let mut handles = Vec::with_capacity(8);
    let retry = stats.retry.clone();
    handles.push(registry.register_counter_fn(
        names::ROUTE_RETRIES,
        "Retries sent.",
        &route,
        move || retry.retries(),
    )?);
    let retry = stats.retry.clone();
    handles.push(registry.register_counter_fn(
        names::ROUTE_BUDGET_EXHAUSTED,
        "Retries not sent because the retry budget was spent.",
        &route,
        move || retry.budget_exhausted(),
    )?);
    let hedge = stats.hedge.clone();
    handles.push(registry.register_counter_fn(
        names::ROUTE_HEDGES,
        "Hedged attempts sent.",
        &route,
        move || hedge.hedges(),
    )?);
    let deadline = stats.deadline.clone();
    handles.push(registry.register_counter_fn(
        names::ROUTE_DEADLINE_EXPIRED,
        "Requests failed because their deadline passed.",
        &route,
        move || deadline.exceeded() + deadline.expired_on_arrival(),
    )?);
    let breaker = stats.breaker.clone();
    handles.push(registry.register_counter_fn(
        names::ENDPOINT_EJECTIONS,
        "Endpoints ejected by their circuit breaker.",
        &[("backend", name)],
        move || breaker.ejections(),
    )?);
    for (state, label) in [
        (HealthState::Available, "available"),
        (HealthState::Ejected, "ejected"),
        (HealthState::Probing, "probing"),
    ] {
        let balance = balance.clone();
        handles.push(registry.register_gauge_fn(
            names::BACKEND_ENDPOINTS,
            "Endpoints by circuit-breaker state.",
            &[("backend", name), ("state", label)],
            move || {
                let n = balance
                    .endpoints()
                    .iter()
                    .filter(|e| e.health == state)
                    .count();
                n as f64
            },
        )?);
    }
    let source = [("source", discovery.source())];
    let watched = discovery.clone();
    handles.push(registry.register_counter_fn(
        names::DISCOVERY_UPDATES,
        "Endpoint-set updates applied.",
        &source,
        move || watched.stats().updates,
    )?);
    let watched = discovery.clone();
    handles.push(registry.register_counter_fn(
        names::DISCOVERY_ERRORS,
        "Discovery errors (the last good set was kept).",
        &source,
        move || watched.stats().errors,
    )?);
    let watched = discovery.clone();
    handles.push(registry.register_gauge_fn(
        names::DISCOVERY_HEALTHY,
        "1 when the discovery source works, 0 when it is failing (its last good set is kept).",
        &source,
        move || f64::from(u8::from(watched.state().is_healthy())),
    )?);
    let watched = discovery.clone();
    handles.push(registry.register_gauge_fn(
        names::DISCOVERY_LAST_SUCCESS,
        "Unix time of the discovery source's last successful read (0: never).",
        &source,
        move || {
            watched.state().last_success.map_or(0.0, |at| {
                // The source keeps a monotonic instant; the exposition wants wall-clock time.
                let age = tokio::time::Instant::now().saturating_duration_since(at);
                std::time::SystemTime::now()
                    .checked_sub(age)
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0.0, |t| t.as_secs_f64())
            })
        },
    )?);
    Ok(handles)
}

/// Discovery weights are relative reals (1.0 default); the balancer's are integers. Scale by 100 so
/// two decimal places survive, and keep any positive weight positive.
fn balance_weight(weight: f64) -> u32 {
    if weight.is_nan() || weight <= 0.0 {
        return 0;
    }
    let scaled = (weight * 100.0).round();
    if scaled >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range and non-negative: the cast is exact after rounding.
        (scaled as u32).max(1)
    }
}

/// An endpoint's service, kept across discovery updates that change only its weight or labels.
struct CachedEndpoint {
    /// The identity the service's TLS connector checks; a different one needs a new service.
    identity: Option<String>,
    service: EndpointService,
    health: Health,
    /// The endpoint's active health check, if configured; stops when the entry goes.
    _check: Option<HealthCheck>,
    /// The endpoint's metric series, removed from the exposition when the entry goes.
    series: mesh_core::metrics::TargetMetrics,
}

impl Drop for CachedEndpoint {
    fn drop(&mut self) {
        // Series follow the live set: pod churn must not grow the exposition forever.
        self.series.remove();
    }
}

/// Makes the per-endpoint services: hyper pool, concurrency cap, breaker.
struct NewEndpoint {
    health_check: Option<HealthCheckConfig>,
    transport: Option<MakeTransport>,
    hyper: legacy::Builder,
    idle_timeout: Option<Duration>,
    protocol: Protocol,
    connect_timeout: Duration,
    breaker: Option<BreakerLayer>,
    cap: usize,
    shed_stats: ShedStats,
    telemetry: Telemetry,
    name: String,
    #[cfg(feature = "tls")]
    tls: Option<TlsSettings>,
    #[cfg(feature = "tls")]
    tls_failures: Arc<crate::connect::TlsFailures>,
}

/// A request body as the retry and hedge layers send it, as a [`Body`]: with no allocation when
/// it is empty (a bodiless request's replay) or the original body streaming once, already a
/// [`Body`]; else boxed.
fn unreplay<B>(req: http::Request<ReplayBody<B>>) -> http::Request<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    req.map(|body| match body {
        ReplayBody::Buffered {
            data,
            trailers: None,
        } if data.is_empty() => Body::default(),
        ReplayBody::Streaming {
            prefix: None,
            inner,
        } => boxed(inner),
        body => boxed(body),
    })
}

/// A request's body as a [`Body`] (no second box around one that is already).
fn box_request<B>(req: http::Request<B>) -> http::Request<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    req.map(boxed)
}

/// What carries a request to one endpoint: meshwork's own pools, or the service a
/// [`ClientBuilder::transport`] made. An enum rather than a boxed service, so that the
/// per-request clone of the endpoint's service allocates nothing on the default path (and, the
/// pools being shared, copies one pointer rather than hyper's client).
#[derive(Clone)]
enum EndpointTransport {
    Pools(Arc<EndpointClient>),
    Custom(Transport),
}

impl Service<http::Request<Body>> for EndpointTransport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            EndpointTransport::Pools(_) => Poll::Ready(Ok(())),
            EndpointTransport::Custom(custom) => custom.poll_ready(cx),
        }
    }

    #[inline]
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            EndpointTransport::Pools(pools) => pools.send(req),
            EndpointTransport::Custom(custom) => custom.call(req),
        }
    }
}

/// The breaker's response with a [`Body`]: the body itself when the class came with the head (no
/// allocation on the common path), else the classifying wrapper, boxed.
fn unwrap_classified(
    rsp: http::Response<ClassifyBody<Body, mesh_core::breaker::Report>>,
) -> http::Response<Body> {
    rsp.map(|body| body.try_into_inner().unwrap_or_else(boxed))
}

// === impl NewEndpoint ===

impl NewEndpoint {
    /// The service for `endpoint`, reusing the one already made for its address when its identity
    /// has not changed. `None` if the endpoint cannot be used (mTLS required and no valid identity).
    ///
    /// A changed (or removed) expected identity builds a new service: the old one's pooled
    /// connections were verified against the old identity and must not carry another request.
    fn get_or_make(
        &self,
        cache: &mut HashMap<SocketAddr, CachedEndpoint>,
        endpoint: &mesh_discovery::Endpoint,
    ) -> Option<(EndpointService, Health)> {
        if let Some(found) = cache.get(&endpoint.addr) {
            if found.identity == endpoint.identity {
                return Some((found.service.clone(), found.health.clone()));
            }
            tracing::debug!(endpoint = %endpoint.addr, old = ?found.identity, new = ?endpoint.identity, "expected identity changed; rebuilding the endpoint's service");
            // Dropped before the new one is made, so removing its series cannot remove the new
            // service's (same labels). The caller tells the balancer if no new one can be made.
            cache.remove(&endpoint.addr);
        }
        let health = Health::new();
        let transport = match &self.transport {
            Some(make) => EndpointTransport::Custom(make(endpoint)),
            None => {
                let connector = self.connector(endpoint)?;
                let protocol = endpoint
                    .labels
                    .get("protocol")
                    .and_then(|name| Protocol::from_name(name))
                    .unwrap_or(self.protocol);
                EndpointTransport::Pools(Arc::new(EndpointClient::new(
                    &self.hyper,
                    connector,
                    protocol,
                    self.idle_timeout,
                )))
            }
        };
        let (metrics, series) = self
            .telemetry
            .endpoint_with_series(&self.name, &endpoint.addr.to_string());
        let capped: CappedEndpoint = ConcurrencyCap::layer(self.cap)
            .with_stats(self.shed_stats.clone())
            .layer(transport);
        // The breaker classifies each attempt once, with the request's (route's) classifier; the
        // endpoint metrics above it record that verdict, trailers included.
        let classified = match &self.breaker {
            Some(breaker) => Either::Left(MapResponse::new(
                breaker.layer(capped, health.clone()),
                unwrap_classified as UnwrapClassified,
            )),
            None => Either::Right(capped),
        };
        let service: EndpointService = metrics.layer(classified);
        cache.insert(
            endpoint.addr,
            CachedEndpoint {
                identity: endpoint.identity.clone(),
                service: service.clone(),
                health: health.clone(),
                _check: self
                    .health_check
                    .clone()
                    .map(|config| HealthCheck::spawn(endpoint.addr, config, health.clone())),
                series,
            },
        );
        Some((service, health))
    }

    #[cfg(feature = "tls")]
    fn connector(&self, endpoint: &mesh_discovery::Endpoint) -> Option<EndpointConnector> {
        let plain =
            EndpointConnector::new(endpoint.addr).with_connect_timeout(self.connect_timeout);
        let Some(tls) = &self.tls else {
            return Some(plain);
        };
        let identity = match endpoint.identity.as_deref().map(mesh_tls::Identity::parse) {
            Some(Ok(identity)) => identity,
            Some(Err(error)) => {
                tracing::warn!(endpoint = %endpoint.addr, %error, "endpoint's expected identity is invalid; leaving it out");
                return None;
            }
            None if tls.require_identity => {
                tracing::warn!(endpoint = %endpoint.addr, "mTLS is required but discovery gives no identity for the endpoint; leaving it out");
                return None;
            }
            None => return Some(plain),
        };
        match mesh_tls::client::TlsConnector::new(&tls.credentials, identity) {
            Ok(connector) => Some(
                plain
                    .with_tls(connector)
                    .with_tls_failures(self.tls_failures.clone()),
            ),
            Err(error) => {
                tracing::warn!(endpoint = %endpoint.addr, %error, "cannot build the endpoint's TLS connector; leaving it out");
                None
            }
        }
    }

    #[cfg(not(feature = "tls"))]
    fn connector(&self, endpoint: &mesh_discovery::Endpoint) -> Option<EndpointConnector> {
        Some(EndpointConnector::new(endpoint.addr).with_connect_timeout(self.connect_timeout))
    }
}

// === impl Client ===

impl<B> Client<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Sends `req` to one of the service's endpoints.
    ///
    /// # Errors
    ///
    /// See [`Error`]. Failures the mesh can answer as HTTP (deadline passed: 504; pending queue
    /// full: 503) come back as responses with an `l5d-err` header, not as errors.
    pub async fn request(&self, req: http::Request<B>) -> Result<http::Response<Body>, Error> {
        self.clone().oneshot(req).await
    }
}

impl<B> Client<B> {
    /// The discovery handle the client balances over (current endpoint set, errors, counters).
    pub fn discovery(&self) -> &Discovery {
        &self.shared.discovery
    }

    /// The balancer's per-endpoint view (latency estimate, pending requests, health).
    pub fn endpoints(&self) -> Vec<mesh_balance::EndpointStats<SocketAddr>> {
        self.shared.balance.endpoints()
    }

    /// The counters of the client's layers.
    pub fn stats(&self) -> &ClientStats {
        &self.shared.stats
    }

    /// The metrics registry, stat windows and service graph the client records into; serve
    /// `telemetry().registry` with [`mesh_core::metrics::serve_metrics`] for Prometheus.
    pub fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    /// Gives `req` an absolute URI (the pool needs one) without changing its logical authority:
    /// the URI's own, else the `Host` header's, else the configured one.
    fn absolutize(&self, req: &mut http::Request<B>) -> Result<(), Error> {
        if req.uri().authority().is_some() && req.uri().scheme().is_some() {
            return Ok(());
        }
        let authority = match req.uri().authority() {
            Some(authority) => authority.clone(),
            None => match req
                .headers()
                .get(http::header::HOST)
                .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            {
                Some(authority) => authority,
                None => self
                    .shared
                    .authority
                    .clone()
                    .ok_or(Error::MissingAuthority)?,
            },
        };
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme.get_or_insert(Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(http::Error::from)?;
        Ok(())
    }
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<B> fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("balance", &self.shared.balance)
            .field("authority", &self.shared.authority)
            .finish_non_exhaustive()
    }
}

impl<B> Service<http::Request<B>> for Client<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.stack.poll_ready(cx).map_err(Error::from_boxed)
    }

    #[inline]
    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The layers' timings on the way down share one clock reading.
        let _clock = clock::Scope::enter();
        let state = match self.absolutize(&mut req) {
            Ok(()) => FutureState::Sent {
                fut: self.stack.call(req),
                left_out: self.shared.left_out.clone(),
            },
            Err(error) => FutureState::Failed { error: Some(error) },
        };
        ResponseFuture { state }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Client`].
    pub struct ResponseFuture {
        #[pin]
        state: FutureState,
    }
}

pin_project_lite::pin_project! {
    #[project = FutureStateProj]
    enum FutureState {
        Sent { #[pin] fut: StackFuture, left_out: LeftOut },
        Failed { error: Option<Error> },
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            FutureStateProj::Sent { fut, left_out } => {
                // The layers' timings on the way back share one clock reading.
                let _clock = clock::Scope::enter();
                fut.poll(cx)
                    .map_err(|e| Error::from_boxed(e).naming_left_out(left_out))
            }
            FutureStateProj::Failed { error } => {
                Poll::Ready(Err(error.take().unwrap_or(Error::MissingAuthority)))
            }
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === impl Error ===

impl Error {
    fn from_boxed(error: BoxError) -> Self {
        let error = match error.downcast::<mesh_balance::Error>() {
            Ok(error) => return Error::Balance(*error),
            Err(error) => error,
        };
        let error = match error.downcast::<mesh_core::error::Error>() {
            Ok(error) => return Error::Mesh(*error),
            Err(error) => error,
        };
        match error.downcast::<legacy::Error>() {
            Ok(error) => Error::Http(*error),
            Err(error) => Error::Other(error),
        }
    }

    /// Names the endpoints left out of the set when the balancer had none to send to.
    fn naming_left_out(self, left_out: &LeftOut) -> Self {
        match self {
            Error::Balance(error) => {
                let endpoints = left_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                if endpoints.is_empty() {
                    Error::Balance(error)
                } else {
                    Error::LeftOut { error, endpoints }
                }
            }
            other => other,
        }
    }

    /// Whether the mesh itself had no endpoint to send the request to.
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self, Error::Balance(_) | Error::LeftOut { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::balance_weight;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use mesh_balance::clock;
    use tower::{Service, ServiceExt};

    /// Two readings of the mesh clock around a real pause of the thread.
    fn two_readings() -> (tokio::time::Instant, tokio::time::Instant) {
        let first = clock::now();
        std::thread::sleep(Duration::from_millis(2));
        (first, clock::now())
    }

    #[tokio::test]
    async fn the_layers_of_one_call_and_of_one_poll_share_one_clock_reading() {
        type Readings = Arc<Mutex<Vec<(tokio::time::Instant, tokio::time::Instant)>>>;
        let calls: Readings = Arc::default();
        let polls: Readings = Arc::default();
        let (c, p) = (calls.clone(), polls.clone());
        let discovery = mesh_discovery::Discovery::fixed([mesh_discovery::Endpoint::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        )])
        .expect("a fixed set");
        let mut client = super::ClientBuilder::new(discovery)
            .name("clock-test")
            .transport(move |_| {
                let (calls, polls) = (c.clone(), p.clone());
                tower::util::BoxCloneSyncService::new(tower::service_fn(
                    move |_: http::Request<super::Body>| {
                        // In the transport's `call`, below every layer of the client's `call`.
                        calls.lock().expect("lock").push(two_readings());
                        let polls = polls.clone();
                        async move {
                            // In its future's first poll, below every layer's poll.
                            polls.lock().expect("lock").push(two_readings());
                            Ok::<_, super::BoxError>(http::Response::new(super::Body::default()))
                        }
                    },
                ))
            })
            .build::<super::Body>()
            .expect("client");
        // Once the endpoint is in the set, each request is called through in `call` (a request
        // that waits for the set is called through in its future's poll, in that poll's scope).
        while client.endpoints().is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..2 {
            let req = http::Request::get("http://clock.test/")
                .body(super::Body::default())
                .expect("request");
            let rsp = client.ready().await.expect("ready").call(req).await;
            assert_eq!(rsp.expect("response").status(), 200);
        }
        let calls = calls.lock().expect("lock").clone();
        let polls = polls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(polls.len(), 2);
        for (first, second) in calls.iter().chain(&polls) {
            assert_eq!(
                first, second,
                "a reading shared within the call or the poll"
            );
        }
        // Each scope ends with its call or poll: the next one reads the clock afresh.
        assert!(polls[0].0 >= calls[0].0 + Duration::from_millis(2));
        assert!(calls[1].0 >= polls[0].0 + Duration::from_millis(2));
        assert!(polls[1].0 >= calls[1].0 + Duration::from_millis(2));
        assert!(clock::now() >= polls[1].0 + Duration::from_millis(2));
    }

    /// An endpoint an attempt went to, and the endpoints named by the hint it carried as an
    /// extension, if any.
    type Try = (std::net::SocketAddr, Option<Vec<std::net::SocketAddr>>);

    /// Sends `tasks` × `each` GETs (each task on its own clone of one client, all at once) over
    /// `endpoints` in-memory endpoints that fail every request's first attempt with a 503, and
    /// returns each request's attempts, checking that every request was retried into a 200.
    async fn first_attempts_fail(
        endpoints: u16,
        tasks: usize,
        each: usize,
    ) -> std::collections::HashMap<String, Vec<Try>> {
        use mesh_core::hedge::AvoidEndpoint;
        use std::net::SocketAddr;

        type Attempts = Arc<Mutex<Vec<(String, Try)>>>;
        let attempts: Attempts = Arc::default();
        let seen = attempts.clone();
        let addrs = (0..endpoints).map(|i| SocketAddr::from(([127, 0, 0, 1], 9 + i)));
        let discovery = mesh_discovery::Discovery::fixed(addrs.map(mesh_discovery::Endpoint::new))
            .expect("a fixed set");
        let client = super::ClientBuilder::new(discovery)
            .name("avoid-test")
            // Nothing may take an endpoint out of the set: the retry always has another one.
            .breaker(None)
            .budget(mesh_core::retry::BudgetConfig {
                min_per_sec: 10_000,
                ..Default::default()
            })
            .transport(move |endpoint| {
                let (seen, addr) = (seen.clone(), endpoint.addr);
                tower::util::BoxCloneSyncService::new(tower::service_fn(
                    move |req: http::Request<super::Body>| {
                        let id = req.headers()["x-id"].to_str().expect("ascii").to_owned();
                        let hinted = req
                            .extensions()
                            .get::<AvoidEndpoint>()
                            .map(AvoidEndpoint::endpoints);
                        let mut seen = seen.lock().expect("lock");
                        // Every request's first attempt fails, wherever it goes.
                        let first = !seen.iter().any(|(other, _)| *other == id);
                        seen.push((id, (addr, hinted)));
                        let status = if first { 503 } else { 200 };
                        let rsp = http::Response::builder()
                            .status(status)
                            .body(super::Body::default())
                            .expect("response");
                        std::future::ready(Ok::<_, super::BoxError>(rsp))
                    },
                ))
            })
            .build::<super::Body>()
            .expect("client");
        while client.endpoints().len() < usize::from(endpoints) {
            tokio::task::yield_now().await;
        }
        let senders = (0..tasks).map(|task| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    let req = http::Request::get("http://avoid.test/")
                        .header("x-id", format!("{task}.{i}"))
                        .body(super::Body::default())
                        .expect("request");
                    let rsp = client.ready().await.expect("ready").call(req).await;
                    assert_eq!(rsp.expect("response").status(), 200, "request {task}.{i}");
                }
            })
        });
        for sender in senders.collect::<Vec<_>>() {
            sender.await.expect("sender");
        }
        let mut by_id: std::collections::HashMap<String, Vec<Try>> = Default::default();
        for (id, attempt) in attempts.lock().expect("lock").drain(..) {
            by_id.entry(id).or_default().push(attempt);
        }
        assert_eq!(by_id.len(), tasks * each);
        by_id
    }

    /// A request's first attempt and its retry, checked: the first went out without an
    /// extension map (its endpoint was recorded into a recording loan), the retry's hint names
    /// the first attempt's endpoint and then its own (the balancer records each as it
    /// dispatches it), and they differ.
    fn first_and_retry(id: &str, tries: &[Try]) -> (std::net::SocketAddr, std::net::SocketAddr) {
        let [(first, ref first_hint), (retry, ref retry_hint)] = tries[..] else {
            panic!("request {id}: attempts {tries:?}");
        };
        assert_eq!(
            *first_hint, None,
            "request {id}: the first attempt got an extension map"
        );
        assert_eq!(
            *retry_hint,
            Some(vec![first, retry]),
            "request {id}: the retry's hint names the first attempt's endpoint, then its own"
        );
        assert_ne!(
            first, retry,
            "request {id}: the retry went to the same endpoint"
        );
        (first, retry)
    }

    /// The first attempt of a GET goes out from `call` under the retry layer's recording loan
    /// (no hint and no extension map are made for it), and the balancer records its endpoint
    /// there: the retry carries a hint naming that endpoint, and goes to the other one.
    #[tokio::test]
    async fn a_first_attempt_records_its_endpoint_without_an_extension_and_the_retry_goes_elsewhere(
    ) {
        for (id, tries) in first_attempts_fail(2, 1, 16).await {
            first_and_retry(&id, &tries);
        }
    }

    /// Loans are per thread and per call: with many requests in flight on several threads,
    /// each request's hint holds its own attempts' endpoints and no other request's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_on_many_threads_never_record_into_each_other_s_hint() {
        let by_id = first_attempts_fail(8, 8, 25).await;
        let mut firsts = std::collections::HashSet::new();
        for (id, tries) in &by_id {
            firsts.insert(first_and_retry(id, tries).0);
        }
        assert!(
            firsts.len() > 1,
            "the first attempts were spread: {firsts:?}"
        );
    }

    #[test]
    fn weights_scale_and_keep_positive_weights_positive() {
        assert_eq!(balance_weight(1.0), 100);
        assert_eq!(balance_weight(2.5), 250);
        assert_eq!(balance_weight(0.0), 0);
        assert_eq!(balance_weight(-1.0), 0);
        assert_eq!(balance_weight(f64::NAN), 0);
        assert_eq!(balance_weight(0.001), 1);
        assert_eq!(balance_weight(1e12), u32::MAX);
    }
}

#[cfg(test)]
mod size_tests {
    //! The request path moves these by value: the balancer clones an endpoint's service when its
    //! own instance is busy, and every layer moves its inner future into its own. Inline, hyper's
    //! client (448 bytes), an OpenTelemetry span or a peeked response head made them several
    //! times larger, and copying them was a fifth of the stack's instructions.
    use std::mem::size_of;

    use super::{Body, EndpointService, Stack, StackFuture};

    type Request = http::Request<Body>;

    #[test]
    fn an_endpoint_service_is_a_few_pointers() {
        let size = size_of::<EndpointService>();
        assert!(size <= 128, "the per-endpoint service is {size} bytes");
    }

    #[test]
    fn an_endpoint_future_holds_no_span_or_response_head_inline() {
        let size = size_of::<<EndpointService as tower::Service<Request>>::Future>();
        assert!(
            size <= 160,
            "the per-endpoint response future is {size} bytes"
        );
    }

    #[test]
    fn the_client_stack_and_its_future_stay_small() {
        let stack = size_of::<Stack<Body>>();
        assert!(stack <= 160, "the client stack is {stack} bytes");
        // 296 bytes with the deadline's timer boxed; inline it would add 112 to this future
        // (and to the client's around it), with or without a deadline.
        let future = size_of::<StackFuture>();
        assert!(
            future <= 320,
            "the client stack's response future is {future} bytes"
        );
    }
}
