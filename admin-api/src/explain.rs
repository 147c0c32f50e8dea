//! `GET /explain`: its query string, checked, and the handler.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::{error_response, AppState, ExplainQuery};

pub(crate) async fn explain(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let query = match parse_explain_query(raw.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    match state.backend.explain(&query) {
        Ok(explanation) => Json(explanation).into_response(),
        Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
    }
}

/// Whether `text` is an RFC 9110 token: what a method or a header name is made of.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses `GET /explain`'s query string (`method=&host=&path=&query=&header=name:value&source=&listener=`).
/// Public so that it can be fuzzed on its own.
pub fn parse_explain_query(raw: &str) -> Result<ExplainQuery, String> {
    let mut query = ExplainQuery {
        method: "GET".into(),
        path: "/".into(),
        ..ExplainQuery::default()
    };
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "method" => {
                if !is_token(&value) {
                    return Err(format!(
                        "method must be an HTTP method such as GET or POST; got {value:?}"
                    ));
                }
                query.method = value.into_owned()
            }
            "host" => query.host = Some(value.into_owned()),
            "path" => query.path = value.into_owned(),
            "listener" => query.listener = Some(value.into_owned()),
            "sni" => query.sni = Some(value.to_ascii_lowercase()),
            "query" => query.query = Some(value.into_owned()),
            "source" => {
                query.source = Some(value.trim().parse().map_err(|_| {
                    format!("source must be an IP address, such as 10.1.2.3 or ::1; got {value:?}")
                })?)
            }
            "header" => match value.split_once(':') {
                Some((name, header_value)) if is_token(name.trim()) => {
                    if header_value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return Err(format!("header {name:?}: a value must not hold CR, LF or NUL"));
                    }
                    query
                        .headers
                        .push((name.trim().to_ascii_lowercase(), header_value.trim().to_owned()))
                }
                Some((name, _)) => {
                    return Err(format!("header must be written name:value with a header name before the colon; got name {name:?}"))
                }
                None => return Err("header must be written name:value".to_owned()),
            },
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}; expected method, host, path, query, header, source, listener or sni"
                ))
            }
        }
    }
    Ok(query)
}
