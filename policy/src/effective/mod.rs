//! The effective policy: a compiled policy written back in the policy file's own shape, with
//! every default filled in, as `GET /config` and `meshgate check --print` show it (as Envoy's
//! config dump or `nginx -T` do).
//!
//! What is printed loads back into the same policy: the tests load a policy, print it, load
//! the print and find no difference. Keys appear in the order the docs list them; sections
//! and keys without a value (no `tls`, no `retry`) are left out rather than printed empty.

mod routes;
mod upstreams;

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::compiled::AccessLogTarget;
use crate::CompiledPolicy;

pub use routes::{route_table, tcp_route_table};
pub use upstreams::upstream_table;

/// The whole effective policy, as a JSON object shaped like the policy file.
pub fn effective(policy: &CompiledPolicy) -> Value {
    let mut file = Table::new();
    file.put("version", 1);
    file.put("server", server(policy));
    file.put("admin", admin(policy));
    file.put("telemetry", telemetry(policy));
    file.put(
        "listeners",
        policy.listeners.iter().map(listener).collect::<Vec<_>>(),
    );
    file.put(
        "upstreams",
        (0..policy.upstreams.len())
            .map(|i| Value::Object(upstream_table(policy, i)))
            .collect::<Vec<_>>(),
    );
    file.put(
        "routes",
        policy
            .routes
            .iter()
            .map(|route| Value::Object(route_table(policy, route)))
            .collect::<Vec<_>>(),
    );
    if !policy.tcp_routes.is_empty() {
        // Left out when there are none: most policies proxy HTTP only.
        file.put(
            "tcp_routes",
            policy
                .tcp_routes
                .iter()
                .map(|route| Value::Object(tcp_route_table(policy, route)))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(store) = &policy.rate_limit_store {
        let mut section = Table::new();
        section.put("redis", store.redis_url.as_str());
        section.put("on_error", store_error_name(store.on_error));
        section.put("timeout", duration(store.timeout));
        section.put("pool_size", store.pool_size);
        section.put("key_prefix", store.key_prefix.as_str());
        file.put("rate_limit_store", section);
    }
    file.put("discovery", discovery(policy));
    if let Some(fleet) = &policy.fleet {
        let mut section = Table::new();
        section.put("etcd", fleet.etcd.clone());
        section.put("prefix", fleet.prefix.as_str());
        section.put("node", fleet.node.as_str());
        section.put("history", fleet.history);
        if fleet.ca.is_some() || fleet.identity.is_some() {
            let mut tls = Table::new();
            tls.opt("ca", fleet.ca.as_deref().map(path));
            if let Some((cert, key)) = &fleet.identity {
                tls.put("cert", path(cert));
                tls.put("key", path(key));
            }
            section.put("tls", tls);
        }
        if let Some((username, password_file)) = &fleet.credentials {
            section.put("username", username.as_str());
            section.put("password_file", path(password_file));
        }
        file.put("fleet", section);
    }
    file.into()
}

/// The effective policy as TOML text, as `meshgate check --print` writes it.
pub fn to_toml(effective: &Value) -> String {
    // Every value is a string, number, boolean, list or table (no nulls are put), which TOML
    // can all hold; the fallback is for a value that could not be, never expected.
    toml::to_string(effective)
        .unwrap_or_else(|e| format!("# the effective policy cannot be written as TOML: {e}\n"))
}

fn server(policy: &CompiledPolicy) -> Table {
    let settings = &policy.server;
    let mut section = Table::new();
    section.put("threads", settings.threads);
    section.put("grace_period", duration(settings.grace_period));
    section.put("drain_delay", duration(settings.drain_delay));
    section.put(
        "client_idle_timeout",
        duration(settings.client_idle_timeout),
    );
    section.put(
        "trusted_proxies",
        policy
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    );
    section.put(
        "path_normalization",
        match settings.path_normalization {
            crate::schema::PathNormalization::Strict => "strict",
            crate::schema::PathNormalization::Off => "off",
        },
    );
    section.put(
        "client_header_timeout",
        duration(settings.client_header_timeout),
    );
    section.put(
        "client_body_timeout",
        duration(settings.client_body_timeout),
    );
    section.put(
        "max_request_header_size",
        size(settings.max_request_header_size as u64),
    );
    section.put("max_request_headers", settings.max_request_headers);
    section.put("max_uri_size", size(settings.max_uri_size as u64));
    section.put(
        "max_upstream_response_header_size",
        size(settings.max_upstream_response_header_size as u64),
    );
    section.put("preserve_header_case", settings.preserve_header_case);
    section.opt("zone", policy.zone.as_deref());
    section
}

fn admin(policy: &CompiledPolicy) -> Table {
    let mut section = Table::new();
    section.put("listen", policy.admin.listen.to_string());
    section.put("token_file", path(&policy.admin.token_file));
    section.put("history", policy.admin.history);
    if !policy.admin.allowed_hosts.is_empty() {
        section.put("allowed_hosts", policy.admin.allowed_hosts.clone());
    }
    section
}

fn telemetry(policy: &CompiledPolicy) -> Table {
    let settings = &policy.telemetry;
    let mut section = Table::new();
    section.put(
        "access_log",
        match &settings.access_log {
            AccessLogTarget::Off => "off".to_owned(),
            AccessLogTarget::Stdout => "stdout".to_owned(),
            AccessLogTarget::File(file) => path(file),
        },
    );
    if let Some(tracing) = &settings.tracing {
        section.put("otlp_endpoint", tracing.traces_url.as_str());
        section.put("trace_sample_ratio", tracing.sample_ratio);
        section.put("service_name", tracing.service_name.as_str());
    }
    section.put("log_level", settings.log_level.as_str());
    section.put(
        "log_format",
        match settings.log_format {
            crate::compiled::LogFormat::Text => "text",
            crate::compiled::LogFormat::Json => "json",
        },
    );
    section.opt(
        "metrics_listen",
        settings.metrics_listen.map(|addr| addr.to_string()),
    );
    section
}

fn listener(listener: &crate::compiled::Listener) -> Value {
    let mut entry = Table::new();
    entry.put("name", listener.name.as_str());
    entry.put("listen", listener.addr.to_string());
    entry.put("protocol", listener.protocol.as_str());
    entry.put("max_connections", listener.max_connections);
    if listener.protocol == crate::tcp::ListenerProtocol::Http {
        entry.put("trust_request_id", listener.trust_request_id);
        entry.opt("compress", listener.compress.as_ref().map(compress));
    }
    if let Some(tls) = &listener.tls {
        let mut section = Table::new();
        section.put("cert", path(&tls.default_cert.cert));
        section.put("key", path(&tls.default_cert.key));
        section.put(
            "sni",
            tls.sni
                .iter()
                .map(|(names, files)| {
                    let mut sni = Table::new();
                    sni.put("server_names", names.clone());
                    sni.put("cert", path(&files.cert));
                    sni.put("key", path(&files.key));
                    Value::from(sni)
                })
                .collect::<Vec<_>>(),
        );
        section.opt("client_ca", tls.client_ca.as_deref().map(path));
        section.put(
            "client_auth",
            match tls.client_auth {
                crate::schema::ClientAuth::None => "none",
                crate::schema::ClientAuth::Optional => "optional",
                crate::schema::ClientAuth::Require => "require",
            },
        );
        section.put(
            "default_authz",
            match listener.default_authz {
                crate::schema::DefaultAuthz::Allow => "allow",
                crate::schema::DefaultAuthz::Deny => "deny",
            },
        );
        entry.put("tls", section);
    }
    entry.into()
}

fn discovery(policy: &CompiledPolicy) -> Table {
    let settings = &policy.discovery;
    let mut section = Table::new();
    // No resolvers means the system's (`/etc/resolv.conf`), which an empty list cannot say.
    if !settings.resolvers.is_empty() {
        section.put(
            "resolvers",
            settings
                .resolvers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        );
    }
    section.opt("refresh", settings.refresh.map(duration));
    section.put("min_refresh", duration(settings.min_refresh));
    section.put("max_refresh", duration(settings.max_refresh));
    section.put("timeout", duration(settings.timeout));
    section.put("empty_after", duration(settings.empty_after));
    section
}

/// A listener's or a route's `compress`.
fn compress(settings: &crate::compress::Compress) -> Table {
    let mut section = Table::new();
    section.put("enabled", settings.enabled);
    section.put("types", settings.types.clone());
    section.put("min_size", size(settings.min_size));
    section
}

fn store_error_name(action: crate::schema::StoreErrorAction) -> &'static str {
    match action {
        crate::schema::StoreErrorAction::Allow => "allow",
        crate::schema::StoreErrorAction::Deny => "deny",
    }
}

/// A duration as the policy writes it (`"30s"`, `"1m 30s"`, `"250ms"`).
fn duration(value: Duration) -> String {
    crate::duration::Duration(value).to_string()
}

/// A size as the policy writes it (`"32KiB"`).
fn size(bytes: u64) -> String {
    crate::size::ByteSize(bytes).to_string()
}

fn path(file: &Path) -> String {
    file.display().to_string()
}

/// A regular expression as written: the loader anchors patterns as `^(?:…)$`.
fn unanchored(regex: &regex::Regex) -> &str {
    let source = regex.as_str();
    source
        .strip_prefix("^(?:")
        .and_then(|rest| rest.strip_suffix(")$"))
        .unwrap_or(source)
}

/// A JSON object whose keys keep the order they are put in.
#[derive(Default)]
struct Table(Map<String, Value>);

impl Table {
    fn new() -> Self {
        Self::default()
    }

    fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(key.to_owned(), value.into());
    }

    fn opt(&mut self, key: &str, value: Option<impl Into<Value>>) {
        if let Some(value) = value {
            self.put(key, value);
        }
    }
}

impl From<Table> for Value {
    fn from(table: Table) -> Value {
        Value::Object(table.0)
    }
}
