//! The gateway's side of the admin API: [`AdminBackend`] over the policy store, the admin
//! listener as a Pingora background service, and the admin token.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meshgate_admin::*;
use meshgate_policy::compiled::{AdminSettings, HostMatch, PathMatch, RequestKey, Verdict};
use meshgate_policy::matching::HeaderTest;
use meshgate_policy::path::normalize_path;
use meshgate_policy::schema::PathNormalization;
use meshgate_policy::RequestView;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::lifecycle::Lifecycle;
use crate::reload::{Origin, PolicyStore};
use crate::telemetry::Telemetry;

/// Implements the admin API over the gateway's state.
pub struct GatewayAdmin {
    store: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
    listeners_up: AtomicBool,
    lifecycle: Arc<Lifecycle>,
}

impl GatewayAdmin {
    /// An admin backend over `store`.
    pub fn new(
        store: Arc<PolicyStore>,
        telemetry: Arc<Telemetry>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        GatewayAdmin {
            store,
            telemetry,
            listeners_up: AtomicBool::new(false),
            lifecycle,
        }
    }
}

struct QueryView<'a>(&'a ExplainQuery);

impl RequestView for QueryView<'_> {
    fn method(&self) -> &str {
        &self.0.method
    }
    fn host(&self) -> Option<&str> {
        self.0.host.as_deref()
    }
    fn path(&self) -> &str {
        self.0.path.split('?').next().unwrap_or("/")
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
    }
    fn query(&self) -> Option<&str> {
        self.0.query.as_deref()
    }
    fn source(&self) -> Option<std::net::IpAddr> {
        self.0.source
    }
}

/// A route's conditions beyond host, path, methods and exact headers, one line each.
fn route_conditions(matcher: &meshgate_policy::compiled::RouteMatcher) -> Vec<String> {
    let mut conditions: Vec<String> = matcher
        .headers
        .iter()
        .filter(|(_, test)| !matches!(test, HeaderTest::Exact(_)))
        .map(|(name, test)| format!("header {name} {}", test.describe()))
        .collect();
    for (name, value) in &matcher.query {
        conditions.push(format!("query {name} = {value:?}"));
    }
    if !matcher.source.is_empty() {
        let blocks: Vec<String> = matcher.source.iter().map(|b| b.to_string()).collect();
        conditions.push(format!("source {}", blocks.join(", ")));
    }
    conditions
}

fn listener_infos(snapshot: &crate::snapshot::Snapshot) -> Vec<ListenerInfo> {
    snapshot
        .listeners
        .states
        .iter()
        .map(|view| ListenerInfo {
            name: view.name.clone(),
            listen: view.listen.to_string(),
            state: view.state.to_owned(),
            on_restart: view.on_restart.clone(),
        })
        .collect()
}

fn describe_key(key: &RequestKey) -> String {
    match key {
        RequestKey::ClientIp => "client_ip".into(),
        RequestKey::Path => "path".into(),
        RequestKey::Header(name) => format!("header:{name}"),
    }
}

/// What the matched route checks of a request before proxying it, one line each.
fn admission_checks(route: &meshgate_policy::compiled::Route) -> Vec<String> {
    let mut checks = Vec::new();
    if let Some(jwt) = &route.jwt {
        checks.push(format!("jwt: {}", jwt.describe()));
    }
    if let Some(allow) = &route.allow {
        let entries: Vec<String> = allow.iter().map(describe_identity_pattern).collect();
        checks.push(format!("allow: {}", entries.join(", ")));
    }
    checks
}

/// An endpoint's last health check and its time (RFC 3339), if it had one.
fn last_check(endpoint: &crate::upstream::EndpointState) -> Option<(String, String)> {
    let last = endpoint
        .last_check
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    last.as_ref().map(|(result, at)| {
        (
            result.clone(),
            humantime::format_rfc3339_seconds(*at).to_string(),
        )
    })
}

