//! Distributed tracing: trace-context propagation (W3C and B3), a server span per inbound request,
//! a client span per attempt, and export over OTLP/HTTP.
//!
//! # Propagation
//! [`propagation::extract`] reads W3C `traceparent`/`tracestate` first, then B3 single (`b3`),
//! then B3 multi (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`,
//! `x-b3-flags`); malformed headers are ignored (a new trace starts), never an error for the
//! request. [`propagation::inject`] always writes W3C, and also the B3 flavour the caller used, so
//! a B3-only service further down still sees its headers.
//!
//! # Spans
//! * [`ServerSpan`] (inbound, just outside the application): one `SpanKind::Server` span per
//!   request, child of the caller's context; while the handler runs, the span's context is
//!   [`context::current`], which the client layer picks up as the parent of outgoing calls.
//! * [`ClientSpan`] (outbound, per endpoint, below retries and hedges): one `SpanKind::Client`
//!   span per attempt, so every retry and hedge is visible; the outgoing request carries the
//!   client span as parent.
//!
//! Attributes follow the OpenTelemetry HTTP semantic conventions: `http.request.method`,
//! `url.path`, `url.scheme`, `url.full` (client), `server.address`, `server.port`,
//! `network.protocol.version`, `user_agent.original` (server), `http.response.status_code`,
//! `error.type`.
//!
//! # Sampling
//! A sampled caller's decision is honoured (a parent-based sampler, as the OpenTelemetry SDK's
//! `ParentBased`); an unsampled caller's too. A request without a decision (no context, or B3
//! with the decision deferred) is sampled with probability [`TracingConfig::root_sampling_ratio`],
//! by default **0**: like Linkerd's proxy, meshwork joins traces the application starts but does
//! not start its own unless asked. When a request is not sampled the layers build nothing — no
//! span, no attributes — and only pass the caller's context on (about the cost of reading three
//! headers).
//!
//! # Export
//! Spans go through a bounded queue ([`TracingConfig::max_queue_size`], default 2048, the
//! OpenTelemetry SDK's `OTEL_BSP_MAX_QUEUE_SIZE`) to an exporter thread that sends batches of up to
//! 512 spans every 5 s (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`) as OTLP/HTTP
//! protobuf (`opentelemetry-otlp`) with a hyper client ([`HyperOtlpClient`]). A full queue drops
//! spans rather than blocking requests; [`Tracing::dropped_spans`] counts them and
//! [`Tracing::register_metrics`] exports the counts.
//!
//! ```no_run
//! use mesh_core::trace::{ClientSpan, ServerSpan, Tracing, TracingConfig};
//!
//! # fn main() -> Result<(), mesh_core::trace::TraceError> {
//! let tracing = Tracing::otlp(TracingConfig {
//!     service_name: "books".into(),
//!     otlp_endpoint: "http://127.0.0.1:4318/v1/traces".into(),
//!     root_sampling_ratio: 0.01,
//!     ..TracingConfig::default()
//! })?;
//! let server_layer = ServerSpan::layer(tracing.clone()); // around the application
//! let client_layer = ClientSpan::layer(tracing.clone()); // per endpoint, below retries
//! # let _ = (server_layer, client_layer);
//! # Ok(()) }
//! ```

mod attrs;
mod client;
pub mod context;
mod export;
pub mod propagation;
mod server;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span, SpanExporter};
use opentelemetry_sdk::Resource;

pub use self::client::{ClientSpan, ClientSpanFuture, ClientSpanLayer, NewClientSpan};
pub use self::context::{current, Format, SpanId, TraceContext, TraceId};
pub use self::export::HyperOtlpClient;
pub use self::propagation::{extract, inject, TraceHeaderError};
pub use self::server::{NewServerSpan, ServerSpan, ServerSpanFuture, ServerSpanLayer};

use self::export::{BoundedBatchProcessor, ExportStats};
use crate::metrics::{names, MetricsError, MetricsRegistry};

/// Tracing configuration. `Default` is the production default.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// `service.name` of the exported spans. Default `meshwork`.
    pub service_name: String,
    /// The OTLP/HTTP traces URL, used as is. Default `http://127.0.0.1:4318/v1/traces` (the
    /// OTLP/HTTP default port, on loopback: a local collector or agent).
    pub otlp_endpoint: String,
    /// Probability of sampling a request that arrives without a sampling decision. Default 0:
    /// only traces the caller sampled are recorded. Must be within [0, 1].
    pub root_sampling_ratio: f64,
    /// Spans held for export before new ones are dropped. Default 2048.
    pub max_queue_size: usize,
    /// Spans per export request. Default 512; at most `max_queue_size`.
    pub max_export_batch_size: usize,
    /// Longest a finished span waits before being exported. Default 5 s.
    pub scheduled_delay: Duration,
    /// Time limit of one export request. Default 10 s (the OTLP exporter's default).
    pub export_timeout: Duration,
}

