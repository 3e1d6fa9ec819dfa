//! The resilience layers over real sockets: hyper 1 servers on 127.0.0.1:0 and hyper-util's legacy
//! client under the layers.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_balance::{Health, HealthState};
use mesh_core::breaker::{Breaker, BreakerConfig};
use mesh_core::classify::{default_error_kind, ErrorKind};
use mesh_core::deadline::{header, DeadlineConfig, DeadlineStats, Deadlines};
use mesh_core::retry::{Budget, BudgetConfig, Retry, RetryConfig};
use mesh_core::shed::{Shed, ShedConfig};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

type RspBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves `handler` on 127.0.0.1:0 (HTTP/1.1 and HTTP/2) until the test ends.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(b"body")));
    *rsp.status_mut() = StatusCode::from_u16(code).unwrap();
    rsp
}

/// hyper-util's legacy client, its response body boxed (the mesh's layers need `Default` bodies).
fn client<B>(
    http2: bool,
) -> impl tower::Service<
    Request<B>,
    Response = Response<RspBody>,
    Error = hyper_util::client::legacy::Error,
    Future = impl Future<Output = Result<Response<RspBody>, hyper_util::client::legacy::Error>> + Send,
> + Clone
       + Send
       + 'static
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<B>()
        .map_response(|rsp: Response<Incoming>| rsp.map(BodyExt::boxed_unsync))
}

fn get(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Polls `cond` every 10 ms for at most 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn budget(min_per_sec: u32, ratio: f64) -> Budget {
    Budget::new(BudgetConfig {
        min_per_sec,
        ratio,
        ..Default::default()
    })
    .unwrap()
}

/// A backend that answers 503 to its first `fail` requests, then 200; counts requests.
async fn flaky(fail: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let addr = serve(move |_req| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move { status(if n < fail { 503 } else { 200 }) }
    })
    .await;
    (addr, calls)
}

#[tokio::test]
async fn retries_hide_a_backend_failing_its_first_requests() {
    let (addr, calls) = flaky(2).await;
    let layer = Retry::layer(RetryConfig::default(), budget(10, 0.2));
    let stats = layer.stats();
    let svc = layer.layer(client(false));
    let rsp = svc.oneshot(get(addr)).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "body");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(stats.retries(), 2);
}

