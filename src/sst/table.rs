//! Writing and reading whole tables (`docs/format/sst.md`).
//!
//! The writer encodes blocks into a byte stream held in an aligned buffer
//! (data blocks are built in place at its end) and hands every full staging
//! buffer's worth (`staging_buffer_bytes`) to the I/O layer as an O_DIRECT
//! write, that very buffer, while it goes on encoding into the next; at most
//! `max_writes_in_flight` buffers are in flight, then it waits for the
//! oldest. The last buffer is padded to the alignment, and `set_len` cuts the
//! file back to the table's exact length.
//!
//! The reader keeps the index and the filter in memory, so a point lookup
//! reads at most one data block (the aligned range around it) from the device.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;

use super::block::{Block, BlockBuilder, BlockHandle, FOOTER_BYTES, Footer, TRAILER_BYTES, verify_trailer};
use super::cache::BlockCache;
use super::encoder::{EncodedPart, Encoder};
use super::filter::{BloomBuilder, BloomFilter, FilterBits};
use super::filter_thread::FilterThread;
use super::index::PinnedIndex;
use super::stream::Stream;
use crate::coding::Reader;
use crate::io::{AlignedBuf, BufPool, DirectFile, Io, poll_once};
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
    /// How many batches of key hashes went to the filter thread before the
    /// end of the table; see [`TableWriter::bound_keys`].
    pub(crate) early_filter_batches: u32,
}

type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<AlignedBuf>> + Send + 'a>>;

/// Builds one table file. Entries must be added in internal-key order, or
/// whole parts encoded elsewhere appended in key order.
pub(crate) struct TableWriter<'f> {
    file: &'f DirectFile,
    /// Encodes into an aligned buffer that is written as it is.
    encoder: Encoder<AlignedBuf>,
    /// Where the stream's buffers come from (and go back to once written).
    stream_bufs: BufPool,
    /// File offset of the next write.
    written_len: u64,
    in_flight: VecDeque<WriteFuture<'f>>,
    /// Time spent waiting for a write to finish before encoding could go on.
    write_wait: std::time::Duration,
    /// The filter is built by the encoders of appended parts
    /// ([`filter_built_elsewhere`](Self::filter_built_elsewhere)) and handed
    /// to [`finish_with_filter`](Self::finish_with_filter).
    filter_built_elsewhere: bool,
    /// The filter sized by [`bound_keys`](Self::bound_keys), until its
    /// thread starts with the first staged write.
    filter_bits: Option<FilterBits>,
    /// The thread that sets the filter's bits.
    filter_thread: Option<FilterThread>,
    early_filter_batches: u32,
}

