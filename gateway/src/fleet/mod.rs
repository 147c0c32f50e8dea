//! A fleet of gateways sharing one policy in etcd. A node's local file keeps what is local
//! (`[server]`, `[admin]`, listeners, `[fleet]`); the fleet document (upstreams, routes, rate
//! limit store, discovery, telemetry) is committed in etcd by a two-phase push
//! ([`push`]): staged, validated by every live node against its local part, and committed
//! only when all said `ok`. Each node ([`node`]) watches the committed document, applies it
//! through the same reload path as a local change, caches it beside its file, and reports
//! what it serves under its lease.
//!
//! Keys, under `[fleet].prefix`:
//!
//! | key | value |
//! |---|---|
//! | `committed` | the committed [`FleetDocument`] (JSON) |
//! | `history/<version>` | every committed document, the last `[fleet].history` kept |
//! | `nodes/<node>` | a live node's [`NodeStatus`] (JSON), under the node's lease |
//! | `members/<node>` | the same, without a lease: what the node said last, so that `fleet status` lists a node that is down |
//! | `staged/<push>` | a document being pushed |
//! | `votes/<push>/<node>` | a node's [`Vote`] on it |

pub mod api;
mod cache;
pub mod check;
pub mod cli;
pub mod node;
pub mod push;

use std::path::Path;
use std::time::Duration;

use meshgate_admin::ErrorItem;
use meshgate_policy::fleet::{Document, FleetSettings};
use meshgate_policy::{CompiledPolicy, FleetError};
use serde::{Deserialize, Serialize};

pub use cache::start_with_cache;

/// A committed fleet document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDocument {
    /// Its number: 1 for the first commit under a prefix, then one more per commit.
    pub version: u64,
    /// Hex SHA-256 of its text.
    pub hash: String,
    /// Its TOML text.
    pub text: String,
}

/// What a node writes under its lease: what it serves and how its last apply went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// The fleet document version it serves (0: none yet).
    pub version: u64,
    /// That document's hash.
    pub hash: String,
    /// The last apply's errors, when it failed; the node serves what it had.
    pub last_error: Option<String>,
    /// Whether what it serves came from its cache (etcd was unreachable at start).
    pub from_cache: bool,
}

/// A node's answer to a staged document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Whether the node can apply it.
    pub ok: bool,
    /// Why not: each error as `document:line:column: path: message`.
    pub errors: Vec<String>,
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// Every fleet key starts with this.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }
    /// The committed document.
    pub fn committed(&self) -> String {
        format!("{}/committed", self.prefix)
    }
    /// Every kept document starts with this.
    pub fn history_prefix(&self) -> String {
        format!("{}/history/", self.prefix)
    }
    /// A kept document; zero-padded so that keys sort by version.
    pub fn history(&self, version: u64) -> String {
        format!("{}{version:020}", self.history_prefix())
    }
    /// Every node's status starts with this.
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
    /// A node's status.
    pub fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes_prefix())
    }
    /// Every member's last status starts with this.
    pub fn members_prefix(&self) -> String {
        format!("{}/members/", self.prefix)
    }
    /// A member's last status, kept while it is down.
    pub fn member(&self, node: &str) -> String {
        format!("{}{node}", self.members_prefix())
    }
    /// Every staged document starts with this.
    pub fn staged_prefix(&self) -> String {
        format!("{}/staged/", self.prefix)
    }
    /// A staged document.
    pub fn staged(&self, push: &str) -> String {
        format!("{}{push}", self.staged_prefix())
    }
    /// Every vote on `push` starts with this.
    pub fn votes_prefix(&self, push: &str) -> String {
        format!("{}/votes/{push}/", self.prefix)
    }
    /// A node's vote on `push`.
    pub fn vote(&self, push: &str, node: &str) -> String {
        format!("{}{node}", self.votes_prefix(push))
    }
}

/// Connects to etcd as `[fleet]` says: its endpoints, TLS (CA, client certificate) and
/// user/password.
pub async fn connect(settings: &FleetSettings) -> Result<etcd_client::Client, String> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let Some((user, password_file)) = &settings.credentials {
        let password = meshgate_policy::files::read_named_file(password_file)
            .map_err(|e| format!("fleet.password_file: {e}"))?;
        let password = String::from_utf8_lossy(&password).trim().to_owned();
        options = options.with_user(user.clone(), password);
    }
    if settings.ca.is_some() || settings.identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &settings.ca {
            let pem = meshgate_policy::files::read_named_file(ca)
                .map_err(|e| format!("fleet.tls.ca: {e}"))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &settings.identity {
            let cert = meshgate_policy::files::read_named_file(cert)
                .map_err(|e| format!("fleet.tls.cert: {e}"))?;
            let key = meshgate_policy::files::read_named_file(key)
                .map_err(|e| format!("fleet.tls.key: {e}"))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    etcd_client::Client::connect(&settings.etcd, Some(options))
        .await
        .map_err(|e| format!("cannot connect to etcd {}: {e}", settings.etcd.join(", ")))
}

/// Compiles a node's local file with a fleet document.
pub fn compile(
    local: &str,
    fleet: &str,
    base_dir: &Path,
) -> Result<CompiledPolicy, Vec<FleetError>> {
    meshgate_policy::load_with_fleet(local, fleet, base_dir)
}

/// How an error of a fleet node's policy is printed: `fleet:LINE:COLUMN: path: message`, or
/// `local:…` for the node's own file.
pub fn error_line((document, error): &FleetError) -> String {
    error.display_with_file(document_name(*document))
}

fn document_name(document: Document) -> &'static str {
    match document {
        Document::Local => "local",
        Document::Fleet => "fleet",
    }
}

/// Errors as the admin API reports them; the message says which document.
pub fn error_items(errors: Vec<FleetError>) -> Vec<ErrorItem> {
    errors
        .into_iter()
        .map(|(document, e)| ErrorItem {
            line: e.line,
            column: e.column,
            path: e.path,
            message: format!("in the {} document: {}", document_name(document), e.message),
        })
        .collect()
}

/// Hex SHA-256 of a document's text.
pub fn hash(text: &str) -> String {
    crate::reload::policy_hash(text)
}

/// An apply's failure as one line, for logs and the node's status.
pub fn apply_error_text(error: &meshgate_admin::ApplyError) -> String {
    use meshgate_admin::ApplyError;
    match error {
        ApplyError::Invalid(items) => items
            .iter()
            .map(|e| format!("{}:{}: {}: {}", e.line, e.column, e.path, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        ApplyError::Io(message) => message.clone(),
        ApplyError::Stale { current_hash } => format!("the active policy is {current_hash}"),
        ApplyError::NoPrevious => "no previous policy".to_owned(),
        ApplyError::UnknownVersion { version, .. } => format!("no policy of version {version}"),
    }
}
