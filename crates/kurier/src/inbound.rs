//! Inbound policy and acceptance: the answers to the session's questions, and the path from
//! a complete message to a durable queue entry.
//!
//! Relay rule (no open relay): mail for local domains is accepted from anyone; mail for any
//! other domain only from an authenticated session. The domain that decides is the one after
//! the last unquoted `@`, as parsed by the protocol core, so percent hacks, bang paths, quoted
//! `@` and source routes cannot smuggle a remote destination past this check.

use std::net::SocketAddr;
use std::sync::Arc;

use kurier_smtp::session::{Message, Verdict};
use kurier_smtp::trace::Received;
use kurier_smtp::{ForwardPath, MailParams, Mailbox, RcptParams, Reply, Ret, ReversePath, codes};
use kurier_spool::{Envelope, NotifyFlags, QueueId, RecipientState, SpoolError};

use crate::directory::Resolution;
use crate::server::Context;

/// MAIL FROM: the per-address message rate applies (451); an authenticated user may only
/// use a sender they own (their address, an
/// alias that delivers to them, or a grant in `[senders]`); otherwise 553 5.7.1. The null
/// sender is allowed. Unauthenticated senders are not restricted here.
pub fn check_mail(
    ctx: &Context,
    from: &ReversePath,
    _params: &MailParams,
    auth: Option<&str>,
    ip: std::net::IpAddr,
) -> Verdict {
    if !ctx.message_rate.allow(ip) {
        return Verdict::Reject(Reply::new(
            451,
            codes::SECURITY_TEMP,
            "Too many messages per minute from your address, try again later",
        ));
    }
    match (auth, from) {
        (Some(user), ReversePath::Mailbox(m)) if !ctx.directory.may_send_as(user, m) => {
            Verdict::Reject(Reply::new(
                553,
                codes::NOT_AUTHORIZED,
                format!("<{m}>: Sender address not owned by user {user}"),
            ))
        }
        _ => Verdict::Accept,
    }
}

/// The From: addresses of a message an authenticated user submits must be theirs too
/// (RFC 5322 §3.6.2), or the sender check could be dodged in the header readers see.
fn check_from_header(ctx: &Context, user: &str, body: &[u8]) -> Result<(), Reply> {
    let Some(message) = mail_parser::MessageParser::new().parse_headers(body) else {
        return Ok(());
    };
    let Some(from) = message.from() else {
        return Ok(());
    };
    for addr in from.iter() {
        let text = addr.address().unwrap_or_default();
        let owned = Mailbox::parse(text).is_ok_and(|m| ctx.directory.may_send_as(user, &m));
        if !owned {
            return Err(Reply::new(
                553,
                codes::NOT_AUTHORIZED,
                format!("From: address <{text}> not owned by user {user}"),
            ));
        }
    }
    Ok(())
}

/// Who is asking, for the recipient decision.
pub struct Client<'a> {
    /// The client's address.
    pub ip: std::net::IpAddr,
    /// The listener's role.
    pub role: kurier_smtp::Role,
    /// The authenticated user.
    pub auth: Option<&'a str>,
    /// The accepted MAIL FROM of the transaction.
    pub from: Option<&'a ReversePath>,
    /// Whether the MAIL FROM domain passes SPF for this client, when it was checked (see
    /// [`greylist_wants_spf`]).
    pub spf_pass: Option<bool>,
}

/// True when greylisting would decide this recipient and a sender passing SPF is exempt:
/// the caller then evaluates SPF (once per transaction) and fills in [`Client::spf_pass`].
/// A triplet that passed before needs no SPF lookups.
pub fn greylist_wants_spf(ctx: &Context, to: &ForwardPath, client: &Client<'_>) -> bool {
    let (Some(g), Some(from), ForwardPath::Mailbox(to)) = (&ctx.greylist, client.from, to) else {
        return false;
    };
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    g.exempts_spf_pass()
        && client.auth.is_none()
        && client.role == kurier_smtp::Role::Smtp
        && !g.exempt(client.ip)
        && from.mailbox().is_some()
        && !g.has_passed(client.ip, from, to, now)
}

