//! db_bench: ringdb's main benchmark, in the style of RocksDB's db_bench.
//!
//! ```text
//! cargo run --release --example db_bench                                  # default set, temp dir
//! cargo run --release --example db_bench -- --benchmarks fillrandom --durability buffered
//! cargo run --release --example db_bench -- --benchmarks fillrandom --concurrency 64 --json
//! ```
//!
//! Each benchmark runs on a fresh database in `--dir` (default: a temporary
//! directory under ./target). When fio is installed, benchmarks bound by one
//! I/O pattern also run the matching job of `fio-configs/` on the same
//! directory and print the ratio:
//! - `fillsync` against 4 KiB write+fdatasync at QD1, `fillsync_concurrent`
//!   against 64 KiB write+fdatasync (a full group);
//! - `readrandom` (cold gets: the block cache is smaller than the data, tables
//!   only, after a reopen, a `--settle-secs` wait and with no compaction
//!   running) against 4 KiB random reads at QD1, and
//!   `readrandom_concurrent` (32 tasks) against the same at QD32;
//! - `flush` (one large memtable written as a table by the pipelined writer;
//!   the median of `--flush-rounds` - 1 timed flushes, see `run_flush`) against one pass of 1 MiB sequential writes at QD4 over a new fallocated
//!   file, then one fsync (its staging writes into a new table, then the
//!   table's fdatasync), in MiB/s (the `fio` column is MiB/s for `flush`, IOPS
//!   for the others).
//!
//! The read benchmarks also note `cpu_us_per_get`: the process's CPU time
//! (user and system, all threads) over the timed gets, per get. It moves far
//! less than the rate when the shared disk's speed swings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use ringdb::{Db, Durability, Options, WriteBatch, WriteOptions};

#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/fio.rs"]
mod fio;

// RocksDB's db_bench is normally built with jemalloc; glibc malloc spent ~9%
// of fillrandom in malloc_consolidate here. The engine does not depend on it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "ringdb benchmarks (RocksDB db_bench style), with fio side by side")]
struct Args {
    /// Comma-separated benchmarks: fillseq, fillrandom, overwrite, fillsync, fillsync_concurrent, flush,
    /// readrandom, readrandom_concurrent, readseq, seekrandom, readwhilewriting, compact.
    #[arg(
        long,
        default_value = "readrandom,readrandom_concurrent,readseq,seekrandom,readwhilewriting,fillseq,fillrandom,overwrite,fillsync,fillsync_concurrent,flush,compact"
    )]
    benchmarks: String,
    /// Keys loaded (then flushed) before readrandom, and written by the flush benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    load_num: u64,
    /// Order in which those keys are written: `sequential` (the memtable's
    /// nodes then lie in memory in key order, the best case for a flush's
    /// walk) or `random` (each key once, shuffled: every step of the walk is
    /// a cache miss, as after random inserts).
    #[arg(long, value_enum, default_value = "sequential")]
    load_order: LoadOrder,
    /// Gets of readrandom and readrandom_concurrent.
    #[arg(long, default_value_t = 100_000)]
    reads: u64,
    /// Tasks issuing gets in readrandom_concurrent.
    #[arg(long, default_value_t = 32)]
    read_concurrency: usize,
    /// Block cache of the read benchmarks, in MiB (keep it well below the data for cold reads).
    #[arg(long, default_value_t = 8)]
    read_cache_mib: u64,
    /// Directory for the databases (default: a temporary directory under ./target).
    #[arg(long, env = "RINGDB_BENCH_DIR")]
    dir: Option<PathBuf>,
    /// Operations of fillseq and fillrandom.
    #[arg(long, default_value_t = 200_000)]
    num: u64,
    /// Operations of fillsync and fillsync_concurrent.
    #[arg(long, default_value_t = 20_000)]
    sync_num: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Durability of fillseq and fillrandom: synced, written or buffered.
    #[arg(long, default_value = "written")]
    durability: String,
    /// Tasks issuing writes in fillseq and fillrandom.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Tasks issuing writes in fillsync_concurrent.
    #[arg(long, default_value_t = 64)]
    sync_concurrency: usize,
    /// IoOptions::ring_poll_us of the database's I/O backend.
    #[arg(long, default_value_t = ringdb::io::IoOptions::default().ring_poll_us)]
    ring_poll_us: u64,
    /// Options::group_commit_wait_us.
    #[arg(long, default_value_t = Options::default().group_commit_wait_us)]
    group_commit_wait_us: u64,
    /// Rounds of readrandom and readrandom_concurrent with fio: each is
    /// followed by a run of the matching fio job (`paired_ratio`).
    #[arg(long, default_value_t = 5)]
    read_rounds: usize,
    /// Seconds of quiet between writing a read benchmark's data (and fio's
    /// file) and timing its reads, after a `sync`. On this project's VM the
    /// disk digests a fresh 120 MiB table and 1 GiB fio file for a few seconds
    /// (the host writing back its cache, ext4 discarding deleted logs), and
    /// 32 concurrent cold gets ran at 51-54K/s right after the flush against
    /// 70-78K/s after 3 s. fio's own runs read a file laid out before them;
    /// so do the gets. 0: no wait.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Seconds of each fio run paired with a round of reads.
    #[arg(long, default_value_t = 1)]
    paired_fio_secs: u64,
    /// Rounds of the flush benchmark: the first warms up, the one with the
    /// median build time of the others is reported (with fio, each is paired
    /// with a pass of fio's job over as many bytes: `paired_ratio`).
    #[arg(long, default_value_t = 6)]
    flush_rounds: usize,
    /// Options::flush_threads: threads that encode one flush in parallel parts.
    #[arg(long, default_value_t = ringdb::Options::default().flush_threads)]
    flush_threads: usize,
    /// CompactionOptions::max_subcompactions: threads one compaction may split its key range over.
    #[arg(long, default_value_t = ringdb::CompactionOptions::default().max_subcompactions)]
    subcompactions: usize,
    /// IoOptions::tokio_reactor: gets and scans issued from this benchmark's
    /// tokio runtime complete through the runtime's reactor, not the ring thread.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tokio_reactor: bool,
    /// IoOptions::tokio_reactor_max_in_flight: the most ops on the runtime's
    /// reactor; further ones go through the ring thread.
    #[arg(long, default_value_t = ringdb::io::IoOptions::default().tokio_reactor_max_in_flight)]
    tokio_reactor_max_in_flight: usize,
    /// Worker threads of the benchmark's tokio runtime (as many as the test
    /// machine's vCPUs by default).
    #[arg(long, default_value_t = 2)]
    tokio_workers: usize,
    /// Options::block_align_bytes: data blocks end on multiples of this (0: packed back to back).
    #[arg(long, default_value_t = Options::default().block_align_bytes)]
    block_align_bytes: usize,
    /// Print one JSON line per benchmark instead of the table.
    #[arg(long)]
    json: bool,
    /// Skip fio even if it is installed.
    #[arg(long)]
    no_fio: bool,
    /// Seconds fio runs per job.
    #[arg(long, default_value_t = 5)]
    fio_runtime_secs: u64,
    /// Where the fio job files live.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fio-configs"))]
    fio_configs: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fill,
    /// Random puts over keys that already exist (a loaded database).
    Overwrite,
    Flush,
    Read,
    /// A full scan of a loaded database.
    ReadSeq,
    /// A seek to a random key, then 10 more entries.
    SeekRandom,
    /// One manual compaction of level-0 tables into level 1.
    Compact,
    /// Random gets while one task overwrites.
    ReadWhileWriting,
}

