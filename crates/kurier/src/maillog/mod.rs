//! # maillog: the server's log lines
//!
//! Owns the server's fixed log events and their field names (`peer`, `queue_id`, `rcpt`,
//! `mta`, `reply`, …), one function per event, and the escaping of untrusted values
//! ([`escaped`], [`Escaped`]). Every value that came from the network goes through the
//! escaping: HELO names, AUTH identities, addresses, other servers' replies and host names
//! from DNS. Their bytes can then neither start a forged log line (which fail2ban would
//! believe) nor drive the terminal of whoever reads the log.
//!
//! Log readers match the messages and field names (fail2ban filters, the tests): change them
//! here and only on purpose. Fields are written with `display(..)` (in scope inside
//! tracing's macros) and `escaped(..)` rather than tracing's `%` sigil, so that rustfmt can
//! format these calls. A short log line that carries no value from outside may stay where it
//! happens.

mod escape;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use kurier_smtp::{Mailbox, Message, Reply, ReversePath, Role, TlsInfo};
use kurier_spool::{Envelope, Failure, QueueId, RemoteHost, SpoolError};

pub use escape::{Escaped, escaped};

// Connections.

/// A connection refused before the greeting (rate or concurrency limit); the reply is ours.
pub fn connection_refused(peer: IpAddr, listener: Role, reply: &Reply) {
    tracing::warn!(
        peer = display(peer),
        listener = display(listener.name()),
        "connection refused: {}",
        reply.text()
    );
}

/// What one connection did, for its closing line.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionClosed<'a> {
    /// The client's address.
    pub peer: IpAddr,
    /// The listener it came in on.
    pub listener: Role,
    /// The last HELO/EHLO name it gave.
    pub helo: Option<&'a str>,
    /// The TLS in use at the end.
    pub tls: Option<&'a TlsInfo>,
    /// The user it authenticated as.
    pub auth: Option<&'a str>,
    /// Messages accepted.
    pub messages: u32,
    /// From accept to close.
    pub duration: Duration,
    /// Why it ended, in words.
    pub end: &'a str,
}

/// The one line per connection, at its close.
pub fn connection_closed(c: &ConnectionClosed<'_>) {
    tracing::info!(
        peer = display(c.peer),
        listener = display(c.listener.name()),
        helo = escaped(c.helo.unwrap_or("-")),
        tls = display(c.tls.map_or("none", |t| t.version.as_str())),
        auth = escaped(c.auth.unwrap_or("-")),
        messages = c.messages,
        duration_ms = c.duration.as_millis() as u64,
        end = display(c.end),
        "connection closed"
    );
}

/// Implicit TLS or STARTTLS failed (the error may quote what the client sent).
pub fn tls_handshake_failed(peer: IpAddr, error: &std::io::Error) {
    tracing::debug!(
        peer = display(peer),
        error = escaped(error),
        "TLS handshake failed"
    );
}

// Authentication (fail2ban's food: `peer` is the address to act on).

/// AUTH refused unchecked: too many failures from this address lately.
pub fn auth_throttled(peer: IpAddr, user: &str) {
    tracing::warn!(
        peer = display(peer),
        user = escaped(user),
        "authentication refused: too many failures from this address"
    );
}

/// AUTH PLAIN with an authorization identity other than the user (RFC 4616 §2).
pub fn auth_as_other_refused(peer: IpAddr, user: &str, authzid: &str) {
    tracing::warn!(
        peer = display(peer),
        user = escaped(user),
        authzid = escaped(authzid),
        "authentication refused: acting as another user is not offered"
    );
}

/// AUTH with a wrong user or password.
pub fn auth_failed(peer: IpAddr, user: &str) {
    tracing::warn!(
        peer = display(peer),
        user = escaped(user),
        "authentication failed"
    );
}

/// A session gave up waiting for memory for its message data (the budget was spent by
/// others); `held` octets of its message are dropped, the client gets 421.
pub fn memory_budget_spent(peer: IpAddr, held: usize) {
    tracing::warn!(
        peer = display(peer),
        held,
        "message data memory budget spent, closing with 421"
    );
}

// Decisions about a sender or a message.

