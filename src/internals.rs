//! Thin wrappers over the crate-private SST and MANIFEST codecs, for the benches
//! (`benches/codecs.rs`), the fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`).
//!
//! **Not a public API.** This module is hidden from the docs and exempt from semver: it
//! changes whenever the codecs do. Applications use [`Db`](crate::Db).
//!
//! Every function that takes untrusted bytes (`decode_*`, `read_table_*`, `load_manifest_*`,
//! `fuzz_*`) returns an error for damaged input and never panics; a panic there is a bug
//! that the fuzzers and the corpus replay are meant to find. (The one deliberate `assert!`,
//! in [`decode_manifest_edit`], checks the edit codec's round trip: failing it is such a
//! bug too.)

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
use crate::version::edit::{EDIT_FORMAT_VERSION, FileMeta, VersionEdit};
use crate::version::manifest::{self, ManifestState, ManifestWriter};
use crate::wal::WalWriter;
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

/// A fresh path ending in `.{extension}` for the scratch files of [`read_table_bytes`] and
/// the scratch directories of [`load_manifest_bytes`], in `/dev/shm` where it exists
/// (memory-backed, so fuzzing does not wear a disk), else in the temp directory.
fn scratch_path(extension: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("ringdb-internals-{}-{n}.{extension}", std::process::id()))
}

/// Writes `data` to a scratch file and runs [`read_table_all`] on it (on a shared I/O
/// handle), then removes the file. Returns what `read_table_all` returned.
pub fn read_table_bytes(data: &[u8]) -> Result<usize> {
    let Some(io) = shared_io() else {
        return Err(Error::Closed);
    };
    let path = scratch_path("sst");
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

/// The file number of the MANIFEST that [`load_manifest_bytes`] writes (`MANIFEST-000001`);
/// the `log_number` in a MANIFEST's header sector must match it.
pub const FUZZ_MANIFEST_NUMBER: u64 = 1;

/// First byte of a `manifest` fuzz input: the rest is one version edit
/// ([`decode_manifest_edit`]).
pub const MANIFEST_INPUT_EDIT: u8 = 0;
/// First byte of a `manifest` fuzz input: the rest is a whole MANIFEST file
/// ([`load_manifest_bytes`]).
pub const MANIFEST_INPUT_FILE: u8 = 1;
/// First byte of a `manifest` fuzz input: the rest is a list of edit payloads, each a length
/// byte and that many bytes (the last one cut short by the end of the input), written into
/// a MANIFEST with valid record checksums ([`load_manifest_records`]), so that a fuzzer
/// reaches the edit decoder and the replay of edits without having to forge CRCs.
pub const MANIFEST_INPUT_RECORDS: u8 = 2;

/// The most records [`load_manifest_records`] writes (each takes a 4 KiB sector).
const MAX_MANIFEST_RECORDS: usize = 32;

/// A version edit, the MANIFEST's record payload (`docs/format/manifest.md`), for generators
/// and tests: start from [`ManifestEdit::default`] (an empty edit), add fields with the
/// chained methods, get the bytes with [`encode`](Self::encode). Nothing is validated, so
/// an edit built from bad keys or sequence numbers encodes to bytes that fail to decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestEdit(VersionEdit);

impl ManifestEdit {
    /// Sets `format_version` to the version this build writes (the first edit of every
    /// MANIFEST carries it).
    pub fn format_version(mut self) -> Self {
        self.0.format_version = Some(EDIT_FORMAT_VERSION);
        self
    }

    /// Sets `log_number`: every WAL numbered below `number` is obsolete.
    pub fn log_number(mut self, number: u64) -> Self {
        self.0.log_number = Some(number);
        self
    }

    /// Sets `next_file_number`.
    pub fn next_file_number(mut self, number: u64) -> Self {
        self.0.next_file_number = Some(number);
        self
    }

    /// Sets `last_sequence` (clamped to the largest sequence number).
    pub fn last_sequence(mut self, seq: u64) -> Self {
        self.0.last_sequence = Some(SeqNo(seq.min(SeqNo::MAX.0)));
        self
    }

    /// Adds a `new_file` field: table `file_number` of `size_bytes` bytes joins `level`,
    /// holding sequence numbers `seqs` (clamped to the largest sequence number) and the
    /// encoded internal keys `smallest_key..=largest_key` (see [`internal_key`]).
    pub fn new_table(
        mut self,
        level: u32,
        file_number: u64,
        size_bytes: u64,
        seqs: std::ops::RangeInclusive<u64>,
        smallest_key: &[u8],
        largest_key: &[u8],
    ) -> Self {
        self.0.new_files.push(FileMeta {
            level,
            file_number,
            size_bytes,
            smallest_seq: SeqNo((*seqs.start()).min(SeqNo::MAX.0)),
            largest_seq: SeqNo((*seqs.end()).min(SeqNo::MAX.0)),
            smallest_key: smallest_key.to_vec(),
            largest_key: largest_key.to_vec(),
        });
        self
    }

    /// Adds a `deleted_file` field: table `file_number` leaves `level`.
    pub fn deleted_table(mut self, level: u32, file_number: u64) -> Self {
        self.0.deleted_files.push((level, file_number));
        self
    }

    /// The encoded edit.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.0.encode_to(&mut out);
        out
    }
}

