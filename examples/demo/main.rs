//! The meshwork workshop in one command:
//!
//! ```text
//! cargo run --release --example demo            # the steps, then traffic until Ctrl-C
//! cargo run --release --example demo -- --once  # the steps only (exit 0)
//! ```
//!
//! On loopback addresses it starts the applications `hello`, `world-v1`, `world-v2`,
//! `reviews-v1` and `reviews-v3`, each behind its own mesh-proxy (outbound 4140, inbound 4143
//! with strict mTLS, admin 9990, certificates from the dev CA), plus an ingress proxy for the
//! demo's own requests, all in this process. Then, step by step:
//!
//! 1. hello calls world through its proxy: `Hello (127.0.0.2) world (127.0.0.3)`;
//! 2. one request with `l5d-dtab: /host/world => /srv/world-v2;` goes to v2 —
//!    `Hello (127.0.0.2) earth (127.0.0.4)` — the override carried from hop to hop as
//!    `l5d-ctx-dtab`;
//! 3. 100 requests through the 50/50 split of reviews: `Number of calls to v3 of reviews service N`;
//! 4. the stat table of each proxy (SUCCESS, RPS, latency percentiles);
//! 5. the service graph the proxies observed;
//! 6. the trace of one request as a tree of spans;
//!
//! and the dashboards' URLs (`/` on each admin port).
//!
//! `--net 127.0.5` moves every address to another loopback /24 (`127.0.5.1` …), to run two demos
//! at once or to avoid ports in use.

mod apps;
mod mesh;
mod trace;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meshwork::core::trace::{Tracing, TracingConfig};

use crate::apps::{get_via, App};
use crate::mesh::Workload;

#[derive(Parser)]
#[command(name = "demo", about = "The meshwork workshop in one command")]
struct Cli {
    /// Stop after the steps (exit 0) instead of sending traffic until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// The loopback /24 to use, as three octets: workloads get .1 (ingress) to .6.
    #[arg(long, default_value = "127.0.0")]
    net: String,
}

/// The workloads: the ingress proxy that the demo's requests enter through, then the apps.
const WORKLOADS: [(&str, Option<App>); 6] = [
    ("ingress", None),
    ("hello", Some(App::Hello)),
    ("world", Some(App::World("world"))),
    ("world-v2", Some(App::World("earth"))),
    ("reviews-v1", Some(App::Reviews("v1"))),
    ("reviews-v3", Some(App::Reviews("v3"))),
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo: {message}");
            if message.contains("cannot listen on") {
                eprintln!(
                    "demo: is another demo or proxy using these addresses? \
                     `--net 127.0.1` moves the demo to 127.0.1.1-6"
                );
            }
            ExitCode::FAILURE
        }
    }
}

