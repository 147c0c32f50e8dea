//! The richer conditions of `[routes.match]`: header tests beyond an exact value, query
//! parameters and the client's address. The schema types (as written) and the compiled ones.

use std::borrow::Cow;
use std::fmt;

use regex::Regex;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// One `match.headers` entry as written: a plain string (the exact value) or a table with
/// one of `exact`, `prefix`, `regex` and `present`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderConditionSection {
    /// Equal to this.
    pub exact: Option<String>,
    /// Starts with this.
    pub prefix: Option<String>,
    /// Matches this regular expression (anchored at both ends).
    pub regex: Option<String>,
    /// Present (`true`) or absent (`false`), whatever its value.
    pub present: Option<bool>,
}

const CONDITION_KEYS: &[&str] = &["exact", "prefix", "regex", "present"];

impl<'de> Deserialize<'de> for HeaderConditionSection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ConditionVisitor;

        impl<'de> Visitor<'de> for ConditionVisitor {
            type Value = HeaderConditionSection;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (the exact value) or a table with one of exact, prefix, regex and present")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(HeaderConditionSection {
                    exact: Some(value.to_owned()),
                    ..HeaderConditionSection::default()
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut condition = HeaderConditionSection::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "exact" => condition.exact = Some(map.next_value()?),
                        "prefix" => condition.prefix = Some(map.next_value()?),
                        "regex" => condition.regex = Some(map.next_value()?),
                        "present" => condition.present = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, CONDITION_KEYS)),
                    }
                }
                Ok(condition)
            }
        }

        deserializer.deserialize_any(ConditionVisitor)
    }
}

/// A compiled header test.
#[derive(Debug, Clone)]
pub enum HeaderTest {
    /// Equal to this.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Matches the whole value.
    Regex(Regex),
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

impl HeaderTest {
    /// Whether a header's value (`None` when absent) passes.
    pub fn passes(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (HeaderTest::Present(wanted), value) => value.is_some() == *wanted,
            (_, None) => false,
            (HeaderTest::Exact(expected), Some(value)) => value == expected.as_bytes(),
            (HeaderTest::Prefix(prefix), Some(value)) => value.starts_with(prefix.as_bytes()),
            (HeaderTest::Regex(regex), Some(value)) => {
                std::str::from_utf8(value).is_ok_and(|value| regex.is_match(value))
            }
        }
    }

    /// The test as `/routes` shows it: `exact "v"`, `prefix "v"`, `regex "…"`, `present`
    /// or `absent`.
    pub fn describe(&self) -> String {
        match self {
            HeaderTest::Exact(value) => format!("exact {value:?}"),
            HeaderTest::Prefix(value) => format!("prefix {value:?}"),
            HeaderTest::Regex(regex) => format!("regex {:?}", regex.as_str()),
            HeaderTest::Present(true) => "present".to_owned(),
            HeaderTest::Present(false) => "absent".to_owned(),
        }
    }
}

/// The value of the first `name` parameter of a query string, decoded (`%XX` and `+`).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

/// Percent-decodes a query component, with `+` as a space. A malformed escape is kept as
/// written; bytes that are not UTF-8 become U+FFFD.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tests() {
        assert!(HeaderTest::Exact("a".into()).passes(Some(b"a")));
        assert!(!HeaderTest::Exact("a".into()).passes(Some(b"ab")));
        assert!(HeaderTest::Prefix("Bearer ".into()).passes(Some(b"Bearer x")));
        assert!(!HeaderTest::Prefix("Bearer ".into()).passes(None));
        let regex = Regex::new("^(?:v[0-9]+)$").unwrap();
        assert!(HeaderTest::Regex(regex.clone()).passes(Some(b"v12")));
        assert!(!HeaderTest::Regex(regex).passes(Some(b"xv12")));
        assert!(HeaderTest::Present(true).passes(Some(b"")));
        assert!(HeaderTest::Present(false).passes(None));
        assert!(!HeaderTest::Present(false).passes(Some(b"x")));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value("a=1&version=2", "version").as_deref(),
            Some("2")
        );
        assert_eq!(query_value("q=a+b%21", "q").as_deref(), Some("a b!"));
        assert_eq!(query_value("flag&x=1", "flag").as_deref(), Some(""));
        assert_eq!(query_value("x=%zz%4", "x").as_deref(), Some("%zz%4"));
        assert_eq!(query_value("x=1", "y"), None);
        assert_eq!(query_value("v%65rsion=3", "version").as_deref(), Some("3"));
    }
}
