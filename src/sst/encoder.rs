//! The encoding half of a table: data blocks into a byte stream, the index
//! entries that point at them, and the filter's key hashes. No I/O.
//!
//! [`TableWriter`](super::table::TableWriter) drives one encoder and writes
//! its stream as it fills. A parallel flush runs several [`PartEncoder`]s on
//! engine threads, each over one key range of the memtable, into staging
//! buffers in memory; the writer then appends the finished parts in key order
//! (`TableWriter::append_part`), shifting their block handles by where each
//! part lands in the file. Offsets here are therefore relative to where the
//! encoder's stream starts.

use super::block::{BlockBuilder, BlockHandle, TRAILER_BYTES, shared_prefix_len};
use super::filter::{BloomBuilder, FilterBits};
use super::stream::Stream;
use super::table::TableOptions;
use crate::io::{AlignedBuf, BufPool};
use crate::key::{ParsedInternalKey, SeqNo, ValueKind, compare_internal_keys};

/// Index entries of finished data blocks: separator keys, back to back, and
/// for each the end of its key in `keys` and its block's handle.
#[derive(Debug, Default)]
pub(crate) struct IndexEntries {
    keys: Vec<u8>,
    entries: Vec<(usize, BlockHandle)>,
}

thread_local! {
    /// The index entries' buffers of the last table encoded on this thread,
    /// reused by the next: a 1M-entry flush grows them to 0.7 MiB each, and
    /// growing them through fresh pages (huge pages, cleared on first touch)
    /// was an eighth of the flush thread's time in `perf`.
    static SPARE_INDEX_KEYS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    static SPARE_INDEX_ENTRIES: std::cell::Cell<Vec<(usize, BlockHandle)>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for IndexEntries {
    fn drop(&mut self) {
        super::keep_spare(&SPARE_INDEX_KEYS, std::mem::take(&mut self.keys));
        super::keep_spare(&SPARE_INDEX_ENTRIES, std::mem::take(&mut self.entries));
    }
}

impl IndexEntries {
    /// No entries, in this thread's spare buffers.
    fn reusing_spares() -> IndexEntries {
        IndexEntries { keys: SPARE_INDEX_KEYS.take(), entries: SPARE_INDEX_ENTRIES.take() }
    }

    fn push(&mut self, separator: &[u8], handle: BlockHandle) {
        self.keys.extend_from_slice(separator);
        self.entries.push((self.keys.len(), handle));
    }

    /// The entries in order: (separator, handle).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], BlockHandle)> {
        let starts = std::iter::once(0).chain(self.entries.iter().map(|&(end, _)| end));
        starts.zip(&self.entries).map(|(start, &(end, handle))| (&self.keys[start..end], handle))
    }
}

/// Builds data blocks, their index entries and the filter's key hashes.
/// Entries must be added in internal-key order.
pub(crate) struct Encoder<B: Stream = Vec<u8>> {
    options: TableOptions,
    /// The stream: finished blocks (and padding) not yet taken, then the open block.
    data: BlockBuilder<B>,
    pub(crate) filter: BloomBuilder,
    /// Bytes produced so far, padding included: the offset of the next block.
    len: u64,
    entries: u64,
    data_blocks: u64,
    /// The first internal key added.
    first_key: Vec<u8>,
    index: IndexEntries,
    /// The handle of the last finished data block, not yet indexed: its
    /// separator waits for the next block's first key.
    pending_index: Option<BlockHandle>,
    /// The last key of the block `pending_index` points at (reused per block).
    pending_last_key: Vec<u8>,
    /// The separator being built (reused per block).
    separator: Vec<u8>,
}

impl Encoder<AlignedBuf> {
    /// Splits off the first `n` finished bytes of the stream, to be written
    /// as they are; the stream goes on in `fresh`.
    pub(crate) fn split_front(&mut self, n: usize, fresh: AlignedBuf) -> AlignedBuf {
        self.data.split_front(n, fresh)
    }
}

impl<B: Stream> Encoder<B> {
    /// An empty encoder; `stream` is a buffer to reuse for the stream.
    pub(crate) fn new(options: TableOptions, stream: B) -> Encoder<B> {
        Encoder {
            data: BlockBuilder::with_buffer(options.block_restart_interval, stream),
            filter: BloomBuilder::new(options.bloom_bits_per_key),
            options,
            len: 0,
            entries: 0,
            data_blocks: 0,
            first_key: Vec::new(),
            index: IndexEntries::reusing_spares(),
            pending_index: None,
            pending_last_key: Vec::new(),
            separator: Vec::new(),
        }
    }

