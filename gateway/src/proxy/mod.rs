//! The data plane: meshgate's [`ProxyHttp`] phases.
//!
//! Each request loads the current snapshot once (`early_request_filter`) and uses it to the
//! end, so a reload in the middle of a request never mixes two policies. The phases, in the
//! order Pingora runs them, and where their work lives:
//!
//! | phase | does | file |
//! |---|---|---|
//! | (accept) | connection limits, the whole-head deadline | `connection.rs` |
//! | `early_request_filter` | snapshot, listener, span, head limits (431/414) | here, `hygiene.rs` |
//! | `request_filter` | path normalization, route, authorization, rate limit, fault, split, breaker | `admission.rs` |
//! | `request_body_filter` | `max_request_body` on a streamed body | here |
//! | `upstream_peer` | backoff, endpoint choice, per-try timeouts | here |
//! | `upstream_request_filter` | forwarding and identity headers, trace context, header rules | here |
//! | `upstream_response_filter` | informational statuses, retry on status | here |
//! | `error_while_proxy`, `fail_to_connect` | whether a failed try is retried | here, `retry.rs` |
//! | `fail_to_proxy` | the gateway's answer after a failure | here, `answer.rs` |
//! | `logging` | release, metrics, span, access log | `finish.rs` |
//!
//! Per-request state is [`context::RequestCtx`]; gateway-made answers carry a [`Reason`].

mod admission;
mod answer;
mod compress;
pub mod connection;
mod context;
mod cors;
mod finish;
pub mod guarded;
mod hygiene;
pub mod mirror;
mod reason;
mod request;
pub mod request_id;
mod retry;
pub(crate) mod split;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::lifecycle::Lifecycle;
use crate::limit;
use crate::reload::PolicyStore;
use crate::telemetry::Telemetry;
use crate::tls::PeerTls;
use crate::upstream::{breaker_give_back, EndpointState};
use answer::{
    overflow_header, reason_for_error, refuse_overflow, respond_with_reason, respond_without_reason,
};
use connection::HeadTimedStream;
use context::RequestCtx;
use hygiene::HeadLimits;
pub use reason::{Reason, REASON_HEADER};
use request::{forwarded_for_value, key_hash, request_host};
use retry::client_gone_during;

/// Response header naming the circuit breaker limit that refused a request.
pub const OVERFLOW_HEADER: &str = "x-meshgate-overflow";

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const HTTP_SCHEME: http::HeaderValue = http::HeaderValue::from_static("http");
const HTTPS_SCHEME: http::HeaderValue = http::HeaderValue::from_static("https");
/// The identity header: the caller's certificate, as Envoy writes it.
pub(crate) const X_FORWARDED_CLIENT_CERT: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-client-cert");

/// meshgate's proxy logic.
pub struct MeshProxy {
    store: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
    /// `[server].client_idle_timeout` in seconds, fixed at start like the rest of `[server]`.
    client_idle_seconds: u64,
    /// `[server].client_body_timeout`, fixed at start.
    client_body_timeout: std::time::Duration,
    /// `[server]`'s head limits and path normalization, fixed at start.
    head_limits: HeadLimits,
    /// `[server].preserve_header_case`, fixed at start: whether upstream connections read
    /// response heads with each name's case kept.
    preserve_header_case: bool,
    /// `[server].max_upstream_response_header_size`, fixed at start.
    max_upstream_response_header_size: usize,
    /// Whether the process is draining: keepalive clients are then told to go.
    lifecycle: Arc<Lifecycle>,
    /// Connections of the mirrors' copies, pooled apart from the proxied requests'.
    mirror_connector: Arc<pingora::connectors::http::Connector>,
}

