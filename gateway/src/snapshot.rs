//! The data plane's view of one applied policy: the compiled policy plus the runtime state of
//! its upstreams and routes. A request loads one `Arc<Snapshot>` and keeps it to the end.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use meshgate_policy::CompiledPolicy;
use prometheus::{IntCounter, IntCounterVec};

use crate::limit::RetryBudget;
use crate::limit::{RateLimitStore, RateLimiter};
use crate::telemetry::Metrics;
use crate::tls::TlsRegistry;
use crate::upstream::UpstreamState;

const FIRST_CODE: u16 = 100;
const CODE_SLOTS: usize = 500;

/// `meshgate_requests_total` handles for one (listener, route, upstream), one per status code,
/// created on first use: a request increments an atomic, with no label hashing or lock.
pub struct CodeCounters {
    labels: [String; 3],
    family: IntCounterVec,
    slots: OnceLock<Box<[OnceLock<IntCounter>]>>,
}

impl CodeCounters {
    fn new(family: &IntCounterVec, listener: &str, route: &str, upstream: &str) -> Self {
        CodeCounters {
            labels: [listener.to_owned(), route.to_owned(), upstream.to_owned()],
            family: family.clone(),
            slots: OnceLock::new(),
        }
    }

    /// Counts one upstream response with `code` (no reason token).
    pub fn inc(&self, code: u16) {
        let [listener, route, upstream] = &self.labels;
        let label = |code: u16| {
            let status = http::StatusCode::from_u16(code).ok();
            let text = status.as_ref().map_or("0", |s| s.as_str()).to_owned();
            self.family
                .with_label_values(&[listener.as_str(), route, upstream, &text, ""])
        };
        let index = usize::from(code.wrapping_sub(FIRST_CODE));
        if index >= CODE_SLOTS {
            return label(code).inc();
        }
        let slots = self
            .slots
            .get_or_init(|| (0..CODE_SLOTS).map(|_| OnceLock::new()).collect());
        slots[index].get_or_init(|| label(code)).inc();
    }
}

impl std::fmt::Debug for CodeCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeCounters")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Metric handles of one (route, upstream), resolved when the snapshot is built.
#[derive(Debug)]
pub struct TrafficMetrics {
    /// `meshgate_request_duration_seconds`.
    pub duration: prometheus::Histogram,
    /// `meshgate_request_bytes_total`.
    pub request_bytes: IntCounter,
    /// `meshgate_response_bytes_total`.
    pub response_bytes: IntCounter,
}

impl TrafficMetrics {
    /// The handles of `route` and `upstream` (empty for gateway-made answers).
    pub fn new(metrics: &Metrics, route: &str, upstream: &str) -> Self {
        TrafficMetrics {
            duration: metrics
                .request_duration
                .with_label_values(&[route, upstream]),
            request_bytes: metrics.request_bytes.with_label_values(&[route, upstream]),
            response_bytes: metrics.response_bytes.with_label_values(&[route, upstream]),
        }
    }
}

/// A route's header rules, parsed once.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    /// Set, replacing any value.
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Added.
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Removed.
    pub remove: Vec<http::HeaderName>,
}

