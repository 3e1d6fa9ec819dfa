//! Decorrelated-jitter backoff between retries.
//!
//! Each wait is drawn uniformly from `[base, 3 × previous wait]`, capped (the "decorrelated jitter"
//! of the AWS architecture blog's *Exponential Backoff and Jitter*): the waits grow roughly
//! exponentially while retries from many clients spread out instead of arriving in waves. Base 25 ms
//! (docs/design.md, after Linkerd/Finagle's jittered backoffs); cap 1 s by default (our choice: a retry
//! later than that rarely fits in a request's deadline).

use rand::Rng;
use std::time::Duration;

/// Configuration of the backoff. `Default`: base 25 ms, cap 1 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The shortest wait, and the first retry's lower bound.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            cap: Duration::from_secs(1),
        }
    }
}

/// An invalid [`BackoffConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("backoff cap {cap:?} must be at least the base {base:?}, and the base more than zero")]
pub struct BackoffConfigError {
    /// The base.
    pub base: Duration,
    /// The cap.
    pub cap: Duration,
}

// === impl BackoffConfig ===

impl BackoffConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), BackoffConfigError> {
        if self.base.is_zero() || self.cap < self.base {
            return Err(BackoffConfigError {
                base: self.base,
                cap: self.cap,
            });
        }
        Ok(())
    }
}

/// The backoff state of one request's retries.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    prev: Duration,
}

// === impl Backoff ===

impl Backoff {
    /// A fresh backoff.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            prev: config.base,
        }
    }

    /// The next wait: uniform in `[base, 3 × previous]`, at most the cap.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.config.base;
        let hi = self.prev.saturating_mul(3).max(base);
        let wait = if hi > base {
            rand::rng().random_range(base..=hi)
        } else {
            base
        };
        self.prev = wait.min(self.config.cap);
        self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_between_base_and_cap_and_grow() {
        let config = BackoffConfig::default();
        let mut b = Backoff::new(config);
        let mut prev = config.base;
        let mut max_seen = Duration::ZERO;
        for _ in 0..50 {
            let w = b.next_wait();
            assert!(w >= config.base && w <= config.cap, "{w:?}");
            assert!(w <= prev * 3, "{w:?} after {prev:?}");
            prev = w;
            max_seen = max_seen.max(w);
        }
        // 50 draws each up to 3× the last: reaching 100 ms is all but certain (each step has
        // probability ≥ 1/2 of growing by ≥ 1.5×; failing 50 times is ~1e-15).
        assert!(max_seen >= Duration::from_millis(100), "{max_seen:?}");
    }

    #[test]
    fn config_is_validated() {
        assert!(BackoffConfig::default().validate().is_ok());
        let bad = BackoffConfig {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(1),
        };
        assert!(bad.validate().is_err());
    }
}
