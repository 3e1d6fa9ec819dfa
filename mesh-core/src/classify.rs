//! Response classification: success, retryable failure, or failure.
//!
//! Retries, the circuit breaker and (later) metrics all need to know whether a response was a
//! success, and whether trying again is safe and useful. One [`Classify`] answers that for all of
//! them, so they agree.
//!
//! ## Two stages
//!
//! An HTTP response can be classified by its head (status, headers); a gRPC response usually cannot:
//! its `grpc-status` arrives in the *trailers*, after the body. So classification has two stages,
//! as in tower-http's `ClassifyResponse`/`ClassifyEos` and linkerd2-proxy's `ClassifyEos`:
//! [`Classify::classify_head`] returns either a final [`Class`] or [`HeadClass::AwaitEos`], and then
//! [`Classify::classify_eos`] sees the trailers (or their absence) when the body ends. The
//! [`ClassifyBody`] wrapper observes the trailers frame and reports the final class once.
//! A gRPC *trailers-only* response (status in the headers, empty body) is classified by its head.
//!
//! ## Presets
//!
//! The HTTP presets are Linkerd 1's response classifiers, and parse from their names with
//! [`FromStr`]:
//!
//! | name | 5xx | retryable |
//! |---|---|---|
//! | `retryable-idempotent-5xx` (default) | failure | 502, 503, 504 and errors, for GET HEAD OPTIONS TRACE PUT DELETE |
//! | `retryable-read-5xx` | failure | 502, 503, 504 and errors, for GET HEAD OPTIONS TRACE |
//! | `non-retryable-5xx` | failure | none |
//! | `all-successful` | success | none |
//!
//! In every preset, a connection error that never reached the server ([`ErrorKind::Connect`]) is
//! retryable for any method: the server cannot have acted on the request. Failures another
//! attempt cannot fix — no endpoint to send to ([`ErrorKind::Unavailable`]), a TLS identity or
//! trust failure ([`ErrorKind::Identity`]) — are never retryable.
//!
//! gRPC requests (`content-type: application/grpc*`) are classified by `grpc-status` with two
//! configurable [`GrpcCodes`] sets ([`GrpcClasses`]). Defaults (gRFC A6 and docs/design.md): UNAVAILABLE
//! is retryable; DEADLINE_EXCEEDED, INTERNAL, DATA_LOSS, PERMISSION_DENIED and UNAVAILABLE are
//! failures; every other code is a success. A gRPC response without any `grpc-status` is a failure,
//! and a non-200 HTTP status on a gRPC request is classified like HTTP (502/503/504 → retryable,
//! as the gRPC spec maps them to UNAVAILABLE).
//!
//! Users supply their own by implementing [`Classify`] (object safe, shared as [`SharedClassify`]).
//!
//! ```
//! use mesh_core::classify::{Class, Classifier, Classify, HeadClass, Preset, RequestInfo};
//! use http::{Method, StatusCode, HeaderMap};
//!
//! let preset: Preset = "retryable-read-5xx".parse().unwrap();
//! let classifier = Classifier::new(preset);
//! let get = RequestInfo::new(&Method::GET, &HeaderMap::new());
//! let put = RequestInfo::new(&Method::PUT, &HeaderMap::new());
//! let head = |req| classifier.classify_head(req, StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new());
//! assert_eq!(head(get), HeadClass::Done(Class::RetryableFailure));
//! assert_eq!(head(put), HeadClass::Done(Class::Failure));
//! assert!("retryable-everything".parse::<Preset>().is_err());
//! ```

use bytes::Buf;
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use crate::error::is_grpc;

/// The class of one response (or error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// The request succeeded.
    Success,
    /// The request failed, and trying it again is safe and may succeed.
    RetryableFailure,
    /// The request failed; it must not be retried.
    Failure,
}

// === impl Class ===

impl Class {
    /// Whether this is [`Class::Success`].
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// Whether this is [`Class::RetryableFailure`].
    pub fn is_retryable(self) -> bool {
        self == Self::RetryableFailure
    }
}

/// A response extension: the class the endpoint's circuit breaker gave the response head, with
/// the request's classifier (its route's, through [`ClassifyOverride`]). The balancer reads it
/// instead of classifying again, so both judge by the same classifier. Absent when the class waits
/// for the trailers; a failure found there reaches the balancer through
/// [`mesh_balance::Health::report_late_failure`].
///
/// Left out on the common path, a success with a status below 500 and no `grpc-status` header,
/// which every reader's own reading of the head (the request's classifier, the balancer's and the
/// metrics' defaults) also calls a success: inserting an extension costs allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseClass(pub Class);

