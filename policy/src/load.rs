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

const MAX_ROUTE_WEIGHT: u32 = 10_000;
const MAX_ENDPOINT_WEIGHT: u32 = 256;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_BREAKER_LIMIT: u32 = 1024;
const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
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
        let lines = LineIndex::new(source);
        return Err(syntax_errors
            .iter()
            .map(|e| {
                let (line, column) = lines.position(e.span().map_or(0, |s| s.start));
                PolicyError {
                    line,
                    column,
                    path: "(syntax)".into(),
                    message: e.message().to_owned(),
                }
            })
            .collect());
    }
    let mut sink = ErrorSink::new(source, &document);
    let compiled = Compiler {
        document: &document,
        base_dir,
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

struct Compiler<'a, 'd> {
    document: &'a Spanned<DeTable<'d>>,
    base_dir: &'a Path,
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
        let server = self.section::<ServerSection>("server", sink);
        let admin = self.section::<AdminSection>("admin", sink);
        let telemetry = self.section::<TelemetrySection>("telemetry", sink);
        let listeners = self.array::<ListenerSpec>("listeners", sink);
        let upstreams = self.array::<UpstreamSection>("upstreams", sink);
        let routes = self.array::<RouteSection>("routes", sink);

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
        let server = server.map(|s| self.compile_server(s, sink));
        let admin = admin.and_then(|a| self.compile_admin(a, sink));
        let telemetry = telemetry.and_then(|t| self.compile_telemetry(t, sink));
        let listeners = self.compile_listeners(&listeners, sink);
        let listener_names = self.declared_names("listeners");
        let upstream_names = self.declared_names("upstreams");
        let upstreams = self.compile_upstreams(&upstreams, sink);
        let routes = self.compile_routes(
            &routes,
            &RouteContext {
                listener_names: &listener_names,
                upstream_names: &upstream_names,
                listeners: &listeners,
                upstreams: &upstreams,
                store_declared,
            },
            sink,
        );

        let listeners: Vec<Listener> = listeners.into_iter().collect::<Option<_>>()?;
        let upstreams: Vec<UpstreamSpec> = upstreams.into_iter().collect::<Option<_>>()?;
        let routes: Vec<Route> = routes.into_iter().collect::<Option<_>>()?;
        let routes_by_listener = (0..listeners.len())
            .map(|listener| {
                routes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.listeners.as_ref().is_none_or(|l| l.contains(&listener)))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
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

    fn compile_server(&self, server: ServerSection, sink: &mut ErrorSink<'_>) -> ServerSettings {
        let path = KeyPath::root().key("server");
        let default_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = server.threads.unwrap_or(default_threads);
        if !(1..=1024).contains(&threads) {
            sink.at(&path.key("threads"), "threads must be between 1 and 1024");
        }
        let client_idle_timeout = server
            .client_idle_timeout
            .map_or(DEFAULT_CLIENT_IDLE_TIMEOUT, |d| d.get());
        if client_idle_timeout < Duration::from_secs(1) {
            sink.at(
                &path.key("client_idle_timeout"),
                "client_idle_timeout must be at least 1s",
            );
        }
        ServerSettings {
            threads,
            grace_period: server
                .grace_period
                .map_or(DEFAULT_GRACE_PERIOD, |d| d.get()),
            client_idle_timeout,
        }
    }

    fn compile_admin(
        &self,
        admin: AdminSection,
        sink: &mut ErrorSink<'_>,
    ) -> Option<AdminSettings> {
        let path = KeyPath::root().key("admin");
        let listen_text = admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen = parse_socket_addr(listen_text)
            .map_err(|message| sink.at(&path.key("listen"), message))
            .ok();
        let token_file_explicit = admin.token_file.is_some();
        let token_file = match &admin.token_file {
            Some(file) => {
                let resolved = self.resolve_path(file);
                if !resolved.is_file() {
                    sink.at(
                        &path.key("token_file"),
                        format!("token file {} does not exist", resolved.display()),
                    );
                }
                resolved
            }
            None => self.base_dir.join("admin.token"),
        };
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() && !token_file_explicit {
                sink.at(
                    &path.key("listen"),
                    format!(
                        "the admin API may listen on the non-loopback address {addr} only with an explicit `token_file`"
                    ),
                );
            }
        }
        Some(AdminSettings {
            listen: listen?,
            token_file,
            token_file_explicit,
        })
    }

    fn compile_telemetry(
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
                if !parent_exists {
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
            metrics_listen,
        })
    }

    fn compile_listeners(
        &self,
        listeners: &[Option<ListenerSpec>],
        sink: &mut ErrorSink<'_>,
    ) -> Vec<Option<Listener>> {
        let base = KeyPath::root().key("listeners");
        let mut names = HashMap::new();
        let mut addrs = HashMap::new();
        listeners
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let spec = spec.as_ref()?;
                let path = base.index(i);
                check_name(&spec.name, &path.key("name"), sink);
                if let Some(first) = names.insert(spec.name.clone(), i) {
                    sink.at(
                        &path.key("name"),
                        format!(
                            "duplicate listener name {:?} (first at listeners[{first}])",
                            spec.name
                        ),
                    );
                }
                let addr = parse_socket_addr(&spec.listen)
                    .map_err(|message| sink.at(&path.key("listen"), message))
                    .ok()?;
                if let Some(first) = addrs.insert(addr, i) {
                    sink.at(
                        &path.key("listen"),
                        format!("address {addr} is already used by listeners[{first}]"),
                    );
                }
                let errors_before = sink.errors.len();
                let tls = spec
                    .tls
                    .as_ref()
                    .map(|t| self.compile_listener_tls(t, &path.key("tls"), sink));
                if sink.errors.len() != errors_before {
                    return None;
                }
                Some(Listener {
                    name: spec.name.clone(),
                    addr,
                    default_authz: spec
                        .tls
                        .as_ref()
                        .map_or(DefaultAuthz::Allow, |t| t.default_authz),
                    tls,
                })
            })
            .collect()
    }

    /// Resolves a PEM file's path and checks it holds certificates (`certs`) or a key.
    fn pem_file(
        &self,
        file: &Path,
        certs: bool,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> std::path::PathBuf {
        let resolved = self.resolve_path(file);
        let checked = if certs {
            crate::pem::read_certificates(&resolved).map(|_| ())
        } else {
            crate::pem::read_private_key(&resolved).map(|_| ())
        };
        if let Err(message) = checked {
            sink.at(path, message);
        }
        resolved
    }

    fn cert_files(
        &self,
        cert: &Path,
        key: &Path,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> CertFiles {
        let errors_before = sink.errors.len();
        let files = CertFiles {
            cert: self.pem_file(cert, true, &path.key("cert"), sink),
            key: self.pem_file(key, false, &path.key("key"), sink),
        };
        if sink.errors.len() == errors_before {
            if let Err(message) = crate::pem::read_certified_key(&files.cert, &files.key) {
                sink.at(&path.key("key"), message);
            }
        }
        files
    }

    fn compile_listener_tls(
        &self,
        spec: &ListenerTlsSection,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> ListenerTls {
        let default_cert = self.cert_files(&spec.cert, &spec.key, path, sink);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let sni = spec
            .sni
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let entry_path = path.key("sni").index(i);
                if entry.server_names.is_empty() {
                    sink.at(&entry_path.key("server_names"), "server_names must not be empty");
                }
                let names = entry
                    .server_names
                    .iter()
                    .enumerate()
                    .map(|(j, name)| {
                        let name = name.to_ascii_lowercase();
                        if !is_server_name_pattern(&name) {
                            sink.at(
                                &entry_path.key("server_names").index(j),
                                format!("invalid server name {name:?}: expected a DNS name such as \"api.example.com\" or \"*.example.com\""),
                            );
                        } else if let Some(first) = seen.insert(name.clone(), i) {
                            sink.at(
                                &entry_path.key("server_names").index(j),
                                format!("server name {name:?} is already in sni[{first}]"),
                            );
                        }
                        name
                    })
                    .collect();
                (names, self.cert_files(&entry.cert, &entry.key, &entry_path, sink))
            })
            .collect();
        let client_ca = spec
            .client_ca
            .as_ref()
            .map(|ca| self.pem_file(ca, true, &path.key("client_ca"), sink));
        match (spec.client_auth, &client_ca) {
            (ClientAuth::None, Some(_)) => sink.at(
                &path.key("client_auth"),
                "client_ca is set but client_auth is \"none\", so no client would be asked for a certificate: set client_auth = \"optional\" or \"require\"",
            ),
            (ClientAuth::Optional | ClientAuth::Require, None) => sink.at(
                &path.key("client_ca"),
                "client_auth asks for client certificates, so client_ca must name the CA bundle they are verified against",
            ),
            _ => {}
        }
        ListenerTls {
            default_cert,
            sni,
            client_ca,
            client_auth: spec.client_auth,
        }
    }

    fn compile_upstream_tls(
        &self,
        spec: &UpstreamTlsSection,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> UpstreamTls {
        if let Some(sni) = &spec.sni {
            if !is_server_name_pattern(&sni.to_ascii_lowercase()) || sni.starts_with('*') {
                sink.at(
                    &path.key("sni"),
                    format!("invalid server name {sni:?}: expected a DNS name such as \"orders.internal\""),
                );
            }
        }
        let ca = spec
            .ca
            .as_ref()
            .map(|ca| self.pem_file(ca, true, &path.key("ca"), sink));
        let client_cert = match (&spec.cert, &spec.key) {
            (Some(cert), Some(key)) => Some(self.cert_files(cert, key, path, sink)),
            (None, None) => None,
            (Some(_), None) => {
                sink.at(
                    &path.key("key"),
                    "cert needs key: the private key of the client certificate",
                );
                None
            }
            (None, Some(_)) => {
                sink.at(
                    &path.key("cert"),
                    "key needs cert: the client certificate chain",
                );
                None
            }
        };
        UpstreamTls {
            sni: spec.sni.as_ref().map(|s| s.to_ascii_lowercase()),
            ca,
            client_cert,
        }
    }

    fn compile_upstreams(
        &self,
        upstreams: &[Option<UpstreamSection>],
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
                check_name(&spec.name, &path.key("name"), sink);
                if let Some(first) = names.insert(spec.name.clone(), i) {
                    sink.at(
                        &path.key("name"),
                        format!("duplicate upstream name {:?} (first at upstreams[{first}])", spec.name),
                    );
                }
                let mut ok = true;
                if spec.endpoints.is_empty() {
                    sink.at(&path.key("endpoints"), "an upstream needs at least one endpoint");
                    ok = false;
                }
                let mut seen = HashMap::new();
                let mut endpoints = Vec::with_capacity(spec.endpoints.len());
                for (j, entry) in spec.endpoints.iter().enumerate() {
                    let entry_path = path.key("endpoints").index(j);
                    if !(1..=MAX_ENDPOINT_WEIGHT).contains(&entry.weight) {
                        sink.at(
                            &entry_path.key("weight"),
                            format!("endpoint weight must be between 1 and {MAX_ENDPOINT_WEIGHT}"),
                        );
                        ok = false;
                    }
                    match parse_socket_addr(&entry.address) {
                        Ok(addr) => {
                            if let Some(first) = seen.insert(addr, j) {
                                sink.at(
                                    &entry_path,
                                    format!("endpoint {addr} is listed twice (first at endpoints[{first}])"),
                                );
                                ok = false;
                            }
                            endpoints.push(EndpointSpec {
                                addr,
                                weight: entry.weight,
                            });
                        }
                        Err(message) => {
                            sink.at(&entry_path, message);
                            ok = false;
                        }
                    }
                }
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
                    health_check,
                    circuit_breaker,
                    outlier_detection,
                    name: spec.name.clone(),
                    schedule: smooth_weighted_schedule(&weights),
                    endpoints,
                    balance: spec.balance,
                    hash_key,
                    connect_timeout,
                    protocol: spec.protocol,
                    tls,
                })
            })
            .collect()
    }

    fn compile_routes(
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
                check_name(&spec.name, &path.key("name"), sink);
                if let Some(first) = names.insert(spec.name.clone(), i) {
                    sink.at(
                        &path.key("name"),
                        format!("duplicate route name {:?} (first at routes[{first}])", spec.name),
                    );
                }
                let errors_before = sink.errors.len();

                let route_listeners = spec.listeners.as_ref().map(|wanted| {
                    if wanted.is_empty() {
                        sink.at(&path.key("listeners"), "listeners must not be empty; leave it out to mean every listener");
                    }
                    wanted
                        .iter()
                        .enumerate()
                        .filter_map(|(j, name)| {
                            let found = listeners
                                .iter()
                                .position(|l| l.as_ref().is_some_and(|l| &l.name == name));
                            if found.is_none() && !listener_names.contains(name) {
                                sink.at(
                                    &path.key("listeners").index(j),
                                    format!("unknown listener {name:?}"),
                                );
                            }
                            found
                        })
                        .collect::<Vec<_>>()
                });

                let matcher = compile_matcher(&spec.matcher, &path.key("match"), sink);

                if spec.split.is_empty() {
                    sink.at(&path.key("split"), "a route needs at least one split");
                }
                let mut splits = Vec::with_capacity(spec.split.len());
                let mut total_weight = 0u32;
                for (j, split) in spec.split.iter().enumerate() {
                    let split_path = path.key("split").index(j);
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
                if !spec.split.is_empty() && total_weight == 0 {
                    sink.at(&path.key("split"), "the split weights add up to zero, so no request could be routed");
                } else if total_weight > MAX_ROUTE_WEIGHT {
                    sink.at(
                        &path.key("split"),
                        format!("the split weights add up to {total_weight}; the most is {MAX_ROUTE_WEIGHT}"),
                    );
                }
                let split_key = spec.split_key.as_ref().and_then(|key| {
                    RequestKey::parse(key)
                        .map_err(|message| sink.at(&path.key("split_key"), message))
                        .ok()
                });

                let timeout = spec.timeouts.as_ref().and_then(|t| t.request).map(|d| d.get());
                if timeout.is_some_and(|t| t.is_zero()) {
                    sink.at(&path.key("timeouts").key("request"), "the request timeout must be more than zero");
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
                let allow = spec
                    .allow
                    .as_ref()
                    .map(|entries| compile_allow(entries, &path.key("allow"), sink));
                let rate_limit = spec.rate_limit.as_ref().map(|r| {
                    compile_rate_limit(r, store_declared, &path.key("rate_limit"), sink)
                });

                if sink.errors.len() != errors_before || splits.len() != spec.split.len() {
                    return None;
                }
                let weights: Vec<u32> = splits.iter().map(|s| s.weight).collect();
                Some(Route {
                    name: spec.name.clone(),
                    listeners: route_listeners,
                    matcher: matcher?,
                    split_schedule: smooth_weighted_schedule(&weights),
                    splits,
                    split_key,
                    timeout,
                    retry,
                    headers,
                    fault,
                    rate_limit,
                    allow,
                })
            })
            .collect()
    }
}

