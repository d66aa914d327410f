//! Header fields that make a message unsafe to accept, on every listener: more than one
//! From: or Sender: (RFC 5322 §3.6 allows one; with two, a reader's program shows one
//! author while DMARC and the sender check read the other), a header line that is not a
//! field (RFC 5322 §2.2; parsers disagree on where such a header ends), and more Received:
//! fields than the hop limit (RFC 5321 §6.3: a loop is ended by counting hops, 5.4.6).

use kurier_smtp::{EnhancedCode, Reply, codes};

use crate::header::{fields, header_section, parse_field, raw_fields};

/// RFC 3463: routing loop detected.
const LOOP: EnhancedCode = EnhancedCode(5, 4, 6);

/// How often the fields that decide occur in a header section.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FieldCounts {
    /// From: fields.
    pub from: usize,
    /// Sender: fields.
    pub sender: usize,
    /// Received: fields (hops so far).
    pub received: usize,
    /// Date: fields.
    pub date: usize,
    /// Message-ID: fields.
    pub message_id: usize,
    /// Fields that come after a line that is neither a field nor a continuation (no
    /// colon). Such a line alone (a message of text without a header) is harmless; a field
    /// after it is read by some parsers and not by others.
    pub after_malformed: usize,
}

/// Counts From:, Sender: and Received: in the message's header section.
pub fn count(message: &[u8]) -> FieldCounts {
    let mut c = FieldCounts::default();
    let mut malformed = false;
    for raw in raw_fields(header_section(message)) {
        let Some(f) = parse_field(raw) else {
            malformed = true;
            continue;
        };
        if malformed {
            c.after_malformed += 1;
        }
        if f.is("from") {
            c.from += 1;
        } else if f.is("sender") {
            c.sender += 1;
        } else if f.is("received") {
            c.received += 1;
        } else if f.is("date") {
            c.date += 1;
        } else if f.is("message-id") {
            c.message_id += 1;
        }
    }
    c
}

/// The addresses in each From: and Sender: field, in order: `("From:", [...])`. Read from
/// the same fields [`count`] counts (a field the mail parser would skip after a malformed
/// line is still here), each value parsed on its own as an address list. A field without
/// a readable address gives an empty list.
pub fn author_addresses(message: &[u8]) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for f in fields(header_section(message)) {
        let name = if f.is("from") {
            "From:"
        } else if f.is("sender") {
            "Sender:"
        } else {
            continue;
        };
        let field = [name.as_bytes(), f.value, b"\r\n\r\n"].concat();
        let parsed = mail_parser::MessageParser::new().parse_headers(&field[..]);
        let list = parsed.as_ref().and_then(|p| {
            if name == "From:" {
                p.from()
            } else {
                p.sender()
            }
        });
        let addresses = list
            .into_iter()
            .flat_map(|a| a.iter())
            .filter_map(|a| a.address())
            .map(str::to_string)
            .collect();
        out.push((name, addresses));
    }
    out
}

/// The domain of the first From: address, lower case: read like [`author_addresses`], so
/// the domain a message is signed or judged as is the one the ownership check saw.
pub fn from_domain(message: &[u8]) -> Option<String> {
    author_addresses(message)
        .into_iter()
        .find(|(name, _)| *name == "From:")
        .and_then(|(_, addresses)| addresses.into_iter().next())
        .and_then(|a| Some(a.rsplit_once('@')?.1.to_ascii_lowercase()))
}

/// The longest Message-ID kept for the history (RFC 5322 §2.1.1 lines are at most 998).
const MESSAGE_ID_KEPT: usize = 998;

