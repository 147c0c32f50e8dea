//! The data plane: meshgate's [`ProxyHttp`] phases.
//!
//! Each request loads the current snapshot once (`early_request_filter`) and uses it to the
//! end, so a reload in the middle of a request never mixes two policies.

mod reason;
mod request;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::reload::PolicyStore;
use crate::snapshot::Snapshot;
use crate::telemetry::Telemetry;
pub use reason::{Reason, REASON_HEADER};
use request::{key_hash, request_host, HeaderView};

/// Headers that carry a caller's identity: only the gateway may set them, so any incoming
/// copy is removed before routing.
const IDENTITY_HEADERS: &[&str] = &["x-forwarded-client-cert"];

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
const HTTP_SCHEME: http::HeaderValue = http::HeaderValue::from_static("http");

/// meshgate's proxy logic.
pub struct MeshProxy {
    store: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
}

impl MeshProxy {
    /// A proxy that serves whatever policy `store` holds.
    pub fn new(store: Arc<PolicyStore>, telemetry: Arc<Telemetry>) -> Self {
        MeshProxy { store, telemetry }
    }
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Option<Arc<Snapshot>>,
    started: Instant,
    listener: Option<usize>,
    route: Option<usize>,
    upstream: Option<usize>,
    /// Index of the chosen split in the route.
    split: Option<usize>,
    /// The endpoint whose in-flight count this request holds.
    endpoint: Option<usize>,
    /// Address of the last endpoint chosen, for the access log.
    last_endpoint: Option<std::net::SocketAddr>,
    reason: Option<Reason>,
    /// Status of a response the gateway wrote itself after a failure.
    error_status: u16,
}

impl RequestCtx {
    /// Gives back the in-flight slot of the current endpoint, if any.
    fn release_endpoint(&mut self) {
        if let (Some(snapshot), Some(upstream), Some(endpoint)) =
            (&self.snapshot, self.upstream, self.endpoint.take())
        {
            snapshot.upstreams[upstream].release(endpoint);
        }
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .as_downstream()
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Writes a gateway-made, empty response with its reason token.
async fn respond_with_reason(session: &mut Session, reason: Reason) -> Result<()> {
    let mut response = ResponseHeader::build(reason.status(), Some(2))?;
    response.insert_header(REASON_HEADER, reason.token())?;
    response.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session
        .write_response_header(Box::new(response), true)
        .await
}

fn reason_for_error(error: &Error) -> Option<Reason> {
    if error.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match error.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::ConnectProxyFailure => Reason::ConnectFailure,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::UpstreamTimeout,
        _ => Reason::UpstreamReset,
    })
}

