//! Transcript tests of the sans-IO server session: bytes in, replies and actions out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kurier_smtp::session::*;
use kurier_smtp::{ForwardPath, Reply, codes};

/// Plays the driver: answers checks from a scripted policy and records what happened.
struct Harness {
    s: ServerSession,
    commits: Vec<Message>,
    tls_started: usize,
    closed: bool,
    auth_attempts: Vec<(String, String)>,
    commit_result: Option<Reply>,
}

const PASSWORD: &str = "secret";

fn config(role: Role) -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        role,
        starttls: true,
        max_message_size: 10_000,
        max_recipients: 3,
        max_errors: 20,
        max_auth_failures: 3,
        max_junk_commands: 100,
    }
}

impl Harness {
    fn new(role: Role) -> Self {
        Self::with(config(role), None)
    }

    fn with(cfg: SessionConfig, tls: Option<TlsInfo>) -> Self {
        let mut h = Harness {
            s: ServerSession::new(cfg, tls),
            commits: Vec::new(),
            tls_started: 0,
            closed: false,
            auth_attempts: Vec::new(),
            commit_result: None,
        };
        let greeting = h.run();
        assert_eq!(greeting, "220 mx.test ESMTP Kurier ready\r\n");
        h
    }

    fn tls() -> TlsInfo {
        TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        }
    }

    /// Feeds bytes and returns every reply written in response, as text.
    fn send(&mut self, bytes: &[u8]) -> String {
        self.s.receive(bytes);
        self.run()
    }

    fn run(&mut self) -> String {
        let mut out = String::new();
        let mut guard = 0;
        while let Some(action) = self.s.poll_action() {
            guard += 1;
            assert!(guard < 10_000, "session loops");
            match action {
                Action::Send(reply) => {
                    check_reply(&reply);
                    out.push_str(&String::from_utf8(reply.to_bytes()).unwrap());
                }
                Action::CheckMail { .. } => self.s.resolve(Verdict::Accept),
                Action::CheckRcpt { to, .. } => {
                    let ok = match &to {
                        ForwardPath::Postmaster => true,
                        ForwardPath::Mailbox(m) => {
                            m.domain().as_str() == "mx.test" && m.local() != "nobody"
                        }
                    };
                    self.s.resolve(if ok {
                        Verdict::Accept
                    } else {
                        Verdict::Reject(Reply::new(550, codes::NO_SUCH_USER, "No such user"))
                    });
                }
                Action::Authenticate {
                    username,
                    password,
                    authzid,
                    ..
                } => {
                    // Like the server: acting as someone else is bad credentials.
                    let ok =
                        authzid.is_none() && username == "alice@mx.test" && password == PASSWORD;
                    self.auth_attempts.push((username, password));
                    self.s.resolve_auth(if ok {
                        AuthVerdict::Success
                    } else {
                        AuthVerdict::BadCredentials
                    });
                }
                Action::StartTls => {
                    self.tls_started += 1;
                    self.s.tls_established(Self::tls());
                }
                Action::Commit(m) => {
                    self.commits.push(*m);
                    match self.commit_result.take() {
                        Some(r) => self.s.resolve_commit(Err(r)),
                        None => self
                            .s
                            .resolve_commit(Ok(format!("Q{}", self.commits.len()))),
                    }
                }
                Action::Close => self.closed = true,
            }
        }
        out
    }

    fn ehlo(&mut self) -> String {
        self.send(b"EHLO client.test\r\n")
    }
}

/// RFC 2034: every 2xx/4xx/5xx reply other than the greeting and the EHLO/HELO reply carries
/// an enhanced status code; no reply line exceeds 512 octets.
fn check_reply(r: &Reply) {
    for line in &r.lines {
        assert!(line.len() < 500, "reply too long: {line}");
    }
    let exempt = r.code == 220 && r.enhanced.is_none() && r.lines[0].contains("ESMTP Kurier ready")
        || r.code == 250 && r.enhanced.is_none() && r.lines[0].starts_with("mx.test")
        || r.code == 334
        || r.code == 354;
    if !exempt {
        assert!(r.enhanced.is_some(), "reply without enhanced code: {r}");
        assert_eq!(
            r.enhanced.map(|e| e.0 as u16),
            Some(r.code / 100),
            "class mismatch: {r}"
        );
    }
}

