//! The block cache: verified data blocks of open tables, shared by every
//! table of a database and bounded in bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::block::Block;
use crate::io::{AlignedBuf, BufPool};

/// Idle read buffers kept for reuse, per size class. A fresh aligned
/// allocation per block read cost ~25% of cold-get throughput (allocators
/// hand back page-aligned blocks as new, faulting pages); evicted blocks
/// return their buffers here.
const MAX_IDLE_READ_BUFFERS: usize = 256;

/// Capacities of the pooled read buffers: a read takes the smallest that
/// holds its span, which it then charges to the cache. One class of "a
/// block plus slack" (12 KiB for 4 KiB blocks) made every cached 4 KiB
/// block pin and charge three times its size, so a cache held a third of
/// the blocks its capacity promised. Most reads of 4 KiB blocks span one
/// page (blocks end on 4 KiB boundaries); larger ones, two or three.
const READ_BUFFER_PAGES: [usize; 3] = [1, 2, 3];

/// Most blocks waiting in [`BlockCache::insert_soon`]; one more inserts them
/// all at once. A QD1 reader leaves one; 32 concurrent gets leave a few.
/// They sit outside the cache's capacity: at most this many read buffers.
const MAX_WAITING_INSERTS: usize = 16;

/// A cached block and the memory it keeps alive.
#[derive(Clone)]
pub(crate) struct CachedBlock {
    pub(crate) block: Block,
    /// Bytes held: the whole aligned read buffer the block's `Bytes` points
    /// into, not just the block, since the buffer lives as long as the block.
    pub(crate) charge_bytes: u64,
}

#[derive(Clone)]
struct ChargeWeighter;

impl quick_cache::Weighter<(u64, u64), CachedBlock> for ChargeWeighter {
    fn weight(&self, _key: &(u64, u64), value: &CachedBlock) -> u64 {
        value.charge_bytes
    }
}

