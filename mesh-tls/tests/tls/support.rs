//! Shared scaffolding: a dev PKI in a temp dir, an mTLS echo server on 127.0.0.1 that records
//! what it accepted, hyper clients, and raw rustls configs for peers that misbehave.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_tls::client::{MeshConnector, TlsConnector};
use mesh_tls::dev_ca::{DevCa, IssuedCert, WorkloadCertParams};
use mesh_tls::server::{serve_connection, AcceptorConfig, TlsAcceptor};
use mesh_tls::{CredentialPaths, Credentials, Identity, PeerIdentity, TlsError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub(crate) const SERVER_ID: &str = "spiffe://example.org/ns/shop/sa/cart";
pub(crate) const CLIENT_ID: &str = "spiffe://example.org/ns/web/sa/frontend";
/// Generous bound for anything that should take milliseconds (2 shared cores, debug build).
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mesh_tls=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) fn id(s: &str) -> Identity {
    Identity::parse(s).expect("valid identity")
}

pub(crate) fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// A workload certificate valid for an hour, with an IP SAN 127.0.0.1 so that host-name checking
/// tools (curl, a webpki verifier) accept it as a server certificate too.
pub(crate) fn issue(ca: &DevCa, identity: &str) -> IssuedCert {
    ca.issue(
        &WorkloadCertParams::new(id(identity), hour()).with_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    )
    .expect("issue certificate")
}

/// A certificate that expired an hour ago.
pub(crate) fn issue_expired(ca: &DevCa, identity: &str) -> IssuedCert {
    let now = SystemTime::now();
    let params = WorkloadCertParams::new(id(identity), hour())
        .with_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .with_validity(now - 2 * hour(), now - hour());
    ca.issue(&params).expect("issue expired certificate")
}

pub(crate) fn creds(cert: &IssuedCert, bundle_pem: &str) -> Credentials {
    Credentials::from_pem(&cert.cert_pem, &cert.key_pem, bundle_pem).expect("valid credentials")
}

/// Files of one workload in a directory.
pub(crate) struct Files {
    pub(crate) paths: CredentialPaths,
}

impl Files {
    pub(crate) fn write(
        dir: &std::path::Path,
        name: &str,
        cert: &IssuedCert,
        bundle_pem: &str,
    ) -> Files {
        let paths = CredentialPaths::new(
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}-bundle.pem")),
        );
        cert.write(&paths.chain, &paths.key)
            .expect("write cert and key");
        mesh_tls::dev_ca::write_file_atomically(&paths.trust_bundle, bundle_pem.as_bytes(), false)
            .expect("write bundle");
        Files { paths }
    }

    pub(crate) fn rewrite(&self, cert: &IssuedCert) {
        cert.write(&self.paths.chain, &self.paths.key)
            .expect("rewrite cert and key");
    }

    pub(crate) fn path(&self, which: &str) -> PathBuf {
        match which {
            "chain" => self.paths.chain.clone(),
            "key" => self.paths.key.clone(),
            _ => self.paths.trust_bundle.clone(),
        }
    }
}

/// What the server saw for one inbound connection.
#[derive(Clone, Debug)]
pub(crate) enum Seen {
    Accepted {
        peer: PeerIdentity,
        client_leaf: Option<Vec<u8>>,
        alpn: Option<Vec<u8>>,
    },
    Rejected(String),
}

/// A running test server.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until the server has seen `n` connections.
    pub(crate) async fn wait_for_connections(&self, n: usize) -> Vec<Seen> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let seen = self.seen();
                if seen.len() >= n {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("server saw the expected connections")
    }
}

/// The app: answers 200 with the caller's identity as the body.
pub(crate) async fn echo_identity(
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let peer = req.extensions().get::<PeerIdentity>().cloned();
    let body = match peer {
        Some(peer) => peer.to_string(),
        None => "<no PeerIdentity extension>".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Starts a server accepting with `acceptor` and serving `service`, recording each connection.
pub(crate) async fn start_server<S, B>(acceptor: TlsAcceptor, service: S) -> TestServer
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<mesh_tls::BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<mesh_tls::BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = service.clone();
            let record = record.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(accepted) => {
                        record.lock().expect("lock").push(Seen::Accepted {
                            peer: accepted.peer_identity().clone(),
                            client_leaf: accepted
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec()),
                            alpn: accepted.alpn_protocol().map(<[u8]>::to_vec),
                        });
                        let _ = serve_connection(accepted, service).await;
                    }
                    Err(e) => record.lock().expect("lock").push(Seen::Rejected(chain(&e))),
                }
            });
        }
    });
    TestServer { addr, seen, task }
}

pub(crate) async fn start_echo_server(creds: Credentials, config: AcceptorConfig) -> TestServer {
    let acceptor = TlsAcceptor::new(creds, config).expect("acceptor");
    start_server(acceptor, tower::service_fn(echo_identity)).await
}

pub(crate) type MeshClient = Client<MeshConnector<HttpConnector>, Empty<Bytes>>;

pub(crate) fn mesh_client(creds: &Credentials, expected: &str) -> MeshClient {
    let tls = TlsConnector::new(creds, id(expected)).expect("connector");
    Client::builder(TokioExecutor::new()).build(MeshConnector::http(tls))
}

pub(crate) fn plain_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) fn uri(addr: SocketAddr, path: &str) -> http::Uri {
    format!("http://{addr}{path}").parse().expect("uri")
}

/// GETs `path` and returns status, body and the response's `PeerIdentity` extension.
pub(crate) async fn get<C>(
    client: &Client<C, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<
    (
        http::StatusCode,
        String,
        Option<PeerIdentity>,
        http::Version,
    ),
    String,
>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let rsp = tokio::time::timeout(PATIENCE, client.get(uri(addr, path)))
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = rsp.status();
    let version = rsp.version();
    let peer = rsp.extensions().get::<PeerIdentity>().cloned();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        peer,
        version,
    ))
}

// === raw rustls peers, for behaviour our own types would not produce ===

pub(crate) fn certs_of(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates")
}

pub(crate) fn key_of(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key")
}

/// A plain webpki rustls client trusting `ca_pem`, presenting `client_cert` if given.
pub(crate) fn raw_client_config(
    ca_pem: &str,
    client_cert: Option<&IssuedCert>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_of(ca_pem) {
        roots.add(cert).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(mesh_tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let config = match client_cert {
        Some(cert) => builder
            .with_client_auth_cert(certs_of(&cert.cert_pem), key_of(&cert.key_pem))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Does a raw handshake to `addr`, then one HTTP/1.1 request; returns the response head or the
/// error. A server that rejects the client certificate fails this after the client's side of the
/// TLS 1.3 handshake, on the first read.
pub(crate) async fn raw_request(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(PATIENCE, async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if out.is_empty() {
            return Err("connection closed without a response".to_owned());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .map_err(|_| "timed out".to_owned())?
}

/// Asserts that `result` is an error and returns it.
pub(crate) fn expect_tls_err<T: std::fmt::Debug>(result: Result<T, TlsError>) -> TlsError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// The error and each of its causes once, joined with ": " (what `anyhow`'s `{:#}` prints).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
