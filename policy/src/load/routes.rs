//! `[[routes]]`: matching, splits, authorization, timeouts, retries, header rules, faults.

use super::*;

impl Compiler<'_, '_> {
    pub(super) fn compile_routes(
        &self,
        routes: &[Option<RouteSection>],
        context: &RouteContext<'_>,
        sink: &mut ErrorSink<'_>,
    ) -> Vec<Option<Route>> {
        let RouteContext {
            listener_names,
            upstream_names,
            listeners,
            upstreams,
            store_declared,
        } = *context;
        let base = KeyPath::root().key("routes");
        let mut names = HashMap::new();
        routes
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let spec = spec.as_ref()?;
                let path = base.index(i);
                check_unique_name(
                    &mut names,
                    &spec.name,
                    i,
                    ("routes", "route"),
                    &path.key("name"),
                    sink,
                );
                let errors_before = sink.errors.len();

                let route_listeners = spec.listeners.as_ref().map(|wanted| {
                    compile_route_listeners(
                        wanted,
                        ListenerProtocol::Http,
                        listeners,
                        listener_names,
                        &path.key("listeners"),
                        sink,
                    )
                });

                let matcher = compile_matcher(&spec.matcher, &path.key("match"), sink);

                let direct = compile_direct(spec, &path, sink);
                if spec.split.is_empty()
                    && direct.is_none()
                    && spec.redirect.is_none()
                    && spec.respond.is_none()
                {
                    sink.at(
                        &path.key("split"),
                        "a route needs at least one split, or redirect or respond",
                    );
                }
                let splits = compile_splits(
                    &spec.split,
                    upstreams,
                    upstream_names,
                    &path.key("split"),
                    sink,
                );
                let split_key = spec.split_key.as_ref().and_then(|key| {
                    RequestKey::parse(key)
                        .map_err(|message| sink.at(&path.key("split_key"), message))
                        .ok()
                });

                let timeout = spec
                    .timeouts
                    .as_ref()
                    .and_then(|t| t.request)
                    .map(|d| d.get());
                if timeout.is_some_and(|t| t.is_zero()) {
                    sink.at(
                        &path.key("timeouts").key("request"),
                        "the request timeout must be more than zero",
                    );
                }
                let retry = spec
                    .retry
                    .as_ref()
                    .map(|r| compile_retry(r, &path.key("retry"), sink));
                let headers = spec
                    .headers
                    .as_ref()
                    .map(|h| compile_header_rules(h, &path.key("headers"), sink))
                    .unwrap_or_default();
                let fault = spec
                    .fault
                    .as_ref()
                    .map(|f| compile_fault(f, &path.key("fault"), sink));
                let jwt = spec
                    .jwt
                    .as_ref()
                    .and_then(|j| self.compile_jwt(j, &path.key("jwt"), sink));
                let allow = spec.allow.as_ref().map(|entries| {
                    compile_allow(entries, spec.jwt.is_some(), &path.key("allow"), sink)
                });
                let rewrite = spec.rewrite.as_ref().and_then(|r| {
                    compile_rewrite(
                        r,
                        spec.matcher.path_prefix.as_deref(),
                        &path.key("rewrite"),
                        sink,
                    )
                });
                let cors = spec
                    .cors
                    .as_ref()
                    .and_then(|c| compile_cors(c, &path.key("cors"), sink));
                let compress = spec
                    .compress
                    .as_ref()
                    .and_then(|c| compile_compress(c, &path.key("compress"), sink));
                let mirrors = compile_mirrors(
                    &spec.mirror,
                    upstreams,
                    upstream_names,
                    &path.key("mirror"),
                    sink,
                );
                let rate_limit = spec
                    .rate_limit
                    .as_ref()
                    .map(|r| compile_rate_limit(r, store_declared, &path.key("rate_limit"), sink));

                if sink.errors.len() != errors_before {
                    return None;
                }
                let splits = splits?;
                let weights: Vec<u32> = splits.iter().map(|s| s.weight).collect();
                Some(Route {
                    name: spec.name.clone(),
                    listeners: route_listeners,
                    matcher: RouteMatcher {
                        preflight_as_announced: spec.cors.is_some(),
                        ..matcher?
                    },
                    split_schedule: smooth_weighted_schedule(&weights),
                    splits,
                    split_key,
                    split_fallback: spec.split_fallback.unwrap_or(true),
                    direct,
                    timeout,
                    retry,
                    headers,
                    fault,
                    rate_limit,
                    allow,
                    max_request_body: spec.max_request_body.map(|size| size.bytes()),
                    rewrite,
                    cors,
                    compress,
                    mirrors,
                    jwt,
                })
            })
            .collect()
    }
}

