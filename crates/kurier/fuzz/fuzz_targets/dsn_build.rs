//! Delivery reports carry values from strangers (ENVID, ORCPT, remote replies, host names)
//! back to a sender: whatever they hold, the report never contains a bare CR or LF
//! (RFC 5321 §2.3.8) and never gains a header line of its own.
#![no_main]

use kurier::delivery::dsn::{DsnAction, DsnInput, DsnRecipient, build};
use kurier_smtp::{EnhancedCode, Mailbox, OriginalRecipient};
use kurier_spool::DiagnosticType;
use libfuzzer_sys::fuzz_target;

fn bare_cr_or_lf(b: &[u8]) -> bool {
    (0..b.len()).any(|i| match b[i] {
        b'\r' => b.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || b[i - 1] != b'\r',
        _ => false,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|b| *b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    let mut next = || fields.next().unwrap_or_default();
    let (envid, addr_type, orcpt, text, mta, rcpt) = (next(), next(), next(), next(), next(), next());
    let original = next().replace(['\r', '\n'], "").into_bytes();
    let fallback = Mailbox::parse("x@dst.test").expect("a valid mailbox");
    let final_recipient = Mailbox::parse(&rcpt).unwrap_or_else(|_| fallback.clone());
    let action = match data.first().copied().unwrap_or(0) % 4 {
        0 => DsnAction::Failed,
        1 => DsnAction::Delayed,
        2 => DsnAction::Delivered,
        _ => DsnAction::Relayed,
    };
    let recipients = [DsnRecipient {
        final_recipient,
        original_recipient: Some(OriginalRecipient {
            addr_type,
            address: orcpt,
        }),
        action,
        status: EnhancedCode(5, 1, 1),
        remote_mta: Some(mta),
        diagnostic: Some((DiagnosticType::Smtp, text)),
        last_attempt: Some("Tue, 1 Dec 2026 10:00:00 +0000".into()),
        will_retry_until: None,
    }];
    let report = build(&DsnInput {
        reporting_mta: "mx.kurier.test",
        to: &fallback,
        envid: Some(&envid),
        arrival_date: "Tue, 1 Dec 2026 09:00:00 +0000",
        date: "Tue, 1 Dec 2026 10:00:00 +0000",
        message_id: "dsn@mx.kurier.test",
        recipients: &recipients,
        original: &original,
        headers_only: data.len() % 2 == 0,
        utf8: data.len() % 3 == 0,
    });
    assert!(!bare_cr_or_lf(&report), "a bare CR or LF in the report");
    let text = String::from_utf8_lossy(&report);
    let top = text.split("\r\n\r\n").next().unwrap_or_default();
    let names: Vec<&str> = top
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap_or_default())
        .filter(|n| !matches!(*n, "In-Reply-To" | "References"))
        .collect();
    assert_eq!(
        names,
        ["From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "MIME-Version", "Content-Type"],
        "the report's own header section is fixed"
    );
});
