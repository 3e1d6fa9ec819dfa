#![allow(clippy::unwrap_used)]

use super::*;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use mesh_balance::HealthState;
use std::sync::atomic::AtomicU16;
use tower::ServiceExt;

/// An endpoint whose status the test sets.
fn endpoint(
    status: Arc<AtomicU16>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Empty<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<Response<Empty<Bytes>>, std::convert::Infallible>,
    > + Send,
> + Clone {
    tower::service_fn(move |_req: Request<()>| {
        let s = status.load(Ordering::SeqCst);
        async move {
            let mut rsp = Response::new(Empty::new());
            *rsp.status_mut() = StatusCode::from_u16(s).unwrap();
            Ok(rsp)
        }
    })
}

/// A gRPC endpoint whose answer's head looks fine and whose trailers carry `status`.
fn trailers_only_status(
    status: &'static str,
) -> impl tower::Service<
    Request<()>,
    Response = Response<
        impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Unpin,
    >,
    Error = std::convert::Infallible,
    Future = impl std::future::Future + Send,
> + Clone {
    tower::service_fn(move |_req: Request<()>| async move {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut rsp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        rsp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        Ok::<_, std::convert::Infallible>(rsp)
    })
}

/// Lets the breaker task run (the paused clock auto-advances only when all tasks are idle).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A breaker over an [`endpoint`], as the helpers below take it.
trait EndpointBreaker:
    tower::Service<
        Request<()>,
        Response = Response<ClassifyBody<Empty<Bytes>, Report>>,
        Error = BoxError,
    > + Clone
{
}

impl<S> EndpointBreaker for S where
    S: tower::Service<
            Request<()>,
            Response = Response<ClassifyBody<Empty<Bytes>, Report>>,
            Error = BoxError,
        > + Clone
{
}

async fn send<S: EndpointBreaker>(svc: &S, n: usize) {
    for _ in 0..n {
        let rsp = svc.clone().oneshot(Request::new(())).await.unwrap();
        // Read the body to its end, as a caller would.
        rsp.into_body().collect().await.unwrap();
    }
    settle().await;
}

/// Sends `n` requests back to back without letting the breaker task run (no yield between them).
fn send_without_yielding<S: EndpointBreaker>(svc: &S, n: usize) {
    for _ in 0..n {
        let mut s = svc.clone();
        let fut = s.call(Request::new(()));
        futures_util::FutureExt::now_or_never(fut).unwrap().unwrap();
    }
}

/// A breaker over an endpoint answering `status`, whose channel to its task holds one message
/// (the rest of `config` as given), and its stats.
fn one_message_channel(
    status: u16,
    config: BreakerConfig,
    health: Health,
) -> (impl EndpointBreaker, BreakerStats) {
    let layer = Breaker::layer(BreakerConfig {
        channel_capacity: 1,
        ..config
    });
    let stats = layer.stats();
    let svc = layer.layer(endpoint(Arc::new(AtomicU16::new(status))), health);
    (svc, stats)
}

#[tokio::test(start_paused = true)]
async fn opens_after_seven_consecutive_failures_probes_and_restores() {
    let status = Arc::new(AtomicU16::new(500));
    let health = Health::new();
    let config = BreakerConfig {
        success_rate: None,
        ..Default::default()
    };
    let layer = Breaker::layer(config);
    let stats = layer.stats();
    let svc = layer.layer(endpoint(status.clone()), health.clone());

    send(&svc, 6).await;
    assert_eq!(
        health.state(),
        HealthState::Available,
        "6 failures do not trip"
    );
    send(&svc, 1).await;
    assert_eq!(health.state(), HealthState::Ejected);
    assert_eq!(stats.ejections(), 1);

    // Jitter 0.5: the first ejection lasts between 0.5 s and 1 s.
    tokio::time::sleep(Duration::from_millis(490)).await;
    settle().await;
    assert_eq!(health.state(), HealthState::Ejected);
    tokio::time::sleep(Duration::from_millis(520)).await;
    settle().await;
    assert_eq!(health.state(), HealthState::Probing);

    // The balancer hands out exactly one probe; it succeeds.
    assert!(health.try_acquire_probe());
    status.store(200, Ordering::SeqCst);
    send(&svc, 1).await;
    assert_eq!(health.state(), HealthState::Available);
    assert_eq!(stats.restorations(), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_probe_ejects_again_for_longer() {
    let status = Arc::new(AtomicU16::new(503));
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        success_rate: None,
        ..Default::default()
    });
    let stats = layer.stats();
    // As a tower::Layer in a ServiceBuilder.
    let svc = tower::ServiceBuilder::new()
        .layer(layer.with_health(health.clone()))
        .service(endpoint(status.clone()));
    send(&svc, 7).await;
    assert_eq!(health.state(), HealthState::Ejected);
    tokio::time::sleep(Duration::from_millis(1010)).await;
    settle().await;
    assert_eq!(health.state(), HealthState::Probing);
    send(&svc, 1).await; // the probe fails
    assert_eq!(health.state(), HealthState::Ejected);
    assert_eq!((stats.ejections(), stats.failed_probes()), (2, 1));
    // The second ejection lasts between 1 s and 2 s.
    tokio::time::sleep(Duration::from_millis(990)).await;
    settle().await;
    assert_eq!(health.state(), HealthState::Ejected);
    tokio::time::sleep(Duration::from_millis(1020)).await;
    settle().await;
    assert_eq!(health.state(), HealthState::Probing);
    // Outcomes of requests that were in flight during the ejection were discarded; the probe
    // decides.
    status.store(200, Ordering::SeqCst);
    send(&svc, 1).await;
    assert_eq!(health.state(), HealthState::Available);
}

#[tokio::test(start_paused = true)]
async fn success_rate_trips_before_consecutive_failures() {
    let status = Arc::new(AtomicU16::new(200));
    let health = Health::new();
    let svc =
        Breaker::layer(BreakerConfig::default()).layer(endpoint(status.clone()), health.clone());
    // Alternate: never 7 in a row, but 50 % success, one request every 200 ms. The rate is judged
    // from 1 s on: at the 6th outcome (t = 1 s, 3/6 successes).
    let mut tripped_at = None;
    for i in 0..10 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        status.store(if i % 2 == 0 { 200 } else { 500 }, Ordering::SeqCst);
        send(&svc, 1).await;
        if health.state() != HealthState::Available {
            tripped_at = Some(i);
            break;
        }
    }
    assert_eq!(tripped_at, Some(5));
    assert_eq!(health.state(), HealthState::Ejected);
}

