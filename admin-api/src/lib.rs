//! meshgate's admin REST API.
//!
//! The API knows nothing of Pingora: it talks to the gateway through [`AdminBackend`], which the
//! gateway implements. Every endpoint but `/healthz`, `/readyz` and `/metrics` needs
//! `Authorization: Bearer <token>` (the scheme in any case); every error is a JSON object with
//! `error` (a sentence) and `errors` (the policy errors behind it, often none).

mod config;
mod endpoints;
mod explain;
mod host;
mod model;

use std::future::Future;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

pub use explain::parse_explain_query;
pub use host::AllowedHosts;
pub use model::*;

/// Largest request body the API reads: the largest policy (`meshgate_policy::files::
/// MAX_POLICY_FILE`, 1 MiB), so a policy is held to one bound however it arrives.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the admin API needs from the gateway.
pub trait AdminBackend: Send + Sync + 'static {
    /// The active policy.
    fn policy(&self) -> ActivePolicy;
    /// Validates, applies and persists a whole policy; `if_match` is the expected active hash.
    fn apply(&self, source: String, if_match: Option<&str>) -> Result<Applied, ApplyError>;
    /// Validates a policy without applying it.
    fn validate(&self, source: &str) -> Result<Validated, ApplyError>;
    /// Validates a policy and says what applying it would change, without applying it.
    fn dry_run(&self, source: &str) -> Result<DryRun, ApplyError>;
    /// Sets an endpoint's runtime state (`enabled`, `draining`, `disabled`); `by` says who
    /// asked, for the log. An error when the upstream or the endpoint does not exist.
    fn set_endpoint_state(
        &self,
        upstream: &str,
        address: &str,
        state: &str,
        by: &str,
    ) -> Result<(), String>;
    /// Sets or (with `None`) clears an endpoint's weight override; `by` says who asked. An
    /// error when the upstream or the endpoint does not exist.
    fn set_endpoint_weight(
        &self,
        upstream: &str,
        address: &str,
        weight: Option<u32>,
        by: &str,
    ) -> Result<(), String>;
    /// The active policy with every default filled in, shaped like the policy file.
    fn config(&self) -> serde_json::Value;
    /// Re-reads the policy file and applies it.
    fn reload(&self) -> Result<Applied, ApplyError>;
    /// Goes back to the previously applied policy.
    fn rollback(&self, version: Option<u64>) -> Result<Applied, ApplyError>;
    /// `GET /policy/history`.
    fn history(&self) -> HistoryBody;
    /// State of every upstream.
    fn upstreams(&self) -> UpstreamsBody;
    /// The compiled routes.
    fn routes(&self) -> RoutesBody;
    /// Which route a request would take, and why.
    fn explain(&self, query: &ExplainQuery) -> Result<Explanation, String>;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// True when the listeners are up and a policy is loaded (and not draining).
    fn ready(&self) -> bool;
    /// Starts draining: readiness fails, listeners stop accepting, in-flight requests finish,
    /// then the process exits. Returns the grace period in seconds.
    fn drain(&self) -> u64;
    /// A line added to `/readyz`'s body, such as a fleet node serving its cache.
    fn readiness_note(&self) -> Option<String> {
        None
    }
    /// `GET /fleet`: the fleet's committed version and every live node, as a status and a
    /// JSON body.
    fn fleet_status(&self) -> BoxFuture<(u16, serde_json::Value)>;
    /// `PUT /fleet/policy`: a two-phase push of a fleet document, as a status and a JSON body.
    fn push_fleet(&self, document: String) -> BoxFuture<(u16, serde_json::Value)>;
}

/// A boxed future: backend calls that wait on the network.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Clone)]
struct AppState {
    backend: Arc<dyn AdminBackend>,
    token: Arc<str>,
}

