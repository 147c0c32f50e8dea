//! The last applied fleet document, kept beside the policy file
//! (`<policy file>.fleet.json`, written then renamed), so that a node restarted while etcd is
//! down serves the fleet policy it had.

use std::path::{Path, PathBuf};

use meshgate_policy::CompiledPolicy;

use super::FleetDocument;

/// Where the cache of the policy file `policy` is.
pub fn path_of(policy: &Path) -> PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".fleet.json");
    PathBuf::from(name)
}

/// The cached document, if there is a readable one.
pub fn read(policy: &Path) -> Option<FleetDocument> {
    let path = path_of(policy);
    let bytes = meshgate_policy::files::read_named_file(&path).ok()?;
    match serde_json::from_slice::<FleetDocument>(&bytes) {
        Ok(document) => Some(document),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the fleet cache is damaged; ignored");
            None
        }
    }
}

/// Writes `document` as the cache of `policy`, atomically, keeping the cache's permissions
/// (a new cache is `0600`).
pub fn write(policy: &Path, document: &FleetDocument) -> std::io::Result<()> {
    let json = serde_json::to_vec(document).map_err(std::io::Error::other)?;
    crate::files::write_then_rename(&path_of(policy), &json)
}

/// At start: a fleet node's policy with its cached fleet document, when it has one that
/// compiles with the local file; else the local file alone (no routes until etcd answers).
pub fn start_with_cache(
    policy: &Path,
    local: &str,
    base_dir: &Path,
    compiled: CompiledPolicy,
) -> (CompiledPolicy, Option<FleetDocument>) {
    if compiled.fleet.is_none() {
        return (compiled, None);
    }
    let Some(document) = read(policy) else {
        tracing::warn!("no cached fleet document: serving the local file alone until etcd answers");
        return (compiled, None);
    };
    match super::compile(local, &document.text, base_dir) {
        Ok(with_fleet) => {
            tracing::warn!(
                version = document.version,
                hash = %document.hash,
                "serving the cached fleet document until etcd answers"
            );
            (with_fleet, Some(document))
        }
        Err(errors) => {
            for error in &errors {
                tracing::warn!(
                    "cached fleet document refused: {}",
                    super::error_line(error)
                );
            }
            (compiled, None)
        }
    }
}
