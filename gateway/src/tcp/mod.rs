//! TCP proxying: `tcp` listeners (TLS terminated first when they have `[listeners.tls]`) and
//! `tls_passthrough` listeners (routed by the ClientHello's server name, never decrypted),
//! routed by `[[tcp_routes]]` to the same upstreams HTTP uses: their balancing, health,
//! outlier ejection on connect failures, `circuit_breaker.max_connections`, TLS origination
//! and discovery.
//!
//! Each connection reads the running snapshot once, when it opens: a reload never touches an
//! open connection, and the next one follows the new policy.

mod client_hello;
mod metrics;
mod splice;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meshgate_policy::compiled::DefaultAuthz;
use meshgate_policy::tcp::{ListenerProtocol, TcpRoute};
use pingora::apps::ServerApp;
use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite};

pub use client_hello::{read_server_name, HelloError};
pub use metrics::TcpMetrics;
pub use splice::{splice, Flow, SpliceEnd};

use crate::lifecycle::Lifecycle;
use crate::limit::{Gcra, LocalBuckets};
use crate::proxy::connection::ConnectionLimit;
use crate::reload::PolicyStore;
use crate::snapshot::Snapshot;
use crate::telemetry::Telemetry;
use crate::tls::PeerTls;
use crate::upstream::{breaker_give_back, EndpointState, UpstreamState};

/// Tries to connect per connection: the first endpoint and two others when connecting fails.
const CONNECT_TRIES: usize = 3;
/// Most client addresses a per-client connection limit tracks.
const LIMIT_KEYS: usize = 100_000;

/// A TCP route's runtime state in a snapshot.
pub struct TcpRouteState {
    /// The next turn in the split schedule.
    cursor: AtomicU64,
    /// The route's connection buckets.
    limiter: Option<(LocalBuckets, bool)>,
    /// The route's byte counters and duration histogram on each listener (by index), looked
    /// up once: a lookup by label values hashes them and takes the family's lock, three
    /// times per connection.
    metrics: Box<[OnceLock<RouteMetrics>]>,
}

/// One route's metric children on one listener.
struct RouteMetrics {
    received: prometheus::IntCounter,
    sent: prometheus::IntCounter,
    duration: prometheus::Histogram,
    /// `result="closed"`, the common end, by upstream index.
    closed: Box<[OnceLock<prometheus::IntCounter>]>,
}

impl RouteMetrics {
    fn new(families: &TcpMetrics, listener: &str, route: &str, upstreams: usize) -> Self {
        RouteMetrics {
            closed: (0..upstreams).map(|_| OnceLock::new()).collect(),
            received: families
                .bytes
                .with_label_values(&[listener, route, "received"]),
            sent: families.bytes.with_label_values(&[listener, route, "sent"]),
            duration: families.duration.with_label_values(&[listener, route]),
        }
    }
}

impl std::fmt::Debug for TcpRouteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRouteState")
            .field("cursor", &self.cursor)
            .field("limited", &self.limiter.is_some())
            .finish()
    }
}

impl TcpRouteState {
    /// Fresh state for `route`, in a policy of `listeners` listeners.
    pub fn new(route: &TcpRoute, listeners: usize) -> Self {
        TcpRouteState {
            cursor: AtomicU64::new(0),
            metrics: (0..listeners).map(|_| OnceLock::new()).collect(),
            limiter: route.rate_limit.as_ref().map(|limit| {
                let gcra = Gcra::new(limit.connections_per_second, limit.burst);
                (
                    LocalBuckets::new(gcra, !limit.per_client, LIMIT_KEYS),
                    limit.per_client,
                )
            }),
        }
    }

    /// Whether a new connection from `client` is under the route's limit.
    fn admit(&self, client: Option<SocketAddr>) -> bool {
        match &self.limiter {
            None => true,
            Some((buckets, true)) => buckets.take(client.map(|c| c.ip())).0.allowed,
            Some((buckets, false)) => buckets.take(()).0.allowed,
        }
    }
}

