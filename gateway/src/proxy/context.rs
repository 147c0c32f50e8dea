//! Per-request state, carried through the phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::lifecycle::RequestInFlight;
use crate::limit::{self, RateLimiter};
use crate::snapshot::Snapshot;
use crate::telemetry::RequestSpan;
use crate::tls::PeerTls;
use crate::upstream::{breaker_give_back, EndpointState, Overflow, UpstreamState};

use super::Reason;

/// Per-request state.
pub struct RequestCtx {
    pub(super) snapshot: Option<Arc<Snapshot>>,
    pub(super) started: Instant,
    pub(super) listener: Option<usize>,
    pub(super) route: Option<usize>,
    pub(super) upstream: Option<usize>,
    /// Index of the chosen split in the route.
    pub(super) split: Option<usize>,
    /// The endpoint whose in-flight count this request holds.
    pub(super) endpoint: Option<Arc<EndpointState>>,
    /// Address of the last endpoint chosen, for the access log.
    pub(super) last_endpoint: Option<std::net::SocketAddr>,
    pub(super) reason: Option<Reason>,
    /// Status of a response the gateway wrote itself after a failure.
    pub(super) error_status: u16,
    /// When the route's request timeout runs out.
    pub(super) deadline: Option<Instant>,
    /// Retries taken so far.
    pub(super) retries: u32,
    /// Tries started (calls of `upstream_peer`).
    pub(super) tries: u32,
    /// Whether this request holds a unit of the upstream's `active_requests`.
    pub(super) holds_request: bool,
    /// Units of the upstream's `active_retries` this request holds.
    pub(super) held_retries: u32,
    /// Whether the current try waits for a connection (`pending`).
    pub(super) holds_pending: bool,
    /// Whether the current try uses a connection (`active_connections`).
    pub(super) holds_connection: bool,
    /// The breaker limit that refused the request.
    pub(super) overflow: Option<Overflow>,
    /// The endpoint of the previous try, avoided by a retry.
    pub(super) previous_endpoint: Option<std::net::SocketAddr>,
    /// Set when `upstream_response_filter` turned a response into a retry.
    pub(super) retry_on_status: bool,
    /// The client's address after `trusted_proxies`.
    pub(super) client_ip: Option<IpAddr>,
    /// What the route's rate limit said, for the access log.
    pub(super) rate_limit: &'static str,
    /// The `RateLimit` headers to add to an admitted response.
    pub(super) rate_limit_headers: Option<(Arc<RateLimiter>, limit::Decision)>,
    /// The downstream TLS connection's digest, when it is TLS.
    pub(super) tls: Option<Arc<pingora::protocols::tls::SslDigest>>,
    /// When the current try asked for a connection.
    pub(super) try_started: Option<Instant>,
    /// From the last try's start to the upstream's response header.
    pub(super) upstream_time: Option<std::time::Duration>,
    /// The request's span, when traces are exported.
    pub(super) span: Option<RequestSpan>,
    /// Request body bytes seen so far, counted against the route's `max_request_body`.
    pub(super) body_bytes: u64,
    /// The path and query sent upstream, when the route's `rewrite` changed them.
    pub(super) upstream_path: Option<String>,
    /// Compresses the response body, when `compress` applies to it.
    pub(super) compressor: Option<super::compress::Compressor>,
    /// The claims of the request's verified bearer token.
    pub(super) jwt_claims: Option<Arc<crate::auth::Claims>>,
    /// Copies for the route's mirrors, waiting for the request body.
    pub(super) mirror_copies: Vec<super::mirror::PendingCopy>,
    /// Whether the route's mirrors were rolled: once per request, on its first upstream
    /// request, however many tries follow.
    pub(super) mirrors_rolled: bool,
    /// The request's `x-request-id`, set in `early_request_filter`.
    pub(super) request_id: Option<http::HeaderValue>,
    /// Counts the request as being served, so that a drain waits for it.
    pub(super) _in_flight: RequestInFlight,
}

impl RequestCtx {
    /// A new request's state, before any phase ran.
    pub(super) fn new(in_flight: RequestInFlight) -> RequestCtx {
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
            request_id: None,
            compressor: None,
            mirror_copies: Vec::new(),
            mirrors_rolled: false,
            jwt_claims: None,
            upstream_path: None,
            _in_flight: in_flight,
        }
    }

    /// What the TLS handshake learned of the caller.
    pub(super) fn peer_tls(&self) -> Option<&PeerTls> {
        self.tls.as_ref()?.extension.get::<PeerTls>()
    }

    /// The caller's certificate identity.
    pub(super) fn identity(&self) -> Option<&str> {
        self.peer_tls()?.identity.as_deref()
    }
}

impl RequestCtx {
    pub(super) fn upstream_state(&self) -> Option<&Arc<UpstreamState>> {
        Some(&self.snapshot.as_ref()?.upstreams[self.upstream?])
    }

    /// Ends the current try: gives back its endpoint, pending and connection units.
    pub(super) fn end_try(&mut self) {
        let Some(upstream) = self.upstream_state().cloned() else {
            return;
        };
        if let Some(endpoint) = self.endpoint.take() {
            upstream.release(&endpoint);
            self.previous_endpoint = Some(endpoint.addr);
        }
        if std::mem::take(&mut self.holds_pending) {
            breaker_give_back(&upstream.breaker.pending);
        }
        if std::mem::take(&mut self.holds_connection) {
            breaker_give_back(&upstream.breaker.active_connections);
        }
    }

    /// Ends the request: the current try and every breaker unit it holds.
    pub(super) fn end_request(&mut self) {
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
    pub(super) fn report(&self, success: bool) {
        if let (Some(upstream), Some(endpoint)) = (self.upstream_state(), &self.endpoint) {
            upstream.report_outcome(endpoint, success);
        }
    }
}
