//! Endpoints that leave discovery free everything they held: metric series, tasks, connections.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use meshwork::discovery::{Discovery, Endpoint};
use support::{init_tracing, Backend};

/// Distinct `endpoint="..."` labels among the endpoint-scope series of the exposition.
fn endpoint_series(client: &meshwork::Client<Empty<Bytes>>) -> BTreeSet<String> {
    let text = client.telemetry().registry.encode().expect("encode");
    text.lines()
        .filter(|l| l.starts_with("meshwork_endpoint_"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("endpoint=\"")?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_endpoints_cycled_leave_only_the_live_sets_series_and_tasks() {
    init_tracing();
    const TOTAL: usize = 10_000;
    const LIVE: usize = 200;
    let runtime = tokio::runtime::Handle::current();
    let (discovery, updater) = Discovery::manual();
    let client = meshwork::client(discovery)
        .authority("churn.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    // Let the client's own tasks start before the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = runtime.metrics().num_alive_tasks();

    let started = tokio::time::Instant::now();
    let mut answered = 0;
    for _round in 0..TOTAL / LIVE {
        let mut backends = Vec::with_capacity(LIVE);
        for _ in 0..LIVE {
            backends.push(Backend::start("b", Duration::ZERO, 200).await);
        }
        let live: BTreeSet<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        updater
            .update(backends.iter().map(|b| Endpoint::new(b.addr)))
            .expect("update");
        // One request per endpoint of the set (the balancer spreads them).
        for _ in 0..LIVE {
            let req = http::Request::get("/").body(Empty::new()).expect("request");
            if let Ok(rsp) = client.request(req).await {
                if rsp.status() == 200 {
                    answered += 1;
                }
                let _ = rsp.into_body().collect().await;
            }
        }
        // The exposition never holds more than the live set (series of the last set included
        // while the balancer catches up, at most).
        let series = endpoint_series(&client);
        assert!(
            series.len() <= 2 * LIVE,
            "{} endpoint series with {LIVE} live endpoints",
            series.len()
        );
        drop(backends);
        let _ = live;
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the churn took too long"
        );
    }
    assert!(
        answered >= TOTAL * 9 / 10,
        "only {answered} of {TOTAL} answered"
    );

    // The last set leaves too: no endpoint series, and the tasks are back to their level.
    updater.update([]).expect("empty");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let series = endpoint_series(&client);
        let tasks = runtime.metrics().num_alive_tasks();
        if series.is_empty() && tasks <= baseline + 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after the churn: endpoint series {series:?} (want none), {tasks} tasks (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_leaves_evicted_beyond_the_leaf_cap_stop_their_resolver_tasks() {
    use meshwork::core::dtab::Dtab;
    use meshwork::core::route::{Backend as RouteBackend, Route, RouteTable, RouterConfig};
    use meshwork::routing::RoutedClientBuilder;
    use tower::ServiceExt;

    init_tracing();
    const NAMES: usize = 40;
    const CAP: usize = 4;
    let runtime = tokio::runtime::Handle::current();
    let mut backends = Vec::with_capacity(NAMES);
    for _ in 0..NAMES {
        backends.push(Backend::start("b", Duration::ZERO, 200).await);
    }
    // Host `wN` → `/svc/wN` → `/#/dns/127.0.0.1:<port of backend N>`: one DNS source per name (an
    // IP literal resolves without a query; the nameserver, never asked, stays on loopback).
    let dtab: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("/svc/w{i} => /#/dns/127.0.0.1:{};", b.addr.port()))
        .collect();
    let table = RouteTable::new(vec![Route::builder("by-host")
        .to(RouteBackend::Host("/svc".parse().expect("path")))
        .build()
        .expect("route")])
    .expect("table");
    let client = RoutedClientBuilder::new(table, Dtab::parse(&dtab).expect("dtab"))
        .dns(meshwork::discovery::DnsConfig {
            nameserver: Some("127.0.0.1:9".parse().expect("addr")),
            ..Default::default()
        })
        .router(RouterConfig {
            max_leaf_services: CAP,
            ..Default::default()
        })
        .build::<Empty<Bytes>>()
        .expect("routed client");

    // Each name until it answers (its source resolves asynchronously: 503 until then).
    let send_until_ok = |i: usize| {
        let client = client.clone();
        async move {
            for _ in 0..500 {
                let req = http::Request::get(format!("http://w{i}/"))
                    .body(Empty::new())
                    .expect("request");
                let rsp =
                    tokio::time::timeout(Duration::from_secs(30), client.clone().oneshot(req))
                        .await
                        .expect("request timed out")
                        .expect("request failed");
                let status = rsp.status();
                let _ = rsp.into_body().collect().await;
                if status == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("w{i} never answered");
        }
    };
    // The leaf cap's worth of names in use: the level the task count must come back to.
    for i in 0..CAP {
        send_until_ok(i).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = runtime.metrics().num_alive_tasks();

    // Every other name once, then the first ones again: each evicts a leaf client and its source.
    for i in (CAP..NAMES).chain(0..CAP) {
        send_until_ok(i).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = runtime.metrics().num_alive_tasks();
        // Kept before: a resolver and a watcher task per name, 2 * (NAMES - CAP) more.
        if tasks <= baseline + 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {NAMES} DNS names with a leaf cap of {CAP}: {tasks} tasks (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(backends);
}
