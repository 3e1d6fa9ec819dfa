//! Workload credentials (certificate chain, private key, trust bundle) loaded from PEM files,
//! validated, and rotated while connections stay open.
//!
//! [`Credentials`] is a cheap handle (an `Arc`) shared by every connector and acceptor of a
//! process. Inside, the current [`Snapshot`] sits in an [`arc_swap::ArcSwap`]: a handshake loads it
//! once (a few atomic operations, no lock) and uses it to the end, so a rotation never disturbs a
//! handshake in flight or a connection already open; the next handshake sees the new snapshot.
//!
//! # Validation
//! A new set of files replaces the current one only if all of these hold; otherwise the error is
//! returned (and logged by the watcher) and the old credentials stay in use:
//! - every file is PEM with at least one item of the right kind (chain: certificates; key: one
//!   PKCS#8, PKCS#1 or SEC1 private key; bundle: certificates);
//! - the key matches the leaf certificate;
//! - the leaf carries exactly one URI SAN, a valid SPIFFE ID ([`Identity`]);
//! - the leaf is valid now (not expired, not before its notBefore);
//! - the leaf chains to the trust bundle and may be used both as a TLS server and as a TLS client
//!   (extended key usages serverAuth and clientAuth, as SPIRE issues X509-SVIDs), since every
//!   workload both dials and accepts.
//!
//! # Trust domains and federation
//! The trust bundle verifies peers of the workload's **own** trust domain (the trust domain of its
//! certificate's SPIFFE ID) and nothing else. Peers of another trust domain are verified only
//! against that domain's bundle, added with [`Credentials::federate`] (SPIFFE federation): a CA
//! of `partner.org` cannot vouch for a `spiffe://example.org/...` identity, and a peer of a trust
//! domain without a bundle is refused. A union of every CA would let any federated CA mint
//! identities of every trust domain.
//!
//! # Watching
//! [`Credentials::watch`] spawns a task that polls the three files every
//! [`WatchConfig::poll_interval`] (default 1 s: workload certificates live for hours, so a second
//! of delay is harmless, and reading three small files once a second costs nothing). It reads the
//! files and compares a hash of their contents with the last one seen, which also catches rewrites
//! that keep the mtime and the length (coarse mtimes, same-size PEM). Polling rather than inotify
//! works the same on every platform and inside Kubernetes secret volumes, whose atomic symlink
//! swaps file-event watchers often miss. A half-finished rotation (new certificate, old key) fails
//! validation and is retried when the files change again; write files atomically (write and
//! rename, as [`IssuedCert::write`](crate::dev_ca::IssuedCert::write) does) to avoid the window.
//!
//! # Example
//! ```
//! use mesh_tls::dev_ca::{DevCa, WorkloadCertParams};
//! use mesh_tls::{Credentials, Identity};
//! use std::time::Duration;
//!
//! let ca = DevCa::new("example.org dev CA")?;
//! let id = Identity::parse("spiffe://example.org/ns/web/sa/frontend")?;
//! let cert = ca.issue(&WorkloadCertParams::new(id.clone(), Duration::from_secs(3600)))?;
//! let creds = Credentials::from_pem(&cert.cert_pem, &cert.key_pem, ca.cert_pem())?;
//! assert_eq!(creds.current().identity(), &id);
//! # Ok::<(), mesh_tls::TlsError>(())
//! ```

use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::TlsError;
use crate::identity::Identity;
use crate::{crypto_provider, ALPN_H2, ALPN_HTTP11};

/// Where a workload's credentials live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialPaths {
    /// PEM certificate chain: the leaf first, then intermediates (if any).
    pub chain: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM trust bundle: the CA certificates peers' chains must lead to.
    pub trust_bundle: PathBuf,
}

/// Configuration of the file watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// How often the files are read and compared. Default 1 s.
    pub poll_interval: Duration,
}

