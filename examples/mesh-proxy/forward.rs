//! The proxy's request handler: hop-by-hop headers off, the routed client, upgrades spliced, every
//! failure of the proxy's own answered with `l5d-err`, and a count of requests in flight (drain).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use meshwork::body::BoxError;
use meshwork::core::route::L5D_ERR;
use meshwork::{Body, RoutedClient};
use tower::Service;

/// One side of the proxy (outbound or inbound). Clones share the client and the count.
#[derive(Clone)]
pub(crate) struct Forward {
    pub(crate) client: Arc<ArcSwap<RoutedClient<Incoming>>>,
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl Forward {
    pub(crate) fn new(client: RoutedClient<Incoming>, in_flight: Arc<AtomicUsize>) -> Self {
        Self {
            client: Arc::new(ArcSwap::from_pointee(client)),
            in_flight,
        }
    }
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<Counted>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> ResponseFuture {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(self.in_flight.clone());
        let upgrade = strip_hop_by_hop(&mut req).then(|| hyper::upgrade::on(&mut req));
        // The version is per connection: the client picks HTTP/1.1 or HTTP/2 for the endpoint.
        *req.version_mut() = http::Version::HTTP_11;
        // `load` is a few atomic operations; the routed client clone is a handful of Arc bumps.
        let mut client = RoutedClient::clone(&self.client.load());
        ResponseFuture {
            inner: client.call(req),
            guard: Some(guard),
            upgrade,
        }
    }
}

/// Decrements the in-flight count when the response body ends (or the request is dropped).
pub(crate) struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct ResponseFuture {
        #[pin]
        inner: meshwork::routing::ResponseFuture,
        guard: Option<Guard>,
        upgrade: Option<OnUpgrade>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Counted>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = match ready!(this.inner.poll(cx)) {
            Ok(rsp) => rsp,
            Err(error) => failure(&*error),
        };
        if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_side) = this.upgrade.take() {
                let server_side = hyper::upgrade::on(&mut rsp);
                tokio::spawn(splice(client_side, server_side));
            }
        }
        let guard = this.guard.take();
        Poll::Ready(Ok(rsp.map(|body| Counted {
            body,
            _guard: guard,
        })))
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

/// The response for a request the proxy could not forward: 503 when there was no endpoint, 504
/// when its deadline passed, 502 otherwise; the reason in `l5d-err`.
fn failure(error: &(dyn std::error::Error + 'static)) -> Response<Body> {
    let mut status = StatusCode::BAD_GATEWAY;
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<meshwork::client::Error>() {
            if e.is_no_endpoints() {
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        if e.to_string().contains("deadline") {
            status = StatusCode::GATEWAY_TIMEOUT;
        }
        source = e.source();
    }
    tracing::debug!(%error, %status, "request failed in the proxy");
    let reason = error
        .to_string()
        .replace(|c: char| !(' '..='~').contains(&c), " ");
    let value = HeaderValue::from_str(&reason)
        .unwrap_or_else(|_| HeaderValue::from_static("proxy failure"));
    let mut rsp = Response::new(Body::default());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(L5D_ERR, value);
    rsp
}

/// Removes the headers that concern one connection only; returns whether the request asks for
/// an upgrade (whose `Connection` and `Upgrade` headers then stay, as the upgrade needs them).
fn strip_hop_by_hop(req: &mut Request<Incoming>) -> bool {
    let h = req.headers_mut();
    let upgrade = h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"upgrade"));
    h.remove("proxy-connection");
    h.remove(header::PROXY_AUTHORIZATION);
    h.remove("keep-alive");
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

pin_project_lite::pin_project! {
    /// The response body, holding the in-flight guard until it ends.
    pub(crate) struct Counted {
        #[pin]
        body: Body,
        _guard: Option<Guard>,
    }
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