struct Plan {
    name: &'static str,
    kind: Kind,
    ops: u64,
    tasks: usize,
    durability: Durability,
    random: bool,
    fio_job: Option<&'static str>,
}

struct Outcome {
    ops: u64,
    elapsed: Duration,
    latency_ns: Histogram<u64>,
    io_ops: u64,
    /// Extra figures of flush and read benchmarks.
    notes: Vec<(String, serde_json::Value)>,
    /// Bytes per second the ratio to fio is taken on, instead of ops/s.
    bytes_per_sec: Option<f64>,
}

fn durability(name: &str) -> Durability {
    match name {
        "synced" => Durability::Synced,
        "buffered" => Durability::Buffered,
        "written" => Durability::Written,
        other => panic!("--durability {other}: expected synced, written or buffered"),
    }
}

/// `n` as zero-padded decimal digits, right-aligned in `size` bytes (like db_bench's keys).
fn make_key(n: u64, size: usize) -> Vec<u8> {
    let mut key = vec![b'0'; size.max(1)];
    let mut rest = n;
    for byte in key.iter_mut().rev() {
        *byte = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    key
}

fn options(args: &Args) -> Options {
    let mut options = Options { group_commit_wait_us: args.group_commit_wait_us, ..Options::default() };
    options.io.ring_poll_us = args.ring_poll_us;
    options.io.tokio_reactor = args.tokio_reactor;
    options.io.tokio_reactor_max_in_flight = args.tokio_reactor_max_in_flight;
    options.compaction.max_subcompactions = args.subcompactions;
    options.flush_threads = args.flush_threads;
    options.block_align_bytes = args.block_align_bytes;
    options
}

/// See `--load-order`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LoadOrder {
    Sequential,
    Random,
}

/// Loads keys `0..count` in large buffered batches (not timed), in `--load-order`.
async fn load(db: &Db, count: u64, args: &Args) {
    match args.load_order {
        LoadOrder::Sequential => load_keys(db, 0..count, args).await,
        LoadOrder::Random => {
            // The same keys as in order (so the same table), each written once.
            let mut keys: Vec<u64> = (0..count).collect();
            keys.shuffle(&mut SmallRng::seed_from_u64(count));
            load_keys(db, keys, args).await;
        }
    }
}

/// Writes `keys` in the order given (buffered, batches of 1000).
async fn load_keys(db: &Db, keys: impl IntoIterator<Item = u64>, args: &Args) {
    let value = vec![0x5au8; args.value_size];
    let buffered = WriteOptions::with_durability(Durability::Buffered);
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let mut batch = WriteBatch::new();
        for k in keys.by_ref().take(1000) {
            batch.put(make_key(k, args.key_size), &value);
        }
        db.write(batch, buffered).await.expect("load");
    }
}

