//! Delegation: evaluating a name under a dtab and a [`Namer`] into a tree of bound names, and
//! picking one bound name for a request.

use std::sync::Arc;

use super::namer::{BoundName, Namer, Resolution};
use super::path::Path;
use super::table::{Dentry, Dtab};
use super::tree::NameTree;

/// Default depth limit: how many rewrites one branch of a delegation may go through. Finagle's
/// `Namer` stops at 100 (`MaxDepth`), which no real dtab comes near; loops hit it quickly.
pub const DEFAULT_MAX_DEPTH: usize = 100;

/// Default bound on the total number of names visited in one delegation (all branches together),
/// so a dtab whose rules fan out (`/a => /b | /b; /b => /c | /c; …`) cannot take exponential time.
pub const DEFAULT_MAX_STEPS: usize = 10_000;

/// Limits on one delegation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelegateLimits {
    /// Longest chain of rewrites (default [`DEFAULT_MAX_DEPTH`]).
    pub max_depth: usize,
    /// Most names visited in total (default [`DEFAULT_MAX_STEPS`]).
    pub max_steps: usize,
}

impl Default for DelegateLimits {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_steps: DEFAULT_MAX_STEPS,
        }
    }
}

impl DelegateLimits {
    /// Checks that both limits are at least 1.
    pub fn validate(&self) -> Result<(), DelegationError> {
        if self.max_depth == 0 || self.max_steps == 0 {
            return Err(DelegationError::InvalidLimits {
                max_depth: self.max_depth,
                max_steps: self.max_steps,
            });
        }
        Ok(())
    }
}

/// Why a delegation could not be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    /// A chain of rewrites was longer than the depth limit: almost always a delegation loop such as
    /// `/a => /b; /b => /a`.
    #[error(
        "delegation exceeded the depth limit of {limit} at {name} (is there a loop in the dtab?)"
    )]
    DepthExceeded {
        /// The configured limit.
        limit: usize,
        /// The name being rewritten when the limit was hit.
        name: Path,
    },
    /// The delegation visited more names than allowed.
    #[error("delegation visited more than {limit} names (reached {name})")]
    StepsExceeded {
        /// The configured limit.
        limit: usize,
        /// The name being rewritten when the limit was hit.
        name: Path,
    },
    /// Limits of zero were configured.
    #[error("invalid delegation limits: max_depth {max_depth} and max_steps {max_steps} must be at least 1")]
    InvalidLimits {
        /// Configured depth limit.
        max_depth: usize,
        /// Configured step limit.
        max_steps: usize,
    },
}

/// One name visited during delegation, and what happened to it: a full trace that
/// [`explain`](super::explain) renders and [`DelegateNode::to_tree`] turns into a result.
#[derive(Clone, Debug, PartialEq)]
pub struct DelegateNode {
    /// The name.
    pub path: Path,
    /// How many rewrites led here (0 for the name asked for).
    pub depth: usize,
    /// What happened.
    pub outcome: Outcome,
}

/// What delegation did with one name.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The name was looked up: every matching dentry (latest first), then the namer. The branches
    /// form an alternation, so the first usable one wins. No usable branch means `Neg`.
    Delegated(Vec<Branch>),
    /// Not looked up: the depth limit was reached.
    DepthExceeded {
        /// The limit.
        limit: usize,
    },
    /// Not looked up: the step limit was reached.
    StepsExceeded {
        /// The limit.
        limit: usize,
    },
}

/// One way a name was rewritten or bound.
#[derive(Clone, Debug, PartialEq)]
pub enum Branch {
    /// A dentry matched and rewrote the name.
    Rule {
        /// Position of the dentry in the dtab (0-based).
        index: usize,
        /// The dentry.
        dentry: Arc<Dentry>,
        /// The name after the rewrite (the dentry's destination with the rest of the name
        /// appended to each leaf).
        rewritten: NameTree<Path>,
        /// Each leaf of `rewritten`, delegated in turn.
        tree: NameTree<DelegateNode>,
    },
    /// The namer was asked.
    Namer(Resolution),
}

struct Delegator<'a, N: ?Sized> {
    dtab: &'a Dtab,
    namer: &'a N,
    limits: DelegateLimits,
    steps: usize,
}

/// Delegates `name` under `dtab` and `namer`, returning the full trace.
///
/// Semantics (Finagle's `Dtab.lookup` + `Namer.bind`): a name is rewritten by every dentry whose
/// prefix matches it, latest first, and finally offered to the namer; these candidates form an
/// alternation, so a later rule wins unless it turns out negative or without endpoints, in which
/// case earlier rules (and then the namer) are tried. Each rewritten leaf is delegated in turn.
pub fn delegate<N: Namer + ?Sized>(
    dtab: &Dtab,
    namer: &N,
    name: &Path,
    limits: DelegateLimits,
) -> DelegateNode {
    let mut d = Delegator {
        dtab,
        namer,
        limits,
        steps: 0,
    };
    d.node(name.clone(), 0)
}

/// Delegates `name` and returns the simplified tree of bound names, or the error that stopped
/// delegation.
pub fn bind<N: Namer + ?Sized>(
    dtab: &Dtab,
    namer: &N,
    name: &Path,
    limits: DelegateLimits,
) -> Result<NameTree<BoundName>, DelegationError> {
    delegate(dtab, namer, name, limits).to_tree()
}

