//! One TOML file that describes a proxy (or an application that embeds meshwork): listeners,
//! services and their discovery, routes and weighted splits, the dtab, per-route policy, TLS,
//! limits and the admin port (feature `config`).
//!
//! [`Config::parse`] reads and validates a file and reports every problem as
//! `file:line:column: message` ([`ConfigError`]), pointing at the offending value, so an editor or
//! a CI step can jump to it. The validated [`Config`] builds the parts: the outbound
//! [`RoutedClient`] ([`Config::outbound`]), the inbound router and [`ServerBuilder`]
//! ([`Config::inbound`], [`Config::server`]), the TLS credentials ([`Config::credentials`]).
//!
//! # Why one file, and why these names
//!
//! A proxy beside each application (Linkerd's DaemonSet, Istio's sidecar) is configured as a unit,
//! and reloaded as a unit: a route, the dtab and the discovery sources change together. The names
//! follow Linkerd 1 (dtab, `/svc` names, `l5d-dtab`) and Linkerd 2's ports (4140 outbound,
//! 4143 inbound, 9990 admin as Linkerd 1's dashboard).
//!
//! # The file, field by field
//!
//! ```toml
//! # How long SIGTERM waits for requests in flight before the process exits (default "10s").
//! drain_timeout = "10s"
//! # Log each request of the listeners at INFO: method, URI, status, latency (default false).
//! access_log = false
//!
//! [outbound]
//! listen = "127.0.0.1:4140"        # the HTTP proxy the local app uses (http_proxy=...)
//! dtab = "/svc => /srv;"           # base delegation table (Linkerd 1 syntax)
//! trust_overrides = false          # honour l5d-dtab / l5d-ctx-dtab from the local app (default false)
//! protocol = "auto"                # to endpoints: auto (each request's own version), http1, h2
//!
//! [inbound]
//! listen = "0.0.0.0:4143"          # where peer proxies connect (mTLS per [tls])
//! app = "127.0.0.1:8080"           # the local application; no app: no inbound listener
//! dtab = ""                         # extra rules after the built-in "/inbound => /app;"
//! trust_overrides = true           # honour overrides from callers with a verified identity
//! app_protocol = "auto"            # to the app: auto, http1, h2
//! load_reports = 8                 # report load to callers, the app serving 8 at once; absent: off
//!
//! [admin]
//! listen = "0.0.0.0:9990"          # /metrics /ready /live /stat /graph.json /delegator /config
//!
//! [tls]                            # absent: plaintext everywhere
//! chain = "certs/proxy.pem"        # this workload's certificate chain (PEM), watched
//! key = "certs/proxy.key"          # its private key (PEM); shown as <redacted> on /config
//! trust_bundle = "certs/ca.pem"    # CA certificates that sign peers (PEM)
//! mode = "strict"                  # inbound: "strict" (mTLS only) or "permissive"
//! [tls.authorize]                  # inbound authorization; absent: any verified peer
//! identities = ["spiffe://example.org/ns/shop/sa/web"]
//! trust_domains = ["example.org"]
//! allow_unauthenticated = false    # plaintext callers in permissive mode
//!
//! [limits]                         # every limit, with its production default (see [`Limits`])
//! max_pending = 1024               # requests waiting for an endpoint per service (503 beyond)
//! max_in_flight = 1024             # requests dispatched at once per service
//! endpoint_concurrency = 1024      # requests in flight per endpoint
//! connect_timeout = "1s"
//! max_connections = 10000          # open connections per listener; beyond: closed at once
//! max_concurrent_streams = 128     # HTTP/2 streams per connection; beyond: REFUSED_STREAM
//! max_header_bytes = 16384         # request head size (8 KiB to 1 MiB); beyond: 431
//! max_headers = 100                # header fields of an HTTP/1 request; beyond: 431
//! max_request_body_bytes = 16777216  # request body; beyond: 413
//! retry_buffer_bytes = 65536       # bodies up to this size are buffered for retries and hedges
//! first_byte_timeout = "10s"       # accept to first byte; then closed
//! header_read_timeout = "10s"      # an HTTP/1 request head, from its first byte; then closed
//! handshake_timeout = "10s"        # the inbound TLS handshake; then closed
//! idle_timeout = "60s"             # a connection without requests in flight; then closed
//!
//! [[service]]                      # a discovery source bound to a dtab name
//! name = "/srv/world"
//! endpoints = ["127.0.0.1:8081"]   # static; or file = "eps.yaml"; or dns = "host:port"; or srv = "_http._tcp.name"
//! identity = "spiffe://example.org/ns/shop/sa/world"   # expected peer identity: dial with mTLS
//!
//! [[route]]                        # first match wins; none: one route by Host to /svc/<host>
//! name = "world-canary"
//! host = "world"                   # also: host_suffix, host_regex, path, path_prefix, path_regex, method, headers = { k = "v" }
//! split = [ { backend = "/svc/world", weight = 90 }, { backend = "/svc/world-v2", weight = 10 } ]
//! # backend = "/svc/world"        # one backend; or by_host = "/svc" (the Host under a prefix)
//! timeout = "2s"                   # total per request (deadline); durations: "250ms", "2s", "1m"
//! retries = true                   # budgeted retries of retryable failures (default on)
//! classification = "retryable-idempotent-5xx"  # or retryable-read-5xx, non-retryable-5xx, all-successful, grpc
//! retry_budget = { ttl = "10s", min_retries_per_sec = 10, percent_can_retry = 0.2 }
//! hedge = { percentile = 0.95, max_hedges = 1 }   # or { delay = "50ms" }
//! protocol = "auto"                # to the endpoints: auto (the request's own), http1, h2
//! ```
//!
//! Unknown keys are errors (a misspelt key must not silently keep a default).
//!
//! # Example
//!
//! ```
//! let text = r#"
//! [outbound]
//! listen = "127.0.0.1:0"
//! dtab = "/svc => /srv;"
//! [[service]]
//! name = "/srv/world"
//! endpoints = ["127.0.0.1:8081"]
//! "#;
//! let config = meshwork::config::Config::parse("proxy.toml", text).unwrap();
//! assert_eq!(config.services.len(), 1);
//!
//! let err = meshwork::config::Config::parse("proxy.toml", "[outbound]\nlisten = \"nowhere\"\n")
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("proxy.toml:2:10: "), "{err}");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use mesh_core::dtab::Dtab;
use mesh_core::route::{
    Backend, BudgetOverride, Classification, HedgePolicy, OverrideTrust, Protocol, Route,
    RouteBuilder, RoutePolicy, RouteRetry, RouteTable,
};
use mesh_core::shed::ShedConfig;
use mesh_discovery::{Discovery, DnsConfig, Endpoint, FileConfig};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::body::BoxError;
use crate::routing::{RoutedBuildError, RoutedClient, RoutedClientBuilder};
use crate::server::ServerBuilder;

