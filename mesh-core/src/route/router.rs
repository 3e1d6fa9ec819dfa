//! The router: a tower service that routes each request to a per-leaf service.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use super::cache::CacheEntry;
use super::split::SplitSequence;
use super::table::{host_key, request_host, Backend, RouteInfo, RouteTable};
use super::{RouteError, RoutePolicy};
use crate::dtab::{bind, explain, pick, BoundName, DelegateLimits, Dtab, Explanation, Namer, Path};
pub use mesh_identity::AuthenticatedPeer;

/// Request header whose dtab is appended for this request only (Linkerd 1).
pub const L5D_DTAB: HeaderName = HeaderName::from_static("l5d-dtab");
/// Request header carrying the effective overrides down the call graph (Linkerd 1).
pub const L5D_CTX_DTAB: HeaderName = HeaderName::from_static("l5d-ctx-dtab");
/// Response header naming an error the mesh itself produced.
pub const L5D_ERR: HeaderName = HeaderName::from_static("l5d-err");

/// The boxed error type of the [`Router`] service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type TrustFn = dyn Fn(&HeaderMap, &http::Extensions) -> bool + Send + Sync;

/// From whom per-request dtab overrides (`l5d-dtab`, `l5d-ctx-dtab`) are honoured. Untrusted
/// requests have both headers removed before forwarding.
#[derive(Clone, Default)]
pub enum OverrideTrust {
    /// Never honour overrides (the default, right for an ingress facing the internet: an override
    /// can send a request anywhere the namer can bind).
    #[default]
    Never,
    /// Always honour them (inside a mesh where every caller is trusted).
    Always,
    /// Honour them when this returns true for the request's headers and extensions.
    Custom(Arc<TrustFn>),
}

impl OverrideTrust {
    /// Trust requests whose peer extension `T` carries a *verified* identity, e.g. the peer
    /// identity the mTLS server layer inserts
    /// (`OverrideTrust::with_extension::<mesh_tls::PeerIdentity>()`): overrides honoured from
    /// authenticated mesh peers only.
    ///
    /// The extension being present is not enough: in permissive mode a plaintext connection
    /// carries a peer extension that says "unauthenticated" (`PeerIdentity(None)`), and such a
    /// caller must not be able to route requests anywhere with an `l5d-dtab` header.
    pub fn with_extension<T: AuthenticatedPeer + Send + Sync + 'static>() -> Self {
        OverrideTrust::Custom(Arc::new(|_, ext| {
            ext.get::<T>()
                .is_some_and(|peer| peer.verified_identity().is_some())
        }))
    }

    /// Trust requests for which `f` returns true.
    pub fn custom(
        f: impl Fn(&HeaderMap, &http::Extensions) -> bool + Send + Sync + 'static,
    ) -> Self {
        OverrideTrust::Custom(Arc::new(f))
    }

    fn allows(&self, headers: &HeaderMap, ext: &http::Extensions) -> bool {
        match self {
            OverrideTrust::Never => false,
            OverrideTrust::Always => true,
            OverrideTrust::Custom(f) => f(headers, ext),
        }
    }
}

impl fmt::Debug for OverrideTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverrideTrust::Never => "Never",
            OverrideTrust::Always => "Always",
            OverrideTrust::Custom(_) => "Custom(..)",
        })
    }
}

