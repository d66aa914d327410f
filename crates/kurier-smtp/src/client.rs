//! The client side of SMTP, as used for outbound delivery, as a pure state machine.
//!
//! Like the server session, it owns no socket: the driver feeds it the bytes the server sends
//! ([`ClientSession::receive`]) and carries out its [`ClientAction`]s (write these command
//! bytes, start TLS, write the message body). One session can carry several transactions
//! (connection reuse); each yields one [`TransactionResult`] with an outcome per recipient, so
//! a DSN can quote exactly what the remote server said about each address.
//!
//! Behaviour: EHLO with a HELO fallback (RFC 5321 §3.2); STARTTLS whenever offered unless the
//! policy says never, mandatory under [`TlsPolicy::Required`] (RFC 3207); AUTH PLAIN or LOGIN
//! only over TLS; PIPELINING when offered (RFC 2920); SIZE, BODY=8BITMIME, SMTPUTF8 and the DSN
//! parameters (RFC 3461) when the server offers them. A message the next hop cannot take as it
//! is fails permanently with the reason: 8-bit data without 8BITMIME (5.6.3), UTF-8 addresses
//! without SMTPUTF8 (5.6.7), more than the server's SIZE (5.3.4).

use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::address::{Mailbox, ReversePath};
use crate::command::{Notify, OriginalRecipient, Ret, encode_xtext};
use crate::reply::{EnhancedCode, Reply, codes};

/// Longest reply line accepted from a server (RFC 5321 §4.5.3.1.5 says 512; be lenient).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply.
const MAX_REPLY_LINES: usize = 200;

/// When to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never (the route says plain, or TLS is already up: implicit TLS).
    Never,
    /// When the server offers it (the default for MX delivery).
    Opportunistic,
    /// The server must offer it and the handshake must succeed.
    Required,
}

/// Credentials for a smarthost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// How the session behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name for EHLO/HELO.
    pub helo: String,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// True when the connection is already encrypted (implicit TLS).
    pub tls_active: bool,
    /// AUTH credentials (smarthosts).
    pub auth: Option<Credentials>,
}

/// One recipient of an outbound transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecipient {
    /// The address.
    pub address: Mailbox,
    /// RFC 3461 NOTIFY.
    pub notify: Option<Notify>,
    /// RFC 3461 ORCPT.
    pub orcpt: Option<OriginalRecipient>,
}

/// One outbound transaction's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundTransaction {
    /// The reverse path (`<>` for reports).
    pub from: ReversePath,
    /// Recipients, all for this next hop.
    pub recipients: Vec<OutboundRecipient>,
    /// Message size in octets.
    pub size: u64,
    /// The message has 8-bit content (BODY=8BITMIME).
    pub eight_bit: bool,
    /// Addresses or headers need SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3461 RET.
    pub ret: Option<Ret>,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server answered EHLO (not only HELO).
    pub esmtp: bool,
    /// PIPELINING.
    pub pipelining: bool,
    /// SIZE, with its limit (0 = no limit given).
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eight_bit_mime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// DSN.
    pub dsn: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// AUTH PLAIN.
    pub auth_plain: bool,
    /// AUTH LOGIN.
    pub auth_login: bool,
    /// The name the server gives for itself in the first line of its EHLO reply (RFC 5321
    /// §4.1.1.1), lower case: a client that sees its own name has reached itself (a loop).
    pub server_name: String,
}

impl Capabilities {
    /// Parses the lines of an EHLO reply (the first line is the greeting).
    pub fn parse(reply: &Reply) -> Capabilities {
        let server_name = reply
            .lines
            .first()
            .and_then(|l| l.split_ascii_whitespace().next())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut c = Capabilities {
            esmtp: true,
            server_name,
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                "AUTH" => {
                    for m in words {
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => c.auth_plain = true,
                            "LOGIN" => c.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }
}

/// Where in the session something happened, for DSNs ("in reply to RCPT TO").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The greeting.
    Greeting,
    /// EHLO/HELO.
    Ehlo,
    /// STARTTLS.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA.
    Data,
    /// The end of the message data.
    Message,
    /// Before sending: the server cannot take this message (capabilities).
    Capabilities,
}

impl Stage {
    /// The command name for diagnostics.
    pub fn command(self) -> &'static str {
        match self {
            Stage::Greeting => "connection greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Message => "end of data",
            Stage::Capabilities => "capability check",
        }
    }
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took responsibility for the message (its final reply).
    Accepted(Reply),
    /// Refused, with the reply and the stage that refused it.
    Rejected(Reply, Stage),
}

/// The result of one transaction: one outcome per recipient, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// Per-recipient outcomes.
    pub rcpts: Vec<RcptOutcome>,
}

