//! A message's timeline: its record (or its live envelope) as events in time order, in
//! words for `kurier queue history` and as JSON for scripts.

use kurier_smtp::ReversePath;
use kurier_spool::{
    AttemptResult, Delivered, Envelope, Failure, RecipientStatus, RemoteHost, TlsUsed,
};
use serde::Serialize;

use super::Record;

/// What kind of event an [`Entry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The message came in (or was made here, for a report).
    Received,
    /// One delivery attempt for one recipient.
    Attempt,
    /// A report (DSN) was queued to the sender.
    Report,
    /// It left the queue, or (live) where it stands.
    State,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// When (unix time).
    pub at: u64,
    /// The same as RFC 3339, in UTC.
    pub time: String,
    /// What kind.
    pub kind: EntryKind,
    /// The recipient it is about, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// In words.
    pub text: String,
}

/// A message found by a search: where it is, its envelope, its timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// `queued` while in the queue, `done` or `deleted` once it left.
    pub state: &'static str,
    /// When it left the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_at: Option<u64>,
    /// The envelope, as recorded.
    pub envelope: Envelope,
    /// Its events in time order.
    pub timeline: Vec<Entry>,
}

impl Found {
    /// A message that left the queue.
    pub fn from_record(r: Record) -> Found {
        let mut timeline = events(&r.envelope);
        let (delivered, failed) = finals(&r.envelope);
        timeline.push(entry(
            r.left_at,
            EntryKind::State,
            None,
            format!(
                "{}: {delivered} delivered, {failed} failed",
                r.left.as_str()
            ),
        ));
        Found {
            state: match r.left {
                super::Left::Done => "done",
                super::Left::Deleted => "deleted",
            },
            left_at: Some(r.left_at),
            envelope: r.envelope,
            timeline,
        }
    }

    /// A message still queued, as of `now`.
    pub fn queued(envelope: Envelope, now: u64) -> Found {
        let mut timeline = events(&envelope);
        let pending = envelope
            .recipients
            .iter()
            .filter(|r| r.is_pending())
            .count();
        let held = if envelope.hold { ", on hold" } else { "" };
        timeline.push(entry(
            now,
            EntryKind::State,
            None,
            format!("still queued: {pending} recipient(s) pending{held}"),
        ));
        Found {
            state: "queued",
            left_at: None,
            envelope,
            timeline,
        }
    }

    /// The timeline in words: a heading, then one line per event.
    pub fn text(&self) -> String {
        let e = &self.envelope;
        let mut out = format!("{}  {}  from {}\n", e.id, self.state, e.sender);
        for entry in &self.timeline {
            let who = entry
                .recipient
                .as_ref()
                .map(|r| format!("{r}: "))
                .unwrap_or_default();
            out.push_str(&format!("  {}  {who}{}\n", entry.time, entry.text));
        }
        out
    }
}

fn entry(at: u64, kind: EntryKind, recipient: Option<String>, text: String) -> Entry {
    Entry {
        at,
        time: rfc3339(at),
        kind,
        recipient,
        text,
    }
}

/// RFC 3339 in UTC, seconds.
pub fn rfc3339(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(0), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// (delivered, failed) recipients.
fn finals(e: &Envelope) -> (usize, usize) {
    let count =
        |f: fn(&RecipientStatus) -> bool| e.recipients.iter().filter(|r| f(&r.status)).count();
    (
        count(|s| matches!(s, RecipientStatus::Delivered { .. })),
        count(|s| matches!(s, RecipientStatus::Failed { .. })),
    )
}

/// Reception, attempts and reports, in time order.
fn events(e: &Envelope) -> Vec<Entry> {
    let mut out = vec![entry(e.received_at, EntryKind::Received, None, received(e))];
    for r in &e.recipients {
        for a in &r.history {
            let took = a
                .took_ms
                .map(|ms| format!(" in {ms} ms"))
                .unwrap_or_default();
            let text = match &a.result {
                AttemptResult::Delivered { delivered } => delivered_text(delivered, &took),
                AttemptResult::Deferred { failure } => failure_text("deferred", failure, &took),
                AttemptResult::Failed { failure } => failure_text("failed", failure, &took),
                AttemptResult::Note { text } | AttemptResult::Recorded { text } => text.clone(),
            };
            out.push(entry(
                a.at,
                EntryKind::Attempt,
                Some(r.address.to_string()),
                text,
            ));
        }
    }
    for report in &e.reports {
        let kinds: Vec<&str> = report.kinds.iter().map(|k| k.as_str()).collect();
        out.push(entry(
            report.at,
            EntryKind::Report,
            None,
            format!(
                "report ({}) {} queued to {}",
                kinds.join(", "),
                report.id,
                report.to
            ),
        ));
    }
    // Stable: reception first, then each recipient's attempts as they happened.
    out.sort_by_key(|e| e.at);
    out
}

/// How it came in, in one line.
fn received(e: &Envelope) -> String {
    let size = e.size;
    let rcpts = e.recipients.len();
    if let Some(of) = &e.report_of {
        return format!("report about {of} made here, {size} bytes, for {rcpts} recipient(s)");
    }
    let mut s = match (e.client_ip, &e.listener) {
        (Some(ip), Some(l)) => format!("received from {} [{ip}] on {l}", e.helo),
        (Some(ip), None) => format!("received from {} [{ip}]", e.helo),
        (None, _) => "made here".to_string(),
    };
    match &e.tls {
        Some(t) => s.push_str(&format!(" with {} {}", t.version, t.cipher)),
        None if e.client_ip.is_some() => s.push_str(" without TLS"),
        None => {}
    }
    if let Some(user) = &e.auth_user {
        s.push_str(&format!(", AUTH {user}"));
    }
    s.push_str(&format!(", {size} bytes"));
    if let Some(mid) = &e.message_id {
        s.push_str(&format!(", Message-ID <{mid}>"));
    }
    let from = match &e.sender {
        ReversePath::Null => "<>".to_string(),
        ReversePath::Mailbox(m) => format!("<{m}>"),
    };
    s.push_str(&format!(", from {from} for {rcpts} recipient(s)"));
    s
}

/// `over TLSv1.3 TLS13_… (certificate verified)`, or `without TLS`.
fn tls_text(tls: Option<&TlsUsed>) -> String {
    match tls {
        Some(t) if t.verified => format!("over {} {} (certificate verified)", t.version, t.cipher),
        Some(t) => format!("over {} {} (certificate not verified)", t.version, t.cipher),
        None => "without TLS".into(),
    }
}

/// `took`: ` in 12 ms`, or empty.
fn delivered_text(d: &Delivered, took: &str) -> String {
    match d {
        Delivered::Remote {
            host,
            reply,
            relayed,
        } => {
            let relayed = if *relayed {
                " (relayed: it sends no reports)"
            } else {
                ""
            };
            format!(
                "delivered to {host} {}{relayed}{took}: {}",
                tls_text(host.tls.as_ref()),
                reply.trim_end()
            )
        }
        local => format!("{local}{took}"),
    }
}

fn failure_text(verb: &str, f: &Failure, took: &str) -> String {
    match &f.remote {
        Some(host) => format!(
            "{verb} by {host}{}{took}: {}",
            tls_of_failure(host),
            f.text.trim_end()
        ),
        None => format!("{verb}{took}: {f}"),
    }
}

/// A failure at a server: the TLS in use then, if the session got that far.
fn tls_of_failure(host: &RemoteHost) -> String {
    match &host.tls {
        Some(t) => format!(" {}", tls_text(Some(t))),
        None => String::new(),
    }
}
