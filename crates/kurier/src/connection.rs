//! Runs one SMTP session over a TCP (and later TLS) stream.
//!
//! The driver never parses: it reads bytes into the [`ServerSession`], carries out the
//! actions the session asks for (policy checks, password checks off the reactor, the TLS
//! upgrade, the durable commit) and writes the replies. Replies to pipelined commands are
//! gathered and written in one go before the next read (RFC 2920).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kurier_smtp::session::{Action, AuthVerdict, ServerSession, SessionConfig, TlsInfo, Verdict};
use kurier_smtp::{Reply, Role, codes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::inbound;
use crate::server::Context;
use crate::stream::Conn;
use crate::tls;

/// Read buffer per connection; SMTP lines are short and DATA streams in pieces.
/// Read buffer sizes: small while a session waits for commands (idle sessions are the many),
/// larger once a read fills it (message data), back to small between messages.
const READ_BUFFER_SMALL: usize = 1024;
const READ_BUFFER: usize = 16 * 1024;

/// Signals from the server to its sessions.
#[derive(Clone)]
pub struct Shutdown {
    /// Stop: idle sessions close with 421 at once, busy ones finish their transaction.
    pub stop: CancellationToken,
    /// The grace period is over: every session closes with 421 now.
    pub abort: CancellationToken,
}

/// What a connection did, for its log line.
#[derive(Default)]
struct Summary {
    messages: u32,
    tls: Option<TlsInfo>,
    auth: Option<String>,
    helo: Option<String>,
}

/// Serves one connection from accept to close.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    ctx: Arc<Context>,
    shutdown: Shutdown,
) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let mut summary = Summary::default();
    let outcome = run(stream, peer, role, &ctx, &shutdown, &mut summary).await;
    let tls = summary
        .tls
        .as_ref()
        .map(|t| t.version.as_str())
        .unwrap_or("none");
    tracing::info!(
        peer = %peer.ip(),
        listener = %role.name(),
        helo = %summary.helo.as_deref().unwrap_or("-"),
        tls = %tls,
        auth = %summary.auth.as_deref().unwrap_or("-"),
        messages = summary.messages,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %outcome,
        "connection closed"
    );
}

fn session_config(ctx: &Context, role: Role) -> SessionConfig {
    let l = &ctx.config.limits;
    SessionConfig {
        hostname: ctx.config.hostname.clone(),
        role,
        starttls: ctx.tls.is_some(),
        max_message_size: l.message_size,
        max_recipients: l.recipients,
        max_errors: l.errors,
        max_auth_failures: l.auth_failures,
    }
}

