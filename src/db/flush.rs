//! The flush thread: frozen memtables become level-0 tables, oldest first.
//!
//! For each frozen memtable: wait until every write in it has reached its log
//! (so no log write can still be racing the table), build the table with the
//! pipelined [`TableWriter`] (its data and its directory entry durable), record
//! it in the MANIFEST, then install a new version and drop the memtable in one
//! step under the state lock, so a reader sees the data in exactly one of the
//! two. Only then are the memtable's logs deleted. A crash anywhere in between
//! leaves either an unrecorded table (an orphan that the next open deletes)
//! or recorded data whose logs the next open deletes.
//!
//! A table is written into a spare file that the flush thread created and
//! reserved after the previous flush, when it had nothing else to do
//! ([`SPARE_TABLE_NAME`]). The spare is renamed to the table's name as the
//! flush starts, and the directory's fsync runs while the table is written.
//! Creating and reserving the file at the start of the flush, and the
//! directory fsync at its end, took 1.5-4 ms of a 100 ms flush on the test
//! VM, with the device idle. Without a spare (the first flush), the table
//! file is created with its name, durable from the start.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::flush_parts::{EncoderPool, build_in_parts, part_count};
use super::log::{LogShared, MAX_RECYCLABLE_LOGS, log_path};
use super::versions::VersionSet;
use crate::Result;
use crate::io::poll_once;
use crate::io::{DirectFile, Io};
use crate::key::SeqNo;
use crate::memtable::Memtable;
use crate::sst::cache::BlockCache;
use crate::sst::table::{TableOptions, TableReader, TableWriter};
use crate::version::{FileMeta, LiveTable, TableFile, VersionEdit, table_path};

/// Counters of the flush pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Memtables flushed to tables.
    pub flushes: u64,
    /// Bytes of tables written by flushes.
    pub bytes_written: u64,
    /// Entries written by flushes.
    pub entries_written: u64,
    /// Wall time spent building tables (encoding and writing overlapped, plus
    /// the final fdatasync), in microseconds.
    pub build_time_us: u64,
    /// Of that, time spent encoding, in microseconds: on one thread, the
    /// table writer's time not spent waiting for the device (data blocks,
    /// then filter, index and footer); in parallel parts, the parts' encoding
    /// time divided by the encoder threads, plus the flush thread's own
    /// encoding (filter, index, footer). Either way what encoding alone would
    /// take with those threads.
    pub encode_time_us: u64,
}

#[derive(Default)]
pub(crate) struct FlushCounters {
    flushes: AtomicU64,
    bytes_written: AtomicU64,
    entries_written: AtomicU64,
    build_time_us: AtomicU64,
    encode_time_us: AtomicU64,
}

impl FlushCounters {
    pub(crate) fn snapshot(&self) -> FlushStats {
        FlushStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            entries_written: self.entries_written.load(Ordering::Relaxed),
            build_time_us: self.build_time_us.load(Ordering::Relaxed),
            encode_time_us: self.encode_time_us.load(Ordering::Relaxed),
        }
    }
}

/// What the flush thread owns.
pub(crate) struct Flusher {
    pub(crate) shared: Arc<LogShared>,
    pub(crate) io: Io,
    pub(crate) versions: Arc<VersionSet>,
    pub(crate) table_options: TableOptions,
    pub(crate) cache: Option<Arc<BlockCache>>,
    pub(crate) counters: Arc<FlushCounters>,
    /// Threads that encode a large memtable's parts (`Options::flush_threads`
    /// above 1); `None`: this thread encodes alone.
    pub(crate) encoders: Option<EncoderPool>,
    /// Charged memtable bytes per part of a parallel flush.
    pub(crate) part_bytes: usize,
    /// The file the next table is written into, made ahead of time.
    pub(crate) spare: Option<SpareTable>,
    /// What the last flush reserved: the size of the next spare.
    pub(crate) last_reserve_bytes: u64,
}

/// The name of the spare table file (see the module doc). A `.tmp` file, so
/// an open deletes one left by a crash.
pub(crate) const SPARE_TABLE_NAME: &str = "flush-spare.sst.tmp";

