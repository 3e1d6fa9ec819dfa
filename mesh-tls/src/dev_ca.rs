//! A development certificate authority (rcgen): creates a CA and issues short-lived workload
//! certificates (X509-SVIDs) for tests, demos and local meshes.
//!
//! Certificates follow the SPIFFE X509-SVID profile as SPIRE issues them: one URI SAN holding the
//! SPIFFE ID, basic constraints `CA:FALSE`, key usage `digitalSignature`, extended key usages
//! `serverAuth` and `clientAuth`, ECDSA P-256 keys. DNS and IP SANs may be added (the SVID
//! profile allows them) so that tools which check host names, such as `curl`, can verify the
//! server too; mesh peers ignore them.
//!
//! Validity is explicit ([`WorkloadCertParams::not_before`]/[`not_after`](WorkloadCertParams::not_after)),
//! so tests can issue certificates that have already expired. [`WorkloadCertParams::new`] backdates
//! `not_before` by 5 minutes to tolerate clock skew between hosts. The CA made by [`DevCa::new`] is
//! valid for one year from an hour ago.
//!
//! This is not a production CA: the key lives in memory or in a PEM file, and there is no
//! revocation. Production meshes get certificates from SPIRE, cert-manager or their own CA and
//! hand them to [`Credentials`](crate::Credentials) as files.
//!
//! # Example
//! ```
//! use mesh_tls::dev_ca::{DevCa, WorkloadCertParams};
//! use mesh_tls::Identity;
//! use std::time::Duration;
//!
//! let ca = DevCa::new("example.org dev CA")?;
//! let id = Identity::parse("spiffe://example.org/ns/web/sa/frontend")?;
//! let cert = ca.issue(&WorkloadCertParams::new(id, Duration::from_secs(3600)))?;
//! assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! // cert.write("cert.pem", "key.pem")?; ca.write_cert("ca.pem")?;
//! # Ok::<(), mesh_tls::TlsError>(())
//! ```

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::TlsError;
use crate::identity::Identity;

/// Parameters of a CA certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaParams {
    /// The CA's common name.
    pub common_name: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// Parameters of a workload certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadCertParams {
    /// The SPIFFE ID put in the URI SAN.
    pub identity: Identity,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity (may be in the past, for tests).
    pub not_after: SystemTime,
    /// Extra DNS SANs (optional).
    pub dns_names: Vec<String>,
    /// Extra IP SANs (optional).
    pub ip_addresses: Vec<IpAddr>,
}

/// A certificate authority for development.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A workload certificate and its key, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The identity in the certificate.
    pub identity: Identity,
    /// The certificate (the whole chain: the leaf, issued directly by the CA).
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
    /// The certificate's DER encoding.
    pub cert_der: Vec<u8>,
    /// The serial number (big-endian bytes).
    pub serial: Vec<u8>,
}

// === impl CaParams ===

impl CaParams {
    /// A CA named `common_name`, valid from an hour ago for `lifetime`.
    pub fn new(common_name: impl Into<String>, lifetime: Duration) -> Self {
        let now = SystemTime::now();
        CaParams {
            common_name: common_name.into(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + lifetime,
        }
    }

    /// Checks that the validity period is not empty.
    pub fn validate(&self) -> Result<(), TlsError> {
        validate_period(self.not_before, self.not_after)
    }
}

// === impl WorkloadCertParams ===

impl WorkloadCertParams {
    /// A certificate for `identity`, valid from 5 minutes ago until `lifetime` from now.
    pub fn new(identity: Identity, lifetime: Duration) -> Self {
        let now = SystemTime::now();
        WorkloadCertParams {
            identity,
            not_before: now - Duration::from_secs(300),
            not_after: now + lifetime,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }

    /// Sets the validity period explicitly (e.g. entirely in the past).
    pub fn with_validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Adds an IP SAN.
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip_addresses.push(ip);
        self
    }

    /// Adds a DNS SAN.
    pub fn with_dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    /// Checks that the validity period is not empty.
    pub fn validate(&self) -> Result<(), TlsError> {
        validate_period(self.not_before, self.not_after)
    }
}

fn validate_period(not_before: SystemTime, not_after: SystemTime) -> Result<(), TlsError> {
    if not_after <= not_before {
        return Err(TlsError::InvalidConfig {
            field: "not_after",
            value: format!("{not_after:?}"),
            reason: "must be after not_before",
        });
    }
    Ok(())
}

// === impl DevCa ===

impl DevCa {
    /// A new CA named `common_name`, valid for one year from an hour ago.
    pub fn new(common_name: &str) -> Result<Self, TlsError> {
        Self::with_params(&CaParams::new(
            common_name,
            Duration::from_secs(365 * 24 * 3600),
        ))
    }

