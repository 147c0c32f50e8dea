//! Durations as the policy writes them: `"250ms"`, `"3s"`, `"1m"`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration parsed from a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Parses `"250ms"`, `"3s"`, `"1m30s"`…; a bare number without a unit is refused because
    /// it is ambiguous.
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim()).map(Duration).map_err(|e| {
            format!("invalid duration {text:?} ({e}): write a number and a unit, such as \"250ms\", \"3s\" or \"1m\"")
        })
    }

    /// The std duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"3s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_bare_numbers() {
        assert_eq!(
            Duration::parse("250ms").unwrap().get(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            Duration::parse("1m").unwrap().get(),
            std::time::Duration::from_secs(60)
        );
        assert!(Duration::parse("3").is_err());
        assert!(Duration::parse("fast").is_err());
    }
}
