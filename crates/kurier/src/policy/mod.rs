//! Every decision the SMTP session asks the server for, and nothing else: DNSBL at connect,
//! the sender check at MAIL, relay, users and greylisting at RCPT, AUTH (with the per-address
//! throttle), ownership of the From: header, and sender authentication (SPF, DKIM, ARC,
//! DMARC) of the message. The inbound driver only carries the answers back to the session.
//!
//! Relay rule (no open relay): mail for local domains is accepted from anyone; mail for any
//! other domain only from an authenticated session. The domain that decides is the one after
//! the last unquoted `@`, as parsed by the protocol core, so percent hacks, bang paths, quoted
//! `@` and source routes cannot smuggle a remote destination past this check.
//!
//! SPF is evaluated at most once per transaction: at RCPT when greylisting may exempt a
//! passing sender, kept in the [`Transaction`], and reused by sender authentication after
//! DATA. Only a check that did not finish in time (and so told nothing) is made again there.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kurier_smtp::session::{AuthVerdict, Verdict};
use kurier_smtp::{ForwardPath, MailParams, Mailbox, RcptParams, Reply, ReversePath, Role, codes};
use mail_auth::{SpfOutput, SpfResult};

use crate::config::Config;
use crate::directory::{Directory, Resolution};
use crate::dns::MxResolver;
use crate::maillog;
use crate::time::Clock;
use kurier_spool::MessageData;

pub mod body_hash;
pub mod dkim_budget;
pub mod dnsbl;
pub mod greylist;
pub mod header_fields;
pub mod sender_auth;
pub mod spf;
pub mod spf_record;
pub mod throttle;

#[cfg(test)]
mod tests;

use greylist::Greylist;
use throttle::{AuthThrottle, RateLimit};

/// How long the SPF check made at RCPT for the greylisting exemption may take; a slow DNS
/// server then means no exemption (the client is greylisted and retries), not a stall.
pub const GREYLIST_SPF_TIMEOUT: Duration = Duration::from_secs(5);

/// Password checks that may run at once: as many as the pool has memory for.
pub const PASSWORD_CHECKS: usize = crate::directory::password::POOLED;

/// The policy and the state it keeps across connections.
pub struct Policy {
    /// The configuration.
    pub config: Arc<Config>,
    /// Users, aliases, domains.
    pub directory: Arc<Directory>,
    /// DNS for DNSBL, SPF, DKIM, DMARC.
    pub resolver: Arc<MxResolver>,
    /// Greylisting, when enabled.
    pub greylist: Option<Arc<Greylist>>,
    /// AUTH failures per client address.
    pub auth_throttle: AuthThrottle,
    /// Messages per minute per client address.
    pub message_rate: RateLimit,
    /// Where greylisting's "now" comes from (fixed in tests).
    pub clock: Arc<dyn Clock>,
    /// Password checks running at once (see [`PASSWORD_CHECKS`]).
    pub password_checks: tokio::sync::Semaphore,
}

/// Who is asking: facts of the connection that decisions depend on.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The listener's role.
    pub role: Role,
    /// The authenticated user.
    pub auth: Option<&'a str>,
    /// The HELO/EHLO name.
    pub helo: &'a str,
}

/// What the policy learned about the current transaction (from MAIL to the end of DATA),
/// kept by the driver and reset at every accepted MAIL.
#[derive(Debug, Default)]
pub struct Transaction {
    /// The accepted MAIL FROM.
    pub from: Option<ReversePath>,
    /// The SPF result for this client and sender, once evaluated.
    pub spf: Option<SpfOutput>,
}

/// A message that sender authentication lets in.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderChecked {
    /// The Authentication-Results header field to prepend, CRLF-terminated.
    pub header: String,
    /// It failed DMARC without being refused: Junk folder where the recipient's domain
    /// quarantines.
    pub junk: bool,
}

impl Policy {
    /// RFC 5782: a client on the `smtp` role listed on a configured DNSBL is refused before
    /// the greeting (554 naming the zone).
    pub async fn on_connect(&self, ip: IpAddr, role: Role) -> Option<Reply> {
        if role != Role::Smtp || self.config.dnsbl.zones.is_empty() {
            return None;
        }
        let zone = dnsbl::listed(&*self.resolver, ip, &self.config.dnsbl.zones).await?;
        tracing::info!(peer = %ip, zone = %zone, "client listed on DNSBL, refused");
        Some(Reply::new(
            554,
            codes::NOT_AUTHORIZED,
            format!("Service unavailable; client [{ip}] blocked using {zone}"),
        ))
    }

