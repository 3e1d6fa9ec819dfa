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

impl Report {
    /// The counts as the last line shows them, after the program's name: `requests N, failed F,
    /// cut_off C, retries R, ejections E, p50_ms X, p99_ms Y`.
    pub fn counts(&self) -> impl std::fmt::Display + '_ {
        struct Counts<'a>(&'a Report);
        impl std::fmt::Display for Counts<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let r = self.0;
                write!(
                    f,
                    "requests {}, failed {}, cut_off {}, retries {}, ejections {}, p50_ms {:.1}, p99_ms {:.1}",
                    r.requests, r.failed, r.cut_off, r.retries, r.ejections, r.p50_ms, r.p99_ms
                )
            }
        }
        Counts(self)
    }

    /// Prints the kills and each failure's cause (stderr).
    pub fn print_failures(&self) {
        eprintln!("backend kills: {}", self.kills);
        for failure in &self.failures {
            eprintln!("failure: {failure}");
        }
        let shown = self.failures.len() as u64;
        if self.failed > shown {
            eprintln!("... and {} more failures", self.failed - shown);
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chaos: {}", self.counts())
    }
}

/// `--duration SECONDS` from the command line (the only argument), or `default`; exits with a
/// usage line on anything else.
pub fn duration_arg(program: &str, default: Duration) -> Duration {
    let mut duration = default;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (
            arg.as_str(),
            args.next().and_then(|s| s.parse::<u64>().ok()),
        ) {
            ("--duration", Some(secs)) => duration = Duration::from_secs(secs),
            _ => {
                eprintln!("usage: {program} [--duration SECONDS]");
                std::process::exit(2);
            }
        }
    }
    duration
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

/// The outcomes one request loop saw: what `failed` and `cut_off` mean is decided here, once, for
/// every client that the chaos and the soak (`examples/soak.rs`) drive.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (error or non-200), cut-offs excluded.
    pub failed: u64,
    /// 200 responses whose body a killed backend cut off.
    pub cut_off: u64,
    /// The causes of the first [`Tally::KEEP`] failures.
    pub failures: Vec<String>,
    /// Latency of each completed request (µs).
    pub latencies_us: Vec<u64>,
}

impl Tally {
    /// How many failure causes a tally keeps.
    pub const KEEP: usize = 20;

    /// Counts one request that started at `start`, reading its body to the end.
    pub async fn record<B, E>(&mut self, start: Instant, result: Result<http::Response<B>, E>)
    where
        B: http_body::Body,
        E: std::error::Error + 'static,
    {
        self.requests += 1;
        match result {
            Ok(rsp) if rsp.status() == http::StatusCode::OK => {
                match rsp.into_body().collect().await {
                    Ok(_) => self.latencies_us.push(start.elapsed().as_micros() as u64),
                    Err(_) => self.cut_off += 1,
                }
            }
            Ok(rsp) => {
                let err = rsp
                    .headers()
                    .get("l5d-err")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                self.fail(format!("status {} {err}", rsp.status()));
            }
            Err(e) => self.fail(chain(&e)),
        }
    }

    fn fail(&mut self, cause: String) {
        self.failed += 1;
        if self.failures.len() < Self::KEEP {
            self.failures.push(cause);
        }
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.cut_off += other.cut_off;
        self.failures.extend(other.failures);
        self.failures.truncate(Self::KEEP);
        self.latencies_us.extend(other.latencies_us);
    }

    /// The `q` quantile (0..=1) of the latencies in ms, by nearest rank; 0 without any.
    pub fn percentile_ms(&mut self, q: f64) -> f64 {
        let lat = &mut self.latencies_us;
        if lat.is_empty() {
            return 0.0;
        }
        lat.sort_unstable();
        let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        lat[rank - 1] as f64 / 1e3
    }
}

