//! Sorted string tables (`docs/format/sst.md`). This first part holds the
//! block and filter codecs; the table writer (pipelined flush) and reader come next.

pub(crate) mod block;
pub(crate) mod filter;
pub(crate) mod table;
