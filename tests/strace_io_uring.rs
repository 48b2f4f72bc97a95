//! Proof that file data moves through io_uring: the workload (a DirectFile, and
//! a database writing its log and recovering it) runs in a child process under
//! `strace -f -y`, and no read/write/pread64/pwrite64 (or vectored variant) may
//! name the data file or a database file: log (`.wal`), table (`.sst`),
//! `MANIFEST-*` or `CURRENT`. The database part flushes, compacts, scans and
//! reopens, so every engine I/O pattern is in the trace. The same check run on the
//! portable backend must find its pwrite64/pread64 calls, which proves the
//! check can fail.
//!
//! Needs `strace`; without it the test is skipped unless `RINGDB_REQUIRE_STRACE=1`
//! (set by `.ci/run`, which installs strace).

mod common;

use std::path::Path;
use std::process::Command;

use common::pattern;
use ringdb::io::{Backend, DirectFile, Io, IoOptions};

const CHILD_ENV: &str = "RINGDB_STRACE_CHILD_DIR";
const DATA_NAME: &str = "traced.data";

/// The traced workload; does nothing unless started by the parent test.
#[test]
fn strace_child_workload() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let io = Io::new(IoOptions { backend: Backend::Auto, ..IoOptions::default() }).unwrap();
    let db_dir = Path::new(&dir).join("db");
    // Small memtables and levels: flushes, compactions and MANIFEST
    // replacements all happen in the traced run.
    let options = || ringdb::Options {
        wal_preallocate_bytes: 1 << 20,
        write_buffer_size_bytes: 16 << 10,
        max_manifest_file_size_bytes: 16 << 10,
        compaction: ringdb::CompactionOptions {
            l0_compaction_trigger: 2,
            level1_target_bytes: 32 << 10,
            sst_target_size_bytes: 16 << 10,
            ..Default::default()
        },
        ..ringdb::Options::default()
    };
    futures::executor::block_on(async {
        let file = DirectFile::create(&io, Path::new(&dir).join(DATA_NAME)).await.unwrap();
        let block = 64 * 1024;
        for i in 0..16u64 {
            let mut buf = file.alloc_buf(block);
            buf.extend_from_slice(&pattern(block, i, 0));
            if i % 4 == 3 {
                file.write_at_and_sync(buf, i * block as u64).await.unwrap();
            } else {
                file.write_at(buf, i * block as u64).await.unwrap();
            }
        }
        file.allocate(16 * block as u64, block as u64).await.unwrap();
        file.sync_data().await.unwrap();
        for i in 0..16u64 {
            let buf = file.read_exact_at(file.alloc_buf(block), i * block as u64, block).await.unwrap();
            assert_eq!(&buf[..], &pattern(block, i, 0)[..]);
        }
        // The database's log: appends, syncs, and the recovery reads of a reopen.
        let db = ringdb::Db::open(&db_dir, options()).await.unwrap();
        for i in 0..1000u32 {
            let mut batch = ringdb::WriteBatch::new();
            batch.put(i.to_be_bytes(), [1u8; 100]);
            let durability = [ringdb::Durability::Synced, ringdb::Durability::Written][i as usize % 2];
            db.write(batch, ringdb::WriteOptions::with_durability(durability)).await.unwrap();
        }
        db.compact_range::<&[u8]>(..).await.unwrap();
        assert!(db.stats().tables() > 0, "the workload wrote tables");
        db.close().await.unwrap();
        // Reopen: CURRENT, the MANIFEST and the log are read; then table reads
        // through gets and scans in both directions.
        let db = ringdb::Db::open(&db_dir, options()).await.unwrap();
        assert!(db.get(999u32.to_be_bytes()).await.unwrap().is_some());
        assert!(db.get(5u32.to_be_bytes()).await.unwrap().is_some());
        use futures::StreamExt;
        assert_eq!(db.scan::<&[u8]>(..).count().await, 1000);
        assert_eq!(db.scan_rev::<&[u8]>(..).count().await, 1000);
        db.close().await.unwrap();
    });
    // Gets, scans and writes from tasks of a tokio runtime, completed
    // through its reactor (IoOptions::tokio_reactor).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let reactor_options =
            ringdb::Options { io: IoOptions { tokio_reactor: true, ..IoOptions::default() }, ..options() };
        let db = ringdb::Db::open(&db_dir, reactor_options).await.unwrap();
        let tasks: Vec<_> = (0..4u32)
            .map(|t| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in (t..1000).step_by(4) {
                        assert!(db.get(i.to_be_bytes()).await.unwrap().is_some());
                    }
                    db.put((1000 + t).to_be_bytes(), [2u8; 100]).await.unwrap();
                    use futures::StreamExt;
                    db.scan::<&[u8]>(..).count().await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap() >= 1000);
        }
        if db.io_stats().sqes_submitted > 0 {
            assert!(db.io_stats().reactor_ops > 0, "reads went through the reactor");
        }
        db.close().await.unwrap();
    });
}