#[async_trait]
impl ProxyHttp for MeshProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: None,
            started: Instant::now(),
            listener: None,
            route: None,
            upstream: None,
            split: None,
            endpoint: None,
            last_endpoint: None,
            reason: None,
            error_status: 0,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let snapshot = self.store.snapshot();
        ctx.listener = session
            .as_downstream()
            .server_addr()
            .and_then(|a| a.as_inet())
            .and_then(|local| snapshot.listener_for(*local));
        ctx.snapshot = Some(snapshot);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let header = session.req_header_mut();
        for name in IDENTITY_HEADERS {
            header.remove_header(*name);
        }
        let snapshot = ctx.snapshot.as_ref().expect("set in early_request_filter");
        let route = ctx.listener.and_then(|listener| {
            snapshot
                .policy
                .match_route(listener, &HeaderView(session.req_header()))
        });
        match route {
            Some(route) => {
                ctx.route = Some(route);
                Ok(false)
            }
            None => {
                ctx.reason = Some(Reason::NoRoute);
                respond_with_reason(session, Reason::NoRoute).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Pingora calls this again for a retry: give back the previous endpoint first.
        ctx.release_endpoint();
        let snapshot = ctx.snapshot.clone().expect("set in early_request_filter");
        let route_index = ctx.route.expect("set in request_filter");
        let route = &snapshot.policy.routes[route_index];
        let header = session.req_header();

        let slot = match &route.split_key {
            Some(key) => key_hash(key, header, client_ip(session)) as usize,
            None => snapshot.routes[route_index]
                .split_cursor
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize,
        };
        let split = route.split_schedule[slot % route.split_schedule.len()] as usize;
        let upstream_index = route.splits[split].upstream;
        ctx.split = Some(split);
        ctx.upstream = Some(upstream_index);
        let upstream = &snapshot.upstreams[upstream_index];

        let hash_input = upstream
            .spec
            .hash_key
            .as_ref()
            .map(|key| key_hash(key, header, client_ip(session)).to_le_bytes());
        match upstream.acquire(hash_input.as_ref().map(|h| h.as_slice())) {
            Some(endpoint) => {
                ctx.endpoint = Some(endpoint);
                ctx.last_endpoint = Some(upstream.endpoints[endpoint].addr);
                Ok(Box::new(upstream.endpoints[endpoint].peer.clone()))
            }
            None => {
                ctx.reason = Some(Reason::NoHealthyUpstream);
                Error::e_explain(
                    ErrorType::HTTPStatus(Reason::NoHealthyUpstream.status()),
                    "every endpoint is unhealthy or ejected",
                )
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(ip) = client_ip(session) {
            let forwarded_for = match upstream_request.headers.get(&X_FORWARDED_FOR) {
                Some(existing) => {
                    format!("{}, {ip}", String::from_utf8_lossy(existing.as_bytes()))
                }
                None => ip.to_string(),
            };
            upstream_request.insert_header(X_FORWARDED_FOR, forwarded_for)?;
        }
        upstream_request.insert_header(X_FORWARDED_PROTO, HTTP_SCHEME.clone())?;
        if let Some(host) = request_host(session.req_header()).map(str::to_owned) {
            upstream_request.insert_header(X_FORWARDED_HOST, host.as_str())?;
            // An HTTP/2 client sends only `:authority`; an HTTP/1.1 upstream needs `Host`.
            if upstream_request.headers.get(http::header::HOST).is_none() {
                upstream_request.insert_header(http::header::HOST, host.as_str())?;
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut error: Box<Error>,
    ) -> Box<Error> {
        // Retries are the resilience policy's decision, not Pingora's default.
        error.set_retry(false);
        ctx.release_endpoint();
        error
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let reason = ctx.reason.or_else(|| reason_for_error(error));
        let status = match (reason, error.etype()) {
            (Some(reason), _) => reason.status(),
            (None, ErrorType::HTTPStatus(code)) => *code,
            (None, _) if error.esource() == &ErrorSource::Downstream => 0,
            (None, _) => 500,
        };
        ctx.reason = reason;
        ctx.error_status = status;
        if status > 0 && session.response_written().is_none() {
            let written = match reason {
                Some(reason) => respond_with_reason(session, reason).await,
                None => session.respond_error(status).await,
            };
            if let Err(e) = written {
                tracing::debug!("could not send the error response: {e}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _error: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.release_endpoint();
        let Some(snapshot) = ctx.snapshot.as_ref() else {
            return;
        };
        let status = session
            .response_written()
            .map_or(ctx.error_status, |r| r.status.as_u16());
        let listener = ctx
            .listener
            .map_or("", |i| snapshot.policy.listeners[i].name.as_str());
        let route = ctx
            .route
            .map_or("", |i| snapshot.policy.routes[i].name.as_str());
        let upstream_state = ctx.upstream.map(|i| &snapshot.upstreams[i]);
        let upstream = upstream_state.map_or("", |u| u.spec.name.as_str());
        let reason = ctx.reason.map_or("", Reason::token);
        let resolved =
            match (ctx.reason, ctx.listener, ctx.route, ctx.split) {
                (None, Some(listener), Some(route), Some(split)) => snapshot.routes[route]
                    .counters(listener, split, snapshot.policy.routes[route].splits.len()),
                _ => None,
            };
        match resolved {
            Some(counters) => counters.inc(status),
            // Gateway-made answers carry a reason token; they are the rare path.
            None => {
                let status_code = http::StatusCode::from_u16(status).ok();
                let code = status_code.as_ref().map_or("0", |s| s.as_str());
                self.telemetry
                    .metrics
                    .requests_total
                    .with_label_values(&[listener, route, upstream, code, reason])
                    .inc();
            }
        }

        if let Some(log) = self.telemetry.access_log().as_ref() {
            let header = session.req_header();
            let endpoint = ctx
                .last_endpoint
                .map_or_else(|| "-".to_owned(), |addr| addr.to_string());
            log.log(format!(
                "{time} {client} \"{method} {uri} {version:?}\" {status} {reason} listener={listener} route={route} upstream={upstream} endpoint={endpoint} duration_ms={duration:.3}",
                time = humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                client = client_ip(session).map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                method = header.method,
                uri = header.uri,
                version = header.version,
                reason = if reason.is_empty() { "-" } else { reason },
                listener = or_dash(listener),
                route = or_dash(route),
                upstream = or_dash(upstream),
                duration = ctx.started.elapsed().as_secs_f64() * 1000.0,
            ));
        }
    }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() {
        "-"
    } else {
        value
    }
}
