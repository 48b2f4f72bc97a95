//! io_bench: the engine's I/O patterns through `ringdb::io`, next to fio running
//! the matching job of `fio-configs/` on the same directory, in one invocation.
//!
//! ```text
//! cargo run --release --example io_bench                       # all patterns, 5 s each side
//! cargo run --release --example io_bench -- --runtime-secs 10 --dir /mnt/nvme/bench
//! cargo run --release --example io_bench -- --pattern rand_read_4k_qd1 --no-fio
//! ```
//!
//! Each pattern's block size, queue depth, file size, fdatasync and end_fsync settings are
//! read from its fio job file, so the two sides cannot drift apart. Ratios
//! (ringdb / fio) measured in one run are what to quote on a noisy machine:
//! `ratio` is that of the means over the rounds, `paired` the median of the
//! rounds' own ratios (each round runs both sides back to back). `cpu us` is
//! the CPU time (user and system, all threads) per operation: the engine's
//! process over the measured span (its ring thread's poll included), and
//! fio's job thread from fio's own report, which leaves out the kernel's io-wq
//! workers (fsyncs; `docs/io.md`, "CPU time per operation"). It moves far
//! less than the rates when the shared disk's speed swings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/fio.rs"]
mod fio;
use fio::{Figures, Job, fio_available, load_jobs, median, run_fio};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use ringdb::io::{Backend, BufPool, DirectFile, Io, IoOptions};

#[derive(Parser, Debug)]
#[command(about = "ringdb I/O patterns vs fio on the same directory")]
struct Args {
    /// Directory for the data files (default: a temporary directory under ./target).
    #[arg(long, env = "RINGDB_BENCH_DIR")]
    dir: Option<PathBuf>,
    /// Measured seconds per pattern and side (after one second of ramp-up).
    #[arg(long, default_value_t = 2)]
    runtime_secs: u64,
    /// Only run patterns whose name contains this (repeatable).
    #[arg(long)]
    pattern: Vec<String>,
    /// Rounds per pattern; each round runs both sides, in alternating order.
    /// Short rounds, often alternated: this disk's speed drifts over seconds,
    /// and both sides should see the same drift.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Skip fio even if it is installed.
    #[arg(long)]
    no_fio: bool,
    /// Read patterns read a file that is allocated but never written (ext4's
    /// unwritten extents): the filesystem returns zeroes without asking the
    /// device, for the engine and fio alike, so the rows compare the software
    /// path of a read alone (submission, completion, wake-up), free of the
    /// disk's noise. Not a measure of the disk.
    #[arg(long)]
    unwritten: bool,
    /// I/O backend: auto, io_uring or posix.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// How long the ring thread polls before sleeping, in microseconds (IoOptions::ring_poll_us).
    #[arg(long, default_value_t = 100)]
    ring_poll_us: u64,
    /// Most SQEs per io_uring_enter (IoOptions::max_sqes_per_enter).
    #[arg(long, default_value_t = 8)]
    max_sqes_per_enter: usize,
    /// Who runs the engine side's workers (one per queue slot):
    /// `tokio` (tasks of a 2-worker multi-thread runtime, completions through
    /// its reactor: IoOptions::tokio_reactor, at most 2 ops on it and the rest
    /// through the ring thread, as the engine's defaults have it),
    /// `one-thread` (the same tasks on a 1-worker runtime that keeps every op
    /// on its reactor, IoOptions::tokio_reactor_max_in_flight: fio's shape,
    /// one thread that submits, waits and reaps; the `_2threads` row then
    /// compares one engine thread with two fio threads), `tokio-ring-thread` (the same
    /// tasks, completions through the ring thread), `block-on` (each caller
    /// thread a futures block_on over its share, parking between
    /// completions), or `spin` (the same, busy-polling instead of parking:
    /// the engine's own cost without any thread wake-up).
    #[arg(long, default_value = "tokio")]
    caller: Caller,
    /// Worker threads of the `tokio` and `tokio-ring-thread` callers' runtime.
    #[arg(long, default_value_t = 2)]
    tokio_workers: usize,
    /// OS threads of the `block-on` and `spin` callers.
    #[arg(long, default_value_t = 1)]
    caller_threads: usize,
    /// Most ops on a runtime's reactor (IoOptions::tokio_reactor_max_in_flight)
    /// for the `tokio` caller; the engine's default if not given. The
    /// `one-thread` caller always keeps every op on its reactor, and the other
    /// callers use no reactor, so they ignore it.
    #[arg(long)]
    reactor_max_in_flight: Option<usize>,
    /// Where the fio job files live.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fio-configs"))]
    fio_configs: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Tokio,
    OneThread,
    TokioRingThread,
    BlockOn,
    Spin,
}

