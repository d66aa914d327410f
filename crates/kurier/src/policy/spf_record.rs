//! Strict syntax of SPF records (RFC 7208 §12), and the choice of the one SPF record among a
//! name's TXT records (§4.5).
//!
//! Evaluation is mail-auth's; this module holds what it is lenient about. RFC 7208 §4.6: a
//! record with any syntax error gives `permerror` before anything in it is evaluated, and a
//! name with more than one SPF record gives `permerror` too. Pure functions, no DNS.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a name's SPF record is unusable. Each case is a `permerror` (RFC 7208 §4.5, §4.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// More than one TXT record starts with `v=spf1` (§4.5).
    #[error("{0} SPF records published (only one is allowed)")]
    Multiple(usize),
    /// A term does not match the record grammar (§12).
    #[error("syntax error in term {term:?}: {reason}")]
    Syntax {
        /// The offending term as published.
        term: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// True for a TXT record that is an SPF record: `v=spf1` (any case) then a space or the end
/// (RFC 7208 §4.5). `v=spf10` is some other record.
pub fn is_spf_record(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && (txt.len() == 6 || txt[6] == b' ')
}

/// Selects the SPF record among a name's TXT records (each given as its strings joined,
/// §3.3) and checks its syntax. `Ok(None)` when there is no SPF record.
pub fn select_and_check(txts: &[Vec<u8>]) -> Result<Option<&[u8]>, RecordError> {
    let mut spf = txts.iter().filter(|t| is_spf_record(t));
    let Some(first) = spf.next() else {
        return Ok(None);
    };
    let others = spf.count();
    if others > 0 {
        return Err(RecordError::Multiple(others + 1));
    }
    check_record(first)?;
    Ok(Some(first))
}

/// Checks one SPF record against the grammar of RFC 7208 §12.
pub fn check_record(record: &[u8]) -> Result<(), RecordError> {
    let Some(rest) = record.get(6..).filter(|_| is_spf_record(record)) else {
        return Err(syntax(record, "the record does not start with v=spf1"));
    };
    let (mut redirects, mut exps) = (0, 0);
    // §4.6.1: terms are separated by spaces (SP) only; any other control or non-ASCII byte
    // is a syntax error wherever it appears.
    for term in rest.split(|b| *b == b' ').filter(|t| !t.is_empty()) {
        if term.iter().any(|b| !(0x21..=0x7e).contains(b)) {
            return Err(syntax(term, "control character or non-ASCII byte"));
        }
        if let Some((name, value)) = split_modifier(term) {
            match name.to_ascii_lowercase().as_slice() {
                b"redirect" => {
                    redirects += 1;
                    check_domain_spec(value).map_err(|r| syntax(term, r))?;
                }
                b"exp" => {
                    exps += 1;
                    check_domain_spec(value).map_err(|r| syntax(term, r))?;
                }
                _ => check_macro_string(value).map_err(|r| syntax(term, r))?,
            }
            // §6: redirect and exp may each appear at most once.
            if redirects > 1 || exps > 1 {
                return Err(syntax(term, "modifier given more than once"));
            }
            continue;
        }
        check_directive(term).map_err(|r| syntax(term, r))?;
    }
    Ok(())
}

fn syntax(term: &[u8], reason: &'static str) -> RecordError {
    RecordError::Syntax {
        term: String::from_utf8_lossy(term).into_owned(),
        reason,
    }
}

/// `name "=" value` when the term is a modifier: name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
fn split_modifier(term: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = term.iter().position(|b| *b == b'=')?;
    let name = &term[..eq];
    let first = *name.first()?;
    let valid = first.is_ascii_alphabetic()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then(|| (name, &term[eq + 1..]))
}

/// directive = [ qualifier ] mechanism (§4.6.2, §5).
fn check_directive(term: &[u8]) -> Result<(), &'static str> {
    let term = match term.first() {
        Some(b'+' | b'-' | b'~' | b'?') => &term[1..],
        _ => term,
    };
    let end = term
        .iter()
        .position(|b| matches!(b, b':' | b'/'))
        .unwrap_or(term.len());
    let (name, rest) = term.split_at(end);
    let arg = rest.strip_prefix(b":");
    match name.to_ascii_lowercase().as_slice() {
        b"all" if rest.is_empty() => Ok(()),
        b"all" => Err("all takes no argument"),
        b"include" | b"exists" => match arg {
            Some(spec) => check_domain_spec(spec),
            None => Err("a domain is required"),
        },
        b"ptr" => match arg {
            Some(spec) => check_domain_spec(spec),
            None if rest.is_empty() => Ok(()),
            None => Err("ptr takes no CIDR length"),
        },
        b"a" | b"mx" => {
            let (spec, cidr) = split_dual_cidr(rest)?;
            check_dual_cidr(cidr)?;
            match spec.strip_prefix(b":") {
                Some(spec) => check_domain_spec(spec),
                None if spec.is_empty() => Ok(()),
                None => Err("unexpected characters after the mechanism"),
            }
        }
        b"ip4" => {
            let arg = arg.ok_or("an address is required")?;
            let (net, len) = split_last_slash(arg);
            let net = std::str::from_utf8(net).map_err(|_| "bad IPv4 address")?;
            net.parse::<Ipv4Addr>().map_err(|_| "bad IPv4 address")?;
            len.map_or(Ok(()), |l| check_cidr(l, 32))
        }
        b"ip6" => {
            let arg = arg.ok_or("an address is required")?;
            let (net, len) = split_last_slash(arg);
            let net = std::str::from_utf8(net).map_err(|_| "bad IPv6 address")?;
            net.parse::<Ipv6Addr>().map_err(|_| "bad IPv6 address")?;
            len.map_or(Ok(()), |l| check_cidr(l, 128))
        }
        _ => Err("unknown mechanism"),
    }
}

