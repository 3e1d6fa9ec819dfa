//! The one accept loop of every meshwork server: the facade's inbound server, the mutual-TLS
//! listener of `mesh-tls`, the metrics endpoint and the proxy's listeners all accept and serve
//! connections through [`Server::serve`].
//!
//! # Why one loop
//!
//! A hyper server without a timer has no header-read timeout, and hyper-util's HTTP/1-or-2
//! detection waits forever for a first byte, so every accept loop written by hand is open to
//! slowloris: a connection that sends nothing, or half a request head, holds a task and a file
//! descriptor for ever. Getting the timers, the header cap, graceful drain and accept-error
//! handling right once, and using that loop everywhere, is what keeps every listener safe.
//!
//! # What a connection gets
//!
//! | limit | default | where it comes from |
//! |---|---|---|
//! | first byte | 10 s from accept, else closed | HAProxy's `timeout http-request` of its examples |
//! | handshake | whatever the [`Handshake`] enforces (mesh-tls: 10 s) | |
//! | HTTP/1 request head | 10 s from its first byte (hyper's `header_read_timeout`) | as above |
//! | idle | 60 s without a request in flight, else closed | below nginx's 75 s `keepalive_timeout` |
//! | HTTP/2 keepalive | PING every 20 s, closed if unanswered within 20 s | Linkerd 2's server keepalive |
//! | request head size | 16 KiB, else `431 Request Header Fields Too Large` | HAProxy's `tune.bufsize` |
//! | header count | 100 per HTTP/1 request, else `431` (HTTP/2: bounded by the head size) | hyper's and Go's `net/http` default |
//! | connections | 10,000 open per listener; a connection beyond is closed at once | HAProxy's `maxconn` of its examples |
//! | HTTP/2 streams | 128 concurrent per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`); beyond: `REFUSED_STREAM` | nginx's `http2_max_concurrent_streams` |
//! | HTTP/2 resets | 20 streams reset before the server saw them, 1,024 reset for errors per connection, else GOAWAY (CVE-2023-44487 "rapid reset") | hyper's defaults |
//! | HTTP/2 frames | 16 KiB (the protocol's default `SETTINGS_MAX_FRAME_SIZE`); a larger frame is a connection error | RFC 9113 |
//! | drain | on shutdown: stop accepting, GOAWAY / close idle keep-alive connections, let requests in flight finish for up to 30 s, then close the rest | Envoy's 5 s drain is short for long requests |
//!
//! Accept errors (`EMFILE`, a connection reset before accept) never end the loop: it backs off
//! (10 ms, doubling to 1 s while they last) and accepts again. Each connection runs on its own
//! task with `TCP_NODELAY`; HTTP/1.1 (with upgrades, e.g. WebSocket) and HTTP/2 (prior knowledge,
//! or ALPN through the handshake) are both served.
//!
//! # Example
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use mesh_server::{Plain, Server, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new(ServerConfig::default())?
//!     .serve(listener, Plain, app, std::future::pending())
//!     .await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tower::{Service, ServiceExt};

/// The error type of services and bodies served.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The smallest request-head cap hyper accepts for HTTP/1 (its minimum read buffer).
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;

/// Limits and timers of every connection a [`Server`] accepts. `Default` gives the production
/// defaults of the [module table](crate).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Time from accept to the connection's first byte (default 10 s).
    pub first_byte_timeout: Duration,
    /// Time to read an HTTP/1 request head once it has begun (default 10 s).
    pub header_read_timeout: Duration,
    /// Time a connection may stay without a request in flight (default 60 s).
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keepalive PINGs, or `None` for none (default 20 s).
    pub h2_keepalive_interval: Option<Duration>,
    /// Time an HTTP/2 keepalive PING may stay unanswered before the connection is closed
    /// (default 20 s).
    pub h2_keepalive_timeout: Duration,
    /// Largest request head (HTTP/1 request line and headers; HTTP/2 header list) accepted;
    /// larger ones are answered `431` (default 16 KiB, at least 8 KiB).
    pub max_header_bytes: usize,
    /// How long requests in flight may take to finish once shutdown begins (default 30 s).
    pub drain_timeout: Duration,
    /// Most header fields in an HTTP/1 request; more are answered `431` (default 100).
    pub max_headers: usize,
    /// Most connections open at once per listener; one accepted beyond is closed at once
    /// (default 10,000).
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection, advertised in `SETTINGS` (default 128).
    pub h2_max_concurrent_streams: u32,
}

