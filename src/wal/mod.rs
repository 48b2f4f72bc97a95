//! The write-ahead log: format constants, the writer and recovery.
//! The format is specified in `docs/format/wal.md`.

mod format;
mod reader;
mod writer;

pub(crate) use format::RECORD_HEADER_BYTES;
pub use reader::RecoveryMode;
// Used by the Db's write path and recovery (next step of issue 3).
#[allow(unused_imports)]
pub(crate) use reader::{LogContents, parse_log, read_log, read_records};
#[allow(unused_imports)]
pub(crate) use writer::WalWriter;
