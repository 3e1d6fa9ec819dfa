//! Helpers shared by the layers' unit tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Wraps a service and counts its clones: for layers that promise not to clone the service below
/// them on a request's common path.
pub(crate) struct CountClones<S> {
    inner: S,
    clones: Arc<AtomicUsize>,
}

impl<S> CountClones<S> {
    /// `inner`, counting its clones in `clones`.
    pub(crate) fn new(inner: S, clones: Arc<AtomicUsize>) -> Self {
        Self { inner, clones }
    }
}

impl<S: Clone> Clone for CountClones<S> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            inner: self.inner.clone(),
            clones: self.clones.clone(),
        }
    }
}

impl<S: tower::Service<R>, R> tower::Service<R> for CountClones<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}
