//! Per-endpoint health shared between the balancer and whatever decides ejection.
//!
//! The balancer never decides by itself that an endpoint is broken: a circuit breaker (failure accrual,
//! in `mesh-core`) watches classified outcomes off the request path and flips this handle. The
//! balancer only *reads* it, with one atomic load per candidate, so ejection costs the request path
//! nothing. This is the split Linkerd 2 uses (a breaker task opening and shutting a gate in front of
//! the endpoint), with one change: the balancer sees the state, so it can leave ejected endpoints out
//! of its choice rather than pick them and wait, and can apply panic mode (Envoy's 50 % threshold)
//! when too few endpoints are available.
//!
//! States:
//! - [`HealthState::Available`]: a candidate.
//! - [`HealthState::Ejected`]: not a candidate (except in panic mode).
//! - [`HealthState::Probing`]: the ejection's backoff has passed; exactly one real request may go to
//!   it ([`Health::try_acquire_probe`]); its outcome makes the breaker call [`Health::restore`] or
//!   [`Health::eject`] again.
//!
//! ```
//! use mesh_balance::{Health, HealthState};
//!
//! let health = Health::new();
//! assert_eq!(health.state(), HealthState::Available);
//! health.eject();
//! assert!(!health.is_available());
//! health.probe();
//! assert!(health.try_acquire_probe()); // one request may probe
//! assert!(!health.try_acquire_probe()); // and only one
//! health.cancel_probe(); // the probe request was cancelled: another may probe
//! assert!(health.try_acquire_probe());
//! health.restore();
//! assert!(health.is_available());
//! ```

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

const AVAILABLE: u8 = 0;
const EJECTED: u8 = 1;
const PROBING: u8 = 2;
const PROBE_IN_FLIGHT: u8 = 3;

/// What the balancer may do with an endpoint right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// A candidate for every request.
    Available,
    /// Left out of the choice (unless the balancer is in panic mode).
    Ejected,
    /// One probe request may be sent; until it is, or while it is in flight, no other request goes
    /// to the endpoint (outside panic mode).
    Probing,
}

/// A cheaply clonable handle on one endpoint's health: the breaker writes, the balancer reads.
///
/// Clones share the same state. All operations are single atomic operations.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: AtomicU8,
    /// Failures learned after the balancer recorded the response as answered (a gRPC status in
    /// the trailers), not yet charged to the endpoint's cost.
    late_failures: AtomicU32,
}

// === impl Health ===

impl Health {
    /// A new handle, in the [`HealthState::Available`] state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state. A probe that has been handed out still reads as [`HealthState::Probing`].
    pub fn state(&self) -> HealthState {
        match self.0.state.load(Ordering::Acquire) {
            AVAILABLE => HealthState::Available,
            EJECTED => HealthState::Ejected,
            _ => HealthState::Probing,
        }
    }

    /// Whether the endpoint is a normal candidate.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == AVAILABLE
    }

    /// Take the endpoint out of the choice.
    pub fn eject(&self) {
        self.0.state.store(EJECTED, Ordering::Release);
    }

    /// Let exactly one request probe the endpoint.
    pub fn probe(&self) {
        self.0.state.store(PROBING, Ordering::Release);
    }

    /// Put the endpoint back into the choice.
    pub fn restore(&self) {
        self.0.state.store(AVAILABLE, Ordering::Release);
    }

    /// Claim the single probe request. Returns `true` for exactly one caller after each
    /// [`Health::probe`]; the balancer sends that request to this endpoint.
    #[inline]
    pub fn try_acquire_probe(&self) -> bool {
        self.0
            .state
            .compare_exchange(
                PROBING,
                PROBE_IN_FLIGHT,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Reports a failure that became known only after the response head (a gRPC error status in
    /// the trailers): the balancer charges it to the endpoint's cost at its next choice involving
    /// the endpoint, as if the response had failed.
    pub fn report_late_failure(&self) {
        self.0.late_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the failures reported by [`Health::report_late_failure`] since the last call.
    #[inline]
    pub fn take_late_failures(&self) -> u32 {
        if self.0.late_failures.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.0.late_failures.swap(0, Ordering::Relaxed)
    }

    /// Hand an unused probe back: if a probe was claimed with [`Health::try_acquire_probe`] and its
    /// request was dropped before any outcome (cancelled), the endpoint returns to
    /// [`HealthState::Probing`] so that another request may probe. Does nothing in any other state (the
    /// breaker has already decided). The balancer calls this when a probe request is cancelled.
    pub fn cancel_probe(&self) {
        let _ = self.0.state.compare_exchange(
            PROBE_IN_FLIGHT,
            PROBING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}
