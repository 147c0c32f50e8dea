//! `[telemetry]`: access log, log level, metrics listener and trace export.

use super::*;

impl Compiler<'_, '_> {
    pub(super) fn compile_telemetry(
        &self,
        telemetry: TelemetrySection,
        sink: &mut ErrorSink<'_>,
    ) -> Option<TelemetrySettings> {
        let path = KeyPath::root().key("telemetry");
        let access_log = match telemetry.access_log.as_deref() {
            None | Some("stdout") => Some(AccessLogTarget::Stdout),
            Some("off") => Some(AccessLogTarget::Off),
            Some("") => {
                sink.at(
                    &path.key("access_log"),
                    "access_log must be \"off\", \"stdout\" or a file path",
                );
                None
            }
            Some(file) => {
                let resolved = self.resolve_path(Path::new(file));
                let parent_exists = resolved.parent().is_some_and(|p| p.is_dir());
                if !self.file_allowed(&resolved, &path.key("access_log"), sink) {
                    // Reported; the other keys of the section are still checked.
                } else if !parent_exists {
                    sink.at(
                        &path.key("access_log"),
                        format!(
                            "the folder of access log file {} does not exist",
                            resolved.display()
                        ),
                    );
                }
                Some(AccessLogTarget::File(resolved))
            }
        };
        let tracing = match telemetry.otlp_endpoint.as_deref() {
            None => {
                for (key, given) in [
                    ("trace_sample_ratio", telemetry.trace_sample_ratio.is_some()),
                    ("service_name", telemetry.service_name.is_some()),
                ] {
                    if given {
                        sink.at(
                            &path.key(key),
                            format!("{key} needs `otlp_endpoint`, where the spans are sent"),
                        );
                    }
                }
                None
            }
            Some(endpoint) => {
                let sample_ratio = telemetry
                    .trace_sample_ratio
                    .unwrap_or(DEFAULT_TRACE_SAMPLE_RATIO);
                if !(0.0..=1.0).contains(&sample_ratio) {
                    sink.at(
                        &path.key("trace_sample_ratio"),
                        "trace_sample_ratio must be between 0.0 and 1.0",
                    );
                }
                let service_name = telemetry
                    .service_name
                    .clone()
                    .unwrap_or_else(|| "meshgate".to_owned());
                if service_name.trim().is_empty() {
                    sink.at(&path.key("service_name"), "service_name must not be empty");
                }
                match traces_url(endpoint) {
                    Ok(traces_url) => Some(TraceSettings {
                        traces_url,
                        sample_ratio,
                        service_name,
                    }),
                    Err(message) => {
                        sink.at(&path.key("otlp_endpoint"), message);
                        None
                    }
                }
            }
        };
        let log_level = telemetry
            .log_level
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if log_level.trim().is_empty() {
            sink.at(&path.key("log_level"), "log_level must not be empty");
        } else if let Some(bad) = unknown_level(&log_level) {
            sink.at(
                &path.key("log_level"),
                format!(
                    "log_level {log_level:?}: {bad:?} is not a level; the levels are error, warn, info, debug, trace and off, alone or after a target (\"warn,meshgate=debug\")"
                ),
            );
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            sink.at(
                &path.key("log_level"),
                format!(
                    "log_level {log_level:?} is not a level (error, warn, info, debug, trace, off) or a filter such as \"warn,meshgate=debug\": {e}"
                ),
            );
        }
        let metrics_listen = telemetry.metrics_listen.as_deref().and_then(|text| {
            parse_socket_addr(text)
                .map_err(|message| sink.at(&path.key("metrics_listen"), message))
                .ok()
        });
        Some(TelemetrySettings {
            access_log: access_log?,
            tracing,
            log_level,
            log_format: telemetry.log_format.unwrap_or_default(),
            metrics_listen,
        })
    }
}

/// The levels a log filter directive may name.
const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

/// The first level of a filter that is not one. `tracing` reads a bare word it does not know
/// as a target name, so `"warning"` would be accepted and silence every line, errors included.
fn unknown_level(filter: &str) -> Option<&str> {
    filter.split(',').map(str::trim).find_map(|directive| {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        let known = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level));
        // A bare target (all its events) is accepted when it can only be a target: a module
        // path, or one of the gateway's own crates.
        let bare_target = !directive.contains('=')
            && (directive.contains("::")
                || ["meshgate", "pingora"]
                    .iter()
                    .any(|c| directive.starts_with(c)));
        (!known && !bare_target && !directive.is_empty()).then_some(level)
    })
}

/// The OTLP/HTTP traces URL of a collector's base URL: `/v1/traces` is added unless the path
/// already names it.
pub(super) fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| format!("otlp_endpoint {endpoint:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "otlp_endpoint must be an http:// URL (OTLP over HTTP; for TLS, send to a local collector that forwards it), not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("otlp_endpoint {endpoint:?} has no host"));
    }
    let trimmed = endpoint.trim_end_matches('/');
    Ok(if url.path().ends_with("/v1/traces") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    })
}