/// Why a [`Server`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting of [`ServerConfig`] is out of range.
    #[error("invalid server setting {field} = {value}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// The allowed range.
        reason: &'static str,
    },
}

/// What happens to an accepted TCP connection before HTTP is served on it: nothing
/// ([`Plain`]), or a TLS handshake that also tells who the peer is.
///
/// `Peer` is inserted into every request's extensions when the handshake returns one.
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The I/O HTTP is served on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What the handshake learnt about the peer (e.g. its verified identity).
    type Peer: Clone + Send + Sync + 'static;
    /// Why a handshake failed (logged, never fatal to the loop).
    type Error: fmt::Display + Send;

    /// Performs the handshake on a connection from `remote`.
    fn handshake(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> impl Future<Output = Result<Handshaken<Self>, Self::Error>> + Send;
}

/// What a [`Handshake`] yields: the I/O to serve HTTP on, and what it learnt about the peer.
pub type Handshaken<H> = (<H as Handshake>::Io, Option<<H as Handshake>::Peer>);

/// No handshake: HTTP over the plain TCP connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

/// Where connections come from: a [`TcpListener`], or anything else that yields TCP streams.
pub trait Listener: Send {
    /// The next connection and its peer's address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

/// Serves HTTP on accepted connections with the [`ServerConfig`]'s timers and limits. Cheap to
/// clone; one `Server` can serve several listeners.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    config: ServerConfig,
    builder: auto::Builder<TokioExecutor>,
}

/// Where a server is in its life: serving, draining (no new connections, requests in flight
/// finish), closing (the drain time is over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Closing,
}

// === impl ServerConfig ===

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            first_byte_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_keepalive_interval: Some(Duration::from_secs(20)),
            h2_keepalive_timeout: Duration::from_secs(20),
            max_header_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(30),
            max_headers: HYPER_MAX_HEADERS,
            max_connections: 10_000,
            h2_max_concurrent_streams: 128,
        }
    }
}

impl ServerConfig {
    /// Checks every timer (1 ms to 1 day), the header cap (8 KiB to 1 MiB), the header count (1 to
    /// 10,000), the connection cap and the stream cap (at least 1).
    ///
    /// # Errors
    ///
    /// [`ServerError::Config`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ServerError> {
        let timers = [
            ("first_byte_timeout", Some(self.first_byte_timeout)),
            ("header_read_timeout", Some(self.header_read_timeout)),
            ("idle_timeout", Some(self.idle_timeout)),
            ("h2_keepalive_interval", self.h2_keepalive_interval),
            ("h2_keepalive_timeout", Some(self.h2_keepalive_timeout)),
            ("drain_timeout", Some(self.drain_timeout)),
        ];
        for (field, value) in timers {
            let Some(value) = value else { continue };
            if value < Duration::from_millis(1) || value > Duration::from_secs(86_400) {
                return Err(ServerError::Config {
                    field,
                    value: format!("{value:?}"),
                    reason: "must be between 1ms and 1 day",
                });
            }
        }
        let counts = [
            ("max_headers", self.max_headers, 1, 10_000),
            ("max_connections", self.max_connections, 1, usize::MAX),
            (
                "h2_max_concurrent_streams",
                self.h2_max_concurrent_streams as usize,
                1,
                usize::MAX,
            ),
        ];
        for (field, value, min, max) in counts {
            if !(min..=max).contains(&value) {
                return Err(ServerError::Config {
                    field,
                    value: value.to_string(),
                    reason: if field == "max_headers" {
                        "must be between 1 and 10000"
                    } else {
                        "must be at least 1"
                    },
                });
            }
        }
        if !(MIN_MAX_HEADER_BYTES..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ServerError::Config {
                field: "max_header_bytes",
                value: self.max_header_bytes.to_string(),
                reason: "must be between 8 KiB and 1 MiB",
            });
        }
        Ok(())
    }

    /// Sets [`ServerConfig::first_byte_timeout`].
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.first_byte_timeout = timeout;
        self
    }

    /// Sets [`ServerConfig::header_read_timeout`].
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets [`ServerConfig::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the HTTP/2 keepalive interval (`None`: no PINGs) and timeout.
    pub fn h2_keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.h2_keepalive_interval = interval;
        self.h2_keepalive_timeout = timeout;
        self
    }

    /// Sets [`ServerConfig::max_header_bytes`].
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Sets [`ServerConfig::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets [`ServerConfig::max_headers`].
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }

    /// Sets [`ServerConfig::max_connections`].
    pub fn max_connections(mut self, count: usize) -> Self {
        self.max_connections = count;
        self
    }

    /// Sets [`ServerConfig::h2_max_concurrent_streams`].
    pub fn h2_max_concurrent_streams(mut self, count: u32) -> Self {
        self.h2_max_concurrent_streams = count;
        self
    }
}

