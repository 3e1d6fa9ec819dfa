//! The routed client through the facade: route table + dtab + per-request overrides over real
//! HTTP backends on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use meshwork::core::dtab::Dtab;
use meshwork::core::route::{Backend as RouteBackend, OverrideTrust, Route, RouteTable};
use meshwork::discovery::{Discovery, Endpoint};
use meshwork::routing::{RoutedClient, RoutedClientBuilder};
use support::{handler, init_tracing, Backend};
use tower::ServiceExt;

/// A backend whose body is `answer`.
async fn answering(name: &'static str, answer: &'static str) -> Backend {
    Backend::with_handler(
        name,
        handler(move |_, _| async move {
            http::Response::new(Full::new(Bytes::from_static(answer.as_bytes())))
        }),
    )
    .await
}

fn fixed(backend: &Backend) -> Discovery {
    Discovery::fixed([Endpoint::new(backend.addr)]).unwrap()
}

/// Routes: host `split` → 50/50 between `/svc/world` and `/svc/world-v2`; host `ghost` →
/// `/svc/ghost` (bound to nothing); host `world` → `/svc/<host>`. Other hosts match no route.
fn table() -> RouteTable {
    RouteTable::new(vec![
        Route::builder("split")
            .host("split")
            .weighted(RouteBackend::Name("/svc/world".parse().unwrap()), 50)
            .weighted(RouteBackend::Name("/svc/world-v2".parse().unwrap()), 50)
            .build()
            .unwrap(),
        Route::builder("ghost")
            .host("ghost")
            .to(RouteBackend::Name("/svc/ghost".parse().unwrap()))
            .build()
            .unwrap(),
        Route::builder("default")
            .host("world")
            .to(RouteBackend::Host("/svc".parse().unwrap()))
            .build()
            .unwrap(),
    ])
    .unwrap()
}

fn routed(world: &Backend, v2: &Backend, trust: OverrideTrust) -> RoutedClient<Empty<Bytes>> {
    RoutedClientBuilder::new(table(), Dtab::parse("/svc => /srv;").unwrap())
        .service("/srv/world", fixed(world))
        .service("/srv/world-v2", fixed(v2))
        .override_trust(trust)
        .build::<Empty<Bytes>>()
        .unwrap()
}

fn get(host: &str) -> http::request::Builder {
    http::Request::get(format!("http://{host}/hello"))
}

/// Sends `req`, returns status, `l5d-err` and body text.
async fn send(
    client: &RoutedClient<Empty<Bytes>>,
    req: http::Request<Empty<Bytes>>,
) -> (http::StatusCode, Option<String>, String) {
    let rsp = tokio::time::timeout(Duration::from_secs(30), client.clone().oneshot(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = rsp.status();
    let err = rsp
        .headers()
        .get("l5d-err")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, err, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn host_routes_through_the_dtab_to_the_named_service() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    let client = routed(&world, &v2, OverrideTrust::Never);

    let (status, err, body) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    assert_eq!(
        (status, err, body.as_str()),
        (http::StatusCode::OK, None, "world")
    );
    assert_eq!(world.hits(), 1);
    assert_eq!(v2.hits(), 0);
}

#[tokio::test]
async fn trusted_l5d_dtab_overrides_one_request() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    let client = routed(&world, &v2, OverrideTrust::Always);

    let req = get("world")
        .header("l5d-dtab", "/srv/world => /srv/world-v2;")
        .body(Empty::new())
        .unwrap();
    let (status, _, body) = send(&client, req).await;
    assert_eq!((status, body.as_str()), (http::StatusCode::OK, "earth"));

    // The override was for that request only.
    let (_, _, body) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    assert_eq!(body, "world");
    assert_eq!((world.hits(), v2.hits()), (1, 1));
}

#[tokio::test]
async fn untrusted_l5d_dtab_is_ignored() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    let client = routed(&world, &v2, OverrideTrust::Never);

    let req = get("world")
        .header("l5d-dtab", "/srv/world => /srv/world-v2;")
        .body(Empty::new())
        .unwrap();
    let (status, err, body) = send(&client, req).await;
    assert_eq!(
        (status, err, body.as_str()),
        (http::StatusCode::OK, None, "world")
    );
    assert_eq!(v2.hits(), 0);
}

