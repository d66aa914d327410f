//! SMTP command lines: verbs and ESMTP parameters, parsed from one line without its CRLF.
//!
//! Verbs are case-insensitive (RFC 5321 §2.4). `MAIL FROM:` and `RCPT TO:` accept the spaces
//! after the colon that many clients send. Every parameter Kurier advertises is validated
//! here; any other parameter is refused with 555 (RFC 5321 §4.1.1.11), so nothing the server
//! did not offer can slip into an envelope.

use crate::address::{AddressError, ForwardPath, ReversePath};
use crate::reply::{Reply, codes};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 3461 §4.4: ENVID is at most 100 characters.
pub const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: ORCPT is at most 500 characters.
pub const MAX_ORCPT: usize = 500;

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    Helo(String),
    /// `EHLO domain` (RFC 5321 §4.1.1.1).
    Ehlo(String),
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2).
    Mail {
        /// The sender.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]` (RFC 5321 §4.1.1.3).
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2).
    Bdat {
        /// Octets in the chunk that follows the command line.
        size: u64,
        /// True for the last chunk.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5).
    Rset,
    /// `NOOP [string]` (RFC 5321 §4.1.1.9).
    Noop,
    /// `QUIT` (RFC 5321 §4.1.1.10).
    Quit,
    /// `VRFY string` (RFC 5321 §4.1.1.6).
    Vrfy(String),
    /// `EXPN string` (RFC 5321 §4.1.1.7).
    Expn(String),
    /// `HELP [string]` (RFC 5321 §4.1.1.8).
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        /// The SASL mechanism name, upper case.
        mechanism: String,
        /// The initial response as sent (base64, or `=` for empty).
        initial: Option<String>,
    },
    /// A known SMTP command that Kurier does not implement (TURN, ETRN, ATRN, BURL, …): 502.
    NotImplemented(&'static str),
}

/// `BODY=` values (RFC 6152 §2). BINARYMIME is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// `RET=` values (RFC 3461 §4.3): what a DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "UPPERCASE")
)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only the headers.
    Hdrs,
}

/// `NOTIFY=` (RFC 3461 §4.1): when the sender wants a DSN for this recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Notify {
    /// NOTIFY=NEVER.
    pub never: bool,
    /// SUCCESS was listed.
    pub success: bool,
    /// FAILURE was listed.
    pub failure: bool,
    /// DELAY was listed.
    pub delay: bool,
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OriginalRecipient {
    /// The address type, e.g. `rfc822` or `utf-8`.
    pub addr_type: String,
    /// The decoded original address.
    pub address: String,
}

/// ESMTP parameters of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the size the client declares.
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461 §4.4), decoded from xtext.
    pub envid: Option<String>,
    /// `AUTH=` (RFC 4954 §5), decoded; recorded but not trusted.
    pub auth: Option<String>,
}

/// ESMTP parameters of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461 §4.1).
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461 §4.2).
    pub orcpt: Option<OriginalRecipient>,
}

/// Why a command line was refused; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Not an SMTP verb.
    #[error("command unrecognized")]
    Unrecognized,
    /// An HTTP request line sent to the SMTP port (cross-protocol attack); the session closes.
    #[error("HTTP request to an SMTP server")]
    Http,
    /// The line is not valid UTF-8 or contains NUL or other control characters.
    #[error("invalid characters in command")]
    BadCharacters,
    /// The arguments do not match the command's syntax.
    #[error("syntax: {0}")]
    Syntax(&'static str),
    /// The sender address is malformed.
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// The recipient address is malformed.
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// A known parameter has an invalid value.
    #[error("invalid parameter {0}")]
    BadParameter(String),
    /// A parameter with a value given twice (a repeated valueless keyword is accepted).
    #[error("repeated parameter {0}")]
    RepeatedParameter(String),
    /// A parameter Kurier does not offer.
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
}