fn spare_table_path(dir: &Path) -> PathBuf {
    dir.join(SPARE_TABLE_NAME)
}

/// A created, empty table file with space reserved, waiting for a flush.
pub(crate) struct SpareTable {
    file: DirectFile,
    reserved_bytes: u64,
}

/// One frozen memtable to flush.
struct Job {
    memtable: Arc<Memtable>,
    log_numbers: Vec<u64>,
    /// The first log of the next memtable: every log below it is obsolete once the job is recorded.
    next_log_number: u64,
    table_number: u64,
}

/// The body of the `ringdb-flush` thread.
pub(crate) fn flush_thread(mut flusher: Flusher) {
    // The flush submits its next write as soon as one completes; with short
    // slices it gets a CPU for that at once, even while encoder threads or a
    // compaction hold them all.
    crate::io::request_short_slices();
    flush_jobs(&mut flusher);
    // Nothing may touch the directory once the database is closed, and an
    // unused spare is only disk space held.
    if flusher.spare.take().is_some() {
        let _ = futures_executor::block_on(flusher.io.remove_file(spare_table_path(&flusher.shared.dir)));
    }
}

fn flush_jobs(flusher: &mut Flusher) {
    while let Some(job) = next_job(&flusher.shared) {
        if !wait_until_logged(&flusher.shared) {
            return;
        }
        let result = futures_executor::block_on(flusher.flush(&job));
        match result {
            Ok(obsolete_logs) => {
                flusher.shared.room.notify_all();
                flusher.shared.compact_work.notify_all();
                for log in obsolete_logs {
                    let path = log_path(&flusher.shared.dir, log);
                    if let Err(e) = futures_executor::block_on(flusher.io.remove_file(&path)) {
                        // Harmless: the next open deletes logs below the MANIFEST's log number.
                        tracing::warn!(error = %e, "could not delete a flushed write-ahead log");
                    }
                }
                // Only when no flush is waiting: a flush that is due would
                // wait for it. A database that never flushes holds no spare,
                // and one that is closing would only remove it again at exit
                // (a create, a reservation and a directory fsync that the
                // close waits for). A close that starts after this check still
                // gets one; that is only wasted work.
                {
                    let state = flusher.shared.lock();
                    if !state.immutables.is_empty() || state.closing {
                        continue;
                    }
                }
                flusher.make_spare();
            }
            Err(e) => {
                let reason = format!("flushing a memtable failed: {e}");
                tracing::error!(error = %e, "flush failed: the database refuses further writes");
                // `flush` removed the table if it failed before recording it
                // was attempted; a table left behind otherwise is deleted by
                // the next open unless the MANIFEST records it. The spare may
                // still be there if the flush failed before its rename.
                let _ = futures_executor::block_on(flusher.io.remove_file(spare_table_path(&flusher.shared.dir)));
                flusher.shared.lock().poisoned.get_or_insert(reason);
                flusher.shared.room.notify_all();
                return;
            }
        }
    }
}

