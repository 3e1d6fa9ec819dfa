//! Spans of the demo's proxies, collected in memory (an OpenTelemetry `SpanExporter` behind the
//! same bounded export queue that sends OTLP in production) and printed as a tree.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// A finished span and the proxy that recorded it.
pub(crate) type Recorded = (&'static str, SpanData);

/// Collects the spans of every proxy; each proxy exports through its own [`Collector`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Spans(Arc<Mutex<Vec<Recorded>>>);

impl Spans {
    pub(crate) fn collector(&self, proxy: &'static str) -> Collector {
        Collector {
            proxy,
            spans: self.clone(),
        }
    }

    /// The spans of trace `trace_id` (hex) collected so far.
    pub(crate) fn of_trace(&self, trace_id: &str) -> Vec<Recorded> {
        let spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        spans
            .iter()
            .filter(|(_, s)| s.span_context.trace_id().to_string() == trace_id)
            .cloned()
            .collect()
    }
}

/// One proxy's exporter.
#[derive(Debug)]
pub(crate) struct Collector {
    proxy: &'static str,
    spans: Spans,
}

impl SpanExporter for Collector {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut spans = self.spans.0.lock().unwrap_or_else(|e| e.into_inner());
        spans.extend(batch.into_iter().map(|s| (self.proxy, s)));
        Ok(())
    }
}

/// The spans as an indented tree under the caller's span `root` (hex span id): one line per
/// span with the proxy that made it, what it was, its status and how long it took.
pub(crate) fn tree(spans: &[Recorded], root: &str) -> String {
    let mut children: HashMap<SpanId, Vec<&Recorded>> = HashMap::new();
    let ids: Vec<SpanId> = spans
        .iter()
        .map(|(_, s)| s.span_context.span_id())
        .collect();
    let mut tops = Vec::new();
    for r in spans {
        let parent = r.1.parent_span_id;
        if parent.to_string() == root || !ids.contains(&parent) {
            tops.push(r);
        } else {
            children.entry(parent).or_default().push(r);
        }
    }
    let by_start = |a: &&Recorded, b: &&Recorded| a.1.start_time.cmp(&b.1.start_time);
    tops.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    let mut out = String::new();
    let mut stack: Vec<(&Recorded, usize)> = tops.into_iter().rev().map(|r| (r, 1)).collect();
    while let Some((r, depth)) = stack.pop() {
        // A client span under its own proxy's server span is the inbound hop to the local app.
        let to_app = spans.iter().any(|(proxy, s)| {
            *proxy == r.0
                && s.span_kind == SpanKind::Server
                && s.span_context.span_id() == r.1.parent_span_id
        });
        let _ = writeln!(out, "{}{}", "   ".repeat(depth - 1), line(r, to_app));
        if let Some(kids) = children.get(&r.1.span_context.span_id()) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    out
}

fn line((proxy, span): &Recorded, to_app: bool) -> String {
    let attr = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let took = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or(Duration::ZERO);
    let status = attr("http.response.status_code").unwrap_or_else(|| "-".into());
    let path = attr("url.path").unwrap_or_default();
    let host = attr("server.address").unwrap_or_default();
    let what = match span.span_kind {
        SpanKind::Server => format!(
            "inbound  {} {path} (mTLS, from the caller's proxy)",
            span.name
        ),
        _ if to_app => format!("to app   {} http://{host}{path}", span.name),
        _ => format!(
            "outbound {} http://{host}{path} (mTLS to {host}'s proxy)",
            span.name
        ),
    };
    format!("└─ {proxy:<10} {what}  {status}  {:.2} ms", millis(took))
}

/// Milliseconds as a float.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A new sampled W3C trace context started by the demo's driver: (`traceparent`, trace id,
/// span id).
pub(crate) fn new_root() -> (String, String, String) {
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    let (trace, span) = (format!("{trace:032x}"), format!("{span:016x}"));
    (format!("00-{trace}-{span}-01"), trace, span)
}