impl CommandError {
    /// The reply the server sends for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => Reply::new(500, codes::SYNTAX, "Command unrecognized"),
            CommandError::Http => Reply::new(
                502,
                codes::BAD_SEQUENCE,
                "This is an SMTP server, not an HTTP server; closing connection",
            ),
            CommandError::BadCharacters => Reply::new(
                500,
                codes::SYNTAX,
                "Command contains NUL, control characters or invalid UTF-8",
            ),
            CommandError::Syntax(usage) => {
                Reply::new(501, codes::BAD_ARGS, format!("Syntax: {usage}"))
            }
            CommandError::BadSender(e) => Reply::new(
                501,
                codes::BAD_SENDER_SYNTAX,
                format!("Bad sender address syntax: {e}"),
            ),
            CommandError::BadRecipient(e) => Reply::new(
                501,
                codes::BAD_RCPT_SYNTAX,
                format!("Bad recipient address syntax: {e}"),
            ),
            CommandError::BadParameter(p) => Reply::new(
                501,
                codes::BAD_ARGS,
                format!("Invalid value for parameter {p}"),
            ),
            CommandError::RepeatedParameter(p) => {
                Reply::new(501, codes::BAD_ARGS, format!("Parameter {p} repeated"))
            }
            CommandError::UnknownParameter(p) => Reply::new(
                555,
                codes::BAD_ARGS,
                format!("Parameter {p} not recognized or not implemented"),
            ),
        }
    }
}

/// Parses one command line (without its CRLF). Length and line-ending checks are the
/// session's job; this function sees only complete, well-terminated lines.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CommandError::BadCharacters);
    }
    let (verb, args) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim_start()),
        None => (line, ""),
    };
    let args = args.trim_end();
    let upper = verb.to_ascii_uppercase();
    match upper.as_str() {
        "HELO" => hello_arg(args, "HELO domain").map(Command::Helo),
        "EHLO" => hello_arg(args, "EHLO domain").map(Command::Ehlo),
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(args, "DATA", Command::Data),
        "BDAT" => parse_bdat(args),
        "RSET" => no_args(args, "RSET", Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(args, "QUIT", Command::Quit),
        "VRFY" if !args.is_empty() => Ok(Command::Vrfy(args.to_string())),
        "VRFY" => Err(CommandError::Syntax("VRFY string")),
        "EXPN" if !args.is_empty() => Ok(Command::Expn(args.to_string())),
        "EXPN" => Err(CommandError::Syntax("EXPN string")),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(args, "STARTTLS", Command::StartTls),
        "AUTH" => parse_auth(args),
        "TURN" => Ok(Command::NotImplemented("TURN")),
        "ETRN" => Ok(Command::NotImplemented("ETRN")),
        "ATRN" => Ok(Command::NotImplemented("ATRN")),
        "BURL" => Ok(Command::NotImplemented("BURL")),
        "SEND" => Ok(Command::NotImplemented("SEND")),
        "SOML" => Ok(Command::NotImplemented("SOML")),
        "SAML" => Ok(Command::NotImplemented("SAML")),
        "GET" | "POST" | "HEAD" | "PUT" | "CONNECT" | "OPTIONS" | "DELETE" => {
            Err(CommandError::Http)
        }
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_args(args: &str, usage: &'static str, cmd: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(usage))
    }
}

/// The HELO/EHLO argument: one token, a domain or an address literal (RFC 5321 §4.1.1.1).
/// Kurier does not reject mismatched names (many legitimate clients send odd ones); it records
/// the name in the Received header.
fn hello_arg(args: &str, usage: &'static str) -> Result<String, CommandError> {
    if args.is_empty() || args.len() > 255 || args.contains([' ', '\t']) {
        return Err(CommandError::Syntax(usage));
    }
    Ok(args.to_string())
}

/// Splits `FROM:<path> params` into the path and the parameter list. The path ends at the
/// first `>` outside a quoted string.
fn split_path<'a>(args: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    // Compare bytes: the keyword is ASCII, so a match also proves the split point is a char
    // boundary (slicing the str first would panic inside a multi-byte character).
    let head = args.as_bytes().get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword.as_bytes()) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    if !rest.starts_with('<') {
        return None;
    }
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Some((&rest[..=i], rest[i + 1..].trim_start())),
            _ => {}
        }
    }
    None
}

