//! Hostile input against each of the proxy's listeners (outbound, inbound with mTLS, admin):
//! malformed and oversized requests, smuggling, slow heads, HTTP/2 abuse, garbage on the mTLS
//! port, a flood of connections. Each gets a 4xx or a closed connection, and the proxy serves
//! the next good request. The proxy runs with small limits and timers so each test is short.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{get, try_get, Certs, Proxy};
use crate::support::{self, handler, Backend};

/// The limits every hostile test runs with: small, so that each bound is reached quickly.
const LIMITS: &str = r#"
[limits]
first_byte_timeout = "1s"
header_read_timeout = "1s"
handshake_timeout = "1s"
idle_timeout = "3s"
max_header_bytes = 8192
max_headers = 20
max_request_body_bytes = 4096
max_concurrent_streams = 8
max_connections = 100
"#;

/// A backend answering 200 (after 500 ms for `/slow`), and how many `/smuggled` requests it saw.
async fn app() -> (Backend, Arc<AtomicUsize>) {
    let smuggled = Arc::new(AtomicUsize::new(0));
    let seen = smuggled.clone();
    let backend = Backend::with_handler(
        "app",
        handler(move |req, _| {
            let seen = seen.clone();
            async move {
                let path = req.uri().path().to_owned();
                if path == "/smuggled" {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                if path == "/slow" {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                // Read the body so a limit, not the backend, is what stops a long one.
                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                http::Response::builder()
                    .header("x-path", path)
                    .body(Full::new(Bytes::from_static(b"ok")))
                    .expect("response")
            }
        }),
    )
    .await;
    (backend, smuggled)
}

/// A proxy with outbound (overrides trusted, so an invalid dtab is judged), inbound (strict
/// mTLS as workload `b`, in front of `app`) and admin, under [`LIMITS`].
async fn proxy(certs: &Certs, app: SocketAddr) -> Proxy {
    proxy_with(certs, app, LIMITS).await
}

/// [`proxy`] with other `[limits]`.
async fn proxy_with(certs: &Certs, app: SocketAddr, limits: &str) -> Proxy {
    Proxy::start(
        "hostile",
        &format!(
            "{limits}\n[outbound]\ndtab = \"/svc => /srv;\"\ntrust_overrides = true\n[inbound]\napp = \"{app}\"\n{}\n[[service]]\nname = \"/srv/app\"\nendpoints = [\"{app}\"]\n",
            certs.tls("b", "strict")
        ),
    )
    .await
}

/// What a raw exchange ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The connection was closed (or reset) without a response.
    Closed,
}

impl Outcome {
    fn is_client_error_or_closed(&self) -> bool {
        match self {
            Outcome::Status(s) => (400..500).contains(s) || *s == 505,
            Outcome::Closed => true,
        }
    }
}

/// Reads the first response's status from `io`, or `Closed` if it ends first (20 s at most).
async fn outcome<IO: AsyncRead + Unpin>(io: &mut IO) -> Outcome {
    outcomes(io, false).await.0
}

/// Like [`outcome`]; with `drain`, reads until the connection closes (10 s at most) and also
/// returns how many responses came in all.
async fn outcomes<IO: AsyncRead + Unpin>(io: &mut IO, drain: bool) -> (Outcome, usize) {
    if !drain {
        let first = first_status(io).await;
        return (first, usize::from(first != Outcome::Closed));
    }
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "the connection stayed open");
    let text = String::from_utf8_lossy(&all);
    let first = match text.split(' ').nth(1).and_then(|s| s.parse().ok()) {
        Some(status) if text.starts_with("HTTP/1.1 ") => Outcome::Status(status),
        _ => Outcome::Closed,
    };
    (first, text.matches("HTTP/1.1 ").count())
}

async fn first_status<IO: AsyncRead + Unpin>(io: &mut IO) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                return match line.split(' ').nth(1).and_then(|s| s.parse().ok()) {
                    Some(status) => Outcome::Status(status),
                    None => panic!("not an HTTP/1 status line: {line:?}"),
                };
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a response or a close within 20 s")
}

/// Sends `bytes` on a new connection to `addr` and returns what came back (see [`outcomes`]).
async fn raw(addr: SocketAddr, bytes: &[u8], drain: bool) -> (Outcome, usize) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything: a failed write is still an outcome.
    let _ = tcp.write_all(bytes).await;
    outcomes(&mut tcp, drain).await
}

