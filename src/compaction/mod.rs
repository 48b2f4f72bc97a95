//! Leveled compaction: the picker decides what to merge, the job merges it
//! (reading inputs with read-ahead, writing outputs with the pipelined table
//! writer) and returns the version edit.

pub(crate) mod job;
pub(crate) mod picker;

pub use picker::CompactionOptions;
