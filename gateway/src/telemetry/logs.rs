//! The gateway's own log (stderr, through `tracing`): its level, which follows
//! `[telemetry].log_level` on every reload unless `MESHGATE_LOG` pins it, and its format,
//! which follows `[telemetry].log_format` (text or one JSON object a line). Colours only on a
//! terminal, and never with `NO_COLOR` set.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use meshgate_policy::compiled::LogFormat;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Whether lines are JSON (`log_format = "json"`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Writes each line as text (`tracing`'s usual format) or JSON, as `JSON` says at the time.
struct SwitchedFormat {
    text: format::Format,
}

impl<S, N> FormatEvent<S, N> for SwitchedFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if !JSON.load(Ordering::Relaxed) {
            return self.text.format_event(ctx, writer, event);
        }
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), ts.to_string().into());
        line.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        // A `log` record (Pingora's) names its module in `log.target`.
        let target = fields
            .log_target
            .as_deref()
            .unwrap_or(event.metadata().target());
        line.insert("target".into(), target.into());
        line.insert("msg".into(), fields.message.unwrap_or_default().into());
        for (name, value) in fields.values {
            line.entry(name).or_insert(value);
        }
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        writer.write_str(&text)
    }
}

/// An event's message and fields, as JSON values.
#[derive(Default)]
struct JsonFields {
    message: Option<String>,
    log_target: Option<String>,
    values: Vec<(String, serde_json::Value)>,
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_value(field, text.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_value(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_value(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_value(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_value(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record_value(field, value.into());
    }
}

impl JsonFields {
    fn record_value(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            });
        } else if field.name() == "log.target" {
            self.log_target = value.as_str().map(str::to_owned);
        } else if !field.name().starts_with("log.") {
            // The other `log.*` fields (file, line, module path) of a bridged `log` record
            // say where in Pingora's source the line is: noise in an operator's log.
            self.values.push((field.name().to_owned(), value));
        }
    }
}

/// Whether stderr gets colours: a terminal, and `NO_COLOR` unset or empty
/// (<https://no-color.org>).
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Sets the format of the lines to come.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

const ENV_FILTER: &str = "MESHGATE_LOG";

/// The filter for `directives`, with rustls held to errors unless they name it: rustls warns
/// of what a client sent wrong (`Illegal SNI hostname received`…) once per connection, so any
/// client could write lines at will. The gateway logs failed handshakes itself, throttled.
fn filter(directives: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    if directives.contains("rustls") || directives.trim() == "off" {
        EnvFilter::try_new(directives)
    } else {
        EnvFilter::try_new(format!("{directives},rustls=error"))
    }
}

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
        .and_then(|f| filter(f).ok())
        .unwrap_or_else(|| filter("info").expect("a valid filter"));
    let (filter, handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colours())
                .event_format(SwitchedFormat {
                    text: format::Format::default().with_ansi(colours()),
                }),
        )
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
    match filter(level) {
        Ok(filter) => {
            if state.handle.reload(filter).is_ok() {
                *current = level.to_owned();
                tracing::info!(level, "log level set");
            }
        }
        Err(e) => tracing::warn!("log level {level:?} not applied: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::filter;

    #[test]
    fn rustls_is_held_to_errors_unless_named() {
        let shown = |directives: &str| filter(directives).unwrap().to_string();
        assert!(shown("info").contains("rustls=error"), "{}", shown("info"));
        assert!(shown("warn,meshgate=debug").contains("rustls=error"));
        assert!(!shown("info,rustls=warn").contains("rustls=error"));
        assert!(!shown("off").contains("rustls"));
    }
}
