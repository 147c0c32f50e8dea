//! The files the gateway writes itself: the policy file (after `PUT /policy` and rollbacks), its
//! history and a fleet node's cache of the fleet document. Each can hold secrets (a Redis
//! password in a URL, a JWKS URL's credentials), so a write keeps the permissions and owner of
//! the file it replaces (a new file is `0600`), and goes through a temporary file that nobody
//! can have placed beforehand: it is created new (`O_EXCL`, which does not follow a link) under
//! a random name, so a link planted beside the policy cannot redirect the write.
//!
//! Kept below `reload` and `fleet`, which both write through it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of a file the gateway creates: its owner's alone.
pub const NEW_FILE_MODE: u32 = 0o600;

/// The folder relative paths in a policy file are resolved against.
pub fn base_dir_of(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // Absolute, so that the files a policy names stay the same files whatever the working
    // directory later is, and `/config` shows where they are.
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Writes `contents` to a new temporary file beside `path`, syncs it, and renames it over
/// `path`, so that a reader sees the old file or the new one, never a part. The new file has
/// the mode (and, when the gateway runs as root, the owner) of the file it replaces, or
/// [`NEW_FILE_MODE`].
pub fn write_then_rename(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = base_dir_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy.toml".into());
    let replaced = std::fs::metadata(path).ok();
    let (temp, file) = create_temporary(&dir, &name)?;
    let written =
        fill(&file, contents, replaced.as_ref()).and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
        return written;
    }
    // The rename is durable once the folder is synced; a failure here loses nothing written.
    if let Ok(folder) = File::open(&dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// A new file beside the target, under a name nobody could have known in advance.
fn create_temporary(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let mut last_error = None;
    for _ in 0..8 {
        let temp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp);
        match opened {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no temporary file name was free")))
}

/// Gives `file` the permissions of the file it replaces, then its contents, synced.
fn fill(mut file: &File, contents: &[u8], replaced: Option<&std::fs::Metadata>) -> io::Result<()> {
    if let Some(old) = replaced {
        let new = file.metadata()?;
        if (old.uid(), old.gid()) != (new.uid(), new.gid()) {
            // Only root may give a file away (to the policy file's owner, when root edits a
            // service's policy); anyone else writes a file that is theirs, as before.
            let _ = std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()));
        }
    }
    // Set through the open file, after any change of owner (which can clear set-id bits), and
    // whatever the process's umask took away at creation.
    let mode = replaced.map_or(NEW_FILE_MODE, |old| old.permissions().mode() & 0o7777);
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_rewrite_keeps_the_mode_and_a_new_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("policy.toml");
        std::fs::write(&kept, "old").unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_then_rename(&kept, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "new");
        assert_eq!(mode_of(&kept), 0o640);

        let fresh = dir.path().join("history.json");
        write_then_rename(&fresh, b"{}").unwrap();
        assert_eq!(mode_of(&fresh), NEW_FILE_MODE);
        // Nothing is left beside them.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