#[test]
fn ehlo_advertises_extensions() {
    let mut h = Harness::new(Role::Smtp);
    let r = h.ehlo();
    assert_eq!(
        r,
        "250-mx.test greets client.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 HELP\r\n"
    );
    assert!(!r.contains("AUTH"), "AUTH must not be offered before TLS");
    assert_eq!(h.send(b"HELO client.test\r\n"), "250 mx.test\r\n");
}

#[test]
fn complete_transaction() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@x.test>\r\n"),
        "250 2.1.0 Sender <a@x.test> OK\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<u@mx.test>\r\n"),
        "250 2.1.5 Recipient <u@mx.test> OK\r\n"
    );
    assert_eq!(
        h.send(b"DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(h.send(b"Subject: hi\r\n\r\n..dot\r\n"), "");
    assert_eq!(h.send(b".\r\n"), "250 2.0.0 Ok: queued as Q1\r\n");
    let m = &h.commits[0];
    assert_eq!(m.body, b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(m.from.to_string(), "<a@x.test>");
    assert_eq!(m.recipients.len(), 1);
    assert_eq!(m.helo, "client.test");
    assert_eq!(m.protocol, "ESMTP");
    assert_eq!(
        h.send(b"QUIT\r\n"),
        "221 2.0.0 mx.test closing connection\r\n"
    );
    assert!(h.closed && h.s.is_closed());
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut h = Harness::new(Role::Smtp);
    let r = h.send(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nRCPT TO:<nobody@mx.test>\r\nRCPT TO:<v@mx.test>\r\nDATA\r\n",
    );
    let codes: Vec<&str> = r.lines().map(|l| &l[..4]).collect();
    assert_eq!(codes.last(), Some(&"354 "));
    assert!(r.contains("250 2.1.5 Recipient <u@mx.test> OK\r\n550 5.1.1 No such user\r\n250 2.1.5 Recipient <v@mx.test> OK\r\n354"));
    // Message and the next transaction pipelined in one write.
    let r = h.send(b"body\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n");
    assert_eq!(
        r,
        "250 2.0.0 Ok: queued as Q1\r\n250 2.1.0 Sender <> OK\r\n250 2.1.5 Recipient <Postmaster> OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(h.commits[0].recipients.len(), 2);
}

#[test]
fn any_split_of_the_input_gives_the_same_replies() {
    let script: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<u@mx.test>\r\nDATA\r\nline\r\n..x\r\n.\r\nBDAT 6\r\nMAIL F";
    let mut whole = Harness::new(Role::Smtp);
    let expected = whole.send(script);
    let mut seed: u32 = 12345;
    for _ in 0..200 {
        let mut h = Harness::new(Role::Smtp);
        let mut out = String::new();
        let mut rest = script;
        while !rest.is_empty() {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = 1 + (seed >> 16) as usize % 9;
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push_str(&h.send(a));
            rest = b;
        }
        assert_eq!(out, expected);
        assert_eq!(h.commits, whole.commits);
    }
}

#[test]
fn sequence_errors() {
    let mut h = Harness::new(Role::Smtp);
    assert_eq!(
        h.send(b"MAIL FROM:<a@x.test>\r\n"),
        "503 5.5.1 Send HELO or EHLO first\r\n"
    );
    h.ehlo();
    assert_eq!(
        h.send(b"RCPT TO:<u@mx.test>\r\n"),
        "503 5.5.1 Need MAIL command before RCPT\r\n"
    );
    assert_eq!(
        h.send(b"DATA\r\n"),
        "503 5.5.1 Need MAIL command before DATA\r\n"
    );
    h.send(b"MAIL FROM:<a@x.test>\r\n");
    assert!(
        h.send(b"MAIL FROM:<a@x.test>\r\n")
            .starts_with("503 5.5.1 Nested MAIL")
    );
    assert_eq!(h.send(b"DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
    assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        h.send(b"RCPT TO:<u@mx.test>\r\n"),
        "503 5.5.1 Need MAIL command before RCPT\r\n"
    );
    assert_eq!(
        h.send(b"AUTH PLAIN\r\n"),
        "538 5.7.11 Encryption required for requested authentication mechanism (use STARTTLS)\r\n"
    );
    assert_eq!(h.send(b"FOO\r\n"), "500 5.5.2 Command unrecognized\r\n");
    assert_eq!(h.send(b"ETRN x\r\n"), "502 5.5.1 ETRN not implemented\r\n");
    assert_eq!(h.send(b"EXPN x\r\n"), "502 5.5.1 EXPN not available\r\n");
    assert!(h.send(b"VRFY u\r\n").starts_with("252 2.5.0 "));
    assert!(h.send(b"HELP\r\n").starts_with("214 2.0.0 "));
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert!(
        h.send(b"MAIL FROM:<a@x.test> FOO=1\r\n")
            .starts_with("555 5.5.4 ")
    );
    assert!(h.send(b"MAIL FROM:<a@>\r\n").starts_with("501 5.1.7 "));
    h.send(b"MAIL FROM:<a@x.test>\r\n");
    assert!(h.send(b"RCPT TO:<u@>\r\n").starts_with("501 5.1.3 "));
    assert!(!h.closed);
}

#[test]
fn helo_and_ehlo_reset_the_transaction() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\n");
    h.ehlo();
    assert_eq!(
        h.send(b"DATA\r\n"),
        "503 5.5.1 Need MAIL command before DATA\r\n"
    );
}

#[test]
fn size_limits() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@x.test> SIZE=10001\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size of 10000 octets\r\n"
    );
    h.send(b"MAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    let big = "x".repeat(900) + "\r\n";
    for _ in 0..20 {
        assert_eq!(h.send(big.as_bytes()), "");
    }
    assert_eq!(
        h.send(b".\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size of 10000 octets\r\n"
    );
    assert!(h.commits.is_empty());
    // The session continues with a fresh transaction.
    assert!(h.send(b"MAIL FROM:<a@x.test>\r\n").starts_with("250 "));
}

#[test]
fn long_and_malformed_command_lines() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    assert!(
        h.send(long.as_bytes())
            .starts_with("500 5.5.2 Line too long")
    );
    // Arriving in pieces without a line end: refused once, the rest skipped to the LF.
    assert!(
        h.send("y".repeat(700).as_bytes())
            .starts_with("500 5.5.2 Line too long")
    );
    assert_eq!(h.send("y".repeat(700).as_bytes()), "");
    assert_eq!(h.send(b"yyy\r\nNOOP\r\n"), "250 2.0.0 Ok\r\n");
    // 512 octets including CRLF is allowed.
    let max = format!("NOOP {}\r\n", "x".repeat(505));
    assert_eq!(max.len(), 512);
    assert_eq!(h.send(max.as_bytes()), "250 2.0.0 Ok\r\n");
    assert_eq!(
        h.send(b"NOOP\n"),
        "500 5.5.2 Bare LF received; SMTP command lines must end with CRLF\r\n"
    );
    assert_eq!(
        h.send(b"NO\rOP\r\n"),
        "500 5.5.2 Bare CR received; SMTP command lines must end with CRLF\r\n"
    );
    assert!(
        h.send(b"HELO a\x00b\r\n")
            .starts_with("500 5.5.2 Command contains NUL")
    );
    assert!(h.send(b"HELO \xc3\x28\r\n").starts_with("500 5.5.2 "));
    assert!(!h.closed);
}

#[test]
fn smuggling_attempt_is_refused_and_nothing_is_committed() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    let r = h.send(b"Subject: one\r\n\r\nx\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<v@mx.test>\nDATA\nSubject: two\n\n.\n");
    assert_eq!(r, "", "a bare-LF dot line must not end the message");
    assert_eq!(
        h.send(b"\r\n.\r\n"),
        "550 5.6.0 Message refused: bare LF in message data; lines must end with CRLF (RFC 5321 section 2.3.8)\r\n"
    );
    assert!(h.commits.is_empty());
    for v in [&b"x\r\n.\rMAIL FROM:<e@x.test>\r\n"[..], b"x\r.\r\n"] {
        h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
        assert_eq!(h.send(v), "");
        assert!(
            h.send(b".\r\n")
                .starts_with("550 5.6.0 Message refused: bare CR")
        );
    }
    assert!(h.commits.is_empty());
}

#[test]
fn long_text_line_is_refused() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    h.send(format!("{}\r\n", "z".repeat(1200)).as_bytes());
    assert!(h.send(b".\r\n").starts_with("500 5.5.2 Line too long"));
    assert!(h.commits.is_empty());
}

