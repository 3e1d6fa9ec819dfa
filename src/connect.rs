//! The connector behind each endpoint's connection pool.
//!
//! DESIGN.md gives every endpoint its own `tower::Service` and its own connection pool, so that the
//! per-endpoint state (EWMA, breaker, identity, metrics) sits on a per-endpoint service rather than on
//! a shared pool keyed by a rewritten URI. The request keeps its logical `Host`/`:authority`; only the
//! TCP connection goes to the endpoint. [`EndpointConnector`] is what makes that possible with
//! hyper-util's pooled client: whatever URI the pool asks it to connect to, it dials the one socket
//! address it was built for.
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

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The default time allowed for a TCP connect to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A hyper-util connector that always dials one endpoint's address, whatever the request's URI.
#[derive(Clone, Debug)]
pub struct EndpointConnector {
    addr: SocketAddr,
    connect_timeout: Duration,
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
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
}

// === impl EndpointConnector ===

impl EndpointConnector {
    /// A connector for `addr` with the default connect timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The address this connector dials.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Dials the endpoint: TCP connect with the timeout, then `TCP_NODELAY`.
    pub async fn connect(&self) -> Result<TcpStream, ConnectError> {
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
        Ok(stream)
    }
}

impl tower::Service<http::Uri> for EndpointConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}
