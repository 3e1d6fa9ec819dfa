//! The facade client over real backends on 127.0.0.1: balancing, discovery updates, authority.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use meshwork::discovery::{Discovery, Endpoint};
use support::{init_tracing, Backend};

async fn get(client: &meshwork::Client<Empty<Bytes>>) -> (String, String) {
    let req = http::Request::get("/").body(Empty::new()).expect("request");
    let rsp = client.request(req).await.expect("response");
    assert!(rsp.status().is_success(), "status {}", rsp.status());
    let header = |name: &str| {
        rsp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (backend, host) = (header("x-backend"), header("x-seen-host"));
    rsp.into_body().collect().await.expect("body");
    (backend, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_requests_go_to_the_fast_endpoint() {
    init_tracing();
    let fast = Backend::start("fast", Duration::from_millis(1), 200).await;
    let slow = Backend::start("slow", Duration::from_millis(60), 200).await;
    let discovery =
        Discovery::fixed([Endpoint::new(fast.addr), Endpoint::new(slow.addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .build::<Empty<Bytes>>()
        .expect("client");

    for _ in 0..200 {
        get(&client).await;
    }
    // Both start at the 30 ms default estimate; once measured, the 60 ms endpoint is twice as
    // expensive as the default and far more than the fast one, so it gets a small share.
    assert!(
        fast.hits() > 4 * slow.hits(),
        "fast {} slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test]
async fn requests_keep_their_logical_authority() {
    init_tracing();
    let backend = Backend::start("one", Duration::ZERO, 200).await;
    let discovery = Discovery::fixed([Endpoint::new(backend.addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("world.svc:8080")
        .build::<Empty<Bytes>>()
        .expect("client");
    let (_, host) = get(&client).await;
    assert_eq!(host, "world.svc:8080");

    // An absolute URI's authority wins over the default.
    let req = http::Request::get("http://hello.svc/path")
        .body(Empty::new())
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.headers()["x-seen-host"], "hello.svc");
}

#[tokio::test]
async fn discovery_updates_move_traffic() {
    init_tracing();
    let a = Backend::start("a", Duration::ZERO, 200).await;
    let b = Backend::start("b", Duration::ZERO, 200).await;
    let (discovery, updater) = Discovery::manual();
    updater.update([Endpoint::new(a.addr)]).expect("update");
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .build::<Empty<Bytes>>()
        .expect("client");

    for _ in 0..20 {
        assert_eq!(get(&client).await.0, "a");
    }
    updater.update([Endpoint::new(b.addr)]).expect("update");
    // The balancer applies the change asynchronously; within a bounded time only `b` is used.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if get(&client).await.0 == "b" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "update never applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = a.hits();
    for _ in 0..20 {
        assert_eq!(get(&client).await.0, "b");
    }
    assert_eq!(a.hits(), before);
}

#[tokio::test]
async fn an_empty_set_fails_fast_with_no_endpoints() {
    init_tracing();
    let (discovery, _updater) = Discovery::manual();
    let config = meshwork::balance::Config {
        failfast_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .balance(config)
        .build::<Empty<Bytes>>()
        .expect("client");
    let req = http::Request::get("/").body(Empty::new()).expect("request");
    let started = tokio::time::Instant::now();
    let err = client.request(req).await.expect_err("no endpoints");
    assert!(err.is_no_endpoints(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_request_without_any_authority_is_rejected() {
    init_tracing();
    let backend = Backend::start("one", Duration::ZERO, 200).await;
    let discovery = Discovery::fixed([Endpoint::new(backend.addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .build::<Empty<Bytes>>()
        .expect("client");
    let req = http::Request::get("/").body(Empty::new()).expect("request");
    let err = client.request(req).await.expect_err("no authority");
    assert!(
        matches!(err, meshwork::client::Error::MissingAuthority),
        "{err}"
    );
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn server_errors_steer_traffic_away() {
    init_tracing();
    let good = Backend::start("good", Duration::from_millis(2), 200).await;
    let bad = Backend::start("bad", Duration::ZERO, 503).await;
    let discovery =
        Discovery::fixed([Endpoint::new(good.addr), Endpoint::new(bad.addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("svc.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    let mut ok = 0;
    for _ in 0..300 {
        let req = http::Request::get("/").body(Empty::new()).expect("request");
        let rsp = client.request(req).await.expect("response");
        if rsp.status().is_success() {
            ok += 1;
        }
    }
    // A 503 answered at once must not make `bad` look fast: most requests go to `good`.
    assert!(ok >= 270, "only {ok} of 300 succeeded");
}

#[tokio::test]
async fn golden_metrics_are_recorded_by_default() {
    init_tracing();
    let backend = Backend::start("one", Duration::ZERO, 200).await;
    let discovery = Discovery::fixed([Endpoint::new(backend.addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("metrics.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    for _ in 0..7 {
        get(&client).await;
    }
    let text = client.telemetry().registry.encode().expect("encode");
    let count = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains("metrics.test"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("meshwork_route_requests_total"), 7.0, "{text}");
    assert_eq!(count("meshwork_endpoint_requests_total"), 7.0, "{text}");
    assert!(text.contains("meshwork_route_retries"), "{text}");
    assert!(
        text.contains(r#"meshwork_backend_endpoints{backend="metrics.test",state="available"} 1"#),
        "{text}"
    );
    let stat = client.telemetry().stat_json();
    assert!(stat.to_string().contains("metrics.test"), "{stat}");
}

#[tokio::test]
async fn an_invalid_authority_is_rejected_at_build() {
    let discovery =
        Discovery::fixed([Endpoint::new("127.0.0.1:9".parse().expect("addr"))]).expect("discovery");
    let err = meshwork::client(discovery)
        .authority("not a valid authority")
        .build::<Empty<Bytes>>()
        .expect_err("invalid authority");
    assert!(err.to_string().contains("authority"), "{err}");
}

#[tokio::test]
async fn a_failing_discovery_source_shows_in_the_metrics() {
    init_tracing();
    let (discovery, updater) = Discovery::manual();
    let source = discovery.source().to_owned();
    let client = meshwork::client(discovery)
        .authority("health.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    let gauge = |name: &str| -> String {
        let text = client.telemetry().registry.encode().expect("encode");
        let prefix = format!("{name}{{source=\"{source}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_owned()
    };
    // Nothing read yet: not healthy, no success ever.
    assert_eq!(gauge("meshwork_discovery_healthy"), "0.0");
    assert_eq!(
        gauge("meshwork_discovery_last_success_timestamp_seconds"),
        "0.0"
    );

    let ep = Endpoint::new("127.0.0.1:9".parse().expect("addr"));
    updater.update([ep.clone()]).expect("update");
    assert_eq!(gauge("meshwork_discovery_healthy"), "1.0");
    let at: f64 = gauge("meshwork_discovery_last_success_timestamp_seconds")
        .parse()
        .expect("a number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((now - 60.0..=now + 1.0).contains(&at), "{at} vs {now}");

    // A rejected update keeps the set, and the source reads as failing until the next good one.
    assert!(updater.update([ep.clone().with_weight(-1.0)]).is_err());
    assert_eq!(gauge("meshwork_discovery_healthy"), "0.0");
    assert_eq!(client.discovery().current().len(), 1);
    updater.update([ep]).expect("update");
    assert_eq!(gauge("meshwork_discovery_healthy"), "1.0");
}

#[tokio::test]
async fn a_failed_connect_prints_each_cause_once() {
    init_tracing();
    // A port nothing listens on.
    let (_held, addr) = support::refusing_port();
    let discovery = Discovery::fixed([Endpoint::new(addr)]).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("refused.test")
        .retry(None)
        .build::<Empty<Bytes>>()
        .expect("client");
    let req = http::Request::get("/").body(Empty::new()).expect("request");
    let err = client.request(req).await.expect_err("nothing listens");
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut causes = Vec::new();
    while let Some(error) = next {
        if let Some(source) = error.source() {
            let (outer, inner) = (error.to_string(), source.to_string());
            assert!(
                !outer.contains(&inner),
                "{outer:?} repeats its source {inner:?}"
            );
        }
        causes.push(error.to_string());
        next = error.source();
    }
    let chain = causes.join(": ");
    assert!(chain.contains(&addr.to_string()), "{chain}");
    assert!(chain.to_lowercase().contains("refused"), "{chain}");
}

/// A raw HTTP/1.1 backend on its own thread and runtime: answers every request on a connection with `200 ok` after `delay`, and closes each
/// connection `close_after` after its first response (`None`: keeps it). Returns the address and
/// the number of connections accepted.
fn raw_backend(
    delay: Duration,
    close_after: Option<Duration>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            tokio::time::sleep(delay).await;
                            let rsp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(rsp).await.is_err() {
                                return;
                            }
                            if let Some(after) = close_after {
                                tokio::time::sleep(after).await;
                                return; // drops the socket: closed while the client holds it idle
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
    });
    (addr, accepted)
}

#[tokio::test]
async fn http1_connections_are_reused_once_their_response_is_read() {
    use std::sync::atomic::Ordering;
    init_tracing();
    let (addr, accepted) = raw_backend(Duration::from_millis(100), None);
    let client = meshwork::client(Discovery::fixed([Endpoint::new(addr)]).expect("discovery"))
        .authority("svc.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    let send = || async {
        let req = http::Request::get("/").body(Empty::new()).expect("request");
        let rsp = client.request(req).await.expect("response");
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.expect("body");
    };
    // Eight at once need eight connections (the backend takes 100 ms per response) ...
    futures_util::future::join_all((0..8).map(|_| send())).await;
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        opened >= 8,
        "{opened} connections for 8 concurrent requests"
    );
    // ... which then carry the next requests, one at a time or eight at once: none is dialed
    // again.
    for _ in 0..8 {
        send().await;
    }
    futures_util::future::join_all((0..8).map(|_| send())).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        opened,
        "idle connections were not reused"
    );
}

#[tokio::test]
async fn a_connection_the_endpoint_closed_while_idle_is_replaced_without_failing_a_request() {
    use std::sync::atomic::Ordering;
    init_tracing();
    let (addr, accepted) = raw_backend(Duration::ZERO, Some(Duration::from_millis(20)));
    let client = meshwork::client(Discovery::fixed([Endpoint::new(addr)]).expect("discovery"))
        .authority("svc.test")
        .retry(None)
        .build::<Empty<Bytes>>()
        .expect("client");
    for n in 1..=3 {
        let req = http::Request::get("/").body(Empty::new()).expect("request");
        let rsp = client
            .request(req)
            .await
            .expect("the request succeeds on a new connection");
        assert_eq!(rsp.status(), 200);
        assert_eq!(
            rsp.into_body().collect().await.expect("body").to_bytes(),
            "ok"
        );
        // The backend closes the connection 20 ms after answering; the next request finds it
        // closed in the stack.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}
