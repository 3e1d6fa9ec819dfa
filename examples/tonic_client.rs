//! A tonic gRPC client whose transport is the meshwork stack, balanced over three tonic servers.
//!
//! Three tonic servers of a `helloworld.Greeter` service start on 127.0.0.1: `alpha` answers in
//! 2 ms, `beta` answers in 2 ms but fails every fourth call with `UNAVAILABLE`, and `gamma` is slow
//! (40 ms). A tonic client sends them 300 unary `SayHello` calls, 10 at a time, over a
//! [`meshwork::Client`] built on a static discovery source: tonic encodes the call and reads the
//! reply; meshwork picks the endpoint (power of two choices over peak-EWMA cost) and carries the
//! HTTP/2 stream over that endpoint's own connection pool. The example prints each server's share of
//! the calls with latency percentiles, the gRPC status counts, and the balancer's view.
//!
//! What to expect: `alpha` carries most calls; `gamma` gets a small share that keeps its 40 ms
//! estimate fresh; `beta`'s `UNAVAILABLE` answers (HTTP 200 with `grpc-status: 14` in the headers)
//! are charged to it as failures, so its cost climbs and its breaker ejects it after a handful of
//! calls. The few `UNAVAILABLE` answers it gave reach the caller: tonic's request body has no known
//! size, so the retry layer cannot replay it.
//!
//! No protoc and no build script: the messages are `#[derive(prost::Message)]` structs and the client
//! and server are written by hand the way tonic's generated code does it (`tonic::client::Grpc` and
//! `tonic::server::Grpc` with `tonic_prost::ProstCodec`).
//!
//! ```sh
//! cargo run --release --example tonic_client
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use meshwork::discovery::{Discovery, Endpoint};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::metadata::MetadataValue;
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, GrpcMethod, Request, Response, Status};
use tonic_prost::ProstCodec;

const CALLS: usize = 300;
const CONCURRENCY: usize = 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// === messages (what protoc would generate from helloworld.proto) ===

/// `message HelloRequest { string name = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `message HelloReply { string message = 1; string server = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(string, tag = "2")]
    server: String,
}

const SERVICE: &str = "helloworld.Greeter";
const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let servers = [
        Greeter::new("alpha", Duration::from_millis(2), 0),
        Greeter::new("beta", Duration::from_millis(2), 4),
        Greeter::new("gamma", Duration::from_millis(40), 0),
    ];
    let mut endpoints = Vec::new();
    let mut names = BTreeMap::new();
    for greeter in &servers {
        let addr = serve(greeter.clone()).await?;
        let failing = match greeter.fail_every {
            0 => String::new(),
            n => format!(", UNAVAILABLE every {n}th call"),
        };
        println!(
            "greeter {:>5} on {addr} answers in {} ms{failing}",
            greeter.name,
            greeter.delay.as_millis()
        );
        names.insert(addr, greeter.name);
        endpoints.push(Endpoint::new(addr));
    }

    // HTTP/2 to every endpoint, gRPC classification, an authority for tonic's path-only URIs.
    let transport = meshwork::grpc(Discovery::fixed(endpoints)?)
        .authority("greeter.example")
        .build::<Body>()?;
    let client = GreeterClient::new(transport.clone());

    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let permit = limit.clone().acquire_owned().await?;
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut request = Request::new(HelloRequest {
                name: format!("caller-{i}"),
            });
            // Sent as `grpc-timeout`; the tonic server enforces it.
            request.set_timeout(Duration::from_secs(2));
            let sent = Instant::now();
            let result = client.say_hello(request).await;
            (result, sent.elapsed())
        }));
    }

    let mut by_server: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut all = Vec::with_capacity(CALLS);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let (result, latency) = task.await?;
        all.push(latency);
        match result {
            Ok(reply) => {
                *statuses.entry(format!("{:?}", Code::Ok)).or_default() += 1;
                by_server
                    .entry(reply.into_inner().server)
                    .or_default()
                    .push(latency);
            }
            Err(status) => {
                *statuses.entry(format!("{:?}", status.code())).or_default() += 1;
                // A failed call names no server in a reply: the server says who it is in metadata.
                let server = status
                    .metadata()
                    .get("x-greeter")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned();
                by_server.entry(server).or_default().push(latency);
            }
        }
    }
    let elapsed = started.elapsed();

    println!();
    println!(
        "{:<8} {:>6} {:>7} {:>9} {:>9}",
        "server", "calls", "share", "p50_ms", "p99_ms"
    );
    for greeter in &servers {
        let mut latencies = by_server.remove(greeter.name).unwrap_or_default();
        print_row(greeter.name, &mut latencies);
    }
    for (other, mut latencies) in by_server {
        print_row(&other, &mut latencies);
    }
    print_row("all", &mut all);
    println!();
    let counts: Vec<String> = statuses
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    println!("grpc status: {}", counts.join(", "));
    println!(
        "{CALLS} unary calls, {CONCURRENCY} at a time, in {:.2} s",
        elapsed.as_secs_f64()
    );
    for greeter in &servers {
        println!(
            "server {:>5} handled {} calls, failed {}",
            greeter.name,
            greeter.calls.load(Ordering::Relaxed),
            greeter.failed.load(Ordering::Relaxed)
        );
    }
    for stats in transport.endpoints() {
        let name = names.get(&stats.key).copied().unwrap_or("?");
        println!(
            "balancer estimate for {name:>5}: {:.1} ms ({:?})",
            stats.rtt_estimate.as_secs_f64() * 1e3,
            stats.health
        );
    }
    Ok(())
}

