//! Recovery from damaged logs at the database level, and the log writer's
//! behaviour after failures: no write is acknowledged after the database is
//! poisoned, flushes and closes never hang, a failed flush sync poisons.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ringdb::io::{FaultAction, FaultInjector, FaultRule, IoOptions};
use ringdb::{Db, Durability, Error, IoOp, Options, RecoveryMode, WriteBatch, WriteOptions};

fn options() -> Options {
    Options { wal_preallocate_bytes: 256 * 1024, ..Options::default() }
}

/// `opts` with `faults` installed in its I/O backend.
fn with_faults(faults: &FaultInjector, opts: Options) -> Options {
    Options { io: IoOptions { faults: Some(faults.clone()), ..opts.io.clone() }, ..opts }
}

/// The files of `dir` with `extension`, sorted (by number, for logs and tables).
fn files_with_extension(dir: &std::path::Path, extension: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    files.sort();
    files
}

fn wal_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files_with_extension(dir, "wal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_group_nothing_more_is_acknowledged_and_reopen_keeps_every_ack() {
    for round in 0..5u64 {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultInjector::new();
        let opts = with_faults(&faults, options());
        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        faults.add(
            FaultRule::new(FaultAction::Error(libc::EIO))
                .op(IoOp::Write)
                .path_contains("000002.wal")
                .skip(20 + round * 7)
                .times(1),
        );
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32u32)
            .map(|task| {
                let (db, acked, refused) = (db.clone(), acked.clone(), refused.clone());
                tokio::spawn(async move {
                    for n in 0..50u32 {
                        let key = format!("{task}-{n}");
                        match db.put(&key, "v").await {
                            Ok(()) => acked.lock().unwrap().push(key),
                            Err(Error::Poisoned(_)) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(other) => panic!("unexpected {other}"),
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(refused.load(Ordering::Relaxed) > 0, "round {round}: the fault fired and poisoned the database");
        drop(db);
        faults.clear();
        let db = Db::open(dir.path(), opts).await.unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let acked: Vec<String> = acked.lock().unwrap().clone();
        for key in &acked {
            assert!(db.get(key).await.unwrap().is_some(), "round {round}: acknowledged {key} was lost");
        }
    }
}

#[test]
fn flush_and_close_after_close_return_closed_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), options()).await.unwrap();
        let other = db.clone();
        db.close().await.unwrap();
        assert!(matches!(other.flush_wal(true).await, Err(Error::Closed)));
        assert!(matches!(other.put("k", "v").await, Err(Error::Closed)));
        other.clone().close().await.unwrap();
    });
}

#[test]
fn a_failed_flush_sync_poisons_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let opts = with_faults(&faults, options());
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), opts).await.unwrap();
        db.put("k", "v").await.unwrap();
        faults.add(FaultRule::new(FaultAction::Error(libc::EIO)).op(IoOp::Sync).path_contains("000002.wal").times(1));
        assert!(matches!(db.flush_wal(true).await, Err(Error::Poisoned(_))));
        assert!(matches!(db.put("k2", "v").await, Err(Error::Poisoned(_))), "a failed fdatasync poisons");
        assert!(matches!(db.close().await, Err(Error::Poisoned(_))));
    });
}

/// Fills at least `logs` logs with synced puts `key-NNNNNN` (small memtables
/// force a new log each time) while a slow table device keeps the flush
/// thread on the first memtable, so the later logs are still there at close.
async fn fill_logs(dir: &std::path::Path, logs: usize) {
    let faults = FaultInjector::new();
    faults.add(FaultRule::new(FaultAction::DelayMs(1500)).op(IoOp::Write).path_contains(".sst"));
    let opts = Options {
        write_buffer_size_bytes: 8 * 1024,
        max_immutable_memtables: 64,
        io: IoOptions { faults: Some(faults), ..IoOptions::default() },
        ..options()
    };
    let db = Db::open(dir, opts).await.unwrap();
    let mut n = 0u32;
    // One more than asked for: the flush in progress deletes the first.
    while wal_files(dir).len() < logs + 2 {
        let mut batch = WriteBatch::new();
        batch.put(format!("key-{n:06}"), [7u8; 200]);
        db.write(batch, WriteOptions::with_durability(Durability::Synced)).await.unwrap();
        n += 1;
    }
    db.close().await.unwrap();
}

