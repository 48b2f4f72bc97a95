//! The write path's shared state and the log-writer thread (group commit).
//!
//! A write takes the state lock once: it gets its sequence numbers, appends its
//! encoded batch to the pending log segment, inserts into the active memtable,
//! and either becomes visible at once (buffered, nothing durable pending before
//! it) or registers a waiter. The `ringdb-wal` thread takes *all* pending
//! segments at a time and writes each as one group record (one O_DIRECT write,
//! linked to one fdatasync when any member asked for it); writes that arrive
//! meanwhile form the next group. Groups are written in log order and the
//! visible sequence number only moves forward to the end of a written group,
//! so a reader never sees write N+1 without write N.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use super::options::Durability;
use crate::io::Io;
use crate::key::SeqNo;
use crate::memtable::Memtable;
use crate::version::Version;
use crate::wal::WalWriter;
use crate::{Error, Result};

/// Groups larger than this are split, so one record stays far below the format's 4 GiB.
const MAX_GROUP_BYTES: usize = 256 << 20;

/// A write waiting for its group.
pub(crate) struct Waiter {
    pub(crate) done: oneshot::Sender<Result<()>>,
}

/// Log bytes not yet handed to the writer thread, for one log file.
pub(crate) struct Segment {
    pub(crate) log_number: u64,
    pub(crate) payload: Vec<u8>,
    pub(crate) last_seq: SeqNo,
    pub(crate) sync: bool,
    pub(crate) waiters: Vec<Waiter>,
    pub(crate) first_buffered_at: Instant,
}

/// A memtable with the log files whose data it holds.
pub(crate) struct MemtableSlot {
    pub(crate) memtable: Arc<Memtable>,
    pub(crate) log_numbers: Vec<u64>,
}

pub(crate) struct LogState {
    pub(crate) next_seq: SeqNo,
    pub(crate) active: MemtableSlot,
    /// Frozen memtables, oldest first.
    pub(crate) immutables: Vec<MemtableSlot>,
    pub(crate) pending: VecDeque<Segment>,
    pub(crate) pending_bytes: usize,
    /// Written/synced writes (and buffered ones queued behind them) not yet completed.
    pub(crate) waiting_writes: usize,
    pub(crate) flush_requests: Vec<(bool, oneshot::Sender<Result<()>>)>,
    /// Why the database refuses writes (the first failure of the log, a
    /// flush, a compaction or an engine thread).
    pub(crate) poisoned: Option<String>,
    /// Why the log itself failed: then nothing more is written to it (a group
    /// written after a failed one would leave a gap behind it). A failure
    /// elsewhere still lets the log write what it had queued, acknowledged
    /// buffered writes included.
    pub(crate) log_failed: Option<String>,
    pub(crate) closing: bool,
    pub(crate) next_file_number: u64,
    /// Payload buffers of written segments, kept for reuse: a fresh buffer
    /// regrown to a megabyte for every group costs reallocations and, past
    /// malloc's mmap threshold, page faults on every write.
    pub(crate) spare_payloads: Vec<Vec<u8>>,
    /// The number of the log being prepared for the next memtable switch.
    pub(crate) spare_log: Option<u64>,
    /// Logs of flushed memtables kept to become the next spare (see
    /// `WalWriter::recycle`), at most [`MAX_RECYCLABLE_LOGS`]; the rest are deleted.
    pub(crate) recyclable_logs: Vec<u64>,
    /// `Db::compact_range` requests for the compaction thread.
    pub(crate) manual_compactions: std::collections::VecDeque<super::compact::ManualCompaction>,
    /// The live tables; replaced (never modified) by flushes.
    pub(crate) version: Arc<Version>,
    /// Memtables frozen since open (the recovered one included) and flushed
    /// since open: `Db::flush` waits until the second reaches the first.
    pub(crate) frozen_memtables: u64,
    pub(crate) flushed_memtables: u64,
}

