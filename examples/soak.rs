//! Soak through the proxy: three backends behind a real `mesh-proxy` process, found through a
//! watched endpoint file, killed and restarted at random every 1–3 s (at least one that the
//! endpoint files of the last 2 s list always up),
//! the endpoint file rewritten on some rounds, the proxy's configuration reloaded every 10 s
//! (alternately by SIGHUP and by a file change that replaces the clients), under 8 keep-alive
//! GET loops that reach the backends through the proxy's outbound listener.
//!
//! ```text
//! cargo run --release --example soak -- --duration 60
//! ```
//!
//! It builds `mesh-proxy` (`cargo build --example mesh-proxy`, same profile) on first use. It
//! prints the cause of each failure, the proxy's resident memory every 5 s, and as its last line
//!
//! ```text
//! soak: requests N, failed F, cut_off C, retries R, ejections E, p50_ms X, p99_ms Y, rss_start_mb A, rss_end_mb B
//! ```
//!
//! `failed` and `cut_off` mean what they mean in `examples/chaos.rs` (which this shares its
//! backends, killer and tally with): a failure is an error or a status other than 200; a cut-off
//! is a 200 whose body a killed backend ended early. `retries` and `ejections` are the proxy's
//! own counters (`meshwork_route_retries_total`, `meshwork_endpoint_ejections_total`, summed
//! over every client generation a reload made). `rss_start_mb` is the proxy's resident memory
//! once the load has warmed up (after a quarter of the run, at most 5 s), `rss_end_mb` when the
//! loops end.
//!
//! The test suite runs the same code for a few seconds (`tests/soak.rs`).

#[path = "chaos.rs"]
#[allow(dead_code, unreachable_pub)]
pub mod chaos;
#[path = "../tests/proxy/harness.rs"]
#[allow(dead_code)] // `harness.rs` allows `unreachable_pub` itself
mod harness;
// The harness builds mesh-proxy through `crate::support::example_binary`.
#[path = "../tests/support/mod.rs"]
pub(crate) mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Instant;

use chaos::Tally;
use harness::Proxy;

/// How long and how hard to soak.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Duration, kill/restart interval and GET loops, as the chaos takes them.
    pub chaos: chaos::Settings,
    /// Time between two configuration reloads.
    pub reload_every: Duration,
    /// The chance that a kill/restart round rewrites the endpoint file (the first round always
    /// does).
    pub rewrite_chance: f64,
    /// Print the RSS every this often (`None`: quiet).
    pub print_rss_every: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            chaos: chaos::Settings::default(),
            reload_every: Duration::from_secs(10),
            rewrite_chance: 0.3,
            print_rss_every: Some(Duration::from_secs(5)),
        }
    }
}

/// What a soak measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Requests, failures, cut-offs, latency, kills as the chaos counts them; retries and
    /// ejections are the proxy's.
    pub counts: chaos::Report,
    /// The proxy's RSS after the warm-up (MB).
    pub rss_start_mb: f64,
    /// The proxy's RSS when the loops ended (MB).
    pub rss_end_mb: f64,
    /// The largest RSS seen after the warm-up (MB).
    pub rss_max_mb: f64,
    /// Rewrites of the endpoint file.
    pub rewrites: u64,
    /// Reloads the proxy reported as successful.
    pub reloads: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "soak: {}, rss_start_mb {:.1}, rss_end_mb {:.1}",
            self.counts.counts(),
            self.rss_start_mb,
            self.rss_end_mb
        )
    }
}

/// The proxy's configuration: one route with host `soak` to the file-discovered `/srv/soak`.
/// Each `generation` has another route timeout (a reload that swaps the route table); every even
/// one also another connect timeout (a reload that replaces the clients).
fn config(endpoints: &Path, generation: u64) -> String {
    format!(
        "[outbound]\ndtab = \"/svc => /srv;\"\n\n[limits]\nconnect_timeout = \"{}ms\"\n\n\
         [[service]]\nname = \"/srv/soak\"\nfile = {:?}\n\n\
         [[route]]\nname = \"soak\"\nhost = \"soak\"\nbackend = \"/svc/soak\"\ntimeout = \"{}s\"\n",
        1000 + 100 * ((generation / 2) % 2),
        endpoints.display().to_string(),
        5 + generation % 3,
    )
}

