//! The data plane: meshgate's [`ProxyHttp`] phases.
//!
//! Each request loads the current snapshot once (`early_request_filter`) and uses it to the
//! end, so a reload in the middle of a request never mixes two policies.

pub mod connection;
mod hygiene;
mod reason;
mod request;
mod retry;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::limit::{self, KeySource, LimitOutcome, RateLimiter};
use crate::reload::PolicyStore;
use crate::snapshot::Snapshot;
use crate::telemetry::{RequestSpan, SpanEnd, Telemetry};
use crate::tls::PeerTls;
use crate::upstream::{breaker_give_back, Overflow, UpstreamState};
use connection::HeadTimedStream;
use hygiene::HeadLimits;
use meshgate_policy::compiled::StoreErrorAction;
pub use reason::{Reason, REASON_HEADER};
use request::{key_hash, request_host, HeaderView};
pub use retry::RetryBudget;

/// Response header naming the circuit breaker limit that refused a request.
pub const OVERFLOW_HEADER: &str = "x-meshgate-overflow";

/// Headers that carry a caller's identity: only the gateway may set them, so any incoming
/// copy is removed before routing.
const IDENTITY_HEADERS: &[&str] = &["x-forwarded-client-cert"];

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
const HTTP_SCHEME: http::HeaderValue = http::HeaderValue::from_static("http");
const HTTPS_SCHEME: http::HeaderValue = http::HeaderValue::from_static("https");
const X_FORWARDED_CLIENT_CERT: http::HeaderName =
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
}

impl MeshProxy {
    /// A proxy that serves whatever policy `store` holds.
    pub fn new(store: Arc<PolicyStore>, telemetry: Arc<Telemetry>) -> Self {
        let server = store.snapshot().policy.server.clone();
        MeshProxy {
            store,
            telemetry,
            client_idle_seconds: server.client_idle_timeout.as_secs().max(1),
            client_body_timeout: server.client_body_timeout,
            head_limits: HeadLimits::new(&server),
        }
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
    /// When the route's request timeout runs out.
    deadline: Option<Instant>,
    /// Retries taken so far.
    retries: u32,
    /// Tries started (calls of `upstream_peer`).
    tries: u32,
    /// Whether this request holds a unit of the upstream's `active_requests`.
    holds_request: bool,
    /// Units of the upstream's `active_retries` this request holds.
    held_retries: u32,
    /// Whether the current try waits for a connection (`pending`).
    holds_pending: bool,
    /// Whether the current try uses a connection (`active_connections`).
    holds_connection: bool,
    /// The breaker limit that refused the request.
    overflow: Option<Overflow>,
    /// The endpoint of the previous try, avoided by a retry.
    previous_endpoint: Option<usize>,
    /// Set when `upstream_response_filter` turned a response into a retry.
    retry_on_status: bool,
    /// The client's address after `trusted_proxies`.
    client_ip: Option<IpAddr>,
    /// What the route's rate limit said, for the access log.
    rate_limit: &'static str,
    /// The `RateLimit` headers to add to an admitted response.
    rate_limit_headers: Option<(Arc<RateLimiter>, limit::Decision)>,
    /// The downstream TLS connection's digest, when it is TLS.
    tls: Option<Arc<pingora::protocols::tls::SslDigest>>,
    /// When the current try asked for a connection.
    try_started: Option<Instant>,
    /// From the last try's start to the upstream's response header.
    upstream_time: Option<std::time::Duration>,
    /// The request's span, when traces are exported.
    span: Option<RequestSpan>,
    /// Request body bytes seen so far, counted against the route's `max_request_body`.
    body_bytes: u64,
}

impl RequestCtx {
    /// What the TLS handshake learned of the caller.
    fn peer_tls(&self) -> Option<&PeerTls> {
        self.tls.as_ref()?.extension.get::<PeerTls>()
    }

    /// The caller's certificate identity.
    fn identity(&self) -> Option<&str> {
        self.peer_tls()?.identity.as_deref()
    }
}

impl RequestCtx {
    fn upstream_state(&self) -> Option<&Arc<UpstreamState>> {
        Some(&self.snapshot.as_ref()?.upstreams[self.upstream?])
    }

    /// Ends the current try: gives back its endpoint, pending and connection units.
    fn end_try(&mut self) {
        let Some(upstream) = self.upstream_state().cloned() else {
            return;
        };
        if let Some(endpoint) = self.endpoint.take() {
            upstream.release(endpoint);
            self.previous_endpoint = Some(endpoint);
        }
        if std::mem::take(&mut self.holds_pending) {
            breaker_give_back(&upstream.breaker.pending);
        }
        if std::mem::take(&mut self.holds_connection) {
            breaker_give_back(&upstream.breaker.active_connections);
        }
    }

