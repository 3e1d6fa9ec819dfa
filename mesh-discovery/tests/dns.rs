//! DNS discovery against a real DNS server on 127.0.0.1 (hickory-server, UDP and TCP).
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use hickory_server::proto::rr::RecordType;
use mesh_discovery::{Discovery, DiscoveryError, DnsConfig};
use support::{
    dns_server::{Behavior, DnsServer},
    init_tracing, ips, ports, wait_until,
};
use tokio::net::UdpSocket;
use tower::discover::Change;

const WEB: &str = "web.mesh.test";

/// Short timers so that failures and retries happen within a test's patience.
fn config(server: &DnsServer, name: DnsConfig) -> DnsConfig {
    DnsConfig {
        nameserver: Some(server.addr),
        query_timeout: Duration::from_millis(500),
        attempts: 1,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        ..name
    }
}

fn host(server: &DnsServer, host_port: &str) -> DnsConfig {
    config(server, DnsConfig::host(host_port).unwrap())
}

#[tokio::test]
async fn records_added_and_removed_reach_the_endpoint_set_within_the_ttl() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1", "127.0.0.2"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:8080")).unwrap();
    assert_eq!(discovery.source(), "dns:web.mesh.test:8080");

    wait_until(&discovery, "two endpoints", |d| d.current().len() == 2).await;
    assert_eq!(ips(&discovery), ["127.0.0.1", "127.0.0.2"]);
    assert_eq!(ports(&discovery), [8080, 8080]);
    assert!(discovery.last_error().is_none());

    server.set_ips(WEB, &["127.0.0.2", "127.0.0.3", "::1"]);
    wait_until(&discovery, "the new records", |d| {
        ips(d) == ["127.0.0.2", "127.0.0.3", "::1"]
    })
    .await;

    server.set_ips(WEB, &["127.0.0.3"]);
    wait_until(&discovery, "the removal", |d| ips(d) == ["127.0.0.3"]).await;
    let stats = discovery.stats();
    // At least one update per change (a resolution can fall between the A and AAAA edits).
    assert!(stats.updates >= 3, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert!(stats.refreshes >= stats.updates, "{stats:?}");
}

#[tokio::test]
async fn each_re_resolution_queries_the_server_again() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "three refreshes", |d| d.stats().refreshes >= 3).await;
    // No cache between us and the server: one A query per refresh.
    assert!(server.queries(WEB, RecordType::A) >= 3);
    assert_eq!(discovery.stats().updates, 1);
}

#[tokio::test]
async fn a_stopped_server_keeps_the_last_good_set_and_reports_the_error() {
    init_tracing();
    let mut server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1", "127.0.0.2"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "two endpoints", |d| d.current().len() == 2).await;

    server.stop().await;
    wait_until(&discovery, "two errors", |d| {
        d.stats().consecutive_errors >= 2
    })
    .await;
    assert_eq!(discovery.current().len(), 2, "advisory: set kept");
    match discovery.last_error() {
        Some(DiscoveryError::Resolve { name, .. }) => assert!(name.starts_with(WEB), "{name}"),
        other => panic!("expected a resolve error, got {other:?}"),
    }
}

#[tokio::test]
async fn servfail_and_wrong_record_types_keep_the_set() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "one endpoint", |d| d.current().len() == 1).await;

    server.set_mode(Behavior::ServFail);
    wait_until(&discovery, "a SERVFAIL error", |d| d.stats().errors >= 1).await;
    let err = discovery.last_error().unwrap().to_string();
    assert!(err.contains("web.mesh.test"), "{err}");
    assert_eq!(ips(&discovery), ["127.0.0.1"]);

    server.set_mode(Behavior::WrongType);
    let before = discovery.stats().errors;
    wait_until(&discovery, "a wrong-type error", |d| {
        d.stats().errors > before
            && d.last_error()
                .is_some_and(|e| e.to_string().contains("wrong record type"))
    })
    .await;
    assert_eq!(ips(&discovery), ["127.0.0.1"]);

    // Recovery clears the error.
    server.set_mode(Behavior::Answer);
    server.set_ips(WEB, &["127.0.0.9"]);
    wait_until(&discovery, "recovery", |d| ips(d) == ["127.0.0.9"]).await;
    assert!(discovery.last_error().is_none());
    assert_eq!(discovery.stats().consecutive_errors, 0);
}