impl MeshProxy {
    /// A proxy that serves whatever policy `store` holds.
    pub fn new(
        store: Arc<PolicyStore>,
        telemetry: Arc<Telemetry>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        let server = store.snapshot().policy.server.clone();
        MeshProxy {
            store,
            telemetry,
            client_idle_seconds: server.client_idle_timeout.as_secs().max(1),
            client_body_timeout: server.client_body_timeout,
            head_limits: HeadLimits::new(&server),
            preserve_header_case: server.preserve_header_case,
            max_upstream_response_header_size: server.max_upstream_response_header_size,
            lifecycle,
            mirror_connector: Arc::new(pingora::connectors::http::Connector::new(None)),
        }
    }
}

impl MeshProxy {
    /// Logs a request that failed with a gateway answer of 5xx (a client gone away is
    /// logged at debug level only).
    fn log_failure(&self, error: &Error, reason: Option<Reason>, status: u16, ctx: &RequestCtx) {
        // The kind and the root cause (`ConnectRefused: Connection refused (os error 111)`);
        // route, upstream and endpoint are fields of their own.
        let cause = match &error.cause {
            Some(_) => format!("{}: {}", error.etype().as_str(), error.root_cause()),
            None => error.etype().as_str().to_owned(),
        };
        if status < 500 {
            tracing::debug!(status, "request ended: {cause}");
            return;
        }
        let snapshot = ctx.snapshot.as_deref();
        let route = snapshot
            .zip(ctx.route)
            .map_or("", |(s, r)| s.policy.routes[r].name.as_str());
        let upstream = snapshot
            .zip(ctx.upstream)
            .map_or("", |(s, u)| s.policy.upstreams[u].name.as_str());
        let request_id = ctx
            .request_id
            .as_ref()
            .and_then(|id| id.to_str().ok())
            .unwrap_or("");
        self.telemetry
            .failures
            .record(&crate::telemetry::failures::Failure {
                route,
                upstream,
                endpoint: ctx.last_endpoint,
                reason: reason.map_or("internal-error", Reason::token),
                status,
                request_id,
                cause,
            });
    }
}

/// `timeout`, shortened so that it ends on a whole second of the process's clock when it is
/// long (10 s or more): every try that starts within the same second then waits on the same
/// timer. Pingora's fast timeouts share one timer per deadline (rounded to 10 ms); with a
/// deadline of its own, each request registered a new timer, about 2,200 instructions per
/// request on the plain route (`loadtest/callgrind.sh`). The timeout ends up to a second early,
/// which a 60 s `read_timeout` does not notice.
fn shared_deadline(timeout: std::time::Duration, started: Instant) -> std::time::Duration {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if timeout < std::time::Duration::from_secs(10) {
        return timeout;
    }
    let epoch = *EPOCH.get_or_init(Instant::now);
    let into_second = started.saturating_duration_since(epoch).subsec_nanos();
    timeout - std::time::Duration::from_nanos(u64::from(into_second))
}

