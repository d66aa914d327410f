//! Delivery status notifications (RFC 3464): the reports sent back to a sender when a message
//! fails, is delayed, or (when asked with NOTIFY=SUCCESS, RFC 3461) is delivered or relayed.
//!
//! A DSN is a `multipart/report; report-type=delivery-status` message: a human-readable part,
//! the machine-readable `message/delivery-status` part with one block per recipient, and the
//! original message (or only its headers with RET=HDRS). Internationalized messages use the
//! RFC 6533 types `message/global-delivery-status` and `message/global`. The report is sent
//! from the null sender `<>` so that it can never cause another report (RFC 5321 §6.1).

use std::fmt::Write as _;

use kurier_smtp::command::encode_xtext;
use kurier_smtp::{EnhancedCode, Mailbox, OriginalRecipient};
use kurier_spool::DiagnosticType;

use crate::header::header_section;

/// The kind of report for one recipient (RFC 3464 §2.3.3 Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Delivery failed permanently.
    Failed,
    /// Not delivered yet; still trying.
    Delayed,
    /// Delivered to the mailbox.
    Delivered,
    /// Handed to a server that does not offer DSN; no further reports will come.
    Relayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }
}

/// One recipient block.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    /// The address the message was for.
    pub final_recipient: Mailbox,
    /// ORCPT, when the client gave one.
    pub original_recipient: Option<OriginalRecipient>,
    /// What happened.
    pub action: DsnAction,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: EnhancedCode,
    /// The remote server's name, e.g. `mx.example.org`.
    pub remote_mta: Option<String>,
    /// The remote reply or local error, e.g. `550 5.1.1 no such user`, with its type.
    pub diagnostic: Option<(DiagnosticType, String)>,
    /// RFC 5322 date of the last attempt.
    pub last_attempt: Option<String>,
    /// RFC 5322 date until which delivery will be retried (delayed only).
    pub will_retry_until: Option<String>,
}

/// Everything a report is made of.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The original sender (the report's recipient).
    pub to: &'a Mailbox,
    /// RFC 3461 ENVID of the original message, decoded.
    pub envid: Option<&'a str>,
    /// RFC 5322 date the original arrived.
    pub arrival_date: &'a str,
    /// RFC 5322 date of this report.
    pub date: &'a str,
    /// Message-ID for the report, without brackets.
    pub message_id: &'a str,
    /// The recipients reported on.
    pub recipients: &'a [DsnRecipient],
    /// The original message (CRLF line ends).
    pub original: &'a [u8],
    /// Include only the headers of the original (RET=HDRS, and always for non-failures).
    pub headers_only: bool,
    /// The original is internationalized (SMTPUTF8): use the RFC 6533 types.
    pub utf8: bool,
}

/// The Message-ID of a message, if it has one.
pub fn message_id(message: &[u8]) -> Option<String> {
    let headers = String::from_utf8_lossy(header_section(message))
        .replace("\r\n\t", " ")
        .replace("\r\n ", " ");
    headers.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("message-id")
            .then(|| value.trim().to_string())
    })
}