/// RCPT TO: local users, aliases and postmaster are accepted; unknown local users get 550
/// 5.1.1 now (not a bounce later, which would be backscatter); remote domains need AUTH.
/// Unauthenticated mail on the `smtp` role may be greylisted (451 4.7.1).
pub fn check_rcpt(
    ctx: &Context,
    to: &ForwardPath,
    _params: &RcptParams,
    client: &Client<'_>,
) -> Verdict {
    let m = match to {
        // RFC 5321 §4.5.1: <Postmaster> without a domain is always accepted.
        ForwardPath::Postmaster => return Verdict::Accept,
        ForwardPath::Mailbox(m) => m,
    };
    match ctx.directory.resolve(m) {
        Resolution::Local(_) => greylist(ctx, m, client),
        Resolution::Unknown => Verdict::Reject(Reply::new(
            550,
            codes::NO_SUCH_USER,
            format!("<{m}>: Recipient address rejected: no such user here"),
        )),
        Resolution::Remote if client.auth.is_some() => Verdict::Accept,
        Resolution::Remote => Verdict::Reject(Reply::new(
            554,
            codes::NOT_AUTHORIZED,
            format!("<{m}>: Relay access denied (authenticate to send to other domains)"),
        )),
    }
}

/// Greylisting applies to unauthenticated clients of the `smtp` role outside the exempt
/// networks.
fn greylist(ctx: &Context, to: &Mailbox, client: &Client<'_>) -> Verdict {
    let (Some(g), Some(from)) = (&ctx.greylist, client.from) else {
        return Verdict::Accept;
    };
    if client.auth.is_some() || client.role != kurier_smtp::Role::Smtp || g.exempt(client.ip) {
        return Verdict::Accept;
    }
    if g.exempts_spf_pass() && client.spf_pass == Some(true) {
        return Verdict::Accept;
    }
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    match g.check(client.ip, from, to, now) {
        Some(reply) => {
            tracing::info!(peer = %client.ip, from = %from, rcpt = %to, "greylisted");
            Verdict::Reject(reply)
        }
        None => Verdict::Accept,
    }
}

/// The mailbox a forward path stands for.
fn recipient_mailbox(ctx: &Context, to: &ForwardPath) -> Option<Mailbox> {
    match to {
        ForwardPath::Mailbox(m) => Some(m.clone()),
        ForwardPath::Postmaster => {
            Mailbox::new("postmaster", ctx.directory.primary_domain()?.clone()).ok()
        }
    }
}

