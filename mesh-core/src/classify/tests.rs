#![allow(clippy::unwrap_used)]

use super::*;
use crate::error::GRPC_STATUS;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http_body_util::{BodyExt, StreamBody};
use std::sync::Mutex;

fn http(method: Method) -> RequestInfo {
    RequestInfo::new(&method, &HeaderMap::new())
}

fn grpc() -> RequestInfo {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    RequestInfo::new(&Method::POST, &h)
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

#[test]
fn idempotency_follows_rfc_9110() {
    for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
        let r = http(m);
        assert!(r.idempotent && r.read_only);
    }
    for m in [Method::PUT, Method::DELETE] {
        let r = http(m);
        assert!(r.idempotent && !r.read_only);
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT] {
        assert!(!http(m).idempotent);
    }
}

#[test]
fn retryable_idempotent_5xx_is_the_default() {
    let c = Classifier::default();
    assert_eq!(c.preset, Preset::RetryableIdempotent5xx);
    let h = HeaderMap::new();
    for code in [502, 503, 504] {
        assert_eq!(
            c.classify_head(http(Method::PUT), status(code), &h),
            HeadClass::Done(Class::RetryableFailure)
        );
        assert_eq!(
            c.classify_head(http(Method::POST), status(code), &h),
            HeadClass::Done(Class::Failure)
        );
    }
    assert_eq!(
        c.classify_head(http(Method::GET), status(500), &h),
        HeadClass::Done(Class::Failure)
    );
    assert_eq!(
        c.classify_head(http(Method::GET), status(404), &h),
        HeadClass::Done(Class::Success)
    );
    assert_eq!(
        c.classify_error(http(Method::GET), ErrorKind::Other),
        Class::RetryableFailure
    );
    assert_eq!(
        c.classify_error(http(Method::POST), ErrorKind::Other),
        Class::Failure
    );
    assert_eq!(
        c.classify_error(http(Method::POST), ErrorKind::Connect),
        Class::RetryableFailure
    );
}

#[test]
fn other_presets() {
    let h = HeaderMap::new();
    let read = Classifier::new(Preset::RetryableRead5xx);
    assert_eq!(
        read.classify_head(http(Method::DELETE), status(503), &h),
        HeadClass::Done(Class::Failure)
    );
    assert_eq!(
        read.classify_head(http(Method::HEAD), status(503), &h),
        HeadClass::Done(Class::RetryableFailure)
    );
    let non = Classifier::new(Preset::NonRetryable5xx);
    assert_eq!(
        non.classify_head(http(Method::GET), status(503), &h),
        HeadClass::Done(Class::Failure)
    );
    assert_eq!(
        non.classify_error(http(Method::GET), ErrorKind::Timeout),
        Class::Failure
    );
    assert_eq!(
        non.classify_error(http(Method::POST), ErrorKind::Connect),
        Class::RetryableFailure
    );
    let all = Classifier::new(Preset::AllSuccessful);
    assert_eq!(
        all.classify_head(http(Method::GET), status(500), &h),
        HeadClass::Done(Class::Success)
    );
}

#[test]
fn presets_parse_from_their_names() {
    for p in [
        Preset::RetryableIdempotent5xx,
        Preset::RetryableRead5xx,
        Preset::NonRetryable5xx,
        Preset::AllSuccessful,
    ] {
        assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        assert_eq!(p.to_string(), p.name());
    }
    let err = "retryableIdempotent5XX".parse::<Preset>().unwrap_err();
    assert!(
        err.to_string().contains("\"retryableIdempotent5XX\""),
        "{err}"
    );
    assert!(err.to_string().contains("retryable-read-5xx"), "{err}");
}

#[test]
fn grpc_codes_parse_names_and_numbers() {
    let set: GrpcCodes = "UNAVAILABLE, internal,4".parse().unwrap();
    assert_eq!(set, GrpcCodes::of(&[14, 13, 4]));
    assert_eq!(
        format!("{set:?}"),
        "{\"DEADLINE_EXCEEDED\", \"INTERNAL\", \"UNAVAILABLE\"}"
    );
    let err = "UNAVAILABLE, BROKEN".parse::<GrpcCodes>().unwrap_err();
    assert_eq!(err.offset, 13);
    assert_eq!(err.name, "BROKEN");
    assert!("17".parse::<GrpcCodes>().is_err());
}

