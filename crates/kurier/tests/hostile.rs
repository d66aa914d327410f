//! Hostile clients against the running server: each gets the right reply, memory stays
//! bounded, nothing panics, and well-behaved clients are still served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn slowloris_is_cut_by_the_command_timeout() {
    let s = TestServer::start("", "[limits]\ncommand_timeout = \"2s\"\n");
    let mut w = Wire::greeted(s.smtp);
    let mut writer = w.stream.try_clone().unwrap();
    let started = Instant::now();
    // One byte every 300 ms, never finishing the line (bounded: 30 bytes at most).
    let trickle = std::thread::spawn(move || {
        for b in b"NOOP slowly slowly slowly slow".iter() {
            if writer.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    assert_eq!(
        w.reply(),
        "421 4.4.2 mx.kurier.test Timeout, closing connection\r\n"
    );
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(6), "cut after {elapsed:?}");
    trickle.join().unwrap();
}

#[test]
fn connection_flood_is_refused_and_others_are_still_served() {
    let s = TestServer::start("", "[limits]\nconnections_per_ip = 5\n");
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..50 {
        let mut w = Wire::connect(s.smtp);
        let r = w.reply();
        if r.starts_with("421 4.7.0 Too many connections from your address") {
            refused += 1;
        } else {
            assert!(r.starts_with("220 "), "{r}");
        }
        flood.push(w);
    }
    assert_eq!(refused, 45);
    // A client from another address is served at once.
    let script = r#"
import socket, sys, time
t = time.time()
s = socket.socket(); s.settimeout(10); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", int(sys.argv[1])))
assert s.recv(100).startswith(b"220 "), "not greeted"
print("%.3f" % (time.time() - t))
"#;
    let out = run_ok(Command::new("python3").args(["-c", script, &s.smtp.to_string()]));
    let secs: f64 = out.trim().parse().unwrap();
    assert!(secs < 2.0, "a well-behaved client waited {secs} s");
}

#[test]
fn ten_thousand_recipients_get_452_after_the_limit() {
    let s = TestServer::default();
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    let mut batch = Vec::new();
    for i in 0..10_000 {
        batch.extend_from_slice(format!("RCPT TO:<postmaster+{i}@localhost>\r\n").as_bytes());
    }
    let mut writer = w.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    let (mut ok, mut full) = (0, 0);
    for _ in 0..10_000 {
        let r = w.reply();
        if r.starts_with("250 2.1.5") {
            ok += 1;
        } else if r == "452 4.5.3 Too many recipients\r\n" {
            full += 1;
        } else {
            panic!("unexpected reply {r:?}");
        }
    }
    sender.join().unwrap();
    assert_eq!((ok, full), (100, 9_900));
    assert!(w.cmd("DATA").starts_with("354 "));
    w.send(b"Subject: many\r\n\r\nx\r\n.\r\n");
    assert!(w.reply().starts_with("250 "));
    // 100 recipient addresses, one mailbox: one copy.
    s.wait_for_mail("localhost", "postmaster", 1);
}

#[test]
fn huge_message_beyond_size_is_refused_with_bounded_memory() {
    let s = TestServer::start("", "[limits]\nmessage_size = 1048576\n");
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
    assert!(w.cmd("DATA").starts_with("354 "));
    let before = peak_rss_kb(s.pid());
    let line = format!("{}\r\n", "x".repeat(998));
    let chunk = line.repeat(64);
    let mut writer = w.stream.try_clone().unwrap();
    // 64 MiB, 64 times the limit.
    let sender = std::thread::spawn(move || {
        for _ in 0..(64 * 1024 * 1024 / chunk.len()) {
            writer.write_all(chunk.as_bytes()).unwrap();
        }
        writer.write_all(b".\r\n").unwrap();
    });
    let r = w.reply();
    sender.join().unwrap();
    assert_eq!(
        r,
        "552 5.3.4 Message size exceeds fixed maximum message size of 1048576 octets\r\n"
    );
    let grown = peak_rss_kb(s.pid()).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "peak RSS grew by {grown} kB for a refused 64 MiB message"
    );
    assert_eq!(w.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    assert!(!s.maildir("localhost", "postmaster").join("new").exists());
}

#[test]
fn giant_lines_nul_bytes_and_invalid_utf8() {
    let s = TestServer::default();
    let mut w = Wire::greeted(s.smtp);
    let line = format!("NOOP {}\r\n", "y".repeat(100 * 1024));
    w.send(line.as_bytes());
    assert!(w.reply().starts_with("500 5.5.2 Line too long"));
    assert_eq!(w.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    w.send(b"MAIL FROM:<a\0b@example.test>\r\n");
    assert!(w.reply().starts_with("500 5.5.2 Command contains NUL"));
    w.send(b"MAIL FROM:<\xff\xfe@example.test>\r\n");
    assert!(w.reply().starts_with("500 5.5.2 "));
    w.send(b"\0\0\0\r\n");
    assert!(w.reply().starts_with("500 5.5.2 "));
    assert_eq!(w.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    assert!(!s.log().contains("panicked"));
}

#[test]
fn hostile_bytes_in_auth_identities_and_helo_cannot_forge_log_lines() {
    let s = TestServer::default();
    // A line break in an AUTH identity must not start a log line of the attacker's choosing
    // (fail2ban would ban 203.0.113.9), and a terminal escape must not reach whoever tails
    // the log: such identities are refused (501) before any password check or log line.
    let script = r#"
import base64, smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
b64 = lambda b: base64.b64encode(b).decode()
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as c:
    c.starttls(context=ctx); c.ehlo("client.test")
    forged = b"x\nFORGED authentication failure rhost=203.0.113.9"
    print(c.docmd("AUTH", "PLAIN " + b64(b"\0" + forged + b"\0wrong"))[0])
    print(c.docmd("AUTH", "LOGIN " + b64(b"evil\x1b[2J\x1b]0;owned\x07\r\nFORGED too"))[0])
    print(c.docmd(b64(b"wrong"))[0])
"#;
    let out = run_ok(Command::new("python3").args(["-c", script, &s.submission.to_string()]));
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["501", "334", "501"]
    );
    // A HELO with a control character is refused by the session before anything logs it.
    let mut w = Wire::connect(s.smtp);
    assert!(w.reply().starts_with("220 "));
    w.send(b"HELO evil\x1b[2J.test\r\n");
    assert!(w.reply().starts_with("500 5.5.2 "));
    assert_eq!(
        w.cmd("QUIT"),
        "221 2.0.0 mx.kurier.test closing connection\r\n"
    );
    let log = s.log();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged log line:\n{log}"
    );
    assert!(!log.contains('\x1b'), "a raw ESC in the log:\n{log:?}");
    assert!(!log.contains('\x07'), "a raw BEL in the log:\n{log:?}");
}

#[test]
fn two_authors_and_a_looping_message_are_refused() {
    let s = TestServer::default();
    let send = |message: &str| {
        let mut w = Wire::greeted(s.smtp);
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
        w.send(format!("{message}\r\n.\r\n").as_bytes());
        w.reply()
    };
    // A reader's program shows the first From:, DMARC and the sender check read one.
    let r = send("From: ceo@bank.example\r\nFrom: a@example.test\r\n\r\nwire the money");
    assert!(r.starts_with("554 5.6.0"), "{r}");
    let r = send("From: a@example.test\r\nSender: x@example.test\r\nsender: y@e.test\r\n\r\nb");
    assert!(r.starts_with("554 5.6.0"), "{r}");
    let hops = "Received: from a by b; Thu, 3 Dec 2026 06:00:00 +0000\r\n";
    let r = send(&format!(
        "{}From: a@example.test\r\n\r\nloop",
        hops.repeat(50)
    ));
    assert!(r.starts_with("554 5.4.6"), "{r}");
    let r = send(&format!(
        "{}From: a@example.test\r\n\r\nok",
        hops.repeat(49)
    ));
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // "From:" in the body is not a header field.
    let r = send("From: a@example.test\r\n\r\nFrom: b@example.test");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(s.wait_for_mail("localhost", "postmaster", 2).len(), 2);
}

/// Writes `bytes` one at a time, `gap` apart, until the server closes (bounded by the
/// length of `bytes`).
fn trickle(
    mut writer: std::net::TcpStream,
    bytes: Vec<u8>,
    gap: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for b in bytes {
            if writer.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(gap);
        }
    })
}

