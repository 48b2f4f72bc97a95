//! The compaction thread: runs the picker's most urgent compaction, one at a
//! time, concurrently with flushes, and deletes tables no version holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::ops::Bound;

use futures_channel::oneshot;

use super::log::LogShared;
use super::versions::VersionSet;
use crate::compaction::CompactionOptions;
use crate::compaction::job::{self, JobContext};
use crate::compaction::picker::{self, Cursors, Plan};
use crate::io::Io;
use crate::sst::cache::BlockCache;
use crate::sst::table::TableOptions;
use crate::version::{NUM_LEVELS, TableFile, Version};
use crate::{Error, Result};

/// Counters of compaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Compactions that merged tables.
    pub compactions: u64,
    /// Tables moved to the next level without a rewrite.
    pub trivial_moves: u64,
    /// Bytes of input tables read by compactions.
    pub bytes_read: u64,
    /// Bytes of tables written by compactions.
    pub bytes_written: u64,
    /// Entries dropped: versions no snapshot can see, and tombstones with nothing below.
    pub entries_dropped: u64,
}

#[derive(Default)]
pub(crate) struct CompactionCounters {
    compactions: AtomicU64,
    trivial_moves: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    entries_dropped: AtomicU64,
    /// Indexed by output level.
    per_level: [LevelCounters; NUM_LEVELS],
}

/// What compactions into one level read and wrote.
#[derive(Default)]
struct LevelCounters {
    compactions: AtomicU64,
    read_upper_bytes: AtomicU64,
    read_own_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

/// What compactions into one level did (see [`crate::LevelStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LevelCompactions {
    pub(crate) compactions: u64,
    pub(crate) read_upper_bytes: u64,
    pub(crate) read_own_bytes: u64,
    pub(crate) written_bytes: u64,
}

impl CompactionCounters {
    /// Per output level.
    pub(crate) fn levels(&self) -> [LevelCompactions; NUM_LEVELS] {
        std::array::from_fn(|level| {
            let counters = &self.per_level[level];
            LevelCompactions {
                compactions: counters.compactions.load(Ordering::Relaxed),
                read_upper_bytes: counters.read_upper_bytes.load(Ordering::Relaxed),
                read_own_bytes: counters.read_own_bytes.load(Ordering::Relaxed),
                written_bytes: counters.written_bytes.load(Ordering::Relaxed),
            }
        })
    }

