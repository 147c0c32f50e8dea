//! What applying one compiled policy over another would change: routes and upstreams added,
//! removed and changed (with the keys that changed), the upstreams that would start fresh
//! (their runtime state reset, since their spec changed), and the other sections changed.
//! Used by `PUT /policy?dry_run=true` and `meshgate diff OLD NEW`.

use serde::Serialize;

use crate::compiled::{Route, UpstreamSpec};
use crate::CompiledPolicy;

/// The changes of one list of named items.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ListDiff {
    /// Names only the new policy has.
    pub added: Vec<String>,
    /// Names only the old policy has.
    pub removed: Vec<String>,
    /// Names both have, with the keys whose values differ.
    pub changed: Vec<Changed>,
}

/// One item present in both policies whose keys differ.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Changed {
    /// Its name.
    pub name: String,
    /// The keys that differ, as written in the policy.
    pub keys: Vec<&'static str>,
}

/// What applying `new` over `old` changes.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PolicyDiff {
    /// `[[routes]]`.
    pub routes: ListDiff,
    /// `[[upstreams]]`.
    pub upstreams: ListDiff,
    /// Upstreams that would start fresh: health, ejections, breaker counters and pooled
    /// connections reset (a change of any key but `failover`).
    pub fresh_upstreams: Vec<String>,
    /// Other sections that differ (`server`, `listeners`, `telemetry`…).
    pub sections: Vec<&'static str>,
}

impl PolicyDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == PolicyDiff::default()
    }

    /// The diff as lines of text, as `meshgate diff` prints it.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (what, list) in [("route", &self.routes), ("upstream", &self.upstreams)] {
            lines.extend(list.added.iter().map(|name| format!("+ {what} {name}")));
            lines.extend(list.removed.iter().map(|name| format!("- {what} {name}")));
            lines.extend(
                list.changed
                    .iter()
                    .map(|c| format!("~ {what} {}: {}", c.name, c.keys.join(", "))),
            );
        }
        lines.extend(
            self.fresh_upstreams
                .iter()
                .map(|name| format!("! upstream {name} starts fresh (runtime state reset)")),
        );
        lines.extend(self.sections.iter().map(|s| format!("~ [{s}]")));
        lines
    }
}

/// What applying `new` over `old` changes.
pub fn diff(old: &CompiledPolicy, new: &CompiledPolicy) -> PolicyDiff {
    let routes = list_diff(
        &old.routes,
        &new.routes,
        |r| &r.name,
        |a, b| route_keys(old, a, new, b),
    );
    let upstreams = list_diff(
        &old.upstreams,
        &new.upstreams,
        |u| &u.name,
        |a, b| upstream_keys(old, a, new, b),
    );
    // The gateway keeps an upstream's state only when its spec is equal (`failover` is kept
    // outside the spec).
    let fresh_upstreams = new
        .upstreams
        .iter()
        .filter(|spec| {
            old.upstreams
                .iter()
                .any(|o| o.name == spec.name && o != *spec)
        })
        .map(|spec| spec.name.clone())
        .collect();
    let mut sections = Vec::new();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    for (name, changed) in [
        ("server", differs(&old.server, &new.server)),
        ("admin", differs(&old.admin, &new.admin)),
        ("telemetry", differs(&old.telemetry, &new.telemetry)),
        ("listeners", differs(&old.listeners, &new.listeners)),
        (
            "trusted_proxies",
            old.trusted_proxies != new.trusted_proxies,
        ),
        (
            "rate_limit_store",
            differs(&old.rate_limit_store, &new.rate_limit_store),
        ),
        ("discovery", differs(&old.discovery, &new.discovery)),
        ("fleet", differs(&old.fleet, &new.fleet)),
        (
            "tcp_routes",
            differs(&tcp_routes_of(old), &tcp_routes_of(new)),
        ),
    ] {
        if changed {
            sections.push(name);
        }
    }
    PolicyDiff {
        routes,
        upstreams,
        fresh_upstreams,
        sections,
    }
}

fn list_diff<T>(
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    keys: impl Fn(&T, &T) -> Vec<&'static str>,
) -> ListDiff {
    let mut result = ListDiff::default();
    for item in new {
        match old.iter().find(|o| name(o) == name(item)) {
            None => result.added.push(name(item).clone()),
            Some(before) => {
                let changed = keys(before, item);
                if !changed.is_empty() {
                    result.changed.push(Changed {
                        name: name(item).clone(),
                        keys: changed,
                    });
                }
            }
        }
    }
    for item in old {
        if !new.iter().any(|n| name(n) == name(item)) {
            result.removed.push(name(item).clone());
        }
    }
    result
}