/// A failure that ends the session (the current transaction, if any, did not complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    /// Where.
    pub stage: Stage,
    /// The server's reply, when there was one.
    pub reply: Option<Reply>,
    /// What went wrong, for logs and DSNs.
    pub message: String,
}

impl SessionError {
    /// True when retrying with the same server makes no sense and the failure is final for the
    /// recipients (a 5xx after the greeting and EHLO, or a capability mismatch).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.stage,
            Stage::Mail | Stage::Rcpt | Stage::Data | Stage::Message
        ) && self.reply.as_ref().is_some_and(Reply::is_permanent)
    }

    /// True when the next MX host should be tried (RFC 5321 §5.1: failures before a
    /// transaction starts, at greeting, EHLO or TLS).
    pub fn try_next_host(&self) -> bool {
        matches!(self.stage, Stage::Greeting | Stage::Ehlo | Stage::StartTls)
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Run the TLS handshake, then call [`ClientSession::tls_established`] (or drop the
    /// connection if it fails).
    StartTls,
    /// Write the message body, dot-stuffed and terminated (see [`crate::data::dot_stuff`]).
    SendBody,
    /// The session is ready for a transaction ([`ClientSession::send`]) or [`ClientSession::quit`].
    Ready,
    /// A transaction finished.
    Done(TransactionResult),
    /// The session failed and must be closed.
    Failed(SessionError),
    /// The session ended (after QUIT).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass,
    AuthDone,
    Mail,
    Rcpt(usize),
    Data,
    Message,
    Rset,
    Quit,
}

#[derive(Debug)]
struct Transaction {
    outcomes: Vec<Option<RcptOutcome>>,
    mail_failed: Option<Reply>,
    needs_rset: bool,
}

/// One outbound SMTP session. See the module documentation.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    caps: Capabilities,
    tls_active: bool,
    input: Vec<u8>,
    reply_lines: Vec<String>,
    expects: VecDeque<Expect>,
    /// Commands waiting to be sent one by one (no PIPELINING).
    queued: VecDeque<(Vec<u8>, Expect)>,
    actions: VecDeque<ClientAction>,
    tx: Option<Transaction>,
    failed: bool,
    last_reply: Option<Reply>,
}

impl ClientSession {
    /// A new session, waiting for the server's greeting.
    pub fn new(cfg: ClientConfig) -> Self {
        let tls_active = cfg.tls_active;
        ClientSession {
            cfg,
            caps: Capabilities::default(),
            tls_active,
            input: Vec::new(),
            reply_lines: Vec::new(),
            expects: VecDeque::from([Expect::Greeting]),
            queued: VecDeque::new(),
            actions: VecDeque::new(),
            tx: None,
            failed: false,
            last_reply: None,
        }
    }

    /// The server's capabilities (after EHLO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// True when the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// The last reply the server sent (for logs).
    pub fn last_reply(&self) -> Option<&Reply> {
        self.last_reply.as_ref()
    }

    /// Bytes from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The connection closed (EOF) or broke: the session fails unless it was quitting.
    pub fn connection_lost(&mut self, why: &str) {
        if self.failed {
            return;
        }
        match self.expects.front() {
            Some(Expect::Quit) | None => self.actions.push_back(ClientAction::Closed),
            Some(e) => {
                let stage = stage_of(*e);
                self.fail(
                    stage,
                    None,
                    format!("connection lost during {}: {why}", stage.command()),
                );
            }
        }
    }

