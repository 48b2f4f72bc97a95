//! Iterators over internal entries (internal key, value) in internal-key
//! order: a cursor per memtable, per table and per sorted level, and the
//! merging iterator over any set of them. Compaction merges with them; range
//! scans will add snapshot visibility on top.
//!
//! They are async (a table cursor reads blocks through the I/O layer) and
//! own what they read from (`Arc`s of memtables and tables), so they can live
//! in a background job or a stream without borrowing the database.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::Result;
use crate::key::{InternalKey, compare_internal_keys, user_key_prefix};
use crate::memtable::Memtable;
use crate::sst::block::{BlockHandle, BlockIter};
use crate::sst::readahead::ReadAhead;
use crate::version::TableFile;

/// One entry: an encoded internal key and its value.
pub(crate) use crate::sst::block::Entry;

/// Entries a memtable cursor takes per search once it moves on from a seek.
const MEMTABLE_BATCH_ENTRIES: usize = 64;

/// A cursor over one memtable. It holds no borrow of the memtable between
/// steps: after a seek it copies (reference-counted) the following entries in
/// batches, one skiplist search per batch.
pub(crate) struct MemtableCursor {
    memtable: Arc<Memtable>,
    current: Option<(InternalKey, Bytes)>,
    /// The entries after `current`, in order, not yet stepped to.
    ahead: VecDeque<(InternalKey, Bytes)>,
}

impl MemtableCursor {
    pub(crate) fn new(memtable: Arc<Memtable>) -> MemtableCursor {
        MemtableCursor { memtable, current: None, ahead: VecDeque::new() }
    }

    fn seek(&mut self, target: &[u8]) {
        let key = InternalKey::from_encoded(Bytes::copy_from_slice(target)).expect("seek targets are internal keys");
        self.ahead.clear();
        self.current = self.memtable.entry_from(&key, true);
    }

    fn seek_to_first(&mut self) {
        self.ahead.clear();
        self.current = self.memtable.first();
    }

    fn advance(&mut self) {
        if let Some((key, _)) = self.current.take() {
            if self.ahead.is_empty() {
                self.memtable.entries_after(&key, MEMTABLE_BATCH_ENTRIES, &mut self.ahead);
            }
            self.current = self.ahead.pop_front();
        }
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.current.as_ref().map(|(key, value)| (key.encoded(), value.as_ref()))
    }

    fn current_value(&self) -> Option<Bytes> {
        self.current.as_ref().map(|(_, value)| value.clone())
    }
}

/// Blocks a scan reads through the cache before it switches to read-ahead:
/// a short scan (a seek and a few entries) stays on cached 4 KiB reads, a long
/// one moves to 1 MiB sequential chunks.
const BLOCKS_BEFORE_READ_AHEAD: u32 = 4;

/// How a table cursor gets its data blocks.
pub(crate) enum BlockFetch {
    /// Through the cache until the cursor has moved through a few blocks in
    /// order, then with read-ahead (scans).
    Adaptive,
    /// Sequentially in large chunks with read-ahead, bypassing the cache (compaction).
    Sequential(ReadAhead),
}

/// A cursor over one table.
pub(crate) struct TableCursor {
    table: Arc<TableFile>,
    fetch: BlockFetch,
    index: BlockIter,
    /// The current block; its iterator holds the current key.
    block: Option<BlockIter>,
    /// The offset of the current block, for error reports.
    block_offset: u64,
    /// Where the current entry's value lies in the current block's data;
    /// `None` when the cursor is exhausted. A range, not a `Bytes`: a merge
    /// steps through millions of entries and copies most values right away.
    value: Option<std::ops::Range<usize>>,
    /// Blocks loaded since the last seek.
    blocks_loaded: u32,
}

/// Read-ahead from the first block (compaction inputs).
pub(crate) fn sequential(table: &Arc<TableFile>) -> BlockFetch {
    BlockFetch::Sequential(ReadAhead::starting_at(table, 0))
}

