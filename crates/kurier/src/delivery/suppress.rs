//! The suppression list: after a remote server said an address does not exist (a hard
//! `5.1.x` or `5.2.1`), further mail from the same local sender to it bounces at once with
//! the earlier reason for `delivery.suppress_for`, instead of asking again (a sender that
//! keeps mailing unknown users hurts its IP's reputation at large receivers).
//!
//! The list is a JSON file in the data directory, `suppressed.json`, changed under a lock
//! file (`suppressed.lock`) by read, change and atomic replace, by the server and by
//! `kurier queue suppress` alike (so the command works with the server running or not).
//! The server keeps a copy and reads the file again when its modification time changes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use kurier_smtp::{EnhancedCode, Mailbox};
use kurier_spool::durable::{WriteOptions, write_atomic};
use kurier_spool::{DiagnosticType, Failure};
use serde::{Deserialize, Serialize};

/// The most entries kept; the oldest go first.
pub const MAX_ENTRIES: usize = 100_000;

/// One suppressed (sender, recipient).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The local sender.
    pub sender: String,
    /// The address that does not exist.
    pub recipient: String,
    /// When it was refused (unix time).
    pub at: u64,
    /// The refusal's status code.
    pub status: EnhancedCode,
    /// The refusal, as the server said it (or the admin's reason).
    pub reason: String,
}

/// The key: both addresses, domains and local parts compared without case.
fn key(sender: &str, recipient: &str) -> String {
    format!("{}\n{}", sender.to_lowercase(), recipient.to_lowercase())
}

/// True for a failure worth suppressing: a remote server's permanent "no such address"
/// (RFC 3463 §3.2: 5.1.1 bad mailbox, 5.1.2 bad system, 5.1.3 bad syntax, 5.1.6 moved,
/// 5.1.10 null MX; §3.3: 5.2.1 disabled). Policy refusals (5.7.x) are about the sender and
/// are never suppressed.
pub fn is_hard_address_failure(f: &Failure) -> bool {
    let EnhancedCode(class, subject, detail) = f.status;
    f.kind == DiagnosticType::Smtp
        && class == 5
        && matches!((subject, detail), (1, 1 | 2 | 3 | 6 | 10) | (2, 1))
}

/// A version of the list file: its inode and modification time.
type FileVersion = (u64, SystemTime);

/// The list file and its lock.
pub struct SuppressionList {
    path: PathBuf,
    lock: PathBuf,
    cache: Mutex<(Option<FileVersion>, BTreeMap<String, Suppressed>)>,
}

impl SuppressionList {
    /// The list in the data directory `dir`.
    pub fn new(dir: &Path) -> SuppressionList {
        SuppressionList {
            path: dir.join("suppressed.json"),
            lock: dir.join("suppressed.lock"),
            cache: Mutex::new((None, BTreeMap::new())),
        }
    }

