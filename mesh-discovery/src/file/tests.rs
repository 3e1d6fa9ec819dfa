use super::*;

fn parse(text: &str, format: FileFormat) -> Result<EndpointSet, DiscoveryError> {
    parse_endpoints(text, format, Path::new("eps"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn yaml_list_with_all_fields() {
    let set = parse(
        "- addr: 127.0.0.1:8080\n  weight: 2\n  labels: {version: v2, zone: a}\n  identity: spiffe://td/ns/x/sa/y\n- addr: \"[::1]:9090\"\n",
        FileFormat::Yaml,
    )
    .expect("valid yaml");
    assert_eq!(set.len(), 2);
    let a = set.get(&addr("127.0.0.1:8080")).expect("first entry");
    assert_eq!(a.weight, 2.0);
    assert_eq!(a.label("version"), Some("v2"));
    assert_eq!(a.label("zone"), Some("a"));
    assert_eq!(a.identity.as_deref(), Some("spiffe://td/ns/x/sa/y"));
    let b = set.get(&addr("[::1]:9090")).expect("second entry");
    assert_eq!(b.weight, 1.0);
    assert!(b.labels.is_empty() && b.identity.is_none());
}

#[test]
fn yaml_mapping_form_and_empty_file() {
    let set = parse("endpoints:\n  - addr: 127.0.0.1:1\n", FileFormat::Yaml).expect("mapping");
    assert_eq!(set.len(), 1);
    assert!(parse("[]", FileFormat::Yaml)
        .expect("empty list")
        .is_empty());
    assert!(parse("endpoints = []", FileFormat::Toml)
        .expect("empty toml")
        .is_empty());
    let err = load(b"  \n", FileFormat::Yaml, Path::new("eps")).expect_err("empty file accepted");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn toml_array_of_tables() {
    let set = parse(
        "[[endpoints]]\naddr = \"127.0.0.1:1\"\nweight = 0\n\n[[endpoints]]\naddr = \"127.0.0.1:2\"\nlabels = { version = \"v1\" }\n",
        FileFormat::Toml,
    )
    .expect("valid toml");
    assert!(set.get(&addr("127.0.0.1:1")).expect("one").is_drained());
    assert_eq!(
        set.get(&addr("127.0.0.1:2")).expect("two").label("version"),
        Some("v1")
    );
}

#[test]
fn json_list_and_object() {
    let list = parse(
        r#"[{"addr": "127.0.0.1:1", "weight": 0.5}]"#,
        FileFormat::Json,
    )
    .expect("list");
    assert_eq!(list.get(&addr("127.0.0.1:1")).expect("entry").weight, 0.5);
    let obj = parse(
        r#"{"endpoints": [{"addr": "127.0.0.1:2"}]}"#,
        FileFormat::Json,
    )
    .expect("object");
    assert!(obj.contains(&addr("127.0.0.1:2")));
}

fn expect_parse_error(text: &str, format: FileFormat, line: usize) -> String {
    match parse(text, format) {
        Err(DiscoveryError::Parse { line: l, path, .. }) => {
            assert_eq!(l, line, "wrong line for {text:?}");
            assert_eq!(path, Path::new("eps"));
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    parse(text, format).expect_err("error").to_string()
}

#[test]
fn errors_name_the_line_in_every_format() {
    let msg = expect_parse_error(
        "- addr: 127.0.0.1:1\n- addr: nonsense\n",
        FileFormat::Yaml,
        2,
    );
    assert!(msg.starts_with("eps:2:"), "{msg}");
    expect_parse_error("- addr: 127.0.0.1:1\n  weight: -3\n", FileFormat::Yaml, 2);
    expect_parse_error("- addr: 127.0.0.1:1\n  wieght: 3\n", FileFormat::Yaml, 2);
    expect_parse_error(
        "[[endpoints]]\naddr = \"127.0.0.1:1\"\n\n[[endpoints]]\naddr = \"x\"\n",
        FileFormat::Toml,
        5,
    );
    expect_parse_error("[[endpoints]\n", FileFormat::Toml, 1);
    expect_parse_error(
        "[\n {\"addr\": \"127.0.0.1:1\"},\n {\"addr\": \"127.0.0.1:2\", \"identity\": \"http://x\"}\n]",
        FileFormat::Json,
        3,
    );
}

#[test]
fn duplicate_addresses_are_rejected() {
    let err = parse(
        "- addr: 127.0.0.1:1\n- addr: 127.0.0.1:1\n",
        FileFormat::Yaml,
    )
    .expect_err("duplicate accepted");
    assert!(
        matches!(err, DiscoveryError::DuplicateEndpoint { .. }),
        "{err}"
    );
}

#[test]
fn line_column_counts_from_one() {
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
}

#[test]
fn format_follows_the_extension() {
    assert_eq!(
        FileFormat::from_path(Path::new("a.YML")).expect("yml"),
        FileFormat::Yaml
    );
    assert_eq!(
        FileFormat::from_path(Path::new("a.toml")).expect("toml"),
        FileFormat::Toml
    );
    assert!(FileFormat::from_path(Path::new("a.txt")).is_err());
    assert!(FileConfig::default().validate().is_err());
    assert!(FileConfig::new("x.json").validate().is_ok());
    let fast = FileConfig {
        poll_interval: Duration::from_millis(1),
        ..FileConfig::new("x.json")
    };
    assert!(fast.validate().is_err());
}
