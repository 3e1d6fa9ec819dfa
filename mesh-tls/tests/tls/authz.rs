//! Authorization by identity: allowed callers get through, others get an empty 403.

use mesh_tls::authz::{Authorize, AuthzPolicy};
use mesh_tls::dev_ca::DevCa;
use mesh_tls::server::{AcceptorConfig, TlsAcceptor};

use crate::support::*;

#[tokio::test]
async fn authorization_allows_listed_identities_and_denies_others_with_an_empty_403() {
    init_tracing();
    let ca = DevCa::new("mesh CA").unwrap();
    let policy = AuthzPolicy::default()
        .allow_identity(id(CLIENT_ID))
        .allow_path_prefix(id("spiffe://example.org/ns/ops"));
    let app = tower::ServiceBuilder::new()
        .layer(Authorize::layer(policy).unwrap())
        .service_fn(echo_identity);
    let acceptor = TlsAcceptor::new(
        creds(&issue(&ca, SERVER_ID), ca.cert_pem()),
        AcceptorConfig::permissive(),
    )
    .unwrap();
    let server = start_server(acceptor, app).await;

    let allowed = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());
    let (status, body, _, _) = get(&mesh_client(&allowed, SERVER_ID), server.addr, "/")
        .await
        .unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, CLIENT_ID));

    let by_prefix = creds(
        &issue(&ca, "spiffe://example.org/ns/ops/sa/debugger"),
        ca.cert_pem(),
    );
    let (status, _, _, _) = get(&mesh_client(&by_prefix, SERVER_ID), server.addr, "/")
        .await
        .unwrap();
    assert_eq!(status, 200);

    let denied = creds(
        &issue(&ca, "spiffe://example.org/ns/web/sa/intruder"),
        ca.cert_pem(),
    );
    let (status, body, _, _) = get(&mesh_client(&denied, SERVER_ID), server.addr, "/secret")
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (403, ""),
        "denied with an empty body: the reason is not sent"
    );

    let not_a_prefix = creds(
        &issue(&ca, "spiffe://example.org/ns/opsx/sa/a"),
        ca.cert_pem(),
    );
    let (status, _, _, _) = get(&mesh_client(&not_a_prefix, SERVER_ID), server.addr, "/")
        .await
        .unwrap();
    assert_eq!(status, 403);

    // Plaintext (permissive mode) has no identity: denied unless the policy allows it.
    let (status, body, _, _) = get(&plain_client(), server.addr, "/").await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (403, ""));
}