    /// The entry for (sender, recipient) made since `since`, if any. A file that cannot be
    /// read counts as empty (and is logged): delivery goes on.
    pub fn find(&self, sender: &Mailbox, recipient: &Mailbox, since: u64) -> Option<Suppressed> {
        // Each change replaces the file (a new inode): the inode tells a change apart even
        // within one tick of the modification time.
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| Ok((std::os::unix::fs::MetadataExt::ino(&m), m.modified()?)))
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            let entries = self.read().unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the suppression list");
                BTreeMap::new()
            });
            *cache = (mtime, entries);
        }
        cache
            .1
            .get(&key(&sender.to_string(), &recipient.to_string()))
            .filter(|s| s.at >= since)
            .cloned()
    }

    /// All entries, oldest first.
    pub fn list(&self) -> std::io::Result<Vec<Suppressed>> {
        let mut all: Vec<Suppressed> = self.read()?.into_values().collect();
        all.sort_by_key(|s| s.at);
        Ok(all)
    }

    /// Adds (or renews) an entry; entries older than `expired_before` are dropped on the way.
    pub fn add(&self, entry: Suppressed, expired_before: u64) -> std::io::Result<()> {
        self.change(|m| {
            m.retain(|_, s| s.at >= expired_before);
            m.insert(key(&entry.sender, &entry.recipient), entry);
            while m.len() > MAX_ENTRIES {
                let oldest = m.iter().min_by_key(|(_, s)| s.at).map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => m.remove(&k),
                    None => break,
                };
            }
            true
        })
    }

    /// Removes an entry; false when there was none.
    pub fn remove(&self, sender: &str, recipient: &str) -> std::io::Result<bool> {
        let mut found = false;
        self.change(|m| {
            found = m.remove(&key(sender, recipient)).is_some();
            found
        })?;
        Ok(found)
    }

    fn read(&self) -> std::io::Result<BTreeMap<String, Suppressed>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let list: Vec<Suppressed> = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(list
            .into_iter()
            .map(|s| (key(&s.sender, &s.recipient), s))
            .collect())
    }

    /// Read, change, replace, under the lock file; `f` says whether it changed anything.
    fn change(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Suppressed>) -> bool,
    ) -> std::io::Result<()> {
        let lock = File::create(&self.lock)?;
        lock.lock()?;
        let mut map = self.read()?;
        if f(&mut map) {
            let list: Vec<&Suppressed> = map.values().collect();
            let bytes = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
            write_atomic(&self.path, &[&bytes], &WriteOptions::private())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    fn entry(at: u64) -> Suppressed {
        Suppressed {
            sender: "alice@example.org".into(),
            recipient: "Gone@Remote.test".into(),
            at,
            status: EnhancedCode(5, 1, 1),
            reason: "550 5.1.1 no such user".into(),
        }
    }

    #[test]
    fn entries_are_found_within_the_period_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let list = SuppressionList::new(dir.path());
        let (alice, gone) = (m("alice@example.org"), m("gone@remote.test"));
        assert!(list.find(&alice, &gone, 0).is_none());
        list.add(entry(1000), 0).unwrap();
        assert_eq!(list.find(&alice, &gone, 900).unwrap().at, 1000);
        assert!(
            list.find(&alice, &gone, 1001).is_none(),
            "older than the period"
        );
        assert!(
            list.find(&m("bob@example.org"), &gone, 0).is_none(),
            "per sender"
        );
        // Another writer (the command line) changes the file: the copy follows.
        let other = SuppressionList::new(dir.path());
        assert!(
            other
                .remove("ALICE@example.org", "gone@remote.test")
                .unwrap()
        );
        assert!(
            !other
                .remove("alice@example.org", "gone@remote.test")
                .unwrap()
        );
        assert!(list.find(&alice, &gone, 0).is_none());
        // Expired entries go when another is added.
        list.add(entry(10), 0).unwrap();
        let mut newer = entry(5000);
        newer.recipient = "other@remote.test".into();
        list.add(newer, 100).unwrap();
        assert_eq!(list.list().unwrap().len(), 1);
    }

    #[test]
    fn only_hard_address_failures_from_a_server_count() {
        let smtp = |c| Failure {
            status: c,
            kind: DiagnosticType::Smtp,
            text: String::new(),
            remote: None,
        };
        assert!(is_hard_address_failure(&smtp(EnhancedCode(5, 1, 1))));
        assert!(is_hard_address_failure(&smtp(EnhancedCode(5, 2, 1))));
        assert!(!is_hard_address_failure(&smtp(EnhancedCode(5, 7, 1))));
        assert!(!is_hard_address_failure(&smtp(EnhancedCode(5, 2, 2))));
        assert!(!is_hard_address_failure(&smtp(EnhancedCode(4, 1, 1))));
        assert!(!is_hard_address_failure(&Failure::local(
            EnhancedCode(5, 1, 1),
            "local"
        )));
    }
}
