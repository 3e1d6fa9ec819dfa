//! Rotation: new handshakes use new credentials, open connections carry on, invalid files are
//! refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_tls::client::TlsConnector;
use mesh_tls::dev_ca::{write_file_atomically, DevCa};
use mesh_tls::server::AcceptorConfig;
use mesh_tls::{Credentials, PeerIdentity, TlsError, WatchConfig};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::support::*;

const TOTAL: usize = 2_000;
const WORKERS: usize = 4;
const FRESH_CLIENT_EVERY: usize = 50;

fn fast_watch() -> WatchConfig {
    WatchConfig {
        poll_interval: Duration::from_millis(50),
    }
}

async fn wait_for_generation(rx: &mut watch::Receiver<u64>, generation: u64) {
    tokio::time::timeout(PATIENCE, rx.wait_for(|g| *g >= generation))
        .await
        .expect("rotation within the time limit")
        .expect("credentials alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request_and_new_connections_use_the_new_certificates() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("mesh CA").unwrap();
    let server_files = Files::write(dir.path(), "server", &issue(&ca, SERVER_ID), ca.cert_pem());
    let client_files = Files::write(dir.path(), "client", &issue(&ca, CLIENT_ID), ca.cert_pem());
    let server_creds = Credentials::from_files(&server_files.paths).unwrap();
    let client_creds = Credentials::from_files(&client_files.paths).unwrap();
    let _server_watch = server_creds
        .watch(server_files.paths.clone(), fast_watch())
        .unwrap();
    let _client_watch = client_creds
        .watch(client_files.paths.clone(), fast_watch())
        .unwrap();
    let server = start_echo_server(server_creds.clone(), AcceptorConfig::default()).await;

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    // Worker 0 keeps one HTTP/2 connection, opened before the rotation, for the whole run; the
    // others open a fresh connection every FRESH_CLIENT_EVERY requests.
    let long_lived = mesh_client(&client_creds, SERVER_ID);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (done, failures, client_creds, long_lived) = (
            done.clone(),
            failures.clone(),
            client_creds.clone(),
            long_lived.clone(),
        );
        let addr = server.addr;
        workers.push(tokio::spawn(async move {
            let mut client = long_lived;
            for i in 0..TOTAL / WORKERS {
                if w != 0 && i % FRESH_CLIENT_EVERY == 0 {
                    client = mesh_client(&client_creds, SERVER_ID);
                }
                match get(&client, addr, "/").await {
                    Ok((status, body, _, _)) if status == 200 && body == CLIENT_ID => {}
                    other => {
                        tracing::error!(worker = w, request = i, ?other, "request failed");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Rotate both sides halfway through.
    tokio::time::timeout(PATIENCE, async {
        while done.load(Ordering::Relaxed) < TOTAL / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("half of the requests done");
    let (mut server_gen, mut client_gen) = (server_creds.subscribe(), client_creds.subscribe());
    let new_server = issue(&ca, SERVER_ID);
    let new_client = issue(&ca, CLIENT_ID);
    server_files.rewrite(&new_server);
    client_files.rewrite(&new_client);
    wait_for_generation(&mut server_gen, 1).await;
    wait_for_generation(&mut client_gen, 1).await;
    let rotated_at = done.load(Ordering::Relaxed);
    assert!(
        rotated_at < TOTAL,
        "the rotation happened while requests were still being sent ({rotated_at} done)"
    );

    for worker in workers {
        tokio::time::timeout(Duration::from_secs(300), worker)
            .await
            .expect("load finishes in bounded time")
            .unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), TOTAL);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed across the rotation"
    );
    assert_eq!(server_creds.current().serial(), &new_server.serial[..]);
    assert_eq!(client_creds.current().serial(), &new_client.serial[..]);

    // Connections opened after the rotation presented the new client certificate.
    let seen = server.seen();
    let leaf_count = |der: &[u8]| {
        seen.iter()
            .filter(|s| matches!(s, Seen::Accepted { client_leaf: Some(l), .. } if l == der))
            .count()
    };
    assert!(
        leaf_count(&new_client.cert_der) > 0,
        "some connection used the new client certificate"
    );
    assert!(
        seen.iter().all(|s| matches!(s, Seen::Accepted { .. })),
        "no handshake failed"
    );

    // A fresh connection sees the new server certificate, and the server sees the new client one.
    let before = seen.len();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let stream = TlsConnector::new(&client_creds, id(SERVER_ID))
        .unwrap()
        .connect(tcp)
        .await
        .unwrap();
    assert_eq!(
        stream.peer_certificates().unwrap()[0].as_ref(),
        &new_server.cert_der[..]
    );
    let seen = server.wait_for_connections(before + 1).await;
    match &seen[before] {
        Seen::Accepted {
            peer, client_leaf, ..
        } => {
            assert_eq!(peer, &PeerIdentity(Some(id(CLIENT_ID))));
            assert_eq!(client_leaf.as_deref(), Some(&new_client.cert_der[..]));
        }
        other => panic!("fresh connection rejected: {other:?}"),
    }
}

#[tokio::test]
async fn watcher_rejects_invalid_files_and_keeps_the_old_credentials() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("mesh CA").unwrap();
    let first = issue(&ca, SERVER_ID);
    let files = Files::write(dir.path(), "server", &first, ca.cert_pem());
    let server_creds = Credentials::from_files(&files.paths).unwrap();
    let _watch = server_creds
        .watch(files.paths.clone(), fast_watch())
        .unwrap();
    let server = start_echo_server(server_creds.clone(), AcceptorConfig::default()).await;
    let client_creds = creds(&issue(&ca, CLIENT_ID), ca.cert_pem());

    let wait_for_error = |pred: fn(&TlsError) -> bool| {
        let creds = server_creds.clone();
        async move {
            tokio::time::timeout(PATIENCE, async {
                loop {
                    if let Some(e) = creds.last_error() {
                        if pred(&e) {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the watcher reports the rejected files")
        }
    };
    let server_leaf = || async {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let stream = TlsConnector::new(&client_creds, id(SERVER_ID))
            .unwrap()
            .connect(tcp)
            .await
            .unwrap();
        stream.peer_certificates().unwrap()[0].to_vec()
    };

    // Bad PEM.
    write_file_atomically(&files.paths.key, b"garbage", true).unwrap();
    wait_for_error(|e| matches!(e, TlsError::EmptyPem { .. })).await;
    assert_eq!(server_creds.current().generation(), 0);
    assert_eq!(server_leaf().await, first.cert_der);

    // Expired certificate.
    files.rewrite(&issue_expired(&ca, SERVER_ID));
    wait_for_error(|e| matches!(e, TlsError::CertificateExpired { .. })).await;
    assert_eq!(server_leaf().await, first.cert_der);

    // Signed by a CA outside the bundle.
    let other = DevCa::new("other CA").unwrap();
    files.rewrite(&issue(&other, SERVER_ID));
    wait_for_error(|e| matches!(e, TlsError::UntrustedCertificate { .. })).await;
    assert_eq!(server_leaf().await, first.cert_der);

    // Key of another certificate.
    let (a, b) = (issue(&ca, SERVER_ID), issue(&ca, SERVER_ID));
    write_file_atomically(&files.paths.chain, a.cert_pem.as_bytes(), false).unwrap();
    write_file_atomically(&files.paths.key, b.key_pem.as_bytes(), true).unwrap();
    wait_for_error(|e| matches!(e, TlsError::KeyMismatch { .. })).await;
    assert_eq!(server_creds.current().generation(), 0);
    assert_eq!(server_leaf().await, first.cert_der);

    // Finally valid files are taken, and the error is cleared.
    let good = issue(&ca, SERVER_ID);
    let mut generation = server_creds.subscribe();
    files.rewrite(&good);
    wait_for_generation(&mut generation, 1).await;
    assert!(server_creds.last_error().is_none());
    assert_eq!(server_leaf().await, good.cert_der);
}
