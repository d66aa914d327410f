//! DNS answers from memory, for unit tests of routing, DNSBL and delivery decisions: each
//! name has an answer or an error, and a name nobody set does not exist (NXDOMAIN).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use super::{Lookup, MxHost, RouteError};

/// The answers a test sets up.
#[derive(Debug, Default)]
pub struct StaticDns {
    mx: Mutex<HashMap<String, Result<Vec<MxHost>, RouteError>>>,
    hosts: Mutex<HashMap<String, Result<Vec<IpAddr>, RouteError>>>,
}

impl StaticDns {
    /// No names at all.
    pub fn new() -> StaticDns {
        StaticDns::default()
    }

    /// `domain` has these MX hosts (name, preference), in the order given.
    pub fn mx(&self, domain: &str, hosts: &[(&str, u16)]) -> &Self {
        let hosts = hosts
            .iter()
            .map(|(name, preference)| MxHost {
                name: name.to_string(),
                preference: *preference,
            })
            .collect();
        lock(&self.mx).insert(key(domain), Ok(hosts));
        self
    }

    /// `host` has these addresses.
    pub fn host(&self, host: &str, ips: &[IpAddr]) -> &Self {
        lock(&self.hosts).insert(key(host), Ok(ips.to_vec()));
        self
    }

    /// Lookups of `name` (MX and address) fail temporarily, as with a dead name server.
    pub fn fail(&self, name: &str) -> &Self {
        let error = RouteError::Temporary(name.to_string(), "SERVFAIL (test)".into());
        lock(&self.mx).insert(key(name), Err(error.clone()));
        lock(&self.hosts).insert(key(name), Err(error));
        self
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn nxdomain(name: &str) -> RouteError {
    RouteError::NoSuchDomain(name.to_string(), "domain does not exist (NXDOMAIN)".into())
}

#[async_trait::async_trait]
impl Lookup for StaticDns {
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        if let Some(answer) = lock(&self.mx).get(&key(domain)) {
            return answer.clone();
        }
        // No MX: the domain itself, if it has an address (RFC 5321 §5.1 implicit MX).
        match lock(&self.hosts).get(&key(domain)) {
            Some(Ok(_)) => Ok(vec![MxHost {
                name: key(domain),
                preference: 0,
            }]),
            Some(Err(e)) => Err(e.clone()),
            None => Err(nxdomain(domain)),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        lock(&self.hosts)
            .get(&key(host))
            .cloned()
            .unwrap_or_else(|| Err(nxdomain(host)))
    }

    async fn a_records(&self, name: &str) -> Result<Vec<Ipv4Addr>, RouteError> {
        match lock(&self.hosts).get(&key(name)) {
            Some(Ok(ips)) => Ok(ips
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect()),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(Vec::new()),
        }
    }
}
