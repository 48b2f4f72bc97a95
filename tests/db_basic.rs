//! The Db API: reads and writes in every durability mode, batches, snapshots,
//! reopen, the directory lock, limits, memtable freezing, and poisoning after
//! a failed log write.

mod common;
use common::sst_files;

use std::time::Duration;

use ringdb::io::{FaultAction, FaultInjector, FaultRule, IoOptions};
use ringdb::{Db, Durability, Error, IoOp, Options, WriteBatch, WriteOptions};

fn small_options() -> Options {
    Options { wal_preallocate_bytes: 256 * 1024, ..Options::default() }
}

#[test]
fn put_get_delete_and_batches_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        for (i, durability) in [Durability::Synced, Durability::Written, Durability::Buffered].into_iter().enumerate() {
            let mut batch = WriteBatch::new();
            batch.put(format!("a{i}"), "1").put(format!("b{i}"), "2").delete(format!("a{i}"));
            db.write(batch, WriteOptions::with_durability(durability)).await.unwrap();
            assert_eq!(db.get(format!("a{i}")).await.unwrap(), None, "{durability:?}: deleted in the same batch");
            assert_eq!(db.get(format!("b{i}")).await.unwrap().as_deref(), Some(&b"2"[..]), "{durability:?}");
        }
        db.put("k", "v1").await.unwrap();
        db.put("k", "v2").await.unwrap();
        assert_eq!(db.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
        db.delete("k").await.unwrap();
        assert_eq!(db.get("k").await.unwrap(), None);
        assert_eq!(db.get("never").await.unwrap(), None);
        db.write(WriteBatch::new(), WriteOptions::default()).await.unwrap();
        db.close().await.unwrap();
    });
}

#[test]
fn snapshots_see_exactly_what_was_acknowledged_before_them() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        db.put("k", "old").await.unwrap();
        db.put("gone", "x").await.unwrap();
        let snapshot = db.snapshot();
        db.put("k", "new").await.unwrap();
        db.put("added", "y").await.unwrap();
        db.delete("gone").await.unwrap();
        assert_eq!(snapshot.get("k").await.unwrap().as_deref(), Some(&b"old"[..]));
        assert_eq!(snapshot.get("added").await.unwrap(), None);
        assert_eq!(snapshot.get("gone").await.unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(db.get("k").await.unwrap().as_deref(), Some(&b"new"[..]));
        let buffered = WriteOptions::with_durability(Durability::Buffered);
        let mut batch = WriteBatch::new();
        batch.put("buffered", "z");
        db.write(batch, buffered).await.unwrap();
        assert_eq!(db.snapshot().get("buffered").await.unwrap().as_deref(), Some(&b"z"[..]), "acknowledged = visible");
    });
}

#[test]
fn reopen_replays_the_log_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        for i in 0..300u32 {
            let durability = [Durability::Synced, Durability::Written, Durability::Buffered][i as usize % 3];
            let mut batch = WriteBatch::new();
            batch.put(i.to_be_bytes(), vec![i as u8; (i % 50) as usize]);
            if i % 7 == 0 {
                batch.delete((i / 2).to_be_bytes());
            }
            db.write(batch, WriteOptions::with_durability(durability)).await.unwrap();
        }
        db.close().await.unwrap();
        for round in 0..3 {
            let db = Db::open(dir.path(), small_options()).await.unwrap();
            for i in 0..300u32 {
                let deleted = (0..300u32).any(|j| j % 7 == 0 && j / 2 == i && j >= i);
                let got = db.get(i.to_be_bytes()).await.unwrap();
                if deleted {
                    assert_eq!(got, None, "round {round}: key {i} was deleted later");
                } else {
                    assert_eq!(got.as_deref(), Some(&vec![i as u8; (i % 50) as usize][..]), "round {round}: key {i}");
                }
            }
            db.put(format!("round{round}"), "x").await.unwrap();
            drop(db); // without close: Written writes are already on disk
        }
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        for round in 0..3 {
            assert!(db.get(format!("round{round}")).await.unwrap().is_some());
        }
    });
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        let err = Db::open(dir.path(), small_options()).await.unwrap_err();
        assert!(matches!(&err, Error::Locked(_)), "{err}");
        assert!(err.to_string().contains("locked"));
        db.close().await.unwrap();
        Db::open(dir.path(), small_options()).await.unwrap();
    });
}

