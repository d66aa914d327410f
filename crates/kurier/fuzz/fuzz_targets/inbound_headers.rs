//! Header handling of received mail: removing forged Authentication-Results of ours
//! (RFC 8601 §5), reading the header section, counting author and trace fields, and
//! building our Received: from a hostile HELO, client name and recipient. On what the DATA
//! decoder lets through (CRLF lines only):
//! - stripping never panics, is idempotent, leaves no claim of our id, never grows the
//!   message;
//! - the From: ownership check reads an address list from every From:/Sender: field the
//!   counter that refuses a second one counts (none can hide from either);
//! - the Received: field is one field: folded lines only, no bare CR or LF, no early end
//!   of its comment, ASCII in a 7-bit message.
#![no_main]

use std::net::IpAddr;

use kurier::delivery::dsn::message_id;
use kurier::header::header_section;
use kurier::policy::header_fields;
use kurier::policy::sender_auth::strip_forged;
use kurier_smtp::trace::Received;
use libfuzzer_sys::fuzz_target;

const ID: &str = "mx.kurier.test";

/// CR only before LF, LF only after CR: what the DATA decoder guarantees.
fn crlf_only(b: &[u8]) -> bool {
    (0..b.len()).all(|i| match b[i] {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

/// Our Received: from fuzzed client-supplied names stays one well-formed field.
fn received(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{0}');
    let (helo, name, rcpt) = (
        parts.next().unwrap_or_default(),
        parts.next(),
        parts.next(),
    );
    for protocol in ["ESMTP", "UTF8SMTPS"] {
        let h = Received {
            helo,
            peer_ip: IpAddr::from([192, 0, 2, 1]),
            peer_name: name,
            by: "mx.kurier.test",
            protocol,
            tls: None,
            id: "q1",
            for_rcpt: rcpt,
            date: "Thu, 3 Dec 2026 06:00:00 +0000",
        }
        .to_header();
        assert!(h.starts_with("Received: from ") && h.ends_with("\r\n"));
        let body = &h[..h.len() - 2];
        for (i, b) in body.bytes().enumerate() {
            match b {
                b'\r' => assert_eq!(&body.as_bytes()[i..i + 3], b"\r\n\t", "{h:?}"),
                b'\n' => assert_eq!(body.as_bytes()[i - 1], b'\r', "{h:?}"),
                _ => {}
            }
        }
        // The client's names sit inside one comment and one angle pair: no other
        // parenthesis, angle bracket or semicolon comes from them.
        assert_eq!(h.matches('(').count(), 2, "{h:?}");
        assert_eq!(h.matches(')').count(), 2, "{h:?}");
        assert_eq!(h.matches(';').count(), 1, "{h:?}");
        assert_eq!(h.matches('<').count(), usize::from(rcpt.is_some()), "{h:?}");
        if protocol == "ESMTP" {
            assert!(h.is_ascii(), "{h:?}");
        }
    }
}

/// The ownership check sees every author field the counter counts.
fn author_fields(data: &[u8]) {
    let counts = header_fields::count(data);
    let _ = header_fields::check(data, 50);
    let authors = header_fields::author_addresses(data);
    assert_eq!(authors.len(), counts.from + counts.sender, "author fields");
}

fuzz_target!(|data: &[u8]| {
    received(data);
    let _ = message_id(data);
    let _ = header_section(data);
    if !crlf_only(data) {
        return;
    }
    // An accepted message ends with CRLF (or is empty).
    if data.is_empty() || data.ends_with(b"\r\n") {
        author_fields(data);
    }
    let mut once = data.to_vec();
    strip_forged(&mut once, ID);
    assert!(once.len() <= data.len());
    let mut twice = once.clone();
    strip_forged(&mut twice, ID);
    assert_eq!(twice, once, "stripping twice changes nothing");
    let headers = String::from_utf8_lossy(header_section(&once)).to_ascii_lowercase();
    for line in headers.split("\r\n") {
        if let Some(value) = line.strip_prefix("authentication-results:") {
            let id = value.trim_start().split([';', ' ', '\t']).next().unwrap_or_default();
            assert_ne!(id, ID, "a forged claim survived: {line:?}");
        }
    }
});
