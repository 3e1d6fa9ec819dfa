//! Load reports from the server side: each response tells the calling balancer how busy this
//! server is.
//!
//! With [`ServerBuilder::load_reports`](crate::ServerBuilder::load_reports) on, the server wraps
//! the application in [`ReportLoad`], which counts the requests in flight (from arrival, so
//! requests waiting for the application's readiness count too), times each request's stay in the
//! application (from the call to the response head: queueing before the application is ready is
//! excluded) into a running mean, and attaches the three to the response in ORCA's
//! `endpoint-load-metrics` header, TEXT encoding (see [`mesh_balance::report`] for the format).
//! A meshwork client reads the report, removes the header and balances on it (expected completion
//! time over five candidates, see [`mesh_balance::p2c`]); any other client sees an ORCA report
//! it may use or ignore.
//!
//! **Capacity.** A server does not know how many requests its application serves at once, so it
//! is a setting: [`LoadReportConfig::capacity`], by default the machine's available parallelism
//! (right for CPU-bound handlers; set it to the size of a worker pool, a connection pool or a
//! concurrency limit when that is what bounds the application).
//!
//! **Off by default.** Reports cost one header per response and tell callers how loaded the
//! server is; a server opts in. A report the application itself set is replaced by the server's,
//! and a response the mesh made (a deadline's 504) carries none.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use meshwork::load_report::{LoadReportConfig, ReportLoad};
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = tower::service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hi"))))
//! });
//! let mut svc = ReportLoad::layer(LoadReportConfig { capacity: 4 }).layer(app);
//! let rsp = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! let report = rsp.headers()["endpoint-load-metrics"].to_str().unwrap();
//! assert!(report.starts_with("TEXT "));
//! assert!(report.contains("named_metrics.concurrency=4"));
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use mesh_balance::report::{LoadTracker, Started, HEADER};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

/// What the server reports. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReportConfig {
    /// How many requests the application serves at once (at least 1). Default: the machine's
    /// available parallelism.
    pub capacity: u32,
}

impl Default for LoadReportConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            capacity: u32::try_from(cores).unwrap_or(u32::MAX),
        }
    }
}

/// The layer of [`ReportLoad`]; all services it makes share one [`LoadTracker`].
#[derive(Clone, Debug)]
pub struct ReportLoadLayer {
    tracker: Arc<LoadTracker>,
}

/// Reports the server's load on every response (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct ReportLoad<S> {
    inner: S,
    tracker: Arc<LoadTracker>,
}

// === impl ReportLoad ===

impl ReportLoad<()> {
    /// A layer reporting with `config`.
    pub fn layer(config: LoadReportConfig) -> ReportLoadLayer {
        ReportLoadLayer {
            tracker: Arc::new(LoadTracker::new(config.capacity)),
        }
    }
}

impl<S> ReportLoad<S> {
    /// The tracker behind the reports (requests in flight, service time).
    pub fn tracker(&self) -> &Arc<LoadTracker> {
        &self.tracker
    }
}

impl ReportLoadLayer {
    /// The tracker shared by every service of this layer.
    pub fn tracker(&self) -> &Arc<LoadTracker> {
        &self.tracker
    }
}

impl<S> Layer<S> for ReportLoadLayer {
    type Service = ReportLoad<S>;

    fn layer(&self, inner: S) -> ReportLoad<S> {
        ReportLoad {
            inner,
            tracker: self.tracker.clone(),
        }
    }
}

impl<S, Req, B> Service<Req> for ReportLoad<S>
where
    S: Service<Req, Response = http::Response<B>> + Clone,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = ReportFuture<S, Req>;

    /// Always ready: the request is counted in flight from its arrival, and waits for the
    /// application's readiness in the response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let started = LoadTracker::start(&self.tracker);
        // The response future drives its own clone's readiness (this service's `poll_ready`
        // never polled the inner one).
        let inner = self.inner.clone();
        ReportFuture {
            state: State::Waiting {
                inner,
                req: Some(req),
            },
            started: Some(started),
        }
    }
}

pin_project! {
    /// The response future of [`ReportLoad`].
    pub struct ReportFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        started: Option<Started>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Waiting { inner: S, req: Option<Req> },
        Called { #[pin] future: S::Future, since: Instant },
    }
}

impl<S, Req, B> Future for ReportFuture<S, Req>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Output = Result<http::Response<B>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { inner, req } => {
                    ready!(inner.poll_ready(cx))?;
                    let Some(req) = req.take() else {
                        // Unreachable: the state moves on right after the request is taken.
                        return Poll::Pending;
                    };
                    let future = inner.call(req);
                    this.state.set(State::Called {
                        future,
                        since: Instant::now(),
                    });
                }
                StateProj::Called { future, since } => {
                    let mut rsp = ready!(future.poll(cx))?;
                    if let Some(started) = this.started.take() {
                        let report = started.finish(since.elapsed());
                        rsp.headers_mut().insert(HEADER, report.to_header_value());
                    }
                    return Poll::Ready(Ok(rsp));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn the_report_counts_queued_requests_and_times_only_the_application() {
        // The application serves one request at a time (a concurrency limit of 1) in 10 ms.
        let app = tower::ServiceBuilder::new()
            .concurrency_limit(1)
            .service(tower::service_fn(|_: ()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, Infallible>(http::Response::new(()))
            }));
        let layer = ReportLoad::layer(LoadReportConfig { capacity: 1 });
        let svc = layer.layer(app);
        let calls: Vec<_> = (0..3).map(|_| svc.clone().oneshot(())).collect();
        let rsps = futures_util::future::join_all(calls).await;
        let mut seen = Vec::new();
        for rsp in rsps {
            let rsp = rsp.expect("infallible");
            let value = rsp.headers()[HEADER].as_bytes();
            let report = mesh_balance::LoadReport::parse(value).expect("well formed");
            seen.push(report.in_flight.expect("in flight"));
            // 10 ms each: the 10 and 20 ms the later ones queued are not service time.
            let ms = report.service_time.expect("service time").as_secs_f64() * 1e3;
            assert!((ms - 10.0).abs() < 1.5, "{ms}");
            assert_eq!(report.capacity, Some(1));
        }
        // Answered in order: two, one, then none left behind them.
        assert_eq!(seen, vec![2, 1, 0]);
        assert_eq!(layer.tracker().in_flight(), 0);
    }
}
