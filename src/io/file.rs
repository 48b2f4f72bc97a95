//! Files opened with O_DIRECT, read and written through the [`Io`] backend.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::buf::round_up;
use super::op::{Completion, FileHandle, Op, OpKind};
use super::{AlignedBuf, FaultAction, Io, parent_dir};
use crate::{Error, IoOp, Result};

static DIRECT_FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// The scalar part of an op; with a buffer it becomes an [`OpKind`]. Kept
/// separately so an op can be resubmitted after the buffer came back.
#[derive(Debug, Clone, Copy)]
enum Req {
    Read { start: usize, len: usize, offset: u64 },
    Write { start: usize, len: usize, offset: u64, sync_after: bool },
    Sync,
    Allocate { offset: u64, len: u64 },
}

impl Req {
    fn op(self) -> IoOp {
        match self {
            Req::Read { .. } => IoOp::Read,
            Req::Write { .. } => IoOp::Write,
            Req::Sync => IoOp::Sync,
            Req::Allocate { .. } => IoOp::Allocate,
        }
    }

    fn into_kind(self, buf: Option<AlignedBuf>) -> OpKind {
        match (self, buf) {
            (Req::Read { start, len, offset }, Some(buf)) => OpKind::Read { buf, start, len, offset },
            (Req::Write { start, len, offset, sync_after }, Some(buf)) => {
                OpKind::Write { buf, start, len, offset, sync_after }
            }
            (Req::Sync, None) => OpKind::Sync { data_only: true },
            (Req::Allocate { offset, len }, None) => OpKind::Allocate { offset, len },
            (req, buf) => unreachable!("{req:?} with buffer: {}", buf.is_some()),
        }
    }

    /// Shortens a read or write to `len_bytes`; true if it got shorter.
    fn shorten(&mut self, len_bytes: usize) -> bool {
        match self {
            Req::Read { len, .. } | Req::Write { len, .. } if *len > len_bytes => {
                *len = len_bytes;
                true
            }
            _ => false,
        }
    }

    /// The transfer length of a read or write.
    fn len(&self) -> Option<usize> {
        match self {
            Req::Read { len, .. } | Req::Write { len, .. } => Some(*len),
            Req::Sync | Req::Allocate { .. } => None,
        }
    }
}

/// A file opened with O_DIRECT (or, where the filesystem refuses it, buffered
/// with the same alignment rules), whose data moves only through [`Io`].
///
/// Every read and write takes an [`AlignedBuf`] by value and gives it back
/// when done, so the backend owns it while the kernel may touch it. Offsets and
/// lengths must be multiples of [`alignment`](Self::alignment); anything else
/// is an [`Error::InvalidArgument`].
pub struct DirectFile {
    io: Io,
    path: PathBuf,
    writable: bool,
    align: usize,
    handle: RwLock<Arc<FileHandle>>,
    /// Set after the first successful data transfer: EINVAL after that is a bug, not a filesystem without O_DIRECT.
    transferred: AtomicBool,
}

impl DirectFile {
    /// Creates (or truncates) a file for reading and writing, then fsyncs its directory.
    pub async fn create(io: &Io, path: impl AsRef<Path>) -> Result<DirectFile> {
        let path = path.as_ref();
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(true);
        let file = DirectFile::open_with(io, path, &options, true)?;
        io.sync_dir(parent_dir(path)).await?;
        Ok(file)
    }

