//! An exclusive advisory lock on a database directory (`LOCK` file, `flock`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{Error, IoOp, Result};

/// Holds `flock(LOCK_EX)` on a lock file until dropped (the kernel releases it
/// when the descriptor closes, also when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock without waiting; a lock held by another process (or
    /// another open handle in this one) is [`Error::Locked`].
    pub fn acquire(path: impl AsRef<Path>) -> Result<DirLock> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| Error::Io { op: IoOp::Open, path: path.clone(), offset: None, source })?;
        // SAFETY: flock takes no pointers; the descriptor is open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked(path));
            }
            return Err(Error::Io { op: IoOp::Open, path, offset: None, source });
        }
        Ok(DirLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path().join("LOCK")).unwrap();
        let err = DirLock::acquire(dir.path().join("LOCK")).unwrap_err();
        assert!(matches!(&err, Error::Locked(p) if p.ends_with("LOCK")), "{err}");
        drop(first);
        DirLock::acquire(dir.path().join("LOCK")).unwrap();
    }
}