#[test]
fn limits_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        assert!(matches!(db.put("", "v").await, Err(Error::InvalidArgument(m)) if m.contains("empty")));
        let long_key = vec![b'k'; ringdb::MAX_KEY_BYTES + 1];
        assert!(matches!(db.put(&long_key, "v").await, Err(Error::InvalidArgument(m)) if m.contains("MAX_KEY_BYTES")));
        assert!(matches!(db.get(&long_key).await, Err(Error::InvalidArgument(_))));
        assert!(matches!(db.get("").await, Err(Error::InvalidArgument(_))));
        let long_value = vec![0u8; ringdb::MAX_VALUE_BYTES + 1];
        assert!(
            matches!(db.put("k", &long_value).await, Err(Error::InvalidArgument(m)) if m.contains("MAX_VALUE_BYTES"))
        );
        drop(long_value);
        let missing = dir.path().join("missing");
        let options = Options { create_if_missing: false, ..small_options() };
        assert!(matches!(Db::open(&missing, options).await, Err(Error::InvalidArgument(_))));
        for bad_align in [1, 1000, 256, 2 << 20] {
            let options = Options { block_align_bytes: bad_align, ..small_options() };
            let other = dir.path().join(format!("align-{bad_align}"));
            let result = Db::open(&other, options).await;
            assert!(
                matches!(&result, Err(Error::InvalidArgument(m)) if m.contains("block_align_bytes")),
                "{bad_align}: {:?}",
                result.err()
            );
        }
        for bad_threads in [0, 65] {
            let options = Options { flush_threads: bad_threads, ..small_options() };
            let result = Db::open(dir.path().join(format!("threads-{bad_threads}")), options).await;
            assert!(matches!(&result, Err(Error::InvalidArgument(m)) if m.contains("flush_threads")), "{bad_threads}");
        }
        for good_align in [0, 512, 4096, 1 << 20] {
            let options = Options { block_align_bytes: good_align, ..small_options() };
            Db::open(dir.path().join(format!("align-{good_align}")), options).await.unwrap().close().await.unwrap();
        }
    });
}

fn files_with_extension(dir: &std::path::Path, extension: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == extension))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_memtables_are_flushed_to_tables_and_their_logs_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        write_buffer_size_bytes: 64 * 1024,
        max_immutable_memtables: 2,
        // Only flushes here: every flushed table stays in level 0.
        compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
        ..small_options()
    };
    let db = Db::open(dir.path(), options.clone()).await.unwrap();
    for i in 0..2000u32 {
        db.put(i.to_be_bytes(), [7u8; 100]).await.unwrap();
    }
    db.flush().await.unwrap();
    let stats = db.stats();
    assert!(stats.flush.flushes >= 4, "{stats:?}");
    assert_eq!(stats.tables() as u64, stats.flush.flushes);
    assert_eq!(files_with_extension(dir.path(), "sst"), stats.tables());
    // Left: the active memtable's log, the spare prepared for the next one,
    // and at most one flushed log kept to become a later spare.
    assert!(files_with_extension(dir.path(), "wal") <= 3, "flushed logs are deleted or reused");
    for i in (0..2000u32).step_by(7) {
        assert_eq!(db.get(i.to_be_bytes()).await.unwrap().as_deref(), Some(&[7u8; 100][..]), "key {i}");
    }
    assert!(db.stats().block_cache.misses > 0, "reads went to the tables");
    db.delete(5u32.to_be_bytes()).await.unwrap();
    db.close().await.unwrap();
    let db = Db::open(dir.path(), options).await.unwrap();
    for i in (0..2000u32).step_by(7) {
        assert_eq!(db.get(i.to_be_bytes()).await.unwrap().is_some(), i != 5, "key {i} after reopen");
    }
    db.flush().await.unwrap();
    assert_eq!(db.get(5u32.to_be_bytes()).await.unwrap(), None, "the tombstone shadows the table's value");
}

/// Every key and value a forward scan of `db` returns.
async fn scan_all(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    use futures::StreamExt;
    let items: Vec<_> = db.scan::<&[u8]>(..).map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect().await;
    items.into_iter().collect::<Result<_, _>>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_in_parallel_parts_holds_what_a_flush_on_one_thread_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut contents = Vec::new();
    for (flush_threads, block_align_bytes) in [(1, 4096), (2, 4096), (3, 0)] {
        let options = Options {
            // One memtable (about 2.6 MiB charged) flushed in 6 parts of 512 KiB.
            write_buffer_size_bytes: 4 << 20,
            flush_threads,
            block_align_bytes,
            compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
            ..small_options()
        };
        let path = dir.path().join(format!("threads-{flush_threads}"));
        let db = Db::open(&path, options.clone()).await.unwrap();
        // Overwrites and deletes, so parts hold several versions of a key and tombstones.
        for round in 0..3u32 {
            let mut batch = WriteBatch::new();
            for i in 0..4000u32 {
                let key = format!("key-{:06}", i * 7 % 4000);
                match (i + round) % 11 {
                    0 => batch.delete(key),
                    n => batch.put(key, vec![n as u8; 40 + (i as usize % 90)]),
                };
            }
            db.write(batch, WriteOptions::default()).await.unwrap();
        }
        let snapshot = db.snapshot();
        db.put("key-000000", "after the snapshot").await.unwrap();
        db.flush().await.unwrap();
        let stats = db.stats();
        assert_eq!((stats.flush.flushes, stats.tables()), (1, 1), "{stats:?}");
        assert_eq!(stats.flush.entries_written, 3 * 4000 + 1);
        let seen = scan_all(&db).await;
        let at_snapshot = snapshot.get("key-000000").await.unwrap();
        assert_ne!(at_snapshot.as_deref(), Some(&b"after the snapshot"[..]), "the snapshot sees the older version");
        for (key, value) in seen.iter().step_by(13) {
            assert_eq!(db.get(key).await.unwrap().as_deref(), Some(&value[..]));
        }
        drop(snapshot);
        db.close().await.unwrap();
        // The table alone, after reopen.
        let db = Db::open(&path, options).await.unwrap();
        assert_eq!(scan_all(&db).await, seen);
        db.close().await.unwrap();
        contents.push((seen, at_snapshot));
    }
    assert!(contents[0].0.len() > 3000, "{}", contents[0].0.len());
    assert_eq!(contents[0], contents[1], "2 encoder threads");
    assert_eq!(contents[0], contents[2], "3 encoder threads, no block alignment");
}

