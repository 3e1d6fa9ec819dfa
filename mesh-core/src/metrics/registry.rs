//! The registry every meshwork metric is registered in, and the scrape-time callbacks that export
//! counters other components own.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry, Unit};

use super::MetricsError;

/// A shared Prometheus registry.
///
/// Cloning is cheap and every clone sees the same metrics. Metric families are registered when a
/// component is set up (not per request); [`MetricsRegistry::encode`] renders everything in the
/// OpenMetrics text format that Prometheus scrapes.
#[derive(Clone)]
pub struct MetricsRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    registry: RwLock<Registry>,
    callbacks: Arc<CallbackCollector>,
    /// Names of the targets (clients, servers) that record into this registry; see
    /// [`MetricsRegistry::claim_name`].
    claimed: Arc<parking_lot::Mutex<BTreeMap<String, Held>>>,
}

/// Who holds a claimed name: the claim's id (so a claim taken over does not free the name when it
/// is dropped) and its [`Succession`], if any.
struct Held {
    claim: u64,
    succession: Option<Succession>,
}

/// Ids of claims and successions: unique per process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A line of targets that replace one another under the same names, e.g. the clients a
/// configuration reload builds in place of the running ones. A claim made with
/// [`MetricsRegistry::claim_name_in`] takes a name over from a live claim of an *earlier*
/// generation of the same succession (the replaced client keeps serving its requests in flight, but
/// the name is the new one's); any other live claim on the name still refuses it.
///
/// Within a generation, [`Succession::rebuilt`] orders the targets rebuilt under the same name
/// (e.g. a routed client's leaf client built again after the leaf cap evicted it, while the
/// evicted one still serves a request): a later rebuild takes the name over from an earlier one,
/// and the next generation from all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Succession {
    id: u64,
    generation: u64,
    rebuild: u64,
}

impl Succession {
    /// A new succession, at its first generation.
    pub fn new() -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            rebuild: 0,
        }
    }

    /// The next generation: its claims take over this generation's names.
    #[must_use]
    pub fn next(&self) -> Self {
        Self {
            id: self.id,
            generation: self.generation + 1,
            rebuild: 0,
        }
    }

    /// Rebuild `n` of this generation: its claims take over the names of this generation's
    /// rebuilds below `n` (and of earlier generations); the next generation takes over from it.
    #[must_use]
    pub fn rebuilt(&self, n: u64) -> Self {
        Self {
            id: self.id,
            generation: self.generation,
            rebuild: n,
        }
    }

    /// Whether a claim of `self` takes a name over from a live claim of `held`.
    fn supersedes(&self, held: &Succession) -> bool {
        self.id == held.id && (held.generation, held.rebuild) < (self.generation, self.rebuild)
    }
}

impl Default for Succession {
    fn default() -> Self {
        Self::new()
    }
}

/// Holds a target name claimed with [`MetricsRegistry::claim_name`]; dropping it frees the name
/// (unless a later generation of its [`Succession`] took the name over).
pub struct NameClaim {
    claimed: Weak<parking_lot::Mutex<BTreeMap<String, Held>>>,
    name: String,
    id: u64,
}

impl Drop for NameClaim {
    fn drop(&mut self) {
        if let Some(claimed) = self.claimed.upgrade() {
            let mut claimed = claimed.lock();
            if claimed.get(&self.name).is_some_and(|h| h.claim == self.id) {
                claimed.remove(&self.name);
            }
        }
    }
}

impl fmt::Debug for NameClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NameClaim").field(&self.name).finish()
    }
}

/// The value read by a scrape-time callback.
type ReadFn = Box<dyn Fn() -> f64 + Send + Sync>;

/// Families of values owned elsewhere (atomics in the retry, breaker, discovery and TLS crates),
/// read by callbacks when the registry is encoded.
#[derive(Default)]
struct CallbackCollector {
    next_id: AtomicU64,
    families: RwLock<BTreeMap<String, CallbackFamily>>,
}