#[test]
fn bdat_chunks() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    // Without a transaction the chunk is still consumed (RFC 3030 §2).
    assert_eq!(
        h.send(b"BDAT 6\r\nQUIT\r\n"),
        "503 5.5.1 Need MAIL command before BDAT\r\n"
    );
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\n");
    assert_eq!(
        h.send(b"BDAT 7\r\n.a\r\nb\r\n"),
        "250 2.0.0 7 octets received\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<v@mx.test>\r\n"),
        "503 5.5.1 RCPT not allowed after BDAT\r\n"
    );
    assert_eq!(
        h.send(b"DATA\r\n"),
        "503 5.5.1 DATA not allowed after BDAT\r\n"
    );
    assert_eq!(h.send(b"BDAT 5 LAST\r\nc\r\n"), "");
    assert_eq!(h.send(b"\r\n"), "250 2.0.0 Ok: queued as Q1\r\n");
    assert_eq!(h.commits[0].body, b".a\r\nb\r\nc\r\n\r\n");
    // BDAT 0 LAST ends an empty message.
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\n");
    assert_eq!(h.send(b"BDAT 0 LAST\r\n"), "250 2.0.0 Ok: queued as Q2\r\n");
    assert!(h.commits[1].body.is_empty());
    // A bare LF in a chunk fails the transaction at that chunk.
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\n");
    assert!(h.send(b"BDAT 3\r\na\nb").starts_with("550 5.6.0"));
    assert_eq!(
        h.send(b"BDAT 1 LAST\r\nx"),
        "503 5.5.1 Need MAIL command before BDAT\r\n"
    );
    assert_eq!(h.commits.len(), 2);
}