/// A flush sets its filter's bits on a thread of its own, a batch of hashes
/// per staged MiB: a table of several MiB must find every key (no false
/// negatives) and skip the device for nearly every absent one (the filter is
/// not all ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_flush_filters_like_a_small_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        write_buffer_size_bytes: 64 << 20,
        block_cache_size_bytes: 0,
        compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
        ..small_options()
    };
    let db = Db::open(dir.path(), options.clone()).await.unwrap();
    const KEYS: u32 = 70_000;
    for chunk in 0..KEYS / 1000 {
        let mut batch = WriteBatch::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            batch.put(format!("key-{:08}", i * 2), i.to_le_bytes());
        }
        db.write(batch, WriteOptions::default()).await.unwrap();
    }
    db.flush().await.unwrap();
    db.close().await.unwrap();
    let db = Db::open(dir.path(), options).await.unwrap();
    assert_eq!(db.stats().tables(), 1);
    for i in (0..KEYS).step_by(7) {
        let got = db.get(format!("key-{:08}", i * 2)).await.unwrap();
        assert_eq!(got.as_deref(), Some(&i.to_le_bytes()[..]), "key {i}");
    }
    let reads_before = db.io_stats().ops_submitted;
    // Odd numbers were never written; each lies inside the table's key range.
    for i in 0..2000u32 {
        assert_eq!(db.get(format!("key-{:08}", i * 34 + 1)).await.unwrap(), None);
    }
    let reads = db.io_stats().ops_submitted - reads_before;
    // 10 bits per key: about 0.8% false positives, 16 reads expected.
    assert!(reads < 100, "{reads} device reads for 2000 absent keys");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_a_flush_as_soon_as_flush_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_options()).await.unwrap();
    for i in 1..=30u64 {
        db.put(i.to_be_bytes(), "v").await.unwrap();
        db.flush().await.unwrap();
        let flush = db.stats().flush;
        assert_eq!((flush.flushes, flush.entries_written), (i, i));
        assert!(flush.bytes_written > 0 && flush.build_time_us > 0, "{flush:?}");
    }
}

/// `.wal` files by inode: (log number, path).
fn wal_files_by_inode(dir: &std::path::Path) -> std::collections::HashMap<u64, (u64, std::path::PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|x| x == "wal"))
        .map(|path| {
            let number = path.file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap();
            (std::fs::metadata(&path).unwrap().ino(), (number, path))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_log_becomes_a_later_log_and_its_stale_records_are_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
        ..small_options()
    };
    let db = Db::open(dir.path(), options.clone()).await.unwrap();
    // The active log is the lowest-numbered one (the spare comes after it).
    let (first_inode, (first_number, first_path)) =
        wal_files_by_inode(dir.path()).into_iter().min_by_key(|(_, (number, _))| *number).unwrap();
    let key = |round: u32, i: u32| format!("key-{i:04}-{}", if round == 1 { "only-round-1" } else { "" });
    for i in 0..200u32 {
        db.put(key(1, i), format!("v1-{i}")).await.unwrap();
        db.put(key(2, i), format!("v1-{i}")).await.unwrap();
    }
    // The first log's memtable is flushed: the log is kept for reuse.
    db.flush().await.unwrap();
    for i in 0..200u32 {
        db.put(key(2, i), format!("v2-{i}")).await.unwrap();
    }
    // The first write of round 2 moved to the spare and started the next spare
    // from the first log; this flush hands round 2's log over for reuse too.
    db.flush().await.unwrap();
    db.delete(key(2, 0)).await.unwrap();
    db.put("round-3", "x").await.unwrap();

    let now = wal_files_by_inode(dir.path());
    assert!(!first_path.exists(), "the first log was renamed, not left behind");
    let (number, path) = now.get(&first_inode).expect("the first log's file lives on as another log");
    assert!(*number > first_number, "reused under a new log number ({number} after {first_number})");
    // Reused, not recreated (a new file could get a freed inode number): the
    // first log's records are still in it, behind the new header.
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.windows(12).any(|w| w == b"only-round-1"), "round 1's records are still in the file");
    drop(db); // without close: round 3 is in a log only

    // Recovery reads round 3's records from the reused file and none of the
    // first log's records behind them (they carry the first log's number).
    let db = Db::open(dir.path(), options).await.unwrap();
    assert_eq!(db.get("round-3").await.unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(db.get(key(2, 0)).await.unwrap(), None, "round 3's delete was replayed");
    for i in 1..200u32 {
        assert_eq!(db.get(key(2, i)).await.unwrap().unwrap(), format!("v2-{i}").as_bytes(), "key {i}");
        assert_eq!(db.get(key(1, i)).await.unwrap().unwrap(), format!("v1-{i}").as_bytes(), "key {i}");
    }
    db.close().await.unwrap();
}