impl Caller {
    fn describe(self) -> &'static str {
        match self {
            Caller::Tokio => "tokio tasks, completions via the runtime's reactor (at most 2) or the ring thread",
            Caller::OneThread => "tokio tasks on one worker, every op on its reactor",
            Caller::TokioRingThread => "tokio tasks, completions via the ring thread",
            Caller::BlockOn => "block_on threads (park between completions)",
            Caller::Spin => "spinning threads (never park)",
        }
    }
}

const RAMP: Duration = Duration::from_secs(1);

/// Writes the whole file sequentially (untimed), as fio lays out a file before reading it.
async fn lay_out(io: &Io, path: &Path, file_bytes: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= file_bytes) {
        return;
    }
    let file = DirectFile::create(io, path).await.expect("create");
    let chunk = 1 << 20;
    let pool = BufPool::new(chunk, file.alignment(), 8);
    let mut rng = SmallRng::seed_from_u64(1);
    let mut writes = FuturesUnordered::new();
    let mut offset = 0;
    while offset < file_bytes || !writes.is_empty() {
        while offset < file_bytes && writes.len() < 8 {
            let mut buf = pool.get();
            rng.fill(buf.as_full_mut_slice());
            buf.set_len(chunk.min((file_bytes - offset) as usize));
            writes.push(file.write_at(buf, offset));
            offset += chunk as u64;
        }
        writes.next().await.expect("a write").expect("lay out");
    }
    file.sync_data().await.expect("sync");
}

/// What the engine side's workers share during one pattern.
struct Run {
    job: Job,
    file: DirectFile,
    pool: BufPool,
    blocks: u64,
    writing: bool,
    next_block: AtomicU64,
    measured_ops: AtomicU64,
    latency_ns: AtomicU64,
    measure_from: Instant,
    end: Instant,
}

