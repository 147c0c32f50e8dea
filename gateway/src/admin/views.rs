//! What the read-only admin endpoints show: `/upstreams`, `/routes` and `/explain`, built
//! from the running snapshot.

use std::sync::atomic::Ordering;

use meshgate_admin::*;
use meshgate_policy::compiled::{PathMatch, Verdict};
use meshgate_policy::matching::HeaderTest;
use meshgate_policy::path::normalize_path;
use meshgate_policy::schema::PathNormalization;
use meshgate_policy::RequestView;

use meshgate_policy::effective::{route_table, upstream_table};

use super::GatewayAdmin;

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

pub(super) fn listener_infos(snapshot: &crate::snapshot::Snapshot) -> Vec<ListenerInfo> {
    snapshot
        .listeners
        .states
        .iter()
        .map(|view| ListenerInfo {
            name: view.name.clone(),
            listen: view.listen.to_string(),
            state: view.state.to_owned(),
            protocol: snapshot
                .policy
                .listeners
                .iter()
                .find(|l| l.name == view.name)
                .map_or("http", |l| l.protocol.as_str())
                .to_owned(),
            on_restart: view.on_restart.clone(),
        })
        .collect()
}

/// What the matched route checks of a request before proxying it, one line each.
fn admission_checks(route: &meshgate_policy::compiled::Route) -> Vec<String> {
    let mut checks = Vec::new();
    if let Some(jwt) = &route.jwt {
        checks.push(format!("jwt: {}", jwt.describe()));
    }
    if let Some(allow) = &route.allow {
        let entries: Vec<String> = allow.iter().map(ToString::to_string).collect();
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

impl GatewayAdmin {
    pub(super) fn upstreams_body(&self) -> UpstreamsBody {
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
                            weight_override: e.weight_override(),
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
                settings: upstream_table(&snapshot.policy, index).into(),
            })
            .collect();
        UpstreamsBody { upstreams }
    }

    pub(super) fn routes_body(&self) -> RoutesBody {
        let snapshot = self.store.snapshot();
        let policy = &snapshot.policy;
        let routes = policy
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| RouteInfo {
                name: route.name.clone(),
                listeners: policy.listener_names(route.listeners.as_deref()),
                host: route.matcher.host.as_ref().map(ToString::to_string),
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
                    .map(|patterns| patterns.iter().map(ToString::to_string).collect()),
                split: split_infos(policy, &route.splits),
                split_key: route.split_key.as_ref().map(ToString::to_string),
                settings: route_table(policy, route).into(),
            })
            .collect();
        RoutesBody {
            routes,
            listeners: listener_infos(&snapshot),
            tcp_routes: super::tcp_views::route_infos(&snapshot),
        }
    }

    pub(super) fn explanation(&self, query: &ExplainQuery) -> Result<Explanation, String> {
        let snapshot = self.store.snapshot();
        let policy = &snapshot.policy;
        let http_listeners: Vec<usize> = (0..policy.listeners.len())
            .filter(|&i| {
                policy.listeners[i].protocol == meshgate_policy::tcp::ListenerProtocol::Http
            })
            .collect();
        let given = match &query.listener {
            Some(name) => Some(
                policy
                    .listener_index(name)
                    .ok_or_else(|| format!("unknown listener {name:?}"))?,
            ),
            None => None,
        };
        let tcp_listener = given.is_some_and(|i| {
            policy.listeners[i].protocol != meshgate_policy::tcp::ListenerProtocol::Http
        });
        if query.sni.is_some() || tcp_listener {
            return Ok(super::tcp_views::explanation(
                &snapshot,
                given,
                query.sni.as_deref().filter(|name| !name.is_empty()),
            ));
        }
        // A request arrives on some listener, and routes may be kept to some: without one
        // named, assume the first HTTP listener, say so, and give every HTTP listener's answer.
        let listener = given.or(http_listeners.first().copied());
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
        let by_listener = match (&query.listener, &refused) {
            (None, None) if http_listeners.len() > 1 => http_listeners
                .iter()
                .map(|&i| ListenerMatch {
                    listener: policy.listeners[i].name.clone(),
                    matched: policy
                        .explain(Some(i), &QueryView(&normalized_query))
                        .iter()
                        .position(|v| *v == Verdict::Matched)
                        .map(|r| policy.routes[r].name.clone()),
                })
                .collect(),
            _ => Vec::new(),
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
            .map(|index| candidates(&snapshot, &policy.routes[index].splits))
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
            protocol: None,
            listener: listener.map(|i| policy.listeners[i].name.clone()),
            by_listener,
        })
    }
}

/// Where a route's `splits` send traffic now: each side's upstream, the upstream taking its
/// share (itself or a failover) and the eligible endpoints.
pub(super) fn candidates(
    snapshot: &crate::snapshot::Snapshot,
    splits: &[meshgate_policy::compiled::Split],
) -> Vec<Candidate> {
    splits
        .iter()
        .map(|split| {
            let upstream = &snapshot.upstreams[split.upstream];
            let target = crate::proxy::split::target(snapshot, split.upstream)
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
}

/// A route's splits by upstream name.
pub(super) fn split_infos(
    policy: &meshgate_policy::CompiledPolicy,
    splits: &[meshgate_policy::compiled::Split],
) -> Vec<SplitInfo> {
    splits
        .iter()
        .map(|s| SplitInfo {
            upstream: policy.upstreams[s.upstream].name.clone(),
            weight: s.weight,
        })
        .collect()
}
