#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use parking_lot::Mutex;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::propagation::*;
use super::*;

#[derive(Clone, Debug, Default)]
struct Collect {
    spans: Arc<Mutex<Vec<SpanData>>>,
    delay: Option<Duration>,
}

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        self.spans.lock().extend(batch);
        Ok(())
    }
}

fn config(ratio: f64) -> TracingConfig {
    TracingConfig {
        root_sampling_ratio: ratio,
        scheduled_delay: Duration::from_millis(50),
        ..TracingConfig::default()
    }
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

/// Sends a request with an unsampled caller context through `server` (whose handler calls a
/// client that echoes its request headers): the client request carries it on unchanged.
async fn an_unsampled_context_passes_through<S>(server: &mut S)
where
    S: Service<Request<()>, Response = Response<HeaderMap>>,
    S::Error: std::fmt::Debug,
{
    let req = Request::builder()
        .header("traceparent", UNSAMPLED)
        .body(())
        .unwrap();
    let rsp = server.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(rsp.body()["traceparent"], UNSAMPLED);
}

#[test]
fn traceparent_examples() {
    let ctx = parse_traceparent(TP.as_bytes()).unwrap();
    assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ctx.span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(ctx.sampled, Some(true));
    assert_eq!(&format_traceparent(&ctx)[..], TP.as_bytes());
    // Future versions may append fields.
    let v1 = format!("01{}-extra", &TP[2..]);
    assert!(parse_traceparent(v1.as_bytes()).is_ok());
    assert_eq!(
        parse_traceparent(format!("ff{}", &TP[2..]).as_bytes()),
        Err(TraceHeaderError::Syntax {
            header: "traceparent",
            offset: 0,
            expected: "a version other than ff"
        })
    );
    assert!(matches!(
        parse_traceparent(TP.to_uppercase().as_bytes()),
        Err(TraceHeaderError::Syntax { offset: 4, .. })
    ));
    assert!(matches!(
        parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Err(TraceHeaderError::ZeroId {
            what: "trace id",
            ..
        })
    ));
    assert!(matches!(
        parse_traceparent(format!("{TP}-x").as_bytes()),
        Err(TraceHeaderError::Length { len: 57, .. })
    ));
}

#[test]
fn b3_examples() {
    let ctx =
        parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
            .unwrap()
            .unwrap();
    assert_eq!(ctx.sampled, Some(true));
    assert_eq!(ctx.parent_span_id.unwrap().to_string(), "05e3ac9a4f6e3b90");
    assert_eq!(
        format_b3_single(&ctx),
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
    );
    let d = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")
        .unwrap()
        .unwrap();
    assert!(d.debug && d.is_sampled());
    assert_eq!(d.trace_id.to_string(), "000000000000000064fe8b2a57d3eff7");
    assert_eq!(parse_b3_single(b"0"), Ok(None));
    assert!(parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-x").is_err());

    let mut h = HeaderMap::new();
    h.insert(
        "x-b3-traceid",
        HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
    );
    h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
    h.insert(
        "x-b3-parentspanid",
        HeaderValue::from_static("0020000000000001"),
    );
    h.insert("x-b3-sampled", HeaderValue::from_static("1"));
    let ctx = extract(&h).unwrap();
    assert_eq!(ctx.format, Format::B3Multi);
    assert_eq!(ctx.span_id.to_string(), "a2fb4a1d1a96d312");
    let mut out = HeaderMap::new();
    inject(&ctx, &mut out);
    for name in [
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
    ] {
        assert_eq!(out[name], h[name], "{name}");
    }
    assert_eq!(
        out["traceparent"],
        "00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01"
    );
    h.remove("x-b3-spanid");
    assert_eq!(parse_b3_multi(&h), Err(TraceHeaderError::MissingSpanId));
}

#[test]
fn extract_prefers_w3c_and_ignores_malformed() {
    let mut h = HeaderMap::new();
    h.insert(
        "b3",
        HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
    );
    h.insert("traceparent", HeaderValue::from_static("garbage"));
    let ctx = extract(&h).unwrap();
    assert_eq!(ctx.format, Format::B3Single);
    assert_eq!(ctx.sampled, Some(false));
    h.insert("traceparent", HeaderValue::from_static(TP));
    h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
    let ctx = extract(&h).unwrap();
    assert_eq!(ctx.format, Format::W3c);
    assert_eq!(ctx.tracestate.as_ref().unwrap(), "congo=t61rcWkgMzE");
}

#[test]
fn config_validation() {
    TracingConfig::default().validate().unwrap();
    assert!(matches!(
        config(1.5).validate(),
        Err(TraceError::SamplingRatio(_))
    ));
    assert!(matches!(
        config(f64::NAN).validate(),
        Err(TraceError::SamplingRatio(_))
    ));
    let c = TracingConfig {
        max_export_batch_size: 4096,
        ..config(0.0)
    };
    assert!(matches!(
        c.validate(),
        Err(TraceError::QueueSize {
            batch: 4096,
            queue: 2048
        })
    ));
    let c = TracingConfig {
        scheduled_delay: Duration::ZERO,
        ..config(0.0)
    };
    assert!(matches!(
        c.validate(),
        Err(TraceError::ZeroDuration {
            field: "scheduled_delay"
        })
    ));
}

async fn ok(req: Request<()>) -> Result<Response<HeaderMap>, std::convert::Infallible> {
    let mut rsp = Response::new(req.headers().clone());
    if req.uri().path() == "/fail" {
        *rsp.status_mut() = StatusCode::BAD_GATEWAY;
    }
    Ok(rsp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_only_propagate() {
    let exporter = Collect::default();
    let tracing = Tracing::with_exporter(config(0.0), exporter.clone()).unwrap();
    // Server: an unsampled caller context becomes current for the handler; a client call made
    // inside it carries the caller's context on unchanged.
    let client = ClientSpan::layer(tracing.clone()).layer(service_fn(ok));
    let mut server =
        ServerSpan::layer(tracing.clone()).layer(service_fn(move |_req: Request<()>| {
            let mut client = client.clone();
            async move { client.ready().await?.call(Request::new(())).await }
        }));
    an_unsampled_context_passes_through(&mut server).await;
    // No context at all and ratio 0: nothing is added.
    let rsp = server
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert!(rsp.body().get("traceparent").is_none());
    tracing.flush().await.unwrap();
    assert!(exporter.spans.lock().is_empty());
}

/// A handler that sends its client request from `call` itself (as a router calling its leaf
/// client in place does), not from the future it returns.
#[derive(Clone)]
struct CallsInCall<C> {
    client: C,
}

impl<C> Service<Request<()>> for CallsInCall<C>
where
    C: Service<Request<()>, Response = Response<HeaderMap>>,
{
    type Response = Response<HeaderMap>;
    type Error = C::Error;
    type Future = C::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), C::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, _: Request<()>) -> C::Future {
        self.client
            .call(Request::get("http://books/").body(()).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_sent_from_the_handler_s_call_is_a_child_of_the_server_span() {
    let exporter = Collect::default();
    let tracing = Tracing::with_exporter(config(0.0), exporter.clone()).unwrap();
    let client = ClientSpan::layer(tracing.clone()).layer(service_fn(ok));
    let mut server = ServerSpan::layer(tracing.clone()).layer(CallsInCall { client });
    // Sampled: the client span's parent is the server span, not the caller's span.
    let req = Request::builder()
        .header("traceparent", TP)
        .body(())
        .unwrap();
    let rsp = server.ready().await.unwrap().call(req).await.unwrap();
    tracing.flush().await.unwrap();
    let spans = exporter.spans.lock().clone();
    let server_span = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let client_span = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap();
    assert_eq!(
        client_span.parent_span_id,
        server_span.span_context.span_id()
    );
    let sent = rsp.body()["traceparent"].to_str().unwrap().to_owned();
    assert!(sent.contains(&client_span.span_context.span_id().to_string()));
    // Unsampled: the caller's context is what the client request carries.
    an_unsampled_context_passes_through(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_make_server_and_client_spans() {
    let exporter = Collect::default();
    let tracing = Tracing::with_exporter(config(0.0), exporter.clone()).unwrap();
    let client = ClientSpan::layer(tracing.clone()).layer(service_fn(ok));
    let mut server =
        ServerSpan::layer(tracing.clone()).layer(service_fn(move |_req: Request<()>| {
            let mut client = client.clone();
            async move {
                // Two attempts, as a retry layer above the client span layer would make.
                client
                    .ready()
                    .await?
                    .call(Request::get("http://books:8080/fail").body(()).unwrap())
                    .await?;
                client
                    .ready()
                    .await?
                    .call(Request::get("http://books:8080/ok").body(()).unwrap())
                    .await
            }
        }));
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    let req = Request::builder()
        .uri("/books?id=1")
        .header("host", "web.local:80")
        .header("b3", b3)
        .body(())
        .unwrap();
    let rsp = server.ready().await.unwrap().call(req).await.unwrap();
    tracing.flush().await.unwrap();
    let spans = exporter.spans.lock().clone();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server_span = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), 2);
    let trace = server_span.span_context.trace_id();
    assert_eq!(trace.to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(server_span.parent_span_id.to_string(), "e457b5a2e4d86bd1");
    for c in &clients {
        assert_eq!(c.span_context.trace_id(), trace);
        assert_eq!(c.parent_span_id, server_span.span_context.span_id());
    }
    assert_ne!(
        clients[0].span_context.span_id(),
        clients[1].span_context.span_id()
    );
    let attr = |s: &SpanData, k: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attr(server_span, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(attr(server_span, "url.path").as_deref(), Some("/books"));
    assert_eq!(
        attr(server_span, "server.address").as_deref(),
        Some("web.local")
    );
    assert_eq!(
        attr(server_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    let failed = clients
        .iter()
        .find(|c| attr(c, "url.path").as_deref() == Some("/fail"))
        .unwrap();
    assert_eq!(attr(failed, "error.type").as_deref(), Some("502"));
    assert_eq!(attr(failed, "server.port").as_deref(), Some("8080"));
    // The last attempt's headers: W3C plus B3 single, parent = that client span.
    let last = clients
        .iter()
        .find(|c| attr(c, "url.path").as_deref() == Some("/ok"))
        .unwrap();
    let sent = rsp.body();
    let expect_tp = format!("00-{}-{}-01", trace, last.span_context.span_id());
    assert_eq!(sent["traceparent"], expect_tp.as_str());
    let expect_b3 = format!(
        "{}-{}-1-{}",
        trace,
        last.span_context.span_id(),
        server_span.span_context.span_id()
    );
    assert_eq!(sent["b3"], expect_b3.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_and_counts() {
    let exporter = Collect {
        delay: Some(Duration::from_millis(300)),
        ..Collect::default()
    };
    let cfg = TracingConfig {
        max_queue_size: 4,
        max_export_batch_size: 4,
        ..config(1.0)
    };
    let tracing = Tracing::with_exporter(cfg, exporter.clone()).unwrap();
    let mut server = ServerSpan::layer(tracing.clone()).layer(service_fn(ok));
    for _ in 0..40 {
        server
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
    }
    tracing.flush().await.unwrap();
    let exported = exporter.spans.lock().len() as u64;
    assert!(tracing.dropped_spans() > 0);
    assert_eq!(exported + tracing.dropped_spans(), 40);
    assert_eq!(tracing.exported_spans(), exported);
    let registry = MetricsRegistry::new();
    tracing.register_metrics(&registry).unwrap();
    let text = registry.encode().unwrap();
    assert!(
        text.contains(&format!(
            "meshwork_trace_spans_dropped_total {}",
            tracing.dropped_spans()
        )),
        "{text}"
    );
    tracing.shutdown().unwrap();
}

#[test]
fn disabled_tracing_never_samples() {
    let t = Tracing::disabled();
    let ctx = parse_traceparent(TP.as_bytes()).unwrap();
    assert!(!t.should_sample(Some(&ctx)));
    assert!(!t.should_sample(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_collector_counts_failed_spans() {
    // A port held by a socket that never listens: connecting is refused, and no parallel test's
    // listener can take the port meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let port = held.local_addr().unwrap().port();
    let tracing = Tracing::otlp(TracingConfig {
        otlp_endpoint: format!("http://127.0.0.1:{port}/v1/traces"),
        export_timeout: Duration::from_secs(2),
        ..config(1.0)
    })
    .unwrap();
    let mut server = ServerSpan::layer(tracing.clone()).layer(service_fn(ok));
    server
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    // The span is exported either by this flush (which then fails) or, on a loaded machine, by the
    // worker's scheduled export before it (the flush then has nothing left and succeeds). Either
    // way the failure must be counted: flush until it is, boundedly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tracing.failed_spans() == 0 {
        let flushed = tracing.flush().await;
        if tracing.failed_spans() == 0 {
            assert!(
                flushed.is_ok(),
                "flush failed but no failed span was counted"
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export to an unreachable collector never failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tracing.failed_spans(), 1);
    assert_eq!(tracing.exported_spans(), 0);
    assert!(matches!(
        Tracing::otlp(TracingConfig {
            otlp_endpoint: "not a url".into(),
            ..config(0.0)
        }),
        Err(TraceError::Exporter { .. })
    ));
}

#[test]
fn a_context_is_found_among_few_or_many_headers_and_none_is_made_up() {
    // Small maps are scanned for the trace headers' names first, large ones looked up.
    for fillers in [0usize, 5, 15, 16, 30] {
        let mut h = HeaderMap::new();
        for i in 0..fillers {
            h.insert(
                http::header::HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        assert!(extract(&h).is_none(), "{fillers} fillers, no trace id");
        h.insert(
            "x-b3-traceid",
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        let ctx = extract(&h).unwrap_or_else(|| panic!("{fillers} fillers"));
        assert_eq!(ctx.format, Format::B3Multi);
        h.remove("x-b3-traceid");
        h.insert("traceparent", HeaderValue::from_static(TP));
        let ctx = extract(&h).unwrap_or_else(|| panic!("{fillers} fillers"));
        assert_eq!(ctx.format, Format::W3c);
    }
}
