//! Crash tests: a child process writes and reports each acknowledgement on a
//! pipe; the parent kills it with SIGKILL at a random moment, reopens the
//! database and checks what survived. `RINGDB_CRASH_ROUNDS` sets the rounds per
//! durability mode (default 20).
//!
//! Four writer tasks each write their own keys `t{task}-{n}` in order, so for
//! each task the surviving keys must be a prefix `0..m`:
//! - synced and written: every acknowledged key survives (m >= acknowledged);
//! - buffered: what survives is a prefix; only the unflushed window may be lost.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use ringdb::{Db, Durability, Options, WriteBatch, WriteOptions};

const CHILD_DIR: &str = "RINGDB_CRASH_CHILD_DIR";
const CHILD_MODE: &str = "RINGDB_CRASH_CHILD_MODE";
const TASKS: usize = 4;

fn options() -> Options {
    Options {
        wal_preallocate_bytes: 1 << 20,
        write_buffer_size_bytes: 1 << 20,
        max_immutable_memtables: 1000,
        ..Options::default()
    }
}

fn durability(name: &str) -> Durability {
    match name {
        "synced" => Durability::Synced,
        "written" => Durability::Written,
        _ => Durability::Buffered,
    }
}

/// The child: writes until killed, printing "task n" after each acknowledgement.
#[test]
fn crash_child_writer() {
    let (Some(dir), Ok(mode)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_MODE)) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let db = Db::open(&dir, options()).await.unwrap();
        let (acks, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
        for task in 0..TASKS {
            let (db, acks, mode) = (db.clone(), acks.clone(), mode.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let mut batch = WriteBatch::new();
                    batch.put(format!("t{task}-{n:08}"), format!("value-{task}-{n}").repeat(3));
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
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_MODE, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(rng.gen_range(20..300));
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
            let db = Db::open(dir.path(), options())
                .await
                .unwrap_or_else(|e| panic!("{mode} round {round}: reopen failed: {e}"));
            for (task, acked) in acked.iter().enumerate() {
                // Surviving keys form a prefix 0..m: find m.
                let mut m = 0u64;
                while db.get(format!("t{task}-{m:08}")).await.unwrap().is_some() {
                    m += 1;
                }
                for later in m + 1..m + 50 {
                    assert!(
                        db.get(format!("t{task}-{later:08}")).await.unwrap().is_none(),
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
            // Start the next round from a clean slate of this mode's data.
            db.close().await.unwrap();
        });
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let _ = std::fs::remove_file(entry.unwrap().path());
        }
    }
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
fn buffered_writes_lose_at_most_a_suffix_on_sigkill() {
    crash_rounds("buffered");
}
