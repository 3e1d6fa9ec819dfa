//! The SPIFFE ID grammar, checked in one place.
//!
//! A meshwork workload is named by a [SPIFFE ID], `spiffe://<trust domain>/<path>`. Discovery
//! reads the identity an endpoint is expected to present, and mutual TLS checks the identity a
//! certificate carries. Both must accept exactly the same strings: when discovery accepted an ID
//! (`spiffe://Cluster.local/...`) that TLS later rejected, the endpoint silently vanished from the
//! balancer. So this crate holds the one validator, and `mesh-discovery` and `mesh-tls` both call
//! it. It has no dependencies beyond `thiserror`, so discovery does not compile TLS to use it.
//!
//! The grammar, with the spec's limits:
//!
//! - scheme `spiffe://`, lowercase;
//! - trust domain: non-empty, at most 255 bytes, only `a-z 0-9 . - _` (no uppercase, no port,
//!   no userinfo);
//! - path: empty or `/`-separated segments, each non-empty, not `.` or `..`, only
//!   `a-z A-Z 0-9 . - _`; no trailing `/`;
//! - no query (`?`), fragment (`#`) or percent-encoding;
//! - at most 2048 bytes in total.
//!
//! ```
//! let id = mesh_identity::validate("spiffe://cluster.local/ns/shop/sa/web")?;
//! assert_eq!(id.trust_domain, "cluster.local");
//! assert_eq!(id.path, "/ns/shop/sa/web");
//!
//! let err = mesh_identity::validate("spiffe://Cluster.local/ns/shop/sa/web").unwrap_err();
//! assert_eq!(err.offset, 9);
//! assert_eq!(err.reason, "trust domain must be lowercase");
//! # Ok::<(), mesh_identity::SpiffeIdError>(())
//! ```
//!
//! [SPIFFE ID]: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md

/// A request extension that says who the peer of the connection is, as far as it was verified.
///
/// Layers that must trust only *authenticated* callers (per-request routing overrides, for one)
/// ask this rather than whether an extension is present: a plaintext connection in permissive
/// mode carries a peer extension too, saying "nobody". `mesh_tls::PeerIdentity` implements it.
pub trait AuthenticatedPeer {
    /// The peer's verified SPIFFE ID, or `None` if the peer did not authenticate.
    fn verified_identity(&self) -> Option<&str>;
}

/// Maximum length of a SPIFFE ID in bytes (SPIFFE-ID spec, section 2.3).
pub const MAX_IDENTITY_LEN: usize = 2048;
/// Maximum length of a trust domain name in bytes (SPIFFE-ID spec, section 2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The scheme every SPIFFE ID starts with.
pub const SCHEME: &str = "spiffe://";

/// The parts of a valid SPIFFE ID, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: &'a str,
    /// The path, e.g. `/ns/shop/sa/web`; empty for the ID of a trust domain itself.
    pub path: &'a str,
    /// Byte index in the input where the path starts.
    pub path_start: usize,
}

/// Why a string is not a SPIFFE ID (or a trust domain name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {reason}")]
pub struct SpiffeIdError {
    /// Byte offset of the first offending character.
    pub offset: usize,
    /// What rule was broken.
    pub reason: &'static str,
}

/// Validates a SPIFFE ID and splits it into trust domain and path.
pub fn validate(input: &str) -> Result<SpiffeId<'_>, SpiffeIdError> {
    let err = |offset, reason| SpiffeIdError { offset, reason };
    if input.len() > MAX_IDENTITY_LEN {
        return Err(err(MAX_IDENTITY_LEN, "longer than 2048 bytes"));
    }
    if !input.starts_with(SCHEME) {
        let offset = input
            .bytes()
            .zip(SCHEME.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(input.len());
        return Err(err(offset, "scheme must be \"spiffe://\""));
    }
    let rest = &input[SCHEME.len()..];
    let td_len = rest.find('/').unwrap_or(rest.len());
    let trust_domain = &rest[..td_len];
    validate_trust_domain(trust_domain).map_err(|e| err(SCHEME.len() + e.offset, e.reason))?;
    let path_start = SCHEME.len() + td_len;
    let path = &input[path_start..];
    check_path(path).map_err(|(offset, reason)| err(path_start + offset, reason))?;
    Ok(SpiffeId {
        trust_domain,
        path,
        path_start,
    })
}

/// Validates a trust domain name (`cluster.local`, without the scheme).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let err = |offset, reason| Err(SpiffeIdError { offset, reason });
    if td.is_empty() {
        return err(0, "trust domain is missing");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return err(
            MAX_TRUST_DOMAIN_LEN,
            "trust domain is longer than 255 bytes",
        );
    }
    for (i, b) in td.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b':' => return err(i, "port is not allowed in a SPIFFE ID"),
            b'@' => return err(i, "userinfo is not allowed in a SPIFFE ID"),
            b'?' => return err(i, "query is not allowed in a SPIFFE ID"),
            b'#' => return err(i, "fragment is not allowed in a SPIFFE ID"),
            b'A'..=b'Z' => return err(i, "trust domain must be lowercase"),
            _ => {
                return err(
                    i,
                    "trust domain characters are limited to lowercase letters, digits, '.', '-' and '_'",
                )
            }
        }
    }
    Ok(())
}

/// Validates the path part (empty or starting with '/'); on failure returns (offset, reason).
fn check_path(path: &str) -> Result<(), (usize, &'static str)> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/' (it begins where the trust domain's '/' was found).
    let mut seg_start = 1;
    for (i, b) in path.bytes().enumerate().skip(1) {
        match b {
            b'/' => {
                check_segment(&path[seg_start..i], seg_start)?;
                seg_start = i + 1;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b'?' => return Err((i, "query is not allowed in a SPIFFE ID")),
            b'#' => return Err((i, "fragment is not allowed in a SPIFFE ID")),
            b'%' => return Err((i, "percent-encoding is not allowed in a SPIFFE ID path")),
            _ => {
                return Err((
                    i,
                    "path segment characters are limited to letters, digits, '.', '-' and '_'",
                ))
            }
        }
    }
    if seg_start == path.len() {
        return Err((path.len() - 1, "path cannot have a trailing slash"));
    }
    check_segment(&path[seg_start..], seg_start)
}

fn check_segment(seg: &str, offset: usize) -> Result<(), (usize, &'static str)> {
    match seg {
        "" => Err((offset, "path cannot contain empty segments")),
        "." | ".." => Err((offset, "path cannot contain dot segments ('.' or '..')")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar_and_rejects_the_rest_with_an_offset() {
        let id = validate("spiffe://td/ns/a/sa/b").expect("valid");
        assert_eq!(
            (id.trust_domain, id.path, id.path_start),
            ("td", "/ns/a/sa/b", 11)
        );
        assert_eq!(validate("spiffe://td").expect("valid").path, "");
        for (bad, offset) in [
            ("spiffe://Cluster.local/ns/a", 9),
            ("spiffe://td:8080/x", 11),
            ("spiffe://td/a//b", 14),
            ("spiffe://td/a/", 13),
            ("spiffe://td/../x", 12),
            ("spiffe://td/a%20", 13),
            ("spiffe:///x", 9),
            ("https://td/x", 0),
            ("spiffe://td/a b", 13),
        ] {
            let err = validate(bad).expect_err(bad);
            assert_eq!(err.offset, offset, "{bad}: {err}");
        }
    }
}