/// What route compilation needs to know of the rest of the file.
#[derive(Clone, Copy)]
pub(super) struct RouteContext<'a> {
    pub(super) listener_names: &'a HashSet<String>,
    pub(super) upstream_names: &'a HashSet<String>,
    pub(super) listeners: &'a [Option<Listener>],
    pub(super) upstreams: &'a [Option<UpstreamSpec>],
    /// Whether `[rate_limit_store]` is present (parsed or not).
    pub(super) store_declared: bool,
}

pub(super) fn compile_allow(
    entries: &[String],
    has_jwt: bool,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Vec<IdentityPattern> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            if let Some(rest) = entry.strip_prefix("jwt:") {
                let pattern = compile_jwt_entry(entry, rest)
                    .map_err(|message| sink.at(&path.index(i), message))
                    .ok()?;
                if !has_jwt {
                    sink.at(
                        &path.index(i),
                        format!("{entry:?} names a JWT claim, but the route has no `jwt` to verify tokens"),
                    );
                    return None;
                }
                return Some(pattern);
            }
            if entry.is_empty() || entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
                sink.at(
                    &path.index(i),
                    format!("invalid identity {entry:?}: expected such as \"spiffe://prod.example/ns/shop/sa/checkout\""),
                );
                return None;
            }
            match entry.strip_suffix('*') {
                Some(prefix) if prefix.ends_with('/') => Some(IdentityPattern::Prefix(prefix.to_owned())),
                Some(_) => {
                    sink.at(
                        &path.index(i),
                        format!("{entry:?}: a wildcard is allowed only as a whole last segment, as in \"spiffe://prod.example/ns/shop/*\""),
                    );
                    None
                }
                None if entry.contains('*') => {
                    sink.at(
                        &path.index(i),
                        format!("{entry:?}: a wildcard is allowed only as a trailing \"/*\""),
                    );
                    None
                }
                None => Some(IdentityPattern::Exact(entry.clone())),
            }
        })
        .collect()
}

/// `jwt:sub:<subject>` or `jwt:claim:<name>=<value>` (`rest` is what follows `jwt:`).
fn compile_jwt_entry(entry: &str, rest: &str) -> Result<IdentityPattern, String> {
    if let Some(subject) = rest.strip_prefix("sub:") {
        if subject.is_empty() {
            return Err(format!(
                "{entry:?}: name the subject, as in \"jwt:sub:alice\""
            ));
        }
        return Ok(IdentityPattern::JwtSubject(subject.to_owned()));
    }
    if let Some(claim) = rest.strip_prefix("claim:") {
        return match claim.split_once('=') {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => {
                Ok(IdentityPattern::JwtClaim {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })
            }
            _ => Err(format!(
                "{entry:?}: expected jwt:claim:<name>=<value>, as in \"jwt:claim:team=payments\""
            )),
        };
    }
    Err(format!(
        "{entry:?}: a JWT entry is jwt:sub:<subject> or jwt:claim:<name>=<value>"
    ))
}