/// The outbound listener's default address (Linkerd's outbound port).
pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:4140";
/// The inbound listener's default address (Linkerd 2's inbound port).
pub const DEFAULT_INBOUND: &str = "0.0.0.0:4143";
/// The admin listener's default address (Linkerd 1's admin port).
pub const DEFAULT_ADMIN: &str = "0.0.0.0:9990";
/// The name the inbound router delegates every request to; the base inbound dtab sends it to
/// `/app`, the local application.
pub const INBOUND_NAME: &str = "/inbound";

// ===== the file's model =====

/// The file as written (see the [module docs](self) for every field). Serializes back as the
/// effective configuration for the admin `/config` page ([`Config::redacted_json`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// How long SIGTERM waits for in-flight requests (default `"10s"`).
    pub drain_timeout: Option<Spanned<String>>,
    /// Log every request and response of the listeners at `INFO` (default false).
    pub access_log: bool,
    /// The outbound listener.
    pub outbound: OutboundFile,
    /// The inbound listener.
    pub inbound: InboundFile,
    /// The admin listener.
    pub admin: AdminFile,
    /// Mutual TLS; absent means plaintext.
    pub tls: Option<TlsFile>,
    /// Limits.
    pub limits: LimitsFile,
    /// Discovery sources bound to dtab names.
    #[serde(rename = "service")]
    pub services: Vec<ServiceFile>,
    /// Outbound routes, first match wins.
    #[serde(rename = "route")]
    pub routes: Vec<RouteFile>,
}

/// `[outbound]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundFile {
    /// Listen address (default `127.0.0.1:4140`).
    pub listen: Option<Spanned<String>>,
    /// The base dtab (default empty).
    pub dtab: Option<Spanned<String>>,
    /// Honour `l5d-dtab` / `l5d-ctx-dtab` from the local application (default false).
    pub trust_overrides: bool,
    /// Protocol to endpoints: `"auto"` (default: each request's own version), `"http1"` or
    /// `"h2"` (prior knowledge in plaintext, ALPN `h2` over mTLS).
    pub protocol: Option<Spanned<String>>,
}

/// `[inbound]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundFile {
    /// Listen address (default `0.0.0.0:4143`).
    pub listen: Option<Spanned<String>>,
    /// The local application's address; without it there is no inbound listener.
    pub app: Option<Spanned<String>>,
    /// Rules appended to the built-in `/inbound => /app;`.
    pub dtab: Option<Spanned<String>>,
    /// Honour overrides from callers with a verified identity (default true).
    pub trust_overrides: Option<bool>,
    /// Protocol to the local application: `"auto"` (default: each request's own version),
    /// `"http1"` or `"h2"`.
    pub app_protocol: Option<Spanned<String>>,
    /// Attach the load (in flight, this capacity, time in the application) to every inbound
    /// response for the callers' balancers, the application serving this many requests at once
    /// (at least 1); absent: no load reports.
    pub load_reports: Option<u32>,
}

/// `[admin]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    /// Listen address (default `0.0.0.0:9990`).
    pub listen: Option<Spanned<String>>,
}

/// `[tls]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Certificate chain (PEM).
    pub chain: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Trust bundle (PEM).
    pub trust_bundle: PathBuf,
    /// `"strict"` (default) or `"permissive"`.
    pub mode: Option<Spanned<String>>,
    /// Inbound authorization.
    pub authorize: Option<AuthorizeFile>,
}

/// `[tls.authorize]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizeFile {
    /// SPIFFE identities allowed exactly.
    pub identities: Vec<Spanned<String>>,
    /// Trust domains allowed as a whole.
    pub trust_domains: Vec<String>,
    /// Whether plaintext callers (permissive mode) are allowed.
    pub allow_unauthenticated: bool,
}

/// `[limits]` (defaults: [`Limits::default`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Requests waiting per service (default 1024).
    pub max_pending: Option<usize>,
    /// Requests in flight per service (default 1024).
    pub max_in_flight: Option<usize>,
    /// Requests in flight per endpoint (default 1024).
    pub endpoint_concurrency: Option<Spanned<usize>>,
    /// TCP connect timeout (default `"1s"`).
    pub connect_timeout: Option<Spanned<String>>,
    /// Connections open at once per listener (default 10000).
    pub max_connections: Option<Spanned<usize>>,
    /// Concurrent HTTP/2 streams per connection (default 128).
    pub max_concurrent_streams: Option<Spanned<u32>>,
    /// Largest request head in bytes (default 16384).
    pub max_header_bytes: Option<Spanned<usize>>,
    /// Most header fields of an HTTP/1 request (default 100).
    pub max_headers: Option<Spanned<usize>>,
    /// Largest request body in bytes (default 16777216).
    pub max_request_body_bytes: Option<Spanned<usize>>,
    /// Request bodies up to this size are buffered so they can be retried or hedged
    /// (default 65536).
    pub retry_buffer_bytes: Option<Spanned<usize>>,
    /// Time from accept to a connection's first byte (default `"10s"`).
    pub first_byte_timeout: Option<Spanned<String>>,
    /// Time to read an HTTP/1 request head once begun (default `"10s"`).
    pub header_read_timeout: Option<Spanned<String>>,
    /// Time for the inbound TLS handshake, protocol detection included (default `"10s"`).
    pub handshake_timeout: Option<Spanned<String>>,
    /// Time a connection may stay without a request in flight (default `"60s"`).
    pub idle_timeout: Option<Spanned<String>>,
}