#[tokio::test]
async fn garbage_answers_keep_the_set() {
    init_tracing();
    let mut server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "one endpoint", |d| d.current().len() == 1).await;

    // Replace the server with one that answers every datagram with bytes that are not DNS.
    server.stop().await;
    let garbage = UdpSocket::bind(server.addr).await.unwrap();
    let responder = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = garbage.recv_from(&mut buf).await else {
                return;
            };
            // Keep the query id so the client reads it as the response, then junk.
            let mut reply = buf[..n.min(2)].to_vec();
            reply.extend_from_slice(&[0xff; 7]);
            let _ = garbage.send_to(&reply, from).await;
        }
    });
    let before = discovery.stats().errors;
    wait_until(&discovery, "an error", |d| d.stats().errors > before).await;
    assert_eq!(ips(&discovery), ["127.0.0.1"]);
    assert!(discovery.last_error().is_some());
    responder.abort();
}

#[tokio::test]
async fn nxdomain_once_keeps_the_set_and_twice_empties_it() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    // Record every change the balancer would see, as it happens.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let seen = seen.clone();
        let mut changes = discovery.changes();
        tokio::spawn(async move {
            while let Some(Ok(change)) = changes.next().await {
                seen.lock().unwrap().push(match change {
                    Change::Insert(addr, _) => format!("+{addr}"),
                    Change::Remove(addr) => format!("-{addr}"),
                });
            }
        })
    };
    wait_until(&discovery, "one endpoint", |d| d.current().len() == 1).await;

    // One resolution (both its A and its AAAA query) says NXDOMAIN.
    server.once(WEB, RecordType::A, Behavior::NxDomain);
    server.once(WEB, RecordType::AAAA, Behavior::NxDomain);
    wait_until(&discovery, "the NXDOMAIN to be reported", |d| {
        matches!(d.last_error(), Some(DiscoveryError::EmptyAnswer { .. }))
    })
    .await;
    assert_eq!(
        ips(&discovery),
        ["127.0.0.1"],
        "one NXDOMAIN must not empty the set"
    );
    // The next resolution answers again and clears the error; the set was never emptied.
    wait_until(&discovery, "the error to clear", |d| {
        d.last_error().is_none()
    })
    .await;
    assert_eq!(ips(&discovery), ["127.0.0.1"]);

    // Now the name disappears for good: two NXDOMAINs in a row empty the set.
    let queries_before = server.queries(WEB, RecordType::A);
    server.remove(WEB);
    wait_until(&discovery, "the set to empty", |d| d.current().is_empty()).await;
    assert!(
        server.queries(WEB, RecordType::A) >= queries_before + 2,
        "emptied after fewer than two resolutions"
    );

    // The balancer saw the insert, and a remove only at the very end.
    support::wait_for("the remove to reach the stream", || {
        let n = seen.lock().unwrap().len();
        async move { n == 2 }
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), ["+127.0.0.1:80", "-127.0.0.1:80"]);
    collector.abort();
}

