//! Which tables make up the database: file metadata, version edits, the
//! MANIFEST log with its CURRENT pointer, and the immutable versions readers hold.

pub(crate) mod edit;
pub(crate) mod manifest;

use std::sync::Arc;

pub(crate) use edit::{FileMeta, VersionEdit};
pub(crate) use manifest::{ManifestState, ManifestWriter};

use crate::sst::table::TableReader;

/// A live table: what the MANIFEST says about it and the open reader.
pub(crate) struct TableFile {
    pub(crate) meta: FileMeta,
    pub(crate) reader: TableReader,
}

/// An immutable set of live tables. Readers clone the `Arc` they start with
/// and keep every table of it open until they finish, whatever flushes (and,
/// later, compactions) install meanwhile.
#[derive(Default)]
pub(crate) struct Version {
    /// Level 0, newest first (by largest sequence number): tables straight
    /// from flushes, whose key ranges may overlap.
    pub(crate) level0: Vec<Arc<TableFile>>,
}

impl Version {
    /// A version of `tables` (all level 0).
    pub(crate) fn new(mut level0: Vec<Arc<TableFile>>) -> Version {
        level0.sort_by_key(|table| std::cmp::Reverse(table.meta.largest_seq));
        Version { level0 }
    }

    /// This version plus a newly flushed table.
    pub(crate) fn with_table(&self, table: Arc<TableFile>) -> Version {
        let mut level0 = self.level0.clone();
        level0.push(table);
        Version::new(level0)
    }

    /// Tables whose key range holds `user_key`, in the order a lookup must try them.
    pub(crate) fn tables_for_key<'a>(&'a self, user_key: &'a [u8]) -> impl Iterator<Item = &'a Arc<TableFile>> + 'a {
        self.level0.iter().filter(move |table| {
            table.meta.smallest_user_key() <= user_key && user_key <= table.meta.largest_user_key()
        })
    }

    /// Total bytes of live tables.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.level0.iter().map(|table| table.meta.size_bytes).sum()
    }
}
