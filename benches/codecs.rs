//! The SST codecs on their own, through `ringdb::internals` (not a public API):
//!
//! - `block/encode`, `block/decode`: one 4 KiB-class data block of internal keys
//!   (16-byte user keys, 100-byte values, restart interval 16); decode verifies the
//!   trailer, walks every entry and seeks a few keys. Throughput in block bytes.
//! - `bloom/add`: building the filter of 10,000 keys at 10 bits per key;
//!   `bloom/query_present`, `bloom/query_absent`: lookups of keys that are / are not in it.
//!   Throughput in keys.
//! - `table/build_100k`: writing a whole table of 100,000 entries (16-byte keys, 100-byte
//!   values) with the default options, fdatasync included, into `/dev/shm` where it exists
//!   (memory-backed, so this measures the encoder and the write pipeline, not a device).
//!   Throughput in table bytes.
//!
//! Each group measures for a few seconds, so `cargo bench --bench codecs` takes about a
//! minute and `-- --quick` a few seconds.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use rand::{Rng, SeedableRng};
use ringdb::internals;
use ringdb::io::{Io, IoOptions};

fn user_key(i: u64) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let mut value = vec![0u8; 100];
    for (j, byte) in value.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31).wrapping_add(j as u8);
    }
    value
}

fn bench_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

fn block(c: &mut Criterion) {
    // About what the table writer puts in one 4 KiB block: 33 entries of 24 + 100 bytes.
    let entries: Vec<(Vec<u8>, Vec<u8>)> =
        (0..33).map(|i| (internals::internal_key(&user_key(i), 7), value(i))).collect();
    let encoded = internals::encode_block(&entries, 16);
    assert_eq!(internals::decode_block_all(&encoded).expect("valid block"), entries.len());
    let mut group = c.benchmark_group("block");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| b.iter(|| internals::encode_block(std::hint::black_box(&entries), 16)));
    group.bench_function("decode", |b| {
        b.iter(|| internals::decode_block_all(std::hint::black_box(&encoded)).expect("valid block"))
    });
    group.finish();
}

fn bloom(c: &mut Criterion) {
    const KEYS: u64 = 10_000;
    let present: Vec<Vec<u8>> = (0..KEYS).map(user_key).collect();
    let absent: Vec<Vec<u8>> = (KEYS..2 * KEYS).map(user_key).collect();
    let filter = internals::bloom_build(&present, 10);
    assert_eq!(internals::bloom_count_may_contain(&filter, &present), present.len(), "no false negatives");
    let mut group = c.benchmark_group("bloom");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("add", |b| b.iter(|| internals::bloom_build(std::hint::black_box(&present), 10)));
    group.bench_function("query_present", |b| {
        b.iter(|| internals::bloom_count_may_contain(&filter, std::hint::black_box(&present)))
    });
    group.bench_function("query_absent", |b| {
        b.iter(|| internals::bloom_count_may_contain(&filter, std::hint::black_box(&absent)))
    });
    group.finish();
    // A flush's filter: a million keys, 1.2 MB of bits, far beyond L1.
    let many: Vec<Vec<u8>> = (0..1_000_000).map(user_key).collect();
    let mut group = c.benchmark_group("bloom");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(many.len() as u64));
    group.bench_function("add_1m", |b| b.iter(|| internals::bloom_build(std::hint::black_box(&many), 10)));
    group.finish();
}

fn table(c: &mut Criterion) {
    const ENTRIES: u64 = 100_000;
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..ENTRIES).map(|i| (user_key(i), value(i))).collect();
    let dir = bench_dir();
    let io = Io::new(IoOptions::default()).expect("I/O backend");
    let path = dir.path().join("000001.sst");
    let size = block_on(internals::build_table(&io, &path, &entries)).expect("build");
    assert_eq!(block_on(internals::read_table_all(&io, &path)).expect("read back"), ENTRIES as usize);
    let mut group = c.benchmark_group("table");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(size));
    group.bench_function("build_100k", |b| {
        b.iter_batched(
            || std::fs::remove_file(&path).ok(),
            |_| block_on(internals::build_table(&io, &path, &entries)).expect("build"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn merge(c: &mut Criterion) {
    // A level-0 compaction of 58 overlapping tables (db_bench compact): every
    // run covers the whole key range, and which run holds the next key is
    // random, as with random writes.
    let runs_count = 58u64;
    let per_run = 2_000u64;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(58);
    let mut runs: Vec<Vec<(Vec<u8>, u64)>> = vec![Vec::new(); runs_count as usize];
    for i in 0..runs_count * per_run {
        runs[rng.gen_range(0..runs_count as usize)].push((user_key(i), i + 1));
    }
    let runs = internals::merge_runs(&runs);
    let entries = runs_count * per_run;
    assert_eq!(internals::merge_all(&runs).0 as u64, entries);
    let mut group = c.benchmark_group("merge");
    group.measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(entries));
    group.bench_function("58_runs", |b| b.iter(|| internals::merge_all(std::hint::black_box(&runs))));
    group.finish();
}

criterion_group!(benches, block, bloom, table, merge);
criterion_main!(benches);
