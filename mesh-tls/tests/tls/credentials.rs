//! Loading and validating credentials.

use mesh_tls::dev_ca::DevCa;
use mesh_tls::{CredentialPaths, Credentials, TlsError};

use crate::support::*;

#[test]
fn valid_credentials_expose_identity_serial_and_expiry() {
    let ca = DevCa::new("mesh CA").unwrap();
    let cert = issue(&ca, SERVER_ID);
    let c = creds(&cert, ca.cert_pem());
    let snap = c.current();
    assert_eq!(snap.identity(), &id(SERVER_ID));
    assert_eq!(snap.serial(), &cert.serial[..]);
    assert_eq!(snap.chain()[0].as_ref(), &cert.cert_der[..]);
    assert_eq!(snap.generation(), 0);
    assert!(snap.not_after() > std::time::SystemTime::now());
}

#[test]
fn expired_certificate_is_rejected() {
    let ca = DevCa::new("mesh CA").unwrap();
    let cert = issue_expired(&ca, SERVER_ID);
    let err = Credentials::from_pem(&cert.cert_pem, &cert.key_pem, ca.cert_pem()).unwrap_err();
    assert!(
        matches!(err, TlsError::CertificateExpired { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("certificate for {SERVER_ID} expired at")),
        "{err}"
    );
}

#[test]
fn key_of_another_certificate_is_rejected() {
    let ca = DevCa::new("mesh CA").unwrap();
    let a = issue(&ca, SERVER_ID);
    let b = issue(&ca, CLIENT_ID);
    let err = Credentials::from_pem(&a.cert_pem, &b.key_pem, ca.cert_pem()).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn certificate_not_signed_by_the_bundle_is_rejected() {
    let ca = DevCa::new("mesh CA").unwrap();
    let other = DevCa::new("other CA").unwrap();
    let cert = issue(&other, SERVER_ID);
    let err = Credentials::from_pem(&cert.cert_pem, &cert.key_pem, ca.cert_pem()).unwrap_err();
    assert!(
        matches!(err, TlsError::UntrustedCertificate { .. }),
        "{err:?}"
    );
    assert!(chain(&err).contains("UnknownIssuer"), "{err}");
}

#[test]
fn certificate_without_spiffe_id_is_rejected() {
    let ca = DevCa::new("mesh CA").unwrap();
    let plain = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let err = Credentials::from_pem(
        &plain.cert.pem(),
        &plain.signing_key.serialize_pem(),
        ca.cert_pem(),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::MissingIdentity { .. }), "{err:?}");
}

#[test]
fn bad_pem_is_rejected_with_the_file_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("mesh CA").unwrap();
    let files = Files::write(dir.path(), "svc", &issue(&ca, SERVER_ID), ca.cert_pem());
    assert!(Credentials::from_files(&files.paths).is_ok());

    std::fs::write(files.path("key"), "not a key\n").unwrap();
    let err = Credentials::from_files(&files.paths).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::EmptyPem {
                what: "private key",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no private key found in PEM",
            files.path("key").display()
        )
    );

    std::fs::write(
        files.path("chain"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Credentials::from_files(&files.paths).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Pem {
                what: "certificate chain",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&files.path("chain").display().to_string()),
        "{err}"
    );

    let missing = CredentialPaths::new(
        dir.path().join("nope.crt"),
        files.path("key"),
        files.path("bundle"),
    );
    let err = Credentials::from_files(&missing).unwrap_err();
    assert!(matches!(err, TlsError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.crt"), "{err}");
}

#[test]
fn replace_keeps_old_credentials_on_error() {
    let ca = DevCa::new("mesh CA").unwrap();
    let first = issue(&ca, SERVER_ID);
    let c = creds(&first, ca.cert_pem());
    let expired = issue_expired(&ca, SERVER_ID);
    assert!(c
        .replace_pem(&expired.cert_pem, &expired.key_pem, ca.cert_pem())
        .is_err());
    assert_eq!(c.current().serial(), &first.serial[..]);
    assert_eq!(c.current().generation(), 0);

    let second = issue(&ca, SERVER_ID);
    assert_eq!(
        c.replace_pem(&second.cert_pem, &second.key_pem, ca.cert_pem())
            .unwrap(),
        1
    );
    assert_eq!(c.current().serial(), &second.serial[..]);
}

#[test]
fn dev_ca_round_trips_through_pem() {
    let ca = DevCa::new("mesh CA").unwrap();
    let reloaded = DevCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    // A certificate issued by the reloaded CA chains to the original CA certificate.
    let cert = issue(&reloaded, CLIENT_ID);
    assert!(Credentials::from_pem(&cert.cert_pem, &cert.key_pem, ca.cert_pem()).is_ok());
}

#[test]
fn watching_outside_a_runtime_is_an_error_not_a_panic() {
    let ca = DevCa::new("mesh CA").unwrap();
    let cert = issue(&ca, SERVER_ID);
    let c = creds(&cert, ca.cert_pem());
    let paths = CredentialPaths::new("cert.pem", "key.pem", "ca.pem");
    let err = c
        .watch(paths, mesh_tls::WatchConfig::default())
        .expect_err("no runtime");
    assert!(matches!(err, TlsError::NoRuntime { .. }), "{err:?}");
}

/// Asserts that no error of the chain repeats its source's message: a reporter that prints the
/// chain (`anyhow`'s `{:#}`, `l5d-err`) then shows each cause once.
pub(crate) fn assert_each_cause_once(error: &(dyn std::error::Error + 'static)) {
    let mut next = Some(error);
    let mut depth = 0;
    while let Some(error) = next {
        if let Some(source) = error.source() {
            let (outer, inner) = (error.to_string(), source.to_string());
            assert!(
                !outer.contains(&inner),
                "{outer:?} repeats its source {inner:?}"
            );
            depth += 1;
        }
        next = error.source();
    }
    assert!(depth >= 1, "{error} has no source to check");
}

#[test]
fn error_chains_print_each_cause_once() {
    let missing = Credentials::from_files(&CredentialPaths::new(
        "/nonexistent/chain.pem",
        "/nonexistent/key.pem",
        "/nonexistent/bundle.pem",
    ))
    .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/chain.pem"),
        "{missing}"
    );
    assert_each_cause_once(&missing);

    let ca = DevCa::new("test CA").unwrap();
    let other = DevCa::new("other CA").unwrap();
    let foreign = issue(&other, CLIENT_ID);
    let untrusted = expect_tls_err(Credentials::from_pem(
        &foreign.cert_pem,
        &foreign.key_pem,
        ca.cert_pem(),
    ));
    assert_each_cause_once(&untrusted);

    let ours = issue(&ca, CLIENT_ID);
    let bad_pem = expect_tls_err(Credentials::from_pem(
        &ours.cert_pem,
        &ours.key_pem,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    ));
    assert_each_cause_once(&bad_pem);
}
