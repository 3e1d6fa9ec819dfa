//! The proxy's request handler: hop-by-hop headers off, the routed client, upgrades spliced.
//! Failures are answered by the server's error mapping (502/503/504 with `l5d-err`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use arc_swap::ArcSwap;
use http::header;
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use meshwork::body::BoxError;
use meshwork::{Body, RoutedClient};
use tower::Service;

use crate::ProxyBody;

/// One side of the proxy (outbound or inbound). Clones share the client, which a reload swaps.
pub(crate) struct Forward {
    pub(crate) client: Arc<ArcSwap<RoutedClient<ProxyBody>>>,
    /// This instance's (this connection's) copy of the client it last used, and the swapped-in
    /// client it was copied from: the copy keeps the router's last leaf client, which is then
    /// called in place. A reload swaps in a new client, and the connection's next request takes
    /// a copy of it; until then, or until the connection closes (its idle or header-read
    /// timeout), the old copy keeps the old client alive, as a request in flight would.
    current: Option<(Arc<RoutedClient<ProxyBody>>, RoutedClient<ProxyBody>)>,
}

impl Forward {
    pub(crate) fn new(client: Arc<ArcSwap<RoutedClient<ProxyBody>>>) -> Self {
        Self {
            client,
            current: None,
        }
    }

    /// The copy of the current client, made anew when a reload has swapped it.
    fn current(&mut self) -> &mut RoutedClient<ProxyBody> {
        let Self { client, current } = self;
        if !matches!(current, Some((from, _)) if Arc::ptr_eq(from, &client.load())) {
            *current = None;
        }
        let (_, copy) = current.get_or_insert_with(|| {
            let from = client.load_full();
            let copy = RoutedClient::clone(&from);
            (from, copy)
        });
        copy
    }
}

impl Clone for Forward {
    /// Shares the swapped client; the copy in use is this instance's own.
    fn clone(&self) -> Self {
        Self::new(self.client.clone())
    }
}

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> ResponseFuture {
        let upgrade = strip_hop_by_hop(&mut req).then(|| hyper::upgrade::on(&mut req));
        ResponseFuture {
            inner: self.current().call(req),
            upgrade,
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct ResponseFuture {
        #[pin]
        inner: meshwork::routing::ResponseFuture,
        upgrade: Option<OnUpgrade>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_side) = this.upgrade.take() {
                let server_side = hyper::upgrade::on(&mut rsp);
                tokio::spawn(splice(client_side, server_side));
            }
        }
        Poll::Ready(Ok(rsp))
    }
}

/// Copies bytes both ways between the two upgraded connections (WebSocket and friends).
async fn splice(client: OnUpgrade, server: OnUpgrade) {
    let (client, server) = match tokio::try_join!(client, server) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

/// Hop-by-hop headers without a constant in `http` (a `&str` key is parsed on every lookup).
static PROXY_CONNECTION: header::HeaderName = header::HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: header::HeaderName = header::HeaderName::from_static("keep-alive");

/// The hop-by-hop headers a proxy never forwards (RFC 9110 §7.6.1, and the `Proxy-*` and
/// `Keep-Alive` headers of older practice).
static HOP_BY_HOP: [&header::HeaderName; 7] = [
    &header::CONNECTION,
    &header::UPGRADE,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::PROXY_AUTHORIZATION,
    &PROXY_CONNECTION,
    &KEEP_ALIVE,
];

/// Removes the headers that concern one connection only: the hop-by-hop headers and those the
/// `Connection` header names (RFC 9110 §7.6.1). Returns whether the request asks for an upgrade
/// (whose `Connection` and `Upgrade` headers then stay, as the upgrade needs them).
fn strip_hop_by_hop(req: &mut Request<ProxyBody>) -> bool {
    let h = req.headers_mut();
    // Most requests carry none of them: say so without a lookup per name.
    if !meshwork::core::headers::contains_any(h, &HOP_BY_HOP) {
        return false;
    }
    let upgrade = h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"upgrade"));
    let listed: Vec<header::HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| header::HeaderName::from_bytes(token.trim().as_bytes()).ok())
        // `Upgrade` stays for an upgrade; `TE: trailers` stays whatever `Connection` says (a gRPC
        // backend needs it), by the rule below.
        .filter(|name| !(upgrade && *name == header::UPGRADE) && *name != header::TE)
        .collect();
    for name in listed {
        h.remove(name);
    }
    h.remove(&PROXY_CONNECTION);
    h.remove(header::PROXY_AUTHORIZATION);
    h.remove(&KEEP_ALIVE);
    h.remove(header::TRANSFER_ENCODING);
    if !upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
    upgrade
}
