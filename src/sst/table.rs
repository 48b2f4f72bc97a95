//! Writing and reading whole tables (`docs/format/sst.md`).
//!
//! The writer encodes blocks into a byte stream (data blocks are built in
//! place at its end) and hands every full staging
//! buffer (aligned, `staging_buffer_bytes`) to the I/O layer as an O_DIRECT
//! write while it goes on encoding; at most `max_writes_in_flight` buffers
//! are in flight, then it waits for the oldest. The last buffer is padded to
//! the alignment, and `set_len` cuts the file back to the table's exact length.
//!
//! The reader keeps the index and the filter in memory, so a point lookup
//! reads at most one data block (the aligned range around it) from the device.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::block::{Block, BlockBuilder, BlockHandle, FOOTER_BYTES, Footer, TRAILER_BYTES, verify_trailer};
use super::cache::BlockCache;
use super::filter::{BloomBuilder, BloomFilter};
use crate::coding::Reader;
use crate::io::{AlignedBuf, DirectFile, Io};
use crate::key::{InternalKey, ParsedInternalKey, SeqNo, ValueKind, compare_internal_keys};
use crate::memtable::MemtableValue;
use crate::{Error, Result};

/// Name of the filter block in the metaindex.
const FILTER_NAME: &[u8] = b"filter.bloom";

/// How tables are built.
#[derive(Debug, Clone)]
pub(crate) struct TableOptions {
    pub(crate) block_size_bytes: usize,
    pub(crate) block_restart_interval: usize,
    pub(crate) bloom_bits_per_key: usize,
    pub(crate) staging_buffer_bytes: usize,
    pub(crate) max_writes_in_flight: usize,
    /// Data blocks end on multiples of this when that costs at most an
    /// eighth of it in padding (a power of two; 0: never). See
    /// docs/format/sst.md, "Padding between data blocks".
    pub(crate) block_align_bytes: usize,
}

impl Default for TableOptions {
    fn default() -> TableOptions {
        TableOptions {
            block_size_bytes: 4096,
            block_restart_interval: 16,
            bloom_bits_per_key: 10,
            // 1 MiB: with 256 KiB buffers the writer waited for the device
            // for a fifth of a flush (each write into freshly reserved space
            // also pays ext4's unwritten-extent conversion at completion),
            // and wall time was 1.2x the encoding alone; with 1 MiB, 1.06x.
            staging_buffer_bytes: 1024 * 1024,
            max_writes_in_flight: 4,
            block_align_bytes: 4096,
        }
    }
}

/// What a finished table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableInfo {
    pub(crate) size_bytes: u64,
    pub(crate) entries: u64,
    pub(crate) data_blocks: u64,
    /// Time the writer spent waiting for the device (a full set of staging
    /// writes in flight, the last writes, `set_len` and the fdatasync); the
    /// rest of its time was encoding.
    pub(crate) io_wait: std::time::Duration,
}

type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<AlignedBuf>> + Send + 'a>>;

/// Builds one table file. Entries must be added in internal-key order.
pub(crate) struct TableWriter<'f> {
    file: &'f DirectFile,
    options: TableOptions,
    data: BlockBuilder,
    index: BlockBuilder,
    filter: BloomBuilder,
    last_user_key: Vec<u8>,
    /// Table bytes produced so far (the offset of the next block).
    table_len: u64,
    /// File offset of the next staging buffer.
    written_len: u64,
    in_flight: VecDeque<WriteFuture<'f>>,
    entries: u64,
    data_blocks: u64,
    /// Time spent waiting for a write to finish before encoding could go on.
    write_wait: std::time::Duration,
    /// The last key and handle of a finished data block not yet indexed.
    pending_index: Option<BlockHandle>,
    /// The last key of the block `pending_index` points at (reused per block).
    pending_last_key: Vec<u8>,
    /// The separator being built (reused per block).
    separator: Vec<u8>,
    /// An encoded block handle (reused per index entry).
    encoded_handle: Vec<u8>,
}