/// A reopen makes its new log of a log with nothing to replay (here the one a
/// flush left active before the close), so it writes no zeroes for a new one.
#[test]
fn a_reopen_reuses_a_log_with_nothing_to_replay_as_its_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let options = Options {
        wal_preallocate_bytes: 4 << 20,
        io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() },
        ..Options::default()
    };
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), options.clone()).await.unwrap();
        db.put("a", "1").await.unwrap();
        db.flush().await.unwrap();
        db.close().await.unwrap();
        let before = wal_files_by_inode(dir.path());
        assert_eq!(before.len(), 1, "the log the flush left active: {before:?}");
        let (&inode, &(number, _)) = before.iter().next().unwrap();
        // A new log's zeroes take several writes (1 MiB each), a reused log's
        // header one: the second log write of the open fails.
        faults.add(FaultRule::new(FaultAction::Error(5)).op(IoOp::Write).path_contains(".wal").skip(1));
        let db = Db::open(dir.path(), options.clone()).await.unwrap();
        assert_eq!(faults.fired(), 0, "the open wrote one header, no zeroes");
        faults.clear();
        let after = wal_files_by_inode(dir.path());
        assert_eq!(after.len(), 1, "{after:?}");
        let (new_number, _) = after.get(&inode).expect("the old log's file is the new log");
        assert!(*new_number > number, "under a new number ({new_number} after {number})");
        assert_eq!(db.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        db.put("b", "2").await.unwrap();
        drop(db); // without close: "b" is in the reused log only
        let db = Db::open(dir.path(), options).await.unwrap();
        assert_eq!(db.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.get("b").await.unwrap().as_deref(), Some(&b"2"[..]), "replayed from the reused log");
        db.close().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_reused_is_replaced_by_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    // Opening temporary log files: the new log at open, its spare, then the
    // first reuse of a flushed log, which fails; the new log made instead opens fine.
    faults.add(FaultRule::new(FaultAction::Error(5)).op(IoOp::Open).path_contains(".wal.tmp").skip(2).times(1));
    let options = Options {
        io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() },
        compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
        ..small_options()
    };
    let db = Db::open(dir.path(), options.clone()).await.unwrap();
    for round in 0..3u32 {
        for i in 0..100u32 {
            db.put(format!("key-{i}"), format!("round-{round}")).await.unwrap();
        }
        db.flush().await.unwrap();
    }
    db.put("last", "x").await.unwrap();
    assert_eq!(faults.fired(), 1, "the reuse failed once");
    drop(db);
    let db = Db::open(dir.path(), Options { io: IoOptions::default(), ..options }).await.unwrap();
    assert_eq!(db.get("last").await.unwrap().as_deref(), Some(&b"x"[..]));
    for i in 0..100u32 {
        assert_eq!(db.get(format!("key-{i}")).await.unwrap().unwrap(), &b"round-2"[..], "key {i}");
    }
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_when_the_immutable_memtables_are_at_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let options = Options {
        write_buffer_size_bytes: 16 * 1024,
        max_immutable_memtables: 1,
        io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() },
        ..small_options()
    };
    // A slow device for tables only: flushes take 200 ms per write.
    faults.add(FaultRule::new(FaultAction::DelayMs(200)).op(IoOp::Write).path_contains(".sst"));
    let db = Db::open(dir.path(), options).await.unwrap();
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for i in 0..1000u32 {
                db.put(i.to_be_bytes(), [1u8; 100]).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "writes past the bound must wait for the flush");
    let stalled_at = futures::future::join_all((0..1000u32).map(|i| {
        let db = db.clone();
        async move { db.get(i.to_be_bytes()).await.unwrap().is_some() }
    }))
    .await
    .iter()
    .rposition(|found| *found);
    assert!(stalled_at.is_some_and(|i| i < 999), "{stalled_at:?}");
    faults.clear();
    tokio::time::timeout(Duration::from_secs(60), writer).await.expect("flushes make room").unwrap();
    assert!(db.stats().flush.flushes > 0);
    for i in (0..1000u32).step_by(13) {
        assert!(db.get(i.to_be_bytes()).await.unwrap().is_some(), "key {i}");
    }
}

#[test]
fn a_failed_log_write_poisons_the_database_but_reads_and_reopen_work() {
    for (op, action) in [
        (IoOp::Write, FaultAction::Error(libc::EIO)),
        (IoOp::Sync, FaultAction::Error(libc::EIO)),
        (IoOp::Write, FaultAction::Error(libc::ENOSPC)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultInjector::new();
        let options =
            Options { io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() }, ..small_options() };
        futures::executor::block_on(async {
            let db = Db::open(dir.path(), options.clone()).await.unwrap();
            let synced = WriteOptions::with_durability(Durability::Synced);
            let mut batch = WriteBatch::new();
            batch.put("acked", "1");
            db.write(batch, synced).await.unwrap();
            faults.add(FaultRule::new(action).op(op).path_contains("000002.wal").times(1));
            let mut batch = WriteBatch::new();
            batch.put("failed", "2");
            let err = db.write(batch, synced).await.unwrap_err();
            assert!(matches!(err, Error::Poisoned(_)), "{op}: {err}");
            assert!(matches!(db.put("later", "3").await, Err(Error::Poisoned(_))), "{op}: writes are refused");
            assert_eq!(db.get("acked").await.unwrap().as_deref(), Some(&b"1"[..]), "{op}: reads keep working");
            assert_eq!(db.get("failed").await.unwrap(), None, "{op}: the failed write is not visible");
            drop(db);
            faults.clear();
            let db = Db::open(dir.path(), options).await.unwrap();
            assert_eq!(db.get("acked").await.unwrap().as_deref(), Some(&b"1"[..]), "{op}: acknowledged data survives");
            db.put("after", "4").await.unwrap();
        });
    }
}

