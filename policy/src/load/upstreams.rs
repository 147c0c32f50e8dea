//! `[[upstreams]]`: endpoints, balancing, health checks, circuit breakers, outlier detection.

use super::*;
use crate::discovery::{NameQuery, NamedSource};

impl Compiler<'_, '_> {
    pub(super) fn compile_upstreams(
        &self,
        upstreams: &[Option<UpstreamSection>],
        zone: Option<&str>,
        sink: &mut ErrorSink<'_>,
    ) -> Vec<Option<UpstreamSpec>> {
        let base = KeyPath::root().key("upstreams");
        let mut names = HashMap::new();
        upstreams
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let spec = spec.as_ref()?;
                let path = base.index(i);
                check_unique_name(&mut names, &spec.name, i, ("upstreams", "upstream"), &path.key("name"), sink);
                let mut ok = true;
                if spec.endpoints.is_empty() && spec.discovery.is_none() {
                    sink.at(
                        &path.key("endpoints"),
                        "an upstream needs at least one endpoint, or `discovery`",
                    );
                    ok = false;
                }
                let mut seen = HashMap::new();
                let mut endpoints = Vec::with_capacity(spec.endpoints.len());
                let mut names = Vec::new();
                for (j, entry) in spec.endpoints.iter().enumerate() {
                    let entry_path = path.key("endpoints").index(j);
                    if !(1..=MAX_ENDPOINT_WEIGHT).contains(&entry.weight) {
                        sink.at(
                            &entry_path.key("weight"),
                            format!("endpoint weight must be between 1 and {MAX_ENDPOINT_WEIGHT}"),
                        );
                        ok = false;
                    }
                    if entry.priority > MAX_PRIORITY {
                        sink.at(
                            &entry_path.key("priority"),
                            format!("endpoint priority must be between 0 and {MAX_PRIORITY}"),
                        );
                        ok = false;
                    }
                    match parse_endpoint_address(&entry.address) {
                        Ok(EndpointAddress::Literal(addr)) => {
                            if let Some(first) = seen.insert(entry.address.clone(), j) {
                                sink.at(
                                    &entry_path,
                                    format!("endpoint {addr} is listed twice (first at endpoints[{first}])"),
                                );
                                ok = false;
                            }
                            endpoints.push(EndpointSpec {
                                addr,
                                weight: entry.weight,
                                priority: entry.priority,
                                zone: entry.zone.clone(),
                            });
                        }
                        Ok(EndpointAddress::Name(name, port)) => {
                            if let Some(first) = seen.insert(entry.address.to_ascii_lowercase(), j) {
                                sink.at(
                                    &entry_path,
                                    format!("endpoint {} is listed twice (first at endpoints[{first}])", entry.address),
                                );
                                ok = false;
                            }
                            names.push(NamedSource {
                                query: NameQuery::Address { name, port },
                                weight: entry.weight,
                                priority: entry.priority,
                                zone: entry.zone.clone(),
                            });
                        }
                        Err(message) => {
                            sink.at(&entry_path, message);
                            ok = false;
                        }
                    }
                }
                if let Some(discovery) = &spec.discovery {
                    match compile_discovery_entry(discovery, &path.key("discovery"), sink) {
                        Some(query) => names.push(NamedSource {
                            query,
                            weight: 1,
                            priority: 0,
                            zone: discovery.zone.clone(),
                        }),
                        None => ok = false,
                    }
                }
                for (j, entry) in spec.endpoints.iter().enumerate() {
                    if let Some(zone) = &entry.zone {
                        check_name(zone, &path.key("endpoints").index(j).key("zone"), sink);
                    }
                }
                if let Some(zone) = spec.discovery.as_ref().and_then(|d| d.zone.as_ref()) {
                    check_name(zone, &path.key("discovery").key("zone"), sink);
                }
                let locality = compile_locality(spec, zone, &path, sink);
                let hash_key = match (&spec.hash_key, spec.balance) {
                    (Some(key), Balance::ConsistentHash) => RequestKey::parse(key)
                        .map_err(|message| {
                            sink.at(&path.key("hash_key"), message);
                            ok = false;
                        })
                        .ok(),
                    (None, Balance::ConsistentHash) => Some(RequestKey::ClientIp),
                    (Some(_), other) => {
                        sink.at(
                            &path.key("hash_key"),
                            format!(
                                "hash_key applies only to balance = \"consistent_hash\", not {:?}",
                                other.as_str()
                            ),
                        );
                        ok = false;
                        None
                    }
                    (None, _) => None,
                };
                let connect_timeout = spec.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get());
                if connect_timeout.is_zero() {
                    sink.at(&path.key("connect_timeout"), "connect_timeout must be more than zero");
                    ok = false;
                }
                let errors_before = sink.errors.len();
                let health_check = spec
                    .health_check
                    .as_ref()
                    .map(|h| compile_health_check(h, &path.key("health_check"), sink));
                let circuit_breaker = compile_breaker(
                    spec.circuit_breaker.as_ref(),
                    &path.key("circuit_breaker"),
                    sink,
                );
                let outlier_detection = spec
                    .outlier_detection
                    .as_ref()
                    .map(|o| compile_outlier(o, &path.key("outlier_detection"), sink));
                let idle_timeout = spec.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.get());
                let read_timeout = spec.read_timeout.map_or(DEFAULT_READ_TIMEOUT, |d| d.get());
                if read_timeout.is_zero() {
                    sink.at(&path.key("read_timeout"), "read_timeout must be more than zero");
                    ok = false;
                }
                let tls = spec
                    .tls
                    .as_ref()
                    .map(|t| self.compile_upstream_tls(t, &path.key("tls"), sink));
                if tls.is_some() && health_check.as_ref().is_some_and(|h| h.path.is_some()) {
                    sink.at(
                        &path.key("health_check").key("path"),
                        "HTTP health checks do not speak TLS yet: leave out `path` for a TCP connect check of a TLS upstream",
                    );
                }
                if !ok || sink.errors.len() != errors_before {
                    return None;
                }
                let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
                Some(UpstreamSpec {
                    idle_timeout,
                    read_timeout,
                    health_check,
                    circuit_breaker,
                    outlier_detection,
                    name: spec.name.clone(),
                    schedule: smooth_weighted_schedule(&weights),
                    endpoints,
                    names,
                    locality,
                    balance: spec.balance,
                    hash_key,
                    connect_timeout,
                    protocol: spec.protocol,
                    tls,
                })
            })
            .collect()
    }
}