impl<'f> TableWriter<'f> {
    /// A writer into `file` (new and empty).
    pub(crate) fn new(file: &'f DirectFile, options: TableOptions) -> TableWriter<'f> {
        assert!(options.staging_buffer_bytes.is_multiple_of(file.alignment()), "staging buffers are whole sectors");
        let stream_bufs = stream_pool(file, &options);
        TableWriter {
            file,
            // The data block builder's buffer is the writer's stream: encoded
            // bytes not yet written, the open block at its end.
            encoder: Encoder::new(options, stream_bufs.get()),
            stream_bufs,
            written_len: 0,
            in_flight: VecDeque::new(),
            write_wait: std::time::Duration::ZERO,
            filter_built_elsewhere: false,
            filter_bits: None,
            filter_thread: None,
            early_filter_batches: 0,
        }
    }

    /// Tells the writer the table holds at most `keys` distinct user keys (a
    /// flush knows its memtable's entry count, which may count a key more
    /// than once). The filter is then sized for `keys` up front, and a
    /// [`FilterThread`] sets its keys' bits as the table is encoded, a batch
    /// per staged buffer, not all at the end: setting a 1M-key filter's bits
    /// took 10-14 ms, a tenth of such a flush, with the device idle behind
    /// it. The thread starts once the first write is out (starting it took
    /// about 0.2 ms), and a table too small to stage a write sets its bits
    /// here at the end. If the thread cannot start, the filter is built at
    /// the end as without a bound.
    pub(crate) fn bound_keys(&mut self, keys: usize) {
        let bits = FilterBits::new(keys, self.encoder.options().bloom_bits_per_key, SPARE_FILTER_BITS.take());
        self.filter_bits = Some(bits);
    }

    /// Hands the hashes of the keys staged so far to the filter thread,
    /// starting it first if the filter was bounded.
    fn send_filter_batch(&mut self) {
        if self.filter_thread.is_none() {
            let Some(bits) = self.filter_bits.take() else { return };
            match FilterThread::spawn(bits) {
                Ok(thread) => self.filter_thread = Some(thread),
                Err(e) => {
                    tracing::debug!(error = %e, "ringdb: no filter thread; the filter is built at the end");
                    return;
                }
            }
        }
        if let Some(thread) = &self.filter_thread {
            let empty = thread.empty_batch(self.encoder.filter.hashes().len());
            thread.send(self.encoder.filter.take_hashes(empty));
            self.early_filter_batches += 1;
        }
    }

    /// Adds an entry (internal key, value).
    pub(crate) async fn add(&mut self, internal_key: &[u8], value: &[u8]) -> Result<()> {
        if self.add_entry(internal_key, value) {
            self.stage().await?;
        }
        Ok(())
    }

    /// [`add`](Self::add) without the wait: true if a data block was
    /// finished, and [`stage`](Self::stage) must then run before the next
    /// entry. A flush adds millions of entries and stages once per few
    /// thousand; this keeps an async call out of the per-entry loop.
    pub(crate) fn add_entry(&mut self, internal_key: &[u8], value: &[u8]) -> bool {
        self.encoder.add(internal_key, value)
    }

    /// Where the next part must start: parts are encoded as if at offset 0,
    /// so a part's start keeps its blocks' alignment, and its buffers are
    /// written as they are, so it also keeps the file's sector alignment.
    pub(crate) fn part_align_bytes(&self) -> usize {
        self.encoder.options().block_align_bytes.max(self.file.alignment())
    }

    /// Appends a part encoded by a [`PartEncoder`](super::encoder::PartEncoder)
    /// (finished with [`part_align_bytes`](Self::part_align_bytes)): its
    /// buffers are written as they are, at the end of the table so far.
    /// Only parts may be appended to a writer that takes parts.
    pub(crate) async fn append_part(&mut self, part: EncodedPart) -> Result<()> {
        assert!(self.filter_built_elsewhere, "the filter of a table of parts is built by their encoders");
        assert!(self.encoder.finished_bytes().is_empty(), "a writer that takes parts holds no bytes of its own");
        assert!(self.encoder.len().is_multiple_of(self.part_align_bytes() as u64), "parts start aligned");
        self.encoder.absorb(&part);
        for buf in part.bufs {
            self.submit(buf).await?;
        }
        debug_assert_eq!(self.written_len, self.encoder.len());
        Ok(())
    }

    /// Makes this a writer whose filter is built elsewhere (by the encoders
    /// of its parts); the table is finished with
    /// [`finish_with_filter`](Self::finish_with_filter).
    pub(crate) fn filter_built_elsewhere(&mut self) {
        self.filter_built_elsewhere = true;
    }

    /// Time spent waiting for the device so far.
    pub(crate) fn io_wait(&self) -> std::time::Duration {
        self.write_wait
    }

    /// Hands every full staging buffer to the kernel, waiting for the oldest write
    /// when `max_writes_in_flight` are out.
    pub(crate) async fn stage(&mut self) -> Result<()> {
        loop {
            let size = self.next_write_bytes();
            let finished = self.encoder.finished_bytes().len();
            if finished < size {
                return Ok(());
            }
            // The stream's buffer is written as it is; the encoder goes on in
            // a recycled one (a fresh buffer per write cost an allocation and
            // its page faults). All whole staging sizes at once: after a block
            // larger than the stream's slack (a huge value), splitting them
            // off one at a time would copy the rest each time.
            let buf = self.encoder.split_front(finished / size * size, self.stream_bufs.get());
            self.submit(buf).await?;
            self.send_filter_batch();
        }
    }

    /// Appends `bytes` (whole blocks, already counted in the encoder's
    /// length) to the stream, staging writes as it fills: never past a stream
    /// buffer's capacity, so it never grows.
    async fn append_bytes(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let stream = self.encoder.stream();
            let room = stream.capacity() - stream.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            stream.append(now);
            bytes = later;
            self.stage().await?;
        }
        Ok(())
    }

