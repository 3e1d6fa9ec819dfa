//! Reloading the configuration: routes and dtabs are swapped in place (requests in flight keep
//! the table they started with); changed services get new clients, swapped atomically so that
//! requests in flight finish on the old ones. An invalid file keeps the running configuration and
//! is reported in the log, on `/config` and by `meshwork_proxy_config_reloads_total{result}` and
//! `meshwork_proxy_config_valid`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use meshwork::config::Config;

use crate::Proxy;

pub(crate) struct Reloader {
    proxy: Proxy,
    config: Config,
    seen: Option<(SystemTime, u64)>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    valid: Arc<AtomicU64>,
    last_error: Option<String>,
}

impl Reloader {
    pub(crate) fn new(proxy: Proxy, config: Config) -> Self {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let registry = &proxy.telemetry.registry;
        let name = "meshwork_proxy_config_reloads";
        let help = "Configuration reloads by result";
        let valid = Arc::new(AtomicU64::new(1));
        let (o, f, v) = (ok.clone(), failed.clone(), valid.clone());
        if let Err(error) = registry
            .register_gauge_fn(
                "meshwork_proxy_config_valid",
                "1 if the last configuration read was valid, 0 if the running one was kept",
                &[],
                move || v.load(Ordering::Relaxed) as f64,
            )
            .map(|h| h.detach())
        {
            tracing::warn!(%error, "cannot register the reload metrics");
        }
        let handles = [
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
        let seen = stamp(&proxy.file);
        Self {
            proxy,
            config,
            seen,
            ok,
            failed,
            valid,
            last_error: None,
        }
    }

    /// Whether the file's modification time or size changed since the last look.
    pub(crate) fn file_changed(&mut self) -> bool {
        let now = stamp(&self.proxy.file);
        let changed = now.is_some() && now != self.seen;
        self.seen = now;
        changed
    }

    pub(crate) fn reload(&mut self, why: &str) {
        let result = Config::load(&self.proxy.file)
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
        let (old, p) = (&self.config, &mut self.proxy);
        if new.outbound_listen != old.outbound_listen
            || new.admin_listen != old.admin_listen
            || new.inbound.as_ref().map(|i| i.listen) != old.inbound.as_ref().map(|i| i.listen)
            || new.inbound.is_some() != old.inbound.is_some()
        {
            tracing::warn!("listener addresses changed: they take effect at the next start");
        }
        let same_clients = new.same_services(old)
            && new.outbound_protocol == old.outbound_protocol
            && new.outbound_trust_overrides == old.outbound_trust_overrides
            && new.shed == old.shed
            && new.endpoint_concurrency == old.endpoint_concurrency
            && new.connect_timeout == old.connect_timeout
            && new
                .inbound
                .as_ref()
                .map(|i| (i.app, i.app_protocol, i.trust_overrides))
                == old
                    .inbound
                    .as_ref()
                    .map(|i| (i.app, i.app_protocol, i.trust_overrides));
        if same_clients {
            // Keep the warm clients (pools, balancer estimates, breakers): swap the tables.
            let routing = p.outbound.client.load().routing().clone();
            routing.set_routes(new.route_table().map_err(|e| e.to_string())?);
            routing.set_dtab(new.outbound_dtab.clone());
            if let (Some(f), Some(i)) = (&p.inbound, &new.inbound) {
                f.client.load().routing().set_dtab(i.dtab.clone());
            }
        } else {
            // The new clients are the next generation: they take over the running clients' metric
            // names while those finish the requests in flight on them.
            let succession = p.succession.next();
            let (outbound, inbound) =
                crate::clients(&p.telemetry, &p.credentials, &new, succession)?;
            p.succession = succession;
            p.outbound.client.store(Arc::new(outbound));
            if let (Some(f), Some(i)) = (&p.inbound, inbound) {
                f.client.store(Arc::new(i));
            }
        }
        self.config = new;
        Ok(())
    }

    /// Shows the running configuration and the last reload's outcome on the admin port.
    pub(crate) fn publish(&self) {
        let admin = &self.proxy.admin;
        admin.set_router(
            "outbound",
            self.proxy.outbound.client.load().routing().clone(),
        );
        if let Some(f) = &self.proxy.inbound {
            admin.set_router("inbound", f.client.load().routing().clone());
        }
        admin.set_config(serde_json::json!({
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

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
