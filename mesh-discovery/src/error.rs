//! The one error type of this crate.
//!
//! Every message says what went wrong and where: the file and line of a bad edit, the DNS name
//! that failed to resolve, the configuration value that was rejected. Errors are `Clone` (I/O
//! errors are held in an [`Arc`]) because a [`Discovery`](crate::Discovery) handle keeps the last
//! one for a metrics layer or an admin page to read at any time.

use std::{path::PathBuf, sync::Arc};

/// What can go wrong while discovering endpoints.
///
/// Discovery is advisory: none of these errors empties a working endpoint set. A source that fails
/// keeps its last good set, logs the error with `tracing::warn!` and makes it visible through
/// [`Discovery::last_error`](crate::Discovery::last_error) and
/// [`Discovery::stats`](crate::Discovery::stats).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// An endpoint file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read endpoint file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// An endpoint file is not valid YAML / TOML / JSON, or an entry in it is invalid.
    ///
    /// `line` and `column` are 1-based; 0 means the parser gave no position.
    #[error("{}:{line}:{column}: invalid {format} endpoint list: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// `YAML`, `TOML` or `JSON`.
        format: &'static str,
        /// 1-based line of the error (0 if unknown).
        line: usize,
        /// 1-based column of the error (0 if unknown).
        column: usize,
        /// The parser's message.
        message: String,
    },

    /// A DNS query failed: timeout, unreachable server, SERVFAIL/REFUSED, an undecodable answer,
    /// or an answer without records of the requested type.
    #[error("DNS resolution of {name} ({record_type}) failed: {reason}")]
    Resolve {
        /// The name that was queried.
        name: String,
        /// `A`, `AAAA` or `SRV`.
        record_type: &'static str,
        /// What went wrong.
        reason: String,
    },

    /// The DNS server answered authoritatively that a name has no records (NXDOMAIN or an empty
    /// NOERROR answer). The first such answer keeps the set; the set is emptied only when the
    /// next resolution says the same.
    #[error("DNS name {name} has no records ({reason}); keeping the endpoint set until a second resolution confirms")]
    EmptyAnswer {
        /// The name that was queried.
        name: String,
        /// The server's answer, e.g. `NXDomain`.
        reason: String,
    },

    /// The DNS server answered authoritatively, in consecutive resolutions, that a name has no
    /// records (NXDOMAIN, or NoData with the zone's SOA). The endpoint set is empty, and this
    /// error stays visible as long as the answer does, so a misspelled name does not look like a
    /// healthy service without endpoints.
    #[error("DNS name {name} has no records ({reason}); the endpoint set is empty")]
    NoRecords {
        /// The name that was queried.
        name: String,
        /// The server's answer, e.g. `NXDomain`.
        reason: String,
    },

    /// A configuration value was rejected by `validate()` or while building a source.
    #[error("invalid discovery configuration: {field} = {value:?}: {reason}")]
    InvalidConfig {
        /// The field or input that is wrong, e.g. `DnsConfig.name` or `endpoints[2].weight`.
        field: String,
        /// The value that was rejected.
        value: String,
        /// Why.
        reason: String,
    },

    /// Two entries of one endpoint list name the same socket address.
    #[error("duplicate endpoint address {addr} in {source_name}")]
    DuplicateEndpoint {
        /// The repeated address.
        addr: std::net::SocketAddr,
        /// Where the list came from (a file path, `static`).
        source_name: String,
    },

    /// A source was started outside a Tokio runtime.
    #[error("discovery source {source_name} must be started inside a Tokio runtime")]
    NoRuntime {
        /// The source that could not be spawned.
        source_name: String,
    },

    /// The task feeding this handle has stopped (it panicked or its runtime shut down); the
    /// endpoint set will not change any more.
    #[error("discovery source {source_name} has stopped")]
    Stopped {
        /// The source that stopped.
        source_name: String,
    },
}

impl DiscoveryError {
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
