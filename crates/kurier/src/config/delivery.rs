//! The outbound side of the configuration: `[delivery]` and `[[routes]]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// Delivery settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Deliver queued mail. With false, accepted mail stays queued until restarted with true
    /// (maintenance).
    pub enabled: bool,
    /// Messages delivered in parallel.
    pub workers: usize,
    /// Connections at once to one destination (next hop: a route's host, or the domain
    /// for MX delivery); a worker never waits for one (see delivery::destination).
    pub per_destination: usize,
    /// Waits between attempts after temporary failures; the last one repeats. A random
    /// jitter of up to 10% is added.
    #[serde(with = "duration::list")]
    pub retry: Vec<Duration>,
    /// After this long in the queue, a message still undelivered is bounced
    /// (RFC 5321 §4.5.4.1: at least 4-5 days).
    #[serde(with = "duration::text")]
    pub max_lifetime: Duration,
    /// After this long undelivered, the sender gets a delay warning (once).
    #[serde(with = "duration::text")]
    pub delay_warning: Duration,
    /// Timeout for connecting and for each reply of a remote server.
    #[serde(with = "duration::text")]
    pub remote_timeout: Duration,
    /// How long the history of a message that left the queue is kept for `kurier queue
    /// history`; "0s" keeps none.
    #[serde(with = "duration::text")]
    pub history_keep: Duration,
    /// The most the history files may hold together (bytes); the oldest days go first.
    pub history_size: u64,
    /// Which address family to connect over first, or only.
    pub address_preference: AddressPreference,
    /// Messages per minute to one destination (a route's host or a recipient domain), by
    /// name; `*` for every other one; 0 or absent: no limit.
    pub rate_limits: std::collections::BTreeMap<String, u32>,
    /// How long a remote "no such address" (5.1.x, 5.2.1) for a local sender's mail is
    /// remembered: mail from that sender to that address bounces at once meanwhile. "0s"
    /// turns the suppression list off.
    #[serde(with = "duration::text")]
    pub suppress_for: Duration,
}

/// Which address family outbound connections use first, or only.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AddressPreference {
    /// Both, IPv6 first (the order of RFC 6724 between global addresses).
    #[default]
    Any,
    /// Both, IPv4 first.
    Ipv4,
    /// Both, IPv6 first.
    Ipv6,
    /// IPv4 only (IPv6 disabled for outbound mail).
    Ipv4Only,
    /// IPv6 only (IPv4 disabled for outbound mail).
    Ipv6Only,
}

/// How a route or MX connection uses TLS.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS when offered, certificate not checked (the norm between MX hosts).
    #[default]
    Opportunistic,
    /// STARTTLS must succeed; certificate not checked.
    Required,
    /// STARTTLS must succeed and the certificate must verify for the host name.
    Verify,
    /// TLS from the first byte (port 465); certificate not checked.
    Implicit,
    /// Never TLS.
    None,
}

/// A route: recipients in these domains go to a fixed host instead of the MX.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domains this route applies to; "*" matches every remote domain.
    pub domains: Vec<String>,
    /// The next hop's host name or IP address. Without it, MX lookup is used with this
    /// route's TLS settings.
    #[serde(default)]
    pub host: Option<String>,
    /// The next hop's port (default 25).
    #[serde(default = "default_route_port")]
    pub port: u16,
    /// TLS: "opportunistic", "required", "verify", "implicit" or "none".
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM CA certificates for `tls = "verify"` (default: the system's bundle).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// AUTH user name for the smarthost (sent only over TLS).
    #[serde(default)]
    pub username: Option<String>,
    /// AUTH password.
    #[serde(default)]
    pub password: Option<String>,
}

fn default_route_port() -> u16 {
    25
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(n * 60);
        DeliveryConfig {
            enabled: true,
            workers: 8,
            per_destination: 4,
            retry: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            max_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Duration::from_secs(4 * 3600),
            remote_timeout: Duration::from_secs(120),
            history_keep: Duration::from_secs(7 * 24 * 3600),
            history_size: 1024 * 1024 * 1024,
            address_preference: AddressPreference::Any,
            rate_limits: std::collections::BTreeMap::new(),
            suppress_for: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Which of `routes` (each given by its domains) serves `domain`: the first that names it,
/// else the first with `*`; `None`: MX delivery.
pub fn route_position<'a>(
    mut routes: impl Iterator<Item = &'a [String]> + Clone,
    domain: &str,
) -> Option<usize> {
    routes
        .clone()
        .position(|ds| ds.iter().any(|d| d.eq_ignore_ascii_case(domain)))
        .or_else(|| routes.position(|ds| ds.iter().any(|d| d == "*")))
}

/// The destination (next hop) of mail for `domain`: a route's host, or the domain itself
/// for MX delivery. Its limits and dead-or-alive state are per destination.
pub fn destination_of(routes: &[RouteConfig], domain: &str) -> String {
    route_position(routes.iter().map(|r| r.domains.as_slice()), domain)
        .and_then(|i| Some(next_hop(routes[i].host.as_deref()?, routes[i].port)))
        .unwrap_or_else(|| domain.to_ascii_lowercase())
}

/// A route's next hop as a destination's name: the host, with the port when it is not 25
/// (two services on one host are two destinations, each with its own limits).
pub fn next_hop(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    match (port, host.contains(':')) {
        (25, _) => host,
        (_, true) => format!("[{host}]:{port}"),
        (_, false) => format!("{host}:{port}"),
    }
}