/// `[[service]]`: exactly one of `endpoints`, `file`, `dns`, `srv`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// The dtab name bound to this source, e.g. `/srv/world`.
    pub name: Spanned<String>,
    /// A static list of `IP:port`.
    pub endpoints: Option<Vec<Spanned<String>>>,
    /// A file of endpoints (YAML, TOML or JSON), watched.
    pub file: Option<PathBuf>,
    /// DNS A/AAAA of `host:port`.
    pub dns: Option<Spanned<String>>,
    /// DNS SRV of this name.
    pub srv: Option<Spanned<String>>,
    /// Expected SPIFFE identity of every endpoint: connect with mTLS and check it.
    pub identity: Option<Spanned<String>>,
}

/// `[[route]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name (metrics, logs).
    pub name: Spanned<String>,
    /// Exact host match.
    pub host: Option<String>,
    /// Host suffix match (`.svc.cluster.local`).
    pub host_suffix: Option<String>,
    /// Host regex match.
    pub host_regex: Option<String>,
    /// Exact path match.
    pub path: Option<String>,
    /// Path prefix match.
    pub path_prefix: Option<String>,
    /// Path regex match.
    pub path_regex: Option<String>,
    /// Method match.
    pub method: Option<Spanned<String>>,
    /// Header matches (exact value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// One logical backend name.
    pub backend: Option<Spanned<String>>,
    /// The request's host under this prefix (`/svc` → `/svc/<host>`).
    pub by_host: Option<Spanned<String>>,
    /// A weighted split.
    pub split: Option<Vec<SplitFile>>,
    /// Total time per request.
    pub timeout: Option<Spanned<String>>,
    /// Whether retries are allowed (default true).
    pub retries: Option<bool>,
    /// A retry budget of this route's own.
    pub retry_budget: Option<BudgetFile>,
    /// Response classification preset.
    pub classification: Option<Spanned<String>>,
    /// Hedging.
    pub hedge: Option<HedgeFile>,
    /// Protocol to the endpoints for this route (`"auto"`, `"http1"`, `"h2"`).
    pub protocol: Option<Spanned<String>>,
}

/// One member of a weighted split.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    /// Logical name.
    pub backend: Spanned<String>,
    /// Relative weight.
    pub weight: u32,
}

/// `retry_budget = { ... }`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    /// How long a deposit counts (default `"10s"`).
    pub ttl: Option<Spanned<String>>,
    /// Retries always allowed per second (default 10).
    pub min_retries_per_sec: Option<u32>,
    /// Fraction of requests that may be retried on top (default 0.2).
    pub percent_can_retry: Option<f64>,
}

/// `hedge = { ... }`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeFile {
    /// Latency percentile after which to hedge (default 0.95).
    pub percentile: Option<f64>,
    /// A fixed delay instead of the percentile.
    pub delay: Option<Spanned<String>>,
    /// Most extra copies (default 1).
    pub max_hedges: Option<u32>,
}

// ===== the validated configuration =====

/// How a service finds its endpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A fixed list.
    Static(Vec<SocketAddr>),
    /// A watched file.
    File(PathBuf),
    /// DNS A/AAAA of `host:port`.
    Dns(String),
    /// DNS SRV.
    Srv(String),
}

/// One validated `[[service]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The dtab name.
    pub name: String,
    /// The discovery source.
    pub source: Source,
    /// Expected identity of the endpoints.
    pub identity: Option<String>,
}

/// The inbound side, when `[inbound] app` is set.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// Listen address.
    pub listen: SocketAddr,
    /// The local application.
    pub app: SocketAddr,
    /// `/inbound => /app;` followed by the configured rules.
    pub dtab: Dtab,
    /// Whether verified peers may override the dtab.
    pub trust_overrides: bool,
    /// The protocol to the application.
    pub app_protocol: Protocol,
    /// Load reports on inbound responses, if on.
    pub load_reports: Option<crate::load_report::LoadReportConfig>,
}

/// TLS settings.
#[derive(Clone, Debug)]
#[cfg(feature = "tls")]
pub struct Tls {
    /// Credential files.
    pub paths: mesh_tls::CredentialPaths,
    /// Inbound mode.
    pub mode: mesh_tls::server::Mode,
    /// Inbound authorization, if any.
    pub authorize: Option<mesh_tls::authz::AuthzPolicy>,
}

/// A validated configuration. Build parts from it with the methods below.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file as written.
    pub file: ConfigFile,
    /// Outbound listen address.
    pub outbound_listen: SocketAddr,
    /// Outbound base dtab.
    pub outbound_dtab: Dtab,
    /// Whether the local application may override the dtab.
    pub outbound_trust_overrides: bool,
    /// The protocol to endpoints.
    pub outbound_protocol: Protocol,
    /// Outbound routes, in order (validated as a table; [`Config::route_table`] builds one).
    pub routes: Vec<Route>,
    /// Services.
    pub services: Vec<Service>,
    /// Inbound side, if an app is configured.
    pub inbound: Option<Inbound>,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// TLS settings, if any.
    #[cfg(feature = "tls")]
    pub tls: Option<Tls>,
    /// Drain bound for SIGTERM.
    pub drain_timeout: Duration,
    /// Per-service queue and in-flight caps.
    pub shed: ShedConfig,
    /// Per-endpoint cap.
    pub endpoint_concurrency: usize,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// The listeners' and request bodies' limits.
    pub limits: Limits,
    /// Whether the listeners log every request (`access_log = true`).
    pub access_log: bool,
}