impl<'f> TableWriter<'f> {
    /// A writer into `file` (new and empty).
    pub(crate) fn new(file: &'f DirectFile, options: TableOptions) -> TableWriter<'f> {
        assert!(options.staging_buffer_bytes.is_multiple_of(file.alignment()), "staging buffers are whole sectors");
        TableWriter {
            file,
            // The data block builder's buffer is the writer's stream: encoded
            // bytes not yet in a staging buffer, the open block at its end.
            data: BlockBuilder::with_buffer(options.block_restart_interval, SPARE_STREAM.take()),
            index: BlockBuilder::new(1),
            filter: BloomBuilder::new(options.bloom_bits_per_key),
            options,
            last_user_key: Vec::new(),
            table_len: 0,
            written_len: 0,
            in_flight: VecDeque::new(),
            entries: 0,
            data_blocks: 0,
            write_wait: std::time::Duration::ZERO,
            pending_index: None,
            pending_last_key: Vec::new(),
            separator: Vec::new(),
            encoded_handle: Vec::new(),
        }
    }

    /// Makes room for `keys` distinct user keys up front (a flush knows its
    /// memtable's entry count): the filter's key hashes then never regrow.
    pub(crate) fn reserve_keys(&mut self, keys: usize) {
        self.filter.reserve(keys);
    }

    /// Adds an entry (internal key, value).
    pub(crate) async fn add(&mut self, internal_key: &[u8], value: &[u8]) -> Result<()> {
        let parsed = ParsedInternalKey::parse(internal_key).expect("tables are built from valid internal keys");
        debug_assert!(
            self.data.is_empty() || compare_internal_keys(self.data.last_key(), internal_key).is_lt(),
            "entries must be added in order"
        );
        if self.entries == 0 || self.last_user_key != parsed.user_key {
            self.filter.add_key(parsed.user_key);
            // Reused, not reallocated: this runs once per entry of a flush.
            self.last_user_key.clear();
            self.last_user_key.extend_from_slice(parsed.user_key);
        }
        if self.ends_block_before(internal_key, value) {
            self.finish_data_block();
            self.stage().await?;
        }
        if self.data.is_empty() {
            self.pad_to_boundary();
        }
        if let Some(handle) = self.pending_index.take() {
            // The previous block is indexed by a key between its last key and this one.
            shortest_separator_into(&self.pending_last_key, internal_key, &mut self.separator);
            add_index_entry(&mut self.index, &self.separator, handle, &mut self.encoded_handle);
        }
        self.data.add(internal_key, value);
        self.entries += 1;
        if self.data.estimated_size_bytes() >= self.options.block_size_bytes {
            self.finish_data_block();
            self.stage().await?;
        }
        Ok(())
    }

    /// Whether the current block should end before this entry: the entry
    /// would carry it across the alignment boundary it aims for, and ending
    /// it here leaves little enough padding.
    fn ends_block_before(&self, internal_key: &[u8], value: &[u8]) -> bool {
        let align = self.options.block_align_bytes as u64;
        if align == 0 || self.data.is_empty() {
            return false;
        }
        let start = self.table_len;
        // The first boundary after the start, or for blocks larger than the
        // alignment the last one the block's target size reaches.
        let target_end = start + (self.options.block_size_bytes + TRAILER_BYTES) as u64;
        let boundary = (start / align + 1).max(target_end / align) * align;
        let end_now = start + (self.data.estimated_size_bytes() + TRAILER_BYTES) as u64;
        if boundary.checked_sub(end_now).is_none_or(|gap| gap > align / 8) {
            return false;
        }
        // Most entries are far from the boundary: a bound (no shared prefix,
        // longest varints, a new restart) decides without comparing keys.
        const MOST_ENTRY_OVERHEAD: usize = 3 * 10 + 4;
        if end_now + (MOST_ENTRY_OVERHEAD + internal_key.len() + value.len()) as u64 <= boundary {
            return false;
        }
        let end_after = start + (self.data.size_after_adding(internal_key, value) + TRAILER_BYTES) as u64;
        end_after > boundary
    }

    /// Before a data block starts: zero padding up to the next alignment
    /// boundary, when that is at most an eighth of the alignment away.
    fn pad_to_boundary(&mut self) {
        let align = self.options.block_align_bytes as u64;
        if align == 0 {
            return;
        }
        let gap = self.table_len.next_multiple_of(align) - self.table_len;
        if gap > 0 && gap <= align / 8 {
            let stream = self.data.output();
            stream.resize(stream.len() + gap as usize, 0);
            self.table_len += gap;
        }
    }

    /// Closes the current data block. Its index entry waits for the next
    /// block's first key (or the end of the table), to pick a short separator.
    fn finish_data_block(&mut self) {
        if self.data.is_empty() {
            return;
        }
        self.pending_last_key.clear();
        self.pending_last_key.extend_from_slice(self.data.last_key());
        let block_len = self.data.finish_in_place();
        self.pending_index = Some(self.block_handle(block_len));
        self.data_blocks += 1;
    }

    /// The handle of the block of `block_len` bytes (trailer included) just
    /// appended to the stream, which also advances the table length past it.
    fn block_handle(&mut self, block_len: usize) -> BlockHandle {
        let block_len = block_len as u64;
        let handle = BlockHandle { offset: self.table_len, size: block_len - TRAILER_BYTES as u64 };
        self.table_len += block_len;
        handle
    }

    /// Hands every full staging buffer to the kernel, waiting for the oldest write
    /// when `max_writes_in_flight` are out.
    async fn stage(&mut self) -> Result<()> {
        let size = self.options.staging_buffer_bytes;
        while self.data.output().len() >= size {
            // Recycled: a fresh 1 MiB buffer per write cost an allocation and
            // its page faults.
            let mut buf = self.file.pooled_buf(size);
            let stream = self.data.output();
            buf.extend_from_slice(&stream[..size]);
            stream.drain(..size);
            self.submit(buf).await?;
        }
        Ok(())
    }

    async fn submit(&mut self, buf: AlignedBuf) -> Result<()> {
        if self.in_flight.len() >= self.options.max_writes_in_flight.max(1) {
            let oldest = self.in_flight.pop_front().expect("non-empty");
            let waiting_since = std::time::Instant::now();
            oldest.await?;
            self.write_wait += waiting_since.elapsed();
        }
        let offset = self.written_len;
        self.written_len += buf.len() as u64;
        let mut write: WriteFuture<'f> = Box::pin(self.file.write_at(buf, offset));
        // Poll once so the write is submitted now and runs while we keep encoding.
        if let Some(done) = poll_once(&mut write) {
            done?;
        } else {
            self.in_flight.push_back(write);
        }
        Ok(())
    }

    /// Bytes the table would have if finished now (close to it: the filter,
    /// index and footer are not counted). Compaction splits outputs on it.
    pub(crate) fn estimated_size_bytes(&self) -> u64 {
        self.table_len + self.data.estimated_size_bytes() as u64
    }

    /// Writes the filter, metaindex, index and footer, waits for every write,
    /// restores the exact length and fdatasyncs the file.
    pub(crate) async fn finish(mut self) -> Result<TableInfo> {
        self.finish_data_block();
        if let Some(handle) = self.pending_index.take() {
            add_index_entry(&mut self.index, &self.pending_last_key, handle, &mut self.encoded_handle);
        }
        let stream = self.data.output();
        let before = stream.len();
        std::mem::replace(&mut self.filter, BloomBuilder::new(1)).finish_into(stream);
        super::block::append_trailer(stream, before);
        let filter_len = stream.len() - before;
        let filter_handle = self.block_handle(filter_len);

        let mut metaindex = BlockBuilder::new(1);
        let mut encoded = Vec::new();
        filter_handle.encode_to(&mut encoded);
        metaindex.add(FILTER_NAME, &encoded);
        let stream = self.data.output();
        let before = stream.len();
        metaindex.finish_into(stream);
        let metaindex_len = stream.len() - before;
        let metaindex_handle = self.block_handle(metaindex_len);

        let stream = self.data.output();
        let before = stream.len();
        self.index.finish_into(stream);
        let index_len = stream.len() - before;
        let index_handle = self.block_handle(index_len);

        let footer = Footer { metaindex: metaindex_handle, index: index_handle }.encode();
        self.data.output().extend_from_slice(&footer);
        self.table_len += FOOTER_BYTES as u64;
        self.stage().await?;
        let stream = self.data.output();
        if !stream.is_empty() {
            let mut buf = self.file.pooled_buf(stream.len());
            buf.extend_from_slice(stream);
            buf.pad_to_alignment();
            stream.clear();
            self.submit(buf).await?;
        }
        let waiting_since = std::time::Instant::now();
        while let Some(write) = self.in_flight.pop_front() {
            write.await?;
        }
        // The last write was padded to the alignment: cut the padding off.
        self.file.set_len(self.table_len).await?;
        self.file.sync_data().await?;
        self.write_wait += waiting_since.elapsed();
        Ok(TableInfo {
            size_bytes: self.table_len,
            entries: self.entries,
            data_blocks: self.data_blocks,
            io_wait: self.write_wait,
        })
    }
}

thread_local! {
    /// The encode stream of the last table written on this thread, reused by
    /// the next (it grows to a staging buffer plus the filter and index
    /// blocks, memory that is slow to touch fresh; see `DirectFile::pooled_buf`).
    static SPARE_STREAM: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for TableWriter<'_> {
    fn drop(&mut self) {
        let stream = std::mem::replace(&mut self.data, BlockBuilder::new(1)).into_buffer();
        super::keep_spare(&SPARE_STREAM, stream);
    }
}

/// An internal key `s` with `last <= s < next` (both internal keys, `last < next`),
/// as short as the user keys allow (LevelDB's `FindShortestSeparator`): the
/// index holds one per data block, and short separators keep it small.
#[cfg(test)]
fn shortest_separator(last: &[u8], next: &[u8]) -> Vec<u8> {
    let mut separator = Vec::new();
    shortest_separator_into(last, next, &mut separator);
    separator
}

/// [`shortest_separator`] into `out` (replacing its contents; no allocation
/// once `out` has grown to a key's length).
fn shortest_separator_into(last: &[u8], next: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let (Some(a), Some(b)) = (ParsedInternalKey::parse(last), ParsedInternalKey::parse(next)) else {
        unreachable!("table keys are valid internal keys");
    };
    let (a, b) = (a.user_key, b.user_key);
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if common < a.len().min(b.len()) {
        let byte = a[common];
        if byte < 0xff && byte + 1 < b[common] {
            // The first internal key of `a[..=common]` with its last byte
            // raised: after every entry of `a` (a smaller user key), before
            // every entry of `b` (a larger one).
            crate::key::encode_internal_key_to(out, &a[..=common], SeqNo::MAX, ValueKind::MAX);
            out[common] += 1;
            debug_assert!(compare_internal_keys(last, out).is_lt());
            debug_assert!(compare_internal_keys(out, next).is_lt());
            return;
        }
    }
    out.extend_from_slice(last);
}

/// Adds the index entry `separator -> handle`, the handle encoded in `scratch`
/// (reused: no allocation per data block).
fn add_index_entry(index: &mut BlockBuilder, separator: &[u8], handle: BlockHandle, scratch: &mut Vec<u8>) {
    scratch.clear();
    handle.encode_to(scratch);
    index.add(separator, scratch);
}

/// Polls a future once with a no-op waker; `Some` if it finished.
fn poll_once<T>(future: &mut Pin<Box<dyn Future<Output = T> + Send + '_>>) -> Option<T> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

/// An open table: index and filter pinned in memory.
pub(crate) struct TableReader {
    /// The table's file number: its key in the block cache.
    id: u64,
    cache: Option<Arc<BlockCache>>,
    file: DirectFile,
    path: PathBuf,
    size_bytes: u64,
    index: Block,
    filter: Bytes,
}

impl TableReader {
    /// Opens a table, reading and verifying its footer, metaindex, filter and
    /// index. Data blocks go through `cache` (keyed by `id`) when there is one.
    pub(crate) async fn open(io: &Io, path: &Path, id: u64, cache: Option<Arc<BlockCache>>) -> Result<TableReader> {
        let file = DirectFile::open_read_only(io, path).await?;
        let size_bytes = file.len()?;
        let corrupt = |offset: u64, reason: String| Error::Corruption { file: path.to_path_buf(), offset, reason };
        if size_bytes < FOOTER_BYTES as u64 {
            return Err(corrupt(0, format!("file of {size_bytes} bytes is too short for a table")));
        }
        let (footer_bytes, _) = read_range(&file, size_bytes - FOOTER_BYTES as u64, FOOTER_BYTES, None).await?;
        let footer = Footer::decode(&footer_bytes, path, size_bytes)?;
        let source = BlockSource { pool: None, file: &file, path, size_bytes };
        let (metaindex, _) = source.read_block(footer.metaindex).await?;
        let mut filter_handle = None;
        let mut iter = metaindex.iter();
        while let Some((name, value)) = iter.next_entry(path, footer.metaindex.offset)? {
            if name == FILTER_NAME {
                let handle = BlockHandle::decode_from(&mut Reader::new(&value))
                    .ok_or_else(|| corrupt(footer.metaindex.offset, "malformed filter handle".into()))?;
                filter_handle = Some(handle);
            }
        }
        // A table without a filter is readable; every lookup then reads a block.
        let filter = match filter_handle {
            Some(handle) => source.read_block_bytes(handle).await?.0,
            None => Bytes::new(),
        };
        let (index, _) = source.read_block(footer.index).await?;
        index.validate_internal_keys(path, footer.index.offset)?;
        Ok(TableReader { id, cache, path: path.to_path_buf(), size_bytes, index, filter, file })
    }

    /// The table's size in bytes.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The table's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &DirectFile {
        &self.file
    }

    /// The pinned index block: one entry per data block, keyed by a separator.
    pub(crate) fn index(&self) -> &Block {
        &self.index
    }

    fn source(&self) -> BlockSource<'_> {
        BlockSource { pool: None, file: &self.file, path: &self.path, size_bytes: self.size_bytes }
    }