#[tokio::test]
async fn srv_records_become_weighted_endpoints() {
    init_tracing();
    let server = DnsServer::start(1).await;
    let srv = "_http._tcp.web.mesh.test";
    server.set_srv(
        srv,
        &[
            (10, 30, 8080, "a.mesh.test."),
            (10, 10, 8081, "b.mesh.test."),
            (20, 50, 9090, "backup.mesh.test."),
        ],
    );
    server.set_ips("a.mesh.test", &["127.0.0.1"]);
    server.set_ips("b.mesh.test", &["127.0.0.2", "127.0.0.3"]);
    server.set_ips("backup.mesh.test", &["127.0.0.9"]);
    let mut cfg = config(&server, DnsConfig::srv(srv).unwrap());
    cfg.identity = Some("spiffe://mesh.test/ns/web/sa/web".into());
    let discovery = Discovery::dns(cfg).unwrap();
    wait_until(&discovery, "three endpoints", |d| d.current().len() == 3).await;

    let set = discovery.current();
    let weights: Vec<(String, f64)> = set.iter().map(|e| (e.addr.to_string(), e.weight)).collect();
    assert_eq!(
        weights,
        [
            ("127.0.0.1:8080".to_owned(), 30.0),
            ("127.0.0.2:8081".to_owned(), 5.0),
            ("127.0.0.3:8081".to_owned(), 5.0),
        ],
        "lowest priority only; a target's weight split over its addresses"
    );
    assert!(set
        .iter()
        .all(|e| e.identity.as_deref() == Some("spiffe://mesh.test/ns/web/sa/web")));

    // The priority-10 targets lose their addresses: the backup group takes over.
    server.remove("a.mesh.test");
    server.remove("b.mesh.test");
    wait_until(&discovery, "failover to priority 20", |d| {
        d.current()
            .addrs()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            == ["127.0.0.9:9090"]
    })
    .await;

    // A new SRV record shows up within the TTL.
    server.set_srv(
        srv,
        &[
            (0, 0, 7000, "backup.mesh.test."),
            (0, 0, 7001, "backup.mesh.test."),
        ],
    );
    wait_until(&discovery, "the new records", |d| ports(d) == [7000, 7001]).await;
    assert!(
        discovery.current().iter().all(|e| e.weight == 1.0),
        "all-zero weights are equal"
    );
}

#[tokio::test]
async fn srv_nxdomain_needs_confirmation_and_target_errors_keep_the_set() {
    init_tracing();
    let server = DnsServer::start(1).await;
    let srv = "_grpc._tcp.api.mesh.test";
    server.set_srv(srv, &[(0, 1, 50051, "api-0.mesh.test.")]);
    server.set_ips("api-0.mesh.test", &["127.0.0.5"]);
    let discovery = Discovery::dns(config(&server, DnsConfig::srv(srv).unwrap())).unwrap();
    wait_until(&discovery, "one endpoint", |d| d.current().len() == 1).await;

    // A target whose address lookup fails fails the whole refresh.
    server.set_name_mode("api-0.mesh.test", Some(Behavior::ServFail));
    wait_until(&discovery, "the target error", |d| d.stats().errors >= 1).await;
    assert!(discovery
        .last_error()
        .unwrap()
        .to_string()
        .contains("api-0.mesh.test"));
    assert_eq!(discovery.current().len(), 1);
    server.set_name_mode("api-0.mesh.test", None);
    wait_until(&discovery, "recovery", |d| d.last_error().is_none()).await;

    // NXDOMAIN once for the SRV name: kept.
    server.once(srv, RecordType::SRV, Behavior::NxDomain);
    wait_until(&discovery, "the one-shot NXDOMAIN to be served", |_| {
        server.once_used(srv, RecordType::SRV)
    })
    .await;
    wait_until(&discovery, "a clean refresh after it", |d| {
        d.last_error().is_none()
    })
    .await;
    assert_eq!(discovery.current().len(), 1);
    assert!(discovery.stats().errors >= 2);

    // NXDOMAIN for good: emptied.
    server.remove(srv);
    wait_until(&discovery, "the set to empty", |d| d.current().is_empty()).await;
}

#[tokio::test]
async fn dropping_every_handle_stops_the_task() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "one endpoint", |d| d.current().len() == 1).await;
    drop(discovery);
    // Give a running resolution time to finish, then the count must stay put for two TTLs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_drop = server.queries(WEB, RecordType::A);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.queries(WEB, RecordType::A), after_drop);
}

#[tokio::test]
async fn bad_configuration_is_rejected_before_starting() {
    let err = DnsConfig::host("web.mesh.test").unwrap_err();
    assert!(err.to_string().contains("web.mesh.test"), "{err}");
    let cfg = DnsConfig {
        attempts: 0,
        ..DnsConfig::host("web:80").unwrap()
    };
    assert!(matches!(
        Discovery::dns(cfg),
        Err(DiscoveryError::InvalidConfig { .. })
    ));
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let cfg = DnsConfig::host("127.0.0.1:80")
        .unwrap()
        .with_nameserver("127.0.0.1:53".parse().unwrap());
    let err = Discovery::dns(cfg).unwrap_err();
    assert!(matches!(err, DiscoveryError::NoRuntime { .. }), "{err}");
}