/// An endpoint where `failing` of every 20 calls answer 503 in 1 ms and the others 200 in 10 ms:
/// fast failures, slower successes, as in the resilience bench's `random-503-10pct`.
fn fast_failures(
    failing: usize,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Empty<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<Response<Empty<Bytes>>, std::convert::Infallible>,
    > + Send,
> + Clone {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tower::service_fn(move |_req: Request<()>| {
        let fail = calls.fetch_add(1, Ordering::SeqCst) % 20 < failing;
        async move {
            let (wait, status) = if fail {
                (1, StatusCode::SERVICE_UNAVAILABLE)
            } else {
                (10, StatusCode::OK)
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let mut rsp = Response::new(Empty::new());
            *rsp.status_mut() = status;
            Ok(rsp)
        }
    })
}

/// Sends batches of 20 concurrent requests (each batch lasts 10 ms) for up to `limit` of
/// (paused) time or until the endpoint is ejected; returns when it was ejected, if it was.
async fn batches<S>(svc: &S, health: &Health, limit: Duration) -> Option<Duration>
where
    S: tower::Service<
            Request<()>,
            Response = Response<ClassifyBody<Empty<Bytes>, Report>>,
            Error = BoxError,
        > + Clone,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        let calls = (0..20).map(|_| async {
            let rsp = svc.clone().oneshot(Request::new(())).await.unwrap();
            rsp.into_body().collect().await.unwrap();
        });
        futures_util::future::join_all(calls).await;
        settle().await;
        if health.state() != HealthState::Available {
            return Some(start.elapsed());
        }
    }
    None
}

