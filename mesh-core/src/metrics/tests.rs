#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;
use crate::graph::ServiceGraph;
use crate::stat::{StatConfig, Stats};

async fn respond(req: Request<()>) -> Result<Response<()>, &'static str> {
    let status: u16 = req
        .uri()
        .path()
        .trim_start_matches('/')
        .parse()
        .unwrap_or(200);
    if status == 999 {
        return Err("no response");
    }
    let mut rsp = Response::new(());
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
    if req.headers().contains_key("x-grpc-fail") {
        rsp.headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
    }
    Ok(rsp)
}

fn get(path: &str) -> Request<()> {
    Request::builder().uri(path).body(()).unwrap()
}

#[test]
fn default_classifier_fails_5xx_and_grpc_errors() {
    let mut h = http::HeaderMap::new();
    assert_eq!(
        classify_default(StatusCode::OK, &h),
        Classification::Success
    );
    assert_eq!(
        classify_default(StatusCode::NOT_FOUND, &h),
        Classification::Success
    );
    assert_eq!(
        classify_default(StatusCode::BAD_GATEWAY, &h),
        Classification::Failure
    );
    h.insert("grpc-status", "0".parse().unwrap());
    assert_eq!(
        classify_default(StatusCode::OK, &h),
        Classification::Success
    );
    h.insert("grpc-status", "4".parse().unwrap());
    assert_eq!(
        classify_default(StatusCode::OK, &h),
        Classification::Failure
    );
}

