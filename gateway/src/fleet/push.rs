//! The two-phase push: stage a document, wait for every live node's vote, and commit it in one
//! transaction that compares the committed key's revision with the one the push started
//! from, so that of two concurrent pushes one wins and the other is told of the conflict.
//! Also the fleet's status and history, as `meshgate fleet` and the admin API read them.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use serde::Serialize;

use super::{FleetDocument, Keys, NodeStatus, Vote};

/// Why a push committed nothing.
#[derive(Debug)]
pub enum PushError {
    /// The document is not a fleet document (syntax, or sections that are local to nodes).
    Invalid(Vec<String>),
    /// Nodes refused it: each node and its errors, and the live nodes that had not voted yet
    /// when the first refusal came.
    Refused(Vec<(String, Vec<String>)>, Vec<String>),
    /// Nodes did not answer in time.
    NoAnswer(Vec<String>),
    /// Another push committed first.
    Conflict,
    /// etcd failed.
    Etcd(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Invalid(errors) => write!(f, "invalid document:\n{}", errors.join("\n")),
            PushError::Refused(nodes, not_voted) => {
                for (node, errors) in nodes {
                    writeln!(f, "node {node} refused the document:")?;
                    for error in errors {
                        writeln!(f, "  {error}")?;
                    }
                }
                if !not_voted.is_empty() {
                    writeln!(f, "node(s) {} had not voted yet", not_voted.join(", "))?;
                }
                write!(f, "nothing was committed")
            }
            PushError::NoAnswer(nodes) => write!(
                f,
                "no answer in time from node(s) {}; nothing was committed",
                nodes.join(", ")
            ),
            PushError::Conflict => write!(
                f,
                "conflict: another push committed first; nothing was committed (push again)"
            ),
            PushError::Etcd(message) => write!(f, "etcd: {message}"),
        }
    }
}

fn etcd(e: etcd_client::Error) -> PushError {
    PushError::Etcd(e.to_string())
}

/// The committed document and its key's revision (0 and `None` when nothing is committed).
async fn committed(
    client: &mut etcd_client::Client,
    keys: &Keys,
) -> Result<(i64, Option<FleetDocument>), PushError> {
    let response = client.get(keys.committed(), None).await.map_err(etcd)?;
    Ok(match response.kvs().first() {
        Some(kv) => (kv.mod_revision(), serde_json::from_slice(kv.value()).ok()),
        None => (0, None),
    })
}

