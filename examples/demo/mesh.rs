//! The mesh of the demo: a dev CA and one certificate per workload, and one proxy per workload,
//! served in this process from the same library parts the `mesh-proxy` binary uses
//! (`meshwork::config`, `meshwork::admin`, the routed client and the server).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::body::Incoming;
use meshwork::admin::Admin;
use meshwork::config::Config;
use meshwork::core::metrics::{Succession, Telemetry};
use meshwork::core::trace::Tracing;
use meshwork::tls::dev_ca::{DevCa, WorkloadCertParams};
use tokio::net::TcpListener;

/// The SPIFFE trust domain of the demo's identities.
pub(crate) const TRUST_DOMAIN: &str = "demo.meshwork";
/// Ports on every workload's address, as Linkerd numbers them.
pub(crate) const APP_PORT: u16 = 8080;
pub(crate) const OUTBOUND_PORT: u16 = 4140;
pub(crate) const INBOUND_PORT: u16 = 4143;
pub(crate) const ADMIN_PORT: u16 = 9990;

/// One workload: a name, its loopback address and whether an application runs there.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) ip: Ipv4Addr,
    pub(crate) has_app: bool,
}

impl Workload {
    pub(crate) fn app(&self) -> SocketAddr {
        (self.ip, APP_PORT).into()
    }
    pub(crate) fn outbound(&self) -> SocketAddr {
        (self.ip, OUTBOUND_PORT).into()
    }
    pub(crate) fn inbound(&self) -> SocketAddr {
        (self.ip, INBOUND_PORT).into()
    }
    pub(crate) fn admin(&self) -> SocketAddr {
        (self.ip, ADMIN_PORT).into()
    }
    pub(crate) fn identity(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/{}", self.name)
    }
}

/// A dev CA in `dir` and a certificate for each workload: `dir/<name>.pem`, `dir/<name>.key`.
pub(crate) fn certificates(dir: &Path, workloads: &[Workload]) -> Result<(), String> {
    let ca = DevCa::new("meshwork demo CA").map_err(|e| e.to_string())?;
    ca.write_cert(dir.join("ca.pem"))
        .map_err(|e| e.to_string())?;
    for w in workloads {
        let id = meshwork::tls::Identity::parse(&w.identity()).map_err(|e| e.to_string())?;
        let issued = ca
            .issue(&WorkloadCertParams::new(id, Duration::from_secs(24 * 3600)))
            .map_err(|e| e.to_string())?;
        issued
            .write(
                dir.join(format!("{}.pem", w.name)),
                dir.join(format!("{}.key", w.name)),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The proxy configuration of `me` (the same TOML a `mesh-proxy run` reads): every service
/// reached on its proxy's inbound port with mTLS, routes by Host through the dtab
/// `/host => /srv;`, and the 50/50 split of reviews between v1 and v3.
pub(crate) fn config_text(me: &Workload, all: &[Workload], certs: &Path) -> String {
    let file = |ext: &str| certs.join(format!("{}.{ext}", me.name));
    let mut text = format!(
        "# {name}'s proxy\n\
         [outbound]\nlisten = \"{out}\"\ndtab = \"/host => /srv;\"\n\
         # the local app forwards l5d-ctx-dtab, so per-request overrides follow the call graph\n\
         trust_overrides = true\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [tls]\nchain = {chain:?}\nkey = {key:?}\ntrust_bundle = {ca:?}\nmode = \"strict\"\n\
         [tls.authorize]\ntrust_domains = [\"{TRUST_DOMAIN}\"]\n\n",
        name = me.name,
        out = me.outbound(),
        admin = me.admin(),
        chain = file("pem"),
        key = file("key"),
        ca = certs.join("ca.pem"),
    );
    if me.has_app {
        text += &format!(
            "[inbound]\nlisten = \"{}\"\napp = \"{}\"\n\n",
            me.inbound(),
            me.app()
        );
    }
    for w in all.iter().filter(|w| w.has_app) {
        text += &format!(
            "[[service]]\nname = \"/srv/{}\"\nendpoints = [\"{}\"]\nidentity = \"{}\"\n\n",
            w.name,
            w.inbound(),
            w.identity()
        );
    }
    text += "[[route]]\nname = \"reviews\"\nhost = \"reviews\"\n\
             split = [ { backend = \"/srv/reviews-v1\", weight = 50 }, \
             { backend = \"/srv/reviews-v3\", weight = 50 } ]\ntimeout = \"5s\"\n\n\
             [[route]]\nname = \"by-host\"\nby_host = \"/host\"\ntimeout = \"5s\"\n";
    text
}

/// A proxy running in this process.
pub(crate) struct Proxy {
    pub(crate) name: &'static str,
    pub(crate) admin: Admin,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) tracing: Tracing,
}

/// Starts `me`'s proxy with the configuration `text`: outbound, inbound (if `me` has an app)
/// and admin listeners, each reported by address if it cannot be bound.
pub(crate) async fn start(
    me: &Workload,
    text: &str,
    dir: &Path,
    tracing: Tracing,
) -> Result<Proxy, String> {
    let file: PathBuf = dir.join(format!("{}.toml", me.name));
    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    let config = Config::load(&file).map_err(|e| e.to_string())?;
    let telemetry =
        Telemetry::new(Default::default(), tracing.clone()).map_err(|e| e.to_string())?;
    let credentials = config.credentials().map_err(|e| e.to_string())?;
    // The clients exactly as `mesh-proxy run` builds them from the same file.
    let (outbound, inbound) = config
        .clients::<Incoming>(&telemetry, credentials.as_ref(), Succession::new())
        .map_err(|e| format!("{}'s proxy: {e}", me.name))?;

    let what = |side: &str| format!("{}'s proxy, {side}", me.name);
    let out_listener = bind(config.outbound_listen, &what("outbound")).await?;
    let in_listener = match &config.inbound {
        Some(i) => Some(bind(i.listen, &what("inbound")).await?),
        None => None,
    };
    let admin_listener = bind(config.admin_listen, &what("admin")).await?;

    let admin = Admin::new(telemetry.clone());
    admin.set_router("outbound", outbound.routing().clone());
    if let Some(inbound) = &inbound {
        admin.set_router("inbound", inbound.routing().clone());
    }
    admin.set_config(serde_json::json!({ "config": config.redacted_json() }));

    let server = meshwork::server().limits(config.server_limits());
    let name = me.name;
    tokio::spawn(async move {
        if let Err(e) = server
            .serve(out_listener, outbound, std::future::pending())
            .await
        {
            eprintln!("demo: {name}'s outbound listener stopped: {e}");
        }
    });
    if let (Some(listener), Some(inbound)) = (in_listener, inbound) {
        let server = config
            .server()
            .map_err(|e| e.to_string())?
            .telemetry(telemetry.clone(), name);
        tokio::spawn(async move {
            if let Err(e) = server
                .serve(listener, inbound, std::future::pending())
                .await
            {
                eprintln!("demo: {name}'s inbound listener stopped: {e}");
            }
        });
    }
    let serving = admin.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(admin_listener, std::future::pending()).await {
            eprintln!("demo: {name}'s admin listener stopped: {e}");
        }
    });
    admin.set_ready(true);
    Ok(Proxy {
        name,
        admin,
        admin_addr: me.admin(),
        tracing,
    })
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}
