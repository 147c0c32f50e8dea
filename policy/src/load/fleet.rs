//! A fleet node's policy: its local file (`version`, `[server]`, `[admin]`, listeners,
//! `[fleet]`, `[telemetry].metrics_listen`) and the fleet document from etcd (upstreams,
//! routes, `[rate_limit_store]`, `[discovery]`, the rest of `[telemetry]`), validated as one
//! policy. The two are parsed apart, checked for what each may hold, and merged into one
//! document whose spans point into the local text followed by the fleet text, so that every
//! error keeps its line and column in the document it is in.

use super::*;
use crate::fleet::{
    Document, FleetSection, FleetSettings, DEFAULT_HISTORY, FLEET_SECTIONS, LOCAL_TELEMETRY_KEYS,
};
use std::path::PathBuf;

/// Top-level keys the fleet document may hold.
const FLEET_DOCUMENT_KEYS: &[&str] = &[
    "upstreams",
    "routes",
    "tcp_routes",
    "rate_limit_store",
    "discovery",
    "telemetry",
];

/// An error in a fleet node's policy, with the document it is in.
pub type FleetError = (Document, PolicyError);

/// Parses, validates and compiles a node's local file with the fleet document, as one policy.
/// Errors are sorted by document, then position.
pub fn load_with_fleet(
    local: &str,
    fleet: &str,
    base_dir: &Path,
) -> Result<CompiledPolicy, Vec<FleetError>> {
    let (local_table, local_syntax) = DeTable::parse_recoverable(local);
    let (fleet_table, fleet_syntax) = DeTable::parse_recoverable(fleet);
    let syntax = |source: &str, errors: &[toml::de::Error], document| {
        syntax_errors_of(source, errors)
            .into_iter()
            .map(|e| (document, e))
            .collect::<Vec<_>>()
    };
    let mut syntax_errors = syntax(local, &local_syntax, Document::Local);
    syntax_errors.extend(syntax(fleet, &fleet_syntax, Document::Fleet));
    if !syntax_errors.is_empty() {
        return Err(syntax_errors);
    }

    // The fleet text follows the local text (and a newline) in the merged document's source.
    let offset = local.len() + 1;
    let combined = format!("{local}\n{fleet}");
    let fleet_table = Spanned::new(
        offset..combined.len(),
        shift_table(fleet_table.into_inner(), offset),
    );
    let mut errors = Vec::new();
    {
        let mut sink = ErrorSink::new(&combined, &fleet_table);
        check_fleet_document(fleet_table.get_ref(), &mut sink);
        errors.extend(sink.errors);
        let mut sink = ErrorSink::new(&combined, &local_table);
        check_local_sections(local_table.get_ref(), &mut sink);
        errors.extend(sink.errors);
    }
    let mut merged = local_table.into_inner();
    for (key, value) in fleet_table.into_inner() {
        match (merged.get_mut(key.get_ref().as_ref()), value.into_inner()) {
            // `[telemetry]`: the local `metrics_listen` and the fleet's other keys.
            (Some(local_value), DeValue::Table(fleet_keys)) if key.get_ref() == "telemetry" => {
                if let DeValue::Table(local_keys) = local_value.get_mut() {
                    for (k, v) in fleet_keys {
                        local_keys.insert(k, v);
                    }
                }
            }
            (_, value) => {
                let span = key.span();
                merged.insert(key, Spanned::new(span, value));
            }
        }
    }
    let document = Spanned::new(0..combined.len(), merged);
    let mut sink = ErrorSink::new(&combined, &document);
    let compiled = Compiler {
        document: &document,
        base_dir,
        fleet_merged: true,
        fleet_files_dir: fleet_files_dir(&document, base_dir),
    }
    .compile(&mut sink);
    errors.extend(sink.errors);
    if errors.is_empty() {
        if let Some(compiled) = compiled {
            return Ok(compiled);
        }
    }
    // Lines past the local text's are the fleet document's.
    let fleet_first_line = LineIndex::new(&combined).position(offset).0;
    let mut located: Vec<FleetError> = errors
        .into_iter()
        .map(|mut error| {
            if error.line >= fleet_first_line {
                error.line -= fleet_first_line - 1;
                (Document::Fleet, error)
            } else {
                (Document::Local, error)
            }
        })
        .collect();
    located.sort_by_key(|(document, e)| (*document == Document::Fleet, e.line, e.column));
    located.dedup();
    Err(located)
}