    /// A new CA with explicit parameters.
    pub fn with_params(params: &CaParams) -> Result<Self, TlsError> {
        params.validate()?;
        let key = KeyPair::generate().map_err(|source| TlsError::DevCa {
            what: "generate the CA key",
            source,
        })?;
        let mut cert_params = CertificateParams::default();
        cert_params.not_before = OffsetDateTime::from(params.not_before);
        cert_params.not_after = OffsetDateTime::from(params.not_after);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshwork");
        dn.push(DnType::CommonName, params.common_name.as_str());
        cert_params.distinguished_name = dn;
        cert_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        cert_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = cert_params
            .self_signed(&key)
            .map_err(|source| TlsError::DevCa {
                what: "self-sign the CA certificate",
                source,
            })?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            issuer: Issuer::new(cert_params, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key (as written by [`DevCa::write_cert`] and
    /// [`DevCa::write_key`]).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| TlsError::DevCa {
            what: "parse the CA key",
            source,
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|source| TlsError::DevCa {
            what: "parse the CA certificate",
            source,
        })?;
        Ok(DevCa {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (the trust bundle for workloads of this CA).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes the CA certificate to `path` (atomically).
    pub fn write_cert(&self, path: impl AsRef<Path>) -> Result<(), TlsError> {
        write_file_atomically(path.as_ref(), self.cert_pem.as_bytes(), false)
    }

    /// Writes the CA key to `path` (atomically; mode 0600 on Unix).
    pub fn write_key(&self, path: impl AsRef<Path>) -> Result<(), TlsError> {
        write_file_atomically(path.as_ref(), self.key_pem.as_bytes(), true)
    }

    /// Issues a workload certificate with a fresh ECDSA P-256 key.
    pub fn issue(&self, params: &WorkloadCertParams) -> Result<IssuedCert, TlsError> {
        params.validate()?;
        let key = KeyPair::generate().map_err(|source| TlsError::DevCa {
            what: "generate a workload key",
            source,
        })?;
        let mut cert_params = CertificateParams::default();
        cert_params.not_before = OffsetDateTime::from(params.not_before);
        cert_params.not_after = OffsetDateTime::from(params.not_after);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshwork");
        cert_params.distinguished_name = dn;
        let ia5 = |s: &str, what: &'static str| {
            Ia5String::try_from(s).map_err(|source| TlsError::DevCa { what, source })
        };
        let mut sans = vec![SanType::URI(ia5(
            params.identity.as_str(),
            "encode the SPIFFE ID",
        )?)];
        for name in &params.dns_names {
            sans.push(SanType::DnsName(ia5(name, "encode a DNS name")?));
        }
        sans.extend(params.ip_addresses.iter().copied().map(SanType::IpAddress));
        cert_params.subject_alt_names = sans;
        cert_params.is_ca = IsCa::ExplicitNoCa;
        cert_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        cert_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        cert_params.use_authority_key_identifier_extension = true;
        let cert = cert_params
            .signed_by(&key, &self.issuer)
            .map_err(|source| TlsError::DevCa {
                what: "sign a workload certificate",
                source,
            })?;
        let cert_der = cert.der().to_vec();
        let serial = X509Certificate::from_der(&cert_der)
            .map(|(_, x509)| x509.raw_serial().to_vec())
            .map_err(|e| TlsError::CertificateParse {
                location: "issued certificate".to_owned(),
                reason: e.to_string(),
            })?;
        Ok(IssuedCert {
            identity: params.identity.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der,
            serial,
        })
    }
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

// === impl IssuedCert ===

impl IssuedCert {
    /// Writes the certificate and the key (mode 0600 on Unix), each atomically (temporary file
    /// and rename, so a watcher never reads half a file). The certificate is written first.
    pub fn write(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<(), TlsError> {
        write_file_atomically(cert_path.as_ref(), self.cert_pem.as_bytes(), false)?;
        write_file_atomically(key_path.as_ref(), self.key_pem.as_bytes(), true)
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .field("serial", &crate::credentials::hex(&self.serial))
            .finish_non_exhaustive()
    }
}

/// Writes `contents` to a temporary file next to `path`, then renames it over `path`.
/// `private` makes the file readable by its owner only (Unix).
pub fn write_file_atomically(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| TlsError::Io { path: p, source }
    };
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