/// What route compilation needs to know of the rest of the file.
#[derive(Clone, Copy)]
struct RouteContext<'a> {
    listener_names: &'a HashSet<String>,
    upstream_names: &'a HashSet<String>,
    listeners: &'a [Option<Listener>],
    upstreams: &'a [Option<UpstreamSpec>],
    /// Whether `[rate_limit_store]` is present (parsed or not).
    store_declared: bool,
}

/// A DNS name, or `*.` followed by one.
fn is_server_name_pattern(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn compile_allow(
    entries: &[String],
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Vec<IdentityPattern> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
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

fn compile_trusted_proxies(entries: &[String], sink: &mut ErrorSink<'_>) -> Vec<ipnet::IpNet> {
    let path = KeyPath::root().key("server").key("trusted_proxies");
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let parsed = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    sink.at(
                        &path.index(i),
                        format!("invalid address or CIDR block {entry:?}: expected such as \"10.0.0.0/8\" or \"192.0.2.7\""),
                    );
                    None
                }
            }
        })
        .collect()
}

/// The OTLP/HTTP traces URL of a collector's base URL: `/v1/traces` is added unless the path
/// already names it.
fn traces_url(endpoint: &str) -> Result<String, String> {
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

fn compile_rate_limit_store(
    spec: RateLimitStoreSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> RateLimitStoreSettings {
    match url::Url::parse(&spec.redis) {
        Err(e) => sink.at(
            &path.key("redis"),
            format!(
                "invalid URL {:?}: {e}; expected redis://host:port/db",
                spec.redis
            ),
        ),
        Ok(url) => {
            if url.scheme() != "redis" {
                sink.at(
                    &path.key("redis"),
                    format!(
                        "unsupported scheme {:?}: only redis:// is supported",
                        url.scheme()
                    ),
                );
            } else if url.host_str().is_none_or(str::is_empty) {
                sink.at(
                    &path.key("redis"),
                    "the URL needs a host, as in redis://127.0.0.1:6379/0",
                );
            } else if !matches!(url.path().trim_start_matches('/'), "")
                && url.path().trim_start_matches('/').parse::<u16>().is_err()
            {
                sink.at(
                    &path.key("redis"),
                    format!("the URL path {:?} must be a database number, as in redis://127.0.0.1:6379/0", url.path()),
                );
            }
        }
    }
    let timeout = spec.timeout.map_or(DEFAULT_STORE_TIMEOUT, |d| d.get());
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        sink.at(
            &path.key("timeout"),
            "timeout must be more than zero and at most 10s",
        );
    }
    let pool_size = spec.pool_size.unwrap_or(DEFAULT_STORE_POOL);
    if !(1..=64).contains(&pool_size) {
        sink.at(&path.key("pool_size"), "pool_size must be between 1 and 64");
    }
    let key_prefix = spec.key_prefix.unwrap_or_else(|| "meshgate".to_owned());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        sink.at(
            &path.key("key_prefix"),
            "key_prefix must be 1 to 64 printable characters without spaces",
        );
    }
    RateLimitStoreSettings {
        redis_url: spec.redis,
        on_error: spec.on_error,
        timeout,
        pool_size,
        key_prefix,
    }
}

