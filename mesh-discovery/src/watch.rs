//! The handle every source hands out: the current endpoint set, its health, and its changes.
//!
//! Each source (static list, file, DNS) runs as a task that publishes *whole snapshots* into a
//! `tokio::sync::watch` channel. A [`Discovery`] handle is the receiving end:
//!
//! - [`Discovery::current`] returns the current [`EndpointSet`] as an `Arc` (one clone of a
//!   pointer; readers never block the source for longer than that);
//! - [`Discovery::changed`] waits for the next update;
//! - [`Discovery::last_error`] and [`Discovery::stats`] say whether the source is healthy, for a
//!   metrics layer or the admin page;
//! - [`Discovery::changes`] / [`Discovery::into_changes`] turn the snapshots into a [`Changes`]
//!   stream of `tower::discover::Change<SocketAddr, Endpoint>`, which is what a balancer consumes.
//!
//! Why snapshots and not a stream of edits: a late or slow reader only ever needs the newest
//! state, a watch channel gives exactly that without buffering, and any number of readers
//! (balancer, metrics, admin) can share one source. The diff is computed per reader.
//!
//! The handle is `Clone`. When every handle (and every `Changes` stream) is dropped, the source's
//! task notices and stops.
//!
//! ```
//! use futures_util::StreamExt;
//! use mesh_discovery::{Discovery, Endpoint};
//! use tower::discover::Change;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ep = Endpoint::new("127.0.0.1:8080".parse().unwrap());
//! let discovery = Discovery::fixed([ep]).unwrap();
//! assert_eq!(discovery.current().len(), 1);
//!
//! let mut changes = discovery.changes();
//! match changes.next().await {
//!     Some(Ok(Change::Insert(addr, _))) => assert_eq!(addr.port(), 8080),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # }
//! ```

use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_core::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use crate::{DiscoveryError, Endpoint, EndpointSet};

/// Counters a metrics layer reads from [`Discovery::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Times a *different* endpoint set was published (the first set included).
    pub updates: u64,
    /// Successful reads of the source (a file parsed, a name resolved), changed or not.
    pub refreshes: u64,
    /// Failed reads of the source, each also logged with `tracing::warn!`.
    pub errors: u64,
    /// Failed reads since the last successful one; 0 when the source is healthy.
    pub consecutive_errors: u64,
}

/// The health of one source at one moment, from [`Discovery::state`]: what a metrics layer or an
/// admin page shows next to the endpoint set.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SourceState {
    /// Endpoints in the current set.
    pub endpoints: usize,
    /// The error the source is in now (`None` when healthy). A source that failed keeps its last
    /// good set; a DNS name that does not exist keeps [`DiscoveryError::NoRecords`] here.
    pub last_error: Option<DiscoveryError>,
    /// When the source last read its input successfully (a file parsed, a name resolved), changed
    /// or not; `None` before the first success.
    pub last_success: Option<tokio::time::Instant>,
    /// The source's counters.
    pub stats: Stats,
}

impl SourceState {
    /// Whether the source is working: it has read its input and is not in an error now.
    pub fn is_healthy(&self) -> bool {
        self.last_error.is_none() && self.last_success.is_some()
    }
}

/// What the watch channel carries.
#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    endpoints: Arc<EndpointSet>,
    last_error: Option<DiscoveryError>,
    last_success: Option<tokio::time::Instant>,
    stats: Stats,
}

/// A handle on one discovery source. See the [module docs](self).
#[derive(Clone)]
pub struct Discovery {
    rx: watch::Receiver<State>,
    source: Arc<str>,
    /// Keeps the channel open for sources without a task (a fixed list).
    _keep: Option<Arc<watch::Sender<State>>>,
}

/// The sending side, owned by a source's task.
#[derive(Debug)]
pub(crate) struct Publisher {
    tx: watch::Sender<State>,
    source: Arc<str>,
}

/// A stream of endpoint changes, made by diffing consecutive snapshots of one source.
///
/// The first items insert the whole current set; after that, each published snapshot yields the
/// inserts (new or changed endpoints) and removes that lead to it. Errors never appear in the
/// stream (discovery is advisory; see [`Discovery::last_error`]), so the error type is
/// [`Infallible`] and the stream is a `tower::discover::Discover` as it is. It ends only if the
/// source's task stops.
pub struct Changes {
    stream: WatchStream<State>,
    last: Arc<EndpointSet>,
    pending: VecDeque<Change<SocketAddr, Endpoint>>,
    source: Arc<str>,
    /// Keeps a fixed source's channel open (and so the stream pending, not ended).
    _keep: Option<Arc<watch::Sender<State>>>,
}

// === impl Discovery ===

impl Discovery {
    /// Creates the channel for a source named `source` (used in logs and errors).
    pub(crate) fn channel(source: impl Into<Arc<str>>) -> (Publisher, Discovery) {
        let source = source.into();
        let (tx, rx) = watch::channel(State::default());
        let publisher = Publisher {
            tx,
            source: source.clone(),
        };
        let discovery = Discovery {
            rx,
            source,
            _keep: None,
        };
        (publisher, discovery)
    }

