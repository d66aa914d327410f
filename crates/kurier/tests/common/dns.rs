//! A real DNS server for tests: hickory-server in this process, authoritative for the root
//! zone (so every name is answered from it, NXDOMAIN included), on a free loopback port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};

/// One resource record for the test zone.
pub enum Rr {
    /// MX preference and exchange ("." for a null MX).
    Mx(u16, String),
    /// IPv4 address.
    A(std::net::Ipv4Addr),
    /// IPv6 address.
    Aaaa(std::net::Ipv6Addr),
    /// TXT strings.
    Txt(String),
    /// TXT made of several character-strings.
    TxtParts(Vec<String>),
    /// A PTR target.
    Ptr(String),
    /// A CNAME target.
    Cname(String),
    /// Every query for this name gets SERVFAIL (a broken or unreachable authority).
    ServFail,
}

pub struct TestDns {
    pub port: u16,
    /// Every name asked for, in order.
    queries: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDns {
    /// Serves these records (names without the trailing dot).
    pub fn start(records: Vec<(&str, Rr)>) -> TestDns {
        let (udp, tcp) = bind_pair();
        let port = udp.local_addr().unwrap().port();
        let mut zone =
            InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
                Name::root(),
                ZoneType::Primary,
                AxfrPolicy::Deny,
            );
        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("hostmaster.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            5,
        );
        zone.upsert_mut(Record::from_rdata(Name::root(), 60, RData::SOA(soa)), 1);
        let mut failing = HashSet::new();
        for (owner, rr) in records {
            let Ok(owner) = Name::from_utf8(format!("{}.", owner.trim_end_matches('.'))) else {
                continue;
            };
            let data = match rr {
                Rr::ServFail => {
                    failing.insert(LowerName::from(owner));
                    continue;
                }
                Rr::Mx(pref, exchange) => {
                    let ex = if exchange == "." {
                        Name::root()
                    } else {
                        Name::from_utf8(format!("{exchange}.")).unwrap()
                    };
                    RData::MX(MX::new(pref, ex))
                }
                Rr::A(ip) => RData::A(A(ip)),
                Rr::Aaaa(ip) => RData::AAAA(AAAA(ip)),
                // A DNS character-string holds 255 octets: long records are split.
                Rr::TxtParts(parts) => RData::TXT(TXT::new(parts)),
                Rr::Ptr(target) => RData::PTR(PTR(name(&target))),
                Rr::Cname(target) => RData::CNAME(CNAME(name(&target))),
                Rr::Txt(t) => RData::TXT(TXT::new(
                    t.as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect(),
                )),
            };
            zone.upsert_mut(Record::from_rdata(owner, 5, data), 1);
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = queries.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut catalog = Catalog::new();
                catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(zone)]);
                let mut server = Server::new(Failing {
                    catalog,
                    failing,
                    log,
                });
                server.register_socket(tokio::net::UdpSocket::from_std(udp).unwrap());
                server.register_listener(
                    tokio::net::TcpListener::from_std(tcp).unwrap(),
                    Duration::from_secs(5),
                    65535,
                );
                let _ = stop_rx.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        TestDns {
            port,
            queries,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The names asked for so far (lower case, without the trailing dot).
    pub fn queried(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }

    /// The `[dns]` config table pointing at this server.
    pub fn config(&self) -> String {
        format!("[dns]\nservers = [\"127.0.0.1:{}\"]\n", self.port)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn name(s: &str) -> Name {
    Name::from_utf8(format!("{}.", s.trim_end_matches('.'))).unwrap_or_else(|_| Name::root())
}

/// The catalog, except that names marked [`Rr::ServFail`] get SERVFAIL.
struct Failing {
    catalog: Catalog,
    failing: HashSet<LowerName>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Failing {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        if let Ok(info) = request.request_info() {
            let asked = info
                .query
                .name()
                .to_string()
                .trim_end_matches('.')
                .to_lowercase();
            self.log.lock().unwrap().push(asked);
        }
        let fails = request
            .request_info()
            .is_ok_and(|info| self.failing.contains(info.query.name()));
        if !fails {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        let response = MessageResponseBuilder::new(&request.queries, None)
            .error_msg(&request.metadata, ResponseCode::ServFail);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => ResponseInfo::from(Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: HeaderCounts::default(),
            }),
        }
    }
}

/// A UDP socket and a TCP listener on the same free port.
fn bind_pair() -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            udp.set_nonblocking(true).unwrap();
            tcp.set_nonblocking(true).unwrap();
            return (udp, tcp);
        }
    }
    panic!("no free port for the test DNS server");
}
