//! Finding messages in the history and the live queue: by queue id (a report about the
//! message comes with it), Message-ID, recipient or sender, and since a time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use kurier_smtp::ReversePath;
use kurier_spool::{Envelope, QueueId, Spool, SpoolError};

use super::timeline::Found;
use super::{Record, day_files, day_of};

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Everything (within `since`).
    All,
    /// One queue id, and the reports about it.
    Id(QueueId),
    /// A Message-ID (with or without angle brackets).
    MessageId(String),
    /// A recipient address (case-insensitive).
    Recipient(String),
    /// An envelope sender (case-insensitive; `<>` for reports).
    Sender(String),
}

impl Selector {
    /// True when the envelope is one the selector asks for.
    pub fn matches(&self, e: &Envelope) -> bool {
        match self {
            Selector::All => true,
            Selector::Id(id) => e.id == *id || e.report_of.as_ref() == Some(id),
            Selector::MessageId(mid) => {
                let mid = mid.trim().trim_start_matches('<').trim_end_matches('>');
                e.message_id.as_deref() == Some(mid)
            }
            Selector::Recipient(a) => e.recipients.iter().any(|r| {
                r.address
                    .to_string()
                    .eq_ignore_ascii_case(a.trim_matches(['<', '>']))
            }),
            Selector::Sender(a) => match &e.sender {
                ReversePath::Null => a == "<>" || a.is_empty(),
                ReversePath::Mailbox(m) => m
                    .to_string()
                    .eq_ignore_ascii_case(a.trim_matches(['<', '>'])),
            },
        }
    }

    /// Lower-case text a matching record's line must contain (a cheap test before parsing);
    /// `None` when no such text can be given.
    fn needle(&self) -> Option<String> {
        let s = match self {
            Selector::All => return None,
            Selector::Id(id) => id.to_string(),
            Selector::MessageId(m) => m
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .into(),
            Selector::Recipient(a) | Selector::Sender(a) => a.trim_matches(['<', '>']).into(),
        };
        // JSON escapes these: the raw line would not contain the text as given.
        let plain = !s.is_empty() && !s.contains(['"', '\\']) && !s.chars().any(char::is_control);
        plain.then(|| s.to_ascii_lowercase())
    }
}

/// The messages that match, oldest first: records of messages that left the queue at or
/// after `since`, then queued ones with activity since then.
pub fn search(
    history: &Path,
    spool: &Path,
    selector: &Selector,
    since: u64,
    now: u64,
) -> Result<Vec<Found>, SpoolError> {
    let mut found: BTreeMap<QueueId, Record> = BTreeMap::new();
    let first_day = day_of(since);
    let needle = selector.needle();
    let io = |e: std::io::Error| SpoolError::Io {
        path: history.to_path_buf(),
        source: e,
    };
    for (day, path, _) in day_files(history).map_err(io)? {
        if day < first_day {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        for line in BufReader::new(file).split(b'\n').map_while(Result::ok) {
            if let Some(n) = &needle
                && !contains_lowercase(&line, n)
            {
                continue;
            }
            // A line cut short by a crash, or written by a later version, is skipped.
            let Ok(record) = serde_json::from_slice::<Record>(&line) else {
                continue;
            };
            if record.left_at >= since && selector.matches(&record.envelope) {
                // A record written again after a crash: the last one wins.
                found.insert(record.envelope.id.clone(), record);
            }
        }
    }
    let mut out: Vec<Found> = found.into_values().map(Found::from_record).collect();
    out.sort_by_key(|f| f.left_at);
    let live = Spool::attach(spool);
    let ids = match live.ids() {
        Ok(ids) => ids,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    for id in ids {
        let env = match live.envelope(&id) {
            Ok(e) => e,
            Err(SpoolError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if selector.matches(&env) && last_activity(&env) >= since {
            out.push(Found::queued(env, now));
        }
    }
    Ok(out)
}

/// The latest time anything happened to a queued message.
fn last_activity(e: &Envelope) -> u64 {
    e.recipients
        .iter()
        .flat_map(|r| r.history.iter().map(|a| a.at))
        .chain(std::iter::once(e.received_at))
        .max()
        .unwrap_or(e.received_at)
}

/// True when the line, lower-cased as ASCII, contains `needle` (lower case).
fn contains_lowercase(line: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    n.len() <= line.len()
        && line
            .windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}
