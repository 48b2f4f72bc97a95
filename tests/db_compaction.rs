//! Compaction at the database level: manual `compact_range`, what it keeps
//! for snapshots and what it drops, and the level summary.

mod common;
use common::sst_files;

use futures::StreamExt;
use ringdb::{CompactionOptions, Db, Options};

fn options() -> Options {
    Options {
        write_buffer_size_bytes: 32 << 10,
        wal_preallocate_bytes: 64 << 10,
        block_size_bytes: 1024,
        // Every edit is a 4 KiB record: the MANIFEST is replaced every few edits.
        max_manifest_file_size_bytes: 32 << 10,
        compaction: CompactionOptions {
            l0_compaction_trigger: 2,
            level1_target_bytes: 64 << 10,
            sst_target_size_bytes: 16 << 10,
            ..CompactionOptions::default()
        },
        ..Options::default()
    }
}

fn key(n: u32) -> String {
    format!("key-{n:05}")
}

async fn scan_all(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.scan::<&[u8]>(..).map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_range_merges_into_one_run_and_keeps_what_snapshots_see() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    for n in 0..3000 {
        db.put(key(n), format!("first-{n}")).await.unwrap();
    }
    let before = db.snapshot();
    for n in 0..3000 {
        if n % 2 == 0 {
            db.delete(key(n)).await.unwrap();
        } else {
            db.put(key(n), format!("second-{n}")).await.unwrap();
        }
    }
    db.compact_range::<&[u8]>(..).await.unwrap();
    let stats = db.stats();
    assert!(stats.compaction.compactions > 0, "{stats}");
    let deepest = (0..stats.levels.len()).rev().find(|l| stats.levels[*l].tables > 0).unwrap();
    assert!(deepest >= 1, "{stats}");
    for (level, summary) in stats.levels.iter().enumerate() {
        assert!(level == deepest || summary.tables == 0, "everything is in level {deepest}:\n{stats}");
    }
    // The snapshot still sees every first value, through the compaction.
    for n in (0..3000).step_by(37) {
        let want = format!("first-{n}");
        assert_eq!(before.get(key(n)).await.unwrap().as_deref(), Some(want.as_bytes()), "key {n} at the snapshot");
    }
    let now = scan_all(&db).await;
    assert_eq!(now.len(), 1500);
    assert!(now.iter().all(|(k, v)| v.starts_with(b"second-") && k.starts_with(b"key-")));
    // Without the snapshot, a second compaction drops the old versions and the tombstones.
    drop(before);
    let dropped_before = db.stats().compaction.entries_dropped;
    db.compact_range(key(0)..key(3000)).await.unwrap();
    let stats = db.stats();
    assert!(stats.compaction.entries_dropped >= dropped_before + 3000, "{stats}");
    assert_eq!(scan_all(&db).await, now);
    let summary = stats.to_string();
    assert!(summary.contains("L1") && summary.contains("write amplification"), "{summary}");
    db.close().await.unwrap();

    // And after a reopen, from the MANIFEST.
    let db = Db::open(dir.path(), options()).await.unwrap();
    assert_eq!(scan_all(&db).await, now);
    assert_eq!(db.get(key(2)).await.unwrap(), None);
    assert_eq!(db.get(key(3)).await.unwrap().as_deref(), Some(&b"second-3"[..]));
}