/// Builds the API's router. Every endpoint answers only requests whose `Host` is an IP
/// literal, `localhost` or one of `allowed_hosts` (`421` otherwise).
pub fn router(backend: Arc<dyn AdminBackend>, token: &str, allowed_hosts: AllowedHosts) -> Router {
    let state = AppState {
        backend,
        token: Arc::from(token),
    };
    let protected = Router::new()
        .route("/policy", get(get_policy).put(put_policy))
        .route("/policy/validate", post(validate_policy))
        .route("/policy/rollback", post(rollback_policy))
        .route("/policy/history", get(policy_history))
        .route("/reload", post(reload_policy))
        .route("/drain", post(drain))
        .route("/upstreams", get(upstreams))
        .route(
            "/upstreams/{upstream}/endpoints/{address}/{action}",
            post(endpoints::endpoint_action),
        )
        .route("/routes", get(routes))
        .route("/explain", get(explain::explain))
        .route("/config", get(config::effective_config))
        .route("/fleet", get(fleet_status))
        .route("/fleet/policy", axum::routing::put(push_fleet))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status_page))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            allowed_hosts,
            host::require_own_host,
        ))
}

/// The metrics-only listener's routes: `GET /metrics` and `GET /healthz`, no token. It lets
/// Prometheus scrape from the network while the admin API stays on loopback.
pub fn metrics_router(backend: Arc<dyn AdminBackend>) -> Router {
    let state = AppState {
        backend,
        token: Arc::from(""),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status_page))
        .fallback(|| async {
            error_response(StatusCode::NOT_FOUND, "this listener serves only /metrics")
        })
        .with_state(state)
}

/// `GET /healthz`: the process runs.
async fn healthz() -> &'static str {
    "ok"
}

/// Serves [`metrics_router`] on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn AdminBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, metrics_router(backend))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn AdminBackend>,
    token: &str,
    allowed_hosts: AllowedHosts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(backend, token, allowed_hosts))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Every error answer has one shape: `error`, a sentence, and `errors`, the policy errors
/// behind it (empty when it is not about a policy's text).
fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message, "errors": [] }))).into_response()
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    let authorized = presented.is_some_and(|token| bool::from(token.ct_eq(state.token.as_bytes())));
    if !authorized {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// The token of an `Authorization` value whose scheme is `Bearer`, in any case (RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
        .filter(|token| !token.is_empty())
}

/// `GET /status`: a read-only page that asks for the token and reads the API with it. It
/// holds no secret, so it is served without the token.
async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let note = state
        .backend
        .readiness_note()
        .map(|note| format!("\n{note}"))
        .unwrap_or_default();
    if state.backend.ready() {
        (StatusCode::OK, format!("ready{note}")).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready{note}")).into_response()
    }
}

async fn fleet_status(State(state): State<AppState>) -> Response {
    let (status, body) = state.backend.fleet_status().await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

async fn push_fleet(State(state): State<AppState>, request: Request) -> Response {
    let document = match to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(bytes) => match String::from_utf8(bytes.to_vec()) {
            Ok(text) => text,
            Err(_) => return error_response(StatusCode::BAD_REQUEST, "the document is not UTF-8"),
        },
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the document is larger than {MAX_BODY_BYTES} bytes (1 MiB), the most a policy may hold"),
            )
        }
    };
    let (status, body) = state.backend.push_fleet(document).await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.backend.metrics(),
    )
        .into_response()
}

async fn get_policy(State(state): State<AppState>) -> Response {
    let mut active = state.backend.policy();
    let mut response = (
        [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
        std::mem::take(&mut active.source),
    )
        .into_response();
    let headers = response.headers_mut();
    insert_policy_headers(headers, &active);
    if let Ok(pending) = HeaderValue::from_str(&active.restart_required.join(", ")) {
        headers.insert("x-meshgate-restart-required", pending);
    }
    response
}

async fn read_text(body: Body) -> Result<String, Response> {
    let bytes = to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {MAX_BODY_BYTES} bytes (1 MiB), the most a policy may hold"),
        )
    })?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| invalid_body("the body is not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(invalid_body("the body is empty: send a whole policy file"));
    }
    Ok(text)
}

/// A body that is no policy at all, answered like any invalid policy: `400` with one error
/// at the document's start.
fn invalid_body(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": "the body is not a policy",
            "errors": [{ "line": 1, "column": 1, "path": "(document)", "message": message }]
        })),
    )
        .into_response()
}

