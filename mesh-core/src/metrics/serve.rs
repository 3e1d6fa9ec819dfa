//! A minimal `/metrics` endpoint over hyper, until the admin server serves it.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use super::MetricsRegistry;

/// Content type of the exposition: OpenMetrics text 1.0, which Prometheus negotiates.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A service answering `GET /metrics` with the registry's exposition (404 for other paths, 405
/// for other methods, 500 if encoding fails).
#[derive(Clone, Debug)]
pub struct MetricsService {
    registry: MetricsRegistry,
}

impl MetricsService {
    /// Serves `registry`.
    pub fn new(registry: MetricsRegistry) -> Self {
        Self { registry }
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match (method, path) {
            (&Method::GET, "/metrics") => match self.registry.encode() {
                Ok(text) => (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, Bytes::from(text)),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    Bytes::from(e.to_string()),
                ),
            },
            (_, "/metrics") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                Bytes::from_static(b"only GET is allowed on /metrics\n"),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from_static(b"not found; metrics are at /metrics\n"),
            ),
        };
        let mut rsp = Response::new(Full::new(body));
        *rsp.status_mut() = status;
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        rsp
    }
}

impl<B> tower::Service<Request<B>> for MetricsService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method(), req.uri().path())))
    }
}

/// Serves `/metrics` on `listener` (HTTP/1.1 and HTTP/2) through meshwork's one accept loop
/// ([`mesh_server::Server`], default timers and limits) until the returned future is dropped.
/// Accept errors are logged and retried, never returned.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: MetricsRegistry,
) -> std::io::Result<()> {
    let server = mesh_server::Server::new(mesh_server::ServerConfig::default())
        .map_err(std::io::Error::other)?;
    let service = MetricsService::new(registry);
    server
        .serve(
            listener,
            mesh_server::Plain,
            service,
            std::future::pending(),
        )
        .await;
    Ok(())
}
