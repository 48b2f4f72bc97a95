//! The kernel owns a buffer from submission to completion: dropping futures mid-flight
//! must neither free a buffer early (which would corrupt memory or what lands on disk)
//! nor leak it. A counting allocator tracks every aligned allocation (align >= 512 is
//! only ever an `AlignedBuf`), so after the backend shuts down none may remain.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use common::{io_with, pattern};
use futures::future::BoxFuture;
use rand::{Rng, SeedableRng, rngs::StdRng};
use ringdb::io::{BufPool, DirectFile, FaultAction, FaultInjector, FaultRule, IoOptions};

struct Counting;

static LIVE_ALIGNED: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() >= 512 {
            LIVE_ALIGNED.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() >= 512 {
            LIVE_ALIGNED.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() >= 512 {
            LIVE_ALIGNED.fetch_sub(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BLOCK: usize = 4096;
const SLOTS: u64 = 256;

/// A block on disk is either never written (zeroes) or one complete pattern of its offset.
fn check_block(data: &[u8], offset: u64, tags: u64) -> bool {
    data.iter().all(|&b| b == 0) || (0..tags).any(|tag| data == pattern(BLOCK, offset, tag).as_slice())
}

/// Polls a future a few times with a no-op waker, then reports whether it finished.
fn poll_some(fut: &mut BoxFuture<'_, ()>, polls: usize) -> bool {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..polls {
        if let Poll::Ready(()) = Pin::new(&mut *fut).poll(&mut cx) {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

fn iterations() -> usize {
    std::env::var("RINGDB_OWNERSHIP_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

/// The bound on ops in flight of the `Io`s [`drop_futures_at_random`] builds.
const QUEUE_DEPTH: u32 = 64;

/// Submits thousands of reads and writes, polls each a random number of
/// times and drops it, then checks what landed on disk. Returns the Io (whose
/// drop drains what is still in flight) and how many ops finished.
fn drop_futures_at_random(dir: &std::path::Path, options: IoOptions) -> (ringdb::io::Io, usize) {
    let faults = FaultInjector::new();
    // Some submissions fail before reaching the kernel: their buffers must come back too.
    faults.add(FaultRule::new(FaultAction::Error(libc::EIO)).skip(500).times(50));
    let io = io_with(IoOptions { queue_depth: QUEUE_DEPTH, faults: Some(faults.clone()), ..options });
    let path = dir.join("blocks");
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut dropped = 0usize;
    let mut finished = 0usize;
    let tags = 8u64;
    futures::executor::block_on(async {
        let file = DirectFile::create(&io, &path).await.unwrap();
        let pool = BufPool::new(BLOCK, file.alignment(), 32);
        for _ in 0..iterations() {
            let mut futs: Vec<BoxFuture<'_, ()>> = Vec::new();
            for _ in 0..128 {
                let slot = rng.gen_range(0..SLOTS);
                let offset = slot * BLOCK as u64;
                let tag = rng.gen_range(0..tags);
                let file = &file;
                let pool = &pool;
                if rng.gen_bool(0.5) {
                    let mut buf = pool.get();
                    buf.extend_from_slice(&pattern(BLOCK, offset, tag));
                    futs.push(Box::pin(async move {
                        let _ = file.write_at(buf, offset).await;
                    }));
                } else {
                    futs.push(Box::pin(async move {
                        if let Ok(buf) = file.read_at(pool.get(), offset, BLOCK).await {
                            // Whatever was read must be a whole block as some writer wrote it.
                            assert!(check_block(&buf[..], offset, tags) || buf.is_empty(), "torn block at {offset}");
                        }
                    }));
                }
            }
            // Poll each a random number of times (0 = never submitted), then drop it.
            for mut fut in futs {
                if poll_some(&mut fut, rng.gen_range(0..4)) {
                    finished += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        // Every block on disk is zero or a complete, correct pattern.
        file.sync_data().await.unwrap();
        assert!(faults.fired() > 0, "injected submit failures were exercised");
        faults.clear();
        for slot in 0..SLOTS {
            let offset = slot * BLOCK as u64;
            let buf = file.read_at(file.alloc_buf(BLOCK), offset, BLOCK).await.unwrap();
            if !buf.is_empty() {
                assert!(check_block(&buf[..], offset, tags), "block at {offset} is corrupt");
            }
        }
    });
    assert!(dropped > 1000, "the test must drop thousands of futures, dropped {dropped}");
    assert!(finished > 0);
    // Every future is gone, so no more submissions: this count is final.
    let submitted = io.stats().ops_submitted as usize;
    assert!(submitted > finished + 500, "many futures were dropped while their op was in flight");
    (io, finished)
}

/// The allocation count is process-wide: the tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn dropping_in_flight_futures_neither_corrupts_nor_leaks() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let baseline = LIVE_ALIGNED.load(Ordering::SeqCst);
    let (io, _) = drop_futures_at_random(dir.path(), IoOptions::default());
    drop(io); // drains in-flight ops and joins the backend threads
    assert_eq!(LIVE_ALIGNED.load(Ordering::SeqCst), baseline, "aligned buffers leaked or double-freed");
}

/// The same through a tokio runtime's own ring: the futures are polled on a
/// thread inside the runtime's context, the reaper runs on its workers. The
/// runtime shuts down while dropped futures' ops may still be in flight; its
/// reaper must wait for them before any buffer is freed.
#[test]
fn dropping_in_flight_futures_on_a_tokio_reactor_neither_corrupts_nor_leaks() {
    drop_futures_on_a_tokio_reactor(IoOptions::default().tokio_reactor_max_in_flight);
}

/// The same with a reactor that keeps the whole queue (all 64 ops) on the
/// runtime's ring: many more ops are in flight there when they are dropped.
#[test]
fn dropping_in_flight_futures_on_a_deep_tokio_reactor_neither_corrupts_nor_leaks() {
    drop_futures_on_a_tokio_reactor(QUEUE_DEPTH as usize);
}

fn drop_futures_on_a_tokio_reactor(max_in_flight: usize) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let baseline = LIVE_ALIGNED.load(Ordering::SeqCst);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let context = runtime.enter();
    let options = IoOptions { tokio_reactor: true, tokio_reactor_max_in_flight: max_in_flight, ..IoOptions::default() };
    let (io, finished) = drop_futures_at_random(dir.path(), options);
    let stats = io.stats();
    if io.backend() == ringdb::io::Backend::IoUring {
        assert!(finished > 0);
        if max_in_flight >= QUEUE_DEPTH as usize {
            assert_eq!(stats.reactor_ops, stats.ops_submitted, "every op through the reactor: {stats:?}");
        } else {
            // A reactor holds a few ops in flight and passes the rest to the ring thread.
            assert!(stats.reactor_ops > 100, "ops went through the reactor: {stats:?}");
            assert!(stats.reactor_ops < stats.ops_submitted, "and through the ring thread: {stats:?}");
        }
    } else {
        assert_eq!(stats.reactor_ops, 0, "the portable backend has no reactor");
    }
    drop(context);
    drop(runtime); // drops the reaper, which drains its ring
    drop(io);
    assert_eq!(LIVE_ALIGNED.load(Ordering::SeqCst), baseline, "aligned buffers leaked or double-freed");
}

/// Writes of [`IN_FLIGHT_BLOCK`] bytes, each with its fdatasync, each polled once (so submitted to the
/// runtime's reactor) and dropped at once: they are still in flight when the
/// function returns (checked, on io_uring: every write went through the
/// reactor, and not all had completed). Returns the Io and the runtime.
const IN_FLIGHT_WRITES: u64 = 64;
/// Below the huge-page size, so the counting allocator sees the buffers.
const IN_FLIGHT_BLOCK: usize = 128 << 10;

fn writes_left_in_flight_on_a_reactor(path: &std::path::Path) -> (ringdb::io::Io, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let reactor_ops_before;
    let io = {
        let _context = runtime.enter();
        let options = IoOptions {
            tokio_reactor: true,
            tokio_reactor_max_in_flight: IN_FLIGHT_WRITES as usize,
            ..IoOptions::default()
        };
        let io = io_with(options);
        let file = futures::executor::block_on(DirectFile::create(&io, path)).unwrap();
        reactor_ops_before = io.stats().reactor_ops;
        for block in 0..IN_FLIGHT_WRITES {
            let offset = block * IN_FLIGHT_BLOCK as u64;
            let mut buf = file.alloc_buf(IN_FLIGHT_BLOCK);
            buf.extend_from_slice(&pattern(IN_FLIGHT_BLOCK, offset, 1));
            let file = &file;
            // Each linked to an fdatasync: those run one at a time in the
            // filesystem, so most of the 64 are surely still in flight.
            let mut write: BoxFuture<'_, ()> = Box::pin(async move {
                let _ = file.write_at_and_sync(buf, offset).await;
            });
            // Polled once from inside the runtime's context: submitted, then dropped.
            poll_some(&mut write, 1);
        }
        io
    };
    let stats = io.stats();
    if io.backend() == ringdb::io::Backend::IoUring {
        assert_eq!(stats.reactor_ops - reactor_ops_before, IN_FLIGHT_WRITES, "every write went through the reactor");
        assert!(stats.ops_submitted > stats.ops_completed, "writes are still in flight: {stats:?}");
    }
    (io, runtime)
}

/// Every block the writes above wrote holds its pattern (read through a new backend).
fn assert_written(path: &std::path::Path) {
    let io = io_with(IoOptions::default());
    futures::executor::block_on(async {
        let file = DirectFile::open(&io, path).await.unwrap();
        for block in 0..IN_FLIGHT_WRITES {
            let offset = block * IN_FLIGHT_BLOCK as u64;
            let buf = file.read_at(file.alloc_buf(IN_FLIGHT_BLOCK), offset, IN_FLIGHT_BLOCK).await.unwrap();
            assert!(buf[..] == pattern(IN_FLIGHT_BLOCK, offset, 1)[..], "block {block} did not land whole");
        }
    });
}

/// A runtime shut down while its reactor has writes in flight: the reaper's
/// drain waits for each before its buffer goes, and completes it.
#[test]
fn a_runtime_shut_down_with_writes_in_flight_on_its_reactor_drains_them_first() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in-flight");
    let baseline = LIVE_ALIGNED.load(Ordering::SeqCst);
    let (io, runtime) = writes_left_in_flight_on_a_reactor(&path);
    drop(runtime);
    // The portable backend's writes are not the runtime's: its workers run on.
    if io.backend() == ringdb::io::Backend::IoUring {
        let stats = io.stats();
        assert_eq!(stats.ops_completed, stats.ops_submitted, "the drain completed every write: {stats:?}");
        assert_eq!(LIVE_ALIGNED.load(Ordering::SeqCst), baseline, "every buffer was freed, once");
    }
    drop(io);
    assert_eq!(LIVE_ALIGNED.load(Ordering::SeqCst), baseline, "every buffer was freed, once");
    assert_written(&path);
}

/// The last `Io` handle dropped while its runtime lives on and its reactor
/// has writes in flight: the drop waits for them, as it waits for the ring
/// thread's, so their buffers are gone and their bytes on disk when it returns.
#[test]
fn dropping_the_last_io_waits_for_the_writes_in_flight_on_its_reactors() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in-flight");
    let baseline = LIVE_ALIGNED.load(Ordering::SeqCst);
    let (io, runtime) = writes_left_in_flight_on_a_reactor(&path);
    drop(io);
    assert_eq!(LIVE_ALIGNED.load(Ordering::SeqCst), baseline, "the drop waited for every write's buffer");
    assert_written(&path);
    drop(runtime);
}
