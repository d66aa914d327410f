//! Outbound delivery end to end: a real DNS server (in this process), receiving peers on
//! port 25 of their own loopback addresses (another Kurier, and aiosmtpd scripted to answer
//! 4xx/5xx), routes to a smarthost, retries, and DSNs checked with Python's email package.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::dns::{Rr, TestDns};
use common::*;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

const POSTFIX: &str = "/usr/sbin/postfix";
use common::PEERS;

/// A Kurier that relays for alice@localhost, resolving through `dns`.
fn origin(dns: &TestDns, delivery: &str, more: &str) -> TestServer {
    let tables = format!(
        "{}\n[delivery]\nretry = [\"1s\"]\n{delivery}\n{more}",
        dns.config()
    );
    let s = TestServer::start("", &tables);
    s.add_user("alice@localhost");
    s
}

/// Submits a message as alice over STARTTLS + AUTH with Python's smtplib; returns the
/// recipients the server refused (JSON).
fn submit(s: &TestServer, rcpts: &[&str], rcpt_options: &[&str], subject: &str) -> Value {
    let script = r#"
import json, smtplib, ssl, sys
port, rcpts, ropts, subject = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
body = ("From: alice@localhost\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@test>\r\n\r\nHello from the tests.\r\n"
        % (", ".join(rcpts), subject, subject.replace(" ", "-"))).encode()
with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
    c.starttls(context=ctx)
    c.login("alice@localhost", "correct horse battery")
    refused = c.sendmail("alice@localhost", rcpts, body, rcpt_options=ropts)
print(json.dumps({k: [v[0], v[1].decode()] for k, v in refused.items()}))
"#;
    let out = run_ok(Command::new("python3").args([
        "-c",
        script,
        &s.submission.to_string(),
        &serde_json::to_string(rcpts).unwrap(),
        &serde_json::to_string(rcpt_options).unwrap(),
        subject,
    ]));
    serde_json::from_str(out.trim()).unwrap()
}

/// Parses a DSN with Python's email package (tests/peers/dsn_summary.py).
fn dsn_summary(file: &[u8]) -> Value {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), file).unwrap();
    let out = run_ok(
        Command::new("python3")
            .arg(format!("{PEERS}/dsn_summary.py"))
            .arg(f.path()),
    );
    serde_json::from_str(out.trim()).unwrap()
}