/// Read-ahead from the block that holds `target` (an internal key) on: the
/// inputs of a compaction's later key ranges start inside their tables.
pub(crate) fn sequential_from(table: &Arc<TableFile>, target: &[u8]) -> BlockFetch {
    let reader = &table.reader;
    let found = reader.index().iter_from(target, reader.path()).ok().and_then(|(_, f)| f);
    let offset = found.and_then(|(_, handle)| BlockHandle::decode_from(&mut crate::coding::Reader::new(&handle)));
    BlockFetch::Sequential(match offset {
        Some(handle) => ReadAhead::starting_at(table, handle.offset),
        // Past the table's end, or a damaged index that the seek will report.
        None => ReadAhead::new(table),
    })
}

/// Read-ahead from wherever the cursor seeks first (level cursors of a
/// compaction's later key ranges).
pub(crate) fn sequential_unprimed(table: &Arc<TableFile>) -> BlockFetch {
    BlockFetch::Sequential(ReadAhead::new(table))
}

/// Cached reads, then read-ahead once the cursor keeps going (scans).
pub(crate) fn adaptive(_: &Arc<TableFile>) -> BlockFetch {
    BlockFetch::Adaptive
}

impl TableCursor {
    pub(crate) fn new(table: Arc<TableFile>, fetch: BlockFetch) -> TableCursor {
        let index = table.reader.index().iter();
        TableCursor { table, fetch, index, block: None, block_offset: 0, value: None, blocks_loaded: 0 }
    }

    async fn load_block(&mut self, handle_bytes: &[u8]) -> Result<()> {
        let reader = &self.table.reader;
        let handle = reader.index().decode_handle(handle_bytes, reader.path())?;
        self.blocks_loaded += 1;
        if matches!(self.fetch, BlockFetch::Adaptive) && self.blocks_loaded > BLOCKS_BEFORE_READ_AHEAD {
            self.fetch = BlockFetch::Sequential(ReadAhead::new(&self.table));
        }
        let block = match &mut self.fetch {
            BlockFetch::Adaptive => reader.data_block(handle).await?,
            BlockFetch::Sequential(ahead) => ahead.block(reader, handle).await?,
        };
        self.block_offset = handle.offset;
        self.block = Some(block.iter());
        Ok(())
    }

    /// Moves to the next entry if it is in the current block: true if it
    /// did, false if the cursor must go on to a later block ([`Self::step`]).
    /// Synchronous, so a merge steps most entries without building a future.
    fn step_in_block(&mut self) -> Result<bool> {
        if let Some(block) = &mut self.block
            && let Some(value) = block.step(self.table.reader.path(), self.block_offset)?
        {
            self.value = Some(value);
            return Ok(true);
        }
        Ok(false)
    }

    /// Moves to the next entry, crossing into later blocks as needed.
    async fn step(&mut self) -> Result<()> {
        loop {
            if self.step_in_block()? {
                return Ok(());
            }
            match self.index.next_entry(self.table.reader.path(), self.table.reader.index().offset())? {
                Some((_, handle)) => self.load_block(&handle).await?,
                None => {
                    self.block = None;
                    self.value = None;
                    return Ok(());
                }
            }
        }
    }

    async fn seek(&mut self, target: &[u8]) -> Result<()> {
        let path = self.table.reader.path().to_path_buf();
        self.blocks_loaded = 0;
        let (index, found) = self.table.reader.index().iter_from(target, &path)?;
        self.index = index;
        let Some((_, handle)) = found else {
            self.block = None;
            self.value = None;
            return Ok(());
        };
        self.load_block(&handle).await?;
        let block = self.block.take().expect("just loaded");
        // The iterator stops just past the first entry >= target, holding its key.
        let (rest, first) = block.block().iter_to(target, compare_internal_keys, &path, self.block_offset)?;
        self.block = Some(rest);
        match first {
            Some(value) => self.value = Some(value),
            None => self.step().await?,
        }
        Ok(())
    }

    async fn seek_to_first(&mut self) -> Result<()> {
        self.index = self.table.reader.index().iter();
        self.block = None;
        self.step().await
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        let value = self.value.clone()?;
        let block = self.block.as_ref()?;
        Some((block.key(), &block.block().data()[value]))
    }

    fn current_value(&self) -> Option<Bytes> {
        let value = self.value.clone()?;
        Some(self.block.as_ref()?.block().data().slice(value))
    }
}

/// A cursor over a sorted run of non-overlapping tables (a level >= 1):
/// one table open at a time.
pub(crate) struct LevelCursor {
    tables: Vec<Arc<TableFile>>,
    next_table: usize,
    cursor: Option<TableCursor>,
    /// How each table's blocks are read.
    fetch: fn(&Arc<TableFile>) -> BlockFetch,
}

