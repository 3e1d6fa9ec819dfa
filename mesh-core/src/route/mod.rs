//! Request routing: a route table selects a route and a backend (a logical name), a dtab delegates
//! that name to a bound discovery source, and the request goes to that source's service.
//!
//! # Route tables
//!
//! A [`Route`] matches on host (exact, domain suffix, regex), path (exact, prefix, regex), method
//! and headers (exact, regex, present); every matcher it has must match. Routes are tried **in
//! declaration order and the first match wins**, as in Envoy's route configuration and Istio's
//! `VirtualService`. We chose this over "most specific wins" because specificity is not defined
//! across dimensions (is a host match more specific than a header match?), because operators read
//! a route list top to bottom, and because it makes selection a short-circuiting scan with no
//! ranking step. Put narrow routes (canary header, `/api/v2`) before broad ones.
//!
//! Each route leads to one backend or a weighted split of backends (`90/10` canary, the Istio
//! `50/50` demo). Splits use a golden-ratio low-discrepancy sequence from one atomic counter (see
//! [`SplitSequence`]): exact to a few requests in 10,000, seedable, lock-free; weight 0 drains a
//! backend. A backend is a logical name for the dtab: [`Backend::Name`] (`/svc/world`) or
//! [`Backend::Host`] (`/svc` + the request's host, Linkerd 1's default identifier).
//!
//! Each route carries a [`RoutePolicy`] (timeout, retries, classification, hedging) that the
//! resilience layers read from the [`RouteTarget`] request extension.
//!
//! # Dtabs and per-request overrides
//!
//! The logical name is delegated under the base dtab (see [`crate::dtab`]). A request may carry
//! `l5d-dtab` rules that are appended for that request only, and `l5d-ctx-dtab` with the rules its
//! upstream applied; as in Linkerd 1 the effective overrides are `l5d-ctx-dtab` followed by
//! `l5d-dtab`, and they are forwarded as `l5d-ctx-dtab` so the whole call graph honours them.
//! Overrides are honoured only when [`OverrideTrust`] allows it (default `Never`; inside the mesh,
//! `with_extension::<PeerIdentity>()` trusts callers whose mTLS identity was *verified* — a
//! plaintext caller of a permissive server is not trusted); otherwise both headers are stripped. A
//! malformed trusted header is answered with 400 and an `l5d-err` header such as
//! `invalid l5d-dtab at byte 12: expected '=>', found '/'`. Even a trusted override may bind
//! directly to `/$/inet/IP/PORT` only inside [`RouterConfig::override_inet_networks`] (default: no
//! network) or where the base dtab already leads; otherwise the request gets 403.
//!
//! # Cost on the request path
//!
//! Route selection is a scan with no allocation. Delegation results are cached per backend (per
//! host for [`Backend::Host`]) and recomputed only when the dtab is replaced or the namer's
//! generation changes, so a request without overrides does a few atomic loads, a hash lookup and a
//! walk of a small tree. Per-leaf services are built once per bound name and kept in a copy-on-write
//! map. Only requests with overrides delegate afresh.
//!
//! # Example
//!
//! ```
//! use mesh_core::dtab::{BoundName, Dtab, InetNamer};
//! use mesh_core::route::{Backend, Route, RouteTable, RouterConfig, Routing, RouteTarget};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let table = RouteTable::new(vec![
//!     Route::builder("world-canary")
//!         .host("world")
//!         .weighted(Backend::Name("/svc/world".parse()?), 90)
//!         .weighted(Backend::Name("/svc/world-v2".parse()?), 10)
//!         .build()?,
//!     Route::builder("default").to(Backend::Host("/svc".parse()?)).build()?,
//! ])?;
//! let dtab = Dtab::parse("/svc => /$/inet/127.0.0.1/4000; /svc/world-v2 => /$/inet/127.0.0.1/4001")?;
//! let routing = Routing::new(table, dtab, InetNamer, RouterConfig::default())?;
//!
//! // One service per bound name; here it just reports where it was sent.
//! let router = routing.layer().layer(|leaf: &BoundName| {
//!     let leaf = leaf.id.to_string();
//!     service_fn(move |req: http::Request<()>| {
//!         let route = req.extensions().get::<RouteTarget>().map(|t| t.route_name().to_owned());
//!         let body = format!("{leaf} via {}", route.unwrap_or_default());
//!         async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
//!     })
//! });
//! let rsp = router.oneshot(http::Request::get("http://other/").body(())?).await?;
//! assert_eq!(rsp.body(), "/$/inet/127.0.0.1/4000 via default");
//! # Ok(()) }
//! ```

mod cache;
mod error;
mod policy;
mod router;
mod split;
mod table;

pub use error::RouteError;
pub use policy::{
    BudgetOverride, Classification, HedgePolicy, PolicyExtensions, Protocol, RouteBudget,
    RoutePolicy, RouteRetry,
};
pub use router::{
    AuthenticatedPeer, BoxError, IpNetwork, LeafFuture, NewLeafService, OverrideTrust,
    ResponseFuture, RouteTarget, Router, RouterConfig, RouterLayer, Routing, L5D_CTX_DTAB,
    L5D_DTAB, L5D_ERR,
};
pub use split::{SplitSequence, WeightedSplit};
pub use table::{
    request_host, Backend, HeaderMatch, HostMatch, PathMatch, Route, RouteBuilder, RouteEntry,
    RouteInfo, RouteTable,
};

#[cfg(test)]
mod tests;
