use super::*;

#[test]
fn host_port_parsing() {
    assert_eq!(
        DnsName::host("web.shop.svc:8080").expect("valid"),
        DnsName::Host {
            host: "web.shop.svc".into(),
            port: 8080
        }
    );
    assert_eq!(
        DnsName::host("[::1]:53").expect("v6"),
        DnsName::Host {
            host: "::1".into(),
            port: 53
        }
    );
    for bad in [
        "web",
        "web:",
        "web:0",
        "web:70000",
        "::1:53",
        ":80",
        "a..b:80",
    ] {
        let err = DnsName::host(bad).expect_err(bad);
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn display_round_trips() {
    for s in ["web:80", "[::1]:53", "10.0.0.1:9"] {
        assert_eq!(DnsName::host(s).expect(s).to_string(), s);
    }
    assert_eq!(
        DnsName::srv("_http._tcp.web").expect("srv").to_string(),
        "SRV _http._tcp.web"
    );
}

#[test]
fn config_validation() {
    assert!(DnsConfig::default().validate().is_err());
    let ok = DnsConfig::host("web:80").expect("valid");
    assert!(ok.validate().is_ok());
    assert_eq!(ok.ttl_min, Duration::from_secs(1));
    assert_eq!(ok.ttl_max, Duration::from_secs(300));
    let bad = [
        DnsConfig {
            ttl_min: Duration::ZERO,
            ..ok.clone()
        },
        DnsConfig {
            ttl_max: Duration::from_millis(500),
            ..ok.clone()
        },
        DnsConfig {
            backoff_max: Duration::from_millis(10),
            ..ok.clone()
        },
        DnsConfig {
            attempts: 0,
            ..ok.clone()
        },
        DnsConfig {
            identity: Some("web".into()),
            ..ok.clone()
        },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?}");
    }
}

#[test]
fn ttl_is_clamped() {
    let c = DnsConfig::host("web:80").expect("valid");
    assert_eq!(c.clamp_ttl(Duration::ZERO), Duration::from_secs(1));
    assert_eq!(
        c.clamp_ttl(Duration::from_secs(30)),
        Duration::from_secs(30)
    );
    assert_eq!(
        c.clamp_ttl(Duration::from_secs(86_400)),
        Duration::from_secs(300)
    );
}
