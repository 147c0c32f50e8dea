//! The reload machinery. PUT, `POST /reload`, rollback and edits of the file on disk all go
//! through [`PolicyStore::apply`]: validate and compile off the request path, persist when the
//! change came through the API, then swap one pointer. Requests in flight keep the snapshot
//! they loaded; new requests see the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::auth::JwksRegistry;
use crate::tls::TlsRegistry;
use meshgate_admin::{Applied, ApplyError, ErrorItem, Validated};
use meshgate_policy::compiled::{Listener, StaticParts, STATIC_SECTIONS};
use meshgate_policy::{CompiledPolicy, PolicyError};
use sha2::{Digest, Sha256};

use crate::discovery::Discovery;
use crate::fleet::FleetDocument;
use crate::history::{Entry, PolicyHistory};
use crate::snapshot::{ListenerPlan, Snapshot};
use crate::telemetry::Telemetry;
use crate::upstream::UpstreamState;

/// Where a policy to apply came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `PUT /policy`: persisted to the file.
    Api,
    /// `POST /policy/rollback`: persisted to the file.
    Rollback,
    /// `POST /reload` or the file watcher: read from the file.
    File,
    /// A fleet document committed in etcd: the local file stays as it is.
    Fleet,
}

impl Origin {
    /// Where a policy came from, as logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Api => "PUT /policy",
            Origin::Rollback => "POST /policy/rollback",
            Origin::File => "file",
            Origin::Fleet => "fleet",
        }
    }
}

struct PolicyText {
    source: String,
    hash: String,
}

struct StoreState {
    active: PolicyText,
    /// The fleet document applied with the local file, when the node is in a fleet.
    fleet: Option<FleetDocument>,
    /// The applied policies, the active one last.
    history: PolicyHistory,
    next_version: u64,
}

/// The active policy, its history, and the snapshot the data plane reads.
pub struct PolicyStore {
    /// Endpoint discovery.
    discovery: Arc<Discovery>,
    /// This node's view of its fleet (empty outside a fleet).
    fleet_node: crate::fleet::node::SharedState,
    health_checks: tokio::sync::mpsc::UnboundedSender<Weak<UpstreamState>>,
    health_receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Weak<UpstreamState>>>>,
    path: PathBuf,
    base_dir: PathBuf,
    current: ArcSwap<Snapshot>,
    state: Mutex<StoreState>,
    telemetry: Arc<Telemetry>,
    /// Certificates and keys of TLS listeners and upstreams.
    pub tls: Arc<TlsRegistry>,
    /// The keys of every `jwks_url` in use.
    pub jwks: Arc<JwksRegistry>,
    /// What operators set on endpoints (drain, disable, weight): runtime state, never
    /// written to the policy, applied again to every snapshot built.
    pub endpoint_controls: crate::upstream::EndpointControls,
    /// The listeners bound at start, which serve until the process ends.
    running: Vec<Listener>,
    /// What of the start-up policy takes effect only at start: `restart_required` is
    /// computed against it, not against the previous policy.
    started: StaticParts,
}

/// Hex SHA-256 of a policy's text.
pub fn policy_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

fn to_items(errors: Vec<PolicyError>) -> Vec<ErrorItem> {
    errors
        .into_iter()
        .map(|e| ErrorItem {
            line: e.line,
            column: e.column,
            path: e.path,
            message: e.message,
        })
        .collect()
}

/// The warnings of a policy compiled from `source` (none for a fleet merge, whose keys are
/// not all in `source`).
fn warnings(source: &str, compiled: &CompiledPolicy, merged: bool) -> Vec<ErrorItem> {
    if merged {
        return Vec::new();
    }
    to_items(meshgate_policy::warnings_of(source, compiled))
}

pub use crate::files::base_dir_of;

