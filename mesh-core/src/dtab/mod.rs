//! Delegation tables (dtabs): Finagle's and Linkerd 1's way of turning a logical name into the
//! discovery source that serves it.
//!
//! A dtab is a list of rewrite rules, *dentries*, `prefix => tree`:
//!
//! ```text
//! /srv         => /#/dns;                        # a namespace backed by DNS
//! /srv/world   => /$/inet/10.0.0.7/8080;         # one service pinned to an address
//! /host        => /srv;
//! /svc         => /host;                         # the router asks for /svc/<host>
//! /host/web    => 0.9 * /srv/web & 0.1 * /srv/web-canary;
//! /host/search => /srv/search-us | /srv/search-eu;
//! ```
//!
//! # Semantics (Finagle `Dtab`/`NameTree`, Linkerd 1 "Dtabs" docs)
//!
//! * A name is rewritten by every dentry whose prefix matches it. **Later rules win**: the matches
//!   form an alternation, latest first, so an appended rule (for example from the `l5d-dtab`
//!   header) overrides the base dtab, but if it leads nowhere the earlier rules still apply.
//! * The unmatched rest of the name is appended to each leaf of the destination:
//!   `/svc => /host` rewrites `/svc/world/x` to `/host/world/x`.
//! * `*` in a prefix matches any one segment (`/k8s/*/http => /srv`).
//! * `a | b`: use `a`, fall back to `b` when `a` is negative (`~`, nothing binds) or bound only to
//!   sources without endpoints. `!` stops the fallback and fails. `$` is the empty set.
//! * `0.5 * a & 0.5 * b`: a weighted union; a member without a weight has weight 1; weight 0
//!   drains a member.
//! * Leaves that no rule rewrites are offered to a [`Namer`], which binds them to discovery sources:
//!   `/$/inet/IP/PORT` ([`InetNamer`] does these), `/#/dns/host:port`, `/#/file/name`, or names
//!   the configuration defines. The facade implements [`Namer`] over mesh-discovery.
//! * A chain of rewrites longer than [`DEFAULT_MAX_DEPTH`] (100, as Finagle) is a loop and
//!   delegation stops with [`DelegationError::DepthExceeded`].
//!
//! # Why this design
//!
//! Delegation is pure and synchronous here: the result is a [`NameTree`] of [`BoundName`]s that
//! records whether each source has endpoints when it was computed. The router caches that tree per
//! logical name and recomputes it only when the dtab changes or the namer's
//! [`generation`](Namer::generation) moves, so a request without overrides does no delegation at
//! all; picking a leaf ([`pick`]) walks a few nodes and allocates nothing. Finagle binds lazily
//! with `Activity` streams; the cached-tree approach gives the same answers with far less
//! machinery on the request path.
//!
//! Printing is canonical: `Display` for [`Path`], [`Dentry`], [`Dtab`] and [`NameTree`] produces
//! text that parses back to the same value, which is how overrides travel in `l5d-ctx-dtab`.
//!
//! ```
//! use mesh_core::dtab::{bind, pick, DelegateLimits, Dtab, InetNamer, Path};
//!
//! let base = Dtab::parse("/svc => /srv; /srv/world => /$/inet/127.0.0.1/4000;").unwrap();
//! let over = Dtab::parse("/svc/world => /$/inet/127.0.0.1/5000").unwrap();
//! let name: Path = "/svc/world".parse().unwrap();
//!
//! let tree = bind(&base, &InetNamer, &name, DelegateLimits::default()).unwrap();
//! assert_eq!(pick(&tree, 0.0).unwrap().to_string(), "/$/inet/127.0.0.1/4000");
//!
//! let tree = bind(&base.concat(&over), &InetNamer, &name, DelegateLimits::default()).unwrap();
//! assert_eq!(pick(&tree, 0.0).unwrap().to_string(), "/$/inet/127.0.0.1/5000");
//! ```

mod delegate;
mod explain;
mod namer;
mod parse;
mod path;
mod table;
mod tree;

pub use delegate::{
    bind, delegate, pick, Branch, DelegateLimits, DelegateNode, DelegationError, Outcome, Unusable,
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_STEPS,
};
pub use explain::{explain, Explanation};
pub use namer::{BoundName, InetNamer, Namer, NamerChain, Resolution};
pub use parse::{DtabError, Found, Subject, MAX_NESTING};
pub use path::Path;
pub use table::{Dentry, Dtab, Prefix, PrefixElem};
pub use tree::{NameTree, Weighted, DEFAULT_WEIGHT};

#[cfg(test)]
mod tests;
