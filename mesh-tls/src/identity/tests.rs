use super::*;

fn reason(input: &str) -> (usize, &'static str) {
    match Identity::parse(input) {
        Err(TlsError::InvalidIdentity { offset, reason, .. }) => (offset, reason),
        other => panic!("{input:?} should be rejected, got {other:?}"),
    }
}

#[test]
fn parses_workload_ids_and_splits_them() {
    let id =
        Identity::parse("spiffe://prod.example-1_x.org/ns/web/sa/Front-end_1.v2").expect("valid");
    assert_eq!(id.trust_domain(), "prod.example-1_x.org");
    assert_eq!(id.path(), "/ns/web/sa/Front-end_1.v2");
    assert_eq!(
        id.segments().collect::<Vec<_>>(),
        ["ns", "web", "sa", "Front-end_1.v2"]
    );
    assert_eq!(
        id.to_string(),
        "spiffe://prod.example-1_x.org/ns/web/sa/Front-end_1.v2"
    );
    assert_eq!(
        format!("{id:?}"),
        "Identity(\"spiffe://prod.example-1_x.org/ns/web/sa/Front-end_1.v2\")"
    );
}

#[test]
fn a_trust_domain_id_has_an_empty_path() {
    let id = Identity::parse("spiffe://example.org").expect("valid");
    assert_eq!(id.trust_domain(), "example.org");
    assert_eq!(id.path(), "");
    assert_eq!(id.segments().count(), 0);
}

#[test]
fn rejects_bad_scheme_with_offset() {
    assert_eq!(
        reason("https://example.org/a"),
        (0, "scheme must be \"spiffe://\"")
    );
    assert_eq!(reason("SPIFFE://example.org/a").0, 0);
    assert_eq!(reason("spiffe:/example.org").0, 8);
    assert_eq!(reason("").0, 0);
}

#[test]
fn rejects_bad_trust_domains() {
    assert_eq!(reason("spiffe:///a"), (9, "trust domain is missing"));
    assert_eq!(reason("spiffe://"), (9, "trust domain is missing"));
    assert_eq!(
        reason("spiffe://Example.org/a"),
        (9, "trust domain must be lowercase")
    );
    assert_eq!(
        reason("spiffe://example.org:8443/a"),
        (20, "port is not allowed in a SPIFFE ID")
    );
    assert_eq!(
        reason("spiffe://user@example.org/a"),
        (13, "userinfo is not allowed in a SPIFFE ID")
    );
    assert_eq!(reason("spiffe://exa mple.org").0, 12);
    assert_eq!(reason("spiffe://exämple.org").0, 11);
    let long = format!("spiffe://{}/a", "a".repeat(256));
    assert_eq!(
        reason(&long),
        (9 + 255, "trust domain is longer than 255 bytes")
    );
}

#[test]
fn rejects_bad_paths() {
    assert_eq!(
        reason("spiffe://td/"),
        (11, "path cannot have a trailing slash")
    );
    assert_eq!(
        reason("spiffe://td/a/"),
        (13, "path cannot have a trailing slash")
    );
    assert_eq!(
        reason("spiffe://td//a"),
        (12, "path cannot contain empty segments")
    );
    assert_eq!(
        reason("spiffe://td/a/./b"),
        (14, "path cannot contain dot segments ('.' or '..')")
    );
    assert_eq!(
        reason("spiffe://td/a/.."),
        (14, "path cannot contain dot segments ('.' or '..')")
    );
    assert_eq!(
        reason("spiffe://td/a?x=1"),
        (13, "query is not allowed in a SPIFFE ID")
    );
    assert_eq!(
        reason("spiffe://td/a#frag"),
        (13, "fragment is not allowed in a SPIFFE ID")
    );
    assert_eq!(
        reason("spiffe://td?x"),
        (11, "query is not allowed in a SPIFFE ID")
    );
    assert_eq!(
        reason("spiffe://td#x"),
        (11, "fragment is not allowed in a SPIFFE ID")
    );
    assert_eq!(reason("spiffe://td/a%20b").0, 13);
    assert_eq!(reason("spiffe://td/a b").0, 13);
    // Dots inside a segment are fine.
    assert!(Identity::parse("spiffe://td/a.b/..c/.d").is_ok());
}

#[test]
fn enforces_the_2048_byte_limit() {
    let base = "spiffe://td/";
    let ok = format!("{base}{}", "a".repeat(MAX_IDENTITY_LEN - base.len()));
    assert!(Identity::parse(&ok).is_ok());
    let too_long = format!("{ok}b");
    assert_eq!(reason(&too_long), (2048, "longer than 2048 bytes"));
    // The error message does not echo the whole input.
    let msg = Identity::parse(&too_long)
        .expect_err("too long")
        .to_string();
    assert!(msg.len() < 400, "{msg}");
}

#[test]
fn error_message_says_what_and_where() {
    let msg = Identity::parse("spiffe://td/a//b")
        .expect_err("invalid")
        .to_string();
    assert_eq!(
        msg,
        "invalid SPIFFE ID \"spiffe://td/a//b\" at byte 14: path cannot contain empty segments"
    );
}

#[test]
fn prefix_matching_is_per_segment_and_per_trust_domain() {
    let p = |s: &str| Identity::parse(s).expect("valid");
    let prefix = p("spiffe://td/ns/prod");
    assert!(p("spiffe://td/ns/prod").starts_with(&prefix));
    assert!(p("spiffe://td/ns/prod/sa/api").starts_with(&prefix));
    assert!(!p("spiffe://td/ns/production").starts_with(&prefix));
    assert!(!p("spiffe://other/ns/prod/sa/api").starts_with(&prefix));
    assert!(p("spiffe://td/anything").starts_with(&p("spiffe://td")));
}
