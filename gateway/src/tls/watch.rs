//! Watches the folders of every certificate, key and CA file, so a rotated file (written in
//! place or renamed over the old one, as cert-manager and most tools do) is loaded within a
//! second.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::TlsRegistry;

/// Time without events before the files are read, so a write in several steps is read once.
const SETTLE: Duration = Duration::from_millis(300);
/// How often the set of watched folders is checked against the files a reload may have added.
const RESCAN: Duration = Duration::from_secs(2);

/// Starts watching, on a thread that owns the watcher and lives as long as the process.
pub fn watch_files(registry: Arc<TlsRegistry>) -> notify::Result<()> {
    let (events, receiver) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                let _ = events.send(());
            }
        }
    })?;
    let mut watched = HashSet::new();
    watch_new_folders(&registry, &mut watcher, &mut watched);
    std::thread::Builder::new()
        .name("tls-watch".into())
        .spawn(move || loop {
            match receiver.recv_timeout(RESCAN) {
                Ok(()) => {
                    while receiver.recv_timeout(SETTLE).is_ok() {}
                    registry.reload_files();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            watch_new_folders(&registry, &mut watcher, &mut watched);
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(())
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