/// The first Message-ID: field's value without its angle brackets and folding, for finding
/// a message in the history (RFC 5322 §3.6.4); `None` when there is none or it is empty.
pub fn message_id(message: &[u8]) -> Option<String> {
    let field = crate::header::fields(crate::header::header_section(message))
        .find(|f| f.is("Message-ID"))?;
    let value: Vec<u8> = field
        .value
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .take(MESSAGE_ID_KEPT)
        .collect();
    let value = String::from_utf8_lossy(&value);
    let id = value
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// Refuses a message with repeated author fields or with `hop_limit` or more hops
/// (`hop_limit` counts the Received: field we are about to add).
pub fn check(message: &[u8], hop_limit: usize) -> Result<(), Reply> {
    let c = count(message);
    // Readers disagree on such a line (one ends the header there, one skips it), and a
    // From: after it would be checked by one and shown by the other.
    if c.after_malformed > 0 {
        return Err(Reply::new(
            554,
            codes::MEDIA,
            "Message header has a line that is neither a header field nor a continuation",
        ));
    }
    for (name, n) in [("From:", c.from), ("Sender:", c.sender)] {
        if n > 1 {
            return Err(Reply::new(
                554,
                codes::MEDIA,
                format!("Message has {n} {name} header fields; RFC 5322 section 3.6 allows one"),
            ));
        }
    }
    if c.received >= hop_limit {
        return Err(Reply::new(
            554,
            LOOP,
            format!(
                "Too many hops ({} Received: header fields), mail loop?",
                c.received
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn message_id_without_brackets_or_folding() {
        let m = b"Subject: s\r\nMessage-Id:\r\n <abc@example.org>\r\n\r\nMessage-ID: <no>\r\n";
        assert_eq!(super::message_id(m).as_deref(), Some("abc@example.org"));
        assert_eq!(super::message_id(b"Message-ID: <>\r\n\r\n"), None);
        assert_eq!(
            super::message_id(b"Subject: x\r\n\r\nMessage-ID: <b>\r\n"),
            None
        );
    }

    #[test]
    fn repeated_authors_and_hops() {
        assert!(check(b"From: a@x\r\nSender: b@x\r\n\r\nFrom: c@y\r\n", 50).is_ok());
        let two = check(b"From: a@x\r\nSubject: s\r\nfrom : c@y\r\n\r\n", 50).unwrap_err();
        assert_eq!((two.code, two.enhanced), (554, Some(codes::MEDIA)));
        assert!(check(b"Sender: a@x\r\nSENDER: b@y\r\n\r\n", 50).is_err());
        // A folded second From: is still a field; a continuation line is not.
        assert!(check(b"From: a@x\r\nFrom:\r\n c@y\r\n\r\n", 50).is_err());
        assert!(check(b"From: a@x,\r\n From: c@y\r\n\r\n", 50).is_ok());
        for bad in [
            &b"X: y\r\n\x0c\x0c\r\nFrom: c@y\r\n\r\n"[..],
            b"From a@x Thu\r\nFrom: a@x\r\n\r\n",
        ] {
            let r = check(bad, 50).unwrap_err();
            assert_eq!((r.code, r.enhanced), (554, Some(codes::MEDIA)));
        }
        // Text without a header is not refused.
        assert!(check(b"just text\r\nmore text\r\n", 50).is_ok());
        assert!(check(b"Subject: s\r\nno blank line, then text\r\n", 50).is_ok());
        let hops = "Received: from h by h; d\r\n".repeat(49);
        assert!(check(format!("{hops}\r\n").as_bytes(), 50).is_ok());
        let hops = "Received: from h by h; d\r\n".repeat(50);
        let r = check(format!("{hops}\r\n").as_bytes(), 50).unwrap_err();
        assert_eq!((r.code, r.enhanced), (554, Some(LOOP)));
    }

    #[test]
    fn author_addresses_after_a_malformed_line_are_still_read() {
        let m = b"X: y\r\n\x0c\x0c\r\nFrom: Boss <ceo@bank.example>, b@x.test\r\nSender:\r\n\r\nbody\r\n";
        assert_eq!(
            author_addresses(m),
            [
                (
                    "From:",
                    vec!["ceo@bank.example".to_string(), "b@x.test".to_string()]
                ),
                ("Sender:", vec![]),
            ]
        );
    }
}
