//! Interop with the `openssl` and `curl` command-line tools (OpenSSL's TLS stack, not rustls).
//!
//! These tools are installed by the project's test command, `bash scripts/test.sh` (Debian
//! packages `openssl` and `curl`). If they are missing the tests fail, saying so, rather than pass without testing.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mesh_tls::dev_ca::DevCa;
use mesh_tls::server::AcceptorConfig;

use crate::support::*;

fn require_tool(name: &str, version_arg: &str) {
    match Command::new(name).arg(version_arg).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`{name} {version_arg}` failed ({}): run `bash scripts/test.sh` (the README's test command), which installs the Debian packages `openssl` and `curl`", out.status),
        Err(e) => panic!("`{name}` is not installed ({e}): run `bash scripts/test.sh` (the README's test command), which installs the Debian packages `openssl` and `curl`"),
    }
}

/// Runs a command off the async runtime, with a time limit.
async fn run(mut cmd: Command, stdin: Option<&'static [u8]>) -> Output {
    let task = tokio::task::spawn_blocking(move || {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input).expect("write stdin");
        }
        child.wait_with_output().expect("wait")
    });
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("the tool finished within 120 s")
        .expect("join")
}

struct Pki {
    dir: tempfile::TempDir,
    ca: DevCa,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("interop CA").unwrap();
        ca.write_cert(dir.path().join("ca.pem")).unwrap();
        issue(&ca, CLIENT_ID)
            .write(dir.path().join("client.crt"), dir.path().join("client.key"))
            .unwrap();
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_certificate_gets_200() {
    init_tracing();
    require_tool("curl", "--version");
    let pki = Pki::new();
    let server = start_echo_server(
        creds(&issue(&pki.ca, SERVER_ID), pki.ca.cert_pem()),
        AcceptorConfig::default(),
    )
    .await;

    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "60", "--tlsv1.3"])
        .args(["--cacert", &pki.path("ca.pem")])
        .args([
            "--cert",
            &pki.path("client.crt"),
            "--key",
            &pki.path("client.key"),
        ])
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://{}/hello", server.addr));
    let out = run(cmd, None).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!("{CLIENT_ID}\n200"),
        "curl saw the server's answer naming its identity"
    );

    // Without a client certificate curl gets no response.
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "60", "--tlsv1.3"])
        .args(["--cacert", &pki.path("ca.pem")])
        .arg(format!("https://{}/hello", server.addr));
    let out = run(cmd, None).await;
    assert!(
        !out.status.success(),
        "curl without a client certificate must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_completes_a_tls13_handshake_and_sees_the_server_certificate() {
    init_tracing();
    require_tool("openssl", "version");
    let pki = Pki::new();
    let server_cert = issue(&pki.ca, SERVER_ID);
    let server = start_echo_server(
        creds(&server_cert, pki.ca.cert_pem()),
        AcceptorConfig::default(),
    )
    .await;

    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .args(["-connect", &server.addr.to_string()])
        .args([
            "-tls1_3",
            "-alpn",
            "http/1.1",
            "-verify_return_error",
            "-ign_eof",
        ])
        .args(["-CAfile", &pki.path("ca.pem")])
        .args([
            "-cert",
            &pki.path("client.crt"),
            "-key",
            &pki.path("client.key"),
        ]);
    let out = run(
        cmd,
        Some(b"GET / HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("TLSv1.3"),
        "not TLS 1.3:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("Verify return code: 0 (ok)"),
        "server chain not verified:\n{stdout}\n{stderr}"
    );
    // The server certificate is shown; it is the one we issued.
    let shown = stdout
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .unwrap_or_else(|| panic!("no certificate in the output:\n{stdout}"));
    let shown_pem = format!("-----BEGIN CERTIFICATE-----{shown}-----END CERTIFICATE-----\n");
    assert_eq!(certs_of(&shown_pem)[0].as_ref(), &server_cert.cert_der[..]);
    assert!(
        stdout.contains("HTTP/1.1 200"),
        "no HTTP response:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(CLIENT_ID),
        "the server saw the client identity:\n{stdout}"
    );
}
