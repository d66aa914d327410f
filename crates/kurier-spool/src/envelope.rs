//! The envelope: everything about a queued message except its bytes.

use std::fmt;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use kurier_smtp::{EnhancedCode, Mailbox, Notify, OriginalRecipient, Ret, ReversePath};
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

/// A server spoken to: its name and, once connected, its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteHost {
    /// The host name (an MX host or a route's host).
    pub name: String,
    /// The address connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The TLS of the session, once one ran (for the history and the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsUsed>,
}

impl RemoteHost {
    /// A host by name and, once connected, address; no TLS yet.
    pub fn new(name: impl Into<String>, ip: Option<IpAddr>) -> RemoteHost {
        RemoteHost {
            name: name.into(),
            ip,
            tls: None,
        }
    }
}

/// The TLS a session used: what an admin asks of a message's history ("was it encrypted,
/// and did we know who we spoke to?").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsUsed {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
    /// Outbound: the server's certificate was verified (a route with `tls = "verify"`, or
    /// one that authenticates); false for opportunistic TLS. Always false inbound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
}

impl fmt::Display for TlsUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked = if self.verified {
            "verified"
        } else {
            "unverified"
        };
        write!(f, "{} {} {checked}", self.version, self.cipher)
    }
}

/// A report (DSN) sent about a message: its kind, for the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// Delivery failed (RFC 3464 action "failed").
    Failed,
    /// Still trying ("delayed").
    Delayed,
    /// Delivered into a mailbox ("delivered").
    Delivered,
    /// Handed to a server that sends no reports ("relayed").
    Relayed,
}

impl ReportKind {
    /// The RFC 3464 action name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Failed => "failed",
            ReportKind::Delayed => "delayed",
            ReportKind::Delivered => "delivered",
            ReportKind::Relayed => "relayed",
        }
    }
}

/// A DSN queued about a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSent {
    /// When (unix time).
    pub at: u64,
    /// The DSN's own queue id.
    pub id: QueueId,
    /// To whom (the message's sender).
    pub to: Mailbox,
    /// What it reports, one entry per recipient it covers.
    pub kinds: Vec<ReportKind>,
}

impl fmt::Display for RemoteHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{} [{ip}]", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Who produced a diagnostic (RFC 3464 §2.3.6 diagnostic-type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiagnosticType {
    /// A remote server's reply.
    #[serde(rename = "smtp")]
    Smtp,
    /// Kurier itself (a local error, a DNS failure, a timeout).
    #[serde(rename = "x-kurier")]
    Local,
}

impl DiagnosticType {
    /// The RFC 3464 name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiagnosticType::Smtp => "smtp",
            DiagnosticType::Local => "x-kurier",
        }
    }
}

/// Why a delivery did not happen: one value from the attempt to the DSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The RFC 3463 status, e.g. `5.1.1`.
    pub status: EnhancedCode,
    /// Who said it.
    pub kind: DiagnosticType,
    /// The remote reply (`550 5.1.1 no such user`) or the local error.
    pub text: String,
    /// The server involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteHost>,
}

impl Failure {
    /// A failure found by Kurier itself.
    pub fn local(status: EnhancedCode, text: impl Into<String>) -> Failure {
        Failure {
            status,
            kind: DiagnosticType::Local,
            text: text.into(),
            remote: None,
        }
    }
}

/// The RFC 3464 diagnostic form, `type; text`.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.kind.as_str(), self.text)
    }
}

/// Where a recipient's copy went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum Delivered {
    /// Into local Maildirs (one file per distinct mailbox the address leads to).
    Local {
        /// The message files written.
        files: Vec<String>,
    },
    /// Accepted by the next hop.
    Remote {
        /// The server.
        host: RemoteHost,
        /// Its final reply.
        reply: String,
        /// It offered no DSN (RFC 3461 "relayed": no further reports will come).
        relayed: bool,
    },
}

impl fmt::Display for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivered::Local { files } if files.is_empty() => {
                f.write_str("delivered (a copy already went to the same mailbox)")
            }
            Delivered::Local { files } => write!(f, "delivered to {}", files.join(" ")),
            Delivered::Remote { host, reply, .. } => write!(f, "delivered to {host}: {reply}"),
        }
    }
}

/// Where a recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not yet delivered; `next_attempt` says when to try (again).
    Pending,
    /// Delivered.
    Delivered {
        /// When (unix time).
        at: u64,
        /// Where to.
        delivered: Delivered,
    },
    /// Failed permanently; a DSN is due unless NOTIFY says otherwise.
    Failed {
        /// When (unix time).
        at: u64,
        /// Why.
        failure: Failure,
    },
}

