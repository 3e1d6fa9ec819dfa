//! Static sources: a fixed list of endpoints, and a list the program changes by hand.
//!
//! [`Discovery::fixed`] is for configuration that names its endpoints outright (a dtab's
//! `/$/inet/IP/PORT`, a test). It needs no task and no runtime; the set never changes and its
//! [`Changes`](crate::Changes) stream inserts the set once and then stays pending.
//!
//! [`Discovery::manual`] returns a handle plus an [`Updater`] through which the program publishes
//! new sets itself (an admin endpoint, a control-plane client, a test driving a balancer), with
//! the same snapshot, error and counter semantics as the other sources.
//!
//! ```
//! use mesh_discovery::{Discovery, Endpoint};
//!
//! let a = Endpoint::new("127.0.0.1:8080".parse().unwrap());
//! let (discovery, updater) = Discovery::manual();
//! updater.update([a]).unwrap();
//! assert_eq!(discovery.current().len(), 1);
//! ```

use std::fmt;

use crate::{watch::Publisher, Discovery, DiscoveryError, Endpoint, EndpointSet};

/// Publishes endpoint sets into a [`Discovery::manual`] handle.
pub struct Updater {
    publisher: Publisher,
}

// === impl Discovery (fixed) ===

impl Discovery {
    /// A source whose endpoint set is `endpoints`, forever. Rejects invalid endpoints
    /// ([`Endpoint::validate`]) and duplicate addresses.
    pub fn fixed(endpoints: impl IntoIterator<Item = Endpoint>) -> Result<Self, DiscoveryError> {
        let set = EndpointSet::from_endpoints_named(endpoints, "static")?;
        let (publisher, discovery) = Discovery::channel("static");
        publisher.publish(set);
        Ok(discovery.keep_open(publisher))
    }

    /// A source that starts empty and changes when the program calls [`Updater::update`].
    /// Dropping the [`Updater`] freezes the set (handles keep the last one; `changed()` then
    /// reports [`DiscoveryError::Stopped`]).
    pub fn manual() -> (Self, Updater) {
        let (publisher, discovery) = Discovery::channel("manual");
        (discovery, Updater { publisher })
    }
}

// === impl Updater ===

impl Updater {
    /// Replaces the endpoint set. An invalid list is rejected, reported to the handles as an
    /// error, and the previous set is kept (the same advisory rule as every source).
    pub fn update(
        &self,
        endpoints: impl IntoIterator<Item = Endpoint>,
    ) -> Result<(), DiscoveryError> {
        match EndpointSet::from_endpoints_named(endpoints, self.publisher.source()) {
            Ok(set) => {
                self.publisher.publish(set);
                Ok(())
            }
            Err(error) => {
                self.publisher.report(error.clone());
                Err(error)
            }
        }
    }

    /// Reports an error (for example a control plane that is unreachable); the set is kept.
    pub fn report_error(&self, error: DiscoveryError) {
        self.publisher.report(error);
    }
}

impl fmt::Debug for Updater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Updater").finish_non_exhaustive()
    }
}
