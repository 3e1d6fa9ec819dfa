//! Errors the resilience layers make themselves, and the responses that carry them.
//!
//! When a mesh layer (deadline, load shedding) has to answer a request itself, the caller must be able
//! to tell the mesh's failure from the application's. So every response the mesh makes carries an
//! `l5d-err` header with the [`Error`]'s message (Linkerd's convention, e.g.
//! `l5d-err: deadline exceeded after 100ms`), and its status follows the proxy convention of
//! docs/design.md: 504 for a deadline, 503 for load shedding. gRPC callers (`content-type:
//! application/grpc*`) get what a gRPC client understands instead: a *trailers-only* response —
//! HTTP 200 whose headers hold `grpc-status` (4 DEADLINE_EXCEEDED, 14 UNAVAILABLE) and
//! `grpc-message`, with an empty body.
//!
//! ## The response body
//!
//! Layers that answer on their own are generic over the response body `B` and require
//! `B: Default`: the mesh's own responses have an empty body (`B::default()`). hyper's `Incoming`
//! is not `Default`, so a client stack maps it once, at the bottom, into a boxed body such as
//! `http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>` (which is `Default`, empty). This
//! keeps each layer's response type equal to its inner service's, so layers stack without nesting
//! body wrappers.
//!
//! ```
//! use mesh_core::error::Error;
//! use std::time::Duration;
//!
//! let err = Error::DeadlineExceeded(Duration::from_millis(100));
//! let rsp: http::Response<String> = err.to_response(false);
//! assert_eq!(rsp.status(), http::StatusCode::GATEWAY_TIMEOUT);
//! assert_eq!(rsp.headers()["l5d-err"], "deadline exceeded after 100ms");
//!
//! let grpc: http::Response<String> = err.to_response(true);
//! assert_eq!(grpc.status(), http::StatusCode::OK);
//! assert_eq!(grpc.headers()["grpc-status"], "4");
//! ```

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use std::time::Duration;

/// The header that marks a response as made by the mesh, with the reason (`l5d-err`).
pub const L5D_ERR: HeaderName = HeaderName::from_static("l5d-err");

/// The gRPC status header/trailer (`grpc-status`).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The gRPC status message header/trailer (`grpc-message`).
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status code DEADLINE_EXCEEDED.
pub const GRPC_DEADLINE_EXCEEDED: u16 = 4;
/// gRPC status code UNAVAILABLE.
pub const GRPC_UNAVAILABLE: u16 = 14;

/// A failure the resilience layers produce themselves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request's deadline passed before a response arrived; carries the time the request had.
    #[error("deadline exceeded after {0:?}")]
    DeadlineExceeded(Duration),
    /// A single attempt took longer than the per-try timeout.
    #[error("per-try timeout after {0:?}")]
    PerTryTimeout(Duration),
    /// The service's bounded queue of requests waiting for capacity is full; carries its size.
    #[error("load shed: pending queue full ({0})")]
    PendingQueueFull(usize),
    /// The endpoint already has its maximum number of requests in flight; carries the cap.
    #[error("load shed: endpoint concurrency cap reached ({0})")]
    ConcurrencyCapReached(usize),
}

// === impl Error ===

impl Error {
    /// The HTTP status a plain HTTP caller gets for this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::DeadlineExceeded(_) | Self::PerTryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::PendingQueueFull(_) | Self::ConcurrencyCapReached(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The gRPC status code a gRPC caller gets for this error.
    pub fn grpc_status(&self) -> u16 {
        match self {
            Self::DeadlineExceeded(_) | Self::PerTryTimeout(_) => GRPC_DEADLINE_EXCEEDED,
            Self::PendingQueueFull(_) | Self::ConcurrencyCapReached(_) => GRPC_UNAVAILABLE,
        }
    }

    /// The response the mesh sends for this error: for HTTP the [`Error::http_status`], for gRPC
    /// (`grpc == true`) a trailers-only 200 with `grpc-status`/`grpc-message`; both carry `l5d-err`.
    /// The body is `B::default()` (empty). The error itself rides along as a response extension,
    /// so the layers above can tell a mesh-made response from the application's (the retry layer
    /// does not retry a full pending queue; the breaker does not count the mesh's own responses
    /// as the endpoint's failures). Formats the message: only on the error path.
    pub fn to_response<B: Default>(&self, grpc: bool) -> Response<B> {
        let message = self.to_string();
        let mut rsp = Response::new(B::default());
        rsp.extensions_mut().insert(self.clone());
        let headers = rsp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert(L5D_ERR, v);
        }
        if grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(GRPC_STATUS, HeaderValue::from(self.grpc_status()));
            if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&message)) {
                headers.insert(GRPC_MESSAGE, v);
            }
        } else {
            *rsp.status_mut() = self.http_status();
        }
        rsp
    }
}

/// Whether a request or response is gRPC: its `content-type` starts with `application/grpc`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks (bytes outside 0x20..=0x7E and '%').
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_error_names_the_cause() {
        let rsp: Response<()> = Error::PendingQueueFull(1024).to_response(false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            rsp.headers()[L5D_ERR],
            "load shed: pending queue full (1024)"
        );
        assert_eq!(
            rsp.extensions().get::<Error>(),
            Some(&Error::PendingQueueFull(1024))
        );
        let grpc: Response<()> = Error::ConcurrencyCapReached(3).to_response(true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()[GRPC_STATUS], "14");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a%b\u{e9}"), "a%25b%C3%A9");
    }

    #[test]
    fn grpc_content_type_is_recognised() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&h));
    }
}
