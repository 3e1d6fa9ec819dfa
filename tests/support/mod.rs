//! Shared scaffolding for the facade's integration tests: real HTTP backends on 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A backend serving HTTP/1.1 and HTTP/2 on 127.0.0.1 that answers after `delay` with `status`,
/// naming itself in `x-backend` and echoing the `Host` it saw in `x-seen-host`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str, delay: Duration, status: u16) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .cloned()
                                .or_else(|| {
                                    req.uri()
                                        .authority()
                                        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
                                })
                                .unwrap_or_else(|| http::HeaderValue::from_static("-"));
                            http::Response::builder()
                                .status(status)
                                .header("x-backend", name)
                                .header("x-seen-host", host)
                                .body(Full::new(Bytes::from_static(b"ok")))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name,
            hits,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting connections (connections already open keep being served by their tasks).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}
