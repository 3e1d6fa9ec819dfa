//! The connector behind each endpoint's connection pool.
//!
//! docs/design.md gives every endpoint its own `tower::Service` and its own connection pool, so that the
//! per-endpoint state (EWMA, breaker, identity, metrics) sits on a per-endpoint service rather than on
//! a shared pool keyed by a rewritten URI. The request keeps its logical `Host`/`:authority`; only the
//! TCP connection goes to the endpoint. [`EndpointConnector`] is what makes that possible with
//! hyper-util's pooled client: whatever URI the pool asks it to connect to, it dials the one socket
//! address it was built for — in plaintext, or (feature `tls`) with mutual TLS that requires the
//! server to present the identity discovery expects at that endpoint.
//!
//! [`EndpointClient`] is the endpoint's HTTP client on top: HTTP/1.1 connections of its own
//! ([`crate::pool`]: a stack of idle connections, each request driving the one it borrows) and
//! hyper-util's client for HTTP/2, over the same connector; each request goes over the protocol
//! its [`Protocol`] picks (by default its own version), so one client serves HTTP/1 callers and
//! gRPC alike. HTTP/2 is spoken with prior knowledge in plaintext and negotiated by ALPN over TLS
//! (each side offers only its own protocol).
//!
//! Connections get `TCP_NODELAY` (requests and responses are small writes that must not wait for
//! Nagle's algorithm) and a connect timeout (default 1 s, as Linkerd 2's outbound connect timeout).
//!
//! ```no_run
//! use meshwork::connect::EndpointConnector;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//!
//! let connector = EndpointConnector::new("127.0.0.1:8080".parse().unwrap());
//! let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
//!     Client::builder(TokioExecutor::new()).build(connector);
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use mesh_core::route::{Protocol, RouteTarget};
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::pool::Http1Pool;

/// The default time allowed for a TCP connect to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A hyper-util connector that always dials one endpoint's address, whatever the request's URI.
#[derive(Clone, Debug)]
pub struct EndpointConnector {
    addr: SocketAddr,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<mesh_tls::client::TlsConnector>,
    #[cfg(feature = "tls")]
    tls_failures: Option<std::sync::Arc<TlsFailures>>,
}

/// Outbound TLS handshake failures by reason, counted by [`EndpointConnector`] and exported as
/// `meshwork_tls_handshake_failures{direction="outbound",reason}`. Clones of a connector share it.
#[cfg(feature = "tls")]
#[derive(Debug, Default)]
pub struct TlsFailures {
    counts: [std::sync::atomic::AtomicU64; TlsFailures::REASONS.len()],
}