#[tokio::test]
async fn weighted_split_lands_within_five_percent() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    let client = routed(&world, &v2, OverrideTrust::Never);

    const N: usize = 2_000;
    let bodies: Vec<String> = futures_util::stream::iter(0..N)
        .map(|_| {
            let client = client.clone();
            async move {
                send(&client, get("split").body(Empty::new()).unwrap())
                    .await
                    .2
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let to_world = bodies.iter().filter(|b| *b == "world").count();
    let to_earth = bodies.iter().filter(|b| *b == "earth").count();
    assert_eq!(
        to_world + to_earth,
        N,
        "every request answered by one of the two"
    );
    // 50 % ± 5 % of 2,000 is 900..=1,100.
    assert!(
        (900..=1_100).contains(&to_world),
        "world got {to_world}, earth {to_earth}"
    );
    assert_eq!((world.hits(), v2.hits()), (to_world, to_earth));
}

#[tokio::test]
async fn malformed_trusted_override_is_a_400_with_l5d_err() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    let client = routed(&world, &v2, OverrideTrust::Always);

    let req = get("world")
        .header("l5d-dtab", "/srv/world /srv/world-v2")
        .body(Empty::new())
        .unwrap();
    let (status, err, _) = send(&client, req).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    let err = err.expect("l5d-err header");
    assert!(err.starts_with("invalid l5d-dtab at byte"), "{err}");
    assert_eq!((world.hits(), v2.hits()), (0, 0));
}

#[tokio::test]
async fn unknown_host_is_a_404_with_l5d_err() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    let client = routed(&world, &v2, OverrideTrust::Never);

    let (status, err, _) = send(&client, get("nowhere").body(Empty::new()).unwrap()).await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    let err = err.expect("l5d-err header");
    assert!(err.contains("no route matches GET nowhere/hello"), "{err}");
}

#[tokio::test]
async fn unbound_name_is_a_503_with_l5d_err() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    let client = routed(&world, &v2, OverrideTrust::Never);

    let (status, err, _) = send(&client, get("ghost").body(Empty::new()).unwrap()).await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    let err = err.expect("l5d-err header");
    assert!(err.contains("/svc/ghost"), "{err}");
}

#[tokio::test]
async fn inet_leaves_and_fallback_when_a_source_empties() {
    init_tracing();
    let world = answering("world", "world").await;
    let v2 = answering("world-v2", "earth").await;
    // `/srv/world` comes from a manual source; when it has no endpoints the alternation falls back
    // to v2's address, given as an `/$/inet` leaf.
    let (manual, updater) = Discovery::manual();
    let dtab = format!(
        "/svc => /srv; /srv/world => /srv/primary | /$/inet/127.0.0.1/{};",
        v2.addr.port()
    );
    let client = RoutedClientBuilder::new(table(), Dtab::parse(&dtab).unwrap())
        .service("/srv/primary", manual)
        .client(|discovery| meshwork::client(discovery).retry(None))
        .build::<Empty<Bytes>>()
        .unwrap();

    let (_, _, body) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    assert_eq!(body, "earth", "empty primary: the inet fallback answers");

    updater.update([Endpoint::new(world.addr)]).unwrap();
    let mut last = String::new();
    for _ in 0..500 {
        last = send(&client, get("world").body(Empty::new()).unwrap())
            .await
            .2;
        if last == "world" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        last, "world",
        "primary gained an endpoint: routed back to it"
    );
}

#[tokio::test]
async fn invalid_service_name_is_a_build_error() {
    let world = answering("world", "world").await;
    let err = RoutedClientBuilder::new(table(), Dtab::empty())
        .service("srv/world", fixed(&world))
        .build::<Empty<Bytes>>()
        .unwrap_err();
    assert!(err.to_string().contains("srv/world"), "{err}");

    let err = RoutedClientBuilder::new(table(), Dtab::empty())
        .service("/srv/world", fixed(&world))
        .service("/srv/world", fixed(&world))
        .build::<Empty<Bytes>>()
        .unwrap_err();
    assert!(err.to_string().contains("given twice"), "{err}");
}