impl LevelCursor {
    /// `tables` sorted by key, non-overlapping; `fetch` says how each is read.
    pub(crate) fn new(tables: Vec<Arc<TableFile>>, fetch: fn(&Arc<TableFile>) -> BlockFetch) -> LevelCursor {
        LevelCursor { tables, next_table: 0, cursor: None, fetch }
    }

    fn open(&self, index: usize) -> TableCursor {
        let table = Arc::clone(&self.tables[index]);
        let fetch = (self.fetch)(&table);
        TableCursor::new(table, fetch)
    }

    /// Opens tables from `next_table` on until one has an entry (or none is left).
    async fn settle(&mut self) -> Result<()> {
        while self.cursor.as_ref().is_none_or(|c| c.current().is_none()) {
            if self.next_table >= self.tables.len() {
                self.cursor = None;
                return Ok(());
            }
            let mut cursor = self.open(self.next_table);
            self.next_table += 1;
            cursor.seek_to_first().await?;
            self.cursor = Some(cursor);
        }
        Ok(())
    }

    async fn seek(&mut self, target: &[u8]) -> Result<()> {
        // The first table whose largest key is >= target.
        let index = self.tables.partition_point(|t| compare_internal_keys(&t.meta.largest_key, target).is_lt());
        if index >= self.tables.len() {
            self.cursor = None;
            self.next_table = index;
            return Ok(());
        }
        let mut cursor = self.open(index);
        cursor.seek(target).await?;
        self.cursor = Some(cursor);
        self.next_table = index + 1;
        self.settle().await
    }

    async fn seek_to_first(&mut self) -> Result<()> {
        self.cursor = None;
        self.next_table = 0;
        self.settle().await
    }

    async fn advance(&mut self) -> Result<()> {
        if let Some(cursor) = &mut self.cursor {
            cursor.step().await?;
        }
        self.settle().await
    }

    /// [`TableCursor::step_in_block`] for the open table.
    fn step_in_block(&mut self) -> Result<bool> {
        match &mut self.cursor {
            Some(cursor) => cursor.step_in_block(),
            None => Ok(false),
        }
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.cursor.as_ref().and_then(|c| c.current())
    }

    fn current_value(&self) -> Option<Bytes> {
        self.cursor.as_ref().and_then(|c| c.current_value())
    }
}

/// A cursor over one memtable, backwards.
pub(crate) struct RevMemtableCursor {
    memtable: Arc<Memtable>,
    current: Option<(InternalKey, Bytes)>,
}

impl RevMemtableCursor {
    pub(crate) fn new(memtable: Arc<Memtable>) -> RevMemtableCursor {
        RevMemtableCursor { memtable, current: None }
    }

    fn seek_for_prev(&mut self, target: &[u8]) {
        let key = InternalKey::from_encoded(Bytes::copy_from_slice(target)).expect("seek targets are internal keys");
        self.current = self.memtable.entry_before(Some(&key), true);
    }

    fn seek_to_last(&mut self) {
        self.current = self.memtable.entry_before(None, true);
    }

    fn prev(&mut self) {
        if let Some((key, _)) = self.current.take() {
            self.current = self.memtable.entry_before(Some(&key), false);
        }
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.current.as_ref().map(|(key, value)| (key.encoded(), value.as_ref()))
    }

    fn current_value(&self) -> Option<Bytes> {
        self.current.as_ref().map(|(_, value)| value.clone())
    }
}

/// A cursor over one table, backwards: the index and the current block are
/// decoded into vectors (blocks only chain forwards), blocks come through the cache.
pub(crate) struct RevTableCursor {
    table: Arc<TableFile>,
    /// Index entries: separator and handle, in order (decoded on first use).
    handles: Option<Vec<(Vec<u8>, BlockHandle)>>,
    block: usize,
    entries: Vec<Entry>,
    /// Position in `entries`; `None` when the cursor is exhausted.
    pos: Option<usize>,
}

impl RevTableCursor {
    pub(crate) fn new(table: Arc<TableFile>) -> RevTableCursor {
        RevTableCursor { table, handles: None, block: 0, entries: Vec::new(), pos: None }
    }