/// The driver may take message data while it arrives; the commit says how much it took,
/// and the serial tells one message's data from the next one's.
#[test]
fn message_data_taken_while_it_arrives() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    let before = h.s.message_serial();
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    assert_eq!(h.s.message_serial(), before + 1);
    h.send(b"Subject: s\r\n\r\n0123456789\r\n");
    assert_eq!(h.s.take_message_data(14, 100), None, "not enough held yet");
    let taken = h.s.take_message_data(14, 4).unwrap();
    assert_eq!(taken, b"0123456789\r\n");
    assert_eq!(h.send(b"end\r\n.\r\n"), "250 2.0.0 Ok: queued as Q1\r\n");
    assert_eq!(h.commits[0].body, b"Subject: s\r\n\r\nend\r\n");
    assert_eq!(h.commits[0].spilled, 12);
    assert_eq!(h.s.take_message_data(0, 0), None, "no message in progress");
    // BDAT: taken between chunks, counted in the commit.
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\n");
    assert_eq!(
        h.send(b"BDAT 8\r\nab\r\ncd\r\n"),
        "250 2.0.0 8 octets received\r\n"
    );
    assert_eq!(h.s.message_serial(), before + 2);
    assert_eq!(h.s.take_message_data(2, 0).unwrap(), b"\r\ncd\r\n");
    assert_eq!(
        h.send(b"BDAT 4 LAST\r\nef\r\n"),
        "250 2.0.0 Ok: queued as Q2\r\n"
    );
    assert_eq!(h.s.message_serial(), before + 2);
    assert_eq!(h.commits[1].body, b"abef\r\n");
    assert_eq!(h.commits[1].spilled, 6);
}