/// An `allow` entry as written.
fn describe_identity_pattern(pattern: &meshgate_policy::compiled::IdentityPattern) -> String {
    use meshgate_policy::compiled::IdentityPattern;
    match pattern {
        IdentityPattern::Exact(identity) => identity.clone(),
        IdentityPattern::Prefix(prefix) => format!("{prefix}*"),
        IdentityPattern::JwtSubject(subject) => format!("jwt:sub:{subject}"),
        IdentityPattern::JwtClaim { name, value } => format!("jwt:claim:{name}={value}"),
    }
}

impl AdminBackend for GatewayAdmin {
    fn policy(&self) -> ActivePolicy {
        let (source, hash, version) = self.store.active();
        let restart_required = self
            .store
            .snapshot()
            .listeners
            .restart_required
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        ActivePolicy {
            source,
            hash,
            version,
            restart_required,
        }
    }

    fn apply(&self, source: String, if_match: Option<&str>) -> Result<Applied, ApplyError> {
        self.store.apply(source, Origin::Api, if_match)
    }

    fn validate(&self, source: &str) -> Result<Validated, ApplyError> {
        self.store.validate(source)
    }

    fn dry_run(&self, source: &str) -> Result<meshgate_admin::DryRun, ApplyError> {
        self.store.dry_run(source)
    }

    fn set_endpoint_state(
        &self,
        upstream: &str,
        address: &str,
        state: &str,
        by: &str,
    ) -> Result<(), String> {
        let address: std::net::SocketAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an endpoint address (IP:port)"))?;
        let code = match state {
            "draining" => crate::upstream::ADMIN_DRAINING,
            "disabled" => crate::upstream::ADMIN_DISABLED,
            _ => crate::upstream::ADMIN_ENABLED,
        };
        self.store.set_endpoint_state(upstream, address, code)?;
        tracing::info!(upstream, endpoint = %address, state, by, "endpoint state set");
        Ok(())
    }

    fn reload(&self) -> Result<Applied, ApplyError> {
        self.store.reload_from_file()
    }

    fn rollback(&self, version: Option<u64>) -> Result<Applied, ApplyError> {
        self.store.rollback(version)
    }

    fn history(&self) -> HistoryBody {
        let (entries, active) = self.store.history();
        HistoryBody {
            history: entries
                .into_iter()
                .rev()
                .map(|entry| HistoryItem {
                    active: entry.version == active,
                    version: entry.version,
                    hash: entry.hash,
                    time: entry.time,
                    origin: entry.origin,
                })
                .collect(),
        }
    }

