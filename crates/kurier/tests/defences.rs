//! Abuse defences end to end: DNSBL at connect, greylisting (persisted across restarts),
//! AUTH brute force throttled across reconnects, against the running server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::dns::{Rr, TestDns};
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn dnsbl_listed_client_is_refused_at_connect() {
    let dns = TestDns::start(vec![(
        "1.0.0.127.bl.test",
        Rr::A(std::net::Ipv4Addr::new(127, 0, 0, 2)),
    )]);
    let tables = format!(
        "{}\n[dnsbl]\nzones = [\"clean.test\", \"bl.test\"]\n",
        dns.config()
    );
    let s = TestServer::start("", &tables);
    let mut w = Wire::connect(s.smtp);
    assert_eq!(
        w.reply(),
        "554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test\r\n"
    );
    assert_eq!(w.reply(), "");
    // A client that is not listed is served; submission (authenticated users) is not checked.
    let script = r#"
import socket, sys
s = socket.socket(); s.settimeout(10); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", int(sys.argv[1])))
print(s.recv(200).decode().strip())
"#;
    let out = run_ok(Command::new("python3").args(["-c", script, &s.smtp.to_string()]));
    assert!(out.starts_with("220 "), "{out}");
    let mut w = Wire::connect(s.submission);
    assert!(w.reply().starts_with("220 "));
}

#[test]
fn greylisting_dance_and_persistence() {
    let tables = "[greylisting]\nenabled = true\ndelay = \"2s\"\nexempt_networks = []\n";
    let mut s = TestServer::start("", tables);
    s.add_user("alice@localhost");
    let try_rcpt = |port: u16, rcpt: &str| -> String {
        let mut w = Wire::greeted(port);
        assert!(w.cmd("MAIL FROM:<sender@remote.test>").starts_with("250 "));
        w.cmd(&format!("RCPT TO:<{rcpt}>"))
    };
    let first = try_rcpt(s.smtp, "alice@localhost");
    assert!(
        first.starts_with("451 4.7.1 Greylisted: please retry in "),
        "{first}"
    );
    assert!(
        try_rcpt(s.smtp, "alice@localhost").starts_with("451 4.7.1 "),
        "too early"
    );
    // Unknown users are still refused outright, not greylisted.
    assert!(try_rcpt(s.smtp, "nobody@localhost").starts_with("550 5.1.1 "));
    std::thread::sleep(Duration::from_millis(2200));
    assert!(
        try_rcpt(s.smtp, "alice@localhost").starts_with("250 "),
        "accepted after the delay"
    );
    // Authenticated submission is never greylisted.
    let out = run_ok(&mut swaks_submit(
        s.submission,
        "alice@localhost",
        "postmaster@localhost",
    ));
    assert!(out.contains("250 2.0.0 Ok"), "{out}");
    // The passed triplet survives a restart; a new one is greylisted.
    assert_eq!(s.terminate().code(), Some(0));
    s.spawn();
    assert!(
        try_rcpt(s.smtp, "alice@localhost").starts_with("250 "),
        "{}",
        s.log()
    );
    assert!(try_rcpt(s.smtp, "postmaster@localhost").starts_with("451 4.7.1 "));
}

#[test]
fn auth_brute_force_is_throttled_across_reconnects() {
    let s = TestServer::start(
        "",
        "[limits]\nauth_failures_per_ip = 3\nauth_failures = 2\n",
    );
    s.add_user("alice@localhost");
    let script = r#"
import base64, smtplib, ssl, sys, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def attempt(password):
    # One AUTH PLAIN per connection, as a password guesser that reconnects would do.
    t = time.time()
    with smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=30) as c:
        c.ehlo("guesser.test")
        token = base64.b64encode(b"\0alice@localhost\0" + password.encode()).decode()
        code, msg = c.docmd("AUTH", "PLAIN " + token)
        return "%d %s" % (code, msg.decode()), time.time() - t
results = [attempt("wrong%d" % i) for i in range(3)]
results.append(attempt("correct horse battery"))
results.append(attempt("correct horse battery"))
for r, secs in results:
    print("%.2f %s" % (secs, r))
