//! A route's effective settings, as a `[[routes]]` table.

use serde_json::{Map, Value};

use super::{compress, duration, path, size, unanchored, Table};
use crate::compiled::{PathMatch, Route};
use crate::matching::HeaderTest;
use crate::CompiledPolicy;

/// One route as a `[[routes]]` table with every default filled in; `/routes` shows the same.
pub fn route_table(policy: &CompiledPolicy, route: &Route) -> Map<String, Value> {
    let mut entry = Table::new();
    entry.put("name", route.name.as_str());
    entry.opt(
        "listeners",
        policy.listener_names(route.listeners.as_deref()),
    );
    entry.put("match", matcher(route));
    match &route.direct {
        Some(crate::direct::DirectAnswer::Redirect(redirect)) => {
            let mut section = Table::new();
            section.opt("scheme", redirect.scheme.as_deref());
            section.opt("host", redirect.host.as_deref());
            section.opt("path", redirect.path.as_deref());
            section.opt("port", redirect.port);
            section.put("status", redirect.status);
            section.put("strip_query", redirect.strip_query);
            entry.put("redirect", section);
        }
        Some(crate::direct::DirectAnswer::Respond(respond)) => {
            let mut section = Table::new();
            section.put("status", respond.status);
            section.put("body", respond.body.as_str());
            section.put("content_type", respond.content_type.as_str());
            entry.put("respond", section);
        }
        None => {
            entry.put("split", splits(policy, &route.splits));
            entry.opt(
                "split_key",
                route.split_key.as_ref().map(ToString::to_string),
            );
            entry.put("split_fallback", route.split_fallback);
        }
    }
    if let Some(timeout) = route.timeout {
        let mut section = Table::new();
        section.put("request", duration(timeout));
        entry.put("timeouts", section);
    }
    if let Some(retry) = &route.retry {
        let mut section = Table::new();
        section.put("attempts", retry.retries);
        let on = &retry.on;
        let mut conditions: Vec<Value> = [
            (on.connect_failure, "connect-failure"),
            (on.refused, "refused"),
            (on.reset, "reset"),
            (on.server_error, "5xx"),
            (on.gateway_error, "gateway-error"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| Value::from(name))
        .collect();
        conditions.extend(on.codes.iter().map(|&code| Value::from(code)));
        section.put("on", conditions);
        section.opt("per_try_timeout", retry.per_try_timeout.map(duration));
        section.put("backoff", duration(retry.backoff));
        section.put("budget_percent", retry.budget_percent);
        section.put("min_retries_per_second", retry.min_retries_per_second);
        section.put("retry_non_idempotent", retry.non_idempotent);
        entry.put("retry", section);
    }
    let headers = &route.headers;
    if *headers != crate::compiled::HeaderRules::default() {
        let pairs = |list: &[(String, String)]| {
            let mut table = Table::new();
            for (name, value) in list {
                table.put(name, value.as_str());
            }
            table
        };
        let mut section = Table::new();
        section.put("request_set", pairs(&headers.request_set));
        section.put("request_add", pairs(&headers.request_add));
        section.put("request_remove", headers.request_remove.clone());
        section.put("response_set", pairs(&headers.response_set));
        section.put("response_add", pairs(&headers.response_add));
        section.put("response_remove", headers.response_remove.clone());
        entry.put("headers", section);
    }
    if let Some(fault) = &route.fault {
        let mut section = Table::new();
        if let Some((delay, percent)) = fault.delay {
            section.put("delay", duration(delay));
            section.put("delay_percent", percent);
        }
        if let Some((status, percent)) = fault.abort {
            section.put("abort_status", status);
            section.put("abort_percent", percent);
        }
        entry.put("fault", section);
    }
    if let Some(limit) = &route.rate_limit {
        let mut section = Table::new();
        section.put("requests_per_second", limit.requests_per_second);
        section.put("burst", limit.burst);
        section.put("key", limit.key.to_string());
        section.put(
            "scope",
            match limit.scope {
                crate::schema::RateLimitScope::Local => "local",
                crate::schema::RateLimitScope::Global => "global",
            },
        );
        section.put("mode", limit.mode.as_str());
        section.put("headers_on_success", limit.headers_on_success);
        if limit.scope == crate::schema::RateLimitScope::Local {
            // A global limit's keys expire in the store; the loader refuses `max_keys` there.
            section.put("max_keys", limit.max_keys);
        }
        entry.put("rate_limit", section);
    }
    if let Some(allow) = &route.allow {
        entry.put(
            "allow",
            allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        );
    }
    entry.opt("max_request_body", route.max_request_body.map(size));
    if let Some(rewrite) = &route.rewrite {
        let mut section = Table::new();
        match &rewrite.path {
            Some(crate::rewrite::PathRewrite::Prefix { replacement, .. }) => {
                section.put("path_prefix", replacement.as_str());
            }
            Some(crate::rewrite::PathRewrite::Regex { regex, written, .. }) => {
                section.put("path_regex", regex.as_str());
                section.put("path", written.as_str());
            }
            None => {}
        }
        section.opt("host", rewrite.host.as_deref());
        entry.put("rewrite", section);
    }
    if let Some(cors) = &route.cors {
        let list = |joined: &Option<String>| {
            joined
                .as_deref()
                .map(|text| text.split(", ").map(str::to_owned).collect::<Vec<_>>())
        };
        let mut section = Table::new();
        section.put(
            "allow_origins",
            if cors.origins.is_empty() {
                vec!["*".to_owned()]
            } else {
                cors.origins.clone()
            },
        );
        section.put("allow_methods", cors.methods.clone());
        section.opt("allow_headers", list(&cors.allow_headers));
        section.opt("expose_headers", list(&cors.expose_headers));
        section.opt(
            "max_age",
            cors.max_age
                .map(|secs| duration(std::time::Duration::from_secs(secs))),
        );
        section.put("allow_credentials", cors.allow_credentials);
        entry.put("cors", section);
    }
    entry.opt("compress", route.compress.as_ref().map(compress));
    if !route.mirrors.is_empty() {
        entry.put(
            "mirror",
            route
                .mirrors
                .iter()
                .map(|mirror| {
                    let mut section = Table::new();
                    section.put("upstream", policy.upstreams[mirror.upstream].name.as_str());
                    section.put("percent", mirror.percent);
                    section.put("max_in_flight", mirror.max_in_flight);
                    Value::from(section)
                })
                .collect::<Vec<_>>(),
        );
    }
    if let Some(jwt) = &route.jwt {
        entry.put("jwt", jwt_table(jwt));
    }
    entry.0
}

fn matcher(route: &Route) -> Table {
    let matcher = &route.matcher;
    let mut section = Table::new();
    section.opt("host", matcher.host.as_ref().map(ToString::to_string));
    match &matcher.path {
        Some(PathMatch::Prefix(prefix)) => section.put("path_prefix", prefix.as_str()),
        Some(PathMatch::Exact(exact)) => section.put("path_exact", exact.as_str()),
        Some(PathMatch::Regex(regex)) => section.put("path_regex", unanchored(regex)),
        None => {}
    }
    if !matcher.methods.is_empty() {
        section.put("methods", matcher.methods.clone());
    }
    if !matcher.headers.is_empty() {
        let mut headers = Table::new();
        for (name, test) in &matcher.headers {
            let mut condition = Table::new();
            match test {
                HeaderTest::Exact(value) => condition.put("exact", value.as_str()),
                HeaderTest::Prefix(value) => condition.put("prefix", value.as_str()),
                HeaderTest::Regex(regex) => condition.put("regex", unanchored(regex)),
                HeaderTest::Present(present) => condition.put("present", *present),
            }
            headers.put(name, condition);
        }
        section.put("headers", headers);
    }
    if !matcher.query.is_empty() {
        let mut query = Table::new();
        for (name, value) in &matcher.query {
            query.put(name, value.as_str());
        }
        section.put("query", query);
    }
    if !matcher.source.is_empty() {
        section.put(
            "source",
            matcher
                .source
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        );
    }
    section
}

fn jwt_table(jwt: &crate::jwt::Jwt) -> Table {
    let mut section = Table::new();
    section.opt("issuer", jwt.issuer.as_deref());
    if !jwt.audiences.is_empty() {
        section.put("audiences", jwt.audiences.clone());
    }
    match &jwt.keys {
        crate::jwt::JwksSource::File { path: file, .. } => section.put("jwks_file", path(file)),
        crate::jwt::JwksSource::Url(source) => {
            section.put("jwks_url", source.url.as_str());
            section.opt("jwks_ca", source.ca.as_deref().map(path));
            section.put("min_refresh", duration(source.min_refresh));
            section.put("max_refresh", duration(source.max_refresh));
        }
    }
    section.put("required", jwt.required);
    let mut claims = Table::new();
    for (claim, header) in &jwt.forward_claims {
        claims.put(claim, header.as_str());
    }
    section.put("forward_claims", claims);
    section.put("forward_token", jwt.forward_token);
    section.put("leeway", duration(jwt.leeway));
    section.put(
        "algorithms",
        jwt.algorithms
            .iter()
            .map(|algorithm| format!("{algorithm:?}"))
            .collect::<Vec<_>>(),
    );
    section
}

/// One TCP route as a `[[tcp_routes]]` table with every default filled in.
pub fn tcp_route_table(
    policy: &CompiledPolicy,
    route: &crate::tcp::TcpRoute,
) -> Map<String, Value> {
    let mut entry = Table::new();
    entry.put("name", route.name.as_str());
    entry.opt(
        "listeners",
        policy.listener_names(route.listeners.as_deref()),
    );
    if !route.sni.is_empty() {
        let mut matcher = Table::new();
        matcher.put(
            "sni",
            route
                .sni
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        );
        entry.put("match", matcher);
    }
    entry.put("split", splits(policy, &route.splits));
    if let Some(allow) = &route.allow {
        entry.put(
            "allow",
            allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        );
    }
    entry.put("idle_timeout", duration(route.idle_timeout));
    if let Some(limit) = &route.rate_limit {
        let mut section = Table::new();
        section.put("connections_per_second", limit.connections_per_second);
        section.put("burst", limit.burst);
        section.put(
            "key",
            if limit.per_client {
                "client_ip"
            } else {
                "route"
            },
        );
        entry.put("rate_limit", section);
    }
    entry.0
}

/// A route's `split` as written.
fn splits(policy: &CompiledPolicy, splits: &[crate::compiled::Split]) -> Vec<Value> {
    splits
        .iter()
        .map(|split| {
            let mut side = Table::new();
            side.put("upstream", policy.upstreams[split.upstream].name.as_str());
            side.put("weight", split.weight);
            Value::from(side)
        })
        .collect()
}
