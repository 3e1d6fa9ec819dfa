//! A tonic client whose transport is the meshwork client, against real tonic servers on 127.0.0.1
//! over HTTP/2: calls succeed and spread over the endpoints, failing endpoints are steered away
//! from, and `grpc-timeout` metadata reaches the server.
//!
//! The messages and the `helloworld.Greeter` client and server are written by hand the way
//! tonic-build generates them (no protoc, no build script).

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use meshwork::discovery::{Discovery, Endpoint};
use support::init_tracing;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, GrpcMethod, Request, Response, Status};
use tonic_prost::ProstCodec;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

const SERVICE: &str = "helloworld.Greeter";
const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// Bounds every call, so a hang fails the test instead of stalling it.
const CALL_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(string, tag = "2")]
    server: String,
}

// === client ===

#[derive(Clone, Debug)]
struct GreeterClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> GreeterClient<T>
where
    T: GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    fn new(transport: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(transport),
        }
    }

    async fn say_hello(
        &mut self,
        mut request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.inner.ready().await.map_err(|error| {
            Status::unavailable(format!("transport not ready: {}", error.into()))
        })?;
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "SayHello"));
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        self.inner
            .unary(request, PathAndQuery::from_static(SAY_HELLO), codec)
            .await
    }
}

/// A meshwork client over `addrs` speaking HTTP/2 with prior knowledge: the tonic client's transport.
fn mesh_client(addrs: &[SocketAddr]) -> meshwork::Client<Body> {
    let discovery =
        Discovery::fixed(addrs.iter().map(|addr| Endpoint::new(*addr))).expect("discovery");
    let mut hyper =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    hyper.http2_only(true);
    meshwork::client(discovery)
        .authority("greeter.test")
        .hyper(hyper)
        .build::<Body>()
        .expect("client")
}

#[tokio::test]
async fn meshwork_grpc_needs_neither_http2_only_nor_an_authority() {
    init_tracing();
    let (greeter, addr) = Greeter::start("a", Answer::Hello(Duration::from_millis(1))).await;
    let discovery = Discovery::fixed([Endpoint::new(addr)]).expect("discovery");
    let transport = meshwork::grpc(discovery).build::<Body>().expect("client");
    let mut client = GreeterClient::new(transport);
    let reply = call(&mut client, hello("plain"))
        .await
        .expect("call succeeds");
    assert_eq!(reply.message, "hello, plain");
    assert_eq!(greeter.calls(), 1);
}

/// A tonic `helloworld.Greeter` client whose transport is a meshwork client over `addrs`.
fn greeter_client(addrs: &[SocketAddr]) -> GreeterClient<meshwork::Client<Body>> {
    GreeterClient::new(mesh_client(addrs))
}

async fn call(
    client: &mut GreeterClient<meshwork::Client<Body>>,
    request: Request<HelloRequest>,
) -> Result<HelloReply, Status> {
    tokio::time::timeout(CALL_LIMIT, client.say_hello(request))
        .await
        .expect("call finished in time")
        .map(Response::into_inner)
}

fn hello(name: &str) -> Request<HelloRequest> {
    Request::new(HelloRequest {
        name: name.to_owned(),
    })
}

// === server ===

/// What a [`Greeter`] answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A reply after the delay.
    Hello(Duration),
    /// `UNAVAILABLE` at once.
    Unavailable,
}

/// A tonic `helloworld.Greeter` server on 127.0.0.1 that counts its calls and records what it saw.
#[derive(Clone, Debug)]
struct Greeter {
    name: &'static str,
    answer: Answer,
    calls: Arc<AtomicUsize>,
    http2: Arc<AtomicUsize>,
    grpc_timeouts: Arc<Mutex<Vec<String>>>,
}

