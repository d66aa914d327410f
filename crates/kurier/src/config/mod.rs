//! The configuration file (TOML) and the embedded default.
//!
//! Every key has a default, so an empty file, or no file at all, gives a working server on
//! loopback ports. Unknown keys are errors: a typo must not silently fall back to a default.
//! [`Config::load`] reports problems with the key's dotted path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kurier_smtp::{Domain, Role};
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod delivery;
pub mod duration;

pub use delivery::{
    AddressPreference, DeliveryConfig, RouteConfig, TlsMode, destination_of, next_hop,
    route_position,
};
mod validate;

/// A configuration problem, naming the offending key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax or type error (the message names line, column and key).
    #[error("{0}")]
    Parse(String),
    /// A value is syntactically fine but not acceptable.
    #[error("key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Parses a name server given as "IP" or "IP:port" (`dns.servers`; port 53 by default).
pub fn parse_name_server(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>().ok()
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our host name: in the SMTP greeting, EHLO reply, Received headers and the
    /// self-signed certificate.
    pub hostname: String,
    /// Directory for the queue, mailboxes, users and TLS keys.
    pub data_dir: PathBuf,
    /// Domains whose mail is delivered here. The first one is the primary domain (where
    /// `<postmaster>` without a domain goes).
    pub domains: Vec<String>,
    /// Unprivileged user to switch to after binding the ports (when started as root).
    pub run_as: Option<String>,
    /// Separator for address extensions: with "+", alice+lists@example.org goes to
    /// alice@example.org. Empty turns it off.
    pub recipient_delimiter: String,
    /// Clients in these networks may relay (send to other domains) without AUTH, as
    /// Postfix's `mynetworks` allows: for applications and hosts of one's own. Empty by
    /// default: only authenticated users relay.
    pub relay_networks: Vec<ipnet::IpNet>,
    /// Sockets to listen on, each with a role.
    pub listeners: Vec<ListenerConfig>,
    /// TLS certificate; without one, a self-signed certificate is generated in
    /// `<data_dir>/tls/` on first start.
    pub tls: TlsConfig,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Aliases: address = target address or list of targets (local mailboxes).
    pub aliases: BTreeMap<String, AliasTargets>,
    /// Users defined in the config file: address = argon2 password hash (PHC string, as
    /// printed by `kurier user hash`). Users added with `kurier user add` live in
    /// `<data_dir>/users.toml` instead.
    pub users: BTreeMap<String, String>,
    /// Extra sender addresses an authenticated user may use, besides their own address and
    /// the aliases that lead to them: user = ["other@example.org", "@example.net"] (a whole
    /// domain).
    pub senders: BTreeMap<String, Vec<String>>,
    /// Delivery settings.
    pub delivery: DeliveryConfig,
    /// DNS resolution (outbound delivery and DNSBL lookups).
    pub dns: DnsConfig,
    /// Sender authentication (SPF, DKIM, DMARC) of incoming mail on the `smtp` role.
    pub authentication: AuthenticationConfig,
    /// DNS blocklists checked for each client of the `smtp` role.
    pub dnsbl: DnsblConfig,
    /// Greylisting of unknown (client network, sender, recipient) triplets on the `smtp` role.
    pub greylisting: GreylistConfig,
    /// Routes overriding MX lookup (smarthosts), by recipient domain.
    pub routes: Vec<RouteConfig>,
    /// Logging.
    pub log: LogConfig,
}

/// One listening socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port, e.g. "0.0.0.0:25" or "[::]:587".
    pub address: SocketAddr,
    /// "smtp" (MX, port 25), "submission" (STARTTLS + AUTH, port 587) or "submissions"
    /// (implicit TLS + AUTH, port 465).
    pub role: RoleName,
}

/// The listener roles, as written in the config.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Inbound MX.
    Smtp,
    /// Submission with STARTTLS.
    Submission,
    /// Submission with implicit TLS.
    Submissions,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Role {
        match r {
            RoleName::Smtp => Role::Smtp,
            RoleName::Submission => Role::Submission,
            RoleName::Submissions => Role::Submissions,
        }
    }
}

/// Certificate and key files (PEM).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub certificate: Option<PathBuf>,
    /// Private key, PEM.
    pub private_key: Option<PathBuf>,
}

