#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kurier_smtp::{EnhancedCode, Mailbox, ReversePath};
use kurier_spool::{
    Delivered, Envelope, Failure, QueueId, RecipientState, RemoteHost, ReportKind, ReportSent,
    TlsUsed,
};

use super::search::{Selector, search};
use super::timeline::Found;
use super::*;

const DAY: u64 = 86_400;
/// 2026-12-04T12:00:00Z.
const NOON: u64 = 1_796_385_600;

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap()
}

fn message(id: &str, to: &str, at: u64) -> Envelope {
    let mut e = Envelope::new(
        QueueId::parse(id).unwrap(),
        at,
        ReversePath::Mailbox(mailbox("alice@example.org")),
        vec![RecipientState::new(mailbox(to), false)],
        1234,
    );
    e.client_ip = Some("192.0.2.7".parse().unwrap());
    e.helo = "client.example".into();
    e.listener = Some("submission".into());
    e.auth_user = Some("alice@example.org".into());
    e.message_id = Some(format!("{id}@example.org"));
    e
}

fn keep(days: u64, bytes: u64) -> Keep {
    Keep {
        days: Duration::from_secs(days * DAY),
        bytes,
    }
}

const A: &str = "0123456789abc00000001";
const B: &str = "0123456789abc00000002";

#[test]
fn records_go_to_the_day_file_and_are_found_by_each_selector() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::new(dir.path().join("history"), keep(7, 1 << 20));
    let mut a = message(A, "bob@remote.test", NOON);
    let host = RemoteHost {
        tls: Some(TlsUsed {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            verified: true,
        }),
        ..RemoteHost::new("mx.remote.test", Some("192.0.2.25".parse().unwrap()))
    };
    a.recipients[0].deferred(
        NOON + 1,
        Failure::local(EnhancedCode(4, 4, 1), "connect to 192.0.2.25:25: timed out"),
        NOON + 60,
    );
    a.recipients[0].delivered(
        NOON + 61,
        Delivered::Remote {
            host,
            reply: "250 2.0.0 queued".into(),
            relayed: false,
        },
    );
    a.recipients[0].took(Duration::from_millis(42));
    h.record(&a, Left::Done, NOON + 61);
    let b = message(B, "carol@remote.test", NOON + 100);
    h.record(&b, Left::Deleted, NOON + 200);
    assert!(dir.path().join("history/2026-12-04.jsonl").exists());

    let spool = dir.path().join("spool");
    let find =
        |s: Selector| search(&dir.path().join("history"), &spool, &s, 0, NOON + 300).unwrap();
    let by_id = find(Selector::Id(QueueId::parse(A).unwrap()));
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].envelope, a);
    let text = by_id[0].text();
    for part in [
        "received from client.example [192.0.2.7] on submission without TLS, AUTH alice@example.org",
        "Message-ID <0123456789abc00000001@example.org>",
        "bob@remote.test: deferred: x-kurier; connect to 192.0.2.25:25: timed out",
        "bob@remote.test: delivered to mx.remote.test [192.0.2.25] over TLSv1.3 TLS13_AES_128_GCM_SHA256 (certificate verified) in 42 ms: 250 2.0.0 queued",
        "2026-12-04T12:01:01Z  left the queue: 1 delivered, 0 failed",
    ] {
        assert!(text.contains(part), "{part:?} in\n{text}");
    }
    assert_eq!(
        find(Selector::Recipient("Carol@Remote.test".into()))[0].state,
        "deleted"
    );
    assert_eq!(
        find(Selector::MessageId(format!("<{A}@example.org>"))).len(),
        1
    );
    assert_eq!(find(Selector::Sender("alice@example.org".into())).len(), 2);
    assert_eq!(find(Selector::Sender("<>".into())).len(), 0);
    assert_eq!(find(Selector::All).len(), 2);
    assert!(find(Selector::Recipient("dave@remote.test".into())).is_empty());
    // --since: by when the message left the queue.
    let since = search(
        &dir.path().join("history"),
        &spool,
        &Selector::All,
        NOON + 150,
        NOON + 300,
    );
    assert_eq!(since.unwrap().len(), 1);
}