    /// The newest entry for `user_key` visible at `snapshot`, if this table has one.
    pub(crate) async fn get(&self, user_key: &[u8], snapshot: SeqNo) -> Result<Option<MemtableValue>> {
        if !BloomFilter::from_block(&self.filter).may_contain(user_key) {
            return Ok(None);
        }
        let lookup = InternalKey::lookup(user_key, snapshot);
        let Some((_, handle_bytes)) = self.index.seek(lookup.encoded(), compare_internal_keys, &self.path, 0)? else {
            return Ok(None);
        };
        let handle = BlockHandle::decode_from(&mut Reader::new(&handle_bytes)).ok_or_else(|| Error::Corruption {
            file: self.path.clone(),
            offset: 0,
            reason: "malformed block handle in the index".into(),
        })?;
        let block = self.data_block(handle).await?;
        let Some((key, value)) = block.seek(lookup.encoded(), compare_internal_keys, &self.path, handle.offset)? else {
            return Ok(None);
        };
        let parsed = ParsedInternalKey::parse(&key).ok_or_else(|| Error::Corruption {
            file: self.path.clone(),
            offset: handle.offset,
            reason: "malformed internal key in a data block".into(),
        })?;
        if parsed.user_key != user_key {
            return Ok(None);
        }
        Ok(Some(match parsed.kind {
            ValueKind::Put => MemtableValue::Put(value),
            ValueKind::Delete => MemtableValue::Deleted,
        }))
    }
}