#[test]
fn buffered_writes_reach_the_log_by_flush_wal_or_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { wal_flush_interval_ms: 50, ..small_options() };
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), options.clone()).await.unwrap();
        let buffered = WriteOptions::with_durability(Durability::Buffered);
        let mut batch = WriteBatch::new();
        batch.put("a", "1");
        db.write(batch, buffered).await.unwrap();
        db.flush_wal(true).await.unwrap();
        let mut batch = WriteBatch::new();
        batch.put("b", "2");
        db.write(batch, buffered).await.unwrap();
        std::thread::sleep(Duration::from_millis(300)); // past the interval
        // Simulate a crash: the writer thread is not asked to flush.
        std::mem::forget(db);
    });
    // The lock of the forgotten handle is still held in this process; copy the files.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(copy.path().join("LOCK")).unwrap();
    futures::executor::block_on(async {
        let db = Db::open(copy.path(), options).await.unwrap();
        assert_eq!(db.get("a").await.unwrap().as_deref(), Some(&b"1"[..]), "flushed by flush_wal");
        assert_eq!(db.get("b").await.unwrap().as_deref(), Some(&b"2"[..]), "flushed by the interval");
    });
}

#[test]
fn db_and_snapshot_are_send_sync_clone_and_futures_are_send() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_send_sync_clone::<Db>();
    assert_send_sync_clone::<ringdb::Snapshot>();
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        let put = db.put("k", "v");
        assert_send(&put);
        put.await.unwrap();
        let get = db.get("k");
        assert_send(&get);
        assert!(get.await.unwrap().is_some());
        let write = db.write(WriteBatch::new(), WriteOptions::default());
        assert_send(&write);
        write.await.unwrap();
    });
}

const LOCK_CHILD_ENV: &str = "RINGDB_LOCK_CHILD_DIR";

/// Child of the cross-process lock test: holds the database open until stdin closes.
#[test]
fn lock_child_holds_the_database() {
    let Some(dir) = std::env::var_os(LOCK_CHILD_ENV) else { return };
    futures::executor::block_on(async {
        let _db = Db::open(&dir, small_options()).await.unwrap();
        println!("open");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
}

#[test]
fn another_process_gets_a_locked_error() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["lock_child_holds_the_database", "--exact", "--nocapture", "--test-threads=1"])
        .env(LOCK_CHILD_ENV, dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("open"))), "the child opened the database");
    futures::executor::block_on(async {
        let err = Db::open(dir.path(), small_options()).await.unwrap_err();
        assert!(matches!(err, Error::Locked(_)), "{err}");
    });
    drop(child.stdin.take()); // the child closes the database and exits
    child.wait().unwrap();
    futures::executor::block_on(async {
        Db::open(dir.path(), small_options()).await.unwrap();
    });
}

/// Log files in `dir`: logs (`.wal`) and logs being made (`.wal.tmp`).
fn log_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".wal"))
        .count()
}

/// A new log is `wal_preallocate_bytes` of zeroes: a database that is only
/// read must not write a second one in the background under its reads.
#[test]
fn the_next_log_is_prepared_after_the_first_write_not_at_open() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        let quiet_until = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < quiet_until {
            assert_eq!(db.get("absent").await.unwrap(), None);
            assert_eq!(log_files(dir.path()), 1, "only the log made by the open");
            std::thread::sleep(Duration::from_millis(10));
        }
        db.put("k", "v").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log_files(dir.path()) < 2 {
            assert!(std::time::Instant::now() < deadline, "the first write starts the next log");
            std::thread::sleep(Duration::from_millis(5));
        }
        db.close().await.unwrap();
        let left = wal_files_by_inode(dir.path());
        assert_eq!(left.len(), 2, "the log and the unused next one, kept for the next open: {left:?}");
        let (&spare_inode, _) = left.iter().max_by_key(|(_, (number, _))| *number).unwrap();
        // The next open replays "k" from the first log and makes its new log of
        // the unused one, writing only its header.
        let faults = FaultInjector::new();
        faults.add(FaultRule::new(FaultAction::Error(5)).op(IoOp::Write).path_contains(".wal").skip(1));
        let options =
            Options { io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() }, ..small_options() };
        let db = Db::open(dir.path(), options).await.unwrap();
        assert_eq!(faults.fired(), 0, "the open wrote one log header, no zeroes");
        assert!(wal_files_by_inode(dir.path()).contains_key(&spare_inode), "the unused log is the new log");
        assert_eq!(db.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        faults.clear();
        db.close().await.unwrap();
    });
}

