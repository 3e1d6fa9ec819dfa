//! Explaining a delegation step by step, as Linkerd 1's `/delegator` admin page did.

use std::fmt::{self, Write as _};

use super::delegate::{delegate, Branch, DelegateLimits, DelegateNode, DelegationError, Outcome};
use super::namer::{BoundName, Namer, Resolution};
use super::path::Path;
use super::table::Dtab;
use super::tree::NameTree;

/// How a name resolves under a dtab: the full trace, the resulting tree, and the bound name a
/// request would go to first. Plain data (no serialization dependency); `Display` renders the
/// text form.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The name asked for.
    pub name: Path,
    /// The dtab used.
    pub dtab: Dtab,
    /// Every name visited and how it was rewritten or bound.
    pub trace: DelegateNode,
    /// The simplified tree of bound names, or the error that stopped delegation.
    pub result: Result<NameTree<BoundName>, DelegationError>,
}

/// Delegates `name` under `dtab` and `namer` and records every step.
///
/// ```
/// use mesh_core::dtab::{explain, DelegateLimits, Dtab, InetNamer, Path};
///
/// let dtab = Dtab::parse("/svc => /srv; /srv/world => /$/inet/127.0.0.1/4000").unwrap();
/// let name: Path = "/svc/world".parse().unwrap();
/// let e = explain(&dtab, &InetNamer, &name, DelegateLimits::default());
/// assert!(e.to_string().contains("#0 /svc => /srv"));
/// assert_eq!(e.result.unwrap().to_string(), "/$/inet/127.0.0.1/4000");
/// ```
pub fn explain<N: Namer + ?Sized>(
    dtab: &Dtab,
    namer: &N,
    name: &Path,
    limits: DelegateLimits,
) -> Explanation {
    let trace = delegate(dtab, namer, name, limits);
    let result = trace.to_tree();
    Explanation {
        name: name.clone(),
        dtab: dtab.clone(),
        trace,
        result,
    }
}

// === impl Explanation ===

impl Explanation {
    /// The text rendering (same as `to_string()`).
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(out, "name: {}", self.name);
        let _ = writeln!(out, "dtab: {}", self.dtab);
        render_node(&mut out, &self.trace, 0);
        match &self.result {
            Ok(tree) => {
                let _ = writeln!(out, "result: {tree}");
                match super::delegate::pick(tree, 0.0) {
                    Ok(b) => {
                        let _ = write!(out, "first choice: {b}");
                    }
                    Err(why) => {
                        let _ = write!(out, "first choice: none ({})", why.as_str());
                    }
                }
            }
            Err(e) => {
                let _ = write!(out, "error: {e}");
            }
        }
        f.write_str(&out)
    }
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn render_node(out: &mut String, node: &DelegateNode, level: usize) {
    indent(out, level);
    let _ = write!(out, "{}", node.path);
    match &node.outcome {
        Outcome::DepthExceeded { limit } => {
            let _ = writeln!(out, ": depth limit {limit} reached");
        }
        Outcome::StepsExceeded { limit } => {
            let _ = writeln!(out, ": step limit {limit} reached");
        }
        Outcome::Delegated(branches) => {
            out.push('\n');
            for b in branches {
                match b {
                    Branch::Rule {
                        index,
                        dentry,
                        rewritten,
                        tree,
                    } => {
                        indent(out, level + 1);
                        let _ = writeln!(out, "#{index} {dentry} rewrites it to {rewritten}");
                        render_tree(out, tree, level + 2);
                    }
                    Branch::Namer(r) => {
                        indent(out, level + 1);
                        let _ = match r {
                            Resolution::Unhandled => writeln!(out, "namer: not handled (~)"),
                            Resolution::Neg => writeln!(out, "namer: negative (~)"),
                            Resolution::Fail(why) => writeln!(out, "namer: failed (!): {why}"),
                            Resolution::Bound(b) => writeln!(
                                out,
                                "namer: bound {b} ({})",
                                if b.has_endpoints {
                                    "has endpoints"
                                } else {
                                    "no endpoints"
                                }
                            ),
                        };
                    }
                }
            }
        }
    }
}

fn render_tree(out: &mut String, tree: &NameTree<DelegateNode>, level: usize) {
    match tree {
        NameTree::Leaf(n) => render_node(out, n, level),
        NameTree::Neg => {
            indent(out, level);
            out.push_str("~ (negative)\n");
        }
        NameTree::Fail => {
            indent(out, level);
            out.push_str("! (fail)\n");
        }
        NameTree::Empty => {
            indent(out, level);
            out.push_str("$ (empty)\n");
        }
        NameTree::Alt(ts) => {
            indent(out, level);
            out.push_str("| first usable of:\n");
            for t in ts {
                render_tree(out, t, level + 1);
            }
        }
        NameTree::Union(ws) => {
            indent(out, level);
            out.push_str("& weighted union of:\n");
            for w in ws {
                indent(out, level + 1);
                let _ = writeln!(out, "weight {}:", w.weight);
                render_tree(out, &w.tree, level + 2);
            }
        }
    }
}