fn apply_error_response(error: ApplyError) -> Response {
    match error {
        ApplyError::Invalid(errors) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": format!("the policy is invalid: {} error(s)", errors.len()),
                "errors": errors,
            })),
        )
            .into_response(),
        ApplyError::Stale { current_hash } => (
            StatusCode::PRECONDITION_FAILED,
            Json(json!({
                "error": "If-Match does not name the active policy's hash",
                "errors": [],
                "current_hash": current_hash,
            })),
        )
            .into_response(),
        ApplyError::NoPrevious => error_response(
            StatusCode::CONFLICT,
            "there is no previous policy to roll back to",
        ),
        ApplyError::UnknownVersion { version, kept } => error_response(
            StatusCode::NOT_FOUND,
            &format!(
                "the history holds no version {version}; it holds {}",
                kept.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ApplyError::Io(message) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &message),
    }
}

fn applied_response(result: Result<Applied, ApplyError>) -> Response {
    match result {
        Ok(applied) => {
            let etag = HeaderValue::from_str(&format!("\"{}\"", applied.hash)).ok();
            let mut response = (StatusCode::OK, Json(applied)).into_response();
            if let Some(etag) = etag {
                response.headers_mut().insert(header::ETAG, etag);
            }
            response
        }
        Err(error) => apply_error_response(error),
    }
}

async fn put_policy(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut dry_run = false;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("dry_run", "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => dry_run = false,
            ("dry_run", other) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("dry_run must be true or false, not {other:?}"),
                )
            }
            (other, _) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown query parameter {other:?}; expected dry_run"),
                )
            }
        }
    }
    let source = match read_text(body).await {
        Ok(source) => source,
        Err(response) => return response,
    };
    if dry_run {
        let backend = state.backend.clone();
        return run_blocking(move || match backend.dry_run(&source) {
            Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
            Err(error) => apply_error_response(error),
        })
        .await;
    }

    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_owned());
    let backend = state.backend.clone();
    run_blocking(move || applied_response(backend.apply(source, if_match.as_deref()))).await
}

async fn validate_policy(State(state): State<AppState>, body: Body) -> Response {
    let source = match read_text(body).await {
        Ok(source) => source,
        Err(response) => return response,
    };
    let backend = state.backend.clone();
    run_blocking(move || match backend.validate(&source) {
        Ok(validated) => (StatusCode::OK, Json(validated)).into_response(),
        Err(ApplyError::Invalid(errors)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "valid": false,
                "error": format!("the policy is invalid: {} error(s)", errors.len()),
                "errors": errors,
            })),
        )
            .into_response(),
        Err(error) => apply_error_response(error),
    })
    .await
}

async fn reload_policy(State(state): State<AppState>) -> Response {
    let backend = state.backend.clone();
    run_blocking(move || applied_response(backend.reload())).await
}

async fn drain(State(state): State<AppState>) -> Response {
    let grace_period_seconds = state.backend.drain();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "draining": true,
            "grace_period_seconds": grace_period_seconds,
        })),
    )
        .into_response()
}

async fn rollback_policy(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let version = match single_query_parameter(raw.as_deref(), "version") {
        Ok(None) => None,
        Ok(Some(value)) => match value.parse::<u64>() {
            Ok(number) => Some(number),
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("version must be a policy version number, not {value:?}"),
                )
            }
        },
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let backend = state.backend.clone();
    run_blocking(move || applied_response(backend.rollback(version))).await
}

/// The value of the query's one parameter `name` (the last, when repeated); any other
/// parameter is an error, answered with 400.
fn single_query_parameter(raw: Option<&str>, name: &str) -> Result<Option<String>, String> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if key != name {
            return Err(format!("unknown query parameter {key:?}; expected {name}"));
        }
        found = Some(value.into_owned());
    }
    Ok(found)
}

/// Adds the active policy's `ETag` (its hash) and `X-Meshgate-Policy-Version`.
fn insert_policy_headers(headers: &mut HeaderMap, active: &ActivePolicy) {
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", active.hash)) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        "x-meshgate-policy-version",
        HeaderValue::from(active.version),
    );
}

async fn policy_history(State(state): State<AppState>) -> Response {
    Json(state.backend.history()).into_response()
}

/// Policy work reads files and compiles regexes: keep it off the async worker threads.
async fn run_blocking(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
        error_response(StatusCode::INTERNAL_SERVER_ERROR, "the policy task failed")
    })
}

async fn upstreams(State(state): State<AppState>) -> Response {
    Json(state.backend.upstreams()).into_response()
}

async fn routes(State(state): State<AppState>) -> Response {
    Json(state.backend.routes()).into_response()
}
