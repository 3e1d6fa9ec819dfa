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
load_reports = 16
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
    assert_eq!(
        inbound.load_reports,
        Some(crate::load_report::LoadReportConfig { capacity: 16 })
    );
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

/// A loopback HTTP/1.1 server answering every request `200 ok` (one request per connection).
async fn ok_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let rsp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = conn.write_all(rsp).await;
            });
        }
    });
    addr
}

/// The status of a GET to `world` through `client`, and its `l5d-err` header.
async fn get_world(client: &RoutedClient<http_body_util::Empty<Bytes>>) -> (u16, Option<String>) {
    use tower::ServiceExt;
    let req = http::Request::get("http://world/")
        .body(http_body_util::Empty::new())
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.clone().oneshot(req))
        .await
        .expect("the request must finish")
        .unwrap();
    let err = rsp
        .headers()
        .get("l5d-err")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (rsp.status().as_u16(), err)
}

#[tokio::test]
async fn clients_built_again_by_a_reload_take_over_the_running_clients_names() {
    use mesh_core::metrics::{Succession, Telemetry};
    use mesh_core::trace::Tracing;
    let backend = ok_backend().await;
    let text = format!(
        r#"
[outbound]
listen = "127.0.0.1:0"
dtab = "/svc => /srv;"
[[service]]
name = "/srv/world"
endpoints = ["{backend}"]
"#
    );
    let config = Config::parse("p.toml", &text).unwrap();
    let telemetry = Telemetry::new(Default::default(), Tracing::disabled()).unwrap();
    let template = |succession: Option<Succession>| -> ClientTemplate {
        let telemetry = telemetry.clone();
        std::sync::Arc::new(move |d| {
            let b = crate::client(d).telemetry(telemetry.clone());
            match succession {
                Some(s) => b.succession(s),
                None => b,
            }
        })
    };
    let first = Succession::new();
    let running = config.outbound(template(Some(first))).unwrap();
    assert_eq!(get_world(&running).await, (200, None));

    // A reload builds the same services' clients again on the same registry while the running
    // ones live (requests in flight): the new generation takes the names over.
    let reloaded = config.outbound(template(Some(first.next()))).unwrap();
    assert_eq!(get_world(&reloaded).await, (200, None));
    // The replaced clients still finish what they are given.
    assert_eq!(get_world(&running).await, (200, None));

    // Two live clients that do not replace one another still cannot share a name: neither a
    // client outside the succession nor another client of the same generation.
    for other in [None, Some(first.next())] {
        let other = config.outbound(template(other)).unwrap();
        let (status, err) = get_world(&other).await;
        assert_eq!(status, 500);
        let err = err.unwrap();
        assert!(
            err.contains("cannot register the client's metrics"),
            "{err}"
        );
    }
    // Once the replaced generation is gone, the name stays with the new one.
    drop(running);
    let (status, _) = get_world(&config.outbound(template(Some(first))).unwrap()).await;
    assert_eq!(
        status, 500,
        "an earlier generation cannot take the name back"
    );
    assert_eq!(get_world(&reloaded).await, (200, None));
}

#[test]
fn limits_from_the_file_reach_the_listeners_with_production_defaults_for_the_rest() {
    let config = Config::parse("p.toml", "").unwrap();
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.server_limits().max_connections, 10_000);
    assert_eq!(
        config.server_limits().drain_timeout,
        Duration::from_secs(10)
    );
    assert!(!config.access_log);

    let text = r#"
drain_timeout = "3s"
access_log = true
[limits]
max_connections = 50
max_concurrent_streams = 16
max_header_bytes = 9000
max_headers = 30
max_request_body_bytes = 1000
retry_buffer_bytes = 500
first_byte_timeout = "2s"
header_read_timeout = "3s"
handshake_timeout = "4s"
idle_timeout = "5s"
"#;
    let config = Config::parse("p.toml", text).unwrap();
    let server = config.server_limits();
    assert_eq!(
        (
            server.max_connections,
            server.h2_max_concurrent_streams,
            server.max_header_bytes,
            server.max_headers
        ),
        (50, 16, 9000, 30)
    );
    assert_eq!(
        (
            server.first_byte_timeout,
            server.header_read_timeout,
            server.idle_timeout,
            server.drain_timeout
        ),
        (
            Duration::from_secs(2),
            Duration::from_secs(3),
            Duration::from_secs(5),
            Duration::from_secs(3)
        )
    );
    assert_eq!(config.limits.handshake_timeout, Duration::from_secs(4));
    assert_eq!(
        (
            config.limits.max_request_body_bytes,
            config.limits.retry_buffer_bytes
        ),
        (1000, 500)
    );
    assert!(config.access_log);
}

#[test]
fn a_limit_out_of_range_is_reported_at_its_value() {
    let e = err("[limits]\nmax_connections = 5\nmax_header_bytes = 100\n");
    assert!(
        e.starts_with("p.toml:3:20: [limits] invalid server setting max_header_bytes = 100"),
        "{e}"
    );
    let e = err("[limits]\nmax_request_body_bytes = 0\n");
    assert!(
        e.starts_with("p.toml:2:26: max_request_body_bytes must be at least 1"),
        "{e}"
    );
    let e = err("[limits]\nidle_timeout = \"soon\"\n");
    assert!(e.starts_with("p.toml:2:16: invalid duration"), "{e}");
}
