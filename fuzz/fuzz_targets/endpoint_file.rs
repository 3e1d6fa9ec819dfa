//! Fuzzes the endpoint-file parser of `mesh-discovery` in its three formats (YAML, TOML, JSON):
//! arbitrary text never panics, errors name the file, and a list that parses holds only valid
//! endpoints (weight finite and >= 0, unique addresses).
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mesh_discovery::file::parse_endpoints;
use mesh_discovery::{DiscoveryError, FileFormat};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the format, the rest is the file.
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = match which % 3 {
        0 => FileFormat::Yaml,
        1 => FileFormat::Toml,
        _ => FileFormat::Json,
    };
    let path = Path::new("endpoints.fuzz");
    match parse_endpoints(text, format, path) {
        Ok(set) => {
            let mut seen = HashSet::new();
            for e in set.iter() {
                assert!(
                    e.weight.is_finite() && e.weight >= 0.0,
                    "weight {}",
                    e.weight
                );
                assert!(seen.insert(e.addr), "{} twice", e.addr);
            }
        }
        Err(DiscoveryError::Parse { path: p, .. }) => assert_eq!(p, path),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
