//! Giving up and telling the sender: expiry after the maximum lifetime (RFC 5321
//! §4.5.4.1), delay warnings, and the DSN of RFC 3461/3464 for each pass that calls for one.
//! A bounce is never bounced.

use kurier_smtp::Mailbox;
use kurier_spool::{Envelope, QueueId, RecipientState, RecipientStatus, SpoolError};

use super::Engine;
use super::dsn::{self, DsnAction, DsnRecipient};
use crate::time::{rfc5322, unix_now};

impl Engine {
    /// Recipients still pending after the maximum lifetime fail (RFC 5321 §4.5.4.1).
    pub(super) fn expire(&self, env: &mut Envelope, now: u64) {
        let lifetime = self.config.delivery.max_lifetime.as_secs();
        if now < env.received_at.saturating_add(lifetime) {
            return;
        }
        for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
            let last = r
                .last_error
                .clone()
                .unwrap_or_else(|| "no attempt succeeded".into());
            let reason = format!(
                "x-kurier; message expired after {} in the queue; last error: {last}",
                humantime::format_duration(self.config.delivery.max_lifetime)
            );
            let status = r.last_status.clone().unwrap_or_else(|| "4.4.7".into());
            r.status = failed(now, &status, reason, r.last_mta.clone());
        }
    }

    /// Reports (DSNs), then records the state: removes a finished message, or writes its
    /// progress and books its next attempt (blocking I/O).
    pub(super) fn finish(&self, mut env: Envelope, body: &[u8]) {
        self.report(&mut env, body);
        let id = env.id.clone();
        if env.is_done() {
            match self.spool.remove(&id) {
                Ok(()) | Err(SpoolError::NotFound(_)) => {
                    tracing::debug!(queue_id = %id, "removed from queue")
                }
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot remove delivered message")
                }
            }
            return;
        }
        if let Err(e) = self.spool.update(&env) {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
        }
        if let Some(t) = env
            .recipients
            .iter()
            .filter(|r| r.is_pending())
            .map(|r| r.next_attempt)
            .min()
        {
            self.schedule(id, t);
        }
    }

    /// Sends the DSN this pass calls for, if any (RFC 3461 §5: failures, delays, and successes
    /// when asked). Never for the null sender: a bounce is never bounced.
    pub(super) fn report(&self, env: &mut Envelope, body: &[u8]) {
        let now = unix_now();
        let mut blocks = Vec::new();
        let warn_delay = !env.delay_warned
            && now
                >= env
                    .received_at
                    .saturating_add(self.config.delivery.delay_warning.as_secs())
            && env.recipients.iter().any(RecipientState::is_pending);
        let retry_until = rfc5322(
            env.received_at
                .saturating_add(self.config.delivery.max_lifetime.as_secs()),
        );
        for r in env.recipients.iter_mut() {
            let notify = r.notify;
            let wants = |f: fn(&kurier_spool::NotifyFlags) -> bool, default: bool| match &notify {
                Some(n) if n.never => false,
                Some(n) => f(n),
                None => default,
            };
            let (action, status, remote_mta, diagnostic, last_attempt) = match &r.status {
                RecipientStatus::Failed {
                    at,
                    reason,
                    status,
                    remote_mta,
                } if !r.notified => {
                    r.notified = true;
                    if !wants(|n| n.failure, true) {
                        continue;
                    }
                    (
                        DsnAction::Failed,
                        status.clone(),
                        remote_mta.clone(),
                        Some(reason.clone()),
                        Some(*at),
                    )
                }
                RecipientStatus::Delivered {
                    at,
                    detail,
                    relayed,
                } if !r.notified => {
                    r.notified = true;
                    // A DSN-capable next hop reports success itself (RFC 3461 §5.2.2).
                    if !wants(|n| n.success, false) || (!r.local && !relayed) {
                        continue;
                    }
                    let action = if *relayed {
                        DsnAction::Relayed
                    } else {
                        DsnAction::Delivered
                    };
                    let mta = if r.local {
                        None
                    } else {
                        detail.split(": ").next().map(str::to_string)
                    };
                    (action, "2.0.0".to_string(), mta, None, Some(*at))
                }
                RecipientStatus::Pending if warn_delay && wants(|n| n.delay, true) => (
                    DsnAction::Delayed,
                    r.last_status.clone().unwrap_or_else(|| "4.0.0".into()),
                    r.last_mta.clone(),
                    r.last_error.clone(),
                    None,
                ),
                _ => continue,
            };
            let diagnostic = diagnostic.map(|d| match d.split_once("; ") {
                Some((k, t)) => (k.to_string(), t.to_string()),
                None => ("x-kurier".to_string(), d),
            });
            blocks.push(DsnRecipient {
                final_recipient: r.address.clone(),
                original_recipient: r.orcpt.clone(),
                action,
                status,
                remote_mta: remote_mta.map(|m| m.split(' ').next().unwrap_or_default().to_string()),
                diagnostic,
                last_attempt: last_attempt.map(rfc5322),
                will_retry_until: (action == DsnAction::Delayed).then(|| retry_until.clone()),
            });
        }
        if warn_delay {
            env.delay_warned = true;
        }
        if blocks.is_empty() {
            return;
        }
        if env.sender.is_empty() {
            tracing::warn!(queue_id = %env.id, "not reporting on a message from the null sender (a bounce is never bounced)");
            return;
        }
        let Ok(to) = Mailbox::parse(&env.sender) else {
            tracing::warn!(queue_id = %env.id, sender = %env.sender, "cannot report to an unparsable sender");
            return;
        };
        let id = QueueId::generate();
        let message_id = format!("{id}@{}", self.config.hostname);
        let date = rfc5322(now);
        let report = dsn::build(&dsn::DsnInput {
            reporting_mta: &self.config.hostname,
            to: &env.sender,
            envid: env.envid.as_deref(),
            arrival_date: &rfc5322(env.received_at),
            date: &date,
            message_id: &message_id,
            recipients: &blocks,
            original: body,
            headers_only: env.ret.as_deref() == Some("HDRS"),
            utf8: env.smtputf8,
        });
        let signature = self.signers.sign(&self.config.hostname, &report);
        let report = [signature.as_bytes(), &report].concat();
        let local = self.directory.is_local_domain(to.domain());
        let dsn_env = Envelope {
            id: id.clone(),
            received_at: now,
            sender: String::new(),
            recipients: vec![RecipientState::new(env.sender.clone(), local)],
            size: report.len() as u64,
            eight_bit: !report.is_ascii(),
            smtputf8: env.smtputf8,
            ret: None,
            envid: None,
            client_ip: String::new(),
            helo: String::new(),
            auth_user: None,
            hold: false,
            delay_warned: false,
            junk: false,
        };
        match self.spool.commit(&dsn_env, &report) {
            Ok(()) => {
                let kinds: Vec<&str> = blocks
                    .iter()
                    .map(|b| match b.action {
                        DsnAction::Failed => "failed",
                        DsnAction::Delayed => "delayed",
                        DsnAction::Delivered => "delivered",
                        DsnAction::Relayed => "relayed",
                    })
                    .collect();
                tracing::info!(queue_id = %env.id, dsn_id = %id, to = %env.sender, actions = %kinds.join(","), "delivery status notification queued");
                self.schedule(id, now);
            }
            Err(e) => {
                tracing::error!(queue_id = %env.id, error = %e, "cannot queue the delivery status notification")
            }
        }
    }
}

/// A permanent failure, now.
pub(super) fn failed(
    at: u64,
    status: &str,
    reason: String,
    remote_mta: Option<String>,
) -> RecipientStatus {
    RecipientStatus::Failed {
        at,
        reason,
        status: status.to_string(),
        remote_mta,
    }
}
