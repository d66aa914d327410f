//! The whole server session fed arbitrary client bytes in arbitrary pieces, with arbitrary
//! policy answers (including STARTTLS and AUTH steps). It never panics, never loops, never
//! answers 250 to a message unless the driver committed it, and every reply is well formed.
#![no_main]
use kurier_smtp::session::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (control, input) = data.split_at(data.len().min(8));
    let role = match control[0] % 3 {
        0 => Role::Smtp,
        1 => Role::Submission,
        _ => Role::Submissions,
    };
    let cfg = SessionConfig {
        hostname: "mx.fuzz.test".into(),
        role,
        starttls: control[1] % 2 == 0,
        max_message_size: 2048,
        max_recipients: 5,
        max_errors: 10,
        max_auth_failures: 3,
        max_junk_commands: 5,
    };
    let tls = (role == Role::Submissions).then(|| TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "x".into(),
    });
    let mut s = ServerSession::new(cfg, tls);
    let piece = usize::from(control.get(2).copied().unwrap_or(7) % 32) + 1;
    let mut verdict_bits = control.get(3).copied().unwrap_or(0x5a);
    let mut commits_ok = 0usize;
    let mut queued_replies = 0usize;
    let mut steps = 0usize;
    for chunk in input.chunks(piece) {
        s.receive(chunk);
        while let Some(action) = s.poll_action() {
            steps += 1;
            assert!(steps < 100_000, "session does not make progress");
            verdict_bits = verdict_bits.rotate_left(1);
            let yes = verdict_bits & 1 == 1;
            match action {
                Action::Send(reply) => {
                    let wire = reply.to_bytes();
                    for line in wire.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        assert!(line.len() <= 512 && line.ends_with(b"\r"));
                    }
                    if reply.code == 250 && reply.text().starts_with("Ok: queued as") {
                        queued_replies += 1;
                    }
                }
                Action::CheckMail { .. } | Action::CheckRcpt { .. } => s.resolve(if yes {
                    Verdict::Accept
                } else {
                    Verdict::Reject(kurier_smtp::Reply::new(
                        550,
                        kurier_smtp::codes::NO_SUCH_USER,
                        "no",
                    ))
                }),
                Action::Authenticate { .. } => s.resolve_auth(if yes {
                    AuthVerdict::Success
                } else {
                    AuthVerdict::BadCredentials
                }),
                Action::StartTls => s.tls_established(TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "x".into(),
                }),
                Action::Commit(m) => {
                    assert!(!m.recipients.is_empty() && m.recipients.len() <= 5);
                    assert!(m.body.len() <= 2048);
                    if yes {
                        commits_ok += 1;
                        s.resolve_commit(Ok("Q".into()));
                    } else {
                        s.resolve_commit(Err(kurier_smtp::Reply::new(
                            451,
                            kurier_smtp::codes::SYSTEM_TEMP,
                            "later",
                        )));
                    }
                }
                Action::Close => {}
            }
        }
    }
    assert_eq!(
        queued_replies, commits_ok,
        "a 250 for a message that was not committed"
    );
});
