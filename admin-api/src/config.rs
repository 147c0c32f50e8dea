//! `GET /config`: the effective policy, as Envoy's config dump or `nginx -T` show theirs.

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::{error_response, insert_policy_headers, single_query_parameter, AppState};

/// `GET /config[?format=toml|json]`: the active policy with every default filled in (TOML
/// unless JSON is asked for), with the policy's hash and version as `GET /policy` gives them.
pub(crate) async fn effective_config(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Response {
    let json_wanted = match single_query_parameter(raw.as_deref(), "format") {
        Ok(None) => false,
        Ok(Some(format)) => match format.as_str() {
            "toml" => false,
            "json" => true,
            other => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("format must be toml or json; got {other:?}"),
                )
            }
        },
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let active = state.backend.policy();
    let config = state.backend.config();
    let mut response = if json_wanted {
        Json(config).into_response()
    } else {
        match toml::to_string(&config) {
            Ok(text) => (
                [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
                text,
            )
                .into_response(),
            Err(e) => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("the effective policy cannot be written as TOML: {e}"),
                )
            }
        }
    };
    insert_policy_headers(response.headers_mut(), &active);
    response
}