impl TableReader {
    /// A data block from the cache, or read from the device (and cached).
    pub(crate) async fn data_block(&self, handle: BlockHandle) -> Result<Block> {
        let Some(cache) = &self.cache else {
            return self.source().read_block(handle).await.map(|(block, _)| block);
        };
        if let Some(block) = cache.get(self.id, handle.offset) {
            return Ok(block);
        }
        let source = BlockSource { pool: Some(cache), ..self.source() };
        let (block, charge_bytes) = source.read_block(handle).await?;
        cache.insert(self.id, handle.offset, block.clone(), charge_bytes);
        Ok(block)
    }
}

/// Reads verified blocks of one table file.
struct BlockSource<'a> {
    /// Where read buffers come from, when there is a cache to return them to.
    pool: Option<&'a BlockCache>,
    file: &'a DirectFile,
    path: &'a Path,
    size_bytes: u64,
}

impl BlockSource<'_> {
    /// The verified block contents, and the bytes of the read buffer they keep alive.
    async fn read_block_bytes(&self, handle: BlockHandle) -> Result<(Bytes, u64)> {
        let end = handle.offset.checked_add(handle.size).and_then(|end| end.checked_add(TRAILER_BYTES as u64));
        let Some(end) = end.filter(|end| *end <= self.size_bytes) else {
            return Err(Error::Corruption {
                file: self.path.to_path_buf(),
                offset: handle.offset,
                reason: format!("block handle {handle:?} points outside the {}-byte table", self.size_bytes),
            });
        };
        let (raw, charge_bytes) =
            read_range(self.file, handle.offset, (end - handle.offset) as usize, self.pool).await?;
        Ok((verify_trailer(raw, self.path, handle.offset)?, charge_bytes))
    }

    async fn read_block(&self, handle: BlockHandle) -> Result<(Block, u64)> {
        let (contents, charge_bytes) = self.read_block_bytes(handle).await?;
        Ok((Block::new(contents, self.path, handle.offset)?, charge_bytes))
    }
}

