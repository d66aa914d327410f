//! Remote delivery: pending remote recipients grouped by domain, one SMTP transaction per
//! domain through [`super::smtp`], each recipient's outcome recorded.

use std::collections::BTreeMap;

use kurier_smtp::client::{OutboundRecipient, OutboundTransaction};
use kurier_spool::{Delivered, Envelope, MessageData};

use super::Engine;
use super::outcome::RemoteOutcome;
use super::scheduler::next_attempt;
use crate::maillog;

/// How long recipients wait when their destination had no free connection (seconds).
const BUSY_RETRY: u64 = 5;

impl Engine {
    /// Remote recipients over SMTP, one transaction per destination domain.
    pub(super) async fn deliver_remote(&self, env: &mut Envelope, body: &MessageData, now: u64) {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.is_pending() && !r.local && r.next_attempt <= now {
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
            let attempted = self.outbound.deliver(&domain, &tx, body).await;
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

/// True when every octet of the message is ASCII.
fn is_ascii(body: &MessageData) -> bool {
    let mut ascii = true;
    let read = body.for_each_chunk(0, |c| ascii &= c.is_ascii());
    read.is_ok() && ascii
}
