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

/// Why a snapshot file or directory is not used: the caller turns it into its
/// `SnapshotError` (`Io` or `Untrusted`).
#[derive(Debug)]
pub(super) enum Refused {
    /// Opening or inspecting it failed.
    Io(io::Error),
    /// Someone else could have written it.
    Untrusted(String),
}

/// Opens `path` for reading without following a symbolic link and without blocking on a
/// FIFO; `Ok(None)` when there is no file.
pub(super) fn open(path: &Path) -> Result<Option<File>, Refused> {
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
        Err(e) if is_symlink_error(&e) => Err(Refused::Untrusted("it is a symbolic link".into())),
        Err(e) => Err(Refused::Io(e)),
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
pub(super) fn check_file(meta: &Metadata) -> Result<(), Refused> {
    if !meta.is_file() {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(Refused::Io(e));
    }
    owned_and_private(meta, false)
}

/// Checks the snapshot directory, before a read or a write.
pub(super) fn check_dir(dir: &Path) -> Result<(), Refused> {
    let meta = std::fs::metadata(dir).map_err(Refused::Io)?;
    owned_and_private(&meta, true)
}

#[cfg(unix)]
fn owned_and_private(meta: &Metadata, dir: bool) -> Result<(), Refused> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    if owner != me && !(dir && owner == 0) {
        let reason = format!("it is owned by uid {owner}, not by this process's uid {me}");
        return Err(Refused::Untrusted(reason));
    }
    let mode = meta.mode();
    let sticky = dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        let reason = format!("its mode {:o} lets others write it", mode & 0o7777);
        return Err(Refused::Untrusted(reason));
    }
    Ok(())
}

#[cfg(not(unix))]
fn owned_and_private(_: &Metadata, _: bool) -> Result<(), Refused> {
    Ok(())
}
