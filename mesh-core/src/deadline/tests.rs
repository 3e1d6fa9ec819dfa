#![allow(clippy::unwrap_used)]

use super::*;
use http::StatusCode;
use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use tower::{service_fn, Layer, ServiceExt};

/// What the inner service saw.
#[derive(Default)]
struct Seen {
    deadline: Mutex<Option<Deadline>>,
    headers: Mutex<Option<HeaderMap>>,
    called: AtomicBool,
}

fn backend(
    seen: Arc<Seen>,
    work: Duration,
) -> impl tower::Service<
    Request<()>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(move |req: Request<()>| {
        let seen = seen.clone();
        async move {
            seen.called.store(true, Ordering::SeqCst);
            *seen.deadline.lock().unwrap() = req.extensions().get::<Deadline>().copied();
            *seen.headers.lock().unwrap() = Some(req.headers().clone());
            tokio::time::sleep(work).await;
            Ok(Response::new("done".to_owned()))
        }
    })
}

fn req(headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut req = Request::new(());
    for (k, v) in headers {
        req.headers_mut()
            .insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    req
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_is_enforced_as_trailers_only_deadline_exceeded() {
    let seen = Arc::new(Seen::default());
    let stats = DeadlineStats::default();
    let svc = Deadlines::layer(DeadlineConfig::default(), stats.clone())
        .layer(backend(seen.clone(), Duration::from_secs(5)));
    let start = Instant::now();
    let rsp = svc
        .oneshot(req(&[
            ("grpc-timeout", "100m"),
            ("content-type", "application/grpc"),
        ]))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["grpc-status"], "4");
    assert_eq!(rsp.headers()["l5d-err"], "deadline exceeded after 100ms");
    assert_eq!(stats.exceeded(), 1);
    let sent = seen.headers.lock().unwrap().clone().unwrap();
    let forwarded = header::parse_grpc_timeout(sent["grpc-timeout"].as_bytes()).unwrap();
    assert!(forwarded <= Duration::from_millis(100), "{forwarded:?}");
}

#[tokio::test(start_paused = true)]
async fn earliest_deadline_wins_and_travels_as_extension() {
    let seen = Arc::new(Seen::default());
    let config = DeadlineConfig {
        route_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let svc = Deadlines::layer(config, DeadlineStats::default())
        .layer(backend(seen.clone(), Duration::from_millis(1)));
    let start = Instant::now();
    let rsp = svc
        .oneshot(req(&[
            ("grpc-timeout", "5S"),
            ("x-envoy-expected-rq-timeout-ms", "300"),
        ]))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let deadline = seen.deadline.lock().unwrap().unwrap();
    assert_eq!(deadline.at(), start + Duration::from_millis(300));
    let sent = seen.headers.lock().unwrap().clone().unwrap();
    assert_eq!(sent["x-envoy-expected-rq-timeout-ms"], "300");
    assert_eq!(
        header::parse_grpc_timeout(sent["grpc-timeout"].as_bytes()).unwrap(),
        Duration::from_millis(300)
    );
}

#[tokio::test(start_paused = true)]
async fn route_timeout_extension_overrides_config() {
    let seen = Arc::new(Seen::default());
    let config = DeadlineConfig {
        route_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let svc = Deadlines::layer(config, DeadlineStats::default())
        .layer(backend(seen.clone(), Duration::from_secs(1)));
    let mut r = req(&[]);
    r.extensions_mut()
        .insert(RouteTimeout(Duration::from_millis(250)));
    let rsp = svc.oneshot(r).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(rsp.headers()["l5d-err"], "deadline exceeded after 250ms");
    // No deadline header came in, and the request is not gRPC: none is invented.
    let sent = seen.headers.lock().unwrap().clone().unwrap();
    assert!(sent.is_empty(), "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn l5d_ctx_deadline_is_read_and_rewritten() {
    let seen = Arc::new(Seen::default());
    let svc = Deadlines::layer(DeadlineConfig::default(), DeadlineStats::default())
        .layer(backend(seen.clone(), Duration::from_millis(1)));
    let now = wall_now_ns();
    let value = format!("{} {}", now, now + 400_000_000);
    let mut r = req(&[]);
    r.headers_mut()
        .insert(L5D_CTX_DEADLINE, HeaderValue::try_from(value).unwrap());
    let start = Instant::now();
    svc.oneshot(r).await.unwrap();
    let deadline = seen.deadline.lock().unwrap().unwrap();
    let left = deadline.at() - start;
    // The wall clock moves on while the test runs; allow a generous margin below 400 ms.
    assert!(
        left <= Duration::from_millis(400) && left > Duration::from_millis(200),
        "{left:?}"
    );
    let sent = seen.headers.lock().unwrap().clone().unwrap();
    let (ts, dl) = header::parse_l5d_ctx_deadline(sent[L5D_CTX_DEADLINE].as_bytes()).unwrap();
    assert!(dl > ts && dl - ts <= 400_000_000);
}

#[tokio::test(start_paused = true)]
async fn expired_request_is_never_dispatched() {
    let seen = Arc::new(Seen::default());
    let stats = DeadlineStats::default();
    let svc = Deadlines::layer(DeadlineConfig::default(), stats.clone())
        .layer(backend(seen.clone(), Duration::from_millis(1)));
    let rsp = svc.oneshot(req(&[("grpc-timeout", "0n")])).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!seen.called.load(Ordering::SeqCst));
    assert_eq!(stats.expired_on_arrival(), 1);

    // An l5d-ctx-deadline in the past as well.
    let rsp = Deadlines::layer(DeadlineConfig::default(), stats.clone())
        .layer(backend(seen.clone(), Duration::from_millis(1)))
        .oneshot(req(&[("l5d-ctx-deadline", "1 2")]))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!seen.called.load(Ordering::SeqCst));
    assert_eq!(stats.expired_on_arrival(), 2);
}

#[tokio::test(start_paused = true)]
async fn malformed_headers_are_ignored_and_counted() {
    let seen = Arc::new(Seen::default());
    let stats = DeadlineStats::default();
    let svc = Deadlines::layer(DeadlineConfig::default(), stats.clone())
        .layer(backend(seen.clone(), Duration::from_millis(10)));
    let rsp = svc
        .oneshot(req(&[
            ("grpc-timeout", "123456789m"),
            ("l5d-ctx-deadline", "12"),
            ("x-envoy-expected-rq-timeout-ms", "soon"),
        ]))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.into_body(), "done");
    assert_eq!(stats.malformed(), 3);
    assert!(seen.deadline.lock().unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn headers_are_ignored_when_not_trusted() {
    let seen = Arc::new(Seen::default());
    let config = DeadlineConfig {
        read_headers: false,
        ..Default::default()
    };
    let rsp = Deadlines::layer(config, DeadlineStats::default())
        .layer(backend(seen.clone(), Duration::from_millis(200)))
        .oneshot(req(&[("grpc-timeout", "100m")]))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
}

#[test]
fn config_validates() {
    assert!(DeadlineConfig::default().validate().is_ok());
    let bad = DeadlineConfig {
        route_timeout: Some(Duration::ZERO),
        ..Default::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "route_timeout must be greater than zero, got 0ns"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_after_a_huge_timeout_does_not_overflow() {
    let deadline = Deadline::after(Duration::MAX);
    assert!(!deadline.is_expired());
    assert!(deadline.remaining() > Duration::from_secs(86_400 * 365));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_header_among_many_is_found_and_its_first_value_counts() {
    let seen = Arc::new(Seen::default());
    let svc = Deadlines::layer(DeadlineConfig::default(), DeadlineStats::default())
        .layer(backend(seen.clone(), Duration::from_millis(1)));
    let mut req = req(&[]);
    let headers = req.headers_mut();
    for i in 0..40 {
        headers.insert(
            HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
            HeaderValue::from_static("v"),
        );
    }
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    // Two values: the first is the one that counts (as `HeaderMap::get` reads it).
    headers.append(GRPC_TIMEOUT, HeaderValue::from_static("250m"));
    headers.append(GRPC_TIMEOUT, HeaderValue::from_static("5S"));
    headers.insert(
        HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
        HeaderValue::from_static("900"),
    );
    let start = Instant::now();
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let deadline = seen.deadline.lock().unwrap().unwrap();
    assert_eq!(deadline.at(), start + Duration::from_millis(250));
}

#[test]
fn a_deadline_is_judged_by_the_clock_not_by_a_shared_reading() {
    // Inside a scope the measuring layers share one, older, reading; a deadline must not.
    let _scope = crate::clock::Scope::enter();
    let shared = crate::clock::now();
    let deadline = Deadline::after(Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(3));
    assert_eq!(
        crate::clock::now(),
        shared,
        "the scope's reading has not moved"
    );
    assert!(deadline.is_expired(), "expired by the clock");
    assert_eq!(deadline.remaining(), Duration::ZERO);
    assert!(Deadline::after(Duration::ZERO).at() >= shared + Duration::from_millis(3));
}