/// The flush benchmark: one memtable of `--load-num` entries becomes one table.
/// Each flush follows a load whose log is then synced ([`sync_load_log`]).
///
/// With fio (`paired_fio`: its new-file write job), each timed round is
/// followed by one pass of that job over as many bytes as the table, in the
/// same directory, and the note `paired_ratio` is the median over rounds of
/// the flush's bandwidth against that pass: on a disk whose speed drifts
/// from one second to the next, the closest like-for-like figure.
async fn run_flush(dir: &Path, args: &Args, paired_fio: Option<&fio::Job>) -> Outcome {
    let mut options = options(args);
    // Everything in one memtable, so the flush is measured alone, and no
    // compaction of the flushed tables running beside the next flush.
    options.write_buffer_size_bytes = usize::MAX / 2;
    options.compaction.disable_auto_compactions = true;
    let db = Db::open(dir, options).await.expect("open");
    // Equal flushes (each overwrites the previous one's keys); all but the
    // first are timed. A database flushes over and over on one thread, which reuses
    // its buffers; the first flush in a process also pays for touching fresh
    // memory, on this VM ~40% of its encoding (page faults clearing
    // transparent huge pages). It is reported as `first_encode_ms`.
    load(&db, args.load_num, args).await;
    sync_load_log(&db).await;
    let first = db.stats().flush;
    db.flush().await.expect("flush");
    let first_encode_us = db.stats().flush.encode_time_us - first.encode_time_us;
    let first_build_us = db.stats().flush.build_time_us - first.build_time_us;
    // The timed rounds (`--flush-rounds` - 1 of them); the one with the median
    // build time is reported.
    let mut rounds = Vec::new();
    let mut paired = Vec::new();
    let mut paired_overlap = Vec::new();
    let mut log_sync_ms = Vec::new();
    for _ in 1..args.flush_rounds.max(2) {
        load(&db, args.load_num, args).await;
        log_sync_ms.push(sync_load_log(&db).await.as_secs_f64() * 1e3);
        let before = db.stats().flush;
        let start = Instant::now();
        db.flush().await.expect("flush");
        let elapsed = start.elapsed();
        let after = db.stats().flush;
        let build = Duration::from_micros(after.build_time_us - before.build_time_us);
        let encode = Duration::from_micros(after.encode_time_us - before.encode_time_us);
        let table_bytes = after.bytes_written - before.bytes_written;
        if let Some(job) = paired_fio {
            let fio_dir = dir.join("fio");
            std::fs::create_dir_all(&fio_dir).expect("fio dir");
            let sized =
                fio::run_fio_sized(job, &fio_dir, Duration::from_secs(1), table_bytes.next_multiple_of(1 << 20));
            let _ = std::fs::remove_dir_all(&fio_dir);
            match sized {
                Ok(f) => {
                    let fio_bytes_per_sec = f.mib_per_sec * (1 << 20) as f64;
                    paired.push(table_bytes as f64 / build.as_secs_f64() / fio_bytes_per_sec);
                    // The overlap target with this round's own halves: its
                    // encode time, and its bytes at the rate fio wrote them
                    // right after it. The headline figure divides the median
                    // round by one separate fio run, which can fall in
                    // another phase of this noisy host.
                    let write_alone = table_bytes as f64 / fio_bytes_per_sec;
                    paired_overlap.push(build.as_secs_f64() / write_alone.max(encode.as_secs_f64()));
                }
                Err(e) => eprintln!("{}: {e}", job.name),
            }
        }
        rounds.push((
            build,
            encode,
            elapsed,
            after.bytes_written - before.bytes_written,
            after.entries_written - before.entries_written,
        ));
    }
    db.close().await.expect("close");
    rounds.sort();
    paired.sort_by(f64::total_cmp);
    if std::env::var_os("DB_BENCH_ROUNDS").is_some() {
        eprintln!("flush rounds, build ms: {:?}", rounds.iter().map(|r| r.0.as_millis()).collect::<Vec<_>>());
        eprintln!("flush rounds, paired ratios: {paired:.2?}");
        eprintln!("flush rounds, paired build / max(encode, write alone): {paired_overlap:.2?}");
    }
    let (build, encode, elapsed, bytes, entries) = rounds[rounds.len() / 2];
    let mut latency_ns = Histogram::<u64>::new(3).expect("histogram");
    let _ = latency_ns.record(build.as_nanos() as u64);
    let mut notes: Vec<(String, serde_json::Value)> = Vec::new();
    if let Some(ratio) = fio::median(paired.clone()) {
        notes.push(("paired_ratio".into(), ratio.into()));
    }
    if let Some(overlap) = fio::median(paired_overlap) {
        notes.push(("paired_build_over_max_of_halves".into(), overlap.into()));
    }
    if let Some(sync_ms) = fio::median(log_sync_ms) {
        notes.push(("load_log_sync_ms".into(), sync_ms.into()));
    }
    Outcome {
        ops: entries,
        elapsed,
        latency_ns,
        io_ops: 0,
        notes: notes
            .into_iter()
            .chain([
                ("timed_rounds".into(), (rounds.len() as u64).into()),
                ("table_bytes".into(), bytes.into()),
                ("build_ms".into(), (build.as_secs_f64() * 1e3).into()),
                ("encode_ms".into(), (encode.as_secs_f64() * 1e3).into()),
                ("first_encode_ms".into(), (first_encode_us as f64 / 1e3).into()),
                ("first_build_ms".into(), (first_build_us as f64 / 1e3).into()),
            ])
            .collect(),
        bytes_per_sec: Some(bytes as f64 / build.as_secs_f64()),
    }
}