impl HeaderEdits {
    fn new(set: &[(String, String)], add: &[(String, String)], remove: &[String]) -> Self {
        // The policy crate validated names and values, so nothing is dropped here in practice.
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(name, value)| {
                    Some((
                        http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                        http::HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect()
        };
        HeaderEdits {
            set: pairs(set),
            add: pairs(add),
            remove: remove
                .iter()
                .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the rules: removals, then sets, then adds.
    pub fn apply(&self, headers: &mut impl EditableHeaders) -> pingora::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name, value)?;
        }
        for (name, value) in &self.add {
            headers.append(name, value)?;
        }
        Ok(())
    }
}

/// Pingora's request and response headers, which share these operations but no trait.
pub trait EditableHeaders {
    /// Removes every value of `name`.
    fn remove(&mut self, name: &http::HeaderName);
    /// Replaces the values of `name`.
    fn insert(&mut self, name: &http::HeaderName, value: &http::HeaderValue)
        -> pingora::Result<()>;
    /// Adds a value of `name`.
    fn append(&mut self, name: &http::HeaderName, value: &http::HeaderValue)
        -> pingora::Result<()>;
}

macro_rules! editable_headers {
    ($header:ty) => {
        impl EditableHeaders for $header {
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
            fn insert(
                &mut self,
                name: &http::HeaderName,
                value: &http::HeaderValue,
            ) -> pingora::Result<()> {
                self.insert_header(name.clone(), value.clone())
            }
            fn append(
                &mut self,
                name: &http::HeaderName,
                value: &http::HeaderValue,
            ) -> pingora::Result<()> {
                self.append_header(name.clone(), value.clone()).map(|_| ())
            }
        }
    };
}

editable_headers!(pingora::http::RequestHeader);
editable_headers!(pingora::http::ResponseHeader);

/// Per-route runtime state.
#[derive(Debug)]
pub struct RouteState {
    /// Position in the route's split schedule.
    pub split_cursor: AtomicU64,
    /// Requests and retries of the last 10 s.
    pub retry_budget: RetryBudget,
    /// Header rules for the upstream request.
    pub request_headers: HeaderEdits,
    /// Header rules for the response.
    pub response_headers: HeaderEdits,
    /// Request counters by `listener * splits + split`.
    pub counters: Vec<CodeCounters>,
    /// The route's rate limit, shared with the previous snapshot while its spec is unchanged.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Traffic metrics by split index.
    pub traffic: Vec<TrafficMetrics>,
    /// Traffic metrics of answers the gateway made itself on this route.
    pub gateway_traffic: TrafficMetrics,
    /// `meshgate_requests_in_flight` of this route.
    pub in_flight: prometheus::IntGauge,
    /// The state of each `mirror` entry.
    pub mirrors: Vec<crate::proxy::mirror::MirrorState>,
    /// The route's bearer-token check.
    pub jwt: Option<crate::auth::JwtVerifier>,
}

impl RouteState {
    /// The counters of requests that came on `listener` and went to `split`.
    pub fn counters(&self, listener: usize, split: usize, splits: usize) -> Option<&CodeCounters> {
        self.counters.get(listener * splits + split)
    }
}

/// One applied policy and its runtime state.
#[derive(Debug)]
pub struct Snapshot {
    /// The compiled policy.
    pub policy: CompiledPolicy,
    /// Upstream pools, parallel to `policy.upstreams`.
    pub upstreams: Vec<Arc<UpstreamState>>,
    /// Route state, parallel to `policy.routes`.
    pub routes: Vec<RouteState>,
    /// TCP route state, parallel to `policy.tcp_routes`.
    pub tcp_routes: Vec<crate::tcp::TcpRouteState>,
    /// The store of global rate limits, shared with the previous snapshot while its settings
    /// are unchanged.
    pub rate_limit_store: Option<Arc<RateLimitStore>>,
    /// The applied policy's number.
    pub version: u64,
    /// The listeners the process runs and what changes on restart.
    pub listeners: ListenerPlan,
    /// Headers only the gateway sets: the identity header, the mirror mark, and every header
    /// any route's `jwt.forward_claims` names. Every incoming copy is removed from every
    /// request on every listener before routing, so no route passes a forged one upstream.
    pub gateway_headers: Vec<http::HeaderName>,
}

/// The listeners the process runs, against what the applied policy says of them.
#[derive(Debug, Clone, Default)]
pub struct ListenerPlan {
    /// Each running listener's address and its index in `policy.listeners`.
    bound: Vec<(std::net::SocketAddr, usize)>,
    /// Sections whose change waits for a restart, against what the process runs.
    pub restart_required: Vec<&'static str>,
    /// Every listener, running or pending, as `/routes` and `/explain` show them.
    pub states: Vec<ListenerView>,
}

/// One listener as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerView {
    /// Its name.
    pub name: String,
    /// The address it is bound to, or will be on restart.
    pub listen: std::net::SocketAddr,
    /// `running`, or `pending` (bound on restart).
    pub state: &'static str,
    /// What changes on restart, for a running listener the policy changes or drops.
    pub on_restart: Option<String>,
}

