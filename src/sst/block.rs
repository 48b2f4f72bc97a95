//! Blocks of an SST file (`docs/format/sst.md`): the prefix-compressed entry
//! encoding shared by data, index and metaindex blocks, block trailers, block
//! handles and the footer.

use std::cmp::Ordering;
use std::path::Path;

use bytes::Bytes;

use super::stream::{ENTRY_HEADER_BYTES, Stream};
use crate::coding::{Reader, put_u32, put_varint, varint_len, write_varint};
use crate::io::AlignedBuf;
use crate::{Error, Result};

/// Bytes after every block: type (1) + crc (4).
pub(crate) const TRAILER_BYTES: usize = 5;
/// Block type of an uncompressed block, the only one of version 1.
pub(crate) const BLOCK_TYPE_PLAIN: u8 = 0;
/// Size of the footer at the end of a table.
pub(crate) const FOOTER_BYTES: usize = 48;
/// `RINGSST1` as it appears on disk.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"RINGSST1");
/// The table format this code writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The longest key of a block entry: an internal key of the longest user key.
const MAX_ENTRY_KEY_BYTES: usize = crate::batch::MAX_KEY_BYTES + crate::key::TRAILER_LEN;

/// Builds one block. Keys must be added in increasing order (the caller's order:
/// internal keys in data blocks, separators in the index, names in the metaindex).
///
/// The block is encoded at the end of the builder's buffer, after whatever the
/// buffer already holds: a table writer keeps its output stream there, so each
/// data block is finished in place (no copy into the stream; that copy was 7%
/// of a flush). The buffer is a `Vec<u8>`, or the aligned buffer that the
/// table writer then writes as it is (see `super::stream`).
#[derive(Debug)]
pub(crate) struct BlockBuilder<B: Stream = Vec<u8>> {
    /// Earlier output (see [`output`](Self::output)), then the block being built.
    buf: B,
    /// Where the block being built starts in `buf` (set by its first entry).
    block_start: usize,
    /// Restart offsets, relative to `block_start`.
    restarts: Vec<u32>,
    restart_interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    /// A builder with a restart point every `restart_interval` entries (>= 1).
    pub(crate) fn new(restart_interval: usize) -> BlockBuilder {
        BlockBuilder::with_buffer(restart_interval, Vec::new())
    }
}

impl BlockBuilder<AlignedBuf> {
    /// Splits off the first `n` bytes of [`finished`](Self::finished) output,
    /// which may be done while a block is open: they are returned (`len`
    /// `n`), and the builder goes on in `fresh` with the bytes after them.
    pub(crate) fn split_front(&mut self, n: usize, mut fresh: AlignedBuf) -> AlignedBuf {
        assert!(n <= self.finished().len(), "only finished output is split off");
        fresh.clear();
        fresh.append(&self.buf[n..]);
        let mut front = std::mem::replace(&mut self.buf, fresh);
        front.set_len(n);
        if self.entries > 0 {
            self.block_start -= n;
        }
        front
    }
}

impl<B: Stream> BlockBuilder<B> {
    /// A builder whose output buffer is `buf` (cleared; its allocation is reused).
    pub(crate) fn with_buffer(restart_interval: usize, mut buf: B) -> BlockBuilder<B> {
        buf.truncate(0);
        BlockBuilder::appending_to(restart_interval, buf)
    }

    /// A builder whose block goes after what `buf` already holds (kept as
    /// finished output): a large block built in place, without a buffer of
    /// its own to grow and copy out of.
    pub(crate) fn appending_to(restart_interval: usize, buf: B) -> BlockBuilder<B> {
        assert!(restart_interval >= 1, "restart interval must be positive");
        BlockBuilder {
            buf,
            block_start: 0,
            restarts: vec![0],
            restart_interval,
            since_restart: 0,
            last_key: Vec::new(),
            entries: 0,
        }
    }

