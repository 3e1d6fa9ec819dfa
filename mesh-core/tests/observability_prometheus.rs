//! A real Prometheus scrapes a meshwork server's `/metrics` and sees exactly the requests sent.
#![allow(clippy::unwrap_used)]

mod observability_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mesh_core::metrics::{
    serve_metrics, HttpMetricFamilies, MetricsRegistry, NewHttpMetrics, Scope, TargetLabels,
};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use observability_support::{client, get, serve, text};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Kills the Prometheus it owns when the test ends, pass or fail.
struct PrometheusGuard {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for PrometheusGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrometheusGuard {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(dir: &Path, target: std::net::SocketAddr) -> (PrometheusGuard, u16) {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: run the README's test command (`bash scripts/test.sh`), which \
         installs Debian's prometheus package"
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: meshwork\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {PROMETHEUS}: {e}"));
    (PrometheusGuard { child, log }, port)
}

/// Runs an instant query and returns the first sample's value, if any.
async fn query(
    client: &observability_support::HttpClient,
    port: u16,
    promql: &str,
) -> Option<String> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
    let req = http::Request::get(&url)
        .body(Full::<Bytes>::default())
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .ok()?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    json["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_exactly_the_requests_sent() {
    // The application: every 5th request fails with 503; wrapped in the inbound metrics layer.
    let registry = MetricsRegistry::new();
    let inbound = NewHttpMetrics::new(HttpMetricFamilies::register(&registry, Scope::Inbound));
    let layer = inbound.layer_for(&TargetLabels::inbound("prom-test"));
    let app = layer.layer(tower::service_fn(
        |req: http::Request<hyper::body::Incoming>| async move {
            let fail = req.uri().path().ends_with("/fail");
            Ok::<_, std::convert::Infallible>(if fail {
                text(503, "down")
            } else {
                text(200, "ok")
            })
        },
    ));
    let (app_addr, _app) = serve(move |req| {
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap() }
    })
    .await;

    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let _metrics = tokio::spawn(serve_metrics(metrics_listener, registry.clone()));

    const SENT: u64 = 37;
    let client = client();
    let mut failures = 0;
    for i in 0..SENT {
        let path = if i % 5 == 4 { "/fail" } else { "/ok" };
        let (status, _) = get(&client, &format!("http://{app_addr}{path}")).await;
        if status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 7);
    // Our own exposition agrees before Prometheus is asked.
    let (status, body) = get(&client, &format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(status, 200);
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.contains(r#"meshwork_inbound_requests_total{service="prom-test"} 37"#),
        "{body}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (prom, port) = start_prometheus(dir.path(), metrics_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let checks = [
        (
            r#"meshwork_inbound_requests_total{service="prom-test"}"#,
            SENT.to_string(),
        ),
        (
            r#"sum(meshwork_inbound_responses_total{service="prom-test",classification="failure",status="503"})"#,
            failures.to_string(),
        ),
        (
            r#"sum(meshwork_inbound_responses_total{service="prom-test",classification="success",status="200"})"#,
            (SENT - failures).to_string(),
        ),
        (
            r#"meshwork_inbound_response_latency_seconds_count{service="prom-test"}"#,
            SENT.to_string(),
        ),
        (r#"up{job="meshwork"}"#, "1".to_string()),
    ];
    let mut last = Vec::new();
    loop {
        last.clear();
        for (q, _) in &checks {
            last.push(query(&client, port, q).await);
        }
        if checks
            .iter()
            .zip(&last)
            .all(|((_, want), got)| got.as_deref() == Some(want.as_str()))
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "Prometheus did not report the expected values within 60 s.\nqueries: {:#?}\ngot: \
                 {last:?}\nprometheus log:\n{}",
                checks,
                prom.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Requests sent after the first scrape are seen too: the count follows the server.
    for _ in 0..3 {
        get(&client, &format!("http://{app_addr}/ok")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let q = r#"meshwork_inbound_requests_total{service="prom-test"}"#;
    loop {
        let got = query(&client, port, q).await;
        if got.as_deref() == Some("40") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected 40, got {got:?}\n{}",
            prom.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