    fn handles(&mut self) -> Result<&[(Vec<u8>, BlockHandle)]> {
        if self.handles.is_none() {
            let path = self.table.reader.path().to_path_buf();
            let index = self.table.reader.index();
            let mut iter = index.iter();
            let mut handles = Vec::new();
            while let Some((separator, handle)) = iter.next_entry(&path, index.offset())? {
                let handle = index.decode_handle(&handle, &path)?;
                handles.push((separator, handle));
            }
            self.handles = Some(handles);
        }
        Ok(self.handles.as_deref().expect("just decoded"))
    }

    /// Loads block `index` whole.
    async fn load(&mut self, index: usize) -> Result<()> {
        let handle = self.handles()?[index].1;
        let block = self.table.reader.data_block(handle).await?;
        let path = self.table.reader.path().to_path_buf();
        let mut iter = block.iter();
        self.entries.clear();
        while let Some(entry) = iter.next_entry(&path, handle.offset)? {
            self.entries.push(entry);
        }
        self.block = index;
        Ok(())
    }

    /// From block `index` backwards: the last entry `<= target` (any entry without a target).
    async fn settle_from(&mut self, mut index: usize, target: Option<&[u8]>) -> Result<()> {
        loop {
            self.load(index).await?;
            let count = match target {
                Some(target) => self.entries.partition_point(|(key, _)| compare_internal_keys(key, target).is_le()),
                None => self.entries.len(),
            };
            if count > 0 {
                self.pos = Some(count - 1);
                return Ok(());
            }
            if index == 0 {
                self.pos = None;
                return Ok(());
            }
            index -= 1;
        }
    }

    async fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        let handles = self.handles()?;
        if handles.is_empty() {
            self.pos = None;
            return Ok(());
        }
        // The first block whose separator is >= target holds the last entry <= target, or precedes it.
        let index = handles.partition_point(|(separator, _)| compare_internal_keys(separator, target).is_lt());
        let last = handles.len() - 1;
        self.settle_from(index.min(last), Some(target)).await
    }

    async fn seek_to_last(&mut self) -> Result<()> {
        let count = self.handles()?.len();
        if count == 0 {
            self.pos = None;
            return Ok(());
        }
        self.settle_from(count - 1, None).await
    }

    async fn prev(&mut self) -> Result<()> {
        match self.pos {
            Some(pos) if pos > 0 => self.pos = Some(pos - 1),
            Some(_) if self.block > 0 => self.settle_from(self.block - 1, None).await?,
            _ => self.pos = None,
        }
        Ok(())
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.pos.map(|pos| {
            let (key, value) = &self.entries[pos];
            (key.as_slice(), value.as_ref())
        })
    }

    fn current_value(&self) -> Option<Bytes> {
        self.pos.map(|pos| self.entries[pos].1.clone())
    }
}

/// A cursor over a sorted level, backwards.
pub(crate) struct RevLevelCursor {
    tables: Vec<Arc<TableFile>>,
    /// The table of `cursor`.
    table: usize,
    cursor: Option<RevTableCursor>,
}

impl RevLevelCursor {
    pub(crate) fn new(tables: Vec<Arc<TableFile>>) -> RevLevelCursor {
        RevLevelCursor { tables, table: 0, cursor: None }
    }

    /// Moves to earlier tables until one has an entry (or none is left).
    async fn settle(&mut self) -> Result<()> {
        while self.cursor.as_ref().is_some_and(|c| c.current().is_none()) {
            if self.table == 0 {
                self.cursor = None;
                return Ok(());
            }
            self.table -= 1;
            let mut cursor = RevTableCursor::new(Arc::clone(&self.tables[self.table]));
            cursor.seek_to_last().await?;
            self.cursor = Some(cursor);
        }
        Ok(())
    }

