//! The checks of a peer's certificate, on both sides: the chain against the bundle of the peer's
//! own trust domain (never the union of every bundle: SPIFFE federation), and on the client the
//! SPIFFE ID against the identity the endpoint is expected to have.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::DistinguishedName;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::credentials::{Credentials, Federation, TrustStore};
use crate::error::TlsError;
use crate::identity::Identity;

/// Verifies a server's chain with webpki (as `WebPkiServerVerifier` does) but, instead of a DNS
/// name, requires the leaf's SPIFFE ID to equal `expected`. SPIFFE certificates carry no DNS SAN,
/// and the name the client dialled says nothing about who should answer; discovery does.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    pub(crate) expected: Identity,
    pub(crate) credentials: Credentials,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let snapshot = self.credentials.current();
        let cert = ParsedCertificate::try_from(end_entity)?;
        // Only the expected identity's trust domain may vouch for the server.
        let trust_domain = self.expected.trust_domain();
        let Some(store) = self.credentials.trust_store_for(&snapshot, trust_domain) else {
            return Err(other(TlsError::UnknownTrustDomain {
                trust_domain: trust_domain.to_owned(),
            }));
        };
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &store.roots,
            intermediates,
            now,
            self.credentials
                .provider()
                .signature_verification_algorithms
                .all,
        )?;
        let actual = Identity::from_certificate(end_entity, "server certificate").map_err(other)?;
        if actual != self.expected {
            return Err(other(TlsError::IdentityMismatch {
                expected: self.expected.clone(),
                actual,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Configs are TLS 1.3 only; this is here for completeness of the trait.
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self
                .credentials
                .provider()
                .signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self
                .credentials
                .provider()
                .signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.credentials
            .provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a client's chain against the bundle of the trust domain its SPIFFE ID names: the own
/// bundle for the own trust domain, a federated one otherwise, and refuses a trust domain without
/// a bundle.
pub(crate) struct SpiffeClientVerifier {
    pub(crate) local_trust_domain: String,
    pub(crate) local: TrustStore,
    pub(crate) federation: Arc<ArcSwap<Federation>>,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("local_trust_domain", &self.local_trust_domain)
            .field(
                "federated",
                &self.federation.load().0.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the own bundle's subjects are the usual answer.
        self.local.client.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The ID is read before the chain is verified only to choose the bundle that must
        // verify it; nothing trusts it until that bundle has.
        let claimed =
            Identity::from_certificate(end_entity, "client certificate").map_err(other)?;
        let trust_domain = claimed.trust_domain();
        if trust_domain == self.local_trust_domain {
            return self
                .local
                .client
                .verify_client_cert(end_entity, intermediates, now);
        }
        let federation = self.federation.load();
        match federation.0.get(trust_domain) {
            Some(store) => store
                .client
                .verify_client_cert(end_entity, intermediates, now),
            None => Err(other(TlsError::UnknownTrustDomain {
                trust_domain: trust_domain.to_owned(),
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.local.client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.local.client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.local.client.supported_verify_schemes()
    }
}

/// Presents the current certificate of [`Credentials`] as the client certificate, so a rotation
/// applies to the next handshake of every connector without rebuilding their configs.
#[derive(Debug)]
pub(crate) struct CurrentClientCert(pub(crate) Credentials);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn other(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Finds a [`TlsError`] a verifier put into a rustls error carried by an I/O error.
pub(crate) fn take_verifier_error(err: &std::io::Error) -> Option<TlsError> {
    let rustls_err = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) = rustls_err
    else {
        return None;
    };
    match inner.downcast_ref::<TlsError>()? {
        TlsError::IdentityMismatch { expected, actual } => Some(TlsError::IdentityMismatch {
            expected: expected.clone(),
            actual: actual.clone(),
        }),
        TlsError::MissingIdentity { location } => Some(TlsError::MissingIdentity {
            location: location.clone(),
        }),
        TlsError::MultipleIdentities { location, count } => Some(TlsError::MultipleIdentities {
            location: location.clone(),
            count: *count,
        }),
        TlsError::UnknownTrustDomain { trust_domain } => Some(TlsError::UnknownTrustDomain {
            trust_domain: trust_domain.clone(),
        }),
        _ => None,
    }
}
