//! The policy decisions without a socket: relay and recipients, the sender at MAIL, the
//! message rate, greylisting on a fixed clock, AUTH failures and the From: header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::data_dir::DataDir;
use crate::directory::users::{UserChange, change_user};
use crate::time::FixedClock;

/// A policy over `example.test` with users alice and bob, the given extra TOML, and a
/// resolver that points at a closed loopback port (no decision below may need DNS).
fn policy(extra: &str) -> (tempfile::TempDir, Policy, Arc<FixedClock>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "domains = [\"example.test\"]\n{extra}\n[aliases]\n\"info@example.test\" = \"alice@example.test\"\n"
    ))
    .unwrap();
    let data = DataDir::new(dir.path());
    for user in ["alice@example.test", "bob@example.test"] {
        change_user(&config, &data, user, UserChange::Add, Some("secret")).unwrap();
    }
    let clock = Arc::new(FixedClock::at(1_000_000));
    let greylist = config.greylisting.enabled.then(|| {
        Arc::new(Greylist::open(
            config.greylisting.clone(),
            data.greylist(),
            clock.now(),
        ))
    });
    let policy = Policy {
        directory: Arc::new(Directory::new(&config, &data)),
        resolver: Arc::new(MxResolver::new(&["127.0.0.1:9".to_string()]).unwrap()),
        greylist,
        auth_throttle: AuthThrottle::new(
            config.limits.auth_failures_per_ip,
            Duration::from_secs(900),
        ),
        message_rate: RateLimit::per_minute(config.limits.messages_per_minute),
        clock: clock.clone(),
        password_checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS),
        config: Arc::new(config),
    };
    (dir, policy, clock)
}

fn client(ip: [u8; 4], role: Role, auth: Option<&str>) -> Client<'_> {
    Client {
        ip: IpAddr::from(ip),
        role,
        auth,
        helo: "client.example.net",
    }
}

fn rcpt(s: &str) -> ForwardPath {
    ForwardPath::parse(s).unwrap()
}

fn mail(s: &str) -> ReversePath {
    ReversePath::parse(s).unwrap()
}

/// MAIL then RCPT as one transaction; the RCPT verdict.
async fn transaction(p: &Policy, c: &Client<'_>, from: &str, to: &str) -> Verdict {
    let mut tx = Transaction::default();
    let v = p.check_mail(&mail(from), &MailParams::default(), c, &mut tx);
    assert_eq!(v, Verdict::Accept, "MAIL {from}");
    p.check_rcpt(&rcpt(to), &RcptParams::default(), c, &mut tx)
        .await
}

fn refused(v: Verdict) -> (u16, String) {
    match v {
        Verdict::Reject(r) => (
            r.code,
            r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
        ),
        Verdict::Accept => panic!("accepted"),
    }
}

#[tokio::test]
async fn relay_and_recipient_decisions() {
    let (_dir, p, _) = policy("");
    let stranger = client([192, 0, 2, 1], Role::Smtp, None);
    // Local users, aliases, subaddresses, postmaster: accepted from anyone.
    for to in [
        "<alice@example.test>",
        "<info@example.test>",
        "<bob+tag@example.test>",
        "<Postmaster>",
        "<postmaster@example.test>",
    ] {
        let v = transaction(&p, &stranger, "<x@remote.test>", to).await;
        assert_eq!(v, Verdict::Accept, "{to}");
    }
    // An unknown local user: 550 5.1.1 now, not a bounce later.
    let v = transaction(&p, &stranger, "<x@remote.test>", "<carol@example.test>").await;
    assert_eq!(refused(v), (550, "5.1.1".into()));
    // Relaying: refused without AUTH, whatever the tricks (the domain after the last @
    // decides, and the percent hack is a local part here).
    for to in [
        "<someone@remote.test>",
        "<\"alice@example.test\"@remote.test>",
        "<@example.test:someone@remote.test>",
    ] {
        let v = transaction(&p, &stranger, "<x@remote.test>", to).await;
        assert_eq!(refused(v), (554, "5.7.1".into()), "{to}");
    }
    let v = transaction(
        &p,
        &stranger,
        "<x@remote.test>",
        "<someone%remote.test@example.test>",
    )
    .await;
    assert_eq!(refused(v), (550, "5.1.1".into()));
    // Authenticated: relaying allowed, as the user's own address.
    let alice = client([192, 0, 2, 1], Role::Submission, Some("alice@example.test"));
    let v = transaction(&p, &alice, "<alice@example.test>", "<someone@remote.test>").await;
    assert_eq!(v, Verdict::Accept);
}

