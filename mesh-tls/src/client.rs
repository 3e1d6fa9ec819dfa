//! The client side: dial TLS 1.3 with the workload's certificate and check that the server is the
//! workload discovery said it would be.
//!
//! [`TlsConnector`] holds the expected identity of one endpoint; [`TlsConnector::connect`] turns any
//! tokio I/O into a [`MeshTlsStream`] (usable without hyper), and [`MeshConnector`] wraps an inner
//! connector as a `tower::Service<http::Uri>`, so it plugs into hyper-util's legacy `Client`. The
//! inner connector is hyper-util's `HttpConnector` ([`MeshConnector::http`], dials the URI's host)
//! or an [`EndpointConnector`] ([`MeshConnector::endpoint`], dials one endpoint address whatever
//! the URI's authority, as a per-endpoint service needs).
//!
//! # Why one connector per endpoint
//! The server's certificate is checked against the identity of the *endpoint* (docs/design.md: each
//! endpoint is its own service with its own pool, breaker and identity), not against the name in
//! the URI: SPIFFE certificates carry no DNS name, and the logical authority of a request says
//! nothing about which workload should answer. So the expected identity lives in the connector,
//! and the URI only says where to dial. The URI's scheme is ignored: the connection is always TLS.
//!
//! # What is checked
//! - TLS 1.3 only, with the `ring` provider (see the crate docs);
//! - the server's chain leads to the trust bundle of the current [`Credentials`] (webpki, with
//!   the serverAuth extended key usage and the validity period);
//! - the leaf's SPIFFE ID equals the expected identity, else the handshake fails with
//!   [`TlsError::IdentityMismatch`], which names both;
//! - the client presents its current certificate (rotations apply to the next handshake).
//!
//! ALPN offers `h2` then `http/1.1`; when the server picks `h2`, the connection reports
//! `negotiated_h2()` to hyper-util so the pool speaks HTTP/2 on it. The verified server identity
//! is attached to the connection as a [`PeerIdentity`] "extra", which hyper-util copies into every
//! response's extensions.
//!
//! TLS session resumption is off: a resumed session would skip the certificate check, so a
//! rotated trust bundle would not apply to it. Pooled connections are long-lived, so the cost of
//! a full handshake per connection is small (see `benches/tls.rs`). SNI is not sent (there is no
//! DNS name to send). The handshake times out after 10 s by default (the order of Linkerd's
//! protocol-detection timeout), configurable with [`TlsConnector::with_handshake_timeout`].
//!
//! # Example
//! ```no_run
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use http_body_util::Empty;
//! use bytes::Bytes;
//! use mesh_tls::client::{MeshConnector, TlsConnector};
//! use mesh_tls::{CredentialPaths, Credentials, Identity};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let creds = Credentials::from_files(&CredentialPaths::new("cert.pem", "key.pem", "ca.pem"))?;
//! let server = Identity::parse("spiffe://example.org/ns/shop/sa/cart")?;
//! let connector = MeshConnector::http(TlsConnector::new(&creds, server)?);
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
//! let rsp = client.get("http://10.0.0.7:8080/items".parse()?).await?;
//! # drop(rsp); Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::Service;

use crate::credentials::Credentials;
use crate::error::{BoxError, TlsError};
use crate::identity::{Identity, PeerIdentity};
use crate::verify::{take_verifier_error, CurrentClientCert, SpiffeServerVerifier};
use crate::{ALPN_H2, ALPN_HTTP11};

/// Default time allowed for a TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials TLS to one endpoint that must prove `expected` identity. Cheap to clone.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    expected: Identity,
    server_name: ServerName<'static>,
    handshake_timeout: Duration,
}

/// A TLS connection whose server proved the expected identity.
///
/// Implements tokio's `AsyncRead`/`AsyncWrite`, hyper's `rt::Read`/`rt::Write`, and hyper-util's
/// `Connection` (when the inner I/O does).
pub struct MeshTlsStream<IO> {
    io: TokioIo<tokio_rustls::client::TlsStream<IO>>,
    peer: Identity,
}

/// A `tower::Service<Uri>` connector for hyper-util's legacy `Client`: opens a connection with
/// the inner connector, then does the mTLS handshake of [`TlsConnector`].
#[derive(Clone, Debug)]
pub struct MeshConnector<C> {
    inner: C,
    tls: TlsConnector,
}

/// A transport connector that dials one fixed address whatever the URI says: docs/design.md keeps the
/// logical `Host`/`:authority` on the request and sends the connection to the endpoint chosen by
/// the balancer. TCP_NODELAY is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConnector {
    addr: SocketAddr,
}

/// Opens a TLS connection over `io` with `credentials`, requiring the server to be `expected`.
/// Builds a [`TlsConnector`] per call; keep a connector to dial the same endpoint repeatedly.
pub async fn connect<IO>(
    credentials: &Credentials,
    io: IO,
    expected: &Identity,
) -> Result<MeshTlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    TlsConnector::new(credentials, expected.clone())?
        .connect(io)
        .await
}

// === impl TlsConnector ===

