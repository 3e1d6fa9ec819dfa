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

pub mod body;
pub mod client;
pub mod connect;
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