#[tokio::test]
async fn dns_leaves_are_started_once_and_routed_to() {
    init_tracing();
    let world = answering("world", "world").await;
    // An IP literal resolves without a query; the nameserver (never asked) stays on loopback.
    let dtab = format!("/svc/world => /#/dns/127.0.0.1:{};", world.addr.port());
    let client = RoutedClientBuilder::new(table(), Dtab::parse(&dtab).unwrap())
        .dns(meshwork::discovery::DnsConfig {
            nameserver: Some("127.0.0.1:9".parse().unwrap()),
            ..Default::default()
        })
        .build::<Empty<Bytes>>()
        .unwrap();

    // The source resolves asynchronously: until its first set, the name is bound without
    // endpoints (503); once it arrives the namer's generation moves and requests go through.
    let mut answered = None;
    for _ in 0..500 {
        let (status, err, body) = send(&client, get("world").body(Empty::new()).unwrap()).await;
        if status == http::StatusCode::OK {
            answered = Some(body);
            break;
        }
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{err:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(answered.as_deref(), Some("world"));
    // The response future is `Send`: it can be driven by a spawned task.
    let spawned = tokio::spawn(
        client
            .clone()
            .oneshot(get("world").body(Empty::new()).unwrap()),
    );
    let rsp = spawned.await.unwrap().unwrap();
    assert_eq!(rsp.status(), http::StatusCode::OK);
    assert!(
        format!("{client:?}").contains("leaves: 1"),
        "one client for the dns leaf: {client:?}"
    );
}

// === route policies ===

use meshwork::core::route::{BudgetOverride, RoutePolicy, RouteRetry};

/// One route per host, each to `/svc/world` with its own policy; `/svc/world` is `backend`.
fn with_policies(
    backend: &Backend,
    routes: Vec<(&'static str, RoutePolicy)>,
) -> RoutedClient<Empty<Bytes>> {
    let routes = routes
        .into_iter()
        .map(|(host, policy)| {
            Route::builder(host)
                .host(host)
                .to(RouteBackend::Name("/svc/world".parse().unwrap()))
                .policy(policy)
                .build()
                .unwrap()
        })
        .collect();
    RoutedClientBuilder::new(
        RouteTable::new(routes).unwrap(),
        Dtab::parse("/svc => /srv;").unwrap(),
    )
    .service("/srv/world", fixed(backend))
    .build::<Empty<Bytes>>()
    .unwrap()
}

#[tokio::test]
async fn a_route_timeout_answers_504_with_l5d_err_after_the_timeout() {
    init_tracing();
    let slow = Backend::start("slow", Duration::from_secs(1), 200).await;
    let policy = RoutePolicy {
        timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let client = with_policies(&slow, vec![("world", policy)]);
    let started = tokio::time::Instant::now();
    let (status, l5d_err, _) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    let elapsed = started.elapsed();
    assert_eq!(status, http::StatusCode::GATEWAY_TIMEOUT);
    let l5d_err = l5d_err.expect("l5d-err");
    assert!(l5d_err.contains("deadline exceeded"), "{l5d_err}");
    assert!(elapsed >= Duration::from_millis(90), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(900),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_route_with_retries_off_is_not_retried() {
    init_tracing();
    let failing = Backend::start("failing", Duration::ZERO, 503).await;
    let off = RoutePolicy {
        retry: Some(RouteRetry {
            enabled: false,
            budget: None,
        }),
        ..Default::default()
    };
    let client = with_policies(
        &failing,
        vec![("off", off), ("world", RoutePolicy::default())],
    );
    let (status, _, _) = send(&client, get("off").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(failing.hits(), 1, "a route with retries off was retried");
    // The same backend through a route with the defaults is retried.
    let (status, _, _) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 503);
    assert!(failing.hits() > 2, "the default route was not retried");
}

#[tokio::test]
async fn a_routes_classification_decides_what_is_retried() {
    use meshwork::core::route::Classification;
    init_tracing();
    let failing = Backend::start("failing", Duration::ZERO, 503).await;
    let policy = |classification| RoutePolicy {
        classification: Some(classification),
        ..Default::default()
    };
    let client = with_policies(
        &failing,
        vec![
            ("strict", policy(Classification::NonRetryable5xx)),
            ("lenient", policy(Classification::AllSuccessful)),
            ("world", RoutePolicy::default()),
        ],
    );
    // 503 is a failure nothing retries under `NonRetryable5xx`, and a success under
    // `AllSuccessful`: neither route sends a second attempt.
    let (status, _, _) = send(&client, get("strict").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(failing.hits(), 1, "a non-retryable 503 was retried");
    let (status, _, _) = send(&client, get("lenient").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(failing.hits(), 2, "a 503 classified as success was retried");
    // The same backend through the default classification (retryable idempotent 5xx) is retried.
    let (status, _, _) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 503);
    assert!(failing.hits() > 3, "the default route was not retried");
}

#[tokio::test]
async fn a_route_budget_is_its_own() {
    init_tracing();
    let failing = Backend::start("failing", Duration::ZERO, 503).await;
    let empty_budget = RoutePolicy {
        retry: Some(RouteRetry {
            enabled: true,
            budget: Some(BudgetOverride {
                ttl: Duration::from_secs(10),
                min_retries_per_sec: 0,
                percent_can_retry: 0.0,
            }),
        }),
        ..Default::default()
    };
    let client = with_policies(
        &failing,
        vec![("stingy", empty_budget), ("world", RoutePolicy::default())],
    );
    let (status, _, _) = send(&client, get("stingy").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(
        failing.hits(),
        1,
        "retried although the route's budget is empty"
    );
    // The client's shared budget is untouched by that route's: the default route retries.
    let (status, _, _) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 503);
    assert!(failing.hits() > 2, "the default route was not retried");
}

#[tokio::test]
async fn a_route_hedging_policy_hedges_and_a_route_without_one_does_not() {
    use meshwork::core::route::HedgePolicy;
    init_tracing();
    // The first request ever stalls for 2 s; every later one answers at once.
    let backend = Backend::with_handler(
        "stall-first",
        handler(|_, n| async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            http::Response::new(Full::new(Bytes::from_static(b"ok")))
        }),
    )
    .await;
    let hedged = RoutePolicy {
        hedge: Some(HedgePolicy {
            delay: Some(Duration::from_millis(50)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let client = with_policies(
        &backend,
        vec![("hedged", hedged), ("world", RoutePolicy::default())],
    );
    let started = tokio::time::Instant::now();
    let (status, _, _) = send(&client, get("hedged").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "not hedged: answered after {:?}",
        started.elapsed()
    );
    assert_eq!(backend.hits(), 2, "one hedge");
    let (status, _, _) = send(&client, get("world").body(Empty::new()).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        backend.hits(),
        3,
        "the route without hedging sent one request"
    );
}

/// Leaf clients evicted beyond the leaf cap are built again when their name is used again, and
/// requests racing on an evicted leaf may each build one while another build still holds the
/// client name in the shared metrics registry: every build takes the name over (as a later
/// rebuild of the same succession) instead of failing with a name clash and answering 500, with
/// or without a reload succession in the template.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaves_rebuilt_after_eviction_while_another_build_holds_the_name_serve() {
    use meshwork::core::metrics::{Succession, Telemetry};
    use meshwork::core::route::RouterConfig;
    use meshwork::core::trace::Tracing;

    init_tracing();
    let a = answering("a", "a").await;
    let b = answering("b", "b").await;
    for with_succession in [false, true] {
        let telemetry = Telemetry::new(Default::default(), Tracing::disabled()).unwrap();
        let succession = Succession::new();
        let table = RouteTable::new(vec![Route::builder("by-host")
            .to(RouteBackend::Host("/svc".parse().unwrap()))
            .build()
            .unwrap()])
        .unwrap();
        let client = RoutedClientBuilder::new(table, Dtab::parse("/svc => /srv;").unwrap())
            .service("/srv/a", fixed(&a))
            .service("/srv/b", fixed(&b))
            .router(RouterConfig {
                max_leaf_services: 1,
                ..Default::default()
            })
            .client(move |d| {
                let b = meshwork::client(d).telemetry(telemetry.clone());
                if with_succession {
                    b.succession(succession)
                } else {
                    b
                }
            })
            .build::<Empty<Bytes>>()
            .unwrap();
        // Eight callers alternate between the two names: each request evicts the other leaf.
        let callers: Vec<_> = (0..8)
            .map(|caller| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    for i in 0..40 {
                        let host = if (caller + i) % 2 == 0 { "a" } else { "b" };
                        let req = get(host).body(Empty::new()).unwrap();
                        let (status, err, body) = send(&client, req).await;
                        if status != http::StatusCode::OK || body != host {
                            failures.push(format!("{host}: {status} {err:?} {body:?}"));
                        }
                    }
                    failures
                })
            })
            .collect();
        for caller in callers {
            let failures = caller.await.unwrap();
            assert!(
                failures.is_empty(),
                "with_succession = {with_succession}: {} failed, first {:?}",
                failures.len(),
                failures.first()
            );
        }
    }
}
