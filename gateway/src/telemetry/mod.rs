//! Metrics, the access log, traces and the gateway's own log level.

pub mod access_log;
pub mod failures;
mod logs;
mod metrics;
pub mod trace;
pub mod upstream_state;

use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::time::Duration;

use meshgate_policy::compiled::{AccessLogTarget, TelemetrySettings};

pub use access_log::{millis, non_empty, AccessLog, Shown, TcpAccessRecord};
pub use logs::{init_logging, set_format as set_log_format};
pub use metrics::Metrics;

/// The values of every label set known from the start, so that each counter is exported at 0
/// before its first event and an alert has a series to match.
const RELOAD_RESULTS: [&str; 5] = ["applied", "unchanged", "invalid", "conflict", "error"];
const TLS_RELOAD_RESULTS: [&str; 2] = ["applied", "refused"];
const DISCOVERY_ERROR_KINDS: [&str; 7] = [
    "timeout",
    "servfail",
    "refused",
    "unreachable",
    "nxdomain",
    "empty",
    "other",
];

impl Metrics {
    /// Creates at 0 the counters whose labels need no policy.
    pub fn zero_fixed(&self) {
        for result in RELOAD_RESULTS {
            self.policy_reloads.with_label_values(&[result]);
        }
        for result in TLS_RELOAD_RESULTS {
            self.tls_reloads.with_label_values(&[result]);
        }
    }

    /// Creates at 0 the counters of `policy`'s routes and upstreams.
    pub fn zero_policy(&self, policy: &meshgate_policy::CompiledPolicy) {
        for route in &policy.routes {
            let name = route.name.as_str();
            self.authz_denied.with_label_values(&[name]);
            if route.retry.is_some() {
                self.retries_total.with_label_values(&[name]);
            }
            if route.cors.is_some() {
                for result in ["allowed", "refused"] {
                    self.cors_preflights.with_label_values(&[name, result]);
                }
            }
            // A route compresses with its own `compress`, or its listeners'.
            let compresses = match &route.compress {
                Some(settings) => settings.enabled,
                None => policy
                    .listeners
                    .iter()
                    .enumerate()
                    .any(|(index, listener)| {
                        listener.compress.as_ref().is_some_and(|c| c.enabled)
                            && route.listeners.as_ref().is_none_or(|l| l.contains(&index))
                    }),
            };
            if compresses {
                for coding in ["zstd", "br", "gzip"] {
                    self.compressed_responses.with_label_values(&[name, coding]);
                }
            }
            if route.splits.len() > 1 {
                for split in &route.splits {
                    let upstream = policy.upstreams[split.upstream].name.as_str();
                    self.split_fallbacks.with_label_values(&[name, upstream]);
                }
            }
        }
        for (index, upstream) in policy.upstreams.iter().enumerate() {
            let name = upstream.name.as_str();
            for &to in policy.failover.get(index).into_iter().flatten() {
                self.failovers
                    .with_label_values(&[name, policy.upstreams[to].name.as_str()]);
            }
            if !upstream.names.is_empty() {
                for kind in DISCOVERY_ERROR_KINDS {
                    self.discovery_errors.with_label_values(&[name, kind]);
                }
            }
        }
    }
}
pub use trace::{RequestSpan, SpanEnd, Tracing};

/// The gateway's telemetry sinks.
#[derive(Default)]
pub struct Telemetry {
    /// Metric families.
    pub metrics: Metrics,
    /// Lines for failed requests, at most one per route and reason per second.
    pub failures: failures::FailureLog,
    /// Lines for failed downstream TLS handshakes, at most one per listener and reason per
    /// second.
    pub handshake_failures: failures::Throttle,
    access_log: ArcSwapOption<AccessLog>,
    tracing: ArcSwapOption<Tracing>,
}

impl Telemetry {
    /// Applies a policy's `[telemetry]`: each sink is restarted only when its settings changed,
    /// and one that cannot start keeps the old one and says why.
    pub fn configure(&self, settings: &TelemetrySettings) {
        if let Err(e) = self.configure_access_log(&settings.access_log) {
            tracing::warn!("access log not reopened, keeping the old one: {e}");
        }
        self.configure_tracing(settings.tracing.as_ref());
        logs::set_level(&settings.log_level);
        logs::set_format(settings.log_format);
    }

    /// Points the access log at `target`, restarting its writer only when the target changed.
    fn configure_access_log(&self, target: &AccessLogTarget) -> std::io::Result<()> {
        let current = self.access_log.load();
        let unchanged = match current.as_deref() {
            Some(log) => log.target() == target,
            None => *target == AccessLogTarget::Off,
        };
        if unchanged {
            return Ok(());
        }
        let log = AccessLog::start(target, self.metrics.access_log_dropped.clone())?;
        self.access_log.store(log.map(Arc::new));
        Ok(())
    }

    /// Starts, replaces or stops the trace exporter to match `settings`.
    fn configure_tracing(&self, settings: Option<&meshgate_policy::compiled::TraceSettings>) {
        let current = self.tracing.load_full();
        if current.as_deref().map(Tracing::settings) == settings {
            return;
        }
        let next = match settings.map(Tracing::start).transpose() {
            Ok(next) => next.map(Arc::new),
            Err(e) => {
                tracing::warn!("tracing not reconfigured, keeping the old exporter: {e}");
                return;
            }
        };
        if let Some(next) = &next {
            tracing::info!(
                url = %next.settings().traces_url,
                ratio = next.settings().sample_ratio,
                "exporting traces"
            );
        }
        self.tracing.store(next);
        if let Some(old) = current {
            // Flushing waits on the network: do it away from the caller (often the admin
            // API's runtime), and let requests still holding the old tracer finish first.
            let _ = std::thread::Builder::new()
                .name("otlp-shutdown".into())
                .spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    old.shutdown(Duration::from_secs(5));
                });
        }
    }

    /// The current access log writer, if the access log is on.
    pub fn access_log(&self) -> arc_swap::Guard<Option<Arc<AccessLog>>> {
        self.access_log.load()
    }

    /// The current tracer, if traces are exported.
    pub fn tracing(&self) -> arc_swap::Guard<Option<Arc<Tracing>>> {
        self.tracing.load()
    }

    /// Writes the access log lines and exports the spans still queued, before the process
    /// exits (every request has finished by then).
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(log) = self.access_log.swap(None).and_then(Arc::into_inner) {
            log.close();
        }
        if let Some(tracing) = self.tracing.swap(None) {
            tracing.shutdown(timeout);
        }
    }
}
