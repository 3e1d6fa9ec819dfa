//! Per-request cost of the balancer itself: meshwork's `Balance` against tower's p2c, over 16
//! always-ready no-op endpoints, on a current-thread tokio runtime.
//!
//! Run with `cargo bench --bench overhead`. Groups: `balance/meshwork/16`, `balance/meshwork-load/16`
//! (every response carries a load report, so each request records one and compares three
//! candidates by expected completion time) and `balance/tower-p2c/16`;
//! `stack/noop`, `stack/meshwork/16` and `stack/tower/16` (below).
//! One iteration = `ready().await` + `call` + awaiting the response, on a handle (or balancer) owned by
//! the measuring loop, as a client task would own it. Both balancers track peak-EWMA load with the
//! same defaults (30 ms default RTT, 10 s decay): tower's through `PeakEwma` on each endpoint, ours
//! in its per-endpoint atomics. Setup (discovery, the first readiness) is outside the timed loop.
//!
//! The `stack` group measures whole stacks per HTTP request over 16 in-memory endpoints that answer
//! an empty 200 at once: `stack/noop` calls one such endpoint directly (the floor);
//! `stack/meshwork/16` is the facade client with every default layer (route metrics, deadline,
//! budgeted retry, shedding, P2C over peak-EWMA, per-endpoint breaker, concurrency cap and metrics)
//! over an in-memory [`ClientBuilder::transport`](meshwork::ClientBuilder::transport);
//! `stack/tower/16` is a `ServiceBuilder` of tower's concurrency limit, retry (a `TpsBudget` with
//! Finagle's defaults, 5xx retried), timeout, and p2c over `PeakEwma` behind the `Buffer` that
//! tower's retry needs to clone a shared balancer.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::stream;
use mesh_balance::{Classify, Config, Endpoint, LoadReport};
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{service_fn, Service, ServiceExt};

const ENDPOINTS: usize = 16;

fn noop(
) -> impl Service<(), Response = (), Error = Infallible, Future = Ready<Result<(), Infallible>>>
       + Clone
       + Send
       + Sync
       + 'static {
    service_fn(|_: ()| ready(Ok::<_, Infallible>(())))
}

fn bench_balance(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("balance");

    // meshwork: one handle per measuring loop, set filled through discovery before timing.
    let meshwork = rt.block_on(async {
        let inserts =
            (0..ENDPOINTS).map(|i| Ok::<_, Infallible>(Change::Insert(i, Endpoint::new(noop()))));
        let lb = mesh_balance::Balance::builder(Config::default())
            .spawn(stream::iter(inserts.collect::<Vec<_>>()))
            .unwrap();
        while lb.len() < ENDPOINTS {
            tokio::task::yield_now().await;
        }
        lb
    });
    group.bench_function(format!("meshwork/{ENDPOINTS}"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut lb = meshwork.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    lb.ready().await.unwrap().call(()).await.unwrap();
                }
                start.elapsed()
            }
        })
    });

    // meshwork with load reports: each endpoint answers with a report, which the classifier
    // hands to the balancer (as the HTTP classifier takes it from the response headers).
    let reporting = rt.block_on(async {
        let inserts = (0..ENDPOINTS).map(|i| {
            let report = LoadReport {
                in_flight: Some(i as u32 % 4),
                capacity: Some(8),
                service_time: Some(Duration::from_millis(10 + i as u64)),
                utilization: None,
            };
            let svc = service_fn(move |_: ()| ready(Ok::<_, Infallible>(Some(report))));
            Ok::<_, Infallible>(Change::Insert(i, Endpoint::new(svc)))
        });
        let lb = mesh_balance::Balance::builder(Config::default())
            .classify(TakeReport)
            .spawn(stream::iter(inserts.collect::<Vec<_>>()))
            .unwrap();
        while lb.len() < ENDPOINTS {
            tokio::task::yield_now().await;
        }
        lb
    });
    group.bench_function(format!("meshwork-load/{ENDPOINTS}"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut lb = reporting.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    lb.ready().await.unwrap().call(()).await.unwrap();
                }
                start.elapsed()
            }
        })
    });

    group.bench_function(format!("tower-p2c/{ENDPOINTS}"), |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let services: Vec<_> = (0..ENDPOINTS).map(|_| noop()).collect();
            let discover = PeakEwmaDiscover::new::<()>(
                ServiceList::new(services),
                Duration::from_millis(30),
                Duration::from_secs(10),
                CompleteOnResponse::default(),
            );
            let mut lb = tower::balance::p2c::Balance::new(discover);
            // Discovery and the first readiness, untimed.
            lb.ready().await.unwrap().call(()).await.unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                lb.ready().await.unwrap().call(()).await.unwrap();
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Errors are failures; the response is the endpoint's load report.
#[derive(Clone, Copy)]
struct TakeReport;

impl Classify<Option<LoadReport>, Infallible> for TakeReport {
    fn is_failure(&self, _: &Result<Option<LoadReport>, Infallible>) -> bool {
        false
    }

    fn take_load_report(
        &self,
        rsp: &mut Option<LoadReport>,
    ) -> Option<Result<LoadReport, mesh_balance::ReportError>> {
        rsp.take().map(Ok)
    }
}

type HttpRsp = http::Response<meshwork::Body>;

/// An in-memory endpoint: an empty 200 at once.
fn http_noop() -> impl Service<
    http::Request<meshwork::Body>,
    Response = HttpRsp,
    Error = Infallible,
    Future = Ready<Result<HttpRsp, Infallible>>,
> + Clone
       + Send
       + Sync
       + 'static {
    service_fn(|_: http::Request<meshwork::Body>| {
        ready(Ok::<_, Infallible>(http::Response::new(
            meshwork::Body::default(),
        )))
    })
}