    /// A handle whose channel stays open without a task (fixed lists).
    pub(crate) fn keep_open(mut self, publisher: Publisher) -> Self {
        self._keep = Some(Arc::new(publisher.tx));
        self
    }

    /// Spawns `task` on the current Tokio runtime, or fails with [`DiscoveryError::NoRuntime`].
    pub(crate) fn spawn<F>(source: &str, task: F) -> Result<(), DiscoveryError>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime {
                source_name: source.to_owned(),
            })?;
        drop(handle.spawn(task));
        Ok(())
    }

    /// The current endpoint set (empty until the source's first successful read).
    pub fn current(&self) -> Arc<EndpointSet> {
        self.rx.borrow().endpoints.clone()
    }

    /// Waits until the endpoint set changes, the source reports an error, or a success clears
    /// the error; marks the new state as seen. A refresh that changes nothing does not wake it.
    /// Fails with [`DiscoveryError::Stopped`] once the source's task has stopped and every
    /// update has been seen.
    pub async fn changed(&mut self) -> Result<(), DiscoveryError> {
        self.rx
            .changed()
            .await
            .map_err(|_| DiscoveryError::Stopped {
                source_name: self.source.to_string(),
            })
    }

    /// The most recent error, if the source is failing now. Cleared by the next successful read.
    pub fn last_error(&self) -> Option<DiscoveryError> {
        self.rx.borrow().last_error.clone()
    }

    /// The source's counters.
    pub fn stats(&self) -> Stats {
        self.rx.borrow().stats
    }

    /// The source's health: set size, current error, time of the last successful read, counters.
    pub fn state(&self) -> SourceState {
        let state = self.rx.borrow();
        SourceState {
            endpoints: state.endpoints.len(),
            last_error: state.last_error.clone(),
            last_success: state.last_success,
            stats: state.stats,
        }
    }

    /// A short name of the source for logs and metrics: `static`, `file:PATH`, `dns:NAME`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A [`Changes`] stream starting from the current set (its first items insert it).
    pub fn changes(&self) -> Changes {
        self.clone().into_changes()
    }

    /// Turns this handle into a [`Changes`] stream starting from the current set.
    pub fn into_changes(self) -> Changes {
        Changes {
            stream: WatchStream::new(self.rx.clone()),
            last: Arc::new(EndpointSet::new()),
            pending: VecDeque::new(),
            source: self.source.clone(),
            _keep: self._keep,
        }
    }
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.rx.borrow();
        f.debug_struct("Discovery")
            .field("source", &self.source)
            .field("endpoints", &state.endpoints.len())
            .field("stats", &state.stats)
            .field("last_error", &state.last_error)
            .finish()
    }
}

// === impl Publisher ===

impl Publisher {
    /// The source's name.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Records a successful read that produced `set`; publishes it if it differs.
    pub(crate) fn publish(&self, set: EndpointSet) {
        self.publish_inner(set, None);
    }

    /// Records a read that produced `set` but leaves the source in `error` (a DNS name that does
    /// not exist: the set is empty, and that must not look healthy).
    pub(crate) fn publish_with_error(&self, set: EndpointSet, error: DiscoveryError) {
        self.publish_inner(set, Some(error));
    }

    fn publish_inner(&self, set: EndpointSet, error: Option<DiscoveryError>) {
        self.tx.send_if_modified(|state| {
            let error_changed = match (&state.last_error, &error) {
                (None, None) => false,
                (Some(old), Some(new)) => old.to_string() != new.to_string(),
                _ => true,
            };
            if let (true, Some(error)) = (error_changed, &error) {
                tracing::warn!(source = %self.source, %error, "discovery source has no endpoints");
            }
            state.last_error = error;
            state.last_success = Some(tokio::time::Instant::now());
            state.stats.refreshes += 1;
            state.stats.consecutive_errors = 0;
            if *state.endpoints == set {
                return error_changed;
            }
            tracing::debug!(source = %self.source, endpoints = set.len(), "endpoint set updated");
            state.endpoints = Arc::new(set);
            state.stats.updates += 1;
            true
        });
    }

    /// Records a failed read; the endpoint set is kept.
    pub(crate) fn report(&self, error: DiscoveryError) {
        tracing::warn!(source = %self.source, %error, "discovery error; keeping the last good endpoint set");
        self.tx.send_modify(|state| {
            state.stats.errors += 1;
            state.stats.consecutive_errors += 1;
            state.last_error = Some(error);
        });
    }

    /// Resolves when every handle and stream has been dropped.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

// === impl Changes ===

impl Stream for Changes {
    type Item = Result<Change<SocketAddr, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(state)) => {
                    let changes = self.last.diff(&state.endpoints);
                    self.pending.extend(changes);
                    self.last = state.endpoints;
                }
            }
        }
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes")
            .field("source", &self.source)
            .field("endpoints", &self.last.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}
