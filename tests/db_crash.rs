//! Crash tests: a child process writes and reports each acknowledgement on a
//! pipe; the parent kills it with SIGKILL at a random moment, reopens the
//! database and checks what survived. `RINGDB_CRASH_ROUNDS` sets the rounds per
//! durability mode (default 20).
//!
//! Four writer tasks each write their own keys `t{task}-{n}` in order, so for
//! each task the surviving keys must be a prefix `0..m`:
//! - synced and written: every acknowledged key survives (m >= acknowledged);
//! - buffered: what survives is a prefix; only the unflushed window may be lost.
//!
//! The `flushing` mode uses tiny memtables, levels and MANIFEST limit so that
//! the kill lands during table flushes, compactions, MANIFEST writes and
//! MANIFEST switches; its data accumulates over the rounds
//! (keys carry the round), and after every reopen all earlier rounds' keys are
//! checked again, and no orphan table, temporary file or old MANIFEST remains.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use ringdb::{Db, Durability, Options, WriteBatch, WriteOptions};

const CHILD_DIR: &str = "RINGDB_CRASH_CHILD_DIR";
const CHILD_MODE: &str = "RINGDB_CRASH_CHILD_MODE";
const CHILD_ROUND: &str = "RINGDB_CRASH_CHILD_ROUND";
const TASKS: usize = 4;

fn options(mode: &str) -> Options {
    if mode == "flushing" {
        return Options {
            wal_preallocate_bytes: 64 << 10,
            write_buffer_size_bytes: 32 << 10,
            max_immutable_memtables: 2,
            block_size_bytes: 1024,
            // A new MANIFEST every few edits: kills land during MANIFEST switches too.
            max_manifest_file_size_bytes: 32 << 10,
            // Tiny levels: compactions into levels 1 and 2 run all the time.
            compaction: ringdb::CompactionOptions {
                l0_compaction_trigger: 2,
                level1_target_bytes: 64 << 10,
                sst_target_size_bytes: 32 << 10,
                ..Default::default()
            },
            ..Options::default()
        };
    }
    Options {
        wal_preallocate_bytes: 1 << 20,
        write_buffer_size_bytes: 1 << 20,
        max_immutable_memtables: 1000,
        ..Options::default()
    }
}

fn key(round: usize, task: usize, n: u64) -> String {
    format!("r{round:03}-t{task}-{n:08}")
}

fn durability(name: &str) -> Durability {
    match name {
        "synced" => Durability::Synced,
        "written" | "flushing" => Durability::Written,
        _ => Durability::Buffered,
    }
}

/// The child: writes until killed, printing "task n" after each acknowledgement.
#[test]
fn crash_child_writer() {
    let (Some(dir), Ok(mode)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_MODE)) else { return };
    let round: usize = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let db = Db::open(&dir, options(&mode)).await.unwrap();
        let (acks, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
        for task in 0..TASKS {
            let (db, acks, mode) = (db.clone(), acks.clone(), mode.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let mut batch = WriteBatch::new();
                    batch.put(key(round, task, n), format!("value-{task}-{n}").repeat(3));
                    db.write(batch, WriteOptions::with_durability(durability(&mode))).await.unwrap();
                    acks.send((task, n)).unwrap();
                }
            });
        }
        drop(acks);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        while let Some((task, n)) = ack_rx.recv().await {
            writeln!(out, "{task} {n}").unwrap();
            out.flush().unwrap();
        }
    });
}

