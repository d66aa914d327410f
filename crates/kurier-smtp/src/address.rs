//! Mail addresses as SMTP carries them: paths, mailboxes, local parts and domains.
//!
//! Grammar from RFC 5321 §4.1.2 (`Path`, `Mailbox`, `Local-part`, `Domain`,
//! `address-literal`), extended for internationalized addresses by RFC 6531 §3.3 (UTF-8 in
//! `atext`, `qtextSMTP` and `sub-domain`). Length limits from RFC 5321 §4.5.3.1.
//!
//! Addresses are parsed once into types ("parse, don't validate"): the local part is kept in
//! its decoded form (quotes and backslash escapes removed) and re-quoted when written out, so a
//! quoted local part such as `"john doe"@example.org` survives a round trip.

use std::fmt;
use thiserror::Error;

/// RFC 5321 §4.5.3.1.1: the maximum total length of a local part is 64 octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: the maximum total length of a domain is 255 octets.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: the maximum total length of a path is 256 octets (with the brackets).
pub const MAX_PATH: usize = 256;

/// Why an address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The path is not enclosed in angle brackets.
    #[error("address must be enclosed in <>")]
    MissingBrackets,
    /// There is no `@` between local part and domain.
    #[error("address has no domain")]
    MissingDomain,
    /// The local part is empty or has characters not allowed unquoted.
    #[error("invalid local part")]
    BadLocalPart,
    /// The domain is not a valid host name or address literal.
    #[error("invalid domain")]
    BadDomain,
    /// The source route before `:` is malformed.
    #[error("invalid source route")]
    BadSourceRoute,
    /// A length limit of RFC 5321 §4.5.3.1 is exceeded.
    #[error("address too long")]
    TooLong,
}

/// A domain or address literal, stored in lower case (domains compare case-insensitively,
/// RFC 5321 §2.4). An address literal keeps its brackets: `[192.0.2.1]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Parses a domain name (RFC 5321 `Domain`, RFC 6531 U-labels) or address literal.
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        if s.is_empty() || s.len() > MAX_DOMAIN {
            return Err(AddressError::BadDomain);
        }
        if s.starts_with('[') {
            return parse_address_literal(s).map(Domain);
        }
        // The stored (lower-case) form is what gets checked: lowering can change a name,
        // e.g. "İ" becomes "i" and a combining dot, which is no letter, or grow it.
        let lower = s.strip_suffix('.').unwrap_or(s).to_lowercase();
        if lower.len() > MAX_DOMAIN || !lower.split('.').all(valid_label) {
            return Err(AddressError::BadDomain);
        }
        Ok(Domain(lower))
    }

    /// The domain as text, lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `[...]` address literals.
    pub fn is_literal(&self) -> bool {
        self.0.starts_with('[')
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `sub-domain = Let-dig [Ldh-str]` (RFC 5321), or a U-label (RFC 6531): letters, digits and
/// hyphens, not starting or ending with a hyphen, at most 63 octets.
fn valid_label(label: &str) -> bool {
    if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
        return false;
    }
    label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric()))
}

/// `address-literal = "[" ( IPv4 / "IPv6:" IPv6 / General-address-literal ) "]"`
/// (RFC 5321 §4.1.3). General literals (`tag:content`) are accepted with a standardized-tag
/// syntax check only.
fn parse_address_literal(s: &str) -> Result<String, AddressError> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or(AddressError::BadDomain)?;
    if inner.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(s.to_string());
    }
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(format!("[IPv6:{}]", v6.to_ascii_lowercase())),
            Err(_) => Err(AddressError::BadDomain),
        };
    }
    match inner.split_once(':') {
        Some((tag, content))
            if !tag.is_empty()
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=126).contains(&b) && b != b'[' && b != b']' && b != b'\\') =>
        {
            Ok(s.to_string())
        }
        _ => Err(AddressError::BadDomain),
    }
}

/// A mailbox `local-part@domain`. The local part is kept decoded (without quoting) and
/// case-preserved: RFC 5321 §2.4 leaves its case significance to the receiving host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Builds a mailbox from a decoded local part and a domain, checking the local part's
    /// length and characters (no control characters; quoting is added when written).
    pub fn new(local: impl Into<String>, domain: Domain) -> Result<Mailbox, AddressError> {
        let local = local.into();
        if local.is_empty() || local.len() > MAX_LOCAL_PART {
            return Err(AddressError::BadLocalPart);
        }
        if local.chars().any(|c| c.is_control()) {
            return Err(AddressError::BadLocalPart);
        }
        Ok(Mailbox { local, domain })
    }

    /// Parses `local@domain` (without angle brackets), as found in a path or a config file.
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        let (local, rest) = parse_local_part(s)?;
        let domain = rest.strip_prefix('@').ok_or(AddressError::MissingDomain)?;
        Mailbox::new(local, Domain::parse(domain)?)
    }

    /// The decoded local part.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// True when the address is all ASCII (no SMTPUTF8 needed to relay it, RFC 6531 §3.2).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.as_str().is_ascii()
    }

    /// The local part as it must be written on the wire: a dot-string when possible,
    /// otherwise a quoted string with `"` and `\` escaped (RFC 5321 §4.1.2).
    pub fn local_wire(&self) -> String {
        if is_dot_string(&self.local) {
            self.local.clone()
        } else {
            let mut q = String::with_capacity(self.local.len() + 2);
            q.push('"');
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('"');
            q
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_wire(), self.domain)
    }
}