/// A response extension for a response whose class waits for the end of its body (a gRPC status
/// in the trailers): the layer that classifies it (the endpoint's circuit breaker, through its
/// [`ClassifyBody`]) settles it once, at the trailers, at the end of the stream, on a body error
/// or when the body is dropped before its end. Layers above that need the class too (metrics)
/// register with [`LateClass::on_class`] instead of wrapping the body a second time.
///
/// Made only for such responses; a response classified by its head carries [`ResponseClass`].
#[derive(Clone, Default)]
pub struct LateClass(Arc<std::sync::Mutex<LateState>>);

#[derive(Default)]
enum LateState {
    #[default]
    Open,
    Waiting(Vec<Box<dyn FnOnce(Class) + Send>>),
    Settled(Class),
}

// === impl LateClass ===

impl LateClass {
    /// An open class, settled later with [`LateClass::settle`].
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LateState> {
        // Callbacks run outside the lock, so a panic cannot leave the state half-written.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls `f` with the class once it is settled (at once, if it already is).
    pub fn on_class(&self, f: impl FnOnce(Class) + Send + 'static) {
        let mut state = self.state();
        match &mut *state {
            LateState::Settled(class) => {
                let class = *class;
                drop(state);
                f(class);
            }
            LateState::Waiting(waiting) => waiting.push(Box::new(f)),
            LateState::Open => *state = LateState::Waiting(vec![Box::new(f)]),
        }
    }

    /// Settles the class and tells every registered callback; later calls do nothing.
    pub fn settle(&self, class: Class) {
        let waiting = {
            let mut state = self.state();
            match std::mem::replace(&mut *state, LateState::Settled(class)) {
                LateState::Waiting(waiting) => waiting,
                LateState::Open => Vec::new(),
                settled @ LateState::Settled(_) => {
                    *state = settled;
                    return;
                }
            }
        };
        for f in waiting {
            f(class);
        }
    }

    /// The class, once settled.
    pub fn get(&self) -> Option<Class> {
        match &*self.state() {
            LateState::Settled(class) => Some(*class),
            _ => None,
        }
    }
}

impl fmt::Debug for LateClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LateClass").field(&self.get()).finish()
    }
}

impl OnClass for LateClass {
    fn on_class(self, class: Class) {
        self.settle(class);
    }
}

/// A request extension: the sender can still act on a class that only the trailers decide if it
/// learns it before the body streams to the caller, so a classifying layer (the circuit breaker)
/// whose classifier awaits the end of a gRPC response waits for the body's **first frame** before
/// handing the response on. When that frame is the trailers (or the end), the class is known with
/// the head ([`ResponseClass`]); when it is data, the class stays late ([`LateClass`]). Set by the
/// retry layer on gRPC attempts it could retry, so a gRPC error sent as an empty body with its
/// status in the trailers is retried like one sent in the headers; never set on streaming calls
/// (whose request body is not replayable), whose first response frame may wait on the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeekTrailers;

/// The result of classifying a response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadClass {
    /// The head decides.
    Done(Class),
    /// The class depends on the trailers: call [`Classify::classify_eos`] when the body ends.
    AwaitEos,
}

/// What classification needs to know about the request, computed once per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// GET HEAD OPTIONS TRACE PUT DELETE (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// GET HEAD OPTIONS TRACE (RFC 9110 §9.2.1, "safe").
    pub read_only: bool,
    /// The request is gRPC (`content-type: application/grpc*`).
    pub grpc: bool,
}

// === impl RequestInfo ===

impl RequestInfo {
    /// Describes a request from its method and headers.
    pub fn new(method: &Method, headers: &HeaderMap) -> Self {
        let read_only = matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        Self {
            read_only,
            idempotent: read_only || *method == Method::PUT || *method == Method::DELETE,
            grpc: is_grpc(headers),
        }
    }

    /// Describes a request.
    pub fn of<B>(req: &http::Request<B>) -> Self {
        Self::new(req.method(), req.headers())
    }
}