#[test]
fn grpc_trailers_only_is_classified_by_head() {
    let c = Classifier::default();
    let mut h = HeaderMap::new();
    h.insert(GRPC_STATUS, HeaderValue::from_static("14"));
    assert_eq!(
        c.classify_head(grpc(), StatusCode::OK, &h),
        HeadClass::Done(Class::RetryableFailure)
    );
    h.insert(GRPC_STATUS, HeaderValue::from_static("13"));
    assert_eq!(
        c.classify_head(grpc(), StatusCode::OK, &h),
        HeadClass::Done(Class::Failure)
    );
    h.insert(GRPC_STATUS, HeaderValue::from_static("5"));
    assert_eq!(
        c.classify_head(grpc(), StatusCode::OK, &h),
        HeadClass::Done(Class::Success)
    );
    h.insert(GRPC_STATUS, HeaderValue::from_static("junk"));
    assert_eq!(
        c.classify_head(grpc(), StatusCode::OK, &h),
        HeadClass::Done(Class::Failure)
    );
    assert_eq!(
        c.classify_head(grpc(), StatusCode::OK, &HeaderMap::new()),
        HeadClass::AwaitEos
    );
    assert_eq!(
        c.classify_head(grpc(), status(503), &HeaderMap::new()),
        HeadClass::Done(Class::RetryableFailure)
    );
}

#[test]
fn grpc_sets_are_configurable() {
    let c = Classifier {
        preset: Preset::default(),
        grpc: GrpcClasses {
            retryable: "UNAVAILABLE,RESOURCE_EXHAUSTED".parse().unwrap(),
            failure: GrpcCodes::EMPTY,
        },
    };
    assert_eq!(c.grpc.classify(8), Class::RetryableFailure);
    assert_eq!(c.grpc.classify(13), Class::Success);
}

type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

async fn run_body(frames: Frames) -> Option<Class> {
    let seen = Arc::new(Mutex::new(None));
    let sink = seen.clone();
    let stream = futures_util::stream::iter(frames);
    let body = ClassifyBody::new(
        StreamBody::new(stream),
        Classifier::default().shared(),
        grpc(),
        move |class| *sink.lock().unwrap() = Some(class),
    );
    let _ = body.collect().await;
    let class = *seen.lock().unwrap();
    class
}

#[tokio::test]
async fn classify_body_reads_grpc_status_from_trailers() {
    let mut ok = HeaderMap::new();
    ok.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    let mut unavailable = HeaderMap::new();
    unavailable.insert(GRPC_STATUS, HeaderValue::from_static("14"));

    let class = run_body(vec![
        Ok(Frame::data(Bytes::from_static(b"msg"))),
        Ok(Frame::trailers(ok)),
    ])
    .await;
    assert_eq!(class, Some(Class::Success));

    let class = run_body(vec![
        Ok(Frame::data(Bytes::from_static(b"msg"))),
        Ok(Frame::trailers(unavailable)),
    ])
    .await;
    assert_eq!(class, Some(Class::RetryableFailure));

    // No trailers at all: a gRPC response without a status is a failure.
    let class = run_body(vec![Ok(Frame::data(Bytes::from_static(b"msg")))]).await;
    assert_eq!(class, Some(Class::Failure));

    // A body error mid-stream: POST is not retryable.
    let class = run_body(vec![Err(std::io::Error::other("reset"))]).await;
    assert_eq!(class, Some(Class::Failure));
}

#[test]
fn default_error_kind_finds_refused_connections_in_the_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapper(#[source] std::io::Error);

    let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(default_error_kind(&refused), ErrorKind::Connect);
    let reset = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    assert_eq!(default_error_kind(&reset), ErrorKind::Other);
    let timeout = crate::error::Error::PerTryTimeout(std::time::Duration::from_secs(1));
    assert_eq!(default_error_kind(&timeout), ErrorKind::Timeout);
}

#[test]
fn a_grpc_status_is_read_the_same_among_few_or_many_headers() {
    // Few headers are scanned, many are looked up (`headers::first`): both find the first
    // value, and neither mistakes a similar name for it.
    let c = Classifier::default();
    for fillers in [0, 3, 15, 16, 17, 40] {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::HeaderName::from_static("grpc-status-details-bin"),
            HeaderValue::from_static("x"),
        );
        for i in 0..fillers {
            h.insert(
                http::header::HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert_eq!(
            c.classify_head(grpc(), StatusCode::OK, &h),
            HeadClass::AwaitEos,
            "{fillers} fillers, no status: decided by the trailers"
        );
        h.append(GRPC_STATUS, HeaderValue::from_static("14"));
        h.append(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(
            c.classify_head(grpc(), StatusCode::OK, &h),
            HeadClass::Done(Class::RetryableFailure),
            "{fillers} fillers"
        );
        assert_eq!(
            crate::metrics::classify_default(StatusCode::OK, &h),
            crate::metrics::Classification::Failure,
            "{fillers} fillers"
        );
    }
}
