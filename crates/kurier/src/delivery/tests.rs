//! The delivery decisions on their own: a fixed clock, the queue in memory, DNS from memory,
//! Maildirs in a temporary directory (or a writer that fails like a full disk). No network.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kurier_smtp::{EnhancedCode, Mailbox, Notify, ReversePath};
use kurier_spool::{
    AttemptResult, Delivered, DiagnosticType, Envelope, MemoryStore, MessageData, QueueId,
    RecipientState, RecipientStatus, Store,
};

use super::maildir::{LocalDelivery, Maildirs};
use super::smtp::Outbound;
use super::{Engine, Job, Setup};
use crate::config::{AliasTargets, Config};
use crate::data_dir::DataDir;
use crate::directory::Directory;
use crate::dns::fake::StaticDns;
use crate::time::{Clock, FixedClock};

const T0: u64 = 1_796_119_200; // Tue, 1 Dec 2026 10:00:00 +0000
const BODY: &[u8] =
    b"From: <alice@src.test>\r\nSubject: hi\r\nMessage-ID: <m1@src.test>\r\n\r\nhello\r\n";

pub(super) struct Rig {
    pub(super) engine: Arc<Engine>,
    pub(super) store: Arc<MemoryStore>,
    clock: Arc<FixedClock>,
    data: tempfile::TempDir,
    /// What built the engine, for [`super::start`] (the scheduling tests run the workers).
    pub(super) setup: Option<Setup>,
}

/// A writer that fails as a full disk does.
struct FullDisk;

impl LocalDelivery for FullDisk {
    fn write(&self, _: &Path, _: &str, _: &MessageData) -> std::io::Result<PathBuf> {
        Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
    }
}

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap()
}

fn rig_with(local: Option<Arc<dyn LocalDelivery>>) -> Rig {
    rig_configured(local, |_| {})
}

/// The rig with the configuration changed by `tweak` (routes, limits).
pub(super) fn rig_configured(
    local: Option<Arc<dyn LocalDelivery>>,
    tweak: impl FnOnce(&mut Config),
) -> Rig {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        hostname: "mx.kurier.test".into(),
        domains: vec!["kurier.test".into()],
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    // Users are looked up by address; the hash is never checked on delivery.
    for user in ["alice@kurier.test", "bob@kurier.test"] {
        config.users.insert(user.into(), "$argon2id$unused".into());
    }
    config.aliases.insert(
        "team@kurier.test".into(),
        AliasTargets::Many(vec!["alice@kurier.test".into(), "bob@kurier.test".into()]),
    );
    tweak(&mut config);
    let config = Arc::new(config);
    let data_dir = DataDir::new(data.path());
    let dns = Arc::new(StaticDns::new());
    dns.fail("down.test");
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(FixedClock::at(T0));
    let local = local.unwrap_or_else(|| {
        Arc::new(Maildirs {
            hostname: config.hostname.clone(),
        })
    });
    let setup = || Setup {
        spool: store.clone(),
        local: local.clone(),
        clock: clock.clone(),
        directory: Arc::new(Directory::new(&config, &data_dir)),
        outbound: Arc::new(Outbound::new(&config, dns.clone()).unwrap()),
        signers: Arc::new(crate::dkim::Signers::load(&data_dir)),
        config: config.clone(),
        recovered: Vec::new(),
        dead_destinations: data.path().join("dead-destinations.json"),
        history: Arc::new(crate::history::History::off()),
        suppressions: Arc::new(super::suppress::SuppressionList::new(data.path())),
    };
    let (engine, _) = Engine::new(setup());
    let setup = Some(setup());
    Rig {
        engine: Arc::new(engine),
        store,
        clock,
        data,
        setup,
    }
}

fn rig() -> Rig {
    rig_with(None)
}

impl Rig {
    /// Queues a message from `sender` (empty: `<>`) to `rcpts`, each with its NOTIFY.
    pub(super) fn queue(&self, sender: &str, rcpts: &[(&str, Option<Notify>)]) -> QueueId {
        self.queue_message(sender, rcpts, BODY)
    }