/// What one attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AttemptResult {
    /// Delivered.
    Delivered {
        /// Where to.
        delivered: Delivered,
    },
    /// A temporary failure; retried later.
    Deferred {
        /// Why.
        failure: Failure,
    },
    /// A permanent failure.
    Failed {
        /// Why.
        failure: Failure,
    },
    /// Something the delivery did on the way that is worth knowing (e.g. a refusal that
    /// made it try the other address family).
    Note {
        /// In words.
        text: String,
    },
    /// An attempt recorded by queue format 1, which kept only a line of text.
    Recorded {
        /// The line.
        text: String,
    },
}

/// One attempt, for `kurier queue show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When (unix time; 0 for attempts recorded by format 1).
    pub at: u64,
    /// What happened.
    #[serde(flatten)]
    pub result: AttemptResult,
    /// How long it took (milliseconds), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    /// The address, as given in RCPT TO.
    pub address: Mailbox,
    /// RFC 3461 ORCPT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<OriginalRecipient>,
    /// RFC 3461 NOTIFY, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
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
    /// The last temporary failure, for `queue list` and delay DSNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// A DSN about this recipient's final state was sent (or was not wanted).
    #[serde(default)]
    pub notified: bool,
    /// The most recent attempts, oldest first (at most [`MAX_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

impl RecipientState {
    /// A new pending recipient.
    pub fn new(address: Mailbox, local: bool) -> Self {
        RecipientState {
            address,
            orcpt: None,
            notify: None,
            local,
            status: RecipientStatus::Pending,
            attempts: 0,
            next_attempt: 0,
            last_failure: None,
            notified: false,
            history: Vec::new(),
        }
    }

    /// True while delivery is still to be done.
    pub fn is_pending(&self) -> bool {
        matches!(self.status, RecipientStatus::Pending)
    }

    /// The NOTIFY of RFC 3461 §4.1 as it applies to one kind of report: NEVER wins, a
    /// listed kind is wanted, and without NOTIFY the default applies (failures and delays).
    pub fn wants(&self, pick: fn(&Notify) -> bool, default: bool) -> bool {
        match &self.notify {
            Some(n) if n.never => false,
            Some(n) => pick(n),
            None => default,
        }
    }

    /// Records an attempt, keeping the last [`MAX_HISTORY`].
    fn record(&mut self, at: u64, result: AttemptResult) {
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(0);
        }
        self.history.push(Attempt {
            at,
            result,
            took_ms: None,
        });
    }

    /// Notes how long the attempt just recorded took.
    pub fn took(&mut self, duration: std::time::Duration) {
        if let Some(a) = self.history.last_mut() {
            a.took_ms = Some(duration.as_millis() as u64);
        }
    }

    /// Notes something about the attempt under way, for the history.
    pub fn note(&mut self, at: u64, text: String) {
        self.record(at, AttemptResult::Note { text });
    }

    /// The recipient was delivered.
    pub fn delivered(&mut self, at: u64, delivered: Delivered) {
        self.record(
            at,
            AttemptResult::Delivered {
                delivered: delivered.clone(),
            },
        );
        self.status = RecipientStatus::Delivered { at, delivered };
    }

    /// The recipient failed for good.
    pub fn failed(&mut self, at: u64, failure: Failure) {
        self.record(
            at,
            AttemptResult::Failed {
                failure: failure.clone(),
            },
        );
        self.status = RecipientStatus::Failed { at, failure };
    }

    /// The attempt failed temporarily; the next one is at `next_attempt`.
    pub fn deferred(&mut self, at: u64, failure: Failure, next_attempt: u64) {
        self.record(
            at,
            AttemptResult::Deferred {
                failure: failure.clone(),
            },
        );
        self.last_failure = Some(failure);
        self.next_attempt = next_attempt;
    }
}

/// A queued message's envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Queue id.
    pub id: QueueId,
    /// Unix time of acceptance.
    pub received_at: u64,
    /// The reverse path; the null path `<>` for reports.
    pub sender: ReversePath,
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
    /// RFC 3461 RET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// RFC 3461 ENVID, decoded from xtext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// The client's IP address; none for mail Kurier made itself (reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
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
    /// The listener it came in on (`smtp`, `submission`, …); none for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// The TLS of the session it came in on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsUsed>,
    /// Its Message-ID field (without the angle brackets), for finding it in the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// For a report: the message it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_of: Option<QueueId>,
    /// The reports sent about it so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<ReportSent>,
}

impl Envelope {
    /// An envelope with no client, flags or parameters, for mail Kurier makes itself and
    /// for tests; the receiving side fills in the rest.
    pub fn new(
        id: QueueId,
        received_at: u64,
        sender: ReversePath,
        recipients: Vec<RecipientState>,
        size: u64,
    ) -> Envelope {
        Envelope {
            id,
            received_at,
            sender,
            recipients,
            size,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            client_ip: None,
            helo: String::new(),
            auth_user: None,
            hold: false,
            delay_warned: false,
            junk: false,
            listener: None,
            tls: None,
            message_id: None,
            report_of: None,
            reports: Vec::new(),
        }
    }

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