impl Greeter {
    async fn start(name: &'static str, answer: Answer) -> (Self, SocketAddr) {
        let greeter = Greeter {
            name,
            answer,
            calls: Arc::default(),
            http2: Arc::default(),
            grpc_timeouts: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let service = greeter.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .expect("greeter server");
        });
        (greeter, addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl NamedService for Greeter {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.version() == http::Version::HTTP_2 {
            self.http2.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(timeout) = req.headers().get("grpc-timeout") {
            let value = String::from_utf8_lossy(timeout.as_bytes()).into_owned();
            self.grpc_timeouts.lock().expect("lock").push(value);
        }
        let greeter = self.clone();
        Box::pin(async move {
            if req.uri().path() != SAY_HELLO {
                return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
            }
            let codec = ProstCodec::<HelloReply, HelloRequest>::default();
            Ok(tonic::server::Grpc::new(codec)
                .unary(SayHello(greeter), req)
                .await)
        })
    }
}

struct SayHello(Greeter);

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Result<Response<HelloReply>, Status>>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let greeter = self.0.clone();
        Box::pin(async move {
            greeter.calls.fetch_add(1, Ordering::Relaxed);
            match greeter.answer {
                Answer::Unavailable => Err(Status::unavailable("draining")),
                Answer::Hello(delay) => {
                    tokio::time::sleep(delay).await;
                    Ok(Response::new(HelloReply {
                        message: format!("hello, {}", request.into_inner().name),
                        server: greeter.name.to_owned(),
                    }))
                }
            }
        })
    }
}