/// The hostile HTTP/1 requests every listener must refuse, by name. `{host}` is replaced.
fn hostile_requests() -> Vec<(&'static str, Vec<u8>)> {
    let big = "x".repeat(10_000);
    let many: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    vec![
        ("version HTTP/9.9", b"GET / HTTP/9.9\r\nHost: {host}\r\n\r\n".to_vec()),
        ("garbage request line", b"\x16\x03\x01 nonsense\r\n\r\n".to_vec()),
        ("no version", b"GET /\r\nHost: {host}\r\n\r\n".to_vec()),
        (
            "invalid header bytes",
            b"GET / HTTP/1.1\r\nHost: {host}\r\nx-bad: a\x01\x7fb\r\n\r\n".to_vec(),
        ),
        (
            "header line without a colon",
            b"GET / HTTP/1.1\r\nHost: {host}\r\nno-colon-here\r\n\r\n".to_vec(),
        ),
        (
            "oversized header",
            format!("GET / HTTP/1.1\r\nHost: {{host}}\r\nx-big: {big}\r\n\r\n").into_bytes(),
        ),
        (
            "too many headers",
            format!("GET / HTTP/1.1\r\nHost: {{host}}\r\n{many}\r\n").into_bytes(),
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "smuggling: Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
                .to_vec(),
        ),
        (
            "smuggling: two Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
                .to_vec(),
        ),
        (
            "smuggling: obfuscated Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
                .to_vec(),
        ),
        (
            "body over the limit (Content-Length)",
            format!(
                "POST / HTTP/1.1\r\nHost: {{host}}\r\nContent-Length: 5000\r\n\r\n{}",
                "b".repeat(5000)
            )
            .into_bytes(),
        ),
        (
            "body over the limit (chunked)",
            format!(
                "POST / HTTP/1.1\r\nHost: {{host}}\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n{}\r\n0\r\n\r\n",
                "b".repeat(5000)
            )
            .into_bytes(),
        ),
    ]
}

fn with_host(bytes: &[u8], host: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains('\u{fffd}') {
        return bytes.to_vec();
    }
    text.replace("{host}", host).into_bytes()
}

