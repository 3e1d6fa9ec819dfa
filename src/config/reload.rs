//! Running a [`Config`] and reloading it: the routed clients a proxy's listeners forward to,
//! swapped in place when the file changes (features `config`, `admin` and `tls`).
//!
//! Routes and dtabs are swapped in place (requests in flight keep the table they started with).
//! When the services or the client settings changed, new clients are built and swapped
//! atomically, so that requests in flight finish on the old ones; the new clients take over the
//! old ones' metric names (a [`Succession`]). An invalid file keeps the running configuration
//! and is reported in the log, on the admin `/config` page and by the metrics
//! `meshwork_proxy_config_reloads_total{result}` and `meshwork_proxy_config_valid`. Listener
//! addresses take effect at the next start.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use meshwork::config::reload::Reloader;
//! use meshwork::config::Config;
//! use meshwork::core::metrics::Telemetry;
//! use meshwork::core::trace::Tracing;
//!
//! let file = std::path::PathBuf::from("proxy.toml");
//! let config = Config::load(&file)?;
//! let telemetry = Telemetry::new(Default::default(), Tracing::disabled())?;
//! let admin = meshwork::admin::Admin::new(telemetry.clone());
//! let mut reloader = Reloader::<hyper::body::Incoming>::new(file, config, telemetry, admin)?;
//! let outbound = reloader.outbound(); // what the outbound listener forwards through
//! // ... on SIGHUP, or when `reloader.file_changed()`:
//! reloader.reload("SIGHUP");
//! # drop(outbound); Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use mesh_core::metrics::{Succession, Telemetry};

use super::{BuildError, Config};
use crate::admin::Admin;
use crate::body::BoxError;
use crate::routing::RoutedClient;

/// A routed client that a reload may replace; clones share it.
pub type Swappable<B> = Arc<ArcSwap<RoutedClient<B>>>;

/// Holds the running configuration and its clients, and applies reloads. See the
/// [module docs](self).
pub struct Reloader<B> {
    file: PathBuf,
    config: Config,
    telemetry: Telemetry,
    admin: Admin,
    credentials: Option<mesh_tls::Credentials>,
    outbound: Swappable<B>,
    inbound: Option<Swappable<B>>,
    /// The generation of the running clients.
    succession: Succession,
    seen: Option<(SystemTime, u64)>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    valid: Arc<AtomicU64>,
    last_error: Option<String>,
}

