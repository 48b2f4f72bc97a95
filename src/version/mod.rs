//! Which tables make up the database: file metadata, version edits, the
//! MANIFEST log with its CURRENT pointer, and the immutable versions readers hold.

pub(crate) mod edit;
pub(crate) mod manifest;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) use edit::{FileMeta, VersionEdit};
pub(crate) use manifest::{ManifestState, ManifestWriter};

use crate::key::compare_internal_keys;
use crate::sst::table::TableReader;

/// The file of table `number` in `dir`.
pub(crate) fn table_path(dir: &std::path::Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}

/// Levels of the tree: 0 (overlapping tables from flushes) and 1..NUM_LEVELS
/// (each a sorted run of non-overlapping tables).
pub(crate) const NUM_LEVELS: usize = 7;

/// Table files no version refers to any more, waiting to be deleted by an
/// engine thread (a `Drop` cannot wait for the I/O layer).
#[derive(Default)]
pub(crate) struct Graveyard {
    paths: Mutex<Vec<PathBuf>>,
}

impl Graveyard {
    pub(crate) fn take(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.paths.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An open table file, shared by every version (and every level, after a
/// trivial move) that holds it. Once compaction has removed it from the live
/// set, the last reference to drop hands its path to the graveyard.
pub(crate) struct LiveTable {
    reader: TableReader,
    obsolete: AtomicBool,
    graveyard: Arc<Graveyard>,
}

impl LiveTable {
    pub(crate) fn new(reader: TableReader, graveyard: Arc<Graveyard>) -> Arc<LiveTable> {
        Arc::new(LiveTable { reader, obsolete: AtomicBool::new(false), graveyard })
    }

    /// Marks the file for deletion once no version refers to it.
    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl std::ops::Deref for LiveTable {
    type Target = TableReader;
    fn deref(&self) -> &TableReader {
        &self.reader
    }
}

impl Drop for LiveTable {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            self.graveyard.paths.lock().unwrap_or_else(|e| e.into_inner()).push(self.reader.path().to_path_buf());
        }
    }
}

/// A live table in one level: what the MANIFEST says about it and the open file.
pub(crate) struct TableFile {
    pub(crate) meta: FileMeta,
    pub(crate) reader: Arc<LiveTable>,
}

impl TableFile {
    /// Whether the table's user-key range intersects `[smallest, largest]`.
    pub(crate) fn overlaps(&self, smallest: &[u8], largest: &[u8]) -> bool {
        self.meta.smallest_user_key() <= largest && smallest <= self.meta.largest_user_key()
    }
}

/// An immutable set of live tables. Readers clone the `Arc` they start with
/// and keep every table of it open until they finish, whatever flushes and
/// compactions install meanwhile.
pub(crate) struct Version {
    /// `levels[0]` newest first (by largest sequence number); deeper levels
    /// sorted by smallest key, without overlaps.
    pub(crate) levels: Vec<Vec<Arc<TableFile>>>,
}

impl Default for Version {
    fn default() -> Version {
        Version { levels: vec![Vec::new(); NUM_LEVELS] }
    }
}

impl Version {
    /// A version of `tables`, each in the level its metadata names.
    pub(crate) fn new(tables: Vec<Arc<TableFile>>) -> Version {
        let mut version = Version::default();
        for table in tables {
            let level = (table.meta.level as usize).min(NUM_LEVELS - 1);
            version.levels[level].push(table);
        }
        version.sort();
        version
    }

    fn sort(&mut self) {
        self.levels[0].sort_by_key(|table| std::cmp::Reverse(table.meta.largest_seq));
        for level in &mut self.levels[1..] {
            level.sort_by(|a, b| compare_internal_keys(&a.meta.smallest_key, &b.meta.smallest_key));
        }
    }

    /// This version with `deleted` (level, file number) removed and `added` put in their levels.
    pub(crate) fn apply(&self, deleted: &[(u32, u64)], added: Vec<Arc<TableFile>>) -> Version {
        let mut levels = self.levels.clone();
        for &(level, number) in deleted {
            levels[level as usize].retain(|table| table.meta.file_number != number);
        }
        for table in added {
            levels[table.meta.level as usize].push(table);
        }
        let mut version = Version { levels };
        version.sort();
        version
    }

    /// Tables that may hold `user_key`, in the order a lookup must try them:
    /// level 0 newest first, then at most one table per deeper level.
    pub(crate) fn tables_for_key(&self, user_key: &[u8]) -> Vec<Arc<TableFile>> {
        let mut found: Vec<Arc<TableFile>> =
            self.levels[0].iter().filter(|t| t.overlaps(user_key, user_key)).cloned().collect();
        for level in &self.levels[1..] {
            let at = level.partition_point(|t| t.meta.largest_user_key() < user_key);
            if let Some(table) = level.get(at).filter(|t| t.meta.smallest_user_key() <= user_key) {
                found.push(Arc::clone(table));
            }
        }
        found
    }

    /// Tables of `level` whose user-key range intersects `[smallest, largest]`.
    pub(crate) fn overlapping(&self, level: usize, smallest: &[u8], largest: &[u8]) -> Vec<Arc<TableFile>> {
        self.levels[level].iter().filter(|t| t.overlaps(smallest, largest)).cloned().collect()
    }

    /// Bytes of the tables in `level`.
    pub(crate) fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|table| table.meta.size_bytes).sum()
    }

    /// Checks the shape invariants: every table in the level its metadata
    /// names, deeper levels sorted and non-overlapping in user keys, no table
    /// twice. Tests run it after every compaction.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for (level, tables) in self.levels.iter().enumerate() {
            for table in tables {
                if table.meta.level as usize != level {
                    return Err(format!("table {} in level {level} says {}", table.meta.file_number, table.meta.level));
                }
                if !seen.insert(table.meta.file_number) {
                    return Err(format!("table {} appears twice", table.meta.file_number));
                }
            }
            if level == 0 {
                continue;
            }
            for pair in tables.windows(2) {
                if pair[0].meta.largest_user_key() >= pair[1].meta.smallest_user_key() {
                    return Err(format!(
                        "level {level}: tables {} and {} overlap",
                        pair[0].meta.file_number, pair[1].meta.file_number
                    ));
                }
            }
        }
        Ok(())
    }
}