impl<N: Namer + ?Sized> Delegator<'_, N> {
    fn node(&mut self, path: Path, depth: usize) -> DelegateNode {
        if depth > self.limits.max_depth {
            return DelegateNode {
                path,
                depth,
                outcome: Outcome::DepthExceeded {
                    limit: self.limits.max_depth,
                },
            };
        }
        self.steps += 1;
        if self.steps > self.limits.max_steps {
            return DelegateNode {
                path,
                depth,
                outcome: Outcome::StepsExceeded {
                    limit: self.limits.max_steps,
                },
            };
        }
        let mut branches = Vec::new();
        for (index, rewritten) in self.dtab.lookup(&path) {
            let tree = rewritten.map(|p| self.node(p.clone(), depth + 1));
            branches.push(Branch::Rule {
                index,
                dentry: self.dtab.entries()[index].clone(),
                rewritten,
                tree,
            });
        }
        branches.push(Branch::Namer(self.namer.lookup(&path)));
        DelegateNode {
            path,
            depth,
            outcome: Outcome::Delegated(branches),
        }
    }
}

// === impl DelegateNode ===

impl DelegateNode {
    /// The simplified tree of bound names this trace evaluates to, or the first limit it hit.
    pub fn to_tree(&self) -> Result<NameTree<BoundName>, DelegationError> {
        Ok(self.unsimplified()?.simplified())
    }

    fn unsimplified(&self) -> Result<NameTree<BoundName>, DelegationError> {
        match &self.outcome {
            Outcome::DepthExceeded { limit } => Err(DelegationError::DepthExceeded {
                limit: *limit,
                name: self.path.clone(),
            }),
            Outcome::StepsExceeded { limit } => Err(DelegationError::StepsExceeded {
                limit: *limit,
                name: self.path.clone(),
            }),
            Outcome::Delegated(branches) => {
                let mut alts = Vec::with_capacity(branches.len());
                for b in branches {
                    match b {
                        Branch::Rule { tree, .. } => {
                            alts.push(tree.try_flat_map(&mut |n: &DelegateNode| n.unsimplified())?)
                        }
                        Branch::Namer(Resolution::Bound(bound)) => {
                            alts.push(NameTree::Leaf(bound.clone()))
                        }
                        Branch::Namer(Resolution::Neg) => alts.push(NameTree::Neg),
                        Branch::Namer(Resolution::Fail(_)) => alts.push(NameTree::Fail),
                        Branch::Namer(Resolution::Unhandled) => {}
                    }
                }
                Ok(NameTree::Alt(alts))
            }
        }
    }
}

/// Why no bound name could be picked from a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unusable {
    /// Nothing binds the name.
    Neg,
    /// The name binds to the empty set (`$`).
    Empty,
    /// The name binds to discovery sources, but none has endpoints now.
    NoEndpoints,
    /// Delegation reached `!` (or a namer failure).
    Fail,
}

impl Unusable {
    /// A short description, for error messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Unusable::Neg => "no binding",
            Unusable::Empty => "bound to the empty set",
            Unusable::NoEndpoints => "no endpoints",
            Unusable::Fail => "delegation failed",
        }
    }
}

/// Picks the bound name a request goes to.
///
/// `u` is a number in `[0, 1)` that chooses among the members of a union in proportion to their
/// weights (the router supplies a low-discrepancy sequence, so splits are exact over many
/// requests); nested unions reuse the position of `u` inside the chosen member's interval.
/// An alternation takes its first usable branch; `Fail` stops it. A union considers only members
/// that are usable and have a weight above 0.
pub fn pick(tree: &NameTree<BoundName>, u: f64) -> Result<&BoundName, Unusable> {
    match tree {
        NameTree::Leaf(b) if b.has_endpoints => Ok(b),
        NameTree::Leaf(_) => Err(Unusable::NoEndpoints),
        NameTree::Neg => Err(Unusable::Neg),
        NameTree::Fail => Err(Unusable::Fail),
        NameTree::Empty => Err(Unusable::Empty),
        NameTree::Alt(ts) => {
            let mut worst = Unusable::Neg;
            for t in ts {
                match pick(t, u) {
                    Ok(b) => return Ok(b),
                    Err(Unusable::Fail) => return Err(Unusable::Fail),
                    Err(e) => worst = worst.max(e),
                }
            }
            Err(worst)
        }
        NameTree::Union(ws) => {
            let mut total = 0.0;
            let mut best_err: Option<Unusable> = None;
            let mut any_fail = false;
            for w in ws.iter().filter(|w| w.weight > 0.0) {
                match pick(&w.tree, 0.0) {
                    Ok(_) => total += w.weight,
                    Err(Unusable::Fail) => any_fail = true,
                    Err(Unusable::Neg) => {}
                    Err(e) => best_err = Some(best_err.map_or(e, |b| b.max(e))),
                }
            }
            if total <= 0.0 {
                // As `simplified`: negative members are ignored, failed members count only if
                // every other weighted member is negative too; nothing weighted left is negative.
                return Err(match best_err {
                    Some(e) => e,
                    None if any_fail => Unusable::Fail,
                    None => Unusable::Neg,
                });
            }
            let target = u.clamp(0.0, 1.0) * total;
            let mut acc = 0.0;
            let mut last = None;
            for w in ws.iter().filter(|w| w.weight > 0.0) {
                if pick(&w.tree, 0.0).is_err() {
                    continue;
                }
                let lo = acc;
                acc += w.weight;
                last = Some(w);
                if target < acc {
                    let inner = ((target - lo) / w.weight).clamp(0.0, 1.0);
                    return pick(&w.tree, inner);
                }
            }
            // Rounding left `target` at the very top: the last usable member takes it.
            match last {
                Some(w) => pick(&w.tree, 1.0 - f64::EPSILON),
                None => Err(Unusable::Neg),
            }
        }
    }
}