/// A shared, rotatable set of workload credentials. Clone it freely: clones share the state.
#[derive(Clone)]
pub struct Credentials {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<Snapshot>,
    /// Bundles of other trust domains, shared with every snapshot's client-certificate verifier.
    federation: Arc<ArcSwap<Federation>>,
    generation: watch::Sender<u64>,
    last_error: ArcSwapOption<TlsError>,
    /// Serialises installs so generations stay in order; never taken on the handshake path.
    install: Mutex<()>,
    provider: Arc<CryptoProvider>,
}

/// One validated set of credentials, as used by the handshakes that loaded it.
pub struct Snapshot {
    identity: Identity,
    certified_key: Arc<CertifiedKey>,
    /// The own trust domain's bundle.
    local: TrustStore,
    server_config: Arc<rustls::ServerConfig>,
    serial: Vec<u8>,
    not_after: SystemTime,
    generation: u64,
    fingerprint: u64,
}

/// Handle of the task started by [`Credentials::watch`]; dropping it stops the task, so keep it for
/// as long as the files should be watched (or [`detach`](CredentialWatcher::detach) it).
///
/// Dropping it by accident (`creds.watch(..)?;`) is a compile-time warning:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # fn f(creds: mesh_tls::Credentials, paths: mesh_tls::CredentialPaths) -> Result<(), mesh_tls::TlsError> {
/// creds.watch(paths, mesh_tls::WatchConfig::default())?; // the watcher stops at once
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping the CredentialWatcher stops watching the files at once; keep it, or call .detach()"]
pub struct CredentialWatcher {
    task: Option<JoinHandle<()>>,
}

/// The CA certificates of one trust domain, and the client-certificate verifier built over them.
#[derive(Clone)]
pub(crate) struct TrustStore {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

/// The bundles of other trust domains, by trust domain.
#[derive(Clone, Default)]
pub(crate) struct Federation(pub(crate) std::collections::BTreeMap<String, TrustStore>);

impl TrustStore {
    fn from_pem(
        bundle: &[u8],
        path: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let certs = parse_certs(bundle, path, "trust bundle")?;
        let mut roots = RootCertStore::empty();
        for (index, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|source| TlsError::InvalidTrustAnchor {
                    path: path.to_owned(),
                    index,
                    source: Box::new(source),
                })?;
        }
        let roots = Arc::new(roots);
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config {
                what: "client certificate verifier",
                source: Box::new(e),
            })?;
        Ok(TrustStore { roots, client })
    }
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// The raw bytes of one set of files.
struct Sources<'a> {
    chain: &'a [u8],
    key: &'a [u8],
    bundle: &'a [u8],
}

// === impl WatchConfig ===

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl WatchConfig {
    /// Checks that the interval is between 1 ms and 1 h.
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.poll_interval < Duration::from_millis(1)
            || self.poll_interval > Duration::from_secs(3600)
        {
            return Err(TlsError::InvalidConfig {
                field: "poll_interval",
                value: format!("{:?}", self.poll_interval),
                reason: "must be between 1ms and 1h",
            });
        }
        Ok(())
    }
}

// === impl CredentialPaths ===

impl CredentialPaths {
    /// Paths for the three files.
    pub fn new(
        chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        trust_bundle: impl Into<PathBuf>,
    ) -> Self {
        CredentialPaths {
            chain: chain.into(),
            key: key.into(),
            trust_bundle: trust_bundle.into(),
        }
    }

    fn memory() -> Self {
        CredentialPaths::new("<memory: chain>", "<memory: key>", "<memory: trust bundle>")
    }

    fn read_blocking(&self) -> Result<[Vec<u8>; 3], TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Io {
                path: p.to_owned(),
                source,
            })
        };
        Ok([
            read(&self.chain)?,
            read(&self.key)?,
            read(&self.trust_bundle)?,
        ])
    }

    async fn read(&self) -> Result<[Vec<u8>; 3], TlsError> {
        async fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
            tokio::fs::read(p).await.map_err(|source| TlsError::Io {
                path: p.to_owned(),
                source,
            })
        }
        Ok([
            read(&self.chain).await?,
            read(&self.key).await?,
            read(&self.trust_bundle).await?,
        ])
    }
}