#[tokio::test]
async fn errors_are_retried_with_backoff_not_at_the_ttl() {
    init_tracing();
    // A 5-minute TTL: a healthy name is not asked again during this test.
    let server = DnsServer::start(300).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    server.set_mode(Behavior::ServFail);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "repeated errors", |d| d.stats().errors >= 3).await;
    assert!(discovery.current().is_empty());

    // The retries (200 ms doubling to 1 s here) pick the recovery up long before any TTL.
    server.set_mode(Behavior::Answer);
    wait_until(&discovery, "recovery", |d| d.current().len() == 1).await;
    let queries = server.queries(WEB, RecordType::A);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.queries(WEB, RecordType::A),
        queries,
        "a healthy name is re-resolved at its TTL, not at the retry interval"
    );
}

/// Every way a server can decline the AAAA half of an A-only name: REFUSED and an empty answer
/// without SOA are what dnsmasq sends, NOTIMP what some appliances send, NoData with an SOA what
/// an authoritative server sends.
const DECLINED: [(Behavior, &str); 4] = [
    (Behavior::Refused, "REFUSED"),
    (Behavior::NotImp, "NOTIMP"),
    (Behavior::EmptyNoSoa, "empty NOERROR without SOA"),
    (Behavior::Answer, "NoData with SOA"),
];

#[tokio::test]
async fn a_records_are_used_when_the_aaaa_half_is_refused_not_implemented_or_empty() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1", "127.0.0.2"]);
    for (behavior, what) in DECLINED {
        server.set_type_mode(WEB, RecordType::AAAA, Some(behavior));
        let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
        wait_until(&discovery, what, |d| d.current().len() == 2).await;
        assert_eq!(ips(&discovery), ["127.0.0.1", "127.0.0.2"], "{what}");
        assert!(discovery.state().is_healthy(), "{what}: {discovery:?}");
    }
}

#[tokio::test]
async fn a_set_filled_earlier_follows_the_a_records_once_aaaa_is_refused() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1", "::1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "dual-stack set", |d| d.current().len() == 2).await;

    server.set_type_mode(WEB, RecordType::AAAA, Some(Behavior::Refused));
    server.set_ips(WEB, &["127.0.0.3", "127.0.0.4"]);
    wait_until(&discovery, "the new A records", |d| {
        ips(d) == ["127.0.0.3", "127.0.0.4"]
    })
    .await;
    assert!(discovery.last_error().is_none());
}

#[tokio::test]
async fn a_name_refused_for_both_families_is_a_failure_not_an_empty_set() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    wait_until(&discovery, "one endpoint", |d| d.current().len() == 1).await;
    server.set_mode(Behavior::Refused);
    wait_until(&discovery, "the refusal reported", |d| {
        matches!(d.last_error(), Some(DiscoveryError::Resolve { .. }))
    })
    .await;
    assert_eq!(ips(&discovery), ["127.0.0.1"], "kept the last good set");
}

#[tokio::test]
async fn srv_targets_use_their_a_records_when_aaaa_is_refused_or_empty() {
    init_tracing();
    let server = DnsServer::start(1).await;
    let srv = "_http._tcp.web.mesh.test";
    server.set_srv(
        srv,
        &[
            (0, 1, 8080, "web-0.mesh.test."),
            (0, 1, 8081, "web-1.mesh.test."),
        ],
    );
    server.set_ips("web-0.mesh.test", &["127.0.0.10"]);
    server.set_ips("web-1.mesh.test", &["127.0.0.11"]);
    for (behavior, what) in DECLINED {
        server.set_type_mode("web-0.mesh.test", RecordType::AAAA, Some(behavior));
        server.set_type_mode("web-1.mesh.test", RecordType::AAAA, Some(behavior));
        let discovery = Discovery::dns(config(&server, DnsConfig::srv(srv).unwrap())).unwrap();
        wait_until(&discovery, what, |d| d.current().len() == 2).await;
        assert_eq!(ports(&discovery), [8080, 8081], "{what}");
        assert!(discovery.last_error().is_none(), "{what}: {discovery:?}");
    }
}

