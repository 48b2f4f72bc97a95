//! The database: open and recovery, the write path, reads and snapshots.

mod log;
mod options;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

pub use options::{Durability, Options, WriteOptions};

use crate::batch::{WriteBatch, decode_batches};
use crate::io::{DirLock, Io};
use crate::key::SeqNo;
use crate::memtable::{Memtable, MemtableValue};
use crate::wal::{RecoveryMode, WalWriter, read_log};
use crate::{Error, IoOp, Result};
use log::{LogShared, LogState, MemtableSlot, Waiter, log_path};

/// An open database. Cheap to clone (`Arc` inside); `Send + Sync`; every method
/// is async and needs no particular executor.
///
/// ```
/// use ringdb::{Db, Options};
/// # futures::executor::block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let db = Db::open(dir.path(), Options::default()).await?;
/// db.put("hello", "world").await?;
/// assert_eq!(db.get("hello").await?.as_deref(), Some(&b"world"[..]));
/// db.delete("hello").await?;
/// assert_eq!(db.get("hello").await?, None);
/// db.close().await?;
/// # Ok::<(), ringdb::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    log: Arc<LogShared>,
    options: Options,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    io: Io,
    _lock: DirLock,
    path: PathBuf,
}

impl Drop for DbInner {
    fn drop(&mut self) {
        // The log thread writes whatever is still buffered, then exits. Waiting
        // for it (one group write at most) keeps the directory locked until no
        // thread of this handle can touch the log any more.
        self.log.lock().closing = true;
        self.log.work.notify_all();
        if let Some(thread) = self.writer_thread.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// A consistent view: reads see exactly the writes acknowledged before
/// [`Db::snapshot`] was called.
#[derive(Clone)]
pub struct Snapshot {
    db: Db,
    seq: SeqNo,
}

impl Snapshot {
    /// The value of `key` as of the snapshot.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.db.get_at(key.as_ref(), self.seq)
    }

    /// The sequence number the snapshot reads at.
    pub fn sequence_number(&self) -> u64 {
        self.seq.0
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("seq", &self.seq.0).finish()
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.inner.path).field("visible_seq", &self.inner.log.visible().0).finish()
    }
}