/// The first key written in the group record at `offset` of a log.
fn first_key_at(log: &std::path::Path, offset: usize) -> String {
    let bytes = std::fs::read(log).unwrap();
    let group = &bytes[offset..offset + 4096];
    let at = group.windows(4).position(|w| w == b"key-").expect("a group holds a key");
    String::from_utf8(group[at..at + 10].to_vec()).unwrap()
}

#[test]
fn mid_log_damage_is_corruption_by_default_and_a_prefix_in_the_tolerant_mode() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        fill_logs(dir.path(), 3).await;
        let logs = wal_files(dir.path());
        assert!(logs.len() >= 3, "{logs:?}");
        // Groups start at 4096, one sector each here (one synced put per group).
        let first = &logs[0];
        let (kept, damaged, later) =
            (first_key_at(first, 4096), first_key_at(first, 8192), first_key_at(&logs[1], 4096));
        // Damage the second group of the first log.
        let mut bytes = std::fs::read(first).unwrap();
        bytes[8192 + 30] ^= 0xff;
        std::fs::write(first, &bytes).unwrap();
        match Db::open(dir.path(), options()).await {
            Err(Error::Corruption { file, offset, .. }) => {
                assert_eq!(&file, first);
                assert_eq!(offset, 8192);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        let tolerant = Options { recovery_mode: RecoveryMode::KeepPrefixDropRest, ..options() };
        let db = Db::open(dir.path(), tolerant).await.unwrap();
        assert!(db.get("key-000000").await.unwrap().is_some(), "flushed data is untouched");
        assert!(db.get(&kept).await.unwrap().is_some(), "the prefix before the damage is kept");
        assert!(db.get(&damaged).await.unwrap().is_none(), "the damaged group is dropped");
        assert!(db.get(&later).await.unwrap().is_none(), "later logs are dropped with it");
        db.put("after", "1").await.unwrap();
        db.close().await.unwrap();
        // The drop is permanent: a strict reopen now succeeds and keeps the new write.
        let db = Db::open(dir.path(), options()).await.unwrap();
        assert!(db.get("after").await.unwrap().is_some());
        assert!(db.get(&kept).await.unwrap().is_some());
        let set_aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".dropped"))
            .count();
        assert!(set_aside >= 2, "later logs are kept aside, not deleted");
    });
}

fn table_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files_with_extension(dir, "sst")
}

/// Writes `keys` synced puts, then flushes them with `rule` installed, which
/// must make the flush fail. Returns the database's directory for a reopen.
fn flush_failing_with(rule: FaultRule, opts: Options, keys: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let opts = with_faults(&faults, opts);
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), opts).await.unwrap();
        for n in 0..keys {
            db.write(
                {
                    let mut batch = WriteBatch::new();
                    batch.put(format!("key-{n:04}"), format!("value-{n}"));
                    batch
                },
                WriteOptions::with_durability(Durability::Synced),
            )
            .await
            .unwrap();
        }
        faults.add(rule);
        // A failed MANIFEST switch comes after the flush was recorded: the
        // flush itself may report success, the poison follows at once.
        let flushed = db.flush().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match db.put("later", "v").await {
                Err(Error::Poisoned(_)) => break,
                Ok(()) => assert!(flushed.is_ok(), "nothing is acknowledged after a failed flush"),
                Err(other) => panic!("unexpected {other}"),
            }
            assert!(std::time::Instant::now() < deadline, "the failure poisons the database");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(db);
    });
    dir
}

fn assert_reopens_with_every_key(dir: &std::path::Path, keys: u32) {
    futures::executor::block_on(async {
        let db = Db::open(dir, options()).await.unwrap_or_else(|e| panic!("reopen failed: {e}"));
        for n in 0..keys {
            let value = db.get(format!("key-{n:04}")).await.unwrap();
            assert_eq!(value.as_deref(), Some(format!("value-{n}").as_bytes()), "key-{n:04} after reopen");
        }
        db.close().await.unwrap();
    });
}

/// The MANIFEST append's write lands but its fdatasync fails: the edit that
/// records the new table may be on disk, so the failed flush must not delete
/// the table (it used to, and the next open then failed on a missing table).
#[test]
fn a_flush_whose_manifest_sync_fails_leaves_its_table_for_the_next_open() {
    let rule = FaultRule::new(FaultAction::Error(libc::EIO)).op(IoOp::Sync).path_contains("MANIFEST").times(1);
    let dir = flush_failing_with(rule, options(), 200);
    let recorded = table_files(dir.path());
    assert_eq!(recorded.len(), 1, "the table the MANIFEST may record is still there");
    assert_reopens_with_every_key(dir.path(), 200);
    assert!(recorded[0].exists(), "the recorded table is live");
}