/// Decodes one version edit. On success, also re-encodes it and asserts that the encoding
/// decodes to the same edit: a failed assertion is a codec bug, which is what the `manifest`
/// fuzz target looks for. Damaged input is [`Error::Corruption`].
pub fn decode_manifest_edit(data: &[u8]) -> Result<ManifestEdit> {
    let edit = VersionEdit::decode(data).map_err(|reason| corrupt(memory_path(), 0, reason))?;
    let mut again = Vec::with_capacity(data.len());
    edit.encode_to(&mut again);
    let round_trip = VersionEdit::decode(&again);
    assert_eq!(round_trip.as_ref(), Ok(&edit), "decode(encode(edit)) differs from the edit; input {data:02x?}");
    Ok(ManifestEdit(edit))
}

/// Writes MANIFEST `number` into `dir` as the engine does (`ManifestWriter`, which also
/// points `CURRENT` at it): the first record is the snapshot of the state `edits[0]` leads to
/// from an empty one (an empty state without edits), each later edit a record of its own,
/// written as given. Returns the MANIFEST's path. A first edit that does not apply to an
/// empty state is [`Error::InvalidArgument`]; later edits are not checked, so inconsistent
/// ones make a MANIFEST that [`load_manifest`] refuses.
pub async fn build_manifest(io: &Io, dir: &Path, number: u64, edits: &[ManifestEdit]) -> Result<PathBuf> {
    let mut state = ManifestState::default();
    if let Some(first) = edits.first() {
        state.apply(&first.0).map_err(|reason| Error::InvalidArgument(format!("first MANIFEST edit: {reason}")))?;
    }
    let mut writer = ManifestWriter::create(io, dir, number, &state, None).await?;
    for edit in edits.iter().skip(1) {
        writer.append(&edit.0).await?;
    }
    Ok(writer.path().to_path_buf())
}

/// Replays MANIFEST `number` of `dir` as opening a database does. Returns the number of live
/// tables.
pub async fn load_manifest(io: &Io, dir: &Path, number: u64) -> Result<usize> {
    Ok(manifest::load(io, dir, number).await?.files.len())
}

