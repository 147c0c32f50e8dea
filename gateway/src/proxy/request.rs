//! Read-only views of a downstream request for route matching and key extraction.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use meshgate_policy::compiled::RequestKey;
use meshgate_policy::RequestView;
use pingora::http::RequestHeader;

/// A request header seen through the policy's [`RequestView`].
pub struct HeaderView<'a>(pub &'a RequestHeader);

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