/// What kind of error a service returned instead of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The connection could not be established: the request never reached the server, so it is
    /// safe to retry whatever its method.
    Connect,
    /// The attempt timed out (per-try timeout).
    Timeout,
    /// The mesh had no endpoint to send the request to (no endpoints, every one ejected with panic
    /// mode off, or the wait queue full): another attempt would meet the same set, so it is a
    /// failure that is never retried.
    Unavailable,
    /// The endpoint could not prove the identity discovery expected, or its certificate is not
    /// trusted: another handshake would fail the same way, so it is never retried.
    Identity,
    /// Anything else (reset after the request was sent, protocol error, body error, ...).
    Other,
}

/// Tells what kind of error an error is. Pluggable because the connection errors of different
/// clients differ; e.g. for hyper-util's legacy client:
/// `|e| if e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect())
/// { ErrorKind::Connect } else { default_error_kind(e) }`.
pub type ErrorInspector = fn(&(dyn std::error::Error + 'static)) -> ErrorKind;

/// The default [`ErrorInspector`]: walks the error's `source()` chain; a balancer error
/// ([`mesh_balance::Error`]: no endpoints, none available, queue full) is
/// [`ErrorKind::Unavailable`]; an `std::io::Error` of kind
/// `ConnectionRefused`, `AddrNotAvailable`, `HostUnreachable` or `NetworkUnreachable` (what a TCP
/// connect fails with; hyper-util's connect errors wrap one) is [`ErrorKind::Connect`]; a
/// [`crate::error::Error::PerTryTimeout`] or `tower::timeout::error::Elapsed` is
/// [`ErrorKind::Timeout`]; anything else is [`ErrorKind::Other`]. (TLS identity failures depend on
/// the TLS stack: the `meshwork` facade's inspector adds [`ErrorKind::Identity`].)
pub fn default_error_kind(err: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<mesh_balance::Error>() {
            return ErrorKind::Unavailable;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::AddrNotAvailable
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            ) {
                return ErrorKind::Connect;
            }
        }
        if matches!(
            e.downcast_ref::<crate::error::Error>(),
            Some(crate::error::Error::PerTryTimeout(_))
        ) || e.is::<tower::timeout::error::Elapsed>()
        {
            return ErrorKind::Timeout;
        }
        cur = e.source();
    }
    ErrorKind::Other
}

/// Classifies responses in two stages (head, then end of stream) and errors.
///
/// Object safe, so one classifier can be shared by retries, breaker and metrics as
/// [`SharedClassify`].
pub trait Classify: fmt::Debug + Send + Sync + 'static {
    /// Classifies a response head, or defers to [`Classify::classify_eos`].
    fn classify_head(&self, req: RequestInfo, status: StatusCode, headers: &HeaderMap)
        -> HeadClass;

    /// Classifies the end of a response body whose head returned [`HeadClass::AwaitEos`];
    /// `trailers` is `None` when the body ended without trailers.
    fn classify_eos(&self, req: RequestInfo, trailers: Option<&HeaderMap>) -> Class;

    /// Classifies an error returned instead of a response (or while streaming its body).
    fn classify_error(&self, req: RequestInfo, kind: ErrorKind) -> Class;
}

/// A classifier shared between layers.
pub type SharedClassify = Arc<dyn Classify>;

/// A request extension that replaces a layer's classifier for this one request (e.g. the route's
/// classifier, set by the router). Honoured by the retry and breaker layers.
#[derive(Clone, Debug)]
pub struct ClassifyOverride(pub SharedClassify);

/// The classifier a request's route gave it ([`ClassifyOverride`]), if any. A layer without one
/// uses its own, borrowed: only a route's classifier needs a reference per request.
pub fn route_classifier(extensions: &http::Extensions) -> Option<SharedClassify> {
    extensions
        .get::<ClassifyOverride>()
        .map(|route| route.0.clone())
}

/// The HTTP classification presets (Linkerd 1's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Preset {
    /// `retryable-idempotent-5xx`: 5xx fail; 502/503/504 and errors are retryable for idempotent
    /// methods. The default.
    #[default]
    RetryableIdempotent5xx,
    /// `retryable-read-5xx`: 5xx fail; 502/503/504 and errors are retryable for read-only methods.
    RetryableRead5xx,
    /// `non-retryable-5xx`: 5xx fail; nothing but connect errors is retried.
    NonRetryable5xx,
    /// `all-successful`: every response is a success.
    AllSuccessful,
}

