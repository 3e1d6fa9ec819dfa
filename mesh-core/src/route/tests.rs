#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request};

use super::*;
use crate::dtab::{BoundName, Dtab, InetNamer, Namer, Path, Resolution};

fn req(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn name(s: &str) -> Backend {
    Backend::Name(s.parse().unwrap())
}

#[test]
fn first_matching_route_wins_in_declaration_order() {
    let table = RouteTable::new(vec![
        Route::builder("canary")
            .host("world")
            .header("x-canary", "1")
            .to(name("/svc/canary"))
            .build()
            .unwrap(),
        Route::builder("api")
            .host_suffix("example.com")
            .path_prefix("/api/")
            .method(Method::GET)
            .to(name("/svc/api"))
            .build()
            .unwrap(),
        Route::builder("exact")
            .path("/health")
            .to(name("/svc/h"))
            .build()
            .unwrap(),
        Route::builder("regex")
            .path_regex("/users/[0-9]+")
            .header_regex("x-tenant", "t-[a-z]+")
            .to(name("/svc/users"))
            .build()
            .unwrap(),
        Route::builder("present")
            .header_present("x-debug")
            .to(name("/svc/debug"))
            .build()
            .unwrap(),
        Route::builder("world")
            .host_regex("WORLD(-v[0-9])?")
            .to(name("/svc/world"))
            .build()
            .unwrap(),
        Route::builder("default")
            .to(name("/svc/default"))
            .build()
            .unwrap(),
    ])
    .unwrap();
    let pick = |r: Request<()>| table.select(&r).unwrap().route().info().name.to_string();

    let mut r = req("http://world:8080/");
    r.headers_mut().insert("x-canary", "1".parse().unwrap());
    assert_eq!(pick(r), "canary");
    assert_eq!(pick(req("http://World/")), "world");
    assert_eq!(pick(req("http://world-v2/")), "world");
    assert_eq!(pick(req("http://a.example.com/api/x")), "api");
    assert_eq!(pick(req("http://example.com/api/x")), "api");
    assert_eq!(pick(req("http://badexample.com/api/x")), "default");
    let mut post = req("http://a.example.com/api/x");
    *post.method_mut() = Method::POST;
    assert_eq!(pick(post), "default");
    assert_eq!(pick(req("http://h/health")), "exact");
    assert_eq!(pick(req("http://h/health/x")), "default");
    let mut r = req("http://h/users/42");
    r.headers_mut().insert("x-tenant", "t-abc".parse().unwrap());
    assert_eq!(pick(r), "regex");
    let mut r = req("http://h/users/42x");
    r.headers_mut().insert("x-tenant", "t-abc".parse().unwrap());
    assert_eq!(pick(r), "default");
    let mut r = req("/x");
    r.headers_mut().insert("x-debug", "".parse().unwrap());
    assert_eq!(pick(r), "present");
    // Host from the Host header when the URI has no authority.
    let mut r = req("/");
    r.headers_mut()
        .insert(http::header::HOST, "world:80".parse().unwrap());
    assert_eq!(pick(r), "world");
}

#[test]
fn invalid_routes_are_rejected_with_the_reason() {
    let e = Route::builder("r")
        .path_regex("(")
        .to(name("/a"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("invalid path regex \"(\""), "{e}");
    let e = Route::builder("r")
        .header("bad name", "v")
        .to(name("/a"))
        .build()
        .unwrap_err();
    assert!(matches!(e, RouteError::InvalidHeaderName { .. }));
    let e = Route::builder("r")
        .weighted(name("/a"), 0)
        .build()
        .unwrap_err();
    assert!(matches!(e, RouteError::NoBackends { .. }));
    let e = Route::builder("r").build().unwrap_err();
    assert!(matches!(e, RouteError::NoBackends { .. }));
    let r = || Route::builder("same").to(name("/a")).build().unwrap();
    let e = RouteTable::new(vec![r(), r()]).unwrap_err();
    assert!(matches!(e, RouteError::DuplicateRoute { .. }));
    let e = Route::builder("r")
        .to(name("/a"))
        .policy(RoutePolicy {
            hedge: Some(HedgePolicy {
                percentile: 1.5,
                ..Default::default()
            }),
            ..Default::default()
        })
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("hedge percentile"), "{e}");
}

fn split_counts(weights: &[u32], n: usize, seed: u64) -> Vec<usize> {
    let items: Vec<(usize, u32)> = weights.iter().copied().enumerate().collect();
    let split = WeightedSplit::new(items, seed).unwrap();
    let mut counts = vec![0; weights.len()];
    for _ in 0..n {
        counts[*split.pick()] += 1;
    }
    counts
}

#[test]
fn splits_are_exact_and_drain_weight_zero() {
    for seed in [0, 1, 42, u64::MAX] {
        let c = split_counts(&[1, 0, 1], 10_000, seed);
        assert_eq!(c[1], 0);
        assert!((c[0] as i64 - 5_000).abs() <= 5, "{c:?}");
        let c = split_counts(&[90, 10], 10_000, seed);
        assert!((c[0] as i64 - 9_000).abs() <= 5, "{c:?}");
        let c = split_counts(&[1, 2, 3, 4], 10_000, seed);
        for (i, expect) in [1_000, 2_000, 3_000, 4_000].iter().enumerate() {
            assert!((c[i] as i64 - expect).abs() <= 5, "{c:?}");
        }
    }
    assert!(WeightedSplit::new(vec![((), 0)], 0).is_none());
    // Same seed, same sequence; different seed, different sequence.
    let a = SplitSequence::new(7);
    let b = SplitSequence::new(7);
    let c = SplitSequence::new(8);
    let xs: Vec<f64> = (0..10).map(|_| a.next_unit()).collect();
    let ys: Vec<f64> = (0..10).map(|_| b.next_unit()).collect();
    let zs: Vec<f64> = (0..10).map(|_| c.next_unit()).collect();
    assert_eq!(xs, ys);
    assert_ne!(xs, zs);
    assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
}

/// A namer whose sources and generation the test controls.
#[derive(Default)]
struct SwitchNamer {
    up: Mutex<HashMap<String, bool>>,
    gen: AtomicU64,
    lookups: AtomicU64,
}

impl SwitchNamer {
    fn set(&self, name: &str, up: bool) {
        self.up.lock().unwrap().insert(name.to_owned(), up);
        self.gen.fetch_add(1, Ordering::SeqCst);
    }
}

impl Namer for SwitchNamer {
    fn lookup(&self, path: &Path) -> Resolution {
        if !path.starts_with(&["#", "sw"]) || path.len() < 3 {
            return InetNamer.lookup(path);
        }
        self.lookups.fetch_add(1, Ordering::SeqCst);
        match self.up.lock().unwrap().get(&*path.segments()[2]) {
            Some(&up) => Resolution::Bound(BoundName {
                id: path.take(3),
                residual: path.drop_first(3),
                has_endpoints: up,
            }),
            None => Resolution::Neg,
        }
    }

    fn generation(&self) -> u64 {
        self.gen.load(Ordering::SeqCst)
    }
}

fn routing(dtab: &str, namer: Arc<SwitchNamer>, trust: OverrideTrust) -> Routing {
    let table = RouteTable::new(vec![Route::builder("all")
        .to(Backend::Host("/svc".parse().unwrap()))
        .build()
        .unwrap()])
    .unwrap();
    Routing::new(
        table,
        Dtab::parse(dtab).unwrap(),
        namer,
        RouterConfig {
            overrides: trust,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn cached_delegation_follows_namer_generation_and_dtab_changes() {
    let namer = Arc::new(SwitchNamer::default());
    namer.set("a", true);
    namer.set("b", true);
    let r = routing(
        "/svc/world => /#/sw/a | /#/sw/b",
        namer.clone(),
        OverrideTrust::Never,
    );
    let bound = |r: &Routing| {
        r.route(&mut req("http://world/"))
            .map(|t| t.bound.to_string())
    };

    assert_eq!(bound(&r).unwrap(), "/#/sw/a");
    let after_first = namer.lookups.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(bound(&r).unwrap(), "/#/sw/a");
    }
    assert_eq!(
        namer.lookups.load(Ordering::SeqCst),
        after_first,
        "served from cache"
    );

    namer.set("a", false);
    assert_eq!(
        bound(&r).unwrap(),
        "/#/sw/b",
        "alt falls back once a has no endpoints"
    );
    namer.set("b", false);
    let e = bound(&r).unwrap_err();
    assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.to_string(), "cannot route to /svc/world: no endpoints");

    r.set_dtab(Dtab::parse("/svc => /$/inet/127.0.0.1/1").unwrap());
    let r2 = r.clone();
    let t = r2.route(&mut req("http://world/")).unwrap();
    assert_eq!(t.bound.id.to_string(), "/$/inet/127.0.0.1/1");
    assert_eq!(t.bound.residual.to_string(), "/world");
    assert_eq!(t.logical.to_string(), "/svc/world");
    assert_eq!(t.route_name(), "all");
}

#[test]
fn overrides_apply_only_when_trusted_and_travel_as_ctx() {
    #[derive(Clone)]
    struct Peer;
    impl AuthenticatedPeer for Peer {
        fn verified_identity(&self) -> Option<&str> {
            Some("spiffe://td/ns/a/sa/b")
        }
    }
    let namer = Arc::new(SwitchNamer::default());
    namer.set("v1", true);
    namer.set("v2", true);
    let dtab = "/svc/world => /#/sw/v1";
    let over = "/svc/world => /#/sw/v2";

    // Trusted: l5d-dtab applies, is removed, and becomes l5d-ctx-dtab.
    let r = routing(dtab, namer.clone(), OverrideTrust::with_extension::<Peer>());
    let mut q = req("http://world/");
    q.extensions_mut().insert(Peer);
    q.headers_mut().insert(L5D_DTAB, over.parse().unwrap());
    let t = r.route(&mut q).unwrap();
    assert_eq!(t.bound.to_string(), "/#/sw/v2");
    assert!(t.overridden);
    assert!(q.headers().get(L5D_DTAB).is_none());
    assert_eq!(q.headers()[L5D_CTX_DTAB], "/svc/world => /#/sw/v2");

    // ctx first, then l5d-dtab: the later l5d-dtab rule wins.
    let mut q = req("http://world/");
    q.extensions_mut().insert(Peer);
    q.headers_mut().insert(L5D_CTX_DTAB, over.parse().unwrap());
    q.headers_mut()
        .insert(L5D_DTAB, "/svc/world => /#/sw/v1".parse().unwrap());
    assert_eq!(r.route(&mut q).unwrap().bound.to_string(), "/#/sw/v1");
    assert_eq!(
        q.headers()[L5D_CTX_DTAB],
        "/svc/world => /#/sw/v2;/svc/world => /#/sw/v1"
    );

    // ctx alone is honoured and forwarded unchanged.
    let mut q = req("http://world/");
    q.extensions_mut().insert(Peer);
    q.headers_mut().insert(L5D_CTX_DTAB, over.parse().unwrap());
    assert_eq!(r.route(&mut q).unwrap().bound.to_string(), "/#/sw/v2");
    assert_eq!(q.headers()[L5D_CTX_DTAB], over);

    // Untrusted (no Peer extension): ignored and both headers stripped.
    let mut q = req("http://world/");
    q.headers_mut().insert(L5D_DTAB, over.parse().unwrap());
    q.headers_mut().insert(L5D_CTX_DTAB, over.parse().unwrap());
    let t = r.route(&mut q).unwrap();
    assert_eq!(t.bound.to_string(), "/#/sw/v1");
    assert!(!t.overridden);
    assert!(q.headers().get(L5D_DTAB).is_none());
    assert!(q.headers().get(L5D_CTX_DTAB).is_none());

    // Malformed and trusted: a precise error.
    let mut q = req("http://world/");
    q.extensions_mut().insert(Peer);
    q.headers_mut()
        .insert(L5D_DTAB, "/svc/world /srv".parse().unwrap());
    let e = r.route(&mut q).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid l5d-dtab at byte 11: expected '=>', found '/'"
    );
    assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(
        e.l5d_err(),
        "invalid l5d-dtab at byte 11: expected '=>', found '/'"
    );
}

/// A peer extension as a permissive server sets it: present, with or without a verified identity.
#[derive(Clone)]
struct MaybePeer(Option<&'static str>);

impl AuthenticatedPeer for MaybePeer {
    fn verified_identity(&self) -> Option<&str> {
        self.0
    }
}

#[test]
fn overrides_from_an_unauthenticated_peer_are_stripped() {
    let namer = Arc::new(SwitchNamer::default());
    namer.set("v1", true);
    namer.set("v2", true);
    let r = routing(
        "/svc/world => /#/sw/v1",
        namer,
        OverrideTrust::with_extension::<MaybePeer>(),
    );
    let over = "/svc/world => /#/sw/v2";

    // A plaintext caller: the peer extension is there, but says "nobody".
    let mut q = req("http://world/");
    q.extensions_mut().insert(MaybePeer(None));
    q.headers_mut().insert(L5D_DTAB, over.parse().unwrap());
    q.headers_mut().insert(L5D_CTX_DTAB, over.parse().unwrap());
    let t = r.route(&mut q).unwrap();
    assert_eq!(t.bound.to_string(), "/#/sw/v1");
    assert!(!t.overridden);
    assert!(q.headers().get(L5D_DTAB).is_none());
    assert!(q.headers().get(L5D_CTX_DTAB).is_none());

    // A verified caller: honoured.
    let mut q = req("http://world/");
    q.extensions_mut()
        .insert(MaybePeer(Some("spiffe://td/ns/a/sa/b")));
    q.headers_mut().insert(L5D_DTAB, over.parse().unwrap());
    assert_eq!(r.route(&mut q).unwrap().bound.to_string(), "/#/sw/v2");
}

#[test]
fn overrides_bind_to_inet_addresses_only_inside_allowed_networks() {
    let namer = Arc::new(SwitchNamer::default());
    namer.set("v1", true);
    let table = || {
        RouteTable::new(vec![Route::builder("all")
            .to(Backend::Host("/svc".parse().unwrap()))
            .build()
            .unwrap()])
        .unwrap()
    };
    let dtab = "/svc/world => /#/sw/v1; /svc/known => /$/inet/127.0.0.1/4000";
    let make = |networks: Vec<IpNetwork>| {
        Routing::new(
            table(),
            Dtab::parse(dtab).unwrap(),
            namer.clone(),
            RouterConfig {
                overrides: OverrideTrust::Always,
                override_inet_networks: networks,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let route = |r: &Routing, host: &str, over: &str| {
        let mut q = req(&format!("http://{host}/"));
        q.headers_mut().insert(L5D_DTAB, over.parse().unwrap());
        r.route(&mut q).map(|t| t.bound.to_string())
    };

    // Off by default: any address an override names directly is refused with 403.
    let r = make(Vec::new());
    let e = route(&r, "world", "/svc/world => /$/inet/169.254.169.254/80").unwrap_err();
    assert!(matches!(e, RouteError::OverrideTargetDenied { .. }), "{e}");
    assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
    assert!(e.to_string().contains("/$/inet/169.254.169.254/80"), "{e}");
    // Indirectly too (a prefix rule that leads into /$/inet).
    let e = route(&r, "world", "/p => /$/inet/10.1.2.3; /svc/world => /p/80").unwrap_err();
    assert!(matches!(e, RouteError::OverrideTargetDenied { .. }), "{e}");
    let e = route(&r, "world", "/p => /$; /svc/world => /p/inet/10.1.2.3/80").unwrap_err();
    assert!(matches!(e, RouteError::OverrideTargetDenied { .. }), "{e}");
    // Overrides to names the base dtab defines are unaffected, even when they bind addresses.
    assert_eq!(
        route(&r, "world", "/svc/world => /svc/known").unwrap(),
        "/$/inet/127.0.0.1/4000"
    );

    // Allow-listed networks may be bound.
    let r = make(vec![
        "10.0.0.0/8".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ]);
    assert_eq!(
        route(&r, "world", "/svc/world => /$/inet/10.1.2.3/80").unwrap(),
        "/$/inet/10.1.2.3/80"
    );
    assert!(route(&r, "world", "/svc/world => /$/inet/11.1.2.3/80").is_err());
    assert_eq!(
        route(&r, "world", "/svc/world => /$/inet/fd00::1/80").unwrap(),
        "/$/inet/fd00::1/80"
    );
}

#[test]
fn ip_networks_parse_and_match() {
    let net: IpNetwork = "10.0.0.0/8".parse().unwrap();
    assert!(net.contains("10.255.0.1".parse().unwrap()));
    assert!(!net.contains("11.0.0.1".parse().unwrap()));
    assert!(!net.contains("::ffff:10.0.0.1".parse().unwrap()));
    let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("1.2.3.4".parse().unwrap()));
    let host: IpNetwork = "127.0.0.1".parse().unwrap();
    assert_eq!(host.to_string(), "127.0.0.1/32");
    assert!(host.contains("127.0.0.1".parse().unwrap()));
    assert!(!host.contains("127.0.0.2".parse().unwrap()));
    for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "::/129"] {
        assert!(bad.parse::<IpNetwork>().is_err(), "{bad}");
    }
}

#[test]
fn delegation_loops_and_missing_routes_are_errors() {
    let namer = Arc::new(SwitchNamer::default());
    let r = routing("/svc => /x; /x => /svc", namer, OverrideTrust::Always);
    let e = r.route(&mut req("http://world/")).unwrap_err();
    assert!(matches!(e, RouteError::Delegation { .. }), "{e}");
    assert_eq!(e.status(), http::StatusCode::BAD_GATEWAY);
    assert!(e.to_string().contains("depth limit of 100"), "{e}");

    let table = RouteTable::new(vec![Route::builder("only")
        .host("a")
        .to(name("/svc/a"))
        .build()
        .unwrap()])
    .unwrap();
    let r = Routing::new(table, Dtab::empty(), InetNamer, RouterConfig::default()).unwrap();
    let e = r.route(&mut req("http://b/x")).unwrap_err();
    assert_eq!(e.to_string(), "no route matches GET b/x");
    assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
    let bad = RouterConfig {
        max_leaf_services: 0,
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn dtab_unions_split_requests_by_weight() {
    let namer = Arc::new(SwitchNamer::default());
    namer.set("a", true);
    namer.set("b", true);
    let r = routing(
        "/svc/world => 0.9 * /#/sw/a & 0.1 * /#/sw/b",
        namer,
        OverrideTrust::Never,
    );
    let mut a = 0;
    for _ in 0..10_000 {
        if r.route(&mut req("http://world/"))
            .unwrap()
            .bound
            .to_string()
            == "/#/sw/a"
        {
            a += 1;
        }
    }
    assert!((a as i64 - 9_000).abs() <= 10, "{a}");
}

/// A leaf service that counts its copies and builds, answers with its leaf's name, and is ready
/// only while its gate is open (a closed gate keeps the waker, as a limiter would).
#[derive(Default)]
struct LeafCounts {
    builds: Mutex<HashMap<String, u64>>,
    clones: AtomicU64,
    drops: AtomicU64,
    gate_closed: std::sync::atomic::AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
    /// While set, `poll_ready` fails.
    broken: std::sync::atomic::AtomicBool,
}

impl LeafCounts {
    fn builds(&self, leaf: &str) -> u64 {
        self.builds.lock().unwrap().get(leaf).copied().unwrap_or(0)
    }

    fn open_gate(&self) {
        self.gate_closed.store(false, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

struct CountingLeaf {
    leaf: String,
    counts: Arc<LeafCounts>,
}

impl Clone for CountingLeaf {
    fn clone(&self) -> Self {
        self.counts.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            leaf: self.leaf.clone(),
            counts: self.counts.clone(),
        }
    }
}

impl Drop for CountingLeaf {
    fn drop(&mut self) {
        self.counts.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl tower::Service<Request<()>> for CountingLeaf {
    type Response = http::Response<String>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<String>, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.counts.broken.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(Err("leaf broken".into()));
        }
        if self.counts.gate_closed.load(Ordering::SeqCst) {
            *self.counts.waker.lock().unwrap() = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(self.leaf.clone())))
    }
}

/// A router over `/svc/NAME => /#/sw/NAME` whose leaf services are [`CountingLeaf`]s.
fn counting_router(
    leaves: &[&str],
    max_leaf_services: usize,
) -> (
    Router<impl NewLeafService<Service = CountingLeaf>>,
    Arc<LeafCounts>,
) {
    let namer = Arc::new(SwitchNamer::default());
    for leaf in leaves {
        namer.set(leaf, true);
    }
    let table = RouteTable::new(vec![Route::builder("all")
        .to(Backend::Host("/svc".parse().unwrap()))
        .build()
        .unwrap()])
    .unwrap();
    let config = RouterConfig {
        max_leaf_services,
        ..Default::default()
    };
    let routing = Routing::new(table, Dtab::parse("/svc => /#/sw").unwrap(), namer, config);
    let counts = Arc::new(LeafCounts::default());
    let for_leaves = counts.clone();
    let new_leaf = move |bound: &BoundName| {
        let leaf = bound.id.segments()[2].to_string();
        *for_leaves
            .builds
            .lock()
            .unwrap()
            .entry(leaf.clone())
            .or_default() += 1;
        CountingLeaf {
            leaf,
            counts: for_leaves.clone(),
        }
    };
    (Router::new(routing.unwrap(), new_leaf), counts)
}

async fn send<N>(router: &mut Router<N>, host: &str) -> String
where
    N: NewLeafService<Service = CountingLeaf>,
{
    use tower::{Service, ServiceExt};
    let uri = format!("http://{host}/");
    let rsp = router.ready().await.unwrap().call(req(&uri)).await.unwrap();
    rsp.into_body()
}

#[tokio::test]
async fn a_router_kept_per_connection_calls_its_leaf_in_place_without_a_copy_per_request() {
    let (mut router, counts) = counting_router(&["a"], 16);
    assert_eq!(send(&mut router, "a").await, "a");
    let after_first = counts.clones.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(send(&mut router, "a").await, "a");
    }
    // Before, every request cloned the shared leaf service (100 more copies).
    assert_eq!(counts.clones.load(Ordering::SeqCst), after_first);
    assert_eq!(counts.builds("a"), 1);

    // A clone of the router shares the leaf service but keeps its own copy.
    let mut other = router.clone();
    assert_eq!(send(&mut other, "a").await, "a");
    assert_eq!(counts.clones.load(Ordering::SeqCst), after_first + 1);
    assert_eq!(counts.builds("a"), 1);
}

/// A router over leaf `a` after one request; with the number of copies made so far.
async fn router_after_one_request() -> (
    Router<impl NewLeafService<Service = CountingLeaf>>,
    Arc<LeafCounts>,
    u64,
) {
    let (mut router, counts) = counting_router(&["a"], 16);
    assert_eq!(send(&mut router, "a").await, "a");
    let copies = counts.clones.load(Ordering::SeqCst);
    (router, counts, copies)
}

/// The router's next request is served through one fresh copy of the leaf service.
async fn next_request_takes_a_fresh_copy<N>(
    router: &mut Router<N>,
    counts: &LeafCounts,
    copies: u64,
) where
    N: NewLeafService<Service = CountingLeaf>,
{
    assert_eq!(send(router, "a").await, "a");
    assert_eq!(counts.clones.load(Ordering::SeqCst), copies + 1);
}

#[tokio::test]
async fn a_leaf_that_is_not_ready_is_waited_on_by_its_request_and_the_next_takes_a_fresh_copy() {
    use tower::Service;
    let (mut router, counts, copies) = router_after_one_request().await;

    counts.gate_closed.store(true, Ordering::SeqCst);
    let waiting = tokio::spawn({
        let fut = router.call(req("http://a/"));
        async move { fut.await.unwrap().into_body() }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "the leaf is not ready");
    // The request waits with its own waker: opening the gate wakes it.
    counts.open_gate();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
    assert_eq!(answered.unwrap().unwrap(), "a");
    // The copy went with the waiting request; the next request takes a fresh one.
    next_request_takes_a_fresh_copy(&mut router, &counts, copies).await;
}

#[tokio::test]
async fn a_caller_that_gives_up_on_a_leaf_that_is_not_ready_takes_its_copy_along() {
    use tower::Service;
    let (mut router, counts, copies) = router_after_one_request().await;
    counts.gate_closed.store(true, Ordering::SeqCst);
    let drops = counts.drops.load(Ordering::SeqCst);
    // The caller drops the waiting request: the copy it waited on goes with it.
    let given_up = router.call(req("http://a/"));
    drop(given_up);
    assert_eq!(counts.drops.load(Ordering::SeqCst), drops + 1);
    // The router still serves, through a fresh copy, once the leaf is ready again.
    counts.open_gate();
    next_request_takes_a_fresh_copy(&mut router, &counts, copies).await;
}

#[tokio::test]
async fn a_router_s_copy_of_a_leaf_goes_when_the_shared_leaves_let_it_go() {
    let (mut first, counts) = counting_router(&["a", "b"], 1);
    let mut second = first.clone();
    assert_eq!(send(&mut first, "a").await, "a");
    assert_eq!(counts.builds("a"), 1);
    // One leaf service at most: `b` takes `a`'s place in the shared set.
    assert_eq!(send(&mut second, "b").await, "b");
    // `first` must not keep calling its copy of the `a` the router let go of: it builds `a`
    // anew, as a router without copies would.
    assert_eq!(send(&mut first, "a").await, "a");
    assert_eq!(counts.builds("a"), 2);
    // Once every copy is gone, so is every leaf service.
    drop((first, second));
    let made = counts.builds("a") + counts.builds("b") + counts.clones.load(Ordering::SeqCst);
    assert_eq!(counts.drops.load(Ordering::SeqCst), made);
}

#[tokio::test]
async fn a_leaf_that_fails_readiness_fails_its_request_and_the_next_takes_a_fresh_copy() {
    use tower::Service;
    let (mut router, counts, copies) = router_after_one_request().await;
    counts.broken.store(true, Ordering::SeqCst);
    let error = router.call(req("http://a/")).await.unwrap_err();
    assert_eq!(error.to_string(), "leaf broken");
    counts.broken.store(false, Ordering::SeqCst);
    next_request_takes_a_fresh_copy(&mut router, &counts, copies).await;
}
