//! Name trees: the right-hand side of a dentry and the result of delegation.

use std::fmt;
use std::str::FromStr;

use super::parse::{self, DtabError};
use super::path::Path;

/// A tree of names, Finagle's `NameTree`.
///
/// Leaves are names (a [`Path`] in a dtab, a bound name after delegation). `Alt` tries its branches
/// in order and uses the first usable one (`/a | /b`); `Union` spreads requests over its members in
/// proportion to their weights (`0.5 * /a & 0.5 * /b`); `Neg` (`~`) is "no binding here, fall
/// back"; `Fail` (`!`) is "stop: fail the request, do not fall back"; `Empty` (`$`) is a binding to
/// the empty set of endpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum NameTree<T> {
    /// One name.
    Leaf(T),
    /// Alternation: the first branch that is usable wins.
    Alt(Vec<NameTree<T>>),
    /// Weighted union.
    Union(Vec<Weighted<T>>),
    /// Negative: no binding (`~`).
    Neg,
    /// Failure: stop delegation and fail (`!`).
    Fail,
    /// The empty set of endpoints (`$`).
    Empty,
}

/// A member of a [`NameTree::Union`] with its weight (default 1.0).
#[derive(Clone, Debug, PartialEq)]
pub struct Weighted<T> {
    /// Relative weight, finite and non-negative. Weight 0 drains the member.
    pub weight: f64,
    /// The member tree.
    pub tree: NameTree<T>,
}

/// Weight of a union member written without `w *` (Finagle's `Weighted.defaultWeight`).
pub const DEFAULT_WEIGHT: f64 = 1.0;

// === impl NameTree ===

impl<T> NameTree<T> {
    /// Replaces every leaf by the tree `f` returns for it (a flat-map over leaves), stopping at the
    /// first error.
    pub fn try_flat_map<U, E>(
        &self,
        f: &mut impl FnMut(&T) -> Result<NameTree<U>, E>,
    ) -> Result<NameTree<U>, E> {
        Ok(match self {
            NameTree::Leaf(t) => f(t)?,
            NameTree::Alt(ts) => NameTree::Alt(
                ts.iter()
                    .map(|t| t.try_flat_map(f))
                    .collect::<Result<_, E>>()?,
            ),
            NameTree::Union(ws) => NameTree::Union(
                ws.iter()
                    .map(|w| {
                        Ok(Weighted {
                            weight: w.weight,
                            tree: w.tree.try_flat_map(f)?,
                        })
                    })
                    .collect::<Result<_, E>>()?,
            ),
            NameTree::Neg => NameTree::Neg,
            NameTree::Fail => NameTree::Fail,
            NameTree::Empty => NameTree::Empty,
        })
    }

    /// Maps every leaf.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> NameTree<U> {
        let r: Result<_, std::convert::Infallible> =
            self.try_flat_map(&mut |t| Ok(NameTree::Leaf(f(t))));
        match r {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }

    /// Calls `f` on every leaf, left to right.
    pub fn for_each_leaf(&self, f: &mut impl FnMut(&T)) {
        match self {
            NameTree::Leaf(t) => f(t),
            NameTree::Alt(ts) => ts.iter().for_each(|t| t.for_each_leaf(f)),
            NameTree::Union(ws) => ws.iter().for_each(|w| w.tree.for_each_leaf(f)),
            NameTree::Neg | NameTree::Fail | NameTree::Empty => {}
        }
    }

