//! meshwork: a service mesh you link into your program.
//!
//! meshwork is a stack of `tower` middleware that gives a hyper (or tonic) client and server what
//! Linkerd and Istio give a cluster: service discovery with advisory semantics, latency-aware load
//! balancing, and — as the other crates of the workspace land — retries under a budget, deadlines,
//! circuit breaking, mutual TLS, routing, metrics and traces. This crate is the facade: it re-exports
//! the parts and assembles them into a client.
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`discovery`] | `mesh-discovery` | endpoint sources: static, file, DNS A/AAAA and SRV |
//! | [`balance`] | `mesh-balance` | power of two choices over peak-EWMA cost |
//! | [`core`] | `mesh-core` | the request path layers |
//! | [`tls`] | `mesh-tls` | mutual TLS (feature `tls`, on by default) |
//! | [`config`] | — | one TOML file for a proxy or an embedding program (feature `config`, on by default) |
//! | [`admin`] | — | the admin server: metrics, readiness, stat, graph, delegator, config (feature `admin`, on by default) |
//!
//! # A balanced hyper client
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use meshwork::discovery::{Discovery, DnsConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Endpoints from DNS (A/AAAA records of `world.internal`, port 8080), re-resolved at the TTL.
//! let discovery = Discovery::dns(DnsConfig::host("world.internal:8080")?)?;
//! let client = meshwork::client(discovery).build::<Empty<Bytes>>()?;
//! let rsp = client
//!     .request(http::Request::get("http://world.internal/").body(Empty::new())?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Mutual TLS with credentials from files
//!
//! A workload's certificate chain, private key and trust bundle are PEM files (as SPIRE's agent
//! or cert-manager's CSI driver write them). Load them once, keep a watcher that installs
//! rotated files for new handshakes (open connections continue), and give the same
//! [`tls::Credentials`] to the client and the server. Endpoints get their expected SPIFFE
//! identity from discovery.
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use meshwork::discovery::{Discovery, Endpoint};
//! use meshwork::tls::server::AcceptorConfig;
//! use meshwork::tls::{CredentialPaths, Credentials, WatchConfig};
//!
//! let paths = CredentialPaths::new(
//!     "/var/run/secrets/workload/cert.pem",
//!     "/var/run/secrets/workload/key.pem",
//!     "/var/run/secrets/workload/bundle.pem",
//! );
//! let credentials = Credentials::from_files(&paths)?;
//! // Keep the watcher: dropping it stops the reloads (the compiler warns if it is dropped).
//! let _watcher = credentials.watch(paths, WatchConfig::default())?;
//!
//! // Outbound: each endpoint must prove the identity discovery gives it.
//! let discovery = Discovery::fixed([Endpoint::new("10.0.0.7:8443".parse()?)
//!     .with_identity("spiffe://cluster.local/ns/shop/sa/world")])?;
//! let client = meshwork::client(discovery)
//!     .authority("world.shop")
//!     .tls(credentials.clone())
//!     .build::<Empty<Bytes>>()?;
//!
//! // Inbound: mTLS only (strict); the verified caller is a request extension.
//! let server = meshwork::server().tls(credentials, AcceptorConfig::strict());
//! # drop((client, server)); Ok(()) }
//! ```
//!
//! # Errors
//!
//! Every error type's message describes its own layer, and its cause is [`std::error::Error::source`]
//! — the message does not repeat it. Print the whole chain (for example with `anyhow`'s `{:#}`)
//! to see each cause once.

#[cfg(feature = "admin")]
pub mod admin;
pub mod body;
pub mod client;
#[cfg(feature = "config")]
pub mod config;
pub mod connect;
pub mod load_report;
pub mod pool;
pub mod respond;
pub mod routing;
pub mod server;

pub use body::Body;
pub use client::{client, grpc, Client, ClientBuilder};
pub use routing::{RoutedClient, RoutedClientBuilder};
pub use server::{server, ServerBuilder};

/// Endpoint discovery (the `mesh-discovery` crate).
pub use mesh_discovery as discovery;

/// Load balancing (the `mesh-balance` crate).
pub use mesh_balance as balance;

/// The request-path layers (the `mesh-core` crate).
pub use mesh_core as core;

/// The one accept loop of every server: timers, header cap, graceful drain (the `mesh-server`
/// crate).
pub use mesh_server as accept;

/// Mutual TLS (the `mesh-tls` crate).
#[cfg(feature = "tls")]
pub use mesh_tls as tls;