#[tokio::test]
async fn relay_networks_relay_without_auth_and_nobody_else() {
    let (_dir, p, _) = policy("relay_networks = [\"10.1.0.0/16\", \"2001:db8::/32\"]");
    let app = client([10, 1, 2, 3], Role::Smtp, None);
    let v = transaction(&p, &app, "<app@example.test>", "<someone@remote.test>").await;
    assert_eq!(v, Verdict::Accept);
    let outside = client([10, 2, 0, 1], Role::Smtp, None);
    let v = transaction(&p, &outside, "<x@remote.test>", "<someone@remote.test>").await;
    assert_eq!(refused(v), (554, "5.7.1".into()));
    // Local recipients are still checked for them.
    let v = transaction(&p, &app, "<app@example.test>", "<carol@example.test>").await;
    assert_eq!(refused(v), (550, "5.1.1".into()));
}

#[tokio::test]
async fn an_authenticated_user_sends_only_as_an_address_of_their_own() {
    let (_dir, p, _) = policy("[senders]\n\"bob@example.test\" = [\"info@example.test\"]\n");
    let alice = client([192, 0, 2, 1], Role::Submission, Some("alice@example.test"));
    let mut tx = Transaction::default();
    let params = MailParams::default();
    for own in [
        "<alice@example.test>",
        "<alice+x@example.test>",
        "<info@example.test>",
        "<>",
    ] {
        let v = p.check_mail(&mail(own), &params, &alice, &mut tx);
        assert_eq!(v, Verdict::Accept, "{own}");
    }
    let v = p.check_mail(&mail("<bob@example.test>"), &params, &alice, &mut tx);
    assert_eq!(refused(v), (553, "5.7.1".into()));
    // A grant in [senders] lets bob use info@.
    let bob = client([192, 0, 2, 1], Role::Submission, Some("bob@example.test"));
    let v = p.check_mail(&mail("<info@example.test>"), &params, &bob, &mut tx);
    assert_eq!(v, Verdict::Accept);
    // A refused MAIL does not become the transaction's sender.
    let v = p.check_mail(&mail("<alice@example.test>"), &params, &bob, &mut tx);
    assert!(matches!(v, Verdict::Reject(_)));
    assert_eq!(tx.from, Some(mail("<info@example.test>")));
}

#[tokio::test]
async fn the_message_rate_is_per_client_address() {
    let (_dir, p, _) = policy("[limits]\nmessages_per_minute = 2\n");
    let mut tx = Transaction::default();
    let a = client([192, 0, 2, 1], Role::Smtp, None);
    let b = client([192, 0, 2, 2], Role::Smtp, None);
    let from = mail("<x@remote.test>");
    let params = MailParams::default();
    assert_eq!(p.check_mail(&from, &params, &a, &mut tx), Verdict::Accept);
    assert_eq!(p.check_mail(&from, &params, &a, &mut tx), Verdict::Accept);
    let v = p.check_mail(&from, &params, &a, &mut tx);
    assert_eq!(refused(v), (451, "4.7.0".into()));
    assert_eq!(p.check_mail(&from, &params, &b, &mut tx), Verdict::Accept);
}

