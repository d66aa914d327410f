//! Finding where mail for a domain goes: MX records and host addresses (RFC 5321 §5.1).
//!
//! - MX records are tried in order of preference; hosts of equal preference in random order.
//! - No MX record: the domain itself is the mail host (implicit MX), if it has an address.
//! - A null MX (`0 .`, RFC 7505) means the domain accepts no mail: a permanent failure.
//! - A domain that does not exist (NXDOMAIN) is a permanent failure; a DNS timeout or server
//!   failure is temporary, never a silent success.
//!
//! [`Lookup`] is the seam: routing and DNSBL ask it, [`MxResolver`] answers from DNS, and
//! [`fake::StaticDns`] from memory for unit tests. SPF, DKIM and DMARC go through the
//! resolver itself (mail-auth needs hickory's), tested against a real DNS server instead.

pub mod fake;

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use kurier_smtp::EnhancedCode;
use thiserror::Error;

/// Why no next hop could be found.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RouteError {
    /// RFC 7505 null MX: the domain does not accept mail.
    #[error("{0} does not accept mail (null MX, RFC 7505)")]
    NullMx(String),
    /// NXDOMAIN, or no MX and no address record.
    #[error("{0}: {1}")]
    NoSuchDomain(String, String),
    /// A temporary DNS problem; try again later.
    #[error("DNS lookup for {0} failed temporarily: {1}")]
    Temporary(String, String),
}

impl RouteError {
    /// True for failures that will not go away by retrying.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RouteError::Temporary(..))
    }

    /// The RFC 3463 status for a DSN.
    pub fn status(&self) -> EnhancedCode {
        match self {
            RouteError::NullMx(_) => EnhancedCode(5, 1, 10),
            RouteError::NoSuchDomain(..) => EnhancedCode(5, 1, 2),
            RouteError::Temporary(..) => EnhancedCode(4, 4, 3),
        }
    }
}

/// A mail host for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The host name (or IP address for address literals).
    pub name: String,
    /// The MX preference (lower first).
    pub preference: u16,
}

/// The lookups delivery routing and DNSBL checks make.
#[async_trait::async_trait]
pub trait Lookup: Send + Sync {
    /// The mail hosts for a domain, in the order to try them (RFC 5321 §5.1).
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, RouteError>;
    /// The addresses of a host, IPv6 first.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError>;
    /// IPv4 addresses of a name; empty when it does not exist (DNSBL answers).
    async fn a_records(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, RouteError>;
}

#[async_trait::async_trait]
impl Lookup for MxResolver {
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        MxResolver::mx_hosts(self, domain).await
    }
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        MxResolver::addresses(self, host).await
    }
    async fn a_records(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, RouteError> {
        MxResolver::a_records(self, name).await
    }
}

/// Looks up MX records and addresses.
pub struct MxResolver {
    resolver: TokioResolver,
}

impl MxResolver {
    /// Uses the given name servers, or the system configuration (with /etc/hosts) when the
    /// list is empty.
    /// Timeouts are short: a dead resolver must not stall delivery for minutes.
    pub fn new(servers: &[String]) -> Result<MxResolver, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        // With explicit name servers, only they answer (no /etc/hosts): what the admin
        // configured is what the server sees.
        if !servers.is_empty() {
            opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        }
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system resolver configuration: {e}"))?
        } else {
            let mut name_servers = Vec::new();
            for s in servers {
                let addr = crate::config::parse_name_server(s)
                    .ok_or_else(|| format!("bad name server {s:?}"))?;
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                name_servers.push(ns);
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(MxResolver { resolver })
    }

    /// The mail hosts for a domain, in the order to try them.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = literal.strip_prefix("IPv6:").unwrap_or(literal);
            return Ok(vec![MxHost {
                name: ip.to_string(),
                preference: 0,
            }]);
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut hosts: Vec<MxHost> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(MxHost {
                            name: mx
                                .exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                            preference: mx.preference,
                        }),
                        _ => None,
                    })
                    .collect();
                if hosts.is_empty() {
                    return self.implicit_mx(domain).await;
                }
                // RFC 7505 §3: "0 ." is the null MX.
                if hosts.iter().all(|h| h.name.is_empty()) {
                    return Err(RouteError::NullMx(domain.to_string()));
                }
                hosts.retain(|h| !h.name.is_empty());
                order_by_preference(&mut hosts);
                Ok(hosts)
            }
            Err(e) if e.is_nx_domain() => Err(RouteError::NoSuchDomain(
                domain.to_string(),
                "domain does not exist (NXDOMAIN)".into(),
            )),
            Err(e) if e.is_no_records_found() => self.implicit_mx(domain).await,
            Err(e) => Err(RouteError::Temporary(domain.to_string(), e.to_string())),
        }
    }

    /// RFC 5321 §5.1: without MX records, the domain itself is the host, if it has an address.
    async fn implicit_mx(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        match self.addresses(domain).await {
            Ok(a) if !a.is_empty() => Ok(vec![MxHost {
                name: domain.to_string(),
                preference: 0,
            }]),
            Ok(_) => Err(RouteError::NoSuchDomain(
                domain.to_string(),
                "no MX and no address records".into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// The addresses of a host: IPv6 first, then IPv4 (both are tried before the next host).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let (v6, v4) = tokio::join!(
            self.resolver.ipv6_lookup(fqdn.as_str()),
            self.resolver.ipv4_lookup(fqdn.as_str())
        );
        let mut out = Vec::new();
        let mut temporary = None;
        let mut nx = false;
        for result in [v6, v4] {
            match result {
                Ok(lookup) => out.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) if e.is_nx_domain() => nx = true,
                Err(e) if e.is_no_records_found() => {}
                Err(e) => temporary = Some(e.to_string()),
            }
        }
        if out.is_empty() {
            if let Some(e) = temporary {
                return Err(RouteError::Temporary(host.to_string(), e));
            }
            if nx {
                return Err(RouteError::NoSuchDomain(
                    host.to_string(),
                    "host does not exist (NXDOMAIN)".into(),
                ));
            }
        }
        Ok(out)
    }
}

