//! DNS discovery: A/AAAA records of `host:port`, or SRV records of `_service._proto.name`.
//!
//! The source resolves its name through hickory-resolver, publishes the addresses as endpoints,
//! and resolves again when the answer's TTL runs out (the smallest TTL of the records used,
//! clamped to [`DnsConfig::ttl_min`, `DnsConfig::ttl_max`], by default [1 s, 5 min]: the floor
//! keeps a TTL-0 name from turning into a busy loop, the ceiling bounds how long a missed change
//! can go unnoticed). The resolver's own cache is off, so every re-resolution asks the server.
//!
//! # Advisory semantics
//!
//! DNS is a hint about where a service runs, not the truth about which endpoints work; the
//! balancer and the breakers find that out. So the source never empties a working set because
//! DNS had a bad moment (Finagle and Linkerd treat name resolution the same way):
//!
//! - a timeout, an unreachable server, SERVFAIL/REFUSED, an undecodable answer or an answer of the
//!   wrong record type keeps the last good set, is reported ([`DiscoveryError::Resolve`]), and is
//!   retried with backoff ([`DnsConfig::backoff_initial`] doubling up to
//!   [`DnsConfig::backoff_max`], 1 s → 30 s) rather than after a full TTL;
//! - an authoritative empty answer (NXDOMAIN, or a NOERROR "NoData" answer carrying the zone's SOA
//!   record as RFC 2308 requires of negative answers) is believed only when
//!   two consecutive resolutions give it: the first is reported
//!   ([`DiscoveryError::EmptyAnswer`]) and re-checked after `ttl_min`; the second empties the set
//!   and *keeps the error visible* ([`DiscoveryError::NoRecords`]), so a misspelled name never
//!   looks like a healthy service with no endpoints.
//!   A real scale-to-zero costs one extra resolution; a flapping server costs nothing.
//! - For `host:port`, A and AAAA are both queried (see [`IpFamily`] to ask for one only). A half
//!   that the server *does not serve* — answered REFUSED or NOTIMP, or an empty NOERROR with or
//!   without an SOA — counts as "no addresses of that family": the other half's addresses are
//!   used. This is what resolvers people run actually do: dnsmasq answers the AAAA query for a
//!   name it holds only A records of with REFUSED (no upstream) or an empty NOERROR without an
//!   SOA (`--local` domains). A half that *fails* (timeout, SERVFAIL, an undecodable answer)
//!   fails the whole resolution, so a transient AAAA failure cannot shrink a dual-stack set. When
//!   neither half has addresses and neither is an authoritative negative answer, the resolution
//!   counts as failed, not as "no endpoints". SRV targets are resolved the same way.
//!
//! # SRV
//!
//! See [`crate::srv`] for how priorities, weights and targets become endpoints.
//!
//! # Kubernetes
//!
//! A headless Service (`clusterIP: None`) answers A/AAAA queries for
//! `SERVICE.NAMESPACE.svc.cluster.local` with one address per ready pod, and SRV queries for
//! `_PORTNAME._tcp.SERVICE.NAMESPACE.svc.cluster.local` with one record per pod and named port.
//! Either form gives per-pod endpoints without access to the Kubernetes API. With
//! [`DnsConfig::nameserver`] unset, the resolver reads `/etc/resolv.conf`, which in a pod points at
//! the cluster DNS and carries the `svc.cluster.local` search domains.
//!
//! ```no_run
//! use mesh_discovery::{Discovery, DnsConfig};
//!
//! # async fn run() -> Result<(), mesh_discovery::DiscoveryError> {
//! let web = Discovery::dns(DnsConfig::host("web.shop.svc.cluster.local:8080")?)?;
//! let grpc = Discovery::dns(DnsConfig::srv("_grpc._tcp.api.shop.svc.cluster.local")?
//!     .with_nameserver("10.96.0.10:53".parse().unwrap()))?;
//! # drop((web, grpc)); Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use hickory_resolver::{
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{runtime::TokioRuntimeProvider, DnsError, NetError},
    proto::{
        op::ResponseCode,
        rr::{Name, RData, RecordType},
    },
    TokioResolver,
};

use crate::{
    endpoint::{check_identity, DEFAULT_WEIGHT},
    watch::Publisher,
    Discovery, DiscoveryError, Endpoint, EndpointSet,
};