/// Waits up to 10 s for `path` to exist with space reserved (the flush
/// thread makes the spare table after a flush, in the background).
fn wait_for_file(path: &std::path::Path) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn each_flush_writes_into_the_spare_made_after_the_last_one_and_close_removes_it() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join("flush-spare.sst.tmp");
    // One left by a crash is deleted by the next open.
    std::fs::write(&spare, b"left by a crash").unwrap();
    let options = Options {
        compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
        ..small_options()
    };
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), options.clone()).await.unwrap();
        assert!(!spare.exists(), "an open deletes a spare left behind, and makes none before a flush");
        db.put("a", "1").await.unwrap();
        db.flush().await.unwrap();
        assert!(wait_for_file(&spare), "a spare is made after a flush");
        let spare_meta = std::fs::metadata(&spare).unwrap();
        let tables_before = sst_files(dir.path());
        db.put("b", "2").await.unwrap();
        db.flush().await.unwrap();
        let new_tables: Vec<String> =
            sst_files(dir.path()).into_iter().filter(|name| !tables_before.contains(name)).collect();
        assert_eq!(new_tables.len(), 1, "{new_tables:?}");
        let table_meta = std::fs::metadata(dir.path().join(&new_tables[0])).unwrap();
        assert_eq!(table_meta.ino(), spare_meta.ino(), "the second table is the spare, renamed");
        assert!(table_meta.len() < spare_meta.len(), "cut to its exact length");
        assert!(wait_for_file(&spare), "and a new spare follows");
        db.close().await.unwrap();
        assert!(!spare.exists(), "close removes the spare");
        let db = Db::open(dir.path(), options).await.unwrap();
        assert_eq!(db.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.get("b").await.unwrap().as_deref(), Some(&b"2"[..]));
        db.close().await.unwrap();
    });
}

/// `small_options` with automatic compactions off and `faults` injected.
fn without_compactions_with_faults(faults: &FaultInjector) -> Options {
    Options {
        compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
        io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() },
        ..small_options()
    }
}

/// A flush that finishes after `close()` began makes no spare table: the
/// thread would only remove it again at exit, and the close would wait for
/// its create, reservation and directory fsync.
#[test]
fn a_flush_that_finishes_during_close_makes_no_spare() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    // The table's first write is slow, so the close starts while the flush
    // runs (2 s: a stalled VM must not let the flush finish before it).
    faults.add(FaultRule::new(FaultAction::DelayMs(2000)).op(IoOp::Write).path_contains(".sst").times(1));
    // Any attempt at a spare shows here.
    faults.add(FaultRule::new(FaultAction::Error(libc::ENOSPC)).op(IoOp::Allocate).path_contains("flush-spare"));
    let options = without_compactions_with_faults(&faults);
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), options).await.unwrap();
        db.put("a", "1").await.unwrap();
        let flushing = {
            let db = db.clone();
            std::thread::spawn(move || futures::executor::block_on(db.flush()))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while faults.fired() == 0 {
            assert!(std::time::Instant::now() < deadline, "the flush reached its table write");
            std::thread::sleep(Duration::from_millis(1));
        }
        db.close().await.unwrap();
        // The flush itself may report the close; what matters is what it left.
        let _ = flushing.join().unwrap();
        assert_eq!(faults.fired(), 1, "only the slow write fired: no spare was attempted after the close began");
        assert!(!dir.path().join("flush-spare.sst.tmp").exists());
    });
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), small_options()).await.unwrap();
        assert_eq!(db.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        db.close().await.unwrap();
    });
}

#[test]
fn a_spare_that_cannot_be_made_costs_nothing_but_the_next_flush_makes_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join("flush-spare.sst.tmp");
    let faults = FaultInjector::new();
    // Every reservation of a spare fails, as on a full disk.
    faults.add(FaultRule::new(FaultAction::Error(libc::ENOSPC)).op(IoOp::Allocate).path_contains("flush-spare"));
    let options = without_compactions_with_faults(&faults);
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), options.clone()).await.unwrap();
        for round in 0..3u32 {
            db.put(format!("k{round}"), format!("v{round}")).await.unwrap();
            db.flush().await.unwrap();
            // With no other flush waiting, the flush thread tries to make a
            // spare, and removes what it created when the reservation fails.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while (faults.fired() <= u64::from(round) || spare.exists()) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(faults.fired(), u64::from(round) + 1, "a spare was attempted after flush {round}");
            assert!(!spare.exists(), "a spare that could not be reserved is removed");
        }
        assert_eq!(db.stats().flush.flushes, 3, "every flush made its own file");
        for round in 0..3u32 {
            assert_eq!(db.get(format!("k{round}")).await.unwrap().as_deref(), Some(format!("v{round}").as_bytes()));
        }
        db.close().await.unwrap();
    });
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), Options { io: IoOptions::default(), ..options }).await.unwrap();
        assert_eq!(db.get("k2").await.unwrap().as_deref(), Some(&b"v2"[..]));
        db.close().await.unwrap();
    });
}