#[test]
fn a_noop_every_moment_does_not_keep_a_session_open_for_ever() {
    let s = TestServer::start("", "[limits]\njunk_commands = 100\n");
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("EHLO client.test").starts_with("250"));
    for i in 0..100 {
        let cmd = ["NOOP", "RSET", "HELP", "VRFY postmaster"][i % 4];
        assert!(!w.cmd(cmd).starts_with("421"), "{cmd} #{i}");
    }
    let r = w.cmd("NOOP");
    assert!(
        r.starts_with("421 4.7.0 Too many commands without mail"),
        "{r}"
    );
    // A client that sends mail may RSET between messages as often as it likes.
    let mut w = Wire::greeted(s.smtp);
    for _ in 0..150 {
        assert!(w.cmd("RSET").starts_with("250 "));
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
        w.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
        assert!(w.reply().starts_with("250 2.0.0"));
    }
}

#[test]
fn message_data_trickled_below_the_minimum_rate_is_cut() {
    // Each byte arrives well within data_timeout, but at 2 octets/s against 100 required:
    // the whole message may take 3 s plus its size at 100/s.
    let s = TestServer::start(
        "",
        "[limits]\ndata_timeout = \"3s\"\nmin_data_rate = 100\ncommand_timeout = \"5m\"\n",
    );
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
    assert!(w.cmd("DATA").starts_with("354 "));
    let started = Instant::now();
    let t = trickle(
        w.stream.try_clone().unwrap(),
        vec![b'x'; 60],
        Duration::from_millis(500),
    );
    let r = w.reply();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "cut after {elapsed:?}");
    t.join().unwrap();
    assert!(s.queued().is_empty());
}

