//! Looking for headers that are usually absent.
//!
//! A [`HeaderMap`] lookup hashes the name first, byte by byte for a name `http` has no constant
//! for. The mesh asks every request or response for several such names that most do not carry:
//! the deadline and trace-context headers, `grpc-status`, the hop-by-hop headers. A head carries a
//! handful of headers, and comparing their names is cheaper than hashing one; a map of more than
//! [`SCAN_LIMIT`] values is looked up as usual. The answers are those of `get` and `contains_key`.
//!
//! ```
//! use http::header::{HeaderMap, HeaderName, CONTENT_TYPE};
//! use mesh_core::headers::{contains_any, first};
//!
//! let status = HeaderName::from_static("grpc-status");
//! let mut headers = HeaderMap::new();
//! headers.insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
//! assert!(first(&headers, &status).is_none());
//! headers.append(&status, "14".parse().unwrap());
//! headers.append(&status, "0".parse().unwrap());
//! assert_eq!(first(&headers, &status).unwrap(), "14");
//! assert!(contains_any(&headers, &[&HeaderName::from_static("b3"), &status]));
//! ```

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Maps of up to this many values are scanned rather than looked up.
pub const SCAN_LIMIT: usize = 16;

/// The first value of `name`, as `headers.get(name)` returns it.
#[inline]
pub fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() > SCAN_LIMIT {
        return headers.get(name);
    }
    headers
        .iter()
        .find_map(|(n, value)| (n == name).then_some(value))
}

/// Whether `headers` holds any of `names`.
#[inline]
pub fn contains_any(headers: &HeaderMap, names: &[&HeaderName]) -> bool {
    if headers.len() > SCAN_LIMIT {
        return names.iter().any(|name| headers.contains_key(*name));
    }
    headers.keys().any(|key| names.contains(&key))
}