    async fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        // The last table whose smallest key is <= target.
        let after = self.tables.partition_point(|t| compare_internal_keys(&t.meta.smallest_key, target).is_le());
        if after == 0 {
            self.cursor = None;
            return Ok(());
        }
        self.table = after - 1;
        let mut cursor = RevTableCursor::new(Arc::clone(&self.tables[self.table]));
        cursor.seek_for_prev(target).await?;
        self.cursor = Some(cursor);
        self.settle().await
    }

    async fn seek_to_last(&mut self) -> Result<()> {
        let Some(last) = self.tables.len().checked_sub(1) else {
            self.cursor = None;
            return Ok(());
        };
        self.table = last;
        let mut cursor = RevTableCursor::new(Arc::clone(&self.tables[last]));
        cursor.seek_to_last().await?;
        self.cursor = Some(cursor);
        self.settle().await
    }

    async fn prev(&mut self) -> Result<()> {
        if let Some(cursor) = &mut self.cursor {
            cursor.prev().await?;
        }
        self.settle().await
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.cursor.as_ref().and_then(|c| c.current())
    }

    fn current_value(&self) -> Option<Bytes> {
        self.cursor.as_ref().and_then(|c| c.current_value())
    }
}

/// Any cursor the merging iterator can hold. Reverse cursors move backwards:
/// for them `seek` finds the last entry <= the target, `seek_to_first` the
/// last entry, and `advance` steps back.
pub(crate) enum Source {
    Memtable(MemtableCursor),
    Table(TableCursor),
    Level(LevelCursor),
    RevMemtable(RevMemtableCursor),
    RevTable(RevTableCursor),
    RevLevel(RevLevelCursor),
}

impl Source {
    async fn seek(&mut self, target: &[u8]) -> Result<()> {
        match self {
            Source::Memtable(c) => {
                c.seek(target);
                Ok(())
            }
            Source::Table(c) => c.seek(target).await,
            Source::Level(c) => c.seek(target).await,
            Source::RevMemtable(c) => {
                c.seek_for_prev(target);
                Ok(())
            }
            Source::RevTable(c) => c.seek_for_prev(target).await,
            Source::RevLevel(c) => c.seek_for_prev(target).await,
        }
    }

    async fn seek_to_first(&mut self) -> Result<()> {
        match self {
            Source::Memtable(c) => {
                c.seek_to_first();
                Ok(())
            }
            Source::Table(c) => c.seek_to_first().await,
            Source::Level(c) => c.seek_to_first().await,
            Source::RevMemtable(c) => {
                c.seek_to_last();
                Ok(())
            }
            Source::RevTable(c) => c.seek_to_last().await,
            Source::RevLevel(c) => c.seek_to_last().await,
        }
    }

    async fn advance(&mut self) -> Result<()> {
        match self {
            Source::Memtable(c) => {
                c.advance();
                Ok(())
            }
            Source::Table(c) => c.step().await,
            Source::Level(c) => c.advance().await,
            Source::RevMemtable(c) => {
                c.prev();
                Ok(())
            }
            Source::RevTable(c) => c.prev().await,
            Source::RevLevel(c) => c.prev().await,
        }
    }

    /// Advances without waiting when the next entry is at hand (in memory, or
    /// in the current block): true if it did; false if [`Self::advance`] must.
    fn advance_now(&mut self) -> Result<bool> {
        match self {
            Source::Memtable(c) => {
                c.advance();
                Ok(true)
            }
            Source::Table(c) => c.step_in_block(),
            Source::Level(c) => c.step_in_block(),
            Source::RevMemtable(c) => {
                c.prev();
                Ok(true)
            }
            Source::RevTable(_) | Source::RevLevel(_) => Ok(false),
        }
    }

    /// The current entry: its internal key and value.
    fn current(&self) -> Option<(&[u8], &[u8])> {
        match self {
            Source::Memtable(c) => c.current(),
            Source::Table(c) => c.current(),
            Source::Level(c) => c.current(),
            Source::RevMemtable(c) => c.current(),
            Source::RevTable(c) => c.current(),
            Source::RevLevel(c) => c.current(),
        }
    }

    /// The current entry's value as `Bytes` that share its block or batch.
    fn current_value(&self) -> Option<Bytes> {
        match self {
            Source::Memtable(c) => c.current_value(),
            Source::Table(c) => c.current_value(),
            Source::Level(c) => c.current_value(),
            Source::RevMemtable(c) => c.current_value(),
            Source::RevTable(c) => c.current_value(),
            Source::RevLevel(c) => c.current_value(),
        }
    }
}

