//! `POST /upstreams/{upstream}/endpoints/{address}/{action}`: runtime control of one
//! endpoint (drain, disable, enable, weight override), as HAProxy's runtime API gives.

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::{error_response, AppState};

/// `POST /upstreams/{upstream}/endpoints/{address}/{drain|disable|enable|weight}`.
pub(crate) async fn endpoint_action(
    State(state): State<AppState>,
    axum::extract::Path((upstream, address, action)): axum::extract::Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Who asked, for the log: the operator's own word when given.
    let by = headers
        .get("x-meshgate-operator")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .unwrap_or("admin API")
        .to_owned();
    let target = match action.as_str() {
        "drain" | "disable" | "enable" => {
            // A body here is a mistake (a weight sent to the wrong action, say): refuse it
            // rather than act as if it were not there.
            match to_bytes(body, 1).await {
                Ok(bytes) if bytes.is_empty() => {}
                _ => return bad_request(&format!("{action} takes no body")),
            }
            match action.as_str() {
                "drain" => "draining",
                "disable" => "disabled",
                _ => "enabled",
            }
        }
        "weight" => {
            let weight = match read_weight(body).await {
                Ok(weight) => weight,
                Err(response) => return response,
            };
            return match state
                .backend
                .set_endpoint_weight(&upstream, &address, weight, &by)
            {
                Ok(()) => Json(
                    json!({ "upstream": upstream, "endpoint": address, "weight_override": weight }),
                )
                .into_response(),
                Err(message) => error_response(StatusCode::NOT_FOUND, &message),
            };
        }
        other => {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!(
                    "unknown endpoint action {other:?}; expected drain, disable, enable or weight"
                ),
            )
        }
    };
    match state
        .backend
        .set_endpoint_state(&upstream, &address, target, &by)
    {
        Ok(()) => Json(json!({ "upstream": upstream, "endpoint": address, "state": target }))
            .into_response(),
        Err(message) => error_response(StatusCode::NOT_FOUND, &message),
    }
}

/// The body of a weight override: `{"weight": N}` with N from 1 to 256 (the policy's range),
/// or `{"weight": null}` to go back to the weight the policy (or DNS) gives.
async fn read_weight(body: Body) -> Result<Option<u32>, Response> {
    const WANTED: &str = "the body must be {\"weight\": N} with N from 1 to 256, or {\"weight\": null} to clear the override";
    let bytes = to_bytes(body, 4096)
        .await
        .map_err(|_| bad_request(WANTED))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| bad_request(WANTED))?;
    let object = value.as_object().ok_or_else(|| bad_request(WANTED))?;
    if object.len() != 1 {
        return Err(bad_request(WANTED));
    }
    match object.get("weight") {
        Some(serde_json::Value::Null) => Ok(None),
        Some(weight) => match weight.as_u64() {
            Some(n @ 1..=256) => Ok(Some(n as u32)),
            Some(0) => Err(bad_request(
                "weight 0 is not a weight: drain or disable the endpoint to stop its traffic",
            )),
            _ => Err(bad_request(WANTED)),
        },
        None => Err(bad_request(WANTED)),
    }
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}
