//! Chaos: three backends behind `meshwork::client` with its defaults, killed and restarted at
//! random every 1–3 s (at least one always up), under 8 concurrent keep-alive GET loops.
//!
//! ```text
//! cargo run --release --example chaos -- --duration 60
//! ```
//!
//! A request counts as `failed` if the client returned an error or a status other than 200, and as
//! `cut_off` if its 200 head arrived but the backend was killed before the body ended (nothing a
//! client can do about that: the response was already being delivered). The last line is
//!
//! ```text
//! chaos: requests N, failed F, cut_off C, retries R, ejections E, p50_ms X, p99_ms Y
//! ```
//!
//! What makes failed 0 possible: a retry avoids the endpoints its request already tried, panic mode
//! leaves out endpoints refusing connections, and an endpoint ejected for refusing connections is
//! probed every 500 ms, so a restarted backend is back within about a second.
//!
//! The test suite runs the same code for a few seconds (`tests/chaos.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork::discovery::{Discovery, Endpoint};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long and how hard to shake.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long the GET loops run.
    pub duration: Duration,
    /// A backend is killed or restarted after a random wait in `[kill_min, kill_max]`.
    pub kill_min: Duration,
    /// See `kill_min`.
    pub kill_max: Duration,
    /// Concurrent keep-alive GET loops.
    pub loops: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(60),
            kill_min: Duration::from_secs(1),
            kill_max: Duration::from_secs(3),
            loops: 8,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (error or non-200), cut-offs excluded.
    pub failed: u64,
    /// 200 responses whose body a killed backend cut off.
    pub cut_off: u64,
    /// Retries the client made.
    pub retries: u64,
    /// Endpoint ejections by the client's circuit breakers.
    pub ejections: u64,
    /// Kills and restarts of backends.
    pub kills: u64,
    /// Latency percentiles of completed requests (ms).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The first few failures, for diagnosis.
    pub failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chaos: requests {}, failed {}, cut_off {}, retries {}, ejections {}, p50_ms {:.1}, p99_ms {:.1}",
            self.requests,
            self.failed,
            self.cut_off,
            self.retries,
            self.ejections,
            self.p50_ms,
            self.p99_ms
        )
    }
}

/// One backend on a fixed loopback address: answers every request with 200 "ok".
#[derive(Debug)]
pub struct Backend {
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    kill: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Listens on `addr` (`127.0.0.1:0` for a fresh port), retrying the bind for up to 2 s (the
    /// port of a just-killed backend may take a moment to free).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Backend> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let addr = listener.local_addr()?;
        let (kill, killed) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    let service = service_fn(|_req: http::Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Ok(Backend { addr, kill, task })
    }

    /// Stops listening and drops every open connection, as a killed process would.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.kill.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The error and its sources, one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// Runs the chaos: three backends, a killer, `settings.loops` GET loops.
pub async fn run(settings: Settings) -> Report {
    let mut backends: Vec<Option<Backend>> = Vec::new();
    for _ in 0..3 {
        let backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a loopback port");
        backends.push(Some(backend));
    }
    let addrs: Vec<SocketAddr> = backends.iter().flatten().map(|b| b.addr).collect();
    let discovery =
        Discovery::fixed(addrs.iter().map(|a| Endpoint::new(*a))).expect("a fixed endpoint set");
    let client = meshwork::client(discovery)
        .authority("chaos.test")
        .build::<Empty<Bytes>>()
        .expect("client");

    let end = Instant::now() + settings.duration;
    let killer = tokio::spawn({
        let settings = settings.clone();
        async move {
            let mut kills = 0u64;
            while Instant::now() < end {
                let wait = {
                    let mut rng = rand::rng();
                    let ms = rng.random_range(
                        settings.kill_min.as_millis() as u64..=settings.kill_max.as_millis() as u64,
                    );
                    Duration::from_millis(ms)
                };
                tokio::time::sleep(wait.min(end.saturating_duration_since(Instant::now()))).await;
                if Instant::now() >= end {
                    break;
                }
                let i = rand::rng().random_range(0..backends.len());
                let up = backends.iter().filter(|b| b.is_some()).count();
                match &backends[i] {
                    Some(_) if up > 1 => {
                        backends[i] = None;
                        kills += 1;
                    }
                    Some(_) => {}
                    None => match Backend::start(addrs[i]).await {
                        Ok(b) => backends[i] = Some(b),
                        Err(e) => eprintln!("cannot restart backend {}: {e}", addrs[i]),
                    },
                }
            }
            // Leave every backend up while the loops finish their last requests.
            for (i, slot) in backends.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = Backend::start(addrs[i]).await.ok();
                }
            }
            (kills, backends)
        }
    });

    let mut loops = Vec::new();
    for _ in 0..settings.loops {
        let client = client.clone();
        loops.push(tokio::spawn(async move {
            let mut report = Report::default();
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let start = Instant::now();
                let req = http::Request::get("/").body(Empty::new()).expect("request");
                report.requests += 1;
                match client.request(req).await {
                    Ok(rsp) if rsp.status() == http::StatusCode::OK => {
                        match rsp.into_body().collect().await {
                            Ok(_) => latencies.push(start.elapsed().as_micros() as u64),
                            Err(_) => report.cut_off += 1,
                        }
                    }
                    Ok(rsp) => {
                        report.failed += 1;
                        if report.failures.len() < 5 {
                            let err = rsp
                                .headers()
                                .get("l5d-err")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            report
                                .failures
                                .push(format!("status {} {err}", rsp.status()));
                        }
                    }
                    Err(e) => {
                        report.failed += 1;
                        if report.failures.len() < 5 {
                            report.failures.push(chain(&e));
                        }
                    }
                }
            }
            (report, latencies)
        }));
    }

    let mut report = Report::default();
    let mut latencies = Vec::new();
    for l in loops {
        let (r, lat) = l.await.expect("GET loop");
        report.requests += r.requests;
        report.failed += r.failed;
        report.cut_off += r.cut_off;
        report.failures.extend(r.failures);
        latencies.extend(lat);
    }
    let (kills, backends) = killer.await.expect("killer");
    drop(backends);
    report.kills = kills;
    report.failures.truncate(5);
    report.retries = client.stats().retry.retries();
    report.ejections = client.stats().breaker.ejections();
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1] as f64 / 1e3
    };
    report.p50_ms = pct(0.50);
    report.p99_ms = pct(0.99);
    report
}

#[allow(dead_code)] // the test suite includes this file for `run`, not `main`
#[tokio::main]
async fn main() {
    let mut settings = Settings::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                let secs = args.next().and_then(|s| s.parse::<u64>().ok());
                match secs {
                    Some(secs) => settings.duration = Duration::from_secs(secs),
                    None => {
                        eprintln!("--duration takes a number of seconds");
                        std::process::exit(2);
                    }
                }
            }
            other => {
                eprintln!("unknown argument {other:?}; usage: chaos [--duration SECONDS]");
                std::process::exit(2);
            }
        }
    }
    let report = Arc::new(run(settings).await);
    eprintln!("backend kills: {}", report.kills);
    for failure in &report.failures {
        eprintln!("failure: {failure}");
    }
    println!("{report}");
}
