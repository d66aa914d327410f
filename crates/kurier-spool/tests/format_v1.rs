//! A spool written by queue format 1 (the committed files under `tests/data/v1`, made by the
//! first release) is read, upgraded to typed values, and rewritten in format 2.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use kurier_smtp::{EnhancedCode, Mailbox, Notify, OriginalRecipient, Ret, ReversePath};
use kurier_spool::{
    AttemptResult, Delivered, DiagnosticType, QueueId, RecipientStatus, RemoteHost, Spool,
};

const ID: &str = "05f1a2b3c4d5e0badf00d";

fn spool_with_v1_files(state: bool) -> (tempfile::TempDir, Spool, kurier_spool::Recovery) {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1");
    for sub in ["queue", "state"] {
        fs::create_dir_all(dir.path().join(sub)).unwrap();
        if sub == "queue" || state {
            fs::copy(data.join(sub).join(ID), dir.path().join(sub).join(ID)).unwrap();
        }
    }
    let (spool, recovery) = Spool::open(dir.path()).unwrap();
    (dir, spool, recovery)
}

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap()
}

fn host(name: &str, ip: [u8; 4]) -> RemoteHost {
    RemoteHost::new(name, Some(ip.into()))
}

#[test]
fn a_format_1_queue_file_is_read_with_typed_values() {
    let (_dir, spool, recovery) = spool_with_v1_files(false);
    assert_eq!(recovery.quarantined, 0);
    assert_eq!(recovery.queued.len(), 1);
    let env = &recovery.queued[0];
    assert_eq!(env.id.as_str(), ID);
    assert_eq!(env.sender, ReversePath::Mailbox(mailbox("alice@src.test")));
    assert_eq!(env.ret, Some(Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("env-1"));
    assert_eq!(env.client_ip, Some([192, 0, 2, 7].into()));
    assert_eq!(env.auth_user.as_deref(), Some("alice"));
    let bob = &env.recipients[0];
    assert_eq!(bob.address, mailbox("bob@dst.test"));
    assert_eq!(
        bob.orcpt,
        Some(OriginalRecipient {
            addr_type: "rfc822".into(),
            address: "Bob@dst.test".into()
        })
    );
    assert_eq!(
        bob.notify,
        Some(Notify {
            success: true,
            failure: true,
            ..Notify::default()
        })
    );
    assert_eq!(
        env.recipients[1].address.local(),
        "carol smith",
        "a quoted local part survives"
    );
    assert!(env.recipients[2].local);
    assert!(env.recipients.iter().all(|r| r.is_pending()));
    let (_, body) = spool.load(&env.id).unwrap();
    assert!(body.starts_with(b"Received: from client.src.test"));
    assert_eq!(body.len() as u64, env.size);
}

#[test]
fn a_format_1_state_file_is_upgraded_and_rewritten_in_format_2() {
    let (dir, spool, recovery) = spool_with_v1_files(true);
    let env = recovery.queued[0].clone();
    assert!(env.delay_warned);
    let bob = &env.recipients[0];
    assert!(bob.is_pending());
    assert_eq!(bob.attempts, 2);
    let last = bob.last_failure.clone().unwrap();
    assert_eq!(last.status, EnhancedCode(4, 3, 0));
    assert_eq!(last.kind, DiagnosticType::Smtp);
    assert_eq!(last.text, "451 4.3.0 try again later");
    assert_eq!(last.remote, Some(host("mx.dst.test", [192, 0, 2, 25])));
    assert!(matches!(
        &bob.history[0].result,
        AttemptResult::Recorded { text } if text.contains("deferred by mx.dst.test [192.0.2.25]")
    ));
    match &env.recipients[1].status {
        RecipientStatus::Delivered {
            at,
            delivered:
                Delivered::Remote {
                    host: h,
                    reply,
                    relayed,
                },
        } => {
            assert_eq!(*at, 1764000005);
            assert_eq!(h, &host("mx.dst.test", [192, 0, 2, 25]));
            assert_eq!(reply, "250 2.0.0 Ok: queued as 4dK1");
            assert!(*relayed);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &env.recipients[2].status,
        RecipientStatus::Delivered { delivered: Delivered::Local { files }, .. }
            if files == &["/var/mail/kurier/dave/new/1764000001.M1P2.mx".to_string()]
    ));
    match &env.recipients[3].status {
        RecipientStatus::Failed { failure, .. } => {
            assert_eq!(failure.status, EnhancedCode(5, 1, 1));
            assert_eq!(
                failure.to_string(),
                "smtp; 550 5.1.1 <erin@gone.test>: no such user"
            );
            assert_eq!(failure.remote, Some(host("mx.gone.test", [192, 0, 2, 26])));
        }
        other => panic!("{other:?}"),
    }

    // Progress is written in format 2 and read back the same.
    spool.update(&env).unwrap();
    let state = fs::read(dir.path().join("state").join(ID)).unwrap();
    assert!(state.starts_with(b"KURIER-STATE 2\n"));
    let id = QueueId::parse(ID).unwrap();
    assert_eq!(spool.envelope(&id).unwrap(), env);
    drop(spool);
    let (_spool, again) = Spool::open(dir.path()).unwrap();
    assert_eq!(again.queued, vec![env]);
}

#[test]
fn new_messages_are_written_in_format_2() {
    let (dir, spool, recovery) = spool_with_v1_files(false);
    let mut env = recovery.queued[0].clone();
    env.id = QueueId::generate();
    let body = b"Subject: x\r\n\r\ny\r\n";
    env.size = body.len() as u64;
    spool.commit(&env, body).unwrap();
    let file = fs::read(dir.path().join("queue").join(env.id.as_str())).unwrap();
    assert!(file.starts_with(b"KURIER-QUEUE 2 "));
    assert_eq!(kurier_spool::decode_queue_file(&file).unwrap().0, env);
}
