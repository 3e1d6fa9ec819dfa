//! The server side: accept mTLS (and, in permissive mode, plaintext), expose the verified peer
//! identity, and serve HTTP/1.1 and HTTP/2 with hyper-util.
//!
//! [`TlsAcceptor::accept`] does the handshake on any tokio I/O and returns an [`Accepted`]
//! connection with its [`PeerIdentity`]; [`serve_connection`] serves one accepted connection with
//! hyper-util's auto (HTTP/1.1 + HTTP/2) builder, inserting the `PeerIdentity` into every
//! request's extensions; [`serve`] is the accept loop around both.
//!
//! # Modes
//! As Istio's `PeerAuthentication`:
//! - [`Mode::Strict`] (the default): TLS 1.3 only, and the client must present a certificate that
//!   chains to the trust bundle, may be used for clientAuth, is valid now and carries a SPIFFE ID.
//! - [`Mode::Permissive`]: the same for TLS connections, but plaintext is accepted on the same
//!   port, for migrating workloads into the mesh. The first bytes decide: a TLS record starts
//!   with `0x16 0x03` (handshake record, TLS major version 3), which no HTTP/1 method or the
//!   HTTP/2 preface does. Plaintext connections get `PeerIdentity(None)`; put an
//!   [authorization](crate::authz) layer in front of anything that needs a caller.
//!
//! The credentials are loaded at each accept from [`Credentials`], so rotations apply to the
//! next handshake and open connections carry on. Protocol detection and the handshake share one
//! timeout, 10 s by default ([`AcceptorConfig::handshake_timeout`]), so a silent client cannot hold
//! a task forever.
//!
//! # Example
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use hyper::body::Incoming;
//! use mesh_tls::server::{serve, AcceptorConfig, TlsAcceptor};
//! use mesh_tls::{CredentialPaths, Credentials, PeerIdentity};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let creds = Credentials::from_files(&CredentialPaths::new("cert.pem", "key.pem", "ca.pem"))?;
//! let acceptor = TlsAcceptor::new(creds, AcceptorConfig::default())?;
//! let app = tower::service_fn(|req: Request<Incoming>| async move {
//!     let peer = req.extensions().get::<PeerIdentity>().cloned().unwrap_or_default();
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("hello {peer}")))))
//! });
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:4143").await?;
//! serve(listener, acceptor, app, std::future::pending()).await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use crate::credentials::Credentials;
use crate::error::{BoxError, TlsError};
use crate::identity::{Identity, PeerIdentity};
use crate::ALPN_H2;

/// Whether plaintext is accepted next to mTLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// mTLS only (the production default, as Istio's STRICT).
    #[default]
    Strict,
    /// mTLS or plaintext on the same port, detected from the first bytes (Istio's PERMISSIVE).
    Permissive,
}

/// Configuration of a [`TlsAcceptor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptorConfig {
    /// Strict (mTLS only, default) or permissive.
    pub mode: Mode,
    /// Time allowed for protocol detection plus the handshake. Default 10 s.
    pub handshake_timeout: Duration,
}

/// Accepts inbound connections with the workload's current credentials. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TlsAcceptor {
    credentials: Credentials,
    config: AcceptorConfig,
}

/// An accepted connection and who is on the other end.
#[derive(Debug)]
pub struct Accepted<IO> {
    io: ServerIo<IO>,
    peer: PeerIdentity,
}

/// The I/O of an accepted connection: TLS, or plaintext in permissive mode.
#[derive(Debug)]
pub struct ServerIo<IO> {
    kind: Kind<IO>,
}

#[derive(Debug)]
enum Kind<IO> {
    Tls(Box<tokio_rustls::server::TlsStream<Rewind<IO>>>),
    Plain(Rewind<IO>),
}

/// Replays the bytes read for protocol detection before reading from `io` again.
#[derive(Debug)]
struct Rewind<IO> {
    prefix: Vec<u8>,
    pos: usize,
    io: IO,
}

// === impl AcceptorConfig ===

