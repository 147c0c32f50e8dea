//! Warnings: a valid policy that probably does not do what its author meant. They never refuse
//! a policy (`meshgate check --strict` makes them fail the check).

use super::*;
use crate::matching::HeaderTest;

/// Every warning about `policy`, placed in the document behind `sink`.
pub(super) fn collect(policy: &CompiledPolicy, sink: &mut ErrorSink<'_>) {
    let root = KeyPath::root();
    if policy.listeners.is_empty() {
        sink.at(
            &root,
            "the policy has no listeners: the gateway serves no request",
        );
    }
    for (i, listener) in policy.listeners.iter().enumerate() {
        let http = listener.protocol == crate::tcp::ListenerProtocol::Http;
        let used = if http {
            !policy.routes_by_listener[i].is_empty()
        } else {
            !policy.tcp_routes_by_listener[i].is_empty()
        };
        if !used {
            sink.at(
                &root.key("listeners").index(i).key("name"),
                if http {
                    format!(
                        "no route applies to listener {:?}: every request on it gets 404 no-route",
                        listener.name
                    )
                } else {
                    format!(
                        "no TCP route applies to listener {:?}: every connection to it is closed",
                        listener.name
                    )
                },
            );
        }
    }
    unused_upstreams(policy, sink);
    for (j, later) in policy.routes.iter().enumerate() {
        let shadowing = policy.routes[..j]
            .iter()
            .position(|earlier| covers(earlier, later));
        if let Some(i) = shadowing {
            sink.at(
                &root.key("routes").index(j).key("name"),
                format!(
                    "route {:?} is never reached: route {:?} (routes[{i}]) comes first and matches every request it matches",
                    later.name, policy.routes[i].name
                ),
            );
        }
        allow_without_identity(policy, j, sink);
    }
    super::file_warnings::collect(policy, sink);
}

/// Upstreams no route sends to (by split, mirror, or failover of one that is used).
fn unused_upstreams(policy: &CompiledPolicy, sink: &mut ErrorSink<'_>) {
    let mut used = vec![false; policy.upstreams.len()];
    let mut pending: Vec<usize> = policy
        .routes
        .iter()
        .flat_map(|route| {
            route
                .splits
                .iter()
                .map(|s| s.upstream)
                .chain(route.mirrors.iter().map(|m| m.upstream))
        })
        .chain(
            policy
                .tcp_routes
                .iter()
                .flat_map(|route| route.splits.iter().map(|s| s.upstream)),
        )
        .collect();
    while let Some(index) = pending.pop() {
        if std::mem::replace(&mut used[index], true) {
            continue;
        }
        pending.extend(policy.failover.get(index).into_iter().flatten().copied());
    }
    for (index, upstream) in policy.upstreams.iter().enumerate() {
        if !used[index] {
            sink.at(
                &KeyPath::root().key("upstreams").index(index).key("name"),
                format!(
                    "upstream {:?} is not used: no route, mirror or failover sends to it",
                    upstream.name
                ),
            );
        }
    }
}

/// An `allow` naming certificate identities on a route that only listeners without client
/// certificates reach: no request there has an identity, so every one is refused.
fn allow_without_identity(policy: &CompiledPolicy, index: usize, sink: &mut ErrorSink<'_>) {
    let route = &policy.routes[index];
    let Some(allow) = &route.allow else {
        return;
    };
    if allow.is_empty() || allow.iter().all(IdentityPattern::is_jwt) {
        return;
    }
    let reached: Vec<&Listener> = match &route.listeners {
        Some(indexes) => indexes.iter().map(|&i| &policy.listeners[i]).collect(),
        None => policy.listeners.iter().collect(),
    };
    let identity_possible = reached.iter().any(|listener| {
        listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca.is_some())
    });
    if !reached.is_empty() && !identity_possible {
        sink.at(
            &KeyPath::root().key("routes").index(index).key("allow"),
            format!(
                "route {:?} allows certificate identities, but only listeners without client certificates (no [listeners.tls] client_ca) reach it: no caller there has an identity, so every request gets 403",
                route.name
            ),
        );
    }
}

/// Whether `earlier` matches every request `later` matches (judged on the conditions alone,
/// conservatively: a `false` may still be a shadowed route, a `true` never is not).
fn covers(earlier: &Route, later: &Route) -> bool {
    let (a, b) = (&earlier.matcher, &later.matcher);
    let listeners = match (&earlier.listeners, &later.listeners) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(mine), Some(theirs)) => theirs.iter().all(|l| mine.contains(l)),
    };
    let host = match (&a.host, &b.host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(x)), Some(HostMatch::Exact(y))) => x == y,
        (Some(HostMatch::Suffix(x)), Some(HostMatch::Exact(y))) => {
            y.len() > x.len() && y.ends_with(x.as_str())
        }
        (Some(HostMatch::Suffix(x)), Some(HostMatch::Suffix(y))) => y.ends_with(x.as_str()),
        (Some(HostMatch::Exact(_)), Some(HostMatch::Suffix(_))) => false,
    };
    let path = match (&a.path, &b.path) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(PathMatch::Prefix(x)), Some(PathMatch::Prefix(y) | PathMatch::Exact(y))) => {
            y.starts_with(x.as_str())
        }
        (Some(PathMatch::Exact(x)), Some(PathMatch::Exact(y))) => x == y,
        (Some(PathMatch::Regex(x)), Some(PathMatch::Regex(y))) => x.as_str() == y.as_str(),
        (Some(PathMatch::Regex(x)), Some(PathMatch::Exact(y))) => x.is_match(y),
        _ => false,
    };
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a.headers.iter().all(|(name, test)| {
        b.headers
            .iter()
            .any(|(n, t)| n == name && same_test(test, t))
    });
    let query = a.query.iter().all(|pair| b.query.contains(pair));
    let source = a.source.is_empty() || a.source == b.source;
    // A CORS route matches a preflight as the request it announces: a different request.
    let preflight = a.preflight_as_announced == b.preflight_as_announced;
    listeners && host && path && methods && headers && query && source && preflight
}

fn same_test(a: &HeaderTest, b: &HeaderTest) -> bool {
    match (a, b) {
        (HeaderTest::Exact(x), HeaderTest::Exact(y))
        | (HeaderTest::Prefix(x), HeaderTest::Prefix(y)) => x == y,
        (HeaderTest::Prefix(x), HeaderTest::Exact(y)) => y.starts_with(x.as_str()),
        (HeaderTest::Regex(x), HeaderTest::Regex(y)) => x.as_str() == y.as_str(),
        (HeaderTest::Present(x), HeaderTest::Present(y)) => x == y,
        (
            HeaderTest::Present(true),
            HeaderTest::Exact(_) | HeaderTest::Prefix(_) | HeaderTest::Regex(_),
        ) => true,
        _ => false,
    }
}
