//! The connector behind each endpoint's connection pool.
//!
//! DESIGN.md gives every endpoint its own `tower::Service` and its own connection pool, so that the
//! per-endpoint state (EWMA, breaker, identity, metrics) sits on a per-endpoint service rather than on
//! a shared pool keyed by a rewritten URI. The request keeps its logical `Host`/`:authority`; only the
//! TCP connection goes to the endpoint. [`EndpointConnector`] is what makes that possible with
//! hyper-util's pooled client: whatever URI the pool asks it to connect to, it dials the one socket
//! address it was built for — in plaintext, or (feature `tls`) with mutual TLS that requires the
//! server to present the identity discovery expects at that endpoint.
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

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    #[error("connect to {addr} failed: {source}")]
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
    #[error("TLS to {addr} failed: {source}")]
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