// === impl Plain ===

impl Handshake for Plain {
    type Io = TcpStream;
    type Peer = ();
    type Error = std::convert::Infallible;

    fn handshake(
        &self,
        tcp: TcpStream,
        _remote: SocketAddr,
    ) -> impl Future<Output = Result<(TcpStream, Option<()>), Self::Error>> + Send {
        std::future::ready(Ok((tcp, None)))
    }
}

// === impl Listener ===

impl Listener for TcpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// hyper's own cap on the header fields of an HTTP/1 head (`DEFAULT_MAX_HEADERS` in its
/// `proto::h1::role`), which is also [`ServerConfig::max_headers`]' default.
const HYPER_MAX_HEADERS: usize = 100;

// === impl Server ===

impl Server {
    /// A server with `config`'s timers and limits.
    ///
    /// # Errors
    ///
    /// [`ServerError::Config`] if `config` does not validate.
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes);
        // hyper parses a head into an uninitialised array of its default cap, on the stack; a
        // cap set explicitly, even the same one, is a vector filled for every request head
        // (about 1,000 instructions per request). The test
        // `header_fields_over_the_cap_are_answered_431` holds hyper's default to this one.
        if config.max_headers != HYPER_MAX_HEADERS {
            http1.max_headers(config.max_headers);
        }
        // Validated to at most 1 MiB: fits.
        let list_size = u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(config.h2_keepalive_interval)
            .keep_alive_timeout(config.h2_keepalive_timeout)
            .max_header_list_size(list_size)
            .max_concurrent_streams(config.h2_max_concurrent_streams)
            // hyper's defaults, stated: the "rapid reset" bounds (CVE-2023-44487).
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024);
        Ok(Server {
            shared: Arc::new(Shared { config, builder }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// Accepts connections from `listener` until `shutdown` completes, then drains: no new
    /// connections, idle ones closed, requests in flight given [`ServerConfig::drain_timeout`]
    /// to finish, and whatever is left closed. Returns when the drain is over.
    ///
    /// Each connection goes through `handshake`, then HTTP/1.1 or HTTP/2 is served on it with a
    /// clone of `service`. Handshake and connection errors are logged, never returned.
    pub async fn serve<L, H, S, B, F>(&self, mut listener: L, handshake: H, service: S, shutdown: F)
    where
        L: Listener,
        H: Handshake,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        let (phase, _) = watch::channel(Phase::Serving);
        // Every connection's task holds a sender; the drain is over when all are dropped.
        let (alive, mut all_closed) = mpsc::channel::<()>(1);
        let slots = Arc::new(Semaphore::new(
            self.shared
                .config
                .max_connections
                .min(Semaphore::MAX_PERMITS),
        ));
        let mut backoff = ACCEPT_BACKOFF_MIN;
        tokio::pin!(shutdown);
        loop {
            let (tcp, remote) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        conn
                    }
                    Err(error) => {
                        // EMFILE, ENFILE, ENOBUFS or a connection reset before accept: none of
                        // them is the listener's end, so wait and accept again.
                        tracing::warn!(%error, ?backoff, "accept failed; retrying");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // At the cap: close it now (the client sees the close at once and can go
                // elsewhere) rather than let it wait in the accept queue.
                tracing::debug!(%remote, max = self.shared.config.max_connections, "connection cap reached; closing");
                drop(tcp);
                continue;
            };
            let conn = Conn {
                shared: self.shared.clone(),
                phase: phase.subscribe(),
                _alive: alive.clone(),
                _slot: slot,
            };
            tokio::spawn(conn.run(tcp, remote, handshake.clone(), service.clone()));
        }
        drop(listener);
        drop(alive);
        let _ = phase.send(Phase::Draining);
        let drain = self.shared.config.drain_timeout;
        if tokio::time::timeout(drain, all_closed.recv())
            .await
            .is_err()
        {
            tracing::info!(?drain, "drain time is over; closing the connections left");
            let _ = phase.send(Phase::Closing);
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One accepted connection's task.
struct Conn {
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    /// Dropped when the task ends: the server's drain waits for every one.
    _alive: mpsc::Sender<()>,
    /// Its place under the listener's connection cap, freed when the task ends.
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    async fn run<H, S, B>(self, tcp: TcpStream, remote: SocketAddr, handshake: H, service: S)
    where
        H: Handshake,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, %error, "cannot set TCP_NODELAY");
        }
        let config = &self.shared.config;
        // Before any HTTP: the first byte, then the handshake; both end when the drain begins.
        let mut phase = self.phase.clone();
        let opening = async {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(config.first_byte_timeout, tcp.peek(&mut byte)).await {
                Err(_) => {
                    tracing::debug!(%remote, timeout = ?config.first_byte_timeout, "no first byte; closing");
                    return None;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%remote, %error, "connection failed before its first byte");
                    return None;
                }
                Ok(Ok(0)) => return None,
                Ok(Ok(_)) => {}
            }
            match handshake.handshake(tcp, remote).await {
                Ok(accepted) => Some(accepted),
                Err(error) => {
                    tracing::info!(%remote, %error, "rejected inbound connection");
                    None
                }
            }
        };
        let (io, peer) = tokio::select! {
            opened = opening => match opened {
                Some(opened) => opened,
                None => return,
            },
            _ = phase.wait_for(|p| *p != Phase::Serving) => return,
        };

        let activity = Arc::new(Activity::default());
        let service = ConnService {
            ready: std::cell::RefCell::new(service.clone()),
            spare: service,
            peer,
            activity: activity.clone(),
        };
        let conn = self
            .shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let events = Events::new(activity, config.idle_timeout, self.phase.clone());
        let shutdown = |conn: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(conn);
        match Drive::new(conn, shutdown, events).await {
            Ended::Done(Ok(())) => {}
            Ended::Done(Err(error)) => {
                tracing::debug!(%remote, %error, "connection ended with an error");
            }
            Ended::Idle => {
                tracing::debug!(%remote, timeout = ?config.idle_timeout, "idle; closing");
            }
            Ended::Closed => tracing::debug!(%remote, "closed at the end of the drain"),
        }
    }
}

