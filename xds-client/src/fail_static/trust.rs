//! Whose snapshot is it: a snapshot is served as configuration (Listeners, RBAC, clusters)
//! while no control plane answers, and its checksum is no signature, so a file anyone else
//! could have written is refused. The rules, as `ssh` applies them to its own files: the
//! file is opened without following a symbolic link, must be a regular file owned by this
//! process's effective user and writable by nobody else; its directory must be owned by
//! this user or root and writable by nobody else, unless sticky (as `/tmp`: others cannot
//! replace our file there).

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::path::Path;

use super::file::SnapshotError;

/// Opens `path` for reading without following a symbolic link and without blocking on a
/// FIFO; `Ok(None)` when there is no file.
pub(super) fn open(path: &Path) -> Result<Option<File>, SnapshotError> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK;
        options.custom_flags(i32::try_from(flags.bits()).unwrap_or(0));
    }
    match options.open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // ELOOP: the name is a symbolic link.
        Err(e) if is_symlink_error(&e) => Err(untrusted(path, "it is a symbolic link".into())),
        Err(e) => Err(SnapshotError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

#[cfg(unix)]
fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

#[cfg(not(unix))]
fn is_symlink_error(_: &io::Error) -> bool {
    false
}

/// Checks an open snapshot file (its `fstat`, so what was checked is what is read).
pub(super) fn check_file(path: &Path, meta: &Metadata) -> Result<(), SnapshotError> {
    if !meta.is_file() {
        return Err(SnapshotError::Io {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    owned_and_private(path, meta, false)
}

/// Checks the snapshot directory, before a read or a write.
pub(super) fn check_dir(dir: &Path) -> Result<(), SnapshotError> {
    let meta = std::fs::metadata(dir).map_err(|e| SnapshotError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    owned_and_private(dir, &meta, true)
}

#[cfg(unix)]
fn owned_and_private(path: &Path, meta: &Metadata, dir: bool) -> Result<(), SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    if owner != me && !(dir && owner == 0) {
        let reason = format!("it is owned by uid {owner}, not by this process's uid {me}");
        return Err(untrusted(path, reason));
    }
    let mode = meta.mode();
    let sticky = dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        let reason = format!("its mode {:o} lets others write it", mode & 0o7777);
        return Err(untrusted(path, reason));
    }
    Ok(())
}

#[cfg(not(unix))]
fn owned_and_private(_: &Path, _: &Metadata, _: bool) -> Result<(), SnapshotError> {
    Ok(())
}

fn untrusted(path: &Path, reason: String) -> SnapshotError {
    SnapshotError::Untrusted {
        path: path.to_owned(),
        reason,
    }
}
