//! Remote delivery: pending remote recipients grouped by domain, one SMTP transaction per
//! domain through [`super::smtp`], each recipient's outcome recorded.

use std::collections::BTreeMap;

use kurier_smtp::client::{OutboundRecipient, OutboundTransaction};
use kurier_smtp::{Notify, OriginalRecipient, Ret};
use kurier_spool::{Envelope, RecipientState, RecipientStatus};

use super::Engine;
use super::bounce::failed;
use super::scheduler::next_attempt;
use super::smtp::RemoteOutcome;
use crate::time::{rfc5322, unix_now};

/// A recipient's RFC 3461 NOTIFY from its stored flags.
fn notify_of(r: &RecipientState) -> Option<Notify> {
    r.notify.map(|n| Notify {
        never: n.never,
        success: n.success,
        failure: n.failure,
        delay: n.delay,
    })
}

impl Engine {
    /// Remote recipients over SMTP, one transaction per destination domain.
    pub(super) async fn deliver_remote(&self, env: &mut Envelope, body: &[u8], now: u64) {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.is_pending()
                && !r.local
                && r.next_attempt <= now
                && let Some((_, domain)) = r.address.rsplit_once('@')
            {
                groups
                    .entry(domain.to_ascii_lowercase())
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
                        notify: notify_of(r),
                        orcpt: r.orcpt.as_ref().and_then(|o| {
                            let (t, a) = o.split_once(';')?;
                            Some(OriginalRecipient {
                                addr_type: t.to_string(),
                                address: a.to_string(),
                            })
                        }),
                    }
                })
                .collect();
            let smtputf8 = env.smtputf8
                || !env.sender.is_ascii()
                || recipients.iter().any(|r| !r.address.is_ascii());
            let tx = OutboundTransaction {
                from: env.sender.clone(),
                recipients,
                size: body.len() as u64,
                eight_bit: env.eight_bit || !body.is_ascii(),
                smtputf8,
                ret: match env.ret.as_deref() {
                    Some("HDRS") => Some(Ret::Hdrs),
                    Some("FULL") => Some(Ret::Full),
                    _ => None,
                },
                envid: env.envid.clone(),
            };
            let results = self.outbound.deliver(&domain, &tx, body).await;
            let done = unix_now();
            for (&i, outcome) in indexes.iter().zip(results) {
                let r = &mut env.recipients[i];
                r.attempts += 1;
                r.record_attempt(format!("{}: {}", rfc5322(done), describe(&outcome)));
                match outcome {
                    RemoteOutcome::Delivered { mta, reply, dsn } => {
                        tracing::info!(queue_id = %env.id, rcpt = %r.address, mta = %mta, reply = %reply, "delivered");
                        r.status = RecipientStatus::Delivered {
                            at: done,
                            detail: format!("{mta}: {reply}"),
                            relayed: !dsn,
                        };
                    }
                    RemoteOutcome::Failed {
                        permanent: true,
                        status,
                        diagnostic,
                        mta,
                    } => {
                        let reason = format!("{}; {}", diagnostic.0, diagnostic.1);
                        tracing::info!(queue_id = %env.id, rcpt = %r.address, mta = mta.as_deref().unwrap_or("-"), reason = %reason, "delivery failed");
                        r.status = failed(done, &status, reason, mta);
                    }
                    RemoteOutcome::Failed {
                        permanent: false,
                        status,
                        diagnostic,
                        mta,
                    } => {
                        r.next_attempt = next_attempt(done, r.attempts, &schedule);
                        let reason = format!("{}; {}", diagnostic.0, diagnostic.1);
                        tracing::info!(queue_id = %env.id, rcpt = %r.address, mta = mta.as_deref().unwrap_or("-"), reason = %reason, retry_in_s = r.next_attempt.saturating_sub(done), "delivery deferred");
                        r.last_error = Some(reason);
                        r.last_status = Some(status);
                        r.last_mta = mta;
                    }
                }
            }
        }
    }
}

/// One line for the attempt history.
fn describe(outcome: &RemoteOutcome) -> String {
    match outcome {
        RemoteOutcome::Delivered { mta, reply, .. } => format!("delivered to {mta}: {reply}"),
        RemoteOutcome::Failed {
            permanent,
            diagnostic,
            mta,
            ..
        } => format!(
            "{} {}{}",
            if *permanent { "failed" } else { "deferred" },
            mta.as_ref()
                .map(|m| format!("by {m}: "))
                .unwrap_or_default(),
            diagnostic.1
        ),
    }
}
