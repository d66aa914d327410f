//! Local delivery: each local recipient, through its aliases, into its Maildir (or its Junk
//! folder when the message failed DMARC and the domain quarantines), with Return-Path and
//! Delivered-To (RFC 5321 §4.4). Several addresses that lead to one mailbox get one copy.

use std::collections::HashSet;

use kurier_smtp::Mailbox;
use kurier_spool::{Envelope, RecipientStatus};

use super::bounce::failed;
use super::scheduler::next_attempt;
use super::{Engine, maildir};
use crate::directory::Resolution;
use crate::time::rfc5322;

impl Engine {
    /// Local recipients into their Maildir (blocking I/O). Also used before the 250 for
    /// all-local messages, which then never touch the spool.
    pub fn deliver_local(&self, env: &mut Envelope, body: &[u8], now: u64) {
        let sender = if env.sender.is_empty() {
            "<>".to_string()
        } else {
            format!("<{}>", env.sender)
        };
        let id = env.id.clone();
        // Several recipient addresses can lead to one mailbox (aliases): one copy each.
        let mut delivered_to: HashSet<String> = HashSet::new();
        let schedule = &self.config.delivery.retry;
        for r in env
            .recipients
            .iter_mut()
            .filter(|r| r.is_pending() && r.local && r.next_attempt <= now)
        {
            r.attempts += 1;
            let mailbox = match Mailbox::parse(&r.address) {
                Ok(m) => m,
                Err(e) => {
                    r.status = failed(now, "5.1.3", format!("x-kurier; bad address: {e}"), None);
                    continue;
                }
            };
            let quarantines = self
                .config
                .authentication
                .policy(mailbox.domain().as_str())
                .dmarc_quarantine;
            match self.directory.resolve(&mailbox) {
                Resolution::Local(targets) => {
                    let mut paths = Vec::new();
                    let mut error = None;
                    for t in &targets {
                        if !delivered_to.insert(crate::directory::address_key(t)) {
                            paths.push(format!("(same message already delivered to {t})"));
                            continue;
                        }
                        // RFC 5321 §4.4: the final delivery adds Return-Path.
                        let headers = format!("Return-Path: {sender}\nDelivered-To: {t}\n");
                        // A DMARC failure that was not refused: the recipient's Junk folder
                        // (Maildir++ ".Junk"), if its domain's policy quarantines.
                        let folder = if env.junk && quarantines {
                            maildir::junk_folder(&self.directory.maildir(t))
                        } else {
                            self.directory.maildir(t)
                        };
                        match maildir::deliver(&folder, &self.config.hostname, &headers, body) {
                            Ok(p) => {
                                tracing::info!(queue_id = %id, rcpt = %r.address, mailbox = %t, path = %p.display(), "delivered");
                                paths.push(p.display().to_string());
                            }
                            Err(e) => {
                                error = Some(format!("{t}: {e}"));
                                break;
                            }
                        }
                    }
                    match error {
                        None => {
                            r.record_attempt(format!(
                                "{}: delivered to {}",
                                rfc5322(now),
                                paths.join(" ")
                            ));
                            r.status = RecipientStatus::Delivered {
                                at: now,
                                detail: paths.join(" "),
                                relayed: false,
                            }
                        }
                        Some(e) => {
                            r.next_attempt = next_attempt(now, r.attempts, schedule);
                            tracing::warn!(queue_id = %id, rcpt = %r.address, error = %e, attempts = r.attempts, "local delivery deferred");
                            r.record_attempt(format!(
                                "{}: local delivery failed: {e}",
                                rfc5322(now)
                            ));
                            r.last_error = Some(format!("x-kurier; local delivery failed: {e}"));
                            r.last_status = Some("4.3.0".into());
                        }
                    }
                }
                Resolution::Unknown => {
                    let reason = format!("x-kurier; <{}>: mailbox no longer exists", r.address);
                    tracing::warn!(queue_id = %id, rcpt = %r.address, "local mailbox no longer exists");
                    r.status = failed(now, "5.1.1", reason, None);
                }
                Resolution::Remote => {
                    // The domain stopped being local after the message was accepted.
                    r.local = false;
                    r.attempts -= 1;
                }
            }
        }
    }
}
