//! Local delivery: each local recipient, through its aliases, into its Maildir (or its Junk
//! folder when the message failed DMARC and the domain quarantines), with Return-Path and
//! Delivered-To (RFC 5321 §4.4). Several addresses that lead to one mailbox get one copy.

use std::collections::HashSet;

use kurier_smtp::EnhancedCode;
use kurier_spool::{Delivered, Envelope, Failure, MessageData};

use super::scheduler::next_attempt;
use super::{Engine, maildir};
use crate::directory::Resolution;
use crate::maillog;

impl Engine {
    /// Local recipients into their Maildir (blocking I/O). Also used before the 250 for
    /// all-local messages, which then never touch the spool.
    pub fn deliver_local(&self, env: &mut Envelope, body: &MessageData, now: u64) {
        let sender = env.sender.to_string();
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
            let started = std::time::Instant::now();
            let mailbox = r.address.clone();
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
                            continue;
                        }
                        // RFC 5321 §4.4: the final delivery adds Return-Path.
                        let headers = format!("Return-Path: {sender}\nDelivered-To: {t}\n");
                        // A DMARC failure that was not refused: the recipient's Junk folder
                        // (Maildir++ ".Junk"), if its domain's policy quarantines.
                        match self.write_copy(t, env.junk && quarantines, &headers, body) {
                            Ok(p) => {
                                maillog::delivered_local(&id, &r.address, t, &p);
                                paths.push(p.display().to_string());
                            }
                            Err(e) => {
                                error = Some(format!("{t}: {e}"));
                                break;
                            }
                        }
                    }
                    match error {
                        None => r.delivered(now, Delivered::Local { files: paths }),
                        Some(e) => {
                            maillog::local_delivery_deferred(&id, &r.address, &e, r.attempts);
                            let next = next_attempt(now, r.attempts, schedule);
                            r.deferred(
                                now,
                                Failure::local(
                                    EnhancedCode(4, 3, 0),
                                    format!("local delivery failed: {e}"),
                                ),
                                next,
                            );
                        }
                    }
                }
                Resolution::Unknown => {
                    maillog::local_mailbox_gone(&id, &r.address);
                    let text = format!("<{}>: mailbox no longer exists", r.address);
                    r.failed(now, Failure::local(EnhancedCode(5, 1, 1), text));
                }
                Resolution::Remote => {
                    // The domain stopped being local after the message was accepted.
                    r.local = false;
                    r.attempts -= 1;
                    continue;
                }
            }
            r.took(started.elapsed());
        }
    }

    /// One copy into the Maildir of `target` (its Junk folder when `junk`). The Maildir's
    /// path comes from the one check of addresses that become paths; a name that fails it
    /// (it cannot pass config validation or the users file's load) is a local error.
    fn write_copy(
        &self,
        target: &kurier_smtp::Mailbox,
        junk: bool,
        headers: &str,
        body: &MessageData,
    ) -> Result<std::path::PathBuf, String> {
        let maildir = self.directory.maildir(target).map_err(|e| e.to_string())?;
        let folder = if junk {
            maildir::junk_folder(&maildir)
        } else {
            maildir
        };
        self.local
            .write(&folder, headers, body)
            .map_err(|e| e.to_string())
    }
}
