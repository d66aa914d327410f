//! SMTP replies with enhanced status codes.
//!
//! RFC 5321 §4.2 defines the three-digit reply codes; RFC 2034 and RFC 3463 add the
//! `class.subject.detail` enhanced status code that Kurier puts in front of the text of every
//! 2xx/4xx/5xx reply except the greeting and the EHLO/HELO reply.

use std::fmt;

/// An RFC 3463 enhanced status code such as `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode(pub u8, pub u16, pub u16);

impl EnhancedCode {
    /// Parses `class.subject.detail` (RFC 3463 §2): class 2, 4 or 5, subject and detail of
    /// one to three digits.
    pub fn parse(s: &str) -> Option<EnhancedCode> {
        let mut parts = s.split('.');
        let (Some(c), Some(sub), Some(det), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let number = |p: &str| {
            (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u16>().ok())
                .flatten()
        };
        let class = match c {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        Some(EnhancedCode(class, number(sub)?, number(det)?))
    }

    /// A permanent failure (class 5).
    pub fn is_permanent(&self) -> bool {
        self.0 == 5
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The longest reply line, in octets including CRLF (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// One SMTP reply: a code, an optional enhanced code and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 §4.2.3).
    pub code: u16,
    /// The enhanced status code, repeated on every line (RFC 2034 §4).
    pub enhanced: Option<EnhancedCode>,
    /// The text lines; never empty, never containing CR or LF.
    pub lines: Vec<String>,
}

impl Reply {
    /// `451 4.3.0`: the server failed at something of its own (a disk, a task); the client
    /// should try again later (RFC 5321 §4.2.2, RFC 3463).
    pub fn local_error() -> Self {
        Reply::new(
            451,
            codes::SYSTEM_TEMP,
            "Local error in processing, try again later",
        )
    }

    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![sanitize(text.into())],
        }
    }

    /// A one-line reply without an enhanced status code (greeting, 334, 354).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            lines: vec![sanitize(text.into())],
        }
    }

    /// A multi-line reply (EHLO, HELP) without enhanced status codes.
    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        let mut lines: Vec<String> = lines.into_iter().map(sanitize).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// True for 4xx replies (transient failure, RFC 5321 §4.2.1).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx replies (permanent failure, RFC 5321 §4.2.1).
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as it goes on the wire: `code-text` lines, `code text` on the last, CRLF ends.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form of the reply to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let prefix = match self.enhanced {
                Some(e) => format!("{}{}{} ", self.code, sep, e),
                None => format!("{}{}", self.code, sep),
            };
            out.extend_from_slice(prefix.as_bytes());
            // RFC 5321 §4.5.3.1.5: a reply line holds at most 512 octets with its CRLF.
            // Text that echoes a long address is cut (at a character boundary) to fit.
            let room = MAX_REPLY_LINE - 2 - prefix.len();
            if line.len() <= room {
                out.extend_from_slice(line.as_bytes());
            } else {
                let mut cut = room - 3;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.extend_from_slice(&line.as_bytes()[..cut]);
                out.extend_from_slice(b"...");
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The text of all lines joined by spaces, for logs and DSNs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

/// Reply text must never carry a line break or control character (it would let a client or
/// a crafted address inject reply lines). Replaces them with spaces.
fn sanitize(text: String) -> String {
    if text.chars().any(|c| c.is_control()) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        text
    }
}

/// Enhanced status codes used by Kurier (RFC 3463 §3, RFC 4954, RFC 6531).
pub mod codes {
    use super::EnhancedCode;
    /// 2.0.0 Other or undefined status (success).
    pub const OK: EnhancedCode = EnhancedCode(2, 0, 0);
    /// 2.1.0 Other address status (sender ok).
    pub const SENDER_OK: EnhancedCode = EnhancedCode(2, 1, 0);
    /// 2.1.5 Destination address valid.
    pub const RCPT_OK: EnhancedCode = EnhancedCode(2, 1, 5);
    /// 2.5.0 Other or undefined protocol status (VRFY 252).
    pub const PROTOCOL_OK: EnhancedCode = EnhancedCode(2, 5, 0);
    /// 2.6.0 Message accepted (end of data).
    pub const MESSAGE_OK: EnhancedCode = EnhancedCode(2, 6, 0);
    /// 2.7.0 Authentication succeeded (RFC 4954 §6).
    pub const AUTH_OK: EnhancedCode = EnhancedCode(2, 7, 0);
    /// 4.3.0 Other or undefined mail system status (temporary).
    pub const SYSTEM_TEMP: EnhancedCode = EnhancedCode(4, 3, 0);
    /// 4.3.1 Mail system full.
    pub const SYSTEM_FULL: EnhancedCode = EnhancedCode(4, 3, 1);
    /// 4.3.2 System not accepting network messages (shutdown).
    pub const SHUTTING_DOWN: EnhancedCode = EnhancedCode(4, 3, 2);
    /// 4.4.2 Bad connection (timeout).
    pub const TIMEOUT: EnhancedCode = EnhancedCode(4, 4, 2);
    /// 4.5.3 Too many recipients.
    pub const TOO_MANY_RCPTS: EnhancedCode = EnhancedCode(4, 5, 3);
    /// 4.7.0 Other or undefined security status (temporary): limits.
    pub const SECURITY_TEMP: EnhancedCode = EnhancedCode(4, 7, 0);
    /// 4.7.1 Delivery not authorized (temporary): greylisting.
    pub const GREYLISTED: EnhancedCode = EnhancedCode(4, 7, 1);
    /// 5.1.1 Bad destination mailbox address (unknown user).
    pub const NO_SUCH_USER: EnhancedCode = EnhancedCode(5, 1, 1);
    /// 5.1.3 Bad destination mailbox address syntax.
    pub const BAD_RCPT_SYNTAX: EnhancedCode = EnhancedCode(5, 1, 3);
    /// 5.1.7 Bad sender's mailbox address syntax.
    pub const BAD_SENDER_SYNTAX: EnhancedCode = EnhancedCode(5, 1, 7);
    /// 5.3.4 Message too big for system.
    pub const TOO_BIG: EnhancedCode = EnhancedCode(5, 3, 4);
    /// 5.5.1 Invalid command (bad sequence).
    pub const BAD_SEQUENCE: EnhancedCode = EnhancedCode(5, 5, 1);
    /// 5.5.2 Syntax error (unrecognized command, bad line).
    pub const SYNTAX: EnhancedCode = EnhancedCode(5, 5, 2);
    /// 5.5.4 Invalid command arguments.
    pub const BAD_ARGS: EnhancedCode = EnhancedCode(5, 5, 4);
    /// 5.5.6 Authentication exchange line too long / protocol error.
    pub const PROTOCOL_ERROR: EnhancedCode = EnhancedCode(5, 5, 6);
    /// 5.6.0 Other or undefined media error (malformed message data).
    pub const MEDIA: EnhancedCode = EnhancedCode(5, 6, 0);
    /// 5.6.7 Non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
    pub const NEED_SMTPUTF8: EnhancedCode = EnhancedCode(5, 6, 7);
    /// 5.7.0 Other or undefined security status (authentication required, cancelled).
    pub const SECURITY: EnhancedCode = EnhancedCode(5, 7, 0);
    /// 5.7.1 Delivery not authorized (relay denied).
    pub const NOT_AUTHORIZED: EnhancedCode = EnhancedCode(5, 7, 1);
    /// 5.7.8 Authentication credentials invalid (RFC 4954 §6).
    pub const BAD_CREDENTIALS: EnhancedCode = EnhancedCode(5, 7, 8);
    /// 5.7.11 Encryption required for requested authentication mechanism (RFC 4954 §6).
    pub const ENCRYPTION_REQUIRED: EnhancedCode = EnhancedCode(5, 7, 11);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_parse_back() {
        for code in [
            EnhancedCode(2, 0, 0),
            EnhancedCode(4, 4, 7),
            EnhancedCode(5, 7, 26),
        ] {
            assert_eq!(EnhancedCode::parse(&code.to_string()), Some(code));
        }
        for bad in [
            "", "5", "5.1", "3.1.1", "5.1.1.", "5.x.1", "5.1234.1", " 5.1.1", "5.1.+1",
        ] {
            assert_eq!(EnhancedCode::parse(bad), None, "{bad:?}");
        }
        assert!(EnhancedCode(5, 1, 1).is_permanent() && !EnhancedCode(4, 1, 1).is_permanent());
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = Reply::new(250, codes::OK, "Ok");
        assert_eq!(r.to_bytes(), b"250 2.0.0 Ok\r\n");
    }