impl PolicyStore {
    /// Loads the policy file at startup; every error is returned when it is invalid.
    pub fn open(path: &Path, telemetry: Arc<Telemetry>) -> Result<Self, String> {
        let source = meshgate_policy::files::read_policy_file(path)
            .map_err(|e| format!("cannot read the policy file: {e}"))?;
        let base_dir = base_dir_of(path);
        let compiled = meshgate_policy::load(&source, &base_dir).map_err(|errors| {
            let file = path.display().to_string();
            errors
                .iter()
                .map(|e| e.display_with_file(&file))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        // A fleet node starts on the fleet document it applied last, cached beside the file,
        // until etcd answers (it may be down).
        let (compiled, fleet) = crate::fleet::start_with_cache(path, &source, &base_dir, compiled);
        // The sinks start in the serving process (after a daemon fork); here only check
        // that the access log can be opened, so a bad path fails the start.
        crate::telemetry::AccessLog::check(&compiled.telemetry.access_log)
            .map_err(|e| format!("cannot open the access log: {e}"))?;
        let hash = policy_hash(&source);
        // Versions go on from the kept history, so that a version names one policy across
        // restarts; a start on the policy the history ends with keeps its version.
        let mut history = PolicyHistory::open(path, compiled.admin.history);
        let version = match history.last() {
            Some(last) if last.hash == hash => last.version,
            _ => {
                let version = history.last_version() + 1;
                history.record(history_entry(version, &hash, Origin::File, &source));
                version
            }
        };
        telemetry.metrics.policy_version.set(version as i64);
        let tls = TlsRegistry::new(telemetry.clone());
        for listener in &compiled.listeners {
            if let Some(spec) = &listener.tls {
                tls.add_listener(&listener.name, spec).map_err(|e| {
                    format!("{}: listeners.{}.tls: {e}", path.display(), listener.name)
                })?;
            }
        }
        let running = compiled.listeners.clone();
        let started = compiled.static_parts();
        let mut compiled = compiled;
        let plan = ListenerPlan::adopt(&mut compiled, &running, &started);
        set_restart_gauges(&telemetry, &plan.restart_required);
        let jwks = Arc::new(JwksRegistry::new(tls.clone()));
        let snapshot = Snapshot::build(
            compiled,
            plan,
            None,
            version,
            &telemetry.metrics,
            &tls,
            &jwks,
        );
        let discovery = Arc::new(Discovery::new(
            &snapshot.policy.discovery,
            telemetry.metrics.discovery_errors.clone(),
        ));
        let (health_checks, health_receiver) = tokio::sync::mpsc::unbounded_channel();
        for upstream in &snapshot.upstreams {
            if needs_background(upstream) {
                let _ = health_checks.send(Arc::downgrade(upstream));
            }
        }
        Ok(PolicyStore {
            health_checks,
            health_receiver: Mutex::new(Some(health_receiver)),
            discovery,
            fleet_node: Default::default(),
            path: path.to_path_buf(),
            base_dir,
            current: ArcSwap::from_pointee(snapshot),
            tls,
            jwks,
            endpoint_controls: Default::default(),
            state: Mutex::new(StoreState {
                active: PolicyText { source, hash },
                fleet,
                next_version: history.last_version().max(version) + 1,
                history,
            }),
            telemetry,
            running,
            started,
        })
    }

    /// The snapshot new requests use.
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Endpoint discovery: the resolver and the last answer of every name.
    pub fn discovery(&self) -> &Arc<Discovery> {
        &self.discovery
    }

    /// The queue of upstreams whose background tasks (health checks, discovery) should
    /// start; taken once by the service that runs them.
    pub fn take_upstream_registrations(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<Weak<UpstreamState>>> {
        self.health_receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// This node's view of its fleet.
    pub fn fleet_node(&self) -> &crate::fleet::node::SharedState {
        &self.fleet_node
    }

    /// The gateway's telemetry.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The policy file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The active policy's text, hash and number.
    pub fn active(&self) -> (String, String, u64) {
        let state = self.lock();
        (
            state.active.source.clone(),
            state.active.hash.clone(),
            self.current.load().version,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreState> {
        // A panic while holding the lock cannot leave the state half-written: every field is
        // replaced in one step after all fallible work, so the data is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn compile(
        &self,
        source: &str,
        fleet: Option<&FleetDocument>,
    ) -> Result<CompiledPolicy, ApplyError> {
        match fleet {
            None => meshgate_policy::load(source, &self.base_dir)
                .map_err(|e| ApplyError::Invalid(to_items(e))),
            Some(fleet) => crate::fleet::compile(source, &fleet.text, &self.base_dir)
                .map_err(|e| ApplyError::Invalid(crate::fleet::error_items(e))),
        }
    }

    /// The local file's text and the fleet document applied with it.
    pub fn fleet_parts(&self) -> (String, Option<FleetDocument>) {
        let state = self.lock();
        (state.active.source.clone(), state.fleet.clone())
    }

    /// Applies a fleet document committed in etcd with the active local file.
    pub fn apply_fleet(&self, document: FleetDocument) -> Result<Applied, ApplyError> {
        self.apply_source(None, Some(document), Origin::Fleet, None)
    }

    /// Checks a policy as `apply` would, changing nothing.
    pub fn validate(&self, source: &str) -> Result<Validated, ApplyError> {
        let fleet = self.lock().fleet.clone();
        let compiled = self.compile(source, fleet.as_ref())?;
        let restart_required = self
            .started
            .changes(&compiled.static_parts())
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(Validated {
            valid: true,
            restart_required,
            warnings: warnings(source, &compiled, fleet.is_some()),
        })
    }

    /// What applying `source` would change against the running policy; nothing changes.
    pub fn dry_run(&self, source: &str) -> Result<meshgate_admin::DryRun, ApplyError> {
        let fleet = self.lock().fleet.clone();
        let mut compiled = self.compile(source, fleet.as_ref())?;
        let warnings = warnings(source, &compiled, fleet.is_some());
        // As `apply` would run it: the listeners bound at start serve on.
        let plan = ListenerPlan::adopt(&mut compiled, &self.running, &self.started);
        let current = self.current.load_full();
        let changes = meshgate_policy::diff::diff(&current.policy, &compiled);
        Ok(meshgate_admin::DryRun {
            dry_run: true,
            valid: true,
            lines: changes.lines(),
            changes: serde_json::to_value(&changes).unwrap_or_default(),
            restart_required: owned(&plan.restart_required),
            warnings,
        })
    }

    /// Validates, compiles, persists (for API changes) and swaps in a policy.
    pub fn apply(
        &self,
        source: String,
        origin: Origin,
        if_match: Option<&str>,
    ) -> Result<Applied, ApplyError> {
        self.apply_source(Some(source), None, origin, if_match)
    }

    /// [`Self::apply`] of `source`, or of the policy file's content when `None`.
    fn apply_source(
        &self,
        source: Option<String>,
        fleet: Option<FleetDocument>,
        origin: Origin,
        if_match: Option<&str>,
    ) -> Result<Applied, ApplyError> {
        let result = self.apply_locked(source, fleet, origin, if_match);
        let label = match &result {
            Ok(applied) if applied.changed => "applied",
            Ok(_) => "unchanged",
            Err(ApplyError::Invalid(_)) => "invalid",
            Err(ApplyError::Stale { .. }) => "conflict",
            Err(_) => "error",
        };
        self.telemetry
            .metrics
            .policy_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(applied) if applied.changed => tracing::info!(
                version = applied.version,
                hash = %applied.hash,
                origin = origin.name(),
                restart_required = applied.restart_required.join(", ").as_str(),
                "policy applied"
            ),
            Ok(_) => {}
            Err(ApplyError::Invalid(errors)) => {
                // Where the text came from: the file, or the body of the call that sent it.
                let place = match origin {
                    Origin::File => self.path.display().to_string(),
                    other => other.name().to_owned(),
                };
                for e in errors {
                    tracing::warn!(
                        "policy refused: {place}:{}:{}: {}: {}",
                        e.line,
                        e.column,
                        e.path,
                        e.message
                    );
                }
            }
            Err(other) => tracing::warn!(origin = origin.name(), "policy not applied: {other}"),
        }
        result
    }

    fn apply_locked(
        &self,
        source: Option<String>,
        fleet: Option<FleetDocument>,
        origin: Origin,
        if_match: Option<&str>,
    ) -> Result<Applied, ApplyError> {
        let mut state = self.lock();
        // The file is read under the lock: read before it, a PUT persisted and applied in
        // between would be undone by the older text.
        let source = match source {
            Some(source) => source,
            None if origin == Origin::Fleet => state.active.source.clone(),
            None => meshgate_policy::files::read_policy_file(&self.path).map_err(ApplyError::Io)?,
        };
        let fleet_changed = fleet.is_some() && fleet != state.fleet;
        let fleet = fleet.or_else(|| state.fleet.clone());
        if let Some(expected) = if_match {
            if expected != "*" && expected != state.active.hash {
                return Err(ApplyError::Stale {
                    current_hash: state.active.hash.clone(),
                });
            }
        }
        let hash = policy_hash(&source);
        let old = self.current.load_full();
        if hash == state.active.hash && !fleet_changed {
            return Ok(Applied {
                version: old.version,
                hash,
                restart_required: owned(&old.listeners.restart_required),
                changed: false,
                warnings: Vec::new(),
            });
        }
        let mut compiled = self.compile(&source, fleet.as_ref())?;
        let warnings = warnings(&source, &compiled, fleet.is_some());
        let plan = ListenerPlan::adopt(&mut compiled, &self.running, &self.started);
        let restart_required = owned(&plan.restart_required);
        if origin != Origin::File && origin != Origin::Fleet {
            persist(&self.path, &source).map_err(|e| {
                ApplyError::Io(format!(
                    "the policy is valid but could not be written to {}: {e}",
                    self.path.display()
                ))
            })?;
        }
        self.telemetry.configure(&compiled.telemetry);
        let version = state.next_version;
        set_restart_gauges(&self.telemetry, &plan.restart_required);
        let snapshot = Snapshot::build(
            compiled,
            plan,
            Some(&old),
            version,
            &self.telemetry.metrics,
            &self.tls,
            &self.jwks,
        );
        for listener in &snapshot.policy.listeners {
            if let Some(spec) = &listener.tls {
                self.tls.apply_listener(&listener.name, spec);
            }
        }
        self.discovery.configure(&snapshot.policy.discovery);
        for upstream in &snapshot.upstreams {
            let new = !old.upstreams.iter().any(|o| Arc::ptr_eq(o, upstream));
            if new {
                // Built afresh: its names' last answers, not an empty pool until they resolve.
                self.discovery.seed(upstream);
                if needs_background(upstream) {
                    let _ = self.health_checks.send(Arc::downgrade(upstream));
                }
            }
        }
        self.endpoint_controls.apply(&snapshot.upstreams);
        self.current.store(Arc::new(snapshot));
        state.next_version += 1;
        state
            .history
            .record(history_entry(version, &hash, origin, &source));
        state.active = PolicyText {
            source,
            hash: hash.clone(),
        };
        state.fleet = fleet;
        self.telemetry.metrics.policy_version.set(version as i64);
        Ok(Applied {
            version,
            hash,
            restart_required,
            changed: true,
            warnings,
        })
    }

    /// Re-reads the policy file and applies it.
    pub fn reload_from_file(&self) -> Result<Applied, ApplyError> {
        self.apply_source(None, None, Origin::File, None)
    }

    /// Applies a policy of the history again, as a new version (validated again, and
    /// persisted): `version`, or the one applied before the active one.
    pub fn rollback(&self, version: Option<u64>) -> Result<Applied, ApplyError> {
        let source =
            {
                let state = self.lock();
                let active = self.current.load().version;
                let entry =
                    match version {
                        Some(version) => state.history.get(version).ok_or_else(|| {
                            ApplyError::UnknownVersion {
                                version,
                                kept: state.history.entries().map(|e| e.version).collect(),
                            }
                        })?,
                        None => state.history.before(active).ok_or(ApplyError::NoPrevious)?,
                    };
                entry.source.clone()
            };
        self.apply(source, Origin::Rollback, None)
    }

    /// The applied policies, oldest first, and the active version.
    pub fn history(&self) -> (Vec<Entry>, u64) {
        let state = self.lock();
        (
            state.history.entries().cloned().collect(),
            self.current.load().version,
        )
    }
}

/// Writes `source` beside `path` and renames it over `path`, so readers never see half a file,
/// keeping the file's permissions.
fn persist(path: &Path, source: &str) -> std::io::Result<()> {
    crate::files::write_then_rename(path, source.as_bytes())
}

/// Watches the policy file's folder (so editors that write a temporary file and rename it over
/// the policy are seen) and applies the file after changes settle.
pub fn watch_policy_file(store: Arc<PolicyStore>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    const SETTLE: Duration = Duration::from_millis(300);

    let file_name = store.path().file_name().map(|n| n.to_os_string());
    let (events, receiver) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let touches_policy = event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
        if touches_policy {
            let _ = events.send(());
        }
    })?;
    watcher.watch(&base_dir_of(store.path()), RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            while receiver.recv().is_ok() {
                // Debounce: wait until no event has arrived for SETTLE.
                while receiver.recv_timeout(SETTLE).is_ok() {}
                if !store.path().exists() {
                    continue;
                }
                let _ = store.reload_from_file();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

fn owned(sections: &[&'static str]) -> Vec<String> {
    sections.iter().map(|s| (*s).to_owned()).collect()
}

/// `meshgate_restart_required{section}`: 1 for each section whose change waits for a restart.
fn set_restart_gauges(telemetry: &Telemetry, pending: &[&'static str]) {
    for section in STATIC_SECTIONS {
        telemetry
            .metrics
            .restart_required
            .with_label_values(&[section])
            .set(i64::from(pending.contains(section)));
    }
}

impl Origin {
    /// How the history names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Rollback => "rollback",
            Origin::File => "file",
            Origin::Fleet => "fleet",
        }
    }
}

fn history_entry(version: u64, hash: &str, origin: Origin, source: &str) -> Entry {
    Entry {
        version,
        hash: hash.to_owned(),
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        origin: origin.as_str().to_owned(),
        source: source.to_owned(),
    }
}

/// Whether `upstream` has background work: health checks, or names to resolve.
fn needs_background(upstream: &UpstreamState) -> bool {
    upstream.spec.health_check.is_some() || !upstream.spec.names.is_empty()
}
