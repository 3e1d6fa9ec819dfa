//! An immutable, address-ordered set of endpoints, and the difference between two of them.
//!
//! Sources publish whole [`EndpointSet`]s (a snapshot, shared as an `Arc`), never edits: a
//! snapshot is easy to reason about, cheap to share with any number of readers, and the changes a
//! balancer needs fall out of comparing two of them with [`EndpointSet::diff`]. Keys are socket
//! addresses; the map is sorted so the diff is one merge walk and its order is deterministic.
//!
//! ```
//! use mesh_discovery::{Endpoint, EndpointSet};
//! use tower::discover::Change;
//!
//! let a: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
//! let b: std::net::SocketAddr = "127.0.0.1:2".parse().unwrap();
//! let old = EndpointSet::from_endpoints([Endpoint::new(a)]).unwrap();
//! let new = EndpointSet::from_endpoints([Endpoint::new(b)]).unwrap();
//! let changes = old.diff(&new);
//! assert!(matches!(changes[0], Change::Insert(addr, _) if addr == b));
//! assert!(matches!(changes[1], Change::Remove(addr) if addr == a));
//! ```

use std::{collections::BTreeMap, net::SocketAddr};

use tower::discover::Change;

use crate::{DiscoveryError, Endpoint};

/// A set of endpoints keyed (and ordered) by socket address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSet {
    endpoints: BTreeMap<SocketAddr, Endpoint>,
}

// === impl EndpointSet ===

impl EndpointSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set, checking every endpoint ([`Endpoint::validate`]) and rejecting two entries
    /// with the same address.
    pub fn from_endpoints(
        endpoints: impl IntoIterator<Item = Endpoint>,
    ) -> Result<Self, DiscoveryError> {
        Self::from_endpoints_named(endpoints, "static list")
    }

    pub(crate) fn from_endpoints_named(
        endpoints: impl IntoIterator<Item = Endpoint>,
        source_name: &str,
    ) -> Result<Self, DiscoveryError> {
        let mut set = Self::new();
        for ep in endpoints {
            ep.validate()?;
            let addr = ep.addr;
            if set.endpoints.insert(addr, ep).is_some() {
                return Err(DiscoveryError::DuplicateEndpoint {
                    addr,
                    source_name: source_name.to_owned(),
                });
            }
        }
        Ok(set)
    }

    /// Inserts without checks; the caller guarantees validity (DNS results).
    pub(crate) fn insert_unchecked(&mut self, ep: Endpoint) {
        self.endpoints.insert(ep.addr, ep);
    }

    /// Mutable access for sources that merge entries (SRV weights).
    pub(crate) fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut Endpoint> {
        self.endpoints.get_mut(addr)
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoint at `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Option<&Endpoint> {
        self.endpoints.get(addr)
    }

    /// True when an endpoint at `addr` is in the set.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.endpoints.contains_key(addr)
    }

    /// The endpoints in address order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Endpoint> + '_ {
        self.endpoints.values()
    }

    /// The addresses in order.
    pub fn addrs(&self) -> impl ExactSizeIterator<Item = SocketAddr> + '_ {
        self.endpoints.keys().copied()
    }

    /// The changes that turn `self` into `newer`: first an `Insert` for every endpoint that is new
    /// or whose attributes (weight, labels, identity) changed, then a `Remove` for every address
    /// that is gone, each group in address order.
    ///
    /// Inserts come first so that a balancer replacing its whole set never passes through an
    /// empty one.
    pub fn diff(&self, newer: &EndpointSet) -> Vec<Change<SocketAddr, Endpoint>> {
        let mut changes = Vec::new();
        for (addr, ep) in &newer.endpoints {
            if self.endpoints.get(addr) != Some(ep) {
                changes.push(Change::Insert(*addr, ep.clone()));
            }
        }
        for addr in self.endpoints.keys() {
            if !newer.endpoints.contains_key(addr) {
                changes.push(Change::Remove(*addr));
            }
        }
        changes
    }
}

impl<'a> IntoIterator for &'a EndpointSet {
    type Item = &'a Endpoint;
    type IntoIter = std::collections::btree_map::Values<'a, SocketAddr, Endpoint>;

    fn into_iter(self) -> Self::IntoIter {
        self.endpoints.values()
    }
}

#[cfg(test)]
mod tests;