#[test]
fn a_stalled_tls_handshake_is_cut_before_the_command_timeout() {
    let s = TestServer::start("", "[limits]\ntls_handshake_timeout = \"1s\"\n");
    // Implicit TLS: the first five bytes of a ClientHello record, then nothing.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.submissions)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let mut rest = Vec::new();
    use std::io::Read;
    let _ = c.read_to_end(&mut rest);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "held for {elapsed:?}");
    // STARTTLS: the same deadline.
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("EHLO client.test").starts_with("250"));
    assert!(w.cmd("STARTTLS").starts_with("220"));
    let started = Instant::now();
    w.send(&[0x16, 0x03, 0x01]);
    let mut rest = Vec::new();
    w.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = w.stream.read_to_end(&mut rest);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "held for {elapsed:?}");
    assert!(s.log().contains("TLS handshake timeout"));
}

#[test]
fn near_the_connection_limit_idle_clients_get_short_timeouts() {
    let s = TestServer::start("", "[limits]\nconnections = 5\ncommand_timeout = \"5m\"\n");
    // Every slot held by a client that says nothing: stress (80% or more of the limit)
    // cuts their 5-minute command timeout to seconds, until the load is below 80% again
    // (at least two of five go).
    let started = Instant::now();
    let idle: Vec<_> = (0..5)
        .map(|_| {
            let mut w = Wire::greeted(s.smtp);
            std::thread::spawn(move || {
                w.stream
                    .set_read_timeout(Some(Duration::from_secs(25)))
                    .unwrap();
                w.reply()
            })
        })
        .collect();
    let cut = idle
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|r| r.starts_with("421 4.4.2"))
        .count();
    assert!(cut >= 2, "{cut} cut");
    assert!(started.elapsed() < Duration::from_secs(60));
    // Slots are free again: a new client is served.
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("NOOP").starts_with("250"));
}