    /// MAIL FROM: the per-address message rate applies (451); an authenticated user may
    /// only use a sender they own (their address, an alias that delivers to them, or a grant
    /// in `[senders]`); otherwise 553 5.7.1. The null sender is allowed. Unauthenticated
    /// senders are not restricted here. An accepted sender starts a new [`Transaction`].
    pub fn check_mail(
        &self,
        from: &ReversePath,
        _params: &MailParams,
        client: &Client<'_>,
        tx: &mut Transaction,
    ) -> Verdict {
        if !self.message_rate.allow(client.ip) {
            return Verdict::Reject(Reply::new(
                451,
                codes::SECURITY_TEMP,
                "Too many messages per minute from your address, try again later",
            ));
        }
        if let (Some(user), ReversePath::Mailbox(m)) = (client.auth, from)
            && !self.directory.may_send_as(user, m)
        {
            return Verdict::Reject(Reply::new(
                553,
                codes::NOT_AUTHORIZED,
                format!("<{m}>: Sender address not owned by user {user}"),
            ));
        }
        *tx = Transaction {
            from: Some(from.clone()),
            spf: None,
        };
        Verdict::Accept
    }

    /// RCPT TO: local users, aliases and postmaster are accepted; unknown local users get
    /// 550 5.1.1 now (not a bounce later, which would be backscatter); remote domains need
    /// AUTH or a client in `relay_networks`. Unauthenticated mail on the `smtp` role may be greylisted (451 4.7.1).
    pub async fn check_rcpt(
        &self,
        to: &ForwardPath,
        _params: &RcptParams,
        client: &Client<'_>,
        tx: &mut Transaction,
    ) -> Verdict {
        let m = match to {
            // RFC 5321 §4.5.1: <Postmaster> without a domain is always accepted.
            ForwardPath::Postmaster => return Verdict::Accept,
            ForwardPath::Mailbox(m) => m,
        };
        match self.directory.resolve(m) {
            Resolution::Local(_) => self.greylist(m, client, tx).await,
            Resolution::Unknown => Verdict::Reject(Reply::new(
                550,
                codes::NO_SUCH_USER,
                format!("<{m}>: Recipient address rejected: no such user here"),
            )),
            Resolution::Remote if client.auth.is_some() => Verdict::Accept,
            Resolution::Remote
                if self
                    .config
                    .relay_networks
                    .iter()
                    .any(|n| n.contains(&client.ip)) =>
            {
                Verdict::Accept
            }
            Resolution::Remote => Verdict::Reject(Reply::new(
                554,
                codes::NOT_AUTHORIZED,
                format!("<{m}>: Relay access denied (authenticate to send to other domains)"),
            )),
        }
    }

    /// Greylisting applies to unauthenticated clients of the `smtp` role outside the exempt
    /// networks. A sender whose domain passes SPF may be exempt: SPF is then evaluated once
    /// for the transaction (a triplet that passed before needs no lookups).
    async fn greylist(&self, to: &Mailbox, client: &Client<'_>, tx: &mut Transaction) -> Verdict {
        let (Some(g), Some(from)) = (&self.greylist, tx.from.clone()) else {
            return Verdict::Accept;
        };
        if client.auth.is_some() || client.role != Role::Smtp || g.exempt(client.ip) {
            return Verdict::Accept;
        }
        let now = self.clock.now();
        if g.exempts_spf_pass()
            && from.mailbox().is_some()
            && !g.has_passed(client.ip, &from, to, now)
        {
            if tx.spf.is_none() {
                let check = self.spf(client, &from);
                tx.spf = tokio::time::timeout(GREYLIST_SPF_TIMEOUT, check).await.ok();
            }
            if tx
                .spf
                .as_ref()
                .is_some_and(|o| o.result() == SpfResult::Pass)
            {
                return Verdict::Accept;
            }
        }
        match g.check(client.ip, &from, to, now) {
            Some(reply) => {
                maillog::greylisted(client.ip, &from, to);
                Verdict::Reject(reply)
            }
            None => Verdict::Accept,
        }
    }

    /// SPF for this client and sender (RFC 7208 §2.4: the HELO identity for the null sender).
    pub async fn spf(&self, client: &Client<'_>, from: &ReversePath) -> SpfOutput {
        let sender = from.mailbox().map(|m| m.to_string()).unwrap_or_default();
        spf::verify(
            &self.resolver,
            client.ip,
            client.helo,
            &self.config.hostname,
            &sender,
        )
        .await
    }