/// DSNs in alice's mailbox (messages from the mail system), waiting for `n`.
fn wait_dsns(s: &TestServer, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dsns: Vec<Value> = list(&s.maildir("localhost", "alice").join("new"))
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .filter(|m| String::from_utf8_lossy(m).contains("From: Mail Delivery System"))
            .map(|m| dsn_summary(&m))
            .collect();
        if dsns.len() >= n {
            assert_eq!(dsns.len(), n, "more DSNs than expected: {dsns:#?}");
            return dsns;
        }
        assert!(
            Instant::now() < deadline,
            "{} DSN(s), expected {n}\n{}",
            dsns.len(),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_queue_empty(s: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.queued().is_empty() {
        assert!(Instant::now() < deadline, "queue not empty:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn second_mx_is_used_when_the_first_refuses_and_kurier_peer_receives_over_tls() {
    let (ip1, ip2) = (next_loopback(), next_loopback());
    let dns = TestDns::start(vec![
        ("failover.test", Rr::Mx(20, "mx2.failover.test".into())),
        ("failover.test", Rr::Mx(10, "mx1.failover.test".into())),
        ("mx1.failover.test", Rr::A(ip1)),
        ("mx2.failover.test", Rr::A(ip2)),
    ]);
    let peer = TestServer::start_at(
        IpAddr::V4(ip2),
        25,
        "hostname = \"mx2.failover.test\"\ndomains = [\"failover.test\"]",
        "",
    );
    peer.add_user("bob@failover.test");
    let s = origin(&dns, "", "");
    let refused = submit(&s, &["bob@failover.test"], &[], "failover");
    assert_eq!(refused, serde_json::json!({}));
    peer.wait_for_mail("failover.test", "bob", 1);
    // A second message to the same host travels on the same connection.
    submit(&s, &["bob@failover.test"], &[], "failover again");
    let mail = peer.wait_for_mail("failover.test", "bob", 2);
    assert!(
        s.log().contains(&format!(
            "reusing connection host=mx2.failover.test [{ip2}]"
        )),
        "{}",
        s.log()
    );
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains("by mx2.failover.test (Kurier) with ESMTPS"),
        "{text}"
    );
    assert!(
        text.contains("by mx.kurier.test (Kurier) with ESMTPSA"),
        "{text}"
    );
    assert!(text.contains("Subject: failover"));
    wait_queue_empty(&s);
    let log = s.log();
    assert!(
        log.contains(&format!("mx1.failover.test [{ip1}]")),
        "first MX not tried first:\n{log}"
    );
    // Opportunistic STARTTLS: encrypted, the certificate not checked; the log says so.
    assert!(log.contains("tls=TLSv1.3/unverified"), "{log}");
    // At a graceful stop the pooled connection is closed politely: QUIT (so the peer's
    // session ends as "closed", not "client disconnected" or a read error after a TLS
    // connection cut without close_notify).
    let mut s = s;
    assert!(s.terminate().success());
    let peer_log = peer.log();
    let ends: Vec<&str> = peer_log
        .lines()
        .filter(|l| l.contains("connection closed") && l.contains("messages=2"))
        .collect();
    assert_eq!(ends.len(), 1, "{peer_log}");
    assert!(ends[0].contains("end=closed"), "{}", ends[0]);
}

#[test]
fn a_route_back_to_this_server_is_a_loop_bounced_at_once() {
    let dns = TestDns::start(vec![]);
    let mut s = TestServer::configured("", &dns.config());
    // Everything remote goes to... this server's own MX port.
    s.set_tables(&format!(
        "{}\n[delivery]\nretry = [\"1s\"]\n[[routes]]\ndomains = [\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        dns.config(),
        s.smtp
    ));
    s.spawn();
    s.add_user("alice@localhost");
    submit(&s, &["someone@elsewhere.test"], &[], "loop");
    let dsns = wait_dsns(&s, 1);
    let text = serde_json::to_string(&dsns[0]).unwrap();
    assert!(text.contains("5.4.6"), "{text}");
    assert!(text.contains("loops back to myself"), "{text}");
    wait_queue_empty(&s);
    // One attempt, no message accepted from ourselves.
    assert_eq!(
        s.log().matches("loops back to myself").count(),
        1,
        "{}",
        s.log()
    );
    // Accepted once (the submission): the route's own delivery got no further than the
    // greeting.
    assert_eq!(
        s.log().matches("message accepted").count(),
        1,
        "{}",
        s.log()
    );
}

#[test]
fn mixed_results_retry_then_success_and_a_bounce_for_the_permanent_failure() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("mixed.test", Rr::Mx(10, "mx.mixed.test".into())),
        ("mx.mixed.test", Rr::A(ip)),
    ]);
    let rx = Receiver::start(ip);
    let s = origin(&dns, "", "");
    submit(
        &s,
        &["ok@mixed.test", "perm@mixed.test", "flaky@mixed.test"],
        &[],
        "mixed results",
    );
    // First attempt: ok accepted (flaky 451, perm 550); the retry a second later: flaky.
    let got = rx.wait_messages(2);
    assert_eq!(got[0].0["rcpt_tos"], serde_json::json!(["ok@mixed.test"]));
    assert_eq!(
        got[1].0["rcpt_tos"],
        serde_json::json!(["flaky@mixed.test"])
    );
    assert_eq!(got[0].0["mail_from"], "alice@localhost");
    let dsn = &wait_dsns(&s, 1)[0];
    assert_eq!(dsn["content_type"], "multipart/report");
    assert_eq!(dsn["report_type"], "delivery-status");
    assert_eq!(
        dsn["parts"],
        serde_json::json!(["text/plain", "message/delivery-status", "message/rfc822"])
    );
    assert_eq!(dsn["return_path"], "<>");
    assert_eq!(dsn["to"], "<alice@localhost>");
    assert_eq!(dsn["auto_submitted"], "auto-replied");
    assert_eq!(dsn["per_message"]["Reporting-MTA"], "dns; mx.kurier.test");
    assert!(
        dsn["per_message"]["Arrival-Date"]
            .as_str()
            .unwrap()
            .ends_with("+0000")
    );
    let r = &dsn["recipients"];
    assert_eq!(r.as_array().unwrap().len(), 1, "{dsn:#}");
    assert_eq!(r[0]["Final-Recipient"], "rfc822; perm@mixed.test");
    assert_eq!(r[0]["Action"], "failed");
    assert_eq!(r[0]["Status"], "5.1.1");
    assert_eq!(r[0]["Remote-MTA"], "dns; mx.mixed.test");
    assert_eq!(
        r[0]["Diagnostic-Code"],
        "smtp; 550 5.1.1 <perm@mixed.test>: no such user here (scripted)"
    );
    assert!(r[0]["Last-Attempt-Date"].is_string());
    assert_eq!(dsn["original"]["subject"], "mixed results");
    wait_queue_empty(&s);
}

#[test]
fn domain_without_mx_is_its_own_mail_host() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![("implicit.test", Rr::A(ip))]);
    let rx = Receiver::start(ip);
    let s = origin(&dns, "", "");
    submit(&s, &["someone@implicit.test"], &[], "implicit mx");
    let got = rx.wait_messages(1);
    assert_eq!(
        got[0].0["rcpt_tos"],
        serde_json::json!(["someone@implicit.test"])
    );
    wait_queue_empty(&s);
}

#[test]
fn null_mx_and_missing_domains_bounce_without_connecting() {
    let dns = TestDns::start(vec![("nullmx.test", Rr::Mx(0, ".".into()))]);
    let s = origin(&dns, "", "");
    submit(
        &s,
        &["a@nullmx.test", "b@nowhere.test"],
        &["ORCPT=rfc822;B@nowhere.test"],
        "unroutable",
    );
    let dsn = &wait_dsns(&s, 1)[0];
    let r = dsn["recipients"].as_array().unwrap();
    assert_eq!(r.len(), 2, "{dsn:#}");
    assert_eq!(r[0]["Final-Recipient"], "rfc822; a@nullmx.test");
    assert_eq!(r[0]["Status"], "5.1.10");
    assert!(
        r[0]["Diagnostic-Code"]
            .as_str()
            .unwrap()
            .contains("null MX")
    );
    assert!(r[0].get("Remote-MTA").is_none());
    assert_eq!(r[1]["Final-Recipient"], "rfc822; b@nowhere.test");
    assert_eq!(r[1]["Original-Recipient"], "rfc822; B@nowhere.test");
    assert_eq!(r[1]["Status"], "5.1.2");
    wait_queue_empty(&s);
}