/// A [`Preset`] name that is not one of the four.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown response classifier {0:?}: expected one of retryable-idempotent-5xx, \
     retryable-read-5xx, non-retryable-5xx, all-successful"
)]
pub struct UnknownPreset(pub String);

// === impl Preset ===

impl Preset {
    /// The preset's name, as parsed by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Self::RetryableIdempotent5xx => "retryable-idempotent-5xx",
            Self::RetryableRead5xx => "retryable-read-5xx",
            Self::NonRetryable5xx => "non-retryable-5xx",
            Self::AllSuccessful => "all-successful",
        }
    }

    /// Whether a failed request of this kind may be retried under this preset.
    fn may_retry(self, req: RequestInfo) -> bool {
        match self {
            Self::RetryableIdempotent5xx => req.idempotent,
            Self::RetryableRead5xx => req.read_only,
            Self::NonRetryable5xx | Self::AllSuccessful => false,
        }
    }

    fn classify_status(self, req: RequestInfo, status: StatusCode) -> Class {
        if self == Self::AllSuccessful || !status.is_server_error() {
            return Class::Success;
        }
        let retryable_status = matches!(status.as_u16(), 502..=504);
        if retryable_status && self.may_retry(req) {
            Class::RetryableFailure
        } else {
            Class::Failure
        }
    }
}

impl FromStr for Preset {
    type Err = UnknownPreset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::RetryableIdempotent5xx,
            Self::RetryableRead5xx,
            Self::NonRetryable5xx,
            Self::AllSuccessful,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| UnknownPreset(s.to_owned()))
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The gRPC status code names, indexed by code (0..=16).
const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A set of gRPC status codes (a bit set over codes 0..=16).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GrpcCodes(u32);

/// A gRPC code list that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid gRPC status code {name:?} at byte {offset}: expected a name such as UNAVAILABLE or a number 0..=16")]
pub struct InvalidGrpcCode {
    /// The offending item.
    pub name: String,
    /// Its byte offset in the input.
    pub offset: usize,
}

// === impl GrpcCodes ===

impl GrpcCodes {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// The set of the given codes (codes above 16 are ignored).
    pub const fn of(codes: &[u16]) -> Self {
        let mut bits = 0u32;
        let mut i = 0;
        while i < codes.len() {
            if codes[i] <= 16 {
                bits |= 1 << codes[i];
            }
            i += 1;
        }
        Self(bits)
    }

    /// Whether the set holds `code`.
    pub fn contains(self, code: u16) -> bool {
        code <= 16 && self.0 & (1 << code) != 0
    }
}

impl fmt::Debug for GrpcCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = (0u16..=16)
            .filter(|c| self.contains(*c))
            .map(|c| GRPC_CODE_NAMES[usize::from(c)]);
        f.debug_set().entries(names).finish()
    }
}

impl FromStr for GrpcCodes {
    type Err = InvalidGrpcCode;

    /// Parses a comma-separated list of names (`UNAVAILABLE, INTERNAL`) or numbers (`14,13`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = Self::EMPTY;
        let mut offset = 0;
        for item in s.split(',') {
            let trimmed = item.trim();
            let lead = item.len() - item.trim_start().len();
            if !trimmed.is_empty() {
                let code = GRPC_CODE_NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(trimmed))
                    .and_then(|c| u16::try_from(c).ok())
                    .or_else(|| trimmed.parse::<u16>().ok().filter(|c| *c <= 16))
                    .ok_or_else(|| InvalidGrpcCode {
                        name: trimmed.to_owned(),
                        offset: offset + lead,
                    })?;
                set.0 |= 1 << code;
            }
            offset += item.len() + 1;
        }
        Ok(set)
    }
}

/// How gRPC statuses are classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcClasses {
    /// Statuses that are retryable failures (default: UNAVAILABLE).
    pub retryable: GrpcCodes,
    /// Statuses that are failures (default: DEADLINE_EXCEEDED, INTERNAL, DATA_LOSS,
    /// PERMISSION_DENIED, UNAVAILABLE). A code in `retryable` is retryable even if listed here.
    pub failure: GrpcCodes,
}

impl Default for GrpcClasses {
    fn default() -> Self {
        Self {
            retryable: GrpcCodes::of(&[14]),
            failure: GrpcCodes::of(&[4, 13, 15, 7, 14]),
        }
    }
}

// === impl GrpcClasses ===