/// Parses a `grpc-timeout` value (1–8 digits and a unit: H M S m u n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_succeed_over_http2_and_spread_over_the_endpoints() {
    init_tracing();
    const CALLS: usize = 150;
    let mut greeters = Vec::new();
    let mut addrs = Vec::new();
    for name in ["a", "b", "c"] {
        let (greeter, addr) = Greeter::start(name, Answer::Hello(Duration::from_millis(3))).await;
        greeters.push(greeter);
        addrs.push(addr);
    }
    let client = greeter_client(&addrs);

    // Six callers at a time, so the balancer's pending counts matter as they do in a service.
    let mut tasks = JoinSet::new();
    for caller in 0..6 {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut replies = Vec::new();
            for i in (caller..CALLS).step_by(6) {
                let name = format!("caller-{i}");
                let reply = call(&mut client, hello(&name))
                    .await
                    .expect("call succeeds");
                assert_eq!(reply.message, format!("hello, {name}"));
                replies.push(reply.server);
            }
            replies
        });
    }
    let mut by_server = std::collections::BTreeMap::<String, usize>::new();
    while let Some(replies) = tasks.join_next().await {
        for server in replies.expect("caller task") {
            *by_server.entry(server).or_default() += 1;
        }
    }

    assert_eq!(by_server.values().sum::<usize>(), CALLS);
    for greeter in &greeters {
        let replied = by_server.get(greeter.name).copied().unwrap_or_default();
        assert_eq!(
            replied,
            greeter.calls(),
            "replies naming {} vs calls it handled",
            greeter.name
        );
        assert_eq!(
            greeter.http2.load(Ordering::Relaxed),
            greeter.calls(),
            "every call to {} came over HTTP/2",
            greeter.name
        );
        // Equal servers: each carries a fair part of the load (a third would be 50 calls).
        assert!(
            replied >= CALLS / 10,
            "{} served {replied} of {CALLS}: {by_server:?}",
            greeter.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_unavailable_is_steered_away_from() {
    init_tracing();
    const CALLS: usize = 200;
    let (ok_a, addr_a) = Greeter::start("a", Answer::Hello(Duration::from_millis(2))).await;
    let (ok_b, addr_b) = Greeter::start("b", Answer::Hello(Duration::from_millis(2))).await;
    // Fails at once: a least-loaded balancer that ignored the failures would favour it.
    let (bad, addr_bad) = Greeter::start("bad", Answer::Unavailable).await;
    let transport = mesh_client(&[addr_a, addr_b, addr_bad]);
    let mut client = GreeterClient::new(transport.clone());

    let mut unavailable = 0;
    for i in 0..CALLS {
        match call(&mut client, hello(&format!("caller-{i}"))).await {
            Ok(reply) => assert_ne!(reply.server, "bad"),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
    }

    // UNAVAILABLE comes as HTTP 200 with `grpc-status: 14` in the headers: the facade charges it
    // to the endpoint, whose cost then keeps it out of the power-of-two choice (and the breaker
    // ejects it). The good endpoints carry nearly all calls.
    let total = ok_a.calls() + ok_b.calls() + bad.calls();
    assert!(
        bad.calls() <= CALLS / 10,
        "the failing endpoint still got {} of {total} calls (a {}, b {})",
        bad.calls(),
        ok_a.calls(),
        ok_b.calls()
    );
    assert!(
        unavailable <= bad.calls(),
        "{unavailable} UNAVAILABLE answers"
    );
    assert!(ok_a.calls() + ok_b.calls() >= CALLS - unavailable);

    // The balancer's own view says why: the failing endpoint costs more than either good one.
    let endpoints = transport.endpoints();
    let estimate = |addr| {
        endpoints
            .iter()
            .find(|stats| stats.key == addr)
            .map(|stats| stats.rtt_estimate)
            .expect("endpoint in the balancer")
    };
    assert!(
        estimate(addr_bad) > estimate(addr_a).max(estimate(addr_b)),
        "{endpoints:?}"
    );
}

/// docs/design.md: gRPC UNAVAILABLE is retryable (gRFC A6), so a unary call that an endpoint answers
/// with UNAVAILABLE should be retried on another endpoint and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_unary_calls_are_retried_on_another_endpoint() {
    init_tracing();
    const CALLS: usize = 50;
    let (ok, addr_ok) = Greeter::start("ok", Answer::Hello(Duration::from_millis(2))).await;
    let (bad, addr_bad) = Greeter::start("bad", Answer::Unavailable).await;
    let transport = mesh_client(&[addr_ok, addr_bad]);
    let mut client = GreeterClient::new(transport.clone());

    for i in 0..CALLS {
        let reply = call(&mut client, hello(&format!("caller-{i}")))
            .await
            .expect("UNAVAILABLE is retried on the good endpoint");
        assert_eq!(reply.server, "ok");
    }
    assert!(bad.calls() >= 1, "the failing endpoint was never tried");
    assert_eq!(ok.calls(), CALLS);
    assert_eq!(
        transport.stats().retry.retries(),
        u64::try_from(bad.calls()).expect("small count")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_refusing_connections_is_steered_away_from() {
    init_tracing();
    const CALLS: usize = 100;
    let (ok, addr_ok) = Greeter::start("ok", Answer::Hello(Duration::from_millis(2))).await;
    // A port nothing listens on: connecting to it is refused.
    let (_held, dead) = support::refusing_port();
    let mut client = greeter_client(&[addr_ok, dead]);

    let mut failed = 0;
    for i in 0..CALLS {
        match call(&mut client, hello(&format!("caller-{i}"))).await {
            Ok(reply) => assert_eq!(reply.server, "ok"),
            Err(_) => failed += 1,
        }
    }
    assert!(
        failed <= CALLS / 10,
        "{failed} of {CALLS} calls failed; the live endpoint served {}",
        ok.calls()
    );
    assert_eq!(ok.calls(), CALLS - failed);
}

#[tokio::test]
async fn grpc_timeout_metadata_reaches_the_server() {
    init_tracing();
    let (greeter, addr) = Greeter::start("one", Answer::Hello(Duration::ZERO)).await;
    let mut client = greeter_client(&[addr]);

    let mut request = hello("timely");
    request.set_timeout(Duration::from_secs(5));
    let reply = call(&mut client, request).await.expect("call succeeds");
    assert_eq!(reply.server, "one");

    // Without a timeout the client adds none of its own.
    call(&mut client, hello("patient"))
        .await
        .expect("call succeeds");
    assert_eq!(greeter.calls(), 2);

    let seen = greeter.grpc_timeouts.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "grpc-timeout headers seen: {seen:?}");
    // The mesh may forward the remaining time rather than the original value: at most 5 s, and
    // well above zero on any machine.
    let timeout = parse_grpc_timeout(&seen[0])
        .unwrap_or_else(|| panic!("malformed grpc-timeout {:?}", seen[0]));
    assert!(
        timeout <= Duration::from_secs(5) && timeout >= Duration::from_secs(1),
        "grpc-timeout {:?} = {timeout:?}",
        seen[0]
    );
}

#[test]
fn grpc_timeout_values_parse() {
    assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
    assert_eq!(
        parse_grpc_timeout("4999998u"),
        Some(Duration::from_micros(4_999_998))
    );
    assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
    assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
    assert_eq!(parse_grpc_timeout("123456789S"), None);
    assert_eq!(parse_grpc_timeout("S"), None);
    assert_eq!(parse_grpc_timeout("5x"), None);
    assert_eq!(parse_grpc_timeout(""), None);
}

/// A gRPC server on 127.0.0.1 that answers every call with `200`, an empty body and
/// `grpc-status: 14` (UNAVAILABLE) only in the trailers, as some servers and proxies answer
/// errors (rather than trailers-only, with the status in the headers).
async fn unavailable_in_trailers() -> (SocketAddr, Arc<AtomicUsize>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let calls = counted.clone();
            let service = hyper::service::service_fn(move |_req: http::Request<_>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
                trailers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("try%20later"),
                );
                let body = http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<
                    _,
                    Infallible,
                >(
                    http_body::Frame::<Bytes>::trailers(trailers),
                )]));
                std::future::ready(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body),
                )
            });
            connections.spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, calls)
}