#[test]
fn bdat_over_size_limit() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\n");
    let r = h.send(format!("BDAT 20000 LAST\r\n{}", "a\r\n".repeat(6667)).as_bytes());
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(h.commits.is_empty());
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    let r = h.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
    assert_eq!(
        r, "220 2.0.0 Ready to start TLS\r\n",
        "injected command must not be answered"
    );
    assert_eq!(h.tls_started, 1);
    // The pre-TLS EHLO is forgotten.
    assert_eq!(
        h.send(b"MAIL FROM:<a@x.test>\r\n"),
        "503 5.5.1 Send HELO or EHLO first\r\n"
    );
    let r = h.ehlo();
    assert!(
        !r.contains("STARTTLS") && r.contains("250-AUTH PLAIN LOGIN\r\n"),
        "{r}"
    );
    assert_eq!(h.send(b"STARTTLS\r\n"), "503 5.5.1 TLS already active\r\n");
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(h.commits[0].protocol, "ESMTPS");
    assert_eq!(h.commits[0].tls, Some(Harness::tls()));
}

#[test]
fn starttls_unavailable_without_certificate() {
    let mut cfg = config(Role::Smtp);
    cfg.starttls = false;
    let mut h = Harness::with(cfg, None);
    assert!(!h.ehlo().contains("STARTTLS"));
    assert_eq!(
        h.send(b"STARTTLS\r\n"),
        "502 5.5.1 STARTTLS not available\r\n"
    );
}

