//! A routed client: a route table and a dtab in front of one balanced [`Client`] per bound name.
//!
//! [`Client`] balances over **one** logical service. A [`RoutedClient`] sits in front of many: for
//! each request mesh-core's [router](mesh_core::route) selects a route (first match wins), picks a
//! backend of the route's weighted split, delegates that logical name (`/svc/world`) under the
//! dtab (plus trusted `l5d-dtab` / `l5d-ctx-dtab` overrides) to a bound name, and the request goes
//! to that bound name's [`Client`], which balances, retries and breaks circuits as usual.
//!
//! # Names
//!
//! The leaves of a delegation are bound by this module's namer over mesh-discovery:
//!
//! | leaf | discovery source |
//! |---|---|
//! | a name given to [`RoutedClientBuilder::service`] (`/srv/world`), or a name under it | that [`Discovery`] |
//! | `/$/inet/IP/PORT` | [`Discovery::fixed`] of that one address |
//! | `/#/dns/host:port` | [`Discovery::dns`] of `host:port` (A/AAAA), started on first use and stopped when no leaf client uses it |
//!
//! Anything else is negative (`~`), so an alternation (`|`) falls back past it. A bound name
//! "has endpoints" when its source's current set is not empty; a small task per source watches it
//! and bumps the namer's generation when a set becomes empty or non-empty, which makes the router
//! recompute its cached delegations (so `/srv/a | /srv/b` fails over when `a` loses its last
//! endpoint, and comes back when it regains one).
//!
//! A `/#/dns` source lives as long as the leaf client that uses it: when the router evicts that
//! client (beyond [`RouterConfig::max_leaf_services`]) and its requests are done, the namer forgets
//! the source, and its resolver and watcher tasks end; it is started again if the name is used
//! again. Sources that were looked up but never used by a leaf client (an alternation's fallback)
//! are forgotten once there are more sources than the leaf cap. Many distinct DNS names over time
//! therefore cost no more tasks than the live leaves.
//!
//! # Why this shape
//!
//! One [`Client`] per bound name, built once and kept by the router, keeps each service's
//! balancer state, connection pools and retry budget warm across requests and across routes that
//! share a backend — the same split as Linkerd 1's per-destination clients. The per-leaf client
//! settings come from one template closure (default: [`crate::client()`]'s defaults), because a dtab
//! override can send a request to any name the namer binds, so the settings cannot be per name.
//!
//! # Route policies
//!
//! Each route's [`RoutePolicy`](mesh_core::route::RoutePolicy) takes effect in the leaf client's
//! layers: its timeout is the request's deadline (504 with `l5d-err` when it passes), retries off
//! means the request is not retried, its own retry budget is withdrawn from instead of the
//! client's, its classification replaces the client's, and its hedging policy hedges the route's
//! idempotent requests (a route without one is not hedged). Leaf clients get a hedge layer for
//! that, idle unless a route asks for hedging.
//!
//! # Errors as responses
//!
//! Routing failures are answered, not returned as errors: the response has the status of
//! [`RouteError::status`] (404 no route, 400 malformed trusted override or no host, 503 nothing
//! bound or no endpoints, 502 delegation failed) and an `l5d-err` header with the reason, so a
//! caller can tell a mesh failure from an application failure.
//!
//! # Overrides
//!
//! Per-request dtab overrides are honoured only per [`OverrideTrust`]; the default is
//! [`OverrideTrust::Never`] (the headers are stripped), right for anything that faces untrusted
//! callers. Inside a mesh, trust callers that proved a mesh identity over mTLS: the mTLS server
//! layer inserts the verified `PeerIdentity` as a request extension,
//! so (feature `tls`) [`OverrideTrust::with_extension`]`::<meshwork::tls::PeerIdentity>()`
//! honours overrides from mesh peers only; see [`RoutedClientBuilder::override_trust`].
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use meshwork::core::dtab::Dtab;
//! use meshwork::core::route::{Backend, Route, RouteTable};
//! use meshwork::discovery::{Discovery, Endpoint};
//! use meshwork::routing::RoutedClientBuilder;
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let table = RouteTable::new(vec![
//!     Route::builder("by-host").to(Backend::Host("/svc".parse()?)).build()?,
//! ])?;
//! let dtab = Dtab::parse("/svc => /srv; /srv/search => /#/dns/search.internal:8080;")?;
//! let client = RoutedClientBuilder::new(table, dtab)
//!     .service("/srv/world", Discovery::fixed([Endpoint::new("127.0.0.1:8081".parse()?)])?)
//!     .client(|discovery| meshwork::client(discovery).retry(None))
//!     .build::<Empty<Bytes>>()?;
//! // Host `world` → /svc/world → /srv/world → the fixed endpoint.
//! let rsp = client.oneshot(http::Request::get("http://world/hello").body(Empty::new())?).await?;
//! println!("{}", rsp.status());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use mesh_core::clock;
use mesh_core::dtab::{BoundName, Dtab, DtabError, InetNamer, Namer, Path, Resolution};
use mesh_core::metrics::Succession;
use mesh_core::route::{NewLeafService, RouteError, RouteTable, Router, Routing, L5D_ERR};
use mesh_discovery::{Discovery, DnsConfig, Endpoint};
use tokio::sync::watch;
use tower::Service;

pub use mesh_core::route::{OverrideTrust, RouterConfig};

use crate::body::{boxed, Body, BoxError};
use crate::client::{Client, ClientBuilder};

/// Makes the [`ClientBuilder`] for one bound name's discovery source.
type Template = dyn Fn(Discovery) -> ClientBuilder + Send + Sync;

/// Builds a [`RoutedClient`]: route table, dtab, named discovery sources, per-leaf client
/// settings and router settings.
pub struct RoutedClientBuilder {
    table: RouteTable,
    dtab: Dtab,
    services: Vec<(String, Discovery)>,
    template: Arc<Template>,
    dns: DnsConfig,
    config: RouterConfig,
    name_prefix: String,
}

/// A client that routes each request by a route table and a dtab to one of many balanced
/// [`Client`]s. See [the module docs](self).
///
/// A `tower::Service<http::Request<B>>` answering `http::Response<Body>`; cheap to clone, clones
/// share the routing state and the per-leaf clients.
pub struct RoutedClient<B> {
    router: Router<NewLeafClient>,
    _body: PhantomData<fn(B)>,
}

/// Why a [`RoutedClient`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutedBuildError {
    /// A name given to [`RoutedClientBuilder::service`] is not a dtab path.
    #[error("invalid service name {name:?}: {source}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The parse error.
        #[source]
        source: DtabError,
    },
    /// The same name was given to [`RoutedClientBuilder::service`] twice.
    #[error("service name {name} is given twice")]
    DuplicateName {
        /// The name.
        name: Path,
    },
    /// The router settings are invalid.
    #[error(transparent)]
    Router(#[from] RouteError),
    /// No tokio runtime is running (the namer's watcher tasks need one).
    #[error("a RoutedClient must be built inside a tokio runtime")]
    NoRuntime,
}

// === impl RoutedClientBuilder ===

impl RoutedClientBuilder {
    /// Routes by `table`, delegating under `dtab`. Defaults: no named services, per-leaf clients
    /// with [`crate::client()`]'s defaults, DNS sources with [`DnsConfig`]'s defaults, overrides
    /// never trusted ([`RouterConfig::default`]).
    pub fn new(table: RouteTable, dtab: Dtab) -> Self {
        Self {
            table,
            dtab,
            services: Vec::new(),
            template: Arc::new(crate::client),
            dns: DnsConfig::default(),
            config: RouterConfig::default(),
            name_prefix: String::new(),
        }
    }

    /// Binds the dtab leaf `name` (e.g. `/srv/world`) and every name under it to `discovery`.
    /// An invalid or repeated name is reported by [`RoutedClientBuilder::build`].
    pub fn service(mut self, name: &str, discovery: Discovery) -> Self {
        self.services.push((name.to_owned(), discovery));
        self
    }

    /// How each bound name's [`Client`] is configured: `template` gets the name's discovery
    /// source and returns the builder (default: `meshwork::client(discovery)`, all defaults).
    pub fn client(
        mut self,
        template: impl Fn(Discovery) -> ClientBuilder + Send + Sync + 'static,
    ) -> Self {
        self.template = Arc::new(template);
        self
    }

    /// The settings of `/#/dns/host:port` sources (nameserver, TTL bounds, identity); the name is
    /// replaced by the leaf's. Default: [`DnsConfig::default`] (`/etc/resolv.conf`).
    pub fn dns(mut self, config: DnsConfig) -> Self {
        self.dns = config;
        self
    }

    /// Who may override the dtab per request with `l5d-dtab` / `l5d-ctx-dtab` (default
    /// [`OverrideTrust::Never`]: the headers are stripped). Inside a mesh, trust the callers that
    /// proved a mesh identity over mTLS (feature `tls`):
    ///
    /// ```
    /// # #[cfg(feature = "tls")]
    /// # fn trust_peers(
    /// #     builder: meshwork::routing::RoutedClientBuilder,
    /// # ) -> meshwork::routing::RoutedClientBuilder {
    /// use meshwork::routing::OverrideTrust;
    ///
    /// builder.override_trust(OverrideTrust::with_extension::<meshwork::tls::PeerIdentity>())
    /// # }
    /// ```
    pub fn override_trust(mut self, trust: OverrideTrust) -> Self {
        self.config.overrides = trust;
        self
    }

    /// Prefix of each bound name's client name in metrics (default none: the bound name, e.g.
    /// `/srv/world`). Client names are unique per metrics registry, so two routed clients that
    /// share a [`Telemetry`](mesh_core::metrics::Telemetry) and bind the same names need
    /// different prefixes. A name set by the [`RoutedClientBuilder::client`] template wins.
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// All router settings (delegation limits, cache sizes, union seed, override trust).
    pub fn router(mut self, config: RouterConfig) -> Self {
        self.config = config;
        self
    }

    /// Builds the client. Must be called inside a tokio runtime (the namer watches each source's
    /// endpoint set with a small task; per-leaf clients spawn their discovery tasks on first use).
    ///
    /// # Errors
    ///
    /// A service name that is not a path or is given twice, invalid router settings, or no
    /// runtime. Per-leaf client settings are checked when a leaf is first used; a leaf whose
    /// client cannot be built answers 500 with an `l5d-err` header.
    pub fn build<B>(self) -> Result<RoutedClient<B>, RoutedBuildError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RoutedBuildError::NoRuntime)?;
        let mut named = HashMap::with_capacity(self.services.len());
        for (name, discovery) in self.services {
            let path: Path = name
                .parse()
                .map_err(|source| RoutedBuildError::InvalidName { name, source })?;
            if named.contains_key(&path) {
                return Err(RoutedBuildError::DuplicateName { name: path });
            }
            named.insert(path, discovery);
        }
        let (shutdown, _) = watch::channel(());
        let mut namer = DiscoveryNamer {
            named: HashMap::with_capacity(named.len()),
            dns: RwLock::new(HashMap::new()),
            dns_config: self.dns,
            max_dns_sources: self.config.max_leaf_services,
            generation: Arc::new(AtomicU64::new(0)),
            shutdown,
            runtime,
        };
        // Start the watchers before anything reads the sets, so no change goes unseen.
        for (path, discovery) in named {
            namer.watch(&discovery, namer.shutdown.subscribe());
            namer.named.insert(path, discovery);
        }
        let namer = Arc::new(namer);
        let routing = Routing::new(self.table, self.dtab, namer.clone(), self.config)?;
        let new_leaf = NewLeafClient {
            namer,
            template: self.template,
            name_prefix: self.name_prefix,
            succession: Succession::new(),
            builds: AtomicU64::new(0),
            build_lock: std::sync::Mutex::new(()),
        };
        Ok(RoutedClient {
            router: Router::new(routing, new_leaf),
            _body: PhantomData,
        })
    }
}

