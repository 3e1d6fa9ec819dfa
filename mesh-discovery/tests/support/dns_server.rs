//! An in-process authoritative DNS server (hickory-server on real UDP and TCP sockets of
//! 127.0.0.1) whose answers come from state the test changes while it runs.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_server::{
    net::runtime::Time,
    proto::{
        op::{Header, HeaderCounts, Metadata, ResponseCode},
        rr::{
            rdata::{A, AAAA, SOA, SRV, TXT},
            Name, RData, Record, RecordType,
        },
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
    Server,
};
use tokio::net::{TcpListener, UdpSocket};

/// How the server treats a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Answer from the records (NXDOMAIN for unknown names, NoData for other types).
    Answer,
    /// NXDOMAIN whatever the records say.
    NxDomain,
    /// SERVFAIL.
    ServFail,
    /// A TXT record in the answer section, whatever type was asked.
    WrongType,
    /// REFUSED (what dnsmasq answers for a type it holds no records of and cannot forward).
    Refused,
    /// NOTIMP.
    NotImp,
    /// An empty NOERROR answer *without* the SOA of a negative answer (dnsmasq's `--local`).
    EmptyNoSoa,
}

#[derive(Debug, Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    ttl: u32,
    mode: Option<Behavior>,
    name_modes: HashMap<String, Behavior>,
    type_modes: HashMap<(String, RecordType), Behavior>,
    once: HashMap<(String, RecordType), VecDeque<Behavior>>,
    queries: HashMap<(String, RecordType), usize>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The server and the handle on its records.
pub struct DnsServer {
    zone: Arc<Mutex<Zone>>,
    server: Option<Server<Handler>>,
    pub addr: SocketAddr,
}

impl DnsServer {
    /// Starts a server on 127.0.0.1 (UDP and TCP on the same port) with record TTL `ttl`.
    pub async fn start(ttl: u32) -> Self {
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        // Find a port free for both UDP and TCP.
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
            let addr = udp.local_addr().expect("udp addr");
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            let mut server = Server::new(Handler { zone: zone.clone() });
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 64);
            return Self {
                zone,
                server: Some(server),
                addr,
            };
        }
        panic!("no free UDP+TCP port on 127.0.0.1");
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().expect("zone lock")
    }

    /// Sets the A and AAAA records of `name` from `ips`.
    pub fn set_ips(&self, name: &str, ips: &[&str]) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for ip in ips {
            match IpAddr::from_str(ip).expect("test ip") {
                IpAddr::V4(ip) => v4.push(RData::A(A(ip))),
                IpAddr::V6(ip) => v6.push(RData::AAAA(AAAA(ip))),
            }
        }
        let mut zone = self.zone();
        zone.records.insert((key(name), RecordType::A), v4);
        zone.records.insert((key(name), RecordType::AAAA), v6);
    }

    /// Sets the SRV records of `name`: `(priority, weight, port, target)`.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let rdata = records
            .iter()
            .map(|(p, w, port, target)| {
                RData::SRV(SRV::new(
                    *p,
                    *w,
                    *port,
                    Name::from_str(target).expect("target"),
                ))
            })
            .collect();
        self.zone()
            .records
            .insert((key(name), RecordType::SRV), rdata);
    }

    /// Removes every record of `name` (queries then get NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.zone().records.retain(|(n, _), _| *n != key(name));
    }

    /// Treats every query with `behavior` from now on.
    pub fn set_mode(&self, behavior: Behavior) {
        self.zone().mode = Some(behavior);
    }

    /// Treats every query for `name` with `behavior` (`None`: back to the server-wide mode).
    pub fn set_name_mode(&self, name: &str, behavior: Option<Behavior>) {
        let mut zone = self.zone();
        match behavior {
            Some(b) => zone.name_modes.insert(key(name), b),
            None => zone.name_modes.remove(&key(name)),
        };
    }

    /// Treats every query for `name`/`record_type` with `behavior` (`None`: back to normal).
    pub fn set_type_mode(&self, name: &str, record_type: RecordType, behavior: Option<Behavior>) {
        let mut zone = self.zone();
        match behavior {
            Some(b) => zone.type_modes.insert((key(name), record_type), b),
            None => zone.type_modes.remove(&(key(name), record_type)),
        };
    }

    /// Treats the next query for `name`/`record_type` with `behavior`, then goes back to normal.
    pub fn once(&self, name: &str, record_type: RecordType, behavior: Behavior) {
        self.zone()
            .once
            .entry((key(name), record_type))
            .or_default()
            .push_back(behavior);
    }

    /// Queries received for `name`/`record_type`.
    pub fn queries(&self, name: &str, record_type: RecordType) -> usize {
        self.zone()
            .queries
            .get(&(key(name), record_type))
            .copied()
            .unwrap_or(0)
    }

    /// True when the one-shot behaviors for `name`/`record_type` have all been used.
    pub fn once_used(&self, name: &str, record_type: RecordType) -> bool {
        self.zone()
            .once
            .get(&(key(name), record_type))
            .is_none_or(VecDeque::is_empty)
    }

    /// Stops the server and waits until its sockets are closed.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown_gracefully().await.expect("server shutdown");
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown_token().cancel();
        }
    }
}