struct Trace {
    data_opens: usize,
    wal_opens: usize,
    sst_opens: usize,
    manifest_opens: usize,
    data_fd_transfers: Vec<String>,
    uring_enters: usize,
    uring_setups: usize,
}

fn trace_child(backend: &str) -> Option<Trace> {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(std::env::var("RINGDB_REQUIRE_STRACE").as_deref() != Ok("1"), "strace is required but missing");
        eprintln!("strace not installed: skipping the io_uring proof");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("strace.log");
    let output = Command::new("strace")
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .arg("-e")
        .arg("trace=openat,close,read,write,pread64,pwrite64,readv,writev,preadv,pwritev,preadv2,pwritev2,io_uring_setup,io_uring_enter")
        .arg(std::env::current_exe().unwrap())
        .args(["strace_child_workload", "--exact", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .env("RINGDB_IO_BACKEND", backend)
        .output()
        .expect("run strace");
    assert!(
        output.status.success(),
        "traced workload failed on {backend}:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    // With -y strace prints the path behind every descriptor argument, so a
    // transfer on the data file names it on its own line, even when the call
    // is split into "<unfinished ...>" and "resumed" halves by other threads.
    let mut trace = Trace {
        data_fd_transfers: Vec::new(),
        uring_enters: 0,
        uring_setups: 0,
        data_opens: 0,
        wal_opens: 0,
        sst_opens: 0,
        manifest_opens: 0,
    };
    for line in text.lines() {
        let Some(call) = line.split_once(' ').map(|(_, rest)| rest.trim_start()) else { continue };
        let Some((name, args)) = call.split_once('(') else { continue };
        match name {
            "openat" if args.contains(DATA_NAME) => trace.data_opens += 1,
            "openat" if args.contains(".wal") => trace.wal_opens += 1,
            "openat" if args.contains(".sst") => trace.sst_opens += 1,
            "openat" if args.contains("MANIFEST-") => trace.manifest_opens += 1,
            "io_uring_enter" => trace.uring_enters += 1,
            "io_uring_setup" => trace.uring_setups += 1,
            "read" | "write" | "pread64" | "pwrite64" | "readv" | "writev" | "preadv" | "pwritev" | "preadv2"
            | "pwritev2" => {
                let first_arg = args.split(',').next().unwrap_or("");
                if is_engine_file(first_arg) {
                    trace.data_fd_transfers.push(line.chars().take(120).collect());
                }
            }
            _ => {}
        }
    }
    assert!(!text.contains("+++ killed"), "the child was killed");
    Some(trace)
}

/// Whether a descriptor argument (as `strace -y` prints it) names a file whose
/// data must move through the engine's I/O layer.
fn is_engine_file(fd_arg: &str) -> bool {
    [DATA_NAME, ".wal", ".sst", "MANIFEST-", "/CURRENT"].iter().any(|name| fd_arg.contains(name))
}

#[test]
fn file_data_moves_only_through_io_uring() {
    let Some(trace) = trace_child("io_uring") else { return };
    assert!(trace.data_opens >= 1, "the trace does not show the data file being opened");
    assert!(trace.wal_opens >= 2, "the trace does not show the database's log being opened");
    assert!(trace.sst_opens >= 2, "the trace does not show tables being written and read");
    assert!(trace.manifest_opens >= 2, "the trace does not show the MANIFEST being written and read");
    assert!(trace.uring_setups >= 1, "no io_uring_setup in the trace");
    assert!(trace.uring_enters >= 2, "no io_uring_enter in the trace");
    assert!(
        trace.data_fd_transfers.is_empty(),
        "file data moved through plain syscalls on the io_uring backend:\n{}",
        trace.data_fd_transfers.join("\n")
    );
}

#[test]
fn the_strace_check_catches_plain_syscalls() {
    let Some(trace) = trace_child("posix") else { return };
    assert!(trace.data_opens >= 1, "the trace does not show the data file being opened");
    assert_eq!(trace.uring_setups, 0, "the portable backend must not set up a ring");
    assert!(
        trace.data_fd_transfers.iter().any(|l| l.contains("pwrite64"))
            && trace.data_fd_transfers.iter().any(|l| l.contains("pread64")),
        "the check failed to see the portable backend's pwrite64/pread64: {:?}",
        trace.data_fd_transfers
    );
    for name in [".wal", ".sst", "MANIFEST-"] {
        assert!(
            trace.data_fd_transfers.iter().any(|l| l.contains(name)),
            "the check failed to see the portable backend's transfers on {name} files"
        );
    }
}