    /// The next action, or `None` when more input is needed.
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        loop {
            if let Some(a) = self.actions.pop_front() {
                return Some(a);
            }
            if self.failed {
                return None;
            }
            match self.next_reply() {
                Some(reply) => self.handle(reply),
                // A parse failure queues its own action; otherwise more input is needed.
                None if self.actions.is_empty() => return None,
                None => {}
            }
        }
    }

    /// The TLS handshake after STARTTLS succeeded: greet again (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        self.tls_active = true;
        self.caps = Capabilities::default();
        self.input.clear();
        self.command(
            format!("EHLO {}\r\n", self.cfg.helo).into_bytes(),
            Expect::Ehlo,
        );
    }

    /// Starts a transaction. Call only after [`ClientAction::Ready`].
    pub fn send(&mut self, tx: &OutboundTransaction) {
        let n = tx.recipients.len();
        // What the server cannot take is refused here, before anything is sent.
        let refusal = if tx.smtputf8 && !self.caps.smtputf8 {
            Some(Reply::new(
                553,
                codes::NEED_SMTPUTF8,
                "Remote server does not support SMTPUTF8, which this message needs (RFC 6531)",
            ))
        } else if tx.eight_bit && !self.caps.eight_bit_mime {
            Some(Reply::new(
                554,
                EnhancedCode(5, 6, 3),
                "Conversion required: remote server does not accept 8-bit data (no 8BITMIME)",
            ))
        } else if self.caps.size.is_some_and(|max| max > 0 && tx.size > max) {
            Some(Reply::new(
                552,
                codes::TOO_BIG,
                format!(
                    "Message of {} octets exceeds the remote server's limit",
                    tx.size
                ),
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            let rcpts = vec![RcptOutcome::Rejected(reply, Stage::Capabilities); n];
            self.actions
                .push_back(ClientAction::Done(TransactionResult { rcpts }));
            self.actions.push_back(ClientAction::Ready);
            return;
        }
        self.tx = Some(Transaction {
            outcomes: vec![None; n],
            mail_failed: None,
            needs_rset: false,
        });
        let mut mail = format!("MAIL FROM:{}", tx.from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", tx.size));
        }
        if tx.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if tx.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            match tx.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(id) = &tx.envid {
                mail.push_str(&format!(" ENVID={}", encode_xtext(id)));
            }
        }
        mail.push_str("\r\n");
        let mut commands = vec![(mail.into_bytes(), Expect::Mail)];
        for (i, r) in tx.recipients.iter().enumerate() {
            let mut rcpt = format!("RCPT TO:<{}>", r.address);
            if self.caps.dsn {
                if let Some(n) = r.notify {
                    let mut items = Vec::new();
                    if n.never {
                        items.push("NEVER");
                    }
                    if n.success {
                        items.push("SUCCESS");
                    }
                    if n.failure {
                        items.push("FAILURE");
                    }
                    if n.delay {
                        items.push("DELAY");
                    }
                    rcpt.push_str(&format!(" NOTIFY={}", items.join(",")));
                }
                if let Some(o) = &r.orcpt {
                    rcpt.push_str(&format!(
                        " ORCPT={};{}",
                        o.addr_type,
                        encode_xtext(&o.address)
                    ));
                }
            }
            rcpt.push_str("\r\n");
            commands.push((rcpt.into_bytes(), Expect::Rcpt(i)));
        }
        commands.push((b"DATA\r\n".to_vec(), Expect::Data));
        if self.caps.pipelining {
            // RFC 2920 §3.1: MAIL, the RCPTs and DATA go in one group; DATA ends it.
            let mut bytes = Vec::new();
            for (c, e) in commands {
                bytes.extend_from_slice(&c);
                self.expects.push_back(e);
            }
            self.actions.push_back(ClientAction::Send(bytes));
        } else {
            let mut it = commands.into_iter();
            if let Some((c, e)) = it.next() {
                self.command(c, e);
            }
            self.queued.extend(it);
        }
    }

    /// Ends the session politely.
    pub fn quit(&mut self) {
        self.command(b"QUIT\r\n".to_vec(), Expect::Quit);
    }

    fn command(&mut self, bytes: Vec<u8>, expect: Expect) {
        self.expects.push_back(expect);
        self.actions.push_back(ClientAction::Send(bytes));
    }

    fn fail(&mut self, stage: Stage, reply: Option<Reply>, message: String) {
        self.failed = true;
        self.actions.push_back(ClientAction::Failed(SessionError {
            stage,
            reply,
            message,
        }));
    }

    /// Takes one complete reply from the input, if there is one.
    fn next_reply(&mut self) -> Option<Reply> {
        loop {
            let Some(lf) = self.input.iter().position(|&b| b == b'\n') else {
                if self.input.len() > MAX_REPLY_LINE {
                    self.fail(
                        Stage::Greeting,
                        None,
                        "server sent an over-long reply line".into(),
                    );
                }
                return None;
            };
            let raw: Vec<u8> = self.input.drain(..=lf).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let bytes = line.as_bytes();
            let valid = bytes.len() >= 3
                && bytes[..3].iter().all(u8::is_ascii_digit)
                && (bytes.len() == 3 || bytes[3] == b' ' || bytes[3] == b'-');
            if !valid || line.len() > MAX_REPLY_LINE || self.reply_lines.len() > MAX_REPLY_LINES {
                let stage = self
                    .expects
                    .front()
                    .map_or(Stage::Greeting, |e| stage_of(*e));
                self.fail(
                    stage,
                    None,
                    format!("server sent a malformed reply: {line:?}"),
                );
                return None;
            }
            let last = bytes.len() == 3 || bytes[3] == b' ';
            self.reply_lines.push(line);
            if last {
                let lines = std::mem::take(&mut self.reply_lines);
                return Some(parse_reply(&lines));
            }
        }
    }

    fn handle(&mut self, reply: Reply) {
        self.last_reply = Some(reply.clone());
        let Some(expect) = self.expects.pop_front() else {
            self.fail(
                Stage::Greeting,
                Some(reply),
                "server sent a reply nobody asked for".into(),
            );
            return;
        };
        let ok = reply.code / 100 == 2;
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.command(
                    format!("EHLO {}\r\n", self.cfg.helo).into_bytes(),
                    Expect::Ehlo,
                );
            }
            Expect::Greeting => self.fail(
                Stage::Greeting,
                Some(reply),
                "server refused the connection".into(),
            ),
            Expect::Ehlo if ok => {
                self.caps = Capabilities::parse(&reply);
                self.after_greeting();
            }
            Expect::Ehlo if !self.tls_active && self.cfg.tls != TlsPolicy::Required => {
                // RFC 5321 §3.2: fall back to HELO for servers without extensions.
                self.command(
                    format!("HELO {}\r\n", self.cfg.helo).into_bytes(),
                    Expect::Helo,
                );
            }
            Expect::Ehlo => self.fail(Stage::Ehlo, Some(reply), "server refused EHLO".into()),
            Expect::Helo if ok => {
                self.caps = Capabilities::default();
                self.after_greeting();
            }
            Expect::Helo => self.fail(
                Stage::Ehlo,
                Some(reply),
                "server refused EHLO and HELO".into(),
            ),
            Expect::StartTls if reply.code == 220 => self.actions.push_back(ClientAction::StartTls),
            Expect::StartTls if self.cfg.tls == TlsPolicy::Required => {
                self.fail(
                    Stage::StartTls,
                    Some(reply),
                    "STARTTLS refused and TLS is required".into(),
                );
            }
            Expect::StartTls => {
                // Opportunistic: carry on in plaintext on the same connection.
                self.caps.starttls = false;
                self.after_tls_decision();
            }
            Expect::AuthPlain | Expect::AuthDone if reply.code == 235 => self.ready(),
            Expect::AuthLoginUser if reply.code == 334 => {
                let user = self
                    .cfg
                    .auth
                    .as_ref()
                    .map(|c| c.username.clone())
                    .unwrap_or_default();
                self.command(
                    format!("{}\r\n", BASE64.encode(user)).into_bytes(),
                    Expect::AuthLoginPass,
                );
            }
            Expect::AuthLoginPass if reply.code == 334 => {
                let pass = self
                    .cfg
                    .auth
                    .as_ref()
                    .map(|c| c.password.clone())
                    .unwrap_or_default();
                self.command(
                    format!("{}\r\n", BASE64.encode(pass)).into_bytes(),
                    Expect::AuthDone,
                );
            }
            Expect::AuthPlain
            | Expect::AuthLoginUser
            | Expect::AuthLoginPass
            | Expect::AuthDone => {
                self.fail(Stage::Auth, Some(reply), "authentication failed".into());
            }
            Expect::Mail => {
                if let Some(tx) = self.tx.as_mut()
                    && !ok
                {
                    tx.mail_failed = Some(reply);
                }
                self.send_next_queued();
            }
            Expect::Rcpt(i) => {
                if let Some(tx) = self.tx.as_mut() {
                    if let Some(failed) = &tx.mail_failed {
                        tx.outcomes[i] = Some(RcptOutcome::Rejected(failed.clone(), Stage::Mail));
                    } else if !ok {
                        tx.outcomes[i] = Some(RcptOutcome::Rejected(reply, Stage::Rcpt));
                    }
                }
                self.send_next_queued();
            }
            Expect::Data => self.data_reply(reply),
            Expect::Message => {
                if let Some(tx) = self.tx.as_mut() {
                    for o in tx.outcomes.iter_mut().filter(|o| o.is_none()) {
                        *o = Some(if ok {
                            RcptOutcome::Accepted(reply.clone())
                        } else {
                            RcptOutcome::Rejected(reply.clone(), Stage::Message)
                        });
                    }
                }
                self.finish_transaction();
            }
            Expect::Rset => self.ready(),
            Expect::Quit => self.actions.push_back(ClientAction::Closed),
        }
    }

    fn after_greeting(&mut self) {
        let want_tls = !self.tls_active && self.cfg.tls != TlsPolicy::Never;
        if want_tls && self.caps.starttls {
            self.command(b"STARTTLS\r\n".to_vec(), Expect::StartTls);
        } else if want_tls && self.cfg.tls == TlsPolicy::Required {
            self.fail(
                Stage::StartTls,
                None,
                "server does not offer STARTTLS and TLS is required".into(),
            );
        } else {
            self.after_tls_decision();
        }
    }

    fn after_tls_decision(&mut self) {
        let Some(creds) = self.cfg.auth.clone() else {
            return self.ready();
        };
        if !self.tls_active {
            return self.fail(
                Stage::Auth,
                None,
                "refusing to send credentials without TLS".into(),
            );
        }
        if self.caps.auth_plain {
            let token = BASE64.encode(format!("\0{}\0{}", creds.username, creds.password));
            self.command(
                format!("AUTH PLAIN {token}\r\n").into_bytes(),
                Expect::AuthPlain,
            );
        } else if self.caps.auth_login {
            self.command(b"AUTH LOGIN\r\n".to_vec(), Expect::AuthLoginUser);
        } else {
            self.fail(
                Stage::Auth,
                None,
                "server offers neither AUTH PLAIN nor AUTH LOGIN".into(),
            );
        }
    }

    fn ready(&mut self) {
        self.actions.push_back(ClientAction::Ready);
    }

    fn send_next_queued(&mut self) {
        if let Some((c, e)) = self.queued.pop_front() {
            self.command(c, e);
        }
    }

    fn data_reply(&mut self, reply: Reply) {
        let Some(tx) = self.tx.as_mut() else { return };
        let any_accepted = tx.outcomes.iter().any(Option::is_none);
        if reply.code == 354 && any_accepted {
            self.actions.push_back(ClientAction::SendBody);
            self.expects.push_back(Expect::Message);
            return;
        }
        if reply.code == 354 {
            // Every recipient was refused but the server still wants data (RFC 2920 §3.1):
            // send an empty message end; the server has no recipient to deliver it to.
            self.actions
                .push_back(ClientAction::Send(b".\r\n".to_vec()));
            self.expects.push_back(Expect::Message);
            tx.needs_rset = true;
            return;
        }
        for o in tx.outcomes.iter_mut().filter(|o| o.is_none()) {
            *o = Some(RcptOutcome::Rejected(reply.clone(), Stage::Data));
        }
        tx.needs_rset = true;
        self.finish_transaction();
    }

    fn finish_transaction(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let needs_rset = tx.needs_rset || tx.mail_failed.is_some();
        let rcpts = tx
            .outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    RcptOutcome::Rejected(
                        Reply::new(451, codes::SYSTEM_TEMP, "no reply"),
                        Stage::Message,
                    )
                })
            })
            .collect();
        self.actions
            .push_back(ClientAction::Done(TransactionResult { rcpts }));
        self.queued.clear();
        if needs_rset {
            self.command(b"RSET\r\n".to_vec(), Expect::Rset);
        } else {
            self.ready();
        }
    }
}

