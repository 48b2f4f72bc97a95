//! The driver: bounded in-flight work (backpressure), batched submission, and a
//! clean shutdown that drains in-flight work when the last handle goes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{io_with, pattern};
use futures::FutureExt;
use ringdb::io::{Backend, DirectFile, Io, IoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_operations_are_bounded_by_queue_depth() {
    let dir = tempfile::tempdir().unwrap();
    let io = io_with(IoOptions { queue_depth: 4, ..IoOptions::default() });
    let file = Arc::new(DirectFile::create(&io, dir.path().join("f")).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (io, stop) = (io.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max_seen = 0;
            while !stop.load(Ordering::Relaxed) {
                // submitted is read first, so the difference never overstates what is in flight.
                let submitted = io.stats().ops_submitted;
                let completed = io.stats().ops_completed;
                max_seen = max_seen.max(submitted.saturating_sub(completed));
            }
            max_seen
        })
    };
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let file = file.clone();
            tokio::spawn(async move {
                let mut buf = file.alloc_buf(4096);
                buf.extend_from_slice(&pattern(4096, i * 4096, 0));
                file.write_at(buf, i * 4096).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let max_seen = sampler.join().unwrap();
    assert!(max_seen <= 4, "{max_seen} ops in flight with queue_depth 4");
    assert_eq!(io.stats().ops_submitted, 201, "200 writes + the directory sync of create, none refused");
}

/// An io_uring `Io` with room for 256 ops in flight and at most
/// `max_sqes_per_enter` per enter, and a new file of it in `dir`.
fn ring_and_file(dir: &std::path::Path, max_sqes_per_enter: usize) -> (Io, DirectFile) {
    let options = IoOptions { backend: Backend::IoUring, queue_depth: 256, max_sqes_per_enter, ..IoOptions::default() };
    let io = io_with(options);
    let file = futures::executor::block_on(DirectFile::create(&io, dir.join("f"))).unwrap();
    (io, file)
}

/// (ops, submitting io_uring_enter calls) that `io` made while `burst` ran.
fn enters_during(io: &Io, burst: impl std::future::Future<Output = ()>) -> (u64, u64) {
    let before = io.stats();
    futures::executor::block_on(burst);
    let after = io.stats();
    (after.ops_submitted - before.ops_submitted, after.submitting_enters - before.submitting_enters)
}

/// Submits 256 writes at once and returns (ops, submitting io_uring_enter calls).
fn batch_of_writes(max_sqes_per_enter: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (io, file) = ring_and_file(dir.path(), max_sqes_per_enter);
    enters_during(&io, async {
        let writes = (0..256u64).map(|i| {
            let mut buf = file.alloc_buf(4096);
            buf.extend_from_slice(&pattern(4096, i, 0));
            file.write_at(buf, i * 4096)
        });
        for result in futures::future::join_all(writes).await {
            result.unwrap();
        }
    })
}

/// Reads 256 blocks at once, under a cap that would let one enter carry them
/// all, and returns (ops, submitting io_uring_enter calls).
fn batch_of_reads() -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (io, file) = ring_and_file(dir.path(), 256);
    let data = pattern(256 * 4096, 0, 3);
    let mut buf = file.alloc_buf(data.len());
    buf.extend_from_slice(&data);
    futures::executor::block_on(file.write_at(buf, 0)).unwrap();
    enters_during(&io, async {
        let reads = (0..256u64).map(|i| file.read_at(file.alloc_buf(4096), i * 4096, 4096));
        for (i, result) in futures::future::join_all(reads).await.into_iter().enumerate() {
            assert_eq!(&result.unwrap()[..], &data[i * 4096..(i + 1) * 4096]);
        }
    })
}

#[test]
fn small_reads_go_to_the_kernel_one_per_enter_where_writes_are_batched() {
    // The same burst as the write test below, which batches: reads of 4 KiB
    // are each dispatched by an enter of their own, however many are queued
    // and whatever the cap (`Op::dispatches_alone`).
    let (ops, enters) = batch_of_reads();
    assert_eq!(ops, 256);
    assert_eq!(enters, ops, "{enters} io_uring_enter calls for {ops} small reads");
}

#[test]
fn submissions_are_batched_into_few_kernel_entries() {
    // join_all polls all 256 futures before the ring thread runs much, so most
    // SQEs share an io_uring_enter; allow generous slack for scheduling.
    let (ops, enters) = batch_of_writes(256);
    assert_eq!(ops, 256);
    assert!(enters * 8 < ops, "{enters} io_uring_enter calls for {ops} ops: not batched");
    // The cap bounds each batch and still batches.
    let (ops, enters) = batch_of_writes(4);
    assert_eq!(ops, 256);
    assert!(enters * 4 >= ops, "{enters} enters for {ops} ops: more than 4 SQEs in one");
    assert!(enters * 2 < ops, "{enters} enters for {ops} ops: not batched under the cap");
}

#[test]
fn last_handle_drop_drains_in_flight_writes() {
    for backend in [Backend::IoUring, Backend::Posix] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let io = io_with(IoOptions { backend, queue_depth: 128, ..IoOptions::default() });
        let file = futures::executor::block_on(DirectFile::create(&io, &path)).unwrap();
        let mut dropped_in_flight = 0;
        for i in 0..100u64 {
            let mut buf = file.alloc_buf(4096);
            buf.extend_from_slice(&pattern(4096, i * 4096, 9));
            // One poll submits the write; then the future is dropped.
            if file.write_at(buf, i * 4096).now_or_never().is_none() {
                dropped_in_flight += 1;
            }
        }
        assert!(dropped_in_flight > 50, "{backend}: only {dropped_in_flight} writes were still in flight when dropped");
        drop(file);
        drop(io); // joins the backend after the 100 writes completed
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 100 * 4096, "{backend}: all dropped writes still landed");
        for i in 0..100usize {
            assert_eq!(&data[i * 4096..(i + 1) * 4096], &pattern(4096, i as u64 * 4096, 9)[..], "{backend} block {i}");
        }
    }
}

