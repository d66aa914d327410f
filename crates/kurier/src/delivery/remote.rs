//! Remote delivery: pending remote recipients grouped by domain, one SMTP transaction per
//! domain through [`super::smtp`], each recipient's outcome recorded.

use std::collections::BTreeMap;

use kurier_smtp::client::{OutboundRecipient, OutboundTransaction};
use kurier_spool::{Delivered, Envelope};

use super::Engine;
use super::scheduler::next_attempt;
use super::smtp::RemoteOutcome;
use crate::maillog;

impl Engine {
    /// Remote recipients over SMTP, one transaction per destination domain.
    pub(super) async fn deliver_remote(&self, env: &mut Envelope, body: &[u8], now: u64) {
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
                size: body.len() as u64,
                eight_bit: env.eight_bit || !body.is_ascii(),
                smtputf8,
                ret: env.ret,
                envid: env.envid.clone(),
            };
            let results = self.outbound.deliver(&domain, &tx, body).await;
            let done = self.clock.now();
            for (&i, outcome) in indexes.iter().zip(results) {
                let r = &mut env.recipients[i];
                r.attempts += 1;
                match outcome {
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
            }
        }
    }
}
