//! Responses for requests the mesh could not forward.
//!
//! A server in front of a meshwork [`Client`](crate::Client) (an ingress, a proxy, a service that
//! forwards) must answer every request: a failed call handed to hyper as an error makes it close
//! the connection with nothing sent, so the caller cannot tell a dead backend from a broken
//! network. [`error_response`] turns a failure into what the resilience layers already answer
//! with: a status by cause, and an `l5d-err` header naming it, so a caller can tell a mesh
//! failure from an application's.
//!
//! | cause | HTTP | gRPC (`grpc-status`, trailers-only) |
//! |---|---|---|
//! | deadline or per-try timeout passed | 504 | 4 DEADLINE_EXCEEDED |
//! | no endpoints, none available, load shed | 503 | 14 UNAVAILABLE |
//! | connect failed (refused, timed out, TLS), endpoint closed mid-request | 502 | 14 UNAVAILABLE |
//! | request without authority or with an invalid URI | 400 | 13 INTERNAL |
//! | request body over the server's limit (tower-http's `RequestBodyLimit`) | 413 | 8 RESOURCE_EXHAUSTED |
//! | request body the caller sent broken (invalid chunked encoding, cut short) | 400 | 13 INTERNAL |
//!
//! [`MapErrors`] is the layer that does it for a whole service; [`crate::server()`] puts it in front
//! of the application's service.
//!
//! ```
//! use meshwork::respond::error_response;
//!
//! let error = meshwork::client::Error::MissingAuthority;
//! let rsp = error_response(&error, false);
//! assert_eq!(rsp.status(), http::StatusCode::BAD_REQUEST);
//! assert!(rsp.headers()["l5d-err"].to_str().unwrap().contains("no authority"));
//! ```

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use mesh_core::error::{GRPC_MESSAGE, GRPC_STATUS, L5D_ERR};
use tower::Service;

use crate::body::{Body, BoxError};
use crate::client::Error as ClientError;

/// gRPC status code INTERNAL.
const GRPC_INTERNAL: u16 = 13;

/// gRPC status code RESOURCE_EXHAUSTED.
const GRPC_RESOURCE_EXHAUSTED: u16 = 8;

/// The longest `l5d-err` value sent; longer messages are cut.
const MAX_MESSAGE: usize = 512;

/// The response for a request that failed with `error`: 502, 503 or 504 (or, for a gRPC request,
/// `grpc == true`, a trailers-only 200 with `grpc-status`), with `l5d-err` naming the cause and
/// each error of its chain.
pub fn error_response(error: &(dyn StdError + 'static), grpc: bool) -> Response<Body> {
    // `client::Error::Mesh` is transparent: its source chain skips the mesh error itself.
    if let Some(ClientError::Mesh(mesh)) = find::<ClientError>(error) {
        return mesh.to_response(grpc);
    }
    if let Some(mesh) = find::<mesh_core::error::Error>(error) {
        return mesh.to_response(grpc);
    }
    let (status, grpc_status) = classify(error);
    let message = chain_message(error);
    let mut rsp = Response::new(Body::default());
    let headers = rsp.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert(L5D_ERR, value);
    }
    if grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS, HeaderValue::from(grpc_status));
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert(GRPC_MESSAGE, value);
        }
    } else {
        *rsp.status_mut() = status;
    }
    rsp
}

