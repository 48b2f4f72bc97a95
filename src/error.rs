//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;

/// The operation that failed, carried by [`Error::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOp {
    /// Setting up the I/O backend (io_uring instance or worker threads).
    Setup,
    /// Opening or creating a file.
    Open,
    /// Reading file data.
    Read,
    /// Writing file data.
    Write,
    /// `fdatasync` of a file (or `fsync` of a directory).
    Sync,
    /// Preallocating file space (`fallocate`).
    Allocate,
    /// Changing a file's length (`ftruncate`).
    SetLen,
    /// Reading file metadata (`statx`).
    Stat,
    /// Renaming a file.
    Rename,
    /// Removing a file.
    Remove,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            IoOp::Setup => "setup",
            IoOp::Open => "open",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Sync => "sync",
            IoOp::Allocate => "allocate",
            IoOp::SetLen => "set_len",
            IoOp::Stat => "stat",
            IoOp::Rename => "rename",
            IoOp::Remove => "remove",
        };
        f.write_str(name)
    }
}

/// Everything that can go wrong in ringdb.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error, with the operation, file and offset it happened at.
    #[error("{op} failed on {} at offset {}: {source}", path.display(), OffsetDisplay(*offset))]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file (or directory) it was done to.
        path: PathBuf,
        /// The byte offset in the file, where the operation has one.
        offset: Option<u64>,
        /// The error the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// Data read from disk is not what was written: bad checksum, short file, garbage length.
    #[error("corruption in {} at offset {offset}: {reason}", file.display())]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Where in the file the damage was found.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The caller passed something outside the documented limits.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A write to the log or its fdatasync, a flush, a compaction or an
    /// engine thread failed earlier (the message says which), so the database
    /// refuses further writes; reads keep working. Reopen the database to
    /// recover from the log and the MANIFEST. (Retrying a failed fsync is not
    /// safe: the kernel may have dropped the dirty data and report the next
    /// fsync as a success.)
    #[error("poisoned by an earlier failure ({0}); reopen the database")]
    Poisoned(String),
    /// The database directory is open elsewhere (another process, or another
    /// `Db` in this one); its `LOCK` file is held.
    #[error("{} is locked: the database is open in another process or handle", .0.display())]
    Locked(PathBuf),
    /// The database or I/O driver has been shut down.
    #[error("closed")]
    Closed,
}

impl Error {
    /// The OS error number behind an [`Error::Io`], if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

struct OffsetDisplay(Option<u64>);

impl fmt::Display for OffsetDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, "{offset}"),
            None => f.write_str("-"),
        }
    }
}

/// `Result` with ringdb's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