#[test]
fn handles_work_across_threads_and_outlive_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let io = common::io();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let io: Io = io.clone();
            let path = dir.path().join(format!("f{t}"));
            std::thread::spawn(move || {
                futures::executor::block_on(async {
                    let file = DirectFile::create(&io, &path).await.unwrap();
                    for i in 0..32u64 {
                        let mut buf = file.alloc_buf(8192);
                        buf.extend_from_slice(&pattern(8192, i, t));
                        file.write_at(buf, i * 8192).await.unwrap();
                    }
                    let back = file.read_exact_at(file.alloc_buf(8192), 31 * 8192, 8192).await.unwrap();
                    assert_eq!(&back[..], &pattern(8192, 31, t)[..]);
                })
            })
        })
        .collect();
    drop(io);
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Writes (plain, and linked to a sync), reads back and checks `count` blocks
/// from as many tasks, plus an fallocate and an fdatasync.
async fn write_read_blocks(file: Arc<DirectFile>, first: u64, count: u64) {
    file.allocate(first * 4096, count * 4096).await.unwrap();
    let tasks: Vec<_> = (first..first + count)
        .map(|i| {
            let file = file.clone();
            tokio::spawn(async move {
                let mut buf = file.alloc_buf(4096);
                buf.extend_from_slice(&pattern(4096, i * 4096, 3));
                let buf = if i % 2 == 0 {
                    file.write_at(buf, i * 4096).await.unwrap()
                } else {
                    file.write_at_and_sync(buf, i * 4096).await.unwrap()
                };
                let read = file.read_exact_at(buf, i * 4096, 4096).await.unwrap();
                assert_eq!(&read[..], pattern(4096, i * 4096, 3).as_slice(), "block {i}");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    file.sync_data().await.unwrap();
}

/// IoOptions::tokio_reactor: ops from a multi-thread runtime go through that
/// runtime's own ring; current-thread runtimes and plain threads keep the
/// ring thread; the reactor's reaper task ends when the Io goes.
#[test]
fn tokio_reactor_serves_multi_thread_runtimes_only() {
    let dir = tempfile::tempdir().unwrap();
    let io = io_with(IoOptions { tokio_reactor: true, ..IoOptions::default() });
    let uring = io.backend() == Backend::IoUring;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let file = Arc::new(runtime.block_on(DirectFile::create(&io, dir.path().join("f"))).unwrap());
    let tasks_before = runtime.metrics().num_alive_tasks();
    // One op at a time from a task: every one through the reactor.
    let one_task = runtime.spawn({
        let file = file.clone();
        async move {
            for i in 0..16u64 {
                let mut buf = file.alloc_buf(4096);
                buf.extend_from_slice(&pattern(4096, i * 4096, 1));
                let buf = file.write_at_and_sync(buf, i * 4096).await.unwrap();
                let read = file.read_exact_at(buf, i * 4096, 4096).await.unwrap();
                assert_eq!(&read[..], pattern(4096, i * 4096, 1).as_slice());
            }
        }
    });
    runtime.block_on(one_task).unwrap();
    let stats = io.stats();
    assert_eq!(stats.ops_submitted, stats.ops_completed);
    // The create's directory sync ran on the runtime's context too.
    assert_eq!(stats.reactor_ops, if uring { 33 } else { 0 }, "{stats:?}");
    // 64 tasks at once: a reactor holds a few ops in flight, the ring thread the rest.
    runtime.block_on(write_read_blocks(file.clone(), 0, 64));
    let concurrent = io.stats();
    assert_eq!(concurrent.ops_submitted, concurrent.ops_completed);
    let (reactor, all) = (concurrent.reactor_ops - stats.reactor_ops, concurrent.ops_submitted - stats.ops_submitted);
    if uring {
        assert!(reactor > 0 && reactor < all, "{reactor} of {all} ops through the reactor");
    } else {
        assert_eq!(reactor, 0, "the portable backend has no reactor");
    }
    let stats = concurrent;

    let current_thread = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    current_thread.block_on(write_read_blocks(file.clone(), 64, 16));
    futures::executor::block_on(async {
        let buf = file.read_exact_at(file.alloc_buf(4096), 0, 4096).await.unwrap();
        assert_eq!(&buf[..], pattern(4096, 0, 3).as_slice());
    });
    assert_eq!(io.stats().reactor_ops, stats.reactor_ops, "only the multi-thread runtime has a reactor");
    assert_eq!(io.stats().ops_submitted, io.stats().ops_completed);

    // The reaper (started by the create's directory sync) is a task of the
    // runtime until the last handle of the Io goes.
    let after_drop = tasks_before - usize::from(uring);
    assert_eq!(runtime.metrics().num_alive_tasks(), tasks_before);
    drop(file);
    drop(io);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while runtime.metrics().num_alive_tasks() > after_drop && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(runtime.metrics().num_alive_tasks(), after_drop, "the reaper ended");
}

/// A reactor with the smallest queue depth and ops of two SQEs (a write
/// linked to its sync) from many tasks at once: its SQ always has room, and
/// every op completes.
#[test]
fn tokio_reactor_at_queue_depth_two_with_linked_writes() {
    let dir = tempfile::tempdir().unwrap();
    let io = io_with(IoOptions { tokio_reactor: true, queue_depth: 2, ..IoOptions::default() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let file = Arc::new(runtime.block_on(DirectFile::create(&io, dir.path().join("f"))).unwrap());
    runtime.block_on(async {
        for round in 0..20u64 {
            write_read_blocks(file.clone(), round * 8, 8).await;
        }
    });
    let stats = io.stats();
    assert_eq!(stats.ops_submitted, stats.ops_completed);
    if io.backend() == Backend::IoUring {
        assert!(stats.reactor_ops > 0, "{stats:?}");
    }
}

/// IoOptions::tokio_reactor_max_in_flight: a reactor allowed a deep queue
/// keeps every op of a 64-deep burst (half of them writes linked to their
/// sync, two SQEs each) on the runtime's ring, which is sized for them; the
/// default spills most of such a burst to the ring thread.
#[test]
fn a_deep_tokio_reactor_keeps_every_op_on_the_runtimes_ring() {
    let burst = |max_in_flight: usize| {
        let dir = tempfile::tempdir().unwrap();
        let io = io_with(IoOptions {
            tokio_reactor: true,
            tokio_reactor_max_in_flight: max_in_flight,
            ..IoOptions::default()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let file = Arc::new(runtime.block_on(DirectFile::create(&io, dir.path().join("f"))).unwrap());
        let before = io.stats();
        runtime.block_on(async {
            for round in 0..4u64 {
                write_read_blocks(file.clone(), round * 64, 64).await;
            }
        });
        let stats = io.stats();
        assert_eq!(stats.ops_submitted, stats.ops_completed);
        (io.backend(), stats.reactor_ops - before.reactor_ops, stats.ops_submitted - before.ops_submitted)
    };
    let (backend, deep_reactor, deep_all) = burst(64);
    let (_, default_reactor, default_all) = burst(IoOptions::default().tokio_reactor_max_in_flight);
    if backend == Backend::IoUring {
        assert_eq!(deep_reactor, deep_all, "every op through the reactor");
        assert!(default_reactor < default_all / 2, "{default_reactor} of {default_all} ops through a default reactor");
    } else {
        assert_eq!(deep_reactor + default_reactor, 0, "the portable backend has no reactor");
    }
}

/// A thread remembers the reactor it submitted to last. Two `Io`s used from
/// the same runtime thread, and a runtime replaced by another on the same
/// thread, must each still get their own reactor.
#[test]
fn each_io_and_each_runtime_keep_their_own_reactor() {
    let dir = tempfile::tempdir().unwrap();
    let options = IoOptions { tokio_reactor: true, ..IoOptions::default() };
    let (first, second) = (io_with(options.clone()), io_with(options));
    let uring = first.backend() == Backend::IoUring;
    let read_one = |runtime: &tokio::runtime::Runtime, file: &Arc<DirectFile>| {
        runtime.block_on(async {
            let buf = file.read_exact_at(file.alloc_buf(4096), 0, 4096).await.unwrap();
            assert_eq!(&buf[..], pattern(4096, 0, 3).as_slice());
        })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let files: Vec<Arc<DirectFile>> = [&first, &second]
        .iter()
        .enumerate()
        .map(|(i, io)| {
            let file = Arc::new(runtime.block_on(DirectFile::create(io, dir.path().join(format!("f{i}")))).unwrap());
            runtime.block_on(write_read_blocks(file.clone(), 0, 1));
            file
        })
        .collect();
    for round in 0..4 {
        let before = (first.stats().reactor_ops, second.stats().reactor_ops);
        read_one(&runtime, &files[round % 2]);
        let after = (first.stats().reactor_ops, second.stats().reactor_ops);
        let expected = match (uring, round % 2) {
            (false, _) => before,
            (true, 0) => (before.0 + 1, before.1),
            (true, _) => (before.0, before.1 + 1),
        };
        assert_eq!(after, expected, "round {round}: the read went through its own Io's reactor");
    }
    // The same thread, a new runtime: the old one's reactor closed with it.
    drop(runtime);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let before = first.stats().reactor_ops;
    for _ in 0..3 {
        read_one(&runtime, &files[0]);
    }
    let stats = first.stats();
    assert_eq!(stats.reactor_ops - before, if uring { 3 } else { 0 }, "the new runtime's reactor: {stats:?}");
    assert_eq!(stats.ops_submitted, stats.ops_completed);
}

/// Options out of range are refused with an error that names them.
#[test]
fn io_options_out_of_range_are_refused() {
    let refused = |options: IoOptions| match Io::new(options) {
        Err(ringdb::Error::InvalidArgument(message)) => message,
        Err(e) => panic!("not an invalid argument: {e}"),
        Ok(_) => panic!("accepted"),
    };
    assert!(refused(IoOptions { queue_depth: 0, ..IoOptions::default() }).contains("queue_depth"));
    assert!(refused(IoOptions { queue_depth: 4097, ..IoOptions::default() }).contains("queue_depth"));
    for depth in [0, 4097] {
        let options = IoOptions { tokio_reactor_max_in_flight: depth, ..IoOptions::default() };
        assert!(refused(options).contains("tokio_reactor_max_in_flight"), "{depth}");
    }
    let options = IoOptions { tokio_reactor: true, tokio_reactor_max_in_flight: 4096, ..IoOptions::default() };
    assert!(Io::new(options).is_ok(), "the largest depth is accepted");
}

/// The reactor's reaper is woken by the kernel's eventfd signal of each
/// completion, without ever reading the counter back (edge-triggered): many
/// thousands of one-at-a-time reads, each waiting for that wake-up alone,
/// must all complete, and soon.
#[test]
fn tokio_reactor_wakes_its_reaper_for_every_completion() {
    let dir = tempfile::tempdir().unwrap();
    let io = io_with(IoOptions { tokio_reactor: true, ..IoOptions::default() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let file = Arc::new(runtime.block_on(DirectFile::create(&io, dir.path().join("f"))).unwrap());
    runtime.block_on(write_read_blocks(file.clone(), 0, 4));
    let before = io.stats();
    const READS: u64 = 5000;
    let reads = runtime.spawn({
        let file = file.clone();
        async move {
            for i in 0..READS {
                let block = i % 4;
                let buf = file.read_exact_at(file.alloc_buf(4096), block * 4096, 4096).await.unwrap();
                assert_eq!(&buf[..], pattern(4096, block * 4096, 3).as_slice());
            }
        }
    });
    // A lost wake-up would leave a read waiting forever: fail instead of hanging.
    let within = std::time::Duration::from_secs(120);
    runtime.block_on(async { tokio::time::timeout(within, reads).await }).expect("every read completes").unwrap();
    let stats = io.stats();
    assert_eq!(stats.ops_submitted, stats.ops_completed);
    if io.backend() == Backend::IoUring {
        assert_eq!(stats.reactor_ops - before.reactor_ops, READS, "{stats:?}");
    }
}

/// The ring thread busy-polls after activity so that a caller's next small op
/// needs no wake-up, but not while every op in flight is a bulk transfer: those
/// take a millisecond or so, and the spinning would take a CPU from the thread
/// that feeds them (a flush encoding its next buffer).
#[test]
fn the_ring_thread_does_not_poll_while_only_bulk_transfers_are_in_flight() {
    const ROUNDS: u64 = 20;
    const WRITES_PER_ROUND: u64 = 4;
    const BULK_BYTES: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let io = io_with(IoOptions { backend: Backend::IoUring, ring_poll_us: 100, ..IoOptions::default() });
    futures::executor::block_on(async {
        let file = DirectFile::create(&io, dir.path().join("f")).await.unwrap();
        let before = io.stats().poll_windows;
        for round in 0..ROUNDS {
            let writes = (0..WRITES_PER_ROUND).map(|i| {
                let offset = (round * WRITES_PER_ROUND + i) * BULK_BYTES as u64;
                let mut buf = file.alloc_buf(BULK_BYTES);
                buf.extend_from_slice(&pattern(BULK_BYTES, offset, 0));
                file.write_at(buf, offset)
            });
            for written in futures::future::join_all(writes).await {
                written.unwrap();
            }
        }
        // About one window per round: after its last completion, when nothing
        // is in flight (a little more when a round's writes reach the ring
        // thread in two batches). Polling behind bulk writes starts about
        // five per round.
        let bulk_windows = io.stats().poll_windows - before;
        assert!(bulk_windows <= 2 * ROUNDS, "{bulk_windows} poll windows in {ROUNDS} rounds of bulk writes");

        let before = io.stats().poll_windows;
        for round in 0..ROUNDS {
            let reads = (0..WRITES_PER_ROUND).map(|i| file.read_at(file.alloc_buf(4096), (round * 4 + i) * 4096, 4096));
            for read in futures::future::join_all(reads).await {
                read.unwrap();
            }
        }
        // Small reads keep the poll. How often a window opens depends on how
        // the completions and the ring thread's passes interleave (on a
        // loaded 2-vCPU machine, 9 in 20 rounds), so only its presence is checked.
        let small_windows = io.stats().poll_windows - before;
        assert!(small_windows >= 1, "no poll window in {ROUNDS} rounds of 4 KiB reads");
    });
}
