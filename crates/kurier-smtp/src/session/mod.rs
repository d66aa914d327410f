//! The server side of an SMTP session as a pure state machine.
//!
//! The session owns no socket and no clock. The driver feeds it the bytes it reads
//! ([`ServerSession::receive`]) and carries out the [`Action`]s it asks for
//! ([`ServerSession::poll_action`]): write a reply, check a sender or recipient against
//! policy, verify credentials, start TLS, make a message durable, close. Questions are
//! answered with `resolve_*` calls; until then the session processes no further input, so
//! pipelined commands (RFC 2920) are answered strictly in order.
//!
//! The session decides sequence and syntax (503, 501, 500, 552, too many recipients, bad line
//! endings, TLS before AUTH, AUTH before MAIL on submission); the driver's policy decides
//! meaning (is this a local user, may this client relay). The session never answers 250 to
//! the end of a message by itself: it emits [`Action::Commit`] and waits for
//! [`ServerSession::resolve_commit`], so "durable before 250" is enforced by the types.

use std::collections::VecDeque;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{
    Command, CommandError, MAX_COMMAND_LINE, MailParams, RcptParams, parse_command,
};
use crate::data::{DataDecoder, DataDefect, Framing};
use crate::reply::{Reply, codes};

mod sasl;

/// RFC 4954 §4: a SASL response line may be up to 12288 octets.
pub const MAX_SASL_LINE: usize = 12288;

/// The reply text to HELP (RFC 5321 §4.1.1.8).
const HELP_TEXT: &str =
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH; see RFC 5321";

/// What a listener is for; it decides what a session requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Inbound MX (port 25): mail for local domains without authentication.
    Smtp,
    /// Message submission (port 587, RFC 6409): STARTTLS, then AUTH, before MAIL.
    Submission,
    /// Submission over implicit TLS (port 465, RFC 8314): AUTH before MAIL.
    Submissions,
}

impl Role {
    /// True when MAIL requires an authenticated session.
    pub fn requires_auth(self) -> bool {
        !matches!(self, Role::Smtp)
    }

    /// The role's name, as in the config file and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Smtp => "smtp",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }
}

/// Limits and capabilities of one session, from the listener's configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name, in the greeting and the EHLO reply.
    pub hostname: String,
    /// The listener's role.
    pub role: Role,
    /// True when STARTTLS can be offered (the listener has a certificate).
    pub starttls: bool,
    /// Maximum message size in octets (RFC 1870 SIZE).
    pub max_message_size: u64,
    /// Maximum recipients per message (RFC 5321 §4.5.3.1.8: at least 100).
    pub max_recipients: usize,
    /// Errors after which the session is closed with 421.
    pub max_errors: u32,
    /// Failed AUTH attempts after which the session is closed with 421.
    pub max_auth_failures: u32,
    /// NOOP, RSET, VRFY and HELP commands allowed between accepted messages (0: no
    /// limit); one more closes the session with 421, so a client cannot hold a
    /// connection slot forever with commands that carry no mail.
    pub max_junk_commands: u32,
}

/// The negotiated TLS parameters, for the Received header and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
}

/// SASL mechanisms offered (RFC 4616 PLAIN; LOGIN as used by common clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// LOGIN (draft-murchison-sasl-login).
    Login,
}

/// An accepted recipient of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address from RCPT TO.
    pub to: ForwardPath,
    /// Its ESMTP parameters (DSN NOTIFY/ORCPT).
    pub params: RcptParams,
}

