//! Span export: a bounded batch queue in front of an OTLP/HTTP exporter that uses hyper.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::TracingConfig;

/// Counts of what the export queue did with finished spans.
#[derive(Debug, Default)]
pub(super) struct ExportStats {
    pub(super) queued: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) exported: AtomicU64,
    pub(super) failed: AtomicU64,
}

enum Control {
    Resource(Resource),
    Flush(std::sync::mpsc::SyncSender<OTelSdkResult>),
    Shutdown(std::sync::mpsc::SyncSender<OTelSdkResult>),
}

/// A span processor with a bounded queue: `on_end` never blocks; when the queue holds
/// `max_queue_size` spans, further spans are dropped and counted. A dedicated thread with its own
/// current-thread tokio runtime batches spans (up to `max_export_batch_size`, or every
/// `scheduled_delay`) and awaits the exporter, so an async HTTP client works whatever runtime (if
/// any) the application's threads run.
pub(super) struct BoundedBatchProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    stats: Arc<ExportStats>,
    wait: Duration,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl BoundedBatchProcessor {
    pub(super) fn spawn<E: SpanExporter + 'static>(
        exporter: E,
        config: &TracingConfig,
        stats: Arc<ExportStats>,
    ) -> std::io::Result<Self> {
        let (spans, rx) = mpsc::channel(config.max_queue_size);
        let (control, control_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            exporter,
            spans: rx,
            control: control_rx,
            stats: stats.clone(),
            max_batch: config.max_export_batch_size,
            delay: config.scheduled_delay,
            timeout: config.export_timeout,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("meshwork-span-export".into())
            .spawn(move || runtime.block_on(worker.run()))?;
        Ok(Self {
            spans,
            control,
            stats,
            // A flush may need one export per batch in the queue; bound the wait generously.
            wait: config.export_timeout * 2 + Duration::from_secs(1),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn request(
        &self,
        make: impl FnOnce(std::sync::mpsc::SyncSender<OTelSdkResult>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.control
            .send(make(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(OTelSdkError::AlreadyShutdown)
            }
        }
    }
}

impl fmt::Debug for BoundedBatchProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedBatchProcessor")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SpanProcessor for BoundedBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => self.stats.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.request(Control::Flush, self.wait)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.request(Control::Shutdown, timeout);
        if let Some(thread) = self.thread.lock().take() {
            if result.is_ok() {
                let _ = thread.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.send(Control::Resource(resource.clone()));
    }
}

struct Worker<E> {
    exporter: E,
    spans: mpsc::Receiver<SpanData>,
    control: mpsc::UnboundedReceiver<Control>,
    stats: Arc<ExportStats>,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl<E: SpanExporter> Worker<E> {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut tick = tokio::time::interval(self.delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                msg = self.control.recv() => match msg {
                    Some(Control::Resource(resource)) => self.exporter.set_resource(&resource),
                    Some(Control::Flush(reply)) => {
                        let result = self.drain(&mut batch).await;
                        let _ = reply.send(result);
                    }
                    Some(Control::Shutdown(reply)) => {
                        let result = self.drain(&mut batch).await;
                        let result = result.and(self.exporter.shutdown());
                        let _ = reply.send(result);
                        return;
                    }
                    // Every processor handle is gone: export what is left and stop.
                    None => {
                        let _ = self.drain(&mut batch).await;
                        return;
                    }
                },
                span = self.spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= self.max_batch {
                            let _ = self.export(&mut batch).await;
                        }
                    }
                    None => {
                        let _ = self.drain(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        let _ = self.export(&mut batch).await;
                    }
                }
            }
        }
    }

    /// Exports everything queued so far.
    async fn drain(&mut self, batch: &mut Vec<SpanData>) -> OTelSdkResult {
        let mut result = Ok(());
        while let Ok(span) = self.spans.try_recv() {
            batch.push(span);
            if batch.len() >= self.max_batch {
                result = result.and(self.export(batch).await);
            }
        }
        if !batch.is_empty() {
            result = result.and(self.export(batch).await);
        }
        result
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>) -> OTelSdkResult {
        let spans = std::mem::replace(batch, Vec::with_capacity(self.max_batch));
        let n = spans.len() as u64;
        let result = match tokio::time::timeout(self.timeout, self.exporter.export(spans)).await {
            Ok(result) => result,
            Err(_) => Err(OTelSdkError::Timeout(self.timeout)),
        };
        match &result {
            Ok(()) => self.stats.exported.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                tracing::debug!(error = %e, spans = n, "span export failed");
                self.stats.failed.fetch_add(n, Ordering::Relaxed)
            }
        };
        result
    }
}

/// An OTLP/HTTP client over hyper-util's pooled client (plain HTTP; put a TLS-terminating
/// collector or sidecar on loopback for remote collectors). Response bodies over 4 MiB are refused.
#[derive(Clone)]
pub struct HyperOtlpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

impl HyperOtlpClient {
    /// A new client with its own connection pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Default for HyperOtlpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HyperOtlpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperOtlpClient").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl HttpClient for HyperOtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let rsp = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = rsp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}