/// Router settings.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Who may override the dtab per request (default [`OverrideTrust::Never`]).
    pub overrides: OverrideTrust,
    /// The networks a per-request override may bind to directly through `/$/inet/IP/PORT`
    /// (default none). An override rule that leads into `/$/inet` outside these networks is
    /// refused ([`RouteError::OverrideTargetDenied`], 403): even a trusted caller's header must
    /// not turn the mesh into an open proxy to any address. Overrides between names the dtab
    /// defines (`/svc/x => /srv/x-v2`) are unaffected.
    pub override_inet_networks: Vec<IpNetwork>,
    /// Delegation limits (default depth 100, as Finagle).
    pub limits: DelegateLimits,
    /// Most hosts cached per host-named backend (default 4096); beyond that, delegation runs per
    /// request for new hosts, so arbitrary `Host` headers cannot grow memory without bound.
    pub max_cached_names: usize,
    /// Most per-leaf services kept (default 4096); a new leaf beyond that replaces a kept one (whose
    /// service is rebuilt if it is used again), so no request builds a service it then drops.
    pub max_leaf_services: usize,
    /// Seed of the sequence that chooses among the members of dtab unions (default 0).
    pub seed: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            overrides: OverrideTrust::Never,
            override_inet_networks: Vec::new(),
            limits: DelegateLimits::default(),
            max_cached_names: 4096,
            max_leaf_services: 4096,
            seed: 0,
        }
    }
}