/// A complete message, handed to the driver to be made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The reverse path from MAIL FROM.
    pub from: ReversePath,
    /// MAIL FROM parameters (SIZE, BODY, SMTPUTF8, RET, ENVID).
    pub params: MailParams,
    /// Accepted recipients, in order.
    pub recipients: Vec<Recipient>,
    /// The message content, unstuffed, with CRLF line ends; when the driver took data while
    /// it arrived ([`ServerSession::take_message_data`]), the start it kept and what came
    /// after the last take, with the `spilled` octets between them.
    pub body: Vec<u8>,
    /// Octets handed to the driver while the message arrived.
    pub spilled: u64,
    /// The HELO/EHLO name the client gave.
    pub helo: String,
    /// The RFC 3848 / RFC 6531 protocol name for the Received header (ESMTPSA, UTF8SMTPS…).
    pub protocol: &'static str,
    /// TLS parameters, when the session is encrypted.
    pub tls: Option<TlsInfo>,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this reply. With pipelining, the driver may gather several before flushing, and
    /// must flush before reading again.
    Send(Reply),
    /// May this sender be used? Answer with [`ServerSession::resolve`].
    CheckMail {
        /// The sender.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// May this recipient be accepted? Answer with [`ServerSession::resolve`].
    CheckRcpt {
        /// The recipient.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// Verify these credentials; answer with [`ServerSession::resolve_auth`].
    Authenticate {
        /// The mechanism used.
        mechanism: SaslMechanism,
        /// The authentication identity.
        username: String,
        /// The password.
        password: String,
        /// RFC 4616 §2: the authorization identity, when the client asked to act as someone
        /// other than `username`. Proxy authorization is not offered, so the caller refuses
        /// such an attempt as bad credentials, counted like any other failure.
        authzid: Option<String>,
    },
    /// Flush pending replies, run the TLS handshake, then call
    /// [`ServerSession::tls_established`]. The session has dropped every byte received
    /// after the STARTTLS line (RFC 3207 §4.2, CVE-2011-0411).
    StartTls,
    /// Make the message durable (fsync) and answer with [`ServerSession::resolve_commit`].
    Commit(Box<Message>),
    /// Flush pending replies and close the connection.
    Close,
}

/// The policy's answer to [`Action::CheckMail`] or [`Action::CheckRcpt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: the session replies 250.
    Accept,
    /// Refused with this reply.
    Reject(Reply),
}

/// The answer to [`Action::Authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The credentials are valid.
    Success,
    /// Wrong user or password (counts toward the failure limit).
    BadCredentials,
    /// The check could not be made now (454, not counted).
    Unavailable,
    /// Too many failures from this client recently: refused without checking (454).
    Throttled,
}

#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<Recipient>,
    /// The message being received in BDAT chunks (RFC 3030), once BDAT has been used.
    chunks: Option<DataDecoder>,
}

#[derive(Debug)]
enum Pending {
    Mail(ReversePath, MailParams),
    Rcpt(ForwardPath, RcptParams),
    Auth(String),
    Commit,
}

#[derive(Debug)]
enum Phase {
    Command,
    SaslPlain,
    SaslLoginUser,
    SaslLoginPass(String),
    Data(DataDecoder),
    /// Reading a BDAT chunk; `refusal` is the reply when the chunk is to be discarded.
    Chunk {
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    Pending(Pending),
    TlsHandshake,
    Closed,
}

/// One SMTP server session. See the module documentation.
#[derive(Debug)]
pub struct ServerSession {
    cfg: SessionConfig,
    phase: Phase,
    input: Vec<u8>,
    /// Inside an over-long line: skip to the next LF.
    discarding_line: bool,
    actions: VecDeque<Action>,
    helo: Option<(String, bool)>,
    tls: Option<TlsInfo>,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    auth_failures: u32,
    junk_commands: u32,
    /// Counts the messages whose data began (DATA accepted, or a first BDAT), so the driver
    /// can tell its spilled data from another message's.
    serial: u64,
}

impl ServerSession {
    /// A new session; the 220 greeting is the first action. Pass `tls` when the connection is
    /// already encrypted (implicit TLS, port 465).
    pub fn new(cfg: SessionConfig, tls: Option<TlsInfo>) -> Self {
        let greeting = Reply::plain(220, format!("{} ESMTP Kurier ready", cfg.hostname));
        let mut actions = VecDeque::new();
        actions.push_back(Action::Send(greeting));
        ServerSession {
            cfg,
            phase: Phase::Command,
            input: Vec::new(),
            discarding_line: false,
            actions,
            helo: None,
            tls,
            auth_user: None,
            tx: None,
            errors: 0,
            auth_failures: 0,
            junk_commands: 0,
            serial: 0,
        }
    }

