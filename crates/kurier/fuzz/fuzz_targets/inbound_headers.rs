//! Header handling of received mail: removing forged Authentication-Results of ours
//! (RFC 8601 §5) and reading the header section. On what the DATA decoder lets through (CRLF
//! lines only), it never panics, is idempotent, leaves no claim of our id in the header
//! section, and never grows the message.
#![no_main]

use kurier::delivery::dsn::message_id;
use kurier::header::header_section;
use kurier::policy::sender_auth::strip_forged;
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

/// Our count of From:/Sender: fields agrees with the header parser's.
fn author_fields(data: &[u8]) {
    let counts = header_fields::count(data);
    let _ = header_fields::check(data, 50);
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(data) else {
        return;
    };
    let theirs = |name: HeaderName| parsed.headers().iter().filter(|h| h.name == name).count();
    assert_eq!(counts.from, theirs(HeaderName::From), "From: fields");
    assert_eq!(counts.sender, theirs(HeaderName::Sender), "Sender: fields");
}

fuzz_target!(|data: &[u8]| {
    received(data);
    let _ = message_id(data);
    let _ = header_section(data);
    if !crlf_only(data) {
        return;
    }
    author_fields(data);
    let once = strip_forged(data, ID);
    assert!(once.len() <= data.len());
    assert_eq!(strip_forged(&once, ID), once, "stripping twice changes nothing");
    let headers = String::from_utf8_lossy(header_section(&once)).to_ascii_lowercase();
    for line in headers.split("\r\n") {
        if let Some(value) = line.strip_prefix("authentication-results:") {
            let id = value.trim_start().split([';', ' ', '\t']).next().unwrap_or_default();
            assert_ne!(id, ID, "a forged claim survived: {line:?}");
        }
    }
});