/// Limits; RFC 5321 §4.5.3 gives the protocol minimums.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, in octets (advertised with SIZE, RFC 1870).
    pub message_size: u64,
    /// Recipients per message (RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub recipients: usize,
    /// Simultaneous connections in total.
    pub connections: usize,
    /// Simultaneous connections from one client IP address.
    pub connections_per_ip: usize,
    /// New connections per minute from one client address (0: unlimited); over it, 421.
    pub connections_per_minute: u32,
    /// Messages (MAIL commands) per minute from one client address (0: unlimited); over
    /// it, 451.
    pub messages_per_minute: u32,
    /// Idle time allowed while waiting for a command (RFC 5321 §4.5.3.2.7: at least 5 min).
    #[serde(with = "duration::text")]
    pub command_timeout: Duration,
    /// Idle time allowed while receiving message data.
    #[serde(with = "duration::text")]
    pub data_timeout: Duration,
    /// Message data must arrive at this many octets per second on average (0: no
    /// minimum): a message may take `data_timeout` plus its size divided by this rate, so
    /// a client trickling a byte now and then cannot hold a connection for ever.
    pub min_data_rate: u64,
    /// Time for a TLS handshake (implicit TLS and STARTTLS); a client stalled in its
    /// ClientHello is cut off sooner than an idle one.
    #[serde(with = "duration::text")]
    pub tls_handshake_timeout: Duration,
    /// NOOP, RSET, VRFY and HELP commands allowed between accepted messages (0: no limit);
    /// one more closes the connection with `421 4.7.0`.
    pub junk_commands: u32,
    /// Protocol errors after which a connection is closed.
    pub errors: u32,
    /// Failed AUTH attempts after which a connection is closed.
    pub auth_failures: u32,
    /// Failed AUTH attempts from one client address, across connections, after which its
    /// AUTH attempts are refused (454 4.7.0, with a growing delay) until the window passes.
    pub auth_failures_per_ip: u32,
    /// The window for `auth_failures_per_ip`.
    #[serde(with = "duration::text")]
    pub auth_failure_window: Duration,
    /// On shutdown, how long transactions in progress may take to finish.
    #[serde(with = "duration::text")]
    pub shutdown_grace: Duration,
    /// Memory that message data being received may take, all sessions together, in
    /// octets. A session that would go over it stops reading its client until others have
    /// finished (after `message_memory_wait`: 421 4.3.1). At least 2 MiB: half is for the
    /// first 256 KiB of every message, half for the 512 KiB more a larger one holds while
    /// the rest of it goes to disk.
    pub message_memory: u64,
    /// How long a session waits for `message_memory` before it gives way.
    #[serde(with = "duration::text")]
    pub message_memory_wait: Duration,
    /// A message that already has this many `Received:` fields is refused (554 5.4.6):
    /// it is looping (RFC 5321 §6.3).
    pub hops: usize,
}

/// DNS settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers ("IP" or "IP:port"). Empty: the system's /etc/resolv.conf.
    pub servers: Vec<String>,
}

/// Sender authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthenticationConfig {
    /// Evaluate SPF, DKIM, ARC and DMARC for unauthenticated mail on the `smtp` role and add
    /// Authentication-Results. A temporary DNS failure defers the message (451 4.7.0).
    pub verify: bool,
    /// Refuse mail whose MAIL FROM domain's SPF record says "fail" (-all) for the client
    /// (550 5.7.1). Off by default: DMARC decides, and forwarded mail often fails SPF.
    pub reject_spf_fail: bool,
    /// Refuse mail that fails DMARC when the sender's domain publishes `p=reject`
    /// (550 5.7.1, RFC 7489 §6.6.3). When off, such mail is quarantined instead.
    pub dmarc_reject: bool,
    /// Deliver mail that fails DMARC under `p=quarantine` (or `p=reject` with
    /// `dmarc_reject` off) into the recipient's Junk folder. When off, into the inbox.
    pub dmarc_quarantine: bool,
    /// Clients in these networks are not checked (like Postfix's `mynetworks`): by default
    /// loopback, so local programs and a developer's own machine do not depend on outside DNS.
    pub exempt_networks: Vec<ipnet::IpNet>,
    /// The same three policies for one local domain (the recipient's), overriding the
    /// defaults above. After DATA one reply covers every recipient, so a message is refused
    /// when the policy of any of its recipients' domains refuses it.
    pub domains: BTreeMap<String, DomainPolicyConfig>,
}

impl Default for AuthenticationConfig {
    fn default() -> Self {
        AuthenticationConfig {
            verify: true,
            exempt_networks: vec![
                "127.0.0.0/8".parse().unwrap_or(ipnet::IpNet::default()),
                "::1/128".parse().unwrap_or(ipnet::IpNet::default()),
            ],
            reject_spf_fail: false,
            dmarc_reject: true,
            dmarc_quarantine: true,
            domains: BTreeMap::new(),
        }
    }
}

/// Overrides of the sender policy for one local domain; unset keys keep the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DomainPolicyConfig {
    /// See [`AuthenticationConfig::reject_spf_fail`].
    pub reject_spf_fail: Option<bool>,
    /// See [`AuthenticationConfig::dmarc_reject`].
    pub dmarc_reject: Option<bool>,
    /// See [`AuthenticationConfig::dmarc_quarantine`].
    pub dmarc_quarantine: Option<bool>,
}