    /// Ends the request: the current try and every breaker unit it holds.
    fn end_request(&mut self) {
        self.end_try();
        let Some(upstream) = self.upstream_state().cloned() else {
            return;
        };
        if std::mem::take(&mut self.holds_request) {
            breaker_give_back(&upstream.breaker.active_requests);
        }
        for _ in 0..std::mem::take(&mut self.held_retries) {
            breaker_give_back(&upstream.breaker.active_retries);
        }
    }

    /// Records the outcome of the current try for outlier detection.
    fn report(&self, success: bool) {
        if let (Some(upstream), Some(endpoint)) = (self.upstream_state(), self.endpoint) {
            upstream.report_outcome(endpoint, success);
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
async fn respond_with_reason(
    session: &mut Session,
    status: u16,
    reason: Reason,
    extra_headers: &[(http::HeaderName, http::HeaderValue)],
    closing: bool,
) -> Result<()> {
    let mut response = ResponseHeader::build(status, Some(4))?;
    response.insert_header(REASON_HEADER, reason.token())?;
    // Tell an HTTP/1.1 client when the connection ends with this answer, so that it does not
    // send its next request on a connection about to close.
    if closing && !session.as_downstream().is_http2() {
        response.insert_header(http::header::CONNECTION, "close")?;
    }
    for (name, value) in extra_headers {
        response.insert_header(name.clone(), value.clone())?;
    }
    response.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session
        .write_response_header(Box::new(response), true)
        .await?;
    // The proxy session drops `end_of_stream` when it writes a header, so end the body as
    // Pingora does for its own error answers. Otherwise, after an upstream failure (where
    // Pingora does not finish the session) an HTTP/2 client got RST_STREAM, not this answer.
    session.as_downstream_mut().finish_body().await
}

/// Whether the caller may use the route: the route's `allow` list when it has one, else the
/// listener's `default_authz`.
fn authorized(
    route: &meshgate_policy::compiled::Route,
    policy: &meshgate_policy::CompiledPolicy,
    listener: Option<usize>,
    identity: Option<&str>,
) -> bool {
    match &route.allow {
        Some(patterns) => identity.is_some_and(|id| patterns.iter().any(|p| p.matches(id))),
        None => listener.is_none_or(|l| {
            policy.listeners[l].default_authz == meshgate_policy::compiled::DefaultAuthz::Allow
        }),
    }
}

fn overflow_header(overflow: Overflow) -> Vec<(http::HeaderName, http::HeaderValue)> {
    vec![(
        http::HeaderName::from_static(OVERFLOW_HEADER),
        http::HeaderValue::from_static(overflow.limit()),
    )]
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
            deadline: None,
            retries: 0,
            tries: 0,
            holds_request: false,
            held_retries: 0,
            holds_pending: false,
            holds_connection: false,
            overflow: None,
            previous_endpoint: None,
            retry_on_status: false,
            client_ip: None,
            rate_limit: "-",
            rate_limit_headers: None,
            tls: None,
            try_started: None,
            upstream_time: None,
            span: None,
            body_bytes: 0,
        }
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
        let header = session.req_header_mut();
        for name in IDENTITY_HEADERS {
            header.remove_header(*name);
        }
        if self.head_limits.normalize(header).is_err() {
            ctx.reason = Some(Reason::BadPath);
            respond_with_reason(
                session,
                Reason::BadPath.status(),
                Reason::BadPath,
                &[],
                false,
            )
            .await?;
            return Ok(true);
        }
        let snapshot = ctx.snapshot.as_ref().expect("set in early_request_filter");
        let route = ctx.listener.and_then(|listener| {
            snapshot
                .policy
                .match_route(listener, &HeaderView(session.req_header()))
        });
        let Some(route_index) = route else {
            ctx.reason = Some(Reason::NoRoute);
            respond_with_reason(
                session,
                Reason::NoRoute.status(),
                Reason::NoRoute,
                &[],
                false,
            )
            .await?;
            return Ok(true);
        };
        // From here the request counts as in flight on its route until `logging`.
        ctx.route = Some(route_index);
        snapshot.routes[route_index].in_flight.inc();
        let route = &snapshot.policy.routes[route_index];
        if let Some(limit) = route.max_request_body {
            if hygiene::declared_body_length(session.req_header()).is_some_and(|n| n > limit) {
                ctx.reason = Some(Reason::BodyTooLarge);
                // The body is not read: the connection cannot carry another request.
                respond_with_reason(
                    session,
                    Reason::BodyTooLarge.status(),
                    Reason::BodyTooLarge,
                    &[],
                    true,
                )
                .await?;
                session.set_keepalive(None);
                return Ok(true);
            }
        }
        ctx.deadline = route.timeout.map(|t| ctx.started + t);
        if route.retry.is_some() {
            snapshot.routes[route_index].retry_budget.record_request();
            // Keep the request body (up to Pingora's retry buffer) so a retry can send it again.
            session.as_mut().enable_retry_buffering();
        }
        if !authorized(route, &snapshot.policy, ctx.listener, ctx.identity()) {
            ctx.reason = Some(Reason::Forbidden);
            self.telemetry
                .metrics
                .authz_denied
                .with_label_values(&[route.name.as_str()])
                .inc();
            respond_with_reason(
                session,
                Reason::Forbidden.status(),
                Reason::Forbidden,
                &[],
                false,
            )
            .await?;
            return Ok(true);
        }
        let peer = client_ip(session).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let client =
            limit::client_address(peer, session.req_header(), &snapshot.policy.trusted_proxies);
        ctx.client_ip = Some(client);
        if let Some(limiter) = &snapshot.routes[route_index].rate_limiter {
            let source = KeySource {
                client_ip: client,
                identity: ctx
                    .tls
                    .as_ref()
                    .and_then(|d| d.extension.get::<PeerTls>())
                    .and_then(|p| p.identity.as_deref()),
                header: session.req_header(),
            };
            let outcome = limiter
                .check(&source, snapshot.rate_limit_store.as_deref())
                .await;
            ctx.rate_limit = outcome.token();
            match outcome {
                LimitOutcome::Admitted(decision) => {
                    if limiter.spec.headers_on_success {
                        ctx.rate_limit_headers = Some((Arc::clone(limiter), decision));
                    }
                }
                LimitOutcome::ShadowRefused(_)
                | LimitOutcome::StoreFailed(StoreErrorAction::Allow) => {}
                LimitOutcome::Refused(decision) => {
                    ctx.reason = Some(Reason::RateLimited);
                    let headers = [
                        (
                            http::header::RETRY_AFTER,
                            http::HeaderValue::from(limit::retry_after_seconds(&decision)),
                        ),
                        (limit::RATELIMIT_POLICY, limiter.policy_header().clone()),
                        (limit::RATELIMIT, limiter.state_header(&decision)),
                    ];
                    respond_with_reason(
                        session,
                        Reason::RateLimited.status(),
                        Reason::RateLimited,
                        &headers,
                        false,
                    )
                    .await?;
                    return Ok(true);
                }
                LimitOutcome::StoreFailed(StoreErrorAction::Deny) => {
                    ctx.reason = Some(Reason::RateLimitUnavailable);
                    let headers = [(http::header::RETRY_AFTER, http::HeaderValue::from(1u32))];
                    respond_with_reason(
                        session,
                        Reason::RateLimitUnavailable.status(),
                        Reason::RateLimitUnavailable,
                        &headers,
                        false,
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
        if let Some(fault) = &route.fault {
            let roll = || rand::random::<f64>() * 100.0;
            if let Some((status, percent)) = fault.abort {
                if roll() < percent {
                    ctx.reason = Some(Reason::FaultAbort);
                    respond_with_reason(session, status, Reason::FaultAbort, &[], false).await?;
                    return Ok(true);
                }
            }
            if let Some((delay, percent)) = fault.delay {
                if roll() < percent {
                    tokio::time::sleep(delay).await;
                }
            }
        }

        // Choose the split, and admit the request to its upstream's breaker here, so that an
        // overflow is answered like any other gateway response and the connection is kept.
        let slot = match &route.split_key {
            Some(key) => key_hash(key, session.req_header(), ctx.client_ip) as usize,
            None => snapshot.routes[route_index]
                .split_cursor
                .fetch_add(1, Ordering::Relaxed) as usize,
        };
        let split = route.split_schedule[slot % route.split_schedule.len()] as usize;
        let upstream_index = route.splits[split].upstream;
        ctx.split = Some(split);
        ctx.upstream = Some(upstream_index);
        if let Err(overflow) = snapshot.upstreams[upstream_index].admit_request() {
            ctx.reason = Some(Reason::Overflow);
            ctx.overflow = Some(overflow);
            respond_with_reason(
                session,
                Reason::Overflow.status(),
                Reason::Overflow,
                &overflow_header(overflow),
                false,
            )
            .await?;
            return Ok(true);
        }
        ctx.holds_request = true;
        Ok(false)
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
        if retrying && chosen.is_some() && chosen == ctx.previous_endpoint {
            for _ in 0..upstream.endpoints.len() {
                if let Some(endpoint) = chosen {
                    upstream.release(endpoint);
                }
                chosen = upstream.acquire(hash_input);
                if chosen != ctx.previous_endpoint {
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
        ctx.endpoint = Some(endpoint);
        ctx.last_endpoint = Some(upstream.endpoints[endpoint].addr);
        ctx.try_started = Some(Instant::now());

        let mut peer = upstream.endpoints[endpoint].peer.clone();
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
        if let Some(limit) = try_limit {
            peer.options.read_timeout = Some(limit);
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
        if let Some(ip) = client_ip(session) {
            let forwarded_for = match upstream_request.headers.get(&X_FORWARDED_FOR) {
                Some(existing) => {
                    format!("{}, {ip}", String::from_utf8_lossy(existing.as_bytes()))
                }
                None => ip.to_string(),
            };
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
        if let Some(host) = request_host(session.req_header()).map(str::to_owned) {
            upstream_request.insert_header(X_FORWARDED_HOST, host.as_str())?;
            // An HTTP/2 client sends only `:authority`; an HTTP/1.1 upstream needs `Host`.
            if upstream_request.headers.get(http::header::HOST).is_none() {
                upstream_request.insert_header(http::header::HOST, host.as_str())?;
            }
        }
        if let Some(span) = &ctx.span {
            span.inject(upstream_request);
        }
        if let (Some(snapshot), Some(route)) = (&ctx.snapshot, ctx.route) {
            snapshot.routes[route]
                .request_headers
                .apply(upstream_request)?;
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
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
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
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(snapshot), Some(route)) = (&ctx.snapshot, ctx.route) {
            snapshot.routes[route]
                .response_headers
                .apply(upstream_response)?;
        }
        if let Some((limiter, decision)) = &ctx.rate_limit_headers {
            upstream_response
                .insert_header(limit::RATELIMIT_POLICY, limiter.policy_header().clone())?;
            upstream_response.insert_header(limit::RATELIMIT, limiter.state_header(decision))?;
        }
        Ok(())
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
        if status > 0 && session.response_written().is_none() {
            let written = match reason {
                Some(reason) => {
                    let extra = ctx.overflow.map(overflow_header).unwrap_or_default();
                    respond_with_reason(session, status, reason, &extra, true).await
                }
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
        ctx.end_request();
        if let Some(stream) = session
            .as_downstream()
            .stream()
            .and_then(HeadTimedStream::of)
        {
            stream.request_done();
        }
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
        if let Some(route_index) = ctx.route {
            let route_state = &snapshot.routes[route_index];
            route_state.in_flight.dec();
            let traffic = ctx
                .split
                .and_then(|split| route_state.traffic.get(split))
                .unwrap_or(&route_state.gateway_traffic);
            traffic
                .duration
                .observe(ctx.started.elapsed().as_secs_f64());
            let downstream = session.as_downstream();
            traffic
                .request_bytes
                .inc_by(downstream.body_bytes_read() as u64);
            traffic
                .response_bytes
                .inc_by(downstream.body_bytes_sent() as u64);
        }
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

        let header = session.req_header();
        let host = request_host(header);
        let client = ctx.client_ip.or_else(|| client_ip(session));
        let span = ctx.span.take();
        let trace_id = span.as_ref().map(RequestSpan::trace_id);
        if let Some(span) = span {
            span.finish(
                header,
                &SpanEnd {
                    route: non_empty(route),
                    upstream: non_empty(upstream),
                    endpoint: ctx.last_endpoint,
                    host,
                    status,
                    reason: non_empty(reason),
                    retries: ctx.retries,
                    client,
                    identity: ctx.identity(),
                },
            );
        }

        if let Some(log) = self.telemetry.access_log().as_ref() {
            let downstream = session.as_downstream();
            let record = AccessRecord {
                time: Shown(humantime::format_rfc3339_millis(
                    std::time::SystemTime::now(),
                )),
                listener: non_empty(listener),
                route: non_empty(route),
                upstream: non_empty(upstream),
                endpoint: ctx.last_endpoint.map(Shown),
                method: header.method.as_str(),
                host,
                path: header.uri.path(),
                query: header.uri.query(),
                protocol: if downstream.is_http2() {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                status,
                reason: non_empty(reason),
                request_bytes: downstream.body_bytes_read() as u64,
                response_bytes: downstream.body_bytes_sent() as u64,
                duration_ms: millis(ctx.started.elapsed()),
                upstream_ms: ctx.upstream_time.map(millis),
                retries: ctx.retries,
                client: client.map(Shown),
                identity: ctx.identity(),
                trace_id: trace_id.or_else(|| crate::telemetry::trace::caller_trace_id(header)),
                rate_limit: (ctx.rate_limit != "-").then_some(ctx.rate_limit),
            };
            // A record is 350 to 500 bytes: one allocation, not a series of regrowths.
            let mut line = Vec::with_capacity(512);
            match serde_json::to_writer(&mut line, &record) {
                Ok(()) => log.log(String::from_utf8(line).unwrap_or_default()),
                Err(e) => tracing::debug!("access log record not written: {e}"),
            }
        }
    }
}

/// One access log line: a JSON object per request.
#[derive(serde::Serialize)]
struct AccessRecord<'a> {
    time: Shown<humantime::Rfc3339Timestamp>,
    listener: Option<&'a str>,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    endpoint: Option<Shown<std::net::SocketAddr>>,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    protocol: &'static str,
    status: u16,
    reason: Option<&'a str>,
    request_bytes: u64,
    response_bytes: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    retries: u32,
    client: Option<Shown<IpAddr>>,
    identity: Option<&'a str>,
    trace_id: Option<String>,
    rate_limit: Option<&'static str>,
}

/// A value written into the JSON as its `Display` text, without an intermediate `String`.
struct Shown<T>(T);

impl<T: std::fmt::Display> serde::Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

impl MeshProxy {
    /// Decides whether a failed try is retried, and if so takes the retry from the route's
    /// budget and the upstream's breaker. `sent` is whether the request already went out.
    /// A retry of a request that never reached an upstream (`sent == false`) moves the
    /// request rather than adding work, so it does not draw on the budget; `attempts` and
    /// `max_retries` still bound it.
    fn take_retry(&self, session: &Session, ctx: &mut RequestCtx, sent: bool) -> bool {
        let Some(snapshot) = ctx.snapshot.clone() else {
            return false;
        };
        let Some(route_index) = ctx.route else {
            return false;
        };
        let Some(retry) = snapshot.policy.routes[route_index].retry.as_ref() else {
            return false;
        };
        if ctx.retries >= retry.retries {
            return false;
        }
        if sent && !retry.non_idempotent && !session.req_header().method.is_idempotent() {
            return false;
        }
        if session.as_ref().retry_buffer_truncated() {
            return false;
        }
        if ctx
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return false;
        }
        let Some(upstream) = ctx.upstream_state().cloned() else {
            return false;
        };
        if sent
            && !snapshot.routes[route_index]
                .retry_budget
                .try_retry(retry.budget_percent, retry.min_retries_per_second)
        {
            return false;
        }
        if !upstream.admit_retry() {
            return false;
        }
        ctx.held_retries += 1;
        ctx.retries += 1;
        self.telemetry
            .metrics
            .retries_total
            .with_label_values(&[snapshot.policy.routes[route_index].name.as_str()])
            .inc();
        true
    }
}

/// Waits `pause`, or fails early when the client closes its connection meanwhile, so that no
/// retry is started for a client that has gone.
async fn client_gone_during(session: &mut Session, pause: std::time::Duration) -> Result<()> {
    let downstream = session.as_downstream_mut();
    if !downstream.is_body_done() {
        // Reading would consume the body; the retry buffer holds what the next try sends.
        tokio::time::sleep(pause).await;
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => Ok(()),
        gone = downstream.read_body_or_idle(true) => match gone {
            Err(mut e) => {
                e.as_down();
                Err(e)
            }
            // Pipelined bytes are kept for the next request; keep waiting out the pause.
            Ok(_) => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
        },
    }
}

fn refuse_overflow(ctx: &mut RequestCtx, overflow: Overflow) -> Result<Box<HttpPeer>> {
    ctx.reason = Some(Reason::Overflow);
    ctx.overflow = Some(overflow);
    Error::e_explain(
        ErrorType::HTTPStatus(Reason::Overflow.status()),
        "the upstream's circuit breaker is full",
    )
}
