//! The meshwork server: the inbound side of the mesh in front of an application's service.
//!
//! ```text
//! connection ─▶ TLS accept (strict or permissive) ─▶ peer identity ─▶ authorization
//!            ─▶ deadline extraction ─▶ [inbound metrics, server span] ─▶ the application's service
//! ```
//!
//! Inbound golden metrics (`meshwork_inbound_*`), the stat row and the service-graph edges
//! (caller identity → service) are recorded when a [`Telemetry`] is given with
//! [`ServerBuilder::telemetry`]; a server span is exported per request when its tracing exports.
//!
//! With TLS (feature `tls`), every connection is accepted through a [`mesh_tls::server::TlsAcceptor`]:
//! in strict mode only mutual TLS is accepted, in permissive mode plaintext too (Istio's
//! PeerAuthentication modes). Each request carries the caller's verified
//! [`PeerIdentity`](mesh_tls::PeerIdentity) as an extension, and an optional
//! [`AuthzPolicy`](mesh_tls::authz::AuthzPolicy) answers 403 to callers it does not allow. The
//! deadline layer reads `grpc-timeout`, `l5d-ctx-deadline` and `x-envoy-expected-rq-timeout-ms`,
//! puts the earliest deadline on the request as a [`Deadline`](mesh_core::deadline::Deadline)
//! extension (so a handler that calls further services can pass it on), and answers 504 (or
//! `grpc-status: 4`) when it passes.
//!
//! A service that fails a request (a meshwork [`Client`](crate::Client) whose endpoints are
//! down, say) gets a response anyway: 502, 503 or 504 with an `l5d-err` header naming the cause
//! (see [`respond`](crate::respond)), never a connection closed with nothing sent. A handler that
//! panics gets its request a 500 with `l5d-err: request handler panicked` (tower-http's
//! `CatchPanic`; the connection serves on). [`ServerBuilder::access_log`] turns on tower-http's
//! `TraceLayer` as an access log (off by default).
//!
//! With [`ServerBuilder::load_reports`], every response also carries the server's load (requests
//! in flight, capacity, time in the application) in ORCA's `endpoint-load-metrics` header, for the
//! calling balancer (see [`load_report`](crate::load_report)); off by default.
//!
//! Connections are accepted through meshwork's one accept loop ([`mesh_server::Server`]): a
//! connection that sends nothing is closed after 10 s, an HTTP/1 request head must arrive within
//! 10 s, a connection without requests is closed after 60 s, HTTP/2 connections are kept alive by
//! PINGs, request heads over 16 KiB are answered 431, accept errors never stop the server, and on
//! shutdown it drains (requests in flight get 30 s to finish). Change them with
//! [`ServerBuilder::limits`].
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::Full;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! meshwork::server().serve(listener, app, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;

use hyper::body::Incoming;
use mesh_core::deadline::{DeadlineConfig, DeadlineStats, Deadlines};
use mesh_core::metrics::Telemetry;
use mesh_server::{Listener, Plain, Server, ServerConfig};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;

use crate::body::{boxed, Body, BoxError};
use crate::load_report::{LoadReportConfig, ReportLoad};
use crate::respond::MapErrorsLayer;

/// Starts building a server with production defaults: plaintext, no authorization, deadlines
/// honoured.
pub fn server() -> ServerBuilder {
    ServerBuilder::default()
}

/// Builds the inbound stack and serves it.
#[derive(Default)]
pub struct ServerBuilder {
    deadline: DeadlineConfig,
    limits: ServerConfig,
    access_log: bool,
    telemetry: Option<(Telemetry, String)>,
    load_report: Option<LoadReportConfig>,
    #[cfg(feature = "tls")]
    tls: Option<(mesh_tls::Credentials, mesh_tls::server::AcceptorConfig)>,
    #[cfg(feature = "tls")]
    authz: Option<mesh_tls::authz::AuthzPolicy>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A layer's configuration is invalid.
    #[error("invalid {layer} configuration: {reason}")]
    Config {
        /// Which layer.
        layer: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The inbound stack in front of an application's service, as [`ServerBuilder::layer`] makes it.
pub type Inbound =
    BoxCloneSyncService<http::Request<Incoming>, http::Response<InboundBody>, BoxError>;

/// The response body of the [`Inbound`] stack: boxed once, by tower-http's panic catcher.
pub type InboundBody = tower_http::body::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// The stack below the panic catcher.
type Stack = BoxCloneSyncService<http::Request<Incoming>, http::Response<Body>, BoxError>;

// === impl ServerBuilder ===

impl ServerBuilder {
    /// Deadline handling for inbound requests (default: honour the deadline headers, no timeout
    /// of the server's own).
    pub fn deadline(mut self, config: DeadlineConfig) -> Self {
        self.deadline = config;
        self
    }

    /// Timers and limits of each connection: first byte, request head, idle, HTTP/2 keepalive,
    /// request head size, drain (defaults: [`ServerConfig::default`]).
    pub fn limits(mut self, limits: ServerConfig) -> Self {
        self.limits = limits;
        self
    }

    /// Attaches the server's load to every response, for the calling balancer (see
    /// [`load_report`](crate::load_report)). Off by default.
    pub fn load_reports(mut self, config: LoadReportConfig) -> Self {
        self.load_report = Some(config);
        self
    }

    /// Logs every request (method, URI, version) and its response (status, latency in µs) at
    /// `INFO` level, with tower-http's `TraceLayer` (default off: the layer reads the clock twice
    /// and wraps the response body, which a busy proxy need not pay for).
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Records inbound metrics, stat and graph edges for `service` into `telemetry`, and a server
    /// span per request when its tracing exports.
    pub fn telemetry(mut self, telemetry: Telemetry, service: impl Into<String>) -> Self {
        self.telemetry = Some((telemetry, service.into()));
        self
    }

    /// Accepts mutual TLS with `credentials`, in strict mode unless `config` says permissive.
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        credentials: mesh_tls::Credentials,
        config: mesh_tls::server::AcceptorConfig,
    ) -> Self {
        self.tls = Some((credentials, config));
        self
    }

    /// Allows only the callers `policy` allows; others get 403 (the reason is logged, not sent).
    #[cfg(feature = "tls")]
    pub fn authorize(mut self, policy: mesh_tls::authz::AuthzPolicy) -> Self {
        self.authz = Some(policy);
        self
    }

    /// Wraps `app` in the inbound layers, without serving it (to serve it on connections you
    /// accept yourself).
    ///
    /// # Errors
    ///
    /// [`ServerError::Config`] if a layer's configuration is invalid.
    pub fn layer<S, B>(&self, app: S) -> Result<Inbound, ServerError>
    where
        S: Service<http::Request<Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.deadline.validate().map_err(|e| ServerError::Config {
            layer: "deadline",
            reason: e.to_string(),
        })?;
        // `boxed` leaves a body that is boxed already (a meshwork client's, a proxy's) as it is.
        let app = ServiceBuilder::new()
            .layer(Deadlines::layer(self.deadline, DeadlineStats::default()))
            .layer(MapErrorsLayer)
            .map_response(|rsp: http::Response<B>| rsp.map(boxed))
            .option_layer(self.load_report.clone().map(ReportLoad::layer))
            .service(app);
        let app: Stack = match &self.telemetry {
            Some((telemetry, service)) => {
                BoxCloneSyncService::new(telemetry.inbound_layer(service, peer_name).layer(app))
            }
            None => BoxCloneSyncService::new(app),
        };
        #[cfg(feature = "tls")]
        let app = match &self.authz {
            Some(policy) => {
                let authz = mesh_tls::authz::Authorize::layer(policy.clone()).map_err(|e| {
                    ServerError::Config {
                        layer: "authorization",
                        reason: e.to_string(),
                    }
                })?;
                BoxCloneSyncService::new(ServiceBuilder::new().layer(authz).service(app))
            }
            None => app,
        };
        // tower-http's CatchPanic, outermost: a panicking layer or handler costs its request a
        // 500 with `l5d-err`, not the connection. It boxes the response body, which is the one
        // boxing of the stack's responses.
        let app = ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(panic_response))
            .service(app);
        if !self.access_log {
            return Ok(BoxCloneSyncService::new(app));
        }
        let trace = TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
            .on_request(DefaultOnRequest::new().level(tracing::Level::DEBUG))
            .on_response(
                DefaultOnResponse::new()
                    .level(tracing::Level::INFO)
                    .latency_unit(LatencyUnit::Micros),
            );
        Ok(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_response(|rsp: http::Response<_>| rsp.map(InboundBody::new))
                .layer(trace)
                .service(app),
        ))
    }

    /// Serves `app` behind the inbound layers on `listener` until `shutdown` completes, then
    /// drains (see [`ServerBuilder::limits`]). HTTP/1.1 and HTTP/2 are both served. `listener` is a
    /// [`tokio::net::TcpListener`] or any other [`Listener`].
    ///
    /// # Errors
    ///
    /// [`ServerError::Config`] if a layer's configuration is invalid; accept and connection errors
    /// are logged, never returned.
    pub async fn serve<L, S, B, F>(
        self,
        listener: L,
        app: S,
        shutdown: F,
    ) -> Result<(), ServerError>
    where
        L: Listener,
        S: Service<http::Request<Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        let inbound = self.layer(app)?;
        let server = Server::new(self.limits.clone()).map_err(|e| ServerError::Config {
            layer: "server",
            reason: e.to_string(),
        })?;
        #[cfg(feature = "tls")]
        if let Some((credentials, config)) = self.tls {
            let acceptor =
                mesh_tls::server::TlsAcceptor::new(credentials, config).map_err(|e| {
                    ServerError::Config {
                        layer: "tls",
                        reason: e.to_string(),
                    }
                })?;
            server.serve(listener, acceptor, inbound, shutdown).await;
            return Ok(());
        }
        server.serve(listener, Plain, inbound, shutdown).await;
        Ok(())
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ServerBuilder");
        d.field("deadline", &self.deadline)
            .field("limits", &self.limits)
            .field("access_log", &self.access_log)
            .field("telemetry", &self.telemetry.as_ref().map(|(_, name)| name))
            .field("load_report", &self.load_report);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.as_ref().map(|(_, config)| config))
            .field("authz", &self.authz);
        d.finish()
    }
}

/// The answer to a request whose handler panicked: 500 with `l5d-err` (the panic message is
/// logged, not sent).
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> http::Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %message, "request handler panicked");
    let mut rsp = http::Response::new(Body::default());
    *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    rsp.headers_mut().insert(
        mesh_core::error::L5D_ERR,
        http::HeaderValue::from_static("request handler panicked"),
    );
    rsp
}

/// The caller's name for the service graph: its verified identity, if any.
#[cfg(feature = "tls")]
fn peer_name<'a>(_: &'a http::HeaderMap, extensions: &'a http::Extensions) -> Option<&'a str> {
    match extensions.get::<mesh_tls::PeerIdentity>() {
        Some(mesh_tls::PeerIdentity(Some(identity))) => Some(identity.as_str()),
        _ => None,
    }
}

/// Without TLS there is no verified caller identity.
#[cfg(not(feature = "tls"))]
fn peer_name<'a>(_: &'a http::HeaderMap, _: &'a http::Extensions) -> Option<&'a str> {
    None
}
