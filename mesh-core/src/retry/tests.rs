#![allow(clippy::unwrap_used)]

use super::*;
use crate::deadline::FixedLatency;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use tower::{service_fn, Layer, Service};

/// What a backend answers to its `n`th call (0-based).
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    Refused,
    Hang,
}

#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Backend {
    fn service(
        &self,
        answer: impl Fn(usize) -> Answer + Clone + Send + Sync + 'static,
    ) -> impl tower::Service<
        Request<ReplayBody<Full<Bytes>>>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Response<()>, BoxError>> + Send,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let this = this.clone();
            let answer = answer.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                this.bodies.lock().unwrap().push(body);
                match answer(n) {
                    Answer::Status(s) => {
                        let mut rsp = Response::new(());
                        *rsp.status_mut() = StatusCode::from_u16(s).unwrap();
                        Ok(rsp)
                    }
                    Answer::Refused => Err(BoxError::from(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    ))),
                    Answer::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(Response::new(()))
                    }
                }
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn budget(min_per_sec: u32, ratio: f64) -> Budget {
    Budget::new(BudgetConfig {
        min_per_sec,
        ratio,
        ..Default::default()
    })
    .unwrap()
}

fn get(body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_503_until_success_replaying_the_body() {
    let backend = Backend::default();
    let layer = Retry::layer(RetryConfig::default(), budget(10, 0.2));
    let stats = layer.stats();
    let svc = layer.layer(backend.service(|n| Answer::Status(if n < 2 { 503 } else { 200 })));
    let rsp = svc.oneshot(get(b"payload")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(backend.calls(), 3);
    assert_eq!(stats.retries(), 2);
    assert_eq!(stats.requests(), 1);
    assert_eq!(
        *backend.bodies.lock().unwrap(),
        vec![Bytes::from_static(b"payload"); 3]
    );
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_budget_is_spent() {
    let backend = Backend::default();
    let layer = Retry::layer(RetryConfig::default(), budget(0, 0.5));
    let stats = layer.stats();
    let svc = layer.layer(backend.service(|_| Answer::Status(503)));
    // First request deposits half a retry: not enough.
    let rsp = svc.clone().oneshot(get(b"")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (backend.calls(), stats.retries(), stats.budget_exhausted()),
        (1, 0, 1)
    );
    // The second completes one retry; after it the budget is empty again.
    let rsp = svc.oneshot(get(b"")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (backend.calls(), stats.retries(), stats.budget_exhausted()),
        (3, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn max_retries_bounds_a_request() {
    let backend = Backend::default();
    let config = RetryConfig {
        max_retries: 2,
        ..Default::default()
    };
    let layer = Retry::layer(config, budget(10, 0.2));
    let stats = layer.stats();
    let svc = layer.layer(backend.service(|_| Answer::Status(502)));
    let rsp = svc.oneshot(get(b"")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(backend.calls(), 3);
    assert_eq!(stats.limit_reached(), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_the_connection_was_refused() {
    let backend = Backend::default();
    let svc =
        Retry::layer(RetryConfig::default(), budget(10, 0.2)).layer(backend.service(|n| match n {
            0 => Answer::Refused,
            1 => Answer::Status(503),
            _ => Answer::Status(200),
        }));
    let mut post = get(b"form");
    *post.method_mut() = Method::POST;
    let rsp = svc.oneshot(post).await.unwrap();
    // Refused → retried; 503 on a POST → returned.
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn streaming_body_is_sent_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    type Chunks =
        StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;
    let backend = service_fn(move |req: Request<ReplayBody<Chunks>>| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ab");
            let mut rsp = Response::new(());
            *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(rsp)
        }
    });
    let layer = Retry::layer(RetryConfig::default(), budget(10, 0.2));
    let stats = layer.stats();
    // A body of unknown size whose second frame is not ready at once: it cannot be buffered
    // without waiting, so it goes once.
    let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"a")))]);
    let later = futures_util::stream::once(async {
        tokio::task::yield_now().await;
        Ok(Frame::data(Bytes::from_static(b"b")))
    });
    let frames = futures_util::StreamExt::boxed(futures_util::StreamExt::chain(first, later));
    let req = Request::new(StreamBody::new(frames));
    let rsp = layer.layer(backend).oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.not_replayable(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_retry_when_the_deadline_is_shorter_than_the_median_latency() {
    let backend = Backend::default();
    let layer =
        Retry::layer(RetryConfig::default(), budget(10, 0.2)).latency(Arc::new(FixedLatency {
            median: Some(Duration::from_millis(100)),
            p95: None,
        }));
    let stats = layer.stats();
    let svc = layer.layer(backend.service(|n| Answer::Status(if n == 0 { 503 } else { 200 })));
    let mut req = get(b"");
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(80)));
    let rsp = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stats.deadline_skipped(), 1);

    // With plenty of time the same failure is retried.
    let mut req = get(b"");
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_secs(5)));
    backend.calls.store(0, Ordering::SeqCst);
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(stats.retries(), 1);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_retries_a_hung_attempt() {
    let backend = Backend::default();
    let config = RetryConfig {
        per_try_timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let layer = Retry::layer(config, budget(10, 0.2));
    let stats = layer.stats();
    let svc = layer.layer(backend.service(|n| {
        if n == 0 {
            Answer::Hang
        } else {
            Answer::Status(200)
        }
    }));
    let start = tokio::time::Instant::now();
    let rsp = svc.oneshot(get(b"")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(stats.retries(), 1);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(225) && took <= Duration::from_millis(300),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_surfaces_as_an_error_when_not_retried() {
    let backend = Backend::default();
    let config = RetryConfig {
        per_try_timeout: Some(Duration::from_millis(200)),
        max_retries: 0,
        ..Default::default()
    };
    let svc = Retry::layer(config, budget(10, 0.2)).layer(backend.service(|_| Answer::Hang));
    let err = svc.oneshot(get(b"")).await.unwrap_err();
    assert_eq!(err.to_string(), "per-try timeout after 200ms");
}

#[test]
fn config_is_validated() {
    assert!(RetryConfig::default().validate().is_ok());
    let bad = RetryConfig {
        per_try_timeout: Some(Duration::ZERO),
        ..Default::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "per_try_timeout must be greater than zero, got 0ns"
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_extension_sends_once() {
    let backend = Backend::default();
    let layer = Retry::layer(RetryConfig::default(), budget(10, 0.2));
    let stats = layer.stats();
    let svc = layer.layer(backend.service(|_| Answer::Status(503)));
    let mut req = get(b"");
    req.extensions_mut().insert(NoRetry);
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((backend.calls(), stats.retries()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn route_classifier_overrides_the_layers() {
    use crate::classify::{ClassifyOverride, Preset};
    let backend = Backend::default();
    let svc = Retry::layer(RetryConfig::default(), budget(10, 0.2))
        .layer(backend.service(|n| Answer::Status(if n == 0 { 503 } else { 200 })));
    let mut req = get(b"");
    req.extensions_mut().insert(ClassifyOverride(
        Classifier::new(Preset::NonRetryable5xx).shared(),
    ));
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn mesh_made_responses_are_retried_only_when_safe_and_useful() {
    use crate::error::Error;
    // A full pending queue: not retried, even for GET.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let shed = service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let err = if n == 0 {
                Error::PendingQueueFull(8)
            } else {
                Error::ConcurrencyCapReached(1)
            };
            Ok::<_, Infallible>(err.to_response::<()>(false))
        }
    });
    let layer = Retry::layer(RetryConfig::default(), budget(10, 0.2));
    let svc = layer.layer(shed);
    let rsp = svc.clone().oneshot(get(b"")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // An endpoint at its cap never saw the request: retried, even for POST.
    let mut post = get(b"");
    *post.method_mut() = Method::POST;
    svc.oneshot(post).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2 + 3,
        "one call, then three retries"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_with_nothing_to_buffer_is_sent_from_call_and_its_retry_avoids_the_first_endpoint(
) {
    use crate::hedge::AvoidEndpoint;
    use std::net::SocketAddr;
    // Each attempt "goes to" endpoint n, records it as the balancer would, and reports which
    // endpoints the request's earlier attempts used.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::<Vec<SocketAddr>>::new()));
    let (c, s) = (calls.clone(), seen.clone());
    let backend = service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
        // Counted in `call`, not when the returned future is first polled.
        let n = c.fetch_add(1, Ordering::SeqCst);
        let avoid = AvoidEndpoint::of(&req);
        s.lock().unwrap().push(
            avoid
                .as_ref()
                .map(AvoidEndpoint::endpoints)
                .unwrap_or_default(),
        );
        if let Some(avoid) = avoid {
            avoid.record(SocketAddr::from(([127, 0, 0, 1], 1000 + n as u16)));
        }
        let status = if n == 0 { 503 } else { 200 };
        std::future::ready(Ok::<_, Infallible>(
            Response::builder().status(status).body(()).unwrap(),
        ))
    });
    let layer = Retry::layer(RetryConfig::default(), budget(10, 0.2));
    let stats = layer.stats();
    let mut svc = layer.layer(backend);
    svc.ready().await.unwrap();
    let fut = svc.call(get(b""));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the first attempt is sent in place, on the service made ready"
    );
    let rsp = fut.await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!((calls.load(Ordering::SeqCst), stats.retries()), (2, 1));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![vec![], vec![SocketAddr::from(([127, 0, 0, 1], 1000))]],
        "the retry carries the hint the first attempt recorded its endpoint in"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_is_not_retried_clones_no_service_and_a_retried_one_clones_one() {
    use crate::test_util::CountClones;
    let backend = Backend::default();
    let clones = Arc::new(AtomicUsize::new(0));
    let answer = |n| Answer::Status(if n == 10 { 503 } else { 200 });
    let inner = CountClones::new(backend.service(answer), clones.clone());
    let mut svc = Retry::layer(RetryConfig::default(), budget(10, 0.2)).layer(inner);
    let made = clones.load(Ordering::SeqCst);
    for _ in 0..10 {
        svc.ready().await.unwrap();
        let rsp = svc.call(get(b"")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
    }
    assert_eq!(
        clones.load(Ordering::SeqCst),
        made,
        "ten requests sent from call and never retried clone no service"
    );
    // The eleventh call fails: its retry goes through a clone of the layer's service.
    svc.ready().await.unwrap();
    let rsp = svc.call(get(b"")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(backend.calls(), 12);
    assert_eq!(
        clones.load(Ordering::SeqCst),
        made + 1,
        "one clone, for the retry"
    );
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_need_not_be_sync_for_the_response_future_to_be_send() {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let backend = Backend::default();
    // tower's boxed cloneable service is `Send` but not `Sync`.
    let inner = tower::util::BoxCloneService::new(
        backend.service(|n| Answer::Status(if n == 0 { 503 } else { 200 })),
    );
    let mut svc = Retry::layer(RetryConfig::default(), budget(10, 0.2)).layer(inner);
    svc.ready().await.unwrap();
    let rsp = assert_send(svc.call(get(b""))).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(backend.calls(), 2, "retried");
}
