//! Greylisting: the first delivery attempt of an unknown (client network, sender, recipient)
//! triplet is refused with 451 4.7.1; a retry after the delay is accepted, and the triplet is
//! then remembered. Real mail servers retry; most spam software does not.
//!
//! The client network is the /24 (IPv4) or /64 (IPv6), since large senders retry from other
//! addresses of the same pool. State lives in memory and is saved to
//! `<data_dir>/greylist.json` periodically and at shutdown, so it survives restarts.
//!
//! The table is bounded, because anyone can make triplets: expired entries are dropped at
//! every save, one client network has at most [`PENDING_PER_NETWORK`] triplets waiting, and
//! the whole table at most [`PENDING_TOTAL`]; a triplet over a cap is still answered 451
//! but not remembered. The snapshot written to disk is taken under the lock and encoded
//! outside it, so RCPT never waits for the file.

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

/// Triplets one client network may have waiting (not yet passed).
pub const PENDING_PER_NETWORK: u32 = 1_000;
/// Triplets waiting in the whole table.
pub const PENDING_TOTAL: usize = 200_000;

/// The greylist.
pub struct Greylist {
    config: GreylistConfig,
    path: PathBuf,
    state: Mutex<State>,
}

/// The triplets, and how many are waiting per client network.
#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    pending: HashMap<String, u32>,
    pending_total: usize,
}

impl State {
    fn from_entries(entries: HashMap<String, Entry>) -> State {
        let mut s = State {
            entries,
            ..State::default()
        };
        let waiting: Vec<String> = s
            .entries
            .iter()
            .filter(|(_, e)| !e.passed)
            .map(|(k, _)| network_of(k).to_string())
            .collect();
        for net in waiting {
            s.count_pending(&net, true);
        }
        s
    }

    fn count_pending(&mut self, net: &str, added: bool) {
        if added {
            *self.pending.entry(net.to_string()).or_insert(0) += 1;
            self.pending_total += 1;
            return;
        }
        self.pending_total = self.pending_total.saturating_sub(1);
        if let Some(n) = self.pending.get_mut(net) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(net);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key)
            && !e.passed
        {
            self.count_pending(network_of(key), false);
        }
    }
}

/// The network part of a triplet key.
fn network_of(key: &str) -> &str {
    key.split(' ').next().unwrap_or_default()
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
            state: Mutex::new(State::default()),
        };
        entries.retain(|_, e| !g.expired(e, now));
        *g.lock() = State::from_entries(entries);
        g
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops what has expired (called with every save).
    pub fn expire(&self, now: u64) {
        let mut s = self.lock();
        let gone: Vec<String> = s
            .entries
            .iter()
            .filter(|(_, e)| self.expired(e, now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            s.remove(&k);
        }
    }

    /// Triplets remembered now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        self.lock()
            .entries
            .get(&triplet(ip, from, to))
            .is_some_and(|e| e.passed && !self.expired(e, now))
    }

    /// Decides a recipient: `None` to accept, or the 451 reply.
    pub fn check(&self, ip: IpAddr, from: &ReversePath, to: &Mailbox, now: u64) -> Option<Reply> {
        let key = triplet(ip, from, to);
        let delay = self.config.delay.as_secs();
        let mut s = self.lock();
        if s.entries.get(&key).is_some_and(|e| self.expired(e, now)) {
            s.remove(&key);
        }
        // (passed, passes now, first seen) of a known triplet.
        let known = s.entries.get_mut(&key).map(|e| {
            e.last = now;
            let passes = !e.passed && now.saturating_sub(e.first) >= delay;
            e.passed |= passes;
            (e.passed, passes, e.first)
        });
        let first = match known {
            Some((_, true, _)) => {
                s.count_pending(network_of(&key), false);
                return None;
            }
            Some((true, false, _)) => return None,
            Some((false, false, first)) => first,
            None if delay == 0 => {
                let e = Entry {
                    first: now,
                    passed: true,
                    last: now,
                };
                s.entries.insert(key, e);
                return None;
            }
            None => {
                let net = network_of(&key).to_string();
                let crowded = s.pending.get(&net).copied().unwrap_or(0) >= PENDING_PER_NETWORK
                    || s.pending_total >= PENDING_TOTAL;
                if !crowded {
                    s.count_pending(&net, true);
                    let e = Entry {
                        first: now,
                        passed: false,
                        last: now,
                    };
                    s.entries.insert(key, e);
                }
                now
            }
        };
        drop(s);
        let wait = delay.saturating_sub(now.saturating_sub(first));
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
        let snapshot = self.lock().entries.clone();
        let data = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
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

    #[test]
    fn one_network_cannot_fill_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let g = Greylist::open(config(), dir.path().join("g.json"), 1000);
        let from = ReversePath::parse("<a@src.test>").unwrap();
        let spammer: IpAddr = [203, 0, 113, 5].into();
        for i in 0..(PENDING_PER_NETWORK + 500) {
            let to = Mailbox::parse(&format!("u{i}@dst.test")).unwrap();
            assert!(g.check(spammer, &from, &to, 1000).is_some());
        }
        assert_eq!(g.len(), PENDING_PER_NETWORK as usize);
        // Another network is not crowded out, and passes after the delay.
        let other: IpAddr = [198, 51, 100, 1].into();
        let to = Mailbox::parse("u@dst.test").unwrap();
        assert!(g.check(other, &from, &to, 1000).is_some());
        assert!(g.check(other, &from, &to, 1300).is_none());
        // A passed triplet frees its network's place; expiry empties the rest.
        let first = Mailbox::parse("u0@dst.test").unwrap();
        assert!(g.check(spammer, &from, &first, 1300).is_none());
        let more = Mailbox::parse("late@dst.test").unwrap();
        g.check(spammer, &from, &more, 1300);
        assert_eq!(g.len(), PENDING_PER_NETWORK as usize + 2);
        g.expire(1300 + 3601);
        assert_eq!(g.len(), 2, "the passed triplets stay");
        g.expire(1300 + 86401);
        assert!(g.is_empty());
        // Counts survive a save and a reload.
        for i in 0..10 {
            let to = Mailbox::parse(&format!("v{i}@dst.test")).unwrap();
            g.check(spammer, &from, &to, 100_000);
        }
        g.save().unwrap();
        let g = Greylist::open(config(), dir.path().join("g.json"), 100_000);
        assert_eq!(g.lock().pending_total, 10);
    }
}
