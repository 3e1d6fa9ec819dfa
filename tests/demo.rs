//! The workshop demo end to end: the example binary with `--once` (every step's output), an
//! address in use (a clear error, no panic), and the dashboard in headless Chromium against the
//! running demo (its figures against `/stat.json`, a screenshot in `target/dashboard.png`).
//!
//! Each test runs the demo on its own loopback /24 (`--net 127.X.Y`), so they run in parallel
//! with each other and with other test binaries.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The demo example binary, built once per test process with the test's own profile.
fn binary() -> PathBuf {
    support::example_binary("demo")
}

/// target/<profile>, from this test executable's path (target/<profile>/deps/demo-…).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// A loopback /24 of this test process, `n` telling the tests apart.
fn net(n: u8) -> String {
    format!("127.{}.{n}", 100 + std::process::id() % 150)
}

/// Runs the demo to its end (at most 120 s).
fn run_demo(args: &[&str]) -> Output {
    let child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("demo output"),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("the demo did not finish within 120s");
        }
    }
}

#[test]
fn demo_once_prints_every_step_and_exits_zero() {
    let n = net(1);
    let out = run_demo(&["--once", "--net", &n]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );

    // 1. hello calls world; 2. the override goes to world-v2 ("earth").
    assert!(
        stdout.contains(&format!("\nHello ({n}.2) world ({n}.3)\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("\nHello ({n}.2) earth ({n}.4)\n")),
        "{stdout}"
    );

    // 3. The 50/50 split: 100 requests, v3's share near half (binomial: 25..=75 is 5 sigma).
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Number of calls to v3 of reviews service "))
        .unwrap_or_else(|| panic!("no split line in\n{stdout}"));
    let v3: u32 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert!((25..=75).contains(&v3), "{line}");

    // The stat table, with the columns `linkerd viz stat` prints and the split's two services.
    for column in [
        "NAME",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ] {
        assert!(stdout.contains(column), "no {column} column in\n{stdout}");
    }
    for service in [
        "/srv/reviews-v1",
        "/srv/reviews-v3",
        "/srv/hello",
        "/srv/world",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(service) && l.contains("100.00%")),
            "no stat row for {service} in\n{stdout}"
        );
    }
    // The service graph: hello's proxy saw hello call world, over mTLS with ingress's identity.
    assert!(stdout.contains("client → /srv/world  "), "{stdout}");
    assert!(
        stdout.contains("spiffe://demo.meshwork/ns/demo/sa/ingress → hello"),
        "{stdout}"
    );

    // The trace: six spans, ingress → hello's proxy → hello → hello's proxy → world's proxy →
    // world, each one level deeper than its parent.
    let tree: Vec<&str> = stdout.lines().filter(|l| l.contains("└─ ")).collect();
    assert_eq!(tree.len(), 6, "{stdout}");
    let expected = [
        ("ingress", "outbound"),
        ("hello", "inbound"),
        ("hello", "to app"),
        ("hello", "outbound"),
        ("world", "inbound"),
        ("world", "to app"),
    ];
    for (depth, (line, (proxy, kind))) in tree.iter().zip(expected).enumerate() {
        let rest = line.trim_start();
        assert_eq!(line.len() - rest.len(), depth * 3, "indent of {line:?}");
        assert!(rest.starts_with(&format!("└─ {proxy} ")), "{line:?}");
        assert!(rest.contains(kind) && rest.contains(" 200 "), "{line:?}");
    }
    assert!(
        stdout.contains(&format!("== dashboard: http://{n}.1:9990/")),
        "{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn demo_reports_an_address_in_use_by_name_and_exits_nonzero() {
    let n = net(2);
    let taken: SocketAddr = format!("{n}.3:9990").parse().expect("address");
    let _holder = std::net::TcpListener::bind(taken).expect("bind the address first");
    let out = run_demo(&["--once", "--net", &n]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {taken} (world's proxy, admin)")),
        "{stderr}"
    );
    assert!(
        stderr.contains("--net"),
        "the error suggests a way out: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The demo running in the background, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("headless Chromium is needed (Debian package `chromium`; scripts/test.sh installs it)");
}

/// Headless Chromium on `url` with `args`, letting the page's timers run for `millis` of
/// virtual time first.
fn headless(url: &str, millis: u32, args: &[String]) -> Output {
    let profile = tempfile::tempdir().expect("tempdir");
    // Bounded: coreutils' timeout ends Chromium if it hangs.
    let out = Command::new("timeout")
        .arg("90")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-quic",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={millis}"))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// GET `path` from `addr` (HTTP/1.0, the body).
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").expect("write");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The text of the first element with class `class` (or starting with it) inside `html`.
fn cell<'a>(html: &'a str, class: &str) -> &'a str {
    let at = html
        .find(&format!("class=\"{class}"))
        .unwrap_or_else(|| panic!("no {class} in {html}"));
    let from = at + html[at..].find('>').expect("tag end") + 1;
    let to = from + html[from..].find('<').expect("text end");
    &html[from..to]
}

