//! Parsing, whole-file validation and compilation.
//!
//! Each section and each array element is deserialized on its own, so one bad upstream does not
//! hide the errors of the next one; cross-references are then checked against every name the
//! file declares, even in elements that failed to parse, so one mistake is not reported twice.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::compiled::*;
use crate::error::{ErrorSink, KeyPath, LineIndex, PathSegment, PolicyError};
use crate::schema::*;
use crate::tcp::ListenerProtocol;

mod checks;
mod compress;
mod cors;
mod direct;
mod discovery;
mod file_warnings;
mod fleet;
mod jwt;
mod listeners;
mod mirror;
mod rate_limit;
mod rewrite;
mod routes;
mod server;
mod tcp;
mod telemetry;
mod tls;
mod upstreams;
mod warnings;

use checks::*;
use compress::*;
use cors::*;
use direct::*;
use discovery::*;
pub use fleet::{check_fleet_document_text as check_fleet_document, load_with_fleet, FleetError};
use mirror::*;
use rate_limit::*;
use rewrite::*;
use routes::*;
pub use server::check_admin_token;
use server::*;

const MAX_ROUTE_WEIGHT: u32 = 10_000;
const MAX_ENDPOINT_WEIGHT: u32 = 256;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// NGINX's `proxy_read_timeout`.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_BREAKER_LIMIT: u32 = 1024;
const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_REQUEST_HEADER_SIZE: usize = 32 * 1024;
const DEFAULT_MAX_URI_SIZE: usize = 8 * 1024;
const DEFAULT_MAX_REQUEST_HEADERS: u32 = 100;
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Pingora's HTTP/1.1 parser reads at most this many header fields; a limit above it could
/// never apply.
const MAX_HEADER_FIELDS: u32 = 256;
/// Upper bound for the head size limits: well under the parser's 1 MiB buffer.
const MAX_HEAD_LIMIT: u64 = 512 * 1024;
/// Default `[server].max_upstream_response_header_size`.
const DEFAULT_MAX_UPSTREAM_RESPONSE_HEADER_SIZE: u64 = 64 * 1024;
/// The most an upstream's response head may be set to: the HTTP/1 client's own bound.
const MAX_UPSTREAM_HEAD_LIMIT: u64 = 1024 * 1024;
const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
const DEFAULT_HISTORY: u32 = 20;
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 0.01;
const DEFAULT_LOG_LEVEL: &str = "info";
const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "server",
    "admin",
    "telemetry",
    "listeners",
    "upstreams",
    "routes",
    "rate_limit_store",
    "discovery",
    "fleet",
    "tcp_routes",
];
const DEFAULT_MAX_LIMIT_KEYS: u32 = 100_000;
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
const DEFAULT_STORE_POOL: u32 = 4;