#[test]
fn delay_warning_then_expiry_bounce() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("slow.test", Rr::Mx(10, "mx.slow.test".into())),
        ("mx.slow.test", Rr::A(ip)),
    ]);
    let _rx = Receiver::start(ip);
    let s = origin(&dns, "delay_warning = \"2s\"\nmax_lifetime = \"5s\"", "");
    submit(&s, &["temp@slow.test"], &[], "never arrives");
    let first = &wait_dsns(&s, 1)[0];
    assert_eq!(first["subject"], "Delayed Mail (still being retried)");
    let r = &first["recipients"][0];
    assert_eq!(r["Action"], "delayed");
    assert_eq!(r["Status"], "4.3.0");
    assert!(r["Will-Retry-Until"].is_string());
    assert!(
        r["Diagnostic-Code"]
            .as_str()
            .unwrap()
            .starts_with("smtp; 451 4.3.0")
    );
    assert!(
        first["parts"][2] == "text/rfc822-headers",
        "delay reports carry headers only: {first:#}"
    );
    let dsns = wait_dsns(&s, 2);
    let last = dsns
        .iter()
        .find(|d| d["recipients"][0]["Action"] == "failed")
        .unwrap();
    assert!(
        last["recipients"][0]["Diagnostic-Code"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{last:#}"
    );
    assert_eq!(last["recipients"][0]["Status"], "4.3.0");
    wait_queue_empty(&s);
}

#[test]
fn notify_success_relayed_and_delivered_notify_never_silences_failure() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("relay.test", Rr::Mx(10, "mx.relay.test".into())),
        ("mx.relay.test", Rr::A(ip)),
    ]);
    let rx = Receiver::start(ip);
    let s = origin(&dns, "", "");
    // Per-recipient NOTIFY via the rcpt options of the whole transaction: smtplib applies
    // the same options to every recipient, so send two messages.
    submit(
        &s,
        &["ok@relay.test", "alice@localhost"],
        &["NOTIFY=SUCCESS"],
        "success please",
    );
    submit(
        &s,
        &["perm@relay.test"],
        &["NOTIFY=NEVER"],
        "silent failure",
    );
    rx.wait_messages(1);
    let dsn = &wait_dsns(&s, 1)[0];
    assert_eq!(dsn["subject"], "Successful Mail Delivery Report");
    let mut actions: Vec<(String, String)> = dsn["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["Final-Recipient"].as_str().unwrap().to_string(),
                r["Action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        vec![
            (
                "rfc822; alice@localhost".to_string(),
                "delivered".to_string()
            ),
            ("rfc822; ok@relay.test".to_string(), "relayed".to_string()),
        ]
    );
    wait_queue_empty(&s);
    std::thread::sleep(Duration::from_millis(500));
    wait_dsns(&s, 1);
}

#[test]
fn smarthost_with_implicit_tls_and_auth() {
    // The relay account may send for the origin's domain (a grant, or it would be spoofing).
    let peer = TestServer::start(
        "hostname = \"smarthost.test\"\ndomains = [\"final.test\"]",
        "[senders]\n\"relay@final.test\" = [\"@localhost\"]\n",
    );
    peer.add_user("relay@final.test");
    peer.add_user("bob@final.test");
    let dns = TestDns::start(vec![(
        "smarthost.test",
        Rr::A(std::net::Ipv4Addr::LOCALHOST),
    )]);
    // The smarthost's self-signed certificate, pinned as the CA of the route.
    let pinned = peer.data_dir().join("tls/cert.pem");
    let route = |host: &str, domain: &str| {
        format!(
            "[[routes]]\ndomains = [\"{domain}\"]\nhost = \"{host}\"\nport = {}\ntls = \"implicit\"\n\
             ca_file = {pinned:?}\nusername = \"relay@final.test\"\npassword = \"{PASSWORD}\"\n",
            peer.submissions
        )
    };
    // The same server reached by an address its certificate does not name: the password
    // must not be sent.
    let routes = route("127.0.0.1", "elsewhere.test") + &route("smarthost.test", "*");
    let s = origin(&dns, "", &routes);
    submit(&s, &["bob@final.test"], &[], "via smarthost");
    let mail = peer.wait_for_mail("final.test", "bob", 1);
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains("by smarthost.test (Kurier) with ESMTPSA"),
        "{text}"
    );
    wait_queue_empty(&s);
    assert!(s.log().contains("tls=TLSv1.3/verified"), "{}", s.log());
    assert!(peer.log().contains("auth=relay@final.test"));
    let auths = peer.log().matches("auth=relay@final.test").count();
    submit(
        &s,
        &["x@elsewhere.test"],
        &[],
        "to a name the certificate does not cover",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let l = cli_ok(&s, &["queue", "list"]);
        if l.contains("1 attempt(s)") {
            break l;
        }
        assert!(Instant::now() < deadline, "{l}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        list.contains("TLS handshake with 127.0.0.1 failed"),
        "{list}"
    );
    assert_eq!(peer.log().matches("auth=relay@final.test").count(), auths);
    assert!(!peer.log().contains("authentication failed"));
}

