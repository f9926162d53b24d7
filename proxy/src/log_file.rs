//! Opening the decision log and the access log. Both hold who called whom, when, on which
//! path, and what the policy said, so they are this user's alone: a file Vigil creates is
//! mode 0600 from its first byte (never briefly world-readable), a directory it creates
//! for one is 0700, and an existing file that others could read is tightened, or refused
//! when that cannot be done. Devices and pipes (`/dev/stdout`, a FIFO to a log shipper)
//! are written as they are.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a log file Vigil creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a directory Vigil creates for a log file.
pub const DIR_MODE: u32 = 0o700;

/// A log file that cannot be used safely, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("creating the directory {dir} for {flag} failed: {source}; create it (mode 700) or pick another path")]
    CreateDir {
        flag: &'static str,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "opening {flag} {path} failed: {source}; check that its directory is writable by this user"
    )]
    Open {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path} belongs to uid {owner}, not to this proxy's uid {uid}; its owner could read every line. Remove it, or pick a path of this user's")]
    ForeignOwner {
        flag: &'static str,
        path: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error("{flag} {path} has mode {mode:o}, readable by other users, and cannot be made 600: {source}. Run `chmod 600 {path}` as its owner")]
    LooseMode {
        flag: &'static str,
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
}

/// Opens `path` for appending, as the file for `flag`, readable by this user only.
pub fn open_private(path: &Path, flag: &'static str) -> Result<File, LogFileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|source| LogFileError::CreateDir {
                    flag,
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| LogFileError::Open {
            flag,
            path: path.to_path_buf(),
            source,
        })?;
    // Checked on the open file, not the path, so nothing can be swapped in between.
    let meta = file.metadata().map_err(|source| LogFileError::Open {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Ok(file);
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(LogFileError::ForeignOwner {
            flag,
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(|source| LogFileError::LooseMode {
                flag,
                path: path.to_path_buf(),
                mode,
                source,
            })?;
        tracing::warn!(
            path = %path.display(),
            was = %format!("{mode:o}"),
            "{flag} was readable by other users; it is now mode 600"
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_new_log_is_private_and_so_is_a_directory_made_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/proxy/decisions.log");
        let mut file = open_private(&path, "--decision-log").expect("opens");
        std::io::Write::write_all(&mut file, b"{}\n").expect("writes");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("logs/proxy")), 0o700);
        assert_eq!(mode(&dir.path().join("logs")), 0o700);
    }

    #[test]
    fn an_existing_readable_log_is_tightened_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        std::fs::write(&path, "earlier line\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut file = open_private(&path, "--access-log").expect("opens");
        std::io::Write::write_all(&mut file, b"next line\n").expect("writes");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "earlier line\nnext line\n"
        );
    }

    #[test]
    fn devices_are_written_as_they_are() {
        open_private(Path::new("/dev/null"), "--access-log").expect("opens");
        assert_eq!(mode(Path::new("/dev/null")), 0o666);
    }

    #[test]
    fn an_unusable_path_says_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "").expect("write");
        let err = open_private(&blocker.join("x/decisions.log"), "--decision-log")
            .expect_err("a file is in the way")
            .to_string();
        assert!(
            err.contains("--decision-log") && err.contains("mode 700"),
            "{err}"
        );
    }
}