/// Writes out and fdatasyncs the log of the keys just loaded, before a timed
/// flush, and returns how long that took. The load writes its log without
/// syncing (`Durability::Buffered`), so the log's bytes (as many as the
/// table's) wait in the disk's write-back cache, on the test VM the host's
/// page cache, and the first sync that follows has to write them back: left
/// to the flush, whose directory fsync at its start and fdatasync at its end
/// are those syncs, they cost it 110-190 ms of a 370-450 ms build (its writes
/// waited for the device while the host wrote the log back). fio's job, run
/// after a synced flush, finds the cache clean; so does the flush measured
/// after this.
async fn sync_load_log(db: &Db) -> Duration {
    let start = Instant::now();
    db.flush_wal(true).await.expect("sync the loaded keys' log");
    start.elapsed()
}

/// compact: `--load-num` keys flushed into many level-0 tables (automatic
/// compaction off), then one `compact_range` of them, timed. The ratio is the
/// compaction's input bytes per second against fio's 1 MiB QD2 sequential
/// reads: the read-ahead pattern of compaction inputs. With fio, the notes add
/// the ratio against `compaction_read_write_1m`, the same reads while as many
/// bytes are written alongside, as a compaction does.
///
/// Like `flush`, the second of two equal compactions is timed (the second
/// round's keys follow the first's, so it has the same inputs and no overlap
/// below): a compaction thread reuses its buffers, and the first compaction
/// of a process also pays for touching fresh memory. Its input rate is
/// reported as `first_read_mib_per_s`.
async fn run_compact(dir: &Path, args: &Args) -> Outcome {
    let mut options = options(args);
    options.write_buffer_size_bytes = 8 << 20;
    options.compaction.disable_auto_compactions = true;
    let db = Db::open(dir, options).await.expect("open");
    let mut first_read_mib_per_s = 0.0;
    let mut timed = None;
    for round in 0..2u64 {
        let keys = round * args.load_num..(round + 1) * args.load_num;
        load_keys(&db, keys.clone(), args).await;
        db.flush().await.expect("flush");
        let range = make_key(keys.start, args.key_size)..make_key(keys.end, args.key_size);
        let before = db.stats();
        let start = Instant::now();
        db.compact_range(range).await.expect("compact");
        let elapsed = start.elapsed();
        let after = db.stats();
        let read = after.compaction.bytes_read - before.compaction.bytes_read;
        let written = after.compaction.bytes_written - before.compaction.bytes_written;
        let input_tables = before.levels[0].tables;
        if round == 0 {
            first_read_mib_per_s = read as f64 / (1 << 20) as f64 / elapsed.as_secs_f64();
        } else {
            timed = Some((elapsed, read, written, input_tables));
        }
    }
    db.close().await.expect("close");
    let (elapsed, read, written, input_tables) = timed.expect("two rounds");
    let mut latency_ns = Histogram::<u64>::new(3).expect("histogram");
    let _ = latency_ns.record(elapsed.as_nanos() as u64);
    Outcome {
        ops: args.load_num,
        elapsed,
        latency_ns,
        io_ops: 0,
        notes: vec![
            ("input_tables".into(), input_tables.into()),
            ("read_mib".into(), (read as f64 / (1 << 20) as f64).into()),
            ("written_mib".into(), (written as f64 / (1 << 20) as f64).into()),
            ("read_mib_per_s".into(), (read as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()).into()),
            ("first_read_mib_per_s".into(), first_read_mib_per_s.into()),
        ],
        bytes_per_sec: Some(read as f64 / elapsed.as_secs_f64()),
    }
}

/// readseq (one full scan) and seekrandom (seek + 10 entries, `--reads` times)
/// on `--load-num` loaded, flushed and compacted keys.
async fn run_scans(dir: &Path, plan: &Plan, args: &Args, progress: &ProgressBar) -> Outcome {
    use futures::StreamExt;
    let options = options(args);
    let db = Db::open(dir, options.clone()).await.expect("open");
    load(&db, args.load_num, args).await;
    db.compact_range::<&[u8]>(..).await.expect("compact");
    let mut latency_ns = Histogram::<u64>::new(3).expect("histogram");
    let start = Instant::now();
    let mut entries = 0u64;
    if plan.kind == Kind::ReadSeq {
        let mut scan = std::pin::pin!(db.scan::<&[u8]>(..));
        while let Some(item) = scan.next().await {
            item.expect("scan");
            entries += 1;
            if entries.is_multiple_of(65536) {
                progress.set_position(entries);
            }
        }
        assert_eq!(entries, args.load_num, "a full scan sees every key");
    } else {
        let mut rng = SmallRng::seed_from_u64(11);
        for n in 0..plan.ops {
            let from = make_key(rng.gen_range(0..args.load_num), args.key_size);
            let issued = Instant::now();
            let mut scan = std::pin::pin!(db.scan(from..).take(11));
            while let Some(item) = scan.next().await {
                item.expect("seek");
                entries += 1;
            }
            let _ = latency_ns.record(issued.elapsed().as_nanos() as u64);
            if n % 1024 == 0 {
                progress.set_position(n);
            }
        }
    }
    let elapsed = start.elapsed();
    progress.finish_and_clear();
    let stats = db.stats();
    db.close().await.expect("close");
    let ops = if plan.kind == Kind::ReadSeq { entries } else { plan.ops };
    Outcome {
        ops,
        elapsed,
        latency_ns,
        io_ops: 0,
        notes: vec![("entries".into(), entries.into()), ("tables".into(), stats.tables().into())],
        bytes_per_sec: None,
    }
}

