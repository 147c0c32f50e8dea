//! A fleet node: it holds a lease under the prefix while it runs, votes on staged documents,
//! applies each committed one through the policy store, caches it, and says what it serves.
//! With etcd unreachable it keeps serving what it has and retries with backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use meshgate_policy::fleet::FleetSettings;

use super::{cache, FleetDocument, Keys, NodeStatus, Vote};
use crate::reload::PolicyStore;

/// Lease time to live: a node that stops renewing is gone from the fleet after it.
const LEASE_SECONDS: i64 = 5;
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What this node knows of its fleet, for `GET /fleet`, `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Whether the node is connected to etcd.
    pub connected: bool,
    /// What it serves and how its last apply went.
    pub status: Option<NodeStatus>,
}

/// The node's shared view.
pub type SharedState = Arc<Mutex<NodeState>>;

fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, NodeState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// What `/readyz` adds for a fleet node that serves its cache without etcd.
pub fn readiness_note(state: &SharedState) -> Option<String> {
    let shared = lock(state);
    let status = shared.status.as_ref()?;
    (status.from_cache && !shared.connected).then(|| {
        format!(
            "fleet: serving the cached fleet document version {} (etcd unreachable)",
            status.version
        )
    })
}

/// Runs the node until the process ends.
pub async fn run(store: Arc<PolicyStore>, settings: FleetSettings, state: SharedState) {
    let keys = Keys::new(&settings.prefix);
    let (_, applied) = store.fleet_parts();
    {
        let mut shared = lock(&state);
        shared.status = Some(NodeStatus {
            node: settings.node.clone(),
            version: applied.as_ref().map_or(0, |d| d.version),
            hash: applied
                .as_ref()
                .map_or_else(String::new, |d| d.hash.clone()),
            last_error: None,
            from_cache: applied.is_some(),
        });
    }
    let connected = store.telemetry().metrics.fleet_connected.clone();
    let mut backoff = Duration::from_millis(250);
    let mut last_failure = String::new();
    loop {
        let result = session(&store, &settings, &keys, &state, &mut backoff).await;
        lock(&state).connected = false;
        connected.set(0);
        let message = match result {
            Ok(()) => "the watch ended".to_owned(),
            Err(message) => message,
        };
        if message != last_failure {
            tracing::warn!(error = %message, "fleet: etcd unreachable; serving the policy applied last, retrying");
            last_failure = message;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: register, catch up, then follow the watch.
async fn session(
    store: &Arc<PolicyStore>,
    settings: &FleetSettings,
    keys: &Keys,
    state: &SharedState,
    backoff: &mut Duration,
) -> Result<(), String> {
    let etcd = |e: etcd_client::Error| e.to_string();
    let mut client = super::connect(settings).await?;
    let lease = client
        .lease_grant(LEASE_SECONDS, None)
        .await
        .map_err(etcd)?
        .id();
    let (mut keeper, mut renewals) = client.lease_keep_alive(lease).await.map_err(etcd)?;
    let mut node = Node {
        client: client.clone(),
        store: store.clone(),
        keys: keys.clone(),
        state: state.clone(),
        lease,
        base_dir: crate::files::base_dir_of(store.path()),
    };
    node.publish().await?;
    lock(state).connected = true;
    store.telemetry().metrics.fleet_connected.set(1);
    *backoff = Duration::from_millis(250);
    tracing::info!(node = %settings.node, prefix = %settings.prefix, "fleet: connected to etcd");

    // Catch up: the committed document, and pushes waiting for this node's vote.
    let committed = client.get(keys.committed(), None).await.map_err(etcd)?;
    let revision = committed.header().map_or(0, |h| h.revision());
    if let Some(kv) = committed.kvs().first() {
        node.apply(kv.value()).await?;
    }
    let staged = client
        .get(keys.staged_prefix(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd)?;
    for kv in staged.kvs() {
        node.vote(kv.key_str().unwrap_or_default(), kv.value())
            .await?;
    }

    let mut events = client
        .watch(
            keys.root(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(etcd)?;
    let mut renew = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = renew.tick() => {
                keeper.keep_alive().await.map_err(etcd)?;
                match renewals.message().await.map_err(etcd)? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => return Err("the node's lease expired".to_owned()),
                }
            }
            message = events.message() => {
                let Some(response) = message.map_err(etcd)? else {
                    return Ok(());
                };
                if response.canceled() {
                    return Err(format!("the watch was canceled: {}", response.cancel_reason()));
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    if event.event_type() != EventType::Put {
                        continue;
                    }
                    let key = kv.key_str().unwrap_or_default();
                    if key == keys.committed() {
                        node.apply(kv.value()).await?;
                    } else if key.starts_with(&keys.staged_prefix()) {
                        node.vote(key, kv.value()).await?;
                    }
                }
            }
        }
    }
}

struct Node {
    client: etcd_client::Client,
    store: Arc<PolicyStore>,
    keys: Keys,
    state: SharedState,
    lease: i64,
    base_dir: std::path::PathBuf,
}

impl Node {
    /// Writes the node's status under its lease.
    async fn publish(&mut self) -> Result<(), String> {
        let Some(status) = lock(&self.state).status.clone() else {
            return Ok(());
        };
        let json = serde_json::to_string(&status).map_err(|e| e.to_string())?;
        self.client
            .put(self.keys.member(&status.node), json.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        self.client
            .put(
                self.keys.node(&status.node),
                json,
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Applies a committed document (a JSON [`FleetDocument`]) unless it is the one served.
    async fn apply(&mut self, value: &[u8]) -> Result<(), String> {
        let document: FleetDocument = match serde_json::from_slice(value) {
            Ok(document) => document,
            Err(e) => {
                tracing::error!(error = %e, "fleet: the committed document is not readable; ignored");
                return Ok(());
            }
        };
        let (_, applied) = self.store.fleet_parts();
        let serving = applied.as_ref().map(|d| d.version);
        let from_cache = lock(&self.state)
            .status
            .as_ref()
            .is_some_and(|s| s.from_cache);
        if serving == Some(document.version) && !from_cache {
            return Ok(());
        }
        let store = self.store.clone();
        let candidate = document.clone();
        let result = tokio::task::spawn_blocking(move || store.apply_fleet(candidate))
            .await
            .map_err(|e| e.to_string())?;
        {
            let mut shared = lock(&self.state);
            let status = shared.status.get_or_insert_with(|| NodeStatus {
                node: String::new(),
                version: 0,
                hash: String::new(),
                last_error: None,
                from_cache: false,
            });
            match &result {
                Ok(applied) => {
                    status.version = document.version;
                    status.hash = document.hash.clone();
                    status.last_error = None;
                    status.from_cache = false;
                    tracing::info!(
                        fleet_version = document.version,
                        policy_version = applied.version,
                        "fleet: document applied"
                    );
                }
                Err(error) => {
                    let message = super::apply_error_text(error);
                    tracing::error!(fleet_version = document.version, error = %message, "fleet: document refused; serving the policy applied last");
                    status.last_error = Some(message);
                }
            }
        }
        if result.is_ok() {
            if let Err(e) = cache::write(self.store.path(), &document) {
                tracing::warn!(error = %e, "fleet: cannot write the cache beside the policy file");
            }
        }
        self.publish().await
    }

    /// Validates a staged document against the local file and writes this node's vote.
    async fn vote(&mut self, key: &str, text: &[u8]) -> Result<(), String> {
        let Some(push) = key.strip_prefix(&self.keys.staged_prefix()) else {
            return Ok(());
        };
        let node = match &lock(&self.state).status {
            Some(status) => status.node.clone(),
            None => return Ok(()),
        };
        let (local, _) = self.store.fleet_parts();
        let text = String::from_utf8_lossy(text).into_owned();
        let vote = match super::compile(&local, &text, &self.base_dir) {
            Ok(_) => Vote {
                ok: true,
                errors: Vec::new(),
            },
            Err(errors) => Vote {
                ok: false,
                errors: errors.iter().map(super::error_line).collect(),
            },
        };
        let json = serde_json::to_string(&vote).map_err(|e| e.to_string())?;
        self.client
            .put(
                self.keys.vote(push, &node),
                json,
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
