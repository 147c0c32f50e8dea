//! The applied policies, newest last: the last `[admin].history` of them with their version,
//! hash, time and origin, kept beside the policy file (`<policy file>.history.json`, written
//! then renamed) so that a rollback can go back to any of them, across restarts too.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One applied policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Its version number.
    pub version: u64,
    /// Hex SHA-256 of its text.
    pub hash: String,
    /// When it was applied, RFC 3339 in UTC.
    pub time: String,
    /// How it came: `file` (start, reload or an edit), `api` or `rollback`.
    pub origin: String,
    /// Its text.
    pub source: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    entries: Vec<Entry>,
}

/// The bounded, persisted list of applied policies.
pub struct PolicyHistory {
    path: PathBuf,
    limit: usize,
    entries: VecDeque<Entry>,
}

impl PolicyHistory {
    /// The history kept beside `policy`, holding at most `limit` entries. A missing file is
    /// an empty history; an unreadable or damaged one is set aside with a warning, since the
    /// history must never stop the gateway from starting.
    pub fn open(policy: &Path, limit: usize) -> PolicyHistory {
        let name = policy
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy.toml".into());
        let path = crate::files::base_dir_of(policy).join(format!("{name}.history.json"));
        let entries = match std::fs::metadata(&path) {
            Err(_) => VecDeque::new(),
            Ok(_) => match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Stored>(&bytes).map_err(|e| e.to_string())
                }) {
                Ok(stored) => stored.entries.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(
                        "policy history {} is unreadable ({e}); starting a new one",
                        path.display()
                    );
                    VecDeque::new()
                }
            },
        };
        let mut history = PolicyHistory {
            path,
            limit: limit.max(1),
            entries,
        };
        history.trim();
        history
    }

    fn trim(&mut self) {
        while self.entries.len() > self.limit {
            self.entries.pop_front();
        }
    }

    /// The newest entry.
    pub fn last(&self) -> Option<&Entry> {
        self.entries.back()
    }

    /// The highest version recorded (0 for an empty history).
    pub fn last_version(&self) -> u64 {
        self.entries.iter().map(|e| e.version).max().unwrap_or(0)
    }

    /// Records an applied policy and writes the history out.
    pub fn record(&mut self, entry: Entry) {
        self.entries.push_back(entry);
        self.trim();
        if let Err(e) = self.persist() {
            tracing::warn!("policy history not written to {}: {e}", self.path.display());
        }
    }

    fn persist(&self) -> std::io::Result<()> {
        let stored = Stored {
            entries: self.entries.iter().cloned().collect(),
        };
        let text = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        crate::files::write_then_rename(&self.path, &text)
    }

    /// The entry of `version`.
    pub fn get(&self, version: u64) -> Option<&Entry> {
        self.entries.iter().find(|e| e.version == version)
    }

    /// The entry recorded just before `version`'s.
    pub fn before(&self, version: u64) -> Option<&Entry> {
        let index = self.entries.iter().position(|e| e.version == version)?;
        index.checked_sub(1).map(|i| &self.entries[i])
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}
