//! The small "is this response a failure?" hook the metrics layers use.
//!
//! Richer classification (retryable failures, per-route gRPC codes) belongs to the resilience
//! layers; metrics only need success or failure, so the hook is a plain function pointer that the
//! facade can swap for the resilience crate's classifier without any generic parameter leaking into
//! the metrics types.

use http::{HeaderMap, StatusCode};

/// Whether a response counts as a success or a failure in the golden metrics (the
/// `classification` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// The request did what was asked.
    Success,
    /// The request failed (5xx, a non-OK gRPC status, or no response at all).
    Failure,
}

impl Classification {
    /// The label value: `success` or `failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        }
    }

    /// `true` for [`Classification::Success`].
    pub fn is_success(self) -> bool {
        self == Classification::Success
    }
}

/// Classifies a response from its status and headers.
pub type ClassifyFn = fn(StatusCode, &HeaderMap) -> Classification;

/// The default classifier: a status of 500 or more is a failure, and so is a `grpc-status` header
/// other than `0` (a gRPC "trailers-only" error response, where the status arrives in the headers).
/// This is Linkerd's default HTTP and gRPC response classification.
pub fn classify_default(status: StatusCode, headers: &HeaderMap) -> Classification {
    if status.is_server_error() {
        return Classification::Failure;
    }
    match crate::headers::first(headers, &crate::error::GRPC_STATUS) {
        Some(code) if code.as_bytes() != b"0" => Classification::Failure,
        _ => Classification::Success,
    }
}