/// A log cut at its torn tail by recovery (a reused log's stale records end
/// its replay like a torn group) is shorter than `wal_preallocate_bytes`.
/// When its memtable is flushed and the file is reused as a later log, it is
/// first filled back to full length: appends past the end of a file would
/// make every synced write commit a size change and a block allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_at_recovery_is_filled_back_to_full_length_when_reused() {
    let dir = tempfile::tempdir().unwrap();
    let preallocated = 256 * 1024u64;
    let options = Options {
        compaction: ringdb::CompactionOptions { disable_auto_compactions: true, ..Default::default() },
        ..small_options()
    };
    assert_eq!(options.wal_preallocate_bytes, preallocated);
    let db = Db::open(dir.path(), options.clone()).await.unwrap();
    for i in 0..20u32 {
        db.put(format!("a{i}"), "1").await.unwrap();
    }
    // As in the test above: the first log is kept for reuse, and the log
    // after the next flush is made from it, with "a1".. behind "c".
    db.flush().await.unwrap();
    db.put("b", "2").await.unwrap();
    db.flush().await.unwrap();
    db.put("c", "3").await.unwrap();
    drop(db); // without close: "c" is in the reused log only

    let db = Db::open(dir.path(), options.clone()).await.unwrap();
    let short: Vec<_> = wal_files_by_inode(dir.path())
        .into_values()
        .filter(|(_, path)| std::fs::metadata(path).unwrap().len() < preallocated)
        .collect();
    assert_eq!(short.len(), 1, "recovery cut the reused log after \"c\": {short:?}");
    let (short_number, _) = short[0].clone();
    // Flushing "c" frees that log for reuse; the next rounds reuse it.
    db.flush().await.unwrap();
    for i in 0..3u32 {
        db.put(format!("d{i}"), "4").await.unwrap();
        db.flush().await.unwrap();
    }
    db.put("e", "5").await.unwrap();
    drop(db);
    let logs = wal_files_by_inode(dir.path());
    assert!(logs.values().all(|(number, _)| *number != short_number), "the cut log was reused: {logs:?}");
    for (number, path) in logs.values() {
        let len = std::fs::metadata(path).unwrap().len();
        assert!(len >= preallocated, "log {number} is {len} bytes, under {preallocated}");
    }
    let db = Db::open(dir.path(), options).await.unwrap();
    for key in ["a0", "a19", "b", "c", "d0", "d2", "e"] {
        assert!(db.get(key).await.unwrap().is_some(), "{key}");
    }
    db.close().await.unwrap();
}

/// A close on one handle while another handle's close, dropped, is joining
/// the engine threads (a flush still writing its table, slowly): the second
/// returns only once the threads and the joiner's handle are gone, so the
/// directory opens again at once, not with `Error::Locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_finds_another_under_way_waits_for_its_threads() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let options = Options {
        write_buffer_size_bytes: 16 * 1024,
        io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() },
        ..small_options()
    };
    faults.add(FaultRule::new(FaultAction::DelayMs(300)).op(IoOp::Write).path_contains(".sst"));
    let db = Db::open(dir.path(), options).await.unwrap();
    for i in 0..400u32 {
        db.put(i.to_be_bytes(), [1u8; 100]).await.unwrap();
    }
    let other = db.clone();
    let mut first = Box::pin(db.close());
    // The first close gets its final flush answered, then waits for the
    // threads, among them the flush thread in its slow table writes.
    assert!(futures::poll!(first.as_mut()).is_pending());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(futures::poll!(first.as_mut()).is_pending(), "the flush thread is still writing");
    // Dropped while it waits: its joiner goes on, holding a handle.
    drop(first);
    other.close().await.unwrap();
    faults.clear();
    let reopened = Db::open(dir.path(), small_options()).await.expect("the directory is free once a close returns");
    assert!(reopened.get(399u32.to_be_bytes()).await.unwrap().is_some());
    reopened.close().await.unwrap();
}

/// An executor's task as `futures`' thread pool keeps one: the future lives in
/// the task, and the task lives as long as a waker for it does. Records the
/// thread that drops it.
struct OwningTask {
    future: std::sync::Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
    dropped_on: std::sync::mpsc::Sender<Option<String>>,
}

impl futures::task::ArcWake for OwningTask {
    // Never polled again: an executor that is gone.
    fn wake_by_ref(_task: &std::sync::Arc<Self>) {}
}

impl Drop for OwningTask {
    fn drop(&mut self) {
        drop(self.future.lock().unwrap().take());
        let _ = self.dropped_on.send(std::thread::current().name().map(str::to_owned));
    }
}

/// Drops the last handle of a database on an engine thread whose name starts
/// with `thread_prefix`: a task that nobody else holds owns it and waits on
/// the future `make` returns, so the completion that wakes the task lets go of
/// it there. The database must still close (not wait on that thread for
/// itself), write what was buffered, and unlock its directory. A completion
/// may come before the test lets go of the task (the drop then happens here),
/// so it tries again up to 50 times.
fn drop_last_handle_on_engine_thread(
    thread_prefix: &str,
    make: impl Fn(Db) -> futures::future::BoxFuture<'static, ()>,
) {
    drop_last_handle_on_engine_thread_with(
        Options { block_cache_size_bytes: 0, ..small_options() },
        thread_prefix,
        make,
    );
}

