//! Remote delivery: pending remote recipients grouped by domain, one SMTP transaction per
//! domain through [`super::smtp`], each recipient's outcome recorded.

use std::collections::BTreeMap;

use kurier_smtp::Mailbox;
use kurier_smtp::client::{OutboundRecipient, OutboundTransaction};
use kurier_spool::{Delivered, Envelope, Failure, MessageData};

use super::Engine;
use super::outcome::RemoteOutcome;
use super::scheduler::next_attempt;
use super::suppress::{self, Suppressed};
use crate::maillog;
use crate::time::rfc5322;

/// How long recipients wait when their destination had no free connection (seconds).
const BUSY_RETRY: u64 = 5;

impl Engine {
    /// Remote recipients over SMTP, one transaction per destination domain.
    pub(super) async fn deliver_remote(&self, env: &mut Envelope, body: &MessageData, now: u64) {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let sender = self.suppressing_for(env);
        for (i, r) in env.recipients.iter_mut().enumerate() {
            if r.is_pending() && !r.local && r.next_attempt <= now {
                if let Some((sender, since)) = &sender
                    && let Some(s) = self.suppressions.find(sender, &r.address, *since)
                {
                    let failure = Failure::local(
                        s.status,
                        format!(
                            "<{}>: not sent: it was refused on {} ({}); kurier queue suppress remove allows it again",
                            r.address,
                            rfc5322(s.at),
                            s.reason
                        ),
                    );
                    r.attempts += 1;
                    maillog::delivery_failed(&env.id, &r.address, &failure);
                    r.failed(now, failure);
                    continue;
                }
                // Domains are kept in lower case (RFC 5321 §2.4).
                groups
                    .entry(r.address.domain().as_str().to_string())
                    .or_default()
                    .push(i);
            }
        }
        let schedule = self.config.delivery.retry.clone();
        // Clients may send 8-bit data without saying so (BODY=8BITMIME): look. A body that
        // cannot be read counts as 8-bit; sending it fails the same way.
        let eight_bit = env.eight_bit || !groups.is_empty() && !is_ascii(body);
        for (domain, indexes) in groups {
            let recipients: Vec<OutboundRecipient> = indexes
                .iter()
                .map(|&i| {
                    let r = &env.recipients[i];
                    OutboundRecipient {
                        address: r.address.clone(),
                        notify: r.notify,
                        orcpt: r.orcpt.clone(),
                    }
                })
                .collect();
            let smtputf8 = env.smtputf8
                || env.sender.mailbox().is_some_and(|m| !m.is_ascii())
                || recipients.iter().any(|r| !r.address.is_ascii());
            let tx = OutboundTransaction {
                from: env.sender.clone(),
                recipients,
                size: body.len(),
                eight_bit,
                smtputf8,
                ret: env.ret,
                envid: env.envid.clone(),
            };
            let started = std::time::Instant::now();
            let attempted = self.outbound.deliver(&env.id, &domain, &tx, body).await;
            let took = started.elapsed();
            let done = self.clock.now();
            for (&i, outcome) in indexes.iter().zip(attempted.outcomes) {
                let r = &mut env.recipients[i];
                for note in &attempted.notes {
                    r.note(done, note.clone());
                }
                if outcome == RemoteOutcome::Busy {
                    r.next_attempt = done + BUSY_RETRY;
                    continue;
                }
                r.attempts += 1;
                match outcome {
                    RemoteOutcome::Busy => {}
                    RemoteOutcome::Delivered { host, reply, dsn } => {
                        maillog::delivered_remote(&env.id, &r.address, &host, &reply);
                        r.delivered(
                            done,
                            Delivered::Remote {
                                host,
                                reply,
                                relayed: !dsn,
                            },
                        );
                    }
                    RemoteOutcome::Failed {
                        permanent: true,
                        failure,
                    } => {
                        maillog::delivery_failed(&env.id, &r.address, &failure);
                        if let Some((from, _)) = &sender
                            && suppress::is_hard_address_failure(&failure)
                        {
                            self.suppress(from, &r.address, &failure, done);
                        }
                        r.failed(done, failure);
                    }
                    RemoteOutcome::Failed {
                        permanent: false,
                        failure,
                    } => {
                        let next = next_attempt(done, r.attempts, &schedule);
                        let retry_in_s = next.saturating_sub(done);
                        maillog::delivery_deferred(&env.id, &r.address, &failure, retry_in_s);
                        r.deferred(done, failure, next);
                    }
                }
                r.took(took);
            }
        }
    }
}

impl Engine {
    /// The local sender whose hard failures are remembered, and since when they count;
    /// `None` when the list is off or the sender is not one of ours.
    fn suppressing_for(&self, env: &Envelope) -> Option<(Mailbox, u64)> {
        let period = self.config.delivery.suppress_for.as_secs();
        let sender = env.sender.mailbox()?;
        (period > 0 && self.directory.is_local_domain(sender.domain()))
            .then(|| (sender.clone(), self.clock.now().saturating_sub(period)))
    }

    /// Remembers a hard failure (a failure to write is logged; delivery goes on).
    fn suppress(&self, sender: &Mailbox, rcpt: &Mailbox, failure: &Failure, at: u64) {
        let entry = Suppressed {
            sender: sender.to_string(),
            recipient: rcpt.to_string(),
            at,
            status: failure.status,
            reason: match &failure.remote {
                Some(host) => format!("{host} said: {}", failure.text.trim_end()),
                None => failure.text.trim_end().to_string(),
            },
        };
        let expired = at.saturating_sub(self.config.delivery.suppress_for.as_secs());
        if let Err(e) = self.suppressions.add(entry, expired) {
            tracing::warn!(error = %e, "cannot write the suppression list");
        }
    }
}

/// True when every octet of the message is ASCII.
fn is_ascii(body: &MessageData) -> bool {
    let mut ascii = true;
    let read = body.for_each_chunk(0, |c| ascii &= c.is_ascii());
    read.is_ok() && ascii
}