/// The MANIFEST append itself fails: the table is recorded nowhere, the next
/// open deletes it and replays the log instead.
#[test]
fn a_flush_whose_manifest_write_fails_loses_nothing_and_leaves_no_orphan() {
    let rule = FaultRule::new(FaultAction::Error(libc::ENOSPC)).op(IoOp::Write).path_contains("MANIFEST").times(1);
    let dir = flush_failing_with(rule, options(), 200);
    let unrecorded = table_files(dir.path());
    assert_eq!(unrecorded.len(), 1, "the failed flush leaves its table to the next open");
    assert_reopens_with_every_key(dir.path(), 200);
    assert!(!unrecorded[0].exists(), "the unrecorded table was deleted at open");
}

/// The edit is recorded, then the switch to a new MANIFEST (due after every
/// edit here) fails while writing `CURRENT`: the table is recorded in the
/// MANIFEST that `CURRENT` still names, and must survive the failed flush.
#[test]
fn a_flush_whose_manifest_switch_fails_keeps_the_recorded_table() {
    let rule = FaultRule::new(FaultAction::Error(libc::ENOSPC)).op(IoOp::Write).path_contains("CURRENT").times(1);
    let opts = Options { max_manifest_file_size_bytes: 1, ..options() };
    let dir = flush_failing_with(rule, opts, 200);
    let recorded = table_files(dir.path());
    assert_eq!(recorded.len(), 1);
    assert_reopens_with_every_key(dir.path(), 200);
    assert!(recorded[0].exists(), "the recorded table is live");
}

/// A log missing between two others leaves a gap in the sequence: the
/// tolerant mode replays up to it and sets aside the log after the gap. That
/// log used to be kept, so an open after a crash (before the replayed writes
/// were flushed) found the same gap and set aside the log of every write
/// acknowledged since.
#[test]
fn a_gap_between_logs_is_dropped_for_good_in_the_tolerant_mode() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        fill_logs(dir.path(), 3).await;
        let logs = wal_files(dir.path());
        assert!(logs.len() >= 3, "{logs:?}");
        let (kept, after_gap) = (first_key_at(&logs[0], 4096), first_key_at(&logs[2], 4096));
        std::fs::remove_file(&logs[1]).unwrap();
        // A slow table device keeps the replayed writes in the memtable (and
        // their logs alive) while the copy below is taken.
        let faults = FaultInjector::new();
        faults.add(FaultRule::new(FaultAction::DelayMs(2000)).op(IoOp::Write).path_contains(".sst"));
        let tolerant = Options { recovery_mode: RecoveryMode::KeepPrefixDropRest, ..options() };
        let slow = Options { io: IoOptions { faults: Some(faults), ..IoOptions::default() }, ..tolerant.clone() };
        let db = Db::open(dir.path(), slow).await.unwrap();
        assert!(db.get(&kept).await.unwrap().is_some(), "the log before the gap is replayed");
        assert!(db.get(&after_gap).await.unwrap().is_none(), "the log after the gap is dropped");
        let mut batch = WriteBatch::new();
        batch.put("after", "1");
        db.write(batch, WriteOptions::with_durability(Durability::Synced)).await.unwrap();
        // The files as a crash right after the acknowledgement would leave them.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            match std::fs::copy(&path, crashed.path().join(path.file_name().unwrap())) {
                // A spare log being renamed into place: not part of the state.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                copied => {
                    copied.unwrap();
                }
            }
        }
        drop(db);
        for mode in [tolerant, options()] {
            let db = Db::open(crashed.path(), mode).await.unwrap();
            assert!(db.get("after").await.unwrap().is_some(), "a write acknowledged after the drop survives");
            assert!(db.get(&kept).await.unwrap().is_some());
            db.close().await.unwrap();
        }
    });
}