    fn upstreams(&self) -> UpstreamsBody {
        let snapshot = self.store.snapshot();
        let upstreams = snapshot
            .upstreams
            .iter()
            .enumerate()
            .map(|(index, upstream)| UpstreamStatus {
                name: upstream.spec.name.clone(),
                balance: upstream.spec.balance.as_str().into(),
                protocol: match upstream.spec.protocol {
                    meshgate_policy::compiled::UpstreamProtocol::Http1 => "http1".into(),
                    meshgate_policy::compiled::UpstreamProtocol::H2c => "h2c".into(),
                },
                in_flight: upstream.in_flight(),
                circuit_breaker: {
                    let limits = upstream.spec.circuit_breaker;
                    let counters = &upstream.breaker;
                    let active_requests = counters.active_requests.load(Ordering::Relaxed);
                    let pending = counters.pending.load(Ordering::Relaxed);
                    let active_connections = counters.active_connections.load(Ordering::Relaxed);
                    let active_retries = counters.active_retries.load(Ordering::Relaxed);
                    BreakerStatus {
                        open: active_requests >= u64::from(limits.max_requests)
                            || pending >= u64::from(limits.max_pending)
                            || active_connections >= u64::from(limits.max_connections),
                        max_requests: limits.max_requests,
                        max_pending: limits.max_pending,
                        max_connections: limits.max_connections,
                        max_retries: limits.max_retries,
                        active_requests,
                        pending,
                        active_connections,
                        active_retries,
                        overflows_total: counters.overflows.load(Ordering::Relaxed),
                    }
                },
                endpoints: {
                    let set = upstream.endpoints();
                    set.endpoints
                        .iter()
                        .zip(&set.priorities)
                        .zip(&set.zones)
                        .map(|((e, &priority), zone)| EndpointStatus {
                            address: e.addr.to_string(),
                            weight: e.weight(),
                            priority,
                            zone: zone.as_deref().map(str::to_owned),
                            healthy: e.healthy.load(Ordering::Relaxed),
                            ejected: e.ejected.load(Ordering::Relaxed),
                            in_flight: e.in_flight.load(Ordering::Relaxed),
                            requests_total: e.requests_total.load(Ordering::Relaxed),
                            consecutive_failures: e.consecutive_failures.load(Ordering::Relaxed),
                            ejections: e.ejections.load(Ordering::Relaxed),
                            state: crate::upstream::admin_state_name(
                                e.admin_state.load(Ordering::Relaxed),
                            )
                            .to_owned(),
                            last_check: last_check(e).map(|(result, _)| result),
                            last_check_at: last_check(e).map(|(_, at)| at),
                        })
                        .collect()
                },
                failover: snapshot.policy.failover[index]
                    .iter()
                    .map(|&other| snapshot.upstreams[other].spec.name.clone())
                    .collect(),
                discovery: self.store.discovery().views(upstream),
            })
            .collect();
        UpstreamsBody { upstreams }
    }