"#;
    let started = Instant::now();
    let out = run_ok(Command::new("python3").args(["-c", script, &s.submissions.to_string()]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    for l in &lines[..3] {
        assert!(
            l.contains("535 5.7.8 Authentication credentials invalid"),
            "{out}"
        );
    }
    // Over the limit: even the right password is refused, after a delay that grows.
    for l in &lines[3..] {
        assert!(
            l.contains("454 4.7.0 Too many failed authentications from your address"),
            "{out}"
        );
    }
    let delay = |l: &str| l.split(' ').next().unwrap().parse::<f64>().unwrap();
    assert!(delay(lines[4]) > delay(lines[3]), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(s.log().contains("too many failures from this address"));
}

#[test]
fn rate_limits_per_address_and_reverse_dns_in_received() {
    // Reverse lookups of loopback addresses are answered as "localhost" by the resolver itself
    // (RFC 6761 §6.3), and forward-confirmed; the test DNS server is what it would ask otherwise.
    let dns = TestDns::start(vec![]);
    let tables = format!(
        "{}\n[limits]\nconnections_per_minute = 4\nmessages_per_minute = 2\n",
        dns.config()
    );
    let s = TestServer::start("", &tables);
    let mut w = Wire::greeted(s.smtp);
    // Let the reverse lookup finish before the first message.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
        w.send(format!("Subject: {i}\r\n\r\nx\r\n.\r\n").as_bytes());
        assert!(w.reply().starts_with("250 "));
    }
    assert_eq!(
        w.cmd("MAIL FROM:<a@example.test>"),
        "451 4.7.0 Too many messages per minute from your address, try again later\r\n"
    );
    let mail = s.wait_for_mail("localhost", "postmaster", 2);
    let (_, received, _) = split_delivered(&mail[0]);
    assert!(
        received.starts_with("Received: from client.test (localhost [127.0.0.1])"),
        "{received}"
    );
    // Four connections a minute: this was the first; three more are greeted, then 421.
    let mut greeted = 0;
    for _ in 0..4 {
        let mut c = Wire::connect(s.smtp);
        let r = c.reply();
        if r.starts_with("220 ") {
            greeted += 1;
        } else {
            assert_eq!(
                r,
                "421 4.7.0 Too many connections per minute from your address, try again later\r\n"
            );
        }
    }
    assert_eq!(greeted, 3);
}

/// Makes a DKIM key with dkimpy's dknewkey; returns (private key file, DNS TXT record).
fn dkim_key(dir: &std::path::Path, name: &str, ktype: &str) -> (std::path::PathBuf, String) {
    run_ok(
        Command::new("/usr/bin/dknewkey")
            .current_dir(dir)
            .args(["--ktype", ktype, name]),
    );
    let record = std::fs::read_to_string(dir.join(format!("{name}.dns"))).unwrap();
    (dir.join(format!("{name}.key")), record.trim().to_string())
}

/// Signs a message with dkimpy's dkimsign (an independent DKIM implementation); `options`
/// are dkimsign's, e.g. `["--signalg", "ed25519-sha256"]`.
fn dkim_sign(
    message: &[u8],
    selector: &str,
    domain: &str,
    key: &std::path::Path,
    options: &[&str],
) -> Vec<u8> {
    let mut cmd = Command::new("/usr/bin/dkimsign");
    cmd.args([selector, domain, key.to_str().unwrap()])
        .args(options);
    filter(cmd, message)
}

/// Runs a command with `input` on its standard input; returns its standard output.
fn filter(mut cmd: Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}");
    out.stdout
}

/// Sends a message that must be accepted (250).
fn send_ok(port: u16, from: &str, to: &str, message: &[u8]) {
    let r = send_raw(port, from, to, message);
    assert!(r.starts_with("250 "), "{r}");
}