pub struct Handler {
    zone: Arc<Mutex<Zone>>,
}

enum Reply {
    Records(Vec<Record>),
    Code(ResponseCode),
    EmptyNoSoa,
}

impl Handler {
    fn decide(&self, name: &Name, record_type: RecordType) -> Reply {
        let mut zone = self.zone.lock().expect("zone lock");
        let k = (key(&name.to_ascii()), record_type);
        *zone.queries.entry(k.clone()).or_default() += 1;
        let once = zone.once.get_mut(&k).and_then(VecDeque::pop_front);
        let behavior = once
            .or_else(|| zone.type_modes.get(&k).copied())
            .or_else(|| zone.name_modes.get(&k.0).copied())
            .or(zone.mode)
            .unwrap_or(Behavior::Answer);
        let ttl = zone.ttl;
        match behavior {
            Behavior::NxDomain => Reply::Code(ResponseCode::NXDomain),
            Behavior::ServFail => Reply::Code(ResponseCode::ServFail),
            Behavior::Refused => Reply::Code(ResponseCode::Refused),
            Behavior::NotImp => Reply::Code(ResponseCode::NotImp),
            Behavior::EmptyNoSoa => Reply::EmptyNoSoa,
            Behavior::WrongType => Reply::Records(vec![Record::from_rdata(
                name.clone(),
                ttl,
                RData::TXT(TXT::new(vec!["not an address".to_owned()])),
            )]),
            Behavior::Answer => match zone.records.get(&k) {
                Some(rdata) => Reply::Records(
                    rdata
                        .iter()
                        .map(|r| Record::from_rdata(name.clone(), ttl, r.clone()))
                        .collect(),
                ),
                None if zone.records.keys().any(|(n, _)| *n == k.0) => Reply::Records(Vec::new()),
                None => Reply::Code(ResponseCode::NXDomain),
            },
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let fallback = ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        });
        let Ok(info) = request.request_info() else {
            return fallback;
        };
        let name = Name::from(info.query.name().clone());
        let builder = MessageResponseBuilder::from_message_request(request);
        // Negative answers carry the zone's SOA, as RFC 2308 asks of authoritative servers.
        let soa = [Record::from_rdata(
            Name::from_str("mesh.test.").expect("zone"),
            1,
            RData::SOA(SOA::new(
                Name::from_str("ns.mesh.test.").expect("mname"),
                Name::from_str("admin.mesh.test.").expect("rname"),
                1,
                60,
                60,
                600,
                1,
            )),
        )];
        let sent = match self.decide(&name, info.query.query_type()) {
            Reply::Code(code) => {
                metadata.response_code = code;
                let soa = if code == ResponseCode::NXDomain {
                    &soa[..]
                } else {
                    &[]
                };
                response_handle
                    .send_response(builder.build(metadata, [], [], soa.iter(), []))
                    .await
            }
            Reply::EmptyNoSoa => {
                response_handle
                    .send_response(builder.build(metadata, [], [], [], []))
                    .await
            }
            Reply::Records(records) if records.is_empty() => {
                response_handle
                    .send_response(builder.build(metadata, [], [], soa.iter(), []))
                    .await
            }
            Reply::Records(records) => {
                response_handle
                    .send_response(builder.build(metadata, records.iter(), [], [], []))
                    .await
            }
        };
        sent.unwrap_or(fallback)
    }
}
