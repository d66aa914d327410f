//! From a complete message to a durable one, in three steps: [`headers`] (trace and
//! authentication header fields, the DKIM signature of a submission), [`envelope`], then
//! [`make_durable`]. Only after the last one does the session say `250`.

use kurier_smtp::session::Message;
use kurier_smtp::trace::Received;
use kurier_smtp::{Body, ForwardPath, Mailbox, Reply, Role, codes};
use kurier_spool::{Envelope, QueueId, RecipientState, RecipientStatus, SpoolError, TlsUsed};

use super::{Inbound, spill};
use crate::header::{fields, header_section};
use crate::maillog;
use crate::policy::header_fields;
use crate::policy::sender_auth::strip_forged;
use crate::policy::{Client, Transaction};
use crate::time::rfc5322;
use kurier_spool::MessageData;

/// Builds the envelope, prepends our header fields, writes the message durably, and only
/// then returns the queue id for the 250 reply. Failures become 451/452 (the client
/// retries) or the policy's refusal. `data` is the message (`message.body` is not used);
/// every header check reads its start, where the header section is.
pub async fn commit(
    inbound: &Inbound,
    client: &Client<'_>,
    client_name: Option<&str>,
    tx: &mut Transaction,
    message: Message,
    data: MessageData,
) -> Result<String, Reply> {
    spill::header_fits(&data)?;
    header_fields::check(data.head(), inbound.config.limits.hops)?;
    if let Some(user) = &message.auth_user {
        inbound.policy.check_from_header(user, data.head())?;
    }
    let id = QueueId::generate();
    let now = crate::time::unix_now();
    let recipients = recipients(inbound, &message);
    // The header section is worked on in place: forged results of ours are cut out, and
    // our header fields go in front when the message is written (no copy of it).
    let mut data = data;
    strip_forged(data.head_mut(), &inbound.config.hostname);
    if message.auth_user.is_some() {
        add_missing_date_and_id(data.head_mut(), &id, now, &inbound.config.hostname);
    }
    let (prefix, junk) = headers(
        inbound,
        client,
        client_name,
        tx,
        &id,
        now,
        &recipients,
        &message,
        &data,
    )
    .await?;
    let envelope = envelope(
        id,
        now,
        client,
        &message,
        recipients,
        prefix.len(),
        &data,
        junk,
    );
    let outcome = make_durable(inbound, envelope, prefix, data).await?;
    maillog::message_accepted(&outcome.0, &message, client.ip, outcome.1);
    Ok(outcome.0.id.to_string())
}

/// RFC 6409 §8.1, §8.3: a submission server may add the Date: and Message-ID: a client
/// left out (RFC 5322 §3.6 requires the first and asks for the second; large receivers
/// refuse mail without a Message-ID). They go in before DKIM signing, so they are signed.
fn add_missing_date_and_id(body: &mut Vec<u8>, id: &QueueId, now: u64, hostname: &str) {
    let counts = header_fields::count(body);
    let mut missing = String::new();
    if counts.date == 0 {
        missing.push_str(&format!("Date: {}\r\n", rfc5322(now)));
    }
    if counts.message_id == 0 {
        missing.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
    }
    if !missing.is_empty() {
        // Text without a header gets one: the fields, then the empty line.
        if fields(header_section(body)).next().is_none() && !body.starts_with(b"\r\n") {
            missing.push_str("\r\n");
        }
        body.splice(0..0, missing.into_bytes());
    }
}

/// The recipients' states, in RCPT order (`<postmaster>` is the primary domain's).
fn recipients(inbound: &Inbound, message: &Message) -> Vec<RecipientState> {
    let directory = &inbound.policy.directory;
    message
        .recipients
        .iter()
        .filter_map(|r| {
            let m = match &r.to {
                ForwardPath::Mailbox(m) => m.clone(),
                ForwardPath::Postmaster => {
                    Mailbox::new("postmaster", directory.primary_domain()?.clone()).ok()?
                }
            };
            let local = directory.is_local_domain(m.domain());
            let mut state = RecipientState::new(m, local);
            state.orcpt = r.params.orcpt.clone();
            state.notify = r.params.notify;
            Some(state)
        })
        .collect()
}