fn network(net: &str) -> Result<[u8; 3], String> {
    let octets: Vec<u8> = net
        .split('.')
        .map(|o| o.parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--net {net:?}: expected three octets such as 127.0.0"))?;
    match octets[..] {
        [127, b, c] => Ok([127, b, c]),
        _ => Err(format!(
            "--net {net:?}: expected three octets of a loopback address, such as 127.0.0"
        )),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let [a, b, c] = network(&cli.net)?;
    let workloads: Vec<Workload> = WORKLOADS
        .iter()
        .zip(1u8..)
        .map(|((name, app), host)| Workload {
            name,
            ip: Ipv4Addr::new(a, b, c, host),
            has_app: app.is_some(),
        })
        .collect();
    let ingress = workloads[0].outbound();

    println!(
        "meshwork demo: {} workloads on {a}.{b}.{c}.1-{}",
        workloads.len(),
        workloads.len()
    );
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    mesh::certificates(dir.path(), &workloads)?;
    println!(
        "  dev CA and {} workload certificates (spiffe://{}/ns/demo/sa/<name>) in {}",
        workloads.len(),
        mesh::TRUST_DOMAIN,
        dir.path().display()
    );

    for (w, (_, app)) in workloads.iter().zip(WORKLOADS) {
        if let Some(app) = app {
            apps::serve(app, w.app(), w.outbound()).await?;
            println!("  started app   {:<11} on {}", w.name, w.app());
        }
    }
    let spans = trace::Spans::default();
    let mut proxies = Vec::new();
    for w in &workloads {
        let text = mesh::config_text(w, &workloads, dir.path());
        let tracing = Tracing::with_exporter(
            TracingConfig {
                service_name: format!("{}-proxy", w.name),
                scheduled_delay: Duration::from_millis(100),
                ..TracingConfig::default()
            },
            spans.collector(w.name),
        )
        .map_err(|e| e.to_string())?;
        let proxy = mesh::start(w, &text, dir.path(), tracing).await?;
        let inbound = if w.has_app {
            format!(", inbound {} (mTLS)", w.inbound())
        } else {
            String::new()
        };
        println!(
            "  started proxy {:<11} outbound {}{inbound}, admin {}",
            w.name,
            w.outbound(),
            w.admin()
        );
        proxies.push(proxy);
    }
    print!("  waiting for hello to answer through the mesh ");
    flush();
    wait_until_up(ingress).await?;
    println!(" ready\n");

    println!("== 1. hello calls world through its proxy");
    println!("$ curl -x {ingress} http://hello/");
    println!(
        "{}\n",
        expect_ok(get_via(ingress, "http://hello/", &[]).await)?
    );

    let dtab = "/host/world => /srv/world-v2;";
    println!("== 2. one request routed to world-v2 by a per-request dtab override");
    println!("$ curl -x {ingress} -H 'l5d-dtab: {dtab}' http://hello/");
    let headers = [("l5d-dtab".to_owned(), dtab.to_owned())];
    println!(
        "{}",
        expect_ok(get_via(ingress, "http://hello/", &headers).await)?
    );
    println!("(the ingress proxy forwarded the override as l5d-ctx-dtab; hello passed it on)\n");

    println!("== 3. 100 requests through the 50/50 split of reviews (v1 and v3)");
    let mut v3 = 0;
    for _ in 0..100 {
        let body = expect_ok(get_via(ingress, "http://reviews/", &[]).await)?;
        if body.starts_with("reviews v3") {
            v3 += 1;
        }
    }
    println!("Number of calls to v3 of reviews service {v3}\n");

    println!("== 4. trace of one request (W3C traceparent, sampled by the caller)");
    let (traceparent, trace_id, root) = trace::new_root();
    let headers = [("traceparent".to_owned(), traceparent)];
    let started = std::time::Instant::now();
    let body = expect_ok(get_via(ingress, "http://hello/", &headers).await)?;
    let took = started.elapsed();
    // ingress → hello's proxy → hello → hello's proxy → world's proxy → world: six spans.
    let recorded = wait_for_spans(&spans, &proxies, &trace_id, 6).await;
    println!("trace {trace_id}: {body}");
    println!("demo  GET http://hello/  {:.2} ms", trace::millis(took));
    print!("{}", trace::tree(&recorded, &root));
    println!();

    println!("== 5. stat: success rate, requests per second and latency per service (last minute)");
    for p in &proxies {
        let table = p.admin.telemetry().stats.table();
        if p.admin.telemetry().stats.rows().is_empty() {
            continue;
        }
        println!("{} proxy (http://{}/stat):", p.name, p.admin_addr);
        println!("{table}");
    }

    println!("== 6. service graph (caller → service, as the proxies saw it)");
    for p in &proxies {
        for e in p.admin.telemetry().graph.snapshot() {
            let rate = e
                .success_rate
                .map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0));
            println!(
                "  [{} proxy] {} → {}  {} requests, {} success",
                p.name, e.source, e.destination, e.requests, rate
            );
        }
    }
    println!();

    println!(
        "== dashboard: http://{}/ (each proxy's admin port serves one:",
        workloads[0].admin()
    );
    let others: Vec<String> = proxies[1..]
        .iter()
        .map(|p| format!("http://{}/", p.admin_addr))
        .collect();
    println!("   {})", others.join(" "));

    if cli.once {
        return Ok(());
    }
    println!("\nsending traffic (hello and reviews, about 20 requests/s) until Ctrl-C");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                tokio::spawn(async move {
                    let _ = get_via(ingress, "http://hello/", &[]).await;
                    let _ = get_via(ingress, "http://reviews/", &[]).await;
                });
            }
            _ = tokio::signal::ctrl_c() => {
                println!("stopped");
                return Ok(());
            }
        }
    }
}

fn flush() {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

fn expect_ok(result: Result<(http::StatusCode, String), String>) -> Result<String, String> {
    match result? {
        (http::StatusCode::OK, body) => Ok(body),
        (status, body) => Err(format!("unexpected answer {status}: {body}")),
    }
}

/// Polls hello through the ingress until it answers 200 (each proxy is serving once started;
/// this waits for the first connections and handshakes), printing a dot per try.
async fn wait_until_up(ingress: SocketAddr) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = match get_via(ingress, "http://hello/", &[]).await {
            Ok((http::StatusCode::OK, _)) => return Ok(()),
            Ok((status, body)) => format!("{status}: {body}"),
            Err(e) => e,
        };
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "hello did not answer through the mesh within 30s: {last}"
            ));
        }
        print!(".");
        flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Flushes the proxies' span queues until at least `want` spans of the trace arrived (or 5 s).
async fn wait_for_spans(
    spans: &trace::Spans,
    proxies: &[mesh::Proxy],
    trace_id: &str,
    want: usize,
) -> Vec<trace::Recorded> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let got = spans.of_trace(trace_id);
        if got.len() >= want || tokio::time::Instant::now() > deadline {
            return got;
        }
        for p in proxies {
            let tracing = p.tracing.clone();
            let _ = tokio::task::spawn_blocking(move || tracing.force_flush()).await;
        }
    }
}
