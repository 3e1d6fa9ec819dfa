//! Endpoint discovery for meshwork: where a logical service's endpoints are, and how that changes.
//!
//! A *source* finds the endpoints of one service and keeps finding them:
//!
//! | source | build it with | refreshed |
//! |---|---|---|
//! | static list | [`Discovery::fixed`] | never |
//! | set by the program | [`Discovery::manual`] + [`Updater`] | on [`Updater::update`] |
//! | YAML / TOML / JSON file | [`Discovery::file`] + [`FileConfig`] | on change, polled every 1 s |
//! | DNS A/AAAA of `host:port` | [`Discovery::dns`] + [`DnsConfig::host`] | at the TTL, clamped to [1 s, 5 min] |
//! | DNS SRV of `_svc._proto.name` | [`Discovery::dns`] + [`DnsConfig::srv`] | at the TTL, clamped to [1 s, 5 min] |
//!
//! Each source runs as a task that publishes whole snapshots ([`EndpointSet`]) into a watch
//! channel; the [`Discovery`] handle reads the current snapshot, the last error and counters, and
//! turns snapshots into a [`Changes`] stream of `tower::discover::Change<SocketAddr, Endpoint>` for
//! the balancer (module [`watch`]). An [`Endpoint`] is an address, a weight (0 = drained), sorted
//! labels and the SPIFFE identity its TLS certificate must carry.
//!
//! # Why discovery is advisory
//!
//! A discovery system tells the mesh where endpoints probably are; whether they work is for the
//! balancer and the circuit breakers to find out. Discovery systems fail far more often than the
//! services they describe (a DNS server restarts, a file is half-written, a control plane is
//! partitioned), and emptying the endpoint set on such a failure turns a harmless blip into an
//! outage. So, as in Finagle and Linkerd: **a source that errors or times out keeps its last good
//! set** and reports the error (`tracing::warn!`, [`Discovery::last_error`],
//! [`Discovery::state`], [`Stats`]; the facade client exports them as the
//! `meshwork_discovery_*` metrics). Only an
//! authoritative "no endpoints" empties a set, and for DNS only when two consecutive resolutions
//! say so (NXDOMAIN/NoData seen twice in a row); see [`dns`].
//!
//! # Kubernetes
//!
//! A headless Service answers DNS A queries (`web.shop.svc.cluster.local`, one address per ready
//! pod) and SRV queries (`_http._tcp.web.shop.svc.cluster.local`, one record per pod and named
//! port), so DNS discovery is the Kubernetes integration that needs no API access or RBAC.
//!
//! # Defaults
//!
//! | setting | default | from |
//! |---|---|---|
//! | endpoint weight | 1.0 | |
//! | file poll interval | 1 s | |
//! | DNS re-resolution | record TTL clamped to [1 s, 5 min] | |
//! | DNS retry after error | 1 s doubling to 30 s | |
//! | DNS query timeout / attempts | 5 s / 2 | resolv.conf |
//! | empty answers before emptying | 2 in a row | Finagle, Linkerd (advisory discovery) |
//! | DNS address families | A and AAAA ([`IpFamily::Dual`]) | |
//! | DNS server | `/etc/resolv.conf` | |
//!
//! # Example
//!
//! ```
//! use futures_util::StreamExt;
//! use mesh_discovery::{Discovery, Endpoint};
//! use tower::discover::Change;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (discovery, updater) = Discovery::manual();
//! let mut changes = discovery.changes();
//!
//! let v1 = Endpoint::new("127.0.0.1:8081".parse().unwrap()).with_label("version", "v1");
//! updater.update([v1.clone()]).unwrap();
//! assert!(matches!(changes.next().await, Some(Ok(Change::Insert(_, ep))) if ep == v1));
//!
//! // Drain v1 (weight 0): the balancer sees the changed endpoint inserted again.
//! updater.update([v1.clone().with_weight(0.0)]).unwrap();
//! assert!(matches!(changes.next().await, Some(Ok(Change::Insert(_, ep))) if ep.is_drained()));
//!
//! // An invalid update is rejected and reported; the set is kept.
//! assert!(updater.update([v1.clone().with_weight(-1.0)]).is_err());
//! assert!(discovery.last_error().is_some());
//! assert_eq!(discovery.current().len(), 1);
//! assert_eq!(discovery.stats().errors, 1);
//! # }
//! ```

pub mod dns;
pub mod endpoint;
mod error;
pub mod file;
pub mod fixed;
pub mod set;
pub mod srv;
pub mod watch;

pub use crate::{
    dns::{DnsConfig, DnsName, IpFamily},
    endpoint::Endpoint,
    error::DiscoveryError,
    file::{FileConfig, FileFormat},
    fixed::Updater,
    set::EndpointSet,
    watch::{Changes, Discovery, SourceState, Stats},
};