/// readrandom: load and flush `--load-num` keys, reopen (cold cache), then random gets.
///
/// With fio (`paired_fio`: the plan's job), the gets run in `--read-rounds`
/// rounds, each followed by a `--paired-fio-secs` run of that job on a file
/// laid out before the first round, and the note `paired_ratio` is the median
/// of the rounds' get rates against those runs (see `run_flush`).
async fn run_reads(
    dir: &Path,
    plan: &Plan,
    args: &Args,
    progress: &ProgressBar,
    paired_fio: Option<&fio::Job>,
) -> Outcome {
    let mut options = options(args);
    options.block_cache_size_bytes = args.read_cache_mib << 20;
    let db = Db::open(dir, options.clone()).await.expect("open");
    load(&db, args.load_num, args).await;
    db.flush().await.expect("flush");
    db.close().await.expect("close");
    let fio_dir = dir.join("fio");
    let paired_secs = Duration::from_secs(args.paired_fio_secs.max(1));
    if let Some(job) = paired_fio {
        // Lays out fio's file (untimed), so the rounds' fio runs only read.
        std::fs::create_dir_all(&fio_dir).expect("fio dir");
        if let Err(e) = fio::run_fio(job, &fio_dir, Duration::from_secs(1)) {
            eprintln!("{}: {e}", job.name);
        }
    }
    settle(args.settle_secs);
    // The gets are timed alone: a compaction the load left due (it resumes
    // at the reopen) rewrote the tables under the first half second of gets
    // (1 MiB writes beside 4 KiB reads, whose device time rose 4-20 times).
    // readwhilewriting measures reads beside background work.
    options.compaction.disable_auto_compactions = true;
    let db = Db::open(dir, options).await.expect("reopen");
    let stats_before = db.stats();
    let (key_space, key_size) = (args.load_num, args.key_size);
    let reader = db.clone();
    let op: Op = Arc::new(move |draw, _| {
        let db = reader.clone();
        Box::pin(async move {
            let found = db.get(make_key(draw % key_space, key_size)).await.expect("get");
            assert!(found.is_some(), "every loaded key is found");
        })
    });
    let rounds = if paired_fio.is_some() { args.read_rounds.max(1) as u64 } else { 1 };
    let mut latency_ns = Histogram::<u64>::new(3).expect("histogram");
    let mut elapsed = Duration::ZERO;
    let mut cpu = Duration::ZERO;
    let mut paired = Vec::new();
    for round in 0..rounds {
        let ops = plan.ops / rounds + u64::from(round < plan.ops % rounds);
        let (start, cpu_start) = (Instant::now(), cpu::process_cpu_time());
        latency_ns.add(run_tasks(plan.tasks, ops, 7 + round * 1000, progress, Arc::clone(&op)).await).expect("merge");
        let round_elapsed = start.elapsed();
        cpu += cpu::process_cpu_time().saturating_sub(cpu_start);
        elapsed += round_elapsed;
        if let Some(job) = paired_fio {
            match fio::run_fio(job, &fio_dir, paired_secs) {
                Ok(f) => paired.push(ops as f64 / round_elapsed.as_secs_f64() / f.iops),
                Err(e) => eprintln!("{}: {e}", job.name),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&fio_dir);
    progress.finish_and_clear();
    let after = db.stats();
    db.close().await.expect("close");
    let hits = after.block_cache.hits - stats_before.block_cache.hits;
    let misses = after.block_cache.misses - stats_before.block_cache.misses;
    let io_ops = after.io.ops_submitted - stats_before.io.ops_submitted;
    paired.sort_by(f64::total_cmp);
    if std::env::var_os("DB_BENCH_ROUNDS").is_some() {
        eprintln!("{} rounds, paired ratios: {paired:.2?}", plan.name);
    }
    let mut notes: Vec<(String, serde_json::Value)> = Vec::new();
    if let Some(ratio) = fio::median(paired.clone()) {
        notes.push(("paired_ratio".into(), ratio.into()));
    }
    notes.extend([
        ("table_bytes".into(), after.table_bytes().into()),
        ("tables".into(), after.tables().into()),
        ("cache_hit_rate".into(), (hits as f64 / (hits + misses).max(1) as f64).into()),
        ("device_reads_per_get".into(), (io_ops as f64 / plan.ops as f64).into()),
        ("cpu_us_per_get".into(), (cpu.as_secs_f64() * 1e6 / plan.ops as f64).into()),
    ]);
    Outcome { ops: plan.ops, elapsed, latency_ns, io_ops, notes, bytes_per_sec: None }
}

/// Lets the disk finish with what was just written before reads are timed
/// (see `--settle-secs`): a `sync` (ext4 commits its journal, issuing the
/// discards of deleted files), then a quiet wait.
fn settle(secs: u64) {
    if secs == 0 {
        return;
    }
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("sync: {e}");
    }
    std::thread::sleep(Duration::from_secs(secs));
}

/// One benchmark operation: given a random draw and the operation's number.
type Op = Arc<dyn Fn(u64, u64) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Runs operations 0..`ops` spread over `tasks` tokio tasks (each takes the
/// next number until none is left) and returns their merged latencies.
async fn run_tasks(tasks: usize, ops: u64, seed: u64, progress: &ProgressBar, op: Op) -> Histogram<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks.max(1))
        .map(|task| {
            let (next, progress, op) = (next.clone(), progress.clone(), op.clone());
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed + task as u64);
                let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= ops {
                        break;
                    }
                    let draw: u64 = rng.r#gen();
                    let issued = Instant::now();
                    op(draw, n).await;
                    let _ = histogram.record(issued.elapsed().as_nanos() as u64);
                    if n % 1024 == 0 {
                        progress.set_position(n);
                    }
                }
                histogram
            })
        })
        .collect();
    let mut latency_ns = Histogram::<u64>::new(3).expect("histogram");
    for handle in handles {
        latency_ns.add(handle.await.expect("task")).expect("merge");
    }
    progress.finish_and_clear();
    latency_ns
}