/// What the write path and the writer thread share.
pub(crate) struct LogShared {
    pub(crate) state: Mutex<LogState>,
    pub(crate) work: Condvar,
    /// Wakes the flush thread (a memtable froze, or the database closes).
    pub(crate) flush_work: Condvar,
    /// Wakes the compaction thread (a flush installed a table, or the database closes).
    pub(crate) compact_work: Condvar,
    /// Sequence numbers of live snapshots (with their counts): compaction
    /// keeps every version of a key that one of them can see.
    pub(crate) snapshots: Mutex<std::collections::BTreeMap<u64, usize>>,
    /// Every write with a sequence number <= this is readable.
    pub(crate) visible_seq: AtomicU64,
    /// Wakes writers waiting for room and `Db::flush` callers (a flushed
    /// immutable memtable, or a failure).
    pub(crate) room: super::wake_all::WakeAll,
    pub(crate) dir: PathBuf,
    pub(crate) wal_preallocate_bytes: u64,
    pub(crate) wal_flush_interval: Duration,
    pub(crate) wal_buffer_size_bytes: usize,
    pub(crate) group_commit_wait: Duration,
}

impl LogState {
    /// Asks the log writer to write out what is queued (and, with `sync`, to
    /// fdatasync the log); the receiver gets the outcome. The caller wakes
    /// the writer (`LogShared::work`) once the lock is released, and must
    /// not ask once `closing` is set: the writer may have exited.
    pub(crate) fn queue_flush(&mut self, sync: bool) -> oneshot::Receiver<Result<()>> {
        let (done, receiver) = oneshot::channel();
        self.flush_requests.push((sync, done));
        receiver
    }
}

impl LogShared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unless the database is poisoned or closing (then the error to return).
    pub(crate) fn lock_open(&self) -> Result<MutexGuard<'_, LogState>> {
        let state = self.lock();
        if let Some(reason) = &state.poisoned {
            return Err(Error::Poisoned(reason.clone()));
        }
        if state.closing {
            return Err(Error::Closed);
        }
        Ok(state)
    }

    pub(crate) fn visible(&self) -> SeqNo {
        SeqNo(self.visible_seq.load(Ordering::Acquire))
    }

    /// The oldest sequence number any reader may still read at: the oldest
    /// live snapshot, else what is visible now.
    pub(crate) fn oldest_snapshot(&self) -> SeqNo {
        let snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let visible = self.visible();
        snapshots.keys().next().map_or(visible, |&oldest| SeqNo(oldest).min(visible))
    }

    /// Registers a snapshot of what is visible now and returns its sequence
    /// number. Read and registered under the lock [`oldest_snapshot`](Self::oldest_snapshot)
    /// holds: read apart, a compaction could read the snapshots in between
    /// and then a newer visible sequence, and drop versions the snapshot sees.
    pub(crate) fn take_snapshot(&self) -> SeqNo {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.visible();
        *snapshots.entry(seq.0).or_insert(0) += 1;
        seq
    }

    /// Registers one more holder of the snapshot at `seq` (already registered).
    pub(crate) fn register_snapshot(&self, seq: SeqNo) {
        *self.snapshots.lock().unwrap_or_else(|e| e.into_inner()).entry(seq.0).or_insert(0) += 1;
    }

    pub(crate) fn release_snapshot(&self, seq: SeqNo) {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = snapshots.get_mut(&seq.0) {
            *count -= 1;
            if *count == 0 {
                snapshots.remove(&seq.0);
            }
        }
    }

    /// Appends an encoded batch (`encode` writes it) to the pending segment of `log_number`.
    pub(crate) fn enqueue(
        state: &mut LogState,
        log_number: u64,
        last_seq: SeqNo,
        durability: Durability,
        waiter: Option<Waiter>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        let reuse =
            state.pending.back().is_some_and(|s| s.log_number == log_number && s.payload.len() < MAX_GROUP_BYTES);
        if !reuse {
            let payload = state.spare_payloads.pop().unwrap_or_default();
            state.pending.push_back(Segment {
                log_number,
                payload,
                last_seq,
                sync: false,
                waiters: Vec::new(),
                first_buffered_at: Instant::now(),
            });
        }
        let segment = state.pending.back_mut().expect("just ensured");
        let before = segment.payload.len();
        encode(&mut segment.payload);
        state.pending_bytes += segment.payload.len() - before;
        segment.last_seq = last_seq;
        segment.sync |= durability == Durability::Synced;
        segment.waiters.extend(waiter);
    }
}