    /// Appends an entry; `key` must sort after the previous key.
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        let common = shared_prefix_len(&self.last_key, key);
        self.add_with_common(key, value, common);
    }

    /// [`add`](Self::add) for a caller that has already compared `key` with
    /// [`last_key`](Self::last_key): `common` is the length of their common
    /// prefix. A table's encoder needs that length itself (to tell a new user
    /// key from another version of the last one), and one comparison per
    /// entry instead of two (and no copy of the user key) took 9% off the
    /// encoder's instructions (callgrind: 560 against 511 per entry).
    pub(crate) fn add_with_common(&mut self, key: &[u8], value: &[u8], common: usize) {
        debug_assert_eq!(common, shared_prefix_len(&self.last_key, key));
        if self.entries == 0 {
            self.block_start = self.buf.len();
        }
        let shared = if self.since_restart == self.restart_interval {
            let offset = self.buf.len() - self.block_start;
            self.restarts.push(u32::try_from(offset).expect("blocks stay far below 4 GiB"));
            self.since_restart = 0;
            0
        } else if self.entries == 0 {
            0
        } else {
            common
        };
        let mut header = [0u8; ENTRY_HEADER_BYTES];
        let mut n = write_varint(&mut header, 0, shared as u64);
        n = write_varint(&mut header, n, (key.len() - shared) as u64);
        n = write_varint(&mut header, n, value.len() as u64);
        self.buf.append_entry(&header, n, &key[shared..], value);
        // Only the tail past the common prefix changes, even where the block
        // stores the key whole (a restart point).
        self.last_key.truncate(common);
        self.last_key.extend_from_slice(&key[common..]);
        self.since_restart += 1;
        self.entries += 1;
    }

    /// Whether nothing was added since the last reset.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Size of the block if finished now, trailer excluded.
    pub(crate) fn estimated_size_bytes(&self) -> usize {
        let entries_bytes = if self.entries == 0 { 0 } else { self.buf.len() - self.block_start };
        entries_bytes + 4 * self.restarts.len() + 4
    }

    /// The size (trailer excluded) the block would have after `add(key, value)`.
    pub(crate) fn size_after_adding(&self, key: &[u8], value: &[u8]) -> usize {
        let (shared, new_restart) = if self.since_restart == self.restart_interval {
            (0, 4)
        } else if self.entries == 0 {
            (0, 0)
        } else {
            (shared_prefix_len(&self.last_key, key), 0)
        };
        let unshared = key.len() - shared;
        self.estimated_size_bytes()
            + new_restart
            + varint_len(shared as u64)
            + varint_len(unshared as u64)
            + varint_len(value.len() as u64)
            + unshared
            + value.len()
    }

    /// The last key added, to this block or (until the next `add`) to the
    /// block finished before it: empty before the first.
    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Finishes the block (restarts, their count, trailer) where it was built,
    /// at the end of the buffer, and returns its length with the trailer.
    pub(crate) fn finish_in_place(&mut self) -> usize {
        if self.entries == 0 {
            self.block_start = self.buf.len();
        }
        for restart in &self.restarts {
            self.buf.append(&restart.to_le_bytes());
        }
        self.buf.append(&(self.restarts.len() as u32).to_le_bytes());
        append_trailer(&mut self.buf, self.block_start);
        let len = self.buf.len() - self.block_start;
        self.restarts.clear();
        self.restarts.push(0);
        self.since_restart = 0;
        // `last_key` stays: the next block's first key is compared with it.
        self.entries = 0;
        len
    }

    /// Appends the finished block (contents and trailer) to `out`, and resets the builder.
    pub(crate) fn finish_into(&mut self, out: &mut Vec<u8>) {
        let len = self.finish_in_place();
        let start = self.buf.len() - len;
        out.extend_from_slice(&self.buf.bytes()[start..]);
        self.buf.truncate(start);
    }

    /// The output before the next block: finished blocks and whatever the
    /// caller put there, for it to append to or drain from the front.
    ///
    /// # Panics
    /// If a block is being built (its bytes are at the end of this buffer).
    pub(crate) fn output(&mut self) -> &mut B {
        assert!(self.entries == 0, "the output is not touched while a block is being built");
        &mut self.buf
    }

    /// The output before the open block (all of the buffer when none is open).
    pub(crate) fn finished(&self) -> &[u8] {
        let end = if self.entries == 0 { self.buf.len() } else { self.block_start };
        &self.buf.bytes()[..end]
    }

    /// The buffer (output and any unfinished block), for reuse by a later builder.
    pub(crate) fn into_buffer(self) -> B {
        self.buf
    }
}