/// A recipient deferred by greylisting.
pub fn greylisted(peer: IpAddr, from: &ReversePath, rcpt: &Mailbox) {
    tracing::info!(
        peer = display(peer),
        from = escaped(from),
        rcpt = escaped(rcpt),
        "greylisted"
    );
}

/// A message refused by SPF/DKIM/DMARC; `reply` is what the client was told.
pub fn sender_auth_refused(from: &ReversePath, client: IpAddr, reply: &Reply) {
    tracing::info!(
        from = escaped(from),
        client = display(client),
        reply = escaped(reply),
        "message refused by sender authentication"
    );
}

/// A message deferred because a DNS lookup of sender authentication failed: which one,
/// through which resolver, and the setting that turns the checks off.
pub fn sender_auth_deferred(from: &ReversePath, client: IpAddr, lookup: &str, resolver: &str) {
    tracing::warn!(
        from = escaped(from),
        client = display(client),
        lookup = escaped(lookup),
        resolver,
        hint = "check the resolver, or set [authentication] verify = false or exempt_networks",
        "message deferred: sender authentication lookup failed"
    );
}

/// SPF made a permerror of a result mail-auth let pass; `domain` is the checked identity.
pub fn spf_permerror(domain: &str, reason: &str) {
    tracing::debug!(
        domain = escaped(domain),
        reason = escaped(reason),
        "SPF permerror"
    );
}

/// A DNSBL query that failed (the client is then not treated as listed).
pub fn dnsbl_lookup_failed(zone: &str, error: &impl std::fmt::Display) {
    tracing::warn!(
        zone = display(zone),
        error = escaped(error),
        "DNSBL lookup failed; not treating the client as listed"
    );
}

/// The one line per accepted message; `outcome` is `queued` or `delivered`.
pub fn message_accepted(envelope: &Envelope, message: &Message, client: IpAddr, outcome: &str) {
    let rcpts: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    tracing::info!(
        queue_id = display(&envelope.id),
        from = escaped(&message.from),
        rcpts = escaped(rcpts.join(",")),
        size = envelope.size,
        client = display(client),
        tls = display(message.tls.as_ref().map_or("none", |t| t.version.as_str())),
        auth = escaped(message.auth_user.as_deref().unwrap_or("-")),
        outcome,
        "message accepted"
    );
}

// Delivery.

/// A copy written to a local mailbox (`mailbox` is where `rcpt` led, through aliases).
pub fn delivered_local(id: &QueueId, rcpt: &Mailbox, mailbox: &Mailbox, path: &Path) {
    tracing::info!(
        queue_id = display(id),
        rcpt = escaped(rcpt),
        mailbox = escaped(mailbox),
        path = escaped(path.display()),
        "delivered"
    );
}

/// Writing to a local mailbox failed; it is tried again later.
pub fn local_delivery_deferred(id: &QueueId, rcpt: &Mailbox, error: &str, attempts: u32) {
    tracing::warn!(
        queue_id = display(id),
        rcpt = escaped(rcpt),
        error = escaped(error),
        attempts,
        "local delivery deferred"
    );
}

/// A local recipient accepted earlier is gone from the directory.
pub fn local_mailbox_gone(id: &QueueId, rcpt: &Mailbox) {
    tracing::warn!(
        queue_id = display(id),
        rcpt = escaped(rcpt),
        "local mailbox no longer exists"
    );
}

/// Another server accepted the message for `rcpt`; `reply` is its final reply. `tls` says
/// `none`, or the version and whether the certificate was `verified` or `unverified`.
pub fn delivered_remote(id: &QueueId, rcpt: &Mailbox, mta: &RemoteHost, reply: &str) {
    tracing::info!(
        queue_id = display(id),
        rcpt = escaped(rcpt),
        mta = escaped(mta),
        tls = display(tls_of(mta)),
        reply = escaped(reply),
        "delivered"
    );
}

/// A permanent failure for `rcpt` (a DSN follows).
pub fn delivery_failed(id: &QueueId, rcpt: &Mailbox, failure: &Failure) {
    tracing::info!(
        queue_id = display(id),
        rcpt = escaped(rcpt),
        mta = escaped(mta_of(failure)),
        tls = display(failure.remote.as_ref().map_or("none".into(), tls_of)),
        reason = escaped(failure),
        "delivery failed"
    );
}