/// Default lower bound of the re-resolution interval: 1 s.
pub const DEFAULT_TTL_MIN: Duration = Duration::from_secs(1);
/// Default upper bound of the re-resolution interval: 5 min.
pub const DEFAULT_TTL_MAX: Duration = Duration::from_secs(300);
/// Default first retry delay after a failed resolution: 1 s.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Default longest retry delay after failed resolutions: 30 s.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default timeout of one DNS query: 5 s (resolv.conf's default).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of attempts per query: 2 (resolv.conf's default).
pub const DEFAULT_ATTEMPTS: usize = 2;
/// How many consecutive authoritative empty answers empty the set: 2 (see the [module docs](self)).
pub const EMPTY_ANSWERS_TO_EMPTY: u32 = 2;

/// Which address records a `host:port` name (and each SRV target) is resolved to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpFamily {
    /// A and AAAA, queried together (the default).
    #[default]
    Dual,
    /// A records only: no AAAA query is sent (an IPv4-only network, or a server that mishandles
    /// AAAA queries).
    V4Only,
    /// AAAA records only.
    V6Only,
}

/// What to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsName {
    /// A and AAAA records of `host`; every address gets `port`.
    Host {
        /// A DNS name or an IP literal.
        host: String,
        /// The port of every endpoint.
        port: u16,
    },
    /// SRV records of `name` (e.g. `_http._tcp.web.shop.svc.cluster.local`); targets are
    /// resolved to A/AAAA, ports come from the records.
    Srv {
        /// The SRV owner name.
        name: String,
    },
}

/// Configuration of a DNS source. `Default` has production defaults but no name; build one with
/// [`DnsConfig::host`] or [`DnsConfig::srv`].
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    /// What to resolve.
    pub name: DnsName,
    /// The DNS server (UDP, and TCP for truncated answers). `None` (default) reads
    /// `/etc/resolv.conf`.
    pub nameserver: Option<SocketAddr>,
    /// Shortest re-resolution interval, whatever the TTL says; default 1 s.
    pub ttl_min: Duration,
    /// Longest re-resolution interval, whatever the TTL says; default 5 min.
    pub ttl_max: Duration,
    /// First retry delay after a failure; doubles per consecutive failure; default 1 s.
    pub backoff_initial: Duration,
    /// Longest retry delay; default 30 s.
    pub backoff_max: Duration,
    /// Timeout of one query; default 5 s.
    pub query_timeout: Duration,
    /// Attempts per query, the first included (at least 1); default 2. With a server that never
    /// answers, one query gives up after `attempts × query_timeout`.
    pub attempts: usize,
    /// Which address families to resolve; default both ([`IpFamily::Dual`]).
    pub ip_family: IpFamily,
    /// Labels given to every endpoint found (e.g. `zone`).
    pub labels: BTreeMap<String, String>,
    /// Expected TLS identity of every endpoint found (all pods of a Kubernetes Service usually
    /// share one service account, so one SPIFFE ID).
    pub identity: Option<String>,
}

// === impl DnsName ===

impl DnsName {
    /// Parses `host:port` (`[v6]:port` for IPv6 literals).
    pub fn host(host_port: &str) -> Result<Self, DiscoveryError> {
        let bad = |reason: &str| DiscoveryError::invalid("DnsName::host", host_port, reason);
        let (host, port) = host_port
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6,
            None if host.contains(':') => return Err(bad("write IPv6 addresses as [addr]:port")),
            None => host,
        };
        let port: u16 = match port.parse() {
            Ok(port) if port != 0 => port,
            _ => return Err(bad("the port must be a number in 1..=65535")),
        };
        if host.parse::<IpAddr>().is_err() {
            parse_name(host, "DnsName.host")
                .map_err(|_| bad("the host is neither a DNS name nor an IP address"))?;
        }
        Ok(Self::Host {
            host: host.to_owned(),
            port,
        })
    }

    /// An SRV name such as `_http._tcp.web.shop.svc.cluster.local`.
    pub fn srv(name: &str) -> Result<Self, DiscoveryError> {
        let name = Self::Srv {
            name: name.to_owned(),
        };
        name.validate()?;
        Ok(name)
    }

    /// Checks that the name is a valid DNS name (or IP literal) and the port is not 0.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        match self {
            Self::Host { host, port } => {
                if *port == 0 {
                    return Err(DiscoveryError::invalid(
                        "DnsName.port",
                        port,
                        "must not be 0",
                    ));
                }
                if host.parse::<IpAddr>().is_err() {
                    parse_name(host, "DnsName.host")?;
                }
            }
            Self::Srv { name } => {
                parse_name(name, "DnsName.srv")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
            Self::Srv { name } => write!(f, "SRV {name}"),
        }
    }
}