#[tokio::test(start_paused = true)]
async fn fast_failures_at_ten_percent_do_not_eject_a_healthy_endpoint() {
    // 2 of 20 calls fail in 1 ms, 18 succeed in 10 ms: the first outcomes of each batch are the
    // failures, so the first 5 outcomes hold 2 failures (0.6 < 0.8) although the endpoint's
    // success rate is 0.9. Judging after 5 outcomes ejected it; the minimum observation time
    // lets the slower successes arrive first.
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig::default());
    let stats = layer.stats();
    let svc = layer.layer(fast_failures(2), health.clone());
    let ejected = batches(&svc, &health, Duration::from_secs(3)).await;
    assert_eq!(ejected, None, "a 90 % healthy endpoint was ejected");
    assert_eq!(stats.ejections(), 0);
}

#[tokio::test(start_paused = true)]
async fn fast_failures_at_fifty_percent_still_eject_within_the_window() {
    // The consecutive-failures rule off, so that the success-rate rule is the one that trips (10
    // fast failures in a row would trip it first).
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 0,
        ..Default::default()
    });
    let stats = layer.stats();
    let svc = layer.layer(fast_failures(10), health.clone());
    let ejected = batches(&svc, &health, Duration::from_secs(10))
        .await
        .expect("a 50 % failing endpoint was not ejected within the 10 s window");
    // Not before the minimum observation time (1 s), and at the first failure after it.
    assert!(
        ejected >= Duration::from_secs(1) && ejected < Duration::from_millis(1100),
        "ejected after {ejected:?}"
    );
    assert_eq!(stats.ejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_status_in_trailers_is_reported_at_the_end_of_the_body() {
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 2,
        success_rate: None,
        ..Default::default()
    });
    let grpc_endpoint = trailers_only_status("13");
    let svc = layer.layer(grpc_endpoint, health.clone());
    let grpc_req = || {
        let mut req = Request::new(());
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        req
    };
    // Two responses whose heads look fine; nobody reads the bodies: nothing is reported yet.
    let a = svc.clone().oneshot(grpc_req()).await.unwrap();
    let b = svc.clone().oneshot(grpc_req()).await.unwrap();
    settle().await;
    assert_eq!(health.state(), HealthState::Available);
    // Their trailers say INTERNAL: two failures.
    a.into_body().collect().await.unwrap();
    b.into_body().collect().await.unwrap();
    settle().await;
    assert_eq!(health.state(), HealthState::Ejected);
    // The same verdict reaches the balancer's cost (one classification for both).
    assert_eq!(health.take_late_failures(), 2);
}

#[tokio::test(start_paused = true)]
async fn full_channel_drops_and_counts_outcomes() {
    let (svc, stats) = one_message_channel(500, BreakerConfig::default(), Health::new());
    // The task does not run between these calls (no yield): only one outcome fits.
    send_without_yielding(&svc, 3);
    assert_eq!(stats.dropped(), 2);
}

#[test]
fn config_is_validated() {
    assert!(BreakerConfig::default().validate().is_ok());
    let bad = BreakerConfig {
        jitter: 1.5,
        ..Default::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "jitter 1.5 must be in 0.0..=1.0"
    );
    let bad = BreakerConfig {
        max_backoff: Duration::from_millis(10),
        ..Default::default()
    };
    assert!(bad.validate().is_err());
    let bad = BreakerConfig {
        success_rate: Some(SuccessRate {
            min_observation: Duration::from_secs(11),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        BreakerConfigError::MinObservation {
            min_observation: Duration::from_secs(11),
            window: Duration::from_secs(10),
        }
    );
}

#[tokio::test(start_paused = true)]
async fn mesh_made_responses_are_not_the_endpoints_failures() {
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 1,
        success_rate: None,
        ..Default::default()
    });
    let capped = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(
            crate::error::Error::ConcurrencyCapReached(1).to_response::<Empty<Bytes>>(false),
        )
    });
    let svc = layer.layer(capped, health.clone());
    send(&svc, 3).await;
    assert_eq!(health.state(), HealthState::Available);
}

