//! Read-only views of a downstream request for route matching and key extraction.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use meshgate_policy::compiled::RequestKey;
use meshgate_policy::path::{check_rewritten_path, BadPath};
use meshgate_policy::rewrite::Rewrite;
use meshgate_policy::RequestView;
use pingora::http::RequestHeader;

/// A request header and its client's address seen through the policy's [`RequestView`].
pub struct HeaderView<'a>(pub &'a RequestHeader, pub Option<IpAddr>);

impl RequestView for HeaderView<'_> {
    fn method(&self) -> &str {
        self.0.method.as_str()
    }

    fn host(&self) -> Option<&str> {
        request_host(self.0)
    }

    fn path(&self) -> &str {
        self.0.uri.path()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.headers.get(name).map(|v| v.as_bytes())
    }

    fn query(&self) -> Option<&str> {
        self.0.uri.query()
    }

    fn source(&self) -> Option<IpAddr> {
        self.1
    }
}

/// The request's host: the `Host` header, or the URI authority (HTTP/2's `:authority`).
pub fn request_host(header: &RequestHeader) -> Option<&str> {
    header
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| header.uri.authority().map(|a| a.as_str()))
}

/// Hashes the value a [`RequestKey`] names, for sticky splits and consistent hashing. A missing
/// header hashes as empty, so such requests still land together.
pub fn key_hash(key: &RequestKey, header: &RequestHeader, client_ip: Option<IpAddr>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match key {
        RequestKey::ClientIp => client_ip.hash(&mut hasher),
        RequestKey::Path => header.uri.path().hash(&mut hasher),
        RequestKey::Header(name) => header
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes())
            .unwrap_or_default()
            .hash(&mut hasher),
    }
    hasher.finish()
}

/// Applies a route's `rewrite` to the request sent upstream; returns the new path and query
/// when the path changed (for the access log). With `normalize` (`path_normalization =
/// "strict"`) the new path is checked like a request's: a `..` segment the rewrite made is
/// refused with the reason, the rest put in normal form.
pub fn apply_rewrite(
    rewrite: &Rewrite,
    upstream_request: &mut RequestHeader,
    normalize: bool,
) -> pingora::Result<Result<Option<String>, BadPath>> {
    if let Some(host) = &rewrite.host {
        upstream_request.insert_header(http::header::HOST, host.as_str())?;
    }
    let Some(mut path) = rewrite.rewrite_path(upstream_request.uri.path()) else {
        return Ok(Ok(None));
    };
    if normalize {
        match check_rewritten_path(&path) {
            Ok(std::borrow::Cow::Borrowed(_)) => {}
            Ok(std::borrow::Cow::Owned(normal)) => path = normal,
            Err(bad) => return Ok(Err(bad)),
        }
    }
    let target = match upstream_request.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    // The policy's parts are validated and the rest comes from a parsed path, so this parses;
    // if it ever did not, the request goes on with its path unchanged.
    let mut parts = upstream_request.uri.clone().into_parts();
    let rebuilt = http::uri::PathAndQuery::try_from(target.as_str())
        .map_err(|e| e.to_string())
        .and_then(|path_and_query| {
            parts.path_and_query = Some(path_and_query);
            http::Uri::from_parts(parts).map_err(|e| e.to_string())
        });
    match rebuilt {
        Ok(uri) => {
            upstream_request.set_uri(uri);
            Ok(Ok(Some(target)))
        }
        Err(e) => {
            tracing::debug!("rewritten path {target:?} is not a valid URI: {e}");
            Ok(Ok(None))
        }
    }
}

/// The `X-Forwarded-For` value sent upstream: the client's value, if any, with `client`
/// appended. An IPv4 address is written by hand: `Ipv4Addr`'s `Display` goes through the
/// formatting machinery and a `String`, about ten times the work, on every request.
pub fn forwarded_for_value(
    existing: Option<&http::HeaderValue>,
    client: IpAddr,
) -> http::HeaderValue {
    let mut value = Vec::with_capacity(existing.map_or(0, |v| v.len() + 2) + 39);
    if let Some(existing) = existing {
        value.extend_from_slice(existing.as_bytes());
        value.extend_from_slice(b", ");
    }
    match client {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    value.push(b'.');
                }
                if octet >= 100 {
                    value.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    value.push(b'0' + octet / 10 % 10);
                }
                value.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(value, "{v6}");
        }
    }
    // Always valid: the client's value was a valid header value, and ", " and an address
    // add only visible ASCII. The fallback keeps a request from failing should that change.
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .unwrap_or(http::HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_writes_addresses_as_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.199.250",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                forwarded_for_value(None, ip).to_str().unwrap(),
                ip.to_string()
            );
        }
        let existing = http::HeaderValue::from_static("203.0.113.7");
        let ip: IpAddr = "192.168.1.10".parse().unwrap();
        assert_eq!(
            forwarded_for_value(Some(&existing), ip).to_str().unwrap(),
            "203.0.113.7, 192.168.1.10"
        );
    }
}
