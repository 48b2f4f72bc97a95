//! Per-operation overhead of the I/O driver, with the device taken out of the
//! picture: 4 KiB reads of a file in tmpfs (/dev/shm, memory-backed, O_DIRECT
//! allowed since Linux 6.6) or, where that is missing, the temp directory.
//!
//! - `read_4k_qd1`: one read at a time; the cost of a submit/complete round trip
//!   (caller -> ring thread -> kernel -> ring thread -> caller).
//! - `read_4k_batch64`: 64 reads submitted together; shows what batching
//!   (many SQEs per io_uring_enter) buys per operation.
//!
//! Both run on the io_uring and the portable backend.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use ringdb::io::{Backend, BufPool, DirectFile, Io, IoOptions};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 1024;

fn bench_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

fn setup(backend: Backend, dir: &std::path::Path) -> (Io, DirectFile, BufPool) {
    let io = Io::new(IoOptions { backend, ..IoOptions::default() }).expect("backend");
    let file = block_on(DirectFile::create(&io, dir.join(format!("{backend}.data")))).expect("create");
    let pool = BufPool::new(BLOCK, file.alignment(), 128);
    block_on(async {
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
        let (_io, file, pool) = setup(backend, dir.path());
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
    group.finish();
}

criterion_group!(benches, driver);
criterion_main!(benches);