/// Length of the common prefix of `a` and `b`, eight bytes at a time: this runs once per
/// entry of every flush and compaction output.
pub(crate) fn shared_prefix_len(a: &[u8], b: &[u8]) -> usize {
    let limit = a.len().min(b.len());
    let mut n = 0;
    while n + 8 <= limit {
        let x = u64::from_le_bytes(a[n..n + 8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(b[n..n + 8].try_into().expect("8 bytes"));
        if x != y {
            // The first differing byte is the lowest differing one in little-endian order.
            return n + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + a[n..limit].iter().zip(&b[n..limit]).take_while(|(x, y)| x == y).count()
}

/// Appends the trailer of the block contents `out[start..]`.
pub(crate) fn append_trailer<B: Stream>(out: &mut B, start: usize) {
    out.append(&[BLOCK_TYPE_PLAIN]);
    let crc = crc32fast::hash(&out.bytes()[start..]);
    out.append(&crc.to_le_bytes());
}

/// Checks the trailer of `block` (contents + trailer, read from `file` at
/// `offset`) and returns the contents.
pub(crate) fn verify_trailer(mut block: Bytes, file: &Path, offset: u64) -> Result<Bytes> {
    let corrupt = |reason: String| Error::Corruption { file: file.to_path_buf(), offset, reason };
    if block.len() < TRAILER_BYTES {
        return Err(corrupt(format!("block of {} bytes has no room for its trailer", block.len())));
    }
    let contents_len = block.len() - TRAILER_BYTES;
    let trailer = block.split_off(contents_len);
    let stored = u32::from_le_bytes(trailer[1..5].try_into().expect("5-byte trailer"));
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&block);
    hasher.update(&trailer[..1]);
    if hasher.finalize() != stored {
        return Err(corrupt("block checksum mismatch".into()));
    }
    if trailer[0] != BLOCK_TYPE_PLAIN {
        return Err(corrupt(format!("unknown block type {}", trailer[0])));
    }
    Ok(block)
}

/// Where a block is: offset and size of its contents (trailer excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BlockHandle {
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

impl BlockHandle {
    pub(crate) fn encode_to(&self, out: &mut Vec<u8>) {
        put_varint(out, self.offset);
        put_varint(out, self.size);
    }

    pub(crate) fn decode_from(reader: &mut Reader<'_>) -> Option<BlockHandle> {
        Some(BlockHandle { offset: reader.varint()?, size: reader.varint()? })
    }
}

/// The last 48 bytes of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) metaindex: BlockHandle,
    pub(crate) index: BlockHandle,
}

impl Footer {
    pub(crate) fn encode(&self) -> [u8; FOOTER_BYTES] {
        let mut out = Vec::with_capacity(FOOTER_BYTES);
        self.metaindex.encode_to(&mut out);
        self.index.encode_to(&mut out);
        out.resize(36, 0);
        put_u32(&mut out, FORMAT_VERSION);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.try_into().expect("48 bytes")
    }

    /// Parses the footer of a table of `file_len` bytes whose last 48 bytes are `bytes`.
    pub(crate) fn decode(bytes: &[u8], file: &Path, file_len: u64) -> Result<Footer> {
        let offset = file_len.saturating_sub(FOOTER_BYTES as u64);
        let corrupt = |reason: String| Error::Corruption { file: file.to_path_buf(), offset, reason };
        if bytes.len() != FOOTER_BYTES || file_len < FOOTER_BYTES as u64 {
            return Err(corrupt(format!("file of {file_len} bytes is too short for a table footer")));
        }
        let magic = u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes"));
        if magic != MAGIC {
            return Err(corrupt(format!("bad magic {magic:#018x}: not a ringdb table")));
        }
        let version = u32::from_le_bytes(bytes[36..40].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "table format version {version} is not supported (this build reads {FORMAT_VERSION})"
            )));
        }
        let mut reader = Reader::new(&bytes[..36]);
        let handles = BlockHandle::decode_from(&mut reader).zip(BlockHandle::decode_from(&mut reader));
        let (metaindex, index) = handles.ok_or_else(|| corrupt("malformed block handles in the footer".into()))?;
        for handle in [metaindex, index] {
            let end = handle.offset.checked_add(handle.size).and_then(|e| e.checked_add(TRAILER_BYTES as u64));
            if end.is_none_or(|end| end > offset) {
                return Err(corrupt(format!("footer handle {handle:?} points outside the table")));
            }
        }
        Ok(Footer { metaindex, index })
    }
}

