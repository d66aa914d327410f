//! Real clients against the real binary: swaks, Python's smtplib, curl. Delivered Maildir
//! files are checked byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::process::Command;

const MESSAGE: &[u8] = b"From: Sender <sender@example.test>\r\nTo: postmaster@localhost\r\nSubject: byte for byte\r\nMessage-ID: <t1@example.test>\r\n\r\nLine one\r\n.leading dot\r\n..two dots\r\n\r\nlast line\r\n";

/// What alice submits after AUTH: her own From: (others' addresses are refused).
/// A mail program's message: with Date: and Message-ID:, so it is delivered byte for byte.
const ALICE_MESSAGE: &[u8] = b"From: Alice <alice@localhost>\r\nTo: someone\r\nSubject: from alice\r\nDate: Thu, 03 Dec 2026 07:00:00 +0000\r\nMessage-ID: <a1@localhost>\r\n\r\n.dot line\r\nlast line\r\n";

fn message_file(s: &TestServer) -> String {
    let p = s.dir.path().join("message.eml");
    std::fs::write(&p, MESSAGE).unwrap();
    p.to_str().unwrap().to_string()
}

fn alice_file(s: &TestServer) -> String {
    let p = s.dir.path().join("alice.eml");
    std::fs::write(&p, ALICE_MESSAGE).unwrap();
    p.to_str().unwrap().to_string()
}

/// swaks always sends CRLF before the final dot, so the message it delivers gains one empty
/// line at the end.
fn swaks_sent(message: &[u8]) -> Vec<u8> {
    let mut m = message.to_vec();
    m.extend_from_slice(b"\r\n");
    m
}

fn swaks(port: u16) -> Command {
    let mut c = Command::new("swaks");
    c.args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "20"]);
    c
}

/// Checks trace headers and that the rest of the file is exactly `expected` (LF line ends).
fn check_delivered(file: &[u8], from: &str, to: &str, protocol: &str, expected: &[u8]) {
    let (trace, received, rest) = split_delivered(file);
    assert_eq!(
        trace,
        format!("Return-Path: <{from}>\nDelivered-To: {to}\n")
    );
    assert!(received.starts_with("Received: from "), "{received}");
    assert!(
        received.contains("[127.0.0.1])\n\tby mx.kurier.test (Kurier) with "),
        "{received}"
    );
    assert!(
        received.contains(&format!(" with {protocol} id ")),
        "{received}"
    );
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&lf(expected))
    );
}

