//! A route's `cors`: preflights answered by the gateway, and the CORS headers on the answers
//! to allowed origins.

use meshgate_policy::cors::Cors;
use pingora::http::RequestHeader;

type Headers = Vec<(http::HeaderName, http::HeaderValue)>;

const ACCESS_CONTROL_REQUEST_METHOD: &str = "access-control-request-method";

/// Whether the request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(header: &RequestHeader) -> bool {
    header.method == http::Method::OPTIONS
        && header.headers.contains_key(http::header::ORIGIN)
        && header.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The headers of a preflight's `204`, and whether the preflight was allowed. A refused one
/// (origin or method not allowed) gets no CORS headers, so the browser stops there.
pub fn preflight_answer(cors: &Cors, header: &RequestHeader) -> (Headers, bool) {
    let mut headers = vary(cors);
    let origin = header.headers.get(http::header::ORIGIN);
    let method = header.headers.get(ACCESS_CONTROL_REQUEST_METHOD);
    let (Some(origin), Some(method)) = (origin, method) else {
        return (headers, false);
    };
    if !cors.allows_origin(origin.as_bytes()) || !cors.allows_method(method.as_bytes()) {
        return (headers, false);
    }
    push(
        &mut headers,
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        cors.allow_origin_value(origin.as_bytes()),
    );
    push(
        &mut headers,
        http::header::ACCESS_CONTROL_ALLOW_METHODS,
        cors.allow_methods.as_bytes(),
    );
    if let Some(allowed) = &cors.allow_headers {
        push(
            &mut headers,
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            allowed.as_bytes(),
        );
    }
    if let Some(seconds) = cors.max_age {
        headers.push((
            http::header::ACCESS_CONTROL_MAX_AGE,
            http::HeaderValue::from(seconds),
        ));
    }
    if cors.allow_credentials {
        push(
            &mut headers,
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            b"true",
        );
    }
    (headers, true)
}

/// The headers added to the answer of a request that is not a preflight: the CORS headers
/// when its `Origin` is allowed, and `Vary: Origin` whenever the answer depends on it.
pub fn response_headers(cors: &Cors, header: &RequestHeader) -> Headers {
    let Some(origin) = header.headers.get(http::header::ORIGIN) else {
        return Vec::new();
    };
    let mut headers = vary(cors);
    if !cors.allows_origin(origin.as_bytes()) {
        return headers;
    }
    push(
        &mut headers,
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        cors.allow_origin_value(origin.as_bytes()),
    );
    if let Some(exposed) = &cors.expose_headers {
        push(
            &mut headers,
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            exposed.as_bytes(),
        );
    }
    if cors.allow_credentials {
        push(
            &mut headers,
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            b"true",
        );
    }
    headers
}

/// `Vary: Origin` when the answer names the origin (a list of origins, or credentials).
fn vary(cors: &Cors) -> Headers {
    if cors.origins.is_empty() && !cors.allow_credentials {
        return Vec::new();
    }
    vec![(http::header::VARY, http::HeaderValue::from_static("Origin"))]
}

fn push(headers: &mut Headers, name: http::HeaderName, value: &[u8]) {
    // Values come from the policy (checked) or the request's own header value.
    if let Ok(value) = http::HeaderValue::from_bytes(value) {
        headers.push((name, value));
    }
}