fn split_last_slash(arg: &[u8]) -> (&[u8], Option<&[u8]>) {
    match arg.iter().rposition(|b| *b == b'/') {
        Some(i) => (&arg[..i], Some(&arg[i + 1..])),
        None => (arg, None),
    }
}

/// The IPv4 and IPv6 prefix lengths of `a` and `mx`, as written.
type CidrLengths<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Splits `[":" domain-spec] [dual-cidr-length]` at the trailing CIDR lengths:
/// `/n`, `//n` or `/n//n` at the end, digits only.
fn split_dual_cidr(rest: &[u8]) -> Result<(&[u8], CidrLengths<'_>), &'static str> {
    let digits_tail = |s: &[u8]| s.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let mut s = rest;
    let mut v6 = None;
    let n = digits_tail(s);
    if n > 0 && s.len() >= n + 2 && &s[s.len() - n - 2..s.len() - n] == b"//" {
        v6 = Some(&s[s.len() - n..]);
        s = &s[..s.len() - n - 2];
    }
    let mut v4 = None;
    let n = digits_tail(s);
    if n > 0 && s.len() > n && s[s.len() - n - 1] == b'/' {
        v4 = Some(&s[s.len() - n..]);
        s = &s[..s.len() - n - 1];
    }
    if s.ends_with(b"/") && (v4.is_some() || v6.is_some()) {
        return Err("bad CIDR length");
    }
    Ok((s, (v4, v6)))
}

fn check_dual_cidr((v4, v6): CidrLengths<'_>) -> Result<(), &'static str> {
    v4.map_or(Ok(()), |l| check_cidr(l, 32))?;
    v6.map_or(Ok(()), |l| check_cidr(l, 128))
}

/// ip4-cidr-length / ip6-cidr-length: no leading zero, within the address size (§5.6).
fn check_cidr(len: &[u8], max: u32) -> Result<(), &'static str> {
    let leading_zero = len.len() > 1 && len[0] == b'0';
    let value = std::str::from_utf8(len)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 3)
        .and_then(|s| s.parse::<u32>().ok());
    match value {
        Some(v) if v <= max && !leading_zero => Ok(()),
        _ => Err("bad CIDR length"),
    }
}

/// One piece of a macro-string (§7.1).
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Literal(&'a [u8]),
    Expand,
}

/// macro-string = *( macro-expand / macro-literal ).
fn macro_pieces(s: &[u8]) -> Result<Vec<Piece<'_>>, &'static str> {
    let mut pieces = Vec::new();
    let mut i = 0;
    let mut literal_start = 0;
    while i < s.len() {
        if s[i] != b'%' {
            i += 1;
            continue;
        }
        if literal_start < i {
            pieces.push(Piece::Literal(&s[literal_start..i]));
        }
        match s.get(i + 1) {
            Some(b'%' | b'_' | b'-') => i += 2,
            Some(b'{') => {
                let close = s[i..]
                    .iter()
                    .position(|b| *b == b'}')
                    .ok_or("unterminated macro")?;
                check_macro_body(&s[i + 2..i + close])?;
                i += close + 1;
            }
            _ => return Err("a '%' that does not start a macro"),
        }
        pieces.push(Piece::Expand);
        literal_start = i;
    }
    if literal_start < s.len() {
        pieces.push(Piece::Literal(&s[literal_start..]));
    }
    Ok(pieces)
}

