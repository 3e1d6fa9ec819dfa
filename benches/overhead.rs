//! Per-request cost of the balancer itself: meshwork's `Balance` against tower's p2c, over 16
//! always-ready no-op endpoints, on a current-thread tokio runtime.
//!
//! Run with `cargo bench --bench overhead`. Groups: `balance/meshwork/16` and `balance/tower-p2c/16`.
//! One iteration = `ready().await` + `call` + awaiting the response, on a handle (or balancer) owned by
//! the measuring loop, as a client task would own it. Both balancers track peak-EWMA load with the
//! same defaults (30 ms default RTT, 10 s decay): tower's through `PeakEwma` on each endpoint, ours
//! in its per-endpoint atomics. Setup (discovery, the first readiness) is outside the timed loop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::stream;
use mesh_balance::{Config, Endpoint};
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

criterion_group!(benches, bench_balance);
criterion_main!(benches);
