//! The version set: the MANIFEST writer with the state its edits add up to,
//! shared by the flush and compaction threads. An edit is appended and the
//! version it makes is installed under one lock, so versions are installed
//! in MANIFEST order and no thread's change is lost.

use std::sync::Arc;

use async_lock::Mutex;

use super::log::{LogShared, LogState};
use crate::io::Io;
use crate::version::{Graveyard, ManifestState, ManifestWriter, TableFile, VersionEdit};
use crate::{Error, Result};

struct ManifestLog {
    writer: ManifestWriter,
    state: ManifestState,
    /// Why no edit may be appended any more: an append whose outcome is
    /// unknown (its write may have landed while its sync failed), or a
    /// failed switch to a new MANIFEST (the writer may point at a file
    /// `CURRENT` no longer names). The next open reads what is on disk.
    broken: Option<String>,
}

pub(crate) struct VersionSet {
    log: Mutex<ManifestLog>,
    pub(crate) graveyard: Arc<Graveyard>,
    io: Io,
    /// Past this size the MANIFEST is replaced by a new one holding a snapshot.
    max_manifest_bytes: u64,
}

impl VersionSet {
    pub(crate) fn new(
        writer: ManifestWriter,
        state: ManifestState,
        graveyard: Arc<Graveyard>,
        io: Io,
        max_manifest_bytes: u64,
    ) -> VersionSet {
        VersionSet { log: Mutex::new(ManifestLog { writer, state, broken: None }), graveyard, io, max_manifest_bytes }
    }

    /// Makes `edit` durable in the MANIFEST, then installs the version with
    /// its deletions and `added` tables and runs `also` in the same critical
    /// section of the write path's state (for a flush: dropping the memtable).
    /// Tables the edit deletes are deleted from disk once no version holds them.
    /// Runs on engine threads only.
    ///
    /// # Errors
    /// An error from the append leaves the edit's fate unknown: it may be on
    /// disk (a write that landed with a failed sync), so the caller must not
    /// delete what the edit adds; the next open goes by what the MANIFEST
    /// holds. An error from the switch to a new MANIFEST comes after the edit
    /// was recorded and installed (and `also` ran). Either way no later edit
    /// is accepted, and the caller poisons the database.
    pub(crate) async fn log_and_apply(
        &self,
        shared: &LogShared,
        mut edit: VersionEdit,
        added: Vec<Arc<TableFile>>,
        also: impl FnOnce(&mut LogState),
    ) -> Result<()> {
        let mut log = self.log.lock().await;
        if let Some(reason) = &log.broken {
            return Err(Error::Poisoned(format!("the MANIFEST takes no more edits: {reason}")));
        }
        edit.next_file_number = Some(shared.lock().next_file_number);
        if let Some(seq) = edit.last_sequence {
            edit.last_sequence = Some(seq.max(log.state.last_sequence));
        }
        let mut next_state = log.state.clone();
        next_state.apply(&edit).map_err(|reason| Error::Corruption {
            file: log.writer.path().to_path_buf(),
            offset: 0,
            reason: format!("an edit of this process does not apply: {reason}"),
        })?;
        // The lock is held across the write: edits are appended one at a time.
        if let Err(e) = log.writer.append(&edit).await {
            log.broken = Some(format!("appending an edit failed: {e}"));
            return Err(e);
        }
        log.state = next_state;
        install(shared, &edit, added, also);
        if log.writer.size_bytes() > self.max_manifest_bytes {
            // Start over with a snapshot: CURRENT switches by rename, then the old one goes.
            let number = {
                let mut state = shared.lock();
                state.next_file_number += 1;
                state.next_file_number - 1
            };
            let mut snapshot = log.state.clone();
            snapshot.next_file_number = snapshot.next_file_number.max(number + 1);
            let previous = log.writer.number();
            match ManifestWriter::create(&self.io, &shared.dir, number, &snapshot, Some(previous)).await {
                Ok(writer) => log.writer = writer,
                Err(e) => {
                    log.broken = Some(format!("switching to a new MANIFEST failed: {e}"));
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Installs the version `edit` makes (it is durable) and runs `also`, in one
/// critical section of the write path's state.
fn install(shared: &LogShared, edit: &VersionEdit, added: Vec<Arc<TableFile>>, also: impl FnOnce(&mut LogState)) {
    let mut state = shared.lock();
    let kept: std::collections::HashSet<u64> = added.iter().map(|t| t.meta.file_number).collect();
    for &(level, number) in &edit.deleted_files {
        let gone = state.version.levels[level as usize].iter().find(|t| t.meta.file_number == number);
        if let Some(table) = gone.filter(|_| !kept.contains(&number)) {
            table.reader.mark_obsolete();
        }
    }
    let version = state.version.apply(&edit.deleted_files, added);
    if let Err(broken) = version.check() {
        panic!("a flush or compaction broke the tree's shape: {broken}");
    }
    state.version = Arc::new(version);
    also(&mut state);
}
