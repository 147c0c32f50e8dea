//! `request_filter` as a list of named steps. Each step either lets the request go on or
//! returns the [`Answer`] the gateway gives instead:
//!
//! | step | answer |
//! |---|---|
//! | strip identity headers, normalize the path | `400 bad-path` |
//! | match a route | `404 no-route` |
//! | answer a CORS preflight (`cors`) | `204` |
//! | check the declared body size | `413 body-too-large` |
//! | check the bearer token (`jwt`) | `401 jwt-invalid` |
//! | authorize the caller | `403 forbidden` |
//! | rate limit | `429 rate-limited`, `503 rate-limit-unavailable` |
//! | fault injection | `abort_status fault-abort` |
//! | choose the split, admit to the upstream's breaker | `503 overflow` |

use std::net::IpAddr;
use std::sync::Arc;

use meshgate_policy::compiled::{Route, StoreErrorAction};
use meshgate_policy::direct::DirectAnswer;
use meshgate_policy::jwt::Jwt;
use meshgate_policy::CompiledPolicy;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::auth::{JwtVerifier, Verdict};
use crate::limit::{self, KeySource, LimitOutcome, RateLimiter};
use crate::snapshot::Snapshot;
use crate::upstream::Overflow;

use super::answer::{overflow_header, respond, Answered};
use super::context::RequestCtx;
use super::request::{request_host, HeaderView};
use super::{client_ip, cors, hygiene, split, MeshProxy, Reason};

/// A response the gateway gives instead of proxying.
pub(super) struct Answer {
    reason: Reason,
    status: u16,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A body and its content type (`respond`); empty otherwise. Boxed: refusals, the
    /// common answers, carry none, and the error type stays small.
    body: Option<Box<(bytes::Bytes, http::HeaderValue)>>,
    /// What went wrong, for the body of a refusal.
    detail: Option<std::borrow::Cow<'static, str>>,
    /// Whether the connection ends with this answer.
    close: bool,
}

impl Answer {
    /// The answer for `reason`, with its usual status.
    fn of(reason: Reason) -> Answer {
        Answer {
            reason,
            status: reason.status(),
            headers: Vec::new(),
            body: None,
            detail: None,
            close: false,
        }
    }

    fn with_headers(mut self, headers: Vec<(http::HeaderName, http::HeaderValue)>) -> Answer {
        self.headers = headers;
        self
    }

    /// Records the reason and writes the answer.
    pub(super) async fn send(self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        ctx.reason = Some(self.reason);
        // A route's own answers are meant: they carry no `x-meshgate-reason`.
        let shown = (!self.reason.is_routes_own()).then_some(self.reason);
        let mut headers = self.headers;
        if self.reason != Reason::CorsPreflight {
            // A browser reads a refusal (429, 403…) only with the CORS headers.
            let cors = ctx
                .snapshot
                .as_ref()
                .zip(ctx.route)
                .and_then(|(snapshot, route)| snapshot.policy.routes[route].cors.as_ref());
            if let Some(cors) = cors {
                headers.extend(cors::response_headers(cors, session.req_header()));
            }
        }
        let answered = Answered {
            status: self.status,
            reason: shown,
            detail: self.detail.as_deref(),
            request_id: ctx.request_id.as_ref(),
            closing: self.close,
        };
        respond(session, &answered, &headers, self.body.map(|b| *b)).await?;
        if self.close {
            session.set_keepalive(None);
        }
        Ok(())
    }
}

