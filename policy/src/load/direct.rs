//! A route's `redirect` and `respond`, instead of `split`.

use super::*;
use crate::direct::{DirectAnswer, Redirect, Respond};

/// Largest `respond.body`.
const MAX_BODY: usize = 64 * 1024;

/// The route's direct answer, if it has one; a route has exactly one of `split`, `redirect`
/// and `respond`.
pub(super) fn compile_direct(
    spec: &RouteSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<DirectAnswer> {
    let given = [
        ("split", !spec.split.is_empty()),
        ("redirect", spec.redirect.is_some()),
        ("respond", spec.respond.is_some()),
    ];
    let count = given.iter().filter(|(_, present)| *present).count();
    if count > 1 {
        let names: Vec<&str> = given
            .iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| *name)
            .collect();
        sink.at(
            path,
            format!(
                "a route has one of split, redirect and respond, not {}",
                names.join(" and ")
            ),
        );
        return None;
    }
    if let Some(redirect) = &spec.redirect {
        let at = path.key("redirect");
        let status = redirect.status.unwrap_or(301);
        if ![301, 302, 307, 308].contains(&status) {
            sink.at(
                &at.key("status"),
                "a redirect's status is 301, 302, 307 or 308",
            );
        }
        if let Some(scheme) = &redirect.scheme {
            if scheme != "http" && scheme != "https" {
                sink.at(&at.key("scheme"), "scheme is \"http\" or \"https\"");
            }
        }
        if let Some(host) = &redirect.host {
            if !is_host_text(host) {
                sink.at(
                    &at.key("host"),
                    format!(
                        "invalid host {host:?}: a name or an address, without a port (use `port`)"
                    ),
                );
            }
        }
        if let Some(target) = &redirect.path {
            if !target.starts_with('/')
                || target
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
            {
                sink.at(&at.key("path"), "the path must start with \"/\" and hold no spaces, control characters, '?' or '#'");
            }
        }
        if redirect.port == Some(0) {
            sink.at(&at.key("port"), "the port must be 1 to 65535");
        }
        return Some(DirectAnswer::Redirect(Redirect {
            scheme: redirect.scheme.clone(),
            host: redirect.host.clone(),
            path: redirect.path.clone(),
            port: redirect.port,
            status,
            strip_query: redirect.strip_query.unwrap_or(false),
        }));
    }
    if let Some(respond) = &spec.respond {
        let at = path.key("respond");
        let status = respond.status.unwrap_or(200);
        if !(200..=599).contains(&status) {
            sink.at(&at.key("status"), "the status must be between 200 and 599");
        }
        let body = respond.body.clone().unwrap_or_default();
        if body.len() > MAX_BODY {
            sink.at(&at.key("body"), "the body must be at most 64 KiB");
        }
        let content_type = respond
            .content_type
            .clone()
            .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
        let valid = !content_type.is_empty()
            && content_type
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !valid {
            sink.at(
                &at.key("content_type"),
                "content_type must be a valid header value",
            );
        }
        return Some(DirectAnswer::Respond(Respond {
            status,
            body,
            content_type,
        }));
    }
    None
}