    /// [`Rig::queue`] with the message's bytes.
    fn queue_message(
        &self,
        sender: &str,
        rcpts: &[(&str, Option<Notify>)],
        body: &[u8],
    ) -> QueueId {
        let recipients = rcpts
            .iter()
            .map(|(a, notify)| {
                let m = mailbox(a);
                let local = m.domain().as_str() == "kurier.test";
                let mut r = RecipientState::new(m, local);
                r.notify = *notify;
                r
            })
            .collect();
        let sender = if sender.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::Mailbox(mailbox(sender))
        };
        let env = Envelope::new(
            QueueId::generate(),
            self.clock.now(),
            sender,
            recipients,
            body.len() as u64,
        );
        self.store.commit(&env, body).unwrap();
        env.id
    }

    async fn pass(&self, id: &QueueId) {
        let envelope = self.store.envelope(id).unwrap();
        self.engine
            .process(Job {
                envelope,
                body: None,
                as_of: None,
            })
            .await;
    }

    /// Reports Kurier queued (messages from `<>`), with their bytes as text.
    fn reports(&self) -> Vec<(Envelope, String)> {
        self.store
            .all()
            .into_iter()
            .filter(|(e, _)| e.sender == ReversePath::Null)
            .map(|(e, b)| (e, String::from_utf8(b).unwrap()))
            .collect()
    }

    fn files(&self, folder: &str) -> Vec<String> {
        let dir = self
            .data
            .path()
            .join("mail/kurier.test")
            .join(folder)
            .join("new");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

const SUCCESS: Option<Notify> = Some(Notify {
    never: false,
    success: true,
    failure: true,
    delay: false,
});
const NEVER: Option<Notify> = Some(Notify {
    never: true,
    success: false,
    failure: false,
    delay: false,
});

#[tokio::test]
async fn aliases_lead_to_one_copy_per_mailbox() {
    let rig = rig();
    let id = rig.queue(
        "alice@src.test",
        &[("team@kurier.test", None), ("Alice@kurier.test", None)],
    );
    rig.pass(&id).await;
    assert!(
        rig.store.load(&id).is_err(),
        "a finished message leaves the queue"
    );
    let alice = rig.files("alice");
    let bob = rig.files("bob");
    assert_eq!((alice.len(), bob.len()), (1, 1), "{alice:?} {bob:?}");
    assert!(
        alice[0].starts_with("Return-Path: <alice@src.test>\nDelivered-To: alice@kurier.test\n")
    );
    assert!(bob[0].contains("Delivered-To: bob@kurier.test\n"));
    assert!(alice[0].ends_with("\nhello\n"), "stored with LF line ends");
    assert!(rig.reports().is_empty(), "no report was asked for");
}

#[tokio::test]
async fn dmarc_junk_goes_to_the_junk_folder_where_the_domain_quarantines() {
    let rig = rig();
    let id = rig.queue("alice@src.test", &[("bob@kurier.test", None)]);
    let mut env = rig.store.envelope(&id).unwrap();
    env.junk = true;
    rig.store.update(&env).unwrap();
    rig.pass(&id).await;
    assert!(rig.files("bob").is_empty());
    assert_eq!(rig.files("bob/.Junk").len(), 1);
    assert!(
        rig.data
            .path()
            .join("mail/kurier.test/bob/.Junk/maildirfolder")
            .exists()
    );
}

#[tokio::test]
async fn a_failed_local_write_is_deferred_and_retried_on_schedule() {
    let rig = rig_with(Some(Arc::new(FullDisk)));
    let id = rig.queue("alice@src.test", &[("bob@kurier.test", None)]);
    rig.pass(&id).await;
    let env = rig.store.envelope(&id).unwrap();
    let r = &env.recipients[0];
    assert!(r.is_pending());
    assert_eq!(r.attempts, 1);
    let failure = r.last_failure.clone().unwrap();
    assert_eq!(failure.status, EnhancedCode(4, 3, 0));
    assert_eq!(failure.kind, DiagnosticType::Local);
    assert!(failure.text.contains("local delivery failed"), "{failure}");
    // The first retry waits a minute, with up to 10% jitter.
    assert!(
        (T0 + 60..=T0 + 66).contains(&r.next_attempt),
        "{}",
        r.next_attempt
    );
    assert!(matches!(
        r.history[0].result,
        AttemptResult::Deferred { .. }
    ));
    assert_eq!(r.history[0].at, T0);
    // Not due yet: a pass changes nothing.
    rig.pass(&id).await;
    assert_eq!(rig.store.envelope(&id).unwrap().recipients[0].attempts, 1);
    rig.clock.advance(70);
    rig.pass(&id).await;
    assert_eq!(rig.store.envelope(&id).unwrap().recipients[0].attempts, 2);
}

#[tokio::test]
async fn a_delay_warning_once_then_a_failure_report_at_expiry() {
    let rig = rig();
    let id = rig.queue(
        "alice@src.test",
        &[("carol@down.test", None), ("dave@down.test", NEVER)],
    );
    rig.pass(&id).await;
    let env = rig.store.envelope(&id).unwrap();
    let failure = env.recipients[0].last_failure.clone().unwrap();
    assert_eq!(failure.status, EnhancedCode(4, 4, 3), "{failure}");
    assert!(rig.reports().is_empty(), "no warning before delay_warning");

    // Four hours later (the default delay_warning): one warning, for carol only.
    rig.clock.advance(4 * 3600 + 1);
    rig.pass(&id).await;
    let reports = rig.reports();
    assert_eq!(reports.len(), 1);
    let (dsn, text) = &reports[0];
    assert_eq!(dsn.recipients[0].address, mailbox("alice@src.test"));
    assert!(!dsn.recipients[0].local);
    assert!(text.contains("Subject: Delayed Mail (still being retried)"));
    assert!(
        text.contains(
            "Final-Recipient: rfc822; carol@down.test\r\nAction: delayed\r\nStatus: 4.4.3\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Will-Retry-Until: Sun, 6 Dec 2026 10:00:00 +0000\r\n"),
        "{text}"
    );
    assert!(!text.contains("dave@down.test"), "NOTIFY=NEVER");
    assert!(rig.store.envelope(&id).unwrap().delay_warned);

    // The next attempt warns no more.
    rig.clock.advance(3 * 3600);
    rig.pass(&id).await;
    assert_eq!(rig.reports().len(), 1);

    // After the maximum lifetime (5 days) both fail; carol's failure is reported.
    rig.clock.advance(5 * 24 * 3600);
    rig.pass(&id).await;
    assert!(rig.store.load(&id).is_err(), "the message is done");
    let reports = rig.reports();
    assert_eq!(reports.len(), 2);
    let text = reports
        .iter()
        .map(|(_, t)| t.as_str())
        .find(|t| t.contains("Action: failed"))
        .unwrap();
    assert!(text.contains("Subject: Undelivered Mail Returned to Sender"));
    assert!(
        text.contains(
            "Final-Recipient: rfc822; carol@down.test\r\nAction: failed\r\nStatus: 4.4.3\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Diagnostic-Code: x-kurier; message expired after 5d in the queue; last error:"
        ),
        "{text}"
    );
    assert!(!text.contains("dave@down.test"));
    assert!(
        text.contains("Content-Type: message/rfc822\r\n\r\nFrom: <alice@src.test>"),
        "the whole message comes back"
    );
}

#[tokio::test]
async fn reports_follow_notify_and_never_go_to_the_null_sender() {
    let rig = rig();
    // An unknown local mailbox fails at once (5.1.1).
    let plain = rig.queue("alice@src.test", &[("nobody@kurier.test", None)]);
    let never = rig.queue("alice@src.test", &[("nobody@kurier.test", NEVER)]);
    let bounce = rig.queue("", &[("nobody@kurier.test", None)]);
    for id in [&plain, &never, &bounce] {
        rig.pass(id).await;
        assert!(rig.store.load(id).is_err());
    }
    let reports = rig.reports();
    assert_eq!(reports.len(), 1, "only the plain one is reported");
    let (dsn, text) = &reports[0];
    assert_eq!(
        dsn.sender,
        ReversePath::Null,
        "a report is never reported on"
    );
    assert!(
        text.contains(
            "Final-Recipient: rfc822; nobody@kurier.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Diagnostic-Code: x-kurier; <nobody@kurier.test>: mailbox no longer exists\r\n"
        )
    );
}

/// A report carries the whole message only up to 1 MiB; of a larger one, its header section.
#[tokio::test]
async fn a_large_message_comes_back_as_its_header_section() {
    let rig = rig();
    let mut large = b"Subject: a large one\r\n\r\n".to_vec();
    large.extend_from_slice(&b"body of the large message\r\n".repeat(50_000));
    let id = rig.queue_message("alice@src.test", &[("nobody@kurier.test", None)], &large);
    rig.pass(&id).await;
    let reports = rig.reports();
    let (_, text) = &reports[0];
    assert!(text.contains("text/rfc822-headers"), "{text}");
    assert!(text.contains("Subject: a large one"));
    assert!(!text.contains("body of the large message"));
    assert!(text.len() < 10_000);
}

#[tokio::test]
async fn a_success_report_when_asked_and_delivered_locally() {
    let rig = rig();
    let id = rig.queue("alice@src.test", &[("bob@kurier.test", SUCCESS)]);
    rig.pass(&id).await;
    let reports = rig.reports();
    assert_eq!(reports.len(), 1);
    let (_, text) = &reports[0];
    assert!(text.contains("Subject: Successful Mail Delivery Report"));
    assert!(
        text.contains("Action: delivered\r\nStatus: 2.0.0\r\n"),
        "{text}"
    );
    assert!(
        text.contains("text/rfc822-headers"),
        "headers only for a success"
    );
}

#[tokio::test]
async fn held_messages_wait_and_admin_bounces_report() {
    let rig = rig();
    let id = rig.queue("alice@src.test", &[("carol@down.test", None)]);
    let mut env = rig.store.envelope(&id).unwrap();
    env.hold = true;
    rig.store.update(&env).unwrap();
    rig.pass(&id).await;
    assert_eq!(rig.store.envelope(&id).unwrap().recipients[0].attempts, 0);
    let (message, _) = rig
        .engine
        .change_locked(&id, &crate::control::QueueCommand::Bounce(id.clone()))
        .unwrap();
    assert!(message.contains("returned to sender"));
    let reports = rig.reports();
    assert_eq!(reports.len(), 1);
    assert!(
        reports[0]
            .1
            .contains("Diagnostic-Code: x-kurier; returned to sender by the administrator")
    );
}

#[test]
fn a_delivered_recipient_keeps_where_it_went() {
    let mut r = RecipientState::new(mailbox("x@kurier.test"), true);
    r.delivered(T0, Delivered::Local { files: vec![] });
    assert!(matches!(
        r.status,
        RecipientStatus::Delivered { at: T0, .. }
    ));
    assert_eq!(
        Delivered::Local { files: vec![] }.to_string(),
        "delivered (a copy already went to the same mailbox)"
    );
}

/// Waiting jobs hold small messages only; a large one is read back from the spool by its
/// worker (the channel of 256 jobs cannot pin 256 large messages in memory).
#[test]
fn jobs_carry_small_bodies_only() {
    let small = Arc::new(vec![b'x'; super::CARRIED_BODY]);
    assert!(super::carried(small).is_some());
    let large = Arc::new(vec![b'x'; super::CARRIED_BODY + 1]);
    assert!(super::carried(large).is_none());
}
