//! The facade client's resilience layers, on by default, against real backends on 127.0.0.1.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use meshwork::balance::HealthState;
use meshwork::discovery::{Discovery, Endpoint};
use support::{eventually, handler, init_tracing, status, Backend};

fn get() -> http::Request<Empty<Bytes>> {
    http::Request::get("/").body(Empty::new()).expect("request")
}

fn client_for(addrs: &[std::net::SocketAddr]) -> meshwork::Client<Empty<Bytes>> {
    let discovery = Discovery::fixed(addrs.iter().map(|a| Endpoint::new(*a))).expect("discovery");
    meshwork::client(discovery)
        .authority("svc.test")
        .build()
        .expect("client")
}

#[tokio::test]
async fn early_failures_are_retried_into_success() {
    init_tracing();
    let backend = Backend::with_handler(
        "flaky",
        handler(|_, n| async move { status(if n < 2 { 503 } else { 200 }) }),
    )
    .await;
    let client = client_for(&[backend.addr]);

    let rsp = client.request(get()).await.expect("response");
    assert_eq!(rsp.status(), 200);
    assert_eq!(backend.hits(), 3);
    assert_eq!(client.stats().retry.retries(), 2);
}

#[tokio::test]
async fn non_idempotent_requests_are_not_retried_after_reaching_the_server() {
    init_tracing();
    let backend = Backend::start("failing", Duration::ZERO, 503).await;
    let client = client_for(&[backend.addr]);
    let req = http::Request::post("/")
        .body(Empty::new())
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), 503);
    assert_eq!(backend.hits(), 1);
    assert_eq!(client.stats().retry.retries(), 0);
}

#[tokio::test]
async fn grpc_timeout_reaches_the_backend_reduced() {
    init_tracing();
    let seen = Arc::new(Mutex::new(None::<String>));
    let record = seen.clone();
    let backend = Backend::with_handler(
        "deadline",
        handler(move |req, _| {
            let value = req
                .headers()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            *record.lock().expect("lock") = value;
            async { status(200) }
        }),
    )
    .await;
    let client = client_for(&[backend.addr]);
    let req = http::Request::get("/")
        .header("grpc-timeout", "100m")
        .body(Empty::new())
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), 200);

    let value = seen
        .lock()
        .expect("lock")
        .clone()
        .expect("grpc-timeout sent");
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().expect("digits");
    let nanos = match unit {
        "H" => amount * 3_600_000_000_000,
        "M" => amount * 60_000_000_000,
        "S" => amount * 1_000_000_000,
        "m" => amount * 1_000_000,
        "u" => amount * 1_000,
        "n" => amount,
        other => panic!("unit {other} in {value}"),
    };
    assert!(nanos <= 100_000_000, "backend saw {value}");
    assert!(nanos > 0, "backend saw {value}");
}