impl RouterConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), RouteError> {
        self.limits
            .validate()
            .map_err(|e| RouteError::InvalidConfig {
                what: e.to_string(),
            })?;
        if self.max_cached_names == 0 || self.max_leaf_services == 0 {
            return Err(RouteError::InvalidConfig {
                what: "max_cached_names and max_leaf_services must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Where the router sent a request: inserted as a request extension for the layers below (retry,
/// deadline, classification, hedging read [`RouteTarget::policy`]; metrics read the names).
#[derive(Clone, Debug)]
pub struct RouteTarget {
    /// The matched route's name and policy.
    pub route: Arc<RouteInfo>,
    /// The logical name that was delegated (e.g. `/svc/world`).
    pub logical: Path,
    /// The bound name chosen (e.g. `/$/inet/127.0.0.1/4000`).
    pub bound: BoundName,
    /// Whether per-request overrides took part.
    pub overridden: bool,
}

impl RouteTarget {
    /// The route's policy.
    pub fn policy(&self) -> &RoutePolicy {
        &self.route.policy
    }

    /// The route's name.
    pub fn route_name(&self) -> &str {
        &self.route.name
    }
}

struct DtabState {
    dtab: Dtab,
    version: u64,
}

struct Shared {
    table: ArcSwap<RouteTable>,
    dtab: ArcSwap<DtabState>,
    versions: AtomicU64,
    namer: Arc<dyn Namer>,
    config: RouterConfig,
    unions: SplitSequence,
}

/// The routing state shared by every clone of a [`Router`]: route table, base dtab, namer and
/// settings. Cheap to clone; table and dtab can be replaced at run time (config reload) without
/// blocking requests.
#[derive(Clone)]
pub struct Routing {
    shared: Arc<Shared>,
}

// === impl Routing ===

impl Routing {
    /// Routing over `table`, delegating under `dtab` with `namer`.
    pub fn new(
        table: RouteTable,
        dtab: Dtab,
        namer: impl Namer,
        config: RouterConfig,
    ) -> Result<Self, RouteError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(table),
                dtab: ArcSwap::from_pointee(DtabState { dtab, version: 0 }),
                versions: AtomicU64::new(0),
                namer: Arc::new(namer),
                unions: SplitSequence::new(config.seed),
                config,
            }),
        })
    }

    /// The layer that wraps a per-leaf service factory into a [`Router`].
    pub fn layer(&self) -> RouterLayer {
        RouterLayer {
            routing: self.clone(),
        }
    }

    /// Replaces the base dtab; cached delegations are recomputed on next use.
    pub fn set_dtab(&self, dtab: Dtab) {
        let version = self.shared.versions.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared
            .dtab
            .store(Arc::new(DtabState { dtab, version }));
    }

    /// The base dtab.
    pub fn dtab(&self) -> Dtab {
        self.shared.dtab.load().dtab.clone()
    }

    /// Replaces the route table.
    pub fn set_routes(&self, table: RouteTable) {
        self.shared.table.store(Arc::new(table));
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.shared.table.load_full()
    }

    /// How `name` resolves under the base dtab followed by `overrides`, step by step.
    pub fn explain(&self, name: &Path, overrides: &Dtab) -> Explanation {
        let dtab = self.dtab().concat(overrides);
        explain(&dtab, &self.shared.namer, name, self.shared.config.limits)
    }

    /// Routes one request: applies trusted overrides (and rewrites or strips the override headers),
    /// selects the route, picks a backend and delegates its logical name to a bound name.
    ///
    /// Without overrides, delegation comes from a cache that is refreshed when the dtab or the
    /// namer's generation changes; with overrides it runs afresh for this request.
    pub fn route<B>(&self, req: &mut Request<B>) -> Result<RouteTarget, RouteError> {
        let overrides = self.take_overrides(req)?;
        let table = self.shared.table.load();
        let Some(entry) = table.select(req) else {
            return Err(RouteError::NoRoute {
                method: req.method().clone(),
                authority: request_host(req).unwrap_or("").to_owned(),
                path: req.uri().path().to_owned(),
            });
        };
        let slot = entry.pick_slot();
        let info = entry.route().info();
        let key = match &slot.backend {
            Backend::Name(_) => None,
            Backend::Host(_) => match request_host(req) {
                Some(h) => Some(host_key(h)),
                None => {
                    return Err(RouteError::NoHost {
                        route: info.name.to_string(),
                    })
                }
            },
        };
        let logical_for = |backend: &Backend| -> Path {
            match (backend, &key) {
                (Backend::Name(p), _) => p.clone(),
                (Backend::Host(prefix), Some(h)) => {
                    prefix.child(h).unwrap_or_else(|| prefix.clone())
                }
                (Backend::Host(prefix), None) => prefix.clone(),
            }
        };
        let u = self.shared.unions.next_unit();
        let limits = self.shared.config.limits;

        if let Some(over) = overrides {
            let logical = logical_for(&slot.backend);
            let dtab = self.shared.dtab.load().dtab.concat(&over);
            let tree = bind(&dtab, &self.shared.namer, &logical, limits).map_err(|source| {
                RouteError::Delegation {
                    name: logical.clone(),
                    source,
                }
            })?;
            let bound = pick(&tree, u)
                .map_err(|reason| RouteError::Unusable {
                    name: logical.clone(),
                    reason,
                })?
                .clone();
            return Ok(RouteTarget {
                route: info.clone(),
                logical,
                bound,
                overridden: true,
            });
        }

        let state = self.shared.dtab.load();
        let gen = self.shared.namer.generation();
        let k = key.as_deref().unwrap_or("");
        let cached = match slot.cache.get(k, state.version, gen) {
            Some(e) => e,
            None => {
                let name = logical_for(&slot.backend);
                let result = bind(&state.dtab, &self.shared.namer, &name, limits);
                let e = Arc::new(CacheEntry {
                    dtab_version: state.version,
                    namer_generation: gen,
                    name,
                    result,
                });
                slot.cache
                    .insert(k, e.clone(), self.shared.config.max_cached_names);
                e
            }
        };
        let tree = match &cached.result {
            Ok(t) => t,
            Err(source) => {
                return Err(RouteError::Delegation {
                    name: cached.name.clone(),
                    source: source.clone(),
                })
            }
        };
        let bound = pick(tree, u).map_err(|reason| RouteError::Unusable {
            name: cached.name.clone(),
            reason,
        })?;
        Ok(RouteTarget {
            route: info.clone(),
            logical: cached.name.clone(),
            bound: bound.clone(),
            overridden: false,
        })
    }

    /// Refuses override rules that lead into `/$/inet` outside the allowed networks: a rule whose
    /// destination is `/$/inet/IP/PORT` (or `/$/inet/IP`) with IP outside
    /// [`RouterConfig::override_inet_networks`], or `/$/inet`, `/$` or `/` themselves (which
    /// would let the rest of the name pick any address). Rules that lead to names the base dtab
    /// defines are not affected, even when those names bind to addresses.
    fn check_override_targets(&self, over: &Dtab) -> Result<(), RouteError> {
        let networks = &self.shared.config.override_inet_networks;
        for dentry in over.entries() {
            let mut denied = None;
            dentry.dst.for_each_leaf(&mut |dst: &Path| {
                if denied.is_none() && !inet_allowed(dst, networks) {
                    denied = Some(dst.clone());
                }
            });
            if let Some(target) = denied {
                return Err(RouteError::OverrideTargetDenied { target });
            }
        }
        Ok(())
    }

    /// Reads, checks and rewrites the override headers. Returns the effective overrides, if any.
    fn take_overrides<B>(&self, req: &mut Request<B>) -> Result<Option<Dtab>, RouteError> {
        let has_ctx = req.headers().contains_key(&L5D_CTX_DTAB);
        let has_dtab = req.headers().contains_key(&L5D_DTAB);
        if !has_ctx && !has_dtab {
            return Ok(None);
        }
        if !self
            .shared
            .config
            .overrides
            .allows(req.headers(), req.extensions())
        {
            req.headers_mut().remove(&L5D_CTX_DTAB);
            req.headers_mut().remove(&L5D_DTAB);
            return Ok(None);
        }
        // Linkerd 1 order: the context from upstream first, then this hop's own overrides.
        let mut over = Dtab::empty();
        for (name, header) in [(&L5D_CTX_DTAB, "l5d-ctx-dtab"), (&L5D_DTAB, "l5d-dtab")] {
            for v in req.headers().get_all(name) {
                let text = v
                    .to_str()
                    .map_err(|_| RouteError::OverrideNotText { header })?;
                let d = Dtab::parse(text)
                    .map_err(|source| RouteError::InvalidOverride { header, source })?;
                over = over.concat(&d);
            }
        }
        self.check_override_targets(&over)?;
        if has_dtab {
            req.headers_mut().remove(&L5D_DTAB);
            if over.is_empty() {
                req.headers_mut().remove(&L5D_CTX_DTAB);
            } else {
                let v = HeaderValue::try_from(over.to_string()).map_err(|_| {
                    RouteError::OverrideNotText {
                        header: "l5d-ctx-dtab",
                    }
                })?;
                req.headers_mut().insert(L5D_CTX_DTAB, v);
            }
        }
        Ok((!over.is_empty()).then_some(over))
    }
}

