//! ringdb: an embedded LSM-tree storage engine for async Rust services on Linux.
//!
//! The whole I/O path runs on io_uring with O_DIRECT (see [`io`] and `docs/io.md`).
//! This release contains the I/O layer; the write path, tables and compaction
//! follow the design in `ARCHITECTURE.md`.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod coding;
mod error;
pub mod io;

pub use error::{Error, IoOp, Result};

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