fn send_raw(port: u16, from: &str, to: &str, message: &[u8]) -> String {
    let mut w = Wire::greeted(port);
    assert!(w.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250 "));
    assert!(w.cmd(&format!("RCPT TO:<{to}>")).starts_with("250 "));
    assert!(w.cmd("DATA").starts_with("354 "));
    w.send(&kurier_smtp::data::dot_stuff(message));
    w.reply()
}

#[test]
fn spf_dkim_dmarc_evaluation() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_record) = dkim_key(keys.path(), "rsa", "rsa");
    let (ed_key, ed_record) = dkim_key(keys.path(), "ed", "ed25519");
    let dns = TestDns::start(vec![
        // bank.test: SPF allows only 192.0.2.1; DMARC p=reject.
        ("bank.test", Rr::Txt("v=spf1 ip4:192.0.2.1 -all".into())),
        ("_dmarc.bank.test", Rr::Txt("v=DMARC1; p=reject".into())),
        // good.test: SPF fails for us too, but its DKIM signatures align, so DMARC passes.
        ("good.test", Rr::Txt("v=spf1 -all".into())),
        ("_dmarc.good.test", Rr::Txt("v=DMARC1; p=reject".into())),
        ("rsa._domainkey.good.test", Rr::Txt(rsa_record)),
        ("ed._domainkey.good.test", Rr::Txt(ed_record)),
        // open.test: SPF allows loopback; no DMARC record.
        ("open.test", Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all".into())),
        // twice.test: two SPF records (RFC 7208 §4.5), each allowing loopback: permerror.
        ("twice.test", Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all".into())),
        ("twice.test", Rr::Txt("v=spf1 ip4:127.0.0.1 -all".into())),
    ]);
    let s = TestServer::start("", &dns.config());
    // A spoof of a p=reject domain is refused after DATA.
    let spoof = b"From: CEO <ceo@bank.test>\r\nTo: postmaster@localhost\r\nSubject: urgent wire\r\n\r\npay now\r\n";
    let r = send_raw(s.smtp, "ceo@bank.test", "postmaster@localhost", spoof);
    assert_eq!(
        r,
        "550 5.7.1 Message rejected: it fails the DMARC policy (p=reject) of bank.test\r\n"
    );
    // Signed with RSA and Ed25519 (RFC 8463) by dkimpy: both verify, DMARC passes.
    let message = b"From: News <news@good.test>\r\nTo: postmaster@localhost\r\nSubject: signed\r\nAuthentication-Results: mx.kurier.test; dkim=pass (forged)\r\n\r\nHello, verified world.\r\n";
    let signed = dkim_sign(message, "rsa", "good.test", &rsa_key, &[]);
    let signed = dkim_sign(
        &signed,
        "ed",
        "good.test",
        &ed_key,
        &["--signalg", "ed25519-sha256"],
    );
    let r = send_raw(s.smtp, "news@good.test", "postmaster@localhost", &signed);
    assert!(r.starts_with("250 "), "{r}\n{}", s.log());
    // A large message (its body goes to disk while it arrives), with white-space lines at
    // the end of its body: both signatures, one over the relaxed body, still verify.
    let mut large =
        b"From: News <news@good.test>\r\nTo: postmaster@localhost\r\nSubject: large signed\r\n\r\n"
            .to_vec();
    for i in 0..30_000 {
        large.extend_from_slice(format!("line {i} of a long  newsletter\t \r\n").as_bytes());
    }
    large.extend_from_slice(b"  \r\n\t\r\n\r\n");
    let signed = dkim_sign(&large, "rsa", "good.test", &rsa_key, &[]);
    let signed = dkim_sign(
        &signed,
        "ed",
        "good.test",
        &ed_key,
        &["--signalg", "ed25519-sha256", "--bcanon", "relaxed"],
    );
    let r = send_raw(s.smtp, "news@good.test", "postmaster@localhost", &signed);
    assert!(r.starts_with("250 "), "{r}\n{}", s.log());
    // Changed in the part that went to disk: both fail.
    let mut tampered = signed.clone();
    let at = tampered.len() - 20_000;
    tampered[at] = b'X';
    let r = send_raw(s.smtp, "news@good.test", "postmaster@localhost", &tampered);
    assert!(r.starts_with("550 5.7.1"), "{r}\n{}", s.log());
    // Plain SPF pass without DMARC.
    send_ok(
        s.smtp,
        "a@open.test",
        "postmaster@localhost",
        b"From: a@open.test\r\nSubject: spf\r\n\r\nx\r\n",
    );
    send_ok(
        s.smtp,
        "a@twice.test",
        "postmaster@localhost",
        b"From: a@twice.test\r\nSubject: twice\r\n\r\nx\r\n",
    );
    let mail = s.wait_for_mail("localhost", "postmaster", 4);
    let all: Vec<String> = mail
        .iter()
        .map(|m| String::from_utf8_lossy(m).to_string())
        .collect();
    let signed_mail = all.iter().find(|m| m.contains("Subject: signed")).unwrap();
    let (_, trace, rest) = split_delivered(signed_mail.as_bytes());
    assert!(
        trace.contains("Authentication-Results: mx.kurier.test;"),
        "{trace}"
    );
    assert_eq!(trace.matches("dkim=pass").count(), 2, "{trace}");
    assert!(
        trace.contains("header.i=@good.test header.s=rsa") && trace.contains("header.s=ed"),
        "{trace}"
    );
    assert!(trace.contains("spf=fail"), "{trace}");
    assert!(trace.contains("dmarc=pass"), "{trace}");
    // The forged field claiming our name is gone; the message is otherwise intact.
    assert!(!String::from_utf8_lossy(&rest).contains("(forged)"));
    assert!(String::from_utf8_lossy(&rest).contains("Hello, verified world."));
    let large_mail = all
        .iter()
        .find(|m| m.contains("Subject: large signed"))
        .unwrap();
    let (_, trace, rest) = split_delivered(large_mail.as_bytes());
    assert_eq!(trace.matches("dkim=pass").count(), 2, "{trace}");
    assert!(trace.contains("dmarc=pass"), "{trace}");
    assert!(rest.ends_with(b"newsletter\t \n  \n\t\n\n"));
    let spf_mail = all.iter().find(|m| m.contains("Subject: spf")).unwrap();
    assert!(spf_mail.contains("spf=pass"), "{spf_mail}");
    assert!(spf_mail.contains("dmarc=none"), "{spf_mail}");
    let twice = all.iter().find(|m| m.contains("Subject: twice")).unwrap();
    assert!(twice.contains("spf=permerror"), "{twice}");
}

#[test]
fn dns_failure_defers_instead_of_passing() {
    // A DNS server that never answers: the checks cannot be made, so the message waits.
    let s = TestServer::start("", "[dns]\nservers = [\"127.0.0.1:9\"]\n");
    let r = send_raw(
        s.smtp,
        "a@remote.test",
        "postmaster@localhost",
        b"Subject: x\r\n\r\nx\r\n",
    );
    // The reply names what could not be looked up; the log line also names the resolver.
    assert!(
        r.starts_with("451 4.7.0 Temporary DNS failure looking up ")
            && r.contains("try again later"),
        "{r}"
    );
    assert!(!s.maildir("localhost", "postmaster").join("new").exists());
    let log = s.log();
    assert!(
        log.contains("sender authentication lookup failed")
            && log.contains("resolver=\"127.0.0.1:9\""),
        "{log}"
    );
}

/// Mail submitted by a local user is DKIM-signed with every key of its domain (RSA and
/// Ed25519), and dkimpy verifies both signatures.
#[test]
fn submissions_are_dkim_signed_and_verify_with_dkimpy() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("dk.test", Rr::Mx(10, "mx.dk.test".into())),
        ("mx.dk.test", Rr::A(ip)),
    ]);
    let mut s = TestServer::configured("", &dns.config());
    let mut records = Vec::new();
    for (selector, alg) in [("rsa1", "rsa"), ("ed1", "ed25519")] {
        let out = s.cli(&[
            "dkim",
            "generate",
            "localhost",
            "--selector",
            selector,
            "--algorithm",
            alg,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.contains("._domainkey."))
            .unwrap()
            .to_string();
        assert!(
            line.starts_with(&format!(
                "{selector}._domainkey.localhost. IN TXT \"v=DKIM1; k={alg}; p="
            )),
            "{line}"
        );
        // The TXT data: the quoted strings joined.
        let value: String = line.split('"').skip(1).step_by(2).collect();
        records.push((format!("{selector}._domainkey.localhost."), value));
    }
    let refused = s.cli(&["dkim", "generate", "elsewhere.test"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a local domain"));
    s.spawn();
    s.add_user("alice@localhost");
    let receiver = Receiver::start(ip);
    let out = run_ok(
        swaks_submit(s.submission, "alice@localhost", "bob@dk.test")
            .args(["--header", "Subject: signed by kurier"]),
    );
    assert!(out.contains("250 2.0.0 Ok"), "{out}");
    // A large one: signed from its file on disk, it verifies all the same.
    let body = s.dir.path().join("large.txt");
    let text: String = (0..40_000)
        .map(|i| format!("line {i} of a large report\n"))
        .collect();
    std::fs::write(&body, text).unwrap();
    let out = run_ok(
        swaks_submit(s.submission, "alice@localhost", "bob@dk.test")
            .args(["--header", "Subject: large, signed by kurier"])
            .args(["--body", &format!("@{}", body.display())]),
    );
    assert!(out.contains("250 2.0.0 Ok"), "{out}");
    let relayed = receiver.wait_messages(2);
    assert!(relayed[1].1.len() > 1_000_000);
    for (i, (_, message)) in relayed.into_iter().enumerate() {
        verify_with_dkimpy(
            &s.dir.path().join(format!("relayed{i}.eml")),
            &message,
            &records,
        );
    }
}

/// dkimpy's verdict on each DKIM signature of `message` (written to `eml`), with the keys
/// of `records`: all must pass, and there must be two.
fn verify_with_dkimpy(eml: &std::path::Path, message: &[u8], records: &[(String, String)]) {
    std::fs::write(eml, message).unwrap();
    let script = r#"
import dkim, json, sys
records = json.loads(sys.argv[2])
msg = open(sys.argv[1], "rb").read()
def dnsfunc(name, timeout=5):
    return records[name.decode() if isinstance(name, bytes) else name].encode()
d = dkim.DKIM(msg)
sigs = [l for l in msg.split(b"\r\n") if l.lower().startswith(b"dkim-signature:")]
print(len(sigs), [d.verify(idx=i, dnsfunc=dnsfunc) for i in range(len(sigs))])
"#;
    let records_json = format!(
        "{{{}}}",
        records
            .iter()
            .map(|(n, v)| format!("\"{n}\": \"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let out = run_ok(Command::new("/usr/bin/python3").args([
        "-c",
        script,
        eml.to_str().unwrap(),
        &records_json,
    ]));
    assert_eq!(out.trim(), "2 [True, True]", "{out}");
}

#[test]
fn dmarc_quarantine_goes_to_junk_and_spf_fail_can_be_refused() {
    let dns = TestDns::start(vec![
        ("junk.test", Rr::Txt("v=spf1 -all".into())),
        ("_dmarc.junk.test", Rr::Txt("v=DMARC1; p=quarantine".into())),
        ("strict.test", Rr::Txt("v=spf1 -all".into())),
    ]);
    let s = TestServer::start("", &dns.config());
    send_ok(
        s.smtp,
        "a@junk.test",
        "postmaster@localhost",
        b"From: a@junk.test\r\nSubject: junk\r\n\r\nx\r\n",
    );
    let junk = s.wait_for_junk("localhost", "postmaster", 1);
    let maildir = s.maildir("localhost", "postmaster");
    assert!(maildir.join(".Junk/maildirfolder").exists());
    let text = String::from_utf8_lossy(&junk[0]);
    assert!(
        text.contains("dmarc=fail") && text.contains("policy.dmarc=quarantine"),
        "{text}"
    );
    assert!(list(&maildir.join("new")).is_empty());
    // SPF fail without DMARC passes by default (DMARC decides) ...
    send_ok(
        s.smtp,
        "a@strict.test",
        "postmaster@localhost",
        b"From: a@strict.test\r\nSubject: s\r\n\r\nx\r\n",
    );
    // ... and is refused with reject_spf_fail.
    let strict = TestServer::start(
        "",
        &format!(
            "{}\n[authentication]\nreject_spf_fail = true\nexempt_networks = []\n",
            dns.config()
        ),
    );
    let r = send_raw(
        strict.smtp,
        "a@strict.test",
        "postmaster@localhost",
        b"From: a@strict.test\r\nSubject: s\r\n\r\nx\r\n",
    );
    assert_eq!(
        r,
        "550 5.7.1 SPF check failed: strict.test does not designate 127.0.0.1 as permitted sender\r\n"
    );
}

/// Seals a message as a forwarder would, with dkimpy's ARC implementation (RFC 8617): the
/// forwarder's own Authentication-Results become the ARC set's first header.
fn arc_seal(message: &[u8], selector: &str, domain: &str, key: &std::path::Path) -> Vec<u8> {
    let script = r#"
import dkim, sys
selector, domain, key = sys.argv[1].encode(), sys.argv[2].encode(), open(sys.argv[3], "rb").read()
msg = sys.stdin.buffer.read()
msg = b"Authentication-Results: " + domain + b"; spf=pass smtp.mailfrom=news@origin.test\r\n" + msg
seal = dkim.arc_sign(msg, selector, domain, key, domain, include_headers=[b"From", b"To", b"Subject"])
sys.stdout.buffer.write(b"".join(seal) + msg)
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script, selector, domain, key.to_str().unwrap()]);
    filter(cmd, message)
}

