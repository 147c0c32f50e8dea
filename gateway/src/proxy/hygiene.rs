//! Request hygiene, checked before any routing: the size of the request head and line, and
//! the normal form of the path.

use std::borrow::Cow;

use meshgate_policy::compiled::ServerSettings;
use meshgate_policy::path::{normalize_path, BadPath};
use meshgate_policy::schema::PathNormalization;
use pingora::http::RequestHeader;

use super::Reason;

/// The head limits of `[server]`, fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    max_header_size: usize,
    max_headers: usize,
    max_request_line: usize,
    normalize: bool,
}

impl HeadLimits {
    /// The limits `server` sets.
    pub fn new(server: &ServerSettings) -> Self {
        HeadLimits {
            max_header_size: server.max_request_header_size,
            max_headers: server.max_request_headers,
            max_request_line: server.max_uri_size,
            normalize: server.path_normalization == PathNormalization::Strict,
        }
    }

    /// `431` for a head over `max_request_header_size` or with more than
    /// `max_request_headers` fields; `414` for a request line over `max_uri_size`.
    pub fn check(&self, header: &RequestHeader) -> Result<(), Reason> {
        let request_line = header.method.as_str().len() + header.raw_path().len();
        if request_line > self.max_request_line {
            return Err(Reason::UriTooLong);
        }
        if header.headers.len() > self.max_headers {
            return Err(Reason::HeaderTooLarge);
        }
        // As HTTP/1.1 writes it: `NAME: VALUE\r\n` per field, after the request line and
        // before the blank line.
        let fields: usize = header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if request_line + " HTTP/1.1\r\n\r\n".len() + 1 + fields > self.max_header_size {
            return Err(Reason::HeaderTooLarge);
        }
        Ok(())
    }

    /// Whether paths are normalized (`path_normalization = "strict"`).
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Puts the request's path in normal form (a no-op for a path already normal, the common
    /// case), or says why it is refused. The query string is kept as received.
    pub fn normalize(&self, header: &mut RequestHeader) -> Result<(), BadPath> {
        if !self.normalize {
            return Ok(());
        }
        let normal = match normalize_path(header.uri.path())? {
            Cow::Borrowed(_) => return Ok(()),
            Cow::Owned(normal) => normal,
        };
        let path_and_query = match header.uri.query() {
            Some(query) => format!("{normal}?{query}"),
            None => normal,
        };
        let mut parts = header.uri.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|_| BadPath::MalformedEscape)?,
        );
        let uri = http::Uri::from_parts(parts).map_err(|_| BadPath::MalformedEscape)?;
        header.set_uri(uri);
        Ok(())
    }
}

/// The declared length of the request body, when `Content-Length` gives one.
pub fn declared_body_length(header: &RequestHeader) -> Option<u64> {
    header
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