#[test]
fn kill_9_during_a_delivery_attempt_loses_nothing() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("crash.test", Rr::Mx(10, "mx.crash.test".into())),
        ("mx.crash.test", Rr::A(ip)),
    ]);
    let rx = Receiver::start(ip);
    let mut s = origin(&dns, "", "");
    submit(&s, &["slow@crash.test"], &[], "survives a crash");
    // The receiver holds its final reply for 3 s: kill the sender in the middle.
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    assert_eq!(s.queued().len(), 1, "the message must still be queued");
    s.spawn();
    wait_queue_empty(&s);
    let got = rx.wait_messages(1);
    assert!(
        !got.is_empty() && got.len() <= 2,
        "delivered at least once (a duplicate is allowed)"
    );
    assert!(String::from_utf8_lossy(&got[0].1).contains("Subject: survives a crash"));
}

fn cli_ok(s: &TestServer, args: &[&str]) -> String {
    let out = s.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kurier {args:?} failed: {text}");
    text
}

fn cli_err(s: &TestServer, args: &[&str]) -> String {
    let out = s.cli(args);
    assert!(!out.status.success(), "kurier {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn first_queue_id(list: &str) -> String {
    assert!(list.starts_with("Queue id "), "the column header: {list}");
    list.lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn queue_commands_on_a_live_server_and_offline() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("q.test", Rr::Mx(10, "mx.q.test".into())),
        ("mx.q.test", Rr::A(ip)),
    ]);
    let _rx = Receiver::start(ip);
    let tables = format!("{}\n[delivery]\nretry = [\"1h\"]\n", dns.config());
    let mut s = TestServer::start("", &tables);
    s.add_user("alice@localhost");
    submit(&s, &["temp@q.test"], &[], "queued");
    // Wait for the first (failed) attempt to be recorded.
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let l = cli_ok(&s, &["queue", "list"]);
        if l.contains("1 attempt(s)") {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt recorded: {l}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        list.contains("alice@localhost")
            && list.contains("temp@q.test  pending, 1 attempt(s), next attempt in"),
        "{list}"
    );
    assert!(list.contains("last error: smtp; 451 4.3.0"), "{list}");
    assert!(list.ends_with("1 message(s) in the queue\n"), "{list}");
    let id = first_queue_id(&list);
    let show = cli_ok(&s, &["queue", "show", &id]);
    assert!(
        show.contains(&format!("Queue id:    {id}"))
            && show.contains("authenticated as alice@localhost"),
        "{show}"
    );
    assert!(
        show.contains("attempt: ") && show.contains("deferred by mx.q.test ["),
        "{show}"
    );
    assert!(cli_ok(&s, &["queue", "hold", &id]).contains("held"));
    assert!(cli_ok(&s, &["queue", "list"]).contains("[held]"));
    assert!(cli_err(&s, &["queue", "flush", &id]).contains("is on hold"));
    assert!(cli_ok(&s, &["queue", "release", &id]).contains("released"));
    // Released means retried now: a second attempt is recorded.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli_ok(&s, &["queue", "list"]).contains("2 attempt(s)") {
        assert!(Instant::now() < deadline, "release did not retry");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cli_ok(&s, &["queue", "flush", "--all"]).contains("1 message(s) scheduled"));
    assert!(cli_ok(&s, &["queue", "bounce", &id]).contains("returned to sender"));
    let dsn = &wait_dsns(&s, 1)[0];
    assert_eq!(dsn["recipients"][0]["Status"], "5.0.0");
    assert!(
        dsn["recipients"][0]["Diagnostic-Code"]
            .as_str()
            .unwrap()
            .contains("returned to sender by the administrator")
    );
    wait_queue_empty(&s);
    // Errors are clear.
    assert!(
        cli_err(&s, &["queue", "show", "0123456789abcdef01234"])
            .contains("no queued message 0123456789abcdef01234")
    );
    assert!(cli_err(&s, &["queue", "delete", "nope"]).contains("\"nope\" is not a queue id"));
    // Delete, online.
    submit(&s, &["temp@q.test"], &[], "to delete");
    let id = first_queue_id(&cli_ok(&s, &["queue", "list"]));
    assert!(cli_ok(&s, &["queue", "delete", &id]).contains("deleted"));
    assert!(cli_ok(&s, &["queue", "list"]).contains("0 message(s) in the queue"));
    // Offline: hold works on the spool; flush needs the server.
    submit(&s, &["temp@q.test"], &[], "offline");
    let id = first_queue_id(&cli_ok(&s, &["queue", "list"]));
    assert_eq!(s.terminate().code(), Some(0));
    assert!(cli_ok(&s, &["queue", "hold", &id]).contains("held (the server is not running"));
    assert!(cli_err(&s, &["queue", "flush", "--all"]).contains("the server is not running"));
    s.spawn();
    std::thread::sleep(Duration::from_millis(500));
    let show = cli_ok(&s, &["queue", "show", &id]);
    assert!(show.contains("Flags:       held"), "{show}");
}

