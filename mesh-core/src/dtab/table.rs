//! Delegation tables: ordered rewrite rules `prefix => tree`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::parse::{self, DtabError};
use super::path::{write_segment, Path};
use super::tree::NameTree;

/// One element of a [`Prefix`]: a literal label or `*` (any one segment).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PrefixElem {
    /// Matches exactly this segment.
    Label(Arc<str>),
    /// Matches any one segment.
    Any,
}

/// The left-hand side of a dentry: a path whose segments may be `*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Prefix(Arc<[PrefixElem]>);

/// One delegation rule, `prefix => dst`, Finagle's `Dentry`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dentry {
    /// The names this rule applies to.
    pub prefix: Prefix,
    /// What a matching name is rewritten to; the unmatched rest of the name is appended to each
    /// leaf.
    pub dst: NameTree<Path>,
}

/// A delegation table: dentries in order; later entries take precedence over earlier ones.
///
/// Cloning is cheap (the entries are shared).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Dtab(Arc<[Arc<Dentry>]>);

// === impl Prefix ===

impl Prefix {
    /// A prefix of the given elements.
    pub fn new(elems: Vec<PrefixElem>) -> Self {
        Self(elems.into())
    }

    /// The elements.
    pub fn elems(&self) -> &[PrefixElem] {
        &self.0
    }

    /// If this prefix matches the start of `path`, the number of segments it matched.
    pub fn matches(&self, path: &Path) -> Option<usize> {
        let segs = path.segments();
        if segs.len() < self.0.len() {
            return None;
        }
        let ok = self.0.iter().zip(segs).all(|(e, s)| match e {
            PrefixElem::Any => true,
            PrefixElem::Label(l) => l == s,
        });
        ok.then_some(self.0.len())
    }
}

impl From<&Path> for Prefix {
    fn from(p: &Path) -> Self {
        Self(
            p.segments()
                .iter()
                .map(|s| PrefixElem::Label(s.clone()))
                .collect(),
        )
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for e in self.0.iter() {
            f.write_str("/")?;
            match e {
                PrefixElem::Any => f.write_str("*")?,
                PrefixElem::Label(l) => write_segment(f, l)?,
            }
        }
        Ok(())
    }
}

// === impl Dentry ===

impl Dentry {
    /// A rule `prefix => dst`.
    pub fn new(prefix: Prefix, dst: NameTree<Path>) -> Self {
        Self { prefix, dst }
    }
}

impl fmt::Display for Dentry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} => {}", self.prefix, self.dst)
    }
}

impl FromStr for Dentry {
    type Err = DtabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_dentry(s)
    }
}

// === impl Dtab ===

impl Dtab {
    /// The empty dtab.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A dtab of these entries, in order.
    pub fn from_entries(entries: Vec<Dentry>) -> Self {
        Self(entries.into_iter().map(Arc::new).collect())
    }

    /// Parses a dtab such as `/svc => /#/io.l5d.dns; /svc/world => /srv/world-v2;`.
    pub fn parse(s: &str) -> Result<Self, DtabError> {
        parse::parse_dtab(s)
    }

    /// The entries in order.
    pub fn entries(&self) -> &[Arc<Dentry>] {
        &self.0
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This dtab followed by `other` (whose entries therefore take precedence), Finagle's `++`.
    pub fn concat(&self, other: &Dtab) -> Dtab {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        Dtab(self.0.iter().chain(other.0.iter()).cloned().collect())
    }

    /// One rewrite step, Finagle's `Dtab.lookup`: every entry whose prefix matches `path`, latest
    /// first, with the unmatched rest of `path` appended to each leaf of its destination. Returns
    /// the index of each matching entry together with the rewritten tree. An empty result means
    /// the dtab has no binding for the name (`Neg`).
    pub fn lookup(&self, path: &Path) -> Vec<(usize, NameTree<Path>)> {
        self.0
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(i, d)| {
                let n = d.prefix.matches(path)?;
                let rest = &path.segments()[n..];
                Some((i, d.dst.map(|leaf| leaf.join(rest))))
            })
            .collect()
    }
}

impl fmt::Display for Dtab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Dtab {
    type Err = DtabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_dtab(s)
    }
}
