//! Why the gateway answered a request itself. The token goes in `x-meshgate-reason`, in the
//! access log and in the `reason` metric label.

/// The response header that carries the reason token.
pub const REASON_HEADER: &str = "x-meshgate-reason";

/// A gateway-made response's cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No route matched.
    NoRoute,
    /// The circuit breaker refused the request.
    Overflow,
    /// Every endpoint of the chosen upstream is unhealthy or ejected.
    NoHealthyUpstream,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// No connection could be made to the upstream.
    ConnectFailure,
    /// The upstream closed or broke the connection after it was made.
    UpstreamReset,
    /// The upstream's response head was malformed or larger than
    /// `[server].max_upstream_response_header_size`.
    UpstreamBadResponse,
    /// A rate limit refused the request.
    RateLimited,
    /// A global rate limit's store failed and its `on_error` is `deny`.
    RateLimitUnavailable,
    /// Authorization refused the caller.
    Forbidden,
    /// The route's `jwt` refused the request: no bearer token, or a bad one.
    JwtInvalid,
    /// Fault injection aborted the request.
    FaultAbort,
    /// The request path is unsafe to route (`..` above the root, an encoded `/`, a `\`, NUL).
    BadPath,
    /// The request head is larger than `max_request_header_size`, or has more than
    /// `max_request_headers` fields.
    HeaderTooLarge,
    /// The request line is longer than `max_uri_size`.
    UriTooLong,
    /// The request body is larger than the route's `max_request_body`.
    BodyTooLarge,
    /// The client was too slow sending its request (`client_header_timeout`,
    /// `client_body_timeout`).
    ClientTimeout,
    /// The route redirects (`redirect`); not sent in `x-meshgate-reason`.
    Redirect,
    /// The route answers itself (`respond`); not sent in `x-meshgate-reason`.
    Respond,
    /// The gateway answered a CORS preflight (`cors`); not sent in `x-meshgate-reason`.
    CorsPreflight,
}

impl Reason {
    /// Whether the answer is the route's own (`redirect`, `respond`, a CORS preflight): it
    /// carries no `x-meshgate-reason` and no reason body.
    pub fn is_routes_own(self) -> bool {
        matches!(
            self,
            Reason::Redirect | Reason::Respond | Reason::CorsPreflight
        )
    }

    /// The token, as documented.
    pub fn token(self) -> &'static str {
        match self {
            Reason::NoRoute => "no-route",
            Reason::Overflow => "overflow",
            Reason::NoHealthyUpstream => "no-healthy-upstream",
            Reason::UpstreamTimeout => "upstream-timeout",
            Reason::ConnectFailure => "connect-failure",
            Reason::UpstreamReset => "upstream-reset",
            Reason::UpstreamBadResponse => "upstream-bad-response",
            Reason::RateLimited => "rate-limited",
            Reason::RateLimitUnavailable => "rate-limit-unavailable",
            Reason::Forbidden => "forbidden",
            Reason::JwtInvalid => "jwt-invalid",
            Reason::FaultAbort => "fault-abort",
            Reason::BadPath => "bad-path",
            Reason::HeaderTooLarge => "header-too-large",
            Reason::UriTooLong => "uri-too-long",
            Reason::BodyTooLarge => "body-too-large",
            Reason::ClientTimeout => "client-timeout",
            Reason::Redirect => "redirect",
            Reason::Respond => "respond",
            Reason::CorsPreflight => "cors-preflight",
        }
    }

    /// The status code the gateway answers with (a fault abort answers with its route's
    /// `abort_status` instead).
    pub fn status(self) -> u16 {
        match self {
            Reason::NoRoute => 404,
            Reason::Overflow | Reason::NoHealthyUpstream | Reason::RateLimitUnavailable => 503,
            Reason::UpstreamTimeout => 504,
            Reason::ConnectFailure | Reason::UpstreamReset | Reason::UpstreamBadResponse => 502,
            Reason::RateLimited => 429,
            Reason::Forbidden => 403,
            Reason::JwtInvalid => 401,
            Reason::FaultAbort => 503,
            Reason::BadPath => 400,
            Reason::HeaderTooLarge => 431,
            Reason::UriTooLong => 414,
            Reason::BodyTooLarge => 413,
            Reason::ClientTimeout => 408,
            // The route's own status replaces these.
            Reason::Redirect => 301,
            Reason::Respond => 200,
            Reason::CorsPreflight => 204,
        }
    }
}
