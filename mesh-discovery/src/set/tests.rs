use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn set(eps: impl IntoIterator<Item = Endpoint>) -> EndpointSet {
    EndpointSet::from_endpoints(eps).expect("valid set")
}

fn describe(changes: &[Change<SocketAddr, Endpoint>]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Insert(a, e) => format!("+{} w{}", a.port(), e.weight),
            Change::Remove(a) => format!("-{}", a.port()),
        })
        .collect()
}

#[test]
fn diff_from_empty_inserts_everything_in_order() {
    let new = set([Endpoint::new(addr(3)), Endpoint::new(addr(1))]);
    assert_eq!(describe(&EndpointSet::new().diff(&new)), ["+1 w1", "+3 w1"]);
}

#[test]
fn diff_to_empty_removes_everything() {
    let old = set([Endpoint::new(addr(1)), Endpoint::new(addr(2))]);
    assert_eq!(describe(&old.diff(&EndpointSet::new())), ["-1", "-2"]);
}

#[test]
fn diff_reinserts_changed_attributes_and_skips_unchanged() {
    let old = set([
        Endpoint::new(addr(1)),
        Endpoint::new(addr(2)),
        Endpoint::new(addr(3)).with_label("version", "v1"),
    ]);
    let new = set([
        Endpoint::new(addr(1)),
        Endpoint::new(addr(2)).with_weight(0.0),
        Endpoint::new(addr(3)).with_label("version", "v2"),
        Endpoint::new(addr(4)),
    ]);
    let changes = old.diff(&new);
    assert_eq!(describe(&changes), ["+2 w0", "+3 w1", "+4 w1"]);
    match &changes[1] {
        Change::Insert(_, e) => assert_eq!(e.label("version"), Some("v2")),
        Change::Remove(_) => panic!("expected an insert"),
    }
}

#[test]
fn diff_puts_inserts_before_removes() {
    let old = set([Endpoint::new(addr(1))]);
    let new = set([Endpoint::new(addr(2))]);
    assert_eq!(describe(&old.diff(&new)), ["+2 w1", "-1"]);
}

#[test]
fn identical_sets_have_no_diff() {
    let a = set([Endpoint::new(addr(1)).with_identity("spiffe://td/x")]);
    assert!(a.diff(&a.clone()).is_empty());
}

#[test]
fn duplicates_and_invalid_endpoints_are_rejected() {
    let err = EndpointSet::from_endpoints([Endpoint::new(addr(1)), Endpoint::new(addr(1))])
        .expect_err("duplicate accepted");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let err = EndpointSet::from_endpoints([Endpoint::new(addr(1)).with_weight(-2.0)])
        .expect_err("negative weight accepted");
    assert!(err.to_string().contains("-2"), "{err}");
}
