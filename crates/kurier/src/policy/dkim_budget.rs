//! How many DKIM signatures of a message are verified. Each one costs a DNS lookup in a
//! zone the sender chooses, so a message with hundreds of them is a lookup flood on our
//! resolver. Only the first [`MAX_SIGNATURES`] are verified, those whose `d=` is aligned
//! with the From: domain first (they are the ones DMARC can use, RFC 7489 §3.1.1); the
//! others are left out of the copy that is verified (the stored message keeps them).

use crate::header::{header_section, parse_field, raw_fields};

/// Signatures verified per message (OpenDKIM's default is 3).
pub const MAX_SIGNATURES: usize = 5;

/// The message to verify: `None` when it has at most [`MAX_SIGNATURES`] signatures (verify
/// it as it is), else a copy with only the chosen ones.
pub fn limited(message: &[u8]) -> Option<Vec<u8>> {
    let header = header_section(message);
    let fields: Vec<&[u8]> = raw_fields(header).collect();
    let is_signature = |raw: &[u8]| parse_field(raw).is_some_and(|f| f.is("dkim-signature"));
    let signatures: Vec<usize> = (0..fields.len())
        .filter(|&i| is_signature(fields[i]))
        .collect();
    if signatures.len() <= MAX_SIGNATURES {
        return None;
    }
    let from = super::header_fields::from_domain(message);
    let aligned = |i: &usize| {
        let d = tag(fields[*i], "d").map(|d| d.to_ascii_lowercase());
        match (&from, d) {
            (Some(f), Some(d)) => aligned(f, &d),
            _ => false,
        }
    };
    let mut chosen: Vec<usize> = signatures.iter().copied().filter(aligned).collect();
    chosen.extend(signatures.iter().copied().filter(|i| !aligned(i)));
    chosen.truncate(MAX_SIGNATURES);
    let mut out = Vec::with_capacity(message.len());
    for (i, raw) in fields.iter().enumerate() {
        if !is_signature(raw) || chosen.contains(&i) {
            out.extend_from_slice(raw);
        }
    }
    out.extend_from_slice(&message[header.len()..]);
    Some(out)
}

/// Relaxed alignment: the same domain, or one a subdomain of the other (an approximation
/// of "same organizational domain" that needs no public suffix list).
fn aligned(from: &str, d: &str) -> bool {
    let under = |a: &str, b: &str| {
        a.len() > b.len() && a.ends_with(b) && a.as_bytes()[a.len() - b.len() - 1] == b'.'
    };
    from == d || under(from, d) || under(d, from)
}

/// A tag's value in a DKIM-Signature field (RFC 6376 §3.2: `tag=value;`, folding allowed).
fn tag(raw: &[u8], name: &str) -> Option<String> {
    let value = parse_field(raw)?.value;
    let text: String = String::from_utf8_lossy(value)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    text.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message(from: &str, domains: &[&str]) -> Vec<u8> {
        let mut m = String::new();
        for d in domains {
            m.push_str(&format!(
                "DKIM-Signature: v=1; a=rsa-sha256; d={d};\r\n s=sel; b=abc\r\n"
            ));
        }
        m.push_str(&format!(
            "From: Someone <someone@{from}>\r\nSubject: s\r\n\r\nbody\r\n"
        ));
        m.into_bytes()
    }

    fn signed_by(m: &[u8]) -> Vec<String> {
        raw_fields(header_section(m))
            .filter(|r| parse_field(r).is_some_and(|f| f.is("dkim-signature")))
            .map(|r| tag(r, "d").unwrap())
            .collect()
    }

    #[test]
    fn few_signatures_are_verified_as_they_are() {
        assert_eq!(limited(&message("a.test", &["a.test", "b.test"])), None);
    }

    #[test]
    fn many_are_cut_to_the_budget_aligned_first() {
        let mut domains: Vec<String> = (0..200).map(|i| format!("flood{i}.test")).collect();
        domains.insert(150, "mail.example.org".into());
        domains.insert(180, "example.org".into());
        let refs: Vec<&str> = domains.iter().map(String::as_str).collect();
        let m = message("example.org", &refs);
        let out = limited(&m).unwrap();
        // The aligned two and the first three others, in the message's order.
        assert_eq!(
            signed_by(&out),
            [
                "flood0.test",
                "flood1.test",
                "flood2.test",
                "mail.example.org",
                "example.org",
            ]
        );
        assert!(
            out.ends_with(b"From: Someone <someone@example.org>\r\nSubject: s\r\n\r\nbody\r\n")
        );
        assert!(aligned("news.example.org", "example.org"));
        assert!(!aligned("badexample.org", "example.org"));
    }
}