impl ListenerPlan {
    /// Makes `running` (the listeners bound at start) the listeners of `policy` (see
    /// [`CompiledPolicy::adopt_running_listeners`]) and says what the policy changes of them.
    pub fn adopt(
        policy: &mut CompiledPolicy,
        running: &[meshgate_policy::compiled::Listener],
        started: &meshgate_policy::compiled::StaticParts,
    ) -> ListenerPlan {
        let restart_required = started.changes(&policy.static_parts());
        let mut states = Vec::new();
        for live in running {
            let declared = policy.listeners.iter().find(|l| l.name == live.name);
            let on_restart = match declared {
                None => Some("removed".to_owned()),
                Some(l) if l.addr != live.addr => Some(format!("listens on {}", l.addr)),
                Some(l) if l.tls.is_some() != live.tls.is_some() => Some(
                    if l.tls.is_some() {
                        "serves TLS"
                    } else {
                        "serves plain HTTP"
                    }
                    .to_owned(),
                ),
                Some(l) if l.protocol != live.protocol => {
                    Some(format!("speaks {}", l.protocol.as_str()))
                }
                Some(l) if l.max_connections != live.max_connections => {
                    Some(format!("max_connections = {}", l.max_connections))
                }
                Some(_) => None,
            };
            states.push(ListenerView {
                name: live.name.clone(),
                listen: live.addr,
                state: "running",
                on_restart,
            });
        }
        for declared in &policy.listeners {
            if !running.iter().any(|l| l.name == declared.name) {
                states.push(ListenerView {
                    name: declared.name.clone(),
                    listen: declared.addr,
                    state: "pending",
                    on_restart: Some("starts".to_owned()),
                });
            }
        }
        policy.adopt_running_listeners(running);
        let bound = running
            .iter()
            .filter_map(|live| {
                let index = policy.listeners.iter().position(|l| l.name == live.name)?;
                Some((live.addr, index))
            })
            .collect();
        ListenerPlan {
            bound,
            restart_required,
            states,
        }
    }
}