    /// Adds an entry (internal key, value). True if a data block was
    /// finished: the stream may then hold a full staging buffer.
    pub(crate) fn add(&mut self, internal_key: &[u8], value: &[u8]) -> bool {
        let parsed = ParsedInternalKey::parse(internal_key).expect("tables are built from valid internal keys");
        debug_assert!(
            self.data.is_empty() || compare_internal_keys(self.data.last_key(), internal_key).is_lt(),
            "entries must be added in order"
        );
        if self.entries == 0 {
            self.first_key.extend_from_slice(internal_key);
        }
        // The block builder keeps the last key across blocks; the one
        // comparison with it serves both the filter (is this a new user key?)
        // and the block's prefix compression.
        let last_key = self.data.last_key();
        let common = shared_prefix_len(last_key, internal_key);
        let same_user_key = self.entries > 0 && last_key.len() == internal_key.len() && common >= parsed.user_key.len();
        if !same_user_key {
            self.filter.add_key(parsed.user_key);
        }
        let mut finished = false;
        if self.ends_block_before(internal_key, value) {
            self.finish_data_block();
            finished = true;
        }
        if self.data.is_empty() {
            self.pad_to_boundary();
        }
        if let Some(handle) = self.pending_index.take() {
            // The previous block is indexed by a key between its last key and this one.
            shortest_separator_into(&self.pending_last_key, internal_key, &mut self.separator);
            self.index.push(&self.separator, handle);
        }
        self.data.add_with_common(internal_key, value, common);
        self.entries += 1;
        if self.data.estimated_size_bytes() >= self.options.block_size_bytes {
            self.finish_data_block();
            finished = true;
        }
        finished
    }

    /// Whether the current block should end before this entry: the entry
    /// would carry it across the alignment boundary it aims for, and ending
    /// it here leaves little enough padding.
    fn ends_block_before(&self, internal_key: &[u8], value: &[u8]) -> bool {
        let align = self.options.block_align_bytes as u64;
        if align == 0 || self.data.is_empty() {
            return false;
        }
        let start = self.len;
        // The first boundary after the start, or for blocks larger than the
        // alignment the last one the block's target size reaches.
        let target_end = start + (self.options.block_size_bytes + TRAILER_BYTES) as u64;
        // Masks, not divisions: this runs for every entry of a flush, and the
        // two divisions by the (runtime) alignment cost the encoder a fifth
        // of its time (1M entries of 100 bytes: 37 ms against 29 ms).
        debug_assert!(align.is_power_of_two(), "options validate the alignment");
        let round_down = !(align - 1);
        let boundary = ((start & round_down) + align).max(target_end & round_down);
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
        let gap = self.len.next_multiple_of(align) - self.len;
        if gap > 0 && gap <= align / 8 {
            self.pad(gap as usize);
        }
    }

    /// Appends `bytes` zero bytes to the stream (no block may be open).
    pub(crate) fn pad(&mut self, bytes: usize) {
        self.data.output().append_zeros(bytes);
        self.len += bytes as u64;
    }

    /// Closes the current data block. Its index entry waits for the next
    /// block's first key (or the end of the table), to pick a short separator.
    pub(crate) fn finish_data_block(&mut self) {
        if self.data.is_empty() {
            return;
        }
        self.pending_last_key.clear();
        self.pending_last_key.extend_from_slice(self.data.last_key());
        let block_len = self.data.finish_in_place();
        self.pending_index = Some(self.block_handle(block_len));
        self.data_blocks += 1;
    }

    /// Indexes the last data block (if any) by its own last key: nothing follows it.
    pub(crate) fn index_last_block(&mut self) {
        if let Some(handle) = self.pending_index.take() {
            self.index.push(&self.pending_last_key, handle);
        }
    }

    /// The handle of the block of `block_len` bytes (trailer included) just
    /// appended to the stream, which also advances the length past it.
    pub(crate) fn block_handle(&mut self, block_len: usize) -> BlockHandle {
        let block_len = block_len as u64;
        let handle = BlockHandle { offset: self.len, size: block_len - TRAILER_BYTES as u64 };
        self.len += block_len;
        handle
    }

