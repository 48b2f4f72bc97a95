//! Sorted string tables (`docs/format/sst.md`): the block and filter codecs,
//! the table writer (the pipelined flush), the table reader and the block cache.

pub(crate) mod block;
pub(crate) mod cache;
pub(crate) mod encoder;
pub(crate) mod filter;
pub(crate) mod filter_thread;
pub(crate) mod index;
pub(crate) mod readahead;
pub(crate) mod stream;
pub(crate) mod table;

use std::cell::Cell;
use std::thread::LocalKey;

/// Puts `buf` (cleared) back into a thread's spare slot, keeping whichever of
/// it and the buffer already there is larger. Tables are built on a few engine
/// threads, each reusing its buffers for the next table: fresh memory is slow
/// to touch (see `DirectFile::pooled_buf`).
pub(crate) fn keep_spare<T>(slot: &'static LocalKey<Cell<Vec<T>>>, mut buf: Vec<T>) {
    buf.clear();
    // `try_with`: the thread may be exiting.
    let _ = slot.try_with(|spare| {
        let kept = spare.take();
        spare.set(if kept.capacity() >= buf.capacity() { kept } else { buf });
    });
}