/// One decoded entry: its full key and its value.
pub(crate) type Entry = (Vec<u8>, Bytes);

/// A verified block's contents, ready to search.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    data: Bytes,
    /// Where the restart array starts (= end of the entries).
    restarts_at: usize,
    num_restarts: usize,
}

impl Block {
    /// The block's contents (entries and restart array).
    pub(crate) fn data(&self) -> &Bytes {
        &self.data
    }

    /// Checks the restart array of `contents` (already trailer-verified).
    pub(crate) fn new(contents: Bytes, file: &Path, offset: u64) -> Result<Block> {
        let corrupt = |reason: String| Error::Corruption { file: file.to_path_buf(), offset, reason };
        if contents.len() < 4 {
            return Err(corrupt("block too short for its restart count".into()));
        }
        let count_at = contents.len() - 4;
        let num_restarts = u32::from_le_bytes(contents[count_at..].try_into().expect("4 bytes")) as usize;
        let restarts_len = num_restarts.checked_mul(4).filter(|len| *len <= count_at);
        let Some(restarts_len) = restarts_len.filter(|_| num_restarts >= 1) else {
            return Err(corrupt(format!(
                "{num_restarts} restart points do not fit in a {}-byte block",
                contents.len()
            )));
        };
        let block = Block { restarts_at: count_at - restarts_len, num_restarts, data: contents };
        for i in 0..num_restarts {
            let restart = block.restart(i);
            // An empty block has one restart point, at 0; otherwise each points at an entry.
            let valid = restart < block.restarts_at || (restart == 0 && block.restarts_at == 0);
            if !valid {
                return Err(corrupt(format!("restart point {restart} outside the entries")));
            }
            if i > 0 && restart <= block.restart(i - 1) {
                return Err(corrupt("restart points are not ascending".into()));
            }
        }
        Ok(block)
    }

    fn restart(&self, i: usize) -> usize {
        let at = self.restarts_at + 4 * i;
        u32::from_le_bytes(self.data[at..at + 4].try_into().expect("checked in new")) as usize
    }

    /// How many restart points the block has (at least 1).
    pub(crate) fn num_restarts(&self) -> usize {
        self.num_restarts
    }

    /// An iterator from the first entry.
    pub(crate) fn iter(&self) -> BlockIter {
        BlockIter { block: self.clone(), pos: 0, key: Vec::new() }
    }

    /// The first entry whose key is `>= target` under `cmp`, or `None` if every key is smaller.
    pub(crate) fn seek(
        &self,
        target: &[u8],
        cmp: impl Fn(&[u8], &[u8]) -> Ordering,
        file: &Path,
        offset: u64,
    ) -> Result<Option<(Vec<u8>, Bytes)>> {
        Ok(self.iter_from(target, cmp, file, offset)?.1)
    }

    /// The first entry whose key is `>= target` under `cmp` (if any), and an
    /// iterator positioned just after it.
    pub(crate) fn iter_from(
        &self,
        target: &[u8],
        cmp: impl Fn(&[u8], &[u8]) -> Ordering,
        file: &Path,
        offset: u64,
    ) -> Result<(BlockIter, Option<Entry>)> {
        let (iter, found) = self.iter_to(target, cmp, file, offset)?;
        let entry = found.map(|value| (iter.key.clone(), self.data.slice(value)));
        Ok((iter, entry))
    }

