//! The outbound client state machine against scripted server replies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kurier_smtp::client::*;
use kurier_smtp::{Mailbox, Notify, OriginalRecipient, Ret, ReversePath};

struct Script {
    c: ClientSession,
    sent: Vec<String>,
    events: Vec<String>,
}

impl Script {
    fn new(tls: TlsPolicy, auth: Option<Credentials>) -> Script {
        Script {
            c: ClientSession::new(ClientConfig {
                helo: "out.test".into(),
                tls,
                tls_active: false,
                auth,
            }),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Feeds server bytes; returns commands sent in response (joined) and records events.
    fn server(&mut self, bytes: &str) -> String {
        self.c.receive(bytes.as_bytes());
        self.drain()
    }

    fn drain(&mut self) -> String {
        let mut out = String::new();
        while let Some(a) = self.c.poll_action() {
            match a {
                ClientAction::Send(b) => {
                    let s = String::from_utf8(b).unwrap();
                    self.sent.push(s.clone());
                    out.push_str(&s);
                }
                ClientAction::StartTls => self.events.push("starttls".into()),
                ClientAction::SendBody => self.events.push("body".into()),
                ClientAction::Ready => self.events.push("ready".into()),
                ClientAction::Done(r) => self.events.push(format!("done {r:?}")),
                ClientAction::Failed(e) => self
                    .events
                    .push(format!("failed {:?} {}", e.stage, e.message)),
                ClientAction::Closed => self.events.push("closed".into()),
            }
        }
        out
    }

    fn last_event(&self) -> &str {
        self.events.last().map(String::as_str).unwrap_or("")
    }
}

fn tx(rcpts: &[&str]) -> OutboundTransaction {
    OutboundTransaction {
        from: ReversePath::Mailbox(mailbox("a@src.test")),
        recipients: rcpts
            .iter()
            .map(|r| OutboundRecipient {
                address: mailbox(r),
                notify: None,
                orcpt: None,
            })
            .collect(),
        size: 100,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
    }
}

const EHLO_FULL: &str = "250-mx.dst.test hi\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n";
const EHLO_TLS: &str = "250-mx.dst.test hi\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n";

fn ready_over_tls(auth: Option<Credentials>) -> Script {
    let mut s = Script::new(TlsPolicy::Opportunistic, auth);
    assert_eq!(s.server("220 mx.dst.test ESMTP\r\n"), "EHLO out.test\r\n");
    assert_eq!(s.server(EHLO_FULL), "STARTTLS\r\n");
    assert_eq!(s.server("220 2.0.0 go ahead\r\n"), "");
    assert_eq!(s.last_event(), "starttls");
    s.c.tls_established();
    assert_eq!(s.drain(), "EHLO out.test\r\n");
    s
}

#[test]
fn pipelined_transaction_with_dsn_parameters_over_starttls() {
    let mut s = ready_over_tls(None);
    s.server(EHLO_TLS);
    assert_eq!(s.last_event(), "ready");
    assert!(s.c.is_tls() && s.c.capabilities().dsn);
    let mut t = tx(&["x@dst.test", "y@dst.test"]);
    t.ret = Some(Ret::Hdrs);
    t.envid = Some("id+1".into());
    t.eight_bit = true;
    t.recipients[0].notify = Some(Notify {
        success: true,
        failure: true,
        ..Notify::default()
    });
    t.recipients[0].orcpt = Some(OriginalRecipient {
        addr_type: "rfc822".into(),
        address: "orig=x@dst.test".into(),
    });
    s.c.send(&t);
    assert_eq!(
        s.drain(),
        "MAIL FROM:<a@src.test> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=id+2B1\r\n\
         RCPT TO:<x@dst.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+3Dx@dst.test\r\n\
         RCPT TO:<y@dst.test>\r\nDATA\r\n"
    );
    s.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
    assert_eq!(s.last_event(), "body");
    s.server("250 2.0.0 queued as X\r\n");
    let done = &s.events[s.events.len() - 2];
    assert!(done.contains("Accepted(Reply { code: 250"), "{done}");
    assert!(done.contains("Rejected(Reply { code: 550, enhanced: Some(EnhancedCode(5, 1, 1)), lines: [\"no such user\"] }, Rcpt)"), "{done}");
    assert_eq!(s.last_event(), "ready");
    // The connection is reused for a second transaction, then closed.
    s.c.send(&tx(&["z@dst.test"]));
    assert!(s.drain().starts_with("MAIL FROM:<a@src.test> SIZE=100\r\n"));
    s.server("250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
    s.c.quit();
    assert_eq!(s.drain(), "QUIT\r\n");
    s.server("221 bye\r\n");
    assert_eq!(s.last_event(), "closed");
}

#[test]
fn without_pipelining_commands_go_one_by_one() {
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("220 hi\r\n");
    s.server("250-mx hi\r\n250 8BITMIME\r\n");
    s.c.send(&tx(&["x@dst.test", "y@dst.test"]));
    assert_eq!(s.drain(), "MAIL FROM:<a@src.test>\r\n");
    assert_eq!(s.server("250 ok\r\n"), "RCPT TO:<x@dst.test>\r\n");
    assert_eq!(s.server("250 ok\r\n"), "RCPT TO:<y@dst.test>\r\n");
    assert_eq!(s.server("250 ok\r\n"), "DATA\r\n");
    s.server("354 go\r\n");
    assert_eq!(s.last_event(), "body");
    s.server("451 4.3.0 try later\r\n");
    let done = &s.events[s.events.len() - 2];
    assert_eq!(
        done.matches("Rejected(Reply { code: 451").count(),
        2,
        "{done}"
    );
}

#[test]
fn helo_fallback_and_no_starttls() {
    let mut s = Script::new(TlsPolicy::Opportunistic, None);
    s.server("220 old server\r\n");
    assert_eq!(s.server("500 what is EHLO\r\n"), "HELO out.test\r\n");
    s.server("250 old server\r\n");
    assert_eq!(s.last_event(), "ready");
    assert!(!s.c.capabilities().esmtp);
    let mut t = tx(&["x@dst.test"]);
    t.eight_bit = true;
    s.c.send(&t);
    assert_eq!(
        s.drain(),
        "",
        "nothing is sent for a message the server cannot take"
    );
    assert!(
        s.events
            .iter()
            .any(|e| e.contains("code: 554, enhanced: Some(EnhancedCode(5, 6, 3))"))
    );
}

#[test]
fn capability_refusals() {
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("220 hi\r\n");
    s.server("250-mx\r\n250-SIZE 50\r\n250 8BITMIME\r\n");
    let mut t = tx(&["x@dst.test"]);
    t.smtputf8 = true;
    s.c.send(&t);
    s.drain();
    assert!(
        s.events
            .iter()
            .any(|e| e.contains("code: 553, enhanced: Some(EnhancedCode(5, 6, 7))"))
    );
    s.c.send(&tx(&["x@dst.test"]));
    s.drain();
    assert!(
        s.events
            .iter()
            .any(|e| e.contains("code: 552, enhanced: Some(EnhancedCode(5, 3, 4))"))
    );
    assert_eq!(s.last_event(), "ready");
}

#[test]
fn tls_required_but_not_offered() {
    let mut s = Script::new(TlsPolicy::Required, None);
    s.server("220 hi\r\n");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    assert!(
        s.last_event()
            .starts_with("failed StartTls server does not offer STARTTLS"),
        "{}",
        s.last_event()
    );
}

#[test]
fn refused_greeting_fails_the_session() {
    let mut s = Script::new(TlsPolicy::Opportunistic, None);
    s.server("421 4.7.0 busy, come back later\r\n");
    assert!(s.last_event().starts_with("failed Greeting"));
    // Nothing more happens after a failure.
    assert_eq!(s.server("250 late\r\n"), "");
}

#[test]
fn auth_plain_over_tls() {
    let creds = Credentials {
        username: "u@src.test".into(),
        password: "pw".into(),
    };
    let mut s = ready_over_tls(Some(creds));
    assert_eq!(s.server(EHLO_TLS), "AUTH PLAIN AHVAc3JjLnRlc3QAcHc=\r\n");
    s.server("235 2.7.0 ok\r\n");
    assert_eq!(s.last_event(), "ready");
}

#[test]
fn auth_login_and_failure() {
    let creds = Credentials {
        username: "u".into(),
        password: "pw".into(),
    };
    let mut s = ready_over_tls(Some(creds));
    assert_eq!(s.server("250-mx\r\n250 AUTH LOGIN\r\n"), "AUTH LOGIN\r\n");
    assert_eq!(s.server("334 VXNlcm5hbWU6\r\n"), "dQ==\r\n");
    assert_eq!(s.server("334 UGFzc3dvcmQ6\r\n"), "cHc=\r\n");
    s.server("535 5.7.8 bad credentials\r\n");
    assert!(s.last_event().starts_with("failed Auth"));
}

#[test]
fn credentials_are_never_sent_without_tls() {
    let creds = Credentials {
        username: "u".into(),
        password: "pw".into(),
    };
    let mut s = Script::new(TlsPolicy::Opportunistic, Some(creds));
    s.server("220 hi\r\n");
    assert_eq!(s.server("250-mx\r\n250 AUTH PLAIN\r\n"), "");
    assert!(
        s.last_event()
            .starts_with("failed Auth refusing to send credentials without TLS")
    );
    assert!(s.sent.iter().all(|c| !c.starts_with("AUTH")));
}

#[test]
fn mail_refused_rejects_everyone_and_resets() {
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("220 hi\r\n");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    s.c.send(&tx(&["x@dst.test", "y@dst.test"]));
    s.drain();
    let sent =
        s.server("550 5.7.1 sender refused\r\n503 need MAIL\r\n503 need MAIL\r\n503 need MAIL\r\n");
    assert_eq!(sent, "RSET\r\n");
    let done = s
        .events
        .iter()
        .find(|e| e.starts_with("done"))
        .unwrap()
        .clone();
    assert_eq!(done.matches("code: 550").count(), 2, "{done}");
    assert_eq!(done.matches("Mail)").count(), 2, "{done}");
    s.server("250 ok\r\n");
    assert_eq!(s.last_event(), "ready");
}

#[test]
fn all_recipients_refused_but_data_accepted() {
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("220 hi\r\n");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    s.c.send(&tx(&["x@dst.test"]));
    s.drain();
    assert_eq!(s.server("250 ok\r\n550 no\r\n354 go\r\n"), ".\r\n");
    assert_eq!(s.server("554 no valid recipients\r\n"), "RSET\r\n");
    assert!(
        s.events
            .iter()
            .any(|e| e.contains("code: 550") && e.contains("Rcpt)"))
    );
}

#[test]
fn data_refused() {
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("220 hi\r\n");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    s.c.send(&tx(&["x@dst.test"]));
    s.drain();
    assert_eq!(
        s.server("250 ok\r\n250 ok\r\n554 5.3.0 no data today\r\n"),
        "RSET\r\n"
    );
    assert!(
        s.events
            .iter()
            .any(|e| e.contains("code: 554") && e.contains("Data)"))
    );
}

#[test]
fn malformed_reply_and_lost_connection() {
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("HTTP/1.1 400 Bad Request\r\n");
    assert!(s.last_event().contains("malformed reply"));
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("220 hi\r\n250 mx\r\n");
    s.c.send(&tx(&["x@dst.test"]));
    s.drain();
    s.c.connection_lost("reset by peer");
    s.drain();
    assert!(
        s.last_event()
            .starts_with("failed Mail connection lost during MAIL FROM"),
        "{}",
        s.last_event()
    );
}

#[test]
fn multiline_replies_and_enhanced_codes() {
    let mut s = Script::new(TlsPolicy::Never, None);
    s.server("220-first\r\n220-second\r\n");
    assert_eq!(s.drain(), "");
    assert_eq!(s.server("220 third\r\n"), "EHLO out.test\r\n");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    s.c.send(&tx(&["x@dst.test"]));
    s.drain();
    s.server("250 ok\r\n550-5.1.1 first line\r\n550 5.1.1 second line\r\n354 go\r\n");
    let r = s.c.last_reply().unwrap().clone();
    assert_eq!(r.code, 354);
    let done = s.events.iter().find(|e| e.starts_with("done"));
    assert!(done.is_none());
    s.server(".\r\n");
    assert!(
        s.last_event().starts_with("failed"),
        "a lone dot is not a reply"
    );
}

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}