pub(super) fn compile_matcher(
    spec: &MatchSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<RouteMatcher> {
    let errors_before = sink.errors.len();
    let host = spec
        .host
        .as_deref()
        .and_then(|host| compile_host_pattern(host, &path.key("host"), sink));

    let given: Vec<&str> = [
        ("path_prefix", spec.path_prefix.is_some()),
        ("path_exact", spec.path_exact.is_some()),
        ("path_regex", spec.path_regex.is_some()),
    ]
    .iter()
    .filter(|(_, present)| *present)
    .map(|(name, _)| *name)
    .collect();
    if given.len() > 1 {
        sink.at(
            &path.key(given[1]),
            format!(
                "only one of path_prefix, path_exact and path_regex may be given; found {}",
                given.join(" and ")
            ),
        );
    }
    let path_match = if let Some(prefix) = &spec.path_prefix {
        if !prefix.starts_with('/') {
            sink.at(
                &path.key("path_prefix"),
                "path_prefix must start with \"/\"",
            );
        }
        Some(PathMatch::Prefix(prefix.clone()))
    } else if let Some(exact) = &spec.path_exact {
        if !exact.starts_with('/') {
            sink.at(&path.key("path_exact"), "path_exact must start with \"/\"");
        }
        Some(PathMatch::Exact(exact.clone()))
    } else if let Some(pattern) = &spec.path_regex {
        compile_regex(pattern, true, &path.key("path_regex"), sink).map(PathMatch::Regex)
    } else {
        None
    };

    let mut methods = Vec::new();
    if let Some(list) = &spec.methods {
        if list.is_empty() {
            sink.at(
                &path.key("methods"),
                "methods must not be empty; leave it out to allow every method",
            );
        }
        for (i, method) in list.iter().enumerate() {
            let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            if !valid {
                sink.at(
                    &path.key("methods").index(i),
                    format!("{method:?} is not a method; write it in upper case, such as \"GET\""),
                );
            }
            methods.push(method.clone());
        }
    }

    let mut headers = Vec::new();
    for (name, condition) in &spec.headers {
        let at = path.key("headers").key(name);
        if !is_header_name(name) {
            sink.at(&at, format!("{name:?} is not a valid header name"));
        }
        if let Some(test) = compile_header_test(condition, &at, sink) {
            headers.push((name.to_ascii_lowercase(), test));
        }
    }
    let query = spec
        .query
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if spec.query.keys().any(|name| name.is_empty()) {
        sink.at(
            &path.key("query"),
            "a query parameter's name must not be empty",
        );
    }
    let source = match &spec.source {
        Some(entries) if entries.is_empty() => {
            sink.at(
                &path.key("source"),
                "source must not be empty; leave it out to allow every client",
            );
            Vec::new()
        }
        Some(entries) => compile_address_blocks(entries, &path.key("source"), sink),
        None => Vec::new(),
    };

    if sink.errors.len() != errors_before {
        return None;
    }
    Some(RouteMatcher {
        host,
        path: path_match,
        methods,
        headers,
        query,
        source,
        preflight_as_announced: false,
    })
}

/// One `match.headers` entry: exactly one of `exact`, `prefix`, `regex` and `present`.
fn compile_header_test(
    condition: &crate::matching::HeaderConditionSection,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<crate::matching::HeaderTest> {
    use crate::matching::HeaderTest;
    let given = [
        condition.exact.is_some(),
        condition.prefix.is_some(),
        condition.regex.is_some(),
        condition.present.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        sink.at(
            at,
            "a header condition is a string or a table with exactly one of exact, prefix, regex and present",
        );
        return None;
    }
    if let Some(value) = &condition.exact {
        return Some(HeaderTest::Exact(value.clone()));
    }
    if let Some(prefix) = &condition.prefix {
        return Some(HeaderTest::Prefix(prefix.clone()));
    }
    if let Some(pattern) = &condition.regex {
        return compile_regex(pattern, true, &at.key("regex"), sink).map(HeaderTest::Regex);
    }
    condition.present.map(HeaderTest::Present)
}

pub(super) fn compile_retry(
    spec: &RetrySection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> RetrySpec {
    if spec.attempts > 10 {
        sink.at(&path.key("attempts"), "at most 10 retries");
    }
    let mut on = RetryOn::default();
    match &spec.on {
        None => {
            on.connect_failure = true;
            on.refused = true;
            on.reset = true;
            on.gateway_error = true;
        }
        Some(conditions) => {
            if conditions.is_empty() {
                sink.at(
                    &path.key("on"),
                    "on must not be empty; leave it out for the defaults",
                );
            }
            for (i, condition) in conditions.iter().enumerate() {
                match condition {
                    RetryCondition::Name(name) => match name.as_str() {
                        "connect-failure" => on.connect_failure = true,
                        "refused" => on.refused = true,
                        "reset" => on.reset = true,
                        "5xx" => on.server_error = true,
                        "gateway-error" => on.gateway_error = true,
                        other if other.parse::<u16>().is_ok() => sink.at(
                            &path.key("on").index(i),
                            format!("a status code is a number, not a string: write {other} without quotes"),
                        ),
                        other => sink.at(
                            &path.key("on").index(i),
                            format!("unknown retry condition {other:?}: expected connect-failure, refused, reset, 5xx, gateway-error or a status code"),
                        ),
                    },
                    RetryCondition::Code(code) if (100..600).contains(code) => on.codes.push(*code),
                    RetryCondition::Code(code) => sink.at(
                        &path.key("on").index(i),
                        format!("{code} is not an HTTP status code"),
                    ),
                }
            }
        }
    }
    let per_try_timeout = spec.per_try_timeout.map(|d| d.get());
    if per_try_timeout.is_some_and(|t| t.is_zero()) {
        sink.at(&path.key("per_try_timeout"), "must be more than zero");
    }
    let budget_percent = spec.budget_percent.unwrap_or(20);
    if budget_percent > 100 {
        sink.at(&path.key("budget_percent"), "must be between 0 and 100");
    }
    RetrySpec {
        retries: spec.attempts,
        on,
        per_try_timeout,
        backoff: spec.backoff.map_or(Duration::from_millis(25), |d| d.get()),
        budget_percent,
        min_retries_per_second: spec.min_retries_per_second.unwrap_or(10),
        non_idempotent: spec.retry_non_idempotent.unwrap_or(false),
    }
}

pub(super) fn compile_header_rules(
    spec: &HeaderRulesSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> HeaderRules {
    let mut pairs = |key: &str, map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(name, value)| {
                if !is_header_name(name) {
                    sink.at(
                        &path.key(key).key(name),
                        format!("{name:?} is not a valid header name"),
                    );
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    sink.at(
                        &path.key(key).key(name),
                        "a header value must not hold CR, LF or NUL",
                    );
                }
                (name.to_ascii_lowercase(), value.clone())
            })
            .collect::<Vec<_>>()
    };
    let request_set = pairs("request_set", &spec.request_set);
    let request_add = pairs("request_add", &spec.request_add);
    let response_set = pairs("response_set", &spec.response_set);
    let response_add = pairs("response_add", &spec.response_add);
    let mut names = |key: &str, list: &[String]| {
        list.iter()
            .enumerate()
            .map(|(i, name)| {
                if !is_header_name(name) {
                    sink.at(
                        &path.key(key).index(i),
                        format!("{name:?} is not a valid header name"),
                    );
                }
                name.to_ascii_lowercase()
            })
            .collect::<Vec<_>>()
    };
    HeaderRules {
        request_set,
        request_add,
        request_remove: names("request_remove", &spec.request_remove),
        response_set,
        response_add,
        response_remove: names("response_remove", &spec.response_remove),
    }
}

pub(super) fn compile_fault(
    spec: &FaultSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> FaultSpec {
    let delay_percent = percent(
        spec.delay_percent.or(spec.delay.map(|_| 100.0)),
        &path.key("delay_percent"),
        sink,
    );
    let abort_percent = percent(
        spec.abort_percent.or(spec.abort_status.map(|_| 100.0)),
        &path.key("abort_percent"),
        sink,
    );
    if spec.delay_percent.is_some() && spec.delay.is_none() {
        sink.at(&path.key("delay_percent"), "delay_percent needs a delay");
    }
    if spec.abort_percent.is_some() && spec.abort_status.is_none() {
        sink.at(
            &path.key("abort_percent"),
            "abort_percent needs an abort_status",
        );
    }
    if let Some(status) = spec.abort_status {
        if !(200..600).contains(&status) {
            sink.at(
                &path.key("abort_status"),
                "abort_status must be a status code from 200 to 599",
            );
        }
    }
    FaultSpec {
        delay: spec.delay.map(|d| (d.get(), delay_percent)),
        abort: spec.abort_status.map(|status| (status, abort_percent)),
    }
}

/// A host or server name condition: exact, or `*.suffix`; case is ignored.
pub(super) fn compile_host_pattern(
    host: &str,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<HostMatch> {
    let lower = host.to_ascii_lowercase();
    let (check, result) = match lower.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
            (&suffix[1..], HostMatch::Suffix(suffix.to_owned()))
        }
        Some(_) => {
            sink.at(at, "a wildcard host name must look like \"*.example.com\"");
            return None;
        }
        None => (lower.as_str(), HostMatch::Exact(lower.clone())),
    };
    if let Some(suffix) = check.strip_prefix('.').filter(|s| !s.is_empty()) {
        // `.example.com` is NGINX's "this name and its subdomains"; here it would match no
        // name at all.
        sink.at(
            at,
            format!("{host:?} is not a host name: for any name under it write \"*.{suffix}\" (and \"{suffix}\" for the name itself)"),
        );
        return None;
    }
    let valid = !check.is_empty()
        && !check.contains("..")
        && check
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid {
        sink.at(
            at,
            format!("{host:?} is not a valid host name (leave the port out)"),
        );
        return None;
    }
    Some(result)
}

/// A route's `split`: each upstream found, weights in range; `None` when any entry is wrong.
pub(super) fn compile_splits(
    entries: &[SplitEntry],
    upstreams: &[Option<UpstreamSpec>],
    upstream_names: &HashSet<String>,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<Vec<Split>> {
    let mut splits = Vec::with_capacity(entries.len());
    let mut total_weight = 0u32;
    for (j, split) in entries.iter().enumerate() {
        let split_path = at.index(j);
        if split.weight > MAX_ROUTE_WEIGHT {
            sink.at(
                &split_path.key("weight"),
                format!("split weight must be between 0 and {MAX_ROUTE_WEIGHT}"),
            );
        }
        total_weight = total_weight.saturating_add(split.weight);
        let found = upstreams
            .iter()
            .position(|u| u.as_ref().is_some_and(|u| u.name == split.upstream));
        match found {
            Some(upstream) => splits.push(Split {
                upstream,
                weight: split.weight,
            }),
            None if upstream_names.contains(&split.upstream) => {}
            None => sink.at(
                &split_path.key("upstream"),
                format!("unknown upstream {:?}", split.upstream),
            ),
        }
    }
    if !entries.is_empty() && total_weight == 0 {
        sink.at(
            at,
            "the split weights add up to zero, so no request could be routed",
        );
    } else if total_weight > MAX_ROUTE_WEIGHT {
        sink.at(
            at,
            format!("the split weights add up to {total_weight}; the most is {MAX_ROUTE_WEIGHT}"),
        );
    }
    (splits.len() == entries.len()).then_some(splits)
}

/// A route's `listeners`: each found, and of the kind the route is for (`Http` for
/// `[[routes]]`; `Tcp` for `[[tcp_routes]]`, which take `tls_passthrough` ones too).
pub(super) fn compile_route_listeners(
    wanted: &[String],
    kind: ListenerProtocol,
    listeners: &[Option<Listener>],
    listener_names: &HashSet<String>,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Vec<usize> {
    if wanted.is_empty() {
        sink.at(
            at,
            "listeners must not be empty; leave it out to mean every listener",
        );
    }
    wanted
        .iter()
        .enumerate()
        .filter_map(|(j, name)| {
            let found = listeners
                .iter()
                .position(|l| l.as_ref().is_some_and(|l| &l.name == name));
            match found.and_then(|i| listeners[i].as_ref()) {
                None if !listener_names.contains(name) => {
                    sink.at(&at.index(j), format!("unknown listener {name:?}"))
                }
                Some(listener) if (listener.protocol == ListenerProtocol::Http) != (kind == ListenerProtocol::Http) => {
                    let (what, wanted) = match kind {
                        ListenerProtocol::Http => ("an HTTP route", "[[tcp_routes]] serve it"),
                        _ => ("a TCP route", "[[routes]] serve it"),
                    };
                    sink.at(
                        &at.index(j),
                        format!(
                            "listener {name:?} has protocol = {:?}, which {what} cannot serve: {wanted}",
                            listener.protocol.as_str()
                        ),
                    );
                    return None;
                }
                _ => {}
            }
            found
        })
        .collect()
}