    fn routes(&self) -> RoutesBody {
        let snapshot = self.store.snapshot();
        let policy = &snapshot.policy;
        let routes = policy
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| RouteInfo {
                name: route.name.clone(),
                listeners: route.listeners.as_ref().map(|indexes| {
                    indexes
                        .iter()
                        .map(|&i| policy.listeners[i].name.clone())
                        .collect()
                }),
                host: route.matcher.host.as_ref().map(|h| match h {
                    HostMatch::Exact(host) => host.clone(),
                    HostMatch::Suffix(suffix) => format!("*{suffix}"),
                }),
                path: route.matcher.path.as_ref().map(|p| match p {
                    PathMatch::Prefix(prefix) => format!("prefix {prefix}"),
                    PathMatch::Exact(exact) => format!("exact {exact}"),
                    PathMatch::Regex(regex) => format!("regex {}", regex.as_str()),
                }),
                methods: route.matcher.methods.clone(),
                headers: route
                    .matcher
                    .headers
                    .iter()
                    .filter_map(|(name, test)| match test {
                        HeaderTest::Exact(value) => Some((name.clone(), value.clone())),
                        _ => None,
                    })
                    .collect(),
                conditions: route_conditions(&route.matcher),
                rewrite: route.rewrite.as_ref().map(|r| r.describe()),
                cors: route.cors.as_ref().map(|c| c.describe()),
                compress: route.compress.as_ref().map(|c| c.describe()),
                mirror: route
                    .mirrors
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {}% max_in_flight {}",
                            policy.upstreams[m.upstream].name, m.percent, m.max_in_flight
                        )
                    })
                    .collect(),
                jwt: route.jwt.as_ref().map(|jwt| {
                    let fetched = snapshot.routes[index]
                        .jwt
                        .as_ref()
                        .and_then(|verifier| verifier.fetched_keys());
                    match fetched {
                        Some(Some(count)) => format!("{} ({count} keys fetched)", jwt.describe()),
                        Some(None) => format!("{} (not fetched yet)", jwt.describe()),
                        None => jwt.describe(),
                    }
                }),
                allow: route
                    .allow
                    .as_ref()
                    .map(|patterns| patterns.iter().map(describe_identity_pattern).collect()),
                split: route
                    .splits
                    .iter()
                    .map(|s| SplitInfo {
                        upstream: policy.upstreams[s.upstream].name.clone(),
                        weight: s.weight,
                    })
                    .collect(),
                split_key: route.split_key.as_ref().map(describe_key),
            })
            .collect();
        RoutesBody {
            routes,
            listeners: listener_infos(&snapshot),
        }
    }

    fn explain(&self, query: &ExplainQuery) -> Result<Explanation, String> {
        let snapshot = self.store.snapshot();
        let policy = &snapshot.policy;
        let listener = match &query.listener {
            Some(name) => Some(
                policy
                    .listener_index(name)
                    .ok_or_else(|| format!("unknown listener {name:?}"))?,
            ),
            None => None,
        };
        // Match what the data plane matches: the normalized path, or nothing for a refused one.
        let given = query.path.split('?').next().unwrap_or("/");
        let strict = policy.server.path_normalization == PathNormalization::Strict;
        let normal = if strict {
            normalize_path(given).map(|p| p.into_owned())
        } else {
            Ok(given.to_owned())
        };
        let (path, refused) = match normal {
            Ok(path) => (path, None),
            Err(bad) => (given.to_owned(), Some(bad.message().to_owned())),
        };
        let normalized_query = ExplainQuery {
            path: path.clone(),
            query: query
                .query
                .clone()
                .or_else(|| query.path.split_once('?').map(|(_, q)| q.to_owned())),
            ..query.clone()
        };
        let verdicts = if refused.is_some() {
            vec![Verdict::NotReached; policy.routes.len()]
        } else {
            policy.explain(listener, &QueryView(&normalized_query))
        };
        let matched = verdicts.iter().position(|v| *v == Verdict::Matched);
        let routes = policy
            .routes
            .iter()
            .zip(&verdicts)
            .map(|(route, verdict)| {
                let (result, reason) = match verdict {
                    Verdict::Matched => ("matched", None),
                    Verdict::Skipped(why) => ("skipped", Some(why.to_string())),
                    Verdict::NotReached => ("not_reached", None),
                };
                RouteVerdict {
                    route: route.name.clone(),
                    result: result.into(),
                    reason,
                }
            })
            .collect();
        let candidates = matched
            .map(|index| {
                policy.routes[index]
                    .splits
                    .iter()
                    .map(|split| {
                        let upstream = &snapshot.upstreams[split.upstream];
                        let target = crate::proxy::split::target(&snapshot, split.upstream)
                            .map(|to| &snapshot.upstreams[to]);
                        Candidate {
                            upstream: upstream.spec.name.clone(),
                            weight: split.weight,
                            target: target.map(|t| t.spec.name.clone()),
                            tier: target.and_then(|t| t.serving()).map(|s| s.0),
                            zone: target.and_then(|t| t.serving()).and_then(|s| s.1),
                            endpoints: upstream
                                .endpoints()
                                .endpoints
                                .iter()
                                .filter(|e| upstream.eligible(e))
                                .map(|e| e.addr.to_string())
                                .collect(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Explanation {
            listeners: listener_infos(&snapshot),
            normalized: path != given,
            path,
            refused,
            matched: matched.map(|i| policy.routes[i].name.clone()),
            checks: matched
                .map(|i| admission_checks(&policy.routes[i]))
                .unwrap_or_default(),
            routes,
            candidates,
        })
    }

    fn metrics(&self) -> String {
        let mut text = self.telemetry.metrics.render();
        crate::telemetry::upstream_state::render(&self.store.snapshot(), &mut text);
        text
    }

    fn ready(&self) -> bool {
        self.listeners_up.load(Ordering::Acquire) && !self.lifecycle.is_draining()
    }

    fn drain(&self) -> u64 {
        tracing::info!("drain requested through the admin API");
        self.lifecycle.drain();
        self.store.snapshot().policy.server.grace_period.as_secs()
    }

    fn readiness_note(&self) -> Option<String> {
        crate::fleet::node::readiness_note(self.store.fleet_node())
    }

    fn fleet_status(&self) -> BoxFuture<(u16, serde_json::Value)> {
        let store = self.store.clone();
        Box::pin(async move { crate::fleet::api::status(&store).await })
    }

    fn push_fleet(&self, document: String) -> BoxFuture<(u16, serde_json::Value)> {
        let store = self.store.clone();
        Box::pin(async move { crate::fleet::api::push(&store, document).await })
    }
}

/// Reads the admin token, or creates one when the default token file is missing.
pub fn load_admin_token(settings: &AdminSettings) -> Result<String, String> {
    let path = &settings.token_file;
    if path.exists() || settings.token_file_explicit {
        let contents = meshgate_policy::files::read_named_file(path)?;
        return meshgate_policy::check_admin_token(path, &contents);
    }
    // The default file is missing: create it with a fresh token, readable by its owner only.
    use rand::Rng;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes: [u8; 24] = rand::rng().random();
    let token = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create the admin token file {}: {e}", path.display()))?;
    writeln!(file, "{token}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!("created a new admin token in {}", path.display());
    Ok(token)
}

/// Serves the admin API inside Pingora's server, and marks the gateway ready once every
/// listener accepts connections.
pub struct AdminService {
    /// The backend.
    pub admin: Arc<GatewayAdmin>,
    /// The bound admin socket (bound before Pingora starts, so a taken port fails at once).
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// The bearer token.
    pub token: String,
    /// Addresses of the proxy listeners, probed for readiness.
    pub proxy_listeners: Vec<SocketAddr>,
    /// The bound `[telemetry].metrics_listen` socket, if any.
    pub metrics_listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

/// Resolves when the process hands its sockets to a new one (an upgrade). On a drain or
/// shutdown it never does: the API keeps answering, with readiness at 503, until the process
/// exits, so load balancers see the drain. On an upgrade the socket closes, so the new
/// process, which shares the port through SO_REUSEPORT, takes every new connection.
async fn until_handover(mut shutdown: ShutdownWatch, lifecycle: Arc<Lifecycle>) {
    let _ = shutdown.changed().await;
    if !lifecycle.is_upgrading() {
        std::future::pending::<()>().await;
    }
}

fn into_tokio(listener: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match into_tokio(std_listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("admin API cannot start: {e}");
                return;
            }
        };
        let admin = self.admin.clone();
        let probes = self.proxy_listeners.clone();
        tokio::spawn(async move {
            for addr in probes {
                let target = if addr.ip().is_unspecified() {
                    SocketAddr::new(
                        if addr.is_ipv4() {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        },
                        addr.port(),
                    )
                } else {
                    addr
                };
                while tokio::net::TcpStream::connect(target).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            admin.listeners_up.store(true, Ordering::Release);
            tracing::info!("listeners are up; ready");
        });
        let lifecycle = self.admin.lifecycle.clone();
        let stop = until_handover(shutdown.clone(), lifecycle.clone());
        let metrics_listener = self.metrics_listener.lock().ok().and_then(|mut l| l.take());
        if let Some(std_listener) = metrics_listener {
            match into_tokio(std_listener) {
                Ok(listener) => {
                    let backend = self.admin.clone();
                    let stop = until_handover(shutdown, lifecycle);
                    tokio::spawn(async move {
                        if let Err(e) = meshgate_admin::serve_metrics(listener, backend, stop).await
                        {
                            tracing::error!("metrics listener stopped: {e}");
                        }
                    });
                }
                Err(e) => tracing::error!("metrics listener cannot start: {e}"),
            }
        }
        if let Err(e) = meshgate_admin::serve(listener, self.admin.clone(), &self.token, stop).await
        {
            tracing::error!("admin API stopped: {e}");
        }
    }
}