/// Blocks by (table file number, block offset).
pub(crate) struct BlockCache {
    cache: quick_cache::sync::Cache<(u64, u64), CachedBlock, ChargeWeighter>,
    /// Buffers for block reads, by capacity ([`READ_BUFFER_PAGES`]).
    read_buffers: Vec<BufPool>,
    /// Blocks read from the device whose insertion waits for the next read
    /// to be submitted ([`insert_soon`](Self::insert_soon)); `get` finds them.
    waiting: Mutex<Vec<((u64, u64), CachedBlock)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Hit and miss counters of the block cache (`Options::block_cache_size_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCacheStats {
    /// Lookups served from memory.
    pub hits: u64,
    /// Lookups that read the block from the device.
    pub misses: u64,
    /// Bytes currently held.
    pub size_bytes: u64,
    /// The configured capacity.
    pub capacity_bytes: u64,
}

impl BlockCache {
    /// A cache holding up to `capacity_bytes`; blocks of about
    /// `block_size_bytes` are read into pooled buffers of a size that fits them.
    pub(crate) fn new(capacity_bytes: u64, block_size_bytes: usize) -> BlockCache {
        // A block, its trailer and the alignment slack at both ends.
        let largest = (block_size_bytes + 64 + 2 * 4096).next_multiple_of(4096);
        let mut read_buffers: Vec<BufPool> = READ_BUFFER_PAGES
            .iter()
            .map(|pages| pages * 4096)
            .take_while(|bytes| *bytes < largest)
            .map(|bytes| BufPool::new(bytes, 4096, MAX_IDLE_READ_BUFFERS))
            .collect();
        read_buffers.push(BufPool::new(largest, 4096, MAX_IDLE_READ_BUFFERS));
        // The item estimate only sizes the hash tables; blocks are ~4-8 KiB.
        let estimated_items = (capacity_bytes / 4096).clamp(16, 1 << 24) as usize;
        BlockCache {
            cache: quick_cache::sync::Cache::with_weighter(estimated_items, capacity_bytes.max(1), ChargeWeighter),
            read_buffers,
            waiting: Mutex::new(Vec::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, table: u64, offset: u64) -> Option<Block> {
        let found = self.cache.get(&(table, offset)).map(|cached| cached.block).or_else(|| {
            self.waiting().iter().find(|(key, _)| *key == (table, offset)).map(|(_, cached)| cached.block.clone())
        });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    #[cfg(test)]
    pub(crate) fn insert(&self, table: u64, offset: u64, block: Block, charge_bytes: u64) {
        self.cache.insert((table, offset), CachedBlock { block, charge_bytes });
    }

    /// Caches a block just read, but inserts it only at the next
    /// [`insert_waiting`](Self::insert_waiting), which a reader calls once its
    /// own read is submitted: the insertion (about 1 µs with its eviction, on
    /// cold cache lines) then overlaps that read's device time instead of
    /// delaying the get that read the block. Until then `get` finds it here.
    pub(crate) fn insert_soon(&self, table: u64, offset: u64, block: Block, charge_bytes: u64) {
        let full = {
            let mut waiting = self.waiting();
            waiting.push(((table, offset), CachedBlock { block, charge_bytes }));
            (waiting.len() > MAX_WAITING_INSERTS).then(|| std::mem::take(&mut *waiting))
        };
        for (key, cached) in full.into_iter().flatten() {
            self.cache.insert(key, cached);
        }
    }

    /// How many blocks wait to be inserted.
    #[cfg(test)]
    pub(crate) fn waiting_len(&self) -> usize {
        self.waiting().len()
    }

    /// Inserts the blocks [`insert_soon`](Self::insert_soon) left waiting.
    pub(crate) fn insert_waiting(&self) {
        let waiting = std::mem::take(&mut *self.waiting());
        for (key, cached) in waiting {
            self.cache.insert(key, cached);
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Vec<((u64, u64), CachedBlock)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled buffer for a read of `span_bytes` at `alignment`: the
    /// smallest that fits, if one does.
    pub(crate) fn read_buf(&self, span_bytes: usize, alignment: usize) -> Option<AlignedBuf> {
        let pool = self.read_buffers.iter().find(|pool| span_bytes <= pool.buf_capacity_bytes())?;
        pool.alignment().is_multiple_of(alignment).then(|| pool.get())
    }

    pub(crate) fn stats(&self) -> BlockCacheStats {
        let waiting_bytes: u64 = self.waiting().iter().map(|(_, cached)| cached.charge_bytes).sum();
        BlockCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            size_bytes: self.cache.weight() + waiting_bytes,
            capacity_bytes: self.cache.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::path::Path;

    fn block() -> Block {
        let mut builder = super::super::block::BlockBuilder::new(16);
        builder.add(b"k", b"v");
        let mut out = Vec::new();
        builder.finish_into(&mut out);
        let contents = super::super::block::verify_trailer(Bytes::from(out), Path::new("t"), 0).unwrap();
        Block::new(contents, Path::new("t"), 0).unwrap()
    }

    #[test]
    fn a_read_gets_the_smallest_pooled_buffer_that_holds_it() {
        let cache = BlockCache::new(1 << 20, 4096);
        let capacity = |span: usize| cache.read_buf(span, 512).map(|buf| buf.capacity());
        assert_eq!(capacity(512), Some(4096));
        assert_eq!(capacity(4096), Some(4096), "a 4 KiB block charges 4 KiB, not 12");
        assert_eq!(capacity(4608), Some(8192));
        assert_eq!(capacity(12288), Some(12288));
        assert_eq!(capacity(12800), Some(16384), "a block a little over its target, with slack at both ends");
        assert_eq!(capacity(16385), None, "larger reads get a buffer of their own");
        assert_eq!(cache.read_buf(4096, 8192).map(|buf| buf.capacity()), None, "pooled buffers are 4 KiB-aligned");
        // Larger blocks get a class that holds one with its slack.
        let large = BlockCache::new(1 << 20, 64 * 1024);
        assert_eq!(large.read_buf(64 * 1024 + 64 + 8192, 512).map(|buf| buf.capacity()), Some(77824));
    }

    #[test]
    fn counts_hits_and_misses_and_stays_within_its_capacity() {
        let cache = BlockCache::new(64 * 1024, 4096);
        assert!(cache.get(1, 0).is_none());
        cache.insert(1, 0, block(), 4096);
        assert!(cache.get(1, 0).is_some());
        assert!(cache.get(2, 0).is_none(), "keys include the table");
        for offset in 1..100 {
            cache.insert(1, offset * 4096, block(), 4096);
        }
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 2));
        assert!(stats.size_bytes <= 64 * 1024, "{stats:?}");
        assert!(stats.size_bytes >= 8 * 4096, "the cache keeps recent blocks: {stats:?}");
    }

    #[test]
    fn a_block_waiting_to_be_inserted_is_found_and_goes_in_at_the_next_insert_waiting() {
        let cache = BlockCache::new(1 << 20, 4096);
        cache.insert_soon(1, 0, block(), 4096);
        assert_eq!(cache.waiting_len(), 1);
        assert_eq!(cache.cache.weight(), 0, "not in the cache yet");
        assert!(cache.get(1, 0).is_some(), "a get finds it while it waits");
        assert!(cache.get(1, 4096).is_none());
        assert_eq!(cache.stats().size_bytes, 4096, "waiting blocks count as held");
        cache.insert_waiting();
        assert_eq!(cache.waiting_len(), 0);
        assert_eq!(cache.cache.weight(), 4096);
        assert!(cache.get(1, 0).is_some());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.size_bytes), (2, 1, 4096));
    }

    #[test]
    fn no_more_than_the_limit_of_blocks_wait() {
        let cache = BlockCache::new(1 << 20, 4096);
        for offset in 0..MAX_WAITING_INSERTS as u64 {
            cache.insert_soon(1, offset * 4096, block(), 4096);
        }
        assert_eq!(cache.waiting_len(), MAX_WAITING_INSERTS);
        cache.insert_soon(1, 1 << 30, block(), 4096);
        assert_eq!(cache.waiting_len(), 0, "one more inserts them all");
        assert_eq!(cache.cache.weight(), (MAX_WAITING_INSERTS as u64 + 1) * 4096);
        for offset in 0..MAX_WAITING_INSERTS as u64 {
            assert!(cache.get(1, offset * 4096).is_some());
        }
    }
}
