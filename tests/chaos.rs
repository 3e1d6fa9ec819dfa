//! Backends killed and restarted under load behind the facade client with its defaults
//! (`examples/chaos.rs`, run here for a few seconds), and the whole set going down and coming back.

#[path = "../examples/chaos.rs"]
#[allow(dead_code, unreachable_pub)]
mod chaos;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use chaos::{Backend, Settings};
use http_body_util::Empty;
use meshwork::discovery::{Discovery, Endpoint};
use tokio::time::Instant;

fn get() -> http::Request<Empty<Bytes>> {
    http::Request::get("/").body(Empty::new()).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_backends_fail_no_requests() {
    let report = chaos::run(Settings {
        duration: Duration::from_secs(4),
        kill_min: Duration::from_millis(200),
        kill_max: Duration::from_millis(600),
        loops: 8,
    })
    .await;
    eprintln!("{report} (kills {})", report.kills);
    assert!(report.kills >= 2, "the backends were shaken: {report:?}");
    assert!(report.requests >= 100, "{report:?}");
    assert_eq!(report.failed, 0, "{:#?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_fail_fast_with_the_cause_and_one_back_serves_within_a_second() {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(
            Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind"),
        );
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let discovery = Discovery::fixed(addrs.iter().map(|a| Endpoint::new(*a))).expect("discovery");
    let client = meshwork::client(discovery)
        .authority("chaos.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    for _ in 0..20 {
        let rsp = client.request(get()).await.expect("all up");
        assert_eq!(rsp.status(), 200);
    }
    drop(backends);

    // Everything down: each request fails well within the 3 s failfast time, saying why.
    for _ in 0..20 {
        let start = Instant::now();
        let err = client.request(get()).await.expect_err("nothing listens");
        let took = start.elapsed();
        let why = chaos::chain(&err);
        assert!(took < Duration::from_secs(3), "took {took:?}: {why}");
        assert!(why.contains("refused"), "the cause is named: {why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One comes back: traffic succeeds within about a second.
    let back = Backend::start(addrs[1]).await.expect("rebind");
    let up = Instant::now();
    loop {
        if let Ok(rsp) = client.request(get()).await {
            if rsp.status() == 200 {
                break;
            }
        }
        assert!(
            up.elapsed() < Duration::from_millis(1500),
            "no success {:?} after a backend came back",
            up.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("first success {:?} after the restart", up.elapsed());
    drop(back);
}