#[tokio::test]
async fn retries_stop_when_budget_is_spent() {
    let (addr, calls) = flaky(usize::MAX).await;
    let layer = Retry::layer(RetryConfig::default(), budget(0, 0.5));
    let stats = layer.stats();
    let svc = layer.layer(client(false));
    for _ in 0..4 {
        let rsp = svc.clone().oneshot(get(addr)).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // Four requests at 0.5 buy two retries, and not one more.
    assert_eq!(stats.retries(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(stats.budget_exhausted(), 4);
}

#[tokio::test]
async fn fractional_budget_is_exact() {
    let (addr, calls) = flaky(usize::MAX).await;
    let layer = Retry::layer(RetryConfig::default(), budget(0, 0.25));
    let stats = layer.stats();
    let svc = layer.layer(client(false));
    for _ in 0..3 {
        svc.clone().oneshot(get(addr)).await.unwrap();
    }
    assert_eq!(stats.retries(), 0, "3 × 0.25 < 1");
    svc.clone().oneshot(get(addr)).await.unwrap();
    assert_eq!(stats.retries(), 1, "4 × 0.25 = 1 exactly");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn grpc_timeout_reaches_the_backend_as_the_remaining_time() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let addr = serve(move |req| {
        *s.lock().unwrap() = req.headers().get("grpc-timeout").cloned();
        async { status(200) }
    })
    .await;
    let svc =
        Deadlines::layer(DeadlineConfig::default(), DeadlineStats::default()).layer(client(true));
    let mut req = get(addr);
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("100m"));
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let value = seen.lock().unwrap().clone().unwrap();
    let forwarded = header::parse_grpc_timeout(value.as_bytes()).unwrap();
    assert!(
        forwarded <= Duration::from_millis(100) && forwarded > Duration::ZERO,
        "{value:?}"
    );
}

/// Sets a flag when the server's handler future is dropped.
struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn hanging_backend_is_cancelled_at_the_deadline(http2: bool) {
    let cancelled = Arc::new(AtomicBool::new(false));
    let c = cancelled.clone();
    let addr = serve(move |_req| {
        let guard = DropGuard(c.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            status(200)
        }
    })
    .await;
    let config = DeadlineConfig {
        route_timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let stats = DeadlineStats::default();
    let svc = Deadlines::layer(config, stats.clone()).layer(client(http2));
    let rsp = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(get(addr)))
        .await
        .expect("the deadline answers, not the test's timeout")
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(rsp.headers()["l5d-err"], "deadline exceeded after 200ms");
    assert_eq!(stats.exceeded(), 1);
    eventually("the server's handler to be dropped", || {
        cancelled.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test]
async fn hanging_backend_gets_504_and_its_request_is_cancelled_http1() {
    hanging_backend_is_cancelled_at_the_deadline(false).await;
}

#[tokio::test]
async fn hanging_backend_gets_504_and_its_request_is_cancelled_http2() {
    hanging_backend_is_cancelled_at_the_deadline(true).await;
}

#[tokio::test]
async fn breaker_opens_after_seven_failures_probes_and_restores() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let addr = serve(move |_req| {
        let ok = h.load(Ordering::SeqCst);
        async move { status(if ok { 200 } else { 500 }) }
    })
    .await;
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
        success_rate: None,
        ..Default::default()
    });
    let stats = layer.stats();
    let svc = layer.layer(client(false), health.clone());
    for i in 0..7 {
        assert_eq!(health.state(), HealthState::Available, "before failure {i}");
        let rsp = svc.clone().oneshot(get(addr)).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // Let the breaker task catch up so the count above is exact.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("ejection", || health.state() != HealthState::Available).await;
    assert_eq!(stats.ejections(), 1);
    eventually("probing", || health.state() == HealthState::Probing).await;
    assert!(health.try_acquire_probe());
    healthy.store(true, Ordering::SeqCst);
    let rsp = svc.clone().oneshot(get(addr)).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    eventually("restoration", || health.state() == HealthState::Available).await;
    assert_eq!(stats.restorations(), 1);
}

#[tokio::test]
async fn shed_overflow_is_an_immediate_503_with_a_header() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (r, a) = (release.clone(), arrived.clone());
    let addr = serve(move |_req| {
        let (r, a) = (r.clone(), a.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            r.acquire().await.unwrap().forget();
            status(200)
        }
    })
    .await;
    let layer = Shed::layer(ShedConfig {
        max_pending: 1,
        max_in_flight: 1,
    });
    let stats = layer.stats();
    let svc = layer.layer(client(false));
    let in_flight = tokio::spawn(svc.clone().oneshot(get(addr)));
    eventually("the first request at the backend", || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    let queued = tokio::spawn(svc.clone().oneshot(get(addr)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rsp = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(get(addr)))
        .await
        .expect("shed at once, not queued")
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        rsp.headers()["l5d-err"],
        "load shed: pending queue full (1)"
    );
    assert_eq!(stats.pending_full(), 1);
    release.add_permits(2);
    assert_eq!(in_flight.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(queued.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(arrived.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refused_connections_are_recognised_as_never_sent() {
    // A port that was just free: bind, note, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = client::<Full<Bytes>>(false)
        .oneshot(get(addr))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(default_error_kind(&err), ErrorKind::Connect);
}

#[tokio::test]
async fn refused_post_is_retried_and_then_reported() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let layer = Retry::layer(RetryConfig::default(), budget(10, 0.2));
    let stats = layer.stats();
    let svc = layer.layer(client(false));
    let mut post = get(addr);
    *post.method_mut() = http::Method::POST;
    let err = svc.oneshot(post).await.unwrap_err();
    assert!(err.to_string().contains("client error (Connect)"), "{err}");
    // Refused = never sent: retried even for POST, up to max_retries.
    assert_eq!(stats.retries(), 3);
    assert_eq!(stats.limit_reached(), 1);
}
