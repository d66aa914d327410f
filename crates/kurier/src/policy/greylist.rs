//! Greylisting: the first delivery attempt of an unknown (client network, sender, recipient)
//! triplet is refused with 451 4.7.1; a retry after the delay is accepted, and the triplet is
//! then remembered. Real mail servers retry; most spam software does not.
//!
//! The client network is the /24 (IPv4) or /64 (IPv6), since large senders retry from other
//! addresses of the same pool. State lives in memory and is saved to
//! `<data_dir>/greylist.json` periodically and at shutdown, so it survives restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use kurier_smtp::{Mailbox, Reply, ReversePath, codes};
use serde::{Deserialize, Serialize};

use crate::config::GreylistConfig;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Entry {
    first: u64,
    passed: bool,
    last: u64,
}

/// The greylist.
pub struct Greylist {
    config: GreylistConfig,
    path: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

/// The greylisting key: client network, sender and recipient, in lower case.
fn triplet(ip: IpAddr, from: &ReversePath, to: &Mailbox) -> String {
    let sender = from
        .mailbox()
        .map(|m| m.to_string().to_lowercase())
        .unwrap_or_default();
    format!(
        "{} {} {}",
        network(ip),
        sender,
        to.to_string().to_lowercase()
    )
}

/// The network a client is greylisted as.
fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl Greylist {
    /// Loads the saved state (dropping what has expired).
    pub fn open(config: GreylistConfig, path: PathBuf, now: u64) -> Greylist {
        let mut entries: HashMap<String, Entry> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let g = Greylist {
            config,
            path,
            entries: Mutex::new(HashMap::new()),
        };
        entries.retain(|_, e| !g.expired(e, now));
        *g.entries.lock().unwrap_or_else(|p| p.into_inner()) = entries;
        g
    }

    fn expired(&self, e: &Entry, now: u64) -> bool {
        if e.passed {
            now.saturating_sub(e.last) > self.config.remember.as_secs()
        } else {
            now.saturating_sub(e.first) > self.config.window.as_secs()
        }
    }

    /// True when the client is exempt (configured networks).
    pub fn exempt(&self, ip: IpAddr) -> bool {
        self.config.exempt_networks.iter().any(|n| n.contains(&ip))
    }

    /// True when a sender passing SPF is exempt (`exempt_spf_pass`).
    pub fn exempts_spf_pass(&self) -> bool {
        self.config.exempt_spf_pass
    }

    /// True when this triplet has passed already and is still remembered: its recipient
    /// will be accepted whatever else is known of the sender.
    pub fn has_passed(&self, ip: IpAddr, from: &ReversePath, to: &Mailbox, now: u64) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&triplet(ip, from, to))
            .is_some_and(|e| e.passed && !self.expired(e, now))
    }

    /// Decides a recipient: `None` to accept, or the 451 reply.
    pub fn check(&self, ip: IpAddr, from: &ReversePath, to: &Mailbox, now: u64) -> Option<Reply> {
        let key = triplet(ip, from, to);
        let delay = self.config.delay.as_secs();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(&key).is_some_and(|e| self.expired(e, now)) {
            entries.remove(&key);
        }
        let e = entries.entry(key).or_insert(Entry {
            first: now,
            passed: false,
            last: now,
        });
        e.last = now;
        if e.passed || now.saturating_sub(e.first) >= delay {
            e.passed = true;
            return None;
        }
        let wait = delay - now.saturating_sub(e.first);
        Some(Reply::new(
            451,
            codes::GREYLISTED,
            format!(
                "Greylisted: please retry in {wait} seconds (this is normal for a first message)"
            ),
        ))
    }

    /// Writes the state to disk (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let data = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&*entries).map_err(std::io::Error::other)?
        };
        crate::fsutil::write_private(&self.path, &data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn config() -> GreylistConfig {
        GreylistConfig {
            enabled: true,
            delay: Duration::from_secs(300),
            window: Duration::from_secs(3600),
            remember: Duration::from_secs(86400),
            exempt_networks: vec!["10.0.0.0/8".parse().unwrap()],
            exempt_spf_pass: true,
        }
    }

    #[test]
    fn triplet_lifecycle_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greylist.json");
        let g = Greylist::open(config(), path.clone(), 1000);
        let ip: IpAddr = [192, 0, 2, 7].into();
        let from = ReversePath::parse("<a@src.test>").unwrap();
        let to = Mailbox::parse("u@dst.test").unwrap();
        let r = g.check(ip, &from, &to, 1000).unwrap();
        assert_eq!((r.code, r.enhanced), (451, Some(codes::GREYLISTED)));
        assert!(g.check(ip, &from, &to, 1200).is_some(), "too early");
        assert!(!g.has_passed(ip, &from, &to, 1200));
        // Another address of the same /24 counts as the same client.
        assert!(g.check([192, 0, 2, 8].into(), &from, &to, 1300).is_none());
        assert!(g.has_passed(ip, &from, &to, 1300));
        assert!(g.check(ip, &from, &to, 1400).is_none());
        let other = Mailbox::parse("v@dst.test").unwrap();
        assert!(
            g.check(ip, &from, &other, 1400).is_some(),
            "a new triplet waits"
        );
        g.save().unwrap();
        let g = Greylist::open(config(), path.clone(), 2000);
        assert!(
            g.check(ip, &from, &to, 2000).is_none(),
            "remembered across restarts"
        );
        // Retried after the window: starts over.
        assert!(g.check(ip, &from, &other, 1400 + 3601).is_some());
        assert!(g.exempt([10, 1, 2, 3].into()));
        assert!(!g.exempt(ip));
    }
}
