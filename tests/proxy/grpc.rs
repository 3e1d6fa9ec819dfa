#![allow(unreachable_pub)]
//! A hand-written `helloworld.Greeter` (as tonic-build would generate it, no protoc) whose server
//! records the `grpc-timeout` it receives, and a tonic client over an HTTP/2 connection to a proxy.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, Default)]
pub struct Greeter {
    timeouts: Arc<Mutex<Vec<String>>>,
}

impl Greeter {
    pub async fn start() -> (Self, SocketAddr) {
        let greeter = Greeter::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let service = greeter.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        (greeter, addr)
    }

    pub fn grpc_timeouts(&self) -> Vec<String> {
        self.timeouts.lock().expect("lock").clone()
    }
}

impl NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let Some(t) = req.headers().get("grpc-timeout") {
            let value = String::from_utf8_lossy(t.as_bytes()).into_owned();
            self.timeouts.lock().expect("lock").push(value);
        }
        Box::pin(async move {
            let codec = ProstCodec::<HelloReply, HelloRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(SayHello, req).await)
        })
    }
}

struct SayHello;

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Result<Response<HelloReply>, Status>>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        Box::pin(async move {
            let name = request.into_inner().name;
            if name == "missing" {
                let mut status = Status::not_found(format!("no greeting for {name}"));
                status
                    .metadata_mut()
                    .insert("x-trailer", "kept".parse().expect("metadata"));
                return Err(status);
            }
            Ok(Response::new(HelloReply {
                message: format!("hello, {name}"),
            }))
        })
    }
}

/// A tonic client speaking HTTP/2 (prior knowledge) to the proxy at `proxy`, calling `world`.
pub async fn client(proxy: SocketAddr) -> GreeterClient {
    let tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let transport = tower::service_fn(move |req: http::Request<Body>| {
        let mut send = send.clone();
        async move { send.send_request(req).await }
    });
    let origin: http::Uri = "http://world".parse().expect("origin");
    GreeterClient {
        inner: tonic::client::Grpc::with_origin(
            tower::util::BoxCloneService::new(transport),
            origin,
        ),
    }
}

type Transport = tower::util::BoxCloneService<
    http::Request<Body>,
    http::Response<hyper::body::Incoming>,
    hyper::Error,
>;

pub struct GreeterClient {
    inner: tonic::client::Grpc<Transport>,
}

impl GreeterClient {
    pub async fn say_hello(&mut self, name: &str, timeout: Duration) -> Result<String, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut request = Request::new(HelloRequest { name: name.into() });
        request.set_timeout(timeout);
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        let call = self
            .inner
            .unary(request, PathAndQuery::from_static(SAY_HELLO), codec);
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("call in time")
            .map(|r| r.into_inner().message)
    }
}

/// Parses a `grpc-timeout` value (1–8 digits and a unit: H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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