/// Received (RFC 5321 §4.4), our Authentication-Results after sender authentication of mail
/// from other servers (RFC 8601; forged ones in our name are removed first, §5), and a DKIM
/// signature for submissions from a local domain with a key.
#[allow(clippy::too_many_arguments)]
async fn headers(
    inbound: &Inbound,
    client: &Client<'_>,
    client_name: Option<&str>,
    tx: &mut Transaction,
    id: &QueueId,
    now: u64,
    recipients: &[RecipientState],
    message: &Message,
    received: &MessageData,
) -> Result<(String, bool), Reply> {
    let config = &inbound.config;
    let single_rcpt = (recipients.len() == 1).then(|| recipients[0].address.to_string());
    let mut prefix = Received {
        helo: &message.helo,
        peer_ip: client.ip,
        peer_name: client_name,
        by: &config.hostname,
        protocol: message.protocol,
        tls: message.tls.as_ref(),
        id: id.as_str(),
        for_rcpt: single_rcpt.as_deref(),
        date: &rfc5322(now),
    }
    .to_header();
    let mut junk = false;
    let exempt = config
        .authentication
        .exempt_networks
        .iter()
        .any(|n| n.contains(&client.ip));
    if config.authentication.verify
        && !exempt
        && client.role == Role::Smtp
        && message.auth_user.is_none()
    {
        let domains: Vec<&str> = recipients
            .iter()
            .filter(|r| r.local)
            .map(|r| r.address.domain().as_str())
            .collect();
        let checked = inbound
            .policy
            .check_sender(client, &message.from, &domains, tx, received)
            .await?;
        prefix.push_str(&checked.header);
        junk = checked.junk;
    }
    if message.auth_user.is_some() {
        let domain = header_fields::from_domain(received.head())
            .or_else(|| message.from.mailbox().map(|m| m.domain().to_string()));
        if let Some(domain) = domain {
            let local = kurier_smtp::Domain::parse(&domain)
                .is_ok_and(|d| inbound.policy.directory.is_local_domain(&d));
            if local && inbound.signers.has(&domain) {
                prefix.push_str(&sign(inbound, &domain, received).await?);
            }
        }
    }
    Ok((prefix, junk))
}

/// The DKIM signature of a submission; a large one is read from its file off the reactor.
async fn sign(inbound: &Inbound, domain: &str, data: &MessageData) -> Result<String, Reply> {
    let signed = if data.rest().is_some() {
        let (signers, domain, data) = (inbound.signers.clone(), domain.to_string(), data.clone());
        tokio::task::spawn_blocking(move || signers.sign_data(&domain, &data))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    } else {
        inbound.signers.sign_data(domain, data)
    };
    signed.map_err(|e| {
        tracing::error!(error = %e, "cannot read the message data to sign it");
        Reply::local_error()
    })
}

/// The envelope of an accepted message: `prefix` octets of our header fields, then `data`.
#[allow(clippy::too_many_arguments)]
fn envelope(
    id: QueueId,
    now: u64,
    client: &Client<'_>,
    message: &Message,
    recipients: Vec<RecipientState>,
    prefix: usize,
    data: &MessageData,
    junk: bool,
) -> Envelope {
    Envelope {
        eight_bit: message.params.body == Some(Body::EightBitMime),
        smtputf8: message.params.smtputf8,
        ret: message.params.ret,
        envid: message.params.envid.clone(),
        client_ip: Some(client.ip),
        helo: message.helo.clone(),
        auth_user: message.auth_user.clone(),
        junk,
        listener: Some(client.role.name().to_string()),
        tls: message.tls.as_ref().map(|t| TlsUsed {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            verified: false,
        }),
        message_id: header_fields::message_id(data.head()),
        ..Envelope::new(
            id,
            now,
            message.from.clone(),
            recipients,
            prefix as u64 + data.len(),
        )
    }
}

