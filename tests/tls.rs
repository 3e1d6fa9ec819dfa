//! The facade client and server with mutual TLS: identities from discovery, verified both ways.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use meshwork::discovery::{Discovery, Endpoint};
use meshwork::tls::authz::AuthzPolicy;
use meshwork::tls::dev_ca::{DevCa, WorkloadCertParams};
use meshwork::tls::server::AcceptorConfig;
use meshwork::tls::{Credentials, Identity, PeerIdentity};
use support::init_tracing;

const WORLD: &str = "spiffe://test.mesh/ns/default/sa/world";
const HELLO: &str = "spiffe://test.mesh/ns/default/sa/hello";
const INTRUDER: &str = "spiffe://test.mesh/ns/default/sa/intruder";

fn credentials(ca: &DevCa, identity: &str) -> Credentials {
    let params = WorkloadCertParams::new(
        Identity::parse(identity).expect("identity"),
        Duration::from_secs(3600),
    );
    let cert = ca.issue(&params).expect("issue");
    Credentials::from_pem(&cert.cert_pem, &cert.key_pem, ca.cert_pem()).expect("credentials")
}

/// Starts `world` behind the meshwork server (strict mTLS, only `hello` allowed); it answers
/// with the identity of its caller.
async fn start_world(ca: &DevCa) -> std::net::SocketAddr {
    start_world_with(ca, None).await
}

async fn start_world_with(
    ca: &DevCa,
    telemetry: Option<meshwork::core::metrics::Telemetry>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let caller = match req.extensions().get::<PeerIdentity>() {
            Some(PeerIdentity(Some(id))) => id.to_string(),
            _ => "anonymous".to_owned(),
        };
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(caller))))
    });
    let mut server = meshwork::server()
        .tls(credentials(ca, WORLD), AcceptorConfig::default())
        .authorize(AuthzPolicy::default().allow_identity(Identity::parse(HELLO).expect("id")));
    if let Some(telemetry) = telemetry {
        server = server.telemetry(telemetry, "world");
    }
    tokio::spawn(server.serve(listener, app, std::future::pending()));
    addr
}