/// [`drop_last_handle_on_engine_thread`] with the database opened with `options`.
fn drop_last_handle_on_engine_thread_with(
    options: Options,
    thread_prefix: &str,
    make: impl Fn(Db) -> futures::future::BoxFuture<'static, ()>,
) {
    use std::task::Context;
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), options.clone()).await.unwrap();
        db.put("k", "v").await.unwrap();
        db.flush().await.unwrap();
        db.close().await.unwrap();
    });
    for attempt in 0..50u32 {
        let db = futures::executor::block_on(Db::open(dir.path(), options.clone())).unwrap();
        let key = format!("buffered{attempt}");
        let mut batch = WriteBatch::new();
        batch.put(&key, "1");
        futures::executor::block_on(db.write(batch, WriteOptions::with_durability(Durability::Buffered))).unwrap();
        let (dropped_on, drop_thread) = std::sync::mpsc::channel();
        let task = std::sync::Arc::new(OwningTask { future: std::sync::Mutex::new(Some(make(db))), dropped_on });
        let waker = futures::task::waker(task.clone());
        // Usually pending. A request can also complete within the poll (a
        // posix worker's read that ran while this thread was descheduled): the
        // task is then dropped here, and the attempt does not count.
        let _ = task.future.lock().unwrap().as_mut().unwrap().as_mut().poll(&mut Context::from_waker(&waker));
        drop(waker);
        drop(task);
        let thread = drop_thread
            .recv_timeout(Duration::from_secs(10))
            .expect("the task is let go of, and dropped, once the engine completes its request");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let reopened = loop {
            match futures::executor::block_on(Db::open(dir.path(), options.clone())) {
                Ok(db) => break db,
                Err(Error::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("the dropped database never closed (dropped on {thread:?}): {e}"),
            }
        };
        futures::executor::block_on(async {
            assert_eq!(reopened.get(&key).await.unwrap().as_deref(), Some(&b"1"[..]), "dropped on {thread:?}");
            assert_eq!(reopened.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
            reopened.close().await.unwrap();
        });
        if thread.as_deref().is_some_and(|name| name.starts_with(thread_prefix)) {
            return;
        }
    }
    panic!("in 50 attempts the last handle was never dropped on a {thread_prefix}* thread");
}

/// A get's block read completes on the I/O backend's thread, whose work the
/// engine threads' last writes need. (With the posix backend's several workers
/// the old code did not hang here; the ring thread is the one that did.)
#[test]
fn the_last_handle_dropped_on_an_io_thread_still_closes_the_database() {
    drop_last_handle_on_engine_thread("ringdb-io", |db| {
        Box::pin(async move {
            // A table read: no block is cached.
            let _ = db.get("k").await;
        })
    });
}

/// A synced write completes on the log writer's thread, which the drop would
/// otherwise try to join from itself.
#[test]
fn the_last_handle_dropped_on_the_log_writer_still_closes_the_database() {
    drop_last_handle_on_engine_thread("ringdb-wal", |db| {
        Box::pin(async move {
            let mut batch = WriteBatch::new();
            batch.put("synced", "1");
            let _ = db.write(batch, WriteOptions::with_durability(Durability::Synced)).await;
        })
    });
}

/// A manual compaction is answered by the compaction thread, which the drop
/// would otherwise try to join from itself.
#[test]
fn the_last_handle_dropped_on_the_compaction_thread_still_closes_the_database() {
    drop_last_handle_on_engine_thread("ringdb-compact", |db| {
        // Flushed first, so that the compaction's own flush has nothing to
        // wait for and the first wake-up is the compaction's answer.
        futures::executor::block_on(db.flush()).unwrap();
        Box::pin(async move {
            let _ = db.compact_range::<&[u8]>(..).await;
        })
    });
}

/// A write slowed down by level 0 sleeps on the timer thread, which wakes it
/// there. (The drop joins no thread that needs the timer, so this one closes
/// even without the hand-off to `ringdb-drop`: the test guards that it
/// stays so.)
#[test]
fn the_last_handle_dropped_on_the_timer_thread_still_closes_the_database() {
    let compaction = ringdb::CompactionOptions {
        l0_compaction_trigger: 1,
        l0_slowdown_trigger: 1,
        l0_stop_trigger: 1000,
        ..Default::default()
    };
    let options = Options { block_cache_size_bytes: 0, compaction, ..small_options() };
    drop_last_handle_on_engine_thread_with(options, "ringdb-timer", |db| {
        // A fresh level-0 table: until compaction moves it down, writes
        // are slowed down by a sleep. (If compaction wins the race, the
        // write completes at once and the attempt does not count.)
        futures::executor::block_on(async {
            db.put("fresh", "table").await.unwrap();
            db.flush().await.unwrap();
        });
        Box::pin(async move {
            let _ = db.put("slowed", "1").await;
        })
    });
}

/// A flush request is answered by the flush thread (its notification of
/// `room` wakes the task, which is dropped right there), which the drop would
/// otherwise try to join from itself.
#[test]
fn the_last_handle_dropped_on_the_flush_thread_still_closes_the_database() {
    drop_last_handle_on_engine_thread("ringdb-flush", |db| {
        Box::pin(async move {
            // The buffered write made the memtable non-empty: this freezes it
            // and waits for the flush thread.
            let _ = db.flush().await;
        })
    });
}