/// Runs `fill` on a fresh scratch directory (see [`scratch_path`]), then [`load_manifest`] of
/// MANIFEST [`FUZZ_MANIFEST_NUMBER`] in it (on the shared I/O handle), then removes the
/// directory. Returns what `fill` or `load_manifest` returned.
fn with_scratch_manifest(fill: impl AsyncFnOnce(&Io, &Path) -> Result<()>) -> Result<usize> {
    let Some(io) = shared_io() else {
        return Err(Error::Closed);
    };
    let dir = scratch_path("manifest");
    std::fs::create_dir(&dir).map_err(|source| Error::Io {
        op: crate::IoOp::Open,
        path: dir.clone(),
        offset: None,
        source,
    })?;
    let result = futures_executor::block_on(async {
        fill(io, &dir).await?;
        load_manifest(io, &dir, FUZZ_MANIFEST_NUMBER).await
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Writes `data` as `MANIFEST-000001` into a scratch directory and runs [`load_manifest`] on
/// it. Returns the number of live tables.
pub fn load_manifest_bytes(data: &[u8]) -> Result<usize> {
    with_scratch_manifest(async |_io, dir| {
        let path = dir.join(manifest::manifest_name(FUZZ_MANIFEST_NUMBER));
        std::fs::write(&path, data).map_err(|source| Error::Io { op: crate::IoOp::Write, path, offset: None, source })
    })
}

/// Splits `data` into edit payloads as [`MANIFEST_INPUT_RECORDS`] describes, writes each
/// non-empty one (up to 32) as a record of `MANIFEST-000001` in a scratch directory (with the
/// WAL writer, so the checksums hold) and runs [`load_manifest`] on it. A MANIFEST without a
/// record is refused as such. Returns the number of live tables.
pub fn load_manifest_records(data: &[u8]) -> Result<usize> {
    let mut payloads = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (payload, tail) = tail.split_at(usize::from(len).min(tail.len()));
        if !payload.is_empty() && payloads.len() < MAX_MANIFEST_RECORDS {
            payloads.push(payload);
        }
        rest = tail;
    }
    with_scratch_manifest(async |io, dir| {
        let path = dir.join(manifest::manifest_name(FUZZ_MANIFEST_NUMBER));
        let mut log = WalWriter::create(io, &path, FUZZ_MANIFEST_NUMBER, 0).await?;
        for payload in payloads {
            log.append_group(payload, true).await?;
        }
        Ok(())
    })
}

/// Encodes edit payloads as the input of [`load_manifest_records`]: each a length byte and
/// its bytes. A payload over 255 bytes is [`Error::InvalidArgument`].
pub fn manifest_records_input<P: AsRef<[u8]>>(payloads: &[P]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for payload in payloads {
        let payload = payload.as_ref();
        let len = u8::try_from(payload.len())
            .map_err(|_| Error::InvalidArgument(format!("an edit payload of {} bytes", payload.len())))?;
        out.push(len);
        out.extend_from_slice(payload);
    }
    Ok(out)
}

/// Decodes one `manifest` fuzz input: the first byte selects [`MANIFEST_INPUT_EDIT`],
/// [`MANIFEST_INPUT_FILE`] or [`MANIFEST_INPUT_RECORDS`] (taken modulo 3), the rest is its
/// input. The empty input is `Ok`.
pub fn decode_manifest_input(data: &[u8]) -> Result<()> {
    let Some((&selector, rest)) = data.split_first() else {
        return Ok(());
    };
    match selector % 3 {
        MANIFEST_INPUT_EDIT => decode_manifest_edit(rest).map(|_| ()),
        MANIFEST_INPUT_FILE => load_manifest_bytes(rest).map(|_| ()),
        _ => load_manifest_records(rest).map(|_| ()),
    }
}

/// The `manifest` fuzz target: [`decode_manifest_input`], result ignored.
pub fn fuzz_manifest(data: &[u8]) {
    let _ = decode_manifest_input(data);
}

/// [`decode_manifest_edit`], result ignored (the round-trip assertion still fires).
pub fn fuzz_manifest_edit(data: &[u8]) {
    let _ = decode_manifest_edit(data);
}

/// [`load_manifest_bytes`], result ignored.
pub fn fuzz_manifest_file(data: &[u8]) {
    let _ = load_manifest_bytes(data);
}

/// Sorted runs held as memtables, for the merge bench.
pub struct MergeRuns(Vec<std::sync::Arc<crate::memtable::Memtable>>);

/// One memtable per run of (user key, sequence number) puts with empty values.
pub fn merge_runs(runs: &[Vec<(Vec<u8>, u64)>]) -> MergeRuns {
    MergeRuns(
        runs.iter()
            .map(|run| {
                let memtable = crate::memtable::Memtable::new();
                for (key, seq) in run {
                    memtable.insert(key, SeqNo(*seq), ValueKind::Put, Bytes::new());
                }
                std::sync::Arc::new(memtable)
            })
            .collect(),
    )
}

/// Merges the runs front to back with the merging iterator; returns the
/// entries seen and the sum of their sequence numbers (so the walk cannot be
/// optimised away, and a bench can check it).
pub fn merge_all(runs: &MergeRuns) -> (usize, u64) {
    use crate::iter::{MemtableCursor, MergingIter, Source};
    let sources = runs.0.iter().map(|m| Source::Memtable(MemtableCursor::new(std::sync::Arc::clone(m)))).collect();
    let mut merged = MergingIter::new(sources);
    futures_executor::block_on(async {
        merged.seek_to_first().await.expect("memtables do not fail");
        let (mut count, mut seq_sum) = (0, 0);
        while let Some((key, _)) = merged.current() {
            count += 1;
            seq_sum += ParsedInternalKey::parse(key).expect("valid key").seq.0;
            merged.advance().await.expect("memtables do not fail");
        }
        (count, seq_sum)
    })
}