fn stage_of(e: Expect) -> Stage {
    match e {
        Expect::Greeting => Stage::Greeting,
        Expect::Ehlo | Expect::Helo => Stage::Ehlo,
        Expect::StartTls => Stage::StartTls,
        Expect::AuthPlain | Expect::AuthLoginUser | Expect::AuthLoginPass | Expect::AuthDone => {
            Stage::Auth
        }
        Expect::Mail | Expect::Rset | Expect::Quit => Stage::Mail,
        Expect::Rcpt(_) => Stage::Rcpt,
        Expect::Data => Stage::Data,
        Expect::Message => Stage::Message,
    }
}

/// Builds a [`Reply`] from its lines, taking the enhanced code off each line when present.
fn parse_reply(lines: &[String]) -> Reply {
    let code: u16 = lines[0][..3].parse().unwrap_or(0);
    let texts: Vec<&str> = lines.iter().map(|l| l.get(4..).unwrap_or("")).collect();
    let enhanced = texts.first().and_then(|t| parse_enhanced(t, code));
    let lines = texts
        .iter()
        .map(|t| match enhanced {
            Some(_) => t.split_once(' ').map_or("", |(_, rest)| rest).to_string(),
            None => t.to_string(),
        })
        .collect();
    Reply {
        code,
        enhanced,
        lines,
    }
}

/// `class.subject.detail` at the start of the text, matching the reply's class (RFC 3463).
fn parse_enhanced(text: &str, code: u16) -> Option<EnhancedCode> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let class: u8 = a.parse().ok()?;
    if u16::from(class) != code / 100 || b.len() > 3 || c.len() > 3 {
        return None;
    }
    Some(EnhancedCode(class, b.parse().ok()?, c.parse().ok()?))
}