/// Whether an override rule may lead to `dst`: anything outside `/$/inet`, or an address of
/// `/$/inet/IP[/PORT...]` inside `networks`.
fn inet_allowed(dst: &Path, networks: &[IpNetwork]) -> bool {
    let segs = dst.segments();
    match segs {
        [] => false,
        [dollar] if &**dollar == "$" => false,
        [dollar, inet, rest @ ..] if &**dollar == "$" && &**inet == "inet" => match rest.first() {
            Some(ip) => ip
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| networks.iter().any(|n| n.contains(ip))),
            None => false,
        },
        _ => true,
    }
}

/// An IP network, `10.0.0.0/8` or `fd00::/8`: an allow-list entry of
/// [`RouterConfig::override_inet_networks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNetwork {
    addr: std::net::IpAddr,
    prefix_len: u8,
}

impl IpNetwork {
    /// The network of `addr` with `prefix_len` leading bits (at most 32 for IPv4, 128 for IPv6).
    pub fn new(addr: std::net::IpAddr, prefix_len: u8) -> Result<Self, RouteError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(RouteError::InvalidConfig {
                what: format!("network {addr}/{prefix_len}: the prefix length is above {max}"),
            });
        }
        Ok(Self { addr, prefix_len })
    }

    /// Whether `ip` lies in this network (an IPv4 address never lies in an IPv6 network).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32)
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                (u128::from(a), u128::from(b), 128)
            }
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix_len);
        a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
    }
}