pub(super) fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .as_downstream()
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for MeshProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.lifecycle.request_started())
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora keeps an idle HTTP/1.1 connection forever (`Some(0)`) unless told otherwise,
        // which would let idle clients hold sockets without limit. A client that asked to
        // close keeps `None`.
        if session.as_downstream().get_keepalive() == Some(0) {
            session
                .as_downstream_mut()
                .set_keepalive(Some(self.client_idle_seconds));
        }
        let downstream = session.as_downstream_mut();
        if let Some(stream) = downstream.stream().and_then(HeadTimedStream::of) {
            stream.head_received();
        }
        downstream.set_read_timeout(Some(self.client_body_timeout));
        // Requests written back to back on one connection are answered in order (RFC 9112
        // §9.3.2); without this Pingora drops the connection on the second one.
        downstream.set_pipelining_enabled(true);
        let snapshot = self.store.snapshot();
        ctx.listener = session
            .as_downstream()
            .server_addr()
            .and_then(|a| a.as_inet())
            .and_then(|local| snapshot.listener_for(*local));
        let trusts_request_id = ctx
            .listener
            .is_some_and(|l| snapshot.policy.listeners[l].trust_request_id);
        ctx.request_id = Some(request_id::request_id(
            session.req_header(),
            trusts_request_id,
        ));
        ctx.snapshot = Some(snapshot);
        if let Some(tracing) = self.telemetry.tracing().as_ref() {
            ctx.span = Some(tracing.start_span(session.req_header()));
        }
        ctx.tls = session
            .as_downstream()
            .digest()
            .and_then(|d| d.ssl_digest.clone());
        if let Err(reason) = self.head_limits.check(session.req_header()) {
            ctx.reason = Some(reason);
            return Error::e_explain(
                ErrorType::HTTPStatus(reason.status()),
                "the request head is over a [server] limit",
            );
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let admitted = self.admit(session, ctx).await;
        if self.lifecycle.is_draining() {
            // Draining: this answer is the connection's last (`Connection: close`).
            session.set_keepalive(None);
        }
        match admitted {
            Ok(()) => Ok(false),
            Err(answer) => {
                answer.send(session, ctx).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Pingora calls this again for each retry: end the previous try first.
        ctx.end_try();
        let snapshot = ctx.snapshot.clone().expect("set in early_request_filter");
        let route_index = ctx.route.expect("set in request_filter");
        let route = &snapshot.policy.routes[route_index];

        let retrying = ctx.tries > 0;
        ctx.tries += 1;
        ctx.body_bytes = 0;
        let upstream = snapshot.upstreams[ctx.upstream.expect("chosen in request_filter")].clone();
        if retrying {
            if let Some(retry) = &route.retry {
                // Exponential backoff with full jitter, never past the request's deadline.
                let ceiling = retry
                    .backoff
                    .saturating_mul(1 << ctx.retries.saturating_sub(1).min(6));
                let mut pause = ceiling.mul_f64(rand::random::<f64>());
                if let Some(deadline) = ctx.deadline {
                    pause = pause.min(deadline.saturating_duration_since(Instant::now()));
                }
                client_gone_during(session, pause).await?;
            }
        }

        let remaining = ctx
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            ctx.reason = Some(Reason::UpstreamTimeout);
            return Error::e_explain(
                ErrorType::HTTPStatus(Reason::UpstreamTimeout.status()),
                "the route's request timeout ran out",
            );
        }
        if let Err(overflow) = upstream.admit_connect() {
            return refuse_overflow(ctx, overflow);
        }
        ctx.holds_pending = true;

        let hash_input = upstream
            .spec
            .hash_key
            .as_ref()
            .map(|key| key_hash(key, session.req_header(), ctx.client_ip).to_le_bytes());
        let hash_input = hash_input.as_ref().map(|h| h.as_slice());
        let mut chosen = upstream.acquire(hash_input);
        // A retry goes to another endpoint where there is one.
        let repeats = |chosen: &Option<Arc<EndpointState>>| {
            chosen.as_ref().map(|e| e.addr) == ctx.previous_endpoint
        };
        if retrying && chosen.is_some() && repeats(&chosen) {
            for _ in 0..upstream.endpoints().endpoints.len() {
                if let Some(endpoint) = &chosen {
                    upstream.release(endpoint);
                }
                chosen = upstream.acquire(hash_input);
                if !repeats(&chosen) {
                    break;
                }
            }
        }
        let Some(endpoint) = chosen else {
            ctx.reason = Some(Reason::NoHealthyUpstream);
            return Error::e_explain(
                ErrorType::HTTPStatus(Reason::NoHealthyUpstream.status()),
                "every endpoint is unhealthy or ejected",
            );
        };
        ctx.last_endpoint = Some(endpoint.addr);
        let try_started = Instant::now();
        ctx.try_started = Some(try_started);
        let mut peer = endpoint.peer.clone();
        ctx.endpoint = Some(endpoint);
        peer.options.preserve_header_case = self.preserve_header_case;
        peer.options.max_response_header_size = self.max_upstream_response_header_size;
        if let Some(tls) = &upstream.tls {
            let material = tls.material();
            peer.options.ca = material.ca.clone();
            peer.client_cert_key = material.client_cert.clone();
            peer.group_key = material.group_key();
        }
        let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
        let try_limit = match (per_try, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // An upstream that accepts and then says nothing is given up on after its
        // `read_timeout` (60 s, NGINX's `proxy_read_timeout`) even on a route without timeouts.
        peer.options.read_timeout = Some(shared_deadline(upstream.spec.read_timeout, try_started));
        if let Some(limit) = try_limit {
            peer.options.read_timeout = Some(limit.min(upstream.spec.read_timeout));
            peer.options.write_timeout = Some(limit);
            peer.options.total_connection_timeout = Some(limit.min(upstream.spec.connect_timeout));
        }
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(upstream) = ctx.upstream_state().cloned() {
            upstream.connections[usize::from(reused)].inc();
            if let (false, Some(started)) = (reused, ctx.try_started) {
                upstream
                    .connect_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            if std::mem::take(&mut ctx.holds_pending) {
                breaker_give_back(&upstream.breaker.pending);
            }
            upstream
                .breaker
                .active_connections
                .fetch_add(1, Ordering::AcqRel);
            ctx.holds_connection = true;
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Header names are given as static strings: Pingora keeps each name's case for
        // HTTP/1.1, and a `HeaderName` would be copied into a new "titled" name per request.
        if let Some(ip) = client_ip(session) {
            let forwarded_for =
                forwarded_for_value(upstream_request.headers.get(X_FORWARDED_FOR), ip);
            upstream_request.insert_header(X_FORWARDED_FOR, forwarded_for)?;
        }
        let scheme = if ctx.tls.is_some() {
            HTTPS_SCHEME
        } else {
            HTTP_SCHEME
        };
        upstream_request.insert_header(X_FORWARDED_PROTO, scheme)?;
        // Any incoming copy was removed in `request_filter`; only the gateway's own reaches
        // the upstream.
        if let Some(value) = ctx.peer_tls().and_then(PeerTls::forwarded_client_cert) {
            upstream_request.insert_header(X_FORWARDED_CLIENT_CERT, value)?;
        }
        let request = session.req_header();
        if let Some(host) = request.headers.get(http::header::HOST) {
            // The client's own value, shared rather than copied.
            upstream_request.insert_header(X_FORWARDED_HOST, host.clone())?;
        } else if let Some(host) = request_host(request).map(str::to_owned) {
            upstream_request.insert_header(X_FORWARDED_HOST, host.as_str())?;
            // An HTTP/2 client sends only `:authority`; an HTTP/1.1 upstream needs `Host`.
            if upstream_request.headers.get(http::header::HOST).is_none() {
                upstream_request.insert_header("host", host.as_str())?;
            }
        }
        if let Some(id) = &ctx.request_id {
            upstream_request.insert_header(request_id::REQUEST_ID_HEADER, id.clone())?;
        }
        if let Some(span) = &ctx.span {
            span.inject(upstream_request);
        }
        if let (Some(snapshot), Some(route)) = (&ctx.snapshot, ctx.route) {
            snapshot.routes[route]
                .request_headers
                .apply(upstream_request)?;
            if let Some(rewrite) = &snapshot.policy.routes[route].rewrite {
                let normalize = self.head_limits.normalizes();
                match request::apply_rewrite(rewrite, upstream_request, normalize)? {
                    Ok(path) => ctx.upstream_path = path,
                    Err(bad) => {
                        ctx.reason = Some(Reason::BadPath);
                        return Error::e_explain(
                            ErrorType::HTTPStatus(Reason::BadPath.status()),
                            bad.message(),
                        );
                    }
                }
            }
        }
        if !std::mem::replace(&mut ctx.mirrors_rolled, true) {
            // Copies are made of the request as the upstream gets it: after the header rules,
            // the rewrite, hop-by-hop stripping and the forwarding headers, so a header the
            // route removes (`Authorization`, `Cookie`) never reaches a mirror either.
            self.start_mirrors(session, upstream_request, ctx);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status < 200 {
            // 100 Continue and 103 Early Hints are forwarded as Pingora does. A 101 is a tunnel
            // of raw bytes, so it is taken only for a request that asked to upgrade; any other
            // informational status has no safe meaning here.
            let asked_upgrade = session
                .req_header()
                .headers
                .contains_key(http::header::UPGRADE);
            let allowed = match status {
                100 | 103 => true,
                101 => asked_upgrade,
                _ => false,
            };
            if !allowed {
                ctx.reason = Some(Reason::UpstreamReset);
                ctx.report(false);
                return Error::e_explain(
                    ErrorType::HTTPStatus(Reason::UpstreamReset.status()),
                    format!("unexpected informational status {status} from the upstream"),
                );
            }
            return Ok(());
        }
        ctx.upstream_time = ctx.try_started.map(|t| t.elapsed());
        ctx.report(status < 500);
        let retried = ctx.snapshot.clone().and_then(|snapshot| {
            let retry = snapshot.policy.routes[ctx.route?].retry.as_ref()?;
            retry.on.status(status).then_some(())?;
            self.take_retry(session, ctx, true).then_some(())
        });
        if retried.is_some() {
            ctx.retry_on_status = true;
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                "retrying on the response status",
            );
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !ctx.mirror_copies.is_empty() {
            if let Some(chunk) = body.as_ref() {
                ctx.mirror_copies.retain_mut(|copy| copy.add_body(chunk));
            }
            if end_of_stream {
                for copy in std::mem::take(&mut ctx.mirror_copies) {
                    copy.send(&self.mirror_connector);
                }
            }
        }
        let limit = ctx
            .route
            .and_then(|route| ctx.snapshot.as_ref()?.policy.routes[route].max_request_body);
        if let (Some(limit), Some(chunk)) = (limit, body.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > limit {
                ctx.reason = Some(Reason::BodyTooLarge);
                return Error::e_explain(
                    ErrorType::HTTPStatus(Reason::BodyTooLarge.status()),
                    "the request body grew past the route's max_request_body",
                );
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.lifecycle.is_draining() {
            // A drain or an upgrade started while this request was in flight: its response
            // is the connection's last, so the client opens a new one (to the new process).
            session.set_keepalive(None);
        }
        if let (Some(snapshot), Some(route)) = (&ctx.snapshot, ctx.route) {
            snapshot.routes[route]
                .response_headers
                .apply(upstream_response)?;
            let spec = &snapshot.policy.routes[route];
            if let Some(cors) = &spec.cors {
                for (name, value) in cors::response_headers(cors, session.req_header()) {
                    if name == http::header::VARY {
                        upstream_response.append_header(name, value)?;
                    } else {
                        upstream_response.insert_header(name, value)?;
                    }
                }
            }
            let listener_compress = ctx
                .listener
                .and_then(|l| snapshot.policy.listeners[l].compress.as_ref());
            if let Some(settings) = spec.compress.as_ref().or(listener_compress) {
                ctx.compressor = compress::start(settings, session, upstream_response)?;
                if let Some(encoder) = &ctx.compressor {
                    self.telemetry
                        .metrics
                        .compressed_responses
                        .with_label_values(&[spec.name.as_str(), encoder.coding.token()])
                        .inc();
                }
            }
        }
        if let Some(id) = &ctx.request_id {
            upstream_response.insert_header(request_id::REQUEST_ID_HEADER, id.clone())?;
        }
        if let Some((limiter, decision)) = &ctx.rate_limit_headers {
            upstream_response
                .insert_header(limit::RATELIMIT_POLICY, limiter.policy_header().clone())?;
            upstream_response.insert_header(limit::RATELIMIT, limiter.state_header(decision))?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(encoder) = &mut ctx.compressor {
            encoder.encode(body, end_of_stream)?;
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut error = error.more_context(format!("Peer: {peer}"));
        if session.response_written().is_some() {
            // Bytes of this attempt's response reached the client: another attempt's bytes
            // would be spliced after them into one corrupt response. Abort the client's
            // message instead (Pingora closes an HTTP/1.1 connection short of the declared
            // length or last chunk, and resets an HTTP/2 stream).
            if error.esource() != &ErrorSource::Downstream {
                ctx.reason = Some(Reason::UpstreamReset);
                ctx.report(false);
            }
            ctx.retry_on_status = false;
            error.set_retry(false);
            ctx.end_try();
            return error;
        }
        if error.esource() == &ErrorSource::Downstream || ctx.reason.is_some() {
            // The client went away (nothing to retry for), or the gateway already decided
            // the answer (an oversized body, an unsolicited 101).
            ctx.retry_on_status = false;
            error.set_retry(false);
            ctx.end_try();
            return error;
        }
        if std::mem::take(&mut ctx.retry_on_status) {
            // The retry was decided (and counted) when the status arrived.
            error.set_retry(true);
            ctx.end_try();
            return error;
        }
        let after_connect_retry = ctx.snapshot.clone().is_some_and(|snapshot| {
            ctx.route
                .and_then(|route| snapshot.policy.routes[route].retry.as_ref())
                .is_some_and(|retry| retry::reset_retried(&retry.on))
        });
        ctx.report(false);
        let retry = if after_connect_retry {
            self.take_retry(session, ctx, true)
        } else {
            // Without a retry policy, keep Pingora's safe default: an idempotent request that
            // failed on a reused keepalive connection (closed by the upstream meanwhile) is
            // sent once more on a fresh one.
            session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated()
                && client_reused
        };
        error.set_retry(retry);
        ctx.end_try();
        error
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut error: Box<Error>,
    ) -> Box<Error> {
        ctx.report(false);
        let wanted = ctx.snapshot.clone().is_some_and(|snapshot| {
            ctx.route
                .and_then(|route| snapshot.policy.routes[route].retry.as_ref())
                .is_some_and(|retry| retry::connect_failure_retried(&retry.on, error.etype()))
        });
        // Nothing was sent yet, so any method may be retried.
        let retry = wanted && self.take_retry(session, ctx, false);
        error.set_retry(retry);
        ctx.end_try();
        error
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let reason = ctx.reason.or_else(|| reason_for_error(error)).or_else(|| {
            (error.esource() == &ErrorSource::Downstream
                && error.etype() == &ErrorType::ReadTimedout)
                .then_some(Reason::ClientTimeout)
        });
        let status = match (reason, error.etype()) {
            (Some(reason), _) => reason.status(),
            (None, ErrorType::HTTPStatus(code)) => *code,
            (None, _) if error.esource() == &ErrorSource::Downstream => 0,
            (None, _) => 500,
        };
        ctx.reason = reason;
        ctx.error_status = status;
        self.log_failure(error, reason, status, ctx);
        if status > 0 && session.response_written().is_none() {
            // The connection ends with this answer (`can_reuse_downstream: false` below): say
            // so, or Pingora writes `Connection: keep-alive` and then closes.
            session.set_keepalive(None);
            let written = match reason {
                Some(reason) => {
                    let extra = ctx.overflow.map(overflow_header).unwrap_or_default();
                    let id = ctx.request_id.as_ref();
                    respond_with_reason(session, status, reason, &extra, id, true).await
                }
                None => respond_without_reason(session, status, ctx.request_id.as_ref()).await,
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

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `fail_to_proxy` logs the failure in meshgate's words (`log_failure`).
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A try that is retried is not a failure of the request; its metrics count it.
        true
    }

    async fn logging(&self, session: &mut Session, _error: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish_request(session, ctx);
    }
}