/// How a connection ended, for its metrics and its access log record.
#[derive(Default)]
struct Outcome {
    listener: Option<usize>,
    route: Option<usize>,
    upstream: Option<usize>,
    endpoint: Option<SocketAddr>,
    sni: Option<String>,
    identity: Option<String>,
    result: &'static str,
    detail: Option<String>,
}

/// One `tcp` or `tls_passthrough` listener's connections.
pub struct TcpApp {
    store: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
    lifecycle: Arc<Lifecycle>,
    limit: Arc<ConnectionLimit>,
    listener: String,
    /// `meshgate_tcp_active_connections` of this listener.
    active: prometheus::IntGauge,
    protocol: ListenerProtocol,
    /// How long a passthrough client has to send its ClientHello.
    hello_timeout: Duration,
    connector: TransportConnector,
}

impl TcpApp {
    /// The application of listener `listener`, which speaks `protocol`.
    pub fn new(
        store: Arc<PolicyStore>,
        telemetry: Arc<Telemetry>,
        lifecycle: Arc<Lifecycle>,
        limit: Arc<ConnectionLimit>,
        listener: &meshgate_policy::compiled::Listener,
        hello_timeout: Duration,
    ) -> Self {
        let active = telemetry
            .metrics
            .tcp
            .active
            .with_label_values(&[listener.name.as_str()]);
        TcpApp {
            store,
            telemetry,
            lifecycle,
            limit,
            active,
            listener: listener.name.clone(),
            protocol: listener.protocol,
            hello_timeout,
            connector: TransportConnector::new(None),
        }
    }
}

#[async_trait]
impl ServerApp for TcpApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.lifecycle.open_connection();
        let _place = self.limit.take_place().await?;
        // Built in its own box: Pingora boxes this future, and with the connection's whole
        // state inline each box copied it (a third of a short connection's instructions).
        crate::proxy::guarded::boxed_in_place(|| self.serve(stream)).await;
        None
    }

    /// Open connections run on through a drain or an upgrade, until they end or the grace
    /// period does.
    async fn cleanup(&self) {}
}

