//! mesh-tls benchmarks.
//!
//! - `tls/handshake`: one full mutual TLS 1.3 handshake (ECDSA P-256 certificates from the dev CA,
//!   X25519 key exchange, both chains verified, SPIFFE ID checked) over an in-memory duplex pipe,
//!   so only the crypto and rustls state machines are measured.
//! - `tls/request/plain` and `tls/request/mtls`: one GET with a small body over loopback TCP on a
//!   kept-alive HTTP/2 connection, through hyper-util's legacy client and
//!   [`serve_connection`](mesh_tls::server::serve_connection) in permissive mode; `plain` uses h2c
//!   (prior knowledge), `mtls` uses [`MeshConnector`] (h2 by ALPN). Their ratio is the per-request
//!   cost of TLS once the connection is up.
//!
//! Run: `cargo bench -p mesh-tls --bench tls -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_tls::client::{MeshConnector, TlsConnector};
use mesh_tls::dev_ca::{DevCa, WorkloadCertParams};
use mesh_tls::server::{serve, AcceptorConfig, TlsAcceptor};
use mesh_tls::{Credentials, Identity, PeerIdentity};

const SERVER_ID: &str = "spiffe://bench.example/ns/bench/sa/server";
const CLIENT_ID: &str = "spiffe://bench.example/ns/bench/sa/client";

fn credentials() -> (Credentials, Credentials) {
    let ca = DevCa::new("bench CA").expect("CA");
    let issue = |id: &str| {
        let cert = ca
            .issue(&WorkloadCertParams::new(
                Identity::parse(id).expect("identity"),
                Duration::from_secs(3600),
            ))
            .expect("issue");
        Credentials::from_pem(&cert.cert_pem, &cert.key_pem, ca.cert_pem()).expect("credentials")
    };
    (issue(SERVER_ID), issue(CLIENT_ID))
}

fn server_id() -> Identity {
    Identity::parse(SERVER_ID).expect("identity")
}

fn handshake(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (server, client) = credentials();
    let connector = TlsConnector::new(&client, server_id()).expect("connector");
    let acceptor = TlsAcceptor::new(server, AcceptorConfig::default()).expect("acceptor");
    c.bench_function("tls/handshake", |b| {
        b.to_async(&rt).iter(|| async {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let (client, server) =
                tokio::join!(connector.connect(client_io), acceptor.accept(server_io));
            let client = client.expect("client handshake");
            let server = server.expect("server handshake");
            assert_eq!(
                server.peer_identity().identity().map(Identity::as_str),
                Some(CLIENT_ID)
            );
            (client, server)
        })
    });
}

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let authenticated = matches!(
        req.extensions().get::<PeerIdentity>(),
        Some(PeerIdentity(Some(_)))
    );
    let body: &'static [u8] = if authenticated {
        b"hello, peer"
    } else {
        b"hello, stranger"
    };
    Ok(Response::new(Full::new(Bytes::from_static(body))))
}

async fn get<C>(client: &Client<C, Empty<Bytes>>, uri: &http::Uri) -> usize
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let rsp = client.get(uri.clone()).await.expect("response");
    assert_eq!(rsp.status(), 200);
    rsp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

fn requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (server, client_creds) = credentials();
    let addr: SocketAddr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::new(server, AcceptorConfig::permissive()).expect("acceptor");
        tokio::spawn(serve(
            listener,
            acceptor,
            tower::service_fn(hello),
            std::future::pending(),
        ));
        addr
    });
    let uri: http::Uri = format!("http://{addr}/hello").parse().expect("uri");

    // TCP_NODELAY on both, as `MeshConnector::http` sets it.
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let plain = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Empty<Bytes>>(http);
    let tls = TlsConnector::new(&client_creds, server_id()).expect("connector");
    let mtls =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(MeshConnector::http(tls));
    // Open the connections outside the measurement.
    rt.block_on(async {
        assert_eq!(get(&plain, &uri).await, b"hello, stranger".len());
        assert_eq!(get(&mtls, &uri).await, b"hello, peer".len());
    });

    let mut group = c.benchmark_group("tls/request");
    group.bench_function("plain", |b| b.to_async(&rt).iter(|| get(&plain, &uri)));
    group.bench_function("mtls", |b| b.to_async(&rt).iter(|| get(&mtls, &uri)));
    group.finish();
}

criterion_group!(benches, handshake, requests);
criterion_main!(benches);