/// Flushed logs kept for reuse as the next log. One covers the steady state:
/// a memtable switch takes the spare and starts the next one, by which time
/// the memtable before the previous one has usually been flushed.
pub(crate) const MAX_RECYCLABLE_LOGS: usize = 1;

pub(crate) fn log_path(dir: &std::path::Path, log_number: u64) -> PathBuf {
    dir.join(format!("{log_number:06}.wal"))
}

/// Whether the writer thread has something to do now, or how long until it may.
fn due(state: &LogState, shared: &LogShared) -> Option<Duration> {
    if state.closing || !state.flush_requests.is_empty() {
        return Some(Duration::ZERO);
    }
    let front = state.pending.front()?;
    if state.pending.iter().any(|s| !s.waiters.is_empty()) || state.pending_bytes >= shared.wal_buffer_size_bytes {
        return Some(Duration::ZERO);
    }
    Some(shared.wal_flush_interval.saturating_sub(front.first_buffered_at.elapsed()))
}

/// The body of the `ringdb-wal` thread.
/// If the writer thread dies on a broken invariant, nobody may wait for it:
/// poison the database and fail everything queued.
struct PanicGuard<'a>(&'a LogShared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (pending, flushes) = {
            let mut state = self.0.lock();
            state.poisoned.get_or_insert_with(|| "the log writer thread panicked".into());
            state.closing = true;
            state.waiting_writes = 0;
            (std::mem::take(&mut state.pending), std::mem::take(&mut state.flush_requests))
        };
        for waiter in pending.into_iter().flat_map(|segment| segment.waiters) {
            let _ = waiter.done.send(Err(Error::Poisoned("the log writer thread panicked".into())));
        }
        for (_, done) in flushes {
            let _ = done.send(Err(Error::Poisoned("the log writer thread panicked".into())));
        }
        self.0.room.notify_all();
        self.0.flush_work.notify_all();
        self.0.compact_work.notify_all();
    }
}

/// A log created ahead of time on a helper thread, so that a memtable switch
/// does not stall every writer while 64 MiB of zeroes are written.
struct SpareLog {
    log_number: u64,
    creating: std::thread::JoinHandle<Result<WalWriter>>,
}

impl SpareLog {
    fn start(shared: &LogShared, io: &Io) -> Option<SpareLog> {
        let (log_number, recycled) = {
            let mut state = shared.lock();
            if state.closing || state.poisoned.is_some() || state.spare_log.is_some() {
                return None;
            }
            let number = state.next_file_number;
            state.next_file_number += 1;
            state.spare_log = Some(number);
            (number, state.recyclable_logs.pop())
        };
        let recycled_path = recycled.map(|old| log_path(&shared.dir, old));
        let thread_io = io.clone();
        let (path, bytes) = (log_path(&shared.dir, log_number), shared.wal_preallocate_bytes);
        let spawned = std::thread::Builder::new().name("ringdb-wal-spare".into()).spawn(move || {
            let io = thread_io;
            futures_executor::block_on(async {
                if let Some(old) = recycled_path {
                    match WalWriter::recycle(&io, &old, &path, log_number, bytes).await {
                        Ok(wal) => return Ok(wal),
                        // Not fatal: a new log is as good. What is left of the
                        // old one is deleted by the next open.
                        Err(e) => tracing::warn!(error = %e, "could not reuse a flushed log; creating one"),
                    }
                }
                WalWriter::create(&io, &path, log_number, bytes).await
            })
        });
        match spawned {
            Ok(creating) => Some(SpareLog { log_number, creating }),
            Err(e) => {
                // No spare this time: the next switch creates its log itself. The
                // flushed log taken for reuse goes back, so it is reused or
                // deleted later instead of lying unused until the next open.
                tracing::warn!(error = %e, "could not start a thread to prepare the next log");
                let surplus = {
                    let mut state = shared.lock();
                    if state.spare_log == Some(log_number) {
                        state.spare_log = None;
                    }
                    match recycled {
                        Some(number) if state.recyclable_logs.len() < MAX_RECYCLABLE_LOGS => {
                            state.recyclable_logs.push(number);
                            None
                        }
                        // The flush thread kept another meanwhile.
                        other => other,
                    }
                };
                if let Some(number) = surplus {
                    let _ = futures_executor::block_on(io.remove_file(log_path(&shared.dir, number)));
                }
                None
            }
        }
    }

