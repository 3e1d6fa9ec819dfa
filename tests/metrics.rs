//! The metric table in `mesh_core::metrics`' docs, checked against a real exposition of a server
//! and a client talking over 127.0.0.1; and client names that keep series apart.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use meshwork::core::metrics::Telemetry;
use meshwork::core::stat::StatConfig;
use meshwork::core::trace::Tracing;
use meshwork::discovery::{Discovery, Endpoint};
use support::init_tracing;

/// The documented table: metric name → (type, label names).
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let source = include_str!("../mesh-core/src/metrics/mod.rs");
    let mut table = BTreeMap::new();
    for line in source.lines() {
        let Some(row) = line.strip_prefix("//! | `meshwork_") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let name = format!("meshwork_{}", cells[0].trim_end_matches('`'));
        let kind = cells[1].trim().to_owned();
        // OpenMetrics names a counter family without `_total`; its samples carry it.
        let name = match (kind.as_str(), name.strip_suffix("_total")) {
            ("counter", Some(family)) => family.to_owned(),
            _ => name,
        };
        // Label names are the backticked words outside parentheses (which list values).
        let mut labels = BTreeSet::new();
        let mut depth = 0;
        let mut rest = cells[2];
        let mut plain = String::new();
        for c in rest.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        rest = &plain;
        for (i, part) in rest.split('`').enumerate() {
            if i % 2 == 1 {
                labels.insert(part.to_owned());
            }
        }
        table.insert(name, (kind, labels));
    }
    assert!(table.len() >= 20, "parsed only {} rows", table.len());
    table
}

/// The exposition: metric family → (type, label-name sets seen on its samples).
fn exposed(text: &str) -> BTreeMap<String, (String, Vec<BTreeSet<String>>)> {
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            types.insert(name.to_owned(), (kind.to_owned(), Vec::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split(' ').next().unwrap_or_default();
        let (sample, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|s| sample.strip_suffix(s))
            .filter(|f| types.contains_key(*f))
            .unwrap_or(sample);
        let keys: BTreeSet<String> = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
            .filter(|k| k != "le")
            .collect();
        if let Some((_, seen)) = types.get_mut(family) {
            seen.push(keys);
        }
    }
    types
}

#[tokio::test]
async fn the_documented_metric_table_matches_a_real_exposition() {
    init_tracing();
    let telemetry = Telemetry::new(StatConfig::default(), Tracing::disabled()).expect("telemetry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let server = meshwork::server().telemetry(telemetry.clone(), "world");
    tokio::spawn(server.serve(listener, app, std::future::pending()));
    let client = meshwork::client(Discovery::fixed([Endpoint::new(addr)]).expect("discovery"))
        .authority("world.test")
        .telemetry(telemetry.clone())
        .build::<Empty<Bytes>>()
        .expect("client");
    for _ in 0..3 {
        let rsp = client
            .request(http::Request::get("/").body(Empty::new()).expect("request"))
            .await
            .expect("response");
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.expect("body");
    }
    let text = telemetry.registry.encode().expect("encode");
    let exposed = exposed(&text);
    let mut problems = Vec::new();
    for (name, (kind, labels)) in documented() {
        match exposed.get(&name) {
            None => problems.push(format!("{name}: documented, not exposed")),
            Some((seen_kind, _)) if *seen_kind != kind => {
                problems.push(format!("{name}: documented {kind}, exposed {seen_kind}"))
            }
            Some((_, samples)) if samples.is_empty() => {
                problems.push(format!("{name}: no samples"))
            }
            Some((_, samples)) => {
                for keys in samples {
                    if *keys != labels {
                        problems.push(format!(
                            "{name}: documented labels {labels:?}, exposed {keys:?}"
                        ));
                        break;
                    }
                }
            }
        }
    }
    for name in exposed.keys() {
        if name.starts_with("meshwork_") && !documented().contains_key(name) {
            problems.push(format!("{name}: exposed, not documented"));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{text}", problems.join("\n"));
}

#[tokio::test]
async fn two_clients_cannot_share_a_name_in_one_registry() {
    init_tracing();
    let telemetry = Telemetry::new(StatConfig::default(), Tracing::disabled()).expect("telemetry");
    let fixed =
        || Discovery::fixed([Endpoint::new("127.0.0.1:9".parse().expect("addr"))]).expect("fixed");
    // Neither has an authority: both would be called "static".
    let first = meshwork::client(fixed())
        .telemetry(telemetry.clone())
        .build::<Empty<Bytes>>()
        .expect("first");
    let err = meshwork::client(fixed())
        .telemetry(telemetry.clone())
        .build::<Empty<Bytes>>()
        .expect_err("a second client named static");
    assert!(err.to_string().contains("metrics"), "{err}");
    // Named apart, both build, and each has its own series.
    let second = meshwork::client(fixed())
        .name("static-2")
        .telemetry(telemetry.clone())
        .build::<Empty<Bytes>>()
        .expect("second");
    let text = telemetry.registry.encode().expect("encode");
    assert!(text.contains(r#"route="static""#), "{text}");
    assert!(text.contains(r#"route="static-2""#), "{text}");
    // The name is free again once the first client is gone.
    drop(first);
    meshwork::client(fixed())
        .telemetry(telemetry)
        .build::<Empty<Bytes>>()
        .expect("the name is free again");
    drop(second);
}