impl GrpcClasses {
    /// Classifies one gRPC status code.
    pub fn classify(&self, code: u16) -> Class {
        if self.retryable.contains(code) {
            Class::RetryableFailure
        } else if self.failure.contains(code) {
            Class::Failure
        } else {
            Class::Success
        }
    }

    fn classify_headers(&self, headers: &HeaderMap) -> Option<Class> {
        let value = crate::headers::first(headers, &crate::error::GRPC_STATUS)?;
        // An unparsable status is UNKNOWN (2) by the gRPC spec; classify it as a failure.
        Some(
            std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
                .map_or(Class::Failure, |code| self.classify(code)),
        )
    }
}

/// The standard classifier: an HTTP [`Preset`] plus [`GrpcClasses`]. `Default` is
/// `retryable-idempotent-5xx` with the default gRPC sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classifier {
    /// How HTTP responses are classified.
    pub preset: Preset,
    /// How gRPC statuses are classified.
    pub grpc: GrpcClasses,
}

// === impl Classifier ===

impl Classifier {
    /// A classifier with the given preset and the default gRPC sets.
    pub fn new(preset: Preset) -> Self {
        Self {
            preset,
            grpc: GrpcClasses::default(),
        }
    }

    /// Shares this classifier.
    pub fn shared(self) -> SharedClassify {
        Arc::new(self)
    }
}

impl Classify for Classifier {
    fn classify_head(
        &self,
        req: RequestInfo,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> HeadClass {
        if !req.grpc {
            return HeadClass::Done(self.preset.classify_status(req, status));
        }
        if status != StatusCode::OK {
            // gRPC maps 502/503/504 to UNAVAILABLE; any other non-200 is a failure.
            let class = if matches!(status.as_u16(), 502..=504) {
                self.grpc.classify(crate::error::GRPC_UNAVAILABLE)
            } else {
                Class::Failure
            };
            return HeadClass::Done(class);
        }
        match self.grpc.classify_headers(headers) {
            Some(class) => HeadClass::Done(class),
            None => HeadClass::AwaitEos,
        }
    }

    fn classify_eos(&self, req: RequestInfo, trailers: Option<&HeaderMap>) -> Class {
        if !req.grpc {
            return Class::Success;
        }
        trailers
            .and_then(|t| self.grpc.classify_headers(t))
            .unwrap_or(Class::Failure)
    }

    fn classify_error(&self, req: RequestInfo, kind: ErrorKind) -> Class {
        match kind {
            ErrorKind::Unavailable | ErrorKind::Identity => Class::Failure,
            ErrorKind::Connect => Class::RetryableFailure,
            _ if self.preset.may_retry(req) => Class::RetryableFailure,
            _ => Class::Failure,
        }
    }
}

/// Receives the final class of a response whose classification waited for the end of its body.
pub trait OnClass: Send + 'static {
    /// Called at most once, when the class is known.
    fn on_class(self, class: Class);
}

impl<F: FnOnce(Class) + Send + 'static> OnClass for F {
    fn on_class(self, class: Class) {
        self(class)
    }
}

struct PendingEos<R> {
    classify: SharedClassify,
    req: RequestInfo,
    /// `None` once reported.
    report: Option<R>,
    /// `R::on_class`, captured where `R: OnClass` is known, so that `Drop` can report.
    fire: fn(R, Class),
}

impl<R> PendingEos<R> {
    fn finish(mut self, class: Class) {
        if let Some(report) = self.report.take() {
            (self.fire)(report, class);
        }
    }
}

impl<R> Drop for PendingEos<R> {
    /// The body was dropped before its end: that is its end of stream (as Linkerd's classifying
    /// body does), so whoever waits for the class — a breaker's probe — always gets one.
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            (self.fire)(report, self.classify.classify_eos(self.req, None));
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that observes its end (trailers frame, end of stream, or error) and reports
    /// the response's class once through an [`OnClass`]. Frames pass through unchanged. A body that
    /// is dropped before its end reports then, as an end of stream without trailers
    /// ([`Classify::classify_eos`] with `None`; for gRPC, a failure: no status arrived), so the
    /// class is never lost.
    pub struct ClassifyBody<B, R>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        pending: Option<PendingEos<R>>,
        // A frame already read from `inner` (`ClassifyBody::poll_peek`), handed out first.
        first: Option<Result<Frame<B::Data>, B::Error>>,
    }
}

