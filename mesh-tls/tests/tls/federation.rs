//! SPIFFE federation with two CAs: each trust domain's bundle vouches for that trust domain only.

use mesh_tls::client::connect;
use mesh_tls::dev_ca::DevCa;
use mesh_tls::server::AcceptorConfig;
use mesh_tls::{PeerIdentity, TlsError};
use tokio::net::TcpStream;

use crate::support::*;

/// A workload of the partner trust domain, issued by the partner's CA.
const PARTNER_ID: &str = "spiffe://partner.org/ns/pay/sa/api";

/// Our CA (example.org) and the partner's (partner.org).
fn two_cas() -> (DevCa, DevCa) {
    (
        DevCa::new("example.org CA").unwrap(),
        DevCa::new("partner.org CA").unwrap(),
    )
}

#[tokio::test]
async fn a_client_trusts_each_ca_only_for_its_own_trust_domain() {
    init_tracing();
    let (ours, partner) = two_cas();
    let client = creds(&issue(&ours, CLIENT_ID), ours.cert_pem());
    client.federate("partner.org", partner.cert_pem()).unwrap();

    // The partner's real workload: verified against the partner's bundle.
    let partner_server = {
        let c = creds(&issue(&partner, PARTNER_ID), partner.cert_pem());
        c.federate("example.org", ours.cert_pem()).unwrap();
        start_echo_server(c, AcceptorConfig::default()).await
    };
    let tcp = TcpStream::connect(partner_server.addr).await.unwrap();
    let stream = connect(&client, tcp, &id(PARTNER_ID)).await.unwrap();
    assert_eq!(stream.peer_identity(), &id(PARTNER_ID));

    // The partner's CA minting one of *our* identities: refused, though that CA is trusted
    // (for partner.org). A union of the bundles would accept it.
    let impostor = start_echo_server(
        creds(&issue(&partner, SERVER_ID), partner.cert_pem()),
        AcceptorConfig::default(),
    )
    .await;
    let tcp = TcpStream::connect(impostor.addr).await.unwrap();
    let err = expect_tls_err(connect(&client, tcp, &id(SERVER_ID)).await);
    assert!(
        format!("{err:?}").contains("UnknownIssuer"),
        "expected an untrusted issuer, got {err:?}"
    );

    // Our CA minting a partner identity: refused too.
    let forged = {
        let c = creds(&issue(&ours, PARTNER_ID), ours.cert_pem());
        start_echo_server(c, AcceptorConfig::default()).await
    };
    let tcp = TcpStream::connect(forged.addr).await.unwrap();
    assert!(connect(&client, tcp, &id(PARTNER_ID)).await.is_err());

    // A trust domain without a bundle: refused with a clear reason.
    let stranger = creds(
        &issue(&partner, "spiffe://stranger.org/sa/x"),
        partner.cert_pem(),
    );
    let stranger = start_echo_server(stranger, AcceptorConfig::default()).await;
    let tcp = TcpStream::connect(stranger.addr).await.unwrap();
    let err = expect_tls_err(connect(&client, tcp, &id("spiffe://stranger.org/sa/x")).await);
    assert!(
        err.to_string().contains("stranger.org"),
        "expected the unknown trust domain named, got {err}"
    );
}

#[tokio::test]
async fn a_server_trusts_each_ca_only_for_its_own_trust_domain() {
    init_tracing();
    let (ours, partner) = two_cas();
    let server_creds = creds(&issue(&ours, SERVER_ID), ours.cert_pem());
    server_creds
        .federate("partner.org", partner.cert_pem())
        .unwrap();
    let server = start_echo_server(server_creds, AcceptorConfig::default()).await;

    // A partner client with a partner certificate: accepted, and seen as the partner.
    let ok = raw_request(
        raw_client_config(ours.cert_pem(), Some(&issue(&partner, PARTNER_ID))),
        server.addr,
    )
    .await;
    assert!(
        ok.is_ok_and(|head| head.contains(PARTNER_ID)),
        "partner refused"
    );

    // A client whose certificate claims one of our identities but comes from the partner CA.
    let impostor = raw_request(
        raw_client_config(ours.cert_pem(), Some(&issue(&partner, CLIENT_ID))),
        server.addr,
    )
    .await;
    assert!(impostor.is_err(), "impostor accepted: {impostor:?}");
    let seen = server.wait_for_connections(2).await;
    assert!(
        matches!(&seen[0], Seen::Accepted { peer, .. } if *peer == PeerIdentity(Some(id(PARTNER_ID)))),
        "{seen:?}"
    );
    assert!(matches!(&seen[1], Seen::Rejected(_)), "{seen:?}");
}

#[test]
fn the_own_trust_domain_and_bad_names_cannot_be_federated() {
    let (ours, partner) = two_cas();
    let c = creds(&issue(&ours, CLIENT_ID), ours.cert_pem());
    assert!(matches!(
        c.federate("example.org", partner.cert_pem()),
        Err(TlsError::InvalidConfig { .. })
    ));
    assert!(matches!(
        c.federate("Partner.org", partner.cert_pem()),
        Err(TlsError::InvalidTrustDomain { .. })
    ));
    assert!(c.federate("partner.org", "not pem").is_err());
}