#[test]
fn tls_required_and_verify_policies() {
    // A peer Kurier with its own certificate for peer.verify.test, and aiosmtpd without TLS.
    let peer = TestServer::start(
        "hostname = \"peer.verify.test\"\ndomains = [\"verify.test\"]",
        "",
    );
    peer.add_user("bob@verify.test");
    let ip = next_loopback();
    let _rx = Receiver::start(ip);
    let dns = TestDns::start(vec![
        ("peer.verify.test", Rr::A(std::net::Ipv4Addr::LOCALHOST)),
        ("plain.test", Rr::Mx(10, "mx.plain.test".into())),
        ("mx.plain.test", Rr::A(ip)),
    ]);
    let good_ca = peer.data_dir().join("tls/cert.pem");
    let other = TestServer::start("hostname = \"someone.else.test\"", "");
    let wrong_ca = other.data_dir().join("tls/cert.pem");
    let routes = format!(
        "[[routes]]\ndomains = [\"verify.test\"]\nhost = \"peer.verify.test\"\nport = {port}\ntls = \"verify\"\nca_file = {good_ca:?}\n\
         [[routes]]\ndomains = [\"wrongca.test\"]\nhost = \"peer.verify.test\"\nport = {port}\ntls = \"verify\"\nca_file = {wrong_ca:?}\n\
         [[routes]]\ndomains = [\"plain.test\"]\ntls = \"required\"\n",
        port = peer.smtp
    );
    let s = origin(&dns, "", &routes);
    submit(
        &s,
        &["bob@verify.test", "x@wrongca.test", "ok@plain.test"],
        &[],
        "tls policies",
    );
    // Verified TLS to the peer: delivered.
    let mail = peer.wait_for_mail("verify.test", "bob", 1);
    assert!(String::from_utf8_lossy(&mail[0]).contains("with ESMTPS"));
    // Wrong CA and no STARTTLS: deferred, never sent in the clear.
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let l = cli_ok(&s, &["queue", "list"]);
        if l.matches("1 attempt(s)").count() == 2 {
            break l;
        }
        assert!(Instant::now() < deadline, "{l}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        list.contains("x@wrongca.test  pending")
            && list.contains("TLS handshake with peer.verify.test failed"),
        "{list}"
    );
    assert!(
        list.contains("ok@plain.test  pending")
            && list.contains("does not offer STARTTLS and TLS is required"),
        "{list}"
    );
}

#[test]
fn a_failed_bounce_is_never_bounced() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("loop.test", Rr::Mx(10, "mx.loop.test".into())),
        ("mx.loop.test", Rr::A(ip)),
    ]);
    let rx = Receiver::start(ip);
    let s = origin(
        &dns,
        "",
        "[senders]\n\"alice@localhost\" = [\"@loop.test\"]\n",
    );
    // The sender is a remote address (granted to alice) that refuses mail: its bounce fails too.
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as c:
    c.starttls(context=ctx); c.login("alice@localhost", "correct horse battery")
    c.sendmail("perm-sender@loop.test", ["perm-rcpt@loop.test"], b"Subject: loop\r\n\r\nx\r\n")
"#;
    run_ok(Command::new("python3").args(["-c", script, &s.submission.to_string()]));
    wait_queue_empty(&s);
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.queued().is_empty());
    assert!(
        s.log()
            .contains("not reporting on a message from the null sender"),
        "{}",
        s.log()
    );
    assert!(
        list(rx.dir.path()).is_empty(),
        "nothing was accepted by the receiver"
    );
}

/// A private Postfix instance from Debian's package (its own config, queue and Maildir base),
/// receiving for postfix.test on `ip:25` with STARTTLS.
struct Postfix {
    dir: tempfile::TempDir,
}

impl Postfix {
    fn start(ip: std::net::Ipv4Addr) -> Postfix {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Postfix's own users must be able to reach their directories.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["etc", "queue", "data", "mail"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let postfix_user = nix::unistd::User::from_name("postfix")
            .unwrap()
            .expect("postfix user");
        nix::unistd::chown(&d.join("data"), Some(postfix_user.uid), None).unwrap();
        nix::unistd::chown(
            &d.join("mail"),
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["mx.postfix.test".to_string()]).unwrap();
        std::fs::write(d.join("etc/cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(d.join("etc/key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = mx.postfix.test\nmydestination =\n\
             inet_interfaces = loopback-only\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
             virtual_mailbox_domains = postfix.test\nvirtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = inline:{{ bob@postfix.test=bob/ }}\n\
             virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n\
             smtpd_tls_cert_file = {d}/etc/cert.pem\nsmtpd_tls_key_file = {d}/etc/key.pem\n\
             smtpd_tls_security_level = may\nsmtpd_tls_received_header = yes\nsmtputf8_enable = yes\n\
             maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\nalias_maps =\nalias_database =\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n",
            d = d.display()
        );
        std::fs::write(d.join("etc/main.cf"), main_cf).unwrap();
        // Written whole, from nothing in /etc/postfix: only the services this instance uses,
        // none chrooted, the SMTP server on its own address.
        let master = format!(
            "{ip}:25 inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             tlsmgr unix - - n 1000? 1 tlsmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\n\
             relay unix - - n - - smtp\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             local unix - n n - - local\n\
             virtual unix - n n - - virtual\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(d.join("etc/master.cf"), master).unwrap();
        let p = Postfix { dir };
        let status = Command::new(POSTFIX)
            .arg("-c")
            .arg(p.dir.path().join("etc"))
            .arg("start")
            .status()
            .unwrap();
        assert!(status.success(), "postfix start failed:\n{}", p.log());
        wait_listening(SocketAddr::new(IpAddr::V4(ip), 25));
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    fn wait_mail(&self, n: usize) -> Vec<Vec<u8>> {
        let new = self.dir.path().join("mail/bob/new");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let files = list(&new);
            if files.len() >= n {
                return files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "postfix delivered {} message(s)\n{}",
                files.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .arg("stop")
            .status();
    }
}

#[test]
fn delivery_to_postfix_over_starttls() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("postfix.test", Rr::Mx(10, "mx.postfix.test".into())),
        ("mx.postfix.test", Rr::A(ip)),
    ]);
    let postfix = Postfix::start(ip);
    let s = origin(&dns, "", "");
    submit(
        &s,
        &["bob@postfix.test"],
        &["NOTIFY=FAILURE,DELAY"],
        "to postfix",
    );
    let mail = postfix.wait_mail(1);
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains("by mx.postfix.test (Postfix) with ESMTPS"),
        "{text}"
    );
    assert!(text.contains("(using TLSv1.3"), "{text}");
    assert!(
        text.contains("by mx.kurier.test (Kurier) with ESMTPSA"),
        "{text}"
    );
    assert!(text.contains("Subject: to postfix"));
    wait_queue_empty(&s);
    assert!(
        postfix
            .log()
            .contains("to=<bob@postfix.test>, relay=virtual"),
        "{}",
        postfix.log()
    );
}

