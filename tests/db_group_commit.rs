//! Group commit and visibility order: concurrent synced writes share log
//! writes and fdatasyncs, and readers never see write N+1 without write N.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ringdb::{Db, Durability, Options, WriteBatch, WriteOptions};

fn options() -> Options {
    Options { wal_preallocate_bytes: 4 << 20, ..Options::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_synced_writes_share_log_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    let before = db.io_stats();
    let writers = 64u32;
    let per_writer = 20u32;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 0..per_writer {
                    let mut batch = WriteBatch::new();
                    batch.put(format!("{w}-{n}"), [w as u8; 100]);
                    db.write(batch, WriteOptions::with_durability(Durability::Synced)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let log_ops = db.io_stats().ops_submitted - before.ops_submitted;
    let writes = u64::from(writers * per_writer);
    // One group = one linked write+fdatasync operation; with 64 writers most groups hold many writes.
    assert!(log_ops * 4 < writes, "{log_ops} log writes for {writes} synced puts: no group commit");
    for w in 0..writers {
        assert!(db.get(format!("{w}-{}", per_writer - 1)).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_write_without_the_writes_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Each writer writes n = 0, 1, 2, ... in order; mixing modes mixes waiting and immediate visibility.
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 0..400u32 {
                    let durability = [Durability::Written, Durability::Buffered, Durability::Synced][(n % 3) as usize];
                    let mut batch = WriteBatch::new();
                    batch.put(format!("w{w}-{n:05}"), n.to_le_bytes());
                    db.write(batch, WriteOptions::with_durability(durability)).await.unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut checks = 0;
            while !stop.load(Ordering::Relaxed) {
                let snapshot = db.snapshot();
                for w in 0..4u32 {
                    // The highest visible n of this writer: everything below it must be visible too.
                    let mut lo = 0;
                    while lo < 400 && snapshot.get(format!("w{w}-{lo:05}")).await.unwrap().is_some() {
                        lo += 1;
                    }
                    for n in lo..(lo + 20).min(400) {
                        assert!(
                            snapshot.get(format!("w{w}-{n:05}")).await.unwrap().is_none(),
                            "writer {w}: write {n} visible without write {lo}"
                        );
                    }
                }
                checks += 1;
                tokio::task::yield_now().await;
            }
            checks
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
}