struct CallbackFamily {
    help: String,
    kind: CallbackKind,
    series: BTreeMap<u64, (Vec<(String, String)>, ReadFn)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallbackKind {
    Counter,
    Gauge,
}

/// Keeps a scrape-time callback registered; dropping it removes the series from the exposition
/// (so an endpoint that goes away stops being reported). Call [`CallbackHandle::detach`] to keep the
/// series for as long as the registry lives.
#[must_use = "dropping the handle unregisters the callback"]
pub struct CallbackHandle {
    collector: Weak<CallbackCollector>,
    name: String,
    id: u64,
}

// === impl MetricsRegistry ===

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        let callbacks = Arc::new(CallbackCollector::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(callbacks.clone()));
        Self {
            inner: Arc::new(RegistryInner {
                registry: RwLock::new(registry),
                callbacks,
                claimed: Arc::default(),
            }),
        }
    }

    /// Registers a metric (a counter, gauge, family, ...) under its full name (e.g.
    /// `meshwork_route_requests`; counters get `_total` appended when encoded).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner.registry.write().register(name, help, metric);
    }

    /// Registers a metric with a unit, which is appended to the name (`_seconds`).
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.inner
            .registry
            .write()
            .register_with_unit(name, help, unit, metric);
    }

    /// Gives direct access to the underlying prometheus-client registry, e.g. to register a custom
    /// `Collector`.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.inner.registry.write())
    }

    /// Exports a counter that another component owns: `read` is called at every scrape (so the
    /// request path of that component keeps writing its own atomic and nothing is counted twice).
    ///
    /// `name` is given without `_total`. Series with the same name form one family; they must all
    /// be counters and the first registration's `help` is used.
    pub fn register_counter_fn<F>(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        read: F,
    ) -> Result<CallbackHandle, MetricsError>
    where
        F: Fn() -> u64 + Send + Sync + 'static,
    {
        self.register_fn(
            name,
            help,
            CallbackKind::Counter,
            labels,
            Box::new(move || read() as f64),
        )
    }

    /// Exports a gauge that another component owns (endpoints by state, queue depth...), read at
    /// every scrape. See [`MetricsRegistry::register_counter_fn`].
    pub fn register_gauge_fn<F>(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        read: F,
    ) -> Result<CallbackHandle, MetricsError>
    where
        F: Fn() -> f64 + Send + Sync + 'static,
    {
        self.register_fn(name, help, CallbackKind::Gauge, labels, Box::new(read))
    }

    fn register_fn(
        &self,
        name: &str,
        help: &str,
        kind: CallbackKind,
        labels: &[(&str, &str)],
        read: ReadFn,
    ) -> Result<CallbackHandle, MetricsError> {
        validate_name(name)?;
        for (key, _) in labels {
            validate_name(key)?;
        }
        let collector = &self.inner.callbacks;
        let id = collector.next_id.fetch_add(1, Ordering::Relaxed);
        let mut families = collector.families.write();
        let family = families
            .entry(name.to_string())
            .or_insert_with(|| CallbackFamily {
                help: help.to_string(),
                kind,
                series: BTreeMap::new(),
            });
        if family.kind != kind {
            return Err(MetricsError::KindMismatch {
                name: name.to_string(),
            });
        }
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        family.series.insert(id, (labels, read));
        Ok(CallbackHandle {
            collector: Arc::downgrade(collector),
            name: name.to_string(),
            id,
        })
    }

    /// Claims `name` (e.g. `client/web.shop`) for one target recording into this registry, so two
    /// clients cannot both label their series `backend="static"` and merge them into one. Fails
    /// with [`MetricsError::NameTaken`] while another claim on the name is held.
    pub fn claim_name(&self, name: &str) -> Result<NameClaim, MetricsError> {
        self.claim(name, None)
    }

    /// Like [`MetricsRegistry::claim_name`], for a member of `succession`: takes the name over
    /// from a live claim of an earlier generation of the same succession (see [`Succession`]).
    /// Fails with [`MetricsError::NameTaken`] while any other claim on the name is held.
    pub fn claim_name_in(
        &self,
        name: &str,
        succession: Succession,
    ) -> Result<NameClaim, MetricsError> {
        self.claim(name, Some(succession))
    }

    fn claim(&self, name: &str, succession: Option<Succession>) -> Result<NameClaim, MetricsError> {
        let mut claimed = self.inner.claimed.lock();
        let superseded = |held: &Held| match (held.succession, succession) {
            (Some(old), Some(new)) => new.supersedes(&old),
            _ => false,
        };
        if claimed.get(name).is_some_and(|held| !superseded(held)) {
            return Err(MetricsError::NameTaken {
                name: name.to_owned(),
            });
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        claimed.insert(
            name.to_owned(),
            Held {
                claim: id,
                succession,
            },
        );
        Ok(NameClaim {
            claimed: Arc::downgrade(&self.inner.claimed),
            name: name.to_owned(),
            id,
        })
    }

    /// Renders every metric in the OpenMetrics text format (what `/metrics` serves).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry.read())
            .map_err(|_| MetricsError::Encode)?;
        Ok(out)
    }
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRegistry")
            .field(
                "callback_families",
                &self.inner.callbacks.families.read().len(),
            )
            .finish_non_exhaustive()
    }
}