#[cfg(feature = "tls")]
impl TlsFailures {
    /// The `reason` label values, in the order of [`TlsFailures::count`]'s index.
    pub const REASONS: [&'static str; 4] = ["identity_mismatch", "timeout", "handshake", "other"];

    fn record(&self, error: &mesh_tls::TlsError) {
        let index = match error {
            mesh_tls::TlsError::IdentityMismatch { .. } => 0,
            mesh_tls::TlsError::HandshakeTimeout { .. } => 1,
            mesh_tls::TlsError::ClientHandshake { .. } => 2,
            _ => 3,
        };
        self.counts[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Failures counted for `REASONS[index]` (0 for an index out of range).
    pub fn count(&self, index: usize) -> u64 {
        self.counts
            .get(index)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The connection [`EndpointConnector`] makes: plain TCP, or mutual TLS over TCP.
#[derive(Debug)]
pub enum EndpointIo {
    /// A plaintext TCP connection.
    Plain(TokioIo<TcpStream>),
    /// A mutual TLS connection whose server presented the expected identity.
    #[cfg(feature = "tls")]
    Tls(Box<mesh_tls::client::MeshTlsStream<TcpStream>>),
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connect failed.
    #[error("connect to {addr} failed")]
    Io {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The TCP connect took longer than the connect timeout.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The connect timeout that passed.
        timeout: Duration,
    },
    /// The TLS handshake failed, or the server's identity was not the expected one.
    #[cfg(feature = "tls")]
    #[error("TLS to {addr} failed")]
    Tls {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What the TLS layer reported.
        #[source]
        source: mesh_tls::TlsError,
    },
}

// === impl EndpointConnector ===

impl EndpointConnector {
    /// A plaintext connector for `addr` with the default connect timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_failures: None,
        }
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Speaks mutual TLS over each connection: the server must present the identity `tls` expects.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: mesh_tls::client::TlsConnector) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Counts failed handshakes into `failures`.
    #[cfg(feature = "tls")]
    pub fn with_tls_failures(mut self, failures: std::sync::Arc<TlsFailures>) -> Self {
        self.tls_failures = Some(failures);
        self
    }

    /// With TLS, offers only `protocol` in ALPN (`h2` or `http/1.1`); `Auto` offers both.
    /// Without TLS, unchanged.
    pub fn alpn(self, protocol: Protocol) -> Self {
        #[cfg(feature = "tls")]
        {
            let mut this = self;
            let alpn: &[&[u8]] = match protocol {
                Protocol::Auto => return this,
                Protocol::Http1 => &[mesh_tls::ALPN_HTTP11],
                Protocol::Http2 => &[mesh_tls::ALPN_H2],
            };
            this.tls = this.tls.map(|tls| tls.with_alpn(alpn));
            this
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = protocol;
            self
        }
    }

    /// The address this connector dials.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Dials the endpoint: TCP connect with the timeout and `TCP_NODELAY`, then the TLS handshake
    /// if the connector has TLS.
    pub async fn connect(&self) -> Result<EndpointIo, ConnectError> {
        let addr = self.addr;
        let timeout = self.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        };
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::Io { addr, source })?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = match tls.connect(stream).await {
                Ok(stream) => stream,
                Err(source) => {
                    if let Some(failures) = &self.tls_failures {
                        failures.record(&source);
                    }
                    return Err(ConnectError::Tls { addr, source });
                }
            };
            return Ok(EndpointIo::Tls(Box::new(stream)));
        }
        Ok(EndpointIo::Plain(TokioIo::new(stream)))
    }
}

impl tower::Service<http::Uri> for EndpointConnector {
    type Response = EndpointIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await })
    }
}

/// An endpoint's HTTP client: its HTTP/1.1 connections ([`crate::pool`]) and an HTTP/2 client
/// (hyper-util's, one multiplexed connection) to the one address, each request sent over the
/// protocol chosen for it. Cheap to clone (clones share the connections).
///
/// The choice, most specific first: a [`Protocol`] request extension, the route's
/// [`RoutePolicy::protocol`](mesh_core::route::RoutePolicy::protocol) (from the
/// [`RouteTarget`] extension), the endpoint's default (its `protocol` discovery label, else the
/// client's), and with [`Protocol::Auto`] the request's version.
#[derive(Clone, Debug)]
pub struct EndpointClient {
    h1: Http1Pool,
    h2: legacy::Client<EndpointConnector, Body>,
    default: Protocol,
}

/// The [`ErrorInspector`](mesh_core::classify::ErrorInspector) of meshwork's clients: any
/// failure to connect to an endpoint ([`ConnectError`]: refused, timed out, TLS handshake), or
/// hyper-util's connect errors, is [`ErrorKind::Connect`](mesh_core::classify::ErrorKind) — the
/// request never reached the endpoint, so it is safe to retry whatever its method; anything else
/// is as [`default_error_kind`](mesh_core::classify::default_error_kind) says.
pub fn endpoint_error_kind(
    error: &(dyn std::error::Error + 'static),
) -> mesh_core::classify::ErrorKind {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<ConnectError>()
            || e.downcast_ref::<legacy::Error>()
                .is_some_and(legacy::Error::is_connect)
        {
            return mesh_core::classify::ErrorKind::Connect;
        }
        next = e.source();
    }
    mesh_core::classify::default_error_kind(error)
}

