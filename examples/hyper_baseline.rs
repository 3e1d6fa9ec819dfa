//! The floor for mesh-proxy's CPU per request: a bare HTTP/1.1 reverse proxy on hyper and
//! hyper-util's pooled client, one current-thread runtime, no mesh feature at all (no routing,
//! metrics, balancer, retries, deadlines, limits or timeouts). Not for production: it exists so that
//! `benches/proxy/ab.sh` can measure what hyper itself costs beside HAProxy on the same machine.
//!
//! ```text
//! cargo run --release --example hyper_baseline -- 127.0.0.1:28095 http://127.0.0.1:28080
//! ```

use std::error::Error;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Why a request was not proxied (hyper answers the connection's caller with nothing more).
#[derive(Debug)]
enum ProxyError {
    Uri(hyper::http::uri::InvalidUriParts),
    Upstream(hyper_util::client::legacy::Error),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Uri(e) => write!(f, "invalid upstream URI: {e}"),
            ProxyError::Upstream(e) => write!(f, "upstream request failed: {e}"),
        }
    }
}

impl Error for ProxyError {}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_baseline LISTEN-ADDR BACKEND-URL";
    let listen = args.next().ok_or(usage)?;
    let backend: hyper::Uri = args.next().ok_or(usage)?.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("accept: {error}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, client.clone(), backend.clone()));
        }
    })
}

type Upstream = Client<HttpConnector, Incoming>;

/// Serves one client connection, forwarding each request to `backend`.
async fn serve(stream: TcpStream, client: Upstream, backend: hyper::Uri) {
    let proxy = service_fn(move |req| forward(client.clone(), backend.clone(), req));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), proxy);
    if let Err(error) = conn.await {
        eprintln!("connection: {error}");
    }
}

/// Sends `req` to `backend` (its path and query kept).
async fn forward(
    client: Upstream,
    backend: hyper::Uri,
    mut req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Incoming>, ProxyError> {
    let mut parts = backend.into_parts();
    parts.path_and_query = req.uri().path_and_query().cloned();
    *req.uri_mut() = hyper::Uri::from_parts(parts).map_err(ProxyError::Uri)?;
    client.request(req).await.map_err(ProxyError::Upstream)
}
