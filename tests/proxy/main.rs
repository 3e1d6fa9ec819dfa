//! mesh-proxy end to end: the example binary started as a process (twice for a pair with mutual
//! TLS between them), real backends, HTTP/1.1, HTTP/2, gRPC and WebSocket on 127.0.0.1.

#[path = "../support/mod.rs"]
mod support;

mod grpc;
mod harness;
mod hostile;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harness::{get, Certs, Proxy};
use http_body_util::Full;
use support::{handler, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A pair: proxy A (outbound, calling `world` through B) and proxy B (inbound, mTLS, in front of
/// `app`), plus extra TOML for B.
async fn pair(certs: &Certs, app: std::net::SocketAddr, b_extra: &str) -> (Proxy, Proxy) {
    let b = Proxy::start(
        "b",
        &format!(
            "[inbound]\napp = \"{app}\"\n{b_extra}\n{}",
            certs.tls("b", "permissive")
        ),
    )
    .await;
    let a = Proxy::start(
        "a",
        &format!(
            "[outbound]\ndtab = \"/svc => /srv;\"\n{}\n[[service]]\nname = \"/srv/world\"\nendpoints = [\"{}\"]\nidentity = \"{}\"\n",
            certs.tls("a", "strict"),
            b.inbound,
            certs.id("b"),
        ),
    )
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_cross_two_proxies_over_mtls() {
    support::init_tracing();
    let certs = Certs::new();
    let app = Backend::start("app", Duration::ZERO, 200).await;
    let (a, b) = pair(&certs, app.addr, "").await;

    // Absolute-form (http_proxy) and Host routing, HTTP/1.1.
    let rsp = get(a.outbound, "http://world/abs", &[], false).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["x-backend"], "app");
    assert_eq!(rsp.headers()["x-seen-host"], "world");
    let rsp = get(a.outbound, "/host", &[("host", "world")], false).await;
    assert_eq!(rsp.status(), 200);
    // HTTP/2 with prior knowledge.
    let rsp = get(a.outbound, "http://world/h2", &[], true).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["x-backend"], "app");
    assert_eq!(app.hits(), 3);
    // B saw the calls as coming from A's identity (over mTLS), on its inbound side.
    let metrics = b.admin_get("/graph.json").await;
    assert!(metrics.contains(&certs.id("a")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_two_proxies_keeps_trailers_and_shortens_grpc_timeout() {
    support::init_tracing();
    let certs = Certs::new();
    let (greeter, addr) = grpc::Greeter::start().await;
    let (a, _b) = pair(&certs, addr, "").await;
    let mut client = grpc::client(a.outbound).await;

    let reply = client
        .say_hello("ada", Duration::from_secs(5))
        .await
        .expect("reply");
    assert_eq!(reply, "hello, ada");
    let seen = greeter.grpc_timeouts();
    let timeout = grpc::parse_grpc_timeout(&seen[0]).expect("grpc-timeout reached the server");
    assert!(
        timeout < Duration::from_secs(5) && timeout > Duration::from_secs(1),
        "propagated and shortened: {seen:?}"
    );

    let status = client
        .say_hello("missing", Duration::from_secs(5))
        .await
        .expect_err("an error status");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "no greeting for missing");
    assert_eq!(
        status
            .metadata()
            .get("x-trailer")
            .map(|v| v.to_str().unwrap_or("")),
        Some("kept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes_through_two_proxies() {
    support::init_tracing();
    let certs = Certs::new();
    let app = harness::echo_upgrade_backend().await;
    let (a, _b) = pair(&certs, app, "").await;

    let mut tcp = tokio::net::TcpStream::connect(a.outbound)
        .await
        .expect("connect");
    tcp.write_all(
        b"GET http://world/ws HTTP/1.1\r\nHost: world\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let head = harness::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    // A masked text frame "hi"; the backend echoes bytes as they come.
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    tcp.write_all(&frame).await.expect("write frame");
    let mut echoed = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(echoed, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l5d_dtab_is_honoured_from_a_verified_peer_and_stripped_from_plaintext_callers() {
    support::init_tracing();
    let certs = Certs::new();
    let saw_override = Arc::new(AtomicUsize::new(0));
    let seen = saw_override.clone();
    let app = Backend::with_handler(
        "app",
        handler(move |req, _| {
            if req.headers().contains_key("l5d-dtab") || req.headers().contains_key("l5d-ctx-dtab")
            {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            async { support::status(200) }
        }),
    )
    .await;
    let canary = Backend::start("canary", Duration::ZERO, 200).await;
    let extra = format!(
        "[[service]]\nname = \"/srv/canary\"\nendpoints = [\"{}\"]\n",
        canary.addr
    );
    let (a, b) = pair(&certs, app.addr, &extra).await;
    let over = [("l5d-dtab", "/inbound => /srv/canary;")];

    // A's local caller is plaintext: stripped at A; B then gets a request without overrides.
    let rsp = get(a.outbound, "http://world/", &over, false).await;
    assert_eq!(rsp.headers()["x-backend"], "app");
    // Plaintext straight to B's inbound (permissive): stripped.
    let rsp = get(b.inbound, "http://world/", &over, false).await;
    assert_eq!(rsp.headers()["x-backend"], "app");
    assert_eq!(
        saw_override.load(Ordering::SeqCst),
        0,
        "override headers were forwarded"
    );
    assert_eq!(canary.hits(), 0);
    // A verified peer (mTLS with A's identity) to B's inbound: honoured.
    let client = certs.mesh_client("a", b.inbound, "b");
    let req = http::Request::get("http://world/")
        .header("l5d-dtab", "/inbound => /srv/canary;")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let rsp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(
        rsp.headers().get("x-backend").map(|v| v.as_bytes()),
        Some(&b"canary"[..]),
        "{:?}",
        rsp.headers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_a_restart_of_one_proxy_drop_no_request() {
    support::init_tracing();
    let certs = Certs::new();
    let app = Backend::start("app", Duration::from_millis(5), 200).await;
    let b1 = Proxy::start(
        "b1",
        &format!(
            "[inbound]\napp = \"{}\"\n{}",
            app.addr,
            certs.tls("b", "strict")
        ),
    )
    .await;
    let b2 = Proxy::start(
        "b2",
        &format!(
            "[inbound]\napp = \"{}\"\n{}",
            app.addr,
            certs.tls("b", "strict")
        ),
    )
    .await;
    let a_config = |dtab: &str| {
        format!(
            "[outbound]\ndtab = \"{dtab}\"\n{}\n[[service]]\nname = \"/srv/world\"\nendpoints = [\"{}\", \"{}\"]\nidentity = \"{}\"\n",
            certs.tls("a", "strict"), b1.inbound, b2.inbound, certs.id("b"),
        )
    };
    let a = Proxy::start("a", &a_config("/svc => /srv;")).await;

    // A client that keeps calling (bounded: 4 workers, at most 15 s).
    let callers = harness::Callers::start(a.outbound, "http://world/");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A valid edit (a new dtab), then an invalid one that must be reported and ignored.
    a.write_config(&a_config("/svc => /srv; /x => /srv/world;"));
    assert!(
        a.eventually_admin("/config", "\"successes\":1").await,
        "reload seen"
    );
    a.write_config("[outbound]\ndtab = \"/svc =>\n");
    assert!(
        a.eventually_admin("/config", "\"valid\":false").await,
        "invalid edit reported"
    );
    let metrics = a.admin_get("/metrics").await;
    assert!(
        metrics.contains("meshwork_proxy_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshwork_proxy_config_valid 0"),
        "{metrics}"
    );
    // Restart one of A's peers.
    let b1 = b1.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    callers.stop_and_expect_all_ok().await;
    drop(b1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_services_takes_effect_with_no_failed_request() {
    support::init_tracing();
    let one = Backend::start("one", Duration::from_millis(5), 200).await;
    let two = Backend::start("two", Duration::from_millis(5), 200).await;
    let services = |world: &str, extra: &str| {
        format!(
            "[outbound]\ndtab = \"/svc => /srv;\"\n[[service]]\nname = \"/srv/world\"\nendpoints = [{world}]\n{extra}"
        )
    };
    let extra = |endpoints: &str| {
        format!("[[service]]\nname = \"/srv/extra\"\nendpoints = [{endpoints}]\n")
    };
    let a = Proxy::start("a", &services(&format!("\"{}\"", one.addr), &extra(""))).await;

    // A client that keeps calling `world` (bounded: 4 workers, at most 15 s).
    let callers = harness::Callers::start(a.outbound, "http://world/");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Edit the services while requests are in flight: `world` gets a second endpoint and `extra`
    // (no endpoints so far) gets one. The new clients replace the running ones under their names.
    a.write_config(&services(
        &format!("\"{}\", \"{}\"", one.addr, two.addr),
        &extra(&format!("\"{}\"", two.addr)),
    ));
    assert!(
        a.eventually_admin("/config", "\"successes\":1").await,
        "reload seen"
    );
    // The new `world` client is the one in use: its new endpoint gets traffic.
    assert!(
        support::eventually(Duration::from_secs(10), || two.hits() > 0).await,
        "the reloaded services are in use"
    );
    assert_eq!(
        harness::try_get(a.outbound, "http://extra/").await,
        Ok(200),
        "the edited service is reachable"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    callers.stop_and_expect_all_ok().await;
    let config = a.admin_get("/config").await;
    assert!(config.contains("\"valid\":true"), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_kept_open_across_a_reload_is_routed_by_the_new_config() {
    support::init_tracing();
    let one = Backend::start("one", Duration::ZERO, 200).await;
    let two = Backend::start("two", Duration::ZERO, 200).await;
    let config = |endpoint: std::net::SocketAddr| {
        format!("[outbound]\ndtab = \"/svc => /srv;\"\n[[service]]\nname = \"/srv/world\"\nendpoints = [\"{endpoint}\"]\n")
    };
    let a = Proxy::start("a", &config(one.addr)).await;
    // One HTTP/1.1 connection to the proxy, kept open for both requests.
    let tcp = tokio::net::TcpStream::connect(a.outbound)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = || {
        http::Request::get("http://world/")
            .header(http::header::HOST, "world")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request")
    };
    let rsp = send.send_request(request()).await.expect("first request");
    assert_eq!(rsp.status(), 200);
    drop(rsp);
    assert_eq!((one.hits(), two.hits()), (1, 0));

    // `world` moves to the other backend. The connection's next request follows the new
    // configuration, not the copy of the client it used before.
    a.write_config(&config(two.addr));
    assert!(
        a.eventually_admin("/config", "\"successes\":1").await,
        "reload seen"
    );
    send.ready().await.expect("connection still open");
    let rsp = send.send_request(request()).await.expect("second request");
    assert_eq!(rsp.status(), 200);
    assert_eq!((one.hits(), two.hits()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_stops_accepting() {
    support::init_tracing();
    let app = Backend::start("app", Duration::from_millis(1500), 200).await;
    let mut a = Proxy::start(
        "a",
        &format!("drain_timeout = \"20s\"\n[outbound]\ndtab = \"/svc => /srv;\"\n[[service]]\nname = \"/srv/world\"\nendpoints = [\"{}\"]\n", app.addr),
    )
    .await;
    let addr = a.outbound;
    let slow = tokio::spawn(async move { get(addr, "http://world/slow", &[], false).await });
    assert!(support::eventually(Duration::from_secs(10), || app.hits() == 1).await);
    a.signal_term();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after SIGTERM"
    );
    let rsp = slow.await.expect("request task");
    assert_eq!(rsp.status(), 200, "the request in flight finished");
    let status = a
        .wait_exit(Duration::from_secs(20))
        .expect("exited within the bound");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_made_by_the_proxy_carry_l5d_err() {
    support::init_tracing();
    // A port nothing listens on: connecting is refused.
    let (_dead, dead_addr) = support::refusing_port();
    let a = Proxy::start(
        "a",
        &format!("[outbound]\ndtab = \"/svc => /srv;\"\n[[service]]\nname = \"/srv/dead\"\nendpoints = [\"{dead_addr}\"]\n"),
    )
    .await;
    for (uri, expect) in [("http://nowhere/", 503), ("http://dead/", 0)] {
        let rsp = get(a.outbound, uri, &[], false).await;
        if expect != 0 {
            assert_eq!(rsp.status(), expect, "{uri}");
        }
        assert!(rsp.status().is_server_error(), "{uri}: {}", rsp.status());
        assert!(
            rsp.headers().contains_key("l5d-err"),
            "{uri}: {:?}",
            rsp.headers()
        );
    }
}

#[test]
fn check_reports_file_line_column_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[outbound]\nlisten = \"127.0.0.1:1\"\ndtab = \"/svc =>\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(harness::binary())
        .arg("check")
        .arg(&file)
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:3:8: invalid dtab", file.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    std::fs::write(&file, "[outbound]\nlisten = \"127.0.0.1:1\"\n").expect("write");
    let out = std::process::Command::new(harness::binary())
        .arg("check")
        .arg(&file)
        .output()
        .expect("run");
    assert!(out.status.success());
}

#[test]
fn ca_init_and_issue_write_a_workload_certificate_for_the_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(harness::binary())
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = dir.path().to_str().expect("utf-8 path");
    run(&["ca", "init", d]);
    run(&[
        "ca",
        "issue",
        "--identity",
        "spiffe://example.org/ns/shop/sa/web",
        d,
    ]);
    let creds = meshwork::tls::Credentials::from_files(&meshwork::tls::CredentialPaths {
        chain: dir.path().join("web.pem"),
        key: dir.path().join("web.key"),
        trust_bundle: dir.path().join("ca.pem"),
    })
    .expect("credentials load");
    assert_eq!(
        creds.identity().as_str(),
        "spiffe://example.org/ns/shop/sa/web"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_and_those_connection_names_stop_at_the_proxy() {
    support::init_tracing();
    // The backend answers with the names of the request headers it received.
    let app = Backend::with_handler(
        "app",
        handler(|req, _| async move {
            let mut names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
            names.sort_unstable();
            http::Response::builder()
                .header("x-seen", names.join(","))
                .body(Full::new(Bytes::from_static(b"ok")))
                .expect("response")
        }),
    )
    .await;
    let a = Proxy::start(
        "a",
        &format!(
            "[outbound]\ndtab = \"/svc => /srv;\"\n[[service]]\nname = \"/srv/app\"\nendpoints = [\"{}\"]\n",
            app.addr
        ),
    )
    .await;
    // The request header names the backend saw for one raw request.
    let seen = |request: &'static [u8]| async move {
        let mut tcp = tokio::net::TcpStream::connect(a.outbound)
            .await
            .expect("connect");
        tcp.write_all(request).await.expect("write");
        let head = harness::read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let seen = head
            .lines()
            .find_map(|l| l.strip_prefix("x-seen: "))
            .unwrap_or_else(|| panic!("no x-seen in {head}"));
        seen.split(',').map(str::to_owned).collect::<Vec<String>>()
    };
    let seen_names = seen(
        b"GET http://app/ HTTP/1.1\r\nHost: app\r\nConnection: x-secret, keep-alive\r\n\
          X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
          Proxy-Authorization: Basic eDp5\r\nX-Kept: 1\r\n\r\n",
    )
    .await;
    let seen_names: Vec<&str> = seen_names.iter().map(String::as_str).collect();
    assert!(seen_names.contains(&"x-kept"), "{seen_names:?}");
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(
            !seen_names.contains(&gone),
            "{gone} reached the backend: {seen_names:?}"
        );
    }
    // A Connection header that lies: empty and malformed tokens, padding, a second line. The
    // names that parse are dropped, the rest is ignored, and the request still goes through.
    let lying = seen(
        b"GET http://app/ HTTP/1.1\r\nHost: app\r\nConnection: ,, x-secret ,not a token\r\n\
          Connection: x-other\r\nX-Secret: 1\r\nX-Other: 2\r\nX-Kept: 1\r\n\r\n",
    )
    .await;
    assert!(lying.iter().any(|n| n == "x-kept"), "{lying:?}");
    for gone in ["x-secret", "x-other", "connection"] {
        assert!(
            !lying.iter().any(|n| n == gone),
            "{gone} reached the backend: {lying:?}"
        );
    }
}