    fn finish(self) -> Result<WalWriter> {
        self.creating.join().unwrap_or_else(|_| Err(Error::Poisoned("creating the next log panicked".into())))
    }
}

pub(crate) fn writer_thread(shared: Arc<LogShared>, io: Io, mut wal: Option<WalWriter>) {
    let _guard = PanicGuard(&shared);
    // The next log is prepared once this one holds a write, not at open: a
    // new log is 64 MiB of zeroes by default (`wal_preallocate_bytes`), and a
    // database opened to be read would write them for nothing, in the
    // background, under its first reads (32 concurrent cold gets right after
    // an open waited 2-28 ms each, a few per cent of them, for the first half
    // second).
    let mut spare: Option<SpareLog> = None;
    // Writers in the last group. While fewer are waiting than that, the writers
    // of the last group are probably still on their way back (woken, about to
    // write again): waiting up to `group_commit_wait` for them lets one log
    // write serve all of them instead of alternating full and near-empty groups.
    // Only after a synced group: an fdatasync costs far more than the wait,
    // while an O_DIRECT write alone costs about as much (measured with 64
    // writers: written 240k ops/s without the wait, 140k with 200 us; synced
    // 150k without, 176k with).
    let mut last_group_writers = 0usize;
    let mut last_group_synced = false;
    loop {
        let (segments, flushes, log_failed) = {
            let mut state = shared.lock();
            loop {
                match due(&state, &shared) {
                    Some(wait) if wait.is_zero() => break,
                    Some(wait) => state = shared.work.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0,
                    None => state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner()),
                }
            }
            let gathering_since = Instant::now();
            while last_group_synced
                && !state.closing
                && state.flush_requests.is_empty()
                && waiting_writers(&state) < last_group_writers
                && gathering_since.elapsed() < shared.group_commit_wait
            {
                let left = shared.group_commit_wait.saturating_sub(gathering_since.elapsed());
                state = shared.work.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            last_group_writers = waiting_writers(&state);
            last_group_synced = state.pending.iter().any(|segment| segment.sync);
            if state.closing && state.pending.is_empty() && state.flush_requests.is_empty() {
                state.spare_log = None;
                drop(state);
                // Nothing may touch the directory after the database is closed,
                // so a spare still being made is waited for. An unused spare
                // never held a write: it is left for the next open, which finds
                // nothing to replay in it and makes it its new log instead of
                // writing `wal_preallocate_bytes` of zeroes (disk space held
                // while the database is closed, as a recycled log is).
                if let Some(spare) = spare.take() {
                    let _ = spare.finish();
                }
                // Flushed logs kept for reuse go: the next open reuses at most
                // one log, and keeps the highest-numbered, the spare if there is
                // one. (The flush thread keeps none once `closing` is set.)
                let recyclable = std::mem::take(&mut shared.lock().recyclable_logs);
                for number in recyclable {
                    let _ = futures_executor::block_on(io.remove_file(log_path(&shared.dir, number)));
                }
                break;
            }
            state.pending_bytes = 0;
            (std::mem::take(&mut state.pending), std::mem::take(&mut state.flush_requests), state.log_failed.clone())
        };
        let sync_all = flushes.iter().any(|(sync, _)| *sync);
        // Once the log failed, nothing more reaches it: a later group written
        // at the failed group's offset would leave a sequence gap behind an
        // acknowledged write (or expose the failed write to readers). Queued
        // writes still go out after a flush or compaction failed: the
        // database refuses new ones, but buffered ones were acknowledged.
        let mut failure: Option<String> = log_failed;
        let mut wrote_any = false;
        let mut spent = Vec::new();
        for mut segment in segments {
            let result = match &failure {
                Some(reason) => Err(Error::Poisoned(reason.clone())),
                None => {
                    futures_executor::block_on(write_segment(&shared, &io, &mut wal, &mut spare, &segment, sync_all))
                }
            };
            match result {
                Ok(()) => {
                    wrote_any = true;
                    shared.visible_seq.fetch_max(segment.last_seq.0, Ordering::AcqRel);
                    complete(&shared, std::mem::take(&mut segment.waiters), || Ok(()));
                }
                Err(e) => {
                    let reason = failure.get_or_insert_with(|| poison(&shared, &e)).clone();
                    complete(&shared, std::mem::take(&mut segment.waiters), || Err(Error::Poisoned(reason.clone())));
                }
            }
            segment.payload.clear();
            spent.push(segment.payload);
        }
        if wrote_any && failure.is_none() && spare.is_none() {
            spare = SpareLog::start(&shared, &io);
        }
        {
            let mut state = shared.lock();
            let keep = 4usize.saturating_sub(state.spare_payloads.len());
            // A huge batch's buffer is not kept: it would stay for the process's life.
            let most_bytes = 2 * shared.wal_buffer_size_bytes.max(1 << 20);
            state.spare_payloads.extend(spent.into_iter().filter(|p| p.capacity() <= most_bytes).take(keep));
        }
        // A flush with nothing left to write still owes its fdatasync; a failed
        // fdatasync poisons like a failed group (the data's fate is unknown).
        let flush_result = match (&failure, &mut wal) {
            (Some(reason), _) => Err(reason.clone()),
            (None, Some(wal)) if sync_all && !wrote_any => {
                futures_executor::block_on(wal.sync()).map_err(|e| poison(&shared, &e))
            }
            _ => Ok(()),
        };
        for (_, done) in flushes {
            let _ = done.send(flush_result.clone().map_err(Error::Poisoned));
        }
    }
}