fn get() -> http::Request<meshwork::Body> {
    http::Request::get("http://bench.svc/")
        .body(meshwork::Body::default())
        .unwrap()
}

/// tower's retry policy for the comparison: 5xx retried under a `TpsBudget`.
#[derive(Clone)]
struct RetryPolicy(std::sync::Arc<tower::retry::budget::TpsBudget>);

impl<E> tower::retry::Policy<http::Request<meshwork::Body>, HttpRsp, E> for RetryPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut http::Request<meshwork::Body>,
        result: &mut Result<HttpRsp, E>,
    ) -> Option<Self::Future> {
        use tower::retry::budget::Budget;
        match result {
            Ok(rsp) if !rsp.status().is_server_error() => {
                self.0.deposit();
                None
            }
            _ => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(
        &mut self,
        req: &http::Request<meshwork::Body>,
    ) -> Option<http::Request<meshwork::Body>> {
        // Bodiless requests: rebuilt from the head.
        let mut clone = http::Request::new(meshwork::Body::default());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

fn bench_stack(c: &mut Criterion) {
    use meshwork::discovery::{Discovery, Endpoint as DiscoveryEndpoint};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("stack");

    group.bench_function("noop", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut svc = http_noop();
            let start = Instant::now();
            for _ in 0..iters {
                let rsp = svc.ready().await.unwrap().call(get()).await.unwrap();
                std::hint::black_box(rsp);
            }
            start.elapsed()
        })
    });

    let client = rt.block_on(async {
        let endpoints = (0..ENDPOINTS as u16).map(|i| {
            DiscoveryEndpoint::new(std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + i)))
        });
        let client = meshwork::client(Discovery::fixed(endpoints).unwrap())
            .transport(|_| {
                tower::util::BoxCloneSyncService::new(
                    http_noop().map_err(meshwork::body::BoxError::from),
                )
            })
            .build::<meshwork::Body>()
            .unwrap();
        while client.endpoints().len() < ENDPOINTS {
            tokio::task::yield_now().await;
        }
        client
    });
    group.bench_function(format!("meshwork/{ENDPOINTS}"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut client = client.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let rsp = client.ready().await.unwrap().call(get()).await.unwrap();
                    std::hint::black_box(rsp);
                }
                start.elapsed()
            }
        })
    });

    group.bench_function(format!("tower/{ENDPOINTS}"), |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let services: Vec<_> = (0..ENDPOINTS).map(|_| http_noop()).collect();
            let discover = PeakEwmaDiscover::new::<http::Request<meshwork::Body>>(
                ServiceList::new(services),
                Duration::from_millis(30),
                Duration::from_secs(10),
                CompleteOnResponse::default(),
            );
            let budget = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 10, 0.2);
            let mut svc = tower::ServiceBuilder::new()
                .concurrency_limit(1024)
                .retry(RetryPolicy(std::sync::Arc::new(budget)))
                .timeout(Duration::from_secs(10))
                .buffer(1024)
                .service(tower::balance::p2c::Balance::new(discover));
            // Discovery and the first readiness, untimed.
            svc.ready().await.unwrap().call(get()).await.unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                let rsp = svc.ready().await.unwrap().call(get()).await.unwrap();
                std::hint::black_box(rsp);
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_balance, bench_stack);
criterion_main!(benches);