    /// Bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Closed | Phase::TlsHandshake) {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next action, or `None` when the session needs more input (or is closed).
    pub fn poll_action(&mut self) -> Option<Action> {
        loop {
            if let Some(a) = self.actions.pop_front() {
                return Some(a);
            }
            if !self.step() {
                return None;
            }
        }
    }

    /// Answers [`Action::CheckMail`] or [`Action::CheckRcpt`].
    pub fn resolve(&mut self, verdict: Verdict) {
        let pending = match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::Pending(p @ (Pending::Mail(..) | Pending::Rcpt(..))) => p,
            other => {
                self.phase = other;
                return;
            }
        };
        match (pending, verdict) {
            (Pending::Mail(from, params), Verdict::Accept) => {
                let text = format!("Sender {from} OK");
                self.tx = Some(Transaction {
                    from,
                    params,
                    rcpts: Vec::new(),
                    chunks: None,
                });
                self.send(Reply::new(250, codes::SENDER_OK, text));
            }
            (Pending::Rcpt(to, params), Verdict::Accept) => {
                let text = format!("Recipient {to} OK");
                if let Some(tx) = self.tx.as_mut() {
                    tx.rcpts.push(Recipient { to, params });
                }
                self.send(Reply::new(250, codes::RCPT_OK, text));
            }
            (_, Verdict::Reject(reply)) => self.refuse(reply),
            (Pending::Auth(_) | Pending::Commit, Verdict::Accept) => {}
        }
    }

    /// Answers [`Action::Authenticate`].
    pub fn resolve_auth(&mut self, verdict: AuthVerdict) {
        let Phase::Pending(Pending::Auth(user)) =
            std::mem::replace(&mut self.phase, Phase::Command)
        else {
            return;
        };
        match verdict {
            AuthVerdict::Success => {
                self.auth_user = Some(user);
                self.send(Reply::new(235, codes::AUTH_OK, "Authentication successful"));
            }
            AuthVerdict::BadCredentials => {
                self.auth_failures += 1;
                self.send(Reply::new(
                    535,
                    codes::BAD_CREDENTIALS,
                    "Authentication credentials invalid",
                ));
                if self.auth_failures >= self.cfg.max_auth_failures {
                    self.close_with(Reply::new(
                        421,
                        codes::SECURITY_TEMP,
                        "Too many failed authentication attempts, closing connection",
                    ));
                }
            }
            AuthVerdict::Unavailable => self.send(Reply::new(
                454,
                codes::SECURITY_TEMP,
                "Temporary authentication failure, try again later",
            )),
            AuthVerdict::Throttled => self.send(Reply::new(
                454,
                codes::SECURITY_TEMP,
                "Too many failed authentications from your address, try again later",
            )),
        }
    }

    /// Answers [`Action::Commit`]: the queue id once the message is durable, or the reply
    /// explaining why it is not (451 4.3.0, 452 4.3.1…).
    pub fn resolve_commit(&mut self, result: Result<String, Reply>) {
        if !matches!(self.phase, Phase::Pending(Pending::Commit)) {
            return;
        }
        self.phase = Phase::Command;
        self.tx = None;
        match result {
            Ok(id) => {
                self.junk_commands = 0;
                self.send(Reply::new(250, codes::OK, format!("Ok: queued as {id}")));
            }
            Err(reply) => self.send(reply),
        }
    }

    /// The TLS handshake after STARTTLS succeeded. The client must greet again (RFC 3207 §4.2).
    pub fn tls_established(&mut self, info: TlsInfo) {
        if matches!(self.phase, Phase::TlsHandshake) {
            self.tls = Some(info);
            self.phase = Phase::Command;
        }
    }

    /// Ends the session with this reply (timeouts, shutdown, connection limits).
    pub fn close_with(&mut self, reply: Reply) {
        self.actions.push_back(Action::Send(reply));
        self.actions.push_back(Action::Close);
        self.phase = Phase::Closed;
        self.input = Vec::new();
    }