/// What a connection's life can bring besides its own I/O: its idle timeout, the drain, the
/// end of the drain. Polled only when one of them has woken the task (see [`Drive`]).
struct Events {
    stage: Pin<Box<dyn Future<Output = Event> + Send>>,
    phase: watch::Receiver<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Idle,
    Drain,
    Close,
}

impl Events {
    fn new(activity: Arc<Activity>, idle_timeout: Duration, phase: watch::Receiver<Phase>) -> Self {
        let mut serving = phase.clone();
        let stage = Box::pin(async move {
            tokio::select! {
                () = activity.idle(idle_timeout) => Event::Idle,
                changed = serving.wait_for(|p| *p != Phase::Serving) => match changed {
                    Ok(p) if *p == Phase::Draining => Event::Drain,
                    // Closing, or the server is gone.
                    _ => Event::Close,
                },
            }
        });
        Self { stage, phase }
    }

    /// After the drain began: only its end is left to wait for (hyper closes the connection
    /// itself once its requests in flight are answered).
    fn until_closing(&mut self) {
        let mut phase = self.phase.clone();
        self.stage = Box::pin(async move {
            let _ = phase.wait_for(|p| *p == Phase::Closing).await;
            Event::Close
        });
    }
}

/// How a connection's task ended.
enum Ended {
    Done(Result<(), BoxError>),
    Idle,
    Closed,
}

/// Drives one connection and its [`Events`].
///
/// The connection is polled on every wake-up of the task, which is nearly always its own I/O.
/// The events (two timers and a watch channel) are polled only when one of them woke the
/// task: a `select!` over all of them would poll each on every wake-up, about a thousand
/// instructions and a dozen atomic operations per request that serve nothing.
struct Drive<C> {
    conn: Pin<Box<C>>,
    /// Starts the connection's graceful shutdown (hyper's `graceful_shutdown`).
    shutdown: fn(Pin<&mut C>),
    events: Events,
    /// The events' waker: marks them woken, then wakes the task.
    woken: Option<(Arc<EventsWoken>, Waker)>,
}

/// Set when an event's waker fires; read and cleared by the task without a locked instruction.
struct EventsWoken {
    woken: std::sync::atomic::AtomicBool,
    task: Waker,
}

impl std::task::Wake for EventsWoken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<C> Drive<C> {
    fn new(conn: C, shutdown: fn(Pin<&mut C>), events: Events) -> Self {
        Self {
            conn: Box::pin(conn),
            shutdown,
            events,
            woken: None,
        }
    }
}

