//! A route's `redirect` and `respond`: answers the gateway gives itself instead of sending
//! the request to an upstream. The schema types (as written) and the compiled ones.

use serde::Deserialize;

/// `redirect = { … }` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectSection {
    /// `http` or `https`; the request's when absent.
    pub scheme: Option<String>,
    /// The host; the request's when absent.
    pub host: Option<String>,
    /// The path; the request's when absent.
    pub path: Option<String>,
    /// The port; the request's when absent (dropped when the scheme changes).
    pub port: Option<u16>,
    /// 301 (default), 302, 307 or 308.
    pub status: Option<u16>,
    /// Drop the query (default false: it is kept).
    pub strip_query: Option<bool>,
}

/// `respond = { … }` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    /// The status (default 200).
    pub status: Option<u16>,
    /// The body (default empty).
    pub body: Option<String>,
    /// Its `Content-Type` (default `text/plain; charset=utf-8`).
    pub content_type: Option<String>,
}

/// A redirect, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`, or the request's.
    pub scheme: Option<String>,
    /// The host, or the request's.
    pub host: Option<String>,
    /// The path, or the request's.
    pub path: Option<String>,
    /// The port, or the request's.
    pub port: Option<u16>,
    /// 301, 302, 307 or 308.
    pub status: u16,
    /// Whether the query is dropped.
    pub strip_query: bool,
}

/// A direct answer, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respond {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: String,
    /// Its `Content-Type`.
    pub content_type: String,
}

/// What a route does instead of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectAnswer {
    /// Send the client elsewhere.
    Redirect(Redirect),
    /// Answer with a fixed status and body.
    Respond(Respond),
}

impl Redirect {
    /// The `Location` for a request to `host` (with its port, if any), `path` and `query`,
    /// made on a connection with scheme `request_scheme`. Parts the redirect does not give
    /// are kept; the request's port is dropped when the scheme changes.
    pub fn location(
        &self,
        request_scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(request_scheme);
        let (request_host, request_port) = split_host_port(host);
        let host_part = self.host.as_deref().unwrap_or(request_host);
        let port = match self.port {
            Some(port) => Some(port.to_string()),
            None if scheme == request_scheme && self.host.is_none() => {
                request_port.map(str::to_owned)
            }
            None => None,
        };
        let mut location = format!("{scheme}://{host_part}");
        if let Some(port) = port {
            location.push(':');
            location.push_str(&port);
        }
        location.push_str(self.path.as_deref().unwrap_or(path));
        if let Some(query) = query.filter(|q| !self.strip_query && !q.is_empty()) {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

/// `host[:port]`, IPv6 literals in brackets included.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find("]:") {
            Some(end) => (&host[..=end], Some(&host[end + 2..])),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_owned),
            host: host.map(str::to_owned),
            path: None,
            port,
            status: 301,
            strip_query: false,
        }
    }

    #[test]
    fn locations_keep_what_is_not_given() {
        let to_https = redirect(Some("https"), None, None);
        assert_eq!(
            to_https.location("http", "shop.example:8080", "/a", Some("x=1")),
            "https://shop.example/a?x=1"
        );
        assert_eq!(
            redirect(None, None, None).location("http", "shop.example:8080", "/a", None),
            "http://shop.example:8080/a"
        );
        assert_eq!(
            redirect(Some("https"), Some("new.example"), Some(8443)).location(
                "http",
                "[::1]:80",
                "/b",
                Some("")
            ),
            "https://new.example:8443/b"
        );
        let mut strip = redirect(None, Some("x.example"), None);
        strip.strip_query = true;
        strip.path = Some("/new".into());
        assert_eq!(
            strip.location("https", "old.example", "/old", Some("q=2")),
            "https://x.example/new"
        );
    }
}
