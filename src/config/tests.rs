#![allow(clippy::unwrap_used)]

use super::*;

fn err(text: &str) -> String {
    Config::parse("p.toml", text).unwrap_err().to_string()
}

#[test]
fn a_full_file_parses_into_routes_services_and_listeners() {
    let text = r#"
drain_timeout = "3s"
[outbound]
listen = "127.0.0.1:14140"
dtab = "/svc => /srv;"
[inbound]
listen = "127.0.0.1:14143"
app = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:19990"
[limits]
max_pending = 10
endpoint_concurrency = 5
[[service]]
name = "/srv/world"
endpoints = ["127.0.0.1:8081", "127.0.0.1:8082"]
identity = "spiffe://example.org/ns/shop/sa/world"
[[service]]
name = "/srv/dns"
dns = "world.internal:8080"
[[route]]
name = "canary"
host = "world"
split = [ { backend = "/svc/world", weight = 90 }, { backend = "/svc/dns", weight = 10 } ]
timeout = "250ms"
retries = false
classification = "grpc"
hedge = { delay = "20ms" }
"#;
    let config = Config::parse("p.toml", text).unwrap();
    assert_eq!(config.drain_timeout, Duration::from_secs(3));
    assert_eq!(config.outbound_listen, "127.0.0.1:14140".parse().unwrap());
    assert_eq!(config.services.len(), 2);
    assert_eq!(
        config.services[0].source,
        Source::Static(vec![
            "127.0.0.1:8081".parse().unwrap(),
            "127.0.0.1:8082".parse().unwrap()
        ])
    );
    assert_eq!(config.shed.max_pending, 10);
    assert_eq!(config.endpoint_concurrency, 5);
    let route = config.routes.first().unwrap();
    assert_eq!(&*route.info().name, "canary");
    assert_eq!(route.backends().len(), 2);
    assert_eq!(
        route.info().policy.timeout,
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        route.info().policy.retry.as_ref().map(|r| r.enabled),
        Some(false)
    );
    let inbound = config.inbound.unwrap();
    assert_eq!(inbound.dtab.to_string(), "/inbound => /app");
}

#[test]
fn syntax_errors_point_at_line_and_column() {
    assert!(
        err("[outbound\n").starts_with("p.toml:1:"),
        "{}",
        err("[outbound\n")
    );
    let e = err("\n[outbound]\nlistne = \"127.0.0.1:1\"\n");
    assert!(e.starts_with("p.toml:3:1: "), "{e}");
    assert!(e.contains("listne"), "{e}");
}

#[test]
fn invalid_values_point_at_the_value() {
    let e = err("[outbound]\ndtab = \"/svc =>\"\n");
    assert!(e.starts_with("p.toml:2:8: invalid dtab"), "{e}");
    let e = err("[[service]]\nname = \"/srv/a\"\nendpoints = [\"127.0.0.1:1\", \"nope\"]\n");
    assert!(
        e.starts_with("p.toml:3:29: invalid endpoint \"nope\""),
        "{e}"
    );
    let e = err("[[route]]\nname = \"r\"\nbackend = \"/svc/a\"\ntimeout = \"5 parsecs\"\n");
    assert!(e.starts_with("p.toml:4:11: invalid duration"), "{e}");
    let e = err("[[route]]\nname = \"r\"\nbackend = \"/svc/a\"\nclassification = \"mostly\"\n");
    assert!(e.starts_with("p.toml:4:18: unknown classification"), "{e}");
    let e = err("[[service]]\nname = \"/srv/a\"\nendpoints = []\ndns = \"a:1\"\n");
    assert!(
        e.starts_with("p.toml:2:8: service /srv/a: give exactly one"),
        "{e}"
    );
    let e = err("[[service]]\nname = \"/srv/a\"\nendpoints = []\nidentity = \"http://x\"\n");
    assert!(e.starts_with("p.toml:4:12: "), "{e}");
}

#[test]
fn no_routes_means_routing_by_host_under_svc() {
    let config = Config::parse("p.toml", "").unwrap();
    let route = config.routes.first().unwrap();
    assert_eq!(&*route.info().name, "default");
    assert!(config.inbound.is_none());
    assert_eq!(config.outbound_listen, DEFAULT_OUTBOUND.parse().unwrap());
}

#[test]
fn redacted_config_hides_the_key_path() {
    let text = "[tls]\nchain = \"c.pem\"\nkey = \"secret/k.pem\"\ntrust_bundle = \"ca.pem\"\n";
    let config = Config::parse("p.toml", text).unwrap();
    let json = config.redacted_json().to_string();
    assert!(!json.contains("secret/k.pem"), "{json}");
    assert!(json.contains("<redacted>"), "{json}");
    assert!(json.contains("c.pem"), "{json}");
}

#[test]
fn durations_take_a_unit() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("2").is_err());
    assert!(parse_duration("ms").is_err());
}