    /// Opens an existing file for reading and writing.
    pub async fn open(io: &Io, path: impl AsRef<Path>) -> Result<DirectFile> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        DirectFile::open_with(io, path.as_ref(), &options, true)
    }

    /// Opens an existing file for reading only.
    pub async fn open_read_only(io: &Io, path: impl AsRef<Path>) -> Result<DirectFile> {
        let mut options = OpenOptions::new();
        options.read(true);
        DirectFile::open_with(io, path.as_ref(), &options, false)
    }

    fn open_with(io: &Io, path: &Path, options: &OpenOptions, writable: bool) -> Result<DirectFile> {
        let open_error = |source| Error::Io { op: IoOp::Open, path: path.to_path_buf(), offset: None, source };
        let injected = io.faults().and_then(|f| f.check(IoOp::Open, path));
        let direct = match injected {
            Some(FaultAction::Error(errno)) => Err(io::Error::from_raw_os_error(errno)),
            _ => options.clone().custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(path),
        };
        let (file, is_direct) = match direct {
            Ok(file) => (file, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                warn_direct_refused(path, "open");
                (options.clone().custom_flags(libc::O_CLOEXEC).open(path).map_err(open_error)?, false)
            }
            Err(e) => return Err(open_error(e)),
        };
        let (align, _source) = super::discover_alignment(file.as_fd());
        let handle = FileHandle { file, path: path.to_path_buf(), direct: is_direct, align };
        Ok(DirectFile {
            io: io.clone(),
            path: path.to_path_buf(),
            writable,
            align,
            handle: RwLock::new(Arc::new(handle)),
            transferred: AtomicBool::new(false),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The alignment, in bytes, that buffer addresses, lengths and offsets must have.
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// Whether the file is really opened with O_DIRECT (false after a fallback).
    pub fn is_direct(&self) -> bool {
        self.handle().direct
    }

    /// The backend this file's I/O goes through.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// A new zeroed buffer of at least `capacity_bytes`, aligned for this file.
    ///
    /// # Panics
    /// As [`AlignedBuf::new`], if the rounded capacity exceeds `isize::MAX` bytes.
    pub fn alloc_buf(&self, capacity_bytes: usize) -> AlignedBuf {
        AlignedBuf::new(round_up(capacity_bytes.max(1), self.align), self.align)
    }

    /// A buffer of at least `capacity_bytes`, aligned for this file, with
    /// unspecified (initialised) contents and `len` 0: a recycled one from the
    /// backend's pool when it fits a [`LARGE_BUF_BYTES`](super::LARGE_BUF_BYTES)
    /// buffer, else a new one.
    ///
    /// For the large, short-lived buffers of sequential I/O. Fresh memory is
    /// expensive here: in a VM every first touch of a (transparent huge) page
    /// is a fault and a 2 MiB clear, and a new 1 MiB buffer per read-ahead
    /// chunk made page clearing 40% of a compaction thread's time.
    pub(crate) fn pooled_buf(&self, capacity_bytes: usize) -> AlignedBuf {
        let pool = self.io.large_bufs();
        if capacity_bytes <= pool.buf_capacity_bytes() && self.align <= pool.alignment() {
            pool.get()
        } else {
            self.alloc_buf(capacity_bytes)
        }
    }

    /// Renames the file to `to` (a direct call, like `Io::rename`), so that
    /// later errors, and a reopen should the filesystem refuse O_DIRECT at
    /// the first transfer, use the new name. The directory's fsync is the
    /// caller's (`Io::sync_dir`): a flush overlaps it with writing the table.
    pub(crate) fn rename_to(&mut self, to: &Path) -> Result<()> {
        std::fs::rename(&self.path, to).map_err(|source| self.error(IoOp::Rename, None, source))?;
        self.path = to.to_path_buf();
        // The handle's name too (it appears in assertion messages), unless an
        // op still holds the handle.
        let handle = self.handle.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = Arc::get_mut(handle) {
            handle.path = to.to_path_buf();
        }
        Ok(())
    }

    fn handle(&self) -> Arc<FileHandle> {
        Arc::clone(&self.handle.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn error(&self, op: IoOp, offset: Option<u64>, source: io::Error) -> Error {
        Error::Io { op, path: self.path.clone(), offset, source }
    }

    fn check(&self, buf: &AlignedBuf, offset: u64, len: usize, what: &str) -> Result<()> {
        let align = self.align;
        if buf.alignment() < align
            || !offset.is_multiple_of(align as u64)
            || !len.is_multiple_of(align)
            || len > buf.capacity()
        {
            return Err(Error::InvalidArgument(format!(
                "{what} on {}: offset {offset} and length {len} must be multiples of {align}, the buffer \
                 (alignment {}, capacity {}) aligned to it and large enough",
                self.path.display(),
                buf.alignment(),
                buf.capacity()
            )));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` into `buf`, continuing short reads, and returns
    /// the buffer with `len()` set to the bytes read (less than `len` only at end of file).
    pub async fn read_at(&self, buf: AlignedBuf, offset: u64, len: usize) -> Result<AlignedBuf> {
        self.check(&buf, offset, len, "read")?;
        let mut buf = buf;
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let req = Req::Read { start: done, len: len - done, offset: at };
            let completion = self.run(req, Some(buf)).await;
            buf = completion.buf.ok_or_else(|| self.error(IoOp::Read, Some(at), backend_gone()))?;
            match completion.result {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    if n % self.align != 0 {
                        break; // the file ends inside this block
                    }
                }
                Err(e) => return Err(self.error(IoOp::Read, Some(at), e)),
            }
        }
        buf.set_len(done);
        Ok(buf)
    }

    /// Like [`read_at`](Self::read_at), but a read that ends early is an
    /// [`Error::Io`] with kind `UnexpectedEof`.
    pub async fn read_exact_at(&self, buf: AlignedBuf, offset: u64, len: usize) -> Result<AlignedBuf> {
        let buf = self.read_at(buf, offset, len).await?;
        if buf.len() < len {
            let source = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("wanted {len} bytes, the file holds {} from this offset", buf.len()),
            );
            return Err(self.error(IoOp::Read, Some(offset), source));
        }
        Ok(buf)
    }

    /// Writes `buf[..buf.len()]` at `offset`, continuing short writes, and returns the buffer.
    pub async fn write_at(&self, buf: AlignedBuf, offset: u64) -> Result<AlignedBuf> {
        self.write(buf, offset, false).await
    }

    /// Writes `buf[..buf.len()]` at `offset` and fdatasyncs the file, as one
    /// submission (the sync is linked to the write and runs only if it completed).
    pub async fn write_at_and_sync(&self, buf: AlignedBuf, offset: u64) -> Result<AlignedBuf> {
        self.write(buf, offset, true).await
    }

    async fn write(&self, buf: AlignedBuf, offset: u64, sync_after: bool) -> Result<AlignedBuf> {
        let len = buf.len();
        self.check(&buf, offset, len, "write")?;
        if !self.writable {
            return Err(Error::InvalidArgument(format!("{} was opened read-only", self.path.display())));
        }
        let mut buf = buf;
        let mut done = 0;
        loop {
            let at = offset + done as u64;
            let req = Req::Write { start: done, len: len - done, offset: at, sync_after };
            let completion = self.run(req, Some(buf)).await;
            buf = completion.buf.ok_or_else(|| self.error(IoOp::Write, Some(at), backend_gone()))?;
            match completion.result {
                Ok(0) if len > done => {
                    return Err(self.error(IoOp::Write, Some(at), io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => done += n,
                Err(e) => return Err(self.error(IoOp::Write, Some(at), e)),
            }
            if done < len && done % self.align != 0 {
                let source = io::Error::other(format!("short write of {done} bytes is not aligned to {}", self.align));
                return Err(self.error(IoOp::Write, Some(offset), source));
            }
            if done < len {
                continue; // the linked sync was cancelled with the short write; it rides on the rest
            }
            match completion.sync_result {
                Some(Err(e)) => return Err(self.error(IoOp::Sync, None, e)),
                Some(Ok(())) | None => return Ok(buf),
            }
        }
    }

    /// fdatasync: makes the file's data (and the metadata needed to read it) durable.
    pub async fn sync_data(&self) -> Result<()> {
        let completion = self.run(Req::Sync, None).await;
        completion.result.map(|_| ()).map_err(|e| self.error(IoOp::Sync, None, e))
    }

    /// Reserves `len` bytes at `offset` (fallocate mode 0), so later writes there
    /// need no block allocation and the file size covers them.
    pub async fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        let completion = self.run(Req::Allocate { offset, len }, None).await;
        completion.result.map(|_| ()).map_err(|e| self.error(IoOp::Allocate, Some(offset), e))
    }

    /// Sets the file's length (ftruncate): how a file written in padded aligned
    /// blocks gets its exact length back. A metadata call, made directly.
    pub async fn set_len(&self, len: u64) -> Result<()> {
        self.handle().file.set_len(len).map_err(|e| self.error(IoOp::SetLen, Some(len), e))
    }

    /// The file's current length in bytes.
    pub fn len(&self) -> Result<u64> {
        self.handle().file.metadata().map(|m| m.len()).map_err(|e| self.error(IoOp::Stat, None, e))
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Submits one request, handling a filesystem that refuses O_DIRECT at the
    /// first transfer by reopening the file buffered and retrying once.
    async fn run(&self, req: Req, buf: Option<AlignedBuf>) -> Completion {
        let used = self.handle();
        let completion = self.attempt(Arc::clone(&used), req, buf).await;
        let einval = matches!(&completion.result, Err(e) if e.raw_os_error() == Some(libc::EINVAL));
        let is_transfer = matches!(req, Req::Read { .. } | Req::Write { .. });
        // Another op may have met the refusal first and reopened the file
        // (and a transfer may have succeeded since): this op's EINVAL from
        // the direct handle is the same refusal, not an error of its own.
        let reopened = !Arc::ptr_eq(&used, &self.handle());
        if !(einval && used.direct && is_transfer && (reopened || !self.transferred.load(Ordering::Relaxed))) {
            if is_transfer && completion.result.is_ok() {
                self.transferred.store(true, Ordering::Relaxed);
            }
            return completion;
        }
        // The request was aligned (checked, then asserted), so EINVAL on the first
        // transfer means this filesystem accepts O_DIRECT at open but not at I/O time.
        if !reopened {
            if let Err(e) = self.reopen_buffered() {
                return Completion { result: Err(e), sync_result: None, buf: completion.buf };
            }
            warn_direct_refused(&self.path, "first I/O");
        }
        self.attempt(self.handle(), req, completion.buf).await
    }

    /// Applies injected faults, then submits to the backend. Injected short and
    /// torn writes behave like real ones: a linked fdatasync does not run after
    /// a write that fell short (it reports `ECANCELED`, as an io_uring link does).
    async fn attempt(&self, file: Arc<FileHandle>, req: Req, buf: Option<AlignedBuf>) -> Completion {
        let mut req = req;
        let mut torn = false;
        let mut sync_error = None;
        let linked = matches!(req, Req::Write { sync_after: true, .. });
        let mut cut_link = false;
        if let Some(faults) = self.io.faults() {
            match faults.check(req.op(), &self.path) {
                Some(FaultAction::Error(errno)) => {
                    let canceled = linked.then(|| Err(io::Error::from_raw_os_error(libc::ECANCELED)));
                    return Completion { result: Err(io::Error::from_raw_os_error(errno)), sync_result: canceled, buf };
                }
                Some(FaultAction::ShortTransfer { max_bytes }) => {
                    cut_link = req.shorten((max_bytes / self.align * self.align).max(self.align));
                }
                Some(FaultAction::TornWrite { bytes }) => {
                    req.shorten(bytes / self.align * self.align);
                    torn = true;
                    cut_link = linked;
                }
                Some(FaultAction::DelayMs(ms)) => std::thread::sleep(std::time::Duration::from_millis(ms)),
                None => {}
            }
            if linked
                && !cut_link
                && let Some(FaultAction::Error(errno)) = faults.check(IoOp::Sync, &self.path)
            {
                cut_link = true;
                sync_error = Some(errno);
            }
            if cut_link && let Req::Write { sync_after, .. } = &mut req {
                *sync_after = false;
            }
        }
        let mut completion = self.io.submit(Op { file, kind: req.into_kind(buf) }).await;
        if cut_link {
            let write_ok = !torn && completion.result.as_ref().is_ok_and(|n| Some(*n) == req.len());
            let errno = match sync_error {
                Some(errno) if write_ok => errno,
                _ => libc::ECANCELED,
            };
            completion.sync_result = Some(Err(io::Error::from_raw_os_error(errno)));
        }
        if torn {
            completion.result = Err(io::Error::from_raw_os_error(libc::EIO));
        }
        completion
    }

    fn reopen_buffered(&self) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.read(true).write(self.writable).custom_flags(libc::O_CLOEXEC);
        let file = options.open(&self.path)?;
        let handle = FileHandle { file, path: self.path.clone(), direct: false, align: self.align };
        *self.handle.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(handle);
        Ok(())
    }
}

impl std::fmt::Debug for DirectFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectFile")
            .field("path", &self.path)
            .field("alignment", &self.align)
            .field("direct", &self.is_direct())
            .finish()
    }
}

fn backend_gone() -> io::Error {
    io::Error::other("the I/O backend stopped before completing the operation")
}

fn warn_direct_refused(path: &Path, when: &str) {
    if !DIRECT_FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            path = %path.display(),
            "the filesystem refused O_DIRECT (EINVAL at {when}) for {}: using buffered I/O with the same \
             alignment rules; data now passes through the page cache (extra copies and memory, and \
             'written' no longer bypasses the cache)",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IoOptions, LARGE_BUF_BYTES};
    use super::*;

    #[test]
    fn pooled_buffers_are_recycled_and_oversized_requests_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        futures::executor::block_on(async {
            let io = Io::new(IoOptions::default()).expect("io");
            let file = DirectFile::create(&io, dir.path().join("f")).await.expect("create");
            let pool = io.large_bufs();

            let mut buf = file.pooled_buf(300_000);
            assert!(buf.capacity() >= 300_000 && buf.is_empty());
            let address = buf.as_mut_ptr() as usize;
            buf.extend_from_slice(&[7u8; 4096]);
            let buf = file.write_at(buf, 0).await.expect("write");
            drop(buf);
            assert_eq!(pool.idle_count(), 1, "a finished write's buffer goes back to the pool");

            // The same memory comes back (len 0), and reads into it work.
            let mut again = file.pooled_buf(LARGE_BUF_BYTES);
            assert_eq!((again.as_mut_ptr() as usize, again.len()), (address, 0));
            assert_eq!(pool.idle_count(), 0);
            let read = file.read_exact_at(again, 0, 4096).await.expect("read");
            assert!(read.iter().all(|&b| b == 7));
            // Also through `Bytes`, as read-ahead chunks are held.
            drop(read.into_bytes());
            assert_eq!(pool.idle_count(), 1);

            // Larger than a pooled buffer: a new one, freed rather than pooled.
            let big = file.pooled_buf(LARGE_BUF_BYTES + 1);
            assert!(big.capacity() > LARGE_BUF_BYTES);
            assert_eq!(pool.idle_count(), 1);
            drop(big);
            assert_eq!(pool.idle_count(), 1);
        });
    }

    #[test]
    fn sized_pools_are_shared_by_shape_and_recycle_across_threads() {
        let io = Io::new(IoOptions::default()).expect("io");
        let pool = io.buf_pool(100_000, 4096);
        assert_eq!((pool.buf_capacity_bytes(), pool.alignment()), (100_000usize.next_multiple_of(4096), 4096));
        let mut buf = pool.get();
        let address = buf.as_mut_ptr() as usize;
        // Released on another thread (as the ring thread releases a written buffer).
        std::thread::spawn(move || drop(buf)).join().unwrap();
        // Asked for again, from anywhere: the same pool, and the same memory.
        let again = std::thread::spawn({
            let io = io.clone();
            move || io.buf_pool(100_000, 4096).get().as_mut_ptr() as usize
        })
        .join()
        .unwrap();
        assert_eq!(again, address);
        let other = io.buf_pool(100_000, 8192);
        assert_eq!(other.alignment(), 8192);
        assert_eq!(other.idle_count(), 0, "another shape is another pool");
    }
}
