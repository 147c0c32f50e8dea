//! Request path normalization, done before route matching (`[server].path_normalization`).
//!
//! Routing on the path as received lets a client walk around a route's policy: `/ws/../admin`
//! matches a `/ws/` prefix, and an upstream that resolves dot segments then serves `/admin`
//! under the `/ws/` route's `allow` list. So the gateway routes, authorizes and forwards the
//! path in one normal form:
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the hex
//!   digits of every other escape are upper-cased (RFC 3986 §6.2.2.1–2);
//! - runs of `/` are merged into one;
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4), including encoded ones (`%2e`).
//!
//! Paths the gateway cannot route safely are refused instead: one that climbs above the root,
//! one that holds an encoded `/` or `\` (`%2F`, `%5C`) whose meaning differs between upstreams,
//! a raw `\`, an encoded NUL or control character, or a malformed escape.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// A `..` segment would climb above the root.
    AboveRoot,
    /// `%2F` or `%5C`: an encoded path separator.
    EncodedSeparator,
    /// A raw `\`.
    Backslash,
    /// An encoded NUL or other control character.
    ControlCharacter,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
}

impl BadPath {
    /// A sentence for logs and `/explain`.
    pub fn message(self) -> &'static str {
        match self {
            BadPath::AboveRoot => "the path climbs above the root with \"..\"",
            BadPath::EncodedSeparator => "the path holds an encoded \"/\" or \"\\\" (%2F, %5C)",
            BadPath::Backslash => "the path holds a \"\\\"",
            BadPath::ControlCharacter => "the path holds an encoded NUL or control character",
            BadPath::MalformedEscape => "the path holds a \"%\" not followed by two hex digits",
        }
    }
}

/// The normal form of `path` (the path part of a request target, without the query), or why it
/// is refused. Returns the input borrowed when it is already normal, which is the common case
/// and costs one scan without allocating.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if path.contains('\\') {
        return Err(BadPath::Backslash);
    }
    if !path.starts_with('/') {
        // `*` (OPTIONS) or an empty path: nothing to resolve.
        return Ok(Cow::Borrowed(path));
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut output: Vec<&str> = Vec::new();
    let mut segments = decoded[1..].split('/').peekable();
    // Whether the path ends with a directory (a trailing `/`, `.` or `..`), which the normal
    // form keeps as a trailing `/`.
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" => {
                // An empty segment is a repeated slash, or the final one.
                trailing_slash = last;
            }
            "." => trailing_slash = last,
            ".." => {
                if output.pop().is_none() {
                    return Err(BadPath::AboveRoot);
                }
                trailing_slash = last;
            }
            other => {
                output.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &output {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || output.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Whether `path` (starting with `/`) has nothing to normalize: no escape, no empty segment and
/// no dot segment.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.contains(&b'%') {
        return false;
    }
    // Look at each segment start: `//`, `/./`, `/../`, or a final `/.` or `/..`.
    bytes.iter().enumerate().all(|(i, &b)| {
        if b != b'/' {
            return true;
        }
        let rest = &bytes[i + 1..];
        !(rest.starts_with(b"/")
            || rest == b"."
            || rest.starts_with(b"./")
            || rest == b".."
            || rest.starts_with(b"../"))
    })
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters and upper-cases the others; refuses escapes of
/// separators and control characters.
fn decode_unreserved(path: &str) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let start = i;
            while i < bytes.len() && bytes[i] != b'%' {
                i += 1;
            }
            out.push_str(&path[start..i]);
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(BadPath::MalformedEscape);
        };
        let value = high * 16 + low;
        match value {
            b'/' | b'\\' => return Err(BadPath::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(BadPath::ControlCharacter),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(value as char)
            }
            _ => {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> String {
        normalize_path(path).unwrap().into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "*"] {
            assert!(matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path));
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(normal("/ws/../dead"), "/dead");
        assert_eq!(normal("/a/./b"), "/a/b");
        assert_eq!(normal("/a//b///c"), "/a/b/c");
        assert_eq!(normal("//"), "/");
        assert_eq!(normal("/a/b/.."), "/a/");
        assert_eq!(normal("/a/."), "/a/");
        assert_eq!(normal("/a/.."), "/");
        assert_eq!(normal("/a/%2e%2E/b"), "/b");
        assert_eq!(normal("/a/%2e/b"), "/a/b");
    }

    #[test]
    fn escapes() {
        assert_eq!(normal("/%41%7e%5f"), "/A~_");
        assert_eq!(normal("/a%20b%c3%a9"), "/a%20b%C3%A9");
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize_path("/.."), Err(BadPath::AboveRoot));
        assert_eq!(normalize_path("/a/../../b"), Err(BadPath::AboveRoot));
        assert_eq!(normalize_path("/%2e%2e/x"), Err(BadPath::AboveRoot));
        assert_eq!(normalize_path("/a%2Fb"), Err(BadPath::EncodedSeparator));
        assert_eq!(normalize_path("/a%5cb"), Err(BadPath::EncodedSeparator));
        assert_eq!(normalize_path("/a\\b"), Err(BadPath::Backslash));
        assert_eq!(normalize_path("/a%00b"), Err(BadPath::ControlCharacter));
        assert_eq!(normalize_path("/a%zz"), Err(BadPath::MalformedEscape));
        assert_eq!(normalize_path("/a%4"), Err(BadPath::MalformedEscape));
    }
}
