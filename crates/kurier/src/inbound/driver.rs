//! Runs one SMTP session over a TCP or TLS stream.
//!
//! The driver never parses and never decides: it reads bytes into the [`ServerSession`],
//! carries out the actions the session asks for, one method each (the answers come from
//! [`crate::policy`] and [`super::receive`]), and writes the replies. Replies to pipelined
//! commands are gathered and written in one go before the next read (RFC 2920).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kurier_smtp::session::{Action, ServerSession, SessionConfig, TlsInfo};
use kurier_smtp::{ForwardPath, MailParams, RcptParams, Reply, ReversePath, Role, codes};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::error::Elapsed;
use tokio_rustls::TlsStream;

use super::Inbound;
use super::read_clock::ReadClock;
use super::spill::{self, Spill};
use crate::load::{Reservation, STRESS_TIMEOUT};
use crate::maillog;
use crate::policy::{Client, Transaction};
use crate::shutdown::Shutdown;
use crate::stream::Conn;
use crate::tls;
use kurier_spool::MessageData;

/// Read buffer sizes: small while a session waits for commands (idle sessions are the many),
/// larger once a read fills it (message data), back to small between messages.
const READ_BUFFER_SMALL: usize = 1024;
const READ_BUFFER: usize = 16 * 1024;

/// How long the client's name (reverse DNS, confirmed forward) may take to look up; it is
/// looked up on the side and used only if known by the time a message is committed.
pub const RDNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The session closed it (QUIT, too many errors, timeout, shutdown).
    Closed,
    /// The client closed it.
    ClientDisconnected,
    /// Reading failed.
    ReadError,
    /// Writing failed.
    WriteError,
    /// Implicit TLS or STARTTLS without a certificate.
    NoCertificate,
    /// The TLS handshake failed.
    TlsFailed,
    /// The TLS handshake did not finish within the command timeout.
    TlsTimeout,
    /// The client is listed on a DNSBL.
    Blocklisted,
}

impl End {
    /// The words in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientDisconnected => "client disconnected",
            End::ReadError => "read error",
            End::WriteError => "write error",
            End::NoCertificate => "no TLS certificate",
            End::TlsFailed => "TLS handshake failed",
            End::TlsTimeout => "TLS handshake timeout",
            End::Blocklisted => "listed on DNSBL",
        }
    }
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
    inbound: Arc<Inbound>,
    shutdown: Shutdown,
) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let mut summary = Summary::default();
    let end = run(stream, peer, role, &inbound, &shutdown, &mut summary).await;
    maillog::connection_closed(&maillog::ConnectionClosed {
        peer: peer.ip(),
        listener: role,
        helo: summary.helo.as_deref(),
        tls: summary.tls.as_ref(),
        auth: summary.auth.as_deref(),
        messages: summary.messages,
        duration: started.elapsed(),
        end: end.as_str(),
    });
}

fn session_config(inbound: &Inbound, role: Role) -> SessionConfig {
    let l = &inbound.config.limits;
    SessionConfig {
        hostname: inbound.config.hostname.clone(),
        role,
        starttls: inbound.tls.is_some(),
        max_message_size: l.message_size,
        max_recipients: l.recipients,
        max_errors: l.errors,
        max_auth_failures: l.auth_failures,
        max_junk_commands: l.junk_commands,
    }
}

/// The TLS handshake, for implicit TLS (RFC 8314 §3.3) and after STARTTLS (RFC 3207) alike,
/// bounded by its own timeout (cut under stress): a client that never finishes its
/// ClientHello must not hold the slot.
async fn handshake(
    inbound: &Inbound,
    peer: SocketAddr,
    tcp: TcpStream,
) -> Result<(Conn, TlsInfo), End> {
    let Some(acceptor) = inbound.tls.clone() else {
        return Err(End::NoCertificate);
    };
    let limit = inbound
        .load
        .timeout(inbound.config.limits.tls_handshake_timeout);
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            let info = tls::session_info(s.get_ref().1);
            Ok((Conn::Tls(Box::new(TlsStream::Server(s))), info))
        }
        Ok(Err(e)) => {
            maillog::tls_handshake_failed(peer.ip(), &e);
            Err(End::TlsFailed)
        }
        Err(_) => Err(End::TlsTimeout),
    }
}