impl MxResolver {
    /// The underlying resolver (shared with SPF/DKIM/DMARC evaluation).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The client's forward-confirmed reverse DNS name: a PTR name whose addresses include
    /// `ip` (for the Received header, RFC 5321 §4.4 TCP-info). `None` when there is none.
    pub async fn confirmed_name(&self, ip: std::net::IpAddr) -> Option<String> {
        let lookup = self.resolver.reverse_lookup(ip).await.ok()?;
        let names: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .take(3)
            .collect();
        for name in names {
            if self.addresses(&name).await.is_ok_and(|a| a.contains(&ip)) {
                return Some(name);
            }
        }
        None
    }

    /// The MX records a domain publishes, as published (no implicit MX, null MX kept as
    /// an empty name): what `kurier dns check` compares with the configuration.
    pub async fn mx_records(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(MxHost {
                        name: mx
                            .exchange
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                        preference: mx.preference,
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(RouteError::Temporary(domain.to_string(), e.to_string())),
        }
    }

    /// The TXT records of a name, each as its strings joined (RFC 7208 §3.3, RFC 6376
    /// §3.6.2.2); empty when there are none.
    pub async fn txt_records(&self, name: &str) -> Result<Vec<Vec<u8>>, RouteError> {
        match self.resolver.txt_lookup(name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .flat_map(|s| s.iter().copied())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(RouteError::Temporary(name.to_string(), e.to_string())),
        }
    }

    /// IPv4 addresses of a name (for DNSBL queries); empty when it does not exist.
    pub async fn a_records(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, RouteError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.ipv4_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(RouteError::Temporary(name.to_string(), e.to_string())),
        }
    }
}

/// Sorts by preference and shuffles hosts of equal preference (RFC 5321 §5.1: spread load).
fn order_by_preference(hosts: &mut [MxHost]) {
    hosts.sort_by_key(|h| h.preference);
    let mut start = 0;
    while start < hosts.len() {
        let end = hosts[start..]
            .iter()
            .position(|h| h.preference != hosts[start].preference)
            .map_or(hosts.len(), |n| start + n);
        let group = &mut hosts[start..end];
        for i in (1..group.len()).rev() {
            let mut b = [0u8; 4];
            let _ = getrandom::fill(&mut b);
            let j = (u32::from_le_bytes(b) as usize) % (i + 1);
            group.swap(i, j);
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_parsing() {
        assert_eq!(
            crate::config::parse_name_server("127.0.0.1"),
            "127.0.0.1:53".parse().ok()
        );
        assert_eq!(
            crate::config::parse_name_server("127.0.0.1:5353"),
            "127.0.0.1:5353".parse().ok()
        );
        assert_eq!(
            crate::config::parse_name_server("[::1]:53"),
            "[::1]:53".parse().ok()
        );
        assert_eq!(crate::config::parse_name_server("localhost"), None);
    }

    #[test]
    fn preference_order_with_shuffled_ties() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut hosts: Vec<MxHost> = [(20, "c"), (10, "a"), (10, "b"), (30, "d")]
                .iter()
                .map(|(p, n)| MxHost {
                    name: n.to_string(),
                    preference: *p,
                })
                .collect();
            order_by_preference(&mut hosts);
            let prefs: Vec<u16> = hosts.iter().map(|h| h.preference).collect();
            assert_eq!(prefs, vec![10, 10, 20, 30]);
            seen_first.insert(hosts[0].name.clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are shuffled");
    }
}
