//! Prometheus metrics. Label values come only from policy names, status codes and reason
//! tokens, so cardinality stays bounded whatever the traffic.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Buckets of request durations, in seconds: 0.5 ms to 30 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The gateway's metric families.
pub struct Metrics {
    registry: Registry,
    family_names: Vec<String>,
    /// `meshgate_requests_total{listener,route,upstream,code,reason}`.
    pub requests_total: IntCounterVec,
    /// `meshgate_policy_version`.
    pub policy_version: IntGauge,
    /// `meshgate_policy_reloads_total{result}`.
    pub policy_reloads: IntCounterVec,
    /// `meshgate_access_log_dropped_total`.
    pub access_log_dropped: IntCounter,
    /// `meshgate_retries_total{route}`.
    pub retries_total: IntCounterVec,
    /// `meshgate_rate_limited_total{route,mode}`.
    pub rate_limited_total: IntCounterVec,
    /// `meshgate_rate_limit_evictions_total{route}`.
    pub rate_limit_evictions: IntCounterVec,
    /// `meshgate_rate_limit_store_errors_total{kind}`.
    pub rate_limit_store_errors: IntCounterVec,
    /// `meshgate_rate_limit_store_duration_seconds`.
    pub rate_limit_store_duration: Histogram,
    /// `meshgate_tls_handshakes_total{listener}`.
    pub tls_handshakes: IntCounterVec,
    /// `meshgate_tls_handshake_failures_total{listener,reason}`.
    pub tls_handshake_failures: IntCounterVec,
    /// `meshgate_tls_certificate_expiry_timestamp_seconds{file}`.
    pub tls_certificate_expiry: IntGaugeVec,
    /// `meshgate_tls_reloads_total{result}`.
    pub tls_reloads: IntCounterVec,
    /// `meshgate_authz_denied_total{route}`.
    pub authz_denied: IntCounterVec,
    /// `meshgate_request_duration_seconds{route,upstream}`.
    pub request_duration: HistogramVec,
    /// `meshgate_request_bytes_total{route,upstream}`.
    pub request_bytes: IntCounterVec,
    /// `meshgate_response_bytes_total{route,upstream}`.
    pub response_bytes: IntCounterVec,
    /// `meshgate_requests_in_flight{route}`.
    pub requests_in_flight: IntGaugeVec,
    /// `meshgate_upstream_connect_duration_seconds{upstream}`.
    pub upstream_connect_duration: HistogramVec,
    /// `meshgate_upstream_connections_total{upstream,reused}`.
    pub upstream_connections: IntCounterVec,
    /// `meshgate_discovery_errors_total{upstream,kind}`: failed DNS resolutions of an
    /// upstream's names, by kind (`timeout`, `servfail`, `refused`, `unreachable`,
    /// `nxdomain`, `empty`, `other`).
    pub discovery_errors: IntCounterVec,
    /// `meshgate_failovers_total{upstream,to}`: requests for `upstream` sent to its failover
    /// `to`.
    pub failovers: IntCounterVec,
    /// `meshgate_split_fallbacks_total{route,upstream}`: requests whose split side
    /// (`upstream`) had no eligible endpoint and that went to another side.
    pub split_fallbacks: IntCounterVec,
    /// `meshgate_cors_preflights_total{route,result}`: CORS preflights the gateway answered,
    /// `allowed` or `refused` (origin or method not allowed).
    pub cors_preflights: IntCounterVec,
    /// `meshgate_compressed_responses_total{route,encoding}`: responses compressed.
    pub compressed_responses: IntCounterVec,
    /// `meshgate_mirror_dropped_total{route,upstream}`: request copies not sent to a mirror
    /// (too many in flight, or a body larger than the retry buffer).
    pub mirror_dropped: IntCounterVec,
    /// `meshgate_jwt_validations_total{route,result}`: bearer tokens checked on routes with
    /// `jwt`: `valid`, `anonymous` (no token, not required), `missing` or `invalid`.
    pub jwt_validations: IntCounterVec,
    /// `meshgate_jwks_fetches_total{url,result}`: fetches of a `jwks_url`, `ok` or `error`.
    pub jwks_fetches: IntCounterVec,
    /// `meshgate_fleet_connected`: 1 while a fleet node is connected to etcd.
    pub fleet_connected: prometheus::IntGauge,
    /// `meshgate_restart_required{section}`: 1 while a change of `section` waits for a
    /// restart.
    pub restart_required: IntGaugeVec,
    /// `meshgate_listener_connections{listener}`: client connections being served.
    pub listener_connections: IntGaugeVec,
    /// `meshgate_listener_connections_waiting{listener}`: accepted connections waiting in the gateway for a
    /// place under `max_connections`.
    pub listener_connections_waiting: IntGaugeVec,
    /// `meshgate_tcp_*`: the TCP proxy's families.
    pub tcp: crate::tcp::TcpMetrics,
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "meshgate_requests_total",
                "Requests answered, by listener, route, upstream, status code and reason token.",
            ),
            &["listener", "route", "upstream", "code", "reason"],
        )
        .expect("static metric definition");
        let policy_version = IntGauge::new(
            "meshgate_policy_version",
            "Number of the active policy, counting from 1 at start.",
        )
        .expect("static metric definition");
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "meshgate_policy_reloads_total",
                "Policy applies by result (applied, unchanged, invalid, conflict, error).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let access_log_dropped = IntCounter::new(
            "meshgate_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )
        .expect("static metric definition");
        let retries_total = IntCounterVec::new(
            Opts::new("meshgate_retries_total", "Retries taken, by route."),
            &["route"],
        )
        .expect("static metric definition");
        let rate_limited_total = IntCounterVec::new(
            Opts::new(
                "meshgate_rate_limited_total",
                "Requests over a rate limit, by route and mode (enforce: refused with 429; shadow: counted and let through).",
            ),
            &["route", "mode"],
        )
        .expect("static metric definition");
        let rate_limit_evictions = IntCounterVec::new(
            Opts::new(
                "meshgate_rate_limit_evictions_total",
                "Buckets of local rate limits dropped to stay within max_keys, by route.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let rate_limit_store_errors = IntCounterVec::new(
            Opts::new(
                "meshgate_rate_limit_store_errors_total",
                "Global rate-limit decisions the store failed, by kind (timeout, unavailable, error).",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let rate_limit_store_duration = Histogram::with_opts(
            HistogramOpts::new(
                "meshgate_rate_limit_store_duration_seconds",
                "Time of one global rate-limit decision in the store, timeouts included.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("static metric definition");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "meshgate_tls_handshakes_total",
                "TLS handshakes completed, by listener.",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "meshgate_tls_handshake_failures_total",
                "Downstream TLS handshakes that failed, by listener and reason: the client's certificate (expired, not-yet-valid, unknown-ca, revoked, bad-certificate), no-certificate, incompatible (no version or cipher in common), closed (the client left), timeout, protocol (anything else the client sent wrong).",
            ),
            &["listener", "reason"],
        )
        .expect("static metric definition");
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "meshgate_tls_certificate_expiry_timestamp_seconds",
                "When a certificate file in use expires (Unix time); for a CA bundle, its first certificate to expire.",
            ),
            &["file"],
        )
        .expect("static metric definition");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "meshgate_tls_reloads_total",
                "Certificate, key and CA file changes, by result (applied, or refused while the old files keep serving).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let authz_denied = IntCounterVec::new(
            Opts::new(
                "meshgate_authz_denied_total",
                "Requests refused with 403 because the caller's identity is not allowed, by route.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "meshgate_request_duration_seconds",
                "Time from the request's arrival to the end of its response, by route and upstream (empty for answers the gateway made itself).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "upstream"],
        )
        .expect("static metric definition");
        let request_bytes = IntCounterVec::new(
            Opts::new(
                "meshgate_request_bytes_total",
                "Request body bytes received from clients, by route and upstream.",
            ),
            &["route", "upstream"],
        )
        .expect("static metric definition");
        let response_bytes = IntCounterVec::new(
            Opts::new(
                "meshgate_response_bytes_total",
                "Response body bytes sent to clients, by route and upstream.",
            ),
            &["route", "upstream"],
        )
        .expect("static metric definition");
        let restart_required = IntGaugeVec::new(
            Opts::new(
                "meshgate_restart_required",
                "1 while the applied policy changes a static section that the process runs with until it restarts.",
            ),
            &["section"],
        )
        .expect("static metric definition");
        let listener_connections = IntGaugeVec::new(
            Opts::new(
                "meshgate_listener_connections",
                "Client connections being served, by listener.",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let listener_connections_waiting = IntGaugeVec::new(
            Opts::new(
                "meshgate_listener_connections_waiting",
                "Accepted client connections waiting for a place under the listener's max_connections.",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let requests_in_flight = IntGaugeVec::new(
            Opts::new(
                "meshgate_requests_in_flight",
                "Requests being served now, by route.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let upstream_connect_duration = HistogramVec::new(
            HistogramOpts::new(
                "meshgate_upstream_connect_duration_seconds",
                "Time to open a new connection to an endpoint (TCP, and TLS when the upstream uses it), by upstream.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["upstream"],
        )
        .expect("static metric definition");
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "meshgate_upstream_connections_total",
                "Upstream connections a try used, by upstream and whether it was reused from the pool.",
            ),
            &["upstream", "reused"],
        )
        .expect("static metric definition");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let discovery_errors = counter(
            "meshgate_discovery_errors_total",
            "Failed DNS resolutions of an upstream's names, by kind; the last good endpoints stay.",
            &["upstream", "kind"],
        );
        let failovers = counter(
            "meshgate_failovers_total",
            "Requests sent to a failover upstream because theirs had no eligible endpoint.",
            &["upstream", "to"],
        );
        let split_fallbacks = counter(
            "meshgate_split_fallbacks_total",
            "Requests whose split side had no eligible endpoint, sent to another side of the route.",
            &["route", "upstream"],
        );
        let cors_preflights = counter(
            "meshgate_cors_preflights_total",
            "CORS preflights answered by the gateway: allowed, or refused (origin or method not allowed).",
            &["route", "result"],
        );
        let compressed_responses = counter(
            "meshgate_compressed_responses_total",
            "Responses compressed by the gateway, by content coding.",
            &["route", "encoding"],
        );
        let jwt_validations = counter(
            "meshgate_jwt_validations_total",
            "Bearer tokens checked on routes with jwt: valid, anonymous (none, not required), missing or invalid.",
            &["route", "result"],
        );
        let jwks_fetches = counter(
            "meshgate_jwks_fetches_total",
            "Fetches of a route's jwks_url: ok, or error (the keys already fetched are kept).",
            &["url", "result"],
        );
        let mirror_dropped = counter(
            "meshgate_mirror_dropped_total",
            "Request copies not sent to a mirror: too many in flight, or a body larger than the retry buffer.",
            &["route", "upstream"],
        );
        let fleet_connected = prometheus::IntGauge::new(
            "meshgate_fleet_connected",
            "1 while this fleet node is connected to etcd; 0 while it serves the policy applied last without it.",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "meshgate_build_info",
                "Build information (version, TLS backend); always 1.",
            ),
            &["version", "tls"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), crate::tls::BACKEND])
            .set(1);
        let tcp = crate::tcp::TcpMetrics::new();
        let mut family_names = Vec::new();
        for collector in tcp.collectors().into_iter().chain([
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(policy_version.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(retries_total.clone()),
            Box::new(rate_limited_total.clone()),
            Box::new(rate_limit_evictions.clone()),
            Box::new(rate_limit_store_errors.clone()),
            Box::new(rate_limit_store_duration.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(tls_certificate_expiry.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(authz_denied.clone()),
            Box::new(request_duration.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(restart_required.clone()),
            Box::new(listener_connections.clone()),
            Box::new(listener_connections_waiting.clone()),
            Box::new(upstream_connect_duration.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(discovery_errors.clone()),
            Box::new(failovers.clone()),
            Box::new(split_fallbacks.clone()),
            Box::new(cors_preflights.clone()),
            Box::new(compressed_responses.clone()),
            Box::new(mirror_dropped.clone()),
            Box::new(jwt_validations.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(fleet_connected.clone()),
            Box::new(build_info),
        ]) {
            family_names.extend(collector.desc().iter().map(|d| d.fq_name.clone()));
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            family_names,
            requests_total,
            policy_version,
            policy_reloads,
            access_log_dropped,
            retries_total,
            rate_limited_total,
            rate_limit_evictions,
            rate_limit_store_errors,
            rate_limit_store_duration,
            tls_handshakes,
            tls_handshake_failures,
            tls_certificate_expiry,
            tls_reloads,
            authz_denied,
            request_duration,
            request_bytes,
            response_bytes,
            requests_in_flight,
            upstream_connect_duration,
            upstream_connections,
            discovery_errors,
            failovers,
            split_fallbacks,
            cors_preflights,
            compressed_responses,
            mirror_dropped,
            jwt_validations,
            jwks_fetches,
            fleet_connected,
            restart_required,
            listener_connections,
            listener_connections_waiting,
            tcp,
        }
    }

    /// The names of the registered families (those read from the pools at scrape time are
    /// not among them), whether or not they have samples yet.
    pub fn family_names(&self) -> &[String] {
        &self.family_names
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self::new();
        metrics.zero_fixed();
        metrics
    }
}