fn params(list: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    list.split([' ', '\t'])
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (p.to_ascii_uppercase(), None),
        })
}

fn parse_mail(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "MAIL FROM:<address> [parameters]";
    let (path, rest) = split_path(args, "FROM:").ok_or(CommandError::Syntax(USAGE))?;
    let from = ReversePath::parse(path).map_err(CommandError::BadSender)?;
    let mut p = MailParams::default();
    for (key, value) in params(rest) {
        let bad = || CommandError::BadParameter(key.clone());
        let given = match key.as_str() {
            "SIZE" => p.size.is_some(),
            "BODY" => p.body.is_some(),
            "RET" => p.ret.is_some(),
            "ENVID" => p.envid.is_some(),
            "AUTH" => p.auth.is_some(),
            _ => false,
        };
        if given && value.is_some() {
            return Err(CommandError::RepeatedParameter(key));
        }
        match (key.as_str(), value) {
            ("SIZE", Some(v)) if p.size.is_none() => {
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                p.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) if p.body.is_none() => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => {
                        return Err(CommandError::UnknownParameter("BODY=BINARYMIME".into()));
                    }
                    _ => return Err(bad()),
                });
            }
            // Python's smtplib may send it twice; harmless (Postfix accepts it too).
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) if p.ret.is_none() => {
                p.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(bad()),
                });
            }
            ("ENVID", Some(v)) if p.envid.is_none() => {
                let id = decode_xtext(v).ok_or_else(bad)?;
                if id.is_empty() || v.len() > MAX_ENVID {
                    return Err(bad());
                }
                p.envid = Some(id);
            }
            ("AUTH", Some(v)) if p.auth.is_none() => {
                p.auth = Some(decode_xtext(v).ok_or_else(bad)?);
            }
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => return Err(bad()),
            _ => return Err(unknown_parameter(&key, value)),
        }
    }
    Ok(Command::Mail { from, params: p })
}

/// RFC 5321 §4.1.1.11: a parameter that was not advertised (555), shown as sent.
fn unknown_parameter(key: &str, value: Option<&str>) -> CommandError {
    CommandError::UnknownParameter(match value {
        Some(v) => format!("{key}={v}"),
        None => key.to_string(),
    })
}

fn parse_rcpt(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "RCPT TO:<address> [parameters]";
    let (path, rest) = split_path(args, "TO:").ok_or(CommandError::Syntax(USAGE))?;
    let to = ForwardPath::parse(path).map_err(CommandError::BadRecipient)?;
    let mut p = RcptParams::default();
    for (key, value) in params(rest) {
        let bad = || CommandError::BadParameter(key.clone());
        let given = match key.as_str() {
            "NOTIFY" => p.notify.is_some(),
            "ORCPT" => p.orcpt.is_some(),
            _ => false,
        };
        if given && value.is_some() {
            return Err(CommandError::RepeatedParameter(key));
        }
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) if p.notify.is_none() => {
                let mut n = Notify::default();
                for item in v.split(',') {
                    match item.to_ascii_uppercase().as_str() {
                        "NEVER" => n.never = true,
                        "SUCCESS" => n.success = true,
                        "FAILURE" => n.failure = true,
                        "DELAY" => n.delay = true,
                        _ => return Err(bad()),
                    }
                }
                // RFC 3461 §4.1: NEVER must appear alone.
                if n.never && (n.success || n.failure || n.delay) {
                    return Err(bad());
                }
                p.notify = Some(n);
            }
            ("ORCPT", Some(v)) if p.orcpt.is_none() => {
                if v.len() > MAX_ORCPT {
                    return Err(bad());
                }
                let (addr_type, xtext) = v.split_once(';').ok_or_else(bad)?;
                let address = decode_xtext(xtext).ok_or_else(bad)?;
                if addr_type.is_empty()
                    || !addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    || address.is_empty()
                {
                    return Err(bad());
                }
                p.orcpt = Some(OriginalRecipient {
                    addr_type: addr_type.to_ascii_lowercase(),
                    address,
                });
            }
            ("NOTIFY" | "ORCPT", _) => return Err(bad()),
            _ => return Err(unknown_parameter(&key, value)),
        }
    }
    Ok(Command::Rcpt { to, params: p })
}

fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "BDAT chunk-size [LAST]";
    let mut words = args.split_ascii_whitespace();
    let size = words.next().ok_or(CommandError::Syntax(USAGE))?;
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax(USAGE));
    }
    let size: u64 = size.parse().map_err(|_| CommandError::Syntax(USAGE))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax(USAGE)),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax(USAGE));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "AUTH mechanism [initial-response]";
    let mut words = args.split_ascii_whitespace();
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax(USAGE))?
        .to_ascii_uppercase();
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax(USAGE));
    }
    Ok(Command::Auth { mechanism, initial })
}

/// Decodes RFC 3461 §4 xtext (`+XX` hex escapes); raw UTF-8 is accepted as well, as
/// SMTPUTF8 clients send it (RFC 6533 §3). Returns None on a malformed escape, and on an
/// escape that decodes to a control character: ENVID and ORCPT are printable text (RFC
/// 3461 §4.2, §4.4), and a CR or LF in them would reach DSNs and logs.
pub fn decode_xtext(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b if b < 33 || b == 127 => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// Encodes text as RFC 3461 xtext, for writing ORCPT/ENVID onward or into DSNs.
pub fn encode_xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        match parse_command(line.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    fn err(line: &str) -> CommandError {
        match parse_command(line.as_bytes()) {
            Ok(c) => panic!("{line:?} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(ok("ehlo client.test"), Command::Ehlo("client.test".into()));
        assert_eq!(ok("HeLo client.test"), Command::Helo("client.test".into()));
        assert_eq!(ok("data"), Command::Data);
        assert_eq!(ok("Rset"), Command::Rset);
        assert_eq!(ok("NOOP anything"), Command::Noop);
        assert_eq!(ok("QUIT"), Command::Quit);
        assert_eq!(ok("help me"), Command::Help);
        assert_eq!(ok("StartTLS"), Command::StartTls);
    }

    #[test]
    fn helo_needs_one_argument() {
        assert_eq!(err("EHLO"), CommandError::Syntax("EHLO domain"));
        assert_eq!(err("HELO a b"), CommandError::Syntax("HELO domain"));
        assert_eq!(ok("EHLO [127.0.0.1]"), Command::Ehlo("[127.0.0.1]".into()));
    }

    #[test]
    fn commands_without_arguments_refuse_them() {
        assert_eq!(err("DATA x"), CommandError::Syntax("DATA"));
        assert_eq!(err("QUIT now"), CommandError::Syntax("QUIT"));
        assert_eq!(err("STARTTLS x"), CommandError::Syntax("STARTTLS"));
    }

    #[test]
    fn mail_from_forms() {
        let Command::Mail { from, params } = ok("MAIL FROM:<a@b.test>") else {
            panic!()
        };
        assert_eq!(from.to_string(), "<a@b.test>");
        assert_eq!(params, MailParams::default());
        assert!(matches!(ok("mail from: <a@b.test>"), Command::Mail { .. }));
        assert!(matches!(
            ok("MAIL FROM:<>"),
            Command::Mail {
                from: ReversePath::Null,
                ..
            }
        ));
        assert_eq!(
            err("MAIL <a@b.test>"),
            CommandError::Syntax("MAIL FROM:<address> [parameters]")
        );
        assert_eq!(
            err("MAIL FROM:a@b.test"),
            CommandError::Syntax("MAIL FROM:<address> [parameters]")
        );
        assert!(matches!(err("MAIL FROM:<a@>"), CommandError::BadSender(_)));
    }

    #[test]
    fn mail_parameters() {
        let Command::Mail { params, .. } = ok(
            "MAIL FROM:<a@b.test> SIZE=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>",
        ) else {
            panic!()
        };
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Some(Body::EightBitMime));
        assert!(params.smtputf8);
        assert_eq!(params.ret, Some(Ret::Hdrs));
        assert_eq!(params.envid.as_deref(), Some("QQ+1"));
        assert_eq!(params.auth.as_deref(), Some("<>"));
    }

    #[test]
    fn mail_parameter_errors() {
        let bad = |l: &str| matches!(err(l), CommandError::BadParameter(_));
        assert!(bad("MAIL FROM:<a@b.test> SIZE=abc"));
        assert!(bad("MAIL FROM:<a@b.test> SIZE="));
        let repeated = |l: &str| {
            matches!(err(l), CommandError::RepeatedParameter(_))
                && err(l).reply().lines[0].ends_with("repeated")
        };
        assert!(repeated("MAIL FROM:<a@b.test> SIZE=1 SIZE=2"));
        assert!(repeated("MAIL FROM:<a@b.test> ENVID=a envid=b"));
        assert!(repeated("RCPT TO:<a@b.test> NOTIFY=NEVER NOTIFY=SUCCESS"));
        // A valueless keyword twice is harmless (Python's smtplib sends SMTPUTF8 twice).
        let Command::Mail { params, .. } = ok("MAIL FROM:<a@b.test> SMTPUTF8 SMTPUTF8") else {
            panic!()
        };
        assert!(params.smtputf8);
        assert!(bad("MAIL FROM:<a@b.test> BODY=9BIT"));
        assert!(bad("MAIL FROM:<a@b.test> RET=ALL"));
        assert!(bad("MAIL FROM:<a@b.test> ENVID=a+zz"));
        assert!(bad("MAIL FROM:<a@b.test> SMTPUTF8=yes"));
        assert!(bad(&format!(
            "MAIL FROM:<a@b.test> ENVID={}",
            "x".repeat(101)
        )));
        assert_eq!(
            err("MAIL FROM:<a@b.test> FOO=bar"),
            CommandError::UnknownParameter("FOO=bar".into())
        );
        assert_eq!(
            err("MAIL FROM:<a@b.test> BODY=BINARYMIME"),
            CommandError::UnknownParameter("BODY=BINARYMIME".into())
        );
        assert_eq!(err("MAIL FROM:<a@b.test> HOLDFOR=1").reply().code, 555);
    }

    #[test]
    fn huge_size_saturates() {
        let Command::Mail { params, .. } = ok("MAIL FROM:<a@b.test> SIZE=99999999999999999999")
        else {
            panic!()
        };
        assert_eq!(params.size, Some(u64::MAX));
    }

    #[test]
    fn rcpt_parameters() {
        let Command::Rcpt { to, params } =
            ok("RCPT TO:<u@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+2Bx@y.test")
        else {
            panic!()
        };
        assert_eq!(to.to_string(), "<u@x.test>");
        let n = params.notify.unwrap_or_default();
        assert!(n.success && n.failure && !n.delay && !n.never);
        let o = params.orcpt.unwrap_or(OriginalRecipient {
            addr_type: String::new(),
            address: String::new(),
        });
        assert_eq!(o.addr_type, "rfc822");
        assert_eq!(o.address, "u+x@y.test");
        assert!(matches!(
            ok("RCPT TO:<Postmaster>"),
            Command::Rcpt {
                to: ForwardPath::Postmaster,
                ..
            }
        ));
        assert!(matches!(ok("rcpt to: <u@x.test>"), Command::Rcpt { .. }));
    }

    #[test]
    fn rcpt_parameter_errors() {
        let bad = |l: &str| matches!(err(l), CommandError::BadParameter(_));
        assert!(bad("RCPT TO:<u@x.test> NOTIFY=NEVER,SUCCESS"));
        assert!(bad("RCPT TO:<u@x.test> NOTIFY=SOMETIMES"));
        assert!(bad("RCPT TO:<u@x.test> ORCPT=rfc822"));
        assert!(bad("RCPT TO:<u@x.test> ORCPT=;a@b"));
        assert!(bad("RCPT TO:<u@x.test> NOTIFY"));
        assert!(matches!(
            err("RCPT TO:<u@x.test> XYZ"),
            CommandError::UnknownParameter(_)
        ));
        assert!(matches!(err("RCPT TO:<>"), CommandError::BadRecipient(_)));
        assert!(matches!(err("RCPT TO:u@x.test"), CommandError::Syntax(_)));
    }

    #[test]
    fn quoted_path_with_angle_bracket() {
        let Command::Rcpt { to, .. } = ok("RCPT TO:<\"a>b\"@x.test>") else {
            panic!()
        };
        let ForwardPath::Mailbox(m) = to else {
            panic!()
        };
        assert_eq!(m.local(), "a>b");
    }

    #[test]
    fn multibyte_character_where_the_keyword_ends() {
        // Found by fuzzing: "TO" followed by a two-byte character.
        assert!(matches!(
            parse_command("RCPT TOù\"A\"@NO>".as_bytes()),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command("MAIL FROMé:<a@b.test>".as_bytes()),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            ok("BDAT 100"),
            Command::Bdat {
                size: 100,
                last: false
            }
        );
        assert_eq!(
            ok("bdat 0 last"),
            Command::Bdat {
                size: 0,
                last: true
            }
        );
        assert!(matches!(err("BDAT"), CommandError::Syntax(_)));
        assert!(matches!(err("BDAT x"), CommandError::Syntax(_)));
        assert!(matches!(err("BDAT 1 FIRST"), CommandError::Syntax(_)));
        assert!(matches!(err("BDAT -1"), CommandError::Syntax(_)));
        assert!(matches!(
            err("BDAT 99999999999999999999999"),
            CommandError::Syntax(_)
        ));
    }

    #[test]
    fn auth() {
        assert_eq!(
            ok("AUTH plain AGFsaWNlAHNlY3JldA=="),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHNlY3JldA==".into())
            }
        );
        assert_eq!(
            ok("AUTH LOGIN"),
            Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            }
        );
        assert!(matches!(err("AUTH"), CommandError::Syntax(_)));
    }

    #[test]
    fn unknown_http_and_garbage() {
        assert_eq!(err("FOO"), CommandError::Unrecognized);
        assert_eq!(err("GET / HTTP/1.1"), CommandError::Http);
        assert_eq!(err("POST /x HTTP/1.0"), CommandError::Http);
        assert_eq!(
            parse_command(b"HELO a\0b"),
            Err(CommandError::BadCharacters)
        );
        assert_eq!(
            parse_command(b"HELO \xff"),
            Err(CommandError::BadCharacters)
        );
        assert_eq!(ok("ETRN x"), Command::NotImplemented("ETRN"));
        assert_eq!(ok("VRFY alice"), Command::Vrfy("alice".into()));
        assert!(matches!(err("VRFY"), CommandError::Syntax(_)));
    }

    #[test]
    fn xtext_round_trip() {
        for s in ["plain", "a+b=c", "spa ce", "ünï"] {
            assert_eq!(decode_xtext(&encode_xtext(s)).as_deref(), Some(s));
        }
        assert_eq!(decode_xtext("a+2"), None);
        assert_eq!(decode_xtext("a+2b"), None, "hex digits must be upper case");
        assert_eq!(decode_xtext("a=b"), None);
        // Control characters, escaped or not, are refused: they would reach DSNs and logs.
        assert_eq!(decode_xtext("e1+0D+0AX-Injected:+20yes"), None);
        assert_eq!(decode_xtext("a+1B[2J"), None);
        assert_eq!(decode_xtext("a+7F"), None);
        assert_eq!(decode_xtext("a+C2+9B"), None, "a C1 control in UTF-8");
    }

    #[test]
    fn every_error_has_a_reply_with_enhanced_code() {
        for e in [
            CommandError::Unrecognized,
            CommandError::Http,
            CommandError::BadCharacters,
            CommandError::Syntax("x"),
            CommandError::BadSender(AddressError::BadDomain),
            CommandError::BadRecipient(AddressError::BadDomain),
            CommandError::BadParameter("X".into()),
            CommandError::UnknownParameter("X".into()),
        ] {
            let r = e.reply();
            assert!(r.is_permanent() && r.enhanced.is_some(), "{e:?}");
        }
    }
}
