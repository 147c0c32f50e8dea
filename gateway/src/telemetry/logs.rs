//! The gateway's own log (stderr, through `tracing`) and its level, which follows
//! `[telemetry].log_level` on every reload unless `MESHGATE_LOG` pins it.

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

const ENV_FILTER: &str = "MESHGATE_LOG";

struct Level {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static LEVEL: OnceLock<Level> = OnceLock::new();

/// Installs the stderr logger: `MESHGATE_LOG` when set (it then wins over the policy),
/// `info` until a policy says otherwise.
pub fn init_logging() {
    let from_env = std::env::var(ENV_FILTER).ok();
    let filter = from_env
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init()
        .is_ok();
    if installed && from_env.is_none() {
        let _ = LEVEL.set(Level {
            handle,
            current: Mutex::new("info".to_owned()),
        });
    }
}

/// Sets the log filter to `level` (a `tracing` directive list) if it changed.
pub(crate) fn set_level(level: &str) {
    let Some(state) = LEVEL.get() else {
        return;
    };
    let mut current = state.current.lock().unwrap_or_else(|e| e.into_inner());
    if *current == level {
        return;
    }
    match EnvFilter::try_new(level) {
        Ok(filter) => {
            if state.handle.reload(filter).is_ok() {
                *current = level.to_owned();
                tracing::info!(level, "log level set");
            }
        }
        Err(e) => tracing::warn!("log level {level:?} not applied: {e}"),
    }
}