#[test]
fn an_auth_flood_from_many_addresses_does_not_take_the_memory() {
    // 150 clients, each from its own loopback address (so no per-address limit applies),
    // start AUTH at once; each password check (Argon2) needs about 19 MiB.
    let s = TestServer::start("", "[limits]\nconnections_per_ip = 200\n");
    let before = peak_rss_kb(s.pid());
    let script = r#"
import smtplib, ssl, sys, threading
port = int(sys.argv[1])
results = []
def one(i):
    try:
        src = "127.0.%d.%d" % (1 + i // 200, 2 + i % 200)
        c = smtplib.SMTP("127.0.0.1", port, timeout=120, source_address=(src, 0))
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        c.starttls(context=ctx)
        try:
            c.login("nobody%d@localhost" % i, "wrong")
            results.append("accepted")
        except smtplib.SMTPAuthenticationError as e:
            results.append(str(e.smtp_code))
        c.close()
    except Exception as e:
        results.append("error " + repr(e))
threads = [threading.Thread(target=one, args=(i,)) for i in range(150)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(sorted(set(results))))
print(len(results))
"#;
    let out = run_ok(Command::new("python3").args(["-c", script, &s.submission.to_string()]));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("535"), "{out}");
    assert_eq!(lines.next(), Some("150"), "{out}");
    let grown = peak_rss_kb(s.pid()).saturating_sub(before);
    assert!(
        grown < 300 * 1024,
        "peak RSS grew by {grown} kB for 150 parallel AUTH"
    );
    eprintln!("150 parallel AUTH: peak RSS grew by {grown} kB");
}

#[test]
fn parallel_auth_attempts_from_one_address_run_into_the_limit() {
    let s = TestServer::start(
        "",
        "[limits]\nauth_failures_per_ip = 5\nconnections_per_ip = 100\n",
    );
    let script = r#"
import smtplib, ssl, sys, threading
port = int(sys.argv[1])
results = []
def one(i):
    c = smtplib.SMTP("127.0.0.1", port, timeout=120)
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    c.starttls(context=ctx)
    try:
        c.login("nobody%d@localhost" % i, "wrong")
    except smtplib.SMTPAuthenticationError as e:
        results.append(e.smtp_code)
    c.close()
threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
for t in threads: t.start()
for t in threads: t.join()
print(results.count(535), results.count(454))
"#;
    let out = run_ok(Command::new("python3").args(["-c", script, &s.submission.to_string()]));
    let counts: Vec<usize> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    // At most the limit's worth of passwords were checked; the rest were throttled.
    assert!(counts[0] <= 5, "{out}");
    assert_eq!(counts[0] + counts[1], 40, "{out}");
}

#[test]
fn hundreds_of_dkim_signatures_cost_a_few_lookups() {
    let dns = dns::TestDns::start(vec![]);
    let s = TestServer::start("", &dns.config());
    let mut m = String::new();
    for i in 0..200 {
        m.push_str(&format!(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=flood{i}.test; s=s;\r\n\
             \th=from; bh=Ck5SoRNWUpSR4X0COv7R5ub2pUTtl6xz4dTFz++ji4M=; b=AAAA\r\n"
        ));
    }
    m.push_str("From: a@example.test\r\nSubject: flood\r\n\r\nbody\r\n.\r\n");
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
    assert!(w.cmd("DATA").starts_with("354 "));
    w.send(m.as_bytes());
    let r = w.reply();
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let keys = dns
        .queried()
        .into_iter()
        .filter(|q| q.contains("._domainkey."))
        .collect::<std::collections::BTreeSet<_>>();
    assert!(!keys.is_empty(), "no DKIM key was looked up");
    assert!(keys.len() <= 5, "{} key lookups: {keys:?}", keys.len());
}