impl MeshProxy {
    /// Runs the steps of `request_filter` in order.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), Answer> {
        // The steps read the snapshot while they write the context: take it out for them and
        // put it back, rather than clone its `Arc` (a refcount every worker thread shares).
        let snapshot = ctx.snapshot.take().expect("set in early_request_filter");
        let admitted = self.admit_on(&snapshot, session, ctx).await;
        ctx.snapshot = Some(snapshot);
        admitted
    }

    async fn admit_on(
        &self,
        snapshot: &Snapshot,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), Answer> {
        let header = session.req_header_mut();
        // Whatever route the request takes, and whether or not that route sets them. One pass
        // over the request's names, each compared with the few the gateway sets, costs less
        // than hashing every protected name for a lookup; a request rarely carries any.
        let gateway_headers = &snapshot.gateway_headers;
        if header
            .headers
            .keys()
            .any(|name| gateway_headers.contains(name))
        {
            for name in gateway_headers {
                // A removal looks in two maps: only for names the request has.
                if header.headers.contains_key(name) {
                    header.remove_header(name);
                }
            }
        }
        self.head_limits
            .normalize(header)
            .map_err(|_| Answer::of(Reason::BadPath))?;
        // The client's address (after `trusted_proxies`) is a match condition (`source`).
        let peer = client_ip(session).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let client =
            limit::client_address(peer, session.req_header(), &snapshot.policy.trusted_proxies);
        ctx.client_ip = Some(client);
        let route_index = ctx
            .listener
            .and_then(|listener| {
                let view = HeaderView(session.req_header(), Some(client));
                snapshot.policy.match_route(listener, &view)
            })
            .ok_or_else(|| Answer::of(Reason::NoRoute))?;
        // From here the request counts as in flight on its route until `logging`.
        ctx.route = Some(route_index);
        snapshot.routes[route_index].in_flight.inc();
        let route = &snapshot.policy.routes[route_index];
        if let Some(cors) = &route.cors {
            // Before authorization and limits: a browser sends a preflight without credentials.
            if cors::is_preflight(session.req_header()) {
                let (headers, allowed) = cors::preflight_answer(cors, session.req_header());
                self.telemetry
                    .metrics
                    .cors_preflights
                    .with_label_values(&[
                        route.name.as_str(),
                        if allowed { "allowed" } else { "refused" },
                    ])
                    .inc();
                return Err(Answer::of(Reason::CorsPreflight).with_headers(headers));
            }
        }
        check_declared_body(route, session)?;
        ctx.deadline = route.timeout.map(|t| ctx.started + t);
        if route.retry.is_some() {
            snapshot.routes[route_index].retry_budget.record_request();
            // Keep the request body (up to Pingora's retry buffer) so a retry can send it again.
            session.as_mut().enable_retry_buffering();
        }
        if let (Some(verifier), Some(jwt)) = (&snapshot.routes[route_index].jwt, &route.jwt) {
            check_token(verifier, jwt, session, ctx)?;
        }
        if !authorized(route, &snapshot.policy, ctx) {
            self.telemetry
                .metrics
                .authz_denied
                .with_label_values(&[route.name.as_str()])
                .inc();
            return Err(Answer::of(Reason::Forbidden));
        }
        if let Some(limiter) = &snapshot.routes[route_index].rate_limiter {
            rate_limit(limiter, snapshot, session, ctx).await?;
        }
        inject_fault(route).await?;
        if let Some(direct) = &route.direct {
            return Err(direct_answer(direct, session, ctx));
        }
        let slot = split::slot(snapshot, route_index, session, ctx);
        split::choose(snapshot, route_index, slot, ctx, &self.telemetry.metrics)
            .map_err(overflow_answer)
    }
}

/// Whether the caller may use the route: the route's `allow` list when it has one, else the
/// listener's `default_authz`.
fn authorized(route: &Route, policy: &CompiledPolicy, ctx: &RequestCtx) -> bool {
    match &route.allow {
        Some(patterns) => patterns.iter().any(|pattern| {
            ctx.identity().is_some_and(|id| pattern.matches(id))
                || ctx
                    .jwt_claims
                    .as_deref()
                    .is_some_and(|claims| pattern.matches_claims(claims))
        }),
        None => ctx.listener.is_none_or(|l| {
            policy.listeners[l].default_authz == meshgate_policy::compiled::DefaultAuthz::Allow
        }),
    }
}

