//! Balancer configuration: every knob, its production default, and where the default comes from.
//!
//! | field | default | origin |
//! |---|---|---|
//! | [`Config::default_rtt`] | 30 ms | Linkerd 2's peak-EWMA default RTT (also tower's examples) |
//! | [`Config::decay`] | 10 s | Linkerd 2's peak-EWMA decay |
//! | [`Config::failure_penalty`] | 5.0 | ours: a failure counts as 5× the current estimate (see [`crate::ewma`]) |
//! | [`Config::max_failure_rtt`] | 10 s | ours: caps the penalty so a recovered endpoint earns its way back |
//! | [`Config::panic_threshold`] | 0.5 | Envoy's 50 % panic threshold |
//! | [`Config::queue_capacity`] | 1024 | Envoy's default pending-request cap |
//! | [`Config::failfast_timeout`] | 3 s | Linkerd's fail-fast: waiting longer than this for endpoints is a failure |
//! | [`Config::latency_half_life`] | 10 s | ours: matches the EWMA decay, so "recent" means the same everywhere |
//! | [`Config::choices`] | 5 | ours, measured (`benches/lb_quality.rs`: 2, 3, 4, 5 tried): candidates per request once endpoints report load |
//!
//! `Default` gives the production values; [`Config::validate`] rejects values that would make the
//! arithmetic meaningless (a zero decay, a penalty below 1, a threshold outside `[0, 1]`). The balancer
//! constructors validate for you.
//!
//! ```
//! use std::time::Duration;
//! use mesh_balance::Config;
//!
//! let config = Config {
//!     failfast_timeout: Duration::from_secs(1),
//!     ..Config::default()
//! };
//! config.validate().expect("valid");
//!
//! let bad = Config { panic_threshold: 1.5, ..Config::default() };
//! assert!(bad.validate().is_err());
//! ```

use std::time::Duration;

use crate::error::ConfigError;

/// How the balancer weighs, ejects and waits. See the [module docs](self) for the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The latency estimate a new endpoint starts with, before any response has been seen.
    pub default_rtt: Duration,
    /// The peak-EWMA time constant: a sample below the estimate moves it by `1 - exp(-Δt/decay)`, and
    /// an idle endpoint's estimate fades by `exp(-idle/decay)` when read.
    pub decay: Duration,
    /// A failed response is recorded as if it took `failure_penalty ×` the endpoint's current estimate
    /// (at least [`Config::default_rtt`] × `failure_penalty`), or its real time if longer. Must be ≥ 1.
    pub failure_penalty: f64,
    /// Upper bound of the penalty latency recorded for one failure.
    pub max_failure_rtt: Duration,
    /// When fewer than this fraction of the non-drained endpoints are available, balance over all of
    /// them (panic mode). `0.0` disables panic mode; `1.0` panics as soon as one endpoint is ejected.
    pub panic_threshold: f64,
    /// How many requests may wait for an empty endpoint set to fill; more fail at once with
    /// [`crate::Error::QueueFull`]. `0` means never wait.
    pub queue_capacity: usize,
    /// How long a request waits for an empty endpoint set to fill before it fails with
    /// [`crate::Error::NoEndpoints`].
    pub failfast_timeout: Duration,
    /// Half-life of the set-wide latency histogram behind [`crate::Balance::latency`]: its counts are
    /// halved once per this interval, so the percentiles follow recent traffic.
    pub latency_half_life: Duration,
    /// Seed of the random candidate choice. `None` (the default) seeds from the OS-keyed hasher; a
    /// fixed seed makes the choice sequence reproducible (simulations, tests).
    pub seed: Option<u64>,
    /// How many random candidates a request compares when endpoints report their load (2 to 8).
    /// Endpoints that have never reported are compared two at a time, as before (power of two
    /// choices over peak-EWMA): with a client-side estimate more candidates only herd onto the
    /// one that looks best, while with fresh server reports more candidates avoid the case where
    /// all are busy or slow (five matched the oracle of `benches/lb_quality.rs` with
    /// heterogeneous endpoints, where two stayed at 2.2× its p99 and three at 1.4×).
    pub choices: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: 5.0,
            max_failure_rtt: Duration::from_secs(10),
            panic_threshold: 0.5,
            queue_capacity: 1024,
            failfast_timeout: Duration::from_secs(3),
            latency_half_life: Duration::from_secs(10),
            seed: None,
            choices: 5,
        }
    }
}

// === impl Config ===

impl Config {
    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, value: String, reason: &'static str) -> ConfigError {
            ConfigError::Invalid {
                field,
                value,
                reason,
            }
        }
        if self.default_rtt.is_zero() {
            return Err(invalid(
                "default_rtt",
                format!("{:?}", self.default_rtt),
                "must be greater than zero",
            ));
        }
        if self.decay.is_zero() {
            return Err(invalid(
                "decay",
                format!("{:?}", self.decay),
                "must be greater than zero",
            ));
        }
        if !self.failure_penalty.is_finite() || self.failure_penalty < 1.0 {
            return Err(invalid(
                "failure_penalty",
                self.failure_penalty.to_string(),
                "must be a finite number >= 1",
            ));
        }
        if self.max_failure_rtt < self.default_rtt {
            return Err(invalid(
                "max_failure_rtt",
                format!("{:?}", self.max_failure_rtt),
                "must be at least default_rtt",
            ));
        }
        if !(0.0..=1.0).contains(&self.panic_threshold) {
            return Err(invalid(
                "panic_threshold",
                self.panic_threshold.to_string(),
                "must be within [0, 1]",
            ));
        }
        if !(2..=crate::p2c::MAX_CHOICES).contains(&self.choices) {
            return Err(invalid(
                "choices",
                self.choices.to_string(),
                "must be within [2, 8]",
            ));
        }
        if self.latency_half_life.is_zero() {
            return Err(invalid(
                "latency_half_life",
                format!("{:?}", self.latency_half_life),
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_each_bad_value_by_name() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    default_rtt: Duration::ZERO,
                    ..Config::default()
                },
                "default_rtt",
            ),
            (
                Config {
                    decay: Duration::ZERO,
                    ..Config::default()
                },
                "decay",
            ),
            (
                Config {
                    failure_penalty: 0.5,
                    ..Config::default()
                },
                "failure_penalty",
            ),
            (
                Config {
                    failure_penalty: f64::NAN,
                    ..Config::default()
                },
                "failure_penalty",
            ),
            (
                Config {
                    max_failure_rtt: Duration::from_millis(1),
                    ..Config::default()
                },
                "max_failure_rtt",
            ),
            (
                Config {
                    panic_threshold: -0.1,
                    ..Config::default()
                },
                "panic_threshold",
            ),
            (
                Config {
                    latency_half_life: Duration::ZERO,
                    ..Config::default()
                },
                "latency_half_life",
            ),
            (
                Config {
                    choices: 1,
                    ..Config::default()
                },
                "choices",
            ),
            (
                Config {
                    choices: 9,
                    ..Config::default()
                },
                "choices",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected an error, got {other:?}"),
            }
        }
    }
}
