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
//! a raw `\`, an encoded NUL or control character, a malformed escape, or a dot segment with
//! parameters (`/..;/`, `/.;x/`): the gateway reads `..;` as a name, but Tomcat and Spring
//! drop the `;` part and then resolve the `..`, so `/pub/..;/admin` would be routed by `/pub/`
//! and served as `/admin`.
//!
//! A route's `rewrite` runs after normalization, so its result is checked again
//! ([`check_rewritten_path`]): `/static../k` rewritten from `/static` to `/assets/` would
//! forward `/assets/../k`.

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
    /// A `.` or `..` segment followed by parameters (`..;x`), which some upstreams resolve.
    DotSegmentWithParameters,
    /// The route's rewrite made a path with a `..` segment.
    RewriteMadeDotSegment,
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
            BadPath::DotSegmentWithParameters => {
                "the path holds a dot segment with parameters (\"..;\"), which some upstreams resolve as \"..\""
            }
            BadPath::RewriteMadeDotSegment => {
                "the route's rewrite made a path with a \"..\" segment"
            }
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
                if is_dot_segment_with_parameters(other) {
                    return Err(BadPath::DotSegmentWithParameters);
                }
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
    // `;` starts a segment's parameters, which the slow path looks at (`..;`).
    if bytes.iter().any(|&b| b == b'%' || b == b';') {
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

/// Whether `segment` (decoded) is `.` or `..` followed by parameters: `..;x`, `.;`, or the
/// same with an encoded `;` (`..%3B`).
fn is_dot_segment_with_parameters(segment: &str) -> bool {
    let name = match segment.find(';') {
        Some(at) => &segment[..at],
        None => segment,
    };
    let name = match name
        .as_bytes()
        .windows(3)
        .position(|w| w.eq_ignore_ascii_case(b"%3b"))
    {
        Some(at) => &name[..at],
        None if name.len() == segment.len() => return false,
        None => name,
    };
    name == "." || name == ".."
}

/// Checks a path a route's `rewrite` made from a normal path: its `..` segments (which
/// the rewrite's own text brought next to the request's) are refused, not resolved, since
/// resolving them would leave the folder the rewrite names; anything else is put in normal
/// form. The path as given when it is already normal.
pub fn check_rewritten_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') || is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    if decoded.split('/').any(|segment| segment == "..") {
        return Err(BadPath::RewriteMadeDotSegment);
    }
    normalize_path(path).map(|normal| Cow::Owned(normal.into_owned()))
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

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for path in [
            "/pub/..;/admin/x",
            "/pub/..;jsessionid=1/admin",
            "/pub/.;/x",
            "/pub/%2e%2e;/admin",
            "/pub/..%3b/admin",
            "/pub/..%3B/admin",
            "/..;",
        ] {
            assert_eq!(
                normalize_path(path),
                Err(BadPath::DotSegmentWithParameters),
                "{path}"
            );
        }
        // Parameters on a name, and dots inside a name, are kept.
        assert_eq!(normal("/a;jsessionid=1/b"), "/a;jsessionid=1/b");
        assert_eq!(normal("/a/..b;x/c"), "/a/..b;x/c");
        assert_eq!(normal("/a/...;x"), "/a/...;x");
    }

    #[test]
    fn rewritten_paths_with_dot_dot_segments_are_refused() {
        assert_eq!(
            check_rewritten_path("/assets/../private/k"),
            Err(BadPath::RewriteMadeDotSegment)
        );
        assert_eq!(
            check_rewritten_path("/assets/%2e%2e/private/k"),
            Err(BadPath::RewriteMadeDotSegment)
        );
        assert_eq!(
            check_rewritten_path("/assets/..;/k"),
            Err(BadPath::DotSegmentWithParameters)
        );
        assert_eq!(check_rewritten_path("/v2//x/./y").unwrap(), "/v2/x/y");
        assert!(matches!(
            check_rewritten_path("/assets/app.js"),
            Ok(Cow::Borrowed(_))
        ));
    }
}