    pub(crate) fn snapshot(&self) -> CompactionStats {
        CompactionStats {
            compactions: self.compactions.load(Ordering::Relaxed),
            trivial_moves: self.trivial_moves.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            entries_dropped: self.entries_dropped.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Compactor {
    pub(crate) shared: Arc<LogShared>,
    pub(crate) io: Io,
    pub(crate) versions: Arc<VersionSet>,
    pub(crate) options: CompactionOptions,
    pub(crate) table_options: TableOptions,
    pub(crate) cache: Option<Arc<BlockCache>>,
    pub(crate) counters: Arc<CompactionCounters>,
}

/// A `Db::compact_range` request.
pub(crate) struct ManualCompaction {
    pub(crate) start: Bound<Vec<u8>>,
    pub(crate) end: Bound<Vec<u8>>,
    pub(crate) done: oneshot::Sender<Result<()>>,
}

enum Work {
    Auto(Arc<Version>, Plan),
    Manual(ManualCompaction),
}

/// The body of the `ringdb-compact` thread.
pub(crate) fn compaction_thread(compactor: Compactor) {
    let mut cursors = Cursors::default();
    loop {
        let work = {
            let mut state = compactor.shared.lock();
            loop {
                if state.closing || state.poisoned.is_some() {
                    let reason = state.poisoned.clone();
                    let manual = std::mem::take(&mut state.manual_compactions);
                    drop(state);
                    for request in manual {
                        let _ = request.done.send(Err(reason.clone().map_or(Error::Closed, Error::Poisoned)));
                    }
                    delete_obsolete(&compactor);
                    return;
                }
                if let Some(request) = state.manual_compactions.pop_front() {
                    break Work::Manual(request);
                }
                let version = Arc::clone(&state.version);
                if let Some(plan) = picker::pick(&version, &compactor.options, &mut cursors) {
                    break Work::Auto(version, plan);
                }
                state = compactor.shared.compact_work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = match work {
            Work::Auto(version, plan) => execute(&compactor, &plan, &version).map(drop),
            Work::Manual(request) => {
                let result = compact_range(&compactor, &request.start, &request.end);
                let _ = request.done.send(result.clone().map_err(|e| match *e {
                    Error::Closed => Error::Closed,
                    _ => Error::Poisoned(e.to_string()),
                }));
                result
            }
        };
        let shared = &compactor.shared;
        if let Err(e) = result {
            if matches!(*e, Error::Closed) {
                // Stopped for close: nothing was installed, the inputs stay live.
                continue;
            }
            tracing::error!(error = %e, "compaction failed: the database refuses further writes");
            shared.lock().poisoned.get_or_insert_with(|| format!("compaction failed: {e}"));
            shared.room.notify_all();
            shared.flush_work.notify_all();
            continue;
        }
    }
}

/// Runs one plan, installs its result, wakes stalled writers and deletes
/// what no version holds any more. Returns the file numbers it added.
fn execute(compactor: &Compactor, plan: &Plan, version: &Version) -> std::result::Result<Vec<u64>, Arc<Error>> {
    let shared = &compactor.shared;
    let next_file_number = || {
        let mut state = shared.lock();
        state.next_file_number += 1;
        state.next_file_number - 1
    };
    let ctx = JobContext {
        io: &compactor.io,
        dir: &shared.dir,
        table_options: &compactor.table_options,
        options: &compactor.options,
        cache: compactor.cache.clone(),
        graveyard: Arc::clone(&compactor.versions.graveyard),
        oldest_snapshot: shared.oldest_snapshot(),
        next_file_number: &next_file_number,
        cancelled: &|| shared.lock().closing,
    };
    let outcome = futures_executor::block_on(job::run(plan, version, &ctx)).map_err(Arc::new)?;
    let counters = &compactor.counters;
    let counter = if plan.is_trivial_move() { &counters.trivial_moves } else { &counters.compactions };
    counter.fetch_add(1, Ordering::Relaxed);
    counters.bytes_read.fetch_add(outcome.bytes_read, Ordering::Relaxed);
    counters.bytes_written.fetch_add(outcome.bytes_written, Ordering::Relaxed);
    counters.entries_dropped.fetch_add(outcome.entries_dropped, Ordering::Relaxed);
    if !plan.is_trivial_move() {
        let level = &counters.per_level[plan.output_level];
        let bytes = |tables: &[Arc<TableFile>]| tables.iter().map(|t| t.meta.size_bytes).sum::<u64>();
        level.compactions.fetch_add(1, Ordering::Relaxed);
        // A bottom-level rewrite (compact_range) reads its own level as "upper".
        level.read_upper_bytes.fetch_add(bytes(&plan.inputs), Ordering::Relaxed);
        level.read_own_bytes.fetch_add(bytes(&plan.next_inputs), Ordering::Relaxed);
        level.written_bytes.fetch_add(outcome.bytes_written, Ordering::Relaxed);
    }
    let added = outcome.added.iter().map(|table| table.meta.file_number).collect();
    futures_executor::block_on(compactor.versions.log_and_apply(shared, outcome.edit, outcome.added, |_| {}))
        .map_err(Arc::new)?;
    // Writers waiting for level 0 to shrink.
    shared.room.notify_all();
    delete_obsolete(compactor);
    Ok(added)
}

/// Whether the table's user keys intersect the range.
fn in_range(table: &TableFile, start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    let (smallest, largest) = (table.meta.smallest_user_key(), table.meta.largest_user_key());
    let after_start = match start {
        Bound::Included(s) => largest >= s.as_slice(),
        Bound::Excluded(s) => largest > s.as_slice(),
        Bound::Unbounded => true,
    };
    let before_end = match end {
        Bound::Included(e) => smallest <= e.as_slice(),
        Bound::Excluded(e) => smallest < e.as_slice(),
        Bound::Unbounded => true,
    };
    after_start && before_end
}

/// Pushes everything in the range down, level by level, into the deepest
/// level that holds data (at least level 1): one sorted run, without the
/// versions and tombstones no reader needs. The bottom level's tables in the
/// range that this did not just write are rewritten in place too.
fn compact_range(
    compactor: &Compactor,
    start: &Bound<Vec<u8>>,
    end: &Bound<Vec<u8>>,
) -> std::result::Result<(), Arc<Error>> {
    let deepest = {
        let version = &compactor.shared.lock().version;
        (0..NUM_LEVELS).rev().find(|l| !version.levels[*l].is_empty()).unwrap_or(0)
    };
    let bottom = deepest.max(1);
    // Tables this call wrote into the bottom level: what it could drop is
    // already gone from them.
    let mut fresh = std::collections::HashSet::new();
    for level in 0..bottom {
        let version = Arc::clone(&compactor.shared.lock().version);
        let touched: Vec<Arc<TableFile>> =
            version.levels[level].iter().filter(|t| in_range(t, start, end)).cloned().collect();
        if touched.is_empty() {
            continue;
        }
        // All of level 0, as in automatic compactions: an older level-0
        // table left behind could shadow the newer data moved below it.
        let inputs = if level == 0 { version.levels[0].clone() } else { touched };
        let plan = picker::plan_with_inputs(&version, level, inputs);
        let into_bottom = plan.output_level == bottom && !plan.is_trivial_move();
        let added = execute(compactor, &plan, &version)?;
        if into_bottom {
            fresh.extend(added);
        }
    }
    // The rest of the bottom level's part of the range is rewritten in place,
    // one run of adjacent tables at a time: a run's outputs stay between the
    // tables around it (one plan over tables on both sides of a fresh one
    // could write a table spanning it, and levels must not overlap).
    let version = Arc::clone(&compactor.shared.lock().version);
    let mut runs: Vec<Vec<Arc<TableFile>>> = vec![Vec::new()];
    for table in version.levels[bottom].iter().filter(|t| in_range(t, start, end)) {
        if fresh.contains(&table.meta.file_number) {
            runs.push(Vec::new());
        } else {
            runs.last_mut().expect("never empty").push(Arc::clone(table));
        }
    }
    for inputs in runs.into_iter().filter(|run| !run.is_empty()) {
        let version = Arc::clone(&compactor.shared.lock().version);
        let plan =
            Plan { level: bottom, inputs, next_inputs: Vec::new(), output_level: bottom, allow_trivial_move: false };
        execute(compactor, &plan, &version)?;
    }
    Ok(())
}

/// Deletes the table files whose last reference has dropped.
fn delete_obsolete(compactor: &Compactor) {
    for path in compactor.versions.graveyard.take() {
        if let Err(e) = futures_executor::block_on(compactor.io.remove_file(&path)) {
            // The next open deletes tables the MANIFEST does not list.
            tracing::warn!(error = %e, "could not delete an obsolete table");
        }
    }
}