impl Default for AcceptorConfig {
    fn default() -> Self {
        AcceptorConfig {
            mode: Mode::Strict,
            handshake_timeout: crate::client::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl AcceptorConfig {
    /// The default configuration in strict mode (mTLS only; the same as `default()`, named so a
    /// reader sees the choice).
    pub fn strict() -> Self {
        AcceptorConfig {
            mode: Mode::Strict,
            ..AcceptorConfig::default()
        }
    }

    /// The default configuration in permissive mode.
    pub fn permissive() -> Self {
        AcceptorConfig {
            mode: Mode::Permissive,
            ..AcceptorConfig::default()
        }
    }

    /// Checks that the handshake timeout is between 1 ms and 5 min.
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.handshake_timeout < Duration::from_millis(1)
            || self.handshake_timeout > Duration::from_secs(300)
        {
            return Err(TlsError::InvalidConfig {
                field: "handshake_timeout",
                value: format!("{:?}", self.handshake_timeout),
                reason: "must be between 1ms and 5min",
            });
        }
        Ok(())
    }
}

// === impl TlsAcceptor ===

impl TlsAcceptor {
    /// An acceptor using `credentials` (their current version at each accept).
    pub fn new(credentials: Credentials, config: AcceptorConfig) -> Result<Self, TlsError> {
        config.validate()?;
        Ok(TlsAcceptor {
            credentials,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AcceptorConfig {
        &self.config
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Detects the protocol (permissive mode) and does the handshake.
    pub async fn accept<IO>(&self, io: IO) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let timeout = self.config.handshake_timeout;
        match tokio::time::timeout(timeout, self.accept_inner(io)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(TlsError::HandshakeTimeout { after: timeout }),
        }
    }

    async fn accept_inner<IO>(&self, mut io: IO) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let prefix = match self.config.mode {
            Mode::Strict => Vec::new(),
            Mode::Permissive => {
                let prefix = sniff(&mut io).await?;
                if !looks_like_tls(&prefix) {
                    return Ok(Accepted {
                        io: ServerIo {
                            kind: Kind::Plain(Rewind::new(io, prefix)),
                        },
                        peer: PeerIdentity(None),
                    });
                }
                prefix
            }
        };
        let config = self.credentials.current().server_config().clone();
        let stream = tokio_rustls::TlsAcceptor::from(config)
            .accept(Rewind::new(io, prefix))
            .await
            .map_err(|source| TlsError::ServerHandshake { source })?;
        // The verifier required a certificate; it must also name a workload.
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| TlsError::MissingIdentity {
                location: "client certificate".to_owned(),
            })?;
        let identity = Identity::from_certificate(leaf, "client certificate")?;
        Ok(Accepted {
            io: ServerIo {
                kind: Kind::Tls(Box::new(stream)),
            },
            peer: PeerIdentity(Some(identity)),
        })
    }
}

/// Reads until at least two bytes (enough to recognise a TLS record) or end of stream.
async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<Vec<u8>, TlsError> {
    let mut buf = vec![0u8; 512];
    let mut filled = 0;
    while filled < 2 {
        let n = io
            .read(&mut buf[filled..])
            .await
            .map_err(|source| TlsError::Detect { source })?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled == 0 {
        return Err(TlsError::Detect {
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before sending any data",
            ),
        });
    }
    buf.truncate(filled);
    Ok(buf)
}

/// A TLS handshake record: content type 22, then major version 3.
fn looks_like_tls(prefix: &[u8]) -> bool {
    matches!(prefix, [0x16, 0x03, ..])
}

// === impl Accepted ===

impl<IO> Accepted<IO> {
    /// Who the client is (`None` for plaintext in permissive mode).
    pub fn peer_identity(&self) -> &PeerIdentity {
        &self.peer
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.io.kind, Kind::Tls(_))
    }

    /// The protocol chosen by ALPN, if TLS and negotiated.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.io.kind {
            Kind::Tls(tls) => tls.get_ref().1.alpn_protocol(),
            Kind::Plain(_) => None,
        }
    }