#[tokio::test(start_paused = true)]
async fn success_rate_is_judged_when_the_observation_time_ends_without_new_outcomes() {
    // 5 failures at once (fewer than 7 in a row), then silence, as when the balancer stops
    // choosing a failing endpoint: the window is judged when its minimum observation time ends.
    let status = Arc::new(AtomicU16::new(503));
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig::default());
    let stats = layer.stats();
    let svc = layer.layer(endpoint(status), health.clone());
    send(&svc, 5).await;
    tokio::time::sleep(Duration::from_millis(990)).await;
    settle().await;
    assert_eq!(
        health.state(),
        HealthState::Available,
        "observed for 990 ms"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    settle().await;
    assert_eq!(health.state(), HealthState::Ejected);
    assert_eq!(stats.ejections(), 1);
}

// === every outcome seen, probes never lost, refused endpoints back fast ===

#[tokio::test(start_paused = true)]
async fn a_timed_out_request_counts_as_a_failure() {
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 3,
        success_rate: None,
        ..Default::default()
    });
    let hung = tower::service_fn(|_req: Request<()>| async {
        std::future::pending::<()>().await;
        Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let svc = layer.layer(hung, health.clone());
    for _ in 0..3 {
        let mut req = Request::new(());
        let timeout = Duration::from_millis(50);
        req.extensions_mut().insert(crate::retry::AttemptDeadline(
            tokio::time::Instant::now() + timeout,
        ));
        let r = tokio::time::timeout(timeout, svc.clone().oneshot(req)).await;
        assert!(r.is_err(), "timed out");
    }
    settle().await;
    assert_eq!(
        health.state(),
        HealthState::Ejected,
        "three timeouts trip it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_cancelled_before_its_timeout_is_no_verdict() {
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 1,
        success_rate: None,
        ..Default::default()
    });
    let hung = tower::service_fn(|_req: Request<()>| async {
        std::future::pending::<()>().await;
        Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let svc = layer.layer(hung, health.clone());
    let mut req = Request::new(());
    req.extensions_mut().insert(crate::retry::AttemptDeadline(
        tokio::time::Instant::now() + Duration::from_secs(10),
    ));
    let r = tokio::time::timeout(Duration::from_millis(50), svc.clone().oneshot(req)).await;
    assert!(r.is_err());
    settle().await;
    assert_eq!(health.state(), HealthState::Available);
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_body_is_dropped_before_its_trailers_still_decides() {
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 1,
        success_rate: None,
        ..Default::default()
    });
    let status = Arc::new(AtomicU16::new(500));
    let failing = layer.layer(endpoint(status.clone()), health.clone());
    // A gRPC endpoint whose body streams and never ends on its own.
    let grpc = tower::service_fn(|_req: Request<()>| async {
        let frames =
            futures_util::stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>();
        let mut rsp = Response::new(StreamBody::new(frames));
        rsp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        Ok::<_, std::convert::Infallible>(rsp)
    });
    // One failure ejects; the same task must then see the probe's verdict, so the probe goes
    // through a breaker wrapping the same channel: reuse the layer's service for both.
    let svc = Breaker {
        inner: grpc,
        report: failing.report.clone(),
        inspect: failing.inspect,
        start: None,
    };
    send(&failing, 1).await;
    assert_eq!(health.state(), HealthState::Ejected);
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(health.state(), HealthState::Probing);
    assert!(
        health.try_acquire_probe(),
        "the balancer hands out the probe"
    );
    let mut req = Request::new(());
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let rsp = svc.clone().oneshot(req).await.unwrap();
    settle().await;
    assert_eq!(
        health.state(),
        HealthState::Probing,
        "the head decides nothing"
    );
    drop(rsp);
    settle().await;
    assert_eq!(
        health.state(),
        HealthState::Ejected,
        "dropping the body ends the stream: no grpc-status, a failed probe"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_answered_by_the_mesh_is_handed_back() {
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 1,
        success_rate: None,
        ..Default::default()
    });
    let capped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = capped.clone();
    let svc = layer.layer(
        tower::service_fn(move |_req: Request<()>| {
            let capped = c.load(Ordering::SeqCst);
            async move {
                Ok::<_, std::convert::Infallible>(if capped {
                    crate::error::Error::ConcurrencyCapReached(1).to_response::<Empty<Bytes>>(false)
                } else {
                    let mut rsp = Response::new(Empty::new());
                    *rsp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    rsp
                })
            }
        }),
        health.clone(),
    );
    send(&svc, 1).await;
    assert_eq!(health.state(), HealthState::Ejected);
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    capped.store(true, Ordering::SeqCst);
    assert!(health.try_acquire_probe());
    send(&svc, 1).await;
    assert!(
        health.try_acquire_probe(),
        "the cap's 503 is no verdict: the probe is handed back for another request"
    );
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_ejected_for_refused_connections_is_readmitted_within_a_second() {
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig::default());
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let u = up.clone();
    let svc = layer.layer(
        tower::service_fn(move |_req: Request<()>| {
            let up = u.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(Response::new(Empty::<Bytes>::new()))
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                }
            }
        }),
        health.clone(),
    );
    // Down for 30 s under steady traffic: requests go wherever the balancer (played here) allows.
    let drive = |svc: Breaker<_>, health: Health| async move {
        let may_send = match health.state() {
            HealthState::Available => true,
            HealthState::Probing => health.try_acquire_probe(),
            HealthState::Ejected => false,
        };
        if may_send {
            let _ = svc.oneshot(Request::new(())).await;
        }
        settle().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        drive(svc.clone(), health.clone()).await;
    }
    assert_ne!(health.state(), HealthState::Available);
    up.store(true, Ordering::SeqCst);
    let back = tokio::time::Instant::now();
    while health.state() != HealthState::Available {
        drive(svc.clone(), health.clone()).await;
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "still {:?} {:?} after it accepts again",
            health.state(),
            back.elapsed()
        );
    }
}