/// The HTML of the `<tr>` whose attribute `attr` is `value`.
fn row<'a>(dom: &'a str, attr: &str, value: &str) -> &'a str {
    let at = dom
        .find(&format!("<tr {attr}=\"{value}\""))
        .unwrap_or_else(|| panic!("no row {attr}={value:?} on the page:\n{dom}"));
    let end = at + dom[at..].find("</tr>").expect("row end");
    &dom[at..end]
}

fn requests_of(stat: &serde_json::Value) -> Vec<(String, u64, Option<f64>)> {
    stat["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("name").to_owned(),
                r["requests"].as_u64().expect("requests"),
                r["success_rate"].as_f64(),
            )
        })
        .collect()
}

#[test]
fn dashboard_in_headless_chromium_shows_the_figures_of_stat_json() {
    let n = net(3);
    let mut child = Command::new(binary())
        .args(["--net", &n])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Running(child);
    // Wait for the steps to end: the dashboard's URL is printed, traffic keeps flowing.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("== dashboard: ") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("the demo printed the dashboard's URL within 90s");
    let url = format!("http://{n}.1:9990/");
    assert!(line.contains(&url), "{line}");
    let admin: SocketAddr = format!("{n}.1:9990").parse().expect("address");

    let before = requests_of(&serde_json::from_str(&http_get(admin, "/stat.json")).expect("json"));
    let started = Instant::now();
    let dom = headless(&url, 3_000, &["--dump-dom".to_owned()]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let after = requests_of(&serde_json::from_str(&http_get(admin, "/stat.json")).expect("json"));

    // Live: the page polled the admin API more than once while Chromium ran it.
    let at = dom.find("data-polls=\"").expect("data-polls") + "data-polls=\"".len();
    let polls: u32 = dom[at..at + dom[at..].find('"').expect("quote")]
        .parse()
        .expect("a poll count");
    assert!(polls >= 2, "the page polled {polls} times:\n{dom}");

    // Every service of /stat.json is on the page, with its success rate as /stat.json gives it
    // and a request count between the counts read before and after Chromium ran.
    assert_eq!(before.len(), after.len(), "{before:?} {after:?}");
    for ((name, low, _), (_, high, rate)) in before.iter().zip(&after) {
        let row = row(&dom, "data-service", name);
        let shown: u64 = cell(row, "requests").parse().expect("a request count");
        assert!(
            (*low..=*high).contains(&shown),
            "{name}: page shows {shown} requests, /stat.json had {low} before and {high} after"
        );
        // The page's rate is one /stat.json gave between the two reads (a request failing
        // meanwhile moves it), as a percentage with two decimals.
        let shown = cell(row, "success");
        let page: f64 = shown.trim_end_matches('%').parse().expect("a percentage");
        let first = before.iter().find(|(n, _, _)| n == name).and_then(|r| r.2);
        let last = rate.expect("requests were made") * 100.0;
        let first = first.map_or(last, |r| r * 100.0);
        assert!(
            (first.min(last) - 0.005..=first.max(last) + 0.005).contains(&page),
            "{name}: page shows {shown}, /stat.json had {first:.2}% before and {last:.2}% after"
        );
        for column in ["rps", "p50", "p95", "p99"] {
            assert_ne!(cell(row, column), "-", "{name} {column}");
        }
    }
    for service in ["/srv/hello", "/srv/reviews-v1", "/srv/reviews-v3"] {
        assert!(after.iter().any(|(n, _, _)| n == service), "{after:?}");
        // Its endpoint, available.
        let backend = row(&dom, "data-backend", service);
        assert_eq!(cell(backend, "available"), "1", "{backend}");
        assert_eq!(cell(backend, "ejected"), "0", "{backend}");
    }
    // Routes with weights, the dtab, and the graph's edges.
    let reviews = row(&dom, "data-route", "reviews");
    assert!(
        reviews.contains("/srv/reviews-v1 (50), /srv/reviews-v3 (50)"),
        "{reviews}"
    );
    assert!(dom.contains("<code>/host =&gt; /srv</code>"), "{dom}");
    // (Chromium escapes `>` in attribute values since version 138.)
    assert!(
        dom.contains("<tr data-edge=\"client -&gt; /srv/hello\"")
            || dom.contains("<tr data-edge=\"client -> /srv/hello\""),
        "no graph edge on the page:\n{dom}"
    );
    // Nothing fetched from anywhere but the admin port: the page has no external URL.
    // (The SVG namespace is a name, not a fetch.)
    let page = http_get(admin, "/").replace("\"http://www.w3.org/2000/svg\"", "");
    for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the dashboard page refers to {external}"
        );
    }

    let shot = profile_dir()
        .parent()
        .expect("target")
        .join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &url,
        3_000,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1000".to_owned(),
        ],
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    eprintln!(
        "dashboard checked in {:?}; screenshot at {}",
        started.elapsed(),
        shot.display()
    );
    drop(demo);
}
