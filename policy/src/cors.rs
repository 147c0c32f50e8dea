//! A route's `cors`: the gateway answers CORS preflights and adds the CORS headers to the
//! answers of allowed origins. The schema type (as written) and the compiled one.

use serde::Deserialize;

use crate::duration::Duration;

/// `cors = { … }` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Origins allowed (`https://app.example`), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may announce (default `GET`, `HEAD`, `POST`).
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may announce, or `["*"]` (default none beyond the
    /// CORS-safelisted ones).
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the browser may show to the page (default none).
    pub expose_headers: Option<Vec<String>>,
    /// How long a browser may cache a preflight's answer (sent in seconds).
    pub max_age: Option<Duration>,
    /// Whether requests with credentials (cookies, HTTP auth) are allowed (default false).
    pub allow_credentials: Option<bool>,
}

/// A route's CORS rules, compiled; the header values are built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// The allowed origins (compared exactly, ASCII case-insensitively); empty means any.
    pub origins: Vec<String>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: String,
    /// The allowed methods, one by one.
    pub methods: Vec<String>,
    /// `Access-Control-Allow-Headers`, if any.
    pub allow_headers: Option<String>,
    /// `Access-Control-Expose-Headers`, if any.
    pub expose_headers: Option<String>,
    /// `Access-Control-Max-Age` in seconds, if any.
    pub max_age: Option<u64>,
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
}

impl Cors {
    /// Whether `origin` may use the route.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        self.origins.is_empty()
            || self
                .origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// Whether a preflight announcing `method` is allowed.
    pub fn allows_method(&self, method: &[u8]) -> bool {
        self.methods.iter().any(|m| m.as_bytes() == method)
    }

    /// The `Access-Control-Allow-Origin` value for an allowed `origin`: `*` when any origin
    /// is allowed without credentials, else the origin itself.
    pub fn allow_origin_value<'a>(&self, origin: &'a [u8]) -> &'a [u8] {
        if self.origins.is_empty() && !self.allow_credentials {
            b"*"
        } else {
            origin
        }
    }

    /// One line for `/routes`.
    pub fn describe(&self) -> String {
        let origins = if self.origins.is_empty() {
            "*".to_owned()
        } else {
            self.origins.join(" ")
        };
        format!(
            "origins {origins}; methods {}{}",
            self.allow_methods,
            if self.allow_credentials {
                "; credentials"
            } else {
                ""
            }
        )
    }
}
