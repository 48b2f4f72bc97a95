//! The database: open and recovery, the write path, reads and snapshots.

mod compact;
mod flush;
mod flush_parts;
mod log;
mod options;
mod recovery;
mod scan;
mod timer;
mod versions;
mod wake_all;

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

pub use compact::CompactionStats;
pub use flush::FlushStats;
pub use options::{Durability, Options, WriteOptions};

use crate::batch::{FrozenBatch, WriteBatch};
use crate::io::{DirLock, Io};
use crate::key::SeqNo;
use crate::memtable::{Memtable, MemtableValue};
use crate::sst::cache::{BlockCache, BlockCacheStats};
use crate::version::{Graveyard, ManifestWriter, NUM_LEVELS, Version};
use crate::wal::WalWriter;
use crate::{Error, IoOp, Result};
use compact::{CompactionCounters, Compactor};
use flush::{FlushCounters, Flusher};
use log::{LogShared, LogState, MemtableSlot, Waiter, log_path};
use versions::VersionSet;

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
    /// The log writer and the flush thread.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Set once a `close()` has joined the engine threads and let go of the
    /// handle it held meanwhile: every `close()` waits for it, whichever
    /// took the threads to join.
    threads_joined: Arc<ThreadsJoined>,
    cache: Option<Arc<BlockCache>>,
    flush_counters: Arc<FlushCounters>,
    compaction_counters: Arc<CompactionCounters>,
    /// Time writes spent waiting for room (a flush or a compaction), in microseconds.
    stall_time_us: AtomicU64,
    /// Time writes were delayed by the level-0 slowdown, in microseconds.
    slowdown_time_us: AtomicU64,
    /// Bytes of batches written by users (keys, values, framing).
    user_bytes_written: AtomicU64,
    io: Io,
    /// Held until the engine threads are done (see `Drop`).
    lock: Option<DirLock>,
    path: PathBuf,
}