/// Submits one message per recipient in a single session, as alice (Python's smtplib).
fn submit_each(s: &TestServer, rcpts: &[String]) {
    let script = r#"
import json, smtplib, ssl, sys
port, rcpts = int(sys.argv[1]), json.loads(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
    c.starttls(context=ctx)
    c.login("alice@localhost", "correct horse battery")
    for i, r in enumerate(rcpts):
        body = ("From: alice@localhost\r\nTo: %s\r\nSubject: n%d\r\nMessage-ID: <n%d@test>\r\n\r\nHi.\r\n" % (r, i, i)).encode()
        c.sendmail("alice@localhost", [r], body)
"#;
    run_ok(Command::new("python3").args([
        "-c",
        script,
        &s.submission.to_string(),
        &serde_json::to_string(rcpts).unwrap(),
    ]));
}

#[test]
fn a_blackholed_destination_does_not_hold_up_the_others() {
    // A host that accepts connections and never says a word (a blackholed MX): each
    // connection to it waits for the whole remote_timeout, here 10 minutes.
    let (dead_ip, live_ip) = (next_loopback(), next_loopback());
    let blackhole = std::net::TcpListener::bind((dead_ip, 25)).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted = held.clone();
    std::thread::spawn(move || {
        for c in blackhole.incoming().flatten() {
            accepted.lock().unwrap().push(c);
        }
    });
    let rx = Receiver::start(live_ip);
    let dns = TestDns::start(vec![]);
    let routes = format!(
        "[[routes]]\ndomains = [\"dead.test\"]\nhost = \"{dead_ip}\"\n\
         [[routes]]\ndomains = [\"live.test\"]\nhost = \"{live_ip}\"\n"
    );
    let s = origin(
        &dns,
        "remote_timeout = \"10m\"\nworkers = 4\nper_destination = 2",
        &routes,
    );
    let dead: Vec<String> = (0..20).map(|i| format!("d{i}@dead.test")).collect();
    submit_each(&s, &dead);
    // The dead destination's connections are open before the healthy mail arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let live: Vec<String> = (0..30).map(|i| format!("l{i}@live.test")).collect();
    let started = Instant::now();
    submit_each(&s, &live);
    // All healthy messages arrive well within the remote timeout (wait_messages: 20 s).
    let got = rx.wait_messages(30);
    assert_eq!(got.len(), 30);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
    // The dead destination never got more than its own two connections.
    assert_eq!(held.lock().unwrap().len(), 2, "{}", s.log());
    let list = cli_ok(&s, &["queue", "list"]);
    assert_eq!(list.matches("@dead.test").count(), 20, "{list}");
    assert!(!list.contains("@live.test"), "{list}");
    // The view by destination: one line for the route's host, none for the healthy one.
    let by = cli_ok(&s, &["queue", "list", "--destinations"]);
    let line = by
        .lines()
        .find(|l| l.starts_with(&dead_ip.to_string()))
        .unwrap_or_default();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.get(1..3), Some(&["20", "20"][..]), "{by}");
    assert!(
        by.contains("1 destination(s)") && !by.contains(&live_ip.to_string()),
        "{by}"
    );
}