    /// Finished bytes at the front of the stream (before the open block).
    pub(crate) fn finished_bytes(&self) -> &[u8] {
        self.data.finished()
    }

    /// The stream, for appending whole blocks (no data block may be open).
    pub(crate) fn stream(&mut self) -> &mut B {
        self.data.output()
    }

    /// Bytes produced so far (the offset of the next block).
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes if the open block were finished now.
    pub(crate) fn estimated_size_bytes(&self) -> u64 {
        self.len + self.data.estimated_size_bytes() as u64
    }

    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    pub(crate) fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// The index entries so far.
    pub(crate) fn index(&self) -> &IndexEntries {
        &self.index
    }

    /// Appends a finished part (see [`PartEncoder`]) that starts at this
    /// encoder's current length: its index entries and pending block shifted
    /// there, and its counts. The part's keys went into a filter elsewhere
    /// ([`PartEncoder::finish`]). The caller writes the part's bytes.
    pub(crate) fn absorb(&mut self, part: &EncodedPart) {
        assert!(self.data.is_empty(), "parts are appended between blocks");
        if part.entries == 0 {
            return;
        }
        let base = self.len;
        if let Some(handle) = self.pending_index.take() {
            shortest_separator_into(&self.pending_last_key, &part.first_key, &mut self.separator);
            self.index.push(&self.separator, handle);
        }
        let shift = |handle: BlockHandle| BlockHandle { offset: handle.offset + base, size: handle.size };
        for (separator, handle) in part.index.iter() {
            self.index.push(separator, shift(handle));
        }
        self.pending_index = part.pending_index.map(shift);
        self.pending_last_key.clear();
        self.pending_last_key.extend_from_slice(&part.pending_last_key);
        if self.entries == 0 {
            self.first_key.clone_from(&part.first_key);
        }
        self.entries += part.entries;
        self.data_blocks += part.data_blocks;
        self.len = base + part.len;
    }

    pub(crate) fn options(&self) -> &TableOptions {
        &self.options
    }
}

/// One key range of a table, encoded in memory by a [`PartEncoder`].
#[derive(Debug)]
pub(crate) struct EncodedPart {
    /// The part's bytes in buffers, ready to write: all but the last hold
    /// whole multiples of the staging size, and the last is zero-padded to
    /// the part alignment.
    pub(crate) bufs: Vec<AlignedBuf>,
    /// Bytes of the part, padding included (the sum of the buffers' lengths).
    pub(crate) len: u64,
    pub(crate) entries: u64,
    pub(crate) data_blocks: u64,
    first_key: Vec<u8>,
    index: IndexEntries,
    pending_index: Option<BlockHandle>,
    pending_last_key: Vec<u8>,
}

/// Encodes one part of a table into stream buffers from `pool`, each
/// written as it is once full (see `super::stream`).
pub(crate) struct PartEncoder {
    encoder: Encoder<AlignedBuf>,
    pool: BufPool,
    bufs: Vec<AlignedBuf>,
}

impl PartEncoder {
    /// `pool`'s buffers must hold more than `options.staging_buffer_bytes`
    /// (the stream is split once a staging buffer's worth is finished).
    pub(crate) fn new(options: TableOptions, pool: BufPool) -> PartEncoder {
        assert!(
            pool.buf_capacity_bytes() > options.staging_buffer_bytes,
            "stream buffers have room past a staging buffer"
        );
        PartEncoder { encoder: Encoder::new(options, pool.get()), pool, bufs: Vec::new() }
    }

    pub(crate) fn add(&mut self, internal_key: &[u8], value: &[u8]) {
        if self.encoder.add(internal_key, value) {
            self.split_full_buffers();
        }
    }

    /// Splits off every staging buffer's worth of finished bytes.
    fn split_full_buffers(&mut self) {
        let size = self.encoder.options.staging_buffer_bytes;
        let finished = self.encoder.finished_bytes().len();
        if finished >= size {
            // All whole staging sizes at once (see `TableWriter::stage`).
            let buf = self.encoder.split_front(finished / size * size, self.pool.get());
            self.bufs.push(buf);
        }
    }

