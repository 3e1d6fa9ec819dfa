#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use super::*;

/// A namer for `/#/t/<name>` whose sources have endpoints or not as the test says.
struct TestNamer(HashMap<&'static str, bool>);

impl Namer for TestNamer {
    fn lookup(&self, path: &Path) -> Resolution {
        if !path.starts_with(&["#", "t"]) || path.len() < 3 {
            return InetNamer.lookup(path);
        }
        match self.0.get(&*path.segments()[2]) {
            Some(&has) => Resolution::Bound(BoundName {
                id: path.take(3),
                residual: path.drop_first(3),
                has_endpoints: has,
            }),
            None => Resolution::Neg,
        }
    }
}

fn namer(entries: &[(&'static str, bool)]) -> TestNamer {
    TestNamer(entries.iter().copied().collect())
}

fn p(s: &str) -> Path {
    s.parse().unwrap()
}

fn first(dtab: &str, n: &TestNamer, name: &str) -> Result<String, Unusable> {
    let tree = bind(
        &Dtab::parse(dtab).unwrap(),
        n,
        &p(name),
        DelegateLimits::default(),
    )
    .unwrap();
    pick(&tree, 0.0).map(|b| b.to_string())
}

#[test]
fn parses_and_prints_canonically() {
    let cases = [
        ("/a=>/b", "/a => /b"),
        ("  /a => /b ; /c=>/d;", "/a => /b;/c => /d"),
        ("/a => /b | /c & /d", "/a => /b | /c & /d"),
        ("/a => 0.5*/b & .5 * /c", "/a => 0.5 * /b & 0.5 * /c"),
        ("/a => (/b | /c) | /d", "/a => (/b | /c) | /d"),
        ("/a => 2 * (/b & /c) & /d", "/a => 2 * (/b & /c) & /d"),
        ("/ => ~", "/ => ~"),
        ("/*/x => !", "/*/x => !"),
        ("/a => $", "/a => $"),
        ("/a => 1 * /b", "/a => /b"),
        ("/a\\x20b => /c", "/a\\x20b => /c"),
        ("/$/inet => /#/io.l5d.fs", "/$/inet => /#/io.l5d.fs"),
    ];
    for (input, canonical) in cases {
        let d = Dtab::parse(input).unwrap();
        assert_eq!(d.to_string(), canonical, "input {input:?}");
        assert_eq!(
            Dtab::parse(canonical).unwrap(),
            d,
            "reparse of {canonical:?}"
        );
    }
    assert_eq!(Dtab::parse("").unwrap(), Dtab::empty());
    assert_eq!(p("/a\\x20b").segments()[0].as_ref(), "a b");
}

#[test]
fn parse_errors_say_where_and_what() {
    let e = Dtab::parse("/svc/world /srv").unwrap_err();
    assert_eq!(e.offset, 11);
    assert_eq!(e.expected, "'=>'");
    assert_eq!(
        e.to_string(),
        "invalid dtab at byte 11: expected '=>', found '/'"
    );
    let e = Dtab::parse("/a => /b;/c =>").unwrap_err();
    assert_eq!((e.offset, e.found), (14, Found::End));
    let e = Dtab::parse("/a => /b /c").unwrap_err();
    assert_eq!((e.offset, e.expected), (9, "';' or end of input"));
    let e = Dtab::parse("/a/ => /b").unwrap_err();
    assert_eq!((e.offset, e.expected), (3, "a label or '*'"));
    let e = Dtab::parse("/a => 0.5 /b").unwrap_err();
    assert_eq!((e.offset, e.expected), (10, "'*' after a weight"));
    let e = Dtab::parse("/a => /é").unwrap_err();
    assert_eq!(e.offset, 7);
    assert!(e.to_string().is_ascii(), "{e}");
    let deep = format!("/a => {}/b{}", "(".repeat(40), ")".repeat(40));
    let e = Dtab::parse(&deep).unwrap_err();
    assert_eq!(e.expected, "at most 32 nested parentheses");
    let e = Dtab::parse("/a => /\\xff").unwrap_err();
    assert_eq!(e.expected, "a label whose escapes form UTF-8");
}

#[test]
fn later_rules_win_and_fall_back_when_negative() {
    let n = namer(&[("v1", true), ("v2", true)]);
    let base = "/svc => /#/t/v1";
    assert_eq!(first(base, &n, "/svc/x").unwrap(), "/#/t/v1/x");
    let over = "/svc => /#/t/v1; /svc => /#/t/v2";
    assert_eq!(first(over, &n, "/svc").unwrap(), "/#/t/v2");
    // A later rule that leads nowhere falls back to the earlier one.
    let neg = "/svc => /#/t/v1; /svc => /#/t/missing";
    assert_eq!(first(neg, &n, "/svc").unwrap(), "/#/t/v1");
    let neg2 = "/svc => /#/t/v1; /svc => ~";
    assert_eq!(first(neg2, &n, "/svc").unwrap(), "/#/t/v1");
}

#[test]
fn alternation_falls_back_past_sources_without_endpoints() {
    let n = namer(&[("down", false), ("up", true)]);
    assert_eq!(
        first("/s => /#/t/down | /#/t/up", &n, "/s").unwrap(),
        "/#/t/up"
    );
    assert_eq!(
        first("/s => /#/t/down | /#/t/none", &n, "/s"),
        Err(Unusable::NoEndpoints)
    );
    // `!` stops the fallback.
    assert_eq!(
        first("/s => /#/t/down | ! | /#/t/up", &n, "/s"),
        Err(Unusable::Fail)
    );
    assert_eq!(first("/s => /#/t/none", &n, "/s"), Err(Unusable::Neg));
    assert_eq!(first("/s => $", &n, "/s"), Err(Unusable::Empty));
    // An earlier rule still applies when the later one fails over to nothing but `~`.
    assert_eq!(
        first("/s => /#/t/up; /s => /#/t/down | ~", &n, "/s").unwrap(),
        "/#/t/up"
    );
}

#[test]
fn wildcard_matches_one_segment() {
    let n = namer(&[("a", true)]);
    assert_eq!(
        first("/k8s/*/http => /#/t/a", &n, "/k8s/prod/http/web").unwrap(),
        "/#/t/a/web"
    );
    assert_eq!(
        first("/k8s/*/http => /#/t/a", &n, "/k8s/http"),
        Err(Unusable::Neg)
    );
}

#[test]
fn union_splits_by_weight_and_skips_unusable_members() {
    let n = namer(&[("a", true), ("b", true), ("down", false)]);
    let d = Dtab::parse("/s => 3 * /#/t/a & 1 * /#/t/b & 5 * /#/t/down & 0 * /#/t/a").unwrap();
    let tree = bind(&d, &n, &p("/s"), DelegateLimits::default()).unwrap();
    let mut counts = HashMap::new();
    for i in 0..1000 {
        let u = (i as f64 + 0.5) / 1000.0;
        *counts
            .entry(pick(&tree, u).unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(counts["/#/t/a"], 750);
    assert_eq!(counts["/#/t/b"], 250);
    assert_eq!(counts.len(), 2);
}

#[test]
fn inet_namer_binds_addresses_with_residual() {
    let tree = bind(
        &Dtab::parse("/svc/x => /$/inet/127.0.0.1/8080/rest").unwrap(),
        &InetNamer,
        &p("/svc/x"),
        DelegateLimits::default(),
    )
    .unwrap();
    let b = pick(&tree, 0.0).unwrap();
    assert_eq!(b.id, p("/$/inet/127.0.0.1/8080"));
    assert_eq!(b.residual, p("/rest"));
    assert_eq!(b.inet_addr(), Some("127.0.0.1:8080".parse().unwrap()));
    assert!(matches!(
        InetNamer.lookup(&p("/$/inet/not-an-ip/1")),
        Resolution::Fail(_)
    ));
}

#[test]
fn delegation_loops_stop_at_the_depth_limit() {
    let n = namer(&[]);
    let d = Dtab::parse("/a => /b; /b => /a").unwrap();
    let limits = DelegateLimits {
        max_depth: 10,
        ..Default::default()
    };
    let err = bind(&d, &n, &p("/a"), limits).unwrap_err();
    assert!(matches!(
        err,
        DelegationError::DepthExceeded { limit: 10, .. }
    ));
    assert!(err.to_string().contains("depth limit of 10"), "{err}");

    // Exponential fan-out is cut by the step limit.
    let rules: Vec<String> = (0..30)
        .map(|i| format!("/n{i} => /n{} | /n{}", i + 1, i + 1))
        .collect();
    let fan = Dtab::parse(&rules.join(";")).unwrap();
    let err = bind(&fan, &n, &p("/n0"), DelegateLimits::default()).unwrap_err();
    assert!(
        matches!(err, DelegationError::StepsExceeded { .. }),
        "{err}"
    );
}

#[test]
fn simplification_flattens_and_drops_dead_branches() {
    let t: NameTree<Path> = "(/a | ~) | (~ | /b | ! | /c) | /d".parse().unwrap();
    assert_eq!(t.simplified().to_string(), "/a | /b | !");
    let t: NameTree<Path> = "0 * /a & ~ & /b".parse().unwrap();
    assert_eq!(t.simplified().to_string(), "/b");
    let t: NameTree<Path> = "! & !".parse().unwrap();
    assert_eq!(t.simplified(), NameTree::Fail);
    let t: NameTree<Path> = "! & 2 * /a & /b".parse().unwrap();
    assert_eq!(t.simplified().to_string(), "2 * /a & /b");
}

#[test]
fn explain_shows_each_step() {
    let n = namer(&[("world-v2", true)]);
    let d = Dtab::parse("/svc => /host; /host/world => /#/t/world; /host/world => /#/t/world-v2")
        .unwrap();
    let e = explain(&d, &n, &p("/svc/world"), DelegateLimits::default());
    let text = e.to_string();
    assert!(
        text.contains("#0 /svc => /host rewrites it to /host/world"),
        "{text}"
    );
    assert!(text.contains("#2 /host/world => /#/t/world-v2"), "{text}");
    assert!(
        text.contains("namer: bound /#/t/world-v2 (has endpoints)"),
        "{text}"
    );
    assert!(text.contains("namer: negative (~)"), "{text}");
    assert!(text.ends_with("first choice: /#/t/world-v2"), "{text}");
    match &e.trace.outcome {
        Outcome::Delegated(branches) => assert_eq!(branches.len(), 2),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unions_of_drained_negative_or_failed_members_agree_with_simplification() {
    // Found by the property test: picking must agree with `simplified`.
    let n = namer(&[("up", true)]);
    // All weights 0: drained, negative, so the alternation falls back.
    assert_eq!(
        first("/s => (0 * /#/t/up) | /#/t/up", &n, "/s").unwrap(),
        "/#/t/up"
    );
    // Neg and Fail members only: the union fails and stops the fallback, as its simplification.
    assert_eq!(
        first("/s => (2 * ~ & 1 * !) | /#/t/up", &n, "/s"),
        Err(Unusable::Fail)
    );
    let t: NameTree<Path> = "2 * ~ & 1 * !".parse().unwrap();
    assert_eq!(t.simplified(), NameTree::Fail);
}
