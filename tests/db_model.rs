//! Model test: seeded random puts, deletes, batches, gets and snapshots from
//! several concurrent writers, with reopens between phases, checked against a
//! `BTreeMap`. `RINGDB_MODEL_OPS` sets the operations per writer and phase.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use ringdb::{Db, Durability, Options, WriteBatch, WriteOptions};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const WRITERS: u64 = 4;
const PHASES: u64 = 5;

fn ops_per_phase() -> usize {
    std::env::var("RINGDB_MODEL_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

fn options() -> Options {
    // Small memtables so that freezes and flushes to tables happen many times
    // per phase, and reads and snapshots cross memtables and tables.
    Options {
        write_buffer_size_bytes: 64 * 1024,
        max_immutable_memtables: 2,
        block_size_bytes: 1024,
        // Tiny levels: compactions into levels 1 and 2 run many times per phase.
        compaction: ringdb::CompactionOptions {
            l0_compaction_trigger: 2,
            level1_target_bytes: 128 << 10,
            sst_target_size_bytes: 32 << 10,
            // Most compactions split over threads by key range (8 KiB of
            // input per range at least).
            max_subcompactions: 3,
            ..Default::default()
        },
        wal_preallocate_bytes: 128 * 1024,
        wal_buffer_size_bytes: 16 * 1024,
        // The test's tasks run on a multi-thread runtime with its I/O driver:
        // their reads and writes complete through its reactor, while flushes
        // and compactions use the ring thread.
        io: ringdb::io::IoOptions { tokio_reactor: true, ..Default::default() },
        ..Options::default()
    }
}

fn key(writer: u64, n: u32) -> Vec<u8> {
    format!("w{writer}-{n:05}").into_bytes()
}

/// One writer's phase: random operations on its own keys, mirrored in its model.
async fn run_writer(db: Db, writer: u64, seed: u64, model: &mut Model) {
    let mut rng = StdRng::seed_from_u64(seed);
    let key_space = 400u32;
    for _ in 0..ops_per_phase() {
        let durability = match rng.gen_range(0..10) {
            0 => Durability::Synced,
            1..=5 => Durability::Written,
            _ => Durability::Buffered,
        };
        match rng.gen_range(0..100) {
            0..=44 => {
                let k = key(writer, rng.gen_range(0..key_space));
                let v: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.r#gen()).collect();
                let mut batch = WriteBatch::new();
                batch.put(&k, &v);
                db.write(batch, WriteOptions::with_durability(durability)).await.unwrap();
                model.insert(k, v);
            }
            45..=59 => {
                let k = key(writer, rng.gen_range(0..key_space));
                let mut batch = WriteBatch::new();
                batch.delete(&k);
                db.write(batch, WriteOptions::with_durability(durability)).await.unwrap();
                model.remove(&k);
            }
            60..=74 => {
                let mut batch = WriteBatch::new();
                let mut staged = Vec::new();
                for _ in 0..rng.gen_range(1..20) {
                    let k = key(writer, rng.gen_range(0..key_space));
                    if rng.gen_bool(0.7) {
                        let v = vec![rng.r#gen::<u8>(); rng.gen_range(0..64)];
                        batch.put(&k, &v);
                        staged.push((k, Some(v)));
                    } else {
                        batch.delete(&k);
                        staged.push((k, None));
                    }
                }
                db.write(batch, WriteOptions::with_durability(durability)).await.unwrap();
                for (k, v) in staged {
                    match v {
                        Some(v) => model.insert(k, v),
                        None => model.remove(&k),
                    };
                }
            }
            75..=94 => {
                let k = key(writer, rng.gen_range(0..key_space));
                let got = db.get(&k).await.unwrap();
                assert_eq!(
                    got.as_deref(),
                    model.get(&k).map(Vec::as_slice),
                    "writer {writer} read its own write of {k:?}"
                );
            }
            _ => {
                // A snapshot must not move while this writer keeps writing.
                let snapshot = db.snapshot();
                let k = key(writer, rng.gen_range(0..key_space));
                let before = model.get(&k).cloned();
                let mut batch = WriteBatch::new();
                batch.put(&k, b"after-snapshot");
                db.write(batch, WriteOptions::with_durability(durability)).await.unwrap();
                model.insert(k.clone(), b"after-snapshot".to_vec());
                assert_eq!(snapshot.get(&k).await.unwrap(), before.map(Into::into));
            }
        }
    }
}

async fn collect(
    stream: impl futures::Stream<Item = ringdb::Result<(bytes::Bytes, bytes::Bytes)>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    use futures::StreamExt;
    stream.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect().await
}

fn union(models: &[Model]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let all: Model = models.iter().flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone()))).collect();
    all.into_iter().collect()
}

