//! The body type of meshwork's client responses (and of requests below the retry layer).
//!
//! The layers of the stack wrap bodies (retry replays buffered ones, the breaker watches for the
//! end of the stream to classify gRPC trailers, mesh-made error responses are empty). One boxed
//! body type at the edges keeps the public types readable and lets layers be switched on and off
//! without changing the client's type.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// The error type of boxed bodies and of meshwork services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed HTTP body of `Bytes` frames: what a meshwork [`Client`](crate::Client) answers with.
/// `Default` is the empty body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body with `Bytes` frames into a [`Body`]; a [`Body`] is returned as it is (no
/// second box around the first).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(boxed) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Body>>() {
        return boxed.take().unwrap_or_default();
    }
    match slot {
        Some(body) => body.map_err(Into::into).boxed_unsync(),
        None => Body::default(),
    }
}
