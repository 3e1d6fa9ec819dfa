//! Optional active health checks: a task per endpoint that connects (TCP) or sends `GET path`
//! (HTTP/1.1, plaintext) every interval, ejects the endpoint after `unhealthy_threshold` failed
//! checks in a row and restores it after `healthy_threshold` passed checks in a row (HAProxy's
//! `fall`/`rise`, Envoy's `unhealthy_threshold`/`healthy_threshold`).
//!
//! Off by default: the circuit breaker's passive checks (real requests' outcomes, and its probes)
//! find failed and restarted endpoints without extra traffic. Active checks help where traffic is
//! sparse (an idle endpoint is never probed by requests) or where an operator wants a health
//! endpoint to drain a backend. They drive the same [`Health`] handle as the breaker; a check
//! restores only an ejection it made itself. For mTLS endpoints use [`CheckKind::Tcp`] (the HTTP
//! check speaks plaintext).
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_balance::Health;
//! use mesh_core::breaker::{CheckKind, HealthCheck, HealthCheckConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config = HealthCheckConfig {
//!     kind: CheckKind::Http { path: "/healthz".into() },
//!     interval: Duration::from_secs(1),
//!     ..HealthCheckConfig::default()
//! };
//! config.validate().expect("valid");
//! let health = Health::new();
//! let _check = HealthCheck::spawn("127.0.0.1:8080".parse().unwrap(), config, health.clone());
//! # }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use mesh_balance::{Health, HealthState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What one check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect: the endpoint listens.
    Tcp,
    /// `GET path` over HTTP/1.1 in plaintext: a 2xx or 3xx status passes.
    Http {
        /// The request path, e.g. `/healthz`.
        path: String,
    },
}

/// Active health check settings. `Default`: TCP every 2 s, 1 s timeout, 3 failures to eject, 2
/// passes to restore (HAProxy's `inter 2s fall 3 rise 2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What a check does.
    pub kind: CheckKind,
    /// Time between checks.
    pub interval: Duration,
    /// A check that takes longer fails.
    pub timeout: Duration,
    /// Failed checks in a row that eject the endpoint.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that restore an endpoint the checks ejected.
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// An invalid [`HealthCheckConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckConfigError {
    /// Interval and timeout must be positive.
    #[error(
        "health check interval ({interval:?}) and timeout ({timeout:?}) must be greater than zero"
    )]
    Zero {
        /// The interval.
        interval: Duration,
        /// The timeout.
        timeout: Duration,
    },
    /// Thresholds must be at least 1.
    #[error(
        "health check thresholds must be at least 1, got unhealthy {unhealthy}, healthy {healthy}"
    )]
    Threshold {
        /// `unhealthy_threshold`.
        unhealthy: u32,
        /// `healthy_threshold`.
        healthy: u32,
    },
    /// The HTTP path must start with `/` and hold no whitespace or control characters.
    #[error(
        "health check path {0:?} must start with '/' and contain no spaces or control characters"
    )]
    Path(String),
}

// === impl HealthCheckConfig ===

impl HealthCheckConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), HealthCheckConfigError> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(HealthCheckConfigError::Zero {
                interval: self.interval,
                timeout: self.timeout,
            });
        }
        if self.unhealthy_threshold == 0 || self.healthy_threshold == 0 {
            return Err(HealthCheckConfigError::Threshold {
                unhealthy: self.unhealthy_threshold,
                healthy: self.healthy_threshold,
            });
        }
        if let CheckKind::Http { path } = &self.kind {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(HealthCheckConfigError::Path(path.clone()));
            }
        }
        Ok(())
    }
}

/// A running health check; dropping it stops the checks.
#[derive(Debug)]
pub struct HealthCheck {
    task: JoinHandle<()>,
}

// === impl HealthCheck ===

impl HealthCheck {
    /// Starts checking `addr` every `config.interval`, driving `health`. Must be called within a
    /// Tokio runtime.
    pub fn spawn(addr: SocketAddr, config: HealthCheckConfig, health: Health) -> Self {
        Self {
            task: tokio::spawn(run(addr, config, health)),
        }
    }
}

impl Drop for HealthCheck {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(addr: SocketAddr, config: HealthCheckConfig, health: Health) {
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut ejected = false;
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let ok = matches!(
            tokio::time::timeout(config.timeout, check(addr, &config.kind)).await,
            Ok(true)
        );
        if ok {
            passes += 1;
            failures = 0;
        } else {
            failures += 1;
            passes = 0;
        }
        if !ejected && failures >= config.unhealthy_threshold {
            tracing::debug!(%addr, failures, "health check ejects the endpoint");
            health.eject();
            ejected = true;
        } else if ejected && passes >= config.healthy_threshold {
            tracing::debug!(%addr, passes, "health check restores the endpoint");
            if health.state() != HealthState::Available {
                health.restore();
            }
            ejected = false;
        }
    }
}

async fn check(addr: SocketAddr, kind: &CheckKind) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let path = match kind {
        CheckKind::Tcp => return true,
        CheckKind::Http { path } => path,
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshwork-health-check\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // "HTTP/1.1 200 ..." — the status is bytes 9..12 of the first line.
    let mut head = [0u8; 12];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => read += n,
        }
    }
    head.starts_with(b"HTTP/1.") && matches!(head[9], b'2' | b'3')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    fn fast(kind: CheckKind) -> HealthCheckConfig {
        HealthCheckConfig {
            kind,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }

    async fn wait_for(health: &Health, state: HealthState) -> bool {
        for _ in 0..250 {
            if health.state() == state {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn tcp_checks_eject_a_closed_port_and_restore_it_when_it_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::new();
        let _check = HealthCheck::spawn(addr, fast(CheckKind::Tcp), health.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(health.state(), HealthState::Available);
        drop(listener);
        assert!(wait_for(&health, HealthState::Ejected).await, "ejected");
        let _listener = TcpListener::bind(addr).await.unwrap();
        assert!(wait_for(&health, HealthState::Available).await, "restored");
    }

    #[tokio::test]
    async fn http_checks_eject_an_endpoint_answering_503() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let health = Health::new();
        let config = fast(CheckKind::Http {
            path: "/healthz".into(),
        });
        let _check = HealthCheck::spawn(addr, config, health.clone());
        assert!(wait_for(&health, HealthState::Ejected).await, "ejected");
    }

    #[test]
    fn config_is_validated() {
        assert!(HealthCheckConfig::default().validate().is_ok());
        let bad_path = HealthCheckConfig {
            kind: CheckKind::Http {
                path: "healthz x".into(),
            },
            ..HealthCheckConfig::default()
        };
        assert!(bad_path.validate().is_err());
        let zero = HealthCheckConfig {
            unhealthy_threshold: 0,
            ..HealthCheckConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