/// Writes the endpoint file (write, then rename: the watcher never reads half a file): every
/// backend that is up, and each one that is down with probability 1/2; weights 1–3. Returns
/// which backends it lists.
fn write_endpoints(path: &Path, addrs: &[SocketAddr], up: &[bool], round: u64) -> Vec<bool> {
    let mut rng = rand::rng();
    let mut text = String::from("endpoints:\n");
    let mut listed = vec![false; addrs.len()];
    for (i, (addr, up)) in addrs.iter().zip(up).enumerate() {
        if *up || rng.random_bool(0.5) {
            listed[i] = true;
            text.push_str(&format!(
                "  - addr: \"{addr}\"\n    weight: {}\n    labels: {{ round: \"{round}\" }}\n",
                rng.random_range(1..=3)
            ));
        }
    }
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        eprintln!("cannot rewrite {}: {e}", path.display());
    }
    listed
}

/// Resident memory of process `pid` in MB (from /proc), if it can be read.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Sums counters across scrapes as Prometheus' `increase()` does: per series, the positive
/// deltas, and the whole value after a reset (a reload's new client generation may start from 0).
#[derive(Debug, Default)]
struct Counters {
    last: HashMap<String, f64>,
    total: HashMap<&'static str, f64>,
}

impl Counters {
    fn scrape(&mut self, text: &str, names: &[&'static str]) {
        for line in text.lines() {
            let Some(name) = names.iter().find(|n| {
                line.strip_prefix(**n)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            }) else {
                continue;
            };
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let before = self.last.insert(series.to_owned(), value).unwrap_or(0.0);
            let delta = if value >= before {
                value - before
            } else {
                value
            };
            *self.total.entry(name).or_default() += delta;
        }
    }

    fn get(&self, name: &str) -> u64 {
        self.total.get(name).copied().unwrap_or(0.0) as u64
    }
}

const RETRIES: &str = "meshwork_route_retries_total";
const EJECTIONS: &str = "meshwork_endpoint_ejections_total";

/// Runs the soak.
pub async fn run(settings: Settings) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoints: PathBuf = dir.path().join("endpoints.yaml");
    let (backends, addrs) = chaos::backends(3).await;
    let listed = write_endpoints(&endpoints, &addrs, &[true; 3], 0);
    // What the endpoint files the proxy may still be using list: the newest, and those written
    // within the last 2 s (its file source polls every second).
    let listings = Arc::new(std::sync::Mutex::new(vec![(Instant::now(), listed)]));
    let mut generation = 0;
    let proxy = Proxy::start("soak", &config(&endpoints, generation)).await;
    let pid = proxy.pid().expect("the proxy runs");

    let start = Instant::now();
    let end = start + settings.chaos.duration;
    let rewrites = Arc::new(AtomicU64::new(0));
    let killer = tokio::spawn(chaos::shake_keeping(
        backends,
        addrs.clone(),
        settings.chaos.clone(),
        end,
        {
            // "At least one always up" means one the proxy can find: a backend the endpoint
            // file left out does not count, else the file could list only down backends.
            let listings = listings.clone();
            move |i: usize, up: &[bool]| {
                let listings = listings.lock().unwrap_or_else(|e| e.into_inner());
                (0..up.len()).any(|j| j != i && up[j] && listings.iter().all(|(_, l)| l[j]))
            }
        },
        {
            let (rewrites, endpoints, rate) =
                (rewrites.clone(), endpoints.clone(), settings.rewrite_chance);
            let mut first = true;
            move |up: &[bool]| {
                // The first round always rewrites, so every soak, however short, rewrites once.
                if std::mem::take(&mut first) || rand::rng().random_bool(rate) {
                    let round = rewrites.fetch_add(1, Ordering::Relaxed) + 1;
                    let listed = write_endpoints(&endpoints, &addrs, up, round);
                    let mut listings = listings.lock().unwrap_or_else(|e| e.into_inner());
                    listings.retain(|(at, _)| at.elapsed() < Duration::from_secs(2));
                    listings.push((Instant::now(), listed));
                }
            }
        },
    ));

