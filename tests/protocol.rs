//! One client, each request over its own protocol: HTTP/2 requests over HTTP/2 (prior knowledge
//! in plaintext, ALPN with TLS), HTTP/1 requests over HTTP/1.1, overridable per endpoint and per
//! request.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use meshwork::core::route::Protocol;
use meshwork::discovery::{Discovery, Endpoint};
use meshwork::tls::dev_ca::{DevCa, WorkloadCertParams};
use meshwork::tls::server::AcceptorConfig;
use meshwork::tls::{Credentials, Identity};
use support::{handler, init_tracing, Backend};

/// A backend that answers with the HTTP version it received the request in.
async fn version_echo() -> Backend {
    Backend::with_handler(
        "echo",
        handler(|req, _| async move {
            http::Response::builder()
                .header("x-version", format!("{:?}", req.version()))
                .body(Full::new(Bytes::new()))
                .expect("response")
        }),
    )
    .await
}

fn request(version: http::Version) -> http::Request<Empty<Bytes>> {
    http::Request::get("/")
        .version(version)
        .body(Empty::new())
        .expect("request")
}

async fn seen_version(
    client: &meshwork::Client<Empty<Bytes>>,
    req: http::Request<Empty<Bytes>>,
) -> String {
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), 200);
    rsp.headers()["x-version"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn one_client_keeps_each_requests_protocol() {
    init_tracing();
    let backend = version_echo().await;
    let client = meshwork::client(Discovery::fixed([Endpoint::new(backend.addr)]).expect("d"))
        .authority("svc.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    for _ in 0..3 {
        assert_eq!(
            seen_version(&client, request(http::Version::HTTP_2)).await,
            "HTTP/2.0"
        );
        assert_eq!(
            seen_version(&client, request(http::Version::HTTP_11)).await,
            "HTTP/1.1"
        );
    }
}

#[tokio::test]
async fn an_endpoint_label_or_a_request_extension_chooses_the_protocol() {
    init_tracing();
    let backend = version_echo().await;
    let endpoint = Endpoint::new(backend.addr).with_label("protocol", "http2");
    let client = meshwork::client(Discovery::fixed([endpoint]).expect("d"))
        .authority("svc.test")
        .build::<Empty<Bytes>>()
        .expect("client");
    assert_eq!(
        seen_version(&client, request(http::Version::HTTP_11)).await,
        "HTTP/2.0"
    );
    let mut req = request(http::Version::HTTP_2);
    req.extensions_mut().insert(Protocol::Http1);
    assert_eq!(seen_version(&client, req).await, "HTTP/1.1");
}

fn credentials(ca: &DevCa, identity: &str) -> Credentials {
    let params = WorkloadCertParams::new(
        Identity::parse(identity).expect("identity"),
        Duration::from_secs(3600),
    );
    let cert = ca.issue(&params).expect("issue");
    Credentials::from_pem(&cert.cert_pem, &cert.key_pem, ca.cert_pem()).expect("credentials")
}

#[tokio::test]
async fn with_tls_alpn_carries_each_requests_protocol() {
    init_tracing();
    const WORLD: &str = "spiffe://test.mesh/ns/default/sa/world";
    const HELLO: &str = "spiffe://test.mesh/ns/default/sa/hello";
    let ca = DevCa::new("test.mesh").expect("ca");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let rsp = http::Response::builder()
            .header("x-version", format!("{:?}", req.version()))
            .body(Full::new(Bytes::new()))
            .expect("response");
        Ok::<_, Infallible>(rsp)
    });
    let server = meshwork::server().tls(credentials(&ca, WORLD), AcceptorConfig::default());
    tokio::spawn(server.serve(listener, app, std::future::pending()));
    let endpoint = Endpoint::new(addr).with_identity(WORLD);
    let client = meshwork::client(Discovery::fixed([endpoint]).expect("d"))
        .authority("world.test")
        .tls(credentials(&ca, HELLO))
        .build::<Empty<Bytes>>()
        .expect("client");
    assert_eq!(
        seen_version(&client, request(http::Version::HTTP_11)).await,
        "HTTP/1.1"
    );
    assert_eq!(
        seen_version(&client, request(http::Version::HTTP_2)).await,
        "HTTP/2.0"
    );
}