#[test]
fn history_after_delivery_a_bounce_and_a_restart() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("hist.test", Rr::Mx(10, "mx.hist.test".into())),
        ("mx.hist.test", Rr::A(ip)),
    ]);
    let rx = Receiver::start(ip);
    let mut s = origin(&dns, "", "");
    submit(&s, &["ok@hist.test", "perm@hist.test"], &[], "history test");
    rx.wait_messages(1);
    wait_queue_empty(&s);
    wait_dsns(&s, 1);
    let text = cli_ok(
        &s,
        &["queue", "history", "--message-id", "<history-test@test>"],
    );
    for part in [
        "on submission with TLSv1.3",
        ", AUTH alice@localhost, ",
        "Message-ID <history-test@test>, from <alice@localhost> for 2 recipient(s)",
        &format!(
            "ok@hist.test: delivered to mx.hist.test [{ip}] without TLS \
             (relayed: it sends no reports) in "
        ),
        " ms: 250 2.0.0 OK saved as 1",
        &format!("perm@hist.test: failed by mx.hist.test [{ip}] in "),
        " ms: 550 5.1.1 <perm@hist.test>: no such user here",
        "report (failed) ",
        "left the queue: 1 delivered, 1 failed",
    ] {
        assert!(text.contains(part), "{part:?} in\n{text}");
    }
    assert!(
        s.log().contains("tls=none reply=250 2.0.0 OK"),
        "{}",
        s.log()
    );
    let id = text.split_whitespace().next().unwrap().to_string();
    // The queue id finds the message and its report; --json is the same for scripts.
    let json: Value =
        serde_json::from_str(&cli_ok(&s, &["queue", "history", &id, "--json"])).unwrap();
    let found = json.as_array().unwrap();
    assert_eq!(found.len(), 2, "{json:#}");
    assert_eq!(found[0]["envelope"]["id"], id.as_str());
    assert_eq!(found[0]["state"], "done");
    assert_eq!(found[1]["envelope"]["report_of"], id.as_str());
    let kinds: Vec<&str> = found[0]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"received"));
    assert!(
        kinds.contains(&"report") && kinds.last() == Some(&"state"),
        "{kinds:?}"
    );
    let dsn = found[1]["timeline"].to_string();
    assert!(dsn.contains("delivered to"), "{dsn}");
    // With the server stopped, and after it started again.
    assert!(s.terminate().success());
    let stopped = cli_ok(&s, &["queue", "history", "--recipient", "OK@hist.test"]);
    assert!(stopped.contains(&id), "{stopped}");
    s.spawn();
    let again = cli_ok(
        &s,
        &[
            "queue",
            "history",
            "--sender",
            "alice@localhost",
            "--since",
            "1h",
        ],
    );
    assert!(again.contains(&id), "{again}");
    let none = cli_ok(&s, &["queue", "history", "--recipient", "nobody@hist.test"]);
    assert!(none.contains("no message found"), "{none}");
}

#[test]
fn address_families_preference_and_the_other_family_after_a_blocklist_refusal() {
    // One MX with an IPv6 address whose server refuses this client (550 5.7.1 at MAIL, as
    // a blocklist of the sending /64 does) and an IPv4 address whose server takes mail.
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("fam.test", Rr::Mx(10, "mx.fam.test".into())),
        ("mx.fam.test", Rr::Aaaa(std::net::Ipv6Addr::LOCALHOST)),
        ("mx.fam.test", Rr::A(ip)),
    ]);
    let _v6 = Receiver::start_on(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 25, true);
    let v4 = Receiver::start_on(IpAddr::V4(ip), 25, false);

    // Default (IPv6 first): refused over IPv6, delivered over IPv4, and the history says so.
    let s = origin(&dns, "", "");
    submit(&s, &["a@fam.test"], &[], "family retry");
    let got = v4.wait_messages(1);
    assert_eq!(got[0].0["rcpt_tos"], serde_json::json!(["a@fam.test"]));
    wait_queue_empty(&s);
    let text = cli_ok(&s, &["queue", "history", "--recipient", "a@fam.test"]);
    assert!(
        text.contains("mx.fam.test [::1] refused the sending IPv6 address (550 5.7.1")
            && text.contains("trying the other family"),
        "{text}"
    );
    assert!(
        text.contains(&format!("a@fam.test: delivered to mx.fam.test [{ip}]")),
        "{text}"
    );

    // IPv4 first: straight to the IPv4 server, no refusal on the way.
    let s4 = origin(&dns, "address_preference = \"ipv4\"", "");
    submit(&s4, &["b@fam.test"], &[], "ipv4 first");
    v4.wait_messages(2);
    wait_queue_empty(&s4);
    let text = cli_ok(&s4, &["queue", "history", "--recipient", "b@fam.test"]);
    assert!(!text.contains("refused the sending"), "{text}");
    assert!(
        text.contains(&format!("delivered to mx.fam.test [{ip}]")),
        "{text}"
    );

    // IPv6 only: the refusal is final (there is no other family to try), a bounce follows.
    let s6 = origin(&dns, "address_preference = \"ipv6_only\"", "");
    submit(&s6, &["c@fam.test"], &[], "ipv6 only");
    wait_queue_empty(&s6);
    let dsns = wait_dsns(&s6, 1);
    assert!(dsns[0].to_string().contains("5.7.1"), "{:#}", dsns[0]);
    assert_eq!(v4.wait_messages(2).len(), 2, "nothing more over IPv4");
}

