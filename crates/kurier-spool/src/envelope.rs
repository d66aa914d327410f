//! The envelope: everything about a queued message except its bytes.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A queue id: 13 hex digits of microseconds since the epoch, then 8 random hex digits.
/// Ids sort by arrival time and are safe as file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

impl QueueId {
    /// A fresh id.
    pub fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let mut rnd = [0u8; 4];
        // If the OS random source fails, the time part still makes the id unique in practice;
        // the commit refuses to overwrite an existing file in any case.
        let _ = getrandom::fill(&mut rnd);
        QueueId(format!(
            "{:013x}{:08x}",
            micros & 0xf_ffff_ffff_ffff,
            u32::from_be_bytes(rnd)
        ))
    }

    /// Validates an id given by a user or found on disk.
    pub fn parse(s: &str) -> Option<QueueId> {
        (s.len() == 21
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| QueueId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueueId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        QueueId::parse(&s).ok_or_else(|| format!("invalid queue id {s:?}"))
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Attempts remembered per recipient.
pub const MAX_HISTORY: usize = 20;

/// RFC 3461 §4.1 NOTIFY flags, kept for the DSN generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NotifyFlags {
    /// NOTIFY=NEVER.
    pub never: bool,
    /// SUCCESS.
    pub success: bool,
    /// FAILURE.
    pub failure: bool,
    /// DELAY.
    pub delay: bool,
}

/// Where a recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not yet delivered; `next_attempt` says when to try (again).
    Pending,
    /// Delivered (unix time).
    Delivered {
        /// When.
        at: u64,
        /// Where to (a mailbox path or the remote server and its reply), for logs and DSNs.
        detail: String,
        /// Handed to a server without DSN support (RFC 3461 "relayed").
        #[serde(default)]
        relayed: bool,
    },
    /// Failed permanently; a DSN is due unless NOTIFY says otherwise.
    Failed {
        /// When.
        at: u64,
        /// The reason as `type; text`, e.g. `smtp; 550 5.1.1 no such user`.
        reason: String,
        /// RFC 3463 status, e.g. `5.1.1`.
        #[serde(default)]
        status: String,
        /// The remote server that refused, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote_mta: Option<String>,
    },
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    /// The address, as given in RCPT TO (wire form, without angle brackets).
    pub address: String,
    /// RFC 3461 ORCPT, as `addr-type;address` (decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// RFC 3461 NOTIFY, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyFlags>,
    /// True when the address is in one of our domains (local delivery).
    pub local: bool,
    /// Delivery status.
    pub status: RecipientStatus,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Unix time of the next attempt (booked before each attempt).
    #[serde(default)]
    pub next_attempt: u64,
    /// The last temporary error as `type; text`, for `queue list` and delay DSNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3463 status of the last temporary error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    /// The remote server of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_mta: Option<String>,
    /// A DSN about this recipient's final state was sent (or was not wanted).
    #[serde(default)]
    pub notified: bool,
    /// The most recent attempts, oldest first: "date: outcome" (for `kurier queue show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

impl RecipientState {
    /// A new pending recipient.
    pub fn new(address: String, local: bool) -> Self {
        RecipientState {
            address,
            orcpt: None,
            notify: None,
            local,
            status: RecipientStatus::Pending,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            last_status: None,
            last_mta: None,
            notified: false,
            history: Vec::new(),
        }
    }

    /// True while delivery is still to be done.
    pub fn is_pending(&self) -> bool {
        matches!(self.status, RecipientStatus::Pending)
    }

    /// Records an attempt, keeping the last [`MAX_HISTORY`] entries.
    pub fn record_attempt(&mut self, entry: String) {
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(0);
        }
        self.history.push(entry);
    }
}

/// A queued message's envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Queue id.
    pub id: QueueId,
    /// Unix time of acceptance.
    pub received_at: u64,
    /// The reverse path without brackets; empty for the null sender `<>`.
    pub sender: String,
    /// Recipients with their state.
    pub recipients: Vec<RecipientState>,
    /// Size of the message bytes.
    pub size: u64,
    /// BODY=8BITMIME was declared (RFC 6152).
    #[serde(default)]
    pub eight_bit: bool,
    /// SMTPUTF8 was declared (RFC 6531).
    #[serde(default)]
    pub smtputf8: bool,
    /// RFC 3461 RET: `FULL` or `HDRS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// RFC 3461 ENVID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// The client's IP address.
    #[serde(default)]
    pub client_ip: String,
    /// The client's HELO name.
    #[serde(default)]
    pub helo: String,
    /// The authenticated submitter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// Held by the admin: not delivered until released.
    #[serde(default)]
    pub hold: bool,
    /// The delay warning was sent (once per message).
    #[serde(default)]
    pub delay_warned: bool,
    /// The message failed DMARC and was not refused: recipients whose domain's policy
    /// quarantines (`authentication.dmarc_quarantine`) get it in their Junk folder.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub junk: bool,
}

impl Envelope {
    /// True when no recipient is left to deliver.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| !r.is_pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_sortable_and_parse_back() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 21);
        assert_eq!(QueueId::parse(a.as_str()), Some(a.clone()));
        assert!(a.as_str()[..13] <= b.as_str()[..13]);
        assert_eq!(QueueId::parse("../../etc/passwd"), None);
        assert_eq!(QueueId::parse("ABCDEF0123456789abcde"), None);
    }
}