impl<B> Reloader<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Loads the TLS credentials, builds the clients of `config` (read from `file`), registers
    /// the reload metrics in `telemetry` and shows the configuration on `admin`.
    ///
    /// # Errors
    ///
    /// [`BuildError`] if the credentials cannot be loaded or a client cannot be built.
    pub fn new(
        file: PathBuf,
        config: Config,
        telemetry: Telemetry,
        admin: Admin,
    ) -> Result<Self, BuildError> {
        let credentials = config.credentials()?;
        let succession = Succession::new();
        let (outbound, inbound) = config.clients(&telemetry, credentials.as_ref(), succession)?;
        let (ok, failed, valid) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(1)),
        );
        register_metrics(&telemetry, &ok, &failed, &valid);
        let reloader = Self {
            seen: stamp(&file),
            file,
            config,
            telemetry,
            admin,
            credentials,
            outbound: Arc::new(ArcSwap::from_pointee(outbound)),
            inbound: inbound.map(|i| Arc::new(ArcSwap::from_pointee(i))),
            succession,
            ok,
            failed,
            valid,
            last_error: None,
        };
        reloader.publish();
        Ok(reloader)
    }

    /// The running configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS credentials of `[tls]`, if any (for the inbound server).
    pub fn credentials(&self) -> Option<&mesh_tls::Credentials> {
        self.credentials.as_ref()
    }

    /// The outbound routed client; a reload that changes the clients swaps it.
    pub fn outbound(&self) -> Swappable<B> {
        self.outbound.clone()
    }

    /// The inbound routed client, with `[inbound] app`.
    pub fn inbound(&self) -> Option<Swappable<B>> {
        self.inbound.clone()
    }

    /// Whether the file's modification time or size changed since the last look.
    pub fn file_changed(&mut self) -> bool {
        let now = stamp(&self.file);
        let changed = now.is_some() && now != self.seen;
        self.seen = now;
        changed
    }

    /// Reads the file again and applies it; an invalid file keeps the running configuration.
    /// `why` (e.g. `"SIGHUP"`) goes into the log line.
    pub fn reload(&mut self, why: &str) {
        let result = Config::load(&self.file)
            .map_err(|e| e.to_string())
            .and_then(|new| self.apply(new));
        match result {
            Ok(()) => {
                tracing::info!(%why, "configuration reloaded");
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.valid.store(1, Ordering::Relaxed);
                self.last_error = None;
            }
            Err(error) => {
                tracing::warn!(%why, %error, "invalid configuration; keeping the running one");
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.valid.store(0, Ordering::Relaxed);
                self.last_error = Some(error);
            }
        }
        self.publish();
    }

    fn apply(&mut self, new: Config) -> Result<(), String> {
        let old = &self.config;
        if new.outbound_listen != old.outbound_listen
            || new.admin_listen != old.admin_listen
            || new.inbound.as_ref().map(|i| i.listen) != old.inbound.as_ref().map(|i| i.listen)
            || new.limits != old.limits
        {
            tracing::warn!(
                "listener addresses or limits changed: they take effect at the next start"
            );
        }
        if new.same_clients(old) {
            // Keep the warm clients (pools, balancer estimates, breakers): swap the tables.
            let routing = self.outbound.load().routing().clone();
            routing.set_routes(new.route_table().map_err(|e| e.to_string())?);
            routing.set_dtab(new.outbound_dtab.clone());
            if let (Some(f), Some(i)) = (&self.inbound, &new.inbound) {
                f.load().routing().set_dtab(i.dtab.clone());
            }
        } else {
            // The next generation takes over the running clients' metric names while those
            // finish the requests in flight on them.
            let succession = self.succession.next();
            let (outbound, inbound) = new
                .clients(&self.telemetry, self.credentials.as_ref(), succession)
                .map_err(|e| e.to_string())?;
            self.succession = succession;
            self.outbound.store(Arc::new(outbound));
            if let (Some(f), Some(i)) = (&self.inbound, inbound) {
                f.store(Arc::new(i));
            }
        }
        self.config = new;
        Ok(())
    }

    /// Shows the running configuration (secrets redacted), its routers and the last reload's
    /// outcome on the admin port.
    pub fn publish(&self) {
        self.admin
            .set_router("outbound", self.outbound.load().routing().clone());
        if let Some(f) = &self.inbound {
            self.admin.set_router("inbound", f.load().routing().clone());
        }
        self.admin.set_config(serde_json::json!({
            "config": self.config.redacted_json(),
            "reload": {
                "valid": self.last_error.is_none(),
                "last_error": self.last_error,
                "successes": self.ok.load(Ordering::Relaxed),
                "failures": self.failed.load(Ordering::Relaxed),
            },
        }));
    }
}

impl<B> std::fmt::Debug for Reloader<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .field("succession", &self.succession)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

fn register_metrics(
    t: &Telemetry,
    ok: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
    valid: &Arc<AtomicU64>,
) {
    let registry = &t.registry;
    let (name, help) = (
        "meshwork_proxy_config_reloads",
        "Configuration reloads by result",
    );
    let (o, f, v) = (ok.clone(), failed.clone(), valid.clone());
    let handles = [
        registry.register_gauge_fn(
            "meshwork_proxy_config_valid",
            "1 if the last configuration read was valid, 0 if the running one was kept",
            &[],
            move || v.load(Ordering::Relaxed) as f64,
        ),
        registry.register_counter_fn(name, help, &[("result", "success")], move || {
            o.load(Ordering::Relaxed)
        }),
        registry.register_counter_fn(name, help, &[("result", "failure")], move || {
            f.load(Ordering::Relaxed)
        }),
    ];
    for h in handles {
        match h {
            Ok(h) => h.detach(),
            Err(error) => tracing::warn!(%error, "cannot register the reload metrics"),
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