/// Kills and restarts the `backends` (bound to `addrs`) at random every `kill_min..=kill_max`
/// until `end`, keeping at least one up; `on_round` sees which are up after each round. Restarts
/// every backend at the end, so that loops finishing their last requests find them, and returns
/// the number of kills and the backends.
pub async fn shake(
    backends: Vec<Option<Backend>>,
    addrs: Vec<SocketAddr>,
    settings: Settings,
    end: Instant,
    on_round: impl FnMut(&[bool]) + Send,
) -> (u64, Vec<Option<Backend>>) {
    shake_keeping(backends, addrs, settings, end, |_, _| true, on_round).await
}

/// [`shake`], where a backend also stays up unless `may_kill(i, up)` allows killing backend `i`
/// (`up`: which are up now), e.g. to keep one up that the clients' discovery lists.
pub async fn shake_keeping(
    mut backends: Vec<Option<Backend>>,
    addrs: Vec<SocketAddr>,
    settings: Settings,
    end: Instant,
    mut may_kill: impl FnMut(usize, &[bool]) -> bool + Send,
    mut on_round: impl FnMut(&[bool]) + Send,
) -> (u64, Vec<Option<Backend>>) {
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
        let up: Vec<bool> = backends.iter().map(Option::is_some).collect();
        let n_up = up.iter().filter(|u| **u).count();
        match &backends[i] {
            Some(_) if n_up > 1 && may_kill(i, &up) => {
                backends[i] = None;
                kills += 1;
            }
            Some(_) => {}
            None => match Backend::start(addrs[i]).await {
                Ok(b) => backends[i] = Some(b),
                Err(e) => eprintln!("cannot restart backend {}: {e}", addrs[i]),
            },
        }
        let up: Vec<bool> = backends.iter().map(Option::is_some).collect();
        on_round(&up);
    }
    // Leave every backend up while the loops finish their last requests.
    for (i, slot) in backends.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Backend::start(addrs[i]).await.ok();
        }
    }
    (kills, backends)
}

/// Starts `n` backends on fresh loopback ports.
pub async fn backends(n: usize) -> (Vec<Option<Backend>>, Vec<SocketAddr>) {
    let mut backends = Vec::new();
    for _ in 0..n {
        let backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a loopback port");
        backends.push(Some(backend));
    }
    let addrs = backends.iter().flatten().map(|b| b.addr).collect();
    (backends, addrs)
}

/// Runs the chaos: three backends, a killer, `settings.loops` GET loops.
pub async fn run(settings: Settings) -> Report {
    let (backends, addrs) = backends(3).await;
    let discovery =
        Discovery::fixed(addrs.iter().map(|a| Endpoint::new(*a))).expect("a fixed endpoint set");
    let client = meshwork::client(discovery)
        .authority("chaos.test")
        .build::<Empty<Bytes>>()
        .expect("client");

    let end = Instant::now() + settings.duration;
    let killer = tokio::spawn(shake(backends, addrs, settings.clone(), end, |_| {}));

    let mut loops = Vec::new();
    for _ in 0..settings.loops {
        let client = client.clone();
        loops.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let start = Instant::now();
                let req = http::Request::get("/").body(Empty::new()).expect("request");
                let result = client.request(req).await;
                tally.record(start, result).await;
            }
            tally
        }));
    }

    let mut tally = Tally::default();
    for l in loops {
        tally.merge(l.await.expect("GET loop"));
    }
    let (kills, backends) = killer.await.expect("killer");
    drop(backends);
    let mut failures = tally.failures.clone();
    failures.truncate(5);
    Report {
        requests: tally.requests,
        failed: tally.failed,
        cut_off: tally.cut_off,
        retries: client.stats().retry.retries(),
        ejections: client.stats().breaker.ejections(),
        kills,
        p50_ms: tally.percentile_ms(0.50),
        p99_ms: tally.percentile_ms(0.99),
        failures,
    }
}

#[allow(dead_code)] // the test suite includes this file for `run`, not `main`
#[tokio::main]
async fn main() {
    let settings = Settings {
        duration: duration_arg("chaos", Settings::default().duration),
        ..Settings::default()
    };
    let report = run(settings).await;
    report.print_failures();
    println!("{report}");
}
