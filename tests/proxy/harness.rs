#![allow(unreachable_pub)]
//! Starting mesh-proxy processes, certificates for them, and small HTTP helpers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork::discovery::{Discovery, Endpoint};
use meshwork::tls::dev_ca::{DevCa, WorkloadCertParams};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// The mesh-proxy example binary, built once per test process with the test's own profile.
pub fn binary() -> PathBuf {
    crate::support::example_binary("mesh-proxy")
}

/// A port for a proxy's listener, taken below Linux's ephemeral range (32768–60999): the
/// backends' `bind(0)` and every outgoing connection take their ports from that range, so a proxy
/// restarted on its old ports (`Proxy::restart`) cannot find one taken by another test meanwhile.
/// Each test process starts at its own offset and never hands out the same port twice.
fn free_port() -> SocketAddr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 2_000, "no free port below the ephemeral range");
        let addr = SocketAddr::from(([127, 0, 0, 1], base + n));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A dev CA and workload certificates in a temporary directory.
pub struct Certs {
    dir: tempfile::TempDir,
    ca: DevCa,
}

impl Certs {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::new("proxy test CA").expect("CA");
        ca.write_cert(dir.path().join("ca.pem")).expect("write CA");
        let certs = Self { dir, ca };
        for name in ["a", "b"] {
            let id = meshwork::tls::Identity::parse(&certs.id(name)).expect("identity");
            let params = WorkloadCertParams::new(id, Duration::from_secs(3600));
            let issued = certs.ca.issue(&params).expect("issue");
            issued
                .write(
                    certs.path(&format!("{name}.pem")),
                    certs.path(&format!("{name}.key")),
                )
                .expect("write");
        }
        certs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn id(&self, name: &str) -> String {
        format!("spiffe://proxy.test/ns/t/sa/{name}")
    }

    /// The `[tls]` section for workload `name`.
    pub fn tls(&self, name: &str, mode: &str) -> String {
        format!(
            "[tls]\nchain = {:?}\nkey = {:?}\ntrust_bundle = {:?}\nmode = \"{mode}\"\n",
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
            self.path("ca.pem"),
        )
    }

    /// Workload `name`'s credentials.
    pub fn credentials(&self, name: &str) -> meshwork::tls::Credentials {
        meshwork::tls::Credentials::from_files(&meshwork::tls::CredentialPaths {
            chain: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            trust_bundle: self.path("ca.pem"),
        })
        .expect("credentials")
    }

    /// A meshwork client with workload `name`'s credentials, calling `addr` which must prove `peer`.
    pub fn mesh_client(
        &self,
        name: &str,
        addr: SocketAddr,
        peer: &str,
    ) -> meshwork::Client<Full<Bytes>> {
        let creds = meshwork::tls::Credentials::from_files(&meshwork::tls::CredentialPaths {
            chain: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            trust_bundle: self.path("ca.pem"),
        })
        .expect("credentials");
        let discovery = Discovery::fixed([Endpoint::new(addr).with_identity(self.id(peer))])
            .expect("discovery");
        meshwork::client(discovery)
            .tls(creds)
            .build()
            .expect("client")
    }
}