/// Errors of the tracing module.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// `root_sampling_ratio` is outside [0, 1] or not a number.
    #[error("root_sampling_ratio {0} is not within [0, 1]")]
    SamplingRatio(f64),
    /// A queue or batch size of zero, or a batch larger than the queue.
    #[error("max_export_batch_size {batch} must be between 1 and max_queue_size {queue}")]
    QueueSize {
        /// Configured batch size.
        batch: usize,
        /// Configured queue size.
        queue: usize,
    },
    /// A zero delay or timeout.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// Which setting.
        field: &'static str,
    },
    /// The OTLP exporter could not be built (e.g. the endpoint is not a URL).
    #[error("cannot build the OTLP exporter for {endpoint:?}: {message}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// The exporter's error.
        message: String,
    },
    /// The export thread could not be started.
    #[error("cannot start the span export thread: {0}")]
    Thread(#[from] std::io::Error),
    /// Flushing or shutting down the exporter failed or timed out.
    #[error("span export {op} failed: {message}")]
    Export {
        /// `flush` or `shutdown`.
        op: &'static str,
        /// The SDK's error.
        message: String,
    },
}

/// The tracing handle every span layer shares. Cloning is cheap.
#[derive(Clone)]
pub struct Tracing {
    inner: Arc<Inner>,
}

struct Inner {
    tracer: Option<MeshTracer>,
    provider: Option<SdkTracerProvider>,
    /// Root sampling threshold over a uniformly random u64; 0 = never, `u64::MAX` = always.
    threshold: u64,
    stats: Arc<ExportStats>,
}

/// The SDK tracer plus how meshwork starts spans with it.
struct MeshTracer {
    tracer: SdkTracer,
}

// === impl TracingConfig ===

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            service_name: "meshwork".into(),
            otlp_endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            root_sampling_ratio: 0.0,
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TracingConfig {
    /// Checks the ratio, sizes and durations.
    pub fn validate(&self) -> Result<(), TraceError> {
        if !(0.0..=1.0).contains(&self.root_sampling_ratio) {
            return Err(TraceError::SamplingRatio(self.root_sampling_ratio));
        }
        if self.max_queue_size == 0
            || self.max_export_batch_size == 0
            || self.max_export_batch_size > self.max_queue_size
        {
            return Err(TraceError::QueueSize {
                batch: self.max_export_batch_size,
                queue: self.max_queue_size,
            });
        }
        if self.scheduled_delay.is_zero() {
            return Err(TraceError::ZeroDuration {
                field: "scheduled_delay",
            });
        }
        if self.export_timeout.is_zero() {
            return Err(TraceError::ZeroDuration {
                field: "export_timeout",
            });
        }
        Ok(())
    }
}

// === impl Tracing ===