/// What one request and one connection may take, from `[limits]`. `Default` gives the
/// production defaults:
///
/// | limit | default | beyond it |
/// |---|---|---|
/// | `max_connections` | 10,000 per listener | the new connection is closed at once |
/// | `max_concurrent_streams` | 128 per HTTP/2 connection | the stream is refused (`REFUSED_STREAM`) |
/// | `max_header_bytes` | 16 KiB | `431 Request Header Fields Too Large` |
/// | `max_headers` | 100 (HTTP/1) | `431` |
/// | `max_request_body_bytes` | 16 MiB | `413 Payload Too Large` (at once for a `Content-Length` over it, else when the body passes it) |
/// | `retry_buffer_bytes` | 64 KiB | a larger body is streamed once, never retried nor hedged |
/// | `first_byte_timeout` | 10 s | the connection is closed |
/// | `header_read_timeout` | 10 s from the head's first byte | the connection is closed (`408` when hyper can still answer) |
/// | `handshake_timeout` | 10 s for the inbound TLS handshake | the connection is closed |
/// | `idle_timeout` | 60 s without a request in flight | the connection is closed |
/// | `drain_timeout` (top level) | 10 s after SIGTERM | the connections left are closed |
/// | `max_pending`, `max_in_flight` | 1,024 per service | `503` with `l5d-err` |
/// | `endpoint_concurrency` | 1,024 per endpoint | the balancer picks another endpoint, or the request waits |
///
/// HTTP/2 connections are also bounded by the server's fixed settings: 16 KiB frames, 20 streams
/// reset before being served and 1,024 reset for errors per connection (the "rapid reset"
/// bound), keepalive PINGs every 20 s (see [`crate::accept`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connection timers, head limits, connection and stream caps of each listener.
    pub server: mesh_server::ServerConfig,
    /// Largest request body, in bytes.
    pub max_request_body_bytes: usize,
    /// Largest request body buffered for retries and hedges, in bytes.
    pub retry_buffer_bytes: usize,
    /// Time for the inbound TLS handshake, protocol detection included.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            server: mesh_server::ServerConfig::default().drain_timeout(DEFAULT_DRAIN),
            max_request_body_bytes: 16 * 1024 * 1024,
            retry_buffer_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The proxy's drain bound after SIGTERM (Kubernetes' default grace period is 30 s: the proxy
/// finishes well within it).
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// A configuration problem, located in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file's name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Why a part could not be built from a valid configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A discovery source could not start.
    #[error("service {name}: {source}")]
    Discovery {
        /// The service.
        name: String,
        /// Why.
        source: mesh_discovery::DiscoveryError,
    },
    /// The routed client could not be built.
    #[error(transparent)]
    Routed(#[from] RoutedBuildError),
    /// TLS credentials could not be loaded.
    #[cfg(feature = "tls")]
    #[error("TLS credentials: {0}")]
    Tls(#[from] mesh_tls::TlsError),
}

// === impl Config ===

/// Collects the first error with its location.
struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn at(&self, span: Range<usize>, message: impl fmt::Display) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.to_string(),
        }
    }

    fn addr(
        &self,
        value: &Option<Spanned<String>>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        match value {
            None => default
                .parse()
                .map_err(|e| self.at(0..0, format!("default address {default}: {e}"))),
            Some(v) => v.get_ref().parse().map_err(|_| {
                self.at(
                    v.span(),
                    format!("invalid address {:?}: expected IP:port", v.get_ref()),
                )
            }),
        }
    }

    fn duration(&self, value: &Spanned<String>) -> Result<Duration, ConfigError> {
        parse_duration(value.get_ref()).map_err(|reason| self.at(value.span(), reason))
    }

    fn protocol(&self, value: &Option<Spanned<String>>) -> Result<Protocol, ConfigError> {
        match value {
            None => Ok(Protocol::Auto),
            Some(v) => Protocol::from_name(v.get_ref()).ok_or_else(|| {
                self.at(
                    v.span(),
                    format!(
                        "unknown protocol {:?}: expected \"auto\", \"http1\" or \"h2\"",
                        v.get_ref()
                    ),
                )
            }),
        }
    }

    fn dtab(&self, value: &Option<Spanned<String>>) -> Result<Dtab, ConfigError> {
        match value {
            None => Ok(Dtab::default()),
            Some(v) => Dtab::parse(v.get_ref())
                .map_err(|e| self.at(v.span(), format!("invalid dtab: {e}"))),
        }
    }
}

/// Parses `"250ms"`, `"2s"`, `"1m"`, `"1h"` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a whole number and a unit (ms, s, m, h)")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unit must be ms, s, m or h"
            ))
        }
    };
    Ok(d)
}