#[test]
fn a_report_is_found_with_its_message_and_a_repeated_record_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::new(dir.path(), keep(7, 1 << 20));
    let mut a = message(A, "bob@remote.test", NOON);
    a.recipients[0].failed(
        NOON + 5,
        Failure::local(EnhancedCode(5, 1, 1), "no such user"),
    );
    a.reports.push(ReportSent {
        at: NOON + 5,
        id: QueueId::parse(B).unwrap(),
        to: mailbox("alice@example.org"),
        kinds: vec![ReportKind::Failed],
    });
    // Written twice (a crash before the queue file was removed), and a line cut short.
    h.record(&a, Left::Done, NOON + 5);
    h.record(&a, Left::Done, NOON + 6);
    let mut dsn = message(B, "alice@example.org", NOON + 5);
    dsn.sender = ReversePath::Null;
    dsn.report_of = Some(a.id.clone());
    h.record(&dsn, Left::Done, NOON + 7);
    let file = dir.path().join("2026-12-04.jsonl");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(b"{\"left_at\":17963856");
    std::fs::write(&file, bytes).unwrap();
    let found = search(
        dir.path(),
        &dir.path().join("spool"),
        &Selector::Id(a.id.clone()),
        0,
        NOON + 10,
    )
    .unwrap();
    assert_eq!(found.len(), 2, "the message and its report");
    assert_eq!(found[0].left_at, Some(NOON + 6));
    let text = found[0].text();
    assert!(
        text.contains(&format!("report (failed) {B} queued to alice@example.org")),
        "{text}"
    );
    assert!(
        text.contains("left the queue: 0 delivered, 1 failed"),
        "{text}"
    );
    assert!(
        found[1]
            .text()
            .contains(&format!("report about {A} made here"))
    );
    let json = serde_json::to_value(&found).unwrap();
    assert_eq!(json[0]["state"], "done");
    assert_eq!(json[0]["timeline"][0]["kind"], "received");
}

#[test]
fn old_days_are_removed_and_the_size_limit_drops_the_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::new(dir.path(), keep(2, 1 << 20));
    for day in 0..4 {
        let at = NOON + day * DAY;
        h.record(&message(A, "bob@remote.test", at), Left::Done, at);
    }
    let days: Vec<String> = day_files(dir.path())
        .unwrap()
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(
        days,
        ["2026-12-05", "2026-12-06", "2026-12-07"],
        "older than 2 days: gone"
    );

    let dir = tempfile::tempdir().unwrap();
    let one = serde_json::to_vec(&Record {
        left_at: NOON,
        left: Left::Done,
        envelope: message(A, "bob@remote.test", NOON),
    })
    .unwrap()
    .len() as u64
        + 1;
    // Room for three records.
    let h = History::new(dir.path(), keep(30, 3 * one));
    for day in 0..3 {
        let at = NOON + day * DAY;
        h.record(&message(A, "bob@remote.test", at), Left::Done, at);
    }
    let at = NOON + 3 * DAY;
    h.record(&message(A, "bob@remote.test", at), Left::Done, at);
    let days: Vec<String> = day_files(dir.path())
        .unwrap()
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(days, ["2026-12-05", "2026-12-06", "2026-12-07"]);
    // Today's file alone at the limit: further records are dropped, not the day's own.
    h.record(&message(B, "bob@remote.test", at), Left::Done, at + 1);
    h.record(&message(B, "bob@remote.test", at), Left::Done, at + 2);
    let total: u64 = day_files(dir.path()).unwrap().iter().map(|f| f.2).sum();
    assert!(total <= 3 * one, "{total}");
}

#[test]
fn an_off_history_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::new(dir.path().join("h"), keep(0, 1 << 20));
    h.record(&message(A, "bob@remote.test", NOON), Left::Done, NOON);
    assert!(!dir.path().join("h").exists());
}

#[test]
fn a_queued_message_shows_where_it_stands() {
    let mut e = message(A, "bob@remote.test", NOON);
    e.tls = Some(TlsUsed {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        verified: false,
    });
    let text = Found::queued(e, NOON + 5).text();
    assert!(
        text.contains("on submission with TLSv1.3 TLS13_AES_256_GCM_SHA384"),
        "{text}"
    );
    assert!(
        text.contains("still queued: 1 recipient(s) pending"),
        "{text}"
    );
}