/// Reads `len` bytes at `offset` through an aligned read of the range around
/// them; also returns the size of that aligned read (the buffer the bytes keep alive).
async fn read_range(file: &DirectFile, offset: u64, len: usize, pool: Option<&BlockCache>) -> Result<(Bytes, u64)> {
    let align = file.alignment() as u64;
    let start = offset / align * align;
    let end = (offset + len as u64).next_multiple_of(align);
    let span = (end - start) as usize;
    let buf = pool.and_then(|pool| pool.read_buf(span, file.alignment())).unwrap_or_else(|| file.alloc_buf(span));
    let charge_bytes = buf.capacity() as u64;
    let buf = file.read_at(buf, start, span).await?;
    let skip = (offset - start) as usize;
    if buf.len() < skip + len {
        return Err(Error::Corruption {
            file: file.path().to_path_buf(),
            offset,
            reason: format!("wanted {len} bytes, the file ends first"),
        });
    }
    Ok((buf.into_bytes().slice(skip..skip + len), charge_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoOptions;
    use crate::key::encode_internal_key;
    use std::collections::BTreeMap;

    #[test]
    fn separators_are_short_and_between_their_neighbours() {
        let key = |user: &[u8], seq: u64| encode_internal_key(user, SeqNo(seq), ValueKind::Put);
        let sep = shortest_separator(&key(b"key-00123-suffix", 9), &key(b"key-00456", 3));
        assert_eq!(ParsedInternalKey::parse(&sep).unwrap().user_key, b"key-002");
        // Adjacent bytes, a prefix, equal user keys: nothing shorter fits.
        for (a, b) in [(&b"abc"[..], &b"abd"[..]), (b"ab", b"abc"), (b"a\xff", b"b")] {
            assert_eq!(shortest_separator(&key(a, 1), &key(b, 1)), key(a, 1));
        }
        assert_eq!(shortest_separator(&key(b"same", 9), &key(b"same", 2)), key(b"same", 9));
    }

    proptest::proptest! {
        #[test]
        fn separator_lies_between_any_ordered_pair(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..12),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..12),
            sa in 0u64..100, sb in 0u64..100,
        ) {
            let (x, y) = (encode_internal_key(&a, SeqNo(sa), ValueKind::Put), encode_internal_key(&b, SeqNo(sb), ValueKind::Delete));
            let (last, next) = match compare_internal_keys(&x, &y) {
                std::cmp::Ordering::Less => (x, y),
                std::cmp::Ordering::Greater => (y, x),
                std::cmp::Ordering::Equal => return Ok(()),
            };
            let sep = shortest_separator(&last, &next);
            proptest::prop_assert!(compare_internal_keys(&last, &sep).is_le());
            proptest::prop_assert!(compare_internal_keys(&sep, &next).is_lt());
            proptest::prop_assert!(sep.len() <= last.len());
        }
    }

    /// (user key, seq) -> Some(value) for puts, None for deletes.
    type Model = BTreeMap<(Vec<u8>, std::cmp::Reverse<u64>), Option<Vec<u8>>>;

    fn model(n: usize, seed: u64) -> Model {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Model::new();
        for seq in 1..=n as u64 {
            let key = format!("key-{:05}", rng.gen_range(0..n / 2 + 1)).into_bytes();
            let value = if rng.gen_bool(0.85) {
                Some((0..rng.gen_range(0..120)).map(|_| rng.r#gen::<u8>()).collect())
            } else {
                None
            };
            model.insert((key, std::cmp::Reverse(seq)), value);
        }
        model
    }

    async fn write_table(io: &Io, path: &Path, model: &Model, options: TableOptions) -> TableInfo {
        let file = DirectFile::create(io, path).await.unwrap();
        let mut writer = TableWriter::new(&file, options);
        for ((key, seq), value) in model {
            let kind = if value.is_some() { ValueKind::Put } else { ValueKind::Delete };
            let ikey = encode_internal_key(key, SeqNo(seq.0), kind);
            writer.add(&ikey, value.as_deref().unwrap_or(&[])).await.unwrap();
        }
        writer.finish().await.unwrap()
    }

    fn expected(model: &Model, key: &[u8], snapshot: u64) -> Option<Option<Vec<u8>>> {
        model
            .range((key.to_vec(), std::cmp::Reverse(snapshot))..)
            .next()
            .filter(|((k, _), _)| k == key)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn tables_round_trip_for_every_block_size_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            for (i, (block, interval, align)) in
                [(256usize, 1usize, 0usize), (4096, 16, 4096), (16384, 3, 4096), (1 << 20, 64, 0), (1000, 5, 512)]
                    .into_iter()
                    .enumerate()
            {
                let model = model(3000, i as u64);
                let path = dir.path().join(format!("{i:06}.sst"));
                let options = TableOptions {
                    block_size_bytes: block,
                    block_restart_interval: interval,
                    staging_buffer_bytes: 64 * 1024,
                    block_align_bytes: align,
                    ..TableOptions::default()
                };
                let info = write_table(&io, &path, &model, options).await;
                assert_eq!(std::fs::metadata(&path).unwrap().len(), info.size_bytes, "exact length restored");
                assert_eq!(info.entries, 3000);
                let cache = Arc::new(BlockCache::new(64 << 20, 4096));
                let table = TableReader::open(&io, &path, 1, Some(Arc::clone(&cache))).await.unwrap();
                for n in (0..1501).step_by(7) {
                    let key = format!("key-{n:05}").into_bytes();
                    for snapshot in [0u64, 500, 1500, 3000, SeqNo::MAX.0] {
                        let got = table.get(&key, SeqNo(snapshot)).await.unwrap();
                        let want = expected(&model, &key, snapshot).map(|v| match v {
                            Some(v) => MemtableValue::Put(Bytes::from(v)),
                            None => MemtableValue::Deleted,
                        });
                        assert_eq!(got, want, "block {block}: key {n} at {snapshot}");
                    }
                }
                assert_eq!(table.get(b"absent", SeqNo::MAX).await.unwrap(), None);
                let stats = cache.stats();
                // Five snapshots per key: the later lookups of a key find its block cached.
                assert!(stats.hits > stats.misses && stats.misses > 0, "{stats:?}");
            }
        });
    }

    /// The data block handles of a table, in file order.
    fn data_block_handles(table: &TableReader) -> Vec<BlockHandle> {
        let mut handles = Vec::new();
        let mut index = table.index().iter();
        while let Some((_, handle)) = index.next_entry(table.path(), 0).unwrap() {
            handles.push(BlockHandle::decode_from(&mut crate::coding::Reader::new(&handle)).unwrap());
        }
        handles
    }

    /// Bytes of padding before each data block after the first.
    fn gaps(handles: &[BlockHandle]) -> Vec<u64> {
        handles.windows(2).map(|w| w[1].offset - (w[0].offset + w[0].size + TRAILER_BYTES as u64)).collect()
    }

    #[test]
    fn data_blocks_end_on_page_boundaries_when_padding_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            for (i, value_len, align) in [(0, 100, 4096), (1, 100, 0), (2, 1000, 4096), (3, 9000, 4096), (4, 40, 512)] {
                let mut model = Model::new();
                for n in 0..3000u64 {
                    let key = format!("user-key-{n:07}").into_bytes();
                    model.insert((key, std::cmp::Reverse(n + 1)), Some(vec![n as u8; value_len]));
                }
                let path = dir.path().join(format!("{i:06}.sst"));
                let options = TableOptions { block_align_bytes: align, ..TableOptions::default() };
                write_table(&io, &path, &model, options).await;
                let table = TableReader::open(&io, &path, 1, None).await.unwrap();
                let handles = data_block_handles(&table);
                let gaps = gaps(&handles);
                let straddling = handles
                    .iter()
                    .filter(|h| align > 0 && h.offset / align as u64 != (h.offset + h.size + 4) / align as u64)
                    .count();
                match (value_len, align) {
                    (_, 0) => assert!(gaps.iter().all(|g| *g == 0), "no alignment, no padding: {gaps:?}"),
                    // Small entries: every block starts on a boundary (with 4 KiB
                    // blocks and pages: sits inside one page), and little is padding.
                    (100 | 40, _) => {
                        assert!(handles.iter().all(|h| h.offset % align as u64 == 0), "value {value_len}");
                        if align == 4096 {
                            assert_eq!(straddling, 0, "value {value_len}");
                        }
                        assert!(gaps.iter().all(|g| *g <= align as u64 / 8), "{gaps:?}");
                        assert!(gaps.iter().any(|g| *g > 0), "some blocks end early");
                        let padding: u64 = gaps.iter().sum();
                        let size = std::fs::metadata(&path).unwrap().len();
                        assert!(padding * 20 < size, "padding {padding} of {size} bytes");
                    }
                    // Entries too large to fit whole pages well: at most an
                    // eighth of the alignment is ever spent on padding.
                    _ => assert!(gaps.iter().all(|g| *g <= align as u64 / 8), "{gaps:?}"),
                }
                for n in (0..3000u64).step_by(7) {
                    let got = table.get(format!("user-key-{n:07}").as_bytes(), SeqNo::MAX).await.unwrap();
                    assert_eq!(
                        got,
                        Some(MemtableValue::Put(Bytes::from(vec![n as u8; value_len]))),
                        "table {i} key {n}"
                    );
                }
            }
        });
    }

    #[test]
    fn large_values_and_tiny_keys() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let mut model = Model::new();
            model.insert((b"a".to_vec(), std::cmp::Reverse(1)), Some(vec![7u8; 100_000]));
            model.insert((b"b".to_vec(), std::cmp::Reverse(2)), Some(Vec::new()));
            model.insert((vec![b'c'; 2000], std::cmp::Reverse(3)), Some(b"x".to_vec()));
            let path = dir.path().join("big.sst");
            write_table(&io, &path, &model, TableOptions::default()).await;
            let table = TableReader::open(&io, &path, 2, None).await.unwrap();
            assert_eq!(
                table.get(b"a", SeqNo::MAX).await.unwrap(),
                Some(MemtableValue::Put(Bytes::from(vec![7u8; 100_000])))
            );
            assert_eq!(table.get(b"b", SeqNo::MAX).await.unwrap(), Some(MemtableValue::Put(Bytes::new())));
            assert_eq!(
                table.get(&[b'c'; 2000], SeqNo::MAX).await.unwrap(),
                Some(MemtableValue::Put(Bytes::from_static(b"x")))
            );
        });
    }

    #[test]
    fn damaged_tables_are_corruption_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let model = model(500, 9);
            let path = dir.path().join("good.sst");
            let info =
                write_table(&io, &path, &model, TableOptions { block_size_bytes: 512, ..TableOptions::default() })
                    .await;
            let good = std::fs::read(&path).unwrap();
            let bad = dir.path().join("bad.sst");
            let mut rng = 0x1234_5678u64;
            for round in 0..300 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut bytes = good.clone();
                match round % 3 {
                    0 => bytes.truncate((rng % info.size_bytes) as usize),
                    1 => {
                        let at = (rng % info.size_bytes) as usize;
                        bytes[at] ^= 1 << (rng % 8);
                    }
                    _ => {
                        let at = (rng % info.size_bytes) as usize;
                        let end = (at + 64).min(bytes.len());
                        bytes[at..end].fill(0);
                    }
                }
                std::fs::write(&bad, &bytes).unwrap();
                let table = match TableReader::open(&io, &bad, 3, None).await {
                    Ok(table) => table,
                    Err(Error::Corruption { .. }) => continue,
                    Err(other) => panic!("round {round}: unexpected {other}"),
                };
                for n in (0..251).step_by(5) {
                    match table.get(format!("key-{n:05}").as_bytes(), SeqNo::MAX).await {
                        Ok(_) | Err(Error::Corruption { .. }) => {}
                        Err(other) => panic!("round {round}: unexpected {other}"),
                    }
                }
            }
        });
    }
}
