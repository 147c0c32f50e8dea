//! Watches the folders of every certificate, key and CA file, so a rotated file (written in
//! place or renamed over the old one, as cert-manager and most tools do) is loaded within a
//! second.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::TlsRegistry;

/// Time without events before the files are read, so a write in several steps is read once.
const SETTLE: Duration = Duration::from_millis(300);
/// The longest wait for quiet after a change: a folder that is written all the time (a log
/// beside the certificates) must not hold a rotation back.
const SETTLE_AT_MOST: Duration = Duration::from_secs(1);
/// How often the set of watched folders is checked against the files a reload may have added.
const RESCAN: Duration = Duration::from_secs(2);

/// Starts watching, on a thread that owns the watcher and lives as long as the process.
pub fn watch_files(registry: Arc<TlsRegistry>) -> notify::Result<()> {
    let (events, receiver) = std::sync::mpsc::channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                let _ = events.send(event.paths);
            }
        }
    })?;
    let mut watched = HashSet::new();
    watch_new_folders(&registry, &mut watcher, &mut watched);
    std::thread::Builder::new()
        .name("tls-watch".into())
        .spawn(move || loop {
            match receiver.recv_timeout(RESCAN) {
                Ok(paths) => {
                    let files: HashSet<PathBuf> = registry.files().into_iter().collect();
                    if paths.iter().any(|path| concerns_us(path, &files)) {
                        // Quiet means no change to our files for SETTLE: changes to other
                        // files of the folder (a log written all the time) do not count, or
                        // a busy folder would hold every rotation for SETTLE_AT_MOST.
                        let deadline = Instant::now() + SETTLE_AT_MOST;
                        let mut quiet_at = Instant::now() + SETTLE;
                        while let Some(wait) = quiet_at
                            .min(deadline)
                            .checked_duration_since(Instant::now())
                        {
                            match receiver.recv_timeout(wait) {
                                Ok(paths) if paths.iter().any(|p| concerns_us(p, &files)) => {
                                    quiet_at = Instant::now() + SETTLE;
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        registry.reload_files();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            watch_new_folders(&registry, &mut watcher, &mut watched);
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(())
}

/// Whether a change at `path` may change one of `files`: it is one of them, or a link or
/// folder they may resolve through (as in Kubernetes' `..data` swap). Other files in the same
/// folders, such as a log written beside the certificates, are let go.
fn concerns_us(path: &std::path::Path, files: &HashSet<PathBuf>) -> bool {
    files.contains(path)
        || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink() || m.is_dir())
}

fn watch_new_folders(
    registry: &TlsRegistry,
    watcher: &mut dyn Watcher,
    watched: &mut HashSet<PathBuf>,
) {
    for file in registry.files() {
        let Some(folder) = file.parent().map(|p| p.to_path_buf()) else {
            continue;
        };
        if watched.contains(&folder) {
            continue;
        }
        match watcher.watch(&folder, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(folder);
            }
            Err(e) => tracing::warn!(
                "cannot watch {} for TLS file changes: {e}",
                folder.display()
            ),
        }
    }
}
