//! Shared test scaffolding: tracing, bounded waiting, and a real DNS server on 127.0.0.1.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod dns_server;
pub mod dnsmasq;

use std::{future::Future, time::Duration};

use mesh_discovery::Discovery;

/// How long any condition may take on a loaded 2-core machine before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mesh_discovery=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `condition` on the handle until it holds, failing the test after [`PATIENCE`].
pub async fn wait_until(
    discovery: &Discovery,
    what: &str,
    mut condition: impl FnMut(&Discovery) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition(discovery) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}; state: {discovery:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls an async condition until it holds, failing after [`PATIENCE`].
pub async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ports of the current endpoint set, in order.
pub fn ports(discovery: &Discovery) -> Vec<u16> {
    discovery.current().addrs().map(|a| a.port()).collect()
}

/// The IPs of the current endpoint set, as strings, in order.
pub fn ips(discovery: &Discovery) -> Vec<String> {
    discovery
        .current()
        .addrs()
        .map(|a| a.ip().to_string())
        .collect()
}