/// Builds the report (CRLF line ends).
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let worst = if input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Failed)
    {
        DsnAction::Failed
    } else if input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Delayed)
    {
        DsnAction::Delayed
    } else {
        DsnAction::Delivered
    };
    let subject = match worst {
        DsnAction::Failed => "Undelivered Mail Returned to Sender",
        DsnAction::Delayed => "Delayed Mail (still being retried)",
        _ => "Successful Mail Delivery Report",
    };
    let boundary = format!(
        "{}/{}",
        input.message_id.replace(['<', '>', '@'], "."),
        input.reporting_mta
    );
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}>\r\n\
         Auto-Submitted: auto-replied\r\n",
        mta = input.reporting_mta,
        to = input.to,
        date = input.date,
        id = input.message_id,
    );
    if let Some(orig) = message_id(input.original) {
        let _ = write!(m, "In-Reply-To: {orig}\r\nReferences: {orig}\r\n");
    }
    let _ = write!(
        m,
        "MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n"
    );
    m.push_str(&human_text(input, worst));
    let status_type = if input.utf8 {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: {status_type}\r\n\r\n"
    );
    let _ = write!(m, "Reporting-MTA: dns; {}\r\n", input.reporting_mta);
    // RFC 3464 §2.2.1: the envelope id as xtext, never raw (a decoded CR LF would start
    // a header line of its own).
    if let Some(envid) = input.envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", encode_xtext(envid));
    }
    let _ = write!(m, "Arrival-Date: {}\r\n", input.arrival_date);
    for r in input.recipients {
        m.push_str("\r\n");
        let kind = if input.utf8 { "utf-8" } else { "rfc822" };
        let _ = write!(m, "Final-Recipient: {kind}; {}\r\n", r.final_recipient);
        // RFC 3464 §2.3.1: the ORCPT address as xtext.
        if let Some(orcpt) = &r.original_recipient {
            let _ = write!(
                m,
                "Original-Recipient: {}; {}\r\n",
                atom(&orcpt.addr_type),
                encode_xtext(&orcpt.address)
            );
        }
        let _ = write!(
            m,
            "Action: {}\r\nStatus: {}\r\n",
            r.action.as_str(),
            r.status
        );
        if let Some(mta) = &r.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", one_line(mta));
        }
        if let Some((kind, text)) = &r.diagnostic {
            let _ = write!(
                m,
                "Diagnostic-Code: {}; {}\r\n",
                kind.as_str(),
                one_line(text)
            );
        }
        if let Some(d) = &r.last_attempt {
            let _ = write!(m, "Last-Attempt-Date: {d}\r\n");
        }
        if let Some(d) = &r.will_retry_until {
            let _ = write!(m, "Will-Retry-Until: {d}\r\n");
        }
    }
    let headers_only = input.headers_only || worst != DsnAction::Failed;
    let original_type = match (headers_only, input.utf8) {
        (true, false) => "text/rfc822-headers",
        (true, true) => "message/global-headers",
        (false, false) => "message/rfc822",
        (false, true) => "message/global",
    };
    let description = if headers_only {
        "Undelivered message headers"
    } else {
        "Undelivered message"
    };
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Description: {description}\r\nContent-Type: {original_type}\r\n\r\n"
    );
    let mut out = m.into_bytes();
    let original = if headers_only {
        header_section(input.original)
    } else {
        input.original
    };
    out.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// An address type as written: an atom, or `unknown` if it is not one (RFC 3464 §2.1.2).