    /// Finishes the part, its length padded to a multiple of `part_align_bytes`
    /// (a power of two, at most the staging buffer size): the next part starts
    /// there. Its user keys go into `filter`, the table's.
    pub(crate) fn finish(mut self, part_align_bytes: usize, filter: &mut FilterBits) -> EncodedPart {
        let size = self.encoder.options.staging_buffer_bytes;
        assert!(part_align_bytes.is_power_of_two() && size.is_multiple_of(part_align_bytes));
        self.encoder.finish_data_block();
        if self.encoder.entries > 0 {
            let gap = self.encoder.len.next_multiple_of(part_align_bytes as u64) - self.encoder.len;
            self.encoder.pad(gap as usize);
            self.split_full_buffers();
            // What is left ends on the alignment, so every buffer is a whole
            // number of sectors.
            let rest = self.encoder.finished_bytes().len();
            assert!(rest.is_multiple_of(part_align_bytes));
            if rest > 0 {
                let buf = self.encoder.split_front(rest, self.pool.get());
                self.bufs.push(buf);
            }
        }
        let encoder = &mut self.encoder;
        filter.add_hashes(encoder.filter.hashes());
        let part = EncodedPart {
            bufs: std::mem::take(&mut self.bufs),
            len: encoder.len,
            entries: encoder.entries,
            data_blocks: encoder.data_blocks,
            first_key: std::mem::take(&mut encoder.first_key),
            index: std::mem::take(&mut encoder.index),
            pending_index: encoder.pending_index.take(),
            pending_last_key: std::mem::take(&mut encoder.pending_last_key),
        };
        debug_assert_eq!(part.bufs.iter().map(|b| b.len() as u64).sum::<u64>(), part.len);
        part
    }
}

/// [`shortest_separator_into`] into a new vector.
#[cfg(test)]
fn shortest_separator(last: &[u8], next: &[u8]) -> Vec<u8> {
    let mut separator = Vec::new();
    shortest_separator_into(last, next, &mut separator);
    separator
}

/// An internal key `s` with `last <= s < next` (both internal keys, `last < next`),
/// as short as the user keys allow (LevelDB's `FindShortestSeparator`), into
/// `out` (replacing its contents; no allocation once `out` has grown to a
/// key's length): the index holds one per data block, and short separators
/// keep it small. It never lies between two versions of one user key (it
/// is `last` itself or has a user key strictly between theirs): a point
/// lookup reads only the block the index names, and relies on that.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::encode_internal_key;

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

    #[test]
    fn the_next_table_on_a_thread_reuses_the_index_entries_buffers() {
        let key = |i: u32| encode_internal_key(format!("key-{i:08}").as_bytes(), SeqNo(1), ValueKind::Put);
        let mut first = Encoder::new(TableOptions::default(), Vec::new());
        for i in 0..5000 {
            first.add(&key(i), &[1u8; 100]);
        }
        assert!(first.data_blocks() > 100);
        let (keys, entries) = (first.index.keys.as_ptr(), first.index.entries.as_ptr());
        drop(first);
        let second = Encoder::new(TableOptions::default(), Vec::new());
        assert_eq!(second.index().iter().count(), 0, "the reused buffers come back empty");
        assert_eq!((second.index.keys.as_ptr(), second.index.entries.as_ptr()), (keys, entries));
    }

    #[test]
    fn the_filter_gets_each_user_key_once_across_blocks() {
        let put = |user: &[u8], seq: u64| encode_internal_key(user, SeqNo(seq), ValueKind::Put);
        // A user key that is the last one plus the first byte of its
        // trailer: the two internal keys share a prefix as long as the new
        // user key, but are not versions of one key.
        let trailer_lookalike = put(b"a", 1)[..2].to_vec();
        let users: Vec<Vec<u8>> =
            vec![b"a".to_vec(), trailer_lookalike, b"ab".to_vec(), b"abc".to_vec(), b"abd".to_vec(), b"b".to_vec()];
        let mut distinct = BloomBuilder::new(10);
        for user in &users {
            distinct.add_key(user);
        }
        // Blocks of one entry put every version in a block of its own.
        for block_size_bytes in [1, 40, 4096] {
            let options = TableOptions { block_size_bytes, block_align_bytes: 0, ..TableOptions::default() };
            let mut encoder = Encoder::new(options, Vec::new());
            for user in &users {
                for seq in (1..=3).rev() {
                    encoder.add(&put(user, seq), b"value");
                }
            }
            assert_eq!(encoder.filter.hashes(), distinct.hashes(), "block size {block_size_bytes}");
        }
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
}
