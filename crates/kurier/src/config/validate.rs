//! Validation of a parsed configuration, one function per part of the file: everything
//! serde cannot check (names, addresses, ranges, consistency), reported with the dotted key.

use std::time::Duration;

use kurier_smtp::{Domain, Mailbox};

use super::{Config, ConfigError, TlsMode, invalid};

/// The smallest `limits.message_memory`: twice what a large message holds in memory.
const MESSAGE_MEMORY_LEAST: u64 = 2 * 1024 * 1024;

impl Config {
    /// Checks everything serde cannot: names, addresses, ranges, consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_names()?;
        self.validate_listeners()?;
        self.validate_limits()?;
        self.validate_routes()?;
        self.validate_tables()
    }

    /// The host name, the local domains and their sender policies, the delimiter.
    fn validate_names(&self) -> Result<(), ConfigError> {
        Domain::parse(&self.hostname).map_err(|_| {
            invalid(
                "hostname",
                format!("{:?} is not a valid host name", self.hostname),
            )
        })?;
        if self.domains.is_empty() {
            return Err(invalid("domains", "at least one local domain is needed"));
        }
        for (i, d) in self.domains.iter().enumerate() {
            match Domain::parse(d) {
                Ok(dom) if !dom.is_literal() => {}
                _ => {
                    return Err(invalid(
                        format!("domains[{i}]"),
                        format!("{d:?} is not a valid domain"),
                    ));
                }
            }
        }
        for d in self.authentication.domains.keys() {
            if !self.domains.iter().any(|l| l.eq_ignore_ascii_case(d)) {
                return Err(invalid(
                    format!("authentication.domains.{d}"),
                    "sender policies are set for local domains (listed in `domains`)",
                ));
            }
        }
        if self.recipient_delimiter.chars().count() > 1 {
            return Err(invalid(
                "recipient_delimiter",
                "must be one character or empty",
            ));
        }
        Ok(())
    }

    /// Listeners and the certificate.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid("listeners", "at least one listener is needed"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            // Port 0 is "any free port": each such listener gets its own.
            if l.address.port() != 0 && self.listeners[..i].iter().any(|o| o.address == l.address) {
                return Err(invalid(
                    format!("listeners[{i}].address"),
                    format!("{} is listed twice", l.address),
                ));
            }
        }
        match (&self.tls.certificate, &self.tls.private_key) {
            (Some(_), None) => {
                return Err(invalid("tls.private_key", "needed with tls.certificate"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls.certificate", "needed with tls.private_key"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Limits, delivery settings and name servers.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (key, value) in [
            ("limits.message_size", l.message_size),
            ("limits.recipients", l.recipients as u64),
            ("limits.connections", l.connections as u64),
            ("limits.connections_per_ip", l.connections_per_ip as u64),
            ("limits.errors", u64::from(l.errors)),
            ("limits.auth_failures", u64::from(l.auth_failures)),
            (
                "limits.auth_failures_per_ip",
                u64::from(l.auth_failures_per_ip),
            ),
            ("delivery.workers", self.delivery.workers as u64),
            (
                "delivery.per_destination",
                self.delivery.per_destination as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        // Half of it must hold what one large message keeps in memory while the rest goes
        // to disk, or its session would wait for ever (see load::MemoryBudget).
        if l.message_memory < MESSAGE_MEMORY_LEAST {
            return Err(invalid(
                "limits.message_memory",
                format!("must be at least 2 MiB ({MESSAGE_MEMORY_LEAST} octets)"),
            ));
        }
        for (key, value) in [
            ("limits.command_timeout", l.command_timeout),
            ("limits.data_timeout", l.data_timeout),
            ("limits.tls_handshake_timeout", l.tls_handshake_timeout),
            ("limits.message_memory_wait", l.message_memory_wait),
        ] {
            if value < Duration::from_secs(1) {
                return Err(invalid(key, "must be at least 1s"));
            }
        }
        if self.delivery.retry.is_empty() || self.delivery.retry.iter().any(|d| d.is_zero()) {
            return Err(invalid(
                "delivery.retry",
                "needs at least one duration, none of them zero",
            ));
        }
        for (i, server) in self.dns.servers.iter().enumerate() {
            if super::parse_name_server(server).is_none() {
                return Err(invalid(
                    format!("dns.servers[{i}]"),
                    format!("{server:?} is not an IP address or IP:port"),
                ));
            }
        }
        Ok(())
    }

    /// Routes: domains, credentials only over TLS.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        for (i, r) in self.routes.iter().enumerate() {
            if r.domains.is_empty() {
                return Err(invalid(
                    format!("routes[{i}].domains"),
                    "needs at least one domain or \"*\"",
                ));
            }
            for d in &r.domains {
                if d != "*" && Domain::parse(d).is_err() {
                    return Err(invalid(
                        format!("routes[{i}].domains"),
                        format!("{d:?} is not a domain"),
                    ));
                }
            }
            if r.username.is_some() != r.password.is_some() {
                return Err(invalid(
                    format!("routes[{i}]"),
                    "username and password go together",
                ));
            }
            if r.username.is_some() && r.tls == TlsMode::None {
                return Err(invalid(
                    format!("routes[{i}].tls"),
                    "AUTH needs TLS; credentials are never sent in plaintext",
                ));
            }
            if r.host.is_none() && (r.username.is_some() || r.tls == TlsMode::Implicit) {
                return Err(invalid(
                    format!("routes[{i}].host"),
                    "needed with credentials or implicit TLS",
                ));
            }
        }
        Ok(())
    }

    /// Aliases, sender grants and users: addresses in local domains.
    fn validate_tables(&self) -> Result<(), ConfigError> {
        for (addr, targets) in &self.aliases {
            self.local_mailbox(&format!("aliases.\"{addr}\""), addr)?;
            if targets.addresses().is_empty() {
                return Err(invalid(
                    format!("aliases.\"{addr}\""),
                    "needs at least one target",
                ));
            }
            for t in targets.addresses() {
                let key = format!("aliases.\"{addr}\"");
                self.local_mailbox(&key, t)?;
                // A target is a mailbox, so a directory under mail/: it must be a safe name.
                crate::data_dir::safe_mailbox_name(t).map_err(|m| invalid(&key, m))?;
            }
        }
        for (user, allowed) in &self.senders {
            let key = format!("senders.\"{user}\"");
            self.local_mailbox(&key, user)?;
            for a in allowed {
                let ok = match a.strip_prefix('@') {
                    Some(domain) => Domain::parse(domain).is_ok(),
                    None => Mailbox::parse(a).is_ok(),
                };
                if !ok {
                    return Err(invalid(
                        key,
                        format!("{a:?} is neither an address nor @domain"),
                    ));
                }
            }
        }
        for (addr, hash) in &self.users {
            let key = format!("users.\"{addr}\"");
            self.local_mailbox(&key, addr)?;
            crate::data_dir::safe_mailbox_name(addr).map_err(|m| invalid(&key, m))?;
            if argon2::PasswordHash::new(hash).is_err() {
                return Err(invalid(
                    key,
                    "value must be an argon2 password hash (see `kurier user hash`)",
                ));
            }
        }
        Ok(())
    }

    fn local_mailbox(&self, key: &str, addr: &str) -> Result<Mailbox, ConfigError> {
        let m = Mailbox::parse(addr).map_err(|e| invalid(key, format!("{addr:?}: {e}")))?;
        if !self.local_domains().contains(m.domain()) {
            return Err(invalid(
                key,
                format!(
                    "{addr:?} is not in a local domain (add its domain to `domains`; forwarding to remote addresses is not supported yet)"
                ),
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// An alias target becomes a Maildir path: one that climbs out of `mail/` is refused
    /// by `config check`, naming the alias.
    #[test]
    fn alias_targets_that_are_no_safe_mailbox_are_refused() {
        for target in [
            "\\\"../../../escape\\\"@localhost",
            "\\\".hidden\\\"@localhost",
        ] {
            let text = format!("[aliases]\n\"info@localhost\" = \"{target}\"\n");
            let e = Config::parse(&text).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("aliases.\"info@localhost\"")),
                "{target}: {e:?}"
            );
        }
        assert!(
            Config::parse("[aliases]\n\"info@localhost\" = \"postmaster@localhost\"\n").is_ok()
        );
    }
}
