//! Protocol values as the spool stores them: each in its wire form (a mailbox as it would be
//! written in a path, a status code as `5.1.1`), read back through the same parsers that read
//! the wire. A stored value that no longer parses is a damaged file, never a guess.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::address::{Domain, Mailbox, ReversePath};
use crate::reply::EnhancedCode;

/// Reads a string and parses it, or fails with what was expected.
struct Parsed<T> {
    expecting: &'static str,
    parse: fn(&str) -> Option<T>,
}

impl<T> Visitor<'_> for Parsed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, D::Error> {
    d.deserialize_str(Parsed { expecting, parse })
}

impl Serialize for Mailbox {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mailbox {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a mailbox local@domain", |s| Mailbox::parse(s).ok())
    }
}

/// The null path is stored as the empty string, a mailbox without brackets.
impl Serialize for ReversePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ReversePath::Null => s.serialize_str(""),
            ReversePath::Mailbox(m) => s.collect_str(m),
        }
    }
}

impl<'de> Deserialize<'de> for ReversePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a mailbox or the empty string", |s| {
            if s.is_empty() {
                Some(ReversePath::Null)
            } else {
                Mailbox::parse(s).ok().map(ReversePath::Mailbox)
            }
        })
    }
}

impl Serialize for Domain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a domain", |s| Domain::parse(s).ok())
    }
}

impl Serialize for EnhancedCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnhancedCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "an RFC 3463 status such as 5.1.1", EnhancedCode::parse)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::command::{Notify, OriginalRecipient, Ret};

    fn round_trip<T: Serialize + for<'a> Deserialize<'a> + PartialEq + fmt::Debug>(
        v: &T,
        json: &str,
    ) {
        assert_eq!(serde_json::to_string(v).unwrap(), json);
        assert_eq!(&serde_json::from_str::<T>(json).unwrap(), v);
    }

    #[test]
    fn values_are_stored_in_wire_form() {
        round_trip(
            &Mailbox::parse("\"john doe\"@Example.ORG").unwrap(),
            r#""\"john doe\"@example.org""#,
        );
        round_trip(
            &Mailbox::parse("jörg@bücher.test").unwrap(),
            "\"jörg@bücher.test\"",
        );
        round_trip(&ReversePath::Null, "\"\"");
        round_trip(
            &ReversePath::Mailbox(Mailbox::parse("a@b.test").unwrap()),
            "\"a@b.test\"",
        );
        round_trip(&EnhancedCode(5, 1, 1), "\"5.1.1\"");
        round_trip(&Ret::Hdrs, "\"HDRS\"");
        round_trip(
            &Notify {
                success: true,
                ..Notify::default()
            },
            r#"{"never":false,"success":true,"failure":false,"delay":false}"#,
        );
        round_trip(
            &OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "X@y.test".into(),
            },
            r#"{"addr_type":"rfc822","address":"X@y.test"}"#,
        );
    }

    #[test]
    fn damaged_values_are_refused() {
        for bad in [r#""no-at-sign""#, r#""a@""#, "17", r#""a\u0000b@c.test""#] {
            assert!(serde_json::from_str::<Mailbox>(bad).is_err(), "{bad}");
        }
        for bad in [
            r#""6.0.0""#,
            r#""5.1""#,
            r#""5.1.1.1""#,
            r#""5.1000.1""#,
            r#""""#,
        ] {
            assert!(serde_json::from_str::<EnhancedCode>(bad).is_err(), "{bad}");
        }
    }
}
