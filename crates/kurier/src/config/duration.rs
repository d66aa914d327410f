//! Durations in the config file as a person writes them: read in any form humantime knows
//! (`90s`, `1h 30m`, `5days`), written in the largest unit that divides them (`36d`, `4h`,
//! `90s`), so `kurier config default` prints `5d`, not `5days` or `1month 5days 13h…`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The shortest exact text: whole days, hours, minutes or seconds; a fraction of a second
/// in milliseconds.
pub fn display(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match secs {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn parse<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
    humantime::parse_duration(text).map_err(|e| E::custom(format!("{text:?}: {e}")))
}

/// One duration (`#[serde(with = "duration::text")]`).
pub mod text {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&display(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?)
    }
}

/// A list of durations (`["1m", "5m"]`).
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| display(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| parse(t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_a_person_writes_them() {
        let s = Duration::from_secs;
        assert_eq!(display(s(36 * 86_400)), "36d");
        assert_eq!(display(s(5 * 86_400)), "5d");
        assert_eq!(display(s(4 * 3_600)), "4h");
        assert_eq!(display(s(90 * 60)), "90m");
        assert_eq!(display(s(90)), "90s");
        assert_eq!(display(s(0)), "0s");
        assert_eq!(display(Duration::from_millis(1500)), "1500ms");
        for d in [s(36 * 86_400), s(5400), s(61), Duration::from_millis(250)] {
            assert_eq!(humantime::parse_duration(&display(d)).ok(), Some(d));
        }
    }
}