fn compile_rate_limit(
    spec: &RateLimitSection,
    store_declared: bool,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> RateLimitSpec {
    let rate = spec.requests_per_second;
    if !rate.is_finite() || rate <= 0.0 {
        sink.at(
            &path.key("requests_per_second"),
            "requests_per_second must be more than zero (a route that takes no requests needs no route)",
        );
    } else if !(0.001..=1_000_000.0).contains(&rate) {
        sink.at(
            &path.key("requests_per_second"),
            "requests_per_second must be between 0.001 and 1000000",
        );
    }
    let burst = spec.burst.unwrap_or_else(|| {
        if rate.is_finite() && rate > 1.0 {
            rate.ceil().min(1_000_000.0) as u32
        } else {
            1
        }
    });
    if !(1..=1_000_000).contains(&burst) {
        sink.at(
            &path.key("burst"),
            "burst must be between 1 and 1000000 (a bucket must hold at least one request)",
        );
    }
    let key = match &spec.key {
        None => LimitKey::ClientIp,
        Some(text) => LimitKey::parse(text).unwrap_or_else(|message| {
            sink.at(&path.key("key"), message);
            LimitKey::Route
        }),
    };
    if spec.scope == RateLimitScope::Global {
        if !store_declared {
            sink.at(
                &path.key("scope"),
                "scope = \"global\" needs a [rate_limit_store] section (redis = \"redis://host:port/db\")",
            );
        }
        if spec.max_keys.is_some() {
            sink.at(
                &path.key("max_keys"),
                "max_keys bounds a local limit only; a global limit's keys expire in the store",
            );
        }
    }
    let max_keys = spec.max_keys.unwrap_or(DEFAULT_MAX_LIMIT_KEYS);
    if !(1..=10_000_000).contains(&max_keys) {
        sink.at(
            &path.key("max_keys"),
            "max_keys must be between 1 and 10000000",
        );
    }
    RateLimitSpec {
        requests_per_second: rate,
        burst,
        key,
        scope: spec.scope,
        mode: spec.mode,
        headers_on_success: spec.headers_on_success.unwrap_or(false),
        max_keys,
    }
}

fn compile_matcher(
    spec: &MatchSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<RouteMatcher> {
    let errors_before = sink.errors.len();
    let host = spec.host.as_deref().and_then(|host| {
        let lower = host.to_ascii_lowercase();
        let (check, result) = match lower.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                (&suffix[1..], HostMatch::Suffix(suffix.to_owned()))
            }
            Some(_) => {
                sink.at(
                    &path.key("host"),
                    "a wildcard host must look like \"*.example.com\"",
                );
                return None;
            }
            None => (lower.as_str(), HostMatch::Exact(lower.clone())),
        };
        let valid = !check.is_empty()
            && check
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            sink.at(
                &path.key("host"),
                format!("{host:?} is not a valid host name (leave the port out)"),
            );
            return None;
        }
        Some(result)
    });

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
        match regex::Regex::new(&format!("^(?:{pattern})$")) {
            Ok(regex) => Some(PathMatch::Regex(regex)),
            Err(e) => {
                let detail = e.to_string();
                let detail = detail
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                sink.at(
                    &path.key("path_regex"),
                    format!("invalid regular expression {pattern:?}: {detail}"),
                );
                None
            }
        }
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
    for (name, value) in &spec.headers {
        if !is_header_name(name) {
            sink.at(
                &path.key("headers").key(name),
                format!("{name:?} is not a valid header name"),
            );
        }
        headers.push((name.to_ascii_lowercase(), value.clone()));
    }

    if sink.errors.len() != errors_before {
        return None;
    }
    Some(RouteMatcher {
        host,
        path: path_match,
        methods,
        headers,
    })
}