/// Writes of `plan` (sequential or random keys) with its durability.
fn write_op(db: &Db, plan: &Plan, args: &Args) -> Op {
    let (db, ops, random, key_size) = (db.clone(), plan.ops, plan.random, args.key_size);
    let value = Bytes::from((0..args.value_size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let write_options = WriteOptions::with_durability(plan.durability);
    Arc::new(move |draw, n| {
        let (db, value) = (db.clone(), value.clone());
        Box::pin(async move {
            let mut batch = WriteBatch::new();
            batch.put(make_key(if random { draw % ops } else { n }, key_size), &value);
            db.write(batch, write_options).await.expect("write");
        })
    })
}

async fn run(db: &Db, plan: &Plan, args: &Args, progress: &ProgressBar) -> Outcome {
    let io_before = db.io_stats().ops_submitted;
    let start = Instant::now();
    let latency_ns = run_tasks(plan.tasks, plan.ops, 1, progress, write_op(db, plan, args)).await;
    Outcome {
        ops: plan.ops,
        elapsed: start.elapsed(),
        latency_ns,
        io_ops: db.io_stats().ops_submitted - io_before,
        notes: Vec::new(),
        bytes_per_sec: None,
    }
}

/// readwhilewriting: `--concurrency` readers of random loaded keys while one
/// task overwrites random keys as fast as it can.
async fn run_read_while_writing(dir: &Path, plan: &Plan, args: &Args, progress: &ProgressBar) -> Outcome {
    let db = Db::open(dir, options(args)).await.expect("open");
    load(&db, args.load_num, args).await;
    db.flush().await.expect("flush");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let overwrite = Plan { name: "overwrite", kind: Kind::Overwrite, ops: args.load_num, tasks: 1, ..*plan };
        let (op, stop, writes) = (write_op(&db, &overwrite, args), stop.clone(), writes.clone());
        tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(99);
            while !stop.load(Ordering::Relaxed) {
                op(rng.r#gen(), 0).await;
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (key_space, key_size) = (args.load_num, args.key_size);
    let reader = db.clone();
    let op: Op = Arc::new(move |draw, _| {
        let db = reader.clone();
        Box::pin(async move {
            assert!(db.get(make_key(draw % key_space, key_size)).await.expect("get").is_some());
        })
    });
    let start = Instant::now();
    let latency_ns = run_tasks(plan.tasks, plan.ops, 13, progress, op).await;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let stats = db.stats();
    db.close().await.expect("close");
    let writes = writes.load(Ordering::Relaxed);
    Outcome {
        ops: plan.ops,
        elapsed,
        latency_ns,
        io_ops: 0,
        notes: vec![
            ("writes".into(), writes.into()),
            ("writes_per_s".into(), (writes as f64 / elapsed.as_secs_f64()).into()),
            ("tables".into(), stats.tables().into()),
        ],
        bytes_per_sec: None,
    }
}

fn main() {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let temp;
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
            std::fs::create_dir_all(&target).expect("create target/");
            temp = tempfile::Builder::new().prefix("db_bench.").tempdir_in(target).expect("temp dir");
            temp.path().to_path_buf()
        }
    };
    let with_fio = !args.no_fio && fio::fio_available();
    let jobs = fio::load_jobs(&args.fio_configs).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.tokio_workers.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let bulk = durability(&args.durability);
    let plans: Vec<Plan> = args
        .benchmarks
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| match name {
            "flush" => Plan {
                name: "flush",
                kind: Kind::Flush,
                ops: args.load_num,
                tasks: 1,
                durability: Durability::Buffered,
                random: false,
                fio_job: Some("seq_write_1m_qd4_new_file"),
            },
            "readrandom" => Plan {
                name: "readrandom",
                kind: Kind::Read,
                ops: args.reads,
                tasks: 1,
                durability: bulk,
                random: true,
                fio_job: Some("rand_read_4k_qd1"),
            },
            "readrandom_concurrent" => Plan {
                name: "readrandom_concurrent",
                kind: Kind::Read,
                ops: args.reads,
                tasks: args.read_concurrency.max(1),
                durability: bulk,
                random: true,
                fio_job: Some("rand_read_4k_qd32"),
            },
            "overwrite" => Plan {
                name: "overwrite",
                kind: Kind::Overwrite,
                ops: args.num,
                tasks: args.concurrency.max(1),
                durability: bulk,
                random: true,
                fio_job: None,
            },
            "readwhilewriting" => Plan {
                name: "readwhilewriting",
                kind: Kind::ReadWhileWriting,
                ops: args.reads,
                tasks: args.concurrency.max(1),
                durability: bulk,
                random: true,
                fio_job: None,
            },
            "compact" => Plan {
                name: "compact",
                kind: Kind::Compact,
                ops: args.load_num,
                tasks: 1,
                durability: Durability::Buffered,
                random: false,
                fio_job: Some("seq_read_1m_qd2"),
            },
            "readseq" => Plan {
                name: "readseq",
                kind: Kind::ReadSeq,
                ops: args.load_num,
                tasks: 1,
                durability: bulk,
                random: false,
                fio_job: None,
            },
            "seekrandom" => Plan {
                name: "seekrandom",
                kind: Kind::SeekRandom,
                ops: args.reads,
                tasks: 1,
                durability: bulk,
                random: true,
                fio_job: None,
            },
            "fillseq" => Plan {
                name: "fillseq",
                kind: Kind::Fill,
                ops: args.num,
                tasks: args.concurrency.max(1),
                durability: bulk,
                random: false,
                fio_job: None,
            },
            "fillrandom" => Plan {
                name: "fillrandom",
                kind: Kind::Fill,
                ops: args.num,
                tasks: args.concurrency.max(1),
                durability: bulk,
                random: true,
                fio_job: None,
            },
            "fillsync" => Plan {
                name: "fillsync",
                kind: Kind::Fill,
                ops: args.sync_num,
                tasks: 1,
                durability: Durability::Synced,
                random: true,
                fio_job: Some("wal_append_sync_4k"),
            },
            "fillsync_concurrent" => Plan {
                name: "fillsync_concurrent",
                kind: Kind::Fill,
                ops: args.sync_num,
                tasks: args.sync_concurrency.max(1),
                durability: Durability::Synced,
                random: true,
                fio_job: Some("wal_append_sync_64k"),
            },
            other => panic!("unknown benchmark {other:?}"),
        })
        .collect();
    if !args.json {
        println!(
            "db_bench: dir {} | keys {} B, values {} B, loaded in {} order | completions: {} | tokio workers: {} | fio: {}",
            base.display(),
            args.key_size,
            args.value_size,
            args.load_order.to_possible_value().expect("no variant is skipped").get_name(),
            if args.tokio_reactor { "tokio reactor" } else { "ring thread" },
            args.tokio_workers.max(1),
            if with_fio { "yes" } else { "not run (install fio to compare)" }
        );
        println!(
            "{:<20} {:>9} {:>5} {:>9} | {:>11} {:>8} {:>9} {:>9} {:>9} {:>8} | {:>10} {:>6}",
            "benchmark",
            "ops",
            "tasks",
            "mode",
            "ops/s",
            "MB/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "ops/io",
            "fio",
            "ratio"
        );
    }
    for plan in &plans {
        let dir = base.join(plan.name);
        let _ = std::fs::remove_dir_all(&dir);
        let progress = if args.json { ProgressBar::hidden() } else { ProgressBar::new(plan.ops) };
        progress.set_style(ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} {per_sec}").expect("style"));
        progress.set_message(plan.name);
        let outcome = runtime.block_on(async {
            match plan.kind {
                Kind::Flush => {
                    let paired =
                        plan.fio_job.filter(|_| with_fio).and_then(|name| jobs.iter().find(|j| j.name == name));
                    run_flush(&dir, &args, paired).await
                }
                Kind::Read => {
                    let paired =
                        plan.fio_job.filter(|_| with_fio).and_then(|name| jobs.iter().find(|j| j.name == name));
                    run_reads(&dir, plan, &args, &progress, paired).await
                }
                Kind::ReadSeq | Kind::SeekRandom => run_scans(&dir, plan, &args, &progress).await,
                Kind::Compact => run_compact(&dir, &args).await,
                Kind::ReadWhileWriting => run_read_while_writing(&dir, plan, &args, &progress).await,
                Kind::Fill | Kind::Overwrite => {
                    let db = Db::open(&dir, options(&args)).await.expect("open");
                    if plan.kind == Kind::Overwrite {
                        load(&db, args.num, &args).await;
                        db.flush().await.expect("flush");
                    }
                    let before = db.stats();
                    let mut outcome = run(&db, plan, &args, &progress).await;
                    db.flush().await.expect("flush");
                    let after = db.stats();
                    db.close().await.expect("close");
                    // Table bytes written per user byte, and live table bytes per byte of live data.
                    let table_writes = (after.flush.bytes_written + after.compaction.bytes_written)
                        - (before.flush.bytes_written + before.compaction.bytes_written);
                    let user_bytes = after.user_bytes_written - before.user_bytes_written;
                    // Distinct keys: all of them, except for a random fill of n draws
                    // from n keys, which hits n * (1 - 1/e) of them on average.
                    let distinct = match (plan.kind, plan.random) {
                        (Kind::Fill, true) => plan.ops as f64 * (1.0 - (-1.0f64).exp()),
                        _ => args.num.min(plan.ops) as f64,
                    };
                    let live_data = distinct * (args.key_size + args.value_size) as f64;
                    outcome.notes.push(("write_amp".into(), (table_writes as f64 / user_bytes.max(1) as f64).into()));
                    outcome.notes.push(("space_amp".into(), (after.table_bytes() as f64 / live_data).into()));
                    outcome.notes.push(("stall_ms".into(), (after.write_stall_us as f64 / 1000.0).into()));
                    outcome
                }
            }
        });
        progress.finish_and_clear();
        let _ = std::fs::remove_dir_all(&dir);
        let fio = plan.fio_job.filter(|_| with_fio).and_then(|name| jobs.iter().find(|j| j.name == name)).map(|job| {
            std::fs::create_dir_all(&dir).expect("fio dir");
            let figures = fio::run_fio(job, &dir, Duration::from_secs(args.fio_runtime_secs));
            let _ = std::fs::remove_dir_all(&dir);
            figures
        });
        let secs = outcome.elapsed.as_secs_f64();
        let ops_per_sec = outcome.ops as f64 / secs;
        let mb_per_sec = outcome.ops as f64 * (args.key_size + args.value_size) as f64 / secs / 1e6;
        let us = |q: f64| outcome.latency_ns.value_at_quantile(q) as f64 / 1000.0;
        let ops_per_io = outcome.ops as f64 / outcome.io_ops.max(1) as f64;
        let mode = format!("{:?}", plan.durability).to_lowercase();
        let (fio_iops, ratio) = match (&fio, outcome.bytes_per_sec) {
            (Some(Ok(f)), Some(bytes_per_sec)) => {
                (Some(f.mib_per_sec), Some(bytes_per_sec / (f.mib_per_sec * 1024.0 * 1024.0)))
            }
            (Some(Ok(f)), None) => (Some(f.iops), Some(ops_per_sec / f.iops)),
            (Some(Err(e)), _) => {
                eprintln!("{}: {e}", plan.name);
                (None, None)
            }
            (None, _) => (None, None),
        };
        let mut notes = outcome.notes.clone();
        if let (Kind::Compact, true, Some(bytes_per_sec)) = (plan.kind, with_fio, outcome.bytes_per_sec) {
            // The literal target compares the input rate with reads on an idle
            // disk; a compaction also writes what it reads, so show the rate
            // against fio doing both at once as well.
            if let Some(job) = jobs.iter().find(|j| j.name == "compaction_read_write_1m") {
                std::fs::create_dir_all(&dir).expect("fio dir");
                match fio::run_fio(job, &dir, Duration::from_secs(args.fio_runtime_secs)) {
                    Ok(mixed) => {
                        notes.push(("fio_read_with_writes_mib_per_s".into(), mixed.mib_per_sec.into()));
                        let ratio = bytes_per_sec / (mixed.mib_per_sec * 1024.0 * 1024.0);
                        notes.push(("ratio_to_fio_read_with_writes".into(), ratio.into()));
                    }
                    Err(e) => eprintln!("{}: {e}", job.name),
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        if let (Kind::Flush, Some(Ok(f))) = (plan.kind, &fio) {
            // The pipeline's target: no slower than the slower of its two halves run alone.
            let note = |name: &str| notes.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_f64()).unwrap_or(0.0);
            let table_bytes = note("table_bytes");
            let write_alone_ms = table_bytes / (f.mib_per_sec * 1024.0 * 1024.0) * 1e3;
            let build_ms = note("build_ms");
            let encode_ms = note("encode_ms");
            notes.push(("write_alone_at_fio_ms".into(), write_alone_ms.into()));
            notes.push(("build_over_max_of_halves".into(), (build_ms / write_alone_ms.max(encode_ms)).into()));
        }
        if args.json {
            let line = serde_json::json!({
                "benchmark": plan.name, "ops": outcome.ops, "tasks": plan.tasks, "durability": mode,
                "ops_per_sec": ops_per_sec, "mb_per_sec": mb_per_sec,
                "p50_us": us(0.5), "p99_us": us(0.99), "p999_us": us(0.999),
                "ops_per_io": ops_per_io, "fio_job": plan.fio_job, "fio_figure": fio_iops, "ratio_to_fio": ratio,
                "notes": serde_json::Value::Object(notes.iter().cloned().collect()),
            });
            println!("{line}");
        } else {
            let fio_cols = match (fio_iops, ratio) {
                (Some(iops), Some(ratio)) => format!("{iops:>10.0} {ratio:>6.2}"),
                _ => format!("{:>10} {:>6}", "-", "-"),
            };
            println!(
                "{:<20} {:>9} {:>5} {:>9} | {:>11.0} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>8.1} | {fio_cols}",
                plan.name,
                outcome.ops,
                plan.tasks,
                mode,
                ops_per_sec,
                mb_per_sec,
                us(0.5),
                us(0.99),
                us(0.999),
                ops_per_io
            );
            if !notes.is_empty() {
                let text: Vec<String> = notes
                    .iter()
                    .map(|(k, v)| match v.as_f64() {
                        Some(x) if x.fract() != 0.0 => format!("{k} {x:.3}"),
                        _ => format!("{k} {v}"),
                    })
                    .collect();
                println!("{:<20} {}", "", text.join(", "));
            }
        }
    }
}