/// All recipients local: into their Maildirs now, fsynced, through the delivery wing's door
/// for it, and the spool is never written. Anything that needs more (a failed write, a
/// success DSN) goes to the spool with what was done recorded, and is handed to delivery
/// without waiting (the message is durable; the `250` never waits on the delivery queue).
/// A message with its rest on disk goes to the spool (its file copied in the kernel), and
/// delivery reads it from there.
async fn make_durable(
    inbound: &Inbound,
    envelope: Envelope,
    prefix: String,
    data: MessageData,
) -> Result<(Envelope, &'static str), Reply> {
    let mut envelope = envelope;
    let (body, on_disk) = if data.as_memory().is_some() {
        let mut whole = data.into_head();
        whole.splice(0..0, prefix.into_bytes());
        (Some(std::sync::Arc::new(whole)), None)
    } else {
        (None, Some((prefix, data)))
    };
    let direct = inbound.delivery.is_enabled()
        && envelope
            .recipients
            .iter()
            .all(|r| r.local && !r.notify.is_some_and(|n| n.success));
    if direct
        && let Some(body) = &body
        && let Some(env) = inbound
            .delivery
            .deliver_now(envelope.clone(), body.clone())
            .await
    {
        let all_delivered = env
            .recipients
            .iter()
            .all(|r| matches!(r.status, RecipientStatus::Delivered { .. }));
        if all_delivered {
            return Ok((env, "delivered"));
        }
        envelope = env;
    }
    let (spool, env) = (inbound.spool.clone(), envelope.clone());
    let written = match (&body, on_disk) {
        (Some(bytes), _) => {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || spool.commit(&env, &bytes)).await
        }
        (None, Some((prefix, data))) => {
            tokio::task::spawn_blocking(move || {
                let parts = [prefix.as_bytes(), data.head()];
                spool.commit_with_rest(&env, &parts, data.rest())
            })
            .await
        }
        (None, None) => return Err(Reply::local_error()),
    };
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
            return Err(Reply::local_error());
        }
        Err(e) => {
            tracing::error!(error = %e, "spool writer failed");
            return Err(Reply::local_error());
        }
    }
    inbound.delivery.submit(envelope.clone(), body);
    Ok((envelope, "queued"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn added(message: &[u8]) -> String {
        let mut body = message.to_vec();
        let id = QueueId::generate();
        add_missing_date_and_id(&mut body, &id, 1_796_000_000, "mx.test");
        String::from_utf8(body).unwrap().replace(id.as_str(), "ID")
    }

    #[test]
    fn date_and_message_id_are_added_when_missing() {
        let date = rfc5322(1_796_000_000);
        assert_eq!(
            added(b"Subject: s\r\n\r\nbody\r\n"),
            format!("Date: {date}\r\nMessage-ID: <ID@mx.test>\r\nSubject: s\r\n\r\nbody\r\n")
        );
        let both = "Date: Thu, 3 Dec 2026 07:00:00 +0000\r\nMessage-Id: <x@y>\r\n\r\nb\r\n";
        assert_eq!(added(both.as_bytes()), both);
        assert_eq!(
            added(b"Message-ID: <x@y>\r\n\r\nb\r\n"),
            format!("Date: {date}\r\nMessage-ID: <x@y>\r\n\r\nb\r\n")
        );
        // Text without a header, and an empty message, get a header section.
        assert_eq!(
            added(b"just text\r\n"),
            format!("Date: {date}\r\nMessage-ID: <ID@mx.test>\r\n\r\njust text\r\n")
        );
        assert_eq!(
            added(b""),
            format!("Date: {date}\r\nMessage-ID: <ID@mx.test>\r\n\r\n")
        );
        // "From:" in the body is not a field of the header.
        assert!(added(b"\r\nDate: not a header\r\n").starts_with("Date: "));
    }
}
