//! DNS discovery against a real dnsmasq started by each test (Debian's package), the resolver
//! whose answers the in-process server did not imitate: REFUSED for the AAAA half of an A-only
//! name when it has no upstream, and an empty NOERROR *without* an SOA inside a `--local` domain.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mesh_discovery::{Discovery, DiscoveryError, DnsConfig};
use support::{dnsmasq::Dnsmasq, init_tracing, ips, ports, wait_until};

const HOSTS: &str = "127.0.0.1 web.mesh.test\n127.0.0.2 web.mesh.test\n\
                     127.0.0.10 web-0.mesh.test\n127.0.0.11 web-1.mesh.test\n";

const SRV: [&str; 2] = [
    "--srv-host=_http._tcp.web.mesh.test,web-0.mesh.test,8080,0,10",
    "--srv-host=_http._tcp.web.mesh.test,web-1.mesh.test,8081,0,10",
];

fn config(server: &Dnsmasq, name: DnsConfig) -> DnsConfig {
    DnsConfig {
        nameserver: Some(server.addr),
        query_timeout: Duration::from_millis(500),
        attempts: 1,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        ..name
    }
}

/// Both dnsmasq set-ups: without upstream (AAAA answered REFUSED) and with the domain local
/// (AAAA answered by an empty NOERROR without SOA).
fn servers() -> [(Dnsmasq, &'static str); 2] {
    let mut local = SRV.to_vec();
    local.push("--local=/mesh.test/");
    [
        (Dnsmasq::start(HOSTS, &SRV), "no upstream: AAAA REFUSED"),
        (
            Dnsmasq::start(HOSTS, &local),
            "local domain: AAAA empty without SOA",
        ),
    ]
}

#[tokio::test]
async fn an_a_only_name_resolves_through_dnsmasq() {
    init_tracing();
    for (server, what) in servers() {
        let discovery = Discovery::dns(config(
            &server,
            DnsConfig::host("web.mesh.test:80").unwrap(),
        ))
        .unwrap();
        wait_until(&discovery, what, |d| d.current().len() == 2).await;
        assert_eq!(ips(&discovery), ["127.0.0.1", "127.0.0.2"], "{what}");
        assert!(discovery.state().is_healthy(), "{what}: {discovery:?}");
    }
}

#[tokio::test]
async fn srv_targets_with_a_records_only_resolve_through_dnsmasq() {
    init_tracing();
    for (server, what) in servers() {
        let discovery = Discovery::dns(config(
            &server,
            DnsConfig::srv("_http._tcp.web.mesh.test").unwrap(),
        ))
        .unwrap();
        wait_until(&discovery, what, |d| d.current().len() == 2).await;
        assert_eq!(ips(&discovery), ["127.0.0.10", "127.0.0.11"], "{what}");
        assert_eq!(ports(&discovery), [8080, 8081], "{what}");
        assert!(discovery.last_error().is_none(), "{what}: {discovery:?}");
    }
}

#[tokio::test]
async fn ipv4_only_resolves_through_dnsmasq() {
    init_tracing();
    let (server, _) = servers().into_iter().next().unwrap();
    let discovery = Discovery::dns(
        config(&server, DnsConfig::host("web.mesh.test:80").unwrap()).with_ipv4_only(),
    )
    .unwrap();
    wait_until(&discovery, "two endpoints", |d| d.current().len() == 2).await;
}

#[tokio::test]
async fn a_misspelled_name_in_a_dnsmasq_local_domain_stays_an_error() {
    init_tracing();
    let [_, (server, _)] = servers();
    let discovery = Discovery::dns(config(
        &server,
        DnsConfig::host("wbe.mesh.test:80").unwrap(),
    ))
    .unwrap();
    wait_until(&discovery, "the confirmed NXDOMAIN", |d| {
        matches!(d.last_error(), Some(DiscoveryError::NoRecords { .. }))
    })
    .await;
    // Still an error after further resolutions: the empty set never looks healthy.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let state = discovery.state();
    assert_eq!(state.endpoints, 0);
    assert!(
        matches!(state.last_error, Some(DiscoveryError::NoRecords { .. })),
        "{state:?}"
    );
}
