//! The operations the backends execute, and what they hand back.
//!
//! An [`Op`] owns everything the kernel touches while it runs: the file (an
//! `Arc`, so the descriptor stays open even if the `DirectFile` is dropped)
//! and the buffer. Whoever holds the `Op` holds the buffer; the backends keep
//! it until the operation is complete and only then give it back through a
//! [`Completion`]. That is the whole buffer-ownership story: a dropped future
//! merely drops the receiving end of the completion channel.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::permits::Permit;
use futures_channel::oneshot;

use super::buf::AlignedBuf;

/// An open file as the backends see it.
#[derive(Debug)]
pub(crate) struct FileHandle {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    /// Opened with O_DIRECT: every request must be aligned to `align`.
    pub(crate) direct: bool,
    pub(crate) align: usize,
}

/// What to do.
pub(crate) enum OpKind {
    /// Read `len` bytes at `offset` into `buf[start..start + len]`.
    Read { buf: AlignedBuf, start: usize, len: usize, offset: u64 },
    /// Write `buf[start..start + len]` at `offset`; with `sync_after`, follow it
    /// with a linked fdatasync that runs only if the write completed in full.
    Write { buf: AlignedBuf, start: usize, len: usize, offset: u64, sync_after: bool },
    /// fdatasync (`data_only`) or fsync.
    Sync { data_only: bool },
    /// fallocate(mode 0): reserve `len` bytes at `offset`.
    Allocate { offset: u64, len: u64 },
}

/// One request for a backend.
pub(crate) struct Op {
    pub(crate) file: std::sync::Arc<FileHandle>,
    pub(crate) kind: OpKind,
}

/// Transfers of at least this many bytes are bulk: they take a millisecond or
/// so on the device, so nobody gains from the ring thread polling for them.
/// The flush's staging writes and compaction's read-ahead are 1 MiB. Smaller
/// sequential transfers keep the poll, which catches some of their
/// completions: with the line at 256 KiB, 256 KiB reads at QD4 used a third
/// less CPU but read a little slower (`docs/io.md`).
pub(crate) const BULK_TRANSFER_BYTES: usize = 512 * 1024;

impl Op {
    /// A read or plain write of at least [`BULK_TRANSFER_BYTES`]: flush and
    /// compaction traffic. Small reads (gets), syncs and a write linked to a
    /// sync (the WAL) are not: someone waits on each of them.
    pub(crate) fn is_bulk(&self) -> bool {
        match self.kind {
            OpKind::Read { len, .. } | OpKind::Write { len, sync_after: false, .. } => len >= BULK_TRANSFER_BYTES,
            OpKind::Write { sync_after: true, .. } | OpKind::Sync { .. } | OpKind::Allocate { .. } => false,
        }
    }

    /// A read that is not bulk: a get's block, a scan's first blocks (before
    /// its 1 MiB read-ahead takes over). The ring thread hands each such read
    /// to the kernel in an `io_uring_enter` of its own. The kernel plugs the
    /// requests of one enter and dispatches them when the last is built, and
    /// reads like these, scattered over the disk, gain nothing from the plug
    /// (no merging) while the first of a batch of 8 waits for the other 7.
    /// Writes keep batching: sequential writes do merge.
    pub(crate) fn dispatches_alone(&self) -> bool {
        matches!(self.kind, OpKind::Read { .. }) && !self.is_bulk()
    }

    /// Asserts the O_DIRECT rules right before a request reaches the kernel.
    /// `DirectFile` validates user input first, so a failure here is our bug.
    /// The range check holds for every file, since the kernel is given a raw pointer.
    pub(crate) fn assert_aligned(&mut self) {
        let align = self.file.align;
        let (buf, start, len, offset) = match &mut self.kind {
            OpKind::Read { buf, start, len, offset } | OpKind::Write { buf, start, len, offset, .. } => {
                (buf, *start, *len, *offset)
            }
            OpKind::Sync { .. } | OpKind::Allocate { .. } => return,
        };
        assert!(
            start.checked_add(len).is_some_and(|end| end <= buf.capacity()),
            "request [{start}, +{len}) outside its {}-byte buffer",
            buf.capacity()
        );
        if !self.file.direct {
            return;
        }
        let addr = buf.as_mut_ptr() as usize + start;
        assert!(
            addr.is_multiple_of(align) && len.is_multiple_of(align) && offset.is_multiple_of(align as u64),
            "unaligned O_DIRECT request on {}: addr {addr:#x} len {len} offset {offset} align {align}",
            self.file.path.display()
        );
    }