/// macro-letter transformers *delimiter, inside `%{…}`.
fn check_macro_body(body: &[u8]) -> Result<(), &'static str> {
    let (letter, rest) = body.split_first().ok_or("empty macro")?;
    if !b"slodiphcrtv".contains(&letter.to_ascii_lowercase()) {
        return Err("unknown macro letter");
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = &rest[digits..];
    if let Some(r) = rest.strip_prefix(b"r").or_else(|| rest.strip_prefix(b"R")) {
        rest = r;
    }
    if rest.iter().all(|b| b".-+,/_=".contains(b)) {
        Ok(())
    } else {
        Err("bad macro transformer or delimiter")
    }
}

fn check_macro_string(s: &[u8]) -> Result<(), &'static str> {
    macro_pieces(s).map(|_| ())
}

/// domain-spec = macro-string domain-end;
/// domain-end = ( "." toplabel [ "." ] ) / macro-expand (§7.1).
fn check_domain_spec(spec: &[u8]) -> Result<(), &'static str> {
    let pieces = macro_pieces(spec)?;
    let Some(Piece::Literal(tail)) = pieces.last() else {
        return if pieces.is_empty() {
            Err("empty domain")
        } else {
            Ok(()) // ends with a macro-expand
        };
    };
    let tail = tail.strip_suffix(b".").unwrap_or(tail);
    let Some(dot) = tail.iter().rposition(|b| *b == b'.') else {
        return Err("the domain does not end in '.' and a top label");
    };
    if is_toplabel(&tail[dot + 1..]) {
        Ok(())
    } else {
        Err("bad top label")
    }
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum ).
fn is_toplabel(label: &[u8]) -> bool {
    let (Some(first), Some(last)) = (label.first(), label.last()) else {
        return false;
    };
    if !label
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    {
        return false;
    }
    let has_dash = label.contains(&b'-');
    if has_dash {
        first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()
    } else {
        label.iter().any(u8::is_ascii_alphabetic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(r: &str) -> bool {
        check_record(r.as_bytes()).is_ok()
    }

    #[test]
    fn valid_records() {
        for r in [
            "v=spf1",
            "V=SPF1 -ALL",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx ~all",
            "v=spf1 a:mail.example.org/24//64 mx//0 a/0 ptr ptr:example.org ?all ",
            "v=spf1  include:_spf.example.org  redirect=example.org",
            "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all",
            "v=spf1 a:%{d} exp=explain.%{d}",
            "v=spf1 a:example.org. -all",
            "v=spf1 a:foo-bar.example.x-1 -all",
            "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",
            "v=spf1 foo= -all",
        ] {
            assert!(
                ok(r),
                "{r} should be valid: {:?}",
                check_record(r.as_bytes())
            );
        }
    }

    #[test]
    fn invalid_records() {
        for r in [
            "v=spf1 ip4:1.2.3.4/032 -all",
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip6:::1/129",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:1.2.3.4\t-all",
            "v=spf1 a:foo.example.com\0",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a:example.123 -all",
            "v=spf1 a:1.2.3.4 -all",
            "v=spf1 a:museum",
            "v=spf1 a:museum. -all",
            "v=spf1 a:foo.-bar -all",
            "v=spf1 a:foo.example.com:8080",
            "v=spf1 mx:example.org/24/",
            "v=spf1 include",
            "v=spf1 all:x",
            "v=spf1 bogus:example.org",
            "v=spf1 =all",
            "v=spf1 redirect=a.example.org redirect=b.example.org",
            "v=spf1 exp=a.example.org exp=b.example.org",
            "v=spf1 redirect=",
            "v=spf1 exp=%{q}.example.org",
            "v=spf1 a:%.example.org",
            "v=spf1 -all \u{e9}",
        ] {
            assert!(!ok(r), "{r} should be a syntax error");
        }
    }

    #[test]
    fn one_spf_record_per_name() {
        let txts = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            select_and_check(&txts(&["google-site-verification=x"])),
            Ok(None)
        );
        assert_eq!(
            select_and_check(&txts(&["v=spf1 -all", "other"])),
            Ok(Some(&b"v=spf1 -all"[..]))
        );
        assert_eq!(
            select_and_check(&txts(&["v=spf1 -all", "V=SPF1 +all"])),
            Err(RecordError::Multiple(2))
        );
        // v=spf10 is not an SPF record.
        assert_eq!(
            select_and_check(&txts(&["v=spf10 +all", "v=spf1 -all"])),
            Ok(Some(&b"v=spf1 -all"[..]))
        );
    }
}