impl Tracing {
    /// Propagation only: contexts are extracted and passed on, no span is ever recorded.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner {
                tracer: None,
                provider: None,
                threshold: 0,
                stats: Arc::default(),
            }),
        }
    }

    /// Records spans and exports them over OTLP/HTTP protobuf to `config.otlp_endpoint`.
    pub fn otlp(config: TracingConfig) -> Result<Self, TraceError> {
        config.validate()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HyperOtlpClient::new())
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.otlp_endpoint.clone())
            .with_timeout(config.export_timeout)
            .build()
            .map_err(|e| TraceError::Exporter {
                endpoint: config.otlp_endpoint.clone(),
                message: e.to_string(),
            })?;
        Self::with_exporter(config, exporter)
    }

    /// Records spans and hands them to `exporter` (any OpenTelemetry `SpanExporter`) through the
    /// bounded queue. `config.otlp_endpoint` is not used.
    pub fn with_exporter<E: SpanExporter + 'static>(
        config: TracingConfig,
        exporter: E,
    ) -> Result<Self, TraceError> {
        config.validate()?;
        let stats = Arc::new(ExportStats::default());
        let processor = BoundedBatchProcessor::spawn(exporter, &config, stats.clone())?;
        // Sampling decisions are made by `should_sample` before a span is started; the SDK's
        // parent-based sampler then keeps them (a root span only exists when it was chosen).
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("meshwork");
        let ratio = config.root_sampling_ratio;
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * u64::MAX as f64) as u64
        };
        Ok(Self {
            inner: Arc::new(Inner {
                tracer: Some(MeshTracer { tracer }),
                provider: Some(provider),
                threshold,
                stats,
            }),
        })
    }

    /// Whether spans are recorded at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.tracer.is_some()
    }

    /// The sampling decision for a request whose caller sent `parent`.
    #[inline]
    pub fn should_sample(&self, parent: Option<&TraceContext>) -> bool {
        if self.inner.tracer.is_none() {
            return false;
        }
        match parent {
            Some(p) if p.is_sampled() => true,
            Some(p) if p.sampled == Some(false) => false,
            // Deferred: decide on the trace id, so every hop that defers agrees.
            Some(p) => self.root_decision(u64::from_be_bytes(low_half(p.trace_id))),
            None => match self.inner.threshold {
                0 => false,
                u64::MAX => true,
                _ => self.root_decision(rand::random()),
            },
        }
    }

    fn root_decision(&self, draw: u64) -> bool {
        match self.inner.threshold {
            0 => false,
            u64::MAX => true,
            t => draw < t,
        }
    }

    fn tracer(&self) -> Option<&MeshTracer> {
        self.inner.tracer.as_ref()
    }

    /// Spans dropped because the export queue was full.
    pub fn dropped_spans(&self) -> u64 {
        self.inner.stats.dropped.load(Ordering::Relaxed)
    }

    /// Spans exported successfully.
    pub fn exported_spans(&self) -> u64 {
        self.inner.stats.exported.load(Ordering::Relaxed)
    }

    /// Spans whose export failed (the collector refused them or could not be reached).
    pub fn failed_spans(&self) -> u64 {
        self.inner.stats.failed.load(Ordering::Relaxed)
    }

    /// Exports `meshwork_trace_spans_exported_total` and `meshwork_trace_spans_dropped_total`
    /// into `registry` (read at scrape time).
    pub fn register_metrics(&self, registry: &MetricsRegistry) -> Result<(), MetricsError> {
        let stats = self.inner.stats.clone();
        registry
            .register_counter_fn(
                names::TRACE_SPANS_EXPORTED,
                "Spans exported over OTLP",
                &[],
                move || stats.exported.load(Ordering::Relaxed),
            )?
            .detach();
        let stats = self.inner.stats.clone();
        registry
            .register_counter_fn(
                names::TRACE_SPANS_DROPPED,
                "Spans dropped because the export queue was full",
                &[],
                move || stats.dropped.load(Ordering::Relaxed),
            )?
            .detach();
        Ok(())
    }

    /// Exports every finished span now and waits for the exporter (blocking this thread; from
    /// async code use [`Tracing::flush`]).
    pub fn force_flush(&self) -> Result<(), TraceError> {
        match &self.inner.provider {
            Some(p) => p.force_flush().map_err(|e| TraceError::Export {
                op: "flush",
                message: e.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// [`Tracing::force_flush`] on a blocking thread.
    pub async fn flush(&self) -> Result<(), TraceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.force_flush())
            .await
            .map_err(|e| TraceError::Export {
                op: "flush",
                message: e.to_string(),
            })?
    }

    /// Exports what is queued and stops the export thread. Spans finished afterwards are dropped.
    pub fn shutdown(&self) -> Result<(), TraceError> {
        match &self.inner.provider {
            Some(p) => p.shutdown().map_err(|e| TraceError::Export {
                op: "shutdown",
                message: e.to_string(),
            }),
            None => Ok(()),
        }
    }
}

fn low_half(id: TraceId) -> [u8; 8] {
    let b = id.to_bytes();
    [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing")
            .field("enabled", &self.is_enabled())
            .field("threshold", &self.inner.threshold)
            .field("stats", &self.inner.stats)
            .finish()
    }
}

// === impl MeshTracer ===

impl MeshTracer {
    /// Starts a span of `kind`, child of `parent` (a remote, sampled context) or a new root, and
    /// returns it with the context the next hop should see.
    fn start(
        &self,
        kind: SpanKind,
        parent: Option<&TraceContext>,
        attrs: attrs::RequestAttrs,
    ) -> (Span, TraceContext) {
        let parent_cx = match parent {
            Some(p) => opentelemetry::Context::new()
                .with_remote_span_context(p.to_remote_span_context(true)),
            None => opentelemetry::Context::new(),
        };
        let name: Cow<'static, str> = attrs.name;
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs.attributes)
            .start_with_context(&self.tracer, &parent_cx);
        let sc = span.span_context();
        let ctx = TraceContext {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
            parent_span_id: parent.map(|p| p.span_id),
            sampled: Some(true),
            debug: parent.is_some_and(|p| p.debug),
            format: parent.map_or(Format::W3c, |p| p.format),
            tracestate: parent.and_then(|p| p.tracestate.clone()),
        };
        (span, ctx)
    }
}

#[cfg(test)]
mod tests;