impl TlsConnector {
    /// A connector presenting `credentials` (their current certificate at each handshake) and
    /// requiring the server to be `expected`.
    pub fn new(credentials: &Credentials, expected: Identity) -> Result<Self, TlsError> {
        let verifier = Arc::new(SpiffeServerVerifier {
            expected: expected.clone(),
            credentials: credentials.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(credentials.provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config {
                what: "client config",
                source: Box::new(e),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentClientCert(credentials.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        config.resumption = Resumption::disabled();
        config.enable_sni = false;
        // Not sent (SNI is off) and not checked (the verifier checks the SPIFFE ID); rustls needs
        // a name for its APIs.
        let server_name =
            ServerName::try_from("meshwork.invalid").map_err(|e| TlsError::Config {
                what: "client server name",
                source: Box::new(e),
            })?;
        Ok(TlsConnector {
            config: Arc::new(config),
            expected,
            server_name,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// Sets the handshake timeout (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Offers only `protocols` in ALPN (default: `h2`, then `http/1.1`), e.g. `[ALPN_HTTP11]` for
    /// a connection that must carry HTTP/1.1.
    pub fn with_alpn(mut self, protocols: &[&[u8]]) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        self.config = Arc::new(config);
        self
    }

    /// The identity the server must prove.
    pub fn expected_identity(&self) -> &Identity {
        &self.expected
    }

    /// Does the handshake over `io`.
    pub async fn connect<IO>(&self, io: IO) -> Result<MeshTlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let handshake = connector.connect(self.server_name.clone(), io);
        let stream = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Err(_elapsed) => {
                return Err(TlsError::HandshakeTimeout {
                    after: self.handshake_timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(
                    take_verifier_error(&e).unwrap_or_else(|| TlsError::ClientHandshake {
                        expected: self.expected.clone(),
                        source: e,
                    }),
                )
            }
            Ok(Ok(stream)) => stream,
        };
        // The verifier accepted the server only if its identity equals `expected`.
        Ok(MeshTlsStream {
            io: TokioIo::new(stream),
            peer: self.expected.clone(),
        })
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("expected", &self.expected)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

// === impl MeshTlsStream ===

impl<IO> MeshTlsStream<IO> {
    /// The server's verified identity.
    pub fn peer_identity(&self) -> &Identity {
        &self.peer
    }

    /// The protocol chosen by ALPN (`b"h2"` or `b"http/1.1"`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.io.inner().get_ref().1.alpn_protocol()
    }

    /// Whether ALPN chose HTTP/2.
    pub fn negotiated_h2(&self) -> bool {
        self.alpn_protocol() == Some(ALPN_H2)
    }

    /// The server's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.io.inner().get_ref().1.peer_certificates()
    }

    /// The underlying I/O.
    pub fn get_ref(&self) -> &IO {
        self.io.inner().get_ref().0
    }

    /// The rustls connection state.
    pub fn tls_connection(&self) -> &rustls::ClientConnection {
        self.io.inner().get_ref().1
    }
}

impl<IO> fmt::Debug for MeshTlsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTlsStream")
            .field("peer", &self.peer)
            .field("alpn", &self.alpn_protocol().map(String::from_utf8_lossy))
            .finish_non_exhaustive()
    }
}

impl<IO> Connection for MeshTlsStream<IO>
where
    IO: Connection + AsyncRead + AsyncWrite + Unpin,
{
    fn connected(&self) -> Connected {
        let connected = self
            .get_ref()
            .connected()
            .extra(PeerIdentity(Some(self.peer.clone())));
        if self.negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MeshTlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MeshTlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.inner().is_write_vectored()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> hyper::rt::Read for MeshTlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> hyper::rt::Write for MeshTlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write(Pin::new(&mut self.get_mut().io), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_flush(Pin::new(&mut self.get_mut().io), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_shutdown(Pin::new(&mut self.get_mut().io), cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write_vectored(Pin::new(&mut self.get_mut().io), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }
}

// === impl EndpointConnector ===

impl EndpointConnector {
    /// A connector to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        EndpointConnector { addr }
    }

    /// The address dialled.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Service<Uri> for EndpointConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }
}

// === impl MeshConnector ===

impl MeshConnector<EndpointConnector> {
    /// Dials the endpoint at `addr` for every URI (the request keeps its logical authority), with
    /// mTLS expecting the identity of `tls`. This is the connector of a per-endpoint service.
    pub fn endpoint(addr: SocketAddr, tls: TlsConnector) -> Self {
        MeshConnector::new(EndpointConnector::new(addr), tls)
    }
}

impl MeshConnector<HttpConnector> {
    /// Wraps a fresh `HttpConnector` (TCP_NODELAY on, and `enforce_http(false)` so `https://`
    /// URIs are accepted too).
    pub fn http(tls: TlsConnector) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        MeshConnector::new(http, tls)
    }
}

impl<C> MeshConnector<C> {
    /// Wraps `inner`, which opens the transport connection for a URI.
    pub fn new(inner: C, tls: TlsConnector) -> Self {
        MeshConnector { inner, tls }
    }

    /// The TLS side of this connector.
    pub fn tls(&self) -> &TlsConnector {
        &self.tls
    }
}

impl<C> Service<Uri> for MeshConnector<C>
where
    C: Service<Uri>,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = MeshTlsStream<TokioIo<C::Response>>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TlsError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| TlsError::Connector { source: e.into() })
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let io = connecting.await.map_err(|e| TlsError::Connect {
                uri,
                source: e.into(),
            })?;
            tls.connect(TokioIo::new(io)).await
        })
    }
}