/// Full, prefix and bounded scans against the models.
async fn check_scans(db: &Db, models: &[Model], context: &str) {
    assert_eq!(collect(db.scan::<&[u8]>(..)).await, union(models), "{context}: full scan");
    let mut backwards = union(models);
    backwards.reverse();
    assert_eq!(collect(db.scan_rev::<&[u8]>(..)).await, backwards, "{context}: full reverse scan");
    for (writer, model) in models.iter().enumerate() {
        let prefix = format!("w{writer}-");
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(collect(db.scan_prefix(&prefix)).await, want, "{context}: prefix scan of writer {writer}");
        let (from, to) = (key(writer as u64, 100), key(writer as u64, 200));
        let want: Vec<_> = model.range(from.clone()..to.clone()).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(collect(db.scan(from.clone()..to.clone())).await, want, "{context}: bounded scan");
        let mut backwards = want;
        backwards.reverse();
        assert_eq!(collect(db.scan_rev(from.clone()..to.clone())).await, backwards, "{context}: reverse bounded scan");
        let want: Vec<_> = model.range(from.clone()..=to.clone()).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(collect(db.scan(from.clone()..=to.clone())).await, want, "{context}: inclusive scan");
        let mut backwards = want;
        backwards.reverse();
        assert_eq!(collect(db.scan_rev(from..=to)).await, backwards, "{context}: reverse inclusive scan");
    }
}

async fn check_all(db: &Db, models: &[Model], context: &str) {
    check_scans(db, models, context).await;
    for (writer, model) in models.iter().enumerate() {
        for n in 0..400u32 {
            let k = key(writer as u64, n);
            let got = db.get(&k).await.unwrap();
            assert_eq!(
                got.as_deref(),
                model.get(&k).map(Vec::as_slice),
                "{context}: key {}",
                String::from_utf8_lossy(&k)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_a_btreemap_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("RINGDB_MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x00C0_FFEE);
    let mut models: Vec<Model> = vec![Model::new(); WRITERS as usize];
    for phase in 0..PHASES {
        let db = Db::open(dir.path(), options()).await.unwrap();
        check_all(&db, &models, &format!("after reopen {phase}")).await;
        // Held across the whole phase: its view must survive every compaction.
        let snapshot = db.snapshot();
        let at_snapshot = union(&models);
        let tasks: Vec<_> = models
            .drain(..)
            .enumerate()
            .map(|(writer, mut model)| {
                let db = db.clone();
                tokio::spawn(async move {
                    run_writer(db, writer as u64, seed ^ (phase << 32) ^ writer as u64, &mut model).await;
                    model
                })
            })
            .collect();
        for task in tasks {
            models.push(task.await.unwrap());
        }
        check_all(&db, &models, &format!("end of phase {phase}")).await;
        assert_eq!(
            collect(snapshot.scan::<&[u8]>(..)).await,
            at_snapshot,
            "phase {phase}: snapshot held across compactions"
        );
        drop(snapshot);
        let stats = db.stats();
        assert!(stats.flush.flushes > 0 && stats.tables() > 0, "phase {phase} flushed tables: {stats:?}");
        assert!(stats.compaction.compactions > 0, "phase {phase} compacted: {stats:?}");
        if db.io_stats().sqes_submitted > 0 {
            assert!(db.io_stats().reactor_ops > 0, "phase {phase}: reads went through the reactor");
        }
        if phase == 1 {
            // Everything in tables, nothing in memtables: reads come from tables alone.
            db.flush().await.unwrap();
            check_all(&db, &models, "after a full flush").await;
        }
        if phase % 2 == 0 {
            db.close().await.unwrap();
        } else {
            // Dropped without close: the last handle's drop writes what is
            // buffered and releases the directory.
            drop(db);
        }
    }
}
