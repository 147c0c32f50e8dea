//! Metrics and the access log.

mod access_log;
mod metrics;
pub mod upstream_state;

use arc_swap::ArcSwapOption;
use std::sync::Arc;

use meshgate_policy::compiled::AccessLogTarget;

pub use access_log::AccessLog;
pub use metrics::Metrics;

/// The gateway's telemetry sinks.
#[derive(Default)]
pub struct Telemetry {
    /// Metric families.
    pub metrics: Metrics,
    access_log: ArcSwapOption<AccessLog>,
}

impl Telemetry {
    /// Points the access log at `target`, restarting its writer only when the target changed.
    pub fn configure_access_log(&self, target: &AccessLogTarget) -> std::io::Result<()> {
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

    /// The current access log writer, if the access log is on.
    pub fn access_log(&self) -> arc_swap::Guard<Option<Arc<AccessLog>>> {
        self.access_log.load()
    }
}
