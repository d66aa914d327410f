//! Giving up and telling the sender: expiry after the maximum lifetime (RFC 5321
//! §4.5.4.1), delay warnings, and the DSN of RFC 3461/3464 for each pass that calls for one.
//! A bounce is never bounced.

use kurier_smtp::{EnhancedCode, ReversePath};
use kurier_spool::{
    Delivered, Envelope, Failure, MessageData, QueueId, RecipientState, RecipientStatus,
    ReportKind, ReportSent, SpoolError,
};

use super::Engine;
use super::dsn::{self, DsnAction, DsnRecipient};
use crate::history::Left;
use crate::maillog;
use crate::time::rfc5322;

/// The largest message a report carries whole; of a larger one, only the header section.
const RETURNED_WHOLE: u64 = 1024 * 1024;

/// How much of a message is read for its header section.
const HEADER_READ: usize = 256 * 1024;

impl Engine {
    /// Recipients still pending after the maximum lifetime fail (RFC 5321 §4.5.4.1).
    pub(super) fn expire(&self, env: &mut Envelope, now: u64) {
        let lifetime = self.config.delivery.max_lifetime.as_secs();
        if now < env.received_at.saturating_add(lifetime) {
            return;
        }
        let lifetime = crate::config::duration::display(self.config.delivery.max_lifetime);
        for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
            // The last temporary failure says why; it keeps its server and status (RFC 3463
            // §3.5: the expiry itself is 4.4.7 when nothing better is known).
            let failure = match r.last_failure.take() {
                Some(last) => Failure {
                    text: format!(
                        "message expired after {lifetime} in the queue; last error: {}",
                        last.text
                    ),
                    ..last
                },
                None => Failure::local(
                    EnhancedCode(4, 4, 7),
                    format!("message expired after {lifetime} in the queue; no attempt succeeded"),
                ),
            };
            r.failed(now, failure);
        }
    }

    /// Reports (DSNs), then records the state: removes a finished message, or writes its
    /// progress and books its next attempt (blocking I/O).
    pub(super) fn finish(&self, env: Envelope, body: &MessageData) {
        self.finish_after(env, body, None);
    }

    /// [`Engine::finish`] knowing the state the pass started from: when the pass only put
    /// recipients back (their destination was busy), the queue file is not rewritten (its
    /// older times only make a restart try them sooner).
    pub(super) fn finish_after(
        &self,
        mut env: Envelope,
        body: &MessageData,
        before: Option<&Envelope>,
    ) {
        self.report(&mut env, body);
        let id = env.id.clone();
        if env.is_done() {
            // The record first: a crash between the two repeats it, never loses it.
            self.history.record(&env, Left::Done, self.clock.now());
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
        if !before.is_some_and(|b| only_rescheduled(b, &env))
            && let Err(e) = self.spool.update(&env)
        {
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
    pub(super) fn report(&self, env: &mut Envelope, body: &MessageData) {
        let now = self.clock.now();
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
            let (action, status, remote, diagnostic, last_attempt) = match &r.status {
                RecipientStatus::Failed { at, failure } if !r.notified => {
                    r.notified = true;
                    if !r.wants(|n| n.failure, true) {
                        continue;
                    }
                    (
                        DsnAction::Failed,
                        failure.status,
                        failure.remote.as_ref().map(|h| h.name.clone()),
                        Some((failure.kind, failure.text.clone())),
                        Some(*at),
                    )
                }
                RecipientStatus::Delivered { at, delivered } if !r.notified => {
                    r.notified = true;
                    let (action, remote) = match delivered {
                        Delivered::Local { .. } => (DsnAction::Delivered, None),
                        // A DSN-capable next hop reports success itself (RFC 3461 §5.2.2).
                        Delivered::Remote { relayed: false, .. } => continue,
                        Delivered::Remote { host, .. } => {
                            (DsnAction::Relayed, Some(host.name.clone()))
                        }
                    };
                    if !r.wants(|n| n.success, false) {
                        continue;
                    }
                    (action, EnhancedCode(2, 0, 0), remote, None, Some(*at))
                }
                RecipientStatus::Pending if warn_delay && r.wants(|n| n.delay, true) => {
                    let last = r.last_failure.as_ref();
                    (
                        DsnAction::Delayed,
                        last.map_or(EnhancedCode(4, 0, 0), |f| f.status),
                        last.and_then(|f| f.remote.as_ref()).map(|h| h.name.clone()),
                        last.map(|f| (f.kind, f.text.clone())),
                        None,
                    )
                }
                _ => continue,
            };
            blocks.push(DsnRecipient {
                final_recipient: r.address.clone(),
                original_recipient: r.orcpt.clone(),
                action,
                status,
                remote_mta: remote,
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
        let ReversePath::Mailbox(to) = &env.sender else {
            maillog::dsn_not_for_null_sender(&env.id);
            return;
        };
        let id = QueueId::generate();
        let message_id = format!("{id}@{}", self.config.hostname);
        let date = rfc5322(now);
        // RFC 3461 §4.3: the whole message when asked for (RET=FULL, or nothing said) and
        // not too large to send back; otherwise its header section.
        let whole = env.ret != Some(kurier_smtp::Ret::Hdrs) && body.len() <= RETURNED_WHOLE;
        let original = if whole {
            body.to_vec()
        } else {
            body.read_at(0, HEADER_READ)
        };
        let original = original.unwrap_or_else(|e| {
            tracing::error!(queue_id = %env.id, error = %e, "cannot read the message for its report");
            Vec::new()
        });
        let report = dsn::build(&dsn::DsnInput {
            reporting_mta: &self.config.hostname,
            to,
            envid: env.envid.as_deref(),
            arrival_date: &rfc5322(env.received_at),
            date: &date,
            message_id: &message_id,
            recipients: &blocks,
            original: &original,
            headers_only: !whole,
            utf8: env.smtputf8,
        });
        let signature = self.signers.sign(&self.config.hostname, &report);
        let report = [signature.as_bytes(), &report].concat();
        let local = self.directory.is_local_domain(to.domain());
        let mut dsn_env = Envelope::new(
            id.clone(),
            now,
            ReversePath::Null,
            vec![RecipientState::new(to.clone(), local)],
            report.len() as u64,
        );
        dsn_env.eight_bit = !report.is_ascii();
        dsn_env.smtputf8 = env.smtputf8;
        dsn_env.report_of = Some(env.id.clone());
        match self.spool.commit(&dsn_env, &report) {
            Ok(()) => {
                let kinds: Vec<ReportKind> = blocks
                    .iter()
                    .map(|b| match b.action {
                        DsnAction::Failed => ReportKind::Failed,
                        DsnAction::Delayed => ReportKind::Delayed,
                        DsnAction::Delivered => ReportKind::Delivered,
                        DsnAction::Relayed => ReportKind::Relayed,
                    })
                    .collect();
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                maillog::dsn_queued(&env.id, &id, to, &names.join(","));
                env.reports.push(ReportSent {
                    at: now,
                    id: id.clone(),
                    to: to.clone(),
                    kinds,
                });
                self.schedule(id, now);
            }
            Err(e) => maillog::dsn_not_queued(&env.id, &e),
        }
    }
}

/// True when `after` differs from `before` in next-attempt times only.
fn only_rescheduled(before: &Envelope, after: &Envelope) -> bool {
    if before.recipients.len() != after.recipients.len() {
        return false;
    }
    let mut same = after.clone();
    for (r, b) in same.recipients.iter_mut().zip(&before.recipients) {
        r.next_attempt = b.next_attempt;
    }
    same == *before
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pass_that_only_put_recipients_back_is_not_written() {
        let before = Envelope::new(
            QueueId::generate(),
            100,
            ReversePath::Null,
            vec![RecipientState::new(
                kurier_smtp::Mailbox::parse("a@b.test").unwrap(),
                false,
            )],
            10,
        );
        let mut busy = before.clone();
        busy.recipients[0].next_attempt = 105;
        assert!(only_rescheduled(&before, &busy));
        let mut tried = busy.clone();
        tried.recipients[0].attempts += 1;
        assert!(!only_rescheduled(&before, &tried));
        let mut warned = busy;
        warned.delay_warned = true;
        assert!(!only_rescheduled(&before, &warned));
    }
}