fn positive(value: Option<u32>, default: u32, path: &KeyPath, sink: &mut ErrorSink<'_>) -> u32 {
    let value = value.unwrap_or(default);
    if value == 0 {
        sink.at(path, "must be at least 1");
    }
    value
}

fn nonzero_duration(
    value: Option<crate::duration::Duration>,
    default: Duration,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Duration {
    let value = value.map_or(default, |d| d.get());
    if value.is_zero() {
        sink.at(path, "must be more than zero");
    }
    value
}

fn percent(value: Option<f64>, path: &KeyPath, sink: &mut ErrorSink<'_>) -> f64 {
    let value = value.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&value) {
        sink.at(path, "a percentage must be between 0 and 100");
    }
    value
}

fn compile_health_check(
    spec: &HealthCheckSection,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> HealthCheckSpec {
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

fn compile_breaker(
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

fn compile_outlier(
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

fn compile_retry(spec: &RetrySection, path: &KeyPath, sink: &mut ErrorSink<'_>) -> RetrySpec {
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

fn compile_header_rules(
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

fn compile_fault(spec: &FaultSection, path: &KeyPath, sink: &mut ErrorSink<'_>) -> FaultSpec {
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

fn check_name(name: &str, path: &KeyPath, sink: &mut ErrorSink<'_>) {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid {
        sink.at(
            path,
            format!("invalid name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("invalid address {text:?}: expected IP:port, such as \"127.0.0.1:8080\" or \"[::1]:8080\"")
    })
}
