//! ringdb: an embedded LSM-tree storage engine for async Rust services on Linux.
//!
//! The whole I/O path runs on io_uring with O_DIRECT (see [`io`] and `docs/io.md`).
//! Writes go to a write-ahead log and a memtable; full memtables are flushed
//! to level-0 tables recorded in a MANIFEST; reads check memtables, then
//! tables. Compaction follows the design in `ARCHITECTURE.md`.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod batch;
mod coding;
mod compaction;
mod db;
mod error;
#[doc(hidden)]
pub mod internals;
pub mod io;
mod iter;
mod key;
mod memtable;
mod reclaim;
mod sst;
#[cfg(test)]
mod test_support;
mod version;
mod wal;

pub use batch::{MAX_BATCH_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES, WriteBatch};
pub use compaction::CompactionOptions;
pub use db::{CompactionStats, Db, Durability, FlushStats, LevelStats, Options, Snapshot, Stats, WriteOptions};
pub use error::{Error, IoOp, Result};
pub use sst::cache::BlockCacheStats;
pub use wal::RecoveryMode;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