// === impl Credentials ===

impl Credentials {
    /// Loads and validates credentials from PEM files. Reads the files with blocking I/O (three
    /// small files, once at startup).
    pub fn from_files(paths: &CredentialPaths) -> Result<Self, TlsError> {
        let [chain, key, bundle] = paths.read_blocking()?;
        Self::from_sources(
            Sources {
                chain: &chain,
                key: &key,
                bundle: &bundle,
            },
            paths,
        )
    }

    /// Validates credentials given as PEM text (see [`dev_ca`](crate::dev_ca)).
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<Self, TlsError> {
        Self::from_sources(
            Sources {
                chain: chain_pem.as_bytes(),
                key: key_pem.as_bytes(),
                bundle: trust_bundle_pem.as_bytes(),
            },
            &CredentialPaths::memory(),
        )
    }

    fn from_sources(src: Sources<'_>, paths: &CredentialPaths) -> Result<Self, TlsError> {
        let provider = crypto_provider();
        let federation = Arc::new(ArcSwap::from_pointee(Federation::default()));
        let snapshot = Snapshot::build(&src, paths, &provider, &federation, 0)?;
        Ok(Credentials {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(snapshot),
                federation,
                generation: watch::channel(0).0,
                last_error: ArcSwapOption::empty(),
                install: Mutex::new(()),
                provider,
            }),
        })
    }

    /// Trusts `bundle_pem` (PEM CA certificates) for peers of `trust_domain`, and for no other
    /// trust domain (SPIFFE federation; see [the module docs](self)). Replaces that domain's
    /// previous bundle; new handshakes use it at once, on both sides. The workload's own trust
    /// domain cannot be federated: its bundle comes with the credentials.
    pub fn federate(&self, trust_domain: &str, bundle_pem: &str) -> Result<(), TlsError> {
        mesh_identity::validate_trust_domain(trust_domain).map_err(|e| {
            TlsError::InvalidTrustDomain {
                input: trust_domain.to_owned(),
                offset: e.offset,
                reason: e.reason,
            }
        })?;
        if trust_domain == self.identity().trust_domain() {
            return Err(TlsError::InvalidConfig {
                field: "trust_domain",
                value: trust_domain.to_owned(),
                reason: "is this workload's own trust domain; its bundle is the credentials' trust bundle",
            });
        }
        let path = PathBuf::from(format!("<federated bundle of {trust_domain}>"));
        let store = TrustStore::from_pem(bundle_pem.as_bytes(), &path, &self.shared.provider)?;
        let _guard = self
            .shared
            .install
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut federation = Federation::clone(&self.shared.federation.load());
        federation.0.insert(trust_domain.to_owned(), store);
        self.shared.federation.store(Arc::new(federation));
        Ok(())
    }

    /// The bundle that verifies peers of `trust_domain`: the own one, a federated one, or none.
    pub(crate) fn trust_store_for(
        &self,
        snapshot: &Snapshot,
        trust_domain: &str,
    ) -> Option<TrustStore> {
        if trust_domain == snapshot.identity.trust_domain() {
            return Some(snapshot.local.clone());
        }
        self.shared.federation.load().0.get(trust_domain).cloned()
    }

    /// The credentials new handshakes use.
    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// The identity of the current certificate.
    pub fn identity(&self) -> Identity {
        self.shared.current.load().identity.clone()
    }

    /// A receiver of the generation number, incremented by every successful rotation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// The error of the last change of the files the watcher rejected, cleared by the next
    /// successful rotation.
    pub fn last_error(&self) -> Option<Arc<TlsError>> {
        self.shared.last_error.load_full()
    }

    /// Validates PEM text and, if valid, makes it the current credentials. Returns the new
    /// generation. On error the current credentials stay.
    pub fn replace_pem(
        &self,
        chain_pem: &str,
        key_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<u64, TlsError> {
        self.install(
            Sources {
                chain: chain_pem.as_bytes(),
                key: key_pem.as_bytes(),
                bundle: trust_bundle_pem.as_bytes(),
            },
            &CredentialPaths::memory(),
        )
    }

    /// Reads the files now and installs them if they are valid (what the watcher does on a
    /// change). Returns the new generation. On error the current credentials stay.
    pub async fn reload_from_files(&self, paths: &CredentialPaths) -> Result<u64, TlsError> {
        let [chain, key, bundle] = paths.read().await?;
        self.install(
            Sources {
                chain: &chain,
                key: &key,
                bundle: &bundle,
            },
            paths,
        )
    }

    /// Starts a task (on the current tokio runtime) that reloads the files when their contents
    /// change.
    ///
    /// # Errors
    ///
    /// [`TlsError::InvalidConfig`] for an invalid `config`, [`TlsError::NoRuntime`] outside a
    /// tokio runtime.
    pub fn watch(
        &self,
        paths: CredentialPaths,
        config: WatchConfig,
    ) -> Result<CredentialWatcher, TlsError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TlsError::NoRuntime {
            what: "the credential watcher",
        })?;
        let creds = self.clone();
        let task = runtime.spawn(async move { creds.watch_loop(paths, config).await });
        Ok(CredentialWatcher { task: Some(task) })
    }

    async fn watch_loop(self, paths: CredentialPaths, config: WatchConfig) {
        let mut seen = self.shared.current.load().fingerprint;
        let mut last_read_error: Option<String> = None;
        let mut interval = tokio::time::interval(config.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let files = match paths.read().await {
                Ok(files) => {
                    last_read_error = None;
                    files
                }
                Err(e) => {
                    // A file may be missing for a moment during a rotation; report each distinct
                    // error once rather than every poll.
                    let msg = e.to_string();
                    if last_read_error.as_ref() != Some(&msg) {
                        tracing::warn!(error = %msg, "cannot read credential files; keeping current credentials");
                        last_read_error = Some(msg);
                    }
                    continue;
                }
            };
            let [chain, key, bundle] = &files;
            let fp = fingerprint(chain, key, bundle);
            if fp == seen {
                continue;
            }
            // Remember the contents whether or not they are valid: invalid files are retried when
            // they change again, not every poll.
            seen = fp;
            let result = self.install(Sources { chain, key, bundle }, &paths);
            match result {
                Ok(generation) => tracing::info!(
                    generation,
                    identity = %self.shared.current.load().identity,
                    chain = %paths.chain.display(),
                    "rotated workload credentials"
                ),
                Err(error) => {
                    tracing::warn!(%error, "rejected new credentials; keeping the current ones");
                    self.shared.last_error.store(Some(Arc::new(error)));
                }
            }
        }
    }

    fn install(&self, src: Sources<'_>, paths: &CredentialPaths) -> Result<u64, TlsError> {
        let _guard = self
            .shared
            .install
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = self.shared.current.load().generation + 1;
        let snapshot = Snapshot::build(
            &src,
            paths,
            &self.shared.provider,
            &self.shared.federation,
            generation,
        )?;
        self.shared.current.store(Arc::new(snapshot));
        self.shared.last_error.store(None);
        self.shared.generation.send_replace(generation);
        Ok(generation)
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.shared.provider
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.load();
        f.debug_struct("Credentials")
            .field("identity", &current.identity)
            .field("generation", &current.generation)
            .finish_non_exhaustive()
    }
}

