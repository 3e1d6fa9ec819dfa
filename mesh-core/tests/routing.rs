//! Routing end to end over real sockets: the seed's hello → world scenario, per-request dtab
//! overrides, trust, malformed overrides, and weighted splits through the router.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::dtab::{BoundName, Dtab, InetNamer};
use mesh_core::route::{
    Backend, BoxError, NewLeafService, OverrideTrust, Route, RouteTable, RouteTarget, Router,
    RouterConfig, Routing, L5D_CTX_DTAB, L5D_DTAB, L5D_ERR,
};
use tower::{service_fn, Layer, Service, ServiceExt};

type Body = BoxBody<Bytes, hyper::Error>;
type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Serves `handler` with hyper-util's auto (HTTP/1 + HTTP/2) builder on 127.0.0.1:0.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(addr, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn header_or_none(req: &Request<Incoming>, name: &http::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned()
}

/// A world server: answers `<word> (<addr>)` and reports the override headers it received.
async fn world(word: &'static str) -> SocketAddr {
    serve(move |addr, req| async move {
        let mut rsp = Response::new(Full::from(format!("{word} ({addr})")));
        let ctx = header_or_none(&req, &L5D_CTX_DTAB);
        let dtab = header_or_none(&req, &L5D_DTAB);
        rsp.headers_mut()
            .insert("x-seen-ctx-dtab", HeaderValue::try_from(ctx).unwrap());
        rsp.headers_mut()
            .insert("x-seen-l5d-dtab", HeaderValue::try_from(dtab).unwrap());
        rsp
    })
    .await
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// The per-leaf service for the test: sends the request to the leaf's `/$/inet` address over a
/// hyper-util legacy client, keeping the logical Host. (In production the facade supplies a
/// balancer over per-endpoint services here.)
#[derive(Clone)]
struct InetLeaves {
    client: HttpClient,
    created: Arc<AtomicUsize>,
}

impl NewLeafService for InetLeaves {
    type Service = LeafSvc;

    fn new_leaf(&self, leaf: &BoundName) -> LeafSvc {
        self.created.fetch_add(1, Ordering::SeqCst);
        let addr = leaf.inet_addr();
        let client = self.client.clone();
        LeafSvc::new(service_fn(move |mut req: Request<Empty<Bytes>>| {
            let client = client.clone();
            async move {
                let addr = addr.ok_or("leaf is not an /$/inet address")?;
                if let Some(authority) = req.uri().authority().cloned() {
                    req.headers_mut()
                        .entry(http::header::HOST)
                        .or_insert(HeaderValue::from_str(authority.as_str())?);
                }
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                *req.uri_mut() = format!("http://{addr}{pq}").parse()?;
                let rsp = client.request(req).await?;
                Ok::<_, BoxError>(rsp.map(|b| b.boxed()))
            }
        }))
    }
}

fn leaf_service(client: HttpClient, created: Arc<AtomicUsize>) -> InetLeaves {
    InetLeaves { client, created }
}

fn dtab(hello: SocketAddr, world: SocketAddr, world_v2: SocketAddr) -> Dtab {
    Dtab::parse(&format!(
        "/srv/hello => /$/inet/{}/{};
         /srv/world => /$/inet/{}/{};
         /srv/world-v2 => /$/inet/{}/{};
         /host => /srv;
         /svc => /host;",
        hello.ip(),
        hello.port(),
        world.ip(),
        world.port(),
        world_v2.ip(),
        world_v2.port()
    ))
    .unwrap()
}

fn host_routes() -> RouteTable {
    RouteTable::new(vec![Route::builder("by-host")
        .to(Backend::Host("/svc".parse().unwrap()))
        .build()
        .unwrap()])
    .unwrap()
}

struct Mesh {
    /// Requests that reached hello.
    hello_calls: Arc<AtomicUsize>,
    /// Override headers hello saw on its last request: (l5d-dtab, l5d-ctx-dtab).
    hello_saw: Arc<Mutex<(String, String)>>,
    dtab: Dtab,
}

/// Starts world (v1), world-v2 and hello; hello calls world through its own router (inside the
/// mesh: overrides trusted) and forwards `l5d-ctx-dtab`, as a Linkerd 1 application does.
async fn start_mesh() -> Mesh {
    let world_v1 = world("world").await;
    let world_v2 = world("earth").await;
    let hello_calls = Arc::new(AtomicUsize::new(0));
    let hello_saw = Arc::new(Mutex::new((String::new(), String::new())));
    // The hello address is needed in the dtab before hello starts: its router is set just after.
    let outbound: Arc<OnceLock<IngressRouter>> = Arc::default();
    let hello = {
        let outbound = outbound.clone();
        let calls = hello_calls.clone();
        let saw = hello_saw.clone();
        serve(move |addr, req: Request<Incoming>| {
            let router = outbound.get().cloned().expect("hello's router is set");
            calls.fetch_add(1, Ordering::SeqCst);
            *saw.lock().unwrap() = (
                header_or_none(&req, &L5D_DTAB),
                header_or_none(&req, &L5D_CTX_DTAB),
            );
            async move {
                let mut out = Request::get("http://world/").body(Empty::new()).unwrap();
                if let Some(ctx) = req.headers().get(&L5D_CTX_DTAB) {
                    out.headers_mut().insert(L5D_CTX_DTAB, ctx.clone());
                }
                let rsp = router.oneshot(out).await.unwrap();
                let seen_ctx = rsp.headers()["x-seen-ctx-dtab"].clone();
                let seen_dtab = rsp.headers()["x-seen-l5d-dtab"].clone();
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                let text = format!("Hello ({addr}) {}", String::from_utf8_lossy(&body));
                let mut rsp = Response::new(Full::from(text));
                rsp.headers_mut().insert("x-world-seen-ctx-dtab", seen_ctx);
                rsp.headers_mut().insert("x-world-seen-l5d-dtab", seen_dtab);
                rsp
            }
        })
        .await
    };
    let dtab = dtab(hello, world_v1, world_v2);
    let routing = Routing::new(
        host_routes(),
        dtab.clone(),
        InetNamer,
        RouterConfig {
            overrides: OverrideTrust::Always,
            ..Default::default()
        },
    )
    .unwrap();
    let new_leaf = leaf_service(client(), Arc::default());
    assert!(outbound.set(routing.layer().layer(new_leaf)).is_ok());
    Mesh {
        hello_calls,
        hello_saw,
        dtab,
    }
}

type LeafSvc = tower::util::BoxCloneSyncService<Request<Empty<Bytes>>, Response<Body>, BoxError>;
type IngressRouter = Router<InetLeaves>;

/// The ingress in front of hello, with the given trust for overrides.
fn ingress(mesh: &Mesh, trust: OverrideTrust, created: Arc<AtomicUsize>) -> IngressRouter {
    let routing = Routing::new(
        host_routes(),
        mesh.dtab.clone(),
        InetNamer,
        RouterConfig {
            overrides: trust,
            ..Default::default()
        },
    )
    .unwrap();
    routing.layer().layer(leaf_service(client(), created))
}

async fn call(
    router: &mut IngressRouter,
    req: Request<Empty<Bytes>>,
) -> (StatusCode, http::HeaderMap, String) {
    let rsp = tokio::time::timeout(Duration::from_secs(30), async {
        router.ready().await.unwrap();
        router.call(req).await.unwrap()
    })
    .await
    .expect("request finished in time");
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn hello_request(override_dtab: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::get("http://hello/").body(Empty::new()).unwrap();
    if let Some(d) = override_dtab {
        req.headers_mut()
            .insert(L5D_DTAB, HeaderValue::from_str(d).unwrap());
    }
    req
}

const OVERRIDE: &str = "/host/world => /srv/world-v2;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_calls_world_through_the_router() {
    let mesh = start_mesh().await;
    let created = Arc::new(AtomicUsize::new(0));
    let mut ingress = ingress(&mesh, OverrideTrust::Never, created.clone());
    for _ in 0..3 {
        let (status, _, body) = call(&mut ingress, hello_request(None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("Hello (127.0.0.1:"), "{body}");
        assert!(body.contains(") world (127.0.0.1:"), "{body}");
    }
    assert_eq!(
        created.load(Ordering::SeqCst),
        1,
        "one service per leaf, kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_from_a_trusted_source_routes_the_call_graph_to_v2() {
    let mesh = start_mesh().await;
    let mut ingress = ingress(&mesh, OverrideTrust::Always, Arc::default());
    let (status, headers, body) = call(&mut ingress, hello_request(Some(OVERRIDE))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("Hello (127.0.0.1:"), "{body}");
    assert!(body.contains(") earth (127.0.0.1:"), "{body}");
    // hello got the override as context only; world-v2 got it too, forwarded by hello's router.
    let (dtab, ctx) = mesh.hello_saw.lock().unwrap().clone();
    assert_eq!(dtab, "none");
    assert_eq!(ctx, "/host/world => /srv/world-v2");
    assert_eq!(
        headers["x-world-seen-ctx-dtab"],
        "/host/world => /srv/world-v2"
    );
    assert_eq!(headers["x-world-seen-l5d-dtab"], "none");

    // The override is per request: the next request without it goes to v1.
    let (_, _, body) = call(&mut ingress, hello_request(None)).await;
    assert!(body.contains(") world (127.0.0.1:"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_from_an_untrusted_source_is_ignored_and_stripped() {
    let mesh = start_mesh().await;
    let mut ingress = ingress(&mesh, OverrideTrust::Never, Arc::default());
    let mut req = hello_request(Some(OVERRIDE));
    req.headers_mut().insert(
        L5D_CTX_DTAB,
        HeaderValue::from_static("/host/world => /srv/world-v2"),
    );
    let (status, headers, body) = call(&mut ingress, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(") world (127.0.0.1:"), "{body}");
    assert_eq!(
        *mesh.hello_saw.lock().unwrap(),
        ("none".to_owned(), "none".to_owned())
    );
    assert_eq!(headers["x-world-seen-ctx-dtab"], "none");
}

#[derive(Clone)]
struct MeshPeer;

impl mesh_core::route::AuthenticatedPeer for MeshPeer {
    fn verified_identity(&self) -> Option<&str> {
        Some("spiffe://test.mesh/ns/default/sa/hello")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_are_honoured_from_mesh_peers_only() {
    let mesh = start_mesh().await;
    let mut ingress = ingress(
        &mesh,
        OverrideTrust::with_extension::<MeshPeer>(),
        Arc::default(),
    );
    let mut req = hello_request(Some(OVERRIDE));
    req.extensions_mut().insert(MeshPeer);
    let (_, _, body) = call(&mut ingress, req).await;
    assert!(body.contains(") earth (127.0.0.1:"), "{body}");
    let (_, _, body) = call(&mut ingress, hello_request(Some(OVERRIDE))).await;
    assert!(body.contains(") world (127.0.0.1:"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_override_gets_400_with_l5d_err_and_is_not_forwarded() {
    let mesh = start_mesh().await;
    let mut ingress = ingress(&mesh, OverrideTrust::Always, Arc::default());
    let (status, headers, body) = call(
        &mut ingress,
        hello_request(Some("/host/world /srv/world-v2")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        headers[L5D_ERR],
        "invalid l5d-dtab at byte 12: expected '=>', found '/'"
    );
    assert_eq!(body, "");
    assert_eq!(mesh.hello_calls.load(Ordering::SeqCst), 0);
}

/// A leaf factory that records which leaf each request reached, in memory.
type Counts = Arc<Mutex<HashMap<String, usize>>>;

fn counting_router(
    routing: &Routing,
) -> (
    impl Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone,
    Counts,
    Arc<AtomicUsize>,
) {
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let created = Arc::new(AtomicUsize::new(0));
    let (c, n) = (counts.clone(), created.clone());
    let router = routing.layer().layer(move |leaf: &BoundName| {
        n.fetch_add(1, Ordering::SeqCst);
        let c = c.clone();
        let id = leaf.id.to_string();
        service_fn(move |req: Request<()>| {
            let target = req.extensions().get::<RouteTarget>().cloned();
            *c.lock().unwrap().entry(id.clone()).or_default() += 1;
            async move {
                let t = target.ok_or("no RouteTarget extension")?;
                Ok::<_, BoxError>(Response::new(t.route_name().to_owned()))
            }
        })
    });
    (router, counts, created)
}

async fn split_run(weights: (u32, u32), requests: usize, seed: u64) -> (usize, usize) {
    let table = RouteTable::seeded(
        vec![Route::builder("split")
            .weighted(Backend::Name("/svc/a".parse().unwrap()), weights.0)
            .weighted(Backend::Name("/svc/b".parse().unwrap()), weights.1)
            .build()
            .unwrap()],
        seed,
    )
    .unwrap();
    let dtab =
        Dtab::parse("/svc/a => /$/inet/127.0.0.1/1001; /svc/b => /$/inet/127.0.0.1/1002").unwrap();
    let routing = Routing::new(table, dtab, InetNamer, RouterConfig::default()).unwrap();
    let (mut router, counts, created) = counting_router(&routing);
    for _ in 0..requests {
        let rsp = router
            .ready()
            .await
            .unwrap()
            .call(Request::get("http://x/").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(rsp.body(), "split");
    }
    let counts = counts.lock().unwrap();
    assert!(created.load(Ordering::SeqCst) <= 2);
    (
        counts.get("/$/inet/127.0.0.1/1001").copied().unwrap_or(0),
        counts.get("/$/inet/127.0.0.1/1002").copied().unwrap_or(0),
    )
}

#[tokio::test]
async fn weighted_splits_land_within_two_percent_over_10000_requests() {
    for seed in [0, 3, 99] {
        let (a, b) = split_run((50, 50), 10_000, seed).await;
        assert_eq!(a + b, 10_000);
        assert!((4_800..=5_200).contains(&a), "50/50 gave {a}/{b}");
        let (a, b) = split_run((90, 10), 10_000, seed).await;
        assert!((8_800..=9_200).contains(&a), "90/10 gave {a}/{b}");
        assert!((800..=1_200).contains(&b), "90/10 gave {a}/{b}");
    }
}

#[tokio::test]
async fn weight_zero_drains_a_backend() {
    let (a, b) = split_run((1, 0), 2_000, 5).await;
    assert_eq!((a, b), (2_000, 0));
}

#[tokio::test]
async fn beyond_the_leaf_cap_a_leaf_is_built_once_not_per_request() {
    let table = RouteTable::new(vec![Route::builder("by-host")
        .to(Backend::Host("/svc".parse().unwrap()))
        .build()
        .unwrap()])
    .unwrap();
    let dtab = Dtab::parse(
        "/svc/a => /$/inet/127.0.0.1/1001; /svc/b => /$/inet/127.0.0.1/1002; \
         /svc/c => /$/inet/127.0.0.1/1003",
    )
    .unwrap();
    let config = RouterConfig {
        max_leaf_services: 2,
        ..Default::default()
    };
    let routing = Routing::new(table, dtab, InetNamer, config).unwrap();
    let (mut router, _counts, created) = counting_router(&routing);
    let mut send = |host: &'static str| {
        let req = Request::get(format!("http://{host}/")).body(()).unwrap();
        let fut = router.call(req);
        async move { fut.await.unwrap() }
    };
    send("a").await;
    send("b").await;
    // A third leaf, past the cap of 2, asked 100 times: built once.
    for _ in 0..100 {
        send("c").await;
    }
    assert_eq!(created.load(Ordering::SeqCst), 3, "services built");
}