#[tokio::test]
async fn ipv4_only_sends_no_aaaa_query() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1", "::1"]);
    // A server that fails AAAA outright: dual-stack keeps failing, IPv4-only does not care.
    server.set_type_mode(WEB, RecordType::AAAA, Some(Behavior::ServFail));
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80").with_ipv4_only()).unwrap();
    wait_until(&discovery, "two refreshes", |d| d.stats().refreshes >= 2).await;
    assert_eq!(ips(&discovery), ["127.0.0.1"]);
    assert_eq!(server.queries(WEB, RecordType::AAAA), 0);
}

#[tokio::test]
async fn attempts_counts_every_query_sent_the_first_included() {
    init_tracing();
    // A "server" that reads queries and never answers.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, _)) = dead.recv_from(&mut buf).await {
                // QTYPE sits right after the question name; count A queries only.
                let mut i = 12;
                while i < n && buf[i] != 0 {
                    i += usize::from(buf[i]) + 1;
                }
                if buf.get(i + 1..i + 3) == Some(&[0, 1]) {
                    received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    let cfg = DnsConfig {
        nameserver: Some(addr),
        query_timeout: Duration::from_millis(300),
        attempts: 2,
        // One resolution only within this test.
        backoff_initial: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
        ..DnsConfig::host("web.mesh.test:80").unwrap()
    };
    let started = tokio::time::Instant::now();
    let discovery = Discovery::dns(cfg).unwrap();
    wait_until(&discovery, "the failure", |d| d.stats().errors >= 1).await;
    let took = started.elapsed();
    // Give a late retry (if any) time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "attempts = 2 must send the A query twice"
    );
    assert!(took >= Duration::from_millis(550), "gave up after {took:?}");
    counter.abort();
}

#[tokio::test]
async fn a_name_that_does_not_exist_keeps_its_error_visible() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "wbe.mesh.test:80")).unwrap();
    // Well past the confirmation: the set is empty *and* the error is still there.
    wait_until(&discovery, "three resolutions", |_| {
        server.queries("wbe.mesh.test", RecordType::A) >= 3
    })
    .await;
    wait_until(&discovery, "a confirmed NXDOMAIN", |d| {
        matches!(d.last_error(), Some(DiscoveryError::NoRecords { .. }))
    })
    .await;
    let state = discovery.state();
    assert_eq!(state.endpoints, 0);
    assert!(!state.is_healthy(), "{state:?}");
    let err = state.last_error.unwrap().to_string();
    assert!(
        err.contains("wbe.mesh.test") && err.contains("NXDomain"),
        "{err}"
    );
}

#[tokio::test]
async fn source_state_shows_the_last_success_and_the_current_error() {
    init_tracing();
    let server = DnsServer::start(1).await;
    server.set_ips(WEB, &["127.0.0.1"]);
    let discovery = Discovery::dns(host(&server, "web.mesh.test:80")).unwrap();
    assert!(discovery.state().last_success.is_none());
    wait_until(&discovery, "one endpoint", |d| d.current().len() == 1).await;
    let state = discovery.state();
    assert!(
        state.is_healthy() && state.last_success.is_some(),
        "{state:?}"
    );

    server.set_mode(Behavior::ServFail);
    wait_until(&discovery, "the error", |d| d.last_error().is_some()).await;
    let failing = discovery.state();
    assert!(!failing.is_healthy());
    let last_success = failing.last_success.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        discovery.state().last_success,
        Some(last_success),
        "a failure does not move the last success"
    );
    server.set_mode(Behavior::Answer);
    wait_until(&discovery, "recovery", |d| d.state().is_healthy()).await;
    assert!(discovery.state().last_success.unwrap() > last_success);
}