    /// [`iter_from`](Self::iter_from) without copies: the iterator holds the
    /// key of the entry found, and its value's place in [`Self::data`].
    pub(crate) fn iter_to(
        &self,
        target: &[u8],
        cmp: impl Fn(&[u8], &[u8]) -> Ordering,
        file: &Path,
        offset: u64,
    ) -> Result<(BlockIter, Option<std::ops::Range<usize>>)> {
        self.iter_to_within(target, cmp, file, offset, 0, self.num_restarts - 1)
    }

    /// [`iter_to`](Self::iter_to) for a caller that knows the last restart
    /// point whose key is < target (or 0 if none is) lies in `lo..=hi`.
    pub(crate) fn iter_to_within(
        &self,
        target: &[u8],
        cmp: impl Fn(&[u8], &[u8]) -> Ordering,
        file: &Path,
        offset: u64,
        mut lo: usize,
        mut hi: usize,
    ) -> Result<(BlockIter, Option<std::ops::Range<usize>>)> {
        assert!(lo <= hi && hi < self.num_restarts, "restart range {lo}..={hi} of {}", self.num_restarts);
        // Binary search for the last restart point whose key is < target. One
        // iterator probes them all: its key buffer is reused, and only the
        // entry found gets its value (and a copy of its key).
        let mut iter = BlockIter { block: self.clone(), pos: 0, key: Vec::new() };
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            iter.pos = self.restart(mid);
            // A restart entry shares nothing with the key before it.
            iter.key.clear();
            match iter.step(file, offset)? {
                Some(_) if cmp(&iter.key, target) == Ordering::Less => lo = mid,
                _ => hi = mid - 1,
            }
        }
        iter.pos = self.restart(lo);
        iter.key.clear();
        while let Some(value) = iter.step(file, offset)? {
            if cmp(&iter.key, target) != Ordering::Less {
                return Ok((iter, Some(value)));
            }
        }
        Ok((iter, None))
    }
}

/// Walks a block's entries in order.
#[derive(Debug)]
pub(crate) struct BlockIter {
    /// A clone (reference-counted bytes): the iterator outlives borrows of the block.
    block: Block,
    pos: usize,
    key: Vec<u8>,
}

impl BlockIter {
    /// The block being walked.
    pub(crate) fn block(&self) -> &Block {
        &self.block
    }

    /// The next entry (full key, value), `None` at the end, or corruption.
    pub(crate) fn next_entry(&mut self, file: &Path, offset: u64) -> Result<Option<(Vec<u8>, Bytes)>> {
        Ok(self.step(file, offset)?.map(|value| (self.key.clone(), self.block.data.slice(value))))
    }

