//! Header handling of received mail: removing forged Authentication-Results of ours
//! (RFC 8601 §5) and reading the header section. On what the DATA decoder lets through (CRLF
//! lines only), it never panics, is idempotent, leaves no claim of our id in the header
//! section, and never grows the message.
#![no_main]

use kurier::delivery::dsn::{header_section, message_id};
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

fuzz_target!(|data: &[u8]| {
    let _ = message_id(data);
    let _ = header_section(data);
    if !crlf_only(data) {
        return;
    }
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
