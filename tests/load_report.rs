//! Server-reported load end to end: meshwork servers attach their load to each response, the
//! facade client balances on it, and no report travels past the hop that reads it.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use meshwork::discovery::{Discovery, Endpoint};
use meshwork::load_report::LoadReportConfig;
use support::{handler, init_tracing, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceExt};

const REPORT: &str = "endpoint-load-metrics";
const EVENTUALLY: Duration = Duration::from_secs(30);

/// A meshwork server whose application serves `capacity` requests at once, each in `service`,
/// naming itself in `x-server`; with load reports of that capacity when `report` is set.
async fn app_server(
    name: &'static str,
    service: Duration,
    capacity: usize,
    report: bool,
) -> SocketAddr {
    let app = tower::ServiceBuilder::new()
        .concurrency_limit(capacity)
        .service(tower::service_fn(
            move |_req: http::Request<hyper::body::Incoming>| async move {
                tokio::time::sleep(service).await;
                let rsp = http::Response::builder()
                    .header("x-server", name)
                    .body(Full::new(Bytes::from_static(b"ok")))
                    .expect("response");
                Ok::<_, std::convert::Infallible>(rsp)
            },
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut server = meshwork::server();
    if report {
        server = server.load_reports(LoadReportConfig {
            capacity: u32::try_from(capacity).expect("small"),
        });
    }
    tokio::spawn(async move {
        server
            .serve(listener, app, std::future::pending())
            .await
            .expect("serve");
    });
    addr
}

/// One HTTP/1.1 GET over a fresh connection; the response head, lower-cased.
async fn get_head(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    tokio::time::timeout(EVENTUALLY, conn.read_to_end(&mut seen))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_arrive_estimates_converge_and_share_follows_capacity() {
    init_tracing();
    // "fast": 4 at once, 10 ms each (400 requests/s); "slow": 1 at once, 40 ms (25/s).
    let fast = app_server("fast", Duration::from_millis(10), 4, true).await;
    let slow = app_server("slow", Duration::from_millis(40), 1, true).await;
    let client = meshwork::client(
        Discovery::fixed([Endpoint::new(fast), Endpoint::new(slow)]).expect("discovery"),
    )
    .authority("svc.test")
    .build::<Empty<Bytes>>()
    .expect("client");

    // 8 concurrent request loops, 40 requests each: more than "fast" serves at once.
    let hits: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let leaked = Arc::new(AtomicUsize::new(0));
    let loops = (0..8).map(|_| {
        let mut client = client.clone();
        let (hits, leaked) = (hits.clone(), leaked.clone());
        tokio::spawn(async move {
            for _ in 0..40 {
                let req = http::Request::get("/").body(Empty::new()).expect("request");
                let rsp = client.ready().await.expect("ready").call(req).await;
                let rsp = rsp.expect("every request succeeds");
                if rsp.headers().contains_key(REPORT) {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
                let i = usize::from(rsp.headers()["x-server"] == "slow");
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let all = futures_util::future::join_all(loops);
    for done in tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the loops finish in time")
    {
        done.expect("loop");
    }

    // The reports arrived, and none reached the caller.
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "a load report passed the client"
    );
    let stats = client.endpoints();
    let of = |addr: SocketAddr| {
        stats
            .iter()
            .find(|s| s.key == addr)
            .expect("endpoint in the set")
    };
    let (f, s) = (of(fast), of(slow));
    assert!(f.reports > 0 && s.reports > 0, "{stats:?}");
    assert_eq!((f.malformed_reports, s.malformed_reports), (0, 0));
    let (fr, sr) = (
        f.report.expect("fast reported"),
        s.report.expect("slow reported"),
    );
    assert_eq!((fr.capacity, sr.capacity), (4, 1));

    // The estimates are the servers' true service times (queueing excluded), not the client's
    // queue-inflated round trips. Sleeps overrun on a loaded machine, hence the upper margins.
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    assert!(
        (9.0..=30.0).contains(&ms(fr.service_time)),
        "fast: {:?}",
        fr.service_time
    );
    assert!(
        (38.0..=90.0).contains(&ms(sr.service_time)),
        "slow: {:?}",
        sr.service_time
    );

    // The share follows capacity: "fast" serves 16× the throughput and gets most of it.
    let (nf, ns) = (
        hits[0].load(Ordering::Relaxed),
        hits[1].load(Ordering::Relaxed),
    );
    assert_eq!(nf + ns, 320);
    assert!(nf >= 4 * ns, "fast {nf}, slow {ns}");
}

#[tokio::test]
async fn no_report_travels_past_the_hop_that_reads_it() {
    init_tracing();
    // inner (reports, capacity 2) ◀── middle's client ◀── middle server ◀── raw caller
    let inner = app_server("inner", Duration::from_millis(1), 2, true).await;
    for middle_reports in [false, true] {
        let client = meshwork::client(Discovery::fixed([Endpoint::new(inner)]).expect("discovery"))
            .authority("svc.test")
            .build::<hyper::body::Incoming>()
            .expect("client");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let middle = listener.local_addr().expect("addr");
        let mut server = meshwork::server();
        if middle_reports {
            server = server.load_reports(LoadReportConfig { capacity: 7 });
        }
        let task = tokio::spawn(async move {
            let _ = server.serve(listener, client, std::future::pending()).await;
        });

        let head = get_head(middle).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("x-server: inner"), "{head}");
        let reports: Vec<&str> = head.lines().filter(|l| l.starts_with(REPORT)).collect();
        if middle_reports {
            // Exactly one report: the middle server's own, never the inner one's.
            assert_eq!(reports.len(), 1, "{head}");
            assert!(reports[0].contains("named_metrics.concurrency=7"), "{head}");
        } else {
            assert!(reports.is_empty(), "{head}");
        }
        task.abort();
    }
}

#[tokio::test]
async fn reports_are_off_by_default() {
    init_tracing();
    let plain = app_server("plain", Duration::ZERO, 1, false).await;
    let head = get_head(plain).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains(REPORT), "{head}");
}

#[tokio::test]
async fn a_malformed_report_is_ignored_counted_and_removed() {
    init_tracing();
    let backend = Backend::with_handler(
        "garbled",
        handler(|_req, _| async {
            http::Response::builder()
                .header(REPORT, "TEXT named_metrics.requests_in_flight=-3")
                .body(Full::new(Bytes::from_static(b"ok")))
                .expect("response")
        }),
    )
    .await;
    let mut client =
        meshwork::client(Discovery::fixed([Endpoint::new(backend.addr)]).expect("discovery"))
            .authority("svc.test")
            .build::<Empty<Bytes>>()
            .expect("client");
    for _ in 0..3 {
        let req = http::Request::get("/").body(Empty::new()).expect("request");
        let rsp = client
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("response");
        assert_eq!(rsp.status(), 200);
        assert!(!rsp.headers().contains_key(REPORT));
    }
    let stats = client.endpoints();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].malformed_reports, 3);
    // Never a usable report: the endpoint stays on the peak-EWMA cost.
    assert!(stats[0].report.is_none());
}
