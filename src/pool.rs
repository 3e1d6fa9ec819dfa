//! An endpoint's HTTP/1.1 connections: a stack of idle connections that each request borrows
//! whole, driving the connection itself.
//!
//! # Why not hyper-util's pooled client
//!
//! hyper-util's legacy `Client` runs every connection as a task of its own and hands each
//! request to it through a channel: per request a pool lookup under a lock keyed by scheme and
//! authority, a boxed checkout future, a send into the connection task's queue, a wake-up of
//! that task, a oneshot back with the response, and, since an HTTP/1 connection is not ready for
//! the next request until its response body has been read, one more spawned task per request
//! that waits for that moment and puts the connection back. On loopback, where the network
//! costs little, that hand-off is a large share of a proxy's CPU per request.
//!
//! Here an endpoint owns one `Http1Pool` (so there is no key to hash: the pool *is* the
//! endpoint's), and a request takes an idle connection off the top of a stack (the most recently
//! used one, whose buffers are warm), or dials a new one. Each connection's I/O still runs on a
//! task of its own (spawned once per connection, not per request). The response body holds the
//! connection while it is read and puts it back on the stack when it reaches its end, so no task
//! is spawned per request to wait for that moment. A body dropped before its end closes the
//! connection (HTTP/1 cannot abandon a response half-read); after an upgrade (`101 Switching
//! Protocols`, a successful `CONNECT`) the connection's task hands the socket over and the
//! connection is never pooled again.
//!
//! A first version let each request poll its connection itself, on the caller's task, to save
//! the wake-up of the connection's task too. Measured under the proxy benchmark it cost more CPU
//! per request than hyper-util's pool, not less: hyper's connection state machine was then
//! polled on every poll of the caller (the response future, every body frame), and each wake-up
//! between the request and its connection (response ready, body wanted) re-polled the whole
//! server connection task instead of a small connection task.
//!
//! A connection the server closed while it sat idle is found out when a request takes it: it is
//! dropped and the request takes the next one, or dials. A request that a reused connection
//! returned unsent (closed just before it was written) is sent again on another connection, as
//! hyper-util does; a request that was written is never sent twice here (retrying it is the
//! retry layer's decision, with its classification and budget).
//!
//! Idle connections are closed after the idle timeout (default 90 s, as hyper-util's) by a small
//! task that runs only while the stack holds connections.
//!
//! HTTP/2 multiplexes requests over one connection whose I/O must run on a task of its own
//! anyway (PINGs, flow control, other streams), so it keeps hyper-util's client.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Parts, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::connect::EndpointConnector;

/// The default time an idle connection is kept before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be sent on an endpoint's HTTP/1.1 connection (besides
/// [`ConnectError`](crate::connect::ConnectError) and hyper's own errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A new connection closed before it could take the request: nothing was sent.
    #[error("connection to {addr} closed before the request was sent")]
    ClosedBeforeSend {
        /// The endpoint's address.
        addr: SocketAddr,
    },
}