/// One gRPC error whose status arrives only in the trailers of an empty body is a failure for
/// every reader of the route's classifier: the retry layer (with a budget of zero it finds a
/// retryable failure and no budget to retry it), the breaker (one failure ejects with
/// `consecutive_failures: 1`), the balancer (the endpoint's estimate carries the failure
/// penalty, 5 × the 30 ms default, fading slowly, where a success would have kept it at or below
/// 30 ms) and the route, backend and endpoint metrics (a `failure`
/// with status 200). The caller still gets the response with its trailers.
#[tokio::test]
async fn a_grpc_status_only_in_trailers_is_a_failure_for_balancer_breaker_retry_and_metrics() {
    use http_body_util::BodyExt;
    init_tracing();
    let (addr, calls) = unavailable_in_trailers().await;
    let client = meshwork::grpc(Discovery::fixed([Endpoint::new(addr)]).expect("discovery"))
        .name("trailers")
        .budget(meshwork::core::retry::BudgetConfig {
            min_per_sec: 0,
            ratio: 0.0,
            ..Default::default()
        })
        .breaker(Some(meshwork::core::breaker::BreakerConfig {
            consecutive_failures: 1,
            success_rate: None,
            ..Default::default()
        }))
        .build::<meshwork::Body>()
        .expect("client");
    // A unary call: one length-prefixed empty message.
    let request = http::Request::post(format!("http://{addr}{SAY_HELLO}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(meshwork::body::boxed(http_body_util::Full::new(
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        )))
        .expect("request");
    let rsp = tokio::time::timeout(CALL_LIMIT, client.request(request))
        .await
        .expect("answered in time")
        .expect("a response");
    assert_eq!(rsp.status(), 200);
    let body = tokio::time::timeout(CALL_LIMIT, rsp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    let trailers = body
        .trailers()
        .cloned()
        .expect("the caller gets the trailers");
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a single attempt");

    // Retry: a retryable failure, not retried for want of budget.
    let retry = &client.stats().retry;
    assert_eq!((retry.retries(), retry.budget_exhausted()), (0, 1));

    // Breaker: the one failure ejected the endpoint (its task reads outcomes asynchronously).
    let limit = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.stats().breaker.ejections() == 0 {
        assert!(
            tokio::time::Instant::now() < limit,
            "the breaker never ejected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let endpoint = &client.endpoints()[0];
    assert_eq!(endpoint.health, meshwork::balance::HealthState::Ejected);

    // Balancer: charged as a failure, not as a fast success.
    assert!(
        endpoint.rtt_estimate >= Duration::from_millis(100),
        "estimate {:?} carries no failure penalty",
        endpoint.rtt_estimate
    );

    // Metrics: route, backend and endpoint each count one failure with status 200.
    let text = client.telemetry().registry.encode().expect("encode");
    for (scope, labels) in [
        ("route", r#"route="trailers""#.to_owned()),
        (
            "backend",
            r#"route="trailers",backend="trailers""#.to_owned(),
        ),
        (
            "endpoint",
            format!(r#"backend="trailers",endpoint="{addr}""#),
        ),
    ] {
        let failure = format!(
            r#"meshwork_{scope}_responses_total{{{labels},classification="failure",status="200"}} 1"#
        );
        assert!(
            text.lines().any(|line| line == failure),
            "no {failure:?} in:\n{text}"
        );
        assert!(
            !text.lines().any(|line| line
                .starts_with(&format!("meshwork_{scope}_responses_total"))
                && line.contains(r#"classification="success""#)),
            "{scope} counted a success:\n{text}"
        );
    }
}