fn crash_rounds(mode: &str) {
    let rounds: usize = std::env::var("RINGDB_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0xC4A5 ^ mode.len() as u64);
    let accumulate = mode == "flushing";
    // Per round and task: how many keys survived (a prefix), checked again on every later open.
    let mut survived: Vec<[u64; TASKS]> = Vec::new();
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_MODE, mode)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(rng.gen_range(20..if accumulate { 600 } else { 300 }));
        let reader = std::thread::spawn(move || {
            let mut acked = [None::<u64>; TASKS];
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split(' ');
                let (Some(task), Some(n)) = (parts.next(), parts.next()) else { continue };
                let (Ok(task), Ok(n)) = (task.parse::<usize>(), n.parse::<u64>()) else { continue };
                acked[task] = Some(acked[task].map_or(n, |m: u64| m.max(n)));
            }
            acked
        });
        let start = Instant::now();
        while start.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SIGKILL: no destructor, no flush.
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        futures::executor::block_on(async {
            // The parent only reads: no compaction, so the files it checks stay put.
            let mut verify = options(mode);
            verify.compaction.disable_auto_compactions = true;
            let db = Db::open(dir.path(), verify)
                .await
                .unwrap_or_else(|e| panic!("{mode} round {round}: reopen failed: {e}"));
            let mut this_round = [0u64; TASKS];
            for (task, acked) in acked.iter().enumerate() {
                // Surviving keys form a prefix 0..m: find m.
                let mut m = 0u64;
                while db.get(key(round, task, m)).await.unwrap().is_some() {
                    m += 1;
                }
                this_round[task] = m;
                for later in m + 1..m + 50 {
                    assert!(
                        db.get(key(round, task, later)).await.unwrap().is_none(),
                        "{mode} round {round} task {task}: key {later} survived without key {m}: not a prefix"
                    );
                }
                if let Some(acked) = acked
                    && mode != "buffered"
                {
                    assert!(
                        m > *acked,
                        "{mode} round {round} task {task}: acknowledged {acked} but only 0..{m} survived"
                    );
                }
            }
            survived.push(this_round);
            if accumulate {
                for (earlier, counts) in survived.iter().enumerate() {
                    for (task, &m) in counts.iter().enumerate() {
                        for n in (0..m).step_by(7).chain(m.checked_sub(1)) {
                            assert!(
                                db.get(key(earlier, task, n)).await.unwrap().is_some(),
                                "round {round}: key {n} of round {earlier} task {task} was lost"
                            );
                        }
                    }
                }
                check_no_orphans(dir.path(), &db, round).await;
            }
            db.close().await.unwrap();
        });
        if !accumulate {
            // Start the next round from a clean slate of this mode's data.
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let _ = std::fs::remove_file(entry.unwrap().path());
            }
        }
    }
}

/// After an open and a full flush, the directory holds exactly the live files.
async fn check_no_orphans(dir: &std::path::Path, db: &Db, round: usize) {
    db.flush().await.unwrap();
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let count = |pred: &dyn Fn(&str) -> bool| names.iter().filter(|n| pred(n)).count();
    assert_eq!(count(&|n| n.starts_with("MANIFEST-")), 1, "round {round}: one MANIFEST: {names:?}");
    // The next log may be under construction right now (`NNNNNN.wal.tmp`, made
    // in the background after open), and the flush thread makes the next
    // table's file after each flush; any other temporary file is a leftover.
    let leftover = |n: &str| n.ends_with(".tmp") && !n.ends_with(".wal.tmp") && n != "flush-spare.sst.tmp";
    assert_eq!(count(&leftover), 0, "round {round}: no temporary files: {names:?}");
    assert_eq!(
        count(&|n| n.ends_with(".sst")),
        db.stats().tables(),
        "round {round}: every table file is live: {names:?}"
    );
    // The active log, the spare, and at most one flushed log kept for reuse.
    assert!(count(&|n| n.ends_with(".wal")) <= 3, "round {round}: flushed logs are gone: {names:?}");
}

#[test]
fn synced_writes_survive_sigkill() {
    crash_rounds("synced");
}

#[test]
fn written_writes_survive_sigkill() {
    crash_rounds("written");
}

#[test]
fn sigkill_during_flushes_and_compactions_loses_nothing_acknowledged_and_leaves_no_orphans() {
    crash_rounds("flushing");
}

#[test]
fn buffered_writes_lose_at_most_a_suffix_on_sigkill() {
    crash_rounds("buffered");
}