/// An endpoint's HTTP/1.1 connections (see [the module docs](self)). Clones share them.
#[derive(Clone)]
pub(crate) struct Http1Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: EndpointConnector,
    builder: http1::Builder,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Option<Duration>,
    /// Whether a task is closing expired idle connections.
    reaping: AtomicBool,
    /// That task, aborted when the pool goes: it sleeps up to `idle_timeout` between checks, and
    /// an endpoint that left discovery must not keep a task alive that long.
    reaper: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let reaper = self
            .reaper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(reaper) = reaper.take() {
            reaper.abort();
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One HTTP/1.1 connection: the request half and the I/O half, used by one request at a time.
struct Conn {
    send: http1::SendRequest<Body>,
    /// The identity the server proved, given to each response as a `PeerIdentity` extension.
    #[cfg(feature = "tls")]
    peer: Option<mesh_tls::Identity>,
}

// === impl Http1Pool ===

impl Http1Pool {
    /// A pool dialing with `connector`; idle connections close after `idle_timeout` (`None`:
    /// never).
    pub(crate) fn new(connector: EndpointConnector, idle_timeout: Option<Duration>) -> Self {
        Http1Pool {
            shared: Arc::new(Shared {
                connector,
                builder: http1::Builder::new(),
                idle: Mutex::new(Vec::new()),
                idle_timeout,
                reaping: AtomicBool::new(false),
                reaper: Mutex::new(None),
            }),
        }
    }

    /// Sends `req` (with an absolute URI) over an idle connection or a new one.
    pub(crate) fn send(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send + 'static {
        self.shared.clone().send(req)
    }
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("addr", &self.shared.connector.addr())
            .field("idle", &self.shared.lock().len())
            .finish()
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send(self: Arc<Self>, mut req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let connect = http1_form(&mut req);
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (Box::pin(self.connect()).await?, false),
            };
            // Wait until the connection takes a request: after the previous response its task
            // may need one more turn to go idle.
            if !conn.send.is_ready() && poll_fn(|cx| conn.send.poll_ready(cx)).await.is_err() {
                if reused {
                    continue; // closed while idle: take the next one
                }
                let addr = self.connector.addr();
                return Err(PoolError::ClosedBeforeSend { addr }.into());
            }
            let rsp = match conn.send.try_send_request(req).await {
                Ok(rsp) => rsp,
                Err(mut error) => match error.take_message() {
                    // Returned unsent by a connection that closed meanwhile: send it elsewhere.
                    Some(unsent) if reused => {
                        req = unsent;
                        continue;
                    }
                    _ => return Err(error.into_error().into()),
                },
            };
            return Ok(self.respond(rsp, conn, connect));
        }
    }

    /// The response with a body that keeps driving `conn` and returns it to the stack at its end.
    fn respond(
        self: &Arc<Self>,
        rsp: Response<Incoming>,
        conn: Conn,
        connect: bool,
    ) -> Response<Body> {
        let (mut parts, body) = rsp.into_parts();
        #[cfg(feature = "tls")]
        if let Some(peer) = &conn.peer {
            parts
                .extensions
                .insert(mesh_tls::PeerIdentity(Some(peer.clone())));
        }
        let upgraded = parts.status == StatusCode::SWITCHING_PROTOCOLS
            || (connect && parts.status.is_success());
        if upgraded {
            // The connection's task completes the upgrade; the connection is never pooled again.
            return Response::from_parts(parts, crate::body::boxed(body));
        }
        let body = PooledBody {
            body,
            conn: Some(conn),
            pool: Arc::downgrade(self),
            ended: false,
        };
        Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
    }

    /// The most recently used idle connection that has not expired.
    fn checkout(&self) -> Option<Conn> {
        // Idle timeouts are seconds long: the reading the request's layers share will do.
        let now = mesh_balance::clock::now();
        let mut idle = self.lock();
        let entry = idle.pop()?;
        if self.expired(&entry, now) {
            // The newest is expired, so are the older ones.
            let stale = std::mem::take(&mut *idle);
            drop(idle);
            drop((entry, stale));
            return None;
        }
        Some(entry.conn)
    }

    fn expired(&self, entry: &Idle, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|timeout| now.saturating_duration_since(entry.since) >= timeout)
    }

    /// Puts a connection whose response has ended back on the stack.
    fn checkin(self: &Arc<Self>, conn: Conn) {
        if conn.send.is_closed() {
            return;
        }
        self.lock().push(Idle {
            conn,
            since: mesh_balance::clock::now(),
        });
        if let Some(timeout) = self.idle_timeout {
            if !self.reaping.swap(true, Ordering::AcqRel) {
                self.spawn_reaper(timeout);
            }
        }
    }

    /// Closes expired idle connections until the stack is empty.
    fn spawn_reaper(self: &Arc<Self>, timeout: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        let reaper = runtime.spawn(async move {
            let mut next = Instant::now() + timeout;
            loop {
                tokio::time::sleep_until(next).await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                let mut idle = pool.lock();
                let fresh = idle.partition_point(|e| pool.expired(e, now));
                let keep = idle.split_off(fresh);
                let expired = std::mem::replace(&mut *idle, keep);
                let Some(oldest) = idle.first() else {
                    // Cleared under the lock: a check-in after this spawns a new reaper.
                    pool.reaping.store(false, Ordering::Release);
                    drop(idle);
                    drop(expired);
                    return;
                };
                next = oldest.since + timeout;
                drop(idle);
                drop(expired);
            }
        });
        *self.reaper.lock().unwrap_or_else(PoisonError::into_inner) = Some(reaper.abort_handle());
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        let io = self.connector.connect().await?;
        #[cfg(feature = "tls")]
        let peer = io.peer_identity().cloned();
        let (send, conn) = self.builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "endpoint connection ended");
            }
        });
        Ok(Conn {
            send,
            #[cfg(feature = "tls")]
            peer,
        })
    }
}

/// Puts `req` in HTTP/1.1 form as hyper-util does: a `Host` header from the URI if it has none,
/// and the request target in origin form (authority form for `CONNECT`). Returns whether the
/// request is a `CONNECT`, which takes the connection over when it succeeds.
fn http1_form(req: &mut Request<Body>) -> bool {
    if req.version() == Version::HTTP_2 {
        *req.version_mut() = Version::HTTP_11;
    }
    if !req.headers().contains_key(HOST) {
        if let Some(host) = host_header(req.uri()) {
            req.headers_mut().insert(HOST, host);
        }
    }
    let connect = req.method() == Method::CONNECT;
    let mut target = Parts::default();
    if connect {
        target.authority = req.uri().authority().cloned();
    } else {
        target.path_and_query = req.uri().path_and_query().cloned();
    }
    *req.uri_mut() = match target {
        Parts {
            path_and_query: Some(path),
            ..
        } if path == "/" => Uri::default(),
        Parts {
            path_and_query: None,
            authority: None,
            ..
        } => Uri::default(),
        // Only a path, or only an authority: always a valid URI.
        target => Uri::from_parts(target).unwrap_or_default(),
    };
    connect
}

/// `host[:port]` of an absolute URI, the port left out when it is the scheme's default.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let default_port = if uri.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(host).ok()
}

/// A response body that returns its connection to the pool once it has been read to its end.
struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Weak<Shared>,
    ended: bool,
}

impl PooledBody {
    fn release(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.checkin(conn);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none() {
            this.ended = true;
            this.release();
        }
        Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to its end (or known to be empty): the connection can take the next request.
        // Otherwise dropping it closes it: the rest of this response is still on the wire.
        if self.ended || http_body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}
