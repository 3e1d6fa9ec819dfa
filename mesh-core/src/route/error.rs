//! Routing errors.

use http::StatusCode;

use crate::dtab::{DelegationError, DtabError, Path, Unusable};

/// Why a route table could not be built or a request could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A regular expression in a route did not compile.
    #[error("route {route:?}: invalid {field} regex {pattern:?}: {source}")]
    InvalidRegex {
        /// Route name.
        route: String,
        /// Which matcher (`host`, `path`, `header <name>`).
        field: String,
        /// The pattern as given.
        pattern: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
    /// A header name in a route matcher is not a valid HTTP header name.
    #[error("route {route:?}: invalid header name {name:?}")]
    InvalidHeaderName {
        /// Route name.
        route: String,
        /// The name as given.
        name: String,
    },
    /// A header value in a route matcher is not a valid HTTP header value.
    #[error("route {route:?}: invalid value for header {name:?}")]
    InvalidHeaderValue {
        /// Route name.
        route: String,
        /// The header name.
        name: String,
    },
    /// A route has no backend with a weight above 0.
    #[error("route {route:?} has no backend with a weight above 0")]
    NoBackends {
        /// Route name.
        route: String,
    },
    /// Two routes have the same name.
    #[error("route name {name:?} is used twice")]
    DuplicateRoute {
        /// The name.
        name: String,
    },
    /// A route policy value is out of range.
    #[error("invalid route policy: {what}")]
    InvalidPolicy {
        /// What is wrong.
        what: &'static str,
    },
    /// A router setting is out of range.
    #[error("invalid router config: {what}")]
    InvalidConfig {
        /// What is wrong.
        what: String,
    },
    /// No route matches the request.
    #[error("no route matches {method} {authority}{path}")]
    NoRoute {
        /// Request method.
        method: http::Method,
        /// Request authority or Host (empty if none).
        authority: String,
        /// Request path.
        path: String,
    },
    /// The route names its backend after the request's host, but the request has none.
    #[error("route {route:?} needs a host (authority or Host header) and the request has none")]
    NoHost {
        /// Route name.
        route: String,
    },
    /// A trusted `l5d-dtab` / `l5d-ctx-dtab` header does not parse.
    #[error("invalid {header} at byte {}: expected {}, found {}", .source.offset, .source.expected, .source.found)]
    InvalidOverride {
        /// `l5d-dtab` or `l5d-ctx-dtab`.
        header: &'static str,
        /// The parse error (offset within that header value).
        #[source]
        source: DtabError,
    },
    /// A trusted override header is not visible ASCII.
    #[error("invalid {header}: the value is not visible ASCII")]
    OverrideNotText {
        /// `l5d-dtab` or `l5d-ctx-dtab`.
        header: &'static str,
    },
    /// A trusted override has a rule leading into `/$/inet` outside the networks
    /// [`RouterConfig::override_inet_networks`](super::RouterConfig::override_inet_networks)
    /// allows.
    #[error("override rule leads to {target}, outside the networks overrides may bind to")]
    OverrideTargetDenied {
        /// The rule's destination.
        target: Path,
    },
    /// Delegation of the logical name stopped (depth or step limit).
    #[error("cannot resolve {name}: {source}")]
    Delegation {
        /// The logical name.
        name: Path,
        /// Why.
        #[source]
        source: DelegationError,
    },
    /// Delegation finished but nothing usable came out.
    #[error("cannot route to {name}: {}", .reason.as_str())]
    Unusable {
        /// The logical name.
        name: Path,
        /// Why.
        reason: Unusable,
    },
}

impl RouteError {
    /// The HTTP status a proxy should answer with: 404 no route, 400 bad request data (override
    /// headers, missing host), 403 an override aimed at an address it may not bind, 503 nothing to send to (no binding, no endpoints), 502 delegation
    /// failed (`!`, loops), 500 configuration errors.
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::NoRoute { .. } => StatusCode::NOT_FOUND,
            RouteError::NoHost { .. }
            | RouteError::InvalidOverride { .. }
            | RouteError::OverrideNotText { .. } => StatusCode::BAD_REQUEST,
            RouteError::OverrideTargetDenied { .. } => StatusCode::FORBIDDEN,
            RouteError::Unusable {
                reason: Unusable::Fail,
                ..
            }
            | RouteError::Delegation { .. } => StatusCode::BAD_GATEWAY,
            RouteError::Unusable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error as an `l5d-err` header value: the message, escaped to visible ASCII.
    pub fn l5d_err(&self) -> http::HeaderValue {
        let msg = self.to_string();
        let mut ascii = String::with_capacity(msg.len());
        for c in msg.chars() {
            if c == ' ' || c.is_ascii_graphic() {
                ascii.push(c);
            } else {
                ascii.extend(c.escape_default());
            }
        }
        http::HeaderValue::try_from(ascii)
            .unwrap_or_else(|_| http::HeaderValue::from_static("routing error"))
    }
}