    /// The size of the next staged write: a staging buffer, but a quarter of
    /// one for the table's first write, so the device starts while the rest
    /// of the first buffer is encoded (the first megabyte took about 0.9 ms
    /// to encode on the test VM, with the device idle).
    fn next_write_bytes(&self) -> usize {
        let size = self.encoder.options().staging_buffer_bytes;
        if self.written_len > 0 {
            return size;
        }
        let align = self.file.alignment();
        ((size / 4) / align * align).max(align)
    }

    async fn submit(&mut self, buf: AlignedBuf) -> Result<()> {
        if self.in_flight.len() >= self.encoder.options().max_writes_in_flight.max(1) {
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
        self.encoder.estimated_size_bytes()
    }

    /// Writes the filter, metaindex, index and footer, waits for every write,
    /// restores the exact length and fdatasyncs the file.
    pub(crate) async fn finish(mut self) -> Result<TableInfo> {
        assert!(!self.filter_built_elsewhere, "a filter built elsewhere comes back through finish_with_filter");
        let filter_block = match self.filter_thread.take() {
            // Too small to have staged a write: its bits are set here.
            None => self.filter_bits.take().map(|mut bits| {
                bits.add_hashes(self.encoder.filter.hashes());
                bits.finish()
            }),
            Some(thread) => {
                thread.send(self.encoder.filter.take_hashes(Vec::new()));
                let bits = thread.finish().await.ok_or_else(|| Error::Io {
                    op: crate::IoOp::Setup,
                    path: self.file.path().to_path_buf(),
                    offset: None,
                    source: std::io::Error::other("the table's filter thread stopped before its work was done"),
                })?;
                Some(bits.finish())
            }
        };
        self.finish_table(filter_block).await
    }

    /// [`finish`](Self::finish), with the contents of the filter block
    /// [built elsewhere](Self::filter_built_elsewhere).
    pub(crate) async fn finish_with_filter(self, filter_block: Vec<u8>) -> Result<TableInfo> {
        assert!(self.filter_built_elsewhere, "only a filter built elsewhere comes back built");
        self.finish_table(Some(filter_block)).await
    }

    /// Writes the filter (`filter_block`, or the encoder's keys), metaindex,
    /// index and footer, waits for every write, restores the exact length
    /// and fdatasyncs the file.
    async fn finish_table(mut self, filter_block: Option<Vec<u8>>) -> Result<TableInfo> {
        let encoder = &mut self.encoder;
        encoder.finish_data_block();
        encoder.index_last_block();
        // The filter, metaindex, index and footer are built in a buffer that
        // is reused from table to table (they are 2 MiB for 1M entries of 100
        // bytes; fresh pages cost 1-6 ms at the end of a flush), then go
        // through the stream.
        let mut tail = SPARE_TAIL.take();
        let filter = std::mem::replace(&mut encoder.filter, BloomBuilder::new(1));
        let filter_handle = append_block(encoder, &mut tail, |tail| {
            let start = tail.len();
            match filter_block {
                Some(block) => {
                    tail.extend_from_slice(&block);
                    super::keep_spare(&SPARE_FILTER_BITS, block);
                }
                None => filter.finish_into(tail),
            }
            super::block::append_trailer(tail, start);
        });

        let mut metaindex = BlockBuilder::new(1);
        let mut encoded = Vec::new();
        filter_handle.encode_to(&mut encoded);
        metaindex.add(FILTER_NAME, &encoded);
        let metaindex_handle = append_block(encoder, &mut tail, |tail| metaindex.finish_into(tail));

        // Built in place at the end of the tail, not in a buffer of its own
        // to grow and copy out of.
        let mut index = BlockBuilder::appending_to(1, tail);
        for (separator, handle) in encoder.index().iter() {
            encoded.clear();
            handle.encode_to(&mut encoded);
            index.add(separator, &encoded);
        }
        let index_len = index.finish_in_place();
        let mut tail = index.into_buffer();
        let index_handle = encoder.block_handle(index_len);

        let footer = Footer { metaindex: metaindex_handle, index: index_handle }.encode();
        tail.extend_from_slice(&footer);
        let table_len = encoder.len() + FOOTER_BYTES as u64;
        self.append_bytes(&tail).await?;
        super::keep_spare(&SPARE_TAIL, tail);
        self.stage().await?;
        if !self.encoder.finished_bytes().is_empty() {
            // The last write, padded to the alignment (cut off below).
            let end = self.written_len + self.encoder.finished_bytes().len() as u64;
            self.encoder.pad((end.next_multiple_of(self.file.alignment() as u64) - end) as usize);
            let len = self.encoder.finished_bytes().len();
            let buf = self.encoder.split_front(len, self.stream_bufs.get());
            self.submit(buf).await?;
        }
        let waiting_since = std::time::Instant::now();
        while let Some(write) = self.in_flight.pop_front() {
            write.await?;
        }
        // The last write was padded to the alignment: cut the padding off.
        self.file.set_len(table_len).await?;
        self.file.sync_data().await?;
        self.write_wait += waiting_since.elapsed();
        Ok(TableInfo {
            size_bytes: table_len,
            entries: self.encoder.entries(),
            data_blocks: self.encoder.data_blocks(),
            io_wait: self.write_wait,
            early_filter_batches: self.early_filter_batches,
        })
    }
}

thread_local! {
    /// The tail (filter, metaindex, index, footer) of the last table written
    /// on this thread, reused by the next: memory is slow to touch fresh (see
    /// `DirectFile::pooled_buf`).
    static SPARE_TAIL: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };

    /// The filter block of the last table written on this thread whose filter
    /// was sized up front, reused as the next one's bits (1.25 MiB for a
    /// 1M-key flush).
    static SPARE_FILTER_BITS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Room in a stream buffer past a staging buffer's bytes: the stream is
/// split once the blocks finished in it reach a staging buffer, so it also
/// holds the overhang of the last finished block and the open block's first
/// entry. An entry larger than this room makes the stream grow into a new
/// buffer (see `super::stream`).
const STREAM_SLACK_BYTES: usize = 64 * 1024;

/// The pool of stream buffers for tables written into `file` with
/// `options`: each buffer holds a staging buffer and the slack, aligned for
/// the file (at least a page, which every file seen so far needs at most).
/// The pool is the I/O backend's, shared by every writer (a subcompaction's
/// writer runs on a thread that ends with it: buffers kept per thread would
/// be fresh memory for every compaction) and dropped with the backend.
pub(crate) fn stream_pool(file: &DirectFile, options: &TableOptions) -> BufPool {
    let align = file.alignment().max(4096);
    file.io().buf_pool(options.staging_buffer_bytes + STREAM_SLACK_BYTES, align)
}

/// Appends a block (contents and trailer), which `write` puts at the end of
/// `tail`, the bytes that follow the encoder's stream, and returns its handle.
fn append_block(
    encoder: &mut Encoder<AlignedBuf>,
    tail: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>),
) -> BlockHandle {
    let start = tail.len();
    write(tail);
    encoder.block_handle(tail.len() - start)
}

/// An open table: index and filter pinned in memory.
pub(crate) struct TableReader {
    /// The table's file number: its key in the block cache.
    id: u64,
    cache: Option<Arc<BlockCache>>,
    file: DirectFile,
    path: PathBuf,
    size_bytes: u64,
    index: PinnedIndex,
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
        let mut filter_read: Pin<Box<dyn Future<Output = Result<Bytes>> + Send + '_>> = match filter_handle {
            Some(handle) => Box::pin(async move { Ok(source.read_block_bytes(handle).await?.0) }),
            None => Box::pin(async { Ok(Bytes::new()) }),
        };
        // Submitted now, the filter is read while the index is read and its
        // search array built: one after the other, the filter read, the index
        // read and the build took 0.8-2.5, 0.8-2 and 1.4-3.3 ms after each
        // flush of 1M entries.
        let filter_early = poll_once(&mut filter_read);
        let (index, _) = source.read_block(footer.index).await?;
        let index = PinnedIndex::new(index, path, footer.index.offset)?;
        let filter = match filter_early {
            Some(filter) => filter?,
            None => filter_read.as_mut().await?,
        };
        drop(filter_read);
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
    pub(crate) fn index(&self) -> &PinnedIndex {
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
        let Some(handle) = self.index.find_handle(lookup.encoded(), &self.path)? else {
            return Ok(None);
        };
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
        let mut read = std::pin::pin!(source.read_block(handle));
        // The first poll submits the read. Blocks that earlier reads left
        // waiting enter the cache while it is in flight. At QD1 a µs between
        // a completion and the next submission costs more than a µs on this
        // project's VM, since a read issued later also takes longer in the
        // device (docs/io.md, "The device's time depends on the reader's turnaround").
        let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        cache.insert_waiting();
        let (block, charge_bytes) = match first {
            Poll::Ready(result) => result?,
            Poll::Pending => read.await?,
        };
        cache.insert_soon(self.id, handle.offset, block.clone(), charge_bytes);
        Ok(block)
    }
}