impl Config {
    /// Reads and validates the file at `path`; errors carry the path as given.
    pub fn load(path: &FsPath) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&name, &text)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let c = Checker { file, text };
        let raw: ConfigFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            c.at(e.span().unwrap_or(0..0), message)
        })?;
        Self::validate(&c, raw)
    }

    fn validate(c: &Checker<'_>, raw: ConfigFile) -> Result<Self, ConfigError> {
        let outbound_listen = c.addr(&raw.outbound.listen, DEFAULT_OUTBOUND)?;
        let admin_listen = c.addr(&raw.admin.listen, DEFAULT_ADMIN)?;
        let outbound_dtab = c.dtab(&raw.outbound.dtab)?;
        let drain_timeout = match &raw.drain_timeout {
            Some(v) => c.duration(v)?,
            None => DEFAULT_DRAIN,
        };

        let inbound = match &raw.inbound.app {
            None => None,
            Some(app) => {
                let app_addr = c.addr(&Some(app.clone()), DEFAULT_INBOUND)?;
                let base = Dtab::parse(&format!("{INBOUND_NAME} => /app;"))
                    .map_err(|e| c.at(app.span(), e))?;
                let extra = c.dtab(&raw.inbound.dtab)?;
                Some(Inbound {
                    listen: c.addr(&raw.inbound.listen, DEFAULT_INBOUND)?,
                    app: app_addr,
                    dtab: base.concat(&extra),
                    trust_overrides: raw.inbound.trust_overrides.unwrap_or(true),
                    app_protocol: c.protocol(&raw.inbound.app_protocol)?,
                    load_reports: raw.inbound.load_reports.map(|capacity| {
                        crate::load_report::LoadReportConfig {
                            capacity: capacity.max(1),
                        }
                    }),
                })
            }
        };

        let mut services = Vec::with_capacity(raw.services.len());
        for s in &raw.services {
            services.push(Self::service(c, s)?);
        }
        for (i, s) in services.iter().enumerate() {
            if services[..i].iter().any(|o| o.name == s.name) {
                return Err(c.at(
                    raw.services[i].name.span(),
                    format!("service {} is defined twice", s.name),
                ));
            }
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        for r in &raw.routes {
            routes.push(Self::route(c, r)?);
        }
        if routes.is_empty() {
            let default = Route::builder("default")
                .to(Backend::Host(parse_path(
                    c,
                    &Spanned::new(0..0, "/svc".to_owned()),
                )?))
                .build()
                .map_err(|e| c.at(0..0, e))?;
            routes.push(default);
        }
        RouteTable::new(routes.clone()).map_err(|e| {
            let span = raw.routes.first().map_or(0..0, |r| r.name.span());
            c.at(span, e)
        })?;

        let mut shed = ShedConfig::default();
        if let Some(n) = raw.limits.max_pending {
            shed.max_pending = n;
        }
        if let Some(n) = raw.limits.max_in_flight {
            shed.max_in_flight = n;
        }
        shed.validate()
            .map_err(|e| c.at(0..0, format!("[limits] {e}")))?;
        let endpoint_concurrency = match &raw.limits.endpoint_concurrency {
            Some(v) if *v.get_ref() == 0 => {
                return Err(c.at(v.span(), "endpoint_concurrency must be at least 1"))
            }
            Some(v) => *v.get_ref(),
            None => 1024,
        };
        let connect_timeout = match &raw.limits.connect_timeout {
            Some(v) => c.duration(v)?,
            None => crate::connect::DEFAULT_CONNECT_TIMEOUT,
        };

        let limits = Self::limits(c, &raw.limits, drain_timeout)?;

        #[cfg(feature = "tls")]
        let tls = match &raw.tls {
            None => None,
            Some(t) => Some(Self::tls(c, t)?),
        };
        #[cfg(not(feature = "tls"))]
        if raw.tls.is_some() {
            return Err(c.at(0..0, "[tls] needs meshwork's `tls` feature"));
        }

        Ok(Config {
            outbound_listen,
            outbound_dtab,
            outbound_trust_overrides: raw.outbound.trust_overrides,
            outbound_protocol: c.protocol(&raw.outbound.protocol)?,
            routes,
            services,
            inbound,
            admin_listen,
            #[cfg(feature = "tls")]
            tls,
            drain_timeout,
            shed,
            endpoint_concurrency,
            connect_timeout,
            limits,
            access_log: raw.access_log,
            file: raw,
        })
    }

    fn limits(c: &Checker<'_>, l: &LimitsFile, drain: Duration) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        let server = &mut limits.server;
        server.drain_timeout = drain;
        let mut span = 0..0;
        let mut take = |v: &Option<Spanned<usize>>, slot: &mut usize| {
            if let Some(v) = v {
                *slot = *v.get_ref();
                span = v.span();
            }
        };
        take(&l.max_connections, &mut server.max_connections);
        take(&l.max_header_bytes, &mut server.max_header_bytes);
        take(&l.max_headers, &mut server.max_headers);
        if let Some(v) = &l.max_concurrent_streams {
            server.h2_max_concurrent_streams = *v.get_ref();
        }
        for (value, slot) in [
            (&l.first_byte_timeout, &mut server.first_byte_timeout),
            (&l.header_read_timeout, &mut server.header_read_timeout),
            (&l.idle_timeout, &mut server.idle_timeout),
            (&l.handshake_timeout, &mut limits.handshake_timeout),
        ] {
            if let Some(v) = value {
                *slot = c.duration(v)?;
            }
        }
        // Point at the setting the server names, else at the last one given.
        server.validate().map_err(|e| {
            let named = match &e {
                mesh_server::ServerError::Config { field, .. } => match *field {
                    "max_connections" => l.max_connections.as_ref().map(Spanned::span),
                    "max_header_bytes" => l.max_header_bytes.as_ref().map(Spanned::span),
                    "max_headers" => l.max_headers.as_ref().map(Spanned::span),
                    "h2_max_concurrent_streams" => {
                        l.max_concurrent_streams.as_ref().map(Spanned::span)
                    }
                    "first_byte_timeout" => l.first_byte_timeout.as_ref().map(Spanned::span),
                    "header_read_timeout" => l.header_read_timeout.as_ref().map(Spanned::span),
                    "idle_timeout" => l.idle_timeout.as_ref().map(Spanned::span),
                    _ => None,
                },
                _ => None,
            };
            c.at(named.unwrap_or(span.clone()), format!("[limits] {e}"))
        })?;
        for (value, slot, name) in [
            (
                &l.max_request_body_bytes,
                &mut limits.max_request_body_bytes,
                "max_request_body_bytes",
            ),
            (
                &l.retry_buffer_bytes,
                &mut limits.retry_buffer_bytes,
                "retry_buffer_bytes",
            ),
        ] {
            if let Some(v) = value {
                if *v.get_ref() == 0 {
                    return Err(c.at(v.span(), format!("{name} must be at least 1")));
                }
                *slot = *v.get_ref();
            }
        }
        Ok(limits)
    }

    fn service(c: &Checker<'_>, s: &ServiceFile) -> Result<Service, ConfigError> {
        let name = parse_path(c, &s.name)?.to_string();
        let given = [
            s.endpoints.is_some(),
            s.file.is_some(),
            s.dns.is_some(),
            s.srv.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(c.at(
                s.name.span(),
                format!("service {name}: give exactly one of endpoints, file, dns, srv"),
            ));
        }
        let source = if let Some(eps) = &s.endpoints {
            let mut addrs = Vec::with_capacity(eps.len());
            for e in eps {
                addrs.push(e.get_ref().parse().map_err(|_| {
                    c.at(
                        e.span(),
                        format!("invalid endpoint {:?}: expected IP:port", e.get_ref()),
                    )
                })?);
            }
            Source::Static(addrs)
        } else if let Some(f) = &s.file {
            FileConfig::new(f.clone())
                .validate()
                .map_err(|e| c.at(s.name.span(), format!("service {name}: {e}")))?;
            Source::File(f.clone())
        } else if let Some(d) = &s.dns {
            DnsConfig::host(d.get_ref()).map_err(|e| c.at(d.span(), e))?;
            Source::Dns(d.get_ref().clone())
        } else if let Some(d) = &s.srv {
            DnsConfig::srv(d.get_ref()).map_err(|e| c.at(d.span(), e))?;
            Source::Srv(d.get_ref().clone())
        } else {
            return Err(c.at(s.name.span(), "no discovery source"));
        };
        let identity = match &s.identity {
            None => None,
            Some(id) => {
                #[cfg(feature = "tls")]
                mesh_tls::Identity::parse(id.get_ref()).map_err(|e| c.at(id.span(), e))?;
                Some(id.get_ref().clone())
            }
        };
        Ok(Service {
            name,
            source,
            identity,
        })
    }

    fn route(c: &Checker<'_>, r: &RouteFile) -> Result<Route, ConfigError> {
        let at_name =
            |e: &dyn fmt::Display| c.at(r.name.span(), format!("route {}: {e}", r.name.get_ref()));
        let mut b: RouteBuilder = Route::builder(r.name.get_ref().clone());
        if let Some(h) = &r.host {
            b = b.host(h.clone());
        }
        if let Some(h) = &r.host_suffix {
            b = b.host_suffix(h.clone());
        }
        if let Some(h) = &r.host_regex {
            b = b.host_regex(h.clone());
        }
        if let Some(p) = &r.path {
            b = b.path(p.clone());
        }
        if let Some(p) = &r.path_prefix {
            b = b.path_prefix(p.clone());
        }
        if let Some(p) = &r.path_regex {
            b = b.path_regex(p.clone());
        }
        if let Some(m) = &r.method {
            let method = http::Method::from_bytes(m.get_ref().as_bytes())
                .map_err(|_| c.at(m.span(), format!("invalid method {:?}", m.get_ref())))?;
            b = b.method(method);
        }
        for (k, v) in &r.headers {
            b = b.header(k.clone(), v.clone());
        }
        let given = [r.backend.is_some(), r.by_host.is_some(), r.split.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(at_name(&"give exactly one of backend, by_host, split"));
        }
        if let Some(n) = &r.backend {
            b = b.to(Backend::Name(parse_path(c, n)?));
        }
        if let Some(n) = &r.by_host {
            b = b.to(Backend::Host(parse_path(c, n)?));
        }
        for s in r.split.iter().flatten() {
            b = b.weighted(Backend::Name(parse_path(c, &s.backend)?), s.weight);
        }
        let mut policy = RoutePolicy::default();
        if let Some(t) = &r.timeout {
            policy.timeout = Some(c.duration(t)?);
        }
        if r.retries.is_some() || r.retry_budget.is_some() {
            let budget = match &r.retry_budget {
                None => None,
                Some(bf) => {
                    let mut o = BudgetOverride::default();
                    if let Some(t) = &bf.ttl {
                        o.ttl = c.duration(t)?;
                    }
                    if let Some(n) = bf.min_retries_per_sec {
                        o.min_retries_per_sec = n;
                    }
                    if let Some(p) = bf.percent_can_retry {
                        o.percent_can_retry = p;
                    }
                    Some(o)
                }
            };
            policy.retry = Some(RouteRetry {
                enabled: r.retries.unwrap_or(true),
                budget,
            });
        }
        if let Some(cl) = &r.classification {
            policy.classification = Some(match cl.get_ref().as_str() {
                "retryable-idempotent-5xx" => Classification::RetryableIdempotent5xx,
                "retryable-read-5xx" => Classification::RetryableRead5xx,
                "non-retryable-5xx" => Classification::NonRetryable5xx,
                "all-successful" => Classification::AllSuccessful,
                "grpc" => Classification::Grpc,
                other => {
                    return Err(c.at(
                        cl.span(),
                        format!("unknown classification {other:?}: expected retryable-idempotent-5xx, retryable-read-5xx, non-retryable-5xx, all-successful or grpc"),
                    ))
                }
            });
        }
        if let Some(h) = &r.hedge {
            let mut p = HedgePolicy::default();
            if let Some(x) = h.percentile {
                p.percentile = x;
            }
            if let Some(d) = &h.delay {
                p.delay = Some(c.duration(d)?);
            }
            if let Some(n) = h.max_hedges {
                p.max_hedges = n;
            }
            policy.hedge = Some(p);
        }
        if r.protocol.is_some() {
            policy.protocol = Some(c.protocol(&r.protocol)?);
        }
        policy.validate().map_err(|e| at_name(&e))?;
        b.policy(policy).build().map_err(|e| at_name(&e))
    }

    #[cfg(feature = "tls")]
    fn tls(c: &Checker<'_>, t: &TlsFile) -> Result<Tls, ConfigError> {
        use mesh_tls::server::Mode;
        let mode = match &t.mode {
            None => Mode::Strict,
            Some(m) => match m.get_ref().as_str() {
                "strict" => Mode::Strict,
                "permissive" => Mode::Permissive,
                other => {
                    return Err(c.at(
                        m.span(),
                        format!(
                            "unknown TLS mode {other:?}: expected \"strict\" or \"permissive\""
                        ),
                    ))
                }
            },
        };
        let authorize = match &t.authorize {
            None => None,
            Some(a) => {
                let mut policy = mesh_tls::authz::AuthzPolicy {
                    trust_domains: a.trust_domains.clone(),
                    allow_unauthenticated: a.allow_unauthenticated,
                    ..Default::default()
                };
                for id in &a.identities {
                    policy.identities.push(
                        mesh_tls::Identity::parse(id.get_ref()).map_err(|e| c.at(id.span(), e))?,
                    );
                }
                mesh_tls::authz::Authorize::layer(policy.clone())
                    .map_err(|e| c.at(0..0, format!("[tls.authorize] {e}")))?;
                Some(policy)
            }
        };
        Ok(Tls {
            paths: mesh_tls::CredentialPaths {
                chain: t.chain.clone(),
                key: t.key.clone(),
                trust_bundle: t.trust_bundle.clone(),
            },
            mode,
            authorize,
        })
    }

    /// The effective configuration as JSON, with secrets (the private key's location) replaced by
    /// `"<redacted>"`.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut file = self.file.clone();
        if let Some(tls) = &mut file.tls {
            tls.key = PathBuf::from("<redacted>");
        }
        let mut v = serde_json::to_value(&file).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("effective".into(), serde_json::json!({
                "outbound_listen": self.outbound_listen.to_string(),
                "outbound_dtab": self.outbound_dtab.to_string(),
                "inbound_listen": self.inbound.as_ref().map(|i| i.listen.to_string()),
                "inbound_dtab": self.inbound.as_ref().map(|i| i.dtab.to_string()),
                "admin_listen": self.admin_listen.to_string(),
                "drain_timeout_ms": self.drain_timeout.as_millis() as u64,
                "routes": self.routes.iter().map(|r| r.info().name.to_string()).collect::<Vec<_>>(),
            }));
        }
        v
    }

    /// The outbound route table (validated by [`Config::parse`]).
    pub fn route_table(&self) -> Result<RouteTable, BuildError> {
        Ok(RouteTable::new(self.routes.clone()).map_err(RoutedBuildError::from)?)
    }

    /// The TLS credentials, loaded from their files and watched for rotation, if `[tls]` is set.
    #[cfg(feature = "tls")]
    pub fn credentials(&self) -> Result<Option<mesh_tls::Credentials>, BuildError> {
        match &self.tls {
            None => Ok(None),
            Some(t) => Ok(Some(mesh_tls::Credentials::from_files(&t.paths)?)),
        }
    }

    /// Starts the discovery source of every service (inside a tokio runtime).
    pub fn discovery(&self) -> Result<Vec<(String, Discovery)>, BuildError> {
        self.services
            .iter()
            .map(|s| Ok((s.name.clone(), s.discovery()?)))
            .collect()
    }

    /// The routed outbound client: the routes and dtab over every service, each bound name's
    /// client built by `template` (a [`ClientTemplate`]) from that name's discovery.
    pub fn outbound<B>(&self, template: ClientTemplate) -> Result<RoutedClient<B>, BuildError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut builder = RoutedClientBuilder::new(self.route_table()?, self.outbound_dtab.clone());
        for (name, discovery) in self.discovery()? {
            builder = builder.service(&name, discovery);
        }
        if self.outbound_trust_overrides {
            builder = builder.override_trust(OverrideTrust::Always);
        }
        Ok(builder.client(move |d| template(d)).build()?)
    }

    /// The inbound router: every request to `/inbound`, delegated by the inbound dtab (by default
    /// to `/app`, the local application), with the services of the file also bound so a trusted
    /// override can send a request elsewhere. `None` without `[inbound] app`.
    pub fn inbound<B>(
        &self,
        template: ClientTemplate,
    ) -> Result<Option<RoutedClient<B>>, BuildError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Some(inbound) = &self.inbound else {
            return Ok(None);
        };
        let route = Route::builder("inbound")
            .to(Backend::Name(INBOUND_NAME.parse().map_err(|e| {
                RoutedBuildError::InvalidName {
                    name: INBOUND_NAME.into(),
                    source: e,
                }
            })?))
            .build()
            .map_err(RoutedBuildError::from)?;
        let table = RouteTable::new(vec![route]).map_err(RoutedBuildError::from)?;
        let app = Discovery::fixed([Endpoint::new(inbound.app)]).map_err(|source| {
            BuildError::Discovery {
                name: "/app".into(),
                source,
            }
        })?;
        // Leaf clients are named `inbound:/app`, ...: the outbound router may bind the same names
        // in the same metrics registry.
        let mut builder = RoutedClientBuilder::new(table, inbound.dtab.clone())
            .service("/app", app)
            .name_prefix("inbound:");
        for (name, discovery) in self.discovery()? {
            builder = builder.service(&name, discovery);
        }
        if inbound.trust_overrides {
            builder = builder.override_trust(verified_peers());
        }
        Ok(Some(builder.client(move |d| template(d)).build()?))
    }

    /// Connection limits of the listeners (`[limits]`), with the file's drain bound.
    pub fn server_limits(&self) -> mesh_server::ServerConfig {
        self.limits.server.clone()
    }

    /// The inbound server's layers: mTLS in the file's mode and authorization (feature `tls`),
    /// load reports when `[inbound] load_reports` is set, and the file's drain bound.
    pub fn server(&self) -> Result<ServerBuilder, BuildError> {
        #[allow(unused_mut)]
        let mut server = crate::server()
            .limits(self.server_limits())
            .access_log(self.access_log);
        if let Some(reports) = self.inbound.as_ref().and_then(|i| i.load_reports.clone()) {
            server = server.load_reports(reports);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let credentials = mesh_tls::Credentials::from_files(&tls.paths)?;
            let config = mesh_tls::server::AcceptorConfig {
                mode: tls.mode,
                handshake_timeout: self.limits.handshake_timeout,
            };
            server = server.tls(credentials, config);
            if let Some(policy) = &tls.authorize {
                server = server.authorize(policy.clone());
            }
        }
        Ok(server)
    }

    /// Whether routes, dtab and services are the same as `other`'s (so a reload can keep the
    /// running clients and only swap tables).
    pub fn same_services(&self, other: &Config) -> bool {
        self.services == other.services
    }

    /// Whether the clients [`Config::clients`] builds from `other` would be the same as this
    /// file's: then a reload swaps only the route table and the dtabs, and keeps the warm
    /// clients (pools, balancer estimates, breakers).
    pub fn same_clients(&self, other: &Config) -> bool {
        let app = |c: &Config| {
            c.inbound
                .as_ref()
                .map(|i| (i.app, i.app_protocol, i.trust_overrides))
        };
        self.same_services(other)
            && self.outbound_protocol == other.outbound_protocol
            && self.outbound_trust_overrides == other.outbound_trust_overrides
            && self.shed == other.shed
            && self.endpoint_concurrency == other.endpoint_concurrency
            && self.connect_timeout == other.connect_timeout
            && self.limits.retry_buffer_bytes == other.limits.retry_buffer_bytes
            && app(self) == app(other)
    }

    /// The client settings of every bound name, as a proxy uses them: every mesh feature at its
    /// default (metrics into `telemetry`, balancer, budgeted retries, deadlines, breaker), this
    /// file's limits, and mTLS with `credentials` to endpoints that discovery gives an identity.
    /// `succession` lets the clients of a reload take over the running clients' metric names.
    #[cfg(feature = "tls")]
    pub fn client_template(
        &self,
        telemetry: &mesh_core::metrics::Telemetry,
        credentials: Option<&mesh_tls::Credentials>,
        protocol: Protocol,
        succession: mesh_core::metrics::Succession,
    ) -> ClientTemplate {
        let (telemetry, credentials) = (telemetry.clone(), credentials.cloned());
        let (shed, cap, connect) = (self.shed, self.endpoint_concurrency, self.connect_timeout);
        let retry = mesh_core::retry::RetryConfig {
            buffer_limit: self.limits.retry_buffer_bytes,
            ..Default::default()
        };
        std::sync::Arc::new(move |discovery| {
            let mut b = crate::client(discovery)
                .protocol(protocol)
                .telemetry(telemetry.clone())
                .succession(succession)
                .retry(Some(retry))
                .shed(shed)
                .endpoint_concurrency(cap)
                .connect_timeout(connect);
            if let Some(credentials) = &credentials {
                b = b.tls_settings(crate::client::TlsSettings {
                    credentials: credentials.clone(),
                    require_identity: false,
                });
            }
            b
        })
    }

    /// The outbound and (with `[inbound] app`) inbound routed clients, each bound name's client
    /// made by [`Config::client_template`].
    #[cfg(feature = "tls")]
    #[allow(clippy::type_complexity)]
    pub fn clients<B>(
        &self,
        telemetry: &mesh_core::metrics::Telemetry,
        credentials: Option<&mesh_tls::Credentials>,
        succession: mesh_core::metrics::Succession,
    ) -> Result<(RoutedClient<B>, Option<RoutedClient<B>>), BuildError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let template =
            |protocol| self.client_template(telemetry, credentials, protocol, succession);
        let outbound = self.outbound(template(self.outbound_protocol))?;
        let protocol = self
            .inbound
            .as_ref()
            .map_or(Protocol::Auto, |i| i.app_protocol);
        let inbound = self.inbound(template(protocol))?;
        Ok((outbound, inbound))
    }
}