impl std::str::FromStr for IpNetwork {
    type Err = RouteError;

    /// Parses `ADDR/LEN`, or a bare address as a single-host network.
    fn from_str(s: &str) -> Result<Self, RouteError> {
        let bad = || RouteError::InvalidConfig {
            what: format!("invalid network {s:?}: expected ADDR/PREFIX_LEN, e.g. 10.0.0.0/8"),
        };
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let len = match len {
            Some(len) => len.parse().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, len)
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routing")
            .field("routes", &self.shared.table.load().routes().count())
            .field("dtab", &self.shared.dtab.load().dtab.to_string())
            .field("config", &self.shared.config)
            .finish()
    }
}

/// Builds the service for one bound name (a leaf of the delegation): in production a balancer over
/// that discovery source's endpoints. Called once per bound name; the router keeps the result and
/// clones it per request.
///
/// Closures `Fn(&BoundName) -> S` implement it. Prefer a named type implementing the trait when
/// the router is stored behind a trait object or awaited inside a spawned (`Send`) future: a boxed
/// `dyn Fn(&BoundName) -> S` is higher-ranked over the reference's lifetime and rustc then fails
/// to prove the future `Send` ("implementation of `From` is not general enough").
pub trait NewLeafService {
    /// The per-leaf service.
    type Service;

    /// Builds the service for `leaf`.
    fn new_leaf(&self, leaf: &BoundName) -> Self::Service;
}

impl<F, S> NewLeafService for F
where
    F: Fn(&BoundName) -> S,
{
    type Service = S;

    fn new_leaf(&self, leaf: &BoundName) -> S {
        self(leaf)
    }
}

/// The [`Layer`] that makes a [`Router`] over a [`NewLeafService`].
#[derive(Clone, Debug)]
pub struct RouterLayer {
    routing: Routing,
}

impl<N: NewLeafService> Layer<N> for RouterLayer {
    type Service = Router<N>;

    fn layer(&self, new_leaf: N) -> Router<N> {
        Router::new(self.routing.clone(), new_leaf)
    }
}

/// Routes each request (see [`Routing::route`]), inserts the [`RouteTarget`] extension and calls
/// the service for the chosen bound name.
///
/// The per-leaf services are built once per bound name and shared by the router's clones. Each
/// router instance also keeps its own copy of the last leaf service it called and calls it in
/// place while it is ready, so a router kept per connection (as a server keeps its service)
/// neither clones a leaf service per request nor moves it into the response future. A leaf
/// service that is not ready at once is handed to that request (which waits for it) and the
/// next request takes a fresh copy. After the shared set of leaf services changes (a leaf built
/// or evicted), an instance's next request drops its copy and takes a current one; until then,
/// or until the instance is dropped (a server's, with its connection), the copy keeps its leaf
/// service alive.
///
/// A malformed trusted override header is answered here with `400 Bad Request` and an `l5d-err`
/// header, without calling any inner service (so the response body type must implement
/// `Default`). Other routing failures are returned as a boxed [`RouteError`]; the facade turns them
/// into responses with [`RouteError::status`] and [`RouteError::l5d_err`].
pub struct Router<N: NewLeafService> {
    routing: Routing,
    new_leaf: Arc<N>,
    leaves: Arc<Leaves<N::Service>>,
    /// This instance's copy of the last leaf service it called (not shared with clones).
    last: Option<LastLeaf<N::Service>>,
}

/// The leaf services the router's clones share, and a counter of changes to them.
struct Leaves<S> {
    map: ArcSwap<HashMap<Path, S>>,
    /// Bumped after every change of `map`: an instance's [`LastLeaf`] from an older generation
    /// may be a service the map no longer holds.
    generation: AtomicU64,
}

/// A router instance's own copy of one leaf service.
struct LastLeaf<S> {
    generation: u64,
    id: Path,
    service: S,
}