/// Merges sources into one stream in internal-key order, through a loser
/// tree (a tournament) over the sources' current keys: a step replays one
/// leaf-to-root path, `ceil(log2 k)` comparisons for `k` sources, where a
/// binary heap's sift-down makes two per level. Level 0 alone may bring dozens
/// of sources into a compaction. Sources never hold the same internal key
/// (every write has its own sequence number); ties break by source index.
pub(crate) struct MergingIter {
    sources: Vec<Source>,
    /// The sources are reverse cursors: the merge runs from the largest key down.
    reverse: bool,
    /// Each source's current key, copied in (buffers reused as the sources
    /// move) so that comparing needs no call into the source; `None` when
    /// the source is exhausted, which loses to every key.
    keys: Vec<Option<Vec<u8>>>,
    /// [`user_key_prefix`] of each current key: most matches are settled by
    /// comparing these, without touching the keys. An exhausted source has
    /// the prefix that loses to every other ([`Self::exhausted_prefix`]); a
    /// live key with that same prefix goes to the full comparison, which
    /// knows the difference.
    prefixes: Vec<u128>,
    /// `tree[0]` is the winning source; `tree[p]` for `p` in `1..k` is the
    /// loser of the match at internal node `p`. Source `i` is leaf `k + i`,
    /// node `p`'s parent is `p / 2`.
    tree: Vec<usize>,
}

impl MergingIter {
    pub(crate) fn new(sources: Vec<Source>) -> MergingIter {
        MergingIter::with_direction(sources, false)
    }

    /// A merge of reverse cursors, largest key first.
    pub(crate) fn new_reverse(sources: Vec<Source>) -> MergingIter {
        MergingIter::with_direction(sources, true)
    }

    fn with_direction(sources: Vec<Source>, reverse: bool) -> MergingIter {
        let k = sources.len();
        MergingIter { keys: vec![None; k], prefixes: vec![0; k], tree: vec![0; k.max(1)], sources, reverse }
    }

    fn exhausted_prefix(&self) -> u128 {
        if self.reverse { 0 } else { u128::MAX }
    }

