//! SRV records to endpoints: priorities, weights and targets.
//!
//! An SRV answer (RFC 2782) lists `priority weight port target` records. This source turns it into
//! endpoints so:
//!
//! - **Priority**: only the lowest-priority group is used, as RFC 2782 requires ("a client MUST
//!   attempt to contact the target host with the lowest-numbered priority it can reach"). If no
//!   target of that group has an address, the next group is used. Priority is a failover order,
//!   not a share of load, so mixing groups into one weighted set would be wrong.
//! - **Targets** are resolved to A and AAAA (in parallel, or one family: [`DnsConfig::ip_family`]);
//!   each address becomes an endpoint with the record's port. As for `host:port`, a half the
//!   server refuses or answers empty is "no addresses of that family", so an A-only target behind
//!   dnsmasq is used. A target `.` ("service not available here") or one with no addresses
//!   (NXDOMAIN) is skipped. A target whose resolution *fails* fails the whole refresh, so a
//!   transient error cannot shrink the set (advisory semantics, see [`crate::dns`]).
//! - **Weight**: the endpoint weight is the SRV weight. A weight-0 record gets
//!   [`SRV_ZERO_WEIGHT`] (0.1), a small share rather than none, because RFC 2782 gives weight-0
//!   targets "a very small chance of being selected" when others have weight, and many publishers
//!   write weight 0 everywhere: when *all* records of the group have weight 0 they all get weight
//!   1 (equal shares). Draining (weight 0 in this crate) is therefore never inferred from DNS. A
//!   target with several addresses splits its weight evenly over them; records that lead to the
//!   same address add up.
//! - **TTL**: the smallest TTL among the SRV records and the target addresses used.
//!
//! Kubernetes publishes `_PORTNAME._tcp.SERVICE.NAMESPACE.svc.cluster.local` for headless
//! Services, one record per pod with priority 0 and equal weights.
//!
//! ```no_run
//! use mesh_discovery::{Discovery, DnsConfig};
//!
//! # async fn run() -> Result<(), mesh_discovery::DiscoveryError> {
//! let api = Discovery::dns(DnsConfig::srv("_grpc._tcp.api.shop.svc.cluster.local")?)?;
//! # drop(api); Ok(()) }
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    proto::rr::{rdata::SRV, Name, RData, RecordType},
    TokioResolver,
};

use crate::{
    dns::{query, resolve_addrs, Answer, DnsConfig, Outcome},
    EndpointSet,
};

/// The endpoint weight of an SRV record with weight 0 when other records of its priority group
/// have weight: 0.1 (see the [module docs](self)).
pub const SRV_ZERO_WEIGHT: f64 = 0.1;

/// The endpoint weight for an SRV record of weight `srv_weight` in a group where `all_zero` says
/// whether every record has weight 0.
pub fn srv_weight_to_endpoint_weight(srv_weight: u16, all_zero: bool) -> f64 {
    match (srv_weight, all_zero) {
        (_, true) => 1.0,
        (0, false) => SRV_ZERO_WEIGHT,
        (w, false) => f64::from(w),
    }
}

pub(crate) async fn resolve(resolver: &TokioResolver, name: &Name, config: &DnsConfig) -> Outcome {
    let (records, srv_ttl) = match query(resolver, name, RecordType::SRV).await {
        Answer::Found(records, ttl) => (records, ttl),
        Answer::Empty {
            reason,
            negative_ttl,
        } => {
            return Outcome::Empty {
                reason,
                negative_ttl,
            }
        }
        Answer::Absent(reason) => {
            return Outcome::Failed(crate::DiscoveryError::Resolve {
                name: name.to_string(),
                record_type: "SRV",
                reason,
            })
        }
        Answer::Failed(e) => return Outcome::Failed(e),
    };
    let mut groups: BTreeMap<u16, Vec<SRV>> = BTreeMap::new();
    for record in records {
        if let RData::SRV(srv) = record {
            if !srv.target.is_root() {
                groups.entry(srv.priority).or_default().push(srv);
            }
        }
    }
    for group in groups.values() {
        let targets: BTreeSet<&Name> = group.iter().map(|srv| &srv.target).collect();
        let answers = futures_util::future::join_all(
            targets
                .iter()
                .map(|target| resolve_addrs(resolver, target, config.ip_family)),
        )
        .await;
        let mut ttl = srv_ttl;
        let mut addrs: HashMap<&Name, Vec<IpAddr>> = HashMap::new();
        for (target, answer) in targets.iter().zip(answers) {
            match answer {
                Answer::Found(ips, t) if !ips.is_empty() => {
                    ttl = ttl.min(t);
                    addrs.insert(*target, ips);
                }
                Answer::Found(..) | Answer::Empty { .. } => {
                    tracing::debug!(%name, %target, "SRV target has no addresses; skipped");
                }
                Answer::Absent(reason) => {
                    return Outcome::Failed(crate::DiscoveryError::Resolve {
                        name: target.to_string(),
                        record_type: "A/AAAA",
                        reason,
                    })
                }
                Answer::Failed(e) => return Outcome::Failed(e),
            }
        }
        let all_zero = group.iter().all(|srv| srv.weight == 0);
        let mut set = EndpointSet::new();
        for srv in group {
            let Some(ips) = addrs.get(&srv.target) else {
                continue;
            };
            let share = srv_weight_to_endpoint_weight(srv.weight, all_zero) / ips.len() as f64;
            for ip in ips {
                let addr = SocketAddr::new(*ip, srv.port);
                match set.get_mut(&addr) {
                    Some(ep) => ep.weight += share,
                    None => set.insert_unchecked(config.endpoint(addr, share)),
                }
            }
        }
        if !set.is_empty() {
            return Outcome::Found { set, ttl };
        }
    }
    Outcome::Empty {
        reason: "no SRV target has an address".to_owned(),
        negative_ttl: None::<Duration>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_weights_are_small_unless_all_are_zero() {
        assert_eq!(srv_weight_to_endpoint_weight(0, true), 1.0);
        assert_eq!(srv_weight_to_endpoint_weight(0, false), SRV_ZERO_WEIGHT);
        assert_eq!(srv_weight_to_endpoint_weight(50, false), 50.0);
    }
}