async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    inbound: &Arc<Inbound>,
    shutdown: &Shutdown,
    summary: &mut Summary,
) -> End {
    let (mut conn, initial_tls) = if role == Role::Submissions {
        match handshake(inbound, peer, stream).await {
            Ok((conn, info)) => (conn, Some(info)),
            Err(end) => return end,
        }
    } else {
        (Conn::Plain(stream), None)
    };
    summary.tls = initial_tls.clone();
    if let Some(reply) = inbound.policy.on_connect(peer.ip(), role).await {
        let _ = conn.write_all(&reply.to_bytes()).await;
        conn.shutdown().await;
        return End::Blocklisted;
    }
    let resolver = inbound.policy.resolver.clone();
    let ip = peer.ip();
    let rdns = tokio::spawn(async move {
        tokio::time::timeout(RDNS_TIMEOUT, resolver.confirmed_name(ip))
            .await
            .ok()
            .flatten()
    });
    let mut driver = Driver {
        inbound,
        peer,
        role,
        session: ServerSession::new(session_config(inbound, role), initial_tls),
        tx: Transaction::default(),
        out: Vec::with_capacity(512),
        summary,
        rdns: Some(rdns),
        client_name: None,
        memory: Reservation::default(),
        spill: None,
    };
    driver.serve(conn, shutdown).await
}

/// The connection facts a decision depends on (a function of the fields, so the driver can
/// lend them while it lends its transaction mutably).
fn client(peer: SocketAddr, role: Role, session: &ServerSession) -> Client<'_> {
    Client {
        ip: peer.ip(),
        role,
        auth: session.auth_user(),
        helo: session.helo().unwrap_or_default(),
    }
}

/// One session's state on the server side of the sans-IO boundary.
struct Driver<'a> {
    inbound: &'a Inbound,
    peer: SocketAddr,
    role: Role,
    session: ServerSession,
    tx: Transaction,
    out: Vec<u8>,
    summary: &'a mut Summary,
    rdns: Option<JoinHandle<Option<String>>>,
    client_name: Option<String>,
    /// The part of the memory budget held for this session's message data.
    memory: Reservation,
    /// Where the data of a large message goes while it arrives.
    spill: Option<Spill>,
}