#[tokio::test]
async fn golden_metrics_count_requests_responses_and_latency() {
    let registry = MetricsRegistry::new();
    let new = NewHttpMetrics::new(HttpMetricFamilies::register(&registry, Scope::Endpoint));
    let target = TargetLabels::endpoint("books", "127.0.0.1:8080");
    let layer = new.layer_for(&target);
    let mut svc = layer.layer(service_fn(respond));
    for path in ["/200", "/200", "/503", "/404", "/999"] {
        let _ = svc.ready().await.unwrap().call(get(path)).await;
    }
    let mut req = get("/200");
    req.headers_mut()
        .insert("x-grpc-fail", "1".parse().unwrap());
    svc.ready().await.unwrap().call(req).await.unwrap();

    let handles = new.families().target(&target);
    assert_eq!(handles.requests(), 6);
    assert_eq!(handles.responses(Classification::Success, Some(200)), 2);
    assert_eq!(handles.responses(Classification::Failure, Some(200)), 1);
    assert_eq!(handles.responses(Classification::Failure, Some(503)), 1);
    assert_eq!(handles.responses(Classification::Success, Some(404)), 1);
    assert_eq!(handles.responses(Classification::Failure, None), 1);
    assert_eq!(handles.latency().count(), 6);

    let text = registry.encode().unwrap();
    assert!(text.contains(
        r#"meshwork_endpoint_requests_total{backend="books",endpoint="127.0.0.1:8080"} 6"#
    ));
    assert!(text.contains(
        r#"meshwork_endpoint_responses_total{backend="books",endpoint="127.0.0.1:8080",classification="failure",status="503"} 1"#
    ));
    assert!(text.contains(
        r#"meshwork_endpoint_responses_total{backend="books",endpoint="127.0.0.1:8080",classification="failure"} 1"#
    ));
    assert!(text.contains("# TYPE meshwork_endpoint_response_latency_seconds histogram"));
    assert!(text.contains(
        r#"meshwork_endpoint_response_latency_seconds_bucket{le="+Inf",backend="books",endpoint="127.0.0.1:8080"} 6"#
    ), "{text}");
    assert!(text.contains(
        r#"meshwork_endpoint_response_latency_seconds_count{backend="books",endpoint="127.0.0.1:8080"} 6"#
    ), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn many_statuses_overflow_the_slots_and_still_count() {
    let registry = MetricsRegistry::new();
    let families = HttpMetricFamilies::register(&registry, Scope::Route);
    let target = TargetLabels::route("r");
    let mut svc =
        HttpMetrics::layer(families.target(&target), classify_default).layer(service_fn(respond));
    for status in 200..230u16 {
        for _ in 0..2 {
            svc.ready()
                .await
                .unwrap()
                .call(get(&format!("/{status}")))
                .await
                .unwrap();
        }
    }
    let handles = families.target(&target);
    for status in 200..230u16 {
        assert_eq!(
            handles.responses(Classification::Success, Some(status)),
            2,
            "{status}"
        );
    }
}

#[test]
fn histogram_buckets_are_cumulative_and_bounded() {
    let h = LatencyHistogram::default();
    h.observe(Duration::from_micros(500));
    h.observe(Duration::from_millis(1));
    h.observe(Duration::from_millis(7));
    h.observe(Duration::from_secs(30));
    let b = h.cumulative_buckets();
    assert_eq!(b.len(), LATENCY_BUCKETS_SECONDS.len() + 1);
    assert_eq!(b[0], (0.001, 2));
    assert_eq!(b[3], (0.01, 3));
    assert_eq!(b[12], (10.0, 3));
    assert_eq!(b[13].1, 4);
    assert!(b[13].0.is_infinite());
    assert!((h.sum_seconds() - 30.0085).abs() < 1e-9);
}

#[test]
fn callbacks_export_external_atomics_at_scrape_time() {
    let registry = MetricsRegistry::new();
    let retries = Arc::new(AtomicU64::new(0));
    let r = retries.clone();
    let handle = registry
        .register_counter_fn(
            names::ROUTE_RETRIES,
            "Retries issued",
            &[("route", "books")],
            move || r.load(Ordering::Relaxed),
        )
        .unwrap();
    registry
        .register_gauge_fn(
            names::BACKEND_ENDPOINTS,
            "Endpoints by state",
            &[("backend", "books"), ("state", "ejected")],
            || 2.0,
        )
        .unwrap()
        .detach();
    retries.store(7, Ordering::Relaxed);
    let text = registry.encode().unwrap();
    assert!(
        text.contains("# TYPE meshwork_route_retries counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"meshwork_route_retries_total{route="books"} 7"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meshwork_backend_endpoints{backend="books",state="ejected"} 2"#),
        "{text}"
    );
    retries.store(9, Ordering::Relaxed);
    assert!(registry
        .encode()
        .unwrap()
        .contains(r#"meshwork_route_retries_total{route="books"} 9"#));
    drop(handle);
    let text = registry.encode().unwrap();
    assert!(!text.contains("meshwork_route_retries"), "{text}");
    assert!(text.contains("meshwork_backend_endpoints"));

    assert!(matches!(
        registry.register_counter_fn("bad name", "", &[], || 0),
        Err(MetricsError::InvalidName { offset: 3, .. })
    ));
    assert!(matches!(
        registry.register_counter_fn(names::BACKEND_ENDPOINTS, "", &[], || 0),
        Err(MetricsError::KindMismatch { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn metrics_layer_feeds_stats_and_graph() {
    let registry = MetricsRegistry::new();
    let stats = Stats::new(StatConfig::default()).unwrap();
    let graph = ServiceGraph::new();
    let new = NewHttpMetrics::new(HttpMetricFamilies::register(&registry, Scope::Inbound));
    fn caller<'a>(h: &'a http::HeaderMap, _: &'a http::Extensions) -> Option<&'a str> {
        h.get("l5d-client-id").and_then(|v| v.to_str().ok())
    }
    let layer = new
        .layer_for(&TargetLabels::inbound("books"))
        .with_stats(stats.service("books"))
        .with_inbound_edges(graph.destination("books"), caller);
    let mut svc = layer.layer(service_fn(|req: Request<()>| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        respond(req).await
    }));
    for (path, who) in [("/200", "web"), ("/500", "web"), ("/200", "cli")] {
        let mut req = get(path);
        req.headers_mut()
            .insert("l5d-client-id", who.parse().unwrap());
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let rows = stats.rows();
    assert_eq!(rows[0].requests, 3);
    let p50 = rows[0].latency_p50_ms.unwrap();
    // 20 ms lies in the [16.4, 20.5) ms bucket; percentiles are bucket-accurate.
    assert!((16.0..=20.5).contains(&p50), "p50 {p50}");
    let edges = graph.snapshot();
    assert_eq!(edges.len(), 2);
    assert_eq!((edges[0].source.as_str(), edges[0].requests), ("cli", 1));
    assert_eq!(
        (
            edges[1].source.as_str(),
            edges[1].successes,
            edges[1].failures
        ),
        ("web", 1, 1)
    );
}

#[tokio::test]
async fn metrics_service_serves_exposition() {
    let registry = MetricsRegistry::new();
    registry
        .register_counter_fn("test_things", "Things", &[], || 3)
        .unwrap()
        .detach();
    let mut svc = MetricsService::new(registry);
    let rsp = svc
        .call(Request::get("/metrics").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["content-type"], OPENMETRICS_CONTENT_TYPE);
    let rsp = svc
        .call(Request::get("/other").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
    let rsp = svc
        .call(Request::post("/metrics").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn telemetry_bundle_wires_every_scope() {
    use crate::trace::Tracing;
    let t = Telemetry::new(StatConfig::default(), Tracing::disabled()).unwrap();
    fn no_source<'a>(_: &'a http::HeaderMap, _: &'a http::Extensions) -> Option<&'a str> {
        None
    }
    let mut inbound = t
        .inbound_layer("books", no_source)
        .layer(service_fn(respond));
    let mut route = t.route("web", "authors").layer(service_fn(respond));
    let mut backend = t.backend("books", "books-v2").layer(service_fn(respond));
    let mut endpoint = t
        .endpoint("books-v2", "127.0.0.1:9")
        .layer(service_fn(respond));
    inbound
        .ready()
        .await
        .unwrap()
        .call(get("/200"))
        .await
        .unwrap();
    route
        .ready()
        .await
        .unwrap()
        .call(get("/500"))
        .await
        .unwrap();
    backend
        .ready()
        .await
        .unwrap()
        .call(get("/200"))
        .await
        .unwrap();
    endpoint
        .ready()
        .await
        .unwrap()
        .call(get("/200"))
        .await
        .unwrap();
    let text = t.registry.encode().unwrap();
    for line in [
        r#"meshwork_inbound_requests_total{service="books"} 1"#,
        r#"meshwork_route_requests_total{route="authors"} 1"#,
        r#"meshwork_backend_requests_total{route="books",backend="books-v2"} 1"#,
        r#"meshwork_endpoint_requests_total{backend="books-v2",endpoint="127.0.0.1:9"} 1"#,
        "meshwork_trace_spans_dropped_total 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // Stat rows for the served service and the client route; edges unknown → books (inbound,
    // no identity) and web → authors (outbound).
    let stat = t.stat_json();
    assert_eq!(stat["rows"][0]["name"], "authors");
    assert_eq!(stat["rows"][0]["success_rate"], 0.0);
    assert_eq!(stat["rows"][1]["name"], "books");
    assert_eq!(stat["rows"][1]["success_rate"], 1.0);
    let edges = t.graph_json();
    assert_eq!(edges["edges"][0]["source"], "unknown");
    assert_eq!(edges["edges"][0]["destination"], "books");
    assert_eq!(edges["edges"][1]["source"], "web");
    assert_eq!(edges["edges"][1]["destination"], "authors");
    assert_eq!(edges["edges"][1]["failures"], 1);
}

#[tokio::test]
async fn metrics_count_the_class_the_breaker_gave_with_the_routes_classifier() {
    use crate::classify::{Class, ResponseClass};
    let registry = MetricsRegistry::new();
    let families = HttpMetricFamilies::register(&registry, Scope::Route);
    let target = TargetLabels::route("r");
    // A route classifying every response as a success (all-successful): a 503 the breaker judged
    // a success is one here too; a 200 it judged a failure is a failure.
    let mut svc = HttpMetrics::layer(families.target(&target), classify_default).layer(service_fn(
        |req: Request<()>| async move {
            let mut rsp = respond(req).await?;
            let class = if rsp.status() == StatusCode::OK {
                Class::Failure
            } else {
                Class::Success
            };
            rsp.extensions_mut().insert(ResponseClass(class));
            Ok::<_, &'static str>(rsp)
        },
    ));
    for path in ["/503", "/200"] {
        svc.ready().await.unwrap().call(get(path)).await.unwrap();
    }
    let handles = families.target(&target);
    assert_eq!(handles.responses(Classification::Success, Some(503)), 1);
    assert_eq!(handles.responses(Classification::Failure, Some(200)), 1);
}

/// A gRPC status that arrives in the trailers after data is counted when the breaker's body
/// wrapper sees it (the response head alone says nothing), and a body dropped before its end is
/// counted then (for gRPC, a failure: no status arrived), so no response goes uncounted.
#[tokio::test]
async fn metrics_count_a_grpc_status_from_the_trailers_at_the_end_of_the_body() {
    use bytes::Bytes;
    use http_body_util::BodyExt;

    let registry = MetricsRegistry::new();
    let families = HttpMetricFamilies::register(&registry, Scope::Route);
    let target = TargetLabels::route("grpc");
    let breaker = crate::breaker::Breaker::layer(crate::breaker::BreakerConfig::default());
    let endpoint = breaker.layer(
        service_fn(|req: Request<()>| async move {
            let mut trailers = http::HeaderMap::new();
            let code = if req.uri().path() == "/ok" { "0" } else { "14" };
            trailers.insert("grpc-status", code.parse().unwrap());
            let frames = [
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                    b"\0\0\0\0\0",
                ))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, std::convert::Infallible>(Response::new(body))
        }),
        mesh_balance::Health::new(),
    );
    let mut svc = HttpMetrics::layer(families.target(&target), classify_default).layer(endpoint);
    let grpc = |path: &str| {
        Request::builder()
            .uri(path)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    let handles = families.target(&target);
    let counted = |class| handles.responses(class, Some(200));

    let rsp = svc
        .ready()
        .await
        .unwrap()
        .call(grpc("/fail"))
        .await
        .unwrap();
    assert_eq!(
        (
            counted(Classification::Success),
            counted(Classification::Failure)
        ),
        (0, 0),
        "nothing is known before the trailers"
    );
    rsp.into_body().collect().await.unwrap();
    assert_eq!(counted(Classification::Failure), 1);

    let rsp = svc.ready().await.unwrap().call(grpc("/ok")).await.unwrap();
    rsp.into_body().collect().await.unwrap();
    assert_eq!(counted(Classification::Success), 1);

    // The caller gives up on the body before its trailers.
    let rsp = svc.ready().await.unwrap().call(grpc("/ok")).await.unwrap();
    drop(rsp);
    assert_eq!(counted(Classification::Failure), 2);
    assert_eq!(handles.requests(), 3);
}