#[test]
fn message_data_in_transit_stays_within_the_memory_budget() {
    // 2 MiB for all message data: 1 MiB for the first 256 KiB of every message, 1 MiB for
    // the messages that grow beyond it, each holding up to 512 KiB more while the rest goes
    // to disk. Two large messages at once need more than that half.
    let s = TestServer::start(
        "",
        "[limits]\nmessage_size = 8388608\nmessage_memory = 2097152\nmessage_memory_wait = \"5s\"\n",
    );
    let start = |w: &mut Wire| {
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
    };
    let line = format!("{}\r\n", "x".repeat(998));
    let (mut a, mut b) = (Wire::greeted(s.smtp), Wire::greeted(s.smtp));
    start(&mut a);
    a.send(format!("Subject: big\r\n\r\n{}", line.repeat(900)).as_bytes());
    std::thread::sleep(Duration::from_millis(500));
    // The second finds the budget spent: it is not read, and after waiting gives way.
    start(&mut b);
    let started = Instant::now();
    b.send(line.repeat(600).as_bytes());
    b.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let r = b.reply();
    assert!(r.starts_with("421 4.3.1 Too much mail in progress"), "{r}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "gave way after {waited:?}"
    );
    // The one holding it finishes normally, and the memory is free again.
    a.send(b".\r\n");
    let r = a.reply();
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // A message three times the whole budget: all but its start went to disk as it came.
    let mut c = Wire::greeted(s.smtp);
    start(&mut c);
    let numbered: String = (0..6000)
        .map(|i| format!("{i:06} {}\r\n", &line[7..]))
        .collect();
    c.send(format!("Subject: after\r\n\r\n{numbered}.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // Small messages do not wait for the large ones.
    let mut d = Wire::greeted(s.smtp);
    start(&mut d);
    d.send(b"Subject: small\r\n\r\nhi\r\n.\r\n");
    assert!(d.reply().starts_with("250 2.0.0"));
    assert!(s.log().contains("message data memory budget spent"));
    // Both large ones arrived whole, in order; the files their data went to have no name
    // and nothing is left in the spool's tmp/.
    let mail = s.wait_for_mail("localhost", "postmaster", 3);
    let after = mail
        .iter()
        .find(|m| m.windows(14).any(|w| w == b"Subject: after"))
        .expect("the 6 MB message");
    let body_at = after.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    assert_eq!(after[body_at..], common::lf(numbered.as_bytes()));
    let big = mail
        .iter()
        .find(|m| m.windows(12).any(|w| w == b"Subject: big"))
        .expect("the 900 kB message");
    assert!(big.ends_with(&common::lf(line.repeat(900).as_bytes())));
    assert!(common::list(&s.data_dir().join("spool/tmp")).is_empty());
}

/// Every header check reads the start of the message kept in memory: a header section that
/// does not end within it is refused, small message or large, never half checked.
#[test]
fn a_header_section_longer_than_the_start_kept_in_memory_is_refused() {
    let s = TestServer::default();
    let field = format!("X-Filler: {}\r\n", "f".repeat(988));
    for body in ["short body\r\n".to_string(), "b".repeat(998) + "\r\n"] {
        let mut w = Wire::greeted(s.smtp);
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
        let message = format!("{}\r\n{}", field.repeat(300), body.repeat(1000));
        w.send(&kurier_smtp::data::dot_stuff(message.as_bytes()));
        let r = w.reply();
        assert!(
            r.starts_with("552 5.3.4 Message header section longer than 256 KiB"),
            "{r}"
        );
        // The session goes on.
        assert!(w.cmd("RSET").starts_with("250 "));
    }
    assert!(s.queued().is_empty());
}
