//! Shared scaffolding for the facade's integration tests: real HTTP backends on 127.0.0.1.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub type Response = http::Response<Full<Bytes>>;
pub type Handler = Arc<
    dyn Fn(http::Request<Incoming>, usize) -> Pin<Box<dyn Future<Output = Response> + Send>>
        + Send
        + Sync,
>;

/// A backend serving HTTP/1.1 and HTTP/2 on 127.0.0.1. Each request gets the handler's answer,
/// with the backend's name in `x-backend`. `kill` closes the listener and every open connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub hits: Arc<AtomicUsize>,
    kill: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Backend {
    /// A backend that answers `status` after `delay`, echoing the `Host` it saw in `x-seen-host`.
    pub async fn start(name: &'static str, delay: Duration, status: u16) -> Backend {
        Self::with_handler(
            name,
            handler(move |req, _| async move {
                tokio::time::sleep(delay).await;
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .cloned()
                    .unwrap_or_else(|| http::HeaderValue::from_static("-"));
                http::Response::builder()
                    .status(status)
                    .header("x-seen-host", host)
                    .body(Full::new(Bytes::from_static(b"ok")))
                    .unwrap()
            }),
        )
        .await
    }

    pub async fn with_handler(name: &'static str, handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::on(listener, name, handler)
    }

    /// Serves on `listener` (e.g. re-bound to a killed backend's address).
    pub fn on(listener: TcpListener, name: &'static str, handler: Handler) -> Backend {
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (kill, killed) = watch::channel(false);
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let handler = handler.clone();
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req, n);
                        async move {
                            let mut rsp = fut.await;
                            rsp.headers_mut()
                                .insert("x-backend", http::HeaderValue::from_static(name));
                            Ok::<_, std::convert::Infallible>(rsp)
                        }
                    });
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Backend {
            addr,
            name,
            hits,
            kill,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every open connection.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.kill.send(true);
    }

    /// Kills the backend and returns once its listener is closed, so that its address can be
    /// bound again (`abort` only asks the accept task to stop; the task still owns the
    /// listener until the runtime drops it).
    pub async fn kill_and_wait(mut self) {
        self.kill();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes a [`Handler`] from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(http::Request<Incoming>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    Arc::new(move |req, n| Box::pin(f(req, n)))
}

pub fn status(code: u16) -> Response {
    http::Response::builder()
        .status(code)
        .body(Full::new(Bytes::from_static(b"ok")))
        .unwrap()
}

/// A loopback port where connecting is refused: held by a socket that is bound but never
/// listens, so that no parallel test's listener can take it meanwhile (a port merely freed
/// could be). Keep the socket as long as the port must refuse.
#[allow(dead_code)]
pub fn refusing_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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

/// The example `name` built with this test's own profile (once per name and test process), as
/// `target/<profile>/examples/<name>`.
///
/// The build runs without the variables `cargo test` sets for this package (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_*`, ...): build scripts that watch them (ring watches `CARGO_MANIFEST_DIR`) would
/// otherwise see them change between this build and the next plain `cargo` command, and half the
/// dependency tree would be rebuilt twice per test run.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned();
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo build --example");
    assert!(status.success(), "building the example {name} failed");
    let path = profile_dir.join("examples").join(name);
    built.insert(name.to_owned(), path.clone());
    path
}