#[tokio::test]
async fn a_hanging_backend_gets_504_at_the_deadline_and_sees_the_cancel() {
    init_tracing();
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let backend = Backend::with_handler(
        "hang",
        handler(move |_, _| {
            let guard = DropFlag(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                status(200)
            }
        }),
    )
    .await;
    let client = client_for(&[backend.addr]);
    let req = http::Request::get("/")
        .header("x-envoy-expected-rq-timeout-ms", "200")
        .body(Empty::new())
        .expect("request");
    let started = tokio::time::Instant::now();
    let rsp = client.request(req).await.expect("response");
    let waited = started.elapsed();
    assert_eq!(rsp.status(), 504);
    assert!(rsp.headers().contains_key("l5d-err"), "{:?}", rsp.headers());
    assert!(waited >= Duration::from_millis(190), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(
        eventually(Duration::from_secs(5), || cancelled.load(Ordering::SeqCst)).await,
        "the backend's handler was never cancelled"
    );
}

/// A caller that gives up drops its request through every layer: the backend sees the cancel,
/// and the endpoint's only concurrency slot is free for the next request (held, the next one
/// would be shed with a 503 at the cap).
#[tokio::test]
async fn a_caller_that_gives_up_frees_its_endpoints_slot_and_cancels_the_backend() {
    init_tracing();
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let backend = Backend::with_handler(
        "stall-first",
        handler(move |_, n| {
            let guard = (n == 0).then(|| DropFlag(flag.clone()));
            async move {
                if let Some(_guard) = guard {
                    std::future::pending::<()>().await;
                }
                status(200)
            }
        }),
    )
    .await;
    let discovery = Discovery::fixed([Endpoint::new(backend.addr)]).expect("discovery");
    let client: meshwork::Client<Empty<Bytes>> = meshwork::client(discovery)
        .authority("svc.test")
        .endpoint_concurrency(1)
        .build()
        .expect("client");
    let gave_up = tokio::time::timeout(Duration::from_millis(200), client.request(get())).await;
    assert!(
        gave_up.is_err(),
        "the stalled request answered: {gave_up:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || cancelled.load(Ordering::SeqCst)).await,
        "the backend's handler was never cancelled"
    );
    let rsp = tokio::time::timeout(Duration::from_secs(5), client.request(get()))
        .await
        .expect("the next request was not answered")
        .expect("response");
    assert_eq!(rsp.status(), 200, "{:?}", rsp.headers());
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_ejected_until_its_probe_succeeds() {
    init_tracing();
    let a = Backend::start("a", Duration::ZERO, 200).await;
    let b = Backend::start("b", Duration::ZERO, 200).await;
    let dead = Backend::start("dead", Duration::ZERO, 200).await;
    let dead_addr = dead.addr;
    // The balancer charges each failure to the dead endpoint's cost (150 ms, then 750 ms, ...), so
    // after two or three failures it stops choosing it and the default 7 consecutive failures
    // would take the cost's idle decay (seconds) to accumulate. Two consecutive failures keep the
    // test about the breaker's cycle (eject, probe, restore) rather than about that timing.
    let discovery =
        Discovery::fixed([a.addr, b.addr, dead_addr].map(Endpoint::new)).expect("discovery");
    let breaker = meshwork::core::breaker::BreakerConfig {
        consecutive_failures: 2,
        ..Default::default()
    };
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .breaker(Some(breaker))
        .build::<Empty<Bytes>>()
        .expect("client");
    for _ in 0..30 {
        client.request(get()).await.expect("response");
    }
    dead.kill_and_wait().await;

    // Connection failures are retried elsewhere: callers keep succeeding while the breaker counts
    // them. Concurrent batches make sure the dead endpoint keeps being tried until it is ejected.
    let ejected = |client: &meshwork::Client<Empty<Bytes>>| {
        client
            .endpoints()
            .iter()
            .any(|e| e.key == dead_addr && e.health != HealthState::Available)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ejected(&client) {
        assert!(tokio::time::Instant::now() < deadline, "never ejected");
        let batch: Vec<_> = (0..16)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.request(get()).await })
            })
            .collect();
        for task in batch {
            let rsp = task.await.expect("join").expect("response");
            assert_eq!(rsp.status(), 200);
        }
    }
    assert!(client.stats().breaker.ejections() >= 1);

    // While ejected, the endpoint gets nothing; bring it back on the same address, and after the
    // backoff (1 s, jittered) a probe finds it and restores it.
    let listener = tokio::net::TcpListener::bind(dead_addr)
        .await
        .expect("rebind");
    let revived = Backend::on(listener, "dead", handler(|_, _| async { status(200) }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rsp = client.request(get()).await.expect("response");
        rsp.into_body().collect().await.expect("body");
        if revived.hits() > 0 && !ejected(&client) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never restored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.stats().breaker.restorations() >= 1);
}

#[tokio::test]
async fn a_get_to_an_empty_set_is_not_retried_and_names_the_cause() {
    init_tracing();
    let (discovery, _updater) = Discovery::manual();
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .balance(meshwork::balance::Config {
            failfast_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .build::<Empty<Bytes>>()
        .expect("client");
    let start = tokio::time::Instant::now();
    let err = client.request(get()).await.expect_err("no endpoints");
    let took = start.elapsed();
    assert!(err.is_no_endpoints(), "{err}");
    assert!(err.to_string().contains("no endpoints"), "{err}");
    assert_eq!(
        client.stats().retry.retries(),
        0,
        "retrying cannot fill the set"
    );
    assert!(
        took < Duration::from_millis(900),
        "one failfast wait (300 ms), not four: {took:?}"
    );
}

#[tokio::test]
async fn hedging_does_not_inflate_the_retry_budget() {
    init_tracing();
    let backend = Backend::start("always-503", Duration::ZERO, 503).await;
    let discovery = Discovery::fixed([Endpoint::new(backend.addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .breaker(None)
        .budget(meshwork::core::retry::BudgetConfig {
            ratio: 0.2,
            min_per_sec: 0,
            ..Default::default()
        })
        .hedge(Some(meshwork::core::hedge::HedgeConfig::default()))
        .build::<Empty<Bytes>>()
        .expect("client");
    for _ in 0..100 {
        let rsp = client.request(get()).await.expect("a response");
        assert_eq!(rsp.status(), 503);
    }
    let retries = client.stats().retry.retries();
    assert!(
        retries <= 20,
        "20 % of 100 requests may be retried, hedging or not: {retries}"
    );
}