/// One queue slot: issues the pattern's ops one after another until the end.
async fn worker(run: Arc<Run>, seed: u64) {
    let job = &run.job;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut payload = run.pool.get();
    rng.fill(payload.as_full_mut_slice());
    let mut payload = Some(payload);
    loop {
        let issued = Instant::now();
        if issued >= run.end {
            break;
        }
        let block = match job.rw.as_str() {
            "randread" | "randwrite" => rng.gen_range(0..run.blocks),
            _ if job.one_pass => match run.next_block.fetch_add(1, Ordering::Relaxed) {
                block if block < run.blocks => block,
                _ => break,
            },
            _ => run.next_block.fetch_add(1, Ordering::Relaxed) % run.blocks,
        };
        let offset = block * job.block_bytes as u64;
        if run.writing {
            let mut buf = payload.take().expect("payload");
            buf.set_len(job.block_bytes);
            let buf = if job.fdatasync {
                run.file.write_at_and_sync(buf, offset).await
            } else {
                run.file.write_at(buf, offset).await
            };
            payload = Some(buf.expect("write"));
        } else {
            let buf = run.file.read_at(run.pool.get(), offset, job.block_bytes).await.expect("read");
            assert_eq!(buf.len(), job.block_bytes);
        }
        let done = Instant::now();
        if issued >= run.measure_from && done <= run.end {
            run.measured_ops.fetch_add(1, Ordering::Relaxed);
            run.latency_ns.fetch_add((done - issued).as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Runs one pattern through ringdb::io for RAMP + runtime and reports the measured part.
fn run_engine(
    io: &Io,
    job: &Job,
    dir: &Path,
    runtime: Duration,
    args: &Args,
    tokio: &tokio::runtime::Runtime,
) -> Figures {
    let (caller, caller_threads) = (args.caller, args.caller_threads.max(1));
    let path = dir.join(&job.file_name);
    let writing = job.rw == "write";
    let file = futures::executor::block_on(async {
        // A new allocated file: to write into, as fio's default
        // (fallocate=native) reserves its file first; or, with --unwritten,
        // to read zeroes from, made anew each round so that a written file
        // left by another run cannot send the reads to the device.
        if writing || args.unwritten {
            let _ = std::fs::remove_file(&path);
            let file = DirectFile::create(io, &path).await.expect("create");
            file.allocate(0, job.file_bytes).await.expect("allocate");
        } else {
            lay_out(io, &path, job.file_bytes).await;
        }
        DirectFile::open(io, &path).await.expect("open")
    });
    let pool = BufPool::new(job.block_bytes, file.alignment(), job.queue_depth * 2);
    let start = Instant::now();
    // A one-pass job writes its file once, all of it measured, however long that takes.
    let (measure_from, end) =
        if job.one_pass { (start, start + Duration::from_secs(3600)) } else { (start + RAMP, start + RAMP + runtime) };
    let run = Arc::new(Run {
        job: job.clone(),
        file,
        pool,
        blocks: job.file_bytes / job.block_bytes as u64,
        writing,
        next_block: AtomicU64::new(0),
        measured_ops: AtomicU64::new(0),
        latency_ns: AtomicU64::new(0),
        measure_from,
        end,
    });
    // The process's CPU time over the measured span: sampled when the ramp
    // ends (by a thread that waits for it), and when the workers are done.
    let cpu_at_measure_start = std::thread::spawn(move || {
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        cpu::process_cpu_time()
    });
    match caller {
        Caller::Tokio | Caller::OneThread | Caller::TokioRingThread => tokio.block_on(async {
            let tasks: Vec<_> =
                (0..job.queue_depth as u64).map(|seed| tokio::spawn(worker(Arc::clone(&run), seed))).collect();
            for task in tasks {
                task.await.expect("worker");
            }
        }),
        // queue_depth workers keep that many ops in flight, spread over caller threads.
        Caller::BlockOn | Caller::Spin => std::thread::scope(|scope| {
            for thread in 0..caller_threads {
                let run = &run;
                scope.spawn(move || {
                    let workers: FuturesUnordered<_> = (0..job.queue_depth as u64)
                        .filter(|w| *w as usize % caller_threads == thread)
                        .map(|seed| worker(Arc::clone(run), seed))
                        .collect();
                    let all = workers.collect::<Vec<()>>();
                    if caller == Caller::Spin {
                        spin_on(all)
                    } else {
                        futures::executor::block_on(all)
                    };
                });
            }
        }),
    }
    if job.end_fsync {
        // Inside the timed span, as fio counts its end_fsync.
        futures::executor::block_on(run.file.sync_data()).expect("sync");
    }
    let cpu_used = cpu::process_cpu_time().saturating_sub(cpu_at_measure_start.join().expect("CPU sampler"));
    let ops = run.measured_ops.load(Ordering::Relaxed) as f64;
    let secs = if job.one_pass { start.elapsed().as_secs_f64() } else { runtime.as_secs_f64() };
    Figures {
        iops: ops / secs,
        mib_per_sec: ops * job.block_bytes as f64 / secs / (1 << 20) as f64,
        mean_latency_us: run.latency_ns.load(Ordering::Relaxed) as f64 / ops.max(1.0) / 1000.0,
        cpu_us_per_op: cpu_used.as_secs_f64() * 1e6 / ops.max(1.0),
    }
}

/// Runs a future to completion on this thread without ever parking it.
fn spin_on<F: std::future::Future>(future: F) -> F::Output {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::hint::spin_loop();
    }
}

fn main() {
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let backend: Backend = args.backend.parse().expect("--backend");
    let jobs: Vec<Job> = load_jobs(&args.fio_configs)
        .expect("fio-configs")
        .into_iter()
        .filter(|job| args.pattern.is_empty() || args.pattern.iter().any(|p| job.name.contains(p.as_str())))
        // A job file with companion jobs models a whole engine activity
        // (reads and writes at once): db_bench runs it next to the engine.
        .filter(|job| job.companion_jobs == 0)
        .collect();
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).expect("create --dir");
            dir.clone()
        }
        None => {
            let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
            std::fs::create_dir_all(&base).expect("create target/");
            temp = tempfile::Builder::new().prefix("io_bench.").tempdir_in(base).expect("temp dir");
            temp.path().to_path_buf()
        }
    };
    let runtime = Duration::from_secs(args.runtime_secs.max(1));
    let with_fio = !args.no_fio && fio_available();
    let max_depth = jobs.iter().map(|j| j.queue_depth).max().unwrap_or(1) as u32;
    // The `tokio` callers' runtime: by default 2 workers, as in db_bench (the
    // test machine has 2 vCPUs).
    let one_thread = args.caller == Caller::OneThread;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if one_thread { 1 } else { args.tokio_workers.max(1) })
        .enable_all()
        .build()
        .expect("runtime");
    let defaults = IoOptions::default();
    let queue_depth = max_depth.max(64);
    let io = Io::new(IoOptions {
        backend,
        queue_depth,
        ring_poll_us: args.ring_poll_us,
        max_sqes_per_enter: args.max_sqes_per_enter,
        tokio_reactor: matches!(args.caller, Caller::Tokio | Caller::OneThread),
        tokio_reactor_max_in_flight: if one_thread {
            queue_depth as usize
        } else {
            args.reactor_max_in_flight.unwrap_or(defaults.tokio_reactor_max_in_flight)
        },
        ..defaults
    })
    .expect("I/O backend");
    let probe = futures::executor::block_on(DirectFile::create(&io, dir.join("probe"))).expect("probe file");
    println!(
        "io_bench: dir {} | backend {} | O_DIRECT {} | alignment {} B | {} rounds of {} s per side | caller {} | buffers of 256 KiB+: {} | fio: {}{}",
        dir.display(),
        io.backend(),
        probe.is_direct(),
        probe.alignment(),
        args.rounds.max(1),
        runtime.as_secs(),
        args.caller.describe(),
        large_buffer_memory(),
        if with_fio { "yes (its buffers: malloc, fio's default)" } else { "not run (install fio to compare)" },
        if args.unwritten { " | reads of unwritten extents: no device I/O, the software path alone" } else { "" }
    );
    drop(probe);
    let _ = std::fs::remove_file(dir.join("probe"));
    let name_width = jobs.iter().map(|job| job.name.len()).max().unwrap_or(0).max("pattern".len());
    println!(
        "{:<name_width$} {:>6} {:>3} | {:>12} {:>10} {:>9} {:>6} | {:>10} {:>10} {:>9} {:>6} | {:>6} {:>6}",
        "pattern",
        "bs",
        "qd",
        "ringdb MiB/s",
        "IOPS",
        "lat us",
        "cpu us",
        "fio MiB/s",
        "IOPS",
        "lat us",
        "cpu us",
        "ratio",
        "paired"
    );
    for job in &jobs {
        // Alternate the order (ringdb, fio, fio, ringdb, ...) so drift on a noisy
        // machine hits both sides alike; report the mean of the rounds.
        let mut engine_rounds = Vec::new();
        let mut fio_rounds: Vec<Result<Figures, String>> = Vec::new();
        for round in 0..args.rounds.max(1) {
            for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
                if side == 0 {
                    engine_rounds.push(run_engine(&io, job, &dir, runtime, &args, &tokio));
                } else if with_fio {
                    fio_rounds.push(run_fio(job, &dir, runtime));
                }
            }
        }
        let engine = Figures::mean(&engine_rounds);
        let fio_rounds = with_fio.then(|| fio_rounds.into_iter().collect::<Result<Vec<_>, _>>());
        // Round r of each side ran back to back: their ratio saw the same
        // disk. The median of those ratios shrugs off a round in which the
        // host stalled one side, which the ratio of the means does not.
        let paired = match &fio_rounds {
            Some(Ok(fio)) => median(engine_rounds.iter().zip(fio).map(|(e, f)| e.iops / f.iops).collect()),
            _ => None,
        };
        let fio = fio_rounds.map(|rounds| rounds.map(|f| Figures::mean(&f)));
        let bs = if job.block_bytes >= 1 << 10 {
            format!("{}k", job.block_bytes >> 10)
        } else {
            job.block_bytes.to_string()
        };
        let (fio_cols, ratio) = match &fio {
            Some(Ok(f)) => (
                format!("{:>10.1} {:>10.0} {:>9.1} {:>6.1}", f.mib_per_sec, f.iops, f.mean_latency_us, f.cpu_us_per_op),
                format!("{:>6.2}", engine.iops / f.iops),
            ),
            Some(Err(e)) => {
                eprintln!("{}: {e}", job.name);
                (format!("{:>39}", "fio failed"), format!("{:>6}", "-"))
            }
            None => (format!("{:>39}", "-"), format!("{:>6}", "-")),
        };
        let paired = paired.map_or_else(|| format!("{:>6}", "-"), |p| format!("{p:>6.2}"));
        println!(
            "{:<name_width$} {:>6} {:>3} | {:>12.1} {:>10.0} {:>9.1} {:>6.1} | {fio_cols} | {ratio} {paired}",
            job.name,
            bs,
            job.queue_depth,
            engine.mib_per_sec,
            engine.iops,
            engine.mean_latency_us,
            engine.cpu_us_per_op
        );
        let _ = std::fs::remove_file(dir.join(&job.file_name));
    }
    let stats = io.stats();
    println!(
        "ringdb io: {} ops, {} SQEs in {} submitting io_uring_enter calls ({:.1} SQEs per submit)",
        stats.ops_submitted,
        stats.sqes_submitted,
        stats.submitting_enters,
        stats.sqes_submitted as f64 / stats.submitting_enters.max(1) as f64
    );
}

/// Where the engine's buffers of 256 KiB or more live: on transparent huge
/// pages when the kernel offers them for advised memory (`docs/io.md`, "Large
/// buffers on huge pages"). This decides the sequential rows on a VM whose
/// disk handles every segment of a request separately.
fn large_buffer_memory() -> String {
    let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let mode = enabled.split_once('[').and_then(|(_, rest)| rest.split_once(']')).map(|(mode, _)| mode.to_string());
    match mode.as_deref() {
        Some("always" | "madvise") => format!("huge pages (THP {})", mode.unwrap_or_default()),
        Some(other) => format!("4 KiB pages (THP {other})"),
        None => "4 KiB pages (no THP)".to_string(),
    }
}