/// What to do with mail for one local domain that fails sender authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderPolicy {
    /// Refuse an SPF "fail".
    pub reject_spf_fail: bool,
    /// Refuse a DMARC failure under `p=reject`.
    pub dmarc_reject: bool,
    /// Junk folder for DMARC failures that are not refused.
    pub dmarc_quarantine: bool,
}

impl AuthenticationConfig {
    /// The policy for mail to `domain` (a local domain; case does not matter).
    pub fn policy(&self, domain: &str) -> SenderPolicy {
        let o = self
            .domains
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        SenderPolicy {
            reject_spf_fail: o.reject_spf_fail.unwrap_or(self.reject_spf_fail),
            dmarc_reject: o.dmarc_reject.unwrap_or(self.dmarc_reject),
            dmarc_quarantine: o.dmarc_quarantine.unwrap_or(self.dmarc_quarantine),
        }
    }
}

/// DNSBL settings (RFC 5782).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblConfig {
    /// Zones to query, e.g. ["zen.spamhaus.org"]. A client listed in one gets 554 5.7.1 at
    /// connect, naming the zone. Empty: no checks.
    pub zones: Vec<String>,
}

/// Greylisting settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistConfig {
    /// Turn greylisting on.
    pub enabled: bool,
    /// How long an unknown triplet must wait before a retry is accepted.
    #[serde(with = "duration::text")]
    pub delay: Duration,
    /// How long after the first attempt a retry still counts (later ones start over).
    #[serde(with = "duration::text")]
    pub window: Duration,
    /// How long a triplet that passed is remembered (from its last use).
    #[serde(with = "duration::text")]
    pub remember: Duration,
    /// Clients in these networks are never greylisted.
    pub exempt_networks: Vec<ipnet::IpNet>,
    /// Senders whose MAIL FROM domain passes SPF for the client are not greylisted: the
    /// domain vouches for the client, and spam bots seldom send from such hosts.
    pub exempt_spf_pass: bool,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            enabled: false,
            delay: Duration::from_secs(300),
            window: Duration::from_secs(24 * 3600),
            remember: Duration::from_secs(36 * 24 * 3600),
            exempt_networks: vec![
                "127.0.0.0/8".parse().unwrap_or(ipnet::IpNet::default()),
                "::1/128".parse().unwrap_or(ipnet::IpNet::default()),
            ],
            exempt_spf_pass: true,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log filter: error, warn, info, debug or trace (or a tracing filter expression). The
    /// KURIER_LOG environment variable overrides it.
    pub level: String,
}

/// One alias target or several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum AliasTargets {
    /// A single address.
    One(String),
    /// Several addresses.
    Many(Vec<String>),
}