/// Subcompactions: one compaction split over threads by key range gives the
/// same contents, in as many tables as ranges (each range writes its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcompactions_split_one_compaction_by_key_range() {
    for max_subcompactions in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options();
        // One output table per range: the target is far above the data, and
        // a range needs a quarter of it (256 KiB) of input.
        options.compaction.sst_target_size_bytes = 1 << 20;
        options.compaction.max_subcompactions = max_subcompactions;
        options.compaction.disable_auto_compactions = true;
        let db = Db::open(dir.path(), options.clone()).await.unwrap();
        let mut model = std::collections::BTreeMap::new();
        for round in 0..3u32 {
            for n in 0..4000u32 {
                let n = n * 7919 % 4000;
                let (k, v) = (key(n), format!("{round}-{n}-{}", "v".repeat(200)));
                if n % 11 == round {
                    db.delete(&k).await.unwrap();
                    model.remove(k.as_bytes());
                } else {
                    db.put(&k, &v).await.unwrap();
                    model.insert(k.into_bytes(), v.into_bytes());
                }
            }
        }
        db.flush().await.unwrap();
        let input_bytes = db.stats().table_bytes();
        assert!(input_bytes > 768 << 10, "enough input for three ranges: {input_bytes}");
        db.compact_range::<&[u8]>(..).await.unwrap();
        let stats = db.stats();
        let deepest = stats.levels.iter().rposition(|l| l.tables > 0).unwrap();
        assert_eq!(stats.levels[deepest].tables, max_subcompactions, "one table per range:\n{stats}");
        let want: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
        assert_eq!(scan_all(&db).await, want, "max_subcompactions {max_subcompactions}");
        for n in (0..4000).step_by(97) {
            assert_eq!(db.get(key(n)).await.unwrap().map(|v| v.to_vec()), model.get(key(n).as_bytes()).cloned());
        }
        db.close().await.unwrap();
        let db = Db::open(dir.path(), options).await.unwrap();
        assert_eq!(scan_all(&db).await, want, "after reopen, max_subcompactions {max_subcompactions}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compactions_keep_levels_within_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    for round in 0..4 {
        for n in 0..2000u32 {
            db.put(key(n * 7919 % 2000), format!("{round}-{n}-{}", "x".repeat(40))).await.unwrap();
        }
    }
    db.flush().await.unwrap();
    // Let the compaction thread catch up: it runs until no level is over its target.
    for _ in 0..200 {
        let stats = db.stats();
        if stats.levels[0].tables < 2 && stats.levels[1].bytes <= 64 << 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stats = db.stats();
    assert!(stats.levels[0].tables < 2, "{stats}");
    assert!(stats.levels[1].bytes <= 64 << 10, "{stats}");
    assert!(stats.levels[2].tables > 0, "data reached level 2:\n{stats}");
    assert!(stats.write_amplification() > 1.0, "{stats}");
    // The per-level columns add up to the totals.
    let levels = &stats.levels;
    assert_eq!(levels[0].compactions, 0, "nothing compacts into level 0");
    assert_eq!(levels[0].written_bytes, stats.flush.bytes_written, "level 0 is written by flushes");
    assert_eq!(levels.iter().map(|l| l.compactions).sum::<u64>(), stats.compaction.compactions, "{stats}");
    assert_eq!(
        levels.iter().map(|l| l.read_upper_bytes + l.read_own_bytes).sum::<u64>(),
        stats.compaction.bytes_read,
        "{stats}"
    );
    assert_eq!(levels[1..].iter().map(|l| l.written_bytes).sum::<u64>(), stats.compaction.bytes_written, "{stats}");
    assert!(levels[1].read_upper_bytes > 0 && levels[2].read_upper_bytes > 0, "{stats}");
    assert!(levels[2].read_own_bytes > 0, "level-1 tables were merged with overlapping level-2 ones:\n{stats}");
    assert!(levels[1].write_amplification() > 0.0, "{stats}");
    let summary = stats.to_string();
    assert!(summary.contains("Rn MiB") && summary.contains("w-amp"), "{summary}");
    assert_eq!(summary.lines().filter(|line| line.starts_with('L')).count(), 7, "{summary}");
    let manifests: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("MANIFEST-"))
        .collect();
    assert_eq!(manifests.len(), 1, "old MANIFESTs are removed: {manifests:?}");
    let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    assert_eq!(current.trim_end(), manifests[0]);
    assert!(manifests[0].as_str() > "MANIFEST-000002", "the MANIFEST was replaced: {manifests:?}");
    db.close().await.unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    assert_eq!(scan_all(&db).await.len(), 2000, "reopened from the latest MANIFEST");
    assert_eq!(scan_all(&db).await.len(), 2000);
}

/// Options whose table reads take `read_delay_ms` each (returned with the
/// injector, to clear it): compactions (and table opens) lag behind flushes,
/// and level 0 fills towards `l0_stop_trigger`.
fn slow_compaction_options(read_delay_ms: u64, l0_stop_trigger: usize) -> (Options, ringdb::io::FaultInjector) {
    use ringdb::io::{FaultAction, FaultInjector, FaultRule, IoOptions};
    let faults = FaultInjector::new();
    faults.add(FaultRule::new(FaultAction::DelayMs(read_delay_ms)).op(ringdb::IoOp::Read).path_contains(".sst"));
    let options = Options {
        io: IoOptions { faults: Some(faults.clone()), ..IoOptions::default() },
        write_buffer_size_bytes: 16 << 10,
        // Room for many frozen memtables: writes wait on level 0, not on flushes.
        max_immutable_memtables: 64,
        compaction: CompactionOptions {
            l0_compaction_trigger: 2,
            l0_slowdown_trigger: 3,
            l0_stop_trigger,
            ..options().compaction
        },
        ..options()
    };
    (options, faults)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_slow_down_past_the_slowdown_trigger_and_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (options, faults) = slow_compaction_options(20, 40);
    let db = Db::open(dir.path(), options).await.unwrap();
    // Until level 0 passes the slowdown trigger: how many writes that takes
    // depends on how fast they are against the delayed flushes (on a fast
    // host, 3000 writes all fit in frozen memtables before the second flush).
    let mut written = 0u32;
    while written < 200_000 && db.stats().write_slowdown_us == 0 {
        for _ in 0..100 {
            db.put(key(written), "v".repeat(50)).await.unwrap();
            written += 1;
        }
    }
    let stats = db.stats();
    assert!(stats.write_slowdown_us > 0, "writes were slowed down within {written} writes:\n{stats}");
    assert!(stats.levels[0].tables < 40, "{stats}");
    faults.clear();
    assert_eq!(scan_all(&db).await.len(), written as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_keeps_its_tables_through_compactions_that_delete_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    for n in 0..4000 {
        db.put(key(n), format!("v-{n}")).await.unwrap();
    }
    db.flush().await.unwrap();
    let tables_before: Vec<String> = sst_files(dir.path());
    let mut scan = Box::pin(db.scan::<&[u8]>(..));
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let (k, _) = scan.next().await.unwrap().unwrap();
        seen.push(k.to_vec());
    }
    // Rewrite everything while the scan is half way: the scan's tables leave the version.
    for n in 0..4000 {
        db.put(key(n), format!("w-{n}")).await.unwrap();
    }
    db.compact_range::<&[u8]>(..).await.unwrap();
    let still_there = sst_files(dir.path()).iter().filter(|name| tables_before.contains(name)).count();
    assert!(still_there > 0, "the scan's tables are not deleted while it reads them");
    while let Some(item) = scan.next().await {
        let (k, v) = item.unwrap();
        assert!(v.starts_with(b"v-"), "the scan sees the data of its moment");
        seen.push(k.to_vec());
    }
    assert_eq!(seen.len(), 4000);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    drop(scan);
    // Once the scan is gone, the next compaction's cleanup deletes them.
    db.put("z", "1").await.unwrap();
    db.compact_range::<&[u8]>(..).await.unwrap();
    let left = sst_files(dir.path()).iter().filter(|name| tables_before.contains(name)).count();
    assert_eq!(left, 0, "obsolete tables are deleted once no reader holds them");
}