#[test]
fn a_breaker_made_outside_a_runtime_does_not_panic_and_starts_in_one() {
    let status = Arc::new(AtomicU16::new(500));
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        success_rate: None,
        ..Default::default()
    });
    // No runtime here: the task cannot be spawned yet.
    let svc = layer.layer(endpoint(status), health.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        send(&svc, 7).await;
        assert_eq!(
            health.state(),
            HealthState::Ejected,
            "the deferred task runs"
        );
    });
}

#[tokio::test(start_paused = true)]
async fn the_breaker_layer_is_a_plain_tower_layer() {
    let status = Arc::new(AtomicU16::new(200));
    let layer = Breaker::layer(BreakerConfig::default());
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(endpoint(status));
    send(&svc, 1).await;
}

#[tokio::test(start_paused = true)]
async fn successes_while_closed_are_counted_without_waking_the_task() {
    let (svc, stats) = one_message_channel(200, BreakerConfig::default(), Health::new());
    // Sent to the task, a second success would not fit the channel: none is sent.
    send_without_yielding(&svc, 50);
    assert_eq!(stats.dropped(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_success_the_task_never_hears_of_still_resets_the_consecutive_failures() {
    let status = Arc::new(AtomicU16::new(500));
    let health = Health::new();
    let layer = Breaker::layer(BreakerConfig {
        success_rate: None,
        ..Default::default()
    });
    let svc = layer.layer(endpoint(status.clone()), health.clone());
    send(&svc, 6).await;
    status.store(200, Ordering::SeqCst);
    send(&svc, 1).await;
    status.store(500, Ordering::SeqCst);
    send(&svc, 6).await;
    assert_eq!(
        health.state(),
        HealthState::Available,
        "6 failures, a success, 6 failures: never 7 in a row"
    );
    send(&svc, 1).await;
    assert_eq!(health.state(), HealthState::Ejected, "the 7th in a row");
}

#[tokio::test(start_paused = true)]
async fn failures_a_full_channel_drops_still_count_toward_the_trip() {
    let health = Health::new();
    let config = BreakerConfig {
        success_rate: None,
        ..Default::default()
    };
    let (svc, stats) = one_message_channel(500, config, health.clone());
    // Seven failures before the task runs: the channel holds one, the counts hold all seven.
    send_without_yielding(&svc, 7);
    assert_eq!(stats.dropped(), 6);
    settle().await;
    assert_eq!(health.state(), HealthState::Ejected);
}

#[tokio::test(start_paused = true)]
async fn a_route_s_classifier_decides_what_the_breaker_counts() {
    use crate::classify::{ClassifyOverride, Preset};
    let status = Arc::new(AtomicU16::new(500));
    let health = Health::new();
    let svc = Breaker::layer(BreakerConfig {
        consecutive_failures: 3,
        success_rate: None,
        ..Default::default()
    })
    .layer(endpoint(status), health.clone());
    // The route says every response is a success: 500s do not count against the endpoint.
    let all_successful = ClassifyOverride(Classifier::new(Preset::AllSuccessful).shared());
    for _ in 0..5 {
        let mut req = Request::new(());
        req.extensions_mut().insert(all_successful.clone());
        let rsp = svc.clone().oneshot(req).await.unwrap();
        rsp.into_body().collect().await.unwrap();
    }
    settle().await;
    assert_eq!(health.state(), HealthState::Available);
    // Without the route's classifier, the layer's (5xx fail) applies.
    send(&svc, 3).await;
    assert_eq!(health.state(), HealthState::Ejected);
}

#[tokio::test(start_paused = true)]
async fn a_route_s_classifier_also_judges_the_trailers_of_a_body_read_later() {
    use crate::classify::ClassifyOverride;
    /// Waits for the end of every body and calls whatever it finds there a success.
    #[derive(Debug)]
    struct TrailersAreFine;
    impl Classify for TrailersAreFine {
        fn classify_head(&self, _: RequestInfo, _: StatusCode, _: &HeaderMap) -> HeadClass {
            HeadClass::AwaitEos
        }
        fn classify_eos(&self, _: RequestInfo, _: Option<&HeaderMap>) -> Class {
            Class::Success
        }
        fn classify_error(&self, _: RequestInfo, _: ErrorKind) -> Class {
            Class::Failure
        }
    }
    let health = Health::new();
    // The layer's classifier passes every trailer; the route's (the default) reads gRPC statuses.
    let layer = Breaker::layer(BreakerConfig {
        consecutive_failures: 2,
        success_rate: None,
        ..Default::default()
    })
    .classify(Arc::new(TrailersAreFine));
    let grpc_endpoint = trailers_only_status("14");
    let svc = layer.layer(grpc_endpoint, health.clone());
    let route = ClassifyOverride(Classifier::default().shared());
    for _ in 0..2 {
        let mut req = Request::new(());
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        req.extensions_mut().insert(route.clone());
        let rsp = svc.clone().oneshot(req).await.unwrap();
        // The head leaves the class open; the trailers, read after the head was handed on, say
        // UNAVAILABLE: by the route's classifier, a failure.
        rsp.into_body().collect().await.unwrap();
    }
    settle().await;
    assert_eq!(health.state(), HealthState::Ejected);
}