#[test]
fn swaks_plain_to_postmaster_is_delivered_byte_for_byte() {
    let s = TestServer::default();
    let file = message_file(&s);
    let out = run_ok(swaks(s.smtp).args([
        "--to",
        "postmaster@localhost",
        "--from",
        "sender@example.test",
        "--data",
        &file,
    ]));
    assert!(out.contains("250 2.0.0 Ok: queued as "), "{out}");
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    check_delivered(
        &mail[0],
        "sender@example.test",
        "postmaster@localhost",
        "ESMTP",
        &swaks_sent(MESSAGE),
    );
    // Delivered messages leave the queue.
    for _ in 0..100 {
        if s.queued().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(s.queued().is_empty());
}

#[test]
fn swaks_starttls_auth_plain_and_login_on_submission() {
    let s = TestServer::default();
    s.add_user("alice@localhost");
    let file = alice_file(&s);
    for mech in ["PLAIN", "LOGIN"] {
        let out = run_ok(swaks(s.submission).args([
            "--tls",
            "--auth",
            mech,
            "--auth-user",
            "alice@localhost",
            "--auth-password",
            PASSWORD,
            "--to",
            "alice@localhost",
            "--from",
            "alice@localhost",
            "--data",
            &file,
        ]));
        assert!(out.contains("235 2.7.0 Authentication successful"), "{out}");
    }
    let mail = s.wait_for_mail("localhost", "alice", 2);
    for m in &mail {
        check_delivered(
            m,
            "alice@localhost",
            "alice@localhost",
            "ESMTPSA",
            &swaks_sent(ALICE_MESSAGE),
        );
        let (_, received, _) = split_delivered(m);
        assert!(received.contains("(using TLSv1."), "{received}");
    }
}

#[test]
fn swaks_implicit_tls_on_submissions() {
    let s = TestServer::default();
    s.add_user("alice@localhost");
    let file = alice_file(&s);
    let out = run_ok(swaks(s.submissions).args([
        "--tlsc",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@localhost",
        "--auth-password",
        PASSWORD,
        "--to",
        "postmaster@kurier.test",
        "--from",
        "alice@localhost",
        "--data",
        &file,
    ]));
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let mail = s.wait_for_mail("kurier.test", "postmaster", 1);
    check_delivered(
        &mail[0],
        "alice@localhost",
        "postmaster@kurier.test",
        "ESMTPSA",
        &swaks_sent(ALICE_MESSAGE),
    );
}

#[test]
fn submission_refuses_without_auth_and_wrong_passwords() {
    let s = TestServer::default();
    s.add_user("alice@localhost");
    // Submission without AUTH.
    let out = run_fail(swaks(s.submission).args([
        "--tls",
        "--to",
        "alice@localhost",
        "--from",
        "alice@localhost",
    ]));
    assert!(out.contains("530 5.7.0 Authentication required"), "{out}");
    // Wrong password.
    let out = run_fail(swaks(s.submission).args([
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@localhost",
        "--auth-password",
        "wrong",
        "--to",
        "alice@localhost",
    ]));
    assert!(out.contains("535 5.7.8"), "{out}");
    // AUTH is neither offered nor accepted before TLS.
    let out = run_fail(swaks(s.smtp).args([
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@localhost",
        "--auth-password",
        PASSWORD,
        "--to",
        "alice@localhost",
    ]));
    assert!(
        out.contains("Host did not advertise authentication"),
        "{out}"
    );
    let mut w = Wire::greeted(s.smtp);
    assert!(
        w.cmd("AUTH PLAIN AGFsaWNlQGxvY2FsaG9zdABjb3JyZWN0IGhvcnNlIGJhdHRlcnk=")
            .starts_with("538 5.7.11 ")
    );
}

#[test]
fn smtp_role_refuses_relay_and_unknown_users() {
    let s = TestServer::default();
    let out = run_fail(swaks(s.smtp).args([
        "--to",
        "someone@elsewhere.test",
        "--from",
        "a@example.test",
    ]));
    assert!(
        out.contains("554 5.7.1 <someone@elsewhere.test>: Relay access denied"),
        "{out}"
    );
    let out =
        run_fail(swaks(s.smtp).args(["--to", "nobody@localhost", "--from", "a@example.test"]));
    assert!(
        out.contains("550 5.1.1 <nobody@localhost>: Recipient address rejected"),
        "{out}"
    );
}

#[test]
fn authenticated_users_may_relay() {
    // A DNS server that never answers: the remote domain fails temporarily.
    let s = TestServer::start("", "[dns]\nservers = [\"127.0.0.1:9\"]\n");
    s.add_user("alice@localhost");
    let out = run_ok(swaks(s.submission).args([
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@localhost",
        "--auth-password",
        PASSWORD,
        "--to",
        "bob@elsewhere.test",
        "--from",
        "alice@localhost",
    ]));
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    // The remote recipient is queued for outbound delivery; with no reachable DNS here it
    // stays queued (a temporary failure), and no bounce is sent.
    let q = s.queued();
    assert_eq!(q.len(), 1);
    let content = std::fs::read_to_string(&q[0]).unwrap();
    assert!(
        content.contains("\"address\":\"bob@elsewhere.test\",\"local\":false"),
        "{content}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = s.cli(&["queue", "list"]);
        let list = String::from_utf8_lossy(&out.stdout).to_string();
        if list.contains("1 attempt(s)") {
            assert!(
                list.contains("DNS lookup for elsewhere.test failed temporarily"),
                "{list}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no attempt: {list}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(s.queued().len(), 1, "no bounce for a temporary failure");
}

#[test]
fn python_smtplib_with_smtputf8_pipelining_and_starttls() {
    let s = TestServer::default();
    s.add_user("jösé@localhost");
    s.add_user("alice@localhost");
    let script = r#"
import smtplib, ssl, sys
port, sub = int(sys.argv[1]), int(sys.argv[2])
msg = "From: jösé@localhost\r\nTo: jösé@localhost\r\nSubject: ünïcödé\r\n\r\nGrüße\r\n".encode()
with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
    c.ehlo("python.test")
    assert c.has_extn("smtputf8") and c.has_extn("pipelining") and c.has_extn("dsn")
    refused = c.sendmail("jösé@localhost", ["jösé@localhost", "nobody@localhost"], msg,
                         mail_options=["SMTPUTF8", "BODY=8BITMIME"], rcpt_options=["NOTIFY=FAILURE"])
    assert list(refused) == ["nobody@localhost"] and refused["nobody@localhost"][0] == 550, refused
    try:
        c.sendmail("a@example.test", ["jösé@localhost"], b"x\r\n")
        raise SystemExit("non-ASCII recipient without SMTPUTF8 was accepted")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["jösé@localhost"][0] == 553, e.recipients
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", sub, timeout=20) as c:
    c.starttls(context=ctx)
    c.login("alice@localhost", "correct horse battery")
    c.sendmail("alice@localhost", ["alice@localhost"], b"Subject: via python\r\n\r\nhello\r\n")
print("ok")
"#;
    let out = run_ok(Command::new("python3").args([
        "-c",
        script,
        &s.smtp.to_string(),
        &s.submission.to_string(),
    ]));
    assert!(out.contains("ok"), "{out}");
    let mail = s.wait_for_mail("localhost", "jösé", 1);
    let (trace, received, rest) = split_delivered(&mail[0]);
    assert_eq!(
        trace,
        "Return-Path: <jösé@localhost>\nDelivered-To: jösé@localhost\n"
    );
    assert!(received.contains("with UTF8SMTP id"), "{received}");
    assert_eq!(
        rest,
        "From: jösé@localhost\nTo: jösé@localhost\nSubject: ünïcödé\n\nGrüße\n".as_bytes()
    );
    let mail = s.wait_for_mail("localhost", "alice", 1);
    assert!(
        split_delivered(&mail[0])
            .2
            .ends_with(b"Subject: via python\n\nhello\n")
    );
    // The DSN parameters are stored with the envelope for the delivery engine.
    let log = s.log();
    assert!(log.contains("message accepted"), "{log}");
}

#[test]
fn curl_smtp_and_smtps() {
    let s = TestServer::default();
    s.add_user("alice@localhost");
    let file = message_file(&s);
    let alice = alice_file(&s);
    run_ok(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "--url",
        &format!("smtp://127.0.0.1:{}", s.smtp),
        "--mail-from",
        "sender@example.test",
        "--mail-rcpt",
        "postmaster@localhost",
        "--upload-file",
        &file,
    ]));
    run_ok(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "--insecure",
        "--url",
        &format!("smtps://127.0.0.1:{}", s.submissions),
        "--user",
        &format!("alice@localhost:{PASSWORD}"),
        "--mail-from",
        "alice@localhost",
        "--mail-rcpt",
        "alice@localhost",
        "--upload-file",
        &alice,
    ]));
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    check_delivered(
        &mail[0],
        "sender@example.test",
        "postmaster@localhost",
        "ESMTP",
        MESSAGE,
    );
    let mail = s.wait_for_mail("localhost", "alice", 1);
    check_delivered(
        &mail[0],
        "alice@localhost",
        "alice@localhost",
        "ESMTPSA",
        ALICE_MESSAGE,
    );
}

