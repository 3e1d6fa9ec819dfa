//! Property tests for the dtab parser and printer, and for leaf picking.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mesh_core::dtab::{
    pick, BoundName, Dentry, Dtab, NameTree, Path, Prefix, PrefixElem, Weighted, DEFAULT_WEIGHT,
};
use proptest::prelude::*;

fn segment() -> impl Strategy<Value = Arc<str>> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.:#$%-]{1,8}",
        1 => "\\PC{1,4}",
        1 => "[ */=>|&()\\\\;~!]{1,3}",
    ]
    .prop_map(|s: String| Arc::from(s))
}

fn path() -> impl Strategy<Value = Path> {
    prop::collection::vec(segment(), 0..4).prop_map(|segs| Path::from_segments(segs).unwrap())
}

fn prefix() -> impl Strategy<Value = Prefix> {
    prop::collection::vec(
        prop_oneof![
            4 => segment().prop_map(PrefixElem::Label),
            1 => Just(PrefixElem::Any),
        ],
        0..4,
    )
    .prop_map(Prefix::new)
}

fn weight() -> impl Strategy<Value = f64> {
    prop_oneof![
        2 => Just(DEFAULT_WEIGHT),
        1 => Just(0.0),
        2 => 0.0f64..1000.0,
        1 => (0u32..100).prop_map(f64::from),
        1 => Just(1e-7),
        1 => Just(1e21),
    ]
}

/// Trees in the shape the parser produces: alternations and unions of at least two, or a union
/// of one with a weight other than 1.
fn tree() -> impl Strategy<Value = NameTree<Path>> {
    let leaf = prop_oneof![
        6 => path().prop_map(NameTree::Leaf),
        1 => Just(NameTree::Neg),
        1 => Just(NameTree::Fail),
        1 => Just(NameTree::Empty),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(NameTree::Alt),
            prop::collection::vec((weight(), inner.clone()), 2..4).prop_map(|ws| {
                NameTree::Union(
                    ws.into_iter()
                        .map(|(weight, tree)| Weighted { weight, tree })
                        .collect(),
                )
            }),
            (
                weight().prop_filter("not the default", |w| *w != DEFAULT_WEIGHT),
                inner
            )
                .prop_map(|(weight, tree)| NameTree::Union(vec![Weighted { weight, tree }])),
        ]
    })
}

fn dtab() -> impl Strategy<Value = Dtab> {
    prop::collection::vec((prefix(), tree()), 0..5).prop_map(|entries| {
        Dtab::from_entries(
            entries
                .into_iter()
                .map(|(p, t)| Dentry::new(p, t))
                .collect(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_arbitrary_strings(s in "\\PC{0,80}") {
        let _ = Dtab::parse(&s);
        let _ = s.parse::<Path>();
        let _ = s.parse::<NameTree<Path>>();
        let _ = s.parse::<Dentry>();
    }

    #[test]
    fn parser_never_panics_on_dtab_like_input(s in "[/a-z$#*=>|&~!().0-9; \\\\x\t]{0,120}") {
        if let Err(e) = Dtab::parse(&s) {
            prop_assert!(e.offset <= s.len());
            prop_assert!(e.to_string().is_ascii());
        }
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        let s = String::from_utf8_lossy(&bytes);
        let _ = Dtab::parse(&s);
    }

    #[test]
    fn print_then_parse_is_the_identity(d in dtab()) {
        let text = d.to_string();
        let back = Dtab::parse(&text);
        prop_assert!(back.is_ok(), "{:?} did not parse: {:?}", text, back);
        let back = back.unwrap();
        prop_assert_eq!(&back, &d, "text: {}", text);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn parse_print_parse_is_the_identity_for_paths(p in path()) {
        let text = p.to_string();
        prop_assert_eq!(text.parse::<Path>().unwrap(), p);
    }

    #[test]
    fn pick_returns_a_usable_leaf_or_an_error(t in tree(), u in 0.0f64..1.0, mask in any::<u32>()) {
        let mut i = 0;
        let bound = t.map(|p| {
            i += 1;
            BoundName { id: p.clone(), residual: Path::empty(), has_endpoints: mask & (1 << (i % 32)) != 0 }
        });
        if let Ok(b) = pick(&bound, u) {
            prop_assert!(b.has_endpoints);
        }
        // Simplifying never changes whether a leaf can be picked (which one may differ by
        // floating-point rounding at a split boundary, so that is not compared).
        let simple = bound.clone().simplified();
        prop_assert_eq!(pick(&bound, u).is_ok(), pick(&simple, u).is_ok());
    }
}