#[test]
fn auth_plain_and_login() {
    let mut h = Harness::new(Role::Submission);
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<alice@mx.test>\r\n"),
        "530 5.7.0 Must issue a STARTTLS command first, then authenticate\r\n"
    );
    h.send(b"STARTTLS\r\n");
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<alice@mx.test>\r\n"),
        "530 5.7.0 Authentication required\r\n"
    );
    assert_eq!(
        h.send(b"AUTH CRAM-MD5\r\n"),
        "504 5.5.4 Unrecognized authentication mechanism\r\n"
    );
    // PLAIN with a continuation.
    assert_eq!(h.send(b"AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(
        h.send(b"AGFsaWNlQG14LnRlc3QAd3Jvbmc=\r\n"),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // LOGIN, cancelled.
    assert_eq!(h.send(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.send(b"*\r\n"), "501 5.7.0 Authentication cancelled\r\n");
    assert_eq!(
        h.send(b"AUTH PLAIN !!!\r\n"),
        "501 5.5.2 Invalid base64 in authentication response\r\n"
    );
    // LOGIN, successful.
    assert_eq!(
        h.send(b"AUTH LOGIN YWxpY2VAbXgudGVzdA==\r\n"),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        h.send(b"c2VjcmV0\r\n"),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(
        h.auth_attempts.last(),
        Some(&("alice@mx.test".to_string(), "secret".to_string()))
    );
    assert_eq!(
        h.send(b"AUTH PLAIN\r\n"),
        "503 5.5.1 Already authenticated\r\n"
    );
    assert!(!h.ehlo().contains("AUTH"));
    h.send(b"MAIL FROM:<alice@mx.test>\r\nRCPT TO:<bob@elsewhere.test>\r\n");
    h.send(b"MAIL FROM:<alice@mx.test>\r\n");
    let r =
        h.send(b"RSET\r\nMAIL FROM:<alice@mx.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(r.ends_with("250 2.0.0 Ok: queued as Q1\r\n"), "{r}");
    assert_eq!(h.commits[0].auth_user.as_deref(), Some("alice@mx.test"));
    assert_eq!(h.commits[0].protocol, "ESMTPSA");
}

#[test]
fn auth_plain_with_other_authzid_is_refused() {
    let mut h = Harness::new(Role::Submissions);
    h.s = ServerSession::new(config(Role::Submissions), Some(Harness::tls()));
    h.run();
    h.ehlo();
    // authzid "bob@mx.test", authcid alice, right password.
    let r = h.send(b"AUTH PLAIN Ym9iQG14LnRlc3QAYWxpY2VAbXgudGVzdABzZWNyZXQ=\r\n");
    assert_eq!(r, "535 5.7.8 Authentication credentials invalid\r\n");
    // The attempt reaches the caller (which counts it per client address), and it counts
    // toward the per-connection limit like a wrong password.
    assert_eq!(h.auth_attempts.len(), 1);
    h.send(b"AUTH PLAIN Ym9iQG14LnRlc3QAYWxpY2VAbXgudGVzdABzZWNyZXQ=\r\n");
    let r = h.send(b"AUTH PLAIN Ym9iQG14LnRlc3QAYWxpY2VAbXgudGVzdABzZWNyZXQ=\r\n");
    assert_eq!(
        r,
        "535 5.7.8 Authentication credentials invalid\r\n421 4.7.0 Too many failed authentication attempts, closing connection\r\n"
    );
}

#[test]
fn repeated_auth_failures_close_the_session() {
    let mut h = Harness::with(config(Role::Submissions), Some(Harness::tls()));
    h.ehlo();
    let mut out = String::new();
    for _ in 0..3 {
        out = h.send(b"AUTH PLAIN AGFsaWNlQG14LnRlc3QAd3Jvbmc=\r\n");
    }
    assert_eq!(
        out,
        "535 5.7.8 Authentication credentials invalid\r\n421 4.7.0 Too many failed authentication attempts, closing connection\r\n"
    );
    assert!(h.closed);
    assert_eq!(h.send(b"NOOP\r\n"), "");
}

#[test]
fn implicit_tls_submission() {
    let mut h = Harness::with(config(Role::Submissions), Some(Harness::tls()));
    let r = h.ehlo();
    assert!(r.contains("AUTH PLAIN LOGIN") && !r.contains("STARTTLS"));
    h.send(b"AUTH PLAIN AGFsaWNlQG14LnRlc3QAc2VjcmV0\r\n");
    let r = h.send(b"MAIL FROM:<alice@mx.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(r.ends_with("250 2.0.0 Ok: queued as Q1\r\n"));
}

#[test]
fn too_many_errors_close_the_session() {
    let mut h = Harness::new(Role::Smtp);
    let mut out = String::new();
    for _ in 0..20 {
        out = h.send(b"BOGUS\r\n");
    }
    assert!(
        out.ends_with("421 4.7.0 Too many errors, closing connection\r\n"),
        "{out}"
    );
    assert!(h.closed);
}

#[test]
fn http_request_closes_at_once() {
    let mut h = Harness::new(Role::Smtp);
    let r = h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("502 5.5.1 This is an SMTP server"));
    assert_eq!(r.lines().count(), 1);
    assert!(h.closed);
}

#[test]
fn smtputf8() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    assert!(
        h.send("MAIL FROM:<jösé@x.test>\r\n".as_bytes())
            .starts_with("553 5.6.7 ")
    );
    h.send(b"MAIL FROM:<a@x.test>\r\n");
    assert!(
        h.send("RCPT TO:<ü@mx.test>\r\n".as_bytes())
            .starts_with("553 5.6.7 ")
    );
    h.send(b"RSET\r\n");
    let r = h.send("MAIL FROM:<jösé@x.test> SMTPUTF8\r\nRCPT TO:<ü@mx.test>\r\nDATA\r\nSubject: ä\r\n\r\nü\r\n.\r\n".as_bytes());
    assert!(r.ends_with("250 2.0.0 Ok: queued as Q1\r\n"), "{r}");
    assert_eq!(h.commits[0].protocol, "UTF8SMTP");
    assert_eq!(h.commits[0].body, "Subject: ä\r\n\r\nü\r\n".as_bytes());
}

#[test]
fn recipient_limit() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    let r = h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<a@mx.test>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\nRCPT TO:<d@mx.test>\r\n");
    assert!(r.ends_with("452 4.5.3 Too many recipients\r\n"), "{r}");
    h.send(b"DATA\r\nx\r\n.\r\n");
    assert_eq!(h.commits[0].recipients.len(), 3);
}

#[test]
fn failed_commit_passes_the_reply_through() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    h.commit_result = Some(Reply::new(
        452,
        codes::SYSTEM_FULL,
        "Insufficient system storage",
    ));
    let r = h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(r.ends_with("452 4.3.1 Insufficient system storage\r\n"));
    // The transaction is over; a new one can start.
    assert!(h.send(b"MAIL FROM:<a@x.test>\r\n").starts_with("250 "));
}

#[test]
fn close_with_reply_for_shutdown() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    assert!(h.s.is_idle());
    h.send(b"MAIL FROM:<a@x.test>\r\n");
    assert!(!h.s.is_idle());
    h.s.close_with(Reply::new(
        421,
        codes::SHUTTING_DOWN,
        "mx.test shutting down",
    ));
    assert_eq!(h.run(), "421 4.3.2 mx.test shutting down\r\n");
    assert!(h.closed);
}

