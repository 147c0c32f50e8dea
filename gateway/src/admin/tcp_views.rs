//! What `/routes` and `/explain` show of TCP routes.

use meshgate_admin::*;
use meshgate_policy::effective::tcp_route_table;

use super::views::{candidates, listener_infos, split_infos};
use crate::snapshot::Snapshot;

/// Every TCP route, in match order.
pub(super) fn route_infos(snapshot: &Snapshot) -> Vec<TcpRouteInfo> {
    let policy = &snapshot.policy;
    policy
        .tcp_routes
        .iter()
        .map(|route| TcpRouteInfo {
            name: route.name.clone(),
            listeners: policy.listener_names(route.listeners.as_deref()),
            sni: route.sni.iter().map(ToString::to_string).collect(),
            split: split_infos(policy, &route.splits),
            allow: route
                .allow
                .as_ref()
                .map(|patterns| patterns.iter().map(ToString::to_string).collect()),
            settings: tcp_route_table(policy, route).into(),
        })
        .collect()
}

/// Which TCP route a connection on `listener` (any TCP listener when `None`) with server
/// name `sni` takes, and why the others were skipped.
pub(super) fn explanation(
    snapshot: &Snapshot,
    listener: Option<usize>,
    sni: Option<&str>,
) -> Explanation {
    let policy = &snapshot.policy;
    let mut matched = None;
    let routes = policy
        .tcp_routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            let (result, reason) = if matched.is_some() {
                ("not_reached", None)
            } else if listener.is_some_and(|l| !policy.tcp_routes_by_listener[l].contains(&index)) {
                ("skipped", Some("listener".to_owned()))
            } else if !route.matches_sni(sni) {
                (
                    "skipped",
                    Some(match sni {
                        Some(name) => format!("sni {name:?} is not among the route's names"),
                        None => "sni: the connection has no server name".to_owned(),
                    }),
                )
            } else {
                matched = Some(index);
                ("matched", None)
            };
            RouteVerdict {
                route: route.name.clone(),
                result: result.into(),
                reason,
            }
        })
        .collect();
    Explanation {
        path: String::new(),
        normalized: false,
        refused: None,
        listeners: listener_infos(snapshot),
        matched: matched.map(|i| policy.tcp_routes[i].name.clone()),
        checks: matched
            .and_then(|i| policy.tcp_routes[i].allow.as_ref())
            .map(|allow| {
                let entries: Vec<String> = allow.iter().map(ToString::to_string).collect();
                vec![format!("allow: {}", entries.join(", "))]
            })
            .unwrap_or_default(),
        routes,
        candidates: matched
            .map(|i| candidates(snapshot, &policy.tcp_routes[i].splits))
            .unwrap_or_default(),
        protocol: Some("tcp".into()),
        listener: listener.map(|i| policy.listeners[i].name.clone()),
        by_listener: Vec::new(),
    }
}
