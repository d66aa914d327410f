//! Untrusted values made harmless for a log line.
//!
//! tracing-subscriber's text format writes a field's `Display` output as it is: a CR or LF in
//! a client's AUTH identity would end the line and start a forged one (which fail2ban and
//! friends would believe), and an ESC would reach the terminal of whoever tails the log.
//! [`Escaped`] writes every control character (C0 including CR, LF and TAB, DEL, and C1
//! U+0080–U+009F: Unicode category Cc) as a visible escape (`\n`, `\r`, `\t`, `\x1b`,
//! `\u{9b}`) and everything else, non-ASCII letters included, unchanged.

use std::fmt::{self, Display, Write};

use tracing::field::DisplayValue;

/// A value whose `Display` output is written with control characters escaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

/// An untrusted value as a log field: `user = escaped(username)`.
pub fn escaped<T: Display>(value: T) -> DisplayValue<Escaped<T>> {
    tracing::field::display(Escaped(value))
}

/// Passes text through to the formatter, control characters escaped.
struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean_from = 0;
        for (i, c) in s.char_indices().filter(|(_, c)| c.is_control()) {
            self.0.write_str(&s[clean_from..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if c.is_ascii() => write!(self.0, "\\x{:02x}", u32::from(c))?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            clean_from = i + c.len_utf8();
        }
        self.0.write_str(&s[clean_from..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        Escaped(s).to_string()
    }

    #[test]
    fn line_breaks_and_tabs_become_visible() {
        assert_eq!(
            esc("x\nFORGED authentication failure\r\n"),
            "x\\nFORGED authentication failure\\r\\n"
        );
        assert_eq!(esc("a\tb"), "a\\tb");
    }

    #[test]
    fn other_c0_del_and_c1_are_escaped_by_code() {
        assert_eq!(esc("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(esc("\0\x07\x7f"), "\\x00\\x07\\x7f");
        assert_eq!(esc("\u{80}\u{9b}31m\u{9f}"), "\\u{80}\\u{9b}31m\\u{9f}");
    }

    #[test]
    fn printable_text_is_unchanged() {
        for s in [
            "",
            "alice@example.test",
            "jösé@bücher.example",
            "mx.example.test [192.0.2.1]",
            "550 5.1.1 <a@b>: no such user \\n",
            "\u{a0}\u{ff}日本語",
        ] {
            assert_eq!(esc(s), s);
        }
    }

    #[test]
    fn any_display_value_is_escaped_and_the_field_helper_agrees() {
        let e = std::io::Error::other("bad\nline");
        assert_eq!(Escaped(&e).to_string(), "bad\\nline");
        assert_eq!(escaped("q\u{1b}").to_string(), "q\\x1b");
    }

    #[test]
    fn no_control_character_survives_any_input() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = esc(&all);
        assert!(!out.chars().any(char::is_control));
        // Escapes are ASCII: every other non-ASCII character is still there, in order.
        let non_ascii = |s: &str| -> String { s.chars().filter(|c| !c.is_ascii()).collect() };
        let kept: String = all.chars().filter(|c| !c.is_control()).collect();
        assert_eq!(non_ascii(&out), non_ascii(&kept));
    }
}
