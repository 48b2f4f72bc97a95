//! Options of a database and of a write.

use crate::io::IoOptions;
use crate::wal::RecoveryMode;

/// How to open a database. `Options::default()` is a sane start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of the active memtable, in bytes (approximate: keys, values and
    /// per-entry overhead), at which it is frozen and a new one (with a new
    /// WAL file) takes writes. Default: 64 MiB.
    pub write_buffer_size_bytes: usize,
    /// Frozen memtables kept in memory at most; at the bound, writes wait
    /// (asynchronously) until one has been flushed. Default: 2.
    pub max_immutable_memtables: usize,
    /// Bytes of zeroes written into each new WAL file up front, so that
    /// appends overwrite written blocks and an fdatasync commits no size or
    /// extent change. A log made from a flushed one (the usual case once the
    /// first memtable has been flushed, and at a reopen that finds a log with
    /// nothing to replay) reuses that file's written blocks instead.
    /// Default: 64 MiB.
    pub wal_preallocate_bytes: u64,
    /// With [`Durability::Buffered`], logged data is written at the latest this
    /// long after it was buffered, in milliseconds. Default: 100.
    pub wal_flush_interval_ms: u64,
    /// With [`Durability::Buffered`], the log buffer is written as soon as it
    /// holds this many bytes. Default: 1 MiB.
    pub wal_buffer_size_bytes: usize,
    /// How long the log writer may wait for the writers of its previous synced
    /// group to come back before writing a smaller group, in microseconds. It
    /// waits only after a synced group and only while fewer writers are queued
    /// than were in that group, so a lone writer never waits. Default: 200.
    pub group_commit_wait_us: u64,
    /// Threads that encode one flush in parallel, each taking a key range of
    /// the memtable in turn, while the flush thread writes the table. 1: the
    /// flush thread encodes and writes alone, overlapping the two. More helps
    /// where one core encodes slower than the disk writes and other cores are
    /// idle: on the 2-vCPU test VM, 2 threads encoded a flush of 1M 100-byte
    /// entries in 50-70 ms instead of 90-130 ms, but the flush still took as
    /// long (the disk was the limit) and `fillrandom` ran 8-13% slower, its
    /// writers short of CPU. Default: 1.
    pub flush_threads: usize,
    /// Target size of a table's data blocks before the checksum trailer, in
    /// bytes (a block holds at least one entry, so large values exceed it).
    /// Default: 4096.
    pub block_size_bytes: usize,
    /// Entries between full keys (restart points) in a data block. Default: 16.
    pub block_restart_interval: usize,
    /// Data blocks are cut and zero-padded so they end on multiples of this
    /// many bytes whenever that costs at most an eighth of it in padding, so
    /// a cold point read is one read of one device page (see
    /// `docs/format/sst.md`). A power of two of at least 512, or 0 for no
    /// padding. Default: 4096.
    pub block_align_bytes: usize,
    /// Bloom filter bits per key in each table (at most 64). Default: 10,
    /// about 0.8% false positives.
    pub bloom_bits_per_key: usize,
    /// Memory for cached data blocks of tables, in bytes (0: no caching).
    /// A block is charged the aligned buffer it was read into: 4 KiB for most
    /// 4 KiB blocks. Index and filter blocks are pinned outside it. A block
    /// read from the device enters the cache when the next block read is
    /// submitted, so up to 16 blocks may be held beside the capacity (gets
    /// find them meanwhile). Default: 64 MiB.
    pub block_cache_size_bytes: u64,
    /// A MANIFEST larger than this, in bytes, is replaced by a new one that
    /// starts with a snapshot of the live files. Default: 64 MiB.
    pub max_manifest_file_size_bytes: u64,
    /// The shape of the tree: compaction triggers, level sizes, table size.
    pub compaction: crate::CompactionOptions,
    /// What recovery does with a damaged log. Default: [`RecoveryMode::KeepAllOrFail`].
    pub recovery_mode: RecoveryMode,
    /// Create the directory if it does not exist. Default: true.
    pub create_if_missing: bool,
    /// The I/O backend. Default: io_uring, falling back to the portable backend.
    pub io: IoOptions,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            write_buffer_size_bytes: 64 << 20,
            max_immutable_memtables: 2,
            wal_preallocate_bytes: 64 << 20,
            wal_flush_interval_ms: 100,
            wal_buffer_size_bytes: 1 << 20,
            group_commit_wait_us: 200,
            flush_threads: 1,
            block_size_bytes: 4096,
            block_restart_interval: 16,
            block_align_bytes: 4096,
            bloom_bits_per_key: 10,
            block_cache_size_bytes: 64 << 20,
            compaction: crate::CompactionOptions::default(),
            max_manifest_file_size_bytes: 64 << 20,
            recovery_mode: RecoveryMode::default(),
            create_if_missing: true,
            io: IoOptions::default(),
        }
    }
}