impl TcpApp {
    async fn serve(&self, mut stream: Stream) {
        let socket = stream.get_socket_digest();
        let client = socket
            .as_ref()
            .and_then(|s| s.peer_addr())
            .and_then(|a| a.as_inet())
            .copied();
        if client.is_some_and(|client| self.lifecycle.take_probe(client)) {
            return;
        }
        let started = Instant::now();
        let active = &self.active;
        active.inc();
        let local = socket
            .as_ref()
            .and_then(|s| s.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let snapshot = self.store.snapshot();
        let flow = Flow::default();
        let mut outcome = Outcome::default();
        match local.and_then(|local| snapshot.listener_for(local)) {
            Some(listener) => {
                outcome.listener = Some(listener);
                self.route(
                    &snapshot,
                    listener,
                    &mut stream,
                    client,
                    &flow,
                    &mut outcome,
                )
                .await
            }
            None => outcome.result = "no_route",
        }
        active.dec();
        self.record(&snapshot, client, started, &flow, &outcome);
    }

    /// Routes the connection, connects it and splices it; fills `outcome`.
    async fn route(
        &self,
        snapshot: &Snapshot,
        listener: usize,
        stream: &mut Stream,
        client: Option<SocketAddr>,
        flow: &Flow,
        outcome: &mut Outcome,
    ) {
        let mut replay = Vec::new();
        match self.protocol {
            ListenerProtocol::TlsPassthrough => {
                let read = tokio::time::timeout(self.hello_timeout, read_server_name(stream)).await;
                // The bytes read count as received whether or not they are proxied.
                if let Ok((bytes, _)) = &read {
                    flow.received
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                match read {
                    Ok((bytes, Ok(name))) => {
                        replay = bytes;
                        outcome.sni = Some(name);
                    }
                    Ok((bytes, Err(HelloError::NoServerName))) => replay = bytes,
                    Ok((_, Err(HelloError::NotTls(why)))) => {
                        outcome.result = "bad_handshake";
                        outcome.detail = Some(why);
                        return;
                    }
                    Err(_) => {
                        outcome.result = "bad_handshake";
                        outcome.detail = Some("no ClientHello in time".into());
                        return;
                    }
                }
            }
            _ => {
                if let Some(peer) = stream
                    .get_ssl_digest()
                    .and_then(|d| d.extension.get::<PeerTls>().cloned())
                {
                    outcome.sni = peer.server_name;
                    outcome.identity = peer.identity;
                }
            }
        }
        let policy = &snapshot.policy;
        let Some(route_index) = policy.tcp_route_for(listener, outcome.sni.as_deref()) else {
            outcome.result = "no_route";
            return;
        };
        outcome.route = Some(route_index);
        let route = &policy.tcp_routes[route_index];
        let allowed = match &route.allow {
            Some(patterns) => outcome
                .identity
                .as_deref()
                .is_some_and(|id| patterns.iter().any(|p| p.matches(id))),
            None => policy.listeners[listener].default_authz == DefaultAuthz::Allow,
        };
        if !allowed {
            outcome.result = "denied";
            return;
        }
        let state = &snapshot.tcp_routes[route_index];
        if !state.admit(client) {
            outcome.result = "rate_limited";
            return;
        }
        let slot = state.cursor.fetch_add(1, Ordering::Relaxed) as usize;
        let planned =
            route.splits[route.split_schedule[slot % route.split_schedule.len()] as usize].upstream;
        let Some(upstream_index) = crate::proxy::split::target(snapshot, planned) else {
            outcome.upstream = Some(planned);
            // An upstream (and every failover) with eligible endpoints but no room under its
            // breaker's limits is an overflow, as a refused admission is.
            let pool = &snapshot.upstreams[planned];
            outcome.result = if pool.has_eligible() {
                pool.breaker.overflows.fetch_add(1, Ordering::Relaxed);
                "overflow"
            } else {
                "no_endpoint"
            };
            return;
        };
        outcome.upstream = Some(upstream_index);
        let pool = &snapshot.upstreams[upstream_index];
        if pool.admit_tcp_connection().is_err() {
            outcome.result = "overflow";
            return;
        }
        let connected = self.connect(pool, client, outcome).await;
        if let Some((endpoint, upstream)) = connected {
            if !replay.is_empty() {
                // The ClientHello read for its server name goes first.
                let mut upstream = upstream;
                let written = tokio::io::AsyncWriteExt::write_all(&mut upstream, &replay).await;
                outcome.result = match written {
                    Ok(()) => splice(&mut *stream, upstream, route.idle_timeout, flow)
                        .await
                        .as_str(),
                    Err(_) => SpliceEnd::Reset.as_str(),
                };
            } else {
                outcome.result = splice(&mut *stream, upstream, route.idle_timeout, flow)
                    .await
                    .as_str();
            }
            pool.release(&endpoint);
        }
        breaker_give_back(&pool.breaker.active_connections);
    }

    /// Connects to an endpoint of `pool`, trying others when connecting fails; each failure
    /// counts for outlier detection. `None` (with `outcome` saying why) when every try failed.
    async fn connect(
        &self,
        pool: &UpstreamState,
        client: Option<SocketAddr>,
        outcome: &mut Outcome,
    ) -> Option<(Arc<EndpointState>, Box<dyn Upstream>)> {
        // `consistent_hash` keeps a client on its endpoint: the key is its address.
        let hash_input = client.map(|c| match c.ip() {
            std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(ip) => ip.octets(),
        });
        for _ in 0..CONNECT_TRIES {
            let Some(endpoint) = pool.acquire(hash_input.as_ref().map(|key| &key[..])) else {
                outcome.result = "no_endpoint";
                return None;
            };
            outcome.endpoint = Some(endpoint.addr);
            let connect_started = Instant::now();
            let connected: Result<Box<dyn Upstream>, String> = match &pool.tls {
                None => tokio::time::timeout(
                    pool.spec.connect_timeout,
                    tokio::net::TcpStream::connect(endpoint.addr),
                )
                .await
                .map_err(|_| format!("no connection within {:?}", pool.spec.connect_timeout))
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    Box::new(tcp) as Box<dyn Upstream>
                }),
                Some(tls) => {
                    let mut peer = endpoint.peer.clone();
                    let material = tls.material();
                    peer.options.ca = material.ca.clone();
                    peer.client_cert_key = material.client_cert.clone();
                    self.connector
                        .new_stream(&peer)
                        .await
                        .map(|s| Box::new(s) as Box<dyn Upstream>)
                        .map_err(|e| e.to_string())
                }
            };
            pool.connect_duration
                .observe(connect_started.elapsed().as_secs_f64());
            match connected {
                Ok(upstream) => {
                    pool.connections[0].inc();
                    pool.report_outcome(&endpoint, true);
                    return Some((endpoint, upstream));
                }
                Err(why) => {
                    tracing::debug!(endpoint = %endpoint.addr, "TCP connect failed: {why}");
                    pool.report_outcome(&endpoint, false);
                    pool.release(&endpoint);
                    outcome.detail = Some(why);
                }
            }
        }
        outcome.result = "connect_failed";
        None
    }