/// Checks the route's bearer token: a valid one's claims go to the context (for `allow`) and,
/// as `forward_claims` says, upstream in headers, whose incoming copies were removed on
/// every route ([`Snapshot::gateway_headers`]).
fn check_token(
    verifier: &JwtVerifier,
    jwt: &Jwt,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), Answer> {
    let header = session.req_header_mut();
    let why = match verifier.verify(header) {
        Verdict::Valid(claims) => {
            for (claim, name) in &jwt.forward_claims {
                let value = claims.get(claim).map(crate::auth::claim_text);
                if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                    let _ = header.insert_header(name.clone(), value);
                }
            }
            if !jwt.forward_token {
                header.remove_header(&http::header::AUTHORIZATION);
            }
            ctx.jwt_claims = Some(claims);
            return Ok(());
        }
        Verdict::Anonymous => return Ok(()),
        Verdict::Missing => None,
        Verdict::Invalid(why) => Some(why),
    };
    // RFC 6750 §3: a request without a token gets the scheme alone, a bad token the error.
    let challenge = match &why {
        None => http::HeaderValue::from_static("Bearer realm=\"meshgate\""),
        Some(why) => http::HeaderValue::from_str(&format!(
            "Bearer realm=\"meshgate\", error=\"invalid_token\", error_description=\"{why}\""
        ))
        .unwrap_or(http::HeaderValue::from_static(
            "Bearer realm=\"meshgate\", error=\"invalid_token\"",
        )),
    };
    let mut answer = Answer::of(Reason::JwtInvalid)
        .with_headers(vec![(http::header::WWW_AUTHENTICATE, challenge)]);
    answer.detail = Some(why.unwrap_or(std::borrow::Cow::Borrowed("no bearer token")));
    Err(answer)
}

/// `413` when `Content-Length` is over the route's `max_request_body`. The body is not read,
/// so the connection cannot carry another request.
fn check_declared_body(route: &Route, session: &Session) -> Result<(), Answer> {
    let Some(limit) = route.max_request_body else {
        return Ok(());
    };
    if hygiene::declared_body_length(session.req_header()).is_some_and(|n| n > limit) {
        let mut answer = Answer::of(Reason::BodyTooLarge);
        answer.close = true;
        return Err(answer);
    }
    Ok(())
}

async fn rate_limit(
    limiter: &Arc<RateLimiter>,
    snapshot: &Snapshot,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<(), Answer> {
    let source = KeySource {
        client_ip: ctx
            .client_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        identity: ctx.identity(),
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
            Ok(())
        }
        LimitOutcome::ShadowRefused(_) | LimitOutcome::StoreFailed(StoreErrorAction::Allow) => {
            Ok(())
        }
        LimitOutcome::Refused(decision) => Err(Answer::of(Reason::RateLimited).with_headers(vec![
            (
                http::header::RETRY_AFTER,
                http::HeaderValue::from(limit::retry_after_seconds(&decision)),
            ),
            (limit::RATELIMIT_POLICY, limiter.policy_header().clone()),
            (limit::RATELIMIT, limiter.state_header(&decision)),
        ])),
        LimitOutcome::StoreFailed(StoreErrorAction::Deny) => {
            Err(Answer::of(Reason::RateLimitUnavailable).with_headers(vec![(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(1u32),
            )]))
        }
    }
}

async fn inject_fault(route: &Route) -> Result<(), Answer> {
    let Some(fault) = &route.fault else {
        return Ok(());
    };
    let roll = || rand::random::<f64>() * 100.0;
    if let Some((status, percent)) = fault.abort {
        if roll() < percent {
            let mut answer = Answer::of(Reason::FaultAbort);
            answer.status = status;
            return Err(answer);
        }
    }
    if let Some((delay, percent)) = fault.delay {
        if roll() < percent {
            tokio::time::sleep(delay).await;
        }
    }
    Ok(())
}

/// A route's `redirect` or `respond`.
fn direct_answer(direct: &DirectAnswer, session: &Session, ctx: &RequestCtx) -> Answer {
    match direct {
        DirectAnswer::Redirect(redirect) => {
            let header = session.req_header();
            let scheme = if ctx.tls.is_some() { "https" } else { "http" };
            let host = request_host(header).unwrap_or_default();
            let location = redirect.location(scheme, host, header.uri.path(), header.uri.query());
            let mut answer = Answer::of(Reason::Redirect);
            answer.status = redirect.status;
            // Built from a validated policy and a parsed request head.
            if let Ok(value) = http::HeaderValue::from_str(&location) {
                answer.headers.push((http::header::LOCATION, value));
            }
            answer
        }
        DirectAnswer::Respond(respond) => {
            let mut answer = Answer::of(Reason::Respond);
            answer.status = respond.status;
            let content_type = http::HeaderValue::from_str(&respond.content_type)
                .unwrap_or(http::HeaderValue::from_static("text/plain"));
            answer.body = Some(Box::new((
                bytes::Bytes::from(respond.body.clone()),
                content_type,
            )));
            answer
        }
    }
}

fn overflow_answer(overflow: Overflow) -> Answer {
    Answer::of(Reason::Overflow).with_headers(overflow_header(overflow))
}