    // Keep-alive clients, as an application behind the proxy would have: every connection goes
    // to the proxy's outbound listener, the Host (`soak`) picks the route.
    let outbound = proxy.outbound;
    let connector = tower::service_fn(move |_: http::Uri| {
        Box::pin(async move {
            let tcp = TcpStream::connect(outbound).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(TokioIo::new(tcp))
        })
    });
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut loops = Vec::new();
    for _ in 0..settings.chaos.loops {
        let client = client.clone();
        loops.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let start = Instant::now();
                let req = http::Request::get("http://soak/")
                    .body(Empty::new())
                    .expect("request");
                let result = client.request(req).await;
                tally.record(start, result).await;
            }
            tally
        }));
    }

    // Meanwhile: sample RSS and counters every second, reload every `reload_every`.
    let warmup = (settings.chaos.duration / 4).min(Duration::from_secs(5));
    let mut rss_start = None;
    let mut rss_max: f64 = 0.0;
    let mut counters = Counters::default();
    let mut next_reload = start + settings.reload_every;
    let mut next_print = start;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < end {
        tick.tick().await;
        let now = Instant::now();
        let rss = rss_mb(pid);
        if let (Some(rss), Some(every)) = (rss, settings.print_rss_every) {
            if now >= next_print {
                eprintln!("rss t={:>3}s {rss:.1} MB", (now - start).as_secs());
                next_print += every;
            }
        }
        if now >= start + warmup {
            if let Some(rss) = rss {
                rss_start.get_or_insert(rss);
                rss_max = rss_max.max(rss);
            }
        }
        counters.scrape(&proxy.admin_get("/metrics").await, &[RETRIES, EJECTIONS]);
        if now >= next_reload && now < end {
            generation += 1;
            proxy.write_config(&config(&endpoints, generation));
            if generation % 2 == 1 {
                // Only the route table changes: SIGHUP reloads it (the file watcher may too).
                proxy.signal_hup();
            }
            // Even generations change the connect timeout too: the file watcher reloads within
            // 0.5 s and the proxy replaces its clients while requests are in flight on the old.
            next_reload += settings.reload_every;
        }
    }

    let mut tally = Tally::default();
    for l in loops {
        tally.merge(l.await.expect("GET loop"));
    }
    let rss_end = rss_mb(pid).unwrap_or(0.0);
    rss_max = rss_max.max(rss_end);
    if settings.print_rss_every.is_some() && rss_end > 0.0 {
        eprintln!(
            "rss t={:>3}s {rss_end:.1} MB (end)",
            start.elapsed().as_secs()
        );
    }
    counters.scrape(&proxy.admin_get("/metrics").await, &[RETRIES, EJECTIONS]);
    let reloads = reload_successes(&proxy.admin_get("/metrics").await);
    let (kills, backends) = killer.await.expect("killer");
    drop(backends);
    drop(proxy);
    Report {
        counts: chaos::Report {
            requests: tally.requests,
            failed: tally.failed,
            cut_off: tally.cut_off,
            retries: counters.get(RETRIES),
            ejections: counters.get(EJECTIONS),
            kills,
            p50_ms: tally.percentile_ms(0.50),
            p99_ms: tally.percentile_ms(0.99),
            failures: tally.failures,
        },
        rss_start_mb: rss_start.unwrap_or(rss_end),
        rss_end_mb: rss_end,
        rss_max_mb: rss_max,
        rewrites: rewrites.load(Ordering::Relaxed),
        reloads,
    }
}

/// `meshwork_proxy_config_reloads_total{result="success"}` from a metrics page.
fn reload_successes(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("meshwork_proxy_config_reloads_total{result=\"success\"}"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[allow(dead_code)] // the test suite includes this file for `run`, not `main`
#[tokio::main]
async fn main() {
    let mut settings = Settings::default();
    settings.chaos.duration = chaos::duration_arg("soak", settings.chaos.duration);
    let report = run(settings).await;
    report.counts.print_failures();
    eprintln!(
        "endpoint-file rewrites {}, config reloads {}, rss_max_mb {:.1}",
        report.rewrites, report.reloads, report.rss_max_mb
    );
    println!("{report}");
}
