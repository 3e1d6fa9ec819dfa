//! The client's check of a server certificate: the chain against the current trust bundle, then
//! the SPIFFE ID against the identity the endpoint is expected to have.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::credentials::Credentials;
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
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            snapshot.roots(),
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
        _ => None,
    }
}