/// A running mesh-proxy process, killed on drop.
pub struct Proxy {
    name: &'static str,
    child: Option<Child>,
    dir: tempfile::TempDir,
    text: String,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub async fn start(name: &'static str, text: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut proxy = Proxy {
            name,
            child: None,
            dir,
            text: text.to_owned(),
            outbound: free_port(),
            inbound: free_port(),
            admin: free_port(),
        };
        proxy.write_config(text);
        proxy.spawn().await;
        proxy
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Writes `text` as the configuration, with this proxy's ports put in.
    pub fn write_config(&self, text: &str) {
        let mut text = text.replace(
            "[outbound]\n",
            &format!("[outbound]\nlisten = \"{}\"\n", self.outbound),
        );
        if !text.contains("[outbound]") {
            text.push_str(&format!("\n[outbound]\nlisten = \"{}\"\n", self.outbound));
        }
        text = text.replace(
            "[inbound]\n",
            &format!("[inbound]\nlisten = \"{}\"\n", self.inbound),
        );
        text.push_str(&format!("\n[admin]\nlisten = \"{}\"\n", self.admin));
        // Write then rename, so the watcher never reads half a file.
        let tmp = self.dir.path().join("proxy.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.file()).expect("rename config");
    }

    async fn spawn(&mut self) {
        let child = Command::new(binary())
            .arg("run")
            .arg(self.file())
            .env("MESH_PROXY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start mesh-proxy");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(rsp) = try_get_status(self.admin, "/ready").await {
                if rsp == 200 {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mesh-proxy {} exited at start: {status}", self.name);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mesh-proxy {} not ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, wait for the drain, and start again on the same ports with the same file.
    pub async fn restart(mut self) -> Proxy {
        self.signal_term();
        self.wait_exit(Duration::from_secs(30))
            .expect("exited after SIGTERM");
        let _ = &self.text;
        self.spawn().await;
        self
    }

    /// The process's resident set size in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn signal_term(&self) {
        self.signal("-TERM");
    }

    /// SIGHUP: reload the configuration file.
    #[allow(dead_code)] // for the soak (`examples/soak.rs`), which includes this file
    pub fn signal_hup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, which: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([which, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {which}");
        }
    }

    /// The process id, while it runs.
    #[allow(dead_code)] // for the soak (`examples/soak.rs`), which includes this file
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn admin_get(&self, path: &str) -> String {
        let rsp = get(self.admin, path, &[], false).await;
        let body = rsp
            .into_body()
            .collect()
            .await
            .expect("admin body")
            .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Polls an admin page until it contains `needle` (20 s at most).
    pub async fn eventually_admin(&self, path: &str, needle: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if self.admin_get(path).await.contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn send(
    addr: SocketAddr,
    uri: &str,
    headers: &[(&str, &str)],
    http2: bool,
) -> Result<http::Response<Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let io = TokioIo::new(tcp);
    if http2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())
    }
}

/// One request on a new connection (absolute-form if `uri` is absolute); panics on failure.
pub async fn get(
    addr: SocketAddr,
    uri: &str,
    headers: &[(&str, &str)],
    http2: bool,
) -> http::Response<Incoming> {
    tokio::time::timeout(Duration::from_secs(30), send(addr, uri, headers, http2))
        .await
        .expect("response in time")
        .expect("response")
}

async fn try_get_status(addr: SocketAddr, uri: &str) -> Result<u16, String> {
    let rsp = tokio::time::timeout(Duration::from_secs(5), send(addr, uri, &[], false))
        .await
        .map_err(|_| "timeout".to_owned())??;
    Ok(rsp.status().as_u16())
}

/// A whole request/response (body read), as a status or what went wrong.
pub async fn try_get(addr: SocketAddr, uri: &str) -> Result<u16, String> {
    let fut = async {
        let rsp = send(addr, uri, &[], false).await?;
        let status = rsp.status().as_u16();
        rsp.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timeout".to_owned())?
}

/// Reads an HTTP/1 response head (up to the blank line).
pub async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert!(n == 1, "connection closed before the head ended");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A backend that answers an upgrade with 101 and then echoes every byte.
pub async fn echo_upgrade_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|mut req: http::Request<Incoming>| async move {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(upgraded) = upgrade.await {
                                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            }
                        });
                        http::Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                            .body(Empty::<Bytes>::new())
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Clients that keep calling one URI through a proxy while a test changes things under them
/// (bounded: 4 workers, at most 15 s each).
pub struct Callers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Result<u16, String>>>>,
}

impl Callers {
    /// Starts 4 workers calling `uri` through `addr` back to back.
    pub fn start(addr: SocketAddr, uri: &'static str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..4)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                    while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                        statuses.push(try_get(addr, uri).await);
                    }
                    statuses
                })
            })
            .collect();
        Callers { stop, workers }
    }

    /// Stops the workers; asserts that they kept calling and that every request answered 200.
    pub async fn stop_and_expect_all_ok(self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.expect("worker"));
        }
        let failed: Vec<_> = all.iter().filter(|s| **s != Ok(200)).collect();
        assert!(all.len() > 20, "the client kept calling: {}", all.len());
        assert!(
            failed.is_empty(),
            "{} of {} failed: {:?}",
            failed.len(),
            all.len(),
            &failed[..failed.len().min(5)]
        );
    }
}