/// The node's `[fleet].files_dir`, resolved through links; `None` when it is absent or not a
/// folder (`compile_fleet` reports why).
fn fleet_files_dir(document: &Spanned<DeTable<'_>>, base_dir: &Path) -> Option<PathBuf> {
    let dir = document
        .get_ref()
        .get("fleet")?
        .get_ref()
        .as_table()?
        .get("files_dir")?
        .get_ref()
        .as_str()?;
    let resolved = if Path::new(dir).is_absolute() {
        PathBuf::from(dir)
    } else {
        base_dir.join(dir)
    };
    std::fs::canonicalize(resolved)
        .ok()
        .filter(|real| real.is_dir())
}

impl Compiler<'_, '_> {
    /// Whether a file named at `key` may be used: always in a local policy; in a fleet node's
    /// merged policy, a file the fleet document names must lie inside `[fleet].files_dir`
    /// (after resolving links), so that whoever can write the fleet's key in etcd cannot make
    /// every node read or append to files of its choosing. A refusal is reported at `key`; the
    /// file is then not opened at all.
    pub(super) fn file_allowed(
        &self,
        file: &Path,
        key: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> bool {
        let from_fleet = matches!(
            key.0.first(),
            Some(crate::error::PathSegment::Key(section)) if FLEET_DOCUMENT_KEYS.contains(&section.as_str())
        );
        if !self.fleet_merged || !from_fleet {
            return true;
        }
        let Some(dir) = &self.fleet_files_dir else {
            sink.at(
                key,
                format!(
                    "the fleet document may not name files ({}): set [fleet].files_dir in the node's file to a folder whose files it may name",
                    file.display()
                ),
            );
            return false;
        };
        // The file itself, or, for a file not created yet (an access log), its folder.
        let real = std::fs::canonicalize(file).ok().or_else(|| {
            let folder = std::fs::canonicalize(file.parent()?).ok()?;
            match file.file_name() {
                Some(name) if name != ".." => Some(folder.join(name)),
                _ => None,
            }
        });
        match real {
            Some(real) if real.starts_with(dir) => true,
            _ => {
                sink.at(
                    key,
                    format!(
                        "{} is outside [fleet].files_dir ({}): the fleet document may name only files inside it",
                        file.display(),
                        dir.display()
                    ),
                );
                false
            }
        }
    }
}

/// Checks a fleet document alone, as a push does before staging it: its syntax, and that it
/// holds only the fleet's sections. Each node validates it in full against its local file.
pub fn check_fleet_document_text(fleet: &str) -> Vec<PolicyError> {
    let (table, syntax) = DeTable::parse_recoverable(fleet);
    if !syntax.is_empty() {
        return syntax_errors_of(fleet, &syntax);
    }
    let mut sink = ErrorSink::new(fleet, &table);
    check_fleet_document(table.get_ref(), &mut sink);
    sink.errors
}

/// What the fleet document may hold: its sections, and `[telemetry]` without the keys that
/// stay local.
fn check_fleet_document(table: &DeTable<'_>, sink: &mut ErrorSink<'_>) {
    let root = KeyPath::root();
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        if !FLEET_DOCUMENT_KEYS.contains(&name) {
            sink.at_span(
                &root.key(name),
                key.span(),
                format!(
                    "`{name}` is local to each node and cannot be in the fleet document; it holds only {}",
                    FLEET_DOCUMENT_KEYS.join(", ")
                ),
            );
        }
        if name == "telemetry" {
            for (inner, _) in value.get_ref().as_table().into_iter().flatten() {
                if LOCAL_TELEMETRY_KEYS.contains(&inner.get_ref().as_ref()) {
                    sink.at_span(
                        &root.key("telemetry").key(inner.get_ref()),
                        inner.span(),
                        "telemetry.metrics_listen is local to each node: set it in the node's file",
                    );
                }
            }
        }
    }
}

impl Compiler<'_, '_> {
    /// With `[fleet]` in a local file read alone: the fleet's sections must not be there.
    pub(super) fn check_local_with_fleet(&self, sink: &mut ErrorSink<'_>) {
        let table = self.document.get_ref();
        if self.fleet_merged || !table.contains_key("fleet") {
            return;
        }
        check_local_sections(table, sink);
    }