/// After `compact_range` pushes the range into the bottom level, the bottom
/// tables that push did not touch are rewritten too: the versions a dropped
/// snapshot kept in them are gone (the push used to stop there, leaving them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_range_also_cleans_the_bottom_tables_the_push_did_not_touch() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        compaction: CompactionOptions { disable_auto_compactions: true, ..options().compaction },
        ..options()
    };
    let db = Db::open(dir.path(), opts).await.unwrap();
    let total_bytes = |db: &Db| db.stats().levels.iter().map(|level| level.bytes).sum::<u64>();
    for n in 0..3000 {
        db.put(key(n), format!("first-{n:0>80}")).await.unwrap();
    }
    db.compact_range::<&[u8]>(..).await.unwrap();
    let snapshot = db.snapshot();
    for n in 0..3000 {
        db.put(key(n), format!("second-{n:0>80}")).await.unwrap();
    }
    db.compact_range::<&[u8]>(..).await.unwrap();
    let with_both_versions = total_bytes(&db);
    let bottom_tables = db.stats().levels[1].tables;
    assert!(bottom_tables >= 8, "the bottom level holds many tables: {bottom_tables}");
    drop(snapshot);
    // Overlaps one bottom table or two.
    db.put(key(1500), "third").await.unwrap();
    db.compact_range::<&[u8]>(..).await.unwrap();
    let after = total_bytes(&db);
    assert!(
        after * 10 < with_both_versions * 7,
        "the first versions are gone everywhere: {after} bytes, {with_both_versions} with both versions"
    );
    let all = scan_all(&db).await;
    assert_eq!(all.len(), 3000);
    for (n, (k, v)) in all.iter().enumerate() {
        assert_eq!(k, key(n as u32).as_bytes());
        let expected = if n == 1500 { "third".to_string() } else { format!("second-{n:0>80}") };
        assert_eq!(v, expected.as_bytes());
    }
    db.close().await.unwrap();
}

/// A writer waits at level 0's stop trigger while a slow compaction runs;
/// another handle's `close()` is polled once and dropped. The compaction
/// sees the database closing and stops; the writer must still be woken, and
/// get `Error::Closed`, not wait for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_at_the_stop_trigger_is_woken_by_a_close_dropped_early() {
    let dir = tempfile::tempdir().unwrap();
    // Compaction reads crawl: level 0 fills up to its stop trigger.
    let (options, faults) = slow_compaction_options(300, 4);
    let db = Db::open(dir.path(), options).await.unwrap();
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for n in 0..1_000_000u32 {
                if let Err(e) = db.put(key(n), "v".repeat(50)).await {
                    return e;
                }
            }
            panic!("a million writes never stalled");
        })
    };
    // Until the writer has waited at the stop trigger for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db.stats().write_stall_us < 200_000 {
        assert!(std::time::Instant::now() < deadline, "the writer never stalled:\n{}", db.stats());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut close = Box::pin(db.clone().close());
    assert!(futures::poll!(close.as_mut()).is_pending());
    drop(close);
    let woken = tokio::time::timeout(std::time::Duration::from_secs(20), writer).await;
    let error = woken.expect("the stalled writer was woken").unwrap();
    assert!(matches!(error, ringdb::Error::Closed), "{error}");
    faults.clear();
    drop(db);
}