/// A temporary failure for `rcpt`, tried again in `retry_in_s` seconds.
pub fn delivery_deferred(id: &QueueId, rcpt: &Mailbox, failure: &Failure, retry_in_s: u64) {
    tracing::info!(
        queue_id = display(id),
        rcpt = escaped(rcpt),
        mta = escaped(mta_of(failure)),
        reason = escaped(failure),
        retry_in_s,
        "delivery deferred"
    );
}

/// `none`, `TLSv1.3/verified` or `TLSv1.2/unverified`.
fn tls_of(mta: &RemoteHost) -> String {
    match &mta.tls {
        None => "none".into(),
        Some(t) if t.verified => format!("{}/verified", t.version),
        Some(t) => format!("{}/unverified", t.version),
    }
}

/// The server of a failure, or `-`.
fn mta_of(failure: &Failure) -> String {
    failure
        .remote
        .as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

/// A pooled connection to `mta` is used again.
pub fn reusing_connection(mta: &RemoteHost) {
    tracing::debug!(host = escaped(mta), "reusing connection");
}

/// Connecting to one of the next hops failed; the others are tried.
pub fn next_hop_failed(mta: &RemoteHost, error: &str) {
    tracing::info!(
        host = escaped(mta),
        error = escaped(error),
        "next hop failed, trying the next one"
    );
}

/// A destination could not be reached `failures` times in a row: its mail is deferred
/// without trying for `wait`.
pub fn destination_dead(name: &str, failures: u32, wait: std::time::Duration, error: &str) {
    tracing::warn!(
        destination = escaped(name),
        failures,
        retry_in_s = wait.as_secs(),
        error = escaped(error),
        "destination not answering: deliveries to it suspended"
    );
}

/// The grace period ended with deliveries still waiting for their server: their messages
/// stay queued and are sent again after the restart (a server that already had the whole
/// message may get it twice; RFC 5321 §6.1 prefers that to losing it).
pub fn deliveries_cut_at_shutdown() {
    tracing::warn!(
        "grace period over with deliveries still waiting for a reply: they are retried after the restart"
    );
}

/// A queued message could not be read for delivery.
pub fn queued_message_unreadable(id: &QueueId, error: &SpoolError) {
    tracing::error!(
        queue_id = display(id),
        error = escaped(error),
        "cannot load queued message"
    );
}

// Delivery status notifications (RFC 3464).

/// A DSN about message `id` queued as `dsn_id`; `actions` lists the recipients' actions.
pub fn dsn_queued(id: &QueueId, dsn_id: &QueueId, to: &Mailbox, actions: &str) {
    tracing::info!(
        queue_id = display(id),
        dsn_id = display(dsn_id),
        to = escaped(to),
        actions = display(actions),
        "delivery status notification queued"
    );
}

/// No DSN for a message from the null sender (RFC 5321 §6.1: a bounce is never bounced).
pub fn dsn_not_for_null_sender(id: &QueueId) {
    tracing::warn!(
        queue_id = display(id),
        "not reporting on a message from the null sender (a bounce is never bounced)"
    );
}

/// The DSN could not be written to the spool.
pub fn dsn_not_queued(id: &QueueId, error: &SpoolError) {
    tracing::error!(
        queue_id = display(id),
        error = escaped(error),
        "cannot queue the delivery status notification"
    );
}

// The server process.

/// Started as root without `run_as`.
pub fn running_as_root() {
    tracing::warn!(
        "running as root: {}",
        "set `run_as` in the config to switch to an unprivileged user after binding"
    );
}

/// A data directory readable by other users was made owner-only (0700).
pub fn data_dir_made_private(path: &Path) {
    tracing::warn!(
        path = escaped(path.display()),
        "the data directory was readable by other users: made it 0700"
    );
}

/// The listening file (pid and bound addresses) could not be written.
pub fn listening_file_not_written(path: &Path, error: &std::io::Error) {
    tracing::warn!(
        path = escaped(path.display()),
        error = escaped(error),
        "cannot write the listening file"
    );
}

#[cfg(test)]
mod tests;
