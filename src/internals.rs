//! Thin wrappers over the crate-private SST codecs, for the benches (`benches/codecs.rs`),
//! the fuzz targets (`fuzz/`) and the corpus replay test (`tests/fuzz_corpus.rs`).
//!
//! **Not a public API.** This module is hidden from the docs and exempt from semver: it
//! changes whenever the codecs do. Applications use [`Db`](crate::Db).
//!
//! Every function that takes untrusted bytes (`decode_*`, `read_table_*`, `fuzz_*`)
//! returns an error for damaged input and never panics; a panic there is a bug that the
//! fuzzers and the corpus replay are meant to find.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::coding::Reader;
use crate::io::{DirectFile, Io, IoOptions};
use crate::key::{ParsedInternalKey, SeqNo, ValueKind, encode_internal_key};
use crate::sst::block::{Block, BlockBuilder, BlockHandle, FOOTER_BYTES, Footer, TRAILER_BYTES, verify_trailer};
use crate::sst::filter::{BloomBuilder, BloomFilter};
use crate::sst::table::{TableOptions, TableReader, TableWriter};
use crate::{Error, Result};

/// The file name decoders put in their errors for bytes that did not come from a file.
const MEMORY: &str = "<memory>";

/// The most point lookups [`read_table_all`] makes, so a fuzzed table with a huge index
/// stays cheap.
const MAX_TABLE_GETS: usize = 64;

fn memory_path() -> &'static Path {
    Path::new(MEMORY)
}

/// Encodes one block (entries, restart array and the 5-byte trailer) with a restart point
/// every `restart_interval` entries (values below 1 are taken as 1). Keys must be strictly
/// ascending bytewise, as in every block of a table.
pub fn encode_block(entries: &[(Vec<u8>, Vec<u8>)], restart_interval: usize) -> Vec<u8> {
    let mut builder = BlockBuilder::new(restart_interval.max(1));
    for (key, value) in entries {
        builder.add(key, value);
    }
    let mut out = Vec::with_capacity(builder.estimated_size_bytes() + TRAILER_BYTES);
    builder.finish_into(&mut out);
    out
}

/// Decodes a block as the table reader does (trailer check, restart array check), walks
/// every entry, then seeks a few keys (bytewise order): the first, the middle and the last
/// key, one past the last, and the empty key. Returns the number of entries.
pub fn decode_block_all(raw: &[u8]) -> Result<usize> {
    let path = memory_path();
    let contents = verify_trailer(Bytes::copy_from_slice(raw), path, 0)?;
    let block = Block::new(contents, path, 0)?;
    let mut iter = block.iter();
    let mut count = 0usize;
    let (mut first, mut middle, mut last) = (None, None, None);
    while let Some((key, _value)) = iter.next_entry(path, 0)? {
        if first.is_none() {
            first = Some(key.clone());
        }
        if count.is_power_of_two() {
            middle = Some(key.clone());
        }
        last = Some(key);
        count += 1;
    }
    let past = last.as_ref().map(|key| {
        let mut past = key.clone();
        past.push(0xff);
        past
    });
    for target in [first, middle, last, past, Some(Vec::new())].into_iter().flatten() {
        block.seek(&target, |a, b| a.cmp(b), path, 0)?;
    }
    Ok(count)
}

/// [`decode_block_all`] of the bytes as given, then of the bytes taken as block *contents*
/// with a freshly computed trailer appended, so that a fuzzer reaches the entry parser
/// without having to forge CRCs. Returns the first result.
pub fn decode_block_and_contents(data: &[u8]) -> Result<usize> {
    let as_given = decode_block_all(data);
    let mut with_trailer = Vec::with_capacity(data.len() + TRAILER_BYTES);
    with_trailer.extend_from_slice(data);
    crate::sst::block::append_trailer(&mut with_trailer, 0);
    let _ = decode_block_all(&with_trailer);
    as_given
}

