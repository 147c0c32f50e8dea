//! Reading the files a policy names (PEM certificates and keys, the admin token, anything
//! later) safely: each must be a regular file of at most [`MAX_NAMED_FILE`] bytes.
//!
//! A policy is validated on the admin API's threads, next to the data plane, so whatever file
//! it names must not be able to take the process down: `/dev/zero` read whole grew the gateway
//! past 1.5 GiB until it died, a FIFO blocked validation forever, and a 512 MiB file was read
//! whole. The file is opened without blocking (a FIFO's open would wait for a writer), checked
//! through the opened handle (so a swap between a check and the open changes nothing), and
//! read through a bound (so a file that grows meanwhile is still cut).

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest file a policy may name: far above any certificate chain, key or token.
pub const MAX_NAMED_FILE: u64 = 1024 * 1024;

/// The largest policy, however it arrives: a file (`meshgate check`, `run`, a reload, a
/// fleet push), the admin API's body (`meshgate_admin::MAX_BODY_BYTES`, the same number), or
/// a fleet document (which also fits etcd's default request limit, 1.5 MiB).
pub const MAX_POLICY_FILE: u64 = 1024 * 1024;

/// Reads `path` whole when it is a regular file of at most [`MAX_NAMED_FILE`] bytes; else an
/// error that names the file and says what is wrong with it.
pub fn read_named_file(path: &Path) -> Result<Vec<u8>, String> {
    read_regular_file(path, MAX_NAMED_FILE, "a policy may name")
}

/// Reads a policy file as text: a regular file of at most [`MAX_POLICY_FILE`] bytes.
pub fn read_policy_file(path: &Path) -> Result<String, String> {
    let bytes = read_regular_file(path, MAX_POLICY_FILE, "a policy file may hold")?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Refuses a secret's file that anyone but its owner may read or write, as `ssh` refuses a
/// private key file: the error names the file, its mode and the command that fixes it.
pub fn check_private_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: a file holding a secret must be readable by its owner only (run `chmod 600 {}`)",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

fn read_regular_file(path: &Path, limit: u64, what_may: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!(
            "{} is {what}; only a regular file will do",
            path.display()
        ));
    }
    let too_large = |bytes: u64| {
        format!(
            "{} is {bytes} bytes, more than the {limit} bytes ({} KiB) {what_may}",
            path.display(),
            limit / 1024
        )
    };
    if metadata.len() > limit {
        return Err(too_large(metadata.len()));
    }
    let mut contents = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut contents)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if contents.len() as u64 > limit {
        return Err(too_large(contents.len() as u64));
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_fifos_directories_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_named_file(Path::new("/dev/zero"))
            .unwrap_err()
            .contains("is a device"));
        assert!(read_named_file(dir.path())
            .unwrap_err()
            .contains("is a directory"));
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(read_named_file(&fifo).unwrap_err().contains("is a FIFO"));
        let large = dir.path().join("large");
        std::fs::File::create(&large)
            .unwrap()
            .set_len(MAX_NAMED_FILE + 1)
            .unwrap();
        assert!(read_named_file(&large).unwrap_err().contains("more than"));
        let small = dir.path().join("small");
        std::fs::write(&small, "token").unwrap();
        assert_eq!(read_named_file(&small).unwrap(), b"token");
    }
}