impl Options {
    /// Rejects settings the engine cannot work with.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let problem = if self.write_buffer_size_bytes == 0 || self.max_immutable_memtables == 0 {
            "write_buffer_size_bytes and max_immutable_memtables must be positive"
        } else if !(1..=64).contains(&self.flush_threads) {
            "flush_threads must be 1..=64"
        } else if self.block_size_bytes == 0 || self.block_size_bytes > 64 << 20 {
            "block_size_bytes must be 1..=64 MiB"
        } else if self.block_align_bytes != 0
            && (!self.block_align_bytes.is_power_of_two() || !(512..=1 << 20).contains(&self.block_align_bytes))
        {
            "block_align_bytes must be 0 or a power of two from 512 to 1 MiB"
        } else if self.block_restart_interval == 0 {
            "block_restart_interval must be positive"
        } else if self.bloom_bits_per_key > 64 {
            "bloom_bits_per_key must be at most 64"
        } else {
            return self.compaction.validate().map_err(crate::Error::InvalidArgument);
        };
        Err(crate::Error::InvalidArgument(problem.into()))
    }

    /// Charged memtable bytes per part of a parallel flush: an eighth of a
    /// memtable, at most 8 MiB (small enough for the encoder threads to share
    /// the work evenly, large enough that a part's last, partial buffer is a
    /// small share of its writes).
    pub(crate) fn flush_part_bytes(&self) -> usize {
        (self.write_buffer_size_bytes / 8).clamp(4 << 10, 8 << 20)
    }

    /// How often a memtable samples a key for cutting its flush into parts:
    /// about 16 samples per part; 0 (never, and no work on the write path)
    /// when flushes are encoded on one thread.
    pub(crate) fn memtable_sample_bytes(&self) -> usize {
        if self.flush_threads > 1 { self.flush_part_bytes() / 16 } else { 0 }
    }

    pub(crate) fn table_options(&self) -> crate::sst::table::TableOptions {
        crate::sst::table::TableOptions {
            block_size_bytes: self.block_size_bytes,
            block_restart_interval: self.block_restart_interval,
            bloom_bits_per_key: self.bloom_bits_per_key,
            block_align_bytes: self.block_align_bytes,
            ..Default::default()
        }
    }
}

/// When a write returns, and what it then survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Returns after the write's log group was written and fdatasync'd:
    /// survives power loss.
    Synced,
    /// Returns after the write's log group was written with O_DIRECT: it is in
    /// the device, not in the page cache, so it survives a crash of the
    /// process, but not power loss. The default.
    #[default]
    Written,
    /// Returns once the write is in the memtable and the in-memory log buffer,
    /// which is written when it fills ([`Options::wal_buffer_size_bytes`]) or
    /// after [`Options::wal_flush_interval_ms`]: a process crash loses at most
    /// that window. For bulk loads. [`crate::Db::flush_wal`] forces it out.
    Buffered,
}

/// Options of one write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// See [`Durability`]. Default: [`Durability::Written`].
    pub durability: Durability,
}

impl WriteOptions {
    /// Write options with this durability.
    pub fn with_durability(durability: Durability) -> WriteOptions {
        WriteOptions { durability }
    }
}