    /// True when no transaction is in progress: a shutdown may close the session now.
    pub fn is_idle(&self) -> bool {
        self.tx.is_none() && matches!(self.phase, Phase::Command)
    }

    /// True while message data is expected (the driver applies the data timeout).
    pub fn in_message_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Chunk { .. })
    }

    /// The message whose data is being received now, or was last: a number that changes
    /// with each message's first octet of data.
    pub fn message_serial(&self) -> u64 {
        self.serial
    }

    /// Message data decoded past the first `keep` octets, once more than `at_least` of it
    /// is held: the driver writes it to disk while the message arrives (see
    /// [`DataDecoder::take_beyond`]), and [`Message::spilled`] says how much it had in all.
    pub fn take_message_data(&mut self, keep: usize, at_least: usize) -> Option<Vec<u8>> {
        let decoder = match &mut self.phase {
            Phase::Data(d) => d,
            _ => self.tx.as_mut().and_then(|tx| tx.chunks.as_mut())?,
        };
        if decoder.held() <= keep.saturating_add(at_least) {
            return None;
        }
        let taken = decoder.take_beyond(keep);
        (!taken.is_empty()).then_some(taken)
    }

    /// Octets the session holds for the current message: the data decoded so far (DATA, or
    /// BDAT chunks until the last) and input not yet decoded. The driver reserves memory
    /// for it.
    pub fn message_bytes(&self) -> usize {
        let decoded = match &self.phase {
            Phase::Data(d) => d.held(),
            _ => self
                .tx
                .as_ref()
                .and_then(|tx| tx.chunks.as_ref())
                .map_or(0, |d| d.held()),
        };
        decoded + self.input.len()
    }

    /// The size the client declared for the current message (RFC 1870 `SIZE=`), if any.
    pub fn declared_size(&self) -> Option<u64> {
        self.tx.as_ref().and_then(|tx| tx.params.size)
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed) && self.actions.is_empty()
    }

    /// The HELO/EHLO name, if given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|(n, _)| n.as_str())
    }

    /// The negotiated TLS parameters.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The authenticated user.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    fn send(&mut self, reply: Reply) {
        self.actions.push_back(Action::Send(reply));
    }

    /// A refusal caused by the client: counts toward the error limit (RFC 5321 §4.3.2 lets a
    /// server close after repeated errors; it stops dictionary and cross-protocol attacks).
    fn refuse(&mut self, reply: Reply) {
        let permanent = reply.is_permanent();
        self.send(reply);
        if permanent {
            self.errors += 1;
            if self.errors >= self.cfg.max_errors {
                self.close_with(Reply::new(
                    421,
                    codes::SECURITY_TEMP,
                    "Too many errors, closing connection",
                ));
            }
        }
    }

    /// Makes progress on buffered input; false when nothing more can be done now.
    fn step(&mut self) -> bool {
        match self.phase {
            Phase::Command | Phase::SaslPlain | Phase::SaslLoginUser | Phase::SaslLoginPass(_) => {
                self.step_line()
            }
            Phase::Data(_) => self.step_data(),
            Phase::Chunk { .. } => self.step_chunk(),
            Phase::Pending(_) | Phase::TlsHandshake | Phase::Closed => false,
        }
    }

    fn line_limit(&self) -> usize {
        match self.phase {
            Phase::Command => MAX_COMMAND_LINE,
            _ => MAX_SASL_LINE,
        }
    }

    /// Takes one CRLF-terminated line from the input and handles it.
    fn step_line(&mut self) -> bool {
        let limit = self.line_limit();
        let Some(lf) = self.input.iter().position(|&b| b == b'\n') else {
            if self.input.len() > limit {
                // RFC 5321 §4.5.3.1.10 "500 Line too long"; the rest of the line is skipped.
                self.input.clear();
                if !self.discarding_line {
                    self.discarding_line = true;
                    self.refuse(line_too_long());
                    return true;
                }
            }
            return false;
        };
        let raw: Vec<u8> = self.input.drain(..=lf).collect();
        if std::mem::take(&mut self.discarding_line) {
            return true;
        }
        let line = &raw[..raw.len() - 1];
        let Some(line) = line.strip_suffix(b"\r") else {
            // RFC 5321 §2.3.8: only CRLF ends a line. Never treat a bare LF as one.
            self.refuse(Reply::new(
                500,
                codes::SYNTAX,
                "Bare LF received; SMTP command lines must end with CRLF",
            ));
            return true;
        };
        if line.contains(&b'\r') {
            self.refuse(Reply::new(
                500,
                codes::SYNTAX,
                "Bare CR received; SMTP command lines must end with CRLF",
            ));
            return true;
        }
        if raw.len() > limit {
            self.refuse(line_too_long());
            return true;
        }
        let line = line.to_vec();
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::Command => match parse_command(&line) {
                Ok(cmd) => self.command(cmd),
                Err(CommandError::Http) => self.close_with(CommandError::Http.reply()),
                Err(e) => self.refuse(e.reply()),
            },
            Phase::SaslPlain => self.sasl_plain(&line),
            Phase::SaslLoginUser => self.sasl_login_user(&line),
            Phase::SaslLoginPass(user) => self.sasl_login_pass(user, &line),
            other => self.phase = other,
        }
        true
    }

    fn step_data(&mut self) -> bool {
        let Phase::Data(decoder) = &mut self.phase else {
            return false;
        };
        if self.input.is_empty() {
            return false;
        }
        let fed = decoder.feed(&self.input);
        self.input.drain(..fed.consumed);
        if fed.complete
            && let Phase::Data(decoder) = std::mem::replace(&mut self.phase, Phase::Command)
        {
            let spilled = decoder.taken();
            self.message_complete(decoder.finish(), spilled);
        }
        true
    }

    fn step_chunk(&mut self) -> bool {
        let Phase::Chunk { remaining, .. } = &mut self.phase else {
            return false;
        };
        if *remaining > 0 {
            if self.input.is_empty() {
                return false;
            }
            let take = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(self.input.len());
            *remaining -= take as u64;
            if let Some(decoder) = self.tx.as_mut().and_then(|tx| tx.chunks.as_mut()) {
                decoder.feed(&self.input[..take]);
            }
            self.input.drain(..take);
            if *remaining > 0 {
                return true;
            }
        }
        let Phase::Chunk { last, refusal, .. } = std::mem::replace(&mut self.phase, Phase::Command)
        else {
            return false;
        };
        if let Some(reply) = refusal {
            self.refuse(reply);
            return true;
        }
        let defect = self
            .tx
            .as_ref()
            .and_then(|tx| tx.chunks.as_ref())
            .and_then(|d| d.defect());
        if let Some(defect) = defect {
            // RFC 3030 §2: a failed chunk fails the transaction.
            self.tx = None;
            self.send(defect.reply(self.cfg.max_message_size));
        } else if last {
            let decoder = self.tx.as_mut().and_then(|tx| tx.chunks.take());
            if let Some(d) = decoder {
                let spilled = d.taken();
                self.message_complete(d.finish(), spilled);
            }
        } else {
            let size = self
                .tx
                .as_ref()
                .and_then(|tx| tx.chunks.as_ref())
                .map_or(0, |d| d.size());
            self.send(Reply::new(
                250,
                codes::OK,
                format!("{size} octets received"),
            ));
        }
        true
    }

    fn message_complete(&mut self, result: Result<Vec<u8>, DataDefect>, spilled: u64) {
        let body = match result {
            Ok(body) => body,
            Err(defect) => {
                self.tx = None;
                self.send(defect.reply(self.cfg.max_message_size));
                return;
            }
        };
        let Some(tx) = self.tx.take() else {
            return;
        };
        let message = Message {
            protocol: self.protocol(tx.params.smtputf8),
            from: tx.from,
            params: tx.params,
            recipients: tx.rcpts,
            body,
            spilled,
            helo: self.helo().unwrap_or_default().to_string(),
            tls: self.tls.clone(),
            auth_user: self.auth_user.clone(),
        };
        self.phase = Phase::Pending(Pending::Commit);
        self.actions.push_back(Action::Commit(Box::new(message)));
    }

    /// RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 §3.7.3 (UTF8SMTP…) names.
    fn protocol(&self, utf8: bool) -> &'static str {
        let esmtp = self.helo.as_ref().is_some_and(|(_, e)| *e);
        match (utf8, esmtp, self.tls.is_some(), self.auth_user.is_some()) {
            (true, _, true, true) => "UTF8SMTPSA",
            (true, _, true, false) => "UTF8SMTPS",
            (true, _, false, true) => "UTF8SMTPA",
            (true, _, false, false) => "UTF8SMTP",
            (false, true, true, true) => "ESMTPSA",
            (false, true, true, false) => "ESMTPS",
            (false, true, false, true) => "ESMTPA",
            (false, true, false, false) => "ESMTP",
            (false, false, _, _) => "SMTP",
        }
    }

    fn ehlo_reply(&self, name: &str) -> Reply {
        let mut lines = vec![
            format!("{} greets {}", self.cfg.hostname, name),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
            "DSN".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.cfg.starttls && self.tls.is_none() {
            lines.push("STARTTLS".to_string());
        }
        // RFC 4954 §4 and RFC 8314: passwords only over an encrypted connection.
        if self.tls.is_some() && self.auth_user.is_none() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        Reply::multiline(250, lines)
    }

    /// Counts a command that carries no mail; true (and the session closing) when it is
    /// one over the limit.
    fn junk(&mut self) -> bool {
        self.junk_commands = self.junk_commands.saturating_add(1);
        let over =
            self.cfg.max_junk_commands != 0 && self.junk_commands > self.cfg.max_junk_commands;
        if over {
            self.close_with(Reply::new(
                421,
                codes::SECURITY_TEMP,
                "Too many commands without mail, closing connection",
            ));
        }
        over
    }

    fn command(&mut self, cmd: Command) {
        let junk = matches!(
            cmd,
            Command::Noop | Command::Rset | Command::Vrfy(_) | Command::Help
        );
        if junk && self.junk() {
            return;
        }
        match cmd {
            Command::Helo(name) => {
                self.tx = None;
                self.send(Reply::plain(250, self.cfg.hostname.clone()));
                self.helo = Some((name, false));
            }
            Command::Ehlo(name) => {
                self.tx = None;
                let reply = self.ehlo_reply(&name);
                self.send(reply);
                self.helo = Some((name, true));
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.tx = None;
                self.send(Reply::new(250, codes::OK, "Ok"));
            }
            Command::Noop => self.send(Reply::new(250, codes::OK, "Ok")),
            Command::Quit => {
                let text = format!("{} closing connection", self.cfg.hostname);
                self.close_with(Reply::new(221, codes::OK, text));
            }
            // RFC 5321 §3.5.3: 252 when the server will not verify but accepts the address.
            Command::Vrfy(_) => self.send(Reply::new(
                252,
                codes::PROTOCOL_OK,
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => {
                self.refuse(Reply::new(502, codes::BAD_SEQUENCE, "EXPN not available"))
            }
            Command::Help => self.send(Reply::new(214, codes::OK, HELP_TEXT)),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
            Command::NotImplemented(verb) => self.refuse(Reply::new(
                502,
                codes::BAD_SEQUENCE,
                format!("{verb} not implemented"),
            )),
        }
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) {
        if self.helo.is_none() {
            return self.refuse(bad_sequence("Send HELO or EHLO first"));
        }
        if self.tx.is_some() {
            return self.refuse(bad_sequence(
                "Nested MAIL command: sender already given (use RSET)",
            ));
        }
        if self.cfg.role.requires_auth() && self.auth_user.is_none() {
            let text = if self.tls.is_none() {
                "Must issue a STARTTLS command first, then authenticate"
            } else {
                "Authentication required"
            };
            return self.refuse(Reply::new(530, codes::SECURITY, text));
        }
        // RFC 1870 §6: a declared size over the limit is refused at MAIL time.
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return self.refuse(Reply::new(
                552,
                codes::TOO_BIG,
                format!(
                    "Message size exceeds fixed maximum message size of {} octets",
                    self.cfg.max_message_size
                ),
            ));
        }
        if !params.smtputf8 && from.mailbox().is_some_and(|m| !m.is_ascii()) {
            return self.refuse(need_smtputf8());
        }
        self.phase = Phase::Pending(Pending::Mail(from.clone(), params.clone()));
        self.actions.push_back(Action::CheckMail { from, params });
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams) {
        let Some(tx) = self.tx.as_ref() else {
            return self.refuse(bad_sequence("Need MAIL command before RCPT"));
        };
        if tx.chunks.is_some() {
            return self.refuse(bad_sequence("RCPT not allowed after BDAT"));
        }
        // RFC 5321 §4.5.3.1.10: 452 for too many recipients; the client retries the rest.
        if tx.rcpts.len() >= self.cfg.max_recipients {
            return self.send(Reply::new(
                452,
                codes::TOO_MANY_RCPTS,
                "Too many recipients",
            ));
        }
        let utf8 = tx.params.smtputf8;
        if let ForwardPath::Mailbox(m) = &to
            && !utf8
            && !m.is_ascii()
        {
            return self.refuse(need_smtputf8());
        }
        self.phase = Phase::Pending(Pending::Rcpt(to.clone(), params.clone()));
        self.actions.push_back(Action::CheckRcpt { to, params });
    }

    fn data(&mut self) {
        match &self.tx {
            None => self.refuse(bad_sequence("Need MAIL command before DATA")),
            Some(tx) if tx.chunks.is_some() => {
                self.refuse(bad_sequence("DATA not allowed after BDAT"))
            }
            Some(tx) if tx.rcpts.is_empty() => {
                self.refuse(Reply::new(554, codes::BAD_SEQUENCE, "No valid recipients"))
            }
            Some(_) => {
                self.send(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
                self.phase = Phase::Data(DataDecoder::new(Framing::Dot, self.cfg.max_message_size));
                self.serial += 1;
            }
        }
    }

    /// RFC 3030 §2: the chunk's octets follow the command line and must be read whatever the
    /// reply, so a refused BDAT still consumes its chunk.
    fn bdat(&mut self, size: u64, last: bool) {
        let refusal = match self.tx.as_mut() {
            None => Some(bad_sequence("Need MAIL command before BDAT")),
            Some(tx) if tx.rcpts.is_empty() => {
                Some(Reply::new(554, codes::BAD_SEQUENCE, "No valid recipients"))
            }
            Some(tx) => {
                if tx.chunks.is_none() {
                    tx.chunks = Some(DataDecoder::new(
                        Framing::Chunked,
                        self.cfg.max_message_size,
                    ));
                    self.serial += 1;
                }
                None
            }
        };
        self.phase = Phase::Chunk {
            remaining: size,
            last,
            refusal,
        };
    }

    fn starttls(&mut self) {
        if self.tls.is_some() {
            return self.refuse(bad_sequence("TLS already active"));
        }
        if !self.cfg.starttls {
            return self.refuse(Reply::new(
                502,
                codes::BAD_SEQUENCE,
                "STARTTLS not available",
            ));
        }
        self.send(Reply::new(220, codes::OK, "Ready to start TLS"));
        // RFC 3207 §4.2: forget everything learned before TLS, and drop any plaintext the
        // client pipelined after STARTTLS (CVE-2011-0411).
        self.input.clear();
        self.helo = None;
        self.tx = None;
        self.phase = Phase::TlsHandshake;
        self.actions.push_back(Action::StartTls);
    }
}

fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, codes::BAD_SEQUENCE, text)
}

fn line_too_long() -> Reply {
    Reply::new(
        500,
        codes::SYNTAX,
        "Line too long: command lines are limited to 512 octets (RFC 5321 section 4.5.3.1.4)",
    )
}

fn need_smtputf8() -> Reply {
    Reply::new(
        553,
        codes::NEED_SMTPUTF8,
        "Non-ASCII address requires the SMTPUTF8 parameter (RFC 6531)",
    )
}