/// The status by cause (see the module table).
fn classify(error: &(dyn StdError + 'static)) -> (StatusCode, u16) {
    const UNAVAILABLE: u16 = mesh_core::error::GRPC_UNAVAILABLE;
    // A body streamed past the limit fails where it is read: forwarding it, or buffering it.
    if find::<http_body_util::LengthLimitError>(error).is_some() {
        return (StatusCode::PAYLOAD_TOO_LARGE, GRPC_RESOURCE_EXHAUSTED);
    }
    if caller_body_failed(error) {
        return (StatusCode::BAD_REQUEST, GRPC_INTERNAL);
    }
    if let Some(client) = find::<ClientError>(error) {
        match client {
            ClientError::MissingAuthority | ClientError::InvalidUri(_) => {
                return (StatusCode::BAD_REQUEST, GRPC_INTERNAL)
            }
            ClientError::Balance(_) => return (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
            _ => {}
        }
    }
    if find::<mesh_balance::Error>(error).is_some() {
        return (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
    }
    (StatusCode::BAD_GATEWAY, UNAVAILABLE)
}

/// Whether forwarding failed because the caller's request body could not be read. Either the
/// forwarding connection's "error from user's Body stream" (a hyper error) has the server
/// connection's body error (another hyper error) as a cause, or the server connection's body
/// error reached us directly: a hyper error caused by an `InvalidInput` I/O error, which is how
/// hyper's decoder reports an invalid chunked encoding. An endpoint's own failures before its
/// response head are parse, connection and I/O errors of another kind.
fn caller_body_failed(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    let mut hyper_user = false;
    let mut hyper_seen = false;
    while let Some(mut error) = next {
        // `client::Error::Other` is transparent: its source chain skips the error it holds.
        if let Some(ClientError::Other(inner)) = error.downcast_ref::<ClientError>() {
            error = &**inner;
        }
        if let Some(e) = error.downcast_ref::<hyper::Error>() {
            if hyper_user {
                return true;
            }
            hyper_user = e.is_user();
            hyper_seen = true;
        } else if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if hyper_seen && io.kind() == std::io::ErrorKind::InvalidInput {
                return true;
            }
        }
        next = error.source();
    }
    false
}

/// The first error of the chain that is an `E`.
fn find<'a, E: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        // `client::Error::Other` is transparent: its source chain skips the error it holds.
        if let Some(ClientError::Other(inner)) = error.downcast_ref::<ClientError>() {
            if let Some(found) = inner.downcast_ref::<E>() {
                return Some(found);
            }
        }
        next = error.source();
    }
    None
}

/// Each error of the chain once, joined with `": "` (a message that already contains its
/// source's is not repeated), cut to [`MAX_MESSAGE`] bytes and to visible ASCII.
fn chain_message(error: &(dyn StdError + 'static)) -> String {
    let mut message = String::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let part = error.to_string();
        if !message.contains(&part) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            let _ = write!(message, "{part}");
        }
        next = error.source();
    }
    let mut clean: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    clean.truncate(MAX_MESSAGE);
    clean
}

/// A layer that answers a failed call of its inner service with [`error_response`] instead of
/// failing it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapErrorsLayer;

impl<S> tower::Layer<S> for MapErrorsLayer {
    type Service = MapErrors<S>;

    fn layer(&self, inner: S) -> MapErrors<S> {
        MapErrors { inner }
    }
}

/// Answers failures of `S` with [`error_response`]; see [`MapErrorsLayer`].
#[derive(Clone, Debug)]
pub struct MapErrors<S> {
    inner: S,
}

// === impl MapErrors ===

impl<S> MapErrors<S> {
    /// The layer.
    pub fn layer() -> MapErrorsLayer {
        MapErrorsLayer
    }
}

impl<S, B> Service<Request<B>> for MapErrors<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = MapErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        MapErrorsFuture {
            grpc: mesh_core::error::is_grpc(req.headers()),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`MapErrors`].
    #[derive(Debug)]
    pub struct MapErrorsFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, E> Future for MapErrorsFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.inner.poll(cx)) {
            Ok(rsp) => Poll::Ready(Ok(rsp)),
            Err(error) => {
                let error: BoxError = error.into();
                tracing::debug!(%error, "answering a failed request");
                Poll::Ready(Ok(error_response(&*error, *this.grpc)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_cause_gets_its_status_and_names_itself() {
        let deadline = ClientError::Mesh(mesh_core::error::Error::DeadlineExceeded(
            Duration::from_millis(100),
        ));
        let rsp = error_response(&deadline, false);
        assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(rsp.headers()[L5D_ERR], "deadline exceeded after 100ms");

        let none = ClientError::Balance(mesh_balance::Error::NoEndpoints {
            waited: Duration::from_secs(1),
        });
        let rsp = error_response(&none, false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(rsp.headers()[L5D_ERR]
            .to_str()
            .is_ok_and(|v| v.contains("no endpoints")));

        let other = ClientError::Other("endpoint closed the connection".into());
        let rsp = error_response(&other, true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()[GRPC_STATUS], "14");
        let rsp = error_response(&other, false);
        assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn a_message_containing_its_source_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("refused"));
        assert_eq!(chain_message(&error), "outer: refused");
    }
}
