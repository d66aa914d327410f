//! The header section of a message as it arrived (RFC 5322 §2.2): where it ends, and its
//! fields one by one with their names, unfolded. A leaf: the policy, inbound and DSN code
//! read header fields through it, so they agree on what a field is.

/// The header section, through the CRLF that ends its last field (RFC 5322 §2.1: it ends
/// at the first empty line). A message that starts with an empty line has none; one with no
/// empty line is all header.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None => message,
    }
}

/// Where the body starts: after the empty line that ends the header section (2 for a
/// message that starts with it, the length for one with no empty line: all header).
pub fn body_start(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => i + 4,
        None => message.len(),
    }
}

/// True when `message` holds the end of its header section (the empty line), or starts
/// without one.
pub fn has_header_end(message: &[u8]) -> bool {
    message.starts_with(b"\r\n") || message.windows(4).any(|w| w == b"\r\n\r\n")
}

/// One header field: its name (without trailing white space, RFC 5322 §4.5.3 allows some
/// before the colon) and its raw value, folding included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name as written.
    pub name: &'a [u8],
    /// Everything after the colon up to the CRLF that ends the field.
    pub value: &'a [u8],
}

impl Field<'_> {
    /// The name compared without regard to case (RFC 5322 §1.2.2).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// Each field of a header section as written: its first line with its continuation lines
/// (RFC 5322 §2.2.3), CRLFs included. A line without a colon comes out on its own.
pub fn raw_fields(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = header;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len();
        let mut i = 0;
        while let Some(p) = rest[i..].windows(2).position(|w| w == b"\r\n") {
            let at = i + p + 2;
            if !matches!(rest.get(at), Some(b' ' | b'\t')) {
                end = at;
                break;
            }
            i = at;
        }
        let (field, tail) = rest.split_at(end);
        rest = tail;
        Some(field)
    })
}

/// The fields of a header section, parsed. A line that is neither a field nor a
/// continuation (no colon) is skipped, as readers do.
pub fn fields(header: &[u8]) -> impl Iterator<Item = Field<'_>> {
    raw_fields(header).filter_map(parse_field)
}

/// A raw field's name and value (without the final CRLF).
pub fn parse_field(raw: &[u8]) -> Option<Field<'_>> {
    let line = raw.strip_suffix(b"\r\n").unwrap_or(raw);
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    if name.is_empty() || name.starts_with(b" ") || name.starts_with(b"\t") {
        return None;
    }
    Some(Field {
        name,
        value: &line[colon + 1..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_fields() {
        let m =
            b"From: a@b\r\nSubject: one\r\n two\r\nReceived : x\r\nno colon\r\n\r\nFrom: body\r\n";
        let h = header_section(m);
        assert!(h.ends_with(b"x\r\nno colon\r\n"));
        let f: Vec<_> = fields(h).collect();
        assert_eq!(f.len(), 3);
        assert!(f[0].is("from") && f[0].value == b" a@b");
        assert_eq!(f[1].value, b" one\r\n two");
        assert!(f[2].is("Received"));
        assert!(header_section(b"\r\nFrom: body\r\n").is_empty());
        assert_eq!(header_section(b"From: x\r\n"), b"From: x\r\n");
        assert_eq!(fields(b"A: 1\r\n\tcont").count(), 1);
        let raw: Vec<_> = raw_fields(h).collect();
        assert_eq!(raw.concat(), h, "the raw fields are the whole section");
        assert_eq!(raw[1], b"Subject: one\r\n two\r\n");
        assert_eq!(raw.len(), 4);
        assert_eq!(body_start(m), m.len() - 12);
        assert_eq!(body_start(b"\r\nbody"), 2);
        assert_eq!(body_start(b"A: 1\r\n"), 6);
        assert!(has_header_end(m) && has_header_end(b"\r\n") && !has_header_end(b"A: 1\r\n"));
    }
}
