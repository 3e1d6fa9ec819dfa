use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;

/// Generous bound for "eventually" on a loaded 2-core machine.
const EVENTUALLY: Duration = Duration::from_secs(20);

type App = tower::util::BoxCloneSyncService<Request<Incoming>, Response<Full<Bytes>>, Infallible>;

fn hello() -> App {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    }))
}

fn sleepy(delay: Duration) -> App {
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_req: Request<Incoming>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slept"))))
        },
    ))
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start(config: ServerConfig, app: App) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::new(config).expect("valid config");
    let task = tokio::spawn(async move {
        server
            .serve(listener, Plain, app, async {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(EVENTUALLY, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {EVENTUALLY:?}"
    );
    (seen, Instant::now())
}

#[tokio::test]
async fn connection_that_sends_nothing_is_closed_at_first_byte_timeout() {
    let running = start(
        ServerConfig::default().first_byte_timeout(Duration::from_millis(300)),
        hello(),
    )
    .await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(running.addr).await.expect("connect");
    let (seen, closed) = read_until_closed(&mut silent).await;
    assert!(seen.is_empty());
    assert!(
        closed - opened >= Duration::from_millis(250),
        "closed before its timeout"
    );
}

#[tokio::test]
async fn half_sent_request_head_is_closed_at_header_read_timeout() {
    let running = start(
        ServerConfig::default().header_read_timeout(Duration::from_millis(300)),
        hello(),
    )
    .await;
    let mut slow = TcpStream::connect(running.addr).await.expect("connect");
    let opened = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: example\r\nX-Slow: ")
        .await
        .expect("write");
    let (seen, closed) = read_until_closed(&mut slow).await;
    assert!(
        !seen.starts_with(b"HTTP/1.1 200"),
        "a half-sent head was served"
    );
    assert!(
        closed - opened >= Duration::from_millis(250),
        "closed before its timeout"
    );
}

#[tokio::test]
async fn keepalive_connection_without_requests_is_closed_at_idle_timeout() {
    let running = start(
        ServerConfig::default().idle_timeout(Duration::from_millis(400)),
        hello(),
    )
    .await;
    let mut conn = TcpStream::connect(running.addr).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .expect("write");
    let (seen, _) = read_until_closed(&mut conn).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.ends_with("hello"), "{seen}");
}

#[tokio::test]
async fn request_head_over_the_cap_is_answered_431() {
    let running = start(ServerConfig::default(), hello()).await;
    let mut conn = TcpStream::connect(running.addr).await.expect("connect");
    let big = "a".repeat(70 * 1024);
    let head = format!("GET / HTTP/1.1\r\nHost: example\r\nX-Big: {big}\r\n\r\n");
    // The server may close before reading all of it; a failed write is fine.
    let _ = conn.write_all(head.as_bytes()).await;
    let (seen, _) = read_until_closed(&mut conn).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 431"), "{seen}");
}

/// The status line a server with `config` answers to a request head of `fields` header fields.
async fn status_for_header_fields(config: ServerConfig, fields: usize) -> String {
    let running = start(config, hello()).await;
    let mut conn = TcpStream::connect(running.addr).await.expect("connect");
    let mut head = String::from("GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n");
    for i in 2..fields {
        head.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    // The server may close before reading all of it; a failed write is fine.
    let _ = conn.write_all(head.as_bytes()).await;
    let (seen, _) = read_until_closed(&mut conn).await;
    let seen = String::from_utf8_lossy(&seen);
    seen.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn header_fields_over_the_cap_are_answered_431() {
    // The default cap, 100, is hyper's own (the server leaves it unset): exactly 100 pass.
    assert_eq!(ServerConfig::default().max_headers, 100);
    let at = status_for_header_fields(ServerConfig::default(), 100).await;
    assert!(at.starts_with("HTTP/1.1 200"), "{at}");
    let over = status_for_header_fields(ServerConfig::default(), 101).await;
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
    // A cap of its own, below and above the default.
    let at = status_for_header_fields(ServerConfig::default().max_headers(5), 5).await;
    assert!(at.starts_with("HTTP/1.1 200"), "{at}");
    let over = status_for_header_fields(ServerConfig::default().max_headers(5), 6).await;
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
    let at = status_for_header_fields(ServerConfig::default().max_headers(150), 150).await;
    assert!(at.starts_with("HTTP/1.1 200"), "{at}");
    let over = status_for_header_fields(ServerConfig::default().max_headers(150), 151).await;
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
}

#[tokio::test]
async fn request_head_under_the_cap_is_served() {
    let running = start(ServerConfig::default(), hello()).await;
    let mut conn = TcpStream::connect(running.addr).await.expect("connect");
    let header = "a".repeat(12 * 1024);
    let head =
        format!("GET / HTTP/1.1\r\nHost: example\r\nX-Big: {header}\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await.expect("write");
    let (seen, _) = read_until_closed(&mut conn).await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
}

/// A request that finds the service not ready (a concurrency limit held by another
/// connection's request) waits for it and is served. The connection's kept service must hold no
/// place in the limit's queue: the permit the first request frees would go to that place, and
/// the waiting request would never be served.
#[tokio::test]
async fn a_request_that_finds_the_service_not_ready_waits_and_is_served() {
    let limited = tower::limit::ConcurrencyLimit::new(sleepy(Duration::from_millis(300)), 1);
    let running = start(ServerConfig::default(), App::new(limited)).await;
    let request = b"GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n";
    let mut first = TcpStream::connect(running.addr).await.expect("connect");
    first.write_all(request).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TcpStream::connect(running.addr).await.expect("connect");
    second.write_all(request).await.expect("write");
    let both = async {
        let (a, _) = read_until_closed(&mut first).await;
        let (b, _) = read_until_closed(&mut second).await;
        (a, b)
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .expect("both requests are served once the limit frees");
    for seen in [a, b] {
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        assert!(seen.ends_with("slept"), "{seen}");
    }
}

#[tokio::test]
async fn drain_lets_the_request_in_flight_finish() {
    let mut running = start(ServerConfig::default(), sleepy(Duration::from_millis(500))).await;
    let mut conn = TcpStream::connect(running.addr).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = running.stop.take().map(|stop| stop.send(()));
    let (seen, _) = read_until_closed(&mut conn).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.ends_with("slept"), "{seen}");
    tokio::time::timeout(EVENTUALLY, running.task)
        .await
        .expect("serve returns once drained")
        .expect("no panic");
    assert!(
        TcpStream::connect(running.addr).await.is_err(),
        "the listener is closed after the drain"
    );
}

#[tokio::test]
async fn drain_closes_an_idle_keepalive_connection_at_once() {
    // Idle and drain timeouts far beyond the test's bound: only the drain itself may close it.
    let config = ServerConfig::default()
        .idle_timeout(Duration::from_secs(600))
        .drain_timeout(Duration::from_secs(600));
    let mut running = start(config, hello()).await;
    let mut conn = TcpStream::connect(running.addr).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let stopped = Instant::now();
    let _ = running.stop.take().map(|stop| stop.send(()));
    let (seen, closed) = read_until_closed(&mut conn).await;
    assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));
    assert!(
        closed - stopped < Duration::from_secs(5),
        "closed at the drain"
    );
    tokio::time::timeout(EVENTUALLY, running.task)
        .await
        .expect("serve returns once the connection is closed")
        .expect("no panic");
}

#[tokio::test]
async fn drain_closes_what_is_left_after_the_drain_timeout() {
    let config = ServerConfig::default().drain_timeout(Duration::from_millis(300));
    let mut running = start(config, sleepy(Duration::from_secs(3600))).await;
    let mut conn = TcpStream::connect(running.addr).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = running.stop.take().map(|stop| stop.send(()));
    tokio::time::timeout(EVENTUALLY, running.task)
        .await
        .expect("serve returns after the drain timeout")
        .expect("no panic");
    let (seen, _) = read_until_closed(&mut conn).await;
    assert!(seen.is_empty());
}

/// A listener whose first accepts fail, as with EMFILE.
struct Flaky {
    failures: usize,
    inner: TcpListener,
}

impl Listener for Flaky {
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(io::Error::other("Too many open files"));
        }
        self.inner.accept().await
    }
}

#[tokio::test]
async fn accept_errors_do_not_end_the_loop() {
    let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = inner.local_addr().expect("addr");
    let server = Server::new(ServerConfig::default()).expect("valid");
    let task = tokio::spawn(async move {
        server
            .serve(
                Flaky { failures: 5, inner },
                Plain,
                hello(),
                std::future::pending(),
            )
            .await;
    });
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (seen, _) = read_until_closed(&mut conn).await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    assert!(!task.is_finished());
    task.abort();
}

#[test]
fn config_out_of_range_is_a_typed_error() {
    let error = Server::new(ServerConfig::default().max_header_bytes(100)).expect_err("too small");
    assert!(error.to_string().contains("max_header_bytes"), "{error}");
    let error = ServerConfig::default()
        .idle_timeout(Duration::ZERO)
        .validate()
        .expect_err("zero");
    assert!(error.to_string().contains("idle_timeout"), "{error}");
}