/// The JSON values of every key under `prefix` that parse as `T`, in key order.
async fn values<T: serde::de::DeserializeOwned>(
    client: &mut etcd_client::Client,
    prefix: String,
) -> Result<Vec<T>, PushError> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd)?;
    Ok(response
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

/// The live nodes' statuses.
pub async fn nodes(
    client: &mut etcd_client::Client,
    keys: &Keys,
) -> Result<Vec<NodeStatus>, PushError> {
    values(client, keys.nodes_prefix()).await
}

/// Pushes `text`: stages it, waits up to `timeout` for every live node's vote, and commits it
/// when all said ok. Returns the committed version.
pub async fn push(
    client: &mut etcd_client::Client,
    keys: &Keys,
    text: &str,
    history: u32,
    timeout: Duration,
) -> Result<u64, PushError> {
    let problems = meshgate_policy::check_fleet_document(text);
    if !problems.is_empty() {
        return Err(PushError::Invalid(
            problems
                .iter()
                .map(|e| e.display_with_file("fleet"))
                .collect(),
        ));
    }
    let (base_revision, current) = committed(client, keys).await?;
    let version = current.as_ref().map_or(0, |d| d.version) + 1;
    let live: Vec<String> = nodes(client, keys)
        .await?
        .into_iter()
        .map(|n| n.node)
        .collect();
    let push_id = format!("{:016x}", rand::random::<u64>());
    client
        .put(keys.staged(&push_id), text, None)
        .await
        .map_err(etcd)?;
    let outcome = collect_votes(client, keys, &push_id, &live, timeout).await;
    if let Err(error) = outcome {
        unstage(client, keys, &push_id).await;
        return Err(error);
    }
    let document = FleetDocument {
        version,
        hash: super::hash(text),
        text: text.to_owned(),
    };
    let json = serde_json::to_string(&document).map_err(|e| PushError::Etcd(e.to_string()))?;
    let mut operations = vec![
        TxnOp::put(keys.committed(), json.clone(), None),
        TxnOp::put(keys.history(version), json, None),
    ];
    if version > u64::from(history) {
        // Documents older than the kept history go.
        operations.push(TxnOp::delete(
            keys.history_prefix(),
            Some(DeleteOptions::new().with_range(keys.history(version - u64::from(history) + 1))),
        ));
    }
    let transaction = Txn::new()
        .when([Compare::mod_revision(
            keys.committed(),
            CompareOp::Equal,
            base_revision,
        )])
        .and_then(operations);
    let result = client.txn(transaction).await.map_err(etcd);
    unstage(client, keys, &push_id).await;
    if !result?.succeeded() {
        return Err(PushError::Conflict);
    }
    Ok(version)
}

/// Removes a push's staged document and its votes (best effort: they are small, and a push
/// that fails to remove them leaves nothing a node would apply).
async fn unstage(client: &mut etcd_client::Client, keys: &Keys, push_id: &str) {
    let _ = client.delete(keys.staged(push_id), None).await;
    let _ = client
        .delete(
            keys.votes_prefix(push_id),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await;
}

/// Waits until each of `live` voted on `push_id`, up to `timeout`.
async fn collect_votes(
    client: &mut etcd_client::Client,
    keys: &Keys,
    push_id: &str,
    live: &[String],
    timeout: Duration,
) -> Result<(), PushError> {
    let deadline = Instant::now() + timeout;
    loop {
        let response = client
            .get(
                keys.votes_prefix(push_id),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(etcd)?;
        let mut votes = std::collections::BTreeMap::new();
        for kv in response.kvs() {
            let node = kv
                .key_str()
                .unwrap_or_default()
                .strip_prefix(&keys.votes_prefix(push_id))
                .unwrap_or_default()
                .to_owned();
            if let Ok(vote) = serde_json::from_slice::<Vote>(kv.value()) {
                votes.insert(node, vote);
            }
        }
        let refused: Vec<(String, Vec<String>)> = votes
            .iter()
            .filter(|(_, vote)| !vote.ok)
            .map(|(node, vote)| (node.clone(), vote.errors.clone()))
            .collect();
        let missing: Vec<String> = live
            .iter()
            .filter(|node| !votes.contains_key(*node))
            .cloned()
            .collect();
        if !refused.is_empty() {
            return Err(PushError::Refused(refused, missing));
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PushError::NoAnswer(missing));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node in `meshgate fleet status` and `GET /fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The node's name.
    pub node: String,
    /// Whether it holds its lease (it is running and reaches etcd).
    pub alive: bool,
    /// The fleet document version it serves.
    pub version: u64,
    /// That document's hash.
    pub hash: String,
    /// Its last apply's errors, if it failed.
    pub last_error: Option<String>,
    /// Whether it serves an older version than the committed one.
    pub lagging: bool,
}

/// The fleet as etcd holds it: the committed version and every live node.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// The committed version (0: nothing committed).
    pub committed: u64,
    /// The committed document's hash.
    pub hash: String,
    /// Every live node.
    pub nodes: Vec<NodeReport>,
}

/// The fleet's status.
pub async fn status(
    client: &mut etcd_client::Client,
    keys: &Keys,
) -> Result<FleetReport, PushError> {
    let (_, current) = committed(client, keys).await?;
    let committed = current.as_ref().map_or(0, |d| d.version);
    let live = nodes(client, keys).await?;
    let mut known: Vec<NodeStatus> = values(client, keys.members_prefix()).await?;
    for node in &live {
        match known.iter_mut().find(|k| k.node == node.node) {
            Some(entry) => *entry = node.clone(),
            None => known.push(node.clone()),
        }
    }
    let nodes = known
        .into_iter()
        .map(|n| NodeReport {
            lagging: n.version < committed,
            alive: live.iter().any(|l| l.node == n.node),
            node: n.node,
            version: n.version,
            hash: n.hash,
            last_error: n.last_error,
        })
        .collect();
    Ok(FleetReport {
        committed,
        hash: current.map(|d| d.hash).unwrap_or_default(),
        nodes,
    })
}

/// Every kept document, oldest first.
pub async fn history(
    client: &mut etcd_client::Client,
    keys: &Keys,
) -> Result<Vec<FleetDocument>, PushError> {
    values(client, keys.history_prefix()).await
}