#[tokio::test]
async fn greylisting_on_a_fixed_clock() {
    let (_dir, p, clock) = policy(
        "[greylisting]\nenabled = true\ndelay = \"5m\"\nexempt_spf_pass = false\n\
         exempt_networks = [\"10.0.0.0/8\"]\n",
    );
    let stranger = client([192, 0, 2, 1], Role::Smtp, None);
    let (from, to) = ("<x@remote.test>", "<alice@example.test>");
    let v = transaction(&p, &stranger, from, to).await;
    assert_eq!(refused(v), (451, "4.7.1".into()));
    clock.advance(299);
    let v = transaction(&p, &stranger, from, to).await;
    assert_eq!(refused(v), (451, "4.7.1".into()), "retry before the delay");
    clock.advance(2);
    assert_eq!(transaction(&p, &stranger, from, to).await, Verdict::Accept);
    // A new triplet waits again; the same triplet is remembered.
    let v = transaction(&p, &stranger, from, "<bob@example.test>").await;
    assert!(matches!(v, Verdict::Reject(_)));
    clock.advance(3600);
    assert_eq!(transaction(&p, &stranger, from, to).await, Verdict::Accept);
    // Exempt: the configured networks, authenticated clients, submission, postmaster
    // without a domain (always accepted).
    let exempt = [
        client([10, 1, 2, 3], Role::Smtp, None),
        client([192, 0, 2, 9], Role::Smtp, Some("alice@example.test")),
        client([192, 0, 2, 9], Role::Submission, None),
    ];
    for c in &exempt {
        let v = transaction(&p, c, "<alice@example.test>", "<bob@example.test>").await;
        assert_eq!(v, Verdict::Accept, "{c:?}");
    }
    let fresh = client([198, 51, 100, 1], Role::Smtp, None);
    assert_eq!(
        transaction(&p, &fresh, from, "<Postmaster>").await,
        Verdict::Accept
    );
}

#[tokio::test]
async fn every_kind_of_auth_failure_counts_toward_the_per_address_limit() {
    let (_dir, p, _) = policy("[limits]\nauth_failures_per_ip = 2\n");
    let ip = IpAddr::from([192, 0, 2, 1]);
    let other = IpAddr::from([192, 0, 2, 2]);
    let v = p
        .authenticate(ip, "alice@example.test", "wrong".into(), None)
        .await;
    assert_eq!(v, AuthVerdict::BadCredentials);
    // Acting as another user is a failure like a wrong password.
    let v = p
        .authenticate(
            ip,
            "alice@example.test",
            "secret".into(),
            Some("bob@example.test"),
        )
        .await;
    assert_eq!(v, AuthVerdict::BadCredentials);
    // Over the limit: refused unchecked, even with the right password.
    let v = p
        .authenticate(ip, "alice@example.test", "secret".into(), None)
        .await;
    assert_eq!(v, AuthVerdict::Throttled);
    let v = p
        .authenticate(other, "alice@example.test", "secret".into(), None)
        .await;
    assert_eq!(v, AuthVerdict::Success);
}

#[tokio::test]
async fn the_from_header_must_belong_to_the_authenticated_user() {
    let (_dir, p, _) = policy("");
    let user = "alice@example.test";
    let ok = b"From: Alice <alice@example.test>\r\nSubject: x\r\n\r\nbody\r\n";
    assert!(p.check_from_header(user, ok).is_ok());
    let alias = b"From: info@example.test\r\n\r\nbody\r\n";
    assert!(p.check_from_header(user, alias).is_ok());
    let none = b"Subject: no From\r\n\r\nbody\r\n";
    assert!(p.check_from_header(user, none).is_ok());
    let foreign = b"From: Bob <bob@example.test>\r\n\r\nbody\r\n";
    let r = p.check_from_header(user, foreign).unwrap_err();
    assert_eq!((r.code, r.enhanced), (553, Some(codes::NOT_AUTHORIZED)));
    // One foreign address in a list is enough to refuse.
    let list = b"From: alice@example.test, ceo@bank.example\r\n\r\nbody\r\n";
    assert!(p.check_from_header(user, list).is_err());
    // A malformed line before it does not hide a From: (a parser that gives up there
    // would see no From: at all).
    let hidden = b"X: y\r\n\x0c\x0c\r\nFrom: ceo@bank.example\r\n\r\nbody\r\n";
    assert!(p.check_from_header(user, hidden).is_err());
    // Sender: is checked too.
    let sender = b"From: alice@example.test\r\nSender: bob@example.test\r\n\r\nbody\r\n";
    let r = p.check_from_header(user, sender).unwrap_err();
    assert!(r.lines.concat().contains("Sender:"), "{:?}", r.lines);
}
