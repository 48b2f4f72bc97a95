//! ringdb: an embedded LSM-tree storage engine for async Rust services on Linux.
//!
//! The whole I/O path runs on io_uring with O_DIRECT (see [`io`] and `docs/io.md`).
//! This release contains the I/O layer; the write path, tables and compaction
//! follow the design in `ARCHITECTURE.md`.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod batch;
mod coding;
mod db;
mod error;
pub mod io;
// Not used by a `Db` yet: remove the allows once the write and read paths use them.
#[allow(dead_code)]
mod key;
#[allow(dead_code)]
mod memtable;
#[allow(dead_code)]
mod sst;
#[allow(dead_code)]
mod wal;

pub use batch::{MAX_BATCH_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES, WriteBatch};
pub use db::{Db, Durability, Options, Snapshot, WriteOptions};
pub use error::{Error, IoOp, Result};
pub use wal::RecoveryMode;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