impl Drop for DbInner {
    fn drop(&mut self) {
        // The log thread writes whatever is still buffered, then exits; the
        // flush thread finishes the table it is writing. Waiting for them
        // (on this thread: `close` is the way to wait without blocking an
        // executor) keeps the directory locked until no thread of this
        // handle can touch it any more.
        self.log.lock().closing = true;
        self.log.work.notify_all();
        self.log.flush_work.notify_all();
        self.log.compact_work.notify_all();
        let threads: Vec<_> = self.threads.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        if crate::io::on_engine_thread() && !threads.is_empty() {
            // The last handle was dropped on one of the engine's threads, by a
            // completion (of I/O, a write, a flush) that let go of the task
            // owning it (an executor dropped with the task still waiting).
            // Joining here would wait for this thread's own work (the ring
            // thread's I/O) or for this thread itself, so another thread waits,
            // and holds the directory's lock until the engine threads are done.
            let handed_over = Arc::new(Mutex::new(Some((threads, self.lock.take()))));
            let joiner = {
                let handed_over = Arc::clone(&handed_over);
                std::thread::Builder::new().name("ringdb-drop".into()).spawn(move || {
                    let taken = handed_over.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some((threads, lock)) = taken {
                        for thread in threads {
                            let _ = thread.join();
                        }
                        drop(lock);
                    }
                })
            };
            if let Err(e) = joiner {
                // Nobody can wait. The threads finish on their own, and the
                // directory stays locked until the process exits rather than
                // being unlocked while they may still write to it.
                tracing::warn!(error = %e, "ringdb: the database was dropped on an engine thread and no thread could wait for the others; its directory stays locked until the process exits");
                if let Some((_threads, lock)) = handed_over.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    std::mem::forget(lock);
                }
            }
            return;
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// A consistent view: reads see exactly the writes acknowledged before
/// [`Db::snapshot`] was called. While it lives, compaction keeps the versions
/// of keys it can see.
pub struct Snapshot {
    db: Db,
    seq: SeqNo,
}

impl Clone for Snapshot {
    fn clone(&self) -> Snapshot {
        self.db.inner.log.register_snapshot(self.seq);
        Snapshot { db: self.db.clone(), seq: self.seq }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.db.inner.log.release_snapshot(self.seq);
    }
}

impl Snapshot {
    /// The value of `key` as of the snapshot.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.db.get_at(key.as_ref(), Some(self.seq)).await
    }

    /// The entries of `range` as of the snapshot, in key order.
    pub fn scan<K: AsRef<[u8]>>(
        &self,
        range: impl RangeBounds<K>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (start, end) = owned_bounds(&range);
        self.db.scan_at(start, end, Some(self.seq))
    }

    /// The entries of `range` as of the snapshot, in descending key order.
    pub fn scan_rev<K: AsRef<[u8]>>(
        &self,
        range: impl RangeBounds<K>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (start, end) = owned_bounds(&range);
        self.db.scan_rev_at(start, end, Some(self.seq))
    }

    /// The entries whose key starts with `prefix` as of the snapshot, in key order.
    pub fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (start, end) = prefix_bounds(prefix.as_ref());
        self.db.scan_at(start, end, Some(self.seq))
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
        options.validate()?;
        let created = missing_dirs(&dir);
        if !created.is_empty() {
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
        // The directory's own entry must be durable before anything in it is,
        // and so must the entry of every directory this open made above it
        // (ext4 commits them with the first fsync, a filesystem that logs
        // each directory's fsync on its own may not).
        io.sync_dir(crate::io::parent_dir(&dir)).await?;
        for made in created.iter().skip(1) {
            io.sync_dir(crate::io::parent_dir(made)).await?;
        }
        let cache = (options.block_cache_size_bytes > 0)
            .then(|| Arc::new(BlockCache::new(options.block_cache_size_bytes, options.block_size_bytes)));
        let graveyard = Arc::new(Graveyard::default());
        let recovered = recovery::recover(&io, &dir, &options, cache.clone(), &graveyard).await?;
        // Every open starts a new MANIFEST holding the recovered state, and a new log.
        let manifest_number = recovered.next_file_number;
        let log_number = manifest_number + 1;
        let mut manifest_state = recovered.manifest;
        manifest_state.next_file_number = log_number + 1;
        let manifest =
            ManifestWriter::create(&io, &dir, manifest_number, &manifest_state, recovered.manifest_number).await?;
        let wal = open_log(&io, &dir, log_number, recovered.reusable_log, options.wal_preallocate_bytes).await?;
        // Replayed writes go straight to the flush queue, so their logs do not
        // pile up across reopens.
        let mut immutables = Vec::new();
        if !recovered.memtable.is_empty() {
            immutables
                .push(MemtableSlot { memtable: Arc::new(recovered.memtable), log_numbers: recovered.log_numbers });
        }
        let state = LogState {
            next_seq: recovered.last_seq.next(),
            active: MemtableSlot {
                memtable: Arc::new(Memtable::with_sample_interval(options.memtable_sample_bytes())),
                log_numbers: vec![log_number],
            },
            frozen_memtables: immutables.len() as u64,
            flushed_memtables: 0,
            immutables,
            pending: Default::default(),
            pending_bytes: 0,
            waiting_writes: 0,
            flush_requests: Vec::new(),
            poisoned: None,
            log_failed: None,
            closing: false,
            next_file_number: log_number + 1,
            spare_payloads: Vec::new(),
            spare_log: None,
            recyclable_logs: Vec::new(),
            manual_compactions: Default::default(),
            version: Arc::new(Version::new(recovered.tables)),
        };
        let shared = Arc::new(LogShared {
            state: Mutex::new(state),
            work: Condvar::new(),
            flush_work: Condvar::new(),
            compact_work: Condvar::new(),
            snapshots: Mutex::new(Default::default()),
            visible_seq: AtomicU64::new(recovered.last_seq.0),
            room: wake_all::WakeAll::default(),
            dir: dir.clone(),
            wal_preallocate_bytes: options.wal_preallocate_bytes,
            wal_flush_interval: Duration::from_millis(options.wal_flush_interval_ms),
            wal_buffer_size_bytes: options.wal_buffer_size_bytes,
            group_commit_wait: Duration::from_micros(options.group_commit_wait_us),
        });
        let spawn_error = |source| Error::Io { op: IoOp::Setup, path: dir.clone(), offset: None, source };
        // Started before the log writer: failing here leaves no thread behind.
        let encoders = match options.flush_threads {
            1 => None,
            threads => Some(flush_parts::EncoderPool::new(threads).map_err(spawn_error)?),
        };
        let writer = std::thread::Builder::new()
            .name("ringdb-wal".into())
            .spawn({
                let (shared, io) = (Arc::clone(&shared), io.clone());
                move || {
                    crate::io::mark_engine_thread();
                    log::writer_thread(shared, io, Some(wal))
                }
            })
            .map_err(spawn_error)?;
        let versions = Arc::new(VersionSet::new(
            manifest,
            manifest_state,
            graveyard,
            io.clone(),
            options.max_manifest_file_size_bytes,
        ));
        let flush_counters = Arc::new(FlushCounters::default());
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            io: io.clone(),
            versions: Arc::clone(&versions),
            table_options: options.table_options(),
            cache: cache.clone(),
            counters: Arc::clone(&flush_counters),
            encoders,
            part_bytes: options.flush_part_bytes(),
            spare: None,
            last_reserve_bytes: 0,
        };
        let compaction_counters = Arc::new(CompactionCounters::default());
        let compactor = Compactor {
            shared: Arc::clone(&shared),
            io: io.clone(),
            versions,
            options: options.compaction.clone(),
            table_options: options.table_options(),
            cache: cache.clone(),
            counters: Arc::clone(&compaction_counters),
        };
        let flush_thread = std::thread::Builder::new().name("ringdb-flush".into()).spawn({
            let shared = Arc::clone(&shared);
            move || {
                crate::io::mark_engine_thread();
                log::run_guarded(&shared, "flush", || flush::flush_thread(flusher))
            }
        });
        let compaction_thread = std::thread::Builder::new().name("ringdb-compact".into()).spawn({
            let shared = Arc::clone(&shared);
            move || {
                crate::io::mark_engine_thread();
                log::run_guarded(&shared, "compaction", || compact::compaction_thread(compactor))
            }
        });
        let db = Db {
            inner: Arc::new(DbInner {
                log: shared,
                options,
                threads: Mutex::new(vec![writer]),
                threads_joined: Arc::new(ThreadsJoined::default()),
                cache,
                flush_counters,
                compaction_counters,
                stall_time_us: AtomicU64::new(0),
                slowdown_time_us: AtomicU64::new(0),
                user_bytes_written: AtomicU64::new(0),
                io,
                lock: Some(lock),
                path: dir.clone(),
            }),
        };
        // Every thread that started is joined by `db`, which drops here on
        // failure (stopping them) before the directory is unlocked.
        let mut failed = None;
        for thread in [flush_thread, compaction_thread] {
            match thread {
                Ok(thread) => db.inner.threads.lock().unwrap_or_else(|e| e.into_inner()).push(thread),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(spawn_error(e)),
            None => Ok(db),
        }
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
        let batch = batch.freeze();
        let log = &self.inner.log;
        let mut stalled_since: Option<std::time::Instant> = None;
        let mut slowed = false;
        let done = loop {
            let listener = {
                let mut state = log.lock_open()?;
                let delay = if slowed { None } else { self.slowdown(&state) };
                match delay {
                    Some(delay) => Err(delay),
                    None if self.make_room(&mut state) => break self.apply(&mut state, &batch, options.durability),
                    None => Ok(log.room.listen()),
                }
            };
            let listener = match listener {
                Ok(listener) => listener,
                Err(delay) => {
                    // Level 0 is past its slowdown trigger: give compaction
                    // time before the stop trigger halts writes outright.
                    slowed = true;
                    let since = std::time::Instant::now();
                    timer::sleep(delay).await;
                    self.inner.slowdown_time_us.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
                    continue;
                }
            };
            // The immutable memtables are at their bound, or level 0 at its
            // stop trigger: wait for a flush or a compaction.
            stalled_since.get_or_insert_with(std::time::Instant::now);
            listener.await;
        };
        if let Some(since) = stalled_since {
            self.inner.stall_time_us.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.inner.user_bytes_written.fetch_add(batch.encoded_size_bytes() as u64, Ordering::Relaxed);
        match done {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or(Err(Error::Closed)),
        }
    }

    /// Freezes a full active memtable if there is room for another immutable
    /// one; false if writes must wait.
    fn make_room(&self, state: &mut LogState) -> bool {
        // Level 0 at its stop trigger: wait until compaction shrinks it.
        let compaction = &self.inner.options.compaction;
        if !compaction.disable_auto_compactions && state.version.levels[0].len() >= compaction.l0_stop_trigger {
            return false;
        }
        let full = state.active.memtable.approximate_size_bytes() >= self.inner.options.write_buffer_size_bytes;
        !full || self.freeze(state)
    }

    /// How long a write waits before it goes in, once level 0 holds
    /// `l0_slowdown_trigger` tables: 1 ms more for each table past it, up to
    /// 20 ms per write (the stop trigger is the hard limit).
    fn slowdown(&self, state: &LogState) -> Option<Duration> {
        let compaction = &self.inner.options.compaction;
        let level0 = state.version.levels[0].len();
        if compaction.disable_auto_compactions || level0 < compaction.l0_slowdown_trigger {
            return None;
        }
        let steps = (level0 - compaction.l0_slowdown_trigger + 1).min(20) as u64;
        Some(Duration::from_millis(steps))
    }

    /// Freezes the active memtable unless the immutable ones are at their
    /// bound (false: the caller must wait for a flush).
    fn freeze(&self, state: &mut LogState) -> bool {
        if state.immutables.len() >= self.inner.options.max_immutable_memtables {
            return false;
        }
        // The log writer prepares the next log ahead of time; use its number.
        let log_number = state.spare_log.take().unwrap_or_else(|| {
            state.next_file_number += 1;
            state.next_file_number - 1
        });
        let fresh = MemtableSlot {
            memtable: Arc::new(Memtable::with_sample_interval(self.inner.options.memtable_sample_bytes())),
            log_numbers: vec![log_number],
        };
        let frozen = std::mem::replace(&mut state.active, fresh);
        state.immutables.push(frozen);
        state.frozen_memtables += 1;
        self.inner.log.flush_work.notify_one();
        true
    }

    /// Sequence numbers, log bytes and memtable inserts, under the state lock
    /// so that all three follow one order. Returns a receiver if the caller must wait.
    fn apply(
        &self,
        state: &mut LogState,
        batch: &FrozenBatch,
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
        LogShared::enqueue(state, log_number, last_seq, durability, waiter, |out| batch.encode_to(out, first_seq));
        let memtable = &state.active.memtable;
        batch.for_each_entry(first_seq, |seq, kind, key, value| memtable.insert(key, seq, kind, value));
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
        self.get_at(key.as_ref(), None).await
    }

    /// Reads `key` at the registered snapshot `seq`, or (`None`) at what is
    /// visible when the memtables and version are taken.
    async fn get_at(&self, key: &[u8], seq: Option<SeqNo>) -> Result<Option<Bytes>> {
        if key.is_empty() || key.len() > crate::MAX_KEY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "keys must be 1..={} bytes, got {}",
                crate::MAX_KEY_BYTES,
                key.len()
            )));
        }
        // Memtables and version are taken together: a flush moves data from one
        // to the other in one step under this lock. The visible sequence is
        // read under it too: a compaction drops versions hidden at the
        // sequence visible when it started, and its result is installed under
        // this lock, so a reader that sees the result reads at a sequence at
        // least that new.
        let (memtables, version, seq): (Vec<Arc<Memtable>>, Arc<Version>, SeqNo) = {
            let state = self.inner.log.lock();
            let memtables = std::iter::once(&state.active)
                .chain(state.immutables.iter().rev())
                .map(|s| Arc::clone(&s.memtable))
                .collect();
            (memtables, Arc::clone(&state.version), seq.unwrap_or_else(|| self.inner.log.visible()))
        };
        for memtable in memtables {
            match memtable.get(key, seq) {
                Some(MemtableValue::Put(value)) => return Ok(Some(value)),
                Some(MemtableValue::Deleted) => return Ok(None),
                None => {}
            }
        }
        for table in version.tables_for_key(key) {
            match table.reader.get(key, seq).await? {
                Some(MemtableValue::Put(value)) => return Ok(Some(value)),
                Some(MemtableValue::Deleted) => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// The entries of `range` in key order, as of the call (a snapshot is
    /// taken for the scan). `db.scan(..)` scans everything, `db.scan("a".."m")`
    /// a range; the stream reads tables block by block as it goes.
    pub fn scan<K: AsRef<[u8]>>(
        &self,
        range: impl RangeBounds<K>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (start, end) = owned_bounds(&range);
        self.scan_at(start, end, None)
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (start, end) = prefix_bounds(prefix.as_ref());
        self.scan_at(start, end, None)
    }

    /// The entries of `range` in descending key order, as of the call.
    pub fn scan_rev<K: AsRef<[u8]>>(
        &self,
        range: impl RangeBounds<K>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (start, end) = owned_bounds(&range);
        self.scan_rev_at(start, end, None)
    }

    fn scan_at(
        &self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        seq: Option<SeqNo>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (sources, visible) = self.scan_sources(false);
        let (merged, seq) = (crate::iter::MergingIter::new(sources), seq.unwrap_or(visible));
        scan::into_stream(scan::AnyScan::Forward(scan::Scan::new(merged, seq, start, end)))
    }

    fn scan_rev_at(
        &self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        seq: Option<SeqNo>,
    ) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        let (sources, visible) = self.scan_sources(true);
        let (merged, seq) = (crate::iter::MergingIter::new_reverse(sources), seq.unwrap_or(visible));
        scan::into_stream(scan::AnyScan::Reverse(scan::RevScan::new(merged, seq, start, end)))
    }

    /// Cursors over the memtables and tables of this moment, forward or
    /// backward, and the sequence visible at this moment (read under the same
    /// lock, for the reason given in `get_at`).
    fn scan_sources(&self, reverse: bool) -> (Vec<crate::iter::Source>, SeqNo) {
        use crate::iter::{
            BlockFetch, LevelCursor, MemtableCursor, RevLevelCursor, RevMemtableCursor, RevTableCursor, Source,
            TableCursor,
        };
        let state = self.inner.log.lock();
        let mut sources: Vec<Source> = std::iter::once(&state.active)
            .chain(&state.immutables)
            .map(|slot| {
                let memtable = Arc::clone(&slot.memtable);
                if reverse {
                    Source::RevMemtable(RevMemtableCursor::new(memtable))
                } else {
                    Source::Memtable(MemtableCursor::new(memtable))
                }
            })
            .collect();
        for table in &state.version.levels[0] {
            let table = Arc::clone(table);
            sources.push(if reverse {
                Source::RevTable(RevTableCursor::new(table))
            } else {
                Source::Table(TableCursor::new(table, BlockFetch::Adaptive))
            });
        }
        for level in state.version.levels[1..].iter().filter(|level| !level.is_empty()) {
            sources.push(if reverse {
                Source::RevLevel(RevLevelCursor::new(level.clone()))
            } else {
                Source::Level(LevelCursor::new(level.clone(), crate::iter::adaptive))
            });
        }
        (sources, self.inner.log.visible())
    }

    /// Flushes every memtable holding data (the active one included) to
    /// tables and waits until they are recorded. Writes go on meanwhile.
    pub async fn flush(&self) -> Result<()> {
        let log = &self.inner.log;
        let target = loop {
            let listener = {
                let mut state = log.lock_open()?;
                if state.active.memtable.is_empty() || self.freeze(&mut state) {
                    break state.frozen_memtables;
                }
                log.room.listen()
            };
            listener.await;
        };
        loop {
            let listener = {
                let state = log.lock();
                if state.flushed_memtables >= target {
                    return Ok(());
                }
                if let Some(reason) = &state.poisoned {
                    return Err(Error::Poisoned(reason.clone()));
                }
                if state.closing {
                    return Err(Error::Closed);
                }
                log.room.listen()
            };
            listener.await;
        }
    }

    /// Flushes the memtables, then compacts every table holding keys of
    /// `range` down into the deepest level with data, dropping the versions
    /// no snapshot needs and the tombstones with nothing left below.
    /// `db.compact_range::<&[u8]>(..)` compacts everything.
    pub async fn compact_range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Result<()> {
        self.flush().await?;
        let (start, end) = owned_bounds(&range);
        let receiver = {
            let mut state = self.inner.log.lock_open()?;
            let (done, receiver) = oneshot::channel();
            state.manual_compactions.push_back(compact::ManualCompaction { start, end, done });
            receiver
        };
        self.inner.log.compact_work.notify_all();
        receiver.await.unwrap_or(Err(Error::Closed))
    }

    /// Counters: flushes, the block cache, the I/O backend, the tables.
    pub fn stats(&self) -> Stats {
        let version = Arc::clone(&self.inner.log.lock().version);
        let flush = self.inner.flush_counters.snapshot();
        let compactions = self.inner.compaction_counters.levels();
        let levels = std::array::from_fn(|level| {
            let into = compactions[level];
            LevelStats {
                tables: version.levels[level].len(),
                bytes: version.level_bytes(level),
                compactions: into.compactions,
                read_upper_bytes: into.read_upper_bytes,
                read_own_bytes: into.read_own_bytes,
                written_bytes: into.written_bytes + if level == 0 { flush.bytes_written } else { 0 },
            }
        });
        Stats {
            flush,
            compaction: self.inner.compaction_counters.snapshot(),
            block_cache: self.inner.cache.as_ref().map(|cache| cache.stats()).unwrap_or_default(),
            io: self.inner.io.stats(),
            levels,
            write_stall_us: self.inner.stall_time_us.load(Ordering::Relaxed),
            write_slowdown_us: self.inner.slowdown_time_us.load(Ordering::Relaxed),
            user_bytes_written: self.inner.user_bytes_written.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of the acknowledged writes.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { db: self.clone(), seq: self.inner.log.take_snapshot() }
    }

    /// Writes out everything buffered in the log ([`Durability::Buffered`]
    /// writes) and, with `sync`, fdatasyncs it.
    pub async fn flush_wal(&self, sync: bool) -> Result<()> {
        self.request_flush(sync, false)?.await.unwrap_or(Err(Error::Closed))
    }

    /// Wakes every engine thread and every writer waiting for room, so that
    /// each sees `closing`: the threads stop, the writers get
    /// [`Error::Closed`].
    fn wake_all_for_close(&self) {
        self.inner.log.work.notify_all();
        self.inner.log.flush_work.notify_all();
        self.inner.log.compact_work.notify_all();
        self.inner.log.room.notify_all();
    }

    /// Queues a flush request; with `close`, also stops the database in the
    /// same critical section, so the flush covers every write that got in.
    fn request_flush(&self, sync: bool, close: bool) -> Result<oneshot::Receiver<Result<()>>> {
        let receiver = {
            let mut state = self.inner.log.lock_open()?;
            let receiver = state.queue_flush(sync);
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
            Ok(receiver) => {
                // Before any await: if this future is dropped there, nobody
                // else would wake writers waiting for room (an engine thread
                // that sees `closing` stops without a word).
                self.wake_all_for_close();
                receiver.await.unwrap_or(Err(Error::Closed))
            }
            // Another handle's close came first: once the threads are joined
            // (below), its final flush has answered, and a failed one has
            // poisoned the database.
            Err(Error::Closed) => Ok(()),
            Err(other) => {
                // Poisoned. If the log itself is healthy (a flush or a
                // compaction failed), what it still holds is written and
                // synced as in any close: buffered writes were acknowledged.
                let receiver = {
                    let mut state = self.inner.log.lock();
                    // Once closing, the log writer may have exited: nobody would answer.
                    let was_closing = std::mem::replace(&mut state.closing, true);
                    (!was_closing && state.log_failed.is_none()).then(|| state.queue_flush(true))
                };
                self.wake_all_for_close();
                if let Some(receiver) = receiver {
                    self.inner.log.work.notify_one();
                    let _ = receiver.await;
                }
                Err(other)
            }
        };
        // Everyone was woken above, or by the close that came first; all
        // of them check `closing` under the lock before they wait again.
        let threads: Vec<_> = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        if !threads.is_empty() {
            // The log writer exits right after the flush above, the flush thread
            // after the table it is writing, if any. Joined off the caller's executor.
            // The joiner holds a handle until they are done: if this future
            // is dropped meanwhile, the directory stays locked (another open
            // must not start while these threads still write to it).
            let keep = self.clone();
            let joined = Arc::clone(&self.inner.threads_joined);
            std::thread::spawn(move || {
                for thread in threads {
                    let _ = thread.join();
                }
                drop(keep);
                joined.done.store(true, Ordering::Release);
                joined.event.notify_all();
            });
        }
        // Every close, also one that found another under way, returns only
        // once the threads are gone and the joiner's handle with them: once
        // the callers' handles are gone too, the directory opens again.
        let joined = &self.inner.threads_joined;
        while !joined.done.load(Ordering::Acquire) {
            let listener = joined.event.listen();
            if joined.done.load(Ordering::Acquire) {
                break;
            }
            listener.await;
        }
        match flushed {
            Ok(()) => match &self.inner.log.lock().poisoned {
                Some(reason) => Err(Error::Poisoned(reason.clone())),
                None => Ok(()),
            },
            failed => failed,
        }
    }
}

/// Whether a `close()` has joined the engine threads (see `DbInner::threads_joined`).
#[derive(Default)]
struct ThreadsJoined {
    done: AtomicBool,
    event: wake_all::WakeAll,
}

/// The open's new log `log_number`: `reusable` (a log recovery found with
/// nothing to replay) renamed and given a new header, else a new file.
async fn open_log(
    io: &Io,
    dir: &Path,
    log_number: u64,
    reusable: Option<PathBuf>,
    preallocate_bytes: u64,
) -> Result<WalWriter> {
    let path = log_path(dir, log_number);
    if let Some(old) = reusable {
        match WalWriter::recycle(io, &old, &path, log_number, preallocate_bytes).await {
            Ok(wal) => return Ok(wal),
            // Not fatal: a new log is as good. What is left of the old one is
            // deleted by the next open (a `.tmp`, or a log with nothing to replay).
            Err(e) => tracing::warn!(error = %e, "could not reuse a write-ahead log at open; creating one"),
        }
    }
    WalWriter::create(io, &path, log_number, preallocate_bytes).await
}

fn owned_bounds<K: AsRef<[u8]>>(range: &impl RangeBounds<K>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let own = |bound: Bound<&K>| match bound {
        Bound::Included(key) => Bound::Included(key.as_ref().to_vec()),
        Bound::Excluded(key) => Bound::Excluded(key.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (own(range.start_bound()), own(range.end_bound()))
}

fn prefix_bounds(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let end = scan::prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded);
    (Bound::Included(prefix.to_vec()), end)
}

/// A summary of the database's counters, from [`Db::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// The flush pipeline.
    pub flush: FlushStats,
    /// Compactions.
    pub compaction: CompactionStats,
    /// The block cache (all zero when it is disabled).
    pub block_cache: BlockCacheStats,
    /// The I/O backend.
    pub io: crate::io::IoStats,
    /// Tables and bytes per level, level 0 first.
    pub levels: [LevelStats; NUM_LEVELS],
    /// Time writes waited for a flush or a compaction (immutable memtables at
    /// their bound, level 0 at its stop trigger), summed over writes, in microseconds.
    pub write_stall_us: u64,
    /// Time writes were delayed because level 0 was past its slowdown
    /// trigger, summed over writes, in microseconds.
    pub write_slowdown_us: u64,
    /// Bytes of write batches since open (keys, values and batch framing).
    pub user_bytes_written: u64,
}

impl Stats {
    /// Tables in all levels.
    pub fn tables(&self) -> usize {
        self.levels.iter().map(|level| level.tables).sum()
    }

    /// Bytes of all tables.
    pub fn table_bytes(&self) -> u64 {
        self.levels.iter().map(|level| level.bytes).sum()
    }

    /// Table bytes written by flushes and compactions per user byte written
    /// since open (the log's own writes are not counted). 0 before any write.
    pub fn write_amplification(&self) -> f64 {
        let written = self.flush.bytes_written + self.compaction.bytes_written;
        if self.user_bytes_written == 0 { 0.0 } else { written as f64 / self.user_bytes_written as f64 }
    }
}

impl std::fmt::Display for Stats {
    /// A level summary in the style of RocksDB's `rocksdb.stats`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: f64 = 1024.0 * 1024.0;
        writeln!(
            f,
            "{:<6} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>7}",
            "level", "tables", "size MiB", "compactions", "Rn MiB", "Rnp1 MiB", "write MiB", "w-amp"
        )?;
        let mib = |bytes: u64| bytes as f64 / MIB;
        for (level, stats) in self.levels.iter().enumerate() {
            writeln!(
                f,
                "{:<6} {:>7} {:>11.2} {:>11} {:>11.2} {:>11.2} {:>11.2} {:>7.2}",
                format!("L{level}"),
                stats.tables,
                mib(stats.bytes),
                stats.compactions,
                mib(stats.read_upper_bytes),
                mib(stats.read_own_bytes),
                mib(stats.written_bytes),
                stats.write_amplification()
            )?;
        }
        let sum = |field: fn(&LevelStats) -> u64| self.levels.iter().map(field).sum::<u64>();
        writeln!(
            f,
            "{:<6} {:>7} {:>11.2} {:>11} {:>11.2} {:>11.2} {:>11.2}",
            "sum",
            self.tables(),
            mib(self.table_bytes()),
            sum(|l| l.compactions),
            mib(sum(|l| l.read_upper_bytes)),
            mib(sum(|l| l.read_own_bytes)),
            mib(sum(|l| l.written_bytes))
        )?;
        writeln!(
            f,
            "flush: {} tables, {:.2} MiB | compaction: {} merges, {} trivial moves, read {:.2} MiB, wrote {:.2} MiB, dropped {} entries",
            self.flush.flushes,
            self.flush.bytes_written as f64 / MIB,
            self.compaction.compactions,
            self.compaction.trivial_moves,
            self.compaction.bytes_read as f64 / MIB,
            self.compaction.bytes_written as f64 / MIB,
            self.compaction.entries_dropped,
        )?;
        writeln!(
            f,
            "user writes {:.2} MiB, write amplification {:.2}, write stalls {:.1} ms, slowdowns {:.1} ms",
            self.user_bytes_written as f64 / MIB,
            self.write_amplification(),
            self.write_stall_us as f64 / 1000.0,
            self.write_slowdown_us as f64 / 1000.0
        )?;
        write!(
            f,
            "block cache: {} hits, {} misses, {:.2}/{:.2} MiB | io: {} submitted, {} completed",
            self.block_cache.hits,
            self.block_cache.misses,
            self.block_cache.size_bytes as f64 / MIB,
            self.block_cache.capacity_bytes as f64 / MIB,
            self.io.ops_submitted,
            self.io.ops_completed
        )
    }
}