    /// Turns the finished op into its completion, giving the buffer back.
    pub(crate) fn complete(self, result: io::Result<usize>, sync_result: Option<io::Result<()>>) -> Completion {
        let buf = match self.kind {
            OpKind::Read { buf, .. } | OpKind::Write { buf, .. } => Some(buf),
            OpKind::Sync { .. } | OpKind::Allocate { .. } => None,
        };
        Completion { result, sync_result, buf }
    }
}

/// The outcome of an [`Op`].
pub(crate) struct Completion {
    /// Bytes transferred (reads, writes) or 0.
    pub(crate) result: io::Result<usize>,
    /// For a write with `sync_after`: the fdatasync's outcome (`ECANCELED` when
    /// the write fell short and the sync did not run).
    pub(crate) sync_result: Option<io::Result<()>>,
    /// The buffer, returned to the caller.
    pub(crate) buf: Option<AlignedBuf>,
}

/// An op on its way to a backend, with the way back and its in-flight slot.
pub(crate) struct Submission {
    pub(crate) op: Op,
    pub(crate) done: oneshot::Sender<Completion>,
    /// Held until the op completes: bounds the ops in flight.
    pub(crate) permit: Permit,
}

impl Submission {
    /// Delivers the completion. If the caller's future was dropped, the send
    /// fails and the completion (with its buffer) is dropped here, after the
    /// kernel is done with it. The permit is released just before the send.
    pub(crate) fn finish(self, result: io::Result<usize>, sync_result: Option<io::Result<()>>, stats: &IoStatsInner) {
        let Submission { op, done, permit } = self;
        // Counted first, so a caller that sees its result also sees the count.
        stats.ops_completed.fetch_add(1, Ordering::Relaxed);
        let completion = op.complete(result, sync_result);
        // The slot is free before the caller hears back: a caller that then
        // submits again never waits for its own finished op's slot.
        drop(permit);
        let _ = done.send(completion);
    }
}

/// Counters shared by the handle and the backend.
#[derive(Debug, Default)]
pub(crate) struct IoStatsInner {
    pub(crate) ops_submitted: AtomicU64,
    pub(crate) ops_completed: AtomicU64,
    pub(crate) kernel_enters: AtomicU64,
    pub(crate) submitting_enters: AtomicU64,
    pub(crate) sqes_submitted: AtomicU64,
    pub(crate) reactor_ops: AtomicU64,
    pub(crate) poll_windows: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn op(kind: OpKind) -> Op {
        let file = tempfile::tempfile().unwrap();
        Op { file: Arc::new(FileHandle { file, path: "f".into(), direct: false, align: 512 }), kind }
    }

    #[test]
    fn only_large_reads_and_plain_writes_are_bulk() {
        let read = |len| op(OpKind::Read { buf: AlignedBuf::new(len, 512), start: 0, len, offset: 0 });
        let write = |len, sync_after| {
            op(OpKind::Write { buf: AlignedBuf::new(len, 512), start: 0, len, offset: 0, sync_after })
        };
        assert!(!read(4096).is_bulk(), "a get's read");
        assert!(!read(BULK_TRANSFER_BYTES - 512).is_bulk());
        assert!(read(BULK_TRANSFER_BYTES).is_bulk(), "compaction read-ahead");
        assert!(write(1 << 20, false).is_bulk(), "a flush's staging write");
        assert!(!write(256 * 1024, false).is_bulk(), "256 KiB transfers keep the poll");
        assert!(!write(1 << 20, true).is_bulk(), "a write someone waits to be synced");
        assert!(!op(OpKind::Sync { data_only: true }).is_bulk());
        assert!(!op(OpKind::Allocate { offset: 0, len: 1 << 30 }).is_bulk());
    }

    #[test]
    fn only_reads_below_bulk_size_dispatch_alone() {
        let read = |len| op(OpKind::Read { buf: AlignedBuf::new(len, 512), start: 0, len, offset: 0 });
        assert!(read(4096).dispatches_alone(), "a get's block");
        assert!(read(BULK_TRANSFER_BYTES - 512).dispatches_alone());
        assert!(!read(BULK_TRANSFER_BYTES).dispatches_alone(), "compaction read-ahead batches");
        let write = |sync_after| {
            op(OpKind::Write { buf: AlignedBuf::new(4096, 512), start: 0, len: 4096, offset: 0, sync_after })
        };
        assert!(!write(false).dispatches_alone(), "writes batch: sequential ones merge");
        assert!(!write(true).dispatches_alone());
        assert!(!op(OpKind::Sync { data_only: true }).dispatches_alone());
    }
}
