//! A route's `mirror`: a copy of a chosen request (with its body, up to the retry buffer's
//! size) goes to the mirror's upstream in a task of its own, with `x-meshgate-mirror: 1`. The
//! copy is the request as the primary upstream gets it (after the route's header rules,
//! rewrite, hop-by-hop stripping and forwarding headers), made when the first upstream request
//! is, so a request answered by the gateway itself is not copied. Its
//! answer is read and dropped. Nothing of it reaches the main request: not its time, its
//! failure or its answer. Copies in flight are bounded per mirror entry; copies over the
//! bound, or whose body is too large to keep, are dropped and counted.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::upstream::UpstreamState;

/// The header that marks a copy.
pub const MIRROR_HEADER: &str = "x-meshgate-mirror";

/// Largest request body copied: Pingora's retry buffer.
const MAX_BODY: usize = 64 * 1024;

/// The longest a copy may take, connection included, when its route sets no timeout.
const DEFAULT_LIMIT: Duration = Duration::from_secs(30);

/// The runtime state of one mirror entry of a route.
#[derive(Debug)]
pub struct MirrorState {
    /// Copies in flight.
    in_flight: Arc<AtomicU32>,
    /// `meshgate_mirror_dropped_total{route,upstream}`.
    dropped: prometheus::IntCounter,
}

impl MirrorState {
    /// The state of a mirror whose drops count in `dropped`.
    pub fn new(dropped: prometheus::IntCounter) -> MirrorState {
        MirrorState {
            in_flight: Arc::new(AtomicU32::new(0)),
            dropped,
        }
    }

    /// A place among the copies in flight, or `None` (counted as a drop) when all `max` are
    /// taken.
    fn reserve(&self, max: u32) -> Option<InFlightSlot> {
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return None;
        }
        Some(InFlightSlot(Arc::clone(&self.in_flight)))
    }
}

/// A copy's place among those in flight, given back when dropped.
#[derive(Debug)]
struct InFlightSlot(Arc<AtomicU32>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A copy waiting for the request's body.
pub struct PendingCopy {
    header: RequestHeader,
    body: BytesMut,
    upstream: Arc<UpstreamState>,
    slot: InFlightSlot,
    dropped: prometheus::IntCounter,
    limit: Duration,
}

/// What a copy is sent with.
pub struct CopyTarget<'a> {
    /// The mirror entry's state.
    pub state: &'a MirrorState,
    /// Its `max_in_flight`.
    pub max_in_flight: u32,
    /// Its upstream.
    pub upstream: Arc<UpstreamState>,
    /// The route's request timeout, if any.
    pub timeout: Option<Duration>,
}

/// Starts a copy of `header` to `target`: sent now when the request has no body, else
/// returned to collect the body first. `None` when the copy was dropped or sent.
pub fn start_copy(
    connector: &Arc<Connector>,
    target: CopyTarget<'_>,
    header: &RequestHeader,
    request_id: Option<&http::HeaderValue>,
    has_body: bool,
) -> Option<PendingCopy> {
    let slot = target.state.reserve(target.max_in_flight)?;
    let mut header = header.clone();
    // The copy is marked, so the mirror's service can tell it from real traffic.
    header.insert_header(MIRROR_HEADER, "1").ok()?;
    if has_body
        && !header.headers.contains_key(http::header::CONTENT_LENGTH)
        && !header.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        // Hop-by-hop stripping took the client's framing; Pingora frames the primary
        // request again after this filter, and the copy is framed the same way.
        header
            .insert_header(http::header::TRANSFER_ENCODING, "chunked")
            .ok()?;
    }
    if let Some(id) = request_id {
        header
            .insert_header(super::request_id::REQUEST_ID_HEADER, id.clone())
            .ok()?;
    }
    let copy = PendingCopy {
        header,
        body: BytesMut::new(),
        upstream: target.upstream,
        slot,
        dropped: target.state.dropped.clone(),
        limit: target.timeout.unwrap_or(DEFAULT_LIMIT),
    };
    if has_body {
        return Some(copy);
    }
    copy.send(connector);
    None
}

impl PendingCopy {
    /// Adds a chunk of the request body; `false` (the copy dropped and counted) when the body
    /// grew past the retry buffer.
    pub fn add_body(&mut self, chunk: &[u8]) -> bool {
        if self.body.len() + chunk.len() > MAX_BODY {
            self.dropped.inc();
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }

    /// Sends the copy in a task of its own.
    pub fn send(self, connector: &Arc<Connector>) {
        let connector = Arc::clone(connector);
        tokio::spawn(async move {
            let PendingCopy {
                header,
                body,
                upstream,
                slot,
                limit,
                ..
            } = self;
            let _slot = slot;
            let Some(endpoint) = upstream.acquire(None) else {
                return;
            };
            let mut peer = endpoint.peer.clone();
            if let Some(tls) = &upstream.tls {
                let material = tls.material();
                peer.options.ca = material.ca.clone();
                peer.client_cert_key = material.client_cert.clone();
                peer.group_key = material.group_key();
            }
            let exchange = async {
                let (mut http, _reused) = connector.get_http_session(&peer).await?;
                http.write_request_header(Box::new(header)).await?;
                if !body.is_empty() {
                    http.write_request_body(body.freeze(), true).await?;
                }
                http.finish_request_body().await?;
                http.read_response_header().await?;
                // Read to the end so that the connection can be pooled.
                while http.read_response_body().await?.is_some() {}
                Ok::<_, Box<Error>>(http)
            };
            match tokio::time::timeout(limit, exchange).await {
                Ok(Ok(http)) => {
                    connector
                        .release_http_session(http, &peer, Some(upstream.spec.idle_timeout))
                        .await
                }
                Ok(Err(e)) => tracing::debug!("mirror copy to {} failed: {e}", upstream.spec.name),
                Err(_) => tracing::debug!("mirror copy to {} timed out", upstream.spec.name),
            }
            upstream.release(&endpoint);
        });
    }
}

impl super::MeshProxy {
    /// Rolls each of the route's mirrors and starts the copies chosen, each a copy of
    /// `upstream_request`, the request as the primary upstream gets it.
    pub(super) fn start_mirrors(
        &self,
        session: &mut pingora::proxy::Session,
        upstream_request: &RequestHeader,
        ctx: &mut super::context::RequestCtx,
    ) {
        let (Some(snapshot), Some(route_index)) = (ctx.snapshot.as_ref(), ctx.route) else {
            return;
        };
        let route = &snapshot.policy.routes[route_index];
        if route.mirrors.is_empty() {
            return;
        }
        let has_body = !session.as_mut().is_body_empty();
        for (mirror, state) in route
            .mirrors
            .iter()
            .zip(&snapshot.routes[route_index].mirrors)
        {
            if rand::random::<f64>() * 100.0 >= mirror.percent {
                continue;
            }
            let target = CopyTarget {
                state,
                max_in_flight: mirror.max_in_flight,
                upstream: Arc::clone(&snapshot.upstreams[mirror.upstream]),
                timeout: route.timeout,
            };
            let id = ctx.request_id.as_ref();
            if let Some(copy) = start_copy(
                &self.mirror_connector,
                target,
                upstream_request,
                id,
                has_body,
            ) {
                ctx.mirror_copies.push(copy);
            }
        }
    }
}
