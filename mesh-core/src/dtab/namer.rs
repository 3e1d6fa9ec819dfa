//! Leaf resolution: the [`Namer`] trait that turns names into bound discovery sources.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::path::Path;

/// A name bound to a discovery source, Finagle's `Name.Bound`.
///
/// `id` identifies the source (`/$/inet/127.0.0.1/8080`, `/#/dns/world.ns:80`); `residual` is
/// the part of the name the namer did not consume (Linkerd passes it on for path-based routing).
/// `has_endpoints` is the source's state when delegation ran: an alternation (`|`) falls back past
/// a bound name without endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BoundName {
    /// The identity of the discovery source.
    pub id: Path,
    /// The unconsumed rest of the name.
    pub residual: Path,
    /// Whether the source currently has at least one endpoint.
    pub has_endpoints: bool,
}

/// What a [`Namer`] says about a name.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// The namer does not handle names like this one; delegation treats it as negative.
    Unhandled,
    /// The name binds to a discovery source.
    Bound(BoundName),
    /// The namer handles this kind of name but has no binding for it (`~`), e.g. a file namer
    /// asked for a file that does not exist.
    Neg,
    /// The name is known to be unusable; stop and fail (`!`). The text says why.
    Fail(Arc<str>),
}

/// Resolves the leaves of a delegation: `/$/inet/IP/PORT`, `/#/dns/host:port`, `/#/file/name`, or
/// names the configuration defines.
///
/// mesh-core does not build discovery sources itself: the facade implements this trait over
/// mesh-discovery and keeps each source's endpoint state current. `lookup` is called during
/// delegation, which the router caches per logical name, so it may take a lock or allocate; it must
/// not block on I/O (a source that has not answered yet reports `Bound` with
/// `has_endpoints: false`).
///
/// `generation` lets the router's cache notice change: return a number that increases whenever a
/// lookup could answer differently (a source gained or lost its last endpoint, a name appeared).
pub trait Namer: Send + Sync + 'static {
    /// Resolves one name.
    fn lookup(&self, path: &Path) -> Resolution;

    /// A counter that changes whenever any [`Namer::lookup`] answer may have changed.
    fn generation(&self) -> u64 {
        0
    }
}

impl<N: Namer + ?Sized> Namer for Arc<N> {
    fn lookup(&self, path: &Path) -> Resolution {
        (**self).lookup(path)
    }

    fn generation(&self) -> u64 {
        (**self).generation()
    }
}

impl<N: Namer + ?Sized> Namer for Box<N> {
    fn lookup(&self, path: &Path) -> Resolution {
        (**self).lookup(path)
    }

    fn generation(&self) -> u64 {
        (**self).generation()
    }
}

/// The built-in `/$/inet/IP/PORT` namer (Finagle's `inet` system namer): binds to that one
/// address, which always "has endpoints". Other names are [`Resolution::Unhandled`].
///
/// `/$/inet/IP/PORT/rest` binds `/$/inet/IP/PORT` with residual `/rest`; a malformed address
/// under `/$/inet` is [`Resolution::Fail`].
#[derive(Clone, Copy, Debug, Default)]
pub struct InetNamer;

impl Namer for InetNamer {
    fn lookup(&self, path: &Path) -> Resolution {
        if !path.starts_with(&["$", "inet"]) {
            return Resolution::Unhandled;
        }
        match parse_inet(path) {
            Some(_) => Resolution::Bound(BoundName {
                id: path.take(4),
                residual: path.drop_first(4),
                has_endpoints: true,
            }),
            None => Resolution::Fail(Arc::from(format!("{path}: expected /$/inet/IP/PORT"))),
        }
    }
}

fn parse_inet(path: &Path) -> Option<SocketAddr> {
    let segs = path.segments();
    if segs.len() < 4 {
        return None;
    }
    let ip: IpAddr = segs[2].parse().ok()?;
    let port: u16 = segs[3].parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

// === impl BoundName ===

impl BoundName {
    /// The socket address if this is an `/$/inet/IP/PORT` name.
    pub fn inet_addr(&self) -> Option<SocketAddr> {
        if self.id.starts_with(&["$", "inet"]) {
            parse_inet(&self.id)
        } else {
            None
        }
    }
}

impl fmt::Display for BoundName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)?;
        if !self.residual.is_empty() {
            write!(f, "{}", self.residual)?;
        }
        Ok(())
    }
}

/// A namer that asks several namers in turn and takes the first answer that is not
/// [`Resolution::Unhandled`]; its generation is the sum of theirs.
#[derive(Clone, Default)]
pub struct NamerChain(Vec<Arc<dyn Namer>>);

impl NamerChain {
    /// An empty chain (handles nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a namer (asked after the ones already in the chain).
    pub fn with(mut self, namer: impl Namer) -> Self {
        self.0.push(Arc::new(namer));
        self
    }
}

impl fmt::Debug for NamerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamerChain")
            .field("namers", &self.0.len())
            .finish()
    }
}

impl Namer for NamerChain {
    fn lookup(&self, path: &Path) -> Resolution {
        for n in &self.0 {
            match n.lookup(path) {
                Resolution::Unhandled => continue,
                other => return other,
            }
        }
        Resolution::Unhandled
    }

    fn generation(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, n| acc.wrapping_add(n.generation()))
    }
}