    /// Whether source `a`'s entry comes out before source `b`'s.
    #[inline]
    fn wins(&self, a: usize, b: usize) -> bool {
        let (pa, pb) = (self.prefixes[a], self.prefixes[b]);
        if pa != pb {
            return (pa < pb) != self.reverse;
        }
        match (&self.keys[a], &self.keys[b]) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(x), Some(y)) => {
                let order = compare_internal_keys(x, y);
                if self.reverse { order.then(a.cmp(&b)).is_gt() } else { order.then(a.cmp(&b)).is_lt() }
            }
        }
    }

    /// Copies every source's current key and plays the whole tournament.
    fn rebuild(&mut self) {
        let exhausted = self.exhausted_prefix();
        for (i, source) in self.sources.iter().enumerate() {
            let current = source.current().map(|(key, _)| key);
            self.keys[i] = current.map(<[u8]>::to_vec);
            self.prefixes[i] = current.map_or(exhausted, user_key_prefix);
        }
        let k = self.sources.len();
        if k == 0 {
            return;
        }
        // winners[p]: the winner below internal node p (leaves are k..2k).
        let mut winners = vec![0usize; 2 * k];
        for (i, winner) in winners[k..].iter_mut().enumerate() {
            *winner = i;
        }
        for p in (1..k).rev() {
            let (a, b) = (winners[2 * p], winners[2 * p + 1]);
            let (winner, loser) = if self.wins(b, a) { (b, a) } else { (a, b) };
            winners[p] = winner;
            self.tree[p] = loser;
        }
        self.tree[0] = if k == 1 { 0 } else { winners[1] };
    }

    /// Source `source`'s key changed: replays its path to the root.
    fn replay(&mut self, source: usize) {
        let k = self.sources.len();
        let mut winner = source;
        let mut p = (source + k) / 2;
        while p >= 1 {
            let stored = self.tree[p];
            // Which side wins is as good as random in a merge of overlapping
            // runs: a select, not a branch the CPU would mispredict half the time.
            let stored_wins = self.wins(stored, winner);
            self.tree[p] = std::hint::select_unpredictable(stored_wins, winner, stored);
            winner = std::hint::select_unpredictable(stored_wins, stored, winner);
            p /= 2;
        }
        self.tree[0] = winner;
    }

    /// Positions every source at its first entry >= `target` (an internal key).
    pub(crate) async fn seek(&mut self, target: &[u8]) -> Result<()> {
        for source in &mut self.sources {
            source.seek(target).await?;
        }
        self.rebuild();
        Ok(())
    }

    pub(crate) async fn seek_to_first(&mut self) -> Result<()> {
        for source in &mut self.sources {
            source.seek_to_first().await?;
        }
        self.rebuild();
        Ok(())
    }

    /// The current entry (internal key, value), `None` when every source is exhausted.
    pub(crate) fn current(&self) -> Option<(&[u8], &[u8])> {
        let top = *self.tree.first()?;
        self.keys.get(top)?.as_ref()?;
        self.sources[top].current()
    }

    /// The current entry's value, sharing the memory it is in (no copy).
    pub(crate) fn current_value(&self) -> Option<Bytes> {
        let top = *self.tree.first()?;
        self.keys.get(top)?.as_ref()?;
        self.sources[top].current_value()
    }

    pub(crate) async fn advance(&mut self) -> Result<()> {
        let Some(&top) = self.tree.first() else {
            return Ok(());
        };
        if self.keys.get(top).is_none_or(Option::is_none) {
            return Ok(());
        }
        let source = &mut self.sources[top];
        if !source.advance_now()? {
            source.advance().await?;
        }
        match source.current() {
            Some((key, _)) => {
                let slot = self.keys[top].as_mut().expect("checked above");
                slot.clear();
                slot.extend_from_slice(key);
                self.prefixes[top] = user_key_prefix(key);
            }
            None => {
                self.keys[top] = None;
                self.prefixes[top] = self.exhausted_prefix();
            }
        }
        self.replay(top);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ParsedInternalKey, SeqNo, ValueKind};
    use proptest::prelude::*;

    /// The user key for `key`, in the same order: the upper half gets 16
    /// bytes of 0xff in front, so that their prefixes equal the one an
    /// exhausted source has in a forward merge (0 does in a reverse merge).
    fn user_key(key: u8) -> Vec<u8> {
        if key < 128 {
            vec![key]
        } else {
            let mut long = vec![0xff; 16];
            long.push(key);
            long
        }
    }

    /// Merges memtables (each a source) and returns (user key, seq) in merge order.
    fn merge(runs: &[Vec<(u8, u64)>], reverse: bool) -> Vec<(u8, u64)> {
        let sources = runs
            .iter()
            .map(|run| {
                let memtable = Arc::new(Memtable::new());
                for &(key, seq) in run {
                    memtable.insert(&user_key(key), SeqNo(seq), ValueKind::Put, Bytes::new());
                }
                if reverse {
                    Source::RevMemtable(RevMemtableCursor::new(memtable))
                } else {
                    Source::Memtable(MemtableCursor::new(memtable))
                }
            })
            .collect();
        let mut merged = if reverse { MergingIter::new_reverse(sources) } else { MergingIter::new(sources) };
        futures::executor::block_on(async {
            merged.seek_to_first().await.unwrap();
            let mut out = Vec::new();
            while let Some((key, _)) = merged.current() {
                let parsed = ParsedInternalKey::parse(key).unwrap();
                out.push((*parsed.user_key.last().unwrap(), parsed.seq.0));
                merged.advance().await.unwrap();
            }
            // Advancing past the end stays at the end.
            merged.advance().await.unwrap();
            assert!(merged.current().is_none());
            out
        })
    }

    proptest! {
        #[test]
        fn the_loser_tree_merges_any_runs_in_order(
            // Distinct sequence numbers across runs, as in the engine.
            entries in proptest::collection::btree_map(1u64..10_000, (any::<u8>(), 0usize..70), 0..400),
            runs in 0usize..70,
        ) {
            let runs = runs.max(1);
            let mut split = vec![Vec::new(); runs];
            for (&seq, &(key, run)) in &entries {
                split[run % runs].push((key, seq));
            }
            // Internal-key order: user key ascending, then newest first.
            let mut expected: Vec<(u8, u64)> = entries.iter().map(|(&seq, &(key, _))| (key, seq)).collect();
            expected.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            prop_assert_eq!(merge(&split, false), expected.clone());
            expected.reverse();
            prop_assert_eq!(merge(&split, true), expected);
        }
    }

    #[test]
    fn no_sources_is_an_empty_merge() {
        assert!(merge(&[], false).is_empty());
        assert!(merge(&[], true).is_empty());
    }
}
