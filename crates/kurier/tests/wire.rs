//! Wire-level behaviour of the running server over raw TCP: smuggling, relay tricks, limits,
//! timeouts, BDAT, pipelining, STARTTLS command injection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn transaction(w: &mut Wire, from: &str, to: &str) {
    assert!(w.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250 "));
    assert!(w.cmd(&format!("RCPT TO:<{to}>")).starts_with("250 "));
    assert!(w.cmd("DATA").starts_with("354 "));
}

#[test]
fn smuggled_message_is_refused_and_nothing_is_delivered() {
    let s = TestServer::default();
    s.add_user("alice@localhost");
    let mut w = Wire::greeted(s.smtp);
    transaction(&mut w, "a@example.test", "postmaster@localhost");
    // The classic smuggling payload: a second transaction after a bare-LF "end of data".
    w.send(b"Subject: first\r\n\r\nhello\n.\nMAIL FROM:<admin@localhost>\nRCPT TO:<alice@localhost>\nDATA\nSubject: smuggled\n\nowned\n.\n");
    w.send(b"\r\n.\r\n");
    let r = w.reply();
    assert!(r.starts_with("550 5.6.0 Message refused: bare LF"), "{r}");
    // The session goes on, and a clean message is accepted.
    transaction(&mut w, "a@example.test", "postmaster@localhost");
    w.send(b"Subject: clean\r\n\r\nok\r\n.\r\n");
    assert!(w.reply().starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(
        w.cmd("QUIT"),
        "221 2.0.0 mx.kurier.test closing connection\r\n"
    );
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    assert!(split_delivered(&mail[0]).2.starts_with(b"Subject: clean\n"));
    assert!(
        !s.maildir("localhost", "alice").exists(),
        "smuggled message was delivered"
    );
}

#[test]
fn relay_tricks_do_not_open_the_relay() {
    let s = TestServer::default();
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    for (rcpt, expect) in [
        ("<victim@elsewhere.test>", "554 5.7.1 "),
        ("<\"victim@elsewhere.test\"@localhost>", "550 5.1.1 "),
        ("<victim%elsewhere.test@localhost>", "550 5.1.1 "),
        ("<elsewhere.test!victim@localhost>", "550 5.1.1 "),
        ("<@localhost:victim@elsewhere.test>", "554 5.7.1 "),
        ("<victim@elsewhere.test@localhost>", "501 5.1.3 "),
        ("<victim@[127.0.0.1]>", "554 5.7.1 "),
        ("<postmaster@LOCALHOST>", "250 2.1.5 "),
        ("<Postmaster>", "250 2.1.5 "),
    ] {
        let r = w.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(r.starts_with(expect), "RCPT TO:{rcpt} gave {r}");
    }
}

#[test]
fn pipelined_session_in_one_write() {
    let s = TestServer::default();
    let mut w = Wire::connect(s.smtp);
    w.send(b"EHLO pipe.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<postmaster@localhost>\r\nRCPT TO:<nobody@localhost>\r\nDATA\r\n");
    assert!(w.reply().starts_with("220 "));
    assert!(w.reply().contains("250-PIPELINING"));
    assert!(w.reply().starts_with("250 2.1.0"));
    assert!(w.reply().starts_with("250 2.1.5"));
    assert!(w.reply().starts_with("550 5.1.1"));
    assert!(w.reply().starts_with("354 "));
    w.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    assert!(w.reply().starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(w.reply(), "250 2.0.0 Ok\r\n");
    assert_eq!(w.reply(), "250 2.0.0 Ok\r\n");
    assert!(w.reply().starts_with("221 "));
    assert_eq!(w.reply(), "", "server closes after QUIT");
    s.wait_for_mail("localhost", "postmaster", 1);
}

#[test]
fn bdat_chunks_are_delivered() {
    let s = TestServer::default();
    let mut w = Wire::greeted(s.smtp);
    assert!(
        w.cmd("MAIL FROM:<a@example.test> BODY=8BITMIME")
            .starts_with("250 ")
    );
    assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
    let part1 = b"Subject: chunked\r\n\r\n.dot stays\r\n";
    w.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
    w.send(part1);
    assert_eq!(
        w.reply(),
        format!("250 2.0.0 {} octets received\r\n", part1.len())
    );
    let part2 = "grüße\r\n".as_bytes();
    w.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    w.send(part2);
    assert!(w.reply().starts_with("250 2.0.0 Ok: queued as"));
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    assert_eq!(
        split_delivered(&mail[0]).2,
        "Subject: chunked\n\n.dot stays\ngrüße\n".as_bytes()
    );
}

#[test]
fn line_and_size_limits() {
    let s = TestServer::start("", "[limits]\nmessage_size = 2000\n");
    let mut w = Wire::greeted(s.smtp);
    let long = format!("NOOP {}", "x".repeat(2000));
    assert!(w.cmd(&long).starts_with("500 5.5.2 Line too long"));
    assert_eq!(w.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    assert!(
        w.cmd("MAIL FROM:<a@example.test> SIZE=2001")
            .starts_with("552 5.3.4 ")
    );
    transaction(&mut w, "a@example.test", "postmaster@localhost");
    w.send(format!("{}\r\n", "y".repeat(1200)).as_bytes());
    w.send(b".\r\n");
    assert!(w.reply().starts_with("500 5.5.2 Line too long"));
    transaction(&mut w, "a@example.test", "postmaster@localhost");
    for _ in 0..10 {
        w.send(format!("{}\r\n", "z".repeat(500)).as_bytes());
    }
    w.send(b".\r\n");
    assert!(
        w.reply()
            .starts_with("552 5.3.4 Message size exceeds fixed maximum message size of 2000")
    );
    assert_eq!(w.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    assert!(!s.maildir("localhost", "postmaster").join("new").exists());
}

#[test]
fn connection_limit_per_ip() {
    let s = TestServer::start("", "[limits]\nconnections_per_ip = 2\n");
    let mut a = Wire::connect(s.smtp);
    assert!(a.reply().starts_with("220 "));
    let mut b = Wire::connect(s.smtp);
    assert!(b.reply().starts_with("220 "));
    let mut c = Wire::connect(s.smtp);
    assert_eq!(
        c.reply(),
        "421 4.7.0 Too many connections from your address, try again later\r\n"
    );
    assert_eq!(c.reply(), "");
    assert!(a.cmd("QUIT").starts_with("221 "));
    // The slot is free again (bounded wait for the server to notice the close).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = Wire::connect(s.smtp);
        let r = d.reply();
        if r.starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "slot not released: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.cmd("NOOP"), "250 2.0.0 Ok\r\n");
}

#[test]
fn idle_client_is_timed_out() {
    let s = TestServer::start("", "[limits]\ncommand_timeout = \"1s\"\n");
    let mut w = Wire::greeted(s.smtp);
    let started = Instant::now();
    assert_eq!(
        w.reply(),
        "421 4.4.2 mx.kurier.test Timeout, closing connection\r\n"
    );
    assert_eq!(w.reply(), "");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn http_request_is_refused_and_closed() {
    let s = TestServer::default();
    let mut w = Wire::connect(s.smtp);
    assert!(w.reply().starts_with("220 "));
    w.send(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(w.reply().starts_with("502 5.5.1 This is an SMTP server"));
    assert_eq!(w.reply(), "");
}

#[test]
fn too_many_errors_close_the_connection() {
    let s = TestServer::start("", "[limits]\nerrors = 3\n");
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("BOGUS").starts_with("500 "));
    assert!(w.cmd("BOGUS").starts_with("500 "));
    assert_eq!(w.cmd("BOGUS"), "500 5.5.2 Command unrecognized\r\n");
    assert_eq!(
        w.reply(),
        "421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert_eq!(w.reply(), "");
}

/// CVE-2011-0411 class: commands pipelined after STARTTLS in the same plaintext packet must
/// be discarded, not executed inside the TLS session.
#[test]
fn starttls_command_injection_is_discarded() {
    let s = TestServer::default();
    let script = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline().decode()
        lines.append(l)
        if len(l) < 4 or l[3] != "-":
            return "".join(lines)
assert reply().startswith("220 ")
s.sendall(b"EHLO inj.test\r\n"); assert "STARTTLS" in reply()
s.sendall(b"STARTTLS\r\nNOOP injected\r\n")
r = reply(); assert r.startswith("220 2.0.0"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="mx.kurier.test")
t.sendall(b"NOOP after\r\n")
r = t.recv(4096).decode()
# Only one reply: the injected NOOP must not have been answered inside TLS.
assert r == "250 2.0.0 Ok\r\n", repr(r)
t.sendall(b"MAIL FROM:<a@example.test>\r\n")
r = t.recv(4096).decode()
assert r.startswith("503 5.5.1 Send HELO or EHLO first"), repr(r)
print("ok", t.version())
"#;
    let out = run_ok(Command::new("python3").args(["-c", script, &s.smtp.to_string()]));
    assert!(out.starts_with("ok TLSv1.3"), "{out}");
}

#[test]
fn stalled_message_data_is_timed_out_and_not_delivered() {
    let s = TestServer::start("", "[limits]\ndata_timeout = \"1s\"\n");
    let mut w = Wire::greeted(s.smtp);
    transaction(&mut w, "a@example.test", "postmaster@localhost");
    w.send(b"Subject: half a message\r\n\r\nand then nothing");
    assert_eq!(
        w.reply(),
        "421 4.4.2 mx.kurier.test Timeout, closing connection\r\n"
    );
    assert_eq!(w.reply(), "");
    assert!(s.queued().is_empty());
    // Unterminated DATA at EOF is not delivered either.
    let mut w = Wire::greeted(s.smtp);
    transaction(&mut w, "a@example.test", "postmaster@localhost");
    w.send(b"Subject: cut\r\n\r\nbody\r\n");
    w.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(w.reply(), "");
    assert!(s.queued().is_empty());
    assert!(!s.maildir("localhost", "postmaster").join("new").exists());
}

#[test]
fn dsn_parameters_are_stored_with_the_envelope() {
    let s = TestServer::start("", "[delivery]\nenabled = false\n");
    let mut w = Wire::greeted(s.smtp);
    assert!(
        w.cmd("MAIL FROM:<a@example.test> RET=HDRS ENVID=env+2Bid-1")
            .starts_with("250 ")
    );
    assert!(
        w.cmd(
            "RCPT TO:<postmaster@localhost> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig+2Bx@example.test"
        )
        .starts_with("250 ")
    );
    assert!(
        w.cmd("RCPT TO:<postmaster@kurier.test> NOTIFY=NEVER")
            .starts_with("250 ")
    );
    assert!(w.cmd("DATA").starts_with("354 "));
    w.send(b"Subject: dsn\r\n\r\nx\r\n.\r\n");
    assert!(w.reply().starts_with("250 "));
    let q = s.queued();
    assert_eq!(q.len(), 1);
    let text = String::from_utf8_lossy(&std::fs::read(&q[0]).unwrap()).to_string();
    assert!(text.starts_with("KURIER-QUEUE 2 "), "{text}");
    for expected in [
        "\"sender\":\"a@example.test\"",
        "\"client_ip\":\"127.0.0.1\"",
        "\"ret\":\"HDRS\"",
        "\"envid\":\"env+id-1\"",
        "\"orcpt\":{\"addr_type\":\"rfc822\",\"address\":\"orig+x@example.test\"}",
        "\"notify\":{\"never\":false,\"success\":true,\"failure\":false,\"delay\":true}",
        "\"notify\":{\"never\":true,\"success\":false,\"failure\":false,\"delay\":false}",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
}

/// A certificate from the config file is the one presented (on STARTTLS and on 465).
#[test]
fn configured_certificate_is_used() {
    let first = TestServer::default();
    let cert = first.data_dir().join("tls/cert.pem");
    let key = first.data_dir().join("tls/key.pem");
    let tables = format!("[tls]\ncertificate = {:?}\nprivate_key = {:?}\n", cert, key);
    let s = TestServer::start("", &tables);
    assert!(
        !s.data_dir().join("tls").exists(),
        "no certificate is generated when one is configured"
    );
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20) as raw:
    with ctx.wrap_socket(raw) as t:
        assert t.recv(100).startswith(b"220 ")
print("verified")
"#;
    let out = run_ok(Command::new("python3").args([
        "-c",
        script,
        &s.submissions.to_string(),
        cert.to_str().unwrap(),
    ]));
    assert!(out.contains("verified"), "{out}");
}