#[test]
fn a_hard_failure_is_suppressed_for_the_same_sender_until_removed() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("supp.test", Rr::Mx(10, "mx.supp.test".into())),
        ("mx.supp.test", Rr::A(ip)),
    ]);
    let _rx = Receiver::start(ip);
    let s = origin(&dns, "", "");
    let texts =
        |n: usize| -> Vec<String> { wait_dsns(&s, n).iter().map(|d| d.to_string()).collect() };
    submit(&s, &["perm1@supp.test"], &[], "first");
    wait_queue_empty(&s);
    assert!(texts(1)[0].contains("no such user here (scripted)"));
    let list = cli_ok(&s, &["queue", "suppress", "list"]);
    assert!(
        list.contains("alice@localhost -> perm1@supp.test  5.1.1: mx.supp.test")
            && list.contains("1 suppressed address(es)"),
        "{list}"
    );
    // The second message bounces at once with the earlier reason, without asking the server.
    let asked = s.log().matches("mta=mx.supp.test").count();
    submit(&s, &["perm1@supp.test"], &[], "second");
    wait_queue_empty(&s);
    let second = texts(2)
        .into_iter()
        .find(|t| t.contains("not sent"))
        .unwrap();
    assert!(
        second.contains("it was refused on") && second.contains("5.1.1"),
        "{second}"
    );
    assert_eq!(
        s.log().matches("mta=mx.supp.test").count(),
        asked,
        "{}",
        s.log()
    );
    // Removed: the server is asked again.
    cli_ok(
        &s,
        &[
            "queue",
            "suppress",
            "remove",
            "alice@localhost",
            "perm1@supp.test",
        ],
    );
    assert!(
        cli_err(
            &s,
            &[
                "queue",
                "suppress",
                "remove",
                "alice@localhost",
                "perm1@supp.test"
            ]
        )
        .contains("not on the suppression list")
    );
    submit(&s, &["perm1@supp.test"], &[], "third");
    wait_queue_empty(&s);
    texts(3);
    assert!(s.log().matches("mta=mx.supp.test").count() > asked);
    // Added by hand: bounced without a connection.
    cli_ok(
        &s,
        &[
            "queue",
            "suppress",
            "add",
            "alice@localhost",
            "ok@supp.test",
            "--reason",
            "typo",
        ],
    );
    submit(&s, &["ok@supp.test"], &[], "fourth");
    wait_queue_empty(&s);
    assert!(texts(4).iter().any(|t| t.contains("(typo)")));
}

#[test]
fn a_rate_limit_spaces_deliveries_to_its_destination() {
    let ip = next_loopback();
    let dns = TestDns::start(vec![
        ("rate.test", Rr::Mx(10, "mx.rate.test".into())),
        ("mx.rate.test", Rr::A(ip)),
    ]);
    let rx = Receiver::start(ip);
    // 30 a minute: at least 2 s between two deliveries.
    let s = origin(&dns, "[delivery.rate_limits]\n\"rate.test\" = 30", "");
    let rcpts: Vec<String> = (0..3).map(|i| format!("r{i}@rate.test")).collect();
    submit_each(&s, &rcpts);
    rx.wait_messages(3);
    let mut times: Vec<u64> = list(rx.dir.path())
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.split('-').next().unwrap().parse().unwrap()
        })
        .collect();
    times.sort();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= 1900, "{times:?}");
    }
}

#[test]
fn a_clean_shutdown_finishes_what_was_sent_and_delivers_nothing_twice() {
    let (slow_ip, dead_ip) = (next_loopback(), next_loopback());
    // The receiver answers the final dot of a slow* message after 3 s; the dead host
    // accepts connections and never greets (its timeout here: 10 minutes).
    let rx = Receiver::start(slow_ip);
    let blackhole = std::net::TcpListener::bind((dead_ip, 25)).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted = held.clone();
    std::thread::spawn(move || {
        for c in blackhole.incoming().flatten() {
            accepted.lock().unwrap().push(c);
        }
    });
    let dns = TestDns::start(vec![]);
    let routes = format!(
        "[[routes]]\ndomains = [\"slow.test\"]\nhost = \"{slow_ip}\"\n\
         [[routes]]\ndomains = [\"dead.test\"]\nhost = \"{dead_ip}\"\n"
    );
    let mut s = origin(&dns, "remote_timeout = \"10m\"", &routes);
    submit(&s, &["slow@slow.test"], &[], "on the wire at shutdown");
    submit(
        &s,
        &["never@dead.test"],
        &[],
        "still connecting at shutdown",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The slow message's data went out right after it was accepted; its reply is due
    // about 3 s after that. Stop now.
    let stopping = Instant::now();
    let status = s.terminate();
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}\n{}", s.log());
    // Not the 10-minute timeout of the connection still waiting for a greeting.
    assert!(took < Duration::from_secs(8), "{took:?}");
    let log = s.log();
    assert!(
        log.contains("delivered") && log.contains("slow@slow.test"),
        "the transaction under way finished: {log}"
    );
    assert_eq!(rx.wait_messages(1).len(), 1);
    // The message still connecting stays queued, untried.
    let queued = s.queued();
    assert_eq!(queued.len(), 1, "{log}");
    let shown = cli_ok(&s, &["queue", "list"]);
    assert!(shown.contains("never@dead.test"), "{shown}");
    let attempts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("never@dead.test") && !l.contains("message accepted"))
        .collect();
    assert!(attempts.is_empty(), "no attempt was logged: {attempts:?}");
    // After the restart, the delivered message is not sent again: a later one arrives
    // alone.
    s.spawn();
    submit(&s, &["after@slow.test"], &[], "after the restart");
    let got = rx.wait_messages(2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        list(rx.dir.path())
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .count(),
        2,
        "{}",
        s.log()
    );
    assert!(String::from_utf8_lossy(&got[1].1).contains("Subject: after the restart"));
}