#[test]
fn data_phase_is_reported_for_timeouts() {
    let mut h = Harness::new(Role::Smtp);
    h.ehlo();
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    assert!(h.s.in_message_data());
    h.send(b".\r\n");
    assert!(!h.s.in_message_data());
}

#[test]
fn commands_without_mail_are_limited_between_messages() {
    let mut cfg = config(Role::Smtp);
    cfg.max_junk_commands = 4;
    let mut h = Harness::with(cfg, None);
    h.send(b"EHLO client.test\r\n");
    for cmd in ["NOOP", "RSET", "VRFY alice", "HELP"] {
        assert!(!h.send(format!("{cmd}\r\n").as_bytes()).starts_with("421"));
    }
    // An accepted message starts the count over.
    h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    assert!(h.send(b"x\r\n.\r\n").starts_with("250 2.0.0"));
    for _ in 0..4 {
        assert!(h.send(b"NOOP\r\n").starts_with("250 "));
    }
    assert!(!h.closed);
    let r = h.send(b"NOOP\r\n");
    assert!(
        r.starts_with("421 4.7.0 Too many commands without mail"),
        "{r}"
    );
    assert!(h.closed);
}

#[test]
fn envid_and_orcpt_with_control_characters_are_refused() {
    let mut h = Harness::new(Role::Smtp);
    h.send(b"EHLO client.test\r\n");
    let r = h.send(b"MAIL FROM:<a@b.test> ENVID=e1+0D+0AX-Injected:+20yes\r\n");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    assert!(
        h.send(b"MAIL FROM:<a@b.test> ENVID=e1\r\n")
            .starts_with("250")
    );
    let r = h.send(b"RCPT TO:<u@mx.test> ORCPT=rfc822;u+0D+0A.+0D+0A@mx.test\r\n");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    let r = h.send(b"RCPT TO:<u@mx.test> ORCPT=rfc822;u+1B@mx.test\r\n");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    assert!(
        h.send(b"RCPT TO:<u@mx.test> ORCPT=rfc822;u@mx.test\r\n")
            .starts_with("250")
    );
}

#[test]
fn auth_identities_with_control_characters_are_refused_unchecked() {
    use base64::Engine as _;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let mut h = Harness::with(config(Role::Submissions), Some(Harness::tls()));
    h.send(b"EHLO client.test\r\n");
    let plain = b64(b"\0alice@mx.test\nFORGED failure rhost=203.0.113.9\0secret");
    let r = h.send(format!("AUTH PLAIN {plain}\r\n").as_bytes());
    assert!(r.starts_with("501 5.5.2"), "{r}");
    let authzid = b64(b"x\x1b[2J\0alice@mx.test\0secret");
    let r = h.send(format!("AUTH PLAIN {authzid}\r\n").as_bytes());
    assert!(r.starts_with("501 5.5.2"), "{r}");
    assert!(h.send(b"AUTH LOGIN\r\n").starts_with("334"));
    assert!(
        h.send(format!("{}\r\n", b64(b"alice\r@mx.test")).as_bytes())
            .starts_with("334")
    );
    let r = h.send(format!("{}\r\n", b64(b"secret")).as_bytes());
    assert!(r.starts_with("501 5.5.2"), "{r}");
    assert!(h.auth_attempts.is_empty(), "no password was checked");
    // A password may hold any character.
    let ok = b64(b"\0alice@mx.test\0secret");
    assert!(
        h.send(format!("AUTH PLAIN {ok}\r\n").as_bytes())
            .starts_with("235")
    );
}