fn parse_name(name: &str, field: &str) -> Result<Name, DiscoveryError> {
    if name.is_empty() || name == "." {
        return Err(DiscoveryError::invalid(field, name, "no DNS name given"));
    }
    Name::from_str(name)
        .map_err(|e| DiscoveryError::invalid(field, name, format!("not a DNS name: {e}")))
}

// === impl DnsConfig ===

impl DnsConfig {
    /// Resolve A/AAAA of `host:port`, with the defaults.
    pub fn host(host_port: &str) -> Result<Self, DiscoveryError> {
        Ok(Self {
            name: DnsName::host(host_port)?,
            ..Self::default()
        })
    }

    /// Resolve SRV records of `name`, with the defaults.
    pub fn srv(name: &str) -> Result<Self, DiscoveryError> {
        Ok(Self {
            name: DnsName::srv(name)?,
            ..Self::default()
        })
    }

    /// Use this DNS server instead of `/etc/resolv.conf`.
    pub fn with_nameserver(mut self, nameserver: SocketAddr) -> Self {
        self.nameserver = Some(nameserver);
        self
    }

    /// Resolve A records only (see [`IpFamily::V4Only`]).
    pub fn with_ipv4_only(mut self) -> Self {
        self.ip_family = IpFamily::V4Only;
        self
    }

    /// Checks the name, the intervals and the identity.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        self.name.validate()?;
        let positive = |field: &str, d: Duration| {
            if d.is_zero() {
                Err(DiscoveryError::invalid(
                    field,
                    format!("{d:?}"),
                    "must be greater than 0",
                ))
            } else {
                Ok(())
            }
        };
        positive("DnsConfig.ttl_min", self.ttl_min)?;
        positive("DnsConfig.backoff_initial", self.backoff_initial)?;
        positive("DnsConfig.query_timeout", self.query_timeout)?;
        if self.ttl_max < self.ttl_min {
            return Err(DiscoveryError::invalid(
                "DnsConfig.ttl_max",
                format!("{:?}", self.ttl_max),
                format!("must not be below ttl_min ({:?})", self.ttl_min),
            ));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(DiscoveryError::invalid(
                "DnsConfig.backoff_max",
                format!("{:?}", self.backoff_max),
                format!(
                    "must not be below backoff_initial ({:?})",
                    self.backoff_initial
                ),
            ));
        }
        if self.attempts == 0 {
            return Err(DiscoveryError::invalid(
                "DnsConfig.attempts",
                0,
                "must be at least 1",
            ));
        }
        if let Some(id) = &self.identity {
            check_identity(id)
                .map_err(|reason| DiscoveryError::invalid("DnsConfig.identity", id, reason))?;
        }
        Ok(())
    }

    fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.ttl_min, self.ttl_max)
    }

    pub(crate) fn endpoint(&self, addr: SocketAddr, weight: f64) -> Endpoint {
        Endpoint {
            addr,
            weight,
            labels: self.labels.clone(),
            identity: self.identity.clone(),
        }
    }

    fn resolver(&self) -> Result<TokioResolver, DiscoveryError> {
        let (config, mut opts) = match self.nameserver {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                let mut opts = ResolverOpts::default();
                opts.use_hosts_file = ResolveHosts::Never;
                (ResolverConfig::from_name_servers(vec![ns]), opts)
            }
            None => hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                DiscoveryError::invalid(
                    "DnsConfig.nameserver",
                    "None",
                    format!("cannot read the system DNS configuration (/etc/resolv.conf): {e}"),
                )
            })?,
        };
        // Every re-resolution must reach the server: the TTL schedule lives here, not in a cache.
        opts.cache_size = 0;
        opts.timeout = self.query_timeout;
        // hickory's `attempts` counts the retries after the first try.
        opts.attempts = self.attempts.saturating_sub(1);
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| {
                DiscoveryError::invalid(
                    "DnsConfig",
                    &self.name,
                    format!("cannot build resolver: {e}"),
                )
            })
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            name: DnsName::Host {
                host: String::new(),
                port: 0,
            },
            nameserver: None,
            ttl_min: DEFAULT_TTL_MIN,
            ttl_max: DEFAULT_TTL_MAX,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            ip_family: IpFamily::Dual,
            labels: BTreeMap::new(),
            identity: None,
        }
    }
}

// === impl Discovery (dns) ===