/// Parses, validates and compiles a policy. `base_dir` is the folder of the policy file:
/// relative paths in the policy are resolved against it, and files it names must exist.
/// On failure every error found is returned, sorted by position.
pub fn load(source: &str, base_dir: &Path) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let (document, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        return Err(syntax_errors_of(source, &syntax_errors));
    }
    let mut sink = ErrorSink::new(source, &document);
    let compiled = Compiler {
        document: &document,
        base_dir,
        fleet_merged: false,
        fleet_files_dir: None,
    }
    .compile(&mut sink);
    let mut errors = sink.errors;
    if errors.is_empty() {
        if let Some(compiled) = compiled {
            return Ok(compiled);
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    Err(errors)
}

/// [`load`], and for a valid policy its warnings: what is valid but probably not meant (a
/// route no request reaches, an unused upstream, a listener no route applies to, no
/// listeners, `allow` where no caller can have an identity), sorted by position.
pub fn load_with_warnings(
    source: &str,
    base_dir: &Path,
) -> Result<(CompiledPolicy, Vec<PolicyError>), Vec<PolicyError>> {
    let compiled = load(source, base_dir)?;
    let warnings = warnings_of(source, &compiled);
    Ok((compiled, warnings))
}

/// The warnings of `policy`, compiled from `source`, placed in `source`.
pub fn warnings_of(source: &str, policy: &CompiledPolicy) -> Vec<PolicyError> {
    let (document, _) = DeTable::parse_recoverable(source);
    let mut sink = ErrorSink::new(source, &document);
    warnings::collect(policy, &mut sink);
    let mut warnings = sink.errors;
    warnings.sort_by_key(|w| (w.line, w.column));
    warnings
}

/// TOML syntax errors, with their positions in `source`.
fn syntax_errors_of(source: &str, errors: &[toml::de::Error]) -> Vec<PolicyError> {
    let lines = LineIndex::new(source);
    errors
        .iter()
        .map(|e| {
            let start = e.span().map_or(0, |s| s.start);
            let (line, column) = lines.position(start);
            let message = match e.message() {
                "duplicate key" => duplicate_key_message(source, start),
                other => other.to_owned(),
            };
            PolicyError {
                line,
                column,
                path: "(syntax)".into(),
                message,
            }
        })
        .collect()
}

/// What the parser's bare "duplicate key" is about: the key (or table) at `start`, named.
fn duplicate_key_message(source: &str, start: usize) -> String {
    let rest = source.get(start..).unwrap_or_default();
    let key: String = rest
        .chars()
        .take_while(|c| !matches!(c, ' ' | '\t' | '=' | ']' | '\n' | '\r'))
        .collect();
    let key = key.trim_matches('"');
    let header = source[..start].trim_end_matches([' ', '\t']).ends_with('[');
    match (key.is_empty(), header) {
        (true, _) => "duplicate key".to_owned(),
        (false, true) => format!("duplicate key: table [{key}] is defined twice; merge the two"),
        (false, false) => {
            format!("duplicate key: {key:?} is already set in this table; keep one")
        }
    }
}

struct Compiler<'a, 'd> {
    document: &'a Spanned<DeTable<'d>>,
    base_dir: &'a Path,
    /// Whether the document is a node's local file merged with the fleet document.
    fleet_merged: bool,
    /// With `fleet_merged`: the node's `[fleet].files_dir`, resolved, the only folder whose
    /// files the fleet document may name.
    fleet_files_dir: Option<std::path::PathBuf>,
}

impl Compiler<'_, '_> {
    fn compile(&self, sink: &mut ErrorSink<'_>) -> Option<CompiledPolicy> {
        let root = KeyPath::root();
        let table = self.document.get_ref();
        for (key, _) in table.iter() {
            if !TOP_LEVEL_KEYS.contains(&&**key.get_ref()) {
                sink.at_span(
                    &root.key(key.get_ref()),
                    key.span(),
                    format!(
                        "unknown key `{}`; expected one of {}",
                        key.get_ref(),
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                );
            }
        }

        match table.get("version") {
            None => sink.at(&root, "missing key `version` (write `version = 1`)"),
            Some(value) => match self.deserialize::<u32>(value, &root.key("version"), sink) {
                Some(1) | None => {}
                Some(other) => sink.at(
                    &root.key("version"),
                    format!("unsupported policy version {other}; this build reads version 1"),
                ),
            },
        }
        self.check_local_with_fleet(sink);
        let fleet = match table.get("fleet") {
            None => Some(None),
            Some(value) => self
                .deserialize::<crate::fleet::FleetSection>(value, &root.key("fleet"), sink)
                .map(|section| self.compile_fleet(section, sink)),
        };
        let server = self.section::<ServerSection>("server", sink);
        let admin = self.section::<AdminSection>("admin", sink);
        let telemetry = self.section::<TelemetrySection>("telemetry", sink);
        let listeners = self.array::<ListenerSpec>("listeners", sink);
        let upstreams = self.array::<UpstreamSection>("upstreams", sink);
        let routes = self.array::<RouteSection>("routes", sink);
        let tcp_routes = self.array::<crate::tcp::TcpRouteSection>("tcp_routes", sink);

        let rate_limit_store = match table.get("rate_limit_store") {
            None => None,
            Some(value) => {
                let path = root.key("rate_limit_store");
                self.deserialize::<RateLimitStoreSection>(value, &path, sink)
                    .map(|store| compile_rate_limit_store(store, &path, sink))
            }
        };
        let store_declared = table.contains_key("rate_limit_store");
        let trusted_proxies = server
            .as_ref()
            .map(|s| compile_trusted_proxies(&s.trusted_proxies, sink))
            .unwrap_or_default();
        let zone = server.as_ref().and_then(|s| s.zone.clone());
        if let Some(zone) = &zone {
            check_name(zone, &root.key("server").key("zone"), sink);
        }
        let server = server.map(|s| self.compile_server(s, sink));
        let admin = admin.and_then(|a| self.compile_admin(a, sink));
        let telemetry = telemetry.and_then(|t| self.compile_telemetry(t, sink));
        let listeners = self.compile_listeners(&listeners, sink);
        let listener_names = self.declared_names("listeners");
        let upstream_names = self.declared_names("upstreams");
        let failover = compile_failover(&upstreams, &upstream_names, sink);
        let discovery = self
            .section::<crate::discovery::DiscoverySection>("discovery", sink)
            .map(|section| compile_discovery(Some(section), sink));
        let upstreams = self.compile_upstreams(&upstreams, zone.as_deref(), sink);
        let context = RouteContext {
            listener_names: &listener_names,
            upstream_names: &upstream_names,
            listeners: &listeners,
            upstreams: &upstreams,
            store_declared,
        };
        let routes = self.compile_routes(&routes, &context, sink);
        let tcp_routes = self.compile_tcp_routes(&tcp_routes, &context, sink);

        let listeners: Vec<Listener> = listeners.into_iter().collect::<Option<_>>()?;
        let upstreams: Vec<UpstreamSpec> = upstreams.into_iter().collect::<Option<_>>()?;
        let routes: Vec<Route> = routes.into_iter().collect::<Option<_>>()?;
        let tcp_routes: Vec<crate::tcp::TcpRoute> =
            tcp_routes.into_iter().collect::<Option<_>>()?;
        let routes_by_listener =
            crate::tcp::routes_by_listener(&listeners, true, routes.iter().map(|r| &r.listeners));
        let tcp_routes_by_listener = crate::tcp::routes_by_listener(
            &listeners,
            false,
            tcp_routes.iter().map(|r| &r.listeners),
        );
        Some(CompiledPolicy {
            server: server?,
            admin: admin?,
            telemetry: telemetry?,
            listeners,
            upstreams,
            routes,
            routes_by_listener,
            trusted_proxies,
            rate_limit_store: match (store_declared, rate_limit_store) {
                (true, None) => return None,
                (_, store) => store,
            },
            discovery: discovery?,
            failover,
            zone,
            fleet: fleet?,
            tcp_routes,
            tcp_routes_by_listener,
        })
    }

    /// Deserializes one value, recording every error in it: after each error the offending
    /// key is removed and the value deserialized again, so one bad key does not hide the next.
    /// Returns `None` only when the value could not be repaired.
    fn deserialize<T: DeserializeOwned>(
        &self,
        value: &Spanned<DeValue<'_>>,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..64 {
            let deserializer = ValueDeserializer::from(value.clone());
            let error = match serde_path_to_error::deserialize::<_, T>(deserializer) {
                // A repaired value is still returned so that its cross-references are checked;
                // its errors are already in the sink, so the policy as a whole is refused.
                Ok(parsed) => return Some(parsed),
                Err(error) => error,
            };
            let mut inner_path = KeyPath::root();
            for segment in error.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => {
                        inner_path.0.push(PathSegment::Index(*index))
                    }
                    serde_path_to_error::Segment::Map { key } => {
                        inner_path.0.push(PathSegment::Key(key.clone()))
                    }
                    serde_path_to_error::Segment::Enum { variant } => {
                        inner_path.0.push(PathSegment::Key(variant.clone()))
                    }
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let inner = error.into_inner();
            let message = inner.message().to_owned();
            // An unknown key is reported at the table that holds it; name the key itself.
            if let Some(key) = quoted_after(&message, "unknown field `") {
                if inner_path.0.last() != Some(&PathSegment::Key(key.clone())) {
                    inner_path.0.push(PathSegment::Key(key));
                }
            }
            // A "missing field" for a key removed after its own error is no news.
            if let Some(key) = quoted_after(&message, "missing field `") {
                if removed.contains(&key) {
                    return None;
                }
            }
            let mut full_path = path.clone();
            full_path.0.extend(inner_path.0.iter().cloned());
            let span = inner
                .span()
                .unwrap_or_else(|| crate::error::span_of(self.document, &full_path));
            sink.at_span(&full_path, span, message);
            match remove_key(&mut value, &inner_path) {
                Some(key) => removed.push(key),
                None => return None,
            }
        }
        None
    }

    /// A top-level table; its default when absent.
    fn section<T: DeserializeOwned + Default>(
        &self,
        key: &str,
        sink: &mut ErrorSink<'_>,
    ) -> Option<T> {
        match self.document.get_ref().get(key) {
            None => Some(T::default()),
            Some(value) => self.deserialize(value, &KeyPath::root().key(key), sink),
        }
    }

    /// A top-level array of tables, element by element (`None` where one failed).
    fn array<T: DeserializeOwned>(&self, key: &str, sink: &mut ErrorSink<'_>) -> Vec<Option<T>> {
        let path = KeyPath::root().key(key);
        match self.document.get_ref().get(key) {
            None => Vec::new(),
            Some(value) => match value.get_ref() {
                DeValue::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.deserialize(item, &path.index(i), sink))
                    .collect(),
                other => {
                    sink.at(
                        &path,
                        format!(
                            "expected an array of tables (`[[{key}]]`), found {}",
                            other.type_str()
                        ),
                    );
                    Vec::new()
                }
            },
        }
    }

    /// Every `name` string in a top-level array, parsed or not.
    fn declared_names(&self, key: &str) -> HashSet<String> {
        let Some(DeValue::Array(items)) = self.document.get_ref().get(key).map(|v| v.get_ref())
        else {
            return HashSet::new();
        };
        items
            .iter()
            .filter_map(|item| item.get_ref().as_table()?.get("name")?.get_ref().as_str())
            .map(str::to_owned)
            .collect()
    }

    fn resolve_path(&self, path: &Path) -> std::path::PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// The text between `prefix` and the next backquote, such as a key name in serde's messages.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_owned())
}

/// Removes the table key at `path` (or the key holding the array element it names) from
/// `value`; returns the removed key's name.
fn remove_key(value: &mut Spanned<DeValue<'_>>, path: &KeyPath) -> Option<String> {
    let last_key = path
        .0
        .iter()
        .rposition(|segment| matches!(segment, PathSegment::Key(_)))?;
    let mut current = value;
    for segment in &path.0[..last_key] {
        current = match (segment, current.get_mut()) {
            (PathSegment::Key(key), DeValue::Table(table)) => table.get_mut(key.as_str())?,
            (PathSegment::Index(i), DeValue::Array(array)) => array.get_mut(*i)?,
            _ => return None,
        };
    }
    let PathSegment::Key(key) = &path.0[last_key] else {
        return None;
    };
    match current.get_mut() {
        DeValue::Table(table) => table.remove(key.as_str()).map(|_| key.clone()),
        _ => None,
    }
}
