//! Per-operation overhead of the I/O driver, with the device taken out of the
//! picture: 4 KiB O_DIRECT reads of a file that is allocated but never written
//! (unwritten extents), in a temp directory under `./target`. The filesystem
//! answers them with zeroes without asking the device, inside the submitting
//! `io_uring_enter`, so what is timed is the driver and the kernel's read path.
//! (tmpfs, used before 2026-11-27, answers an io_uring read from an io-wq
//! worker thread, not inline, so the io_uring rows then timed that hand-off.)
//! Where the filesystem cannot allocate, the file is written instead, and the
//! reads then go to the device or the page cache.
//!
//! - `read_4k_qd1`: one read at a time; the cost of a submit/complete round trip
//!   (caller -> ring thread -> kernel -> ring thread -> caller).
//! - `read_4k_batch64`: 64 reads submitted together; shows what batching
//!   (many SQEs per io_uring_enter) buys per operation.
//!
//! Both run on the io_uring and the portable backend, and on io_uring also
//! from a 1-worker tokio runtime whose reactor holds the whole queue
//! (`IoOptions::tokio_reactor`, `tokio_reactor_max_in_flight` 64): a task
//! on the worker submits and the reaper task on the same worker reaps, with
//! no ring thread in the path (`reactor_read_4k_qd1`, `reactor_read_4k_batch64`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use ringdb::io::{Backend, BufPool, DirectFile, Io, IoOptions};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 1024;

fn bench_dir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).expect("create target/");
    tempfile::Builder::new().prefix("io_driver_bench.").tempdir_in(base).expect("temp dir")
}

fn setup(options: IoOptions, dir: &std::path::Path) -> (Io, DirectFile, BufPool) {
    let backend = options.backend;
    let io = Io::new(options).expect("backend");
    let file = block_on(DirectFile::create(&io, dir.join(format!("{backend}.data")))).expect("create");
    let pool = BufPool::new(BLOCK, file.alignment(), 128);
    block_on(async {
        if file.allocate(0, BLOCKS * BLOCK as u64).await.is_ok() {
            return;
        }
        for i in 0..BLOCKS {
            let mut buf = pool.get();
            buf.extend_from_slice(&[i as u8; BLOCK]);
            file.write_at(buf, i * BLOCK as u64).await.expect("fill");
        }
    });
    (io, file, pool)
}

fn driver(c: &mut Criterion) {
    let dir = bench_dir();
    let mut group = c.benchmark_group("io_driver");
    for backend in [Backend::IoUring, Backend::Posix] {
        let (_io, file, pool) = setup(IoOptions { backend, ..IoOptions::default() }, dir.path());
        let mut next = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("read_4k_qd1", backend), |b| {
            b.iter(|| {
                next = (next + 7) % BLOCKS;
                block_on(file.read_at(pool.get(), next * BLOCK as u64, BLOCK)).expect("read")
            })
        });
        group.throughput(Throughput::Elements(64));
        group.bench_function(BenchmarkId::new("read_4k_batch64", backend), |b| {
            b.iter(|| {
                next = (next + 64) % BLOCKS;
                let reads = (0..64u64).map(|i| file.read_at(pool.get(), ((next + i) % BLOCKS) * BLOCK as u64, BLOCK));
                block_on(futures::future::join_all(reads))
            })
        });
    }
    // The reactor's path as a service has it: a task on the runtime's worker
    // submits, the reaper task on the same worker reaps. Each sample is one
    // task that runs all of its iterations, timed from inside.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let options = IoOptions {
        backend: Backend::IoUring,
        tokio_reactor: true,
        tokio_reactor_max_in_flight: 64,
        ..IoOptions::default()
    };
    let (io, file, pool) = setup(options, dir.path());
    let (file, pool) = (std::sync::Arc::new(file), std::sync::Arc::new(pool));
    let on_the_worker = |iters: u64, batch: u64| {
        let (file, pool) = (file.clone(), pool.clone());
        runtime
            .block_on(runtime.spawn(async move {
                let start = std::time::Instant::now();
                for iter in 0..iters {
                    let first = iter * batch;
                    let reads =
                        (0..batch).map(|i| file.read_at(pool.get(), ((first + i) * 7 % BLOCKS) * BLOCK as u64, BLOCK));
                    for read in futures::future::join_all(reads).await {
                        read.expect("read");
                    }
                }
                start.elapsed()
            }))
            .expect("task")
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("reactor_read_4k_qd1", |b| b.iter_custom(|iters| on_the_worker(iters, 1)));
    group.throughput(Throughput::Elements(64));
    group.bench_function("reactor_read_4k_batch64", |b| b.iter_custom(|iters| on_the_worker(iters, 64)));
    assert!(io.stats().reactor_ops > 0, "the reads went through the reactor");
    group.finish();
}

criterion_group!(benches, driver);
criterion_main!(benches);