    /// Counts the connection and writes its access log record.
    fn record(
        &self,
        snapshot: &Snapshot,
        client: Option<SocketAddr>,
        started: Instant,
        flow: &Flow,
        outcome: &Outcome,
    ) {
        let metrics = &self.telemetry.metrics.tcp;
        let policy = &snapshot.policy;
        let route = outcome
            .route
            .map_or("", |i| policy.tcp_routes[i].name.as_str());
        let upstream = outcome
            .upstream
            .map_or("", |i| policy.upstreams[i].name.as_str());
        let listener = self.listener.as_str();
        let counted = |result: &str| {
            metrics
                .connections
                .with_label_values(&[listener, route, upstream, result])
        };
        let received = flow.received.load(Ordering::Relaxed);
        let sent = flow.sent.load(Ordering::Relaxed);
        let duration = started.elapsed();
        let children = outcome
            .route
            .zip(outcome.listener)
            .and_then(|(route_index, listener_index)| {
                snapshot.tcp_routes[route_index].metrics.get(listener_index)
            })
            .map(|cell| {
                cell.get_or_init(|| {
                    RouteMetrics::new(metrics, listener, route, snapshot.upstreams.len())
                })
            });
        match (children, outcome.upstream) {
            (Some(children), Some(upstream_index)) if outcome.result == "closed" => {
                match children.closed.get(upstream_index) {
                    Some(cell) => cell.get_or_init(|| counted("closed")).inc(),
                    None => counted("closed").inc(),
                }
            }
            _ => counted(outcome.result).inc(),
        }
        if let Some(children) = children {
            children.received.inc_by(received);
            children.sent.inc_by(sent);
            children.duration.observe(duration.as_secs_f64());
        }
        if let Some(log) = self.telemetry.access_log().as_ref() {
            let record = crate::telemetry::TcpAccessRecord {
                time: crate::telemetry::Shown(humantime::format_rfc3339_millis(
                    std::time::SystemTime::now(),
                )),
                kind: "tcp",
                listener,
                route: crate::telemetry::non_empty(route),
                upstream: crate::telemetry::non_empty(upstream),
                endpoint: outcome.endpoint.map(crate::telemetry::Shown),
                client: client.map(crate::telemetry::Shown),
                sni: outcome.sni.as_deref(),
                identity: outcome.identity.as_deref(),
                received_bytes: received,
                sent_bytes: sent,
                duration_ms: crate::telemetry::millis(duration),
                close: outcome.result,
                detail: outcome.detail.as_deref(),
            };
            if let Ok(line) = serde_json::to_string(&record) {
                log.log(line);
            }
        }
    }
}

/// A connection to an upstream: a plain socket or Pingora's TLS stream.
pub trait Upstream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Upstream for T {}