impl Driver<'_> {
    async fn serve(&mut self, mut conn: Conn, shutdown: &Shutdown) -> End {
        let limits = &self.inbound.config.limits;
        let mut buf = vec![0u8; READ_BUFFER_SMALL];
        let mut clock = ReadClock::new(Instant::now());
        loop {
            while let Some(action) = self.session.poll_action() {
                match action {
                    Action::Send(reply) => reply.write_to(&mut self.out),
                    Action::CheckMail { from, params } => self.check_mail(&from, &params),
                    Action::CheckRcpt { to, params } => self.check_rcpt(&to, &params).await,
                    Action::Authenticate {
                        username,
                        password,
                        authzid,
                        ..
                    } => self.authenticate(username, password, authzid).await,
                    Action::StartTls => match self.start_tls(conn).await {
                        Ok(upgraded) => conn = upgraded,
                        Err(end) => return end,
                    },
                    Action::Commit(message) => self.commit(*message).await,
                    Action::Close => return self.close(&mut conn).await,
                }
            }
            if !self.out.is_empty() {
                if conn.write_all(&self.out).await.is_err() {
                    return End::WriteError;
                }
                self.out.clear();
                clock.replied(Instant::now());
            }
            self.summary.helo = self.session.helo().map(str::to_string);
            self.spill_data().await;
            if self.reserve_memory(&mut clock, buf.len()).await {
                continue;
            }
            let in_data = self.session.in_message_data();
            let stressed = self.inbound.load.stressed();
            let timeout = clock.timeout(Instant::now(), in_data, limits, stressed);
            // Long waits are cut into slices, so a session that began before the server
            // came under stress learns of it and gets the short timeout.
            let slice = timeout.min(STRESS_TIMEOUT);
            let more_time = slice < timeout;
            let idle = self.session.is_idle();
            let read = tokio::time::timeout(slice, conn.read(&mut buf));
            let ended = tokio::select! {
                read = read => self.received(read, &mut buf, (idle, more_time), &mut clock),
                _ = shutdown.stop.cancelled(), if idle => self.shutting_down(),
                _ = shutdown.abort.cancelled() => self.shutting_down(),
            };
            if let Some(end) = ended {
                return end;
            }
        }
    }

    /// Feeds what was read to the session and sizes the buffer for the next read: larger
    /// once a read fills it (message data), small again when the session is idle. A read
    /// that timed out closes the session with 421 unless only a slice of its time is over
    /// (`more_time`); `Some` when the connection is gone.
    fn received(
        &mut self,
        read: Result<io::Result<usize>, Elapsed>,
        buf: &mut Vec<u8>,
        (idle, more_time): (bool, bool),
        clock: &mut ReadClock,
    ) -> Option<End> {
        match read {
            Ok(Ok(0)) => Some(End::ClientDisconnected),
            Ok(Ok(n)) => {
                clock.read(n);
                self.session.receive(&buf[..n]);
                if n == buf.len() && buf.len() < READ_BUFFER {
                    buf.resize(READ_BUFFER, 0);
                } else if idle && buf.len() > READ_BUFFER_SMALL {
                    *buf = vec![0u8; READ_BUFFER_SMALL];
                }
                None
            }
            Ok(Err(_)) => Some(End::ReadError),
            Err(_) if more_time => None,
            Err(_) => {
                self.timed_out();
                None
            }
        }
    }

    /// Reserves memory for the message data the session holds and the next read; while the
    /// budget is spent, the client is not read (TCP backpressure), for at most
    /// `limits.message_memory_wait`, then the session ends with 421 (when every session
    /// waits for another to finish, some must give way). True when it ended.
    async fn reserve_memory(&mut self, clock: &mut ReadClock, next_read: usize) -> bool {
        let held = self.session.message_bytes();
        if held == 0 && !self.session.in_message_data() {
            self.memory.release();
            return false;
        }
        let want = (held + next_read) as u64;
        if self.memory.covers(want) {
            return false;
        }
        let started = Instant::now();
        let budget = &self.inbound.memory;
        let wait = self.inbound.config.limits.message_memory_wait;
        // All it may still need: its declared size, or the limit (plus a read's worth).
        let limit = self.inbound.config.limits.message_size;
        // Past IN_MEMORY a message goes to disk: that is the most it holds.
        let in_memory = spill::IN_MEMORY + 2 * next_read as u64;
        let mut most = self.session.declared_size().unwrap_or(limit).min(limit) + next_read as u64;
        if want > most {
            most = limit + next_read as u64;
        }
        most = most.min(in_memory).max(want);
        let reserve = budget.reserve(&mut self.memory, want, most);
        let reserved = tokio::time::timeout(wait, reserve);
        if reserved.await.is_err() {
            maillog::memory_budget_spent(self.peer.ip(), held);
            self.memory.release();
            let text = "Too much mail in progress, try again later";
            self.session
                .close_with(Reply::new(421, codes::SYSTEM_FULL, text));
            return true;
        }
        clock.paused(started.elapsed());
        false
    }

    /// Writes the data of a large message past its first octets to disk while it arrives
    /// (see [`spill`]); the file of an earlier message that did not end is dropped.
    async fn spill_data(&mut self) {
        let Some(piece) = self.session.take_message_data(spill::KEEP, spill::PIECE) else {
            return;
        };
        let serial = self.session.message_serial();
        let spill = match self.spill.take() {
            Some(s) if s.serial() == serial => s,
            _ => Spill::new(&self.inbound.spool, serial),
        };
        let spill = self.spill.insert(spill);
        spill.write(piece).await;
    }

    /// The message at the end of its data: in memory, or its start with the file the rest
    /// went to.
    async fn message_data(&mut self, body: Vec<u8>, spilled: u64) -> Result<MessageData, Reply> {
        let spill = self.spill.take();
        if spilled == 0 {
            return Ok(MessageData::in_memory(body));
        }
        match spill {
            Some(s) if s.serial() == self.session.message_serial() => s.finish(body, spilled).await,
            _ => {
                tracing::error!(spilled, "message data handed out but not on disk");
                Err(Reply::local_error())
            }
        }
    }

    fn check_mail(&mut self, from: &ReversePath, params: &MailParams) {
        let client = client(self.peer, self.role, &self.session);
        let verdict = self
            .inbound
            .policy
            .check_mail(from, params, &client, &mut self.tx);
        self.session.resolve(verdict);
    }

    async fn check_rcpt(&mut self, to: &ForwardPath, params: &RcptParams) {
        let client = client(self.peer, self.role, &self.session);
        let verdict = self
            .inbound
            .policy
            .check_rcpt(to, params, &client, &mut self.tx)
            .await;
        self.session.resolve(verdict);
    }

    async fn authenticate(&mut self, username: String, password: String, authzid: Option<String>) {
        let verdict = self
            .inbound
            .policy
            .authenticate(self.peer.ip(), &username, password, authzid.as_deref())
            .await;
        if verdict == kurier_smtp::session::AuthVerdict::Success {
            self.summary.auth = Some(username);
        }
        self.session.resolve_auth(verdict);
    }

    /// Flushes the replies, then the handshake. Nothing read from the plain socket is kept:
    /// the session dropped it, and the handshake reads from the socket itself (RFC 3207
    /// §4.2).
    async fn start_tls(&mut self, mut conn: Conn) -> Result<Conn, End> {
        if conn.write_all(&self.out).await.is_err() {
            return Err(End::WriteError);
        }
        self.out.clear();
        let Conn::Plain(tcp) = conn else {
            return Err(End::TlsFailed);
        };
        let (conn, info) = handshake(self.inbound, self.peer, tcp).await?;
        self.summary.tls = Some(info.clone());
        self.session.tls_established(info);
        Ok(conn)
    }

    async fn commit(&mut self, mut message: kurier_smtp::session::Message) {
        let body = std::mem::take(&mut message.body);
        let data = match self.message_data(body, message.spilled).await {
            Ok(data) => data,
            Err(reply) => return self.session.resolve_commit(Err(reply)),
        };
        if self.rdns.as_ref().is_some_and(|h| h.is_finished())
            && let Some(handle) = self.rdns.take()
        {
            self.client_name = handle.await.ok().flatten();
        }
        let client = client(self.peer, self.role, &self.session);
        let result = super::receive::commit(
            self.inbound,
            &client,
            self.client_name.as_deref(),
            &mut self.tx,
            message,
            data,
        )
        .await;
        if result.is_ok() {
            self.summary.messages += 1;
        }
        self.session.resolve_commit(result);
    }

    async fn close(&mut self, conn: &mut Conn) -> End {
        self.summary.helo = self.session.helo().map(str::to_string);
        let _ = conn.write_all(&self.out).await;
        conn.shutdown().await;
        End::Closed
    }

    /// RFC 5321 §4.5.3.2: the server may close after its timeout, with 421.
    fn timed_out(&mut self) {
        let text = format!(
            "{} Timeout, closing connection",
            self.inbound.config.hostname
        );
        self.session
            .close_with(Reply::new(421, codes::TIMEOUT, text));
    }

    /// RFC 5321 §3.8: 421 when the service is shutting down. `None`: the connection stays
    /// until the session has written the 421 and asks to close.
    fn shutting_down(&mut self) -> Option<End> {
        let text = format!(
            "{} Service shutting down, try again later",
            self.inbound.config.hostname
        );
        self.session
            .close_with(Reply::new(421, codes::SHUTTING_DOWN, text));
        None
    }
}