    /// AUTH: over the per-address failure limit, the growing delay is waited out and the
    /// attempt refused unchecked; acting as another user (an authzid other than the user,
    /// RFC 4616 §2) is bad credentials; otherwise the password is checked off the reactor.
    /// Every failure counts toward the per-address limit.
    pub async fn authenticate(
        &self,
        ip: IpAddr,
        username: &str,
        password: String,
        authzid: Option<&str>,
    ) -> AuthVerdict {
        if let Some(delay) = self.auth_throttle.blocked(ip) {
            tokio::time::sleep(delay).await;
            maillog::auth_throttled(ip, username);
            return AuthVerdict::Throttled;
        }
        // Counted as failed until it is known not to be: parallel attempts from one client
        // run into the limit while their passwords are still being checked.
        self.auth_throttle.failed(ip);
        let verdict = if let Some(other) = authzid {
            maillog::auth_as_other_refused(ip, username, other);
            AuthVerdict::BadCredentials
        } else {
            self.verify_password(username, password).await
        };
        if verdict == AuthVerdict::BadCredentials {
            maillog::auth_failed(ip, username);
        } else {
            self.auth_throttle.forgive(ip);
        }
        verdict
    }

    /// The password check (Argon2, about 19 MiB and tens of milliseconds each), at most
    /// [`PASSWORD_CHECKS`] at a time whatever the number of clients, so that a flood of AUTH
    /// attempts cannot take the memory or every thread of the blocking pool.
    async fn verify_password(&self, username: &str, password: String) -> AuthVerdict {
        let Ok(_permit) = self.password_checks.acquire().await else {
            return AuthVerdict::Unavailable;
        };
        let (dir, user) = (self.directory.clone(), username.to_string());
        match tokio::task::spawn_blocking(move || dir.verify_password(&user, &password)).await {
            Ok(true) => AuthVerdict::Success,
            Ok(false) => AuthVerdict::BadCredentials,
            Err(_) => AuthVerdict::Unavailable,
        }
    }

    /// The From: and Sender: addresses of a message an authenticated user submits must be
    /// theirs too (RFC 5322 §3.6.2), or the sender check could be dodged in the header
    /// readers see. (More than one of either is refused before, by [`header_fields`].)
    pub fn check_from_header(&self, user: &str, message: &[u8]) -> Result<(), Reply> {
        let refuse = |text: String| Err(Reply::new(553, codes::NOT_AUTHORIZED, text));
        for (name, addresses) in header_fields::author_addresses(message) {
            if addresses.is_empty() {
                return refuse(format!(
                    "{name} header field without an address of user {user}"
                ));
            }
            for text in addresses {
                let owned =
                    Mailbox::parse(&text).is_ok_and(|m| self.directory.may_send_as(user, &m));
                if !owned {
                    return refuse(format!("{name} address <{text}> not owned by user {user}"));
                }
            }
        }
        Ok(())
    }

    /// Sender authentication of a message received on the `smtp` role without AUTH, under
    /// the policies of the local recipients' domains (the defaults when none is local).
    /// Reuses the transaction's SPF result. `Err` is the refusal.
    pub async fn check_sender(
        &self,
        client: &Client<'_>,
        from: &ReversePath,
        recipient_domains: &[&str],
        tx: &mut Transaction,
        message: &MessageData,
    ) -> Result<SenderChecked, Reply> {
        let check = sender_auth::Check {
            hostname: &self.config.hostname,
            ip: client.ip,
            helo: client.helo,
            from,
        };
        let evaluation = sender_auth::evaluate(&self.resolver, &check, tx.spf.take(), message)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the message data to check its sender");
                Reply::local_error()
            })?;
        let mut policies: Vec<_> = recipient_domains
            .iter()
            .map(|d| self.config.authentication.policy(d))
            .collect();
        if policies.is_empty() {
            policies.push(self.config.authentication.policy(""));
        }
        let verdict = evaluation.decide(&policies);
        match verdict.refusal {
            Some(reply) => {
                match &evaluation.temporary {
                    Some(lookup) => {
                        let servers = &self.config.dns.servers;
                        let resolver = if servers.is_empty() {
                            "the system's resolver (/etc/resolv.conf)".to_string()
                        } else {
                            servers.join(", ")
                        };
                        maillog::sender_auth_deferred(from, client.ip, lookup, &resolver);
                    }
                    None => maillog::sender_auth_refused(from, client.ip, &reply),
                }
                Err(reply)
            }
            None => Ok(SenderChecked {
                header: evaluation.header,
                junk: verdict.junk,
            }),
        }
    }
}