/// One level's share of the tree, and the work that went into it since open
/// (RocksDB's per-level `Rn`, `Rnp1`, `Write` and `W-Amp` columns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Tables in the level.
    pub tables: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Compactions that wrote their output into this level (trivial moves not counted).
    pub compactions: u64,
    /// Bytes those compactions read from the level above (RocksDB's `Rn`); for
    /// a rewrite of the bottom level in place, the level's own tables.
    pub read_upper_bytes: u64,
    /// Bytes those compactions read from this level's overlapping tables (`Rnp1`).
    pub read_own_bytes: u64,
    /// Table bytes written into this level: by flushes for level 0, by
    /// compactions below it.
    pub written_bytes: u64,
}

impl LevelStats {
    /// Bytes written into the level per byte brought down from the level above
    /// (RocksDB's `W-Amp`); 0 when nothing came down.
    pub fn write_amplification(&self) -> f64 {
        if self.read_upper_bytes == 0 { 0.0 } else { self.written_bytes as f64 / self.read_upper_bytes as f64 }
    }
}

/// The directories of `dir`'s path that do not exist yet, `dir` first, up to
/// the deepest one that does.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path.to_path_buf());
        at = path.parent();
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_makes_and_syncs_every_missing_directory_of_its_path() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("outer").join("inner").join("db");
        let outer = root.path().join("outer");
        assert_eq!(missing_dirs(&path), vec![path.clone(), outer.join("inner"), outer.clone()]);
        assert_eq!(missing_dirs(Path::new("no-such-dir-here")), vec![PathBuf::from("no-such-dir-here")]);
        futures::executor::block_on(async {
            let db = Db::open(&path, Options::default()).await.unwrap();
            db.put("k", "v").await.unwrap();
            db.close().await.unwrap();
        });
        assert!(missing_dirs(&path).is_empty());
        assert!(path.join("CURRENT").exists());
    }
}