fn client(ca: &DevCa, me: &str, endpoint: Endpoint) -> meshwork::Client<Empty<Bytes>> {
    let config = meshwork::balance::Config {
        failfast_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    meshwork::client(Discovery::fixed([endpoint]).expect("discovery"))
        .authority("world.test")
        .tls(credentials(ca, me))
        .balance(config)
        .build()
        .expect("client")
}

fn get() -> http::Request<Empty<Bytes>> {
    http::Request::get("/").body(Empty::new()).expect("request")
}

#[tokio::test]
async fn identities_are_verified_both_ways() {
    init_tracing();
    let ca = DevCa::new("test CA").expect("ca");
    let telemetry = meshwork::core::metrics::Telemetry::new(
        meshwork::core::stat::StatConfig::default(),
        meshwork::core::trace::Tracing::disabled(),
    )
    .expect("telemetry");
    let addr = start_world_with(&ca, Some(telemetry.clone())).await;
    let hello = client(&ca, HELLO, Endpoint::new(addr).with_identity(WORLD));
    let rsp = hello.request(get()).await.expect("response");
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, HELLO.as_bytes());

    // The server's service graph names the verified caller.
    let graph = telemetry.graph_json().to_string();
    assert!(graph.contains(HELLO) && graph.contains("world"), "{graph}");
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    init_tracing();
    let ca = DevCa::new("test CA").expect("ca");
    let addr = start_world(&ca).await;
    // Discovery says this endpoint must be `hello`; the server proves it is `world`.
    let confused = client(&ca, HELLO, Endpoint::new(addr).with_identity(HELLO));
    let err = confused.request(get()).await.expect_err("refused");
    let text = format!("{err:?}");
    assert!(
        text.contains("mismatch") || text.contains("Mismatch"),
        "{text}"
    );
    // Another handshake would fail the same way: not retried.
    assert_eq!(confused.stats().retry.retries(), 0);

    // ... and counted as a failed outbound handshake.
    let metrics = confused.telemetry().registry.encode().expect("encode");
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("meshwork_tls_handshake_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failures >= 1.0, "{metrics}");
}

#[tokio::test]
async fn callers_the_policy_does_not_allow_get_403() {
    init_tracing();
    let ca = DevCa::new("test CA").expect("ca");
    let addr = start_world(&ca).await;
    let intruder = client(&ca, INTRUDER, Endpoint::new(addr).with_identity(WORLD));
    let rsp = intruder.request(get()).await.expect("response");
    assert_eq!(rsp.status(), 403);
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert!(body.is_empty(), "the reason is logged, not sent");
}

#[tokio::test]
async fn endpoints_without_an_identity_are_never_dialed_in_plaintext() {
    init_tracing();
    let ca = DevCa::new("test CA").expect("ca");
    let addr = start_world(&ca).await;
    let client = client(&ca, HELLO, Endpoint::new(addr));
    let err = client.request(get()).await.expect_err("no usable endpoint");
    assert!(err.is_no_endpoints(), "{err}");
    // The error says why the set is empty, not only a log line; and nothing was retried.
    let text = err.to_string();
    assert!(
        text.contains("identity") && text.contains(&addr.to_string()),
        "{text}"
    );
    assert_eq!(client.stats().retry.retries(), 0);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    init_tracing();
    let ca = DevCa::new("test CA").expect("ca");
    let other = DevCa::new("other CA").expect("ca");
    let addr = start_world(&ca).await;
    // The client trusts the other CA only, so it cannot verify `world`.
    let stranger = client(&other, HELLO, Endpoint::new(addr).with_identity(WORLD));
    assert!(stranger.request(get()).await.is_err());
}

/// Sends requests until `done` holds for a result, for at most 10 s.
async fn until<F>(client: &meshwork::Client<Empty<Bytes>>, what: &str, mut done: F) -> String
where
    F: FnMut(&Result<http::StatusCode, meshwork::client::Error>) -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let result = client.request(get()).await.map(|rsp| rsp.status());
        if done(&result) {
            return format!("{result:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_endpoint_whose_expected_identity_changes_is_dialed_with_the_new_one() {
    init_tracing();
    let ca = DevCa::new("test CA").expect("ca");
    let addr = start_world(&ca).await;
    let (discovery, updater) = Discovery::manual();
    updater
        .update([Endpoint::new(addr).with_identity(WORLD)])
        .expect("update");
    let hello = meshwork::client(discovery)
        .authority("world.test")
        .tls(credentials(&ca, HELLO))
        .balance(meshwork::balance::Config {
            failfast_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .build::<Empty<Bytes>>()
        .expect("client");
    // A warm, verified connection to `world`.
    until(
        &hello,
        "a first answer",
        |r| matches!(r, Ok(s) if *s == 200),
    )
    .await;

    // Discovery now expects another workload at that address: the pooled connection, verified
    // against `world`, must not answer for `other`.
    const OTHER: &str = "spiffe://test.mesh/ns/default/sa/other";
    updater
        .update([Endpoint::new(addr).with_identity(OTHER)])
        .expect("update");
    let failed = until(&hello, "the identity check to fail", Result::is_err).await;
    assert!(failed.contains("ismatch"), "{failed}");
    for _ in 0..5 {
        assert!(
            hello.request(get()).await.is_err(),
            "a request was answered by `world` although discovery expects `other`"
        );
    }

    // The identity removed: with mTLS required, the endpoint is left out.
    updater.update([Endpoint::new(addr)]).expect("update");
    until(
        &hello,
        "no endpoints",
        |r| matches!(r, Err(e) if e.is_no_endpoints()),
    )
    .await;

    // And back to `world`: answered again.
    updater
        .update([Endpoint::new(addr).with_identity(WORLD)])
        .expect("update");
    until(&hello, "answers again", |r| matches!(r, Ok(s) if *s == 200)).await;
}

#[test]
fn overrides_from_a_plaintext_caller_are_stripped() {
    use meshwork::core::dtab::{Dtab, InetNamer};
    use meshwork::core::route::{
        Backend, OverrideTrust, Route, RouteTable, RouterConfig, Routing, L5D_CTX_DTAB, L5D_DTAB,
    };
    let table = RouteTable::new(vec![Route::builder("all")
        .to(Backend::Host("/svc".parse().expect("prefix")))
        .build()
        .expect("route")])
    .expect("table");
    let routing = Routing::new(
        table,
        Dtab::parse("/svc/world => /$/inet/127.0.0.1/4001").expect("dtab"),
        InetNamer,
        RouterConfig {
            // As a mesh-internal router is configured: trust mesh peers.
            overrides: OverrideTrust::with_extension::<PeerIdentity>(),
            override_inet_networks: vec!["127.0.0.0/8".parse().expect("network")],
            ..Default::default()
        },
    )
    .expect("routing");
    let request = |peer: PeerIdentity| {
        let mut req = http::Request::get("http://world/")
            .body(())
            .expect("request");
        req.extensions_mut().insert(peer);
        req.headers_mut().insert(
            L5D_DTAB,
            http::HeaderValue::from_static("/svc/world => /$/inet/127.0.0.1/4002"),
        );
        req
    };

    // What a permissive server puts on a plaintext connection's requests.
    let mut plaintext = request(PeerIdentity(None));
    let target = routing.route(&mut plaintext).expect("routed");
    assert_eq!(target.bound.to_string(), "/$/inet/127.0.0.1/4001");
    assert!(!target.overridden);
    assert!(plaintext.headers().get(L5D_DTAB).is_none());
    assert!(plaintext.headers().get(L5D_CTX_DTAB).is_none());

    // A verified mesh peer's override is honoured.
    let mut verified = request(PeerIdentity(Some(Identity::parse(HELLO).expect("id"))));
    let target = routing.route(&mut verified).expect("routed");
    assert_eq!(target.bound.to_string(), "/$/inet/127.0.0.1/4002");
    assert!(target.overridden);
}
