//! Fuzzes the dtab parser and printer: parsing arbitrary input never panics, errors point inside
//! the input and print as ASCII, and whatever parses prints to text that parses back to the same
//! dtab.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::dtab::{Dtab, NameTree, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Dtab::parse(text) {
        Ok(dtab) => {
            let printed = dtab.to_string();
            let again = Dtab::parse(&printed).expect("printed dtab parses");
            assert_eq!(again, dtab, "parse -> print -> parse changed {printed:?}");
            assert_eq!(again.to_string(), printed);
        }
        Err(e) => {
            assert!(e.offset <= text.len());
            assert!(e.to_string().is_ascii());
        }
    }
    if let Ok(tree) = text.parse::<NameTree<Path>>() {
        let printed = tree.to_string();
        assert_eq!(printed.parse::<NameTree<Path>>().ok(), Some(tree));
    }
    if let Ok(path) = text.parse::<Path>() {
        assert_eq!(path.to_string().parse::<Path>().ok(), Some(path));
    }
});