/// Parses the footer of a table whose bytes are `bytes` (the whole file, or any bytes that
/// end in a footer): the footer is the last 48 bytes and the file length is `bytes.len()`,
/// so the block handles must point inside `bytes`.
pub fn decode_footer(bytes: &[u8]) -> Result<()> {
    let tail = &bytes[bytes.len().saturating_sub(FOOTER_BYTES)..];
    Footer::decode(tail, memory_path(), bytes.len() as u64).map(|_| ())
}

/// Encodes a bloom filter block over `keys` at `bits_per_key` bits per key.
pub fn bloom_build<K: AsRef<[u8]>>(keys: &[K], bits_per_key: usize) -> Vec<u8> {
    let mut builder = BloomBuilder::new(bits_per_key);
    for key in keys {
        builder.add_key(key.as_ref());
    }
    builder.finish()
}

/// Whether the filter block `filter` may contain `key` (any bytes are a valid filter).
pub fn bloom_may_contain(filter: &[u8], key: &[u8]) -> bool {
    BloomFilter::from_block(filter).may_contain(key)
}

/// How many of `keys` the filter block `filter` may contain.
pub fn bloom_count_may_contain<K: AsRef<[u8]>>(filter: &[u8], keys: &[K]) -> usize {
    let filter = BloomFilter::from_block(filter);
    keys.iter().filter(|key| filter.may_contain(key.as_ref())).count()
}

/// Writes a table of `entries` (user key, value) at `path` with the default table options,
/// each entry a put at sequence number 1. User keys must be strictly ascending (bytewise);
/// otherwise it is [`Error::InvalidArgument`]. Returns the table's size in bytes.
pub async fn build_table(io: &Io, path: &Path, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<u64> {
    if let Some(i) = entries.windows(2).position(|pair| pair[0].0 >= pair[1].0) {
        return Err(Error::InvalidArgument(format!("table entry {} is not above entry {i}", i + 1)));
    }
    let file = DirectFile::create(io, path).await?;
    let mut writer = TableWriter::new(&file, TableOptions::default());
    let mut key = Vec::new();
    for (user_key, value) in entries {
        key.clear();
        crate::key::encode_internal_key_to(&mut key, user_key, SeqNo(1), ValueKind::Put);
        writer.add(&key, value).await?;
    }
    Ok(writer.finish().await?.size_bytes)
}

/// Opens the table at `path` with the table reader, walks its index and every data block
/// (verified, read with plain positional reads), and looks up through the reader the first
/// and last user key of data blocks (up to 64 lookups) plus a few keys that are probably
/// absent, each at three snapshots. Returns the number of entries in the data blocks.
pub async fn read_table_all(io: &Io, path: &Path) -> Result<usize> {
    let reader = TableReader::open(io, path, 0, None).await?;
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        op: crate::IoOp::Open,
        path: path.to_path_buf(),
        offset: None,
        source,
    })?;
    let file_len = reader.size_bytes();
    let read_block = |handle: BlockHandle| -> Result<Block> {
        // The reader has opened the table, so the footer handles fit; data block handles
        // from the index are checked here.
        let end = handle.offset.checked_add(handle.size).and_then(|end| end.checked_add(TRAILER_BYTES as u64));
        let Some(end) = end.filter(|end| *end <= file_len) else {
            return Err(corrupt(path, handle.offset, format!("block handle {handle:?} outside the table")));
        };
        let mut raw = vec![0u8; (end - handle.offset) as usize];
        file.read_exact_at(&mut raw, handle.offset).map_err(|source| Error::Io {
            op: crate::IoOp::Read,
            path: path.to_path_buf(),
            offset: Some(handle.offset),
            source,
        })?;
        Block::new(verify_trailer(Bytes::from(raw), path, handle.offset)?, path, handle.offset)
    };
    let mut footer = [0u8; FOOTER_BYTES];
    let footer_at = file_len.saturating_sub(FOOTER_BYTES as u64);
    file.read_exact_at(&mut footer, footer_at).map_err(|source| Error::Io {
        op: crate::IoOp::Read,
        path: path.to_path_buf(),
        offset: Some(footer_at),
        source,
    })?;
    let footer = Footer::decode(&footer, path, file_len)?;
    let index = read_block(footer.index)?;
    let mut index_iter = index.iter();
    let (mut entries, mut lookups) = (0usize, Vec::new());
    while let Some((separator, handle)) = index_iter.next_entry(path, footer.index.offset)? {
        let handle = BlockHandle::decode_from(&mut Reader::new(&handle))
            .ok_or_else(|| corrupt(path, footer.index.offset, "malformed block handle in the index".into()))?;
        let block = read_block(handle)?;
        let mut iter = block.iter();
        let mut first = None;
        while let Some((key, _)) = iter.next_entry(path, handle.offset)? {
            first.get_or_insert(key);
            entries += 1;
        }
        // The first key of the block and its separator (the block's last key), as user
        // keys; a key that does not parse as an internal key is looked up as it is.
        for key in first.iter().chain([&separator]) {
            if lookups.len() < MAX_TABLE_GETS {
                lookups.push(ParsedInternalKey::parse(key).map_or(&key[..], |parsed| parsed.user_key).to_vec());
            }
        }
    }
    let probably_absent: Vec<Vec<u8>> = lookups
        .iter()
        .take(4)
        .map(|key| {
            let mut absent = key.clone();
            absent.push(0);
            absent
        })
        .chain([Vec::new(), vec![0xff; 16]])
        .collect();
    for key in lookups.iter().chain(&probably_absent) {
        for snapshot in [SeqNo::MAX, SeqNo(1), SeqNo::ZERO] {
            reader.get(key, snapshot).await?;
        }
    }
    Ok(entries)
}