/// Runs an engine thread's body; if it panics (a broken invariant of ours),
/// the database is poisoned so that no caller waits for that thread forever.
pub(crate) fn run_guarded(shared: &LogShared, thread: &str, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        let reason = format!("the {thread} thread panicked: {message}");
        tracing::error!(%reason, "the database refuses further writes");
        shared.lock().poisoned.get_or_insert(reason);
        shared.room.notify_all();
        shared.flush_work.notify_all();
        shared.compact_work.notify_all();
    }
}

/// Marks the database poisoned (first failure wins) and wakes writers waiting
/// for room, so they see it. Returns the reason.
fn poison(shared: &LogShared, error: &Error) -> String {
    let reason = {
        let mut state = shared.lock();
        state.log_failed.get_or_insert_with(|| error.to_string());
        state.poisoned.get_or_insert_with(|| error.to_string()).clone()
    };
    tracing::error!(error = %error, "write-ahead log write failed: the database refuses further writes");
    shared.room.notify_all();
    shared.flush_work.notify_all();
    shared.compact_work.notify_all();
    reason
}

fn waiting_writers(state: &LogState) -> usize {
    state.pending.iter().map(|segment| segment.waiters.len()).sum()
}

fn complete(shared: &LogShared, waiters: Vec<Waiter>, result: impl Fn() -> Result<()>) {
    if waiters.is_empty() {
        return;
    }
    shared.lock().waiting_writes -= waiters.len();
    for waiter in waiters {
        let _ = waiter.done.send(result());
    }
}

async fn write_segment(
    shared: &LogShared,
    io: &Io,
    wal: &mut Option<WalWriter>,
    spare: &mut Option<SpareLog>,
    segment: &Segment,
    force_sync: bool,
) -> Result<()> {
    if wal.as_ref().is_none_or(|w| w.log_number() != segment.log_number) {
        if let Some(mut old) = wal.take() {
            // Everything buffered for the old log was written with its groups;
            // sync it so a synced write in the new log cannot outlive it.
            old.sync().await?;
        }
        let next = match spare.take() {
            Some(ready) if ready.log_number == segment.log_number => ready.finish()?,
            other => {
                *spare = other;
                let path = log_path(&shared.dir, segment.log_number);
                WalWriter::create(io, &path, segment.log_number, shared.wal_preallocate_bytes).await?
            }
        };
        *wal = Some(next);
        if spare.is_none() {
            *spare = SpareLog::start(shared, io);
        }
    }
    let writer = wal.as_mut().expect("set above");
    writer.append_group(&segment.payload, segment.sync || force_sync).await
}