/// The MAIL FROM path: a mailbox, or the null path `<>` used by bounces (RFC 5321 §4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: no bounces may be sent back.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses `<>` or `<[source-route:]mailbox>`.
    pub fn parse(s: &str) -> Result<ReversePath, AddressError> {
        let inner = strip_brackets(s)?;
        if inner.is_empty() {
            return Ok(ReversePath::Null);
        }
        parse_path_inner(inner).map(ReversePath::Mailbox)
    }

    /// The mailbox, unless this is the null path.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The RCPT TO path: a mailbox, or the bare `<Postmaster>` that every SMTP server must accept
/// without a domain (RFC 5321 §4.5.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` with no domain (case-insensitive).
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Parses `<Postmaster>` or `<[source-route:]mailbox>`.
    pub fn parse(s: &str) -> Result<ForwardPath, AddressError> {
        let inner = strip_brackets(s)?;
        if inner.eq_ignore_ascii_case("postmaster") {
            return Ok(ForwardPath::Postmaster);
        }
        if inner.is_empty() {
            return Err(AddressError::MissingDomain);
        }
        parse_path_inner(inner).map(ForwardPath::Mailbox)
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

fn strip_brackets(s: &str) -> Result<&str, AddressError> {
    if s.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    s.strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(AddressError::MissingBrackets)
}

/// `[ A-d-l ":" ] Mailbox`. RFC 5321 §4.1.1.3 and Appendix C: source routes MUST be accepted
/// and SHOULD be ignored, so the route is checked for syntax and dropped.
fn parse_path_inner(inner: &str) -> Result<Mailbox, AddressError> {
    let mailbox = if inner.starts_with('@') {
        let (route, mailbox) = inner.split_once(':').ok_or(AddressError::BadSourceRoute)?;
        for hop in route.split(',') {
            let d = hop.strip_prefix('@').ok_or(AddressError::BadSourceRoute)?;
            Domain::parse(d).map_err(|_| AddressError::BadSourceRoute)?;
        }
        mailbox
    } else {
        inner
    };
    Mailbox::parse(mailbox)
}

/// RFC 5322 `atext` plus UTF-8 (RFC 6531 §3.3).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// `Dot-string = Atom *("." Atom)`.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Parses a local part at the start of `s`; returns the decoded local part and the rest
/// (which starts at the `@`).
fn parse_local_part(s: &str) -> Result<(String, &str), AddressError> {
    if let Some(rest) = s.strip_prefix('"') {
        // Quoted-string: qtextSMTP / quoted-pairSMTP (%d92 %d32-126), RFC 5321 §4.1.2.
        let mut local = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if local.len() > MAX_LOCAL_PART {
                        return Err(AddressError::TooLong);
                    }
                    return Ok((local, &rest[i + 1..]));
                }
                '\\' => match chars.next() {
                    Some((_, e)) if (' '..='~').contains(&e) => local.push(e),
                    _ => return Err(AddressError::BadLocalPart),
                },
                c if c.is_control() => return Err(AddressError::BadLocalPart),
                c => local.push(c),
            }
        }
        Err(AddressError::BadLocalPart)
    } else {
        // A dot-string cannot contain '@', so the first one ends it (an address literal
        // after it may contain '@', RFC 5321 dcontent).
        let end = s.find('@').ok_or(AddressError::MissingDomain)?;
        let local = &s[..end];
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong);
        }
        if !is_dot_string(local) {
            return Err(AddressError::BadLocalPart);
        }
        Ok((local.to_string(), &s[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        match Mailbox::parse(s) {
            Ok(m) => m,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn plain_mailbox() {
        let m = mb("Alice.Smith@Example.ORG");
        assert_eq!(m.local(), "Alice.Smith");
        assert_eq!(m.domain().as_str(), "example.org");
        assert_eq!(m.to_string(), "Alice.Smith@example.org");
    }

    #[test]
    fn quoted_local_part_round_trips() {
        let m = mb("\"john doe\"@example.org");
        assert_eq!(m.local(), "john doe");
        assert_eq!(m.to_string(), "\"john doe\"@example.org");
        let m = mb("\"a\\\"b\"@x.test");
        assert_eq!(m.local(), "a\"b");
        assert_eq!(m.to_string(), "\"a\\\"b\"@x.test");
    }

    #[test]
    fn quoted_at_sign_stays_in_local_part() {
        // `"victim@elsewhere"@local` must never be read as a relay to `elsewhere`.
        let m = mb("\"victim@elsewhere.test\"@local.test");
        assert_eq!(m.local(), "victim@elsewhere.test");
        assert_eq!(m.domain().as_str(), "local.test");
    }

    #[test]
    fn utf8_addresses() {
        let m = mb("jösé@bücher.example");
        assert_eq!(m.local(), "jösé");
        assert!(!m.is_ascii());
        assert!(mb("a@b.test").is_ascii());
    }

    #[test]
    fn address_literals() {
        assert_eq!(mb("a@[192.0.2.1]").domain().as_str(), "[192.0.2.1]");
        assert_eq!(
            mb("a@[IPv6:2001:DB8::1]").domain().as_str(),
            "[IPv6:2001:db8::1]"
        );
        assert!(Mailbox::parse("a@[300.1.1.1]").is_err());
        assert!(Mailbox::parse("a@[IPv6:zz]").is_err());
    }

    #[test]
    fn general_address_literal_with_at_sign_round_trips() {
        // Found by fuzzing.
        let m = mb("\"moe\"@[IPv:@2]");
        assert_eq!(m.domain().as_str(), "[IPv:@2]");
        assert_eq!(Mailbox::parse(&m.to_string()), Ok(m));
    }

    #[test]
    fn domain_is_checked_in_the_case_it_is_stored() {
        // Found by fuzzing: "İ" lowers to "i" and a combining dot, which no label may hold,
        // so the address could be parsed but not parsed again from its own text.
        assert_eq!(
            Mailbox::parse("z\u{fc}@\u{f6}b\u{fc}\u{130}\u{f6}"),
            Err(AddressError::BadDomain)
        );
        let m = mb("a@B\u{dc}CHER.example");
        assert_eq!(m.domain().as_str(), "b\u{fc}cher.example");
        assert_eq!(Mailbox::parse(&m.to_string()), Ok(m));
    }

    #[test]
    fn bad_mailboxes() {
        for bad in [
            "",
            "a",
            "@x.test",
            "a@",
            "a..b@x.test",
            ".a@x.test",
            "a.@x.test",
            "a b@x.test",
            "a@-x.test",
            "a@x-.test",
            "a@x..test",
            "a@x_y.test",
            "\"unterminated@x.test",
            "a\u{0}b@x.test",
            "\"a\u{1}\"@x.test",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_local = format!("{}@x.test", "a".repeat(65));
        assert_eq!(Mailbox::parse(&long_local), Err(AddressError::TooLong));
        let long_label = format!("a@{}.test", "b".repeat(64));
        assert!(Mailbox::parse(&long_label).is_err());
    }

    #[test]
    fn reverse_paths() {
        assert_eq!(ReversePath::parse("<>"), Ok(ReversePath::Null));
        assert_eq!(
            ReversePath::parse("<a@b.test>").map(|p| p.to_string()),
            Ok("<a@b.test>".into())
        );
        assert_eq!(
            ReversePath::parse("a@b.test"),
            Err(AddressError::MissingBrackets)
        );
        assert_eq!(
            ReversePath::parse("<a@b.test"),
            Err(AddressError::MissingBrackets)
        );
    }

    #[test]
    fn forward_paths() {
        assert_eq!(
            ForwardPath::parse("<postmaster>"),
            Ok(ForwardPath::Postmaster)
        );
        assert_eq!(
            ForwardPath::parse("<PostMaster>"),
            Ok(ForwardPath::Postmaster)
        );
        assert!(ForwardPath::parse("<>").is_err());
        assert!(matches!(
            ForwardPath::parse("<postmaster@x.test>"),
            Ok(ForwardPath::Mailbox(_))
        ));
    }

    #[test]
    fn source_routes_are_checked_and_dropped() {
        let p = ForwardPath::parse("<@relay.test,@other.test:user@final.test>");
        assert_eq!(p.map(|p| p.to_string()), Ok("<user@final.test>".into()));
        assert_eq!(
            ForwardPath::parse("<@relay.test user@x.test>"),
            Err(AddressError::BadSourceRoute)
        );
        assert_eq!(
            ForwardPath::parse("<@bad_domain:user@x.test>"),
            Err(AddressError::BadSourceRoute)
        );
    }

    #[test]
    fn relay_tricks_keep_the_real_domain() {
        // The percent hack and bang paths are plain local-part characters: the domain after
        // the last unquoted @ decides where mail goes.
        let m = mb("victim%elsewhere.test@local.test");
        assert_eq!(m.domain().as_str(), "local.test");
        let m = mb("elsewhere.test!victim@local.test");
        assert_eq!(m.domain().as_str(), "local.test");
        assert!(Mailbox::parse("a@b@local.test").is_err());
    }

    #[test]
    fn path_length_limit() {
        let p = format!("<{}@{}.test>", "a".repeat(60), "b".repeat(200));
        assert_eq!(ForwardPath::parse(&p), Err(AddressError::TooLong));
    }
}
