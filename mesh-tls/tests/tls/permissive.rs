//! Permissive mode: plaintext and mTLS on one port; strict mode refuses plaintext.

use mesh_tls::dev_ca::DevCa;
use mesh_tls::server::AcceptorConfig;
use mesh_tls::PeerIdentity;

use crate::support::*;

#[tokio::test]
async fn permissive_mode_serves_plaintext_and_mtls_on_one_port() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let server = start_echo_server(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::permissive(),
    )
    .await;

    // Plaintext HTTP/1.1.
    let (status, body, peer, version) = get(&plain_client(), server.addr, "/").await.unwrap();
    assert_eq!(
        (status.as_u16(), body.as_str(), peer, version),
        (200, "<unauthenticated>", None, http::Version::HTTP_11)
    );

    // Plaintext HTTP/2 (prior knowledge): the preface is not mistaken for TLS.
    let h2c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let (status, body, _, version) = get(&h2c, server.addr, "/").await.unwrap();
    assert_eq!(
        (status.as_u16(), body.as_str(), version),
        (200, "<unauthenticated>", http::Version::HTTP_2)
    );

    // mTLS on the same port.
    let client_creds = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());
    let (status, body, peer, _) = get(&mesh_client(&client_creds, SERVER_ID), server.addr, "/")
        .await
        .unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, CLIENT_ID));
    assert_eq!(peer, Some(PeerIdentity(Some(id(SERVER_ID)))));

    let seen = server.wait_for_connections(3).await;
    let peers: Vec<_> = seen
        .iter()
        .map(|s| match s {
            Seen::Accepted { peer, .. } => peer.clone(),
            Seen::Rejected(e) => panic!("unexpected rejection: {e}"),
        })
        .collect();
    assert_eq!(
        peers,
        [
            PeerIdentity(None),
            PeerIdentity(None),
            PeerIdentity(Some(id(CLIENT_ID)))
        ]
    );
}

#[tokio::test]
async fn permissive_mode_still_requires_a_certificate_for_tls() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let server = start_echo_server(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::permissive(),
    )
    .await;
    let result = raw_request(raw_client_config(ca.cert_pem(), None), server.addr).await;
    assert!(result.is_err(), "{result:?}");
    let seen = server.wait_for_connections(1).await;
    assert!(matches!(&seen[0], Seen::Rejected(_)), "{seen:?}");
}

#[tokio::test]
async fn strict_mode_refuses_plaintext() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let server = start_echo_server(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::default(),
    )
    .await;
    let result = get(&plain_client(), server.addr, "/").await;
    assert!(result.is_err(), "{result:?}");
    let seen = server.wait_for_connections(1).await;
    let Seen::Rejected(e) = &seen[0] else {
        panic!("expected a rejection, got {seen:?}")
    };
    assert!(e.contains("TLS handshake with a client failed"), "{e}");
}
