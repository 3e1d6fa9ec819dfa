//! The facade server: timers on every connection, a cap on request heads, and mesh errors
//! answered as responses when the served service is a meshwork client.

mod support;

use std::time::Duration;

use meshwork::accept::ServerConfig;
use meshwork::discovery::{Discovery, Endpoint};
use support::init_tracing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const EVENTUALLY: Duration = Duration::from_secs(20);

/// Serves `app` with `limits` in the background; returns the address.
async fn serve<S, B>(limits: ServerConfig, app: S) -> std::net::SocketAddr
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<meshwork::body::BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<meshwork::body::BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        meshwork::server()
            .limits(limits)
            .serve(listener, app, std::future::pending())
            .await
            .expect("serve");
    });
    addr
}

fn hello() -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<String>,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<http::Response<String>, std::convert::Infallible>>,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_req| std::future::ready(Ok(http::Response::new("hello".to_owned()))))
}

/// Reads until the server closes; returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
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
    assert!(read.is_ok(), "still open after {EVENTUALLY:?}");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn silent_and_half_sent_connections_are_closed_at_their_timeouts() {
    init_tracing();
    let limits = ServerConfig::default()
        .first_byte_timeout(Duration::from_millis(300))
        .header_read_timeout(Duration::from_millis(500));
    let addr = serve(limits, hello()).await;

    let opened = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\nX-Slow")
        .await
        .expect("write");

    assert_eq!(read_until_closed(&mut silent).await, "");
    assert!(opened.elapsed() >= Duration::from_millis(250));
    let seen = read_until_closed(&mut half).await;
    assert!(!seen.contains("200 OK"), "{seen}");
    assert!(opened.elapsed() >= Duration::from_millis(450));

    // The server still serves complete requests.
    let mut ok = TcpStream::connect(addr).await.expect("connect");
    ok.write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let seen = read_until_closed(&mut ok).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
}

#[tokio::test]
async fn a_70_kb_header_is_answered_431() {
    init_tracing();
    let addr = serve(ServerConfig::default(), hello()).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET / HTTP/1.1\r\nHost: svc.test\r\nCookie: {}\r\n\r\n",
        "c".repeat(70 * 1024)
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let seen = read_until_closed(&mut conn).await;
    assert!(seen.starts_with("HTTP/1.1 431"), "{seen}");
}

/// A raw HTTP/1.1 GET through the server at `addr`; returns the response head.
async fn get_head(addr: std::net::SocketAddr, extra: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET / HTTP/1.1\r\nHost: svc.test\r\n{extra}Connection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    read_until_closed(&mut conn).await.to_ascii_lowercase()
}

#[tokio::test]
async fn a_server_in_front_of_a_client_answers_502_when_the_endpoint_refuses() {
    init_tracing();
    // A port nothing listens on: connecting is refused.
    let (_dead, dead_addr) = support::refusing_port();
    let discovery = Discovery::fixed([Endpoint::new(dead_addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .retry(None)
        .breaker(None)
        .build::<hyper::body::Incoming>()
        .expect("client");
    let addr = serve(ServerConfig::default(), client).await;

    let head = get_head(addr, "").await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    let l5d_err = head
        .lines()
        .find(|l| l.starts_with("l5d-err:"))
        .unwrap_or_default()
        .to_owned();
    assert!(l5d_err.contains("connect"), "{head}");

    let grpc = get_head(addr, "Content-Type: application/grpc\r\n").await;
    assert!(grpc.starts_with("http/1.1 200"), "{grpc}");
    assert!(grpc.contains("grpc-status: 14"), "{grpc}");
}

#[tokio::test]
async fn a_server_in_front_of_a_client_answers_503_without_endpoints() {
    init_tracing();
    let (discovery, _updater) = Discovery::manual();
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .balance(meshwork::balance::Config {
            failfast_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .build::<hyper::body::Incoming>()
        .expect("client");
    let addr = serve(ServerConfig::default(), client).await;
    let head = get_head(addr, "").await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("l5d-err: no endpoints"), "{head}");
}

#[tokio::test]
async fn the_client_closes_idle_pooled_connections_at_their_idle_timeout() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    init_tracing();
    // A backend that counts its open connections and never closes one itself.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let open = counted.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let client = meshwork::client(Discovery::fixed([Endpoint::new(backend)]).expect("discovery"))
        .authority("svc.test")
        .idle_timeout(Some(Duration::from_millis(300)))
        .build::<http_body_util::Empty<bytes::Bytes>>()
        .expect("client");
    let rsp = client
        .request(
            http::Request::get("/")
                .body(http_body_util::Empty::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(rsp.status(), 200);
    drop(rsp);
    assert_eq!(open.load(Ordering::SeqCst), 1);
    let deadline = Instant::now() + EVENTUALLY;
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle pooled connection is still open after {EVENTUALLY:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A handler that panics costs its request a 500 with `l5d-err` (tower-http's `CatchPanic`), not
/// the connection: the next request on the same connection is served.
#[tokio::test]
async fn a_panicking_handler_answers_500_with_l5d_err_and_the_connection_serves_on() {
    init_tracing();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/panic" {
            panic!("handler bug");
        }
        Ok::<_, std::convert::Infallible>(http::Response::new("fine".to_owned()))
    });
    let addr = serve(ServerConfig::default(), app).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let seen = read_until_closed(&mut tcp).await;
    assert!(seen.starts_with("HTTP/1.1 500"), "{seen}");
    assert!(seen.contains("l5d-err: request handler panicked"), "{seen}");
    assert!(
        seen.contains("HTTP/1.1 200"),
        "the next request was not served: {seen}"
    );
    assert!(seen.ends_with("fine"), "{seen}");
}