// === impl Router ===

impl<N: NewLeafService> Router<N> {
    /// A router over `routing` that builds per-leaf services with `new_leaf`.
    pub fn new(routing: Routing, new_leaf: N) -> Self {
        Self {
            routing,
            new_leaf: Arc::new(new_leaf),
            leaves: Arc::new(Leaves {
                map: ArcSwap::from_pointee(HashMap::new()),
                generation: AtomicU64::new(0),
            }),
            last: None,
        }
    }

    /// The shared routing state.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }
}

impl<N> Router<N>
where
    N: NewLeafService,
    N::Service: Clone,
{
    /// This instance's copy of the service for `bound`: the one it called last if that is for
    /// the same leaf and the shared leaves have not changed since, else a fresh copy.
    fn last_leaf(&mut self, bound: &BoundName) -> &mut N::Service {
        // Read before the shared map: a change after this reading bumps it again.
        let generation = self.leaves.generation.load(Ordering::Acquire);
        let Self {
            routing,
            new_leaf,
            leaves,
            last,
        } = self;
        if !matches!(last, Some(l) if l.generation == generation && l.id == bound.id) {
            *last = None;
        }
        &mut last
            .get_or_insert_with(|| {
                let (service, generation) =
                    shared_leaf(routing, &**new_leaf, leaves, bound, generation);
                LastLeaf {
                    generation,
                    id: bound.id.clone(),
                    service,
                }
            })
            .service
    }
}

/// The service for `bound` that a router's clones share, built with `new_leaf` on first use,
/// and the generation of the shared leaves a copy of it is current for. `seen` is the
/// generation read before the lookup.
fn shared_leaf<N>(
    routing: &Routing,
    new_leaf: &N,
    leaves: &Leaves<N::Service>,
    bound: &BoundName,
    seen: u64,
) -> (N::Service, u64)
where
    N: NewLeafService,
    N::Service: Clone,
{
    if let Some(s) = leaves.map.load().get(&bound.id) {
        return (s.clone(), seen);
    }
    let svc = new_leaf.new_leaf(bound);
    let max = routing.shared.config.max_leaf_services;
    leaves.map.rcu(|map| {
        let mut next = HashMap::clone(map);
        if !next.contains_key(&bound.id) {
            // At the cap, make room by dropping another leaf's service (rebuilt if it is used
            // again) rather than building a new service for every request to this one.
            while next.len() >= max {
                let Some(victim) = next.keys().find(|k| **k != bound.id).cloned() else {
                    break;
                };
                next.remove(&victim);
            }
            next.insert(bound.id.clone(), svc.clone());
        }
        next
    });
    // Every change of the map is followed by a bump. If no other bump came between `seen` and
    // this one, the map as changed here is current up to this bump; else the copy is marked
    // with `seen` and the next request takes a fresh one.
    let before = leaves.generation.fetch_add(1, Ordering::AcqRel);
    let generation = if before == seen { seen + 1 } else { seen };
    // Another request may have inserted first: use the kept one so there is one per leaf.
    let svc = leaves.map.load().get(&bound.id).cloned().unwrap_or(svc);
    (svc, generation)
}

impl<N: NewLeafService> Clone for Router<N> {
    /// A router sharing the routing state and the leaf services, with no leaf copy of its own.
    fn clone(&self) -> Self {
        Self {
            routing: self.routing.clone(),
            new_leaf: self.new_leaf.clone(),
            leaves: self.leaves.clone(),
            last: None,
        }
    }
}

impl<N: NewLeafService> fmt::Debug for Router<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routing", &self.routing)
            .field("leaves", &self.leaves.map.load().len())
            .finish()
    }
}