/// A `close()` dropped while it waits for the engine threads (a shutdown
/// timeout) must keep the directory locked until they are done: the flush
/// thread still writes and records its table, and deletes the logs it
/// covered. The lock used to go with the future, so a reopen could start
/// while the old threads still changed the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_close_keeps_the_directory_locked_until_its_threads_exit() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let opts = with_faults(&faults, options());
    let db = Db::open(dir.path(), opts).await.unwrap();
    for n in 0..100u32 {
        db.put(format!("key-{n:04}"), "v").await.unwrap();
    }
    // The flush of the memtable (started by the first `flush` below) takes seconds.
    faults.add(FaultRule::new(FaultAction::DelayMs(1500)).op(IoOp::Write).path_contains(".sst"));
    let flushing = {
        let db = db.clone();
        tokio::spawn(async move { db.flush().await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let closing = tokio::time::timeout(std::time::Duration::from_millis(300), db.close()).await;
    assert!(closing.is_err(), "close waits for the slow flush; the timeout drops it");
    let _ = flushing.await;
    // The flush is still writing: the directory must still be locked.
    match Db::open(dir.path(), options()).await {
        Err(Error::Locked(_)) => {}
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second instance opened while the first one's threads still ran"),
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reopened = loop {
        match Db::open(dir.path(), options()).await {
            Ok(db) => break db,
            Err(Error::Locked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(other) => panic!("reopen: {other}"),
        }
    };
    for n in 0..100u32 {
        assert!(reopened.get(format!("key-{n:04}")).await.unwrap().is_some(), "key-{n:04}");
    }
    reopened.close().await.unwrap();
}

/// A buffered write is acknowledged when it is queued. If a flush then fails
/// (the database is poisoned, the log is healthy), the log still writes what
/// it had queued: the acknowledged write survives a clean close and reopen.
/// (The writer used to drop everything queued once the database was
/// poisoned, whatever failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_does_not_discard_acknowledged_buffered_writes() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let opts = Options {
        // Buffered writes wait in the queue for a minute unless something writes them out.
        wal_flush_interval_ms: 60_000,
        io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() },
        ..options()
    };
    let db = Db::open(dir.path(), opts).await.unwrap();
    for n in 0..100u32 {
        db.put(format!("key-{n:04}"), "v").await.unwrap();
    }
    // The flush's table write takes a second, then its sync fails.
    faults.add(FaultRule::new(FaultAction::DelayMs(1000)).op(IoOp::Write).path_contains(".sst").times(1));
    faults.add(FaultRule::new(FaultAction::Error(libc::EIO)).op(IoOp::Sync).path_contains(".sst"));
    let flushing = {
        let db = db.clone();
        tokio::spawn(async move { db.flush().await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut batch = WriteBatch::new();
    batch.put("buffered", "1");
    db.write(batch, WriteOptions::with_durability(Durability::Buffered)).await.unwrap();
    assert!(flushing.await.unwrap().is_err(), "the flush fails");
    assert!(matches!(db.put("later", "v").await, Err(Error::Poisoned(_))));
    // Counts the log's fdatasyncs (a rule that fires and does nothing).
    let current_log = wal_files(dir.path()).pop().unwrap();
    let current_log = current_log.file_name().unwrap().to_str().unwrap().to_string();
    faults.add(FaultRule::new(FaultAction::DelayMs(0)).op(IoOp::Sync).path_contains(current_log));
    let before = faults.fired();
    assert!(matches!(db.close().await, Err(Error::Poisoned(_))));
    assert!(faults.fired() > before, "the close wrote and synced the queued write, as a healthy close does");
    faults.clear();
    let db = Db::open(dir.path(), options()).await.unwrap();
    assert!(db.get("buffered").await.unwrap().is_some(), "the acknowledged buffered write survives");
    for n in 0..100u32 {
        assert!(db.get(format!("key-{n:04}")).await.unwrap().is_some());
    }
    db.close().await.unwrap();
}

/// A flush writes into the spare file made after the previous flush, renamed
/// to the table's name as it starts: errors name the table, not the spare
/// (whose name the file kept internally before).
#[test]
fn errors_of_a_flush_into_the_spare_name_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let opts = with_faults(&faults, options());
    futures::executor::block_on(async {
        let db = Db::open(dir.path(), opts).await.unwrap();
        db.put("a", "1").await.unwrap();
        db.flush().await.unwrap();
        let spare = dir.path().join("flush-spare.sst.tmp");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !spare.exists() {
            assert!(std::time::Instant::now() < deadline, "the flush thread makes a spare table file");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        db.put("b", "2").await.unwrap();
        faults.add(FaultRule::new(FaultAction::Error(libc::EIO)).op(IoOp::Write).path_contains(".sst").times(1));
        let error = db.flush().await.unwrap_err().to_string();
        assert!(!spare.exists(), "the spare was used");
        assert!(error.contains(".sst") && !error.contains("spare"), "{error}");
    });
}