fn corrupt(path: &Path, offset: u64, reason: String) -> Error {
    Error::Corruption { file: path.to_path_buf(), offset, reason }
}

/// The I/O handle of [`read_table_bytes`], started once per process (`None` if no backend
/// could be set up).
fn shared_io() -> Option<&'static Io> {
    static IO: OnceLock<Option<Io>> = OnceLock::new();
    IO.get_or_init(|| Io::new(IoOptions::default()).ok()).as_ref()
}

/// A fresh file name for [`read_table_bytes`], in `/dev/shm` where it exists (memory-backed,
/// so fuzzing does not wear a disk), else in the temp directory.
fn scratch_table_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("ringdb-internals-{}-{n}.sst", std::process::id()))
}

/// Writes `data` to a scratch file and runs [`read_table_all`] on it (on a shared I/O
/// handle), then removes the file. Returns what `read_table_all` returned.
pub fn read_table_bytes(data: &[u8]) -> Result<usize> {
    let Some(io) = shared_io() else {
        return Err(Error::Closed);
    };
    let path = scratch_table_path();
    std::fs::write(&path, data).map_err(|source| Error::Io {
        op: crate::IoOp::Write,
        path: path.clone(),
        offset: None,
        source,
    })?;
    let result = futures_executor::block_on(read_table_all(io, &path));
    let _ = std::fs::remove_file(&path);
    result
}

/// The `block_decoder` fuzz target: [`decode_block_and_contents`], result ignored.
pub fn fuzz_block_bytes(data: &[u8]) {
    let _ = decode_block_and_contents(data);
}

/// The `footer` fuzz target: [`decode_footer`], result ignored.
pub fn fuzz_footer_bytes(data: &[u8]) {
    let _ = decode_footer(data);
}

/// The `table_reader` fuzz target: [`read_table_bytes`], result ignored.
pub fn fuzz_table_bytes(data: &[u8]) {
    let _ = read_table_bytes(data);
}

/// The internal key of a put of `user_key` at sequence number `seq` (for generators that
/// want to build data blocks as the table writer does).
pub fn internal_key(user_key: &[u8], seq: u64) -> Vec<u8> {
    encode_internal_key(user_key, SeqNo(seq.min(SeqNo::MAX.0)), ValueKind::Put)
}