    /// `[fleet]`, compiled.
    pub(super) fn compile_fleet(
        &self,
        fleet: FleetSection,
        sink: &mut ErrorSink<'_>,
    ) -> Option<FleetSettings> {
        let path = KeyPath::root().key("fleet");
        let errors_before = sink.errors.len();
        if fleet.etcd.is_empty() {
            sink.at(
                &path.key("etcd"),
                "list at least one etcd endpoint, such as \"http://10.0.0.2:2379\"",
            );
        }
        for (i, endpoint) in fleet.etcd.iter().enumerate() {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            let valid = rest.is_some_and(|host_port| {
                host_port.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                })
            });
            if !valid {
                sink.at(
                    &path.key("etcd").index(i),
                    format!("invalid etcd endpoint {endpoint:?}: expected http://host:port or https://host:port"),
                );
            }
        }
        let prefix = fleet.prefix.trim_end_matches('/').to_owned();
        if !fleet.prefix.starts_with('/') || prefix.is_empty() || fleet.prefix.contains("//") {
            sink.at(
                &path.key("prefix"),
                "the prefix must start with \"/\" and name a folder, such as \"/meshgate/prod\"",
            );
        }
        let node = match fleet.node {
            Some(node) => node,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
        };
        check_name(&node, &path.key("node"), sink);
        let history = fleet.history.unwrap_or(DEFAULT_HISTORY);
        if !(1..=1000).contains(&history) {
            sink.at(&path.key("history"), "history must be between 1 and 1000");
        }
        let file = |value: &Option<std::path::PathBuf>, key: KeyPath, sink: &mut ErrorSink<'_>| {
            let resolved = value.as_ref().map(|p| self.resolve_path(p));
            if let Some(file) = &resolved {
                if let Err(message) = crate::files::read_named_file(file) {
                    sink.at(&key, message);
                }
            }
            resolved
        };
        let (ca, identity) = match &fleet.tls {
            Some(tls) => {
                let ca = file(&tls.ca, path.key("tls").key("ca"), sink);
                let cert = file(&tls.cert, path.key("tls").key("cert"), sink);
                let key = file(&tls.key, path.key("tls").key("key"), sink);
                let identity = match (cert, key) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => {
                        sink.at(&path.key("tls"), "give both `cert` and `key`, or neither");
                        None
                    }
                };
                (ca, identity)
            }
            None => (None, None),
        };
        let password_file = file(&fleet.password_file, path.key("password_file"), sink);
        let credentials = match (fleet.username, password_file) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            _ => {
                sink.at(
                    &path,
                    "give both `username` and `password_file`, or neither",
                );
                None
            }
        };
        let files_dir = fleet.files_dir.as_ref().and_then(|dir| {
            let resolved = self.resolve_path(dir);
            match std::fs::canonicalize(&resolved) {
                Ok(real) if real.is_dir() => Some(real),
                Ok(_) => {
                    sink.at(
                        &path.key("files_dir"),
                        format!("{} is not a folder", resolved.display()),
                    );
                    None
                }
                Err(e) => {
                    sink.at(
                        &path.key("files_dir"),
                        format!("cannot use {}: {e}", resolved.display()),
                    );
                    None
                }
            }
        });
        (sink.errors.len() == errors_before).then_some(FleetSettings {
            etcd: fleet.etcd,
            prefix,
            node,
            history,
            ca,
            identity,
            credentials,
            files_dir,
        })
    }
}

/// A local file with `[fleet]` holds none of the fleet's sections, and of `[telemetry]` only
/// the keys that stay local.
fn check_local_sections(table: &DeTable<'_>, sink: &mut ErrorSink<'_>) {
    let root = KeyPath::root();
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        if FLEET_SECTIONS.contains(&name) {
            sink.at_span(
                &root.key(name),
                key.span(),
                format!("with [fleet], `{name}` comes from the fleet document in etcd; remove it from this file"),
            );
        }
        if name == "telemetry" {
            for (inner, _) in value.get_ref().as_table().into_iter().flatten() {
                let inner_name = inner.get_ref().as_ref();
                if !LOCAL_TELEMETRY_KEYS.contains(&inner_name) {
                    sink.at_span(
                        &root.key("telemetry").key(inner_name),
                        inner.span(),
                        format!("with [fleet], telemetry.{inner_name} comes from the fleet document in etcd; only metrics_listen stays in this file"),
                    );
                }
            }
        }
    }
}

fn shift_span<T>(value: Spanned<T>, offset: usize) -> Spanned<T> {
    let span = value.span();
    Spanned::new(span.start + offset..span.end + offset, value.into_inner())
}

fn shift_value(value: Spanned<DeValue<'_>>, offset: usize) -> Spanned<DeValue<'_>> {
    let span = value.span();
    let inner = match value.into_inner() {
        DeValue::Table(table) => DeValue::Table(shift_table(table, offset)),
        DeValue::Array(mut array) => {
            for item in array.iter_mut() {
                let taken = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = shift_value(taken, offset);
            }
            DeValue::Array(array)
        }
        other => other,
    };
    Spanned::new(span.start + offset..span.end + offset, inner)
}

fn shift_table(table: DeTable<'_>, offset: usize) -> DeTable<'_> {
    table
        .into_iter()
        .map(|(key, value)| (shift_span(key, offset), shift_value(value, offset)))
        .collect()
}