    /// The key of the entry `advance` returned last (empty before the first).
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Moves to the next entry and returns where its value lies in the
    /// block's data (no reference count is touched); its key is then
    /// [`key`](Self::key), decoded into a buffer the iterator reuses (no
    /// allocation per entry, unlike `next_entry`).
    pub(crate) fn step(&mut self, file: &Path, offset: u64) -> Result<Option<std::ops::Range<usize>>> {
        if self.pos >= self.block.restarts_at {
            return Ok(None);
        }
        let corrupt = |reason: String| Error::Corruption { file: file.to_path_buf(), offset, reason };
        let entries = &self.block.data[..self.block.restarts_at];
        let mut reader = Reader::new(&entries[self.pos..]);
        let at = self.pos;
        let header = (reader.varint(), reader.varint(), reader.varint());
        let (Some(shared), Some(unshared), Some(value_len)) = header else {
            return Err(corrupt(format!("truncated entry header at block offset {at}")));
        };
        let (shared, unshared, value_len) = (shared as usize, unshared as usize, value_len as usize);
        if shared > self.key.len() {
            return Err(corrupt(format!("entry at {at} shares {shared} bytes of a {}-byte key", self.key.len())));
        }
        // No key the engine writes is longer; a crafted block whose keys grow
        // by a byte per entry would otherwise make every step copy more.
        if unshared > MAX_ENTRY_KEY_BYTES - shared {
            return Err(corrupt(format!(
                "entry at {at} has a key longer than {MAX_ENTRY_KEY_BYTES} bytes ({shared} shared + {unshared})"
            )));
        }
        let delta =
            reader.take(unshared).ok_or_else(|| corrupt(format!("key of the entry at {at} runs past the block")))?;
        let value_start = self.pos + reader.position();
        reader.take(value_len).ok_or_else(|| corrupt(format!("value of the entry at {at} runs past the block")))?;
        self.key.truncate(shared);
        self.key.extend_from_slice(delta);
        self.pos += reader.position();
        Ok(Some(value_start..value_start + value_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{SeqNo, ValueKind, compare_internal_keys, encode_internal_key};
    use proptest::prelude::*;

    fn path() -> &'static Path {
        Path::new("000009.sst")
    }

    /// A crafted block whose keys grow by a byte per entry stops at the
    /// longest key the engine writes, with an error, instead of copying ever
    /// longer keys.
    #[test]
    fn a_key_past_the_longest_possible_is_corruption() {
        let mut entries = Vec::new();
        put_varint(&mut entries, 0);
        put_varint(&mut entries, MAX_ENTRY_KEY_BYTES as u64);
        put_varint(&mut entries, 0);
        entries.extend(std::iter::repeat_n(b'k', MAX_ENTRY_KEY_BYTES));
        for _ in 0..3 {
            put_varint(&mut entries, MAX_ENTRY_KEY_BYTES as u64 - 1);
            put_varint(&mut entries, 2);
            put_varint(&mut entries, 0);
            entries.extend_from_slice(b"zz");
        }
        // One restart point, at the first entry.
        let mut raw = entries;
        put_u32(&mut raw, 0);
        put_u32(&mut raw, 1);
        let block = Block::new(Bytes::from(raw), path(), 0).unwrap();
        let mut iter = block.iter();
        assert!(iter.step(path(), 0).unwrap().is_some(), "a key of the longest length is fine");
        assert_eq!(iter.key().len(), MAX_ENTRY_KEY_BYTES);
        match iter.step(path(), 0) {
            Err(Error::Corruption { reason, .. }) => assert!(reason.contains("longer than"), "{reason}"),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    fn build(entries: &[(Vec<u8>, Vec<u8>)], interval: usize) -> Vec<u8> {
        let mut builder = BlockBuilder::new(interval);
        for (k, v) in entries {
            builder.add(k, v);
        }
        let mut out = Vec::new();
        builder.finish_into(&mut out);
        out
    }

    fn open(raw: Vec<u8>) -> Result<Block> {
        let contents = verify_trailer(Bytes::from(raw), path(), 0)?;
        Block::new(contents, path(), 0)
    }

    fn all(block: &Block) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut iter = block.iter();
        let mut out = Vec::new();
        while let Some((k, v)) = iter.next_entry(path(), 0).unwrap() {
            out.push((k, v.to_vec()));
        }
        out
    }

    #[test]
    fn worked_example_of_the_format_doc() {
        let entries = vec![
            (encode_internal_key(b"apple", SeqNo(2), ValueKind::Put), b"red".to_vec()),
            (encode_internal_key(b"apricot", SeqNo(1), ValueKind::Put), b"orange".to_vec()),
        ];
        let raw = build(&entries, 16);
        let hex: Vec<String> = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "00 0d 03 61 70 70 6c 65 01 02 00 00 00 00 00 00 72 65 64 02 0d 06 72 69 63 6f 74 01 01 00 00 00 00 00 00 6f 72 61 6e 67 65 00 00 00 00 01 00 00 00 00 32 d6 3a d5"
        );
        assert_eq!(all(&open(raw).unwrap()), entries);
    }

    proptest! {
        /// Blocks built in place after earlier output, with output appended
        /// and drained between them, encode exactly like blocks built alone.
        #[test]
        fn blocks_finished_in_place_match_blocks_built_alone(
            blocks in proptest::collection::vec(
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 1..12),
                    proptest::collection::vec(any::<u8>(), 0..20),
                    0..40,
                ),
                1..4,
            ),
            restart in 1usize..5,
            filler in proptest::collection::vec(any::<u8>(), 0..30),
            drain in 0usize..50,
        ) {
            let mut in_place = BlockBuilder::with_buffer(restart, vec![7; 3]);
            in_place.output().extend_from_slice(&filler);
            let mut expected_stream = filler.clone();
            for entries in &blocks {
                let mut alone = BlockBuilder::new(restart);
                for (key, value) in entries {
                    alone.add(key, value);
                    in_place.add(key, value);
                }
                prop_assert_eq!(in_place.estimated_size_bytes(), alone.estimated_size_bytes());
                let mut alone_block = Vec::new();
                alone.finish_into(&mut alone_block);
                expected_stream.extend_from_slice(&alone_block);
                let len = in_place.finish_in_place();
                prop_assert_eq!(len, alone_block.len());
                let stream = in_place.output();
                prop_assert_eq!(&stream[..], &expected_stream[..]);
                // The caller drains staged bytes and pads between blocks.
                let cut = drain.min(stream.len());
                stream.drain(..cut);
                expected_stream.drain(..cut);
                stream.push(0);
                expected_stream.push(0);
            }
        }

        /// A stream in an aligned buffer, split at any point of its finished
        /// output (while a block is open, too), holds across its pieces
        /// exactly the bytes of the same stream in a `Vec`; a buffer too
        /// small for a block grows.
        #[test]
        fn an_aligned_stream_split_anywhere_holds_the_bytes_of_a_vec_stream(
            blocks in proptest::collection::vec(
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 1..12),
                    proptest::collection::vec(any::<u8>(), 0..300),
                    1..40,
                ),
                1..5,
            ),
            restart in 1usize..5,
            splits in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let mut aligned = BlockBuilder::with_buffer(restart, AlignedBuf::new(512, 512));
            let mut vec = BlockBuilder::with_buffer(restart, Vec::new());
            let mut written = Vec::new();
            let mut splits = splits.into_iter();
            for entries in &blocks {
                for (i, (key, value)) in entries.iter().enumerate() {
                    aligned.add(key, value);
                    vec.add(key, value);
                    // Mid-block, as the table writer splits after a block
                    // ended and the next one took its first entry.
                    if i == 0 && let Some(at) = splits.next() {
                        let n = at.min(aligned.finished().len());
                        let front = aligned.split_front(n, AlignedBuf::new(512, 512));
                        prop_assert_eq!(front.len(), n);
                        written.extend_from_slice(&front);
                    }
                }
                prop_assert_eq!(aligned.finish_in_place(), vec.finish_in_place());
            }
            written.extend_from_slice(aligned.finished());
            prop_assert_eq!(&written[..], vec.finished());
        }

        #[test]
        fn shared_prefix_len_matches_bytewise(
            a in proptest::collection::vec(0u8..3, 0..40),
            b in proptest::collection::vec(0u8..3, 0..40),
        ) {
            let expected = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            prop_assert_eq!(shared_prefix_len(&a, &b), expected);
            prop_assert_eq!(shared_prefix_len(&a, &a), a.len());
        }

        #[test]
        fn size_after_adding_is_the_size_after_adding(
            keys in proptest::collection::btree_set(proptest::collection::vec(0u8..4, 1..30), 1..100),
            interval in 1usize..20,
            value_lens in proptest::collection::vec(0usize..300, 1..100),
        ) {
            let mut builder = BlockBuilder::new(interval);
            for (i, key) in keys.iter().enumerate() {
                let value = vec![7u8; value_lens[i % value_lens.len()]];
                let predicted = builder.size_after_adding(key, &value);
                builder.add(key, &value);
                prop_assert_eq!(predicted, builder.estimated_size_bytes(), "entry {}", i);
            }
            let mut out = Vec::new();
            let expected = builder.estimated_size_bytes();
            builder.finish_into(&mut out);
            prop_assert_eq!(out.len(), expected + TRAILER_BYTES);
        }

        #[test]
        fn round_trip_and_seek_for_any_sorted_entries(
            keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..40), 1..200),
            interval in 1usize..20,
            value_len in 0usize..300,
        ) {
            let entries: Vec<(Vec<u8>, Vec<u8>)> =
                keys.iter().map(|k| (k.clone(), vec![k[0]; value_len % (k.len() + 7)])).collect();
            let block = open(build(&entries, interval)).unwrap();
            prop_assert_eq!(all(&block), entries.clone());
            for (i, (key, value)) in entries.iter().enumerate() {
                let found = block.seek(key, |a, b| a.cmp(b), path(), 0).unwrap();
                prop_assert_eq!(found, Some((key.clone(), Bytes::from(value.clone()))), "entry {}", i);
            }
            let past = vec![0xffu8; 41];
            prop_assert_eq!(block.seek(&past, |a, b| a.cmp(b), path(), 0).unwrap(), None);
        }

        #[test]
        fn damaged_blocks_are_corruption_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let entries: Vec<(Vec<u8>, Vec<u8>)> =
                (0..50u32).map(|i| (format!("key-{i:04}").into_bytes(), vec![i as u8; (i % 9) as usize])).collect();
            let mut raw = build(&entries, 4);
            for (at, byte) in flips {
                let at = at % raw.len();
                raw[at] ^= byte | 1;
            }
            prop_assert!(matches!(open(raw.clone()), Err(Error::Corruption { .. })), "the checksum catches every change");
            // Contents that pass (recomputed) checksums but are garbage: no panic either.
            let len = raw.len() - TRAILER_BYTES;
            let mut contents = raw[..len].to_vec();
            contents.truncate(cut % (len + 1));
            let start = 0;
            append_trailer(&mut contents, start);
            if let Ok(block) = open(contents) {
                let mut iter = block.iter();
                while let Ok(Some(_)) = iter.next_entry(path(), 0) {}
                let _ = block.seek(b"key-0025", |a, b| a.cmp(b), path(), 0);
            }
        }
    }

    #[test]
    fn internal_key_blocks_seek_by_the_internal_comparator() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (encode_internal_key(b"k", SeqNo(9), ValueKind::Put), b"new".to_vec()),
            (encode_internal_key(b"k", SeqNo(3), ValueKind::Put), b"old".to_vec()),
            (encode_internal_key(b"m", SeqNo(5), ValueKind::Delete), Vec::new()),
        ];
        let block = open(build(&entries, 1)).unwrap();
        let at_5 = encode_internal_key(b"k", SeqNo(5), ValueKind::Put);
        let found = block.seek(&at_5, compare_internal_keys, path(), 0).unwrap().unwrap();
        assert_eq!(&found.1[..], b"old", "snapshot 5 sees seq 3, not seq 9");
    }

    #[test]
    fn footer_round_trips_and_rejects_damage() {
        let footer = Footer {
            metaindex: BlockHandle { offset: 1000, size: 40 },
            index: BlockHandle { offset: 1045, size: 300 },
        };
        let bytes = footer.encode();
        assert_eq!(&bytes[40..], b"RINGSST1");
        let file_len = 1045 + 300 + 5 + 48;
        assert_eq!(Footer::decode(&bytes, path(), file_len).unwrap(), footer);
        let mut wrong_magic = bytes;
        wrong_magic[47] ^= 1;
        assert!(Footer::decode(&wrong_magic, path(), file_len).is_err());
        let mut newer = bytes;
        newer[36] = 2;
        assert!(
            matches!(Footer::decode(&newer, path(), file_len), Err(Error::Corruption { reason, .. }) if reason.contains("version 2"))
        );
        assert!(Footer::decode(&bytes, path(), 1000).is_err(), "handles past the end of the file");
        assert!(Footer::decode(&bytes[..47], path(), 47).is_err());
    }
}
