//! The compaction thread: runs the picker's most urgent compaction, one at a
//! time, concurrently with flushes, and deletes tables no version holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::log::LogShared;
use super::versions::VersionSet;
use crate::compaction::CompactionOptions;
use crate::compaction::job::{self, JobContext};
use crate::compaction::picker::{self, Cursors};
use crate::io::Io;
use crate::sst::cache::BlockCache;
use crate::sst::table::TableOptions;

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
}

impl CompactionCounters {
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

/// The body of the `ringdb-compact` thread.
pub(crate) fn compaction_thread(compactor: Compactor) {
    let mut cursors = Cursors::default();
    loop {
        let (version, plan) = {
            let mut state = compactor.shared.lock();
            loop {
                if state.closing || state.poisoned.is_some() {
                    drop(state);
                    delete_obsolete(&compactor);
                    return;
                }
                let version = Arc::clone(&state.version);
                if let Some(plan) = picker::pick(&version, &compactor.options, &mut cursors) {
                    break (version, plan);
                }
                state = compactor.shared.compact_work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
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
        };
        let result = futures_executor::block_on(job::run(&plan, &version, &ctx)).and_then(|outcome| {
            let counters = &compactor.counters;
            let counter = if plan.is_trivial_move() { &counters.trivial_moves } else { &counters.compactions };
            counter.fetch_add(1, Ordering::Relaxed);
            counters.bytes_read.fetch_add(outcome.bytes_read, Ordering::Relaxed);
            counters.bytes_written.fetch_add(outcome.bytes_written, Ordering::Relaxed);
            counters.entries_dropped.fetch_add(outcome.entries_dropped, Ordering::Relaxed);
            futures_executor::block_on(compactor.versions.log_and_apply(shared, outcome.edit, outcome.added, |_| {}))
        });
        drop((version, plan));
        if let Err(e) = result {
            tracing::error!(error = %e, "compaction failed: the database refuses further writes");
            shared.lock().poisoned.get_or_insert_with(|| format!("compaction failed: {e}"));
            shared.room.notify(usize::MAX);
            shared.flush_work.notify_all();
            return;
        }
        // Writers waiting for level 0 to shrink.
        shared.room.notify(usize::MAX);
        delete_obsolete(&compactor);
    }
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
