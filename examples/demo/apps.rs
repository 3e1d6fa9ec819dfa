//! The workshop's applications — small hyper services that know nothing of the mesh except that
//! they call other services through `http_proxy` and pass the `l5d-ctx-*` and trace headers on —
//! and the HTTP helper the demo's driver uses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What an application answers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum App {
    /// `Hello (<own address>) <what world said>`: calls `http://world/` through its proxy.
    Hello,
    /// `<word> (<own address>)`: `world` for v1, `earth` for v2.
    World(&'static str),
    /// `reviews <version> (<own address>)`.
    Reviews(&'static str),
}

/// The headers an application forwards from the request it serves to the requests it makes:
/// the mesh's context (dtab overrides, deadlines) and the trace context.
fn propagated(name: &str) -> bool {
    name.starts_with("l5d-ctx-")
        || name.starts_with("x-b3-")
        || matches!(name, "traceparent" | "tracestate" | "b3")
}

/// Binds `addr` and serves `app` there; `proxy` is the outbound listener it calls through.
pub(crate) async fn serve(app: App, addr: SocketAddr, proxy: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (the {app:?} application): {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    handle(app, addr, proxy, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(())
}

async fn handle(
    app: App,
    me: SocketAddr,
    proxy: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ip = me.ip();
    let (status, body) = match app {
        App::World(word) => (StatusCode::OK, format!("{word} ({ip})")),
        App::Reviews(version) => (StatusCode::OK, format!("reviews {version} ({ip})")),
        App::Hello => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .filter(|(k, _)| propagated(k.as_str()))
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            match get_via(proxy, "http://world/", &headers).await {
                Ok((StatusCode::OK, world)) => (StatusCode::OK, format!("Hello ({ip}) {world}")),
                Ok((status, text)) => (
                    status,
                    format!("Hello ({ip}): world answered {status}: {text}"),
                ),
                Err(e) => (
                    StatusCode::BAD_GATEWAY,
                    format!("Hello ({ip}): cannot call world: {e}"),
                ),
            }
        }
    };
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    Ok(rsp)
}

/// One GET of `uri` (absolute form, as to an HTTP proxy) through `proxy` on a new connection,
/// within 10 s: the status and the body.
pub(crate) async fn get_via(
    proxy: SocketAddr,
    uri: &str,
    headers: &[(String, String)],
) -> Result<(StatusCode, String), String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("cannot connect to the proxy {proxy}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let mut text = String::from_utf8_lossy(&body).trim_end().to_owned();
        if let Some(err) = header(&parts.headers, "l5d-err") {
            text = format!("{text} (l5d-err: {err})");
        }
        Ok((parts.status, text))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("no answer from {uri} through {proxy} within 10s"))?
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
