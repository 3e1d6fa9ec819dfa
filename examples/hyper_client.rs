//! A hyper client balanced by meshwork over three backends with different latencies.
//!
//! Three HTTP/1.1 backends start on 127.0.0.1 — fast (5 ms), medium (15 ms) and slow (45 ms) — and a
//! meshwork client sends them 1,000 requests, 20 at a time. The client knows the backends only as a
//! static discovery source; the balancer learns their latencies from the responses (peak EWMA) and
//! sends most requests to the fast one, while the slow one still gets enough to keep its estimate
//! fresh. The example prints each endpoint's share and latency percentiles, then the client's.
//!
//! ```sh
//! cargo run --release --example hyper_client
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork::discovery::{Discovery, Endpoint};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

const REQUESTS: usize = 1_000;
const CONCURRENCY: usize = 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let backends = [("fast", 5), ("medium", 15), ("slow", 45)];
    let mut endpoints = Vec::new();
    let mut names = BTreeMap::new();
    for (name, millis) in backends {
        let addr = serve(name, Duration::from_millis(millis)).await?;
        println!("backend {name:>6} on {addr} answers in {millis} ms");
        names.insert(addr, name);
        endpoints.push(Endpoint::new(addr));
    }

    let client = meshwork::client(Discovery::fixed(endpoints)?)
        .authority("backends.example")
        .build::<Empty<Bytes>>()?;

    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let permit = limit.clone().acquire_owned().await?;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let req = http::Request::get("/").body(Empty::new())?;
            let rsp = client.request(req).await?;
            let status = rsp.status();
            let backend = rsp
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            rsp.into_body().collect().await?;
            Ok::<_, BoxError>((backend, status, sent.elapsed()))
        }));
    }

    let mut by_backend: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut all = Vec::with_capacity(REQUESTS);
    let mut failures = 0;
    for task in tasks {
        match task.await? {
            Ok((backend, status, latency)) if status.is_success() => {
                by_backend.entry(backend).or_default().push(latency);
                all.push(latency);
            }
            Ok(_) | Err(_) => failures += 1,
        }
    }
    let elapsed = started.elapsed();

    println!();
    println!(
        "{:<8} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "backend", "requests", "share", "p50_ms", "p90_ms", "p99_ms"
    );
    for (name, _) in backends {
        let mut latencies = by_backend.remove(name).unwrap_or_default();
        print_row(name, &mut latencies, REQUESTS);
    }
    print_row("all", &mut all, REQUESTS);
    println!();
    println!(
        "{REQUESTS} requests, {CONCURRENCY} at a time, in {:.2} s; {failures} failed",
        elapsed.as_secs_f64()
    );
    for stats in client.endpoints() {
        let name = names.get(&stats.key).copied().unwrap_or("?");
        println!(
            "balancer estimate for {name:>6}: {:.1} ms ({:?})",
            stats.rtt_estimate.as_secs_f64() * 1e3,
            stats.health
        );
    }
    Ok(())
}

fn print_row(name: &str, latencies: &mut [Duration], total: usize) {
    latencies.sort_unstable();
    let share = 100.0 * latencies.len() as f64 / total as f64;
    println!(
        "{:<8} {:>8} {:>6.1}% {:>9.1} {:>9.1} {:>9.1}",
        name,
        latencies.len(),
        share,
        percentile_ms(latencies, 0.50),
        percentile_ms(latencies, 0.90),
        percentile_ms(latencies, 0.99),
    );
}

/// The `q` quantile of sorted samples, in milliseconds (nearest rank); 0 for no samples.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// Starts an HTTP/1.1 and HTTP/2 backend on 127.0.0.1 that answers every request after `delay`,
/// naming itself in an `x-backend` header.
async fn serve(name: &'static str, delay: Duration) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |_req: http::Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    http::Response::builder()
                        .header("x-backend", name)
                        .body(Full::new(Bytes::from_static(b"hello\n")))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