/// Sends every hostile request to `send` and checks each outcome (with `limits`, the exact
/// statuses of the size limits too), printing a line per request as it goes.
async fn refuse_all<F, Fut>(listener: &str, host: &str, limits: bool, mut send: F)
where
    F: FnMut(Vec<u8>, bool) -> Fut,
    Fut: std::future::Future<Output = (Outcome, usize)>,
{
    for (name, bytes) in hostile_requests() {
        // With both framings, hyper reads the body by `Transfer-Encoding` (RFC 9112 §6.3: the
        // `Content-Length` is dropped, so the next hop sees one framing), answers, and closes
        // the connection: what follows is never read as a second request.
        let both = name.starts_with("smuggling: Content-Length with");
        let (got, responses) = send(with_host(&bytes, host), both).await;
        eprintln!("{listener}: {name}: {got:?}, {responses} response(s)");
        if both {
            assert!(
                got.is_client_error_or_closed() || (got == Outcome::Status(200) && responses == 1),
                "{listener}: {name}: {got:?} and {responses} responses"
            );
            continue;
        }
        assert!(
            got.is_client_error_or_closed(),
            "{listener}: {name}: {got:?}, want a 4xx (or 505) or a closed connection"
        );
        if limits && name.starts_with("body over") {
            assert_eq!(got, Outcome::Status(413), "{listener}: {name}");
        }
        if name.starts_with("oversized") || name.starts_with("too many") {
            assert_eq!(got, Outcome::Status(431), "{listener}: {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_listener_refuses_hostile_http1_and_serves_the_next_request() {
    support::init_tracing();
    let certs = Certs::new();
    let (app, smuggled) = app().await;
    let p = proxy(&certs, app.addr).await;
    let addr = p.outbound;
    refuse_all("outbound", "app", true, |bytes, drain| async move {
        raw(addr, &bytes, drain).await
    })
    .await;
    assert_eq!(
        smuggled.load(Ordering::Relaxed),
        0,
        "a smuggled request reached the app"
    );
    // Invalid mesh headers: a dtab is a 400 (overrides are trusted here); deadlines and trace
    // contexts that do not parse are ignored, as the W3C and gRPC specifications say.
    let rsp = get(
        addr,
        "http://app/",
        &[("l5d-dtab", "/svc => ;;; nonsense")],
        false,
    )
    .await;
    assert_eq!(rsp.status(), 400);
    assert!(rsp.headers().contains_key("l5d-err"));
    for (name, value) in [
        ("grpc-timeout", "99999999999H"),
        ("grpc-timeout", "-1S"),
        ("l5d-ctx-deadline", "not a deadline"),
        ("x-envoy-expected-rq-timeout-ms", "-5"),
        ("traceparent", "00-zz-yy-01"),
        ("b3", "garbage-garbage"),
    ] {
        let rsp = get(addr, "http://app/", &[(name, value)], false).await;
        assert!(
            rsp.status() == 200 || rsp.status().is_client_error(),
            "{name}: {value}: {}",
            rsp.status()
        );
    }
    assert_eq!(try_get(addr, "http://app/good").await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed_at_their_timeouts() {
    support::init_tracing();
    let certs = Certs::new();
    let (app, _) = app().await;
    let p = proxy(&certs, app.addr).await;
    for addr in [p.outbound, p.admin] {
        // Silent: closed at the first-byte timeout (1 s).
        let started = std::time::Instant::now();
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(outcome(&mut tcp).await, Outcome::Closed);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // Trickled: one byte every 200 ms would take 12 s; the head must be read within 1 s.
        let started = std::time::Instant::now();
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let head = b"GET / HTTP/1.1\r\nHost: app\r\nx-slow: ".to_vec();
        let trickle = async {
            for byte in head
                .iter()
                .chain(b"abcdefghijklmnopqrstuvwxyz\r\n\r\n".iter())
            {
                if tcp.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), trickle).await;
        let got = outcome(&mut tcp).await;
        assert!(
            got == Outcome::Closed || got == Outcome::Status(408),
            "{addr}: {got:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{addr}: trickled head held for {:?}",
            started.elapsed()
        );
    }
    assert_eq!(try_get(p.outbound, "http://app/good").await, Ok(200));
    assert_eq!(try_get(p.admin, "/ready").await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_refuses_hostile_http1_and_serves_the_next_request() {
    support::init_tracing();
    let certs = Certs::new();
    let (app, _) = app().await;
    let p = proxy(&certs, app.addr).await;
    let addr = p.admin;
    // The admin port answers GET only: a body is refused by method (405), not by size.
    refuse_all("admin", "admin", false, |bytes, drain| async move {
        raw(addr, &bytes, drain).await
    })
    .await;
    assert_eq!(try_get(addr, "/ready").await, Ok(200));
    assert!(p.admin_get("/metrics").await.contains("meshwork_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_listener_closes_garbage_and_half_handshakes_and_refuses_hostile_http() {
    support::init_tracing();
    let certs = Certs::new();
    let (app, smuggled) = app().await;
    let p = proxy(&certs, app.addr).await;
    let addr = p.inbound;
    // Plaintext HTTP and garbage on the strict mTLS port: closed, never answered.
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        &b"\x00\x01\x02\x03garbage\xff\xfe"[..],
        // A TLS record header announcing a ClientHello that never comes (half a handshake).
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ] {
        let started = std::time::Instant::now();
        assert_eq!(
            raw(addr, bytes, false).await.0,
            Outcome::Closed,
            "{bytes:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
    // Over a real mTLS connection, the same hostile HTTP/1 requests as on the other listeners.
    let connector = meshwork::tls::client::TlsConnector::new(
        &certs.credentials("a"),
        meshwork::tls::Identity::parse(&certs.id("b")).expect("identity"),
    )
    .expect("connector")
    .with_alpn(&[b"http/1.1"]);
    refuse_all("inbound", "app", true, |bytes, drain| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let mut tls = connector.connect(tcp).await.expect("mTLS handshake");
            let _ = tls.write_all(&bytes).await;
            outcomes(&mut tls, drain).await
        }
    })
    .await;
    assert_eq!(
        smuggled.load(Ordering::Relaxed),
        0,
        "a smuggled request reached the app"
    );
    // The next good request through the mTLS port is served.
    let client = certs.mesh_client("a", addr, "b");
    let rsp = client
        .request(
            http::Request::get("http://app/good")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(rsp.status(), 200);
}

/// Writes an HTTP/2 frame header and payload.
async fn frame<W: AsyncWrite + Unpin>(w: &mut W, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut head = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    head.extend_from_slice(&stream.to_be_bytes());
    let _ = w.write_all(&head).await;
    let _ = w.write_all(payload).await;
}

/// Reads frames until a GOAWAY (returns its error code) or the end of the connection (`None`).
async fn goaway<R: AsyncRead + Unpin>(r: &mut R) -> Option<u32> {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            r.read_exact(&mut head).await.ok()?;
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await.ok()?;
            if head[3] == 0x7 && len >= 8 {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("GOAWAY or close within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_rapid_resets_and_oversized_frames_are_bounded() {
    support::init_tracing();
    let certs = Certs::new();
    let (app, _) = app().await;
    let p = proxy(&certs, app.addr).await;
    let addr = p.outbound;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    // Oversized frame: a 20,000-byte HEADERS frame beyond the 16 KiB SETTINGS_MAX_FRAME_SIZE.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(PREFACE).await;
    frame(&mut tcp, 0x4, 0, 0, &[]).await;
    frame(&mut tcp, 0x1, 0x4, 1, &vec![0u8; 20_000]).await;
    let started = std::time::Instant::now();
    let code = goaway(&mut tcp).await;
    eprintln!(
        "oversized frame: GOAWAY {code:?} after {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    assert!(
        code.is_none() || code == Some(0x6),
        "GOAWAY code {code:?}, want FRAME_SIZE_ERROR (6)"
    );

    // A stream flood: 32 requests at once on one connection; the server allows 8 at a time.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    // One exchange first, so the server's SETTINGS have arrived.
    let (rsp, _) = client
        .send_request(
            http::Request::get("http://app/").body(()).expect("request"),
            true,
        )
        .expect("send");
    assert_eq!(rsp.await.expect("response").status(), 200);
    assert!(
        client.current_max_send_streams() <= 8,
        "the server allows {} concurrent streams",
        client.current_max_send_streams()
    );
    let mut responses = Vec::new();
    for _ in 0..32 {
        let req = http::Request::get("http://app/slow")
            .body(())
            .expect("request");
        let sent = tokio::time::timeout(Duration::from_secs(20), async {
            client = client.clone().ready().await?;
            client.send_request(req, true)
        })
        .await
        .expect("a stream slot within 20 s");
        match sent {
            Ok((rsp, _)) => responses.push(rsp),
            Err(e) => panic!("sending a request: {e}"),
        }
    }
    let mut ok = 0;
    for rsp in responses {
        match tokio::time::timeout(Duration::from_secs(30), rsp).await {
            Ok(Ok(r)) if r.status() == 200 => ok += 1,
            Ok(Ok(r)) => panic!("status {}", r.status()),
            Ok(Err(e)) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
            Err(_) => panic!("a flooded stream got no answer in 30 s"),
        }
    }
    assert!(ok >= 8, "only {ok} of 32 flooded streams answered");
    eprintln!(
        "stream flood: {ok} of 32 answered in {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();

    // Rapid reset: open and cancel streams as fast as possible on one connection.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let before = app.hits();
    let mut sent = 0;
    let mut client = Some(client);
    for _ in 0..2_000 {
        let Some(c) = client.take() else { break };
        let Ok(mut c) = c.ready().await else { break };
        let req = http::Request::get("http://app/slow")
            .body(())
            .expect("request");
        match c.send_request(req, true) {
            Ok((rsp, _)) => {
                sent += 1;
                drop(rsp); // cancels the stream: RST_STREAM(CANCEL)
            }
            Err(_) => break,
        }
        client = Some(c);
    }
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
    assert!(ended.is_ok(), "the rapid-reset connection is still open");
    // Each reset stream that reached the app is bounded by the stream cap at any moment; the
    // count itself stays far below what was sent.
    let reached = app.hits() - before;
    eprintln!(
        "rapid reset: {sent} streams opened and reset, {reached} reached the app, {:?}",
        started.elapsed()
    );
    assert!(reached <= sent, "{reached} > {sent}");

    // The next good requests, over HTTP/1.1 and HTTP/2, are served.
    assert_eq!(try_get(addr, "http://app/good").await, Ok(200));
    assert_eq!(get(addr, "http://app/good", &[], true).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_capped_and_memory_returns_to_its_level() {
    support::init_tracing();
    let certs = Certs::new();
    let (app, _) = app().await;
    // Held connections keep their slots for 10 s, however slowly a loaded machine opens them.
    let limits = LIMITS.replace(
        "first_byte_timeout = \"1s\"",
        "first_byte_timeout = \"10s\"",
    );
    assert_ne!(limits, LIMITS);
    let p = proxy_with(&certs, app.addr, &limits).await;
    let addr = p.outbound;
    for _ in 0..20 {
        assert_eq!(try_get(addr, "http://app/warm").await, Ok(200));
    }
    let before = p.rss_kib();
    // 600 connections opened at once and held (the cap is 100: the rest are closed at once),
    // in two rounds.
    let mut peak = before;
    for _round in 0..2 {
        let started = std::time::Instant::now();
        let mut held = Vec::new();
        for _ in 0..600 {
            if let Ok(Ok(tcp)) =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
            {
                held.push(tcp);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        peak = peak.max(p.rss_kib());
        // Beyond the cap, new connections are closed at once.
        let mut closed = 0;
        eprintln!("flood: {} connected in {:?}", held.len(), started.elapsed());
        for tcp in held.iter_mut().rev().take(20) {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert!(closed > 0, "no connection beyond the cap was closed");
        drop(held);
    }
    // The held connections end (closed by the peer, or at the first-byte timeout) and the
    // proxy serves again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if try_get(addr, "http://app/after").await == Ok(200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving after the flood"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = p.rss_kib();
    eprintln!("connection flood: RSS {before} KiB before, peak {peak} KiB, {after} KiB after");
    assert!(
        after <= before + 4 * 1024,
        "RSS {after} KiB after the flood, {before} KiB before (peak {peak} KiB)"
    );
}
