//! mesh-proxy: meshwork as a proxy beside an application (Linkerd's ports: outbound 4140, inbound
//! 4143, admin 9990), configured by one TOML file (see `meshwork::config` for every field and
//! `examples/mesh-proxy/*.toml` for working files).
//!
//! ```text
//! mesh-proxy run proxy.toml                 # serve; reload on file change or SIGHUP; SIGTERM drains
//! mesh-proxy check proxy.toml               # validate: file:line:column: message, exit 1
//! mesh-proxy ca init certs/                 # a dev CA: certs/ca.pem, certs/ca.key
//! mesh-proxy ca issue --identity spiffe://example.org/ns/shop/sa/web certs/
//! mesh-proxy inject app.yaml | kubectl apply -f -   # add the sidecar (meshwork::config::inject)
//! ```
//!
//! Install with `cargo install --path . --example mesh-proxy`.
//!
//! The process runs one current-thread runtime: a proxy beside one application rarely needs more
//! than a core, and one thread keeps every per-connection and per-endpoint structure on the core
//! that touches it (as Envoy's and Pingora's workers do per core), with no cross-thread wake-ups.

mod forward;

/// mimalloc rather than glibc's malloc: the proxy allocates and frees small request-scoped
/// objects on one thread, where glibc's bins, consolidation and heap trimming (`brk`) cost about
/// a tenth of the proxy's CPU per request (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meshwork::admin::Admin;
use meshwork::config::reload::Reloader;
use meshwork::config::Config;
use meshwork::core::metrics::Telemetry;
use meshwork::core::trace::Tracing;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;

use crate::forward::Forward;

/// A request body as the proxy forwards it: counted against `[limits] max_request_body_bytes`
/// (tower-http's `RequestBodyLimit`: 413 beyond it).
pub(crate) type ProxyBody = tower_http::body::Limited<hyper::body::Incoming>;

#[derive(Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "meshwork as a proxy beside an application"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the configuration FILE.
    Run { file: PathBuf },
    /// Validate FILE; print `file:line:column: message` and exit 1 if it is invalid.
    Check { file: PathBuf },
    /// Add the mesh-proxy sidecar to the Kubernetes workloads in FILE (`-`: stdin); print the YAML.
    Inject {
        file: PathBuf,
        /// The sidecar's image.
        #[arg(long, default_value = meshwork::config::inject::DEFAULT_IMAGE)]
        image: String,
    },
    /// A development certificate authority (not for production).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create DIR/ca.pem and DIR/ca.key.
    Init { dir: PathBuf },
    /// Issue a workload certificate for IDENTITY, signed by DIR's CA: DIR/<name>.pem, .key.
    Issue {
        /// The SPIFFE identity, e.g. spiffe://example.org/ns/shop/sa/web.
        #[arg(long)]
        identity: String,
        /// Certificate lifetime in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_PROXY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        Command::Ca { command } => ca(command),
        Command::Inject { file, image } => {
            let options = meshwork::config::inject::InjectOptions {
                image,
                ..Default::default()
            };
            meshwork::config::inject::inject_file(&file, &options).map(|yaml| print!("{yaml}"))
        }
        Command::Run { file } => run(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn ca(command: CaCommand) -> Result<(), String> {
    use meshwork::tls::dev_ca::{DevCa, WorkloadCertParams};
    match command {
        CaCommand::Init { dir } => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let ca = DevCa::new("mesh-proxy dev CA").map_err(|e| e.to_string())?;
            ca.write_cert(dir.join("ca.pem"))
                .map_err(|e| e.to_string())?;
            ca.write_key(dir.join("ca.key"))
                .map_err(|e| e.to_string())?;
            println!("{}", dir.join("ca.pem").display());
        }
        CaCommand::Issue {
            identity,
            hours,
            dir,
        } => {
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name)).map_err(|e| {
                    format!(
                        "{}: {e} (run `mesh-proxy ca init` first)",
                        dir.join(name).display()
                    )
                })
            };
            let ca =
                DevCa::from_pem(&read("ca.pem")?, &read("ca.key")?).map_err(|e| e.to_string())?;
            let id = meshwork::tls::Identity::parse(&identity).map_err(|e| e.to_string())?;
            let name = id.segments().last().unwrap_or("workload").to_owned();
            let params = WorkloadCertParams::new(id, Duration::from_secs(hours * 3600))
                .with_ip([127, 0, 0, 1].into());
            let issued = ca.issue(&params).map_err(|e| e.to_string())?;
            let (cert, key) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            issued.write(&cert, &key).map_err(|e| e.to_string())?;
            println!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(())
}

fn run(file: &Path) -> Result<(), String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(file.to_owned(), config))
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?;
    tracing::info!(addr = %listener.local_addr().map_err(|e| e.to_string())?, "{what} listening");
    Ok(listener)
}

async fn serve(file: PathBuf, config: Config) -> Result<(), String> {
    let telemetry =
        Telemetry::new(Default::default(), Tracing::disabled()).map_err(|e| e.to_string())?;
    let admin = Admin::new(telemetry.clone());
    let mut reloader: Reloader<ProxyBody> =
        Reloader::new(file, config.clone(), telemetry.clone(), admin.clone())
            .map_err(|e| e.to_string())?;
    // Every listener: the file's connection limits; the proxy's: its body limit too.
    let limits = config.server_limits();
    let body_limit = RequestBodyLimitLayer::new(config.limits.max_request_body_bytes);
    let forward = |client| {
        ServiceBuilder::new()
            .layer(body_limit)
            .service(Forward::new(client))
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();
    let listener = bind("outbound", config.outbound_listen).await?;
    // No inbound metrics here: each routed client records route and endpoint metrics already.
    let server = meshwork::server()
        .limits(limits.clone())
        .access_log(config.access_log);
    let outbound = forward(reloader.outbound());
    tasks.push(tokio::spawn(server.serve(listener, outbound, stopped())));
    if let (Some(client), Some(inbound)) = (reloader.inbound(), &config.inbound) {
        let listener = bind("inbound", inbound.listen).await?;
        let server = config.server().map_err(|e| e.to_string())?;
        let server = server.telemetry(telemetry.clone(), "inbound");
        tasks.push(tokio::spawn(server.serve(
            listener,
            forward(client),
            stopped(),
        )));
    }
    let listener = bind("admin", config.admin_listen).await?;
    let admin_server = meshwork::server().limits(limits);
    let admin_task = tokio::spawn(admin_server.serve(listener, admin.clone(), stopped()));

    admin.set_ready(true);
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let signal = loop {
        tokio::select! {
            _ = hup.recv() => reloader.reload("SIGHUP"),
            _ = tick.tick() => if reloader.file_changed() { reloader.reload("file change") },
            _ = term.recv() => break "SIGTERM",
            _ = tokio::signal::ctrl_c() => break "SIGINT",
        }
    };
    // Drain: stop accepting; each listener lets its requests in flight finish within the bound.
    tracing::info!(%signal, drain = ?config.drain_timeout, "draining");
    admin.set_ready(false);
    let _ = stop_tx.send(true);
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "listener failed"),
            Err(error) => tracing::warn!(%error, "listener task failed"),
        }
    }
    tracing::info!("drained");
    admin_task.abort();
    Ok(())
}