// === impl Snapshot ===

impl Snapshot {
    fn build(
        src: &Sources<'_>,
        paths: &CredentialPaths,
        provider: &Arc<CryptoProvider>,
        federation: &Arc<ArcSwap<Federation>>,
        generation: u64,
    ) -> Result<Self, TlsError> {
        let chain = parse_certs(src.chain, &paths.chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(src.key)
            .map_err(|e| pem_error(e, &paths.key, "private key"))?;
        let local = TrustStore::from_pem(src.bundle, &paths.trust_bundle, provider)?;
        let roots = local.roots.clone();

        let certified_key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                chain_path: paths.chain.clone(),
                key_path: paths.key.clone(),
            },
            source => TlsError::InvalidKey {
                path: paths.key.clone(),
                source: Box::new(source),
            },
        })?;
        let (leaf, intermediates) =
            certified_key
                .cert
                .split_first()
                .ok_or_else(|| TlsError::EmptyPem {
                    path: paths.chain.clone(),
                    what: "certificate",
                })?;

        let location = paths.chain.display().to_string();
        let (_, x509) =
            X509Certificate::from_der(leaf.as_ref()).map_err(|e| TlsError::CertificateParse {
                location: location.clone(),
                reason: e.to_string(),
            })?;
        let identity = Identity::from_x509(&x509, &location)?;
        let validity = x509.validity();
        let now = UnixTime::now();
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if validity.not_after.timestamp() < now_secs {
            return Err(TlsError::CertificateExpired {
                path: paths.chain.clone(),
                identity,
                not_after: validity.not_after.to_string(),
            });
        }
        if validity.not_before.timestamp() > now_secs {
            return Err(TlsError::CertificateNotYetValid {
                path: paths.chain.clone(),
                identity,
                not_before: validity.not_before.to_string(),
            });
        }
        let not_after = u64::try_from(validity.not_after.timestamp())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let serial = x509.raw_serial().to_vec();

        let untrusted =
            |usage: &'static str, source: rustls::Error| TlsError::UntrustedCertificate {
                path: paths.chain.clone(),
                bundle_path: paths.trust_bundle.clone(),
                identity: identity.clone(),
                usage,
                source: Box::new(source),
            };
        let parsed = ParsedCertificate::try_from(leaf).map_err(|e| untrusted("as a server", e))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| untrusted("as a server", e))?;
        local
            .client
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| untrusted("as a client", e))?;
        let client_verifier = Arc::new(crate::verify::SpiffeClientVerifier {
            local_trust_domain: identity.trust_domain().to_owned(),
            local: local.clone(),
            federation: federation.clone(),
        });

        let certified_key = Arc::new(certified_key);
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config {
                what: "server config",
                source: Box::new(e),
            })?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key.clone())));
        server_config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        // No resumption: every connection proves its identity with the current credentials, and a
        // rotated trust bundle applies to every new connection (see `client` docs).
        server_config.session_storage = Arc::new(NoServerSessionStorage {});
        server_config.send_tls13_tickets = 0;

        Ok(Snapshot {
            identity,
            certified_key,
            local,
            server_config: Arc::new(server_config),
            serial,
            not_after,
            generation,
            fingerprint: fingerprint(src.chain, src.key, src.bundle),
        })
    }

    /// The workload's identity (the leaf's SPIFFE ID).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    /// The leaf certificate's serial number (big-endian bytes).
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// When the leaf certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// 0 for the credentials loaded first, incremented by each rotation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    pub(crate) fn server_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.server_config
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("identity", &self.identity)
            .field("generation", &self.generation)
            .field("serial", &hex(&self.serial))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

// === impl CredentialWatcher ===

impl CredentialWatcher {
    /// Stops the watcher (also done on drop).
    pub fn stop(self) {}

    /// Lets the watcher run for as long as the runtime does, without a handle to stop it.
    pub fn detach(mut self) {
        // Dropping a JoinHandle (rather than aborting it) leaves the task running.
        drop(self.task.take());
    }
}

impl Drop for CredentialWatcher {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// === helpers ===

fn parse_certs(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e, path, what))?;
    if certs.is_empty() {
        return Err(TlsError::EmptyPem {
            path: path.to_owned(),
            what,
        });
    }
    Ok(certs)
}

fn pem_error(e: pem::Error, path: &Path, what: &'static str) -> TlsError {
    match e {
        pem::Error::NoItemsFound => TlsError::EmptyPem {
            path: path.to_owned(),
            what,
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            what,
            source,
        },
    }
}

fn fingerprint(chain: &[u8], key: &[u8], bundle: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    for part in [chain, key, bundle] {
        h.write_usize(part.len());
        h.write(part);
    }
    h.finish()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
