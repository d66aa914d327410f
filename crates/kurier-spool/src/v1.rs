//! Queue format 1, read and upgraded in this one place: its envelope kept protocol values as
//! strings (`addr-type;address`, `type; text`, `host [ip]`), which are split here once and
//! never again. Files written by format 1 are read; only format 2 is written.

use std::net::IpAddr;

use kurier_smtp::{EnhancedCode, Mailbox, Notify, OriginalRecipient, Ret, ReversePath};
use serde::Deserialize;

use crate::envelope::{
    Attempt, AttemptResult, Delivered, DiagnosticType, Envelope, Failure, QueueId, RecipientState,
    RecipientStatus, RemoteHost,
};

#[derive(Deserialize)]
struct NotifyV1 {
    never: bool,
    success: bool,
    failure: bool,
    delay: bool,
}

#[derive(Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum StatusV1 {
    Pending,
    Delivered {
        at: u64,
        detail: String,
        #[serde(default)]
        relayed: bool,
    },
    Failed {
        at: u64,
        reason: String,
        #[serde(default)]
        status: String,
        #[serde(default)]
        remote_mta: Option<String>,
    },
}

#[derive(Deserialize)]
struct RecipientV1 {
    address: String,
    #[serde(default)]
    orcpt: Option<String>,
    #[serde(default)]
    notify: Option<NotifyV1>,
    local: bool,
    status: StatusV1,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    next_attempt: u64,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    last_status: Option<String>,
    #[serde(default)]
    last_mta: Option<String>,
    #[serde(default)]
    notified: bool,
    #[serde(default)]
    history: Vec<String>,
}

/// The format 1 envelope.
#[derive(Deserialize)]
pub(crate) struct EnvelopeV1 {
    id: QueueId,
    received_at: u64,
    sender: String,
    recipients: Vec<RecipientV1>,
    size: u64,
    #[serde(default)]
    eight_bit: bool,
    #[serde(default)]
    smtputf8: bool,
    #[serde(default)]
    ret: Option<String>,
    #[serde(default)]
    envid: Option<String>,
    #[serde(default)]
    client_ip: String,
    #[serde(default)]
    helo: String,
    #[serde(default)]
    auth_user: Option<String>,
    #[serde(default)]
    hold: bool,
    #[serde(default)]
    delay_warned: bool,
    #[serde(default)]
    junk: bool,
}

fn mailbox(s: &str) -> Result<Mailbox, String> {
    Mailbox::parse(s).map_err(|e| format!("format 1 address {s:?}: {e}"))
}

/// `host [ip]` or `host`.
fn remote_host(s: &str) -> RemoteHost {
    match s.split_once(" [") {
        Some((name, ip)) => RemoteHost::new(name, ip.trim_end_matches(']').parse::<IpAddr>().ok()),
        None => RemoteHost::new(s, None),
    }
}

/// A format 1 failure: `type; text`, a status that may be empty, and the server.
fn failure(
    reason: &str,
    status: Option<&str>,
    mta: Option<&str>,
    fallback: EnhancedCode,
) -> Failure {
    let (kind, text) = match reason.split_once("; ") {
        Some(("smtp", text)) => (DiagnosticType::Smtp, text),
        Some((_, text)) => (DiagnosticType::Local, text),
        None => (DiagnosticType::Local, reason),
    };
    Failure {
        status: status.and_then(EnhancedCode::parse).unwrap_or(fallback),
        kind,
        text: text.to_string(),
        remote: mta.map(remote_host),
    }
}

impl RecipientV1 {
    fn upgrade(self) -> Result<RecipientState, String> {
        let status = match self.status {
            StatusV1::Pending => RecipientStatus::Pending,
            StatusV1::Delivered {
                at,
                detail,
                relayed,
            } => {
                let delivered = if self.local {
                    Delivered::Local {
                        files: vec![detail],
                    }
                } else {
                    let (host, reply) = detail.split_once(": ").unwrap_or((&detail, ""));
                    Delivered::Remote {
                        host: remote_host(host),
                        reply: reply.to_string(),
                        relayed,
                    }
                };
                RecipientStatus::Delivered { at, delivered }
            }
            StatusV1::Failed {
                at,
                reason,
                status,
                remote_mta,
            } => RecipientStatus::Failed {
                at,
                failure: failure(
                    &reason,
                    Some(&status),
                    remote_mta.as_deref(),
                    EnhancedCode(5, 0, 0),
                ),
            },
        };
        Ok(RecipientState {
            address: mailbox(&self.address)?,
            orcpt: self.orcpt.map(|o| match o.split_once(';') {
                Some((t, a)) => OriginalRecipient {
                    addr_type: t.to_string(),
                    address: a.to_string(),
                },
                None => OriginalRecipient {
                    addr_type: "rfc822".to_string(),
                    address: o,
                },
            }),
            notify: self.notify.map(|n| Notify {
                never: n.never,
                success: n.success,
                failure: n.failure,
                delay: n.delay,
            }),
            local: self.local,
            status,
            attempts: self.attempts,
            next_attempt: self.next_attempt,
            last_failure: self.last_error.map(|e| {
                failure(
                    &e,
                    self.last_status.as_deref(),
                    self.last_mta.as_deref(),
                    EnhancedCode(4, 0, 0),
                )
            }),
            notified: self.notified,
            history: self
                .history
                .into_iter()
                .map(|text| Attempt {
                    at: 0,
                    result: AttemptResult::Recorded { text },
                    took_ms: None,
                })
                .collect(),
        })
    }
}

impl EnvelopeV1 {
    /// The same envelope in format 2.
    pub(crate) fn upgrade(self) -> Result<Envelope, String> {
        let sender = if self.sender.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::Mailbox(mailbox(&self.sender)?)
        };
        Ok(Envelope {
            id: self.id,
            received_at: self.received_at,
            sender,
            recipients: self
                .recipients
                .into_iter()
                .map(RecipientV1::upgrade)
                .collect::<Result<_, _>>()?,
            size: self.size,
            eight_bit: self.eight_bit,
            smtputf8: self.smtputf8,
            ret: match self.ret.as_deref() {
                Some("HDRS") => Some(Ret::Hdrs),
                Some("FULL") => Some(Ret::Full),
                _ => None,
            },
            envid: self.envid,
            client_ip: self.client_ip.parse().ok(),
            helo: self.helo,
            auth_user: self.auth_user,
            hold: self.hold,
            delay_warned: self.delay_warned,
            junk: self.junk,
            listener: None,
            tls: None,
            message_id: None,
            report_of: None,
            reports: Vec::new(),
        })
    }
}