#[test]
fn arc_sets_from_dkimpy_are_verified() {
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = dkim_key(keys.path(), "fwd", "rsa");
    let dns = TestDns::start(vec![
        ("fwd._domainkey.lists.test", Rr::Txt(record)),
        ("lists.test", Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all".into())),
    ]);
    let s = TestServer::start("", &dns.config());
    let message = b"From: News <news@origin.test>\r\nTo: postmaster@localhost\r\nSubject: sealed\r\n\r\nForwarded with care.\r\n";
    let sealed = arc_seal(message, "fwd", "lists.test", &key);
    send_ok(
        s.smtp,
        "bounces@lists.test",
        "postmaster@localhost",
        &sealed,
    );
    // The same set over a body changed after sealing.
    let tampered = String::from_utf8(sealed)
        .unwrap()
        .replace("Subject: sealed", "Subject: tampered")
        .replace("Forwarded with care.", "Forwarded with changes.");
    send_ok(
        s.smtp,
        "bounces@lists.test",
        "postmaster@localhost",
        tampered.as_bytes(),
    );
    let mail = s.wait_for_mail("localhost", "postmaster", 2);
    let texts: Vec<String> = mail
        .iter()
        .map(|m| String::from_utf8_lossy(m).to_string())
        .collect();
    let trace = |subject: &str| {
        let m = texts.iter().find(|m| m.contains(subject)).unwrap();
        let (_, trace, _) = split_delivered(m.as_bytes());
        trace
    };
    let good = trace("Subject: sealed");
    assert!(good.contains("arc=pass"), "{good}");
    // RFC 8617 §5.2: the newest message signature fails, so the chain fails.
    let bad = trace("Subject: tampered");
    assert!(bad.contains("arc=fail (body hash did not verify)"), "{bad}");
}

#[test]
fn sender_policy_per_recipient_domain() {
    let dns = TestDns::start(vec![
        ("bank.test", Rr::Txt("v=spf1 ip4:192.0.2.1 -all".into())),
        ("_dmarc.bank.test", Rr::Txt("v=DMARC1; p=reject".into())),
        ("shop.test", Rr::Txt("v=spf1 ip4:192.0.2.1 -all".into())),
        ("_dmarc.shop.test", Rr::Txt("v=DMARC1; p=quarantine".into())),
    ]);
    // kurier.test quarantines p=reject failures instead of refusing them; localhost keeps
    // the defaults but delivers p=quarantine failures to the inbox.
    let s = TestServer::start(
        "",
        &format!(
            "{}\n[authentication.domains.\"kurier.test\"]\ndmarc_reject = false\n\
             [authentication.domains.localhost]\ndmarc_quarantine = false\n",
            dns.config()
        ),
    );
    let spoof = b"From: CEO <ceo@bank.test>\r\nSubject: urgent wire\r\n\r\npay now\r\n";
    let refused =
        "550 5.7.1 Message rejected: it fails the DMARC policy (p=reject) of bank.test\r\n";
    assert_eq!(
        send_raw(s.smtp, "ceo@bank.test", "postmaster@localhost", spoof),
        refused
    );
    let r = send_raw(s.smtp, "ceo@bank.test", "postmaster@kurier.test", spoof);
    assert!(r.starts_with("250 "), "{r}\n{}", s.log());
    // One reply covers both recipients: the stricter policy wins.
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<ceo@bank.test>").starts_with("250 "));
    assert!(
        w.cmd("RCPT TO:<postmaster@kurier.test>")
            .starts_with("250 ")
    );
    assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
    assert!(w.cmd("DATA").starts_with("354 "));
    w.send(&kurier_smtp::data::dot_stuff(spoof));
    assert_eq!(w.reply(), refused);
    // p=quarantine to localhost: the inbox, as its policy says.
    send_ok(
        s.smtp,
        "a@shop.test",
        "postmaster@localhost",
        b"From: a@shop.test\r\nSubject: offer\r\n\r\nx\r\n",
    );
    let inbox = s.wait_for_mail("localhost", "postmaster", 1);
    assert!(String::from_utf8_lossy(&inbox[0]).contains("Subject: offer"));
    let junk = s.wait_for_junk("kurier.test", "postmaster", 1);
    let text = String::from_utf8_lossy(&junk[0]);
    assert!(
        text.contains("Subject: urgent wire") && text.contains("dmarc=fail"),
        "{text}"
    );
}

#[test]
fn greylisting_exempts_senders_passing_spf() {
    let dns = TestDns::start(vec![
        (
            "vouched.test",
            Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all".into()),
        ),
        (
            "elsewhere.test",
            Rr::Txt("v=spf1 ip4:192.0.2.0/24 -all".into()),
        ),
    ]);
    let tables = format!(
        "{}[greylisting]\nenabled = true\ndelay = \"1h\"\nexempt_networks = []\n",
        dns.config()
    );
    let rcpt_after = |port: u16, from: &str| -> String {
        let mut w = Wire::greeted(port);
        assert!(w.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250 "));
        w.cmd("RCPT TO:<postmaster@localhost>")
    };
    let s = TestServer::start("", &tables);
    // SPF pass: the domain vouches for the client.
    assert!(rcpt_after(s.smtp, "news@vouched.test").starts_with("250 "));
    // SPF fail or none: greylisted as usual.
    assert!(rcpt_after(s.smtp, "news@elsewhere.test").starts_with("451 4.7.1 "));
    assert!(rcpt_after(s.smtp, "news@nospf.test").starts_with("451 4.7.1 "));
    // The exemption can be turned off.
    let strict = TestServer::start("", &format!("{tables}exempt_spf_pass = false\n"));
    assert!(rcpt_after(strict.smtp, "news@vouched.test").starts_with("451 4.7.1 "));
}

#[test]
fn relaxed_body_signatures_with_trailing_blank_lines_verify() {
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = dkim_key(keys.path(), "rb", "rsa");
    let dns = TestDns::start(vec![
        ("rb._domainkey.relaxed.test", Rr::Txt(record)),
        ("relaxed.test", Rr::Txt("v=spf1 -all".into())),
        ("_dmarc.relaxed.test", Rr::Txt("v=DMARC1; p=reject".into())),
    ]);
    let s = TestServer::start("", &dns.config());
    // RFC 6376 §3.4.4: relaxed body canonicalization reduces the whitespace-only lines at
    // the end to nothing, so this body hashes like "Hello!\r\n".
    let message = b"From: a@relaxed.test\r\nTo: postmaster@localhost\r\nSubject: blank tail\r\n\r\nHello!\r\n  \r\n\t\r\n\r\n";
    let signed = dkim_sign(
        message,
        "rb",
        "relaxed.test",
        &key,
        &["--bcanon", "relaxed"],
    );
    let r = send_raw(s.smtp, "a@relaxed.test", "postmaster@localhost", &signed);
    assert!(r.starts_with("250 "), "{r}\n{}", s.log());
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    let (_, trace, rest) = split_delivered(&mail[0]);
    assert!(
        trace.contains("dkim=pass") && trace.contains("dmarc=pass"),
        "{trace}"
    );
    // The message is delivered as sent.
    assert!(
        rest.ends_with(b"Hello!\n  \n\t\n\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
}
