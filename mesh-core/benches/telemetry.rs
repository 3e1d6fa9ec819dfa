//! Cost per request of the telemetry layers: golden metrics plus trace spans around a no-op
//! service, with sampling off (an unsampled caller context: propagate only) and on (a sampled
//! caller: a server span is built and exported to a no-op exporter).
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response};
use mesh_core::metrics::{
    HttpMetricFamilies, MetricsRegistry, NewHttpMetrics, Scope, TargetLabels,
};
use mesh_core::trace::{ServerSpan, Tracing, TracingConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tower::{Layer, Service};

/// The inner service: answers immediately.
#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<Request<()>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

/// Discards spans.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

fn request(traceparent: &'static str) -> Request<()> {
    let mut req = Request::get("/books").body(()).unwrap();
    if !traceparent.is_empty() {
        req.headers_mut()
            .insert("traceparent", HeaderValue::from_static(traceparent));
    }
    req.headers_mut()
        .insert("host", HeaderValue::from_static("books:8080"));
    req
}

/// One call: the futures are ready at once, so `now_or_never` polls them to completion.
fn call<S>(svc: &mut S, req: Request<()>) -> Response<()>
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    svc.call(req).now_or_never().unwrap().unwrap()
}

fn telemetry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let mut group = c.benchmark_group("telemetry");
    group.bench_function("baseline", |b| {
        let mut svc = Noop;
        b.iter_batched(
            || request(UNSAMPLED),
            |req| call(&mut svc, req),
            BatchSize::SmallInput,
        )
    });

    let registry = MetricsRegistry::new();
    let metrics = NewHttpMetrics::new(HttpMetricFamilies::register(&registry, Scope::Inbound))
        .layer_for(&TargetLabels::inbound("books"));
    let config = TracingConfig {
        root_sampling_ratio: 0.0,
        max_queue_size: 1 << 16,
        scheduled_delay: Duration::from_millis(200),
        ..TracingConfig::default()
    };
    let tracing = Tracing::with_exporter(config, Discard).unwrap();
    let mut stack = ServerSpan::layer(tracing.clone()).layer(metrics.layer(Noop));
    let mut metrics_only = metrics.layer(Noop);
    let mut trace_only = ServerSpan::layer(tracing.clone()).layer(Noop);

    // The two halves alone, to see where the cost is.
    group.bench_function("metrics", |b| {
        b.iter_batched(
            || request(UNSAMPLED),
            |req| call(&mut metrics_only, req),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("trace/sampling-off", |b| {
        b.iter_batched(
            || request(UNSAMPLED),
            |req| call(&mut trace_only, req),
            BatchSize::SmallInput,
        )
    });

    group.bench_function("metrics+trace/sampling-off", |b| {
        b.iter_batched(
            || request(UNSAMPLED),
            |req| call(&mut stack, req),
            BatchSize::SmallInput,
        )
    });
    // No trace headers at all (the caller does not trace) and no root sampling.
    group.bench_function("metrics+trace/no-context", |b| {
        b.iter_batched(
            || request(""),
            |req| call(&mut stack, req),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("metrics+trace/sampling-on", |b| {
        b.iter_batched(
            || request(SAMPLED),
            |req| call(&mut stack, req),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let _ = tracing.shutdown();
}

const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

criterion_group!(benches, telemetry);
criterion_main!(benches);
