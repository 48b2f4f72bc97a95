//! Sorted string tables (`docs/format/sst.md`): the block and filter codecs,
//! the table writer (the pipelined flush), the table reader and the block cache.

pub(crate) mod block;
pub(crate) mod cache;
pub(crate) mod filter;
pub(crate) mod readahead;
pub(crate) mod table;
