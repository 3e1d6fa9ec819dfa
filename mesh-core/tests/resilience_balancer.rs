//! Breaker and balancer together over real sockets: one of three backends is killed; its breaker
//! ejects it, the balancer sends it nothing while it is ejected, and a probe restores it once it is
//! back.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_balance::{Balance, Config, Endpoint, Health, HealthState};
use mesh_core::breaker::{Breaker, BreakerConfig};
use mesh_core::retry::{Budget, BudgetConfig, ReplayBody, Retry, RetryConfig};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tower::discover::Change;
use tower::{Layer, ServiceExt};

type ReqBody = ReplayBody<Full<Bytes>>;

/// A backend that can be killed (listener and every connection closed) and started again.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start(addr: SocketAddr, hits: Arc<AtomicUsize>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = hits.clone();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    async fn kill(self) -> (SocketAddr, Arc<AtomicUsize>) {
        self.task.abort();
        let _ = self.task.await;
        (self.addr, self.hits)
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn killed_backend_is_ejected_gets_no_traffic_and_is_restored_by_a_probe() {
    let mut backends = Vec::new();
    for _ in 0..3 {
        let hits = Arc::new(AtomicUsize::new(0));
        backends.push(Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)), hits).await);
    }

    // One service per endpoint: its own connection pool, its breaker, and a count of what the
    // balancer sends it.
    let breaker = Breaker::layer(BreakerConfig {
        consecutive_failures: 3,
        success_rate: None,
        min_backoff: Duration::from_secs(3),
        max_backoff: Duration::from_secs(10),
        jitter: 0.0,
        ..Default::default()
    });
    let stats = breaker.stats();
    let mut healths = Vec::new();
    let mut sent = Vec::new();
    let mut changes = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let addr = b.addr;
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let client = Client::builder(TokioExecutor::new())
            .build_http::<ReqBody>()
            .map_response(|rsp: Response<Incoming>| rsp.map(BodyExt::boxed_unsync))
            .map_request(move |mut req: Request<ReqBody>| {
                *req.uri_mut() = uri.clone();
                req
            });
        let health = Health::new();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let endpoint =
            breaker
                .layer(client, health.clone())
                .map_request(move |req: Request<ReqBody>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    req
                });
        changes.push(Ok::<_, Infallible>(Change::Insert(
            i,
            Endpoint::new(endpoint).health(health.clone()),
        )));
        healths.push(health);
        sent.push(count);
    }
    let config = Config {
        // Keep a failed endpoint's cost near the others', so the balancer keeps choosing it until
        // the breaker acts (the breaker, not the cost, is under test here).
        failure_penalty: 1.0,
        ..Default::default()
    };
    let balance = Balance::builder(config)
        .spawn(futures_util::stream::iter(changes))
        .unwrap();
    let budget = Budget::new(BudgetConfig::default()).unwrap();
    let client = Retry::layer(
        RetryConfig {
            max_retries: 10,
            ..Default::default()
        },
        budget,
    )
    .layer(balance);
    let get = || {
        Request::get("http://service.test/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let call = |client: &_| {
        let client: &Retry<_> = client;
        let req = get();
        let svc = client.clone();
        async move {
            let rsp: Response<_> = svc.oneshot(req).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
        }
    };

    // Warm up: every endpoint serves.
    for _ in 0..30 {
        call(&client).await;
    }
    let victim = backends.pop().unwrap();
    assert!(victim.hits.load(Ordering::SeqCst) > 0);
    let (victim_addr, victim_hits) = victim.kill().await;
    let victim_health = healths[2].clone();

    // Requests keep succeeding (retries go elsewhere) while the breaker counts failures. They go
    // in concurrent batches: with requests pending on the healthy endpoints, the balancer's cost
    // keeps drawing the dead one too.
    for _ in 0..100 {
        if victim_health.state() != HealthState::Available {
            break;
        }
        futures_util::future::join_all((0..16).map(|_| call(&client))).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(victim_health.state(), HealthState::Ejected);
    assert_eq!(stats.ejections(), 1);

    // Ejected: the balancer sends it nothing (two of three available: no panic mode).
    let before = sent[2].load(Ordering::SeqCst);
    for _ in 0..30 {
        call(&client).await;
    }
    assert_eq!(
        victim_health.state(),
        HealthState::Ejected,
        "still within the 3 s ejection"
    );
    assert_eq!(
        sent[2].load(Ordering::SeqCst),
        before,
        "no traffic to an ejected endpoint"
    );

    // The backend comes back on the same address; after the backoff, one probe restores it.
    let _revived = Backend::start(victim_addr, victim_hits.clone()).await;
    let hits_before = victim_hits.load(Ordering::SeqCst);
    until("probing", || victim_health.state() != HealthState::Ejected).await;
    for _ in 0..100 {
        if victim_health.state() == HealthState::Available {
            break;
        }
        futures_util::future::join_all((0..16).map(|_| call(&client))).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until("restoration", || {
        victim_health.state() == HealthState::Available
    })
    .await;
    assert_eq!(stats.restorations(), 1);
    assert!(
        victim_hits.load(Ordering::SeqCst) > hits_before,
        "the probe reached the backend"
    );
    for h in &healths[..2] {
        assert_eq!(h.state(), HealthState::Available);
    }
}