async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    ctx: &Arc<Context>,
    shutdown: &Shutdown,
    summary: &mut Summary,
) -> &'static str {
    let limits = &ctx.config.limits;
    let mut conn = Conn::Plain(stream);
    let mut initial_tls = None;
    if role == Role::Submissions {
        // RFC 8314 §3.3: implicit TLS starts at once; the handshake is bounded by the
        // command timeout (a client that never speaks must not hold the slot).
        let Some(acceptor) = ctx.tls.clone() else {
            return "no TLS certificate";
        };
        let Conn::Plain(tcp) = conn else {
            return "internal";
        };
        match tokio::time::timeout(limits.command_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => {
                initial_tls = Some(tls::session_info(s.get_ref().1));
                conn = Conn::Tls(Box::new(TlsStream::Server(s)));
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer.ip(), error = %e, "TLS handshake failed");
                return "TLS handshake failed";
            }
            Err(_) => return "TLS handshake timeout",
        }
    }
    summary.tls = initial_tls.clone();
    // RFC 5782: a client listed on a configured DNSBL is refused before the greeting.
    if role == Role::Smtp
        && !ctx.config.dnsbl.zones.is_empty()
        && let Some(zone) =
            crate::dnsbl::listed(&ctx.resolver, peer.ip(), &ctx.config.dnsbl.zones).await
    {
        tracing::info!(peer = %peer.ip(), zone = %zone, "client listed on DNSBL, refused");
        let reply = Reply::new(
            554,
            codes::NOT_AUTHORIZED,
            format!(
                "Service unavailable; client [{}] blocked using {zone}",
                peer.ip()
            ),
        );
        let _ = conn.write_all(&reply.to_bytes()).await;
        conn.shutdown().await;
        return "listed on DNSBL";
    }
    // The client's name for the Received header, looked up on the side: a slow or dead DNS
    // server never delays the session (the name is used only if known by commit time).
    let resolver = ctx.resolver.clone();
    let ip = peer.ip();
    let mut rdns = Some(tokio::spawn(async move {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            resolver.confirmed_name(ip),
        )
        .await
        .ok()
        .flatten()
    }));
    let mut client_name: Option<String> = None;
    let mut session = ServerSession::new(session_config(ctx, role), initial_tls);
    let mut mail_from = None;
    let mut mail_spf_pass: Option<bool> = None;
    let mut out = Vec::with_capacity(512);
    let mut buf = vec![0u8; READ_BUFFER_SMALL];
    // RFC 5321 §4.5.3.2.7: the time for a whole command, from our last reply, not per read,
    // so a client trickling one byte at a time (slowloris) is cut off like an idle one.
    let mut command_deadline = tokio::time::Instant::now() + limits.command_timeout;
    loop {
        while let Some(action) = session.poll_action() {
            match action {
                Action::Send(reply) => reply.write_to(&mut out),
                Action::CheckMail { from, params } => {
                    let verdict =
                        inbound::check_mail(ctx, &from, &params, session.auth_user(), peer.ip());
                    if verdict == Verdict::Accept {
                        mail_from = Some(from);
                        mail_spf_pass = None;
                    }
                    session.resolve(verdict);
                }
                Action::CheckRcpt { to, params } => {
                    let mut client = inbound::Client {
                        ip: peer.ip(),
                        role,
                        auth: session.auth_user(),
                        from: mail_from.as_ref(),
                        spf_pass: mail_spf_pass,
                    };
                    // Greylisting may exempt senders that pass SPF: checked once per
                    // transaction, bounded in time (a slow DNS server means no exemption).
                    if mail_spf_pass.is_none() && inbound::greylist_wants_spf(ctx, &to, &client) {
                        let sender = client
                            .from
                            .and_then(|f| f.mailbox())
                            .map(|m| m.to_string())
                            .unwrap_or_default();
                        let spf = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            crate::spf::verify(
                                &ctx.resolver,
                                peer.ip(),
                                session.helo().unwrap_or_default(),
                                &ctx.config.hostname,
                                &sender,
                            ),
                        )
                        .await;
                        let pass = spf.is_ok_and(|o| o.result() == mail_auth::SpfResult::Pass);
                        mail_spf_pass = Some(pass);
                        client.spf_pass = mail_spf_pass;
                    }
                    let verdict = inbound::check_rcpt(ctx, &to, &params, &client);
                    session.resolve(verdict);
                }
                Action::Authenticate {
                    username, password, ..
                } => {
                    // Over the per-address limit: wait out the growing delay, then refuse
                    // without looking at the password.
                    if let Some(delay) = ctx.auth_throttle.blocked(peer.ip()) {
                        tokio::time::sleep(delay).await;
                        tracing::warn!(peer = %peer.ip(), user = %username, "authentication refused: too many failures from this address");
                        session.resolve_auth(AuthVerdict::Throttled);
                        continue;
                    }
                    let dir = ctx.directory.clone();
                    let user = username.clone();
                    let ok =
                        tokio::task::spawn_blocking(move || dir.verify_password(&user, &password))
                            .await;
                    let verdict = match ok {
                        Ok(true) => AuthVerdict::Success,
                        Ok(false) => AuthVerdict::BadCredentials,
                        Err(_) => AuthVerdict::Unavailable,
                    };
                    if verdict == AuthVerdict::Success {
                        summary.auth = Some(username.clone());
                    } else {
                        ctx.auth_throttle.failed(peer.ip());
                        tracing::warn!(peer = %peer.ip(), user = %username, "authentication failed");
                    }
                    session.resolve_auth(verdict);
                }
                Action::StartTls => {
                    if conn.write_all(&out).await.is_err() {
                        return "write error";
                    }
                    out.clear();
                    let (Some(acceptor), Conn::Plain(tcp)) = (ctx.tls.clone(), conn) else {
                        return "STARTTLS without certificate";
                    };
                    // Nothing read from the plain socket is kept: the session dropped it,
                    // and the handshake reads from the socket itself (RFC 3207 §4.2).
                    match tokio::time::timeout(limits.command_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let info = tls::session_info(s.get_ref().1);
                            summary.tls = Some(info.clone());
                            session.tls_established(info);
                            conn = Conn::Tls(Box::new(TlsStream::Server(s)));
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer.ip(), error = %e, "STARTTLS handshake failed");
                            return "TLS handshake failed";
                        }
                        Err(_) => return "TLS handshake timeout",
                    }
                }
                Action::Commit(message) => {
                    summary.messages += 1;
                    if rdns.as_ref().is_some_and(|h| h.is_finished())
                        && let Some(handle) = rdns.take()
                    {
                        client_name = handle.await.ok().flatten();
                    }
                    let result =
                        inbound::commit(ctx, peer, client_name.as_deref(), role, *message).await;
                    if result.is_err() {
                        summary.messages -= 1;
                    }
                    session.resolve_commit(result);
                }
                Action::Close => {
                    summary.helo = session.helo().map(str::to_string);
                    let _ = conn.write_all(&out).await;
                    conn.shutdown().await;
                    return "closed";
                }
            }
        }
        if !out.is_empty() {
            if conn.write_all(&out).await.is_err() {
                return "write error";
            }
            out.clear();
            command_deadline = tokio::time::Instant::now() + limits.command_timeout;
        }
        summary.helo = session.helo().map(str::to_string);
        let timeout = if session.in_message_data() {
            limits.data_timeout
        } else {
            command_deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let idle = session.is_idle();
        tokio::select! {
            read = tokio::time::timeout(timeout, conn.read(&mut buf)) => match read {
                Ok(Ok(0)) => return "client disconnected",
                Ok(Ok(n)) => {
                    session.receive(&buf[..n]);
                    if n == buf.len() && buf.len() < READ_BUFFER {
                        buf.resize(READ_BUFFER, 0);
                    } else if idle && buf.len() > READ_BUFFER_SMALL {
                        buf = vec![0u8; READ_BUFFER_SMALL];
                    }
                }
                Ok(Err(_)) => return "read error",
                Err(_) => {
                    // RFC 5321 §4.5.3.2: the server may close after its timeout, with 421.
                    session.close_with(Reply::new(421, codes::TIMEOUT, format!("{} Timeout, closing connection", ctx.config.hostname)));
                }
            },
            _ = shutdown.stop.cancelled(), if idle => {
                session.close_with(shutting_down(ctx));
            }
            _ = shutdown.abort.cancelled() => {
                session.close_with(shutting_down(ctx));
            }
        }
    }
}

fn shutting_down(ctx: &Context) -> Reply {
    Reply::new(
        421,
        codes::SHUTTING_DOWN,
        format!(
            "{} Service shutting down, try again later",
            ctx.config.hostname
        ),
    )
}

/// Writes a one-line refusal to a connection that is not given a session (limits), without
/// waiting long for a slow client.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, reply: Reply) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = stream.write_all(&reply.to_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
