//! The admin server (feature `admin`): what Linkerd's admin port shows, for a proxy or for any
//! program that embeds meshwork.
//!
//! | path | what |
//! |---|---|
//! | `/` | the dashboard: one self-contained page (nothing fetched from elsewhere) that polls the paths below every second and shows per-service success rate, RPS and latency percentiles with a short history, endpoints by state, routes, weights and the dtab, and the service graph |
//! | `/metrics` | Prometheus / OpenMetrics text of the shared [`Telemetry`] registry |
//! | `/ready` | 200 once [`Admin::set_ready`] said so (listeners bound, config loaded), else 503 |
//! | `/live` | 200 while the process serves |
//! | `/stat.json`, `/stat` | per-service SUCCESS, RPS, latency percentiles (`linkerd viz stat`) as JSON / a table |
//! | `/graph.json`, `/graph.dot` | observed edges (caller identity → service) as JSON / Graphviz |
//! | `/delegator?path=/svc/x[&router=name][&dtab=...]` | how a name delegates under a router's dtab, step by step (Linkerd 1's delegator) |
//! | `/config` | the effective configuration as JSON, secrets redacted, plus the last reload's outcome |
//!
//! Everything here reads state that the request path already keeps (metric atomics, stat
//! windows, the router's dtab); the admin port adds nothing to the request path. It is served by
//! the same accept loop as the inbound side ([`crate::server()`]).
//!
//! ```no_run
//! use meshwork::admin::Admin;
//! use meshwork::core::metrics::Telemetry;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let telemetry = Telemetry::new(Default::default(), meshwork::core::trace::Tracing::disabled())?;
//! let admin = Admin::new(telemetry);
//! admin.set_ready(true);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9990").await?;
//! admin.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use mesh_core::dtab::{Dtab, Path};
use mesh_core::metrics::Telemetry;
use mesh_core::route::Routing;
use tokio::net::TcpListener;
use tower::Service;

use crate::server::ServerError;

/// The dashboard page served at `/`: HTML, CSS and script in one file, reading only this port.
const DASHBOARD: &str = include_str!("admin/dashboard.html");

/// The admin service. Cheap to clone; every clone shares the state.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    telemetry: Telemetry,
    ready: AtomicBool,
    routers: RwLock<Vec<(String, Routing)>>,
    config: RwLock<serde_json::Value>,
}

// === impl Admin ===

impl Admin {
    /// An admin service over `telemetry`, not ready yet, with no routers and an empty `/config`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            inner: Arc::new(Inner {
                telemetry,
                ready: AtomicBool::new(false),
                routers: RwLock::new(Vec::new()),
                config: RwLock::new(serde_json::Value::Null),
            }),
        }
    }

    /// The telemetry it serves.
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// What `/ready` answers.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Adds (or replaces) a router that `/delegator?router=name` explains; the first one added
    /// is the default.
    pub fn set_router(&self, name: &str, routing: Routing) {
        let mut routers = self
            .inner
            .routers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match routers.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = routing,
            None => routers.push((name.to_owned(), routing)),
        }
    }

    /// What `/config` shows (the caller redacts secrets).
    pub fn set_config(&self, config: serde_json::Value) {
        *self.inner.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Serves the admin paths on `listener` until `shutdown` completes.
    ///
    /// # Errors
    ///
    /// Only if the server's own configuration is invalid ([`ServerError`]).
    pub async fn serve<F: Future<Output = ()>>(
        self,
        listener: TcpListener,
        shutdown: F,
    ) -> Result<(), ServerError> {
        crate::server().serve(listener, self, shutdown).await
    }

    fn respond(&self, method: &Method, path: &str, query: Option<&str>) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is allowed\n".into(),
            );
        }
        let t = &self.inner.telemetry;
        match path {
            "/" | "/index.html" => with_type(
                StatusCode::OK,
                "text/html; charset=utf-8",
                DASHBOARD.to_owned(),
            ),
            "/metrics" => match t.registry.encode() {
                Ok(body) => with_type(
                    StatusCode::OK,
                    mesh_core::metrics::OPENMETRICS_CONTENT_TYPE,
                    body,
                ),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            "/ready" if self.inner.ready.load(Ordering::Acquire) => {
                text(StatusCode::OK, "ready\n".into())
            }
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/stat.json" => json(&t.stat_json()),
            "/stat" => text(StatusCode::OK, t.stats.table()),
            "/graph.json" => json(&t.graph_json()),
            "/graph.dot" => with_type(
                StatusCode::OK,
                "text/vnd.graphviz; charset=utf-8",
                t.graph.to_dot(),
            ),
            "/config" => json(&self.inner.config.read().unwrap_or_else(|e| e.into_inner())),
            "/delegator" => self.delegator(query.unwrap_or("")),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try / (the dashboard) /metrics /ready /live /stat /stat.json /graph.json /graph.dot \
                 /delegator?path=/svc/name /config\n"
                    .into(),
            ),
        }
    }

    fn delegator(&self, query: &str) -> Response<Full<Bytes>> {
        let mut path = None;
        let mut router = None;
        let mut dtab = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "path" => path = Some(v),
                "router" => router = Some(v),
                "dtab" => dtab = v,
                _ => {}
            }
        }
        let Some(path) = path else {
            return text(
                StatusCode::BAD_REQUEST,
                "give the name to explain: /delegator?path=/svc/name\n".into(),
            );
        };
        let name: Path = match path.parse() {
            Ok(p) => p,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid path {path:?}: {e}\n"),
                )
            }
        };
        let overrides = match Dtab::parse(&dtab) {
            Ok(d) => d,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid dtab: {e}\n")),
        };
        let routers = self.inner.routers.read().unwrap_or_else(|e| e.into_inner());
        let found = match &router {
            Some(r) => routers.iter().find(|(n, _)| n == r),
            None => routers.first(),
        };
        match found {
            Some((name_of, routing)) => {
                let explanation = routing.explain(&name, &overrides);
                text(
                    StatusCode::OK,
                    format!(
                        "router {name_of}, dtab {}\n{}",
                        routing.dtab(),
                        explanation.render()
                    ),
                )
            }
            None => text(
                StatusCode::NOT_FOUND,
                format!("no router named {}\n", router.as_deref().unwrap_or("(any)")),
            ),
        }
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &self.inner.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(
            req.method(),
            req.uri().path(),
            req.uri().query(),
        )))
    }
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    with_type(StatusCode::OK, "application/json", value.to_string())
}

/// Decodes `%XX` escapes and `+` (a space) of a query value; invalid escapes are kept as written.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_is_served_at_the_root_and_reads_only_this_port() {
        let telemetry = Telemetry::new(Default::default(), mesh_core::trace::Tracing::disabled())
            .expect("telemetry");
        let rsp = Admin::new(telemetry).respond(&Method::GET, "/", None);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(
            rsp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        for path in [
            "\"/stat.json\"",
            "\"/graph.json\"",
            "\"/config\"",
            "\"/metrics\"",
        ] {
            assert!(DASHBOARD.contains(path), "the page polls {path}");
        }
        let page = DASHBOARD.replace("\"http://www.w3.org/2000/svg\"", "");
        for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
            assert!(!page.contains(external), "the page refers to {external}");
        }
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("%2Fsvc%2Fworld"), "/svc/world");
        assert_eq!(percent_decode("/a+=>+/b;"), "/a => /b;");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