impl Snapshot {
    /// Builds a snapshot, taking over from `previous` the pool of every upstream whose name and
    /// spec are unchanged, the buckets of every rate limit whose route and spec are unchanged,
    /// and the rate-limit store when its settings are unchanged.
    pub fn build(
        policy: CompiledPolicy,
        listeners: ListenerPlan,
        previous: Option<&Snapshot>,
        version: u64,
        metrics: &Metrics,
        tls: &TlsRegistry,
        jwks: &crate::auth::JwksRegistry,
    ) -> Snapshot {
        metrics.zero_policy(&policy);
        let requests_total = &metrics.requests_total;
        let rate_limit_store = policy.rate_limit_store.as_ref().map(|settings| {
            previous
                .and_then(|old| old.rate_limit_store.as_ref())
                .filter(|old| old.settings == *settings)
                .cloned()
                .unwrap_or_else(|| Arc::new(RateLimitStore::new(settings, metrics)))
        });
        let key_prefix = policy
            .rate_limit_store
            .as_ref()
            .map_or("meshgate", |s| s.key_prefix.as_str());
        let upstreams = policy
            .upstreams
            .iter()
            .map(|spec| {
                previous
                    .and_then(|old| old.upstreams.iter().find(|u| u.spec == *spec))
                    .cloned()
                    .unwrap_or_else(|| {
                        let tls = spec.tls.as_ref().map(|t| tls.upstream(t));
                        Arc::new(UpstreamState::new(spec.clone(), tls, metrics))
                    })
            })
            .collect();
        let routes = policy
            .routes
            .iter()
            .map(|route| RouteState {
                traffic: route
                    .splits
                    .iter()
                    .map(|split| {
                        TrafficMetrics::new(
                            metrics,
                            &route.name,
                            &policy.upstreams[split.upstream].name,
                        )
                    })
                    .collect(),
                gateway_traffic: TrafficMetrics::new(metrics, &route.name, ""),
                in_flight: metrics.requests_in_flight.with_label_values(&[&route.name]),
                mirrors: route
                    .mirrors
                    .iter()
                    .map(|mirror| {
                        let upstream = &policy.upstreams[mirror.upstream].name;
                        crate::proxy::mirror::MirrorState::new(
                            metrics
                                .mirror_dropped
                                .with_label_values(&[route.name.as_str(), upstream.as_str()]),
                        )
                    })
                    .collect(),
                rate_limiter: route.rate_limit.as_ref().map(|spec| {
                    previous
                        .and_then(|old| {
                            let index = old
                                .policy
                                .routes
                                .iter()
                                .position(|r| r.name == route.name)?;
                            old.routes[index].rate_limiter.clone()
                        })
                        .filter(|old| old.spec == *spec)
                        .unwrap_or_else(|| {
                            Arc::new(RateLimiter::new(&route.name, spec, key_prefix, metrics))
                        })
                }),
                jwt: route
                    .jwt
                    .as_ref()
                    .map(|jwt| crate::auth::JwtVerifier::new(jwt, &route.name, jwks, metrics)),
                split_cursor: AtomicU64::new(0),
                retry_budget: RetryBudget::default(),
                request_headers: HeaderEdits::new(
                    &route.headers.request_set,
                    &route.headers.request_add,
                    &route.headers.request_remove,
                ),
                response_headers: HeaderEdits::new(
                    &route.headers.response_set,
                    &route.headers.response_add,
                    &route.headers.response_remove,
                ),
                counters: policy
                    .listeners
                    .iter()
                    .flat_map(|listener| {
                        route.splits.iter().map(|split| {
                            CodeCounters::new(
                                requests_total,
                                &listener.name,
                                &route.name,
                                &policy.upstreams[split.upstream].name,
                            )
                        })
                    })
                    .collect(),
            })
            .collect();
        let tcp_routes = policy
            .tcp_routes
            .iter()
            .map(|route| crate::tcp::TcpRouteState::new(route, policy.listeners.len()))
            .collect();
        let gateway_headers = gateway_headers(&policy);
        Snapshot {
            policy,
            upstreams,
            routes,
            tcp_routes,
            rate_limit_store,
            version,
            listeners,
            gateway_headers,
        }
    }

    /// The index of the running listener bound to `local`: an exact address match first,
    /// then a wildcard address on the same port. Only listeners the process runs are found, by
    /// the address they were bound to, whatever the policy says of them since.
    pub fn listener_for(&self, local: std::net::SocketAddr) -> Option<usize> {
        let bound = &self.listeners.bound;
        bound
            .iter()
            .find(|(addr, _)| *addr == local)
            .or_else(|| {
                bound
                    .iter()
                    .find(|(addr, _)| addr.port() == local.port() && addr.ip().is_unspecified())
            })
            .map(|(_, index)| *index)
    }
}

/// The headers only the gateway may set on a request going upstream (see
/// [`Snapshot::gateway_headers`]), each once.
fn gateway_headers(policy: &CompiledPolicy) -> Vec<http::HeaderName> {
    let mut names = vec![
        crate::proxy::X_FORWARDED_CLIENT_CERT,
        http::HeaderName::from_static(crate::proxy::mirror::MIRROR_HEADER),
    ];
    let claim_headers = policy
        .routes
        .iter()
        .filter_map(|route| route.jwt.as_ref())
        .flat_map(|jwt| jwt.forward_claims.iter())
        // Validated by the policy crate: lower-case header names.
        .filter_map(|(_, header)| http::HeaderName::from_bytes(header.as_bytes()).ok());
    for name in claim_headers {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}
