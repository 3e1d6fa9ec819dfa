//! Mutual TLS between meshwork peers: SPIFFE workload identities, verified both ways,
//! authorization by identity, credential rotation without dropping connections, and a dev CA.
//!
//! | Module | What |
//! |---|---|
//! | [`identity`] | [`Identity`]: a validated SPIFFE ID; [`PeerIdentity`]: who is on the other end |
//! | [`credentials`] | [`Credentials`]: chain, key and trust bundle from PEM files, validated, watched and rotated |
//! | [`client`] | [`TlsConnector`](client::TlsConnector) and [`MeshConnector`](client::MeshConnector) (a hyper-util connector, per endpoint) that check the server's identity |
//! | [`server`] | [`TlsAcceptor`](server::TlsAcceptor) (strict or permissive), [`serve_connection`](server::serve_connection) |
//! | [`authz`] | [`Authorize`](authz::Authorize): a tower layer allowing identities; denial is 403 |
//! | [`dev_ca`] | [`DevCa`](dev_ca::DevCa): issues workload certificates for tests and demos |
//!
//! # Design
//! A workload is named by a SPIFFE ID in the URI SAN of its certificate (docs/design.md, "Security").
//! Both sides authenticate with TLS 1.3 only: the server requires a client certificate chaining to
//! its trust bundle, and the client requires the server's certificate to chain to the bundle *and*
//! to carry the identity discovery gave for that endpoint, so a compromised workload of the same
//! mesh cannot impersonate another. Which caller may do what is then decided by an ordinary tower
//! layer ([`authz`]) on the [`PeerIdentity`] the server puts in each request.
//!
//! Credentials are files, as SPIRE's agent, cert-manager's CSI driver and Kubernetes secrets
//! deliver them. A watcher reloads them; the current set lives behind an `ArcSwap`, loaded once per
//! handshake, so rotation never drops a connection and the request path takes no lock.
//!
//! # Why the `ring` crypto provider
//! rustls needs a crypto provider. This crate uses *ring*, never a process-wide default:
//! - *ring* builds with only a C compiler, while aws-lc-rs needs CMake (and NASM on some
//!   Windows/x86 hosts) to build; the project's test command must work on a fresh machine with
//!   nothing but Rust and a C toolchain.
//! - *ring* has everything a mesh needs: TLS 1.3 suites (AES-GCM, ChaCha20-Poly1305), X25519 and
//!   P-256 key exchange, ECDSA/Ed25519/RSA signatures.
//! - Relying on `CryptoProvider::install_default` would make behaviour depend on what else in the
//!   process installed one first (and panics if two providers are compiled in and none is
//!   chosen). Every config here is built with
//!   `builder_with_provider(`[`crypto_provider()`]`).with_protocol_versions(&[&TLS13])`.
//!
//! # Wiring (what the facade does)
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::{Empty, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use mesh_tls::authz::{Authorize, AuthzPolicy};
//! use mesh_tls::client::{MeshConnector, TlsConnector};
//! use mesh_tls::server::{serve, AcceptorConfig, TlsAcceptor};
//! use mesh_tls::{CredentialPaths, Credentials, Identity, WatchConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let paths = CredentialPaths::new("/var/run/mesh/cert.pem", "/var/run/mesh/key.pem", "/var/run/mesh/ca.pem");
//! let creds = Credentials::from_files(&paths)?;
//! let _watcher = creds.watch(paths, WatchConfig::default())?; // keep it alive
//!
//! // (a) Client: one connector per endpoint, with the identity discovery expects there. The
//! //     request keeps its logical authority; the connection goes to the endpoint.
//! let expected = Identity::parse("spiffe://example.org/ns/shop/sa/cart")?;
//! let endpoint: std::net::SocketAddr = "10.0.0.7:4143".parse()?;
//! let connector = MeshConnector::endpoint(endpoint, TlsConnector::new(&creds, expected)?);
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
//! let _rsp = client.get("http://cart.shop.svc/items".parse()?).await?;
//! // (`MeshConnector::http(tls)` dials the URI's host instead.)
//!
//! // (b) Server: mTLS, peer identity in each request, authorization in front of the app.
//! let policy = AuthzPolicy::default().allow_trust_domain("example.org")?;
//! let app = tower::ServiceBuilder::new()
//!     .layer(Authorize::layer(policy)?)
//!     .service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!         Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
//!     });
//! let acceptor = TlsAcceptor::new(creds.clone(), AcceptorConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:4143").await?;
//! serve(listener, acceptor, app, std::future::pending()).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub mod authz;
pub mod client;
pub mod credentials;
pub mod dev_ca;
mod error;
pub mod identity;
pub mod server;
mod verify;

pub use credentials::{CredentialPaths, CredentialWatcher, Credentials, WatchConfig};
pub use error::{BoxError, TlsError};
pub use identity::{Identity, PeerIdentity};

/// The ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider every config of this crate is built with: *ring*'s default provider (see
/// the crate docs for why). Built once per process and shared.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