/// Metric and label names: `[a-zA-Z_:][a-zA-Z0-9_:]*` (the Prometheus data model).
fn validate_name(name: &str) -> Result<(), MetricsError> {
    let bad = name.char_indices().find(|&(i, c)| {
        !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    });
    match (name.is_empty(), bad) {
        (true, _) => Err(MetricsError::InvalidName {
            name: name.to_string(),
            offset: 0,
        }),
        (false, Some((offset, _))) => Err(MetricsError::InvalidName {
            name: name.to_string(),
            offset,
        }),
        (false, None) => Ok(()),
    }
}

// === impl CallbackCollector ===

impl fmt::Debug for CallbackCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackCollector")
            .field("families", &self.families.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Collector for CallbackCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let families = self.families.read();
        for (name, family) in families.iter() {
            if family.series.is_empty() {
                continue;
            }
            let metric_type = match family.kind {
                CallbackKind::Counter => MetricType::Counter,
                CallbackKind::Gauge => MetricType::Gauge,
            };
            let mut metric_encoder =
                encoder.encode_descriptor(name, &family.help, None, metric_type)?;
            let encode = |encoder: prometheus_client::encoding::MetricEncoder<'_>, value: f64| {
                match family.kind {
                    // A counter read from a u64 atomic is integral; encode it as one.
                    CallbackKind::Counter => ConstCounter::new(value as u64).encode(encoder),
                    CallbackKind::Gauge => ConstGauge::new(value).encode(encoder),
                }
            };
            let mut series = family.series.values();
            match (series.next(), series.next()) {
                // A single unlabelled series is written without `{}`.
                (Some((labels, read)), None) if labels.is_empty() => {
                    encode(metric_encoder, read())?;
                }
                _ => {
                    for (labels, read) in family.series.values() {
                        encode(metric_encoder.encode_family(labels)?, read())?;
                    }
                }
            }
        }
        Ok(())
    }
}

// === impl CallbackHandle ===

impl CallbackHandle {
    /// Keeps the callback registered for the lifetime of the registry.
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for CallbackHandle {
    fn drop(&mut self) {
        if let Some(collector) = self.collector.upgrade() {
            let mut families = collector.families.write();
            if let Some(family) = families.get_mut(&self.name) {
                family.series.remove(&self.id);
                if family.series.is_empty() {
                    families.remove(&self.name);
                }
            }
        }
    }
}

impl fmt::Debug for CallbackHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackHandle")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}
