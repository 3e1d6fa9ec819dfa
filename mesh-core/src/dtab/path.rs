//! Hierarchical names: `/svc/world`, `/$/inet/127.0.0.1/8080`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::parse::{self, DtabError};

/// A hierarchical name: a sequence of non-empty segments, written `/a/b/c`.
///
/// As in Finagle's `com.twitter.finagle.Path`, a segment is shown literally when it consists of ASCII
/// letters, digits and `_:.#$%-`; any other byte is written as `\xHH`. `/` alone is the empty path.
/// Cloning is cheap (one reference count).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Path(Arc<[Arc<str>]>);

// === impl Path ===

impl Path {
    /// The empty path, `/`.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds a path from segments. Returns `None` if a segment is empty (empty segments are not
    /// allowed, as in Finagle).
    pub fn from_segments<I, S>(segments: I) -> Option<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let segs: Vec<Arc<str>> = segments.into_iter().map(Into::into).collect();
        if segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(Self(segs.into()))
    }

    /// The segments of this path.
    pub fn segments(&self) -> &[Arc<str>] {
        &self.0
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the empty path `/`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// If `prefix` is a prefix of this path, the remaining segments.
    pub fn strip_prefix(&self, prefix: &Path) -> Option<&[Arc<str>]> {
        self.0.strip_prefix(&prefix.0[..])
    }

    /// Whether this path starts with the given segments.
    pub fn starts_with(&self, segs: &[&str]) -> bool {
        self.0.len() >= segs.len() && self.0.iter().zip(segs).all(|(a, b)| &**a == *b)
    }

    /// This path followed by `suffix`.
    pub fn join(&self, suffix: &[Arc<str>]) -> Path {
        if suffix.is_empty() {
            return self.clone();
        }
        if self.0.is_empty() {
            return Path(suffix.into());
        }
        let mut v = Vec::with_capacity(self.0.len() + suffix.len());
        v.extend_from_slice(&self.0);
        v.extend_from_slice(suffix);
        Path(v.into())
    }

    /// This path followed by one more segment. Returns `None` if `segment` is empty.
    pub fn child(&self, segment: &str) -> Option<Path> {
        if segment.is_empty() {
            return None;
        }
        Some(self.join(&[Arc::from(segment)]))
    }

    /// The path made of the segments from `start` on (the residual of a bound name).
    pub fn drop_first(&self, n: usize) -> Path {
        Path(self.0.get(n..).unwrap_or(&[]).into())
    }

    /// The path made of the first `n` segments.
    pub fn take(&self, n: usize) -> Path {
        Path(self.0[..n.min(self.0.len())].into())
    }
}

/// Whether `b` is shown literally in a path segment (Finagle's `Path.showableChars`).
pub(crate) fn is_showable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'#' | b'$' | b'%' | b'-')
}

/// Writes one segment in canonical form, escaping bytes that are not showable as `\xHH`.
pub(crate) fn write_segment(f: &mut fmt::Formatter<'_>, seg: &str) -> fmt::Result {
    for &b in seg.as_bytes() {
        if is_showable(b) {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for seg in self.0.iter() {
            f.write_str("/")?;
            write_segment(f, seg)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

impl FromStr for Path {
    type Err = DtabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_path(s)
    }
}
