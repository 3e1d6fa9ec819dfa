//! Traces across two real hops, exported over OTLP/HTTP to a receiver that decodes the protobuf:
//! client → service A (server span, client span) → service B (server span).
#![allow(clippy::unwrap_used)]

mod observability_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mesh_core::trace::{ClientSpan, ServerSpan, Tracing, TracingConfig};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tower::{Layer, ServiceExt};

use observability_support::{client, send, serve, text};

/// A received span with the `service.name` of its resource.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/HTTP receiver: POST /v1/traces with an `ExportTraceServiceRequest` protobuf body.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let (addr, _task) = serve(move |req: Request<hyper::body::Incoming>| {
        let store = store.clone();
        async move {
            if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
                return text(404, "not found");
            }
            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let export = match ExportTraceServiceRequest::decode(body) {
                Ok(e) => e,
                Err(_) => return text(400, "bad protobuf"),
            };
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        store.lock().unwrap().push(Received {
                            service: service.clone(),
                            span,
                        });
                    }
                }
            }
            let mut rsp = Response::new(Full::new(Bytes::from(
                ExportTraceServiceResponse::default().encode_to_vec(),
            )));
            rsp.headers_mut()
                .insert("content-type", "application/x-protobuf".parse().unwrap());
            rsp
        }
    })
    .await;
    (format!("http://{addr}/v1/traces"), spans)
}