/// Reads verified blocks of one table file.
#[derive(Clone, Copy)]
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
        add_all(&mut writer, model).await;
        writer.finish().await.unwrap()
    }

    /// Adds every entry of `model` to `writer`, in order.
    async fn add_all(writer: &mut TableWriter<'_>, model: &Model) {
        for ((key, seq), value) in model {
            let kind = if value.is_some() { ValueKind::Put } else { ValueKind::Delete };
            let ikey = encode_internal_key(key, SeqNo(seq.0), kind);
            writer.add(&ikey, value.as_deref().unwrap_or(&[])).await.unwrap();
        }
    }

    /// The filter block of `model`'s distinct user keys in a filter sized
    /// for `model.len()` keys, as a flush bounds it (every version counts).
    fn bounded_filter(model: &Model, bits_per_key: usize) -> Vec<u8> {
        let mut bits = crate::sst::filter::FilterBits::new(model.len(), bits_per_key, Vec::new());
        let mut all = BloomBuilder::new(bits_per_key);
        let mut last: Option<&Vec<u8>> = None;
        for (key, _) in model.keys() {
            if last != Some(key) {
                all.add_key(key);
                last = Some(key);
            }
        }
        bits.add_hashes(all.hashes());
        bits.finish()
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

    #[test]
    fn a_block_read_enters_the_cache_once_the_next_read_is_submitted() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let model = model(3000, 9);
            let path = dir.path().join("000001.sst");
            write_table(&io, &path, &model, TableOptions::default()).await;
            let cache = Arc::new(BlockCache::new(64 << 20, 4096));
            let table = TableReader::open(&io, &path, 1, Some(Arc::clone(&cache))).await.unwrap();
            let (first, last) = (model.keys().next().unwrap().0.clone(), model.keys().next_back().unwrap().0.clone());
            assert!(table.get(&first, SeqNo::MAX).await.unwrap().is_some());
            assert_eq!(cache.waiting_len(), 1, "the block read waits to be inserted");
            assert!(table.get(&first, SeqNo::MAX).await.unwrap().is_some(), "and a get finds it meanwhile");
            assert_eq!(cache.waiting_len(), 1);
            assert!(table.get(&last, SeqNo::MAX).await.unwrap().is_some());
            assert_eq!(cache.waiting_len(), 1, "the next read inserted the first block; its own block waits");
            assert!(table.get(&first, SeqNo::MAX).await.unwrap().is_some());
            assert!(table.get(&last, SeqNo::MAX).await.unwrap().is_some());
            let stats = cache.stats();
            assert_eq!((stats.hits, stats.misses), (3, 2), "two device reads in five gets");
        });
    }

    #[test]
    fn the_first_write_is_a_quarter_buffer_and_every_later_one_a_whole_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        let staging = 64 * 1024;
        futures::executor::block_on(async {
            let path = dir.path().join("000001.sst");
            let file = DirectFile::create(&io, &path).await.unwrap();
            let options = TableOptions { staging_buffer_bytes: staging, ..TableOptions::default() };
            let mut writer = TableWriter::new(&file, options);
            // The file offset after each write: where each write ended.
            let mut write_ends = Vec::new();
            let model = model(6000, 7);
            for ((key, seq), value) in &model {
                let kind = if value.is_some() { ValueKind::Put } else { ValueKind::Delete };
                let ikey = encode_internal_key(key, SeqNo(seq.0), kind);
                writer.add(&ikey, value.as_deref().unwrap_or(&[])).await.unwrap();
                if write_ends.last() != Some(&writer.written_len) && writer.written_len > 0 {
                    write_ends.push(writer.written_len);
                }
            }
            assert!(write_ends.len() >= 3, "{write_ends:?}");
            assert_eq!(write_ends[0], staging as u64 / 4, "{write_ends:?}");
            for pair in write_ends.windows(2) {
                assert_eq!(pair[1] - pair[0], staging as u64, "{write_ends:?}");
            }
            let info = writer.finish().await.unwrap();
            assert_eq!(info.entries, 6000);
            // The table reads back across the short first write.
            let table = TableReader::open(&io, &path, 1, None).await.unwrap();
            for ((key, _), _) in model.iter().step_by(97) {
                let want = expected(&model, key, SeqNo::MAX.0).map(|v| match v {
                    Some(v) => MemtableValue::Put(Bytes::from(v)),
                    None => MemtableValue::Deleted,
                });
                assert_eq!(table.get(key, SeqNo::MAX).await.unwrap(), want);
            }
        });
    }

    #[test]
    fn a_filter_sized_up_front_gets_the_bits_of_every_key_as_the_table_is_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let model = model(6000, 9);
            // Small staging buffers: many batches go to the filter thread.
            let options = TableOptions {
                staging_buffer_bytes: 8192,
                max_writes_in_flight: 1,
                block_align_bytes: 0,
                ..TableOptions::default()
            };
            let path = dir.path().join("000001.sst");
            let file = DirectFile::create(&io, &path).await.unwrap();
            let mut writer = TableWriter::new(&file, options.clone());
            // A bound above the distinct keys, as a flush gives (versions count).
            writer.bound_keys(model.len());
            add_all(&mut writer, &model).await;
            let info = writer.finish().await.unwrap();
            // A batch per staged buffer of data blocks (the rest of the
            // table, filter and index, is staged after the last).
            assert!(info.early_filter_batches as u64 >= info.size_bytes / 8192 * 3 / 4, "{info:?}");
            // The filter block is exactly the filter of all distinct keys, sized by the bound.
            let table = TableReader::open(&io, &path, 1, None).await.unwrap();
            assert_eq!(table.filter.as_ref(), bounded_filter(&model, options.bloom_bits_per_key).as_slice());
            for ((key, _), _) in model.iter().step_by(5) {
                let want = expected(&model, key, SeqNo::MAX.0).map(|v| match v {
                    Some(v) => MemtableValue::Put(Bytes::from(v)),
                    None => MemtableValue::Deleted,
                });
                assert_eq!(table.get(key, SeqNo::MAX).await.unwrap(), want);
            }
        });
    }

    #[test]
    fn a_table_too_small_to_stage_a_write_gets_its_bounded_filter_without_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let model = model(100, 3);
            let options = TableOptions::default();
            let path = dir.path().join("000001.sst");
            let file = DirectFile::create(&io, &path).await.unwrap();
            let mut writer = TableWriter::new(&file, options.clone());
            writer.bound_keys(model.len());
            add_all(&mut writer, &model).await;
            assert!(writer.filter_thread.is_none(), "no write staged, no thread started");
            let info = writer.finish().await.unwrap();
            assert_eq!(info.early_filter_batches, 0);
            // Sized by the bound (not by the distinct keys), every distinct key in it.
            let table = TableReader::open(&io, &path, 1, None).await.unwrap();
            assert_eq!(table.filter.as_ref(), bounded_filter(&model, options.bloom_bits_per_key).as_slice());
        });
    }

    /// [`write_table`], encoded as parts (one per range between `splits`, user
    /// keys) and appended, as a parallel flush does.
    async fn write_table_in_parts(
        io: &Io,
        path: &Path,
        model: &Model,
        options: TableOptions,
        splits: &[Vec<u8>],
    ) -> TableInfo {
        use crate::sst::encoder::PartEncoder;
        use crate::sst::filter::FilterBits;
        let file = DirectFile::create(io, path).await.unwrap();
        let mut writer = TableWriter::new(&file, options.clone());
        writer.filter_built_elsewhere();
        let align = writer.part_align_bytes();
        let mut filter = FilterBits::new(model.len(), options.bloom_bits_per_key, Vec::new());
        let mut entries = model.iter().peekable();
        for i in 0..=splits.len() {
            let mut part = PartEncoder::new(options.clone(), stream_pool(&file, &options));
            while let Some(((key, seq), value)) = entries.next_if(|((key, _), _)| splits.get(i).is_none_or(|s| key < s))
            {
                let kind = if value.is_some() { ValueKind::Put } else { ValueKind::Delete };
                part.add(&encode_internal_key(key, SeqNo(seq.0), kind), value.as_deref().unwrap_or(&[]));
            }
            let encoded = part.finish(align, &mut filter);
            assert!(encoded.len.is_multiple_of(align as u64));
            writer.append_part(encoded).await.unwrap();
        }
        writer.finish_with_filter(filter.finish()).await.unwrap()
    }

    #[test]
    fn tables_appended_from_parts_read_like_tables_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            // Small entries with versions and deletes, and 2000-byte values
            // (parts of several staging buffers each).
            for (i, big_values, align) in [(0, false, 4096usize), (1, false, 0), (2, true, 4096), (3, true, 512)] {
                let model = if big_values {
                    (0..6000u64)
                        .map(|n| {
                            ((format!("key-{n:05}").into_bytes(), std::cmp::Reverse(n + 1)), Some(vec![n as u8; 2000]))
                        })
                        .collect()
                } else {
                    model(3000, i)
                };
                let user_keys: Vec<&Vec<u8>> = model.keys().map(|(key, _)| key).collect();
                // Uneven parts, one of them empty (two equal splits), one a single key.
                let at = |fraction: f64| user_keys[(user_keys.len() as f64 * fraction) as usize].clone();
                let mut splits = vec![at(0.1), at(0.1), at(0.5), at(0.52), at(0.9)];
                splits.dedup();
                let path = dir.path().join(format!("{i:06}.sst"));
                let options = TableOptions { block_align_bytes: align, ..TableOptions::default() };
                let info = write_table_in_parts(&io, &path, &model, options.clone(), &splits).await;
                assert_eq!(std::fs::metadata(&path).unwrap().len(), info.size_bytes, "exact length restored");
                assert_eq!(info.entries, model.len() as u64);
                let table = TableReader::open(&io, &path, 1, None).await.unwrap();
                let handles = data_block_handles(&table);
                assert_eq!(handles.len() as u64, info.data_blocks);
                // Blocks in order, no overlap; the gaps are block padding or a
                // part's padding, less than the part alignment (the block
                // alignment or the file's, at most a page here).
                let part_align = align.max(4096) as u64;
                assert!(gaps(&handles).iter().all(|g| *g < part_align), "{:?}", gaps(&handles));
                let whole_path = dir.path().join(format!("whole-{i:06}.sst"));
                let whole = write_table(&io, &whole_path, &model, options).await;
                assert!(
                    info.data_blocks >= whole.data_blocks
                        && info.data_blocks <= whole.data_blocks + splits.len() as u64
                );
                for ((key, _), _) in model.iter().step_by(3) {
                    for snapshot in [0u64, 500, 2999, 5999, SeqNo::MAX.0] {
                        let got = table.get(key, SeqNo(snapshot)).await.unwrap();
                        let want = expected(&model, key, snapshot).map(|v| match v {
                            Some(v) => MemtableValue::Put(Bytes::from(v)),
                            None => MemtableValue::Deleted,
                        });
                        assert_eq!(got, want, "table {i}: key {key:?} at {snapshot}");
                    }
                }
                assert_eq!(table.get(b"absent", SeqNo::MAX).await.unwrap(), None);
                assert_eq!(table.get(b"key-99999", SeqNo::MAX).await.unwrap(), None);
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
            // Larger than a stream buffer (a staging buffer and its slack):
            // the stream grows into a new buffer, written like the others.
            let huge: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
            model.insert((b"d".to_vec(), std::cmp::Reverse(4)), Some(huge.clone()));
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
            assert_eq!(table.get(b"d", SeqNo::MAX).await.unwrap(), Some(MemtableValue::Put(Bytes::from(huge))));
        });
    }

    /// A value of many staging buffers goes out in one write, not split off
    /// one staging buffer at a time (each split copied the rest: quadratic
    /// in the value's size, 2 GB of copying for one 64 MiB value).
    #[test]
    fn a_huge_value_is_written_in_one_piece() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let mut model = Model::new();
            let huge: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % 251) as u8).collect();
            model.insert((b"a".to_vec(), std::cmp::Reverse(2)), Some(b"small".to_vec()));
            model.insert((b"h".to_vec(), std::cmp::Reverse(1)), Some(huge.clone()));
            let path = dir.path().join("huge.sst");
            let before = io.stats().ops_submitted;
            write_table(&io, &path, &model, TableOptions::default()).await;
            // Create, allocate-free: the huge block's write, the tail's, the
            // sync and a few more; 24+ with one write per staging buffer.
            let ops = io.stats().ops_submitted - before;
            assert!(ops <= 8, "{ops} ops for a table of one 24 MiB value");
            let table = TableReader::open(&io, &path, 3, None).await.unwrap();
            assert_eq!(table.get(b"h", SeqNo::MAX).await.unwrap(), Some(MemtableValue::Put(Bytes::from(huge))));
            assert_eq!(
                table.get(b"a", SeqNo::MAX).await.unwrap(),
                Some(MemtableValue::Put(Bytes::from_static(b"small")))
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