#[test]
fn authenticated_users_cannot_spoof_senders() {
    // The users exist before the server starts (an alias must end at a user).
    let mut s =
        TestServer::configured("", "[aliases]\n\"sales@localhost\" = \"alice@localhost\"\n");
    s.add_user("alice@localhost");
    s.add_user("bob@localhost");
    s.spawn();
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as c:
    c.starttls(context=ctx)
    c.login("alice@localhost", "correct horse battery")
    try:
        c.sendmail("bob@localhost", ["postmaster@localhost"], b"Subject: x\r\n\r\nx\r\n")
        raise SystemExit("envelope spoof accepted")
    except smtplib.SMTPSenderRefused as e:
        print("envelope", e.smtp_code, e.smtp_error.decode())
    try:
        c.sendmail("alice@localhost", ["postmaster@localhost"], b"From: Bob <bob@localhost>\r\nSubject: x\r\n\r\nx\r\n")
        raise SystemExit("From: spoof accepted")
    except smtplib.SMTPDataError as e:
        print("header", e.smtp_code, e.smtp_error.decode())
    c.sendmail("sales@localhost", ["postmaster@localhost"], b"From: Sales <sales@localhost>\r\nSubject: ok\r\n\r\nx\r\n")
    c.sendmail("alice+news@localhost", ["postmaster@localhost"], b"From: alice+news@localhost\r\nSubject: ok\r\n\r\nx\r\n")
print("done")
"#;
    let out = run_ok(Command::new("python3").args(["-c", script, &s.submission.to_string()]));
    assert!(
        out.contains(
            "envelope 553 5.7.1 <bob@localhost>: Sender address not owned by user alice@localhost"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "header 553 5.7.1 From: address <bob@localhost> not owned by user alice@localhost"
        ),
        "{out}"
    );
    assert!(out.contains("done"), "{out}");
    s.wait_for_mail("localhost", "postmaster", 2);
}

#[test]
fn submission_without_date_or_message_id_gets_both() {
    let s = TestServer::default();
    s.add_user("alice@localhost");
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as c:
    c.starttls(context=ctx); c.login("alice@localhost", sys.argv[2])
    c.sendmail("alice@localhost", ["alice@localhost"], b"From: alice@localhost\r\nSubject: bare\r\n\r\nhi\r\n")
"#;
    run_ok(Command::new("python3").args(["-c", script, &s.submission.to_string(), PASSWORD]));
    let mail = s.wait_for_mail("localhost", "alice", 1);
    let (_, _, rest) = split_delivered(&mail[0]);
    let text = String::from_utf8_lossy(&rest);
    let header = text.split("\n\n").next().unwrap();
    assert!(header.lines().any(|l| l.starts_with("Date: ")), "{text}");
    assert!(
        header
            .lines()
            .any(|l| l.starts_with("Message-ID: <") && l.ends_with("@mx.kurier.test>")),
        "{text}"
    );
    assert!(text.ends_with("Subject: bare\n\nhi\n"), "{text}");
}
