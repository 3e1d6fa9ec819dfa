//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::Identity;

/// A boxed error from a lower layer (an inner connector, hyper).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in mesh-tls.
///
/// Messages name the value and the place: the file a PEM error came from, the byte offset of a bad
/// character in a SPIFFE ID, both identities of a mismatch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A string is not a valid SPIFFE ID.
    #[error("invalid SPIFFE ID {input:?} at byte {offset}: {reason}")]
    InvalidIdentity {
        /// The rejected input (truncated to 256 bytes for very long inputs).
        input: String,
        /// Byte offset of the first offending character.
        offset: usize,
        /// What rule was broken.
        reason: &'static str,
    },

    /// A peer's identity belongs to a trust domain this workload has no bundle for (neither its
    /// own nor one added with [`Credentials::federate`](crate::Credentials::federate)).
    #[error("no trust bundle for trust domain {trust_domain:?} (neither this workload's own nor a federated one)")]
    UnknownTrustDomain {
        /// The peer's trust domain.
        trust_domain: String,
    },

    /// A trust domain name (as given to an authorization rule) is not valid.
    #[error("invalid trust domain {input:?} at byte {offset}: {reason}")]
    InvalidTrustDomain {
        /// The rejected input.
        input: String,
        /// Byte offset of the first offending character.
        offset: usize,
        /// What rule was broken.
        reason: &'static str,
    },

    /// A certificate carries no SPIFFE ID (no URI SAN).
    #[error("{location}: certificate has no SPIFFE ID (no URI subject alternative name)")]
    MissingIdentity {
        /// Where the certificate came from (a file path or "peer certificate").
        location: String,
    },

    /// A certificate carries more than one URI SAN; an X509-SVID has exactly one.
    #[error("{location}: certificate has {count} URI subject alternative names, an X509-SVID has exactly one")]
    MultipleIdentities {
        /// Where the certificate came from.
        location: String,
        /// How many URI SANs were found.
        count: usize,
    },

    /// A certificate's URI SAN is not a valid SPIFFE ID.
    #[error("{location}: certificate URI SAN is not a valid SPIFFE ID")]
    CertificateIdentity {
        /// Where the certificate came from.
        location: String,
        /// The parse error.
        #[source]
        source: Box<TlsError>,
    },

    /// A certificate could not be parsed as X.509.
    #[error("{location}: cannot parse certificate: {reason}")]
    CertificateParse {
        /// Where the certificate came from.
        location: String,
        /// The parser's message.
        reason: String,
    },

    /// A file could not be read or written.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A PEM file is malformed.
    #[error("{}: bad PEM in {what}", path.display())]
    Pem {
        /// The file (`<memory>` for in-memory PEM).
        path: PathBuf,
        /// What the file should hold ("certificate chain", "private key", "trust bundle").
        what: &'static str,
        /// The PEM parser's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// A PEM file holds no item of the expected kind.
    #[error("{}: no {what} found in PEM", path.display())]
    EmptyPem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },

    /// The private key cannot be used (unsupported algorithm or malformed).
    #[error("{}: unusable private key", path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: Box<rustls::Error>,
    },

    /// The private key does not belong to the leaf certificate.
    #[error("private key {} does not match the leaf certificate in {}", key_path.display(), chain_path.display())]
    KeyMismatch {
        /// The chain file.
        chain_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },

    /// A certificate in the trust bundle cannot be used as a trust anchor.
    #[error("{}: trust bundle certificate #{index} is not a usable trust anchor", path.display())]
    InvalidTrustAnchor {
        /// The bundle file.
        path: PathBuf,
        /// Zero-based position of the certificate in the bundle.
        index: usize,
        /// rustls' reason.
        #[source]
        source: Box<rustls::Error>,
    },

    /// The leaf certificate has expired.
    #[error("{}: certificate for {identity} expired at {not_after}", path.display())]
    CertificateExpired {
        /// The chain file.
        path: PathBuf,
        /// The identity in the certificate.
        identity: Identity,
        /// Its notAfter time.
        not_after: String,
    },

    /// The leaf certificate is not valid yet.
    #[error("{}: certificate for {identity} is not valid before {not_before}", path.display())]
    CertificateNotYetValid {
        /// The chain file.
        path: PathBuf,
        /// The identity in the certificate.
        identity: Identity,
        /// Its notBefore time.
        not_before: String,
    },

    /// The leaf certificate does not chain to the trust bundle, or cannot be used for TLS
    /// (missing serverAuth/clientAuth extended key usage).
    #[error("{}: certificate for {identity} is not trusted by the bundle {} ({usage})", path.display(), bundle_path.display())]
    UntrustedCertificate {
        /// The chain file.
        path: PathBuf,
        /// The bundle file.
        bundle_path: PathBuf,
        /// The identity in the certificate.
        identity: Identity,
        /// Which use was checked ("as a server" or "as a client").
        usage: &'static str,
        /// rustls/webpki's reason.
        #[source]
        source: Box<rustls::Error>,
    },

    /// The server presented a valid certificate for another identity.
    #[error("server identity mismatch: expected {expected}, server presented {actual}")]
    IdentityMismatch {
        /// The identity discovery said the endpoint has.
        expected: Identity,
        /// The identity in the server's certificate.
        actual: Identity,
    },

    /// The client-side TLS handshake failed.
    #[error("TLS handshake with a server expected to be {expected} failed")]
    ClientHandshake {
        /// The identity the server was expected to have.
        expected: Identity,
        /// The underlying error (carries rustls' reason).
        #[source]
        source: io::Error,
    },

    /// The server-side TLS handshake failed.
    #[error("TLS handshake with a client failed")]
    ServerHandshake {
        /// The underlying error (carries rustls' reason).
        #[source]
        source: io::Error,
    },

    /// The handshake (or the protocol detection before it) took too long.
    #[error("TLS handshake timed out after {after:?}")]
    HandshakeTimeout {
        /// The configured timeout.
        after: Duration,
    },

    /// Reading the first bytes of an inbound connection failed.
    #[error("protocol detection failed")]
    Detect {
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The inner connector failed to open a connection.
    #[error("connecting to {uri} failed")]
    Connect {
        /// The URI given to the connector.
        uri: http::Uri,
        /// The inner connector's error.
        #[source]
        source: BoxError,
    },

    /// The inner connector reported it cannot take connections.
    #[error("inner connector failed")]
    Connector {
        /// The inner connector's error.
        #[source]
        source: BoxError,
    },

    /// Serving HTTP on an accepted connection failed.
    #[error("serving HTTP failed")]
    Serve {
        /// hyper's error.
        #[source]
        source: BoxError,
    },

    /// rustls refused a configuration (should not happen with certificates that passed validation).
    #[error("building the rustls {what} failed")]
    Config {
        /// Which configuration.
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: BoxError,
    },

    /// The dev CA could not generate or sign a certificate.
    #[error("dev CA: cannot {what}")]
    DevCa {
        /// What it was doing.
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },

    /// A task had to be started and no tokio runtime was running.
    #[error("{what} must be started within a tokio runtime")]
    NoRuntime {
        /// What was being started.
        what: &'static str,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value, formatted.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
}