/// Makes each bound name's client builder from its discovery source.
pub type ClientTemplate = std::sync::Arc<dyn Fn(Discovery) -> crate::ClientBuilder + Send + Sync>;

/// Trust per-request overrides from callers that proved a mesh identity over mTLS.
fn verified_peers() -> OverrideTrust {
    #[cfg(feature = "tls")]
    {
        OverrideTrust::with_extension::<mesh_tls::PeerIdentity>()
    }
    #[cfg(not(feature = "tls"))]
    {
        OverrideTrust::Never
    }
}

fn parse_path(c: &Checker<'_>, v: &Spanned<String>) -> Result<mesh_core::dtab::Path, ConfigError> {
    v.get_ref()
        .parse()
        .map_err(|e| c.at(v.span(), format!("invalid name {:?}: {e}", v.get_ref())))
}

// === impl Service ===

impl Service {
    /// Starts this service's discovery source (inside a tokio runtime).
    pub fn discovery(&self) -> Result<Discovery, BuildError> {
        let err = |source| BuildError::Discovery {
            name: self.name.clone(),
            source,
        };
        match &self.source {
            Source::Static(addrs) => Discovery::fixed(addrs.iter().map(|a| {
                let e = Endpoint::new(*a);
                match &self.identity {
                    Some(id) => e.with_identity(id.clone()),
                    None => e,
                }
            }))
            .map_err(err),
            Source::File(path) => Discovery::file(FileConfig::new(path.clone())).map_err(err),
            Source::Dns(host) => {
                let mut config = DnsConfig::host(host).map_err(err)?;
                config.identity = self.identity.clone();
                Discovery::dns(config).map_err(err)
            }
            Source::Srv(name) => {
                let mut config = DnsConfig::srv(name).map_err(err)?;
                config.identity = self.identity.clone();
                Discovery::dns(config).map_err(err)
            }
        }
    }
}

pub mod inject;
#[cfg(all(feature = "admin", feature = "tls"))]
pub mod reload;
#[cfg(test)]
mod tests;