    #[test]
    fn long_lines_are_cut_to_512_octets() {
        // Found by fuzzing: a reply echoing a long address went past the line limit.
        let address = "\u{e9}".repeat(400); // 800 octets
        for r in [
            Reply::new(
                553,
                codes::NOT_AUTHORIZED,
                format!("<{address}>: not yours"),
            ),
            Reply::multiline(250, vec![address.clone(), "last".into()]),
        ] {
            let wire = r.to_bytes();
            let Ok(text) = String::from_utf8(wire) else {
                panic!("not cut at a character boundary");
            };
            for line in text.split_inclusive("\r\n") {
                assert!(line.len() <= MAX_REPLY_LINE, "{} octets", line.len());
                assert!(line.ends_with("\r\n"));
            }
        }
        let r = Reply::new(553, codes::NOT_AUTHORIZED, "x".repeat(600));
        let wire = r.to_bytes();
        assert_eq!(wire.len(), MAX_REPLY_LINE);
        assert!(wire.ends_with(b"...\r\n"));
    }

    #[test]
    fn multiline_uses_dashes_until_last() {
        let r = Reply::multiline(
            250,
            vec!["mx.test".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(
            r.to_bytes(),
            b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn control_characters_cannot_inject_lines() {
        let r = Reply::new(550, codes::NO_SUCH_USER, "bad\r\n250 fake");
        assert_eq!(r.to_bytes(), b"550 5.1.1 bad  250 fake\r\n");
    }

    #[test]
    fn empty_continuation_keeps_its_space() {
        // RFC 4954 §4: continue-req = "334" SP [base64] CRLF
        assert_eq!(Reply::plain(334, "").to_bytes(), b"334 \r\n");
    }

    #[test]
    fn classes() {
        assert!(Reply::plain(354, "go").is_positive());
        assert!(Reply::new(451, codes::SYSTEM_TEMP, "x").is_transient());
        assert!(Reply::new(550, codes::NO_SUCH_USER, "x").is_permanent());
    }
}