impl Db {
    /// Opens (creating if allowed and missing) the database in `path`, replaying
    /// its write-ahead logs. A second open of the same directory, from this or
    /// another process, fails with an error saying it is locked.
    pub async fn open(path: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = path.as_ref().to_path_buf();
        if options.write_buffer_size_bytes == 0 || options.max_immutable_memtables == 0 {
            return Err(Error::InvalidArgument(
                "write_buffer_size_bytes and max_immutable_memtables must be positive".into(),
            ));
        }
        if !dir.exists() {
            if !options.create_if_missing {
                return Err(Error::InvalidArgument(format!("{} does not exist", dir.display())));
            }
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                op: IoOp::Open,
                path: dir.clone(),
                offset: None,
                source,
            })?;
        }
        let lock = DirLock::acquire(dir.join("LOCK"))?;
        let io = Io::new(options.io.clone())?;
        // The directory's own entry must be durable before anything in it is.
        io.sync_dir(crate::io::parent_dir(&dir)).await?;
        let recovered = recover(&io, &dir, &options).await?;
        let log_number = recovered.next_file_number;
        let wal =
            WalWriter::create(&io, &log_path(&dir, log_number), log_number, options.wal_preallocate_bytes).await?;
        let mut log_numbers = recovered.log_numbers;
        log_numbers.push(log_number);
        let state = LogState {
            next_seq: recovered.last_seq.next(),
            active: MemtableSlot { memtable: Arc::new(recovered.memtable), log_numbers },
            immutables: Vec::new(),
            pending: Default::default(),
            pending_bytes: 0,
            waiting_writes: 0,
            flush_requests: Vec::new(),
            poisoned: None,
            closing: false,
            next_file_number: log_number + 1,
            spare_payloads: Vec::new(),
            spare_log: None,
        };
        let shared = Arc::new(LogShared {
            state: Mutex::new(state),
            work: Condvar::new(),
            visible_seq: AtomicU64::new(recovered.last_seq.0),
            room: event_listener::Event::new(),
            dir: dir.clone(),
            wal_preallocate_bytes: options.wal_preallocate_bytes,
            wal_flush_interval: Duration::from_millis(options.wal_flush_interval_ms),
            wal_buffer_size_bytes: options.wal_buffer_size_bytes,
            group_commit_wait: Duration::from_micros(options.group_commit_wait_us),
        });
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("ringdb-wal".into())
            .spawn({
                let io = io.clone();
                move || log::writer_thread(thread_shared, io, Some(wal))
            })
            .map_err(|source| Error::Io { op: IoOp::Setup, path: dir.clone(), offset: None, source })?;
        Ok(Db {
            inner: Arc::new(DbInner {
                log: shared,
                options,
                writer_thread: Mutex::new(Some(writer)),
                io,
                _lock: lock,
                path: dir,
            }),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters of the database's I/O backend (operations, io_uring entries).
    pub fn io_stats(&self) -> crate::io::IoStats {
        self.inner.io.stats()
    }

    /// The I/O backend in use.
    pub fn io_backend(&self) -> crate::io::Backend {
        self.inner.io.backend()
    }

    /// Sets `key` to `value` with the default [`WriteOptions`].
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch, WriteOptions::default()).await
    }

    /// Deletes `key` with the default [`WriteOptions`].
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch, WriteOptions::default()).await
    }

    /// Applies a batch atomically: readers see all of it or none of it.
    /// Returns when the batch is as durable as `options.durability` says.
    pub async fn write(&self, batch: WriteBatch, options: WriteOptions) -> Result<()> {
        batch.validate()?;
        if batch.is_empty() {
            return Ok(());
        }
        let log = &self.inner.log;
        let done = loop {
            let listener = {
                let mut state = log.lock();
                if let Some(reason) = &state.poisoned {
                    return Err(Error::Poisoned(reason.clone()));
                }
                if state.closing {
                    return Err(Error::Closed);
                }
                if self.make_room(&mut state) {
                    break self.apply(&mut state, &batch, options.durability);
                }
                log.room.listen()
            };
            // The immutable memtables are at their bound: wait for a flush.
            listener.await;
        };
        match done {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or(Err(Error::Closed)),
        }
    }

    /// Freezes a full active memtable if there is room for another immutable
    /// one; false if writes must wait.
    fn make_room(&self, state: &mut LogState) -> bool {
        if state.active.memtable.approximate_size_bytes() < self.inner.options.write_buffer_size_bytes {
            return true;
        }
        if state.immutables.len() >= self.inner.options.max_immutable_memtables {
            return false;
        }
        // The log writer prepares the next log ahead of time; use its number.
        let log_number = state.spare_log.take().unwrap_or_else(|| {
            state.next_file_number += 1;
            state.next_file_number - 1
        });
        let fresh = MemtableSlot { memtable: Arc::new(Memtable::new()), log_numbers: vec![log_number] };
        let frozen = std::mem::replace(&mut state.active, fresh);
        state.immutables.push(frozen);
        true
    }

    /// Sequence numbers, log bytes and memtable inserts, under the state lock
    /// so that all three follow one order. Returns a receiver if the caller must wait.
    fn apply(
        &self,
        state: &mut LogState,
        batch: &WriteBatch,
        durability: Durability,
    ) -> Option<oneshot::Receiver<Result<()>>> {
        let first_seq = state.next_seq;
        let last_seq = SeqNo(first_seq.0 + batch.len() as u64 - 1);
        assert!(last_seq <= SeqNo::MAX, "sequence numbers exhausted");
        state.next_seq = last_seq.next();
        let log_number = *state.active.log_numbers.last().expect("the active memtable has a log");
        let wait = durability != Durability::Buffered || state.waiting_writes > 0;
        let (waiter, receiver) = if wait {
            let (done, receiver) = oneshot::channel();
            state.waiting_writes += 1;
            (Some(Waiter { done }), Some(receiver))
        } else {
            (None, None)
        };
        let mut encoded_start = 0;
        LogShared::enqueue(state, log_number, last_seq, durability, waiter, |out| {
            encoded_start = out.len();
            batch.encode_to(out, first_seq);
        });
        let segment = state.pending.back().expect("enqueued");
        let memtable = &state.active.memtable;
        decode_batches(&segment.payload[encoded_start..], Some(first_seq), |entry| {
            memtable.insert(entry.key, entry.seq, entry.kind, entry.value);
        })
        .expect("a batch we just encoded decodes");
        if receiver.is_none() {
            self.inner.log.visible_seq.fetch_max(last_seq.0, std::sync::atomic::Ordering::AcqRel);
            let first_pending = state.pending_bytes == batch.encoded_size_bytes();
            // The writer must learn of the first buffered bytes to start the
            // flush-interval clock, and of a full buffer; not of every write.
            if first_pending || state.pending_bytes >= self.inner.log.wal_buffer_size_bytes {
                self.inner.log.work.notify_one();
            }
        } else {
            self.inner.log.work.notify_one();
        }
        receiver
    }

    /// The current value of `key`, or `None` if it was never set or was deleted.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.get_at(key.as_ref(), self.inner.log.visible())
    }

    fn get_at(&self, key: &[u8], seq: SeqNo) -> Result<Option<Bytes>> {
        if key.is_empty() || key.len() > crate::MAX_KEY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "keys must be 1..={} bytes, got {}",
                crate::MAX_KEY_BYTES,
                key.len()
            )));
        }
        let memtables: Vec<Arc<Memtable>> = {
            let state = self.inner.log.lock();
            std::iter::once(&state.active)
                .chain(state.immutables.iter().rev())
                .map(|s| Arc::clone(&s.memtable))
                .collect()
        };
        for memtable in memtables {
            match memtable.get(key, seq) {
                Some(MemtableValue::Put(value)) => return Ok(Some(value)),
                Some(MemtableValue::Deleted) => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// A snapshot of the acknowledged writes.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { db: self.clone(), seq: self.inner.log.visible() }
    }

    /// Writes out everything buffered in the log ([`Durability::Buffered`]
    /// writes) and, with `sync`, fdatasyncs it.
    pub async fn flush_wal(&self, sync: bool) -> Result<()> {
        self.request_flush(sync, false)?.await.unwrap_or(Err(Error::Closed))
    }

    /// Queues a flush request; with `close`, also stops the database in the
    /// same critical section, so the flush covers every write that got in.
    fn request_flush(&self, sync: bool, close: bool) -> Result<oneshot::Receiver<Result<()>>> {
        let receiver = {
            let mut state = self.inner.log.lock();
            if let Some(reason) = &state.poisoned {
                return Err(Error::Poisoned(reason.clone()));
            }
            if state.closing {
                return Err(Error::Closed);
            }
            let (done, receiver) = oneshot::channel();
            state.flush_requests.push((sync, done));
            state.closing |= close;
            receiver
        };
        self.inner.log.work.notify_one();
        Ok(receiver)
    }

    /// Writes out and syncs everything buffered, stops the log writer and
    /// waits for it. Other handles to the database then get [`Error::Closed`]
    /// on writes. A poisoned database reports [`Error::Poisoned`] here.
    pub async fn close(self) -> Result<()> {
        let flushed = match self.request_flush(true, true) {
            Ok(receiver) => receiver.await.unwrap_or(Err(Error::Closed)),
            Err(Error::Closed) => Ok(()),
            Err(other) => {
                self.inner.log.lock().closing = true;
                Err(other)
            }
        };
        self.inner.log.work.notify_all();
        // Writers waiting for room must see `closing`.
        self.inner.log.room.notify(usize::MAX);
        let thread = self.inner.writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // The thread exits right after the flush above; waiting here is brief.
            let (done, joined) = oneshot::channel();
            std::thread::spawn(move || {
                let _ = thread.join();
                let _ = done.send(());
            });
            let _ = joined.await;
        }
        flushed
    }
}

