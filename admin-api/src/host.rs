//! Which `Host` the admin API answers.
//!
//! A web page can make a browser send requests to `127.0.0.1:9901` by rebinding a DNS name it
//! controls to that address (DNS rebinding): the browser then treats the admin API as the
//! page's own origin and lets the page read what it answers. The request still carries the
//! page's name in `Host`, so the API answers only requests addressed to an IP literal,
//! `localhost`, or a name the operator listed in `[admin].allowed_hosts`; any other `Host`
//! gets `421 Misdirected Request`, as a server answers a request meant for another.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// The host names the API answers besides IP literals and `localhost`, lower-case.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    /// The names in `names` (compared without regard to case).
    pub fn new(names: &[String]) -> Self {
        AllowedHosts(names.iter().map(|n| n.to_ascii_lowercase()).collect())
    }

    /// Whether a request whose `Host` (or `:authority`) is `authority` may be answered. A
    /// request without one (HTTP/1.0) was not sent by a browser and is answered.
    pub fn allows(&self, authority: Option<&str>) -> bool {
        let Some(authority) = authority else {
            return true;
        };
        let Some(host) = host_of(authority) else {
            return false;
        };
        if host.starts_with('[') {
            return host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|inner| inner.parse::<Ipv6Addr>().is_ok());
        }
        // A trailing dot names the same host.
        let host = host.strip_suffix('.').unwrap_or(host);
        host.parse::<Ipv4Addr>().is_ok()
            || host.eq_ignore_ascii_case("localhost")
            || self.0.iter().any(|name| name.eq_ignore_ascii_case(host))
    }
}

/// The host part of an authority (`name`, `name:port`, `[v6]:port`), or `None` when the port
/// is not a number.
fn host_of(authority: &str) -> Option<&str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let (host, after) = authority.split_at(end + 2);
        return match after {
            "" => Some(host),
            port => port
                .strip_prefix(':')
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                .map(|_| host),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        Some(_) => None,
        None => Some(authority),
    }
}

/// Answers `421` to a request for a host the API does not serve.
pub(crate) async fn require_own_host(
    State(allowed): State<AllowedHosts>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if allowed.allows(host) {
        return next.run(request).await;
    }
    crate::error_response(
        StatusCode::MISDIRECTED_REQUEST,
        "this admin API answers requests for an IP address, localhost or a name in [admin].allowed_hosts only",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_localhost_and_listed_names_are_served() {
        let allowed = AllowedHosts::new(&["Gateway-1.internal".to_owned()]);
        for host in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "10.0.0.5:9901",
            "[::1]",
            "[::1]:9901",
            "localhost",
            "LOCALHOST:9901",
            "localhost.",
            "gateway-1.internal:9901",
        ] {
            assert!(allowed.allows(Some(host)), "{host}");
        }
        assert!(allowed.allows(None));
    }

    #[test]
    fn other_names_are_refused() {
        let allowed = AllowedHosts::new(&[]);
        for host in [
            "evil.example",
            "evil.example:9901",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1",
            "[not-an-address]:9901",
            "127.0.0.1:x",
            "",
            "\u{0}",
        ] {
            assert!(!allowed.allows(Some(host)), "{host:?}");
        }
    }
}
