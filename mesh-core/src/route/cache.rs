//! Per-backend cache of delegation results, read lock-free on the request path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::dtab::{BoundName, DelegationError, NameTree, Path};

/// A cached delegation of one logical name.
#[derive(Debug)]
pub(crate) struct CacheEntry {
    pub(crate) dtab_version: u64,
    pub(crate) namer_generation: u64,
    pub(crate) name: Path,
    pub(crate) result: Result<NameTree<BoundName>, DelegationError>,
}

/// Delegation results keyed by host (the empty key for a fixed name). Reads are one `ArcSwap`
/// load and a hash lookup; a miss or a stale entry is recomputed and inserted copy-on-write.
#[derive(Default)]
pub(crate) struct NameCache {
    entries: ArcSwap<HashMap<Box<str>, Arc<CacheEntry>>>,
}

impl NameCache {
    /// A fresh entry for `key`, if there is one for this dtab version and namer generation.
    pub(crate) fn get(&self, key: &str, dtab_version: u64, gen: u64) -> Option<Arc<CacheEntry>> {
        let map = self.entries.load();
        let e = map.get(key)?;
        (e.dtab_version == dtab_version && e.namer_generation == gen).then(|| e.clone())
    }

    /// Stores `entry` under `key` unless the cache already holds `max` other keys.
    pub(crate) fn insert(&self, key: &str, entry: Arc<CacheEntry>, max: usize) {
        self.entries.rcu(|map| {
            let mut next = HashMap::clone(map);
            if next.len() >= max && !next.contains_key(key) {
                // Full: drop entries from older versions first; if none, do not cache.
                next.retain(|_, e| {
                    e.dtab_version == entry.dtab_version
                        && e.namer_generation == entry.namer_generation
                });
                if next.len() >= max {
                    return next;
                }
            }
            next.insert(key.into(), entry.clone());
            next
        });
    }
}

impl fmt::Debug for NameCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameCache")
            .field("entries", &self.entries.load().len())
            .finish()
    }
}
