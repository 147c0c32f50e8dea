//! A route's `rewrite`: the path and `Host` the upstream sees.

use super::*;
use crate::rewrite::{regex_template, PathRewrite, Rewrite, RewriteSection};

/// Compiles `pattern` (anchored at both ends when `anchored`), or reports why it can't be.
pub(super) fn compile_regex(
    pattern: &str,
    anchored: bool,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<regex::Regex> {
    let source = if anchored {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_owned()
    };
    match regex::RegexBuilder::new(&source)
        .size_limit(1 << 20)
        .build()
    {
        Ok(regex) => Some(regex),
        Err(e) => {
            let detail = e.to_string();
            let detail = detail
                .lines()
                .last()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned();
            sink.at(
                at,
                format!("invalid regular expression {pattern:?}: {detail}"),
            );
            None
        }
    }
}

/// Whether `host` is a host name or address, possibly with a port: letters, digits and
/// `-._[]:` only.
pub(super) fn is_host_text(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
}

/// Whether `text` may appear in a request path: no spaces, control characters, `?` or `#`.
fn path_safe(text: &str) -> bool {
    !text
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#' || b >= 0x80)
}

/// The route's `rewrite`; `matched_prefix` is its `match.path_prefix`, if any.
pub(super) fn compile_rewrite(
    spec: &RewriteSection,
    matched_prefix: Option<&str>,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<Rewrite> {
    let errors_before = sink.errors.len();
    if spec.path_prefix.is_none()
        && spec.path_regex.is_none()
        && spec.path.is_none()
        && spec.host.is_none()
    {
        sink.at(
            at,
            "a rewrite needs path_prefix, path_regex with path, or host",
        );
    }
    if spec.path_prefix.is_some() && spec.path_regex.is_some() {
        sink.at(
            &at.key("path_regex"),
            "only one of path_prefix and path_regex may be given",
        );
    }
    let mut path = None;
    if let Some(replacement) = &spec.path_prefix {
        if !replacement.starts_with('/') || !path_safe(replacement) {
            sink.at(
                &at.key("path_prefix"),
                "path_prefix must start with \"/\" and hold no spaces, control characters, '?', '#' or non-ASCII",
            );
        }
        match matched_prefix {
            Some(matched) => {
                path = Some(PathRewrite::Prefix {
                    matched: matched.to_owned(),
                    replacement: replacement.clone(),
                })
            }
            None => sink.at(
                &at.key("path_prefix"),
                "rewrite.path_prefix replaces the part matched by match.path_prefix, which this route does not have",
            ),
        }
    }
    match (&spec.path_regex, &spec.path) {
        (Some(pattern), Some(written)) => {
            let regex = compile_regex(pattern, false, &at.key("path_regex"), sink);
            if !path_safe(written) {
                sink.at(
                    &at.key("path"),
                    "path must hold no spaces, control characters, '?', '#' or non-ASCII",
                );
            }
            let (template, highest) = regex_template(written);
            if let Some(regex) = regex {
                let groups = regex.captures_len() - 1;
                if highest > groups {
                    sink.at(
                        &at.key("path"),
                        format!("path refers to group \\{highest}, but path_regex has {groups} capture group(s)"),
                    );
                }
                path = Some(PathRewrite::Regex {
                    regex,
                    template,
                    written: written.clone(),
                });
            }
        }
        (Some(_), None) => sink.at(
            &at.key("path"),
            "path_regex needs path, the replacement (\\1 … \\9 stand for its groups)",
        ),
        (None, Some(_)) => sink.at(
            &at.key("path_regex"),
            "path is the replacement of path_regex, which is missing",
        ),
        (None, None) => {}
    }
    if let Some(host) = &spec.host {
        if !is_host_text(host) {
            sink.at(
                &at.key("host"),
                format!("invalid host {host:?}: a name or an address, with an optional port"),
            );
        }
    }
    (sink.errors.len() == errors_before).then(|| Rewrite {
        path,
        host: spec.host.clone(),
    })
}
