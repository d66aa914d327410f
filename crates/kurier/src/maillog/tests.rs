//! The events as tracing-subscriber's text format writes them, as the server's log has them.
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::{Arc, Mutex};

use super::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What `events` log, formatted like the server's log (without time and colours).
fn log_of(events: impl FnOnce()) -> String {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, events);
    String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
}

fn peer() -> IpAddr {
    "192.0.2.7".parse().unwrap()
}

#[test]
fn a_forged_line_in_an_auth_identity_stays_inside_its_field() {
    let identity = "x\nFORGED authentication failure rhost=203.0.113.9\r\n";
    let log = log_of(|| {
        auth_failed(peer(), identity);
        auth_throttled(peer(), identity);
        auth_as_other_refused(peer(), "alice@example.test", identity);
    });
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
    assert!(log.contains(
        "authentication failed peer=192.0.2.7 user=x\\nFORGED authentication failure \
         rhost=203.0.113.9\\r\\n"
    ));
}

#[test]
fn terminal_escapes_in_a_session_are_written_visibly() {
    let tls = TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    };
    let log = log_of(|| {
        connection_closed(&ConnectionClosed {
            peer: peer(),
            listener: Role::Submission,
            helo: Some("client\u{1b}[2J\u{9b}31m"),
            tls: Some(&tls),
            auth: Some("bob\u{7}"),
            messages: 1,
            duration: Duration::from_millis(12),
            end: "closed",
        })
    });
    assert!(!log.chars().any(|c| c.is_control() && c != '\n'), "{log:?}");
    assert_eq!(
        log.trim_end().split_once(" connection closed ").unwrap().1,
        "peer=192.0.2.7 listener=submission helo=client\\x1b[2J\\u{9b}31m tls=TLSv1.3 \
         auth=bob\\x07 messages=1 duration_ms=12 end=closed"
    );
}

#[test]
fn delivery_lines_keep_their_messages_and_fields() {
    let id = QueueId::parse("0123456789abc01234567").unwrap();
    let rcpt = Mailbox::parse("bob@remote.test").unwrap();
    let mta = RemoteHost::new("mx.remote.test", Some("192.0.2.25".parse().unwrap()));
    let mut failure = Failure::local(kurier_smtp::EnhancedCode(4, 4, 1), "no answer\r\nX");
    let log = log_of(|| {
        delivered_remote(&id, &rcpt, &mta, "250 2.0.0 Ok: queued as 123\n");
        delivery_deferred(&id, &rcpt, &failure, 60);
        failure.remote = Some(mta.clone());
        delivery_failed(&id, &rcpt, &failure);
        reusing_connection(&mta);
        let verified = RemoteHost {
            tls: Some(kurier_spool::TlsUsed {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                verified: true,
            }),
            ..mta.clone()
        };
        delivered_remote(&id, &rcpt, &verified, "250 ok");
    });
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 5, "{log}");
    assert!(lines[0].ends_with(
        "delivered queue_id=0123456789abc01234567 rcpt=bob@remote.test \
         mta=mx.remote.test [192.0.2.25] tls=none reply=250 2.0.0 Ok: queued as 123\\n"
    ));
    assert!(
        lines[4].ends_with("tls=TLSv1.3/verified reply=250 ok"),
        "{}",
        lines[4]
    );
    assert!(lines[1].ends_with(
        "delivery deferred queue_id=0123456789abc01234567 rcpt=bob@remote.test mta=- \
         reason=x-kurier; no answer\\r\\nX retry_in_s=60"
    ));
    assert!(lines[2].contains("delivery failed") && lines[2].contains("mta=mx.remote.test ["));
    assert!(lines[3].ends_with("reusing connection host=mx.remote.test [192.0.2.25]"));
}