fn atom(s: &str) -> &str {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        s
    } else {
        "unknown"
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn human_text(input: &DsnInput<'_>, worst: DsnAction) -> String {
    let mut t = format!(
        "This is the mail system at host {}.\r\n\r\n",
        input.reporting_mta
    );
    t.push_str(match worst {
        DsnAction::Failed => {
            "I'm sorry to have to inform you that your message could not be delivered to one or\r\n\
             more recipients. It is attached below.\r\n"
        }
        DsnAction::Delayed => {
            "Your message could not be delivered yet to one or more recipients. Delivery will be\r\n\
             retried; you do not need to send it again. You will be notified if it fails for good.\r\n"
        }
        _ => "Your message was successfully delivered to the destination(s) listed below.\r\n",
    });
    t.push_str("\r\n");
    for r in input.recipients {
        let _ = write!(t, "<{}>: {}", r.final_recipient, r.action.as_str());
        if let Some(mta) = &r.remote_mta {
            let _ = write!(t, " (host {})", one_line(mta));
        }
        if let Some((_, text)) = &r.diagnostic {
            let _ = write!(t, ":\r\n    {}", one_line(text));
        }
        t.push_str("\r\n");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    static SENDER: std::sync::LazyLock<Mailbox> = std::sync::LazyLock::new(|| {
        Mailbox::parse("sender@src.test").unwrap_or_else(|e| panic!("{e}"))
    });

    const ORIGINAL: &[u8] = b"Message-ID: <orig@src.test>\r\nSubject: hello\r\n\r\nbody line\r\n";

    fn input<'a>(recipients: &'a [DsnRecipient], headers_only: bool) -> DsnInput<'a> {
        DsnInput {
            reporting_mta: "mx.kurier.test",
            to: &SENDER,
            envid: Some("ENV1"),
            arrival_date: "Mon, 23 Nov 2026 09:00:00 +0000",
            date: "Mon, 23 Nov 2026 10:00:00 +0000",
            message_id: "dsn1@mx.kurier.test",
            recipients,
            original: ORIGINAL,
            headers_only,
            utf8: false,
        }
    }

    fn failed() -> DsnRecipient {
        DsnRecipient {
            final_recipient: Mailbox::parse("x@dst.test").unwrap_or_else(|e| panic!("{e}")),
            original_recipient: Some(OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "X@dst.test".into(),
            }),
            action: DsnAction::Failed,
            status: EnhancedCode(5, 1, 1),
            remote_mta: Some("mx.dst.test".into()),
            diagnostic: Some((DiagnosticType::Smtp, "550 5.1.1 no such user".into())),
            last_attempt: Some("Mon, 23 Nov 2026 09:59:00 +0000".into()),
            will_retry_until: None,
        }
    }

    #[test]
    fn failure_report_has_every_field() {
        let r = [failed()];
        let text = String::from_utf8(build(&input(&r, false))).unwrap_or_default();
        for needle in [
            "From: Mail Delivery System <MAILER-DAEMON@mx.kurier.test>\r\n",
            "To: <sender@src.test>\r\n",
            "Subject: Undelivered Mail Returned to Sender\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "In-Reply-To: <orig@src.test>\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.kurier.test\r\nOriginal-Envelope-Id: ENV1\r\nArrival-Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\n",
            "Final-Recipient: rfc822; x@dst.test\r\nOriginal-Recipient: rfc822; X@dst.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.dst.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\nLast-Attempt-Date: Mon, 23 Nov 2026 09:59:00 +0000\r\n",
            "Content-Type: message/rfc822\r\n\r\nMessage-ID: <orig@src.test>\r\nSubject: hello\r\n\r\nbody line\r\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(text.ends_with("--\r\n"));
    }

    #[test]
    fn headers_only_and_delay_reports() {
        let r = [failed()];
        let text = String::from_utf8(build(&input(&r, true))).unwrap_or_default();
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nMessage-ID: <orig@src.test>\r\nSubject: hello\r\n\r\n--"));
        assert!(!text.contains("body line"));
        let mut d = failed();
        d.action = DsnAction::Delayed;
        d.status = EnhancedCode(4, 4, 1);
        d.will_retry_until = Some("Sat, 28 Nov 2026 09:00:00 +0000".into());
        let r = [d];
        let text = String::from_utf8(build(&input(&r, false))).unwrap_or_default();
        assert!(text.contains("Subject: Delayed Mail (still being retried)"));
        assert!(text.contains("Action: delayed\r\nStatus: 4.4.1\r\n"));
        assert!(text.contains("Will-Retry-Until: Sat, 28 Nov 2026 09:00:00 +0000\r\n"));
        assert!(
            !text.contains("body line"),
            "delay reports carry headers only"
        );
    }

    #[test]
    fn envid_and_orcpt_are_written_as_xtext_never_raw() {
        let mut r = failed();
        r.original_recipient = Some(OriginalRecipient {
            addr_type: "rfc822\r\nX-Evil: 1".into(),
            address: "x@dst.test\r\n.\r\nMAIL FROM:<a@b>\n".into(),
        });
        let recipients = [r];
        let mut i = input(&recipients, false);
        i.envid = Some("e1\r\nX-Injected: yes\r\n--boundary");
        let out = build(&i);
        let text = String::from_utf8(out.clone()).unwrap_or_default();
        assert!(
            text.contains("Original-Envelope-Id: e1+0D+0AX-Injected:+20yes+0D+0A--boundary\r\n"),
            "{text}"
        );
        assert!(text.contains(
            "Original-Recipient: unknown; x@dst.test+0D+0A.+0D+0AMAIL+20FROM:<a@b>+0A\r\n"
        ));
        assert!(!text.contains("X-Injected: yes"));
        assert_eq!(bare_cr_or_lf(&out), 0, "{text}");
    }

    /// CR not followed by LF, or LF not preceded by CR.
    fn bare_cr_or_lf(b: &[u8]) -> usize {
        (0..b.len())
            .filter(|&i| {
                (b[i] == b'\r' && b.get(i + 1) != Some(&b'\n'))
                    || (b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r'))
            })
            .count()
    }

    #[test]
    fn message_id_is_found_in_folded_headers() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-Id:\r\n <a@b>\r\n\r\nMessage-ID: <not@this>\r\n")
                .as_deref(),
            Some("<a@b>")
        );
        assert_eq!(message_id(b"Subject: x\r\n\r\n"), None);
    }
}