fn print_row(name: &str, latencies: &mut [Duration]) {
    latencies.sort_unstable();
    let share = 100.0 * latencies.len() as f64 / CALLS as f64;
    println!(
        "{:<8} {:>6} {:>6.1}% {:>9.1} {:>9.1}",
        name,
        latencies.len(),
        share,
        percentile_ms(latencies, 0.50),
        percentile_ms(latencies, 0.99),
    );
}

/// The `q` quantile of sorted samples, in milliseconds (nearest rank); 0 for no samples.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

// === client (what tonic-build would generate) ===

/// A `helloworld.Greeter` client over any transport that tonic accepts: here, a meshwork client.
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
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.inner.ready().await.map_err(|error| {
            Status::unavailable(format!("transport not ready: {}", error.into()))
        })?;
        let mut request = request;
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "SayHello"));
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        self.inner
            .unary(request, PathAndQuery::from_static(SAY_HELLO), codec)
            .await
    }
}

// === server ===

/// One `helloworld.Greeter` server: answers after `delay`, and with `UNAVAILABLE` on every
/// `fail_every`th call (never if 0).
#[derive(Clone, Debug)]
struct Greeter {
    name: &'static str,
    delay: Duration,
    fail_every: usize,
    calls: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl Greeter {
    fn new(name: &'static str, delay: Duration, fail_every: usize) -> Self {
        Self {
            name,
            delay,
            fail_every,
            calls: Arc::default(),
            failed: Arc::default(),
        }
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

/// The `SayHello` method of a [`Greeter`].
#[derive(Debug)]
struct SayHello(Greeter);

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Result<Response<HelloReply>, Status>>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let greeter = self.0.clone();
        Box::pin(async move {
            let n = greeter.calls.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::time::sleep(greeter.delay).await;
            if greeter.fail_every != 0 && n % greeter.fail_every == 0 {
                greeter.failed.fetch_add(1, Ordering::Relaxed);
                let mut status = Status::unavailable("shedding load");
                status
                    .metadata_mut()
                    .insert("x-greeter", MetadataValue::from_static(greeter.name));
                return Err(status);
            }
            let name = request.into_inner().name;
            Ok(Response::new(HelloReply {
                message: format!("hello, {name}"),
                server: greeter.name.to_owned(),
            }))
        })
    }
}

/// Starts a tonic server of `greeter` on 127.0.0.1:0.
async fn serve(greeter: Greeter) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(greeter)
            .serve_with_incoming(incoming)
            .await;
        if let Err(error) = served {
            eprintln!("greeter on {addr} stopped: {error}");
        }
    });
    Ok(addr)
}