    /// Simplifies the tree without changing what it selects, following Finagle's
    /// `NameTree.simplified`:
    ///
    /// * `Alt`: nested alternations are flattened, `Neg` branches dropped, branches after a `Fail`
    ///   dropped (they are unreachable); no branch left is `Neg`, one branch is that branch.
    /// * `Union`: nested members are simplified; members of weight 0 and `Neg` members are dropped;
    ///   if every remaining member is `Fail` the union is `Fail`, otherwise `Fail` members are
    ///   dropped (a union spreads over the members that bind, as Finagle's `eval` does); no member
    ///   left is `Neg`, one member is that member (its weight no longer matters).
    pub fn simplified(self) -> NameTree<T> {
        match self {
            NameTree::Alt(ts) => {
                let mut out = Vec::with_capacity(ts.len());
                simplify_alt_into(ts, &mut out);
                match out.len() {
                    0 => NameTree::Neg,
                    1 => out.pop().unwrap_or(NameTree::Neg),
                    _ => NameTree::Alt(out),
                }
            }
            NameTree::Union(ws) => {
                let mut out: Vec<Weighted<T>> = ws
                    .into_iter()
                    .filter(|w| w.weight > 0.0)
                    .map(|w| Weighted {
                        weight: w.weight,
                        tree: w.tree.simplified(),
                    })
                    .filter(|w| !matches!(w.tree, NameTree::Neg))
                    .collect();
                if out.is_empty() {
                    return NameTree::Neg;
                }
                if out.iter().all(|w| matches!(w.tree, NameTree::Fail)) {
                    return NameTree::Fail;
                }
                out.retain(|w| !matches!(w.tree, NameTree::Fail));
                if out.len() == 1 {
                    return out.pop().map(|w| w.tree).unwrap_or(NameTree::Neg);
                }
                NameTree::Union(out)
            }
            other => other,
        }
    }
}

/// Flattens and simplifies alternation branches into `out`; returns `true` once a `Fail` was pushed
/// (nothing after it is reachable).
fn simplify_alt_into<T>(ts: Vec<NameTree<T>>, out: &mut Vec<NameTree<T>>) -> bool {
    for t in ts {
        match t.simplified() {
            NameTree::Neg => {}
            NameTree::Fail => {
                out.push(NameTree::Fail);
                return true;
            }
            NameTree::Alt(inner) => {
                // Already simplified: push its branches (a Fail can only be last).
                let ends_in_fail = matches!(inner.last(), Some(NameTree::Fail));
                out.extend(inner);
                if ends_in_fail {
                    return true;
                }
            }
            other => out.push(other),
        }
    }
    false
}

// === impl Display ===

impl<T: fmt::Display> NameTree<T> {
    /// Writes the tree; `ctx` says which operator the surrounding expression is, so that nested
    /// trees that would otherwise re-parse differently get parentheses.
    fn fmt_in(&self, f: &mut fmt::Formatter<'_>, ctx: Ctx) -> fmt::Result {
        match self {
            NameTree::Leaf(t) => write!(f, "{t}"),
            NameTree::Neg => f.write_str("~"),
            NameTree::Fail => f.write_str("!"),
            NameTree::Empty => f.write_str("$"),
            NameTree::Alt(ts) if ts.is_empty() => f.write_str("~"),
            NameTree::Alt(ts) if ts.len() == 1 => ts[0].fmt_in(f, ctx),
            NameTree::Alt(ts) => {
                let parens = ctx != Ctx::Top;
                if parens {
                    f.write_str("(")?;
                }
                for (i, t) in ts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    t.fmt_in(f, Ctx::Alt)?;
                }
                if parens {
                    f.write_str(")")?;
                }
                Ok(())
            }
            NameTree::Union(ws) if ws.is_empty() => f.write_str("~"),
            NameTree::Union(ws) if ws.len() == 1 && ws[0].weight == DEFAULT_WEIGHT => {
                ws[0].tree.fmt_in(f, ctx)
            }
            NameTree::Union(ws) => {
                let parens = ctx == Ctx::Union;
                if parens {
                    f.write_str("(")?;
                }
                for (i, w) in ws.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" & ")?;
                    }
                    if w.weight != DEFAULT_WEIGHT {
                        write!(f, "{} * ", w.weight)?;
                    }
                    w.tree.fmt_in(f, Ctx::Union)?;
                }
                if parens {
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    Alt,
    Union,
}

impl<T: fmt::Display> fmt::Display for NameTree<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_in(f, Ctx::Top)
    }
}

impl FromStr for NameTree<Path> {
    type Err = DtabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_tree(s)
    }
}