impl AliasTargets {
    /// The target addresses.
    pub fn addresses(&self) -> Vec<&str> {
        match self {
            AliasTargets::One(a) => vec![a.as_str()],
            AliasTargets::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl Default for Config {
    /// The embedded default: loopback only, high ports, domain `localhost`.
    fn default() -> Self {
        let listener = |port: u16, role| ListenerConfig {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            role,
        };
        Config {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("./kurier-data"),
            domains: vec!["localhost".into()],
            run_as: None,
            recipient_delimiter: "+".into(),
            relay_networks: Vec::new(),
            listeners: vec![
                listener(2525, RoleName::Smtp),
                listener(2587, RoleName::Submission),
                listener(2465, RoleName::Submissions),
            ],
            tls: TlsConfig::default(),
            limits: Limits::default(),
            aliases: BTreeMap::new(),
            users: BTreeMap::new(),
            senders: BTreeMap::new(),
            delivery: DeliveryConfig::default(),
            dns: DnsConfig::default(),
            authentication: AuthenticationConfig::default(),
            dnsbl: DnsblConfig::default(),
            greylisting: GreylistConfig::default(),
            routes: Vec::new(),
            log: LogConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_size: 25 * 1024 * 1024,
            recipients: 100,
            connections: 1000,
            connections_per_ip: 50,
            connections_per_minute: 0,
            messages_per_minute: 0,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            min_data_rate: 500,
            tls_handshake_timeout: Duration::from_secs(30),
            junk_commands: 100,
            errors: 20,
            auth_failures: 3,
            auth_failures_per_ip: 10,
            auth_failure_window: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(30),
            hops: 50,
            message_memory: 256 * 1024 * 1024,
            message_memory_wait: Duration::from_secs(60),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text)?;
        // A relative data_dir is the config file's neighbour, wherever a command is run from
        // (a `kurier queue list` in another directory must not look at an empty one).
        if config.data_dir.is_relative()
            && let Some(dir) = path.parent()
        {
            config.data_dir = dir.join(&config.data_dir);
        }
        Ok(config)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The default configuration as TOML, for `kurier config default`.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }

    /// The configured domains, parsed.
    pub fn local_domains(&self) -> Vec<Domain> {
        self.domains
            .iter()
            .filter_map(|d| Domain::parse(d).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn default_toml_round_trips() {
        assert_eq!(
            Config::parse(&Config::default_toml()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn full_example() {
        let c = Config::parse(
            r#"
            hostname = "mx.example.org"
            data_dir = "/var/lib/kurier"
            domains = ["example.org", "example.net"]
            run_as = "kurier"
            recipient_delimiter = "-"
            [[listeners]]
            address = "0.0.0.0:25"
            role = "smtp"
            [[listeners]]
            address = "[::]:465"
            role = "submissions"
            [tls]
            certificate = "/etc/kurier/cert.pem"
            private_key = "/etc/kurier/key.pem"
            [limits]
            message_size = 1000000
            command_timeout = "2m"
            data_timeout = "10m 30s"
            [aliases]
            "postmaster@example.org" = "alice@example.org"
            "team@example.net" = ["alice@example.org", "bob@example.net"]
            [delivery]
            workers = 2
            [authentication]
            reject_spf_fail = true
            [authentication.domains."Example.NET"]
            dmarc_reject = false
            reject_spf_fail = false
            [log]
            level = "debug"
            "#,
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        let strict = c.authentication.policy("example.org");
        assert!(strict.reject_spf_fail && strict.dmarc_reject && strict.dmarc_quarantine);
        let lenient = c.authentication.policy("example.net");
        assert!(!lenient.reject_spf_fail && !lenient.dmarc_reject && lenient.dmarc_quarantine);
        assert_eq!(c.limits.data_timeout, Duration::from_secs(630));
        assert_eq!(c.aliases["team@example.net"].addresses().len(), 2);
    }

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("hostnme = \"x\"").contains("unknown field `hostnme`"));
        assert!(err("[limits]\nmesage_size = 1").contains("mesage_size"));
        assert!(err("[limits]\nmessage_size = 0").contains("limits.message_size"));
        assert!(err("[limits]\ncommand_timeout = \"soon\"").contains("command_timeout"));
        assert!(err("domains = []").contains("`domains`"));
        assert!(err("domains = [\"bad_domain\"]").contains("domains[0]"));
        assert!(err("[[listeners]]\naddress = \"nowhere\"\nrole = \"smtp\"").contains("address"));
        assert!(err("[[listeners]]\naddress = \"127.0.0.1:25\"\nrole = \"mx\"").contains("role"));
        assert!(err("[tls]\ncertificate = \"/x\"").contains("tls.private_key"));
        assert!(
            err("[aliases]\n\"a@elsewhere.test\" = \"postmaster@localhost\"")
                .contains("not in a local domain")
        );
        assert!(err("[users]\n\"a@localhost\" = \"plaintext\"").contains("argon2"));
        assert!(
            err("[authentication.domains.\"elsewhere.test\"]\ndmarc_reject = false")
                .contains("authentication.domains.elsewhere.test")
        );
        assert!(
            err("[authentication.domains.localhost]\ndmarc_rejct = false").contains("dmarc_rejct")
        );
        let dup = "[[listeners]]\naddress = \"127.0.0.1:25\"\nrole = \"smtp\"\n[[listeners]]\naddress = \"127.0.0.1:25\"\nrole = \"submission\"";
        assert!(err(dup).contains("listeners[1].address"));
    }

    /// The README's config reference must name every key the structs accept.
    #[test]
    fn readme_documents_every_key() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let value: toml::Value = toml::Value::try_from(Config::default()).unwrap();
        let mut keys = Vec::new();
        collect_keys(&value, "", &mut keys);
        // Keys absent from the default (optional or empty), and the listener table.
        for k in [
            "run_as",
            "tls.certificate",
            "tls.private_key",
            "aliases",
            "users",
            "listeners",
        ] {
            keys.push(k.to_string());
        }
        for key in keys {
            assert!(
                readme.contains(&format!("`{key}`")),
                "README does not document `{key}`"
            );
        }
        for field in [
            "address", "role", "domains", "host", "port", "tls", "ca_file", "username", "password",
        ] {
            assert!(
                readme.contains(&format!("`{field}`")),
                "README does not document the listener or route field {field}"
            );
        }
    }

    fn collect_keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_table() {
                    collect_keys(v, &key, out);
                } else if !v.is_array() || key != "listeners" {
                    out.push(key);
                }
            }
        }
    }
}
