//! Errors of the balancer itself, as opposed to errors of the endpoints it forwards to.
//!
//! The balancer's [`tower::Service`] error type is [`BoxError`] (as tower's own balancer), so that
//! endpoint errors pass through unchanged; the balancer's own failures are [`Error`] values inside it,
//! found with `downcast_ref::<mesh_balance::Error>()`. A proxy maps both of them to `503`.
//!
//! ```
//! use std::time::Duration;
//! use mesh_balance::{BoxError, Error};
//!
//! let err: BoxError = Error::NoEndpoints { waited: Duration::from_secs(3) }.into();
//! assert!(matches!(err.downcast_ref::<Error>(), Some(Error::NoEndpoints { .. })));
//! assert_eq!(err.to_string(), "no endpoints: the endpoint set stayed empty for 3s");
//! ```

use std::time::Duration;

/// The error type of the balancer service: endpoint errors pass through boxed, balancer errors are
/// boxed [`Error`]s.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of the balancer itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint set was empty and stayed empty for the whole failfast timeout.
    #[error("no endpoints: the endpoint set stayed empty for {waited:?}")]
    NoEndpoints {
        /// How long the request waited.
        waited: Duration,
    },
    /// Every endpoint is ejected or drained and panic mode is disabled
    /// ([`crate::Config::panic_threshold`] = 0), so there is nothing to send to.
    #[error("no available endpoints: all {endpoints} endpoints are ejected or drained and panic mode is off")]
    NoneAvailable {
        /// The size of the endpoint set.
        endpoints: usize,
    },
    /// The endpoint set was empty and `capacity` requests were already waiting for it to fill.
    #[error("no endpoints, and the wait queue is full ({capacity} requests already waiting)")]
    QueueFull {
        /// The configured queue capacity.
        capacity: usize,
    },
}

/// A rejected [`crate::Config`] value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `field` holds `value`, which breaks `reason`.
    #[error("invalid balancer config: {field} = {value}: {reason}")]
    Invalid {
        /// The [`crate::Config`] field.
        field: &'static str,
        /// Its value, as written by `Debug`/`Display`.
        value: String,
        /// What the value must satisfy.
        reason: &'static str,
    },
}

/// Why a balancer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// [`crate::Builder::spawn`] was called outside a tokio runtime; use [`crate::Builder::build`] and
    /// drive the returned [`crate::Driver`] yourself, or call it inside a runtime.
    #[error("the balancer's discovery task needs a tokio runtime: {0}")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
}