impl fmt::Debug for RoutedClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedClientBuilder")
            .field("routes", &self.table.routes().count())
            .field("dtab", &self.dtab.to_string())
            .field(
                "services",
                &self.services.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// === impl RoutedClient ===

impl<B> RoutedClient<B> {
    /// The routing state: replace the route table or the dtab at run time
    /// ([`Routing::set_routes`], [`Routing::set_dtab`]) or explain a delegation.
    pub fn routing(&self) -> &Routing {
        self.router.routing()
    }
}

impl<B> Clone for RoutedClient<B> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            _body: PhantomData,
        }
    }
}

impl<B> fmt::Debug for RoutedClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedClient")
            .field("router", &self.router)
            .finish()
    }
}

impl<B> Service<http::Request<B>> for RoutedClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The leaf is known only per request; the leaf client's readiness is driven per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> ResponseFuture {
        // One clock reading for the router's layers and the leaf client's (see `clock`).
        let _clock = clock::Scope::enter();
        ResponseFuture {
            inner: self.router.call(req.map(boxed)),
        }
    }
}

type RouterFuture = mesh_core::route::ResponseFuture<
    mesh_core::route::LeafFuture<LeafClient, http::Request<Body>>,
    http::Response<Body>,
>;

pin_project_lite::pin_project! {
    /// The [`RoutedClient`]'s response future: the leaf client's response, or a routing failure
    /// turned into a response with `l5d-err`.
    pub struct ResponseFuture {
        #[pin]
        inner: RouterFuture,
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _clock = clock::Scope::enter();
        Poll::Ready(match std::task::ready!(self.project().inner.poll(cx)) {
            Ok(rsp) => Ok(rsp),
            Err(error) => match error.downcast::<RouteError>() {
                Ok(error) => {
                    tracing::debug!(%error, "routing failed");
                    Ok(error_response(error.status(), error.l5d_err()))
                }
                Err(error) => Err(error),
            },
        })
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

fn error_response(status: http::StatusCode, l5d_err: http::HeaderValue) -> http::Response<Body> {
    let mut rsp = http::Response::new(Body::default());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(L5D_ERR, l5d_err);
    rsp
}

// === DiscoveryNamer ===

/// Binds dtab leaves to mesh-discovery sources (see the module docs' table).
struct DiscoveryNamer {
    /// Names from the configuration; fixed after build.
    named: HashMap<Path, Discovery>,
    /// `/#/dns/host:port` sources, created on first lookup and forgotten when the last leaf client
    /// using one is dropped. Lookups run only when the router's delegation cache is refreshed and
    /// leaf clients are built once per leaf, so a lock here is off the per-request path.
    dns: RwLock<HashMap<Path, DnsSource>>,
    dns_config: DnsConfig,
    /// The router's leaf cap: beyond it, sources no leaf client uses are forgotten.
    max_dns_sources: usize,
    generation: Arc<AtomicU64>,
    /// Dropped with the namer, which ends the watcher tasks.
    shutdown: watch::Sender<()>,
    runtime: tokio::runtime::Handle,
}

impl DiscoveryNamer {
    /// Spawns the task that bumps the generation whenever `discovery`'s set becomes empty or
    /// non-empty. It ends when `shutdown`'s sender is dropped or the source stops.
    fn watch(&self, discovery: &Discovery, mut shutdown: watch::Receiver<()>) {
        let mut discovery = discovery.clone();
        let generation = self.generation.clone();
        let mut was_empty = discovery.current().is_empty();
        drop(self.runtime.spawn(async move {
            loop {
                tokio::select! {
                    changed = discovery.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = shutdown.changed() => return,
                }
                let empty = discovery.current().is_empty();
                if empty != was_empty {
                    was_empty = empty;
                    generation.fetch_add(1, Ordering::Release);
                }
            }
        }));
    }

    /// The longest configured name that `path` starts with, and how many segments it has.
    fn named(&self, path: &Path) -> Option<(usize, &Discovery)> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.named.get(&path.take(n)).map(|d| (n, d)))
    }

    /// The DNS source of `id` (`/#/dns/host:port`), started on first use, and the lease of the
    /// leaf client that uses it (when `lease_for` is given: the namer, to hand back the lease).
    fn dns_source(
        &self,
        id: &Path,
        host_port: &str,
        lease_for: Option<&Arc<DiscoveryNamer>>,
    ) -> Result<(Discovery, Option<Arc<DnsLease>>), String> {
        if lease_for.is_none() {
            if let Some(s) = self.read_dns().get(id) {
                return Ok((s.discovery.clone(), None));
            }
        }
        let mut map = self.dns.write().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(id) {
            let mut config = self.dns_config.clone();
            config.name = mesh_discovery::DnsName::host(host_port).map_err(|e| e.to_string())?;
            let discovery = {
                let _guard = self.runtime.enter();
                Discovery::dns(config).map_err(|e| e.to_string())?
            };
            if map.len() >= self.max_dns_sources {
                // Beyond the leaf cap, forget the sources no leaf client uses (looked up but never
                // routed to); they are started again if they are.
                map.retain(|_, s| s.lease.strong_count() > 0);
            }
            let (stop, stopped) = watch::channel(());
            self.watch(&discovery, stopped);
            let source = DnsSource {
                discovery,
                _stop: stop,
                lease: Weak::new(),
            };
            map.insert(id.clone(), source);
        }
        let Some(source) = map.get_mut(id) else {
            return Err(format!("no discovery source is bound to {id}"));
        };
        let discovery = source.discovery.clone();
        let lease = lease_for.map(|namer| {
            // One lease per source: a second leaf client for the same name (a race between two
            // first requests) shares it. The lease leaves this function before it can be dropped,
            // so its `Drop` never runs under the lock.
            source.lease.upgrade().unwrap_or_else(|| {
                let lease = Arc::new(DnsLease {
                    id: id.clone(),
                    namer: Arc::downgrade(namer),
                });
                source.lease = Arc::downgrade(&lease);
                lease
            })
        });
        Ok((discovery, lease))
    }

    /// Forgets the source of `id` if no leaf client uses it any more, which stops its tasks.
    fn release(&self, id: &Path) {
        let removed = {
            let mut map = self.dns.write().unwrap_or_else(|e| e.into_inner());
            match map.get(id) {
                Some(s) if s.lease.strong_count() == 0 => map.remove(id),
                _ => None,
            }
        };
        drop(removed);
    }

    fn read_dns(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Path, DnsSource>> {
        self.dns.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The discovery source of a bound name this namer produced, and for a `/#/dns` name the
    /// lease that keeps its source (started again if it was forgotten since the lookup).
    fn discovery(
        self: &Arc<Self>,
        leaf: &BoundName,
    ) -> Result<(Discovery, Option<Arc<DnsLease>>), String> {
        if let Some(addr) = leaf.inet_addr() {
            let fixed = Discovery::fixed([Endpoint::new(addr)]).map_err(|e| e.to_string())?;
            return Ok((fixed, None));
        }
        if let Some(d) = self.named.get(&leaf.id) {
            return Ok((d.clone(), None));
        }
        match leaf.id.segments() {
            [hash, dns, host_port] if &**hash == "#" && &**dns == "dns" => {
                self.dns_source(&leaf.id, host_port, Some(self))
            }
            _ => Err(format!("no discovery source is bound to {}", leaf.id)),
        }
    }
}

/// A `/#/dns` source the namer started.
struct DnsSource {
    discovery: Discovery,
    /// Dropped with the entry, which ends the source's watcher task.
    _stop: watch::Sender<()>,
    /// The lease held by the leaf client using the source; dead when none does.
    lease: Weak<DnsLease>,
}

/// Held by the leaf client of a `/#/dns` name (and so by its copies: a router instance's, a
/// waiting request's). When the last one is dropped (the router evicted the leaf, the router
/// instances that called it have moved on and its requests are done), the namer forgets the
/// source: its watcher ends, and with the last [`Discovery`] handle its resolver task.
struct DnsLease {
    id: Path,
    namer: Weak<DiscoveryNamer>,
}

impl Drop for DnsLease {
    fn drop(&mut self) {
        if let Some(namer) = self.namer.upgrade() {
            namer.release(&self.id);
        }
    }
}

impl Namer for DiscoveryNamer {
    fn lookup(&self, path: &Path) -> Resolution {
        if path.starts_with(&["$", "inet"]) {
            return InetNamer.lookup(path);
        }
        if path.starts_with(&["#", "dns"]) {
            let Some(host_port) = path.segments().get(2) else {
                return Resolution::Fail(Arc::from(format!("{path}: expected /#/dns/host:port")));
            };
            let id = path.take(3);
            return match self.dns_source(&id, host_port, None) {
                Ok((discovery, _)) => Resolution::Bound(BoundName {
                    has_endpoints: !discovery.current().is_empty(),
                    id,
                    residual: path.drop_first(3),
                }),
                Err(reason) => Resolution::Fail(Arc::from(format!("{path}: {reason}"))),
            };
        }
        match self.named(path) {
            Some((n, discovery)) => Resolution::Bound(BoundName {
                id: path.take(n),
                residual: path.drop_first(n),
                has_endpoints: !discovery.current().is_empty(),
            }),
            None => Resolution::Unhandled,
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl fmt::Debug for DiscoveryNamer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryNamer")
            .field("named", &self.named.keys().collect::<Vec<_>>())
            .field("dns", &self.read_dns().len())
            .field("generation", &self.generation())
            .finish()
    }
}

// === NewLeafClient ===

/// Builds one [`Client`] per bound name (the router keeps it).
///
/// A leaf evicted beyond the leaf cap is built again when its name is used again, possibly while
/// requests still hold the evicted client, which holds the client name in the metrics registry.
/// Each build is therefore a later rebuild of a [`Succession`] (the template's, else this
/// router's own), so the new client takes the name over and the old one finishes its requests.
struct NewLeafClient {
    namer: Arc<DiscoveryNamer>,
    template: Arc<Template>,
    name_prefix: String,
    succession: Succession,
    builds: AtomicU64,
    /// Held from taking a build's number to claiming its name: two racing builds then claim in
    /// the order of their numbers, so neither finds a later rebuild's claim in its way.
    build_lock: std::sync::Mutex<()>,
}

impl NewLeafService for NewLeafClient {
    type Service = LeafClient;

    fn new_leaf(&self, leaf: &BoundName) -> LeafClient {
        let _guard = self.namer.runtime.enter();
        let built = self.namer.discovery(leaf).and_then(|(d, lease)| {
            // A panic while building leaves nothing behind this lock to repair.
            let _in_order = self
                .build_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = self.builds.fetch_add(1, Ordering::Relaxed);
            let client = (self.template)(d)
                .name_if_unset(|| format!("{}{}", self.name_prefix, leaf.id))
                .rebuild(self.succession, n)
                .with_route_hedging()
                .build::<Body>()
                .map_err(|e| e.to_string())?;
            Ok((client, lease))
        });
        match built {
            Ok((client, lease)) => LeafClient::Ready {
                client,
                _lease: lease,
            },
            Err(reason) => {
                tracing::warn!(%leaf, %reason, "cannot build the client of a bound name");
                let text = format!("cannot build the client for {leaf}: {reason}");
                let value = RouteError::InvalidConfig { what: text }.l5d_err();
                LeafClient::Failed(value)
            }
        }
    }
}

/// One bound name's client, or why it could not be built (answered as 500 with `l5d-err`).
///
/// `Failed` is small and rare; boxing `Ready` would add an allocation to every copy of a client.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum LeafClient {
    /// The client, and for a `/#/dns` name the lease that keeps its source running.
    Ready {
        client: Client<Body>,
        _lease: Option<Arc<DnsLease>>,
    },
    Failed(http::HeaderValue),
}

impl Service<http::Request<Body>> for LeafClient {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = LeafFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            LeafClient::Ready { client, .. } => client.poll_ready(cx).map_err(Into::into),
            LeafClient::Failed(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            // The client's future is held in place: no box to map its error.
            LeafClient::Ready { client, .. } => LeafFuture::Ready {
                fut: client.call(req),
            },
            LeafClient::Failed(reason) => LeafFuture::Failed {
                rsp: Some(error_response(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    reason.clone(),
                )),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a bound name's client (or its build error's answer).
    #[project = LeafFutureProj]
    enum LeafFuture {
        Ready { #[pin] fut: crate::client::ResponseFuture },
        Failed { rsp: Option<http::Response<Body>> },
    }
}

impl Future for LeafFuture {
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LeafFutureProj::Ready { fut } => fut.poll(cx).map_err(Into::into),
            LeafFutureProj::Failed { rsp } => match rsp.take() {
                Some(rsp) => Poll::Ready(Ok(rsp)),
                None => Poll::Ready(Err("leaf future polled after completion".into())),
            },
        }
    }
}