// === impl ClassifyBody ===

impl<B: Body, R: OnClass> ClassifyBody<B, R> {
    /// Wraps `inner`; when it ends, `classify.classify_eos` (or `classify_error`) gives the class
    /// handed to `report`. A body that is already at its end is classified at once (nobody may
    /// poll it).
    pub fn new(inner: B, classify: SharedClassify, req: RequestInfo, report: R) -> Self {
        if inner.is_end_stream() {
            report.on_class(classify.classify_eos(req, None));
            return Self::passthrough(inner);
        }
        Self {
            inner,
            pending: Some(PendingEos {
                classify,
                req,
                report: Some(report),
                fire: R::on_class,
            }),
            first: None,
        }
    }

    /// Reads the body's first frame ahead (it is handed out first later): when it is the
    /// trailers, the end of the stream or an error, the class is decided and reported now, and
    /// returned; when it is data, the class still waits for the end (`None`). A gRPC error sent
    /// as an empty body with its status in the trailers is thus classified before anyone sees the
    /// response, and can still be retried. Use it only where the first frame cannot depend on the
    /// caller (a unary call; not a stream the caller feeds after seeing the response head).
    /// Returns `None` at once on a body that is not waiting for its class.
    pub fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<Option<Class>>
    where
        B: Unpin,
    {
        let Some(p) = self.pending.take() else {
            return Poll::Ready(None);
        };
        if self.first.is_some() {
            self.pending = Some(p);
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                self.pending = Some(p);
                return Poll::Pending;
            }
        };
        let class = match &frame {
            Some(Ok(f)) if f.is_trailers() => p.classify.classify_eos(p.req, f.trailers_ref()),
            Some(Ok(_)) => {
                self.pending = Some(p);
                self.first = frame;
                return Poll::Ready(None);
            }
            Some(Err(_)) => p.classify.classify_error(p.req, ErrorKind::Other),
            None => p.classify.classify_eos(p.req, None),
        };
        p.finish(class);
        // The end of the stream needs no replay: the inner body answers `None` again.
        self.first = frame;
        Poll::Ready(Some(class))
    }
}

impl<B: Body, R> ClassifyBody<B, R> {
    /// The reporter still waiting for the class, if any (to adjust it after a
    /// [`ClassifyBody::poll_peek`] left the class open).
    pub fn report_mut(&mut self) -> Option<&mut R> {
        self.pending.as_mut().and_then(|p| p.report.as_mut())
    }

    /// Wraps `inner` without classification (the class was already known from the head).
    pub fn passthrough(inner: B) -> Self {
        Self {
            inner,
            pending: None,
            first: None,
        }
    }

    /// The wrapped body if the wrapper has nothing left to do (no class to report, no frame read
    /// ahead), else the wrapper: lets a caller that boxes bodies skip boxing the wrapper on the
    /// common path, where the class came with the head.
    pub fn try_into_inner(self) -> Result<B, Self> {
        if self.pending.is_none() && self.first.is_none() {
            Ok(self.inner)
        } else {
            Err(self)
        }
    }

    /// The wrapped body (a frame already read by [`ClassifyBody::poll_peek`] is lost).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body + Default, R> Default for ClassifyBody<B, R> {
    /// An empty, unclassified body (for responses the mesh makes itself).
    fn default() -> Self {
        Self::passthrough(B::default())
    }
}

impl<B: Body, R> fmt::Debug for ClassifyBody<B, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyBody")
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl<B, R> Body for ClassifyBody<B, R>
where
    B: Body,
    B::Data: Buf,
    R: OnClass,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(first) = this.first.take() {
            // Peeked before the class was known: a data frame (the class still waits for the
            // end), or the frame that decided it.
            return Poll::Ready(Some(first));
        }
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(p) = this.pending.take() {
            match &frame {
                Some(Ok(f)) if f.is_trailers() => {
                    let class = p.classify.classify_eos(p.req, f.trailers_ref());
                    p.finish(class);
                }
                Some(Ok(_)) => *this.pending = Some(p),
                Some(Err(_)) => {
                    let class = p.classify.classify_error(p.req, ErrorKind::Other);
                    p.finish(class);
                }
                None => {
                    let class = p.classify.classify_eos(p.req, None);
                    p.finish(class);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.first {
            None => self.inner.size_hint(),
            // A peeked data frame still counts; the rest is unknown.
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