/// Waits for the oldest frozen memtable; `None` once the database closes or is poisoned.
fn next_job(shared: &LogShared) -> Option<Job> {
    let mut state = shared.lock();
    loop {
        if state.closing || state.poisoned.is_some() {
            return None;
        }
        if !state.immutables.is_empty() {
            break;
        }
        state = shared.flush_work.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    let slot = &state.immutables[0];
    let next = state.immutables.get(1).unwrap_or(&state.active);
    let (memtable, log_numbers) = (Arc::clone(&slot.memtable), slot.log_numbers.clone());
    let next_log_number = *next.log_numbers.first().expect("every memtable has a log");
    let table_number = state.next_file_number;
    state.next_file_number += 1;
    Some(Job { memtable, log_numbers, next_log_number, table_number })
}

/// Asks the log writer to write out everything queued so far (the frozen
/// memtable's writes were queued before it froze) and waits for it. False if
/// the database is closing or the log failed.
fn wait_until_logged(shared: &LogShared) -> bool {
    let receiver = {
        let mut state = shared.lock();
        // After `closing`, the log writer may already have exited: nobody would answer.
        if state.closing || state.poisoned.is_some() {
            return false;
        }
        state.queue_flush(false)
    };
    shared.work.notify_one();
    matches!(futures_executor::block_on(receiver), Ok(Ok(())))
}

impl Flusher {
    /// Writes the job's table and records it; returns the memtable's logs to
    /// delete (one of them may have been kept instead, to become a later log).
    async fn flush(&mut self, job: &Job) -> Result<Vec<u64>> {
        let dir = self.shared.dir.clone();
        let path = table_path(&dir, job.table_number);
        let started = Instant::now();
        let built = async {
            let (meta, encode_time) = self.build_table(&path, job).await?;
            let build_time = started.elapsed();
            let reader = TableReader::open(&self.io, &path, job.table_number, self.cache.clone()).await?;
            Ok((meta, encode_time, build_time, reader))
        };
        let (meta, encode_time, build_time, reader) = match built.await {
            Ok(built) => built,
            Err(e) => {
                // Nothing records the table yet. (Once its edit has been
                // appended, a failure leaves the file alone: the edit may be
                // on disk, and the next open deletes the table if it is not.)
                let _ = self.io.remove_file(&path).await;
                return Err(e);
            }
        };
        let edit = VersionEdit {
            new_files: vec![meta.clone()],
            log_number: Some(job.next_log_number),
            last_sequence: Some(meta.largest_seq),
            ..VersionEdit::default()
        };
        let table =
            Arc::new(TableFile { meta: meta.clone(), reader: LiveTable::new(reader, self.versions.graveyard.clone()) });
        // The table and the memtable swap places in one step for readers.
        // The memtable's logs are obsolete from here on: one may be kept to
        // become a later log (in the same step, so the next spare, which may be
        // started as soon as `Db::flush` returns, finds it), the rest are deleted.
        let mut obsolete_logs = Vec::new();
        let counters = &self.counters;
        self.versions
            .log_and_apply(&self.shared, edit, vec![table], |state| {
                let flushed = state.immutables.remove(0);
                assert!(Arc::ptr_eq(&flushed.memtable, &job.memtable), "memtables are flushed in order");
                // Counted in the same step, so `Db::flush`, which returns once
                // `flushed_memtables` has moved, finds its flush in the stats.
                counters.flushes.fetch_add(1, Ordering::Relaxed);
                counters.bytes_written.fetch_add(meta.size_bytes, Ordering::Relaxed);
                counters.entries_written.fetch_add(job.memtable.len() as u64, Ordering::Relaxed);
                counters.build_time_us.fetch_add(build_time.as_micros() as u64, Ordering::Relaxed);
                counters.encode_time_us.fetch_add(encode_time.as_micros() as u64, Ordering::Relaxed);
                state.flushed_memtables += 1;
                for &log in &job.log_numbers {
                    if !state.closing && state.recyclable_logs.len() < MAX_RECYCLABLE_LOGS {
                        state.recyclable_logs.push(log);
                    } else {
                        obsolete_logs.push(log);
                    }
                }
            })
            .await?;
        Ok(obsolete_logs)
    }
}

impl Flusher {
    /// Writes the memtable as a table at `path`, durable with its directory
    /// entry: into the spare file if there is one, in parts on the encoder
    /// threads when it is large enough, else on this thread. Returns its
    /// metadata and the time spent encoding.
    async fn build_table(&mut self, path: &Path, job: &Job) -> Result<(FileMeta, std::time::Duration)> {
        // The space is reserved first: an O_DIRECT write that extends the file is
        // completed synchronously by ext4 (io_uring hands it to a worker thread, one
        // at a time), while writes inside the file size run as real async I/O.
        // `finish` cuts the file to its exact length. Without this, a flush of
        // 4 KiB values took 2.2x the slower of encoding and writing alone; see
        // docs/format/sst.md "Writing".
        let reserve_bytes = reserve_bytes(&job.memtable);
        self.last_reserve_bytes = reserve_bytes;
        // The file gets its table name first, durable while the table is
        // written (the directory's fsync is submitted now, awaited at the end).
        // A crash before the table is recorded leaves an unrecorded table,
        // which the next open deletes.
        let mut naming: Option<Pin<Box<dyn Future<Output = Result<()>> + Send>>> = None;
        let file = match self.spare.take() {
            Some(mut spare) => {
                spare.file.rename_to(path)?;
                let (io, dir) = (self.io.clone(), self.shared.dir.clone());
                let mut sync: Pin<Box<dyn Future<Output = Result<()>> + Send>> =
                    Box::pin(async move { io.sync_dir(dir).await });
                match poll_once(&mut sync) {
                    Some(done) => done?,
                    None => naming = Some(sync),
                }
                if spare.reserved_bytes < reserve_bytes {
                    spare.file.allocate(spare.reserved_bytes, reserve_bytes - spare.reserved_bytes).await?;
                }
                spare.file
            }
            // Durable with its directory entry when created.
            None => create_reserved(&self.io, path, reserve_bytes).await?,
        };
        let parts = part_count(&job.memtable, self.part_bytes);
        let built = match &self.encoders {
            Some(pool) if parts >= 2 => {
                let options = &self.table_options;
                build_in_parts(&file, &job.memtable, job.table_number, options, pool, parts).await
            }
            _ => build_table(&file, job, &self.table_options).await,
        };
        if let Some(naming) = naming {
            naming.await?;
        }
        built
    }

    /// Creates the spare table file with as much space reserved as the last
    /// flush needed. Best effort: without a spare the next flush creates its
    /// file itself.
    fn make_spare(&mut self) {
        if self.spare.is_some() || self.last_reserve_bytes == 0 {
            return;
        }
        let path = spare_table_path(&self.shared.dir);
        match futures_executor::block_on(create_reserved(&self.io, &path, self.last_reserve_bytes)) {
            Ok(file) => self.spare = Some(SpareTable { file, reserved_bytes: self.last_reserve_bytes }),
            Err(e) => {
                tracing::debug!(error = %e, "ringdb: no spare table file; the next flush creates its own");
                let _ = futures_executor::block_on(self.io.remove_file(&path));
            }
        }
    }
}

/// Creates a table file (durable in its directory) with `reserve_bytes`
/// allocated.
async fn create_reserved(io: &Io, path: &Path, reserve_bytes: u64) -> Result<DirectFile> {
    let file = DirectFile::create(io, path).await?;
    file.allocate(0, reserve_bytes).await?;
    Ok(file)
}

/// Bytes a reservation adds to its estimate (for the filter's and index's
/// fixed parts, the footer, and small tables).
const RESERVE_SLACK_BYTES: u64 = 1 << 20;

/// The space a flush reserves for the table of `memtable`, an estimate from
/// above: its keys and values, 8 bytes per entry (the entry's three length
/// varints, its share of the restart array, of the filter and of the index:
/// about 6), a seventh more for the padding that ends data blocks on page
/// boundaries (a block is padded only when that costs at most an eighth of
/// a page, so padding is at most a seventh of the data), and
/// [`RESERVE_SLACK_BYTES`]. Writes past a reservation that falls short are
/// slower, never wrong.
///
/// The memtable's charge, which was reserved before, counts 120 bytes of
/// overhead per entry: twice the table for 100-byte values. The excess is
/// disk space held while the spare waits, and releasing it in the final
/// truncate took 0.3-0.8 ms of a 1M-entry flush, against 0.25-0.4 ms for a
/// reservation of half the charge.
fn reserve_bytes(memtable: &Memtable) -> u64 {
    let entries = memtable.len() as u64;
    let overhead = entries * crate::memtable::ENTRY_OVERHEAD_BYTES as u64;
    let keys_and_values = (memtable.approximate_size_bytes() as u64).saturating_sub(overhead);
    ((keys_and_values + 8 * entries) / 7 * 8 + RESERVE_SLACK_BYTES).next_multiple_of(4096)
}

/// Writes the memtable as a table into `file` (created, its space reserved)
/// on this thread. Returns its metadata and the time spent in the encoder.
async fn build_table(file: &DirectFile, job: &Job, options: &TableOptions) -> Result<(FileMeta, std::time::Duration)> {
    let started = Instant::now();
    let mut writer = TableWriter::new(file, options.clone());
    // Its filter's bits are set on a thread of their own as it goes: a
    // thread start (tens of microseconds) is small beside any flush.
    writer.bound_keys(job.memtable.len());
    let mut first_key: Option<Vec<u8>> = None;
    let mut last_entry = None;
    let (mut smallest_seq, mut largest_seq) = (SeqNo::MAX, SeqNo::ZERO);
    // One pin for the whole walk; the flush thread runs this future itself
    // (block_on), so holding the guard across the writer's awaits is fine.
    // While it is pinned the epoch cannot advance, which only delays freeing
    // garbage: memtables never remove nodes, so they make none.
    let guard = crossbeam_epoch::pin();
    for entry in job.memtable.entries(&guard) {
        let (key, value) = (entry.key(), entry.value());
        if writer.add_entry(key.encoded(), value) {
            writer.stage().await?;
        }
        if first_key.is_none() {
            first_key = Some(key.encoded().to_vec());
        }
        smallest_seq = smallest_seq.min(key.seq());
        largest_seq = largest_seq.max(key.seq());
        last_entry = Some(entry);
    }
    let last_key = last_entry.expect("frozen memtables are never empty").key().encoded().to_vec();
    let smallest_key = first_key.expect("frozen memtables are never empty");
    let info = writer.finish().await?;
    // Encoding is everything but waiting for the device: the data blocks, and
    // in `finish` the filter, index and footer.
    let encode_time = started.elapsed().saturating_sub(info.io_wait);
    let meta = FileMeta {
        level: 0,
        file_number: job.table_number,
        size_bytes: info.size_bytes,
        smallest_seq,
        largest_seq,
        smallest_key,
        largest_key: last_key,
    };
    Ok((meta, encode_time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoOptions;
    use crate::key::ValueKind;
    use bytes::Bytes;

    #[test]
    fn the_reservation_holds_the_table_for_small_large_and_empty_values() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        // (entries, key length, value length): 1-byte keys and empty values
        // have the most per-entry bytes for their size; 5000-byte values the
        // most block padding.
        let shapes = [(200_000u64, 1usize, 0usize), (100_000, 16, 100), (3000, 8, 5000), (50_000, 40, 3)];
        futures::executor::block_on(async {
            for (i, (count, key_len, value_len)) in shapes.into_iter().enumerate() {
                let memtable = Arc::new(Memtable::new());
                for n in 0..count {
                    // The last `key_len` digits: short keys repeat, several
                    // versions of a key, as a memtable holds.
                    let digits = format!("{n:040}");
                    let key = &digits.as_bytes()[40 - key_len..];
                    memtable.insert(key, SeqNo(n + 1), ValueKind::Put, Bytes::from(vec![7u8; value_len]));
                }
                let job =
                    Job { memtable: Arc::clone(&memtable), log_numbers: vec![1], next_log_number: 2, table_number: 3 };
                let path = dir.path().join(format!("{i:06}.sst"));
                let file = DirectFile::create(&io, &path).await.unwrap();
                let reserved = reserve_bytes(&memtable);
                file.allocate(0, reserved).await.unwrap();
                let (meta, _) = build_table(&file, &job, &TableOptions::default()).await.unwrap();
                // The estimate holds without its slack (which would hide a
                // shortfall in tables this small).
                assert!(
                    meta.size_bytes <= reserved - RESERVE_SLACK_BYTES,
                    "{count} entries of {key_len}+{value_len} bytes: table {} > estimate {}",
                    meta.size_bytes,
                    reserved - RESERVE_SLACK_BYTES
                );
                if value_len == 100 {
                    // The point: well below the memtable's charge, 244 bytes per entry here.
                    let charged = memtable.approximate_size_bytes() as u64;
                    assert!(reserved < charged * 3 / 4, "{reserved} vs {charged}");
                }
            }
        });
    }
}