    /// Whether ALPN chose HTTP/2.
    pub fn negotiated_h2(&self) -> bool {
        self.alpn_protocol() == Some(ALPN_H2)
    }

    /// The client's certificate chain, leaf first, if TLS.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.io.kind {
            Kind::Tls(tls) => tls.get_ref().1.peer_certificates(),
            Kind::Plain(_) => None,
        }
    }

    /// The I/O and the peer identity.
    pub fn into_parts(self) -> (ServerIo<IO>, PeerIdentity) {
        (self.io, self.peer)
    }
}

// === impl ServerIo ===

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            Kind::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Kind::Plain(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().kind {
            Kind::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Kind::Plain(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            Kind::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Kind::Plain(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            Kind::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Kind::Plain(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().kind {
            Kind::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Kind::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.kind {
            Kind::Tls(tls) => tls.is_write_vectored(),
            Kind::Plain(io) => io.is_write_vectored(),
        }
    }
}

// === impl Rewind ===

impl<IO> Rewind<IO> {
    fn new(io: IO, prefix: Vec<u8>) -> Self {
        Rewind { prefix, pos: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() && buf.remaining() > 0 {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// === serving ===

/// Inserts the connection's [`PeerIdentity`] into each request, then calls the tower service.
#[derive(Clone, Debug)]
struct WithPeerIdentity<S> {
    inner: S,
    peer: PeerIdentity,
}

impl<S> hyper::service::Service<Request<Incoming>> for WithPeerIdentity<S>
where
    S: Service<Request<Incoming>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, Request<Incoming>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        // An `Arc` clone: no allocation per request.
        req.extensions_mut().insert(self.peer.clone());
        self.inner.clone().oneshot(req)
    }
}

/// Serves HTTP/1.1 and HTTP/2 (chosen by ALPN or, for plaintext, by the HTTP/2 preface) on an
/// accepted connection, with hyper-util's default auto builder. Each request carries the
/// connection's [`PeerIdentity`] in its extensions. Returns when the connection ends.
pub async fn serve_connection<IO, S, B>(accepted: Accepted<IO>, service: S) -> Result<(), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    serve_connection_with(&builder, accepted, service).await
}

/// [`serve_connection`] with a caller-configured hyper-util builder (HTTP/2 window sizes,
/// keep-alive, header limits).
pub async fn serve_connection_with<IO, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    accepted: Accepted<IO>,
    service: S,
) -> Result<(), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (io, peer) = accepted.into_parts();
    let service = WithPeerIdentity {
        inner: service,
        peer,
    };
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
        .map_err(|source| TlsError::Serve { source })
}

/// The mutual-TLS (or, permissive, plaintext) handshake of meshwork's one accept loop: each
/// request served on the connection carries its [`PeerIdentity`].
impl mesh_server::Handshake for TlsAcceptor {
    type Io = ServerIo<tokio::net::TcpStream>;
    type Peer = PeerIdentity;
    type Error = TlsError;

    async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        _remote: std::net::SocketAddr,
    ) -> Result<(Self::Io, Option<PeerIdentity>), TlsError> {
        let (io, peer) = self.accept(tcp).await?.into_parts();
        Ok((io, Some(peer)))
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then drains them, through
/// meshwork's one accept loop ([`mesh_server::Server`]) with its default timers and limits:
/// handshake with `acceptor`, then HTTP/1.1 or HTTP/2 with a clone of `service`, each request
/// carrying the connection's [`PeerIdentity`]. Rejected handshakes and connection errors are
/// logged, never fatal. For other timers, call [`mesh_server::Server::serve`] with the acceptor.
pub async fn serve<S, B, F>(listener: TcpListener, acceptor: TlsAcceptor, service: S, shutdown: F)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()>,
{
    match mesh_server::Server::new(mesh_server::ServerConfig::default()) {
        Ok(server) => server.serve(listener, acceptor, service, shutdown).await,
        Err(error) => tracing::error!(%error, "cannot serve"),
    }
}