/// Builds the envelope, prepends the Received header, writes the message durably, and only
/// then returns the queue id for the 250 reply. Failures become 451/452 (the client retries).
pub async fn commit(
    ctx: &Arc<Context>,
    peer: SocketAddr,
    peer_name: Option<&str>,
    role: kurier_smtp::Role,
    message: Message,
) -> Result<String, Reply> {
    if let Some(user) = &message.auth_user {
        check_from_header(ctx, user, &message.body)?;
    }
    let id = QueueId::generate();
    let now = chrono::Utc::now();
    let recipients: Vec<RecipientState> = message
        .recipients
        .iter()
        .filter_map(|r| {
            let m = recipient_mailbox(ctx, &r.to)?;
            let local = ctx.directory.is_local_domain(m.domain());
            let mut state = RecipientState::new(m.to_string(), local);
            state.orcpt = r
                .params
                .orcpt
                .as_ref()
                .map(|o| format!("{};{}", o.addr_type, o.address));
            state.notify = r.params.notify.map(|n| NotifyFlags {
                never: n.never,
                success: n.success,
                failure: n.failure,
                delay: n.delay,
            });
            Some(state)
        })
        .collect();
    let single_rcpt = (recipients.len() == 1).then(|| recipients[0].address.clone());
    let header = Received {
        helo: &message.helo,
        peer_ip: peer.ip(),
        peer_name,
        by: &ctx.config.hostname,
        protocol: message.protocol,
        tls: message.tls.as_ref(),
        id: id.as_str(),
        for_rcpt: single_rcpt.as_deref(),
        date: &now.to_rfc2822(),
    }
    .to_header();
    // RFC 8601 §5: nobody else may speak for this authserv-id.
    let received_body = crate::sender_auth::strip_forged(&message.body, &ctx.config.hostname);
    let mut auth_results = String::new();
    let mut quarantine = false;
    if ctx.config.authentication.verify
        && role == kurier_smtp::Role::Smtp
        && message.auth_user.is_none()
    {
        let check = crate::sender_auth::Check {
            hostname: &ctx.config.hostname,
            ip: peer.ip(),
            helo: &message.helo,
            from: &message.from,
        };
        let evaluation = crate::sender_auth::evaluate(&ctx.resolver, &check, &received_body).await;
        // Each recipient's domain has its policy; with none local, the defaults apply.
        let mut policies: Vec<_> = recipients
            .iter()
            .filter(|r| r.local)
            .map(|r| {
                let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
                ctx.config.authentication.policy(domain)
            })
            .collect();
        if policies.is_empty() {
            policies.push(ctx.config.authentication.policy(""));
        }
        let verdict = evaluation.decide(&policies);
        if let Some(reply) = verdict.refusal {
            tracing::info!(from = %message.from, client = %peer.ip(), reply = %reply, "message refused by sender authentication");
            return Err(reply);
        }
        auth_results = evaluation.header;
        quarantine = verdict.junk;
    }
    // Submissions are signed as their From: domain when it has a DKIM key.
    let mut signatures = String::new();
    if message.auth_user.is_some() {
        let domain = from_domain(&received_body)
            .or_else(|| message.from.mailbox().map(|m| m.domain().to_string()));
        if let Some(domain) = domain {
            let local = kurier_smtp::Domain::parse(&domain)
                .is_ok_and(|d| ctx.directory.is_local_domain(&d));
            if local && ctx.signers.has(&domain) {
                signatures = ctx.signers.sign(&domain, &received_body);
            }
        }
    }
    let mut body = Vec::with_capacity(
        header.len() + auth_results.len() + signatures.len() + received_body.len(),
    );
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(auth_results.as_bytes());
    body.extend_from_slice(signatures.as_bytes());
    body.extend_from_slice(&received_body);
    let envelope = Envelope {
        id: id.clone(),
        received_at: u64::try_from(now.timestamp()).unwrap_or(0),
        sender: message
            .from
            .mailbox()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        recipients,
        size: body.len() as u64,
        eight_bit: message.params.body == Some(kurier_smtp::Body::EightBitMime),
        smtputf8: message.params.smtputf8,
        ret: message.params.ret.map(|r| match r {
            Ret::Full => "FULL".to_string(),
            Ret::Hdrs => "HDRS".to_string(),
        }),
        envid: message.params.envid.clone(),
        client_ip: peer.ip().to_string(),
        helo: message.helo.clone(),
        auth_user: message.auth_user.clone(),
        hold: false,
        delay_warned: false,
        junk: quarantine,
    };
    let body = Arc::new(body);
    // All recipients local: deliver into their Maildirs now, fsynced, and answer 250 without
    // writing the spool at all. Anything that needs more (a failed write, a success DSN)
    // falls back to the spool with what was done recorded.
    let mut envelope = envelope;
    let direct = ctx.delivery.engine().is_enabled()
        && envelope
            .recipients
            .iter()
            .all(|r| r.local && !r.notify.is_some_and(|n| n.success));
    if direct {
        let (engine, mut env, bytes) = (
            ctx.delivery.engine().clone(),
            envelope.clone(),
            body.clone(),
        );
        let now = u64::try_from(now.timestamp()).unwrap_or(0);
        if let Ok(env) = tokio::task::spawn_blocking(move || {
            engine.deliver_local(&mut env, &bytes, now);
            env
        })
        .await
        {
            let all_delivered = env
                .recipients
                .iter()
                .all(|r| matches!(r.status, kurier_spool::RecipientStatus::Delivered { .. }));
            if all_delivered {
                log_accepted(&message, &env, peer, "delivered");
                return Ok(id.to_string());
            }
            envelope = env;
        }
    }
    let (spool, env, bytes) = (ctx.spool.clone(), envelope.clone(), body.clone());
    let written = tokio::task::spawn_blocking(move || spool.commit(&env, &bytes)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(SpoolError::NoSpace { path })) => {
            tracing::error!(path = %path.display(), "spool full: refusing messages with 452");
            return Err(Reply::new(
                452,
                codes::SYSTEM_FULL,
                "Insufficient system storage, try again later",
            ));
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot write message to the spool");
            return Err(Reply::new(
                451,
                codes::SYSTEM_TEMP,
                "Local error in processing, try again later",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "spool writer failed");
            return Err(Reply::new(
                451,
                codes::SYSTEM_TEMP,
                "Local error in processing, try again later",
            ));
        }
    }
    log_accepted(&message, &envelope, peer, "queued");
    ctx.delivery.submit(envelope, body).await;
    Ok(id.to_string())
}

/// The one log line per accepted message.
fn log_accepted(message: &Message, envelope: &Envelope, peer: SocketAddr, outcome: &str) {
    let rcpts: Vec<&str> = envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    tracing::info!(
        queue_id = %envelope.id,
        from = %message.from,
        rcpts = %rcpts.join(","),
        size = envelope.size,
        client = %peer.ip(),
        tls = %message.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
        auth = %message.auth_user.as_deref().unwrap_or("-"),
        outcome,
        "message accepted"
    );
}

/// The domain of the (first) From: address, lower case.
fn from_domain(body: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(body)?;
    let address = message.from()?.first()?.address()?;
    Some(address.rsplit_once('@')?.1.to_ascii_lowercase())
}