/// Whether two values print differently: for compiled parts without `PartialEq` (they hold
/// regular expressions, which print as their pattern).
fn debug_differs(a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

fn route_keys(
    old: &CompiledPolicy,
    a: &Route,
    new: &CompiledPolicy,
    b: &Route,
) -> Vec<&'static str> {
    // Listeners and upstreams are referred to by index: compare their names.
    let listeners =
        |policy: &CompiledPolicy, route: &Route| policy.listener_names(route.listeners.as_deref());
    let splits = |policy: &CompiledPolicy, route: &Route| {
        route
            .splits
            .iter()
            .map(|s| (policy.upstreams[s.upstream].name.clone(), s.weight))
            .collect::<Vec<_>>()
    };
    let mirrors = |policy: &CompiledPolicy, route: &Route| {
        route
            .mirrors
            .iter()
            .map(|m| {
                (
                    policy.upstreams[m.upstream].name.clone(),
                    m.percent.to_string(),
                    m.max_in_flight,
                )
            })
            .collect::<Vec<_>>()
    };
    let mut keys = Vec::new();
    let mut check = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("listeners", listeners(old, a) != listeners(new, b));
    check("match", debug_differs(&a.matcher, &b.matcher));
    check("split", splits(old, a) != splits(new, b));
    check("split_key", a.split_key != b.split_key);
    check("split_fallback", a.split_fallback != b.split_fallback);
    check("redirect/respond", debug_differs(&a.direct, &b.direct));
    check("timeouts", a.timeout != b.timeout);
    check("retry", debug_differs(&a.retry, &b.retry));
    check("headers", debug_differs(&a.headers, &b.headers));
    check("fault", debug_differs(&a.fault, &b.fault));
    check("rate_limit", debug_differs(&a.rate_limit, &b.rate_limit));
    check("allow", a.allow != b.allow);
    check("max_request_body", a.max_request_body != b.max_request_body);
    check("rewrite", debug_differs(&a.rewrite, &b.rewrite));
    check("cors", a.cors != b.cors);
    check("compress", debug_differs(&a.compress, &b.compress));
    check("mirror", mirrors(old, a) != mirrors(new, b));
    check("jwt", a.jwt != b.jwt);
    keys
}

fn upstream_keys(
    old: &CompiledPolicy,
    a: &UpstreamSpec,
    new: &CompiledPolicy,
    b: &UpstreamSpec,
) -> Vec<&'static str> {
    let failover = |policy: &CompiledPolicy, spec: &UpstreamSpec| {
        let index = policy.upstreams.iter().position(|u| u.name == spec.name);
        index
            .and_then(|i| policy.failover.get(i))
            .map(|to| {
                to.iter()
                    .map(|&t| policy.upstreams[t].name.clone())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let mut keys = Vec::new();
    for (key, changed) in [
        ("endpoints", a.endpoints != b.endpoints),
        ("discovery", a.names != b.names),
        ("locality", a.locality != b.locality),
        (
            "balance",
            a.balance != b.balance || a.hash_key != b.hash_key,
        ),
        ("connect_timeout", a.connect_timeout != b.connect_timeout),
        ("protocol", a.protocol != b.protocol),
        ("idle_timeout", a.idle_timeout != b.idle_timeout),
        ("read_timeout", a.read_timeout != b.read_timeout),
        ("health_check", a.health_check != b.health_check),
        ("circuit_breaker", a.circuit_breaker != b.circuit_breaker),
        (
            "outlier_detection",
            a.outlier_detection != b.outlier_detection,
        ),
        ("tls", a.tls != b.tls),
        ("failover", failover(old, a) != failover(new, b)),
    ] {
        if changed {
            keys.push(key);
        }
    }
    if keys.is_empty() && a != b {
        // Anything else in the spec (a key this list does not name yet).
        keys.push("spec");
    }
    keys
}

/// The TCP routes with their listeners and upstreams by name (they are held by index).
fn tcp_routes_of(policy: &CompiledPolicy) -> Vec<String> {
    policy
        .tcp_routes
        .iter()
        .map(|route| {
            let listeners = route.listeners.as_ref().map(|indexes| {
                indexes
                    .iter()
                    .map(|&i| policy.listeners[i].name.as_str())
                    .collect::<Vec<_>>()
            });
            let splits: Vec<(&str, u32)> = route
                .splits
                .iter()
                .map(|s| (policy.upstreams[s.upstream].name.as_str(), s.weight))
                .collect();
            format!(
                "{} {listeners:?} {:?} {splits:?} {:?} {:?} {:?}",
                route.name, route.sni, route.allow, route.idle_timeout, route.rate_limit
            )
        })
        .collect()
}