// === impl EndpointClient ===

impl EndpointClient {
    /// The endpoint's HTTP/1.1 connections, closed after `idle_timeout` idle (`None`: never),
    /// and its HTTP/2 client from `builder` (with `http2_only`), both dialing with `connector`.
    pub fn new(
        builder: &legacy::Builder,
        connector: EndpointConnector,
        default: Protocol,
        idle_timeout: Option<Duration>,
    ) -> Self {
        let h1 = Http1Pool::new(connector.clone().alpn(Protocol::Http1), idle_timeout);
        let mut h2 = builder.clone();
        h2.http2_only(true).pool_idle_timeout(idle_timeout);
        let h2 = h2.build(connector.alpn(Protocol::Http2));
        EndpointClient { h1, h2, default }
    }

    /// The protocol `req` is sent with.
    pub fn protocol_for<B>(&self, req: &http::Request<B>) -> Protocol {
        let extensions = req.extensions();
        let chosen = extensions
            .get::<Protocol>()
            .copied()
            .or_else(|| {
                extensions
                    .get::<RouteTarget>()
                    .and_then(|target| target.policy().protocol)
            })
            .unwrap_or(self.default);
        match chosen {
            Protocol::Auto if req.version() == http::Version::HTTP_2 => Protocol::Http2,
            Protocol::Auto => Protocol::Http1,
            other => other,
        }
    }
}

impl tower::Service<http::Request<Body>> for EndpointClient {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.send(req)
    }
}

impl EndpointClient {
    /// Sends `req` over the endpoint's pool for its protocol: [`tower::Service::call`] through a
    /// shared reference (the pools are shared inside already).
    pub(crate) fn send(
        &self,
        mut req: http::Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>> {
        if self.protocol_for(&req) == Protocol::Http2 {
            *req.version_mut() = http::Version::HTTP_2;
            let rsp = self.h2.request(req);
            Box::pin(async move {
                let rsp = rsp.await?;
                Ok(rsp.map(crate::body::boxed))
            })
        } else {
            Box::pin(self.h1.send(req))
        }
    }
}

// === impl EndpointIo ===

impl EndpointIo {
    /// The identity the server proved, for a TLS connection.
    #[cfg(feature = "tls")]
    pub fn peer_identity(&self) -> Option<&mesh_tls::Identity> {
        match self {
            EndpointIo::Plain(_) => None,
            EndpointIo::Tls(stream) => Some(stream.peer_identity()),
        }
    }
}

impl Connection for EndpointIo {
    fn connected(&self) -> Connected {
        match self {
            EndpointIo::Plain(io) => io.connected(),
            #[cfg(feature = "tls")]
            EndpointIo::Tls(io) => io.connected(),
        }
    }
}

/// Forwards a `hyper::rt` method to whichever connection this is (all of them are `Unpin`).
macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            EndpointIo::Plain($io) => $call,
            #[cfg(feature = "tls")]
            EndpointIo::Tls($io) => $call,
        }
    };
}

impl hyper::rt::Read for EndpointIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl hyper::rt::Write for EndpointIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            EndpointIo::Plain(io) => io.is_write_vectored(),
            #[cfg(feature = "tls")]
            EndpointIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::classify::ErrorKind;

    #[test]
    fn a_connect_timeout_is_a_connect_error() {
        let timeout = ConnectError::Timeout {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            timeout: Duration::from_millis(100),
        };
        assert_eq!(endpoint_error_kind(&timeout), ErrorKind::Connect);
        let boxed: crate::body::BoxError = Box::new(timeout);
        assert_eq!(endpoint_error_kind(&*boxed), ErrorKind::Connect);
        let other = std::io::Error::other("reset after the request was sent");
        assert_eq!(endpoint_error_kind(&other), ErrorKind::Other);
    }
}
