//! Byte sizes as the policy writes them: `"32KiB"`, `"10MiB"`, `"512B"`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A size in bytes: a string with a unit (`"32KiB"`), or a TOML integer of bytes (`1024`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses a number followed by `B`, `KiB`, `MiB` or `GiB` (or `KB`, `MB`, `GB`, taken as
    /// the same binary multiples, as NGINX does). A string without a unit is refused; a TOML
    /// integer (not a string) is read as bytes by the deserializer.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits);
        let multiple: u64 = match unit.trim() {
            "B" => 1,
            "KiB" | "KB" | "k" | "K" => 1 << 10,
            "MiB" | "MB" | "m" | "M" => 1 << 20,
            "GiB" | "GB" | "g" | "G" => 1 << 30,
            _ => 0,
        };
        let value = number.parse::<u64>().ok().filter(|_| multiple > 0);
        value
            .and_then(|n| n.checked_mul(multiple))
            .map(ByteSize)
            .ok_or_else(|| {
                format!("invalid size {text:?}: write a number and a unit, such as \"512B\", \"32KiB\" or \"10MiB\"")
            })
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"32KiB\", \"10MiB\", or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            /// A TOML integer is a number of bytes, as NGINX reads `1024`.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: a size is not negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_bare_numbers() {
        assert_eq!(ByteSize::parse("32KiB").unwrap().bytes(), 32 * 1024);
        assert_eq!(ByteSize::parse("10MiB").unwrap().bytes(), 10 << 20);
        assert_eq!(ByteSize::parse("512B").unwrap().bytes(), 512);
        assert_eq!(ByteSize::parse("8KiB").unwrap().to_string(), "8KiB");
        assert!(ByteSize::parse("10").is_err());
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
    }
}