/// Keeps a log that recovery chose not to replay, under a name that is never read again.
async fn set_aside(io: &Io, path: &Path) -> Result<()> {
    let mut dropped = path.as_os_str().to_owned();
    dropped.push(".dropped");
    io.rename(path, PathBuf::from(dropped)).await
}

struct Recovered {
    memtable: Memtable,
    last_seq: SeqNo,
    log_numbers: Vec<u64>,
    next_file_number: u64,
}

/// Replays every WAL file of the directory, oldest first, into one memtable.
async fn recover(io: &Io, dir: &Path, options: &Options) -> Result<Recovered> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io { op: IoOp::Open, path: dir.to_path_buf(), offset: None, source })?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    // A log whose creation was interrupted never held a write.
    for name in names.iter().filter(|name| name.ends_with(".wal.tmp")) {
        io.remove_file(dir.join(name)).await?;
    }
    let mut logs: Vec<u64> = names.iter().filter_map(|name| name.strip_suffix(".wal")?.parse().ok()).collect();
    logs.sort_unstable();
    let memtable = Memtable::new();
    let mut last_seq = SeqNo::ZERO;
    let mut kept = Vec::new();
    // Set once the tolerant mode dropped something: later logs continue after
    // the dropped writes, so replaying them would leave a gap.
    let mut stop_replay = false;
    for &log_number in &logs {
        let path = log_path(dir, log_number);
        if stop_replay {
            set_aside(io, &path).await?;
            continue;
        }
        let contents = read_log(io, &path, log_number, options.recovery_mode).await?;
        if let Some(at) = contents.torn_tail_at {
            tracing::info!(log = %path.display(), offset = at, "dropped the torn tail of a write-ahead log (a group whose write did not complete)");
        }
        if let Some((at, reason)) = &contents.dropped_at {
            tracing::warn!(log = %path.display(), offset = at, %reason, "recovery mode dropped damaged log contents and every later log");
            stop_replay = true;
        }
        let mut expected = last_seq.checked_next();
        for (payload, range) in contents.payloads().zip(&contents.groups) {
            let record_offset = (range.start - crate::wal::RECORD_HEADER_BYTES) as u64;
            let replayed = decode_batches(payload, expected, |entry| {
                memtable.insert(entry.key, entry.seq, entry.kind, entry.value);
            });
            match replayed {
                Ok(last) => {
                    last_seq = last;
                    expected = last.checked_next();
                }
                // A gap between logs: writes are missing in between.
                Err(reason) if options.recovery_mode == RecoveryMode::KeepPrefixDropRest => {
                    tracing::warn!(log = %path.display(), offset = record_offset, %reason, "recovery mode dropped a log that does not continue the previous one, and every later log");
                    stop_replay = true;
                    break;
                }
                Err(reason) => return Err(Error::Corruption { file: path.clone(), offset: record_offset, reason }),
            }
        }
        if contents.groups.is_empty() && contents.dropped_at.is_none() {
            // Nothing acknowledged lives here (at most a torn, unacknowledged group): the log can go.
            io.remove_file(&path).await?;
        } else if stop_replay && contents.groups.is_empty() {
            set_aside(io, &path).await?;
        } else {
            let file = crate::io::DirectFile::open(io, &path).await?;
            if let Some(at) = contents.torn_tail_at {
                // Cut the torn group off for good (this log is never appended to again).
                file.set_len(at).await?;
            }
            if let Some((at, _)) = &contents.dropped_at {
                // Make the drop permanent, or the next open would find the
                // damage again and set aside the logs written after this one.
                file.set_len(*at).await?;
            }
            // Written (not synced) groups of an earlier run may still sit in the
            // device cache: make them durable before new synced writes can
            // depend on them.
            file.sync_data().await?;
            kept.push(log_number);
        }
    }
    io.sync_dir(dir).await?;
    Ok(Recovered { memtable, last_seq, log_numbers: kept, next_file_number: logs.last().map_or(1, |n| n + 1) })
}
