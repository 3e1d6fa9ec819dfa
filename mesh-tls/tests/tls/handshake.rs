//! Who may complete a handshake with whom.

use std::time::Duration;

use mesh_tls::client::{connect, MeshConnector, TlsConnector};
use mesh_tls::dev_ca::DevCa;
use mesh_tls::server::{AcceptorConfig, TlsAcceptor};
use mesh_tls::{PeerIdentity, TlsError};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn mutual_tls_succeeds_and_both_sides_see_each_others_identity() {
    init_tracing();
    let ca = DevCa::new("test CA").unwrap();
    let server_creds = creds(&issue(&ca, SERVER_ID), ca.cert_pem());
    let client_creds = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());
    let server = start_echo_server(server_creds, AcceptorConfig::default()).await;

    // Through hyper-util's legacy client: ALPN picks h2.
    let client = mesh_client(&client_creds, SERVER_ID);
    let (status, body, server_seen_by_client, version) =
        get(&client, server.addr, "/").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body, CLIENT_ID,
        "the server's app sees the client's identity"
    );
    assert_eq!(
        server_seen_by_client,
        Some(PeerIdentity(Some(id(SERVER_ID))))
    );
    assert_eq!(version, http::Version::HTTP_2);
    match &server.seen()[..] {
        [Seen::Accepted { peer, alpn, .. }] => {
            assert_eq!(peer, &PeerIdentity(Some(id(CLIENT_ID))));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        }
        other => panic!("expected one accepted connection, got {other:?}"),
    }

    // Through the lower-level connect, without hyper.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let stream = connect(&client_creds, tcp, &id(SERVER_ID)).await.unwrap();
    assert_eq!(stream.peer_identity(), &id(SERVER_ID));
    assert!(stream.negotiated_h2());
    assert_eq!(
        stream.tls_connection().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn strict_server_refuses_a_client_without_a_certificate() {
    init_tracing();
    let ca = DevCa::new("test CA").unwrap();
    let server = start_echo_server(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::strict(),
    )
    .await;

    let result = raw_request(raw_client_config(ca.cert_pem(), None), server.addr).await;
    assert!(
        result.is_err(),
        "no HTTP response without a client certificate: {result:?}"
    );
    let seen = server.wait_for_connections(1).await;
    match &seen[..] {
        [Seen::Rejected(e)] => assert!(e.contains("TLS handshake with a client failed"), "{e}"),
        other => panic!("expected a rejected handshake, got {other:?}"),
    }

    // The same raw client with a certificate gets through, so the refusal was about the
    // certificate.
    let ok = raw_request(
        raw_client_config(ca.cert_pem(), Some(&issue(&ca, CLIENT_ID))),
        server.addr,
    )
    .await
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let other_ca = DevCa::new("other CA").unwrap();
    let server = start_echo_server(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::default(),
    )
    .await;

    // The client trusts the mesh CA (so it accepts the server) but its own certificate comes from
    // another CA, which the server does not trust.
    let bundle = format!("{}{}", ca.cert_pem(), other_ca.cert_pem());
    let client_creds = creds(&issue(&other_ca, CLIENT_ID), &bundle);
    let result = get(&mesh_client(&client_creds, SERVER_ID), server.addr, "/").await;
    assert!(result.is_err(), "{result:?}");
    let seen = server.wait_for_connections(1).await;
    let Seen::Rejected(e) = &seen[0] else {
        panic!("expected a rejection, got {seen:?}")
    };
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused_by_the_client() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let other_ca = DevCa::new("other CA").unwrap();
    let bundle = format!("{}{}", ca.cert_pem(), other_ca.cert_pem());
    let server = start_echo_server(
        creds(&issue(&other_ca, SERVER_ID), &bundle),
        AcceptorConfig::default(),
    )
    .await;

    let client_creds = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let err = expect_tls_err(connect(&client_creds, tcp, &id(SERVER_ID)).await);
    assert!(matches!(err, TlsError::ClientHandshake { .. }), "{err:?}");
    assert!(chain(&err).contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn wrong_server_identity_is_refused_with_an_error_naming_both() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let server = start_echo_server(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::default(),
    )
    .await;
    let client_creds = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());

    let expected = "spiffe://example.org/ns/shop/sa/payments";
    let connector = TlsConnector::new(&client_creds, id(expected)).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let err = expect_tls_err(connector.connect(tcp).await);
    match &err {
        TlsError::IdentityMismatch {
            expected: e,
            actual,
        } => {
            assert_eq!(e, &id(expected));
            assert_eq!(actual, &id(SERVER_ID));
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("server identity mismatch: expected {expected}, server presented {SERVER_ID}")
    );

    // Through hyper the request fails too, with the same cause inside.
    let result = get(&mesh_client(&client_creds, expected), server.addr, "/").await;
    let msg = result.expect_err("must fail");
    assert!(msg.contains("IdentityMismatch"), "{msg}");
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let server = start_echo_server(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::default(),
    )
    .await;

    let expired = issue_expired(&ca, CLIENT_ID);
    let result = raw_request(
        raw_client_config(ca.cert_pem(), Some(&expired)),
        server.addr,
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    let seen = server.wait_for_connections(1).await;
    let Seen::Rejected(e) = &seen[0] else {
        panic!("expected a rejection, got {seen:?}")
    };
    assert!(e.to_lowercase().contains("expired"), "{e}");
}

#[tokio::test]
async fn expired_server_certificate_is_refused_by_the_client() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let expired = issue_expired(&ca, SERVER_ID);
    // Credentials refuse to load an expired certificate, so the server is raw rustls.
    let config = rustls::ServerConfig::builder_with_provider(mesh_tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs_of(&expired.cert_pem), key_of(&expired.key_pem))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
            .accept(tcp)
            .await
            .map(|_| ())
    });

    let client_creds = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = expect_tls_err(connect(&client_creds, tcp, &id(SERVER_ID)).await);
    assert!(chain(&err).contains("certificate expired"), "{err}");
    let server_side = tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    assert!(server_side.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn a_silent_client_times_out_the_handshake() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let config = AcceptorConfig {
        handshake_timeout: Duration::from_millis(200),
        ..AcceptorConfig::default()
    };
    let server = start_echo_server(creds(&issue(&ca, SERVER_ID), ca.cert_pem()), config).await;
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    let seen = server.wait_for_connections(1).await;
    let Seen::Rejected(e) = &seen[0] else {
        panic!("expected a rejection, got {seen:?}")
    };
    assert_eq!(e, "TLS handshake timed out after 200ms");
}

#[tokio::test]
async fn acceptor_config_is_validated() {
    let ca = DevCa::new("mesh CA").unwrap();
    let config = AcceptorConfig {
        handshake_timeout: Duration::ZERO,
        ..AcceptorConfig::default()
    };
    let err = TlsAcceptor::new(creds(&issue(&ca, SERVER_ID), ca.cert_pem()), config).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: handshake_timeout = 0ns: must be between 1ms and 5min"
    );
}

#[tokio::test]
async fn endpoint_connector_dials_the_endpoint_and_keeps_the_logical_authority() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let acceptor = TlsAcceptor::new(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::default(),
    )
    .unwrap();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        // HTTP/2 carries the authority in the URI; HTTP/1.1 in Host.
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(authority),
        )))
    });
    let server = start_server(acceptor, app).await;

    let client_creds = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());
    let tls = TlsConnector::new(&client_creds, id(SERVER_ID)).unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<bytes::Bytes>>(MeshConnector::endpoint(
        server.addr,
        tls,
    ));
    let rsp = client
        .get("http://cart.shop.svc:8080/items".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.extensions().get::<PeerIdentity>(),
        Some(&PeerIdentity(Some(id(SERVER_ID))))
    );
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"cart.shop.svc:8080");
}