pub(super) fn compile_health_check(
    spec: &HealthCheckSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> HealthCheckSpec {
    match (spec.kind.as_deref(), &spec.path) {
        (None, _) | (Some("http"), Some(_)) | (Some("tcp"), None) => {}
        (Some("http"), None) => sink.at(
            &path.key("type"),
            "an http health check needs `path`; type = \"tcp\" checks that a connection opens",
        ),
        (Some("tcp"), Some(_)) => sink.at(
            &path.key("path"),
            "a tcp health check only connects: leave out `path`, or make it type = \"http\"",
        ),
        (Some(other), _) => sink.at(
            &path.key("type"),
            format!("unknown health check type {other:?}: expected \"http\" or \"tcp\""),
        ),
    }
    if let Some(check_path) = &spec.path {
        if !check_path.starts_with('/') || check_path.bytes().any(|b| b.is_ascii_whitespace()) {
            sink.at(
                &path.key("path"),
                "the health check path must start with \"/\" and hold no spaces",
            );
        }
    }
    let interval = nonzero_duration(
        spec.interval,
        Duration::from_secs(5),
        &path.key("interval"),
        sink,
    );
    let timeout = nonzero_duration(
        spec.timeout,
        Duration::from_secs(1),
        &path.key("timeout"),
        sink,
    );
    if timeout > interval {
        sink.at(
            &path.key("timeout"),
            "the health check timeout must not be longer than its interval",
        );
    }
    HealthCheckSpec {
        path: spec.path.clone(),
        interval,
        timeout,
        healthy_threshold: positive(
            spec.healthy_threshold,
            2,
            &path.key("healthy_threshold"),
            sink,
        ),
        unhealthy_threshold: positive(
            spec.unhealthy_threshold,
            3,
            &path.key("unhealthy_threshold"),
            sink,
        ),
    }
}

pub(super) fn compile_breaker(
    spec: Option<&CircuitBreakerSection>,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> BreakerSpec {
    let default = CircuitBreakerSection::default();
    let spec = spec.unwrap_or(&default);
    BreakerSpec {
        max_connections: positive(
            spec.max_connections,
            DEFAULT_BREAKER_LIMIT,
            &path.key("max_connections"),
            sink,
        ),
        max_pending: positive(
            spec.max_pending,
            DEFAULT_BREAKER_LIMIT,
            &path.key("max_pending"),
            sink,
        ),
        max_requests: positive(
            spec.max_requests,
            DEFAULT_BREAKER_LIMIT,
            &path.key("max_requests"),
            sink,
        ),
        max_retries: positive(
            spec.max_retries,
            DEFAULT_BREAKER_LIMIT,
            &path.key("max_retries"),
            sink,
        ),
    }
}

pub(super) fn compile_outlier(
    spec: &OutlierDetectionSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> OutlierSpec {
    let max_ejection_percent = spec.max_ejection_percent.unwrap_or(50);
    if max_ejection_percent > 100 {
        sink.at(
            &path.key("max_ejection_percent"),
            "must be between 0 and 100",
        );
    }
    let base_ejection = nonzero_duration(
        spec.base_ejection,
        Duration::from_secs(30),
        &path.key("base_ejection"),
        sink,
    );
    let max_ejection = nonzero_duration(
        spec.max_ejection,
        Duration::from_secs(300),
        &path.key("max_ejection"),
        sink,
    );
    if max_ejection < base_ejection {
        sink.at(
            &path.key("max_ejection"),
            "max_ejection must not be shorter than base_ejection",
        );
    }
    OutlierSpec {
        consecutive_failures: positive(
            spec.consecutive_failures,
            5,
            &path.key("consecutive_failures"),
            sink,
        ),
        base_ejection,
        max_ejection,
        max_ejection_percent,
    }
}
