//! A route's `rewrite`: the path and `Host` the upstream sees. The schema type (as written)
//! and the compiled one.

use regex::Regex;
use serde::Deserialize;

/// `rewrite = { … }` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteSection {
    /// Replaces the part of the path the route's `match.path_prefix` matched.
    pub path_prefix: Option<String>,
    /// A regular expression searched in the path; with `path`, the replacement.
    pub path_regex: Option<String>,
    /// The new path for `path_regex`, where `\1`… `\9` stand for capture groups.
    pub path: Option<String>,
    /// The `Host` sent upstream.
    pub host: Option<String>,
}

/// How a route rewrites the path.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the leading `matched` with `replacement`.
    Prefix {
        /// The route's `match.path_prefix`.
        matched: String,
        /// What takes its place.
        replacement: String,
    },
    /// Replace the first match of `regex` with `template` (in the `regex` crate's `${1}` form).
    Regex {
        /// The expression.
        regex: Regex,
        /// The replacement.
        template: String,
        /// The replacement as written, for display.
        written: String,
    },
}

/// A route's rewrite, compiled.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The path rewrite.
    pub path: Option<PathRewrite>,
    /// The upstream `Host`.
    pub host: Option<String>,
}

impl Rewrite {
    /// The path the upstream gets for `path`, or `None` when it is unchanged. The result
    /// always starts with `/`.
    pub fn rewrite_path(&self, path: &str) -> Option<String> {
        let rewritten = match self.path.as_ref()? {
            PathRewrite::Prefix {
                matched,
                replacement,
            } => {
                let rest = path.strip_prefix(matched.as_str())?;
                // `/api/` → `/`: `/api/x` becomes `/x`, not `//x`.
                if replacement.ends_with('/') && rest.starts_with('/') {
                    format!("{replacement}{}", &rest[1..])
                } else {
                    format!("{replacement}{rest}")
                }
            }
            PathRewrite::Regex {
                regex, template, ..
            } => {
                if !regex.is_match(path) {
                    return None;
                }
                regex.replacen(path, 1, template.as_str()).into_owned()
            }
        };
        Some(if rewritten.starts_with('/') {
            rewritten
        } else {
            format!("/{rewritten}")
        })
    }

    /// One line for `/routes`, such as `path_prefix "/v2/", host "orders.internal"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.path {
            Some(PathRewrite::Prefix { replacement, .. }) => {
                parts.push(format!("path_prefix {replacement:?}"))
            }
            Some(PathRewrite::Regex { regex, written, .. }) => {
                parts.push(format!("path_regex {:?} path {written:?}", regex.as_str()))
            }
            None => {}
        }
        if let Some(host) = &self.host {
            parts.push(format!("host {host:?}"));
        }
        parts.join(", ")
    }
}

/// Turns a replacement written with `\1`…`\9` into the `regex` crate's `${1}` form (a
/// literal `$` is doubled), and returns the highest group it refers to.
pub fn regex_template(written: &str) -> (String, usize) {
    let mut template = String::with_capacity(written.len() + 8);
    let mut highest = 0;
    let mut chars = written.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    let group = usize::from(d as u8 - b'0');
                    highest = highest.max(group);
                    template.push_str(&format!("${{{group}}}"));
                }
                Some('\\') => {
                    chars.next();
                    template.push('\\');
                }
                _ => template.push('\\'),
            },
            '$' => template.push_str("$$"),
            other => template.push(other),
        }
    }
    (template, highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(matched: &str, replacement: &str) -> Rewrite {
        Rewrite {
            path: Some(PathRewrite::Prefix {
                matched: matched.into(),
                replacement: replacement.into(),
            }),
            host: None,
        }
    }

    #[test]
    fn prefixes_are_replaced() {
        assert_eq!(
            prefix("/api/", "/v2/").rewrite_path("/api/orders"),
            Some("/v2/orders".into())
        );
        assert_eq!(
            prefix("/api", "/").rewrite_path("/api/orders"),
            Some("/orders".into())
        );
        assert_eq!(prefix("/api", "/").rewrite_path("/api"), Some("/".into()));
        assert_eq!(prefix("/api", "/v2").rewrite_path("/other"), None);
    }

    #[test]
    fn regex_groups_are_substituted() {
        let (template, highest) = regex_template(r"/\1/x$\2");
        assert_eq!(template, "/${1}/x$$${2}");
        assert_eq!(highest, 2);
        let rewrite = Rewrite {
            path: Some(PathRewrite::Regex {
                regex: Regex::new("^/api/(.*)$").unwrap(),
                template: regex_template(r"/\1").0,
                written: r"/\1".into(),
            }),
            host: None,
        };
        assert_eq!(rewrite.rewrite_path("/api/a/b"), Some("/a/b".into()));
        assert_eq!(rewrite.rewrite_path("/other"), None);
    }
}
