//! Workload identities: SPIFFE IDs carried as the URI SAN of X.509 certificates.
//!
//! A meshwork workload is named by a [SPIFFE ID], `spiffe://<trust domain>/<path>`, for example
//! `spiffe://prod.example.org/ns/payments/sa/api`. The ID travels in the certificate's single URI
//! subject alternative name (an *X509-SVID*); there is no DNS name to check, so peers compare
//! identities instead of host names.
//!
//! # Why a typed, strictly parsed identity
//! Identities are compared for authorization and for endpoint verification, so two spellings of
//! the same name must not exist. The parser therefore accepts exactly the SPIFFE ID grammar and
//! nothing else. The grammar is checked by the `mesh-identity` crate, the one validator that
//! discovery uses too, so an identity discovery accepts is one TLS accepts. Its rules, with the
//! spec's limits:
//!
//! - scheme `spiffe://`, lowercase;
//! - trust domain: non-empty, at most 255 bytes, only `a-z 0-9 . - _` (no uppercase, no port,
//!   no userinfo);
//! - path: empty or `/`-separated segments, each non-empty, not `.` or `..`, only
//!   `a-z A-Z 0-9 . - _`; no trailing `/`;
//! - no query (`?`), fragment (`#`) or percent-encoding;
//! - at most 2048 bytes in total.
//!
//! Errors name the byte offset and the rule ([`TlsError::InvalidIdentity`]).
//!
//! An [`Identity`] is an `Arc<str>` inside: cloning it (once per request, to put the peer's
//! identity in the request extensions) does not allocate.
//!
//! # Example
//! ```
//! use mesh_tls::Identity;
//!
//! let id: Identity = "spiffe://example.org/ns/web/sa/frontend".parse()?;
//! assert_eq!(id.trust_domain(), "example.org");
//! assert_eq!(id.path(), "/ns/web/sa/frontend");
//! assert!("spiffe://Example.org/x".parse::<Identity>().is_err());
//! # Ok::<(), mesh_tls::TlsError>(())
//! ```
//!
//! [SPIFFE ID]: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::TlsError;

use mesh_identity::SCHEME;
pub use mesh_identity::{MAX_IDENTITY_LEN, MAX_TRUST_DOMAIN_LEN};

/// A validated SPIFFE ID, for example `spiffe://example.org/ns/web/sa/frontend`.
///
/// Equality, ordering and hashing are those of the URI string, which is canonical because the
/// parser admits a single spelling.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    uri: Arc<str>,
    /// Byte index where the trust domain ends and the path begins.
    path_start: usize,
}

/// The verified identity of the peer of a connection, as inserted into request extensions by
/// [`serve_connection`](crate::server::serve_connection) and into response extensions by the
/// hyper-util client through [`MeshConnector`](crate::client::MeshConnector).
///
/// `None` means the connection was plaintext (only possible in
/// [permissive](crate::server::Mode::Permissive) mode).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct PeerIdentity(pub Option<Identity>);

// === impl Identity ===

impl Identity {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, TlsError> {
        let err = |offset: usize, reason: &'static str| TlsError::InvalidIdentity {
            input: truncate(input),
            offset,
            reason,
        };
        // The one SPIFFE validator, shared with discovery (`mesh-identity`).
        let id = mesh_identity::validate(input).map_err(|e| err(e.offset, e.reason))?;
        let path_start = id.path_start;
        Ok(Identity {
            uri: Arc::from(input),
            path_start,
        })
    }

    /// The full SPIFFE ID.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, e.g. `/ns/web/sa/frontend`; empty for the ID of a trust domain itself.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The path's segments, e.g. `["ns", "web", "sa", "frontend"]`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// Whether this identity is `prefix` or lies below it (same trust domain, and `prefix`'s path
    /// segments are a prefix of this identity's segments). `spiffe://td/ns/prod` is a prefix of
    /// `spiffe://td/ns/prod/sa/api`, but not of `spiffe://td/ns/production`.
    pub fn starts_with(&self, prefix: &Identity) -> bool {
        if self.trust_domain() != prefix.trust_domain() {
            return false;
        }
        let (path, pre) = (self.path(), prefix.path());
        path == pre || (path.starts_with(pre) && path.as_bytes().get(pre.len()) == Some(&b'/'))
    }

    /// Extracts the SPIFFE ID from a DER certificate's single URI SAN. `location` names the
    /// certificate in errors (a file path, "peer certificate").
    pub fn from_certificate(cert: &CertificateDer<'_>, location: &str) -> Result<Self, TlsError> {
        let (_, x509) =
            X509Certificate::from_der(cert.as_ref()).map_err(|e| TlsError::CertificateParse {
                location: location.to_owned(),
                reason: e.to_string(),
            })?;
        Self::from_x509(&x509, location)
    }

    pub(crate) fn from_x509(x509: &X509Certificate<'_>, location: &str) -> Result<Self, TlsError> {
        let san = x509
            .subject_alternative_name()
            .map_err(|e| TlsError::CertificateParse {
                location: location.to_owned(),
                reason: format!("subject alternative name: {e}"),
            })?;
        let mut uris = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let Some(uri) = uris.next() else {
            return Err(TlsError::MissingIdentity {
                location: location.to_owned(),
            });
        };
        let extra = uris.count();
        if extra > 0 {
            return Err(TlsError::MultipleIdentities {
                location: location.to_owned(),
                count: extra + 1,
            });
        }
        Identity::parse(uri).map_err(|e| TlsError::CertificateIdentity {
            location: location.to_owned(),
            source: Box::new(e),
        })
    }
}

impl FromStr for Identity {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

impl TryFrom<&str> for Identity {
    type Error = TlsError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Identity::parse(s)
    }
}

impl AsRef<str> for Identity {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:?})", &*self.uri)
    }
}

// === impl PeerIdentity ===

impl PeerIdentity {
    /// The identity, if the peer authenticated with a certificate.
    pub fn identity(&self) -> Option<&Identity> {
        self.0.as_ref()
    }
}

impl mesh_identity::AuthenticatedPeer for PeerIdentity {
    fn verified_identity(&self) -> Option<&str> {
        self.0.as_ref().map(Identity::as_str)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(id) => fmt::Display::fmt(id, f),
            None => f.write_str("<unauthenticated>"),
        }
    }
}

// === validation ===

/// Validates a trust domain name; on failure returns (byte offset, reason). The grammar lives in
/// `mesh-identity`, shared with discovery.
pub(crate) fn check_trust_domain(td: &str) -> Result<(), (usize, &'static str)> {
    mesh_identity::validate_trust_domain(td).map_err(|e| (e.offset, e.reason))
}

fn truncate(input: &str) -> String {
    const MAX: usize = 256;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &input[..end])
}

#[cfg(test)]
mod tests;