impl<N, B, ResBody> Service<Request<B>> for Router<N>
where
    N: NewLeafService,
    N::Service: Service<Request<B>, Response = Response<ResBody>> + Clone,
    <N::Service as Service<Request<B>>>::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<LeafFuture<N::Service, Request<B>>, Response<ResBody>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The target is known only per request; its readiness is asked per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.routing.route(&mut req) {
            Ok(target) => {
                target.route.extensions().apply(req.extensions_mut());
                let leaf = self.last_leaf(&target.bound);
                req.extensions_mut().insert(target);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match leaf.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => ResponseFuture::call(LeafFuture::called(leaf.call(req))),
                    // Failed: the copy goes, and the next request takes a fresh one.
                    Poll::Ready(Err(e)) => {
                        self.last = None;
                        ResponseFuture::ready(Err(e.into()))
                    }
                    // Not ready: this request waits on the copy itself, with its own waker, and
                    // the next one takes a fresh copy, so no request waits behind a copy
                    // registered with nobody's waker.
                    Poll::Pending => {
                        let Some(last) = self.last.take() else {
                            return ResponseFuture::ready(Err("the router lost its leaf".into()));
                        };
                        ResponseFuture::call(LeafFuture::waiting(last.service.oneshot(req)))
                    }
                }
            }
            Err(e @ (RouteError::InvalidOverride { .. } | RouteError::OverrideNotText { .. })) => {
                tracing::debug!(error = %e, "rejecting request with a malformed dtab override");
                let mut rsp = Response::new(ResBody::default());
                *rsp.status_mut() = e.status();
                rsp.headers_mut().insert(L5D_ERR, e.l5d_err());
                ResponseFuture::ready(Ok(rsp))
            }
            Err(e) => ResponseFuture::ready(Err(e.into())),
        }
    }
}

pin_project_lite::pin_project! {
    /// A leaf service's response future: called in place on the router's copy of the service,
    /// or, when that copy was not ready, waiting for readiness on it and then called.
    pub struct LeafFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: LeafState<S, Req>,
    }
}

pin_project_lite::pin_project! {
    #[project = LeafStateProj]
    enum LeafState<S, Req>
    where
        S: Service<Req>,
    {
        // The leaf service was ready and was called.
        Called { #[pin] fut: S::Future },
        // The leaf service was not ready; `Oneshot` drives it to readiness and calls it.
        Waiting { #[pin] fut: Oneshot<S, Req> },
    }
}

impl<S: Service<Req>, Req> LeafFuture<S, Req> {
    fn called(fut: S::Future) -> Self {
        Self {
            state: LeafState::Called { fut },
        }
    }

    fn waiting(fut: Oneshot<S, Req>) -> Self {
        Self {
            state: LeafState::Waiting { fut },
        }
    }
}

impl<S: Service<Req>, Req> Future for LeafFuture<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            LeafStateProj::Called { fut } => fut.poll(cx),
            LeafStateProj::Waiting { fut } => fut.poll(cx),
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for LeafFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            LeafState::Called { .. } => "LeafFuture::Called",
            LeafState::Waiting { .. } => "LeafFuture::Waiting",
        })
    }
}

pin_project_lite::pin_project! {
    /// The [`Router`]'s response future.
    pub struct ResponseFuture<F, T> {
        #[pin]
        state: State<F, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, T> {
        Ready { value: Option<Result<T, BoxError>> },
        Call { #[pin] fut: F },
    }
}

impl<F, T> ResponseFuture<F, T> {
    fn ready(value: Result<T, BoxError>) -> Self {
        Self {
            state: State::Ready { value: Some(value) },
        }
    }

    fn call(fut: F) -> Self {
        Self {
            state: State::Call { fut },
        }
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            State::Ready { .. } => "ResponseFuture::Ready",
            State::Call { .. } => "ResponseFuture::Call",
        })
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { value } => Poll::Ready(
                value
                    .take()
                    .unwrap_or_else(|| Err("router response polled after completion".into())),
            ),
            StateProj::Call { fut } => fut.poll(cx).map_err(Into::into),
        }
    }
}