impl Discovery {
    /// Starts resolving `config.name`. The first resolution starts at once; the task stops when
    /// every handle is dropped. Must be called inside a Tokio runtime.
    pub fn dns(config: DnsConfig) -> Result<Self, DiscoveryError> {
        config.validate()?;
        let resolver = config.resolver()?;
        let name = format!("dns:{}", config.name);
        let (publisher, discovery) = Discovery::channel(name.as_str());
        Discovery::spawn(&name, refresh(resolver, config, publisher))?;
        Ok(discovery)
    }
}

/// The result of one resolution of the configured name.
pub(crate) enum Outcome {
    /// Endpoints, and how long they are valid.
    Found { set: EndpointSet, ttl: Duration },
    /// An authoritative "no records".
    Empty {
        reason: String,
        negative_ttl: Option<Duration>,
    },
    /// Anything else.
    Failed(DiscoveryError),
}

async fn refresh(resolver: TokioResolver, config: DnsConfig, publisher: Publisher) {
    let mut backoff = config.backoff_initial;
    let mut empty_answers = 0u32;
    loop {
        resolver.clear_cache();
        let outcome = tokio::select! {
            () = publisher.closed() => return,
            outcome = resolve(&resolver, &config) => outcome,
        };
        let wait = match outcome {
            Outcome::Found { set, ttl } => {
                empty_answers = 0;
                backoff = config.backoff_initial;
                publisher.publish(set);
                config.clamp_ttl(ttl)
            }
            Outcome::Empty {
                reason,
                negative_ttl,
            } => {
                empty_answers += 1;
                backoff = config.backoff_initial;
                if empty_answers >= EMPTY_ANSWERS_TO_EMPTY {
                    // Believed, but still an error: a misspelled name must not look healthy.
                    publisher.publish_with_error(
                        EndpointSet::new(),
                        DiscoveryError::NoRecords {
                            name: config.name.to_string(),
                            reason,
                        },
                    );
                    config.clamp_ttl(negative_ttl.unwrap_or(config.ttl_min))
                } else {
                    publisher.report(DiscoveryError::EmptyAnswer {
                        name: config.name.to_string(),
                        reason,
                    });
                    config.ttl_min
                }
            }
            Outcome::Failed(error) => {
                empty_answers = 0;
                publisher.report(error);
                let wait = backoff;
                backoff = (backoff * 2).min(config.backoff_max);
                wait
            }
        };
        tokio::select! {
            () = publisher.closed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn resolve(resolver: &TokioResolver, config: &DnsConfig) -> Outcome {
    match &config.name {
        DnsName::Host { host, port } => {
            if let Ok(ip) = host.parse::<IpAddr>() {
                let mut set = EndpointSet::new();
                set.insert_unchecked(config.endpoint(SocketAddr::new(ip, *port), DEFAULT_WEIGHT));
                return Outcome::Found {
                    set,
                    ttl: config.ttl_max,
                };
            }
            let name = match parse_name(host, "DnsName.host") {
                Ok(name) => name,
                Err(e) => return Outcome::Failed(e),
            };
            match resolve_addrs(resolver, &name, config.ip_family).await {
                Answer::Found(ips, ttl) => {
                    let mut set = EndpointSet::new();
                    for ip in ips {
                        set.insert_unchecked(
                            config.endpoint(SocketAddr::new(ip, *port), DEFAULT_WEIGHT),
                        );
                    }
                    Outcome::Found { set, ttl }
                }
                Answer::Empty {
                    reason,
                    negative_ttl,
                } => Outcome::Empty {
                    reason,
                    negative_ttl,
                },
                Answer::Absent(reason) => Outcome::Failed(DiscoveryError::Resolve {
                    name: host.clone(),
                    record_type: "A/AAAA",
                    reason,
                }),
                Answer::Failed(e) => Outcome::Failed(e),
            }
        }
        DnsName::Srv { name } => match parse_name(name, "DnsName.srv") {
            Ok(name) => crate::srv::resolve(resolver, &name, config).await,
            Err(e) => Outcome::Failed(e),
        },
    }
}

/// The answer to one query (or one A+AAAA pair).
pub(crate) enum Answer<T> {
    Found(Vec<T>, Duration),
    Empty {
        reason: String,
        negative_ttl: Option<Duration>,
    },
    /// The server does not serve this record type for the name (REFUSED, NOTIMP, or an empty
    /// NOERROR answer): no records of this type, but nothing said about the name.
    Absent(String),
    Failed(DiscoveryError),
}

/// Queries `name` for `record_type` and returns the records of that type.
pub(crate) async fn query(
    resolver: &TokioResolver,
    name: &Name,
    record_type: RecordType,
) -> Answer<RData> {
    let type_name = match record_type {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        _ => "SRV",
    };
    let failed = |reason: String| {
        Answer::Failed(DiscoveryError::Resolve {
            name: name.to_string(),
            record_type: type_name,
            reason,
        })
    };
    match resolver.lookup(name.clone(), record_type).await {
        Ok(lookup) => {
            let mut found = Vec::new();
            let mut ttl = u32::MAX;
            let mut other = None;
            for record in lookup.answers() {
                if record.record_type() == record_type {
                    ttl = ttl.min(record.ttl);
                    found.push(record.data.clone());
                } else if record.record_type() != RecordType::CNAME {
                    other = Some(record.record_type());
                }
            }
            match (found.is_empty(), other) {
                (false, _) => Answer::Found(found, Duration::from_secs(u64::from(ttl))),
                (true, Some(other)) => {
                    failed(format!("the answer holds {other} records, not {type_name}"))
                }
                (true, None) => Answer::Empty {
                    reason: "empty answer".to_owned(),
                    negative_ttl: None,
                },
            }
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(none)))
            if none.response_code == ResponseCode::NXDomain || none.soa.is_some() =>
        {
            Answer::Empty {
                reason: format!("{:?}", none.response_code),
                negative_ttl: none.negative_ttl.map(|s| Duration::from_secs(u64::from(s))),
            }
        }
        // An empty NOERROR without an SOA is not an RFC 2308 negative answer: it says nothing
        // about the name, only that this type has no records here (dnsmasq's `--local` domains
        // answer the AAAA query of an A-only name so). hickory also reports an answer holding
        // only records of another type this way.
        Err(NetError::Dns(DnsError::NoRecordsFound(none))) => Answer::Absent(format!(
            "{type_name}: {:?} answer without records and without the SOA record of a negative \
             answer (wrong record type or a server that does not serve {type_name})",
            none.response_code
        )),
        Err(NetError::Dns(DnsError::ResponseCode(
            code @ (ResponseCode::Refused | ResponseCode::NotImp),
        ))) => Answer::Absent(format!("{type_name}: the server answered {code}")),
        Err(e) => failed(e.to_string()),
    }
}

/// The addresses of `name` in `family`, A and AAAA queried together.
///
/// Any failure fails the pair. A half the server does not serve ([`Answer::Absent`]) is "no
/// addresses of that family" when the other half says something; both absent is a failure (the
/// server told nothing about the name); otherwise an authoritative empty half makes the pair empty.
pub(crate) async fn resolve_addrs(
    resolver: &TokioResolver,
    name: &Name,
    family: IpFamily,
) -> Answer<IpAddr> {
    let answers = match family {
        IpFamily::Dual => {
            let (v4, v6) = futures_util::future::join(
                query(resolver, name, RecordType::A),
                query(resolver, name, RecordType::AAAA),
            )
            .await;
            vec![v4, v6]
        }
        IpFamily::V4Only => vec![query(resolver, name, RecordType::A).await],
        IpFamily::V6Only => vec![query(resolver, name, RecordType::AAAA).await],
    };
    let mut ips = Vec::new();
    let mut ttl = None::<Duration>;
    let mut empty = None;
    let mut absent = Vec::new();
    for answer in answers {
        match answer {
            Answer::Failed(e) => return Answer::Failed(e),
            Answer::Absent(reason) => absent.push(reason),
            Answer::Empty {
                reason,
                negative_ttl,
            } => {
                empty.get_or_insert((reason, negative_ttl));
            }
            Answer::Found(records, t) => {
                ttl = Some(ttl.map_or(t, |old| old.min(t)));
                ips.extend(records.into_iter().filter_map(|r| match r {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                }));
            }
        }
    }
    match (ttl, empty) {
        (Some(ttl), _) => Answer::Found(ips, ttl),
        (None, Some((reason, negative_ttl))) => Answer::Empty {
            reason,
            negative_ttl,
        },
        (None, None) if !absent.is_empty() => Answer::Failed(DiscoveryError::Resolve {
            name: name.to_string(),
            record_type: match family {
                IpFamily::Dual => "A/AAAA",
                IpFamily::V4Only => "A",
                IpFamily::V6Only => "AAAA",
            },
            reason: absent.join("; "),
        }),
        (None, None) => Answer::Empty {
            reason: "empty answer".to_owned(),
            negative_ttl: None,
        },
    }
}

#[cfg(test)]
mod tests;