fn tracing(service: &str, endpoint: &str) -> Tracing {
    Tracing::otlp(TracingConfig {
        service_name: service.into(),
        otlp_endpoint: endpoint.into(),
        scheduled_delay: Duration::from_millis(100),
        ..TracingConfig::default()
    })
    .unwrap()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| {
            Some(match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts B (server span; echoes the trace headers it got) and A (server span; calls B through a
/// client span layer over hyper's client).
async fn two_hops(endpoint: &str) -> (std::net::SocketAddr, Tracing, Tracing) {
    let tracing_b = tracing("svc-b", endpoint);
    let b = ServerSpan::layer(tracing_b.clone()).layer(tower::service_fn(
        |req: Request<hyper::body::Incoming>| async move {
            let seen = ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"]
                .iter()
                .filter_map(|h| Some(format!("{h}: {}\n", req.headers().get(*h)?.to_str().ok()?)))
                .collect::<String>();
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(seen))))
        },
    ));
    let (b_addr, _b) = serve(move |req| {
        let b = b.clone();
        async move { b.oneshot(req).await.unwrap() }
    })
    .await;

    let tracing_a = tracing("svc-a", endpoint);
    let to_b = ClientSpan::layer(tracing_a.clone()).layer(client());
    let a = ServerSpan::layer(tracing_a.clone()).layer(tower::service_fn(
        move |_req: Request<hyper::body::Incoming>| {
            let to_b = to_b.clone();
            async move {
                let req = Request::get(format!("http://{b_addr}/books"))
                    .body(Full::<Bytes>::default())
                    .unwrap();
                let rsp = to_b.oneshot(req).await.unwrap();
                let status = rsp.status();
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                let mut out = Response::new(Full::new(body));
                *out.status_mut() = status;
                Ok::<_, std::convert::Infallible>(out)
            }
        },
    ));
    let (a_addr, _a) = serve(move |req| {
        let a = a.clone();
        async move { a.oneshot(req).await.unwrap() }
    })
    .await;
    (a_addr, tracing_a, tracing_b)
}

async fn wait_for_spans(spans: &Arc<Mutex<Vec<Received>>>, n: usize) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = spans.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} spans within 30 s, got {}: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_chain_across_two_hops_over_otlp() {
    let (endpoint, spans) = receiver().await;
    let (a_addr, tracing_a, tracing_b) = two_hops(&endpoint).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let req = Request::get(format!("http://{a_addr}/shelf"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("host", "svc-a.local")
        .body(Full::default())
        .unwrap();
    let (status, body) = send(&client(), req).await;
    assert_eq!(status, 200);
    tracing_a.flush().await.unwrap();
    tracing_b.flush().await.unwrap();

    let got = wait_for_spans(&spans, 3).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let find = |service: &str, kind: SpanKind| {
        got.iter()
            .find(|r| r.service == service && r.span.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span from {service}: {got:#?}"))
            .span
            .clone()
    };
    let a_server = find("svc-a", SpanKind::Server);
    let a_client = find("svc-a", SpanKind::Client);
    let b_server = find("svc-b", SpanKind::Server);
    for s in [&a_server, &a_client, &b_server] {
        assert_eq!(hex(&s.trace_id), trace_id);
        assert_eq!(attr(s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
    }
    assert_eq!(hex(&a_server.parent_span_id), caller_span);
    assert_eq!(a_client.parent_span_id, a_server.span_id);
    assert_eq!(b_server.parent_span_id, a_client.span_id);
    assert_eq!(attr(&a_server, "url.path").as_deref(), Some("/shelf"));
    assert_eq!(
        attr(&a_server, "server.address").as_deref(),
        Some("svc-a.local")
    );
    assert_eq!(attr(&a_client, "url.path").as_deref(), Some("/books"));
    assert_eq!(
        attr(&a_client, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(attr(&b_server, "url.path").as_deref(), Some("/books"));
    // What B received: W3C naming A's client span, and no B3 (the caller used W3C).
    let seen = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(
        seen,
        format!("traceparent: 00-{trace_id}-{}-01\n", hex(&a_client.span_id))
    );
    assert_eq!(tracing_a.dropped_spans(), 0);
    assert_eq!(tracing_a.exported_spans(), 2);
    assert_eq!(tracing_b.exported_spans(), 1);
    tracing_a.shutdown().unwrap();
    tracing_b.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_callers_get_b3_downstream_and_unsampled_ones_no_spans() {
    let (endpoint, spans) = receiver().await;
    let (a_addr, tracing_a, tracing_b) = two_hops(&endpoint).await;
    let c = client();

    // Unsampled B3 multi caller: nothing recorded, the context is passed on as it came.
    let req = Request::get(format!("http://{a_addr}/"))
        .header("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")
        .header("x-b3-spanid", "a2fb4a1d1a96d312")
        .header("x-b3-sampled", "0")
        .body(Full::default())
        .unwrap();
    let (_, body) = send(&c, req).await;
    assert_eq!(
        String::from_utf8(body.to_vec()).unwrap(),
        "traceparent: 00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-00\n\
         x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124\nx-b3-spanid: a2fb4a1d1a96d312\n"
    );

    // Sampled B3 single caller: B sees W3C and B3 single naming A's client span.
    let req = Request::get(format!("http://{a_addr}/"))
        .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        .body(Full::default())
        .unwrap();
    let (_, body) = send(&c, req).await;
    tracing_a.flush().await.unwrap();
    tracing_b.flush().await.unwrap();
    let got = wait_for_spans(&spans, 3).await;
    assert_eq!(got.len(), 3, "only the sampled request is traced: {got:#?}");
    let a_server = got
        .iter()
        .find(|r| r.service == "svc-a" && r.span.kind == SpanKind::Server as i32)
        .unwrap();
    let a_client = got
        .iter()
        .find(|r| r.service == "svc-a" && r.span.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(hex(&a_server.span.parent_span_id), "e457b5a2e4d86bd1");
    let client_span = hex(&a_client.span.span_id);
    let server_span = hex(&a_server.span.span_id);
    assert_eq!(
        String::from_utf8(body.to_vec()).unwrap(),
        format!(
            "traceparent: 00-80f198ee56343ba864fe8b2a57d3eff7-{client_span}-01\n\
             b3: 80f198ee56343ba864fe8b2a57d3eff7-{client_span}-1-{server_span}\n"
        )
    );
    tracing_a.shutdown().unwrap();
    tracing_b.shutdown().unwrap();
}