impl<C, E> Future for Drive<C>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = &mut *self;
        // The events' waker wakes this task; made anew if the task's waker changed.
        let fresh = match &this.woken {
            Some((state, _)) => !state.task.will_wake(cx.waker()),
            None => true,
        };
        if fresh {
            let state = Arc::new(EventsWoken {
                woken: std::sync::atomic::AtomicBool::new(true),
                task: cx.waker().clone(),
            });
            let waker = Waker::from(state.clone());
            this.woken = Some((state, waker));
        }
        if let Some((state, waker)) = &this.woken {
            // A plain load and store: a wake-up that lands between them is seen by the poll
            // that follows, and one after it sets the flag again.
            if state.woken.load(Ordering::Acquire) {
                state.woken.store(false, Ordering::Release);
                let mut events_cx = Context::from_waker(waker);
                match this.events.stage.as_mut().poll(&mut events_cx) {
                    Poll::Ready(Event::Idle) => return Poll::Ready(Ended::Idle),
                    Poll::Ready(Event::Close) => return Poll::Ready(Ended::Closed),
                    Poll::Ready(Event::Drain) => {
                        (this.shutdown)(this.conn.as_mut());
                        this.events.until_closing();
                        // Poll the new stage once so that its waker is registered.
                        state.woken.store(true, Ordering::Release);
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending => {}
                }
            }
        }
        this.conn
            .as_mut()
            .poll(cx)
            .map(|result| Ended::Done(result.map_err(Into::into)))
    }
}

/// Requests started and in flight on one connection, read by its idle timer.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    /// Completes once no request has been in flight or started for `timeout` (checked every
    /// quarter of it, so it fires between 1 and 1.25 timeouts after the last request).
    async fn idle(&self, timeout: Duration) {
        let tick = (timeout / 4).max(Duration::from_millis(1));
        let mut quiet = Duration::ZERO;
        let mut last = self.started.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(tick).await;
            let started = self.started.load(Ordering::Acquire);
            if started != last || self.in_flight.load(Ordering::Acquire) > 0 {
                last = started;
                quiet = Duration::ZERO;
                continue;
            }
            quiet += tick;
            if quiet >= timeout {
                return;
            }
        }
    }
}

/// Marks a request in flight from its call until its response body is dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The per-connection hyper service: inserts the handshake's peer, tracks activity, calls the
/// tower service.
///
/// hyper calls through `&self`, a tower service through `&mut self` after `poll_ready`. The usual
/// bridge (hyper-util's `TowerToHyperService`) clones the service for every request, which for
/// a stack of boxed services is an allocation per boxed layer. Here the connection keeps one
/// service and asks it for readiness without waiting: an always-ready stack (the common case) is
/// called in place; one that is not ready is replaced by a fresh clone (dropping whatever wait
/// it began, so it holds no permit or queue place while the connection idles) and the request
/// waits for readiness on a clone of its own, as with `oneshot`.
struct ConnService<S, P> {
    ready: std::cell::RefCell<S>,
    spare: S,
    peer: Option<P>,
    activity: Arc<Activity>,
}

impl<S, P, B> hyper::service::Service<Request<Incoming>> for ConnService<S, P>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
    P: Clone + Send + Sync + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future, tower::util::Oneshot<S, Request<Incoming>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        let guard = Some(InFlight::new(&self.activity));
        // `call` never re-enters itself, so the borrow is always free; if it were not, the
        // request would take the waiting path.
        if let Ok(mut service) = self.ready.try_borrow_mut() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(Ok(())) = service.poll_ready(&mut cx) {
                return TrackedFuture::Called {
                    inner: service.call(req),
                    guard,
                };
            }
            *service = self.spare.clone();
        }
        TrackedFuture::Waiting {
            inner: self.spare.clone().oneshot(req),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response future, counted in flight until its response body is dropped:
    /// called at once (`Called`), or waiting for the service to be ready first (`Waiting`).
    #[project = TrackedProj]
    enum TrackedFuture<F, W> {
        Called {
            #[pin]
            inner: F,
            guard: Option<InFlight>,
        },
        Waiting {
            #[pin]
            inner: W,
            guard: Option<InFlight>,
        },
    }
}

impl<F, W, B, E> Future for TrackedFuture<F, W>
where
    F: Future<Output = Result<Response<B>, E>>,
    W: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (rsp, guard) = match self.project() {
            TrackedProj::Called { inner, guard } => (std::task::ready!(inner.poll(cx))?, guard),
            TrackedProj::Waiting { inner, guard } => (std::task::ready!(inner.poll(cx))?, guard),
        };
        let guard = guard.take();
        Poll::Ready(Ok(rsp.map(|inner| TrackedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it is dropped.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
