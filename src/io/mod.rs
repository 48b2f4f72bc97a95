//! The I/O layer: the only module that touches file data.
//!
//! - [`Io`] is a handle to an I/O backend. The default backend is an io_uring
//!   instance owned by an engine thread (`ringdb-io-uring`); callers on any
//!   thread or runtime submit operations and await `Send` futures that need no
//!   particular executor. When io_uring is unavailable the handle falls back,
//!   with one `tracing::warn!`, to a portable pread/pwrite backend on engine
//!   threads with the same API and semantics.
//! - [`DirectFile`] is a file opened with O_DIRECT: aligned reads and writes
//!   (short transfers are continued), `fdatasync`, a write linked to a
//!   following `fdatasync` in one submission, `fallocate` and `set_len`.
//! - [`AlignedBuf`] and [`BufPool`] are the buffers O_DIRECT needs. A buffer
//!   handed to an operation belongs to the backend until the operation
//!   completes, even if the future that submitted it is dropped.
//! - [`FaultInjector`] makes chosen operations fail, for tests.
//!
//! `docs/io.md` explains the design and the reasons for it.

mod align;
mod buf;
mod fault;
mod file;
mod huge;
mod lock;
mod op;
mod permits;
mod posix;
#[cfg(feature = "tokio")]
mod reactor;
mod submit_now;
mod uring;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_channel::oneshot;

pub use align::{AlignmentSource, DEFAULT_ALIGNMENT, discover as discover_alignment};
pub use buf::{AlignedBuf, BufPool, MIN_ALIGNMENT};
pub use fault::{FaultAction, FaultInjector, FaultRule};
pub use file::DirectFile;
pub use lock::DirLock;
pub(crate) use submit_now::poll_once;

use crate::{Error, IoOp, Result};
use op::{Completion, FileHandle, IoStatsInner, Op, OpKind, Submission};

/// The environment variable that picks the backend when [`IoOptions::backend`] is [`Backend::Auto`]:
/// `auto`, `io_uring` (or `uring`) or `posix`. Tests use it to run the whole suite on either backend.
pub const BACKEND_ENV: &str = "RINGDB_IO_BACKEND";

/// Which I/O backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring if it can be set up, else the portable backend (with one warning).
    /// [`BACKEND_ENV`] overrides this choice.
    #[default]
    Auto,
    /// io_uring, or an error if it cannot be set up.
    IoUring,
    /// The portable backend: pread/pwrite/fdatasync on engine threads.
    Posix,
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(text: &str) -> Result<Backend> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Backend::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(Backend::IoUring),
            "posix" | "portable" => Ok(Backend::Posix),
            other => {
                Err(Error::InvalidArgument(format!("unknown I/O backend {other:?}: expected auto, io_uring or posix")))
            }
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Posix => "posix",
        })
    }
}

/// How to set up an [`Io`].
#[derive(Debug, Clone)]
pub struct IoOptions {
    /// The backend to use. Default: [`Backend::Auto`].
    pub backend: Backend,
    /// The most operations in flight at once; a further submission waits
    /// (asynchronously) for one to complete. Default: 256.
    pub queue_depth: u32,
    /// Worker threads of the portable backend. Default: 8.
    pub posix_threads: usize,
    /// How long the io_uring thread busy-polls for new submissions and
    /// completions after its last activity before it sleeps in the kernel, in
    /// microseconds. Polling saves two thread wake-ups per operation at low
    /// queue depth (the submit side's eventfd and the completion side's
    /// interrupt wake), at the price of CPU while I/O is in flight. 0 disables it.
    /// Where the ring thread may run on one CPU only (CPU affinity, cgroup
    /// quota), it polls only while at most one latency-bound operation is in
    /// flight: a deeper queue's spin would hold the CPU the callers need.
    /// Default: 100.
    pub ring_poll_us: u64,
    /// The most operation SQEs the ring thread hands the kernel in one
    /// `io_uring_enter`. Batching saves syscalls, but the kernel plugs a batch
    /// and dispatches it only when the whole batch is built, so a deep batch
    /// delays its first requests: on this project's virtio test machine,
    /// unbounded batches (13-15 SQEs at QD32) gave 0.67-0.71 of fio's 4 KiB
    /// random-read IOPS and batches of at most 1-8 gave 0.8-0.97. The cap
    /// applies to writes and to bulk reads (512 KiB and more), which the plug
    /// can merge; every smaller read goes to the kernel in an enter of its own,
    /// since scattered reads gain nothing from the plug: that took QD32 4 KiB
    /// reads from 64-66K to 73-77K IOPS there (`docs/io.md`). Default: 8.
    pub max_sqes_per_enter: usize,
    /// Operations submitted from a task of a multi-thread tokio runtime go
    /// through a ring of that runtime's own, whose completions wake the
    /// runtime's I/O driver directly (an eventfd the kernel signals) instead
    /// of through the ring thread: one thread wake-up fewer per operation.
    /// On this project's test VM that took 4 KiB QD1 reads under tokio from
    /// 0.72-0.80x to 0.84-0.91x of fio's IOPS (`docs/io.md`). A runtime's ring
    /// holds at most [`tokio_reactor_max_in_flight`](Self::tokio_reactor_max_in_flight)
    /// ops in flight (default 2); deeper queues spill over to the ring
    /// thread, which batches them better on small machines. Everything else
    /// (current-thread runtimes, plain threads, the engine's own threads)
    /// uses the ring thread.
    ///
    /// Off by default because tokio offers no way to ask whether a runtime
    /// has its I/O driver, and registering with one that has none panics.
    /// Turn it on when every multi-thread runtime that uses this `Io` is
    /// built with `enable_io` or `enable_all` (as `#[tokio::main]` is), and
    /// no task blocks all of the runtime's workers on a ringdb future (the
    /// completions are reaped by a task on that runtime). Needs the `tokio`
    /// feature (on by default); without it, `true` is an invalid argument.
    /// Default: false.
    pub tokio_reactor: bool,
    /// The most operations a runtime's ring holds in flight with
    /// [`tokio_reactor`](Self::tokio_reactor); further ones go to the ring
    /// thread. Raise it for a runtime with one worker whose tasks do little
    /// besides I/O: that is fio's shape (one thread submits, waits and
    /// reaps), and on this project's 2-vCPU test VM it took 4 KiB random
    /// reads at QD32 from 0.71-0.85 to 0.85-1.07 of fio's IOPS
    /// (`docs/io.md`, "A deep reactor for one worker"). Keep the default
    /// where the tasks also do CPU work per operation, or the runtime has
    /// more workers: 32 concurrent gets on one worker fell to 0.39-0.44 of
    /// fio's IOPS with every op on the reactor, and raw reads on two workers
    /// to 0.38-0.43, at twice the CPU per read: both workers submit to the
    /// runtime's one ring and wait for each other's `io_uring_enter`.
    /// 1..=4096. Default: 2.
    pub tokio_reactor_max_in_flight: usize,
    /// Faults to inject, for tests. Default: none.
    pub faults: Option<FaultInjector>,
}

/// The most ops a reactor holds in flight by default
/// ([`IoOptions::tokio_reactor_max_in_flight`]); further submissions go
/// to the ring thread. The reactor removes a thread wake-up from the path of
/// each op, which is what an op waits for at low depth. At high depth the
/// ring thread is better on a small machine: it batches submissions on a
/// thread of its own, while a reactor's submitting tasks and reaper make their
/// syscalls on the runtime's workers, beside the callers' own work. On this
/// project's 2-vCPU test VM, 32 concurrent gets (db_bench
/// readrandom_concurrent, 3 alternating rounds) reached 0.70-0.71 of fio's
/// QD32 IOPS with every op on the reactor, 0.73-0.76 on the ring thread
/// alone and 0.78-0.81 with at most 2 on the reactor.
pub(crate) const REACTOR_DEFAULT_MAX_IN_FLIGHT: usize = 2;

/// The largest `tokio_reactor_max_in_flight` accepted: a ring of twice as
/// many SQ entries stays well inside the kernel's limit (32768).
pub(crate) const REACTOR_MOST_MAX_IN_FLIGHT: usize = 4096;

impl Default for IoOptions {
    fn default() -> IoOptions {
        IoOptions {
            backend: Backend::Auto,
            queue_depth: 256,
            posix_threads: 8,
            ring_poll_us: 100,
            max_sqes_per_enter: 8,
            tokio_reactor: false,
            tokio_reactor_max_in_flight: REACTOR_DEFAULT_MAX_IN_FLIGHT,
            faults: None,
        }
    }
}

/// Counters of an [`Io`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Operations handed to the backend.
    pub ops_submitted: u64,
    /// Operations whose completion arrived.
    pub ops_completed: u64,
    /// `io_uring_enter` calls made by the ring thread, to submit or to wait (0 on the portable backend).
    pub kernel_enters: u64,
    /// Those `io_uring_enter` calls that submitted at least one SQE: `sqes_submitted / submitting_enters`
    /// is the submission batch size.
    pub submitting_enters: u64,
    /// SQEs of operations handed to the ring (a write linked to a sync counts two; retries count again).
    pub sqes_submitted: u64,
    /// Operations that went through a tokio runtime's own ring and completed
    /// through its reactor ([`IoOptions::tokio_reactor`]) rather than the ring thread.
    pub reactor_ops: u64,
    /// Times the ring thread busy-polled for work before going to sleep
    /// ([`IoOptions::ring_poll_us`]). It does not poll while every operation in
    /// flight is a bulk transfer (a read or plain write of 512 KiB or more).
    pub poll_windows: u64,
}

enum Driver {
    Uring(uring::UringDriver),
    Posix(posix::PosixDriver),
}

struct IoInner {
    driver: Driver,
    /// Per-runtime rings ([`IoOptions::tokio_reactor`]); only with io_uring.
    #[cfg(feature = "tokio")]
    reactors: Option<reactor::Reactors>,
    backend: Backend,
    queue_depth: u32,
    permits: Arc<permits::Permits>,
    faults: Option<FaultInjector>,
    stats: Arc<IoStatsInner>,
    /// Recycled buffers, a pool per (capacity, alignment), made on demand
    /// (see [`Io::buf_pool`]): compaction read-ahead, the table writers'
    /// stream buffers.
    sized_pools: std::sync::Mutex<Vec<BufPool>>,
}

/// Capacity of the buffers [`DirectFile::pooled_buf`] recycles: the
/// read-ahead chunk.
pub(crate) const LARGE_BUF_BYTES: usize = 1 << 20;

/// Alignment of recycled large buffers: a page, which covers the direct-I/O
/// alignment of every file seen so far (a file needing more gets new buffers).
const LARGE_BUF_ALIGN: usize = 4096;

/// Idle buffers a pool keeps for reuse (64 MiB at most of large ones): enough for the working
/// set of a compaction of some 30 inputs (two chunks each), whose second run
/// read 20-40% faster with all of it recycled than with 16 kept.
const LARGE_BUF_MAX_IDLE: usize = 64;

/// Idle buffers unused this long are freed (at the next return to their
/// pool), so the memory of a burst is not held for good.
const LARGE_BUF_IDLE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for IoInner {
    fn drop(&mut self) {
        #[cfg(feature = "tokio")]
        if let Some(reactors) = &self.reactors {
            reactors.shutdown();
        }
        match &mut self.driver {
            Driver::Uring(driver) => driver.shutdown(),
            Driver::Posix(driver) => driver.shutdown(),
        }
    }
}

/// A handle to an I/O backend. Cheap to clone; the backend drains its in-flight
/// work and joins its threads when the last handle (including those held by
/// open [`DirectFile`]s) is dropped.
#[derive(Clone)]
pub struct Io {
    inner: Arc<IoInner>,
}

static URING_FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl Io {
    /// Starts a backend.
    ///
    /// With [`Backend::Auto`] the [`BACKEND_ENV`] variable may force a choice;
    /// otherwise io_uring is tried and, if it cannot be set up, the portable
    /// backend is used after one `tracing::warn!`.
    pub fn new(options: IoOptions) -> Result<Io> {
        if options.queue_depth == 0 || options.queue_depth > 4096 {
            return Err(Error::InvalidArgument(format!(
                "queue_depth must be in 1..=4096, got {}",
                options.queue_depth
            )));
        }
        if !(1..=REACTOR_MOST_MAX_IN_FLIGHT).contains(&options.tokio_reactor_max_in_flight) {
            return Err(Error::InvalidArgument(format!(
                "tokio_reactor_max_in_flight must be in 1..={REACTOR_MOST_MAX_IN_FLIGHT}, got {}",
                options.tokio_reactor_max_in_flight
            )));
        }
        if options.tokio_reactor && !cfg!(feature = "tokio") {
            return Err(Error::InvalidArgument("tokio_reactor needs ringdb's `tokio` feature".into()));
        }
        let requested = match options.backend {
            Backend::Auto => match std::env::var(BACKEND_ENV) {
                Ok(value) => value.parse()?,
                Err(_) => Backend::Auto,
            },
            forced => forced,
        };
        let stats = Arc::new(IoStatsInner::default());
        let start_posix = || {
            posix::PosixDriver::start(options.posix_threads, Arc::clone(&stats)).map_err(|source| Error::Io {
                op: IoOp::Setup,
                path: PathBuf::from("posix worker threads"),
                offset: None,
                source,
            })
        };
        let setup_error = |source| Error::Io { op: IoOp::Setup, path: PathBuf::from("io_uring"), offset: None, source };
        let tuning = uring::RingTuning {
            poll: std::time::Duration::from_micros(options.ring_poll_us),
            max_sqes_per_enter: options.max_sqes_per_enter,
        };
        let (driver, backend) = match requested {
            Backend::Posix => (Driver::Posix(start_posix()?), Backend::Posix),
            Backend::IoUring | Backend::Auto => {
                let injected = options.faults.as_ref().and_then(|f| f.check(IoOp::Setup, Path::new("io_uring")));
                let ring = match injected {
                    Some(FaultAction::Error(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
                    _ => uring::UringDriver::start(options.queue_depth, tuning, Arc::clone(&stats)),
                };
                match ring {
                    Ok(driver) => (Driver::Uring(driver), Backend::IoUring),
                    Err(e) if requested == Backend::IoUring => return Err(setup_error(e)),
                    Err(e) => {
                        if !URING_FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                error = %e,
                                "io_uring is unavailable ({e}): using the portable pread/pwrite backend on {} \
                                 threads; expect lower throughput at high queue depth and more syscalls per I/O",
                                options.posix_threads.max(1)
                            );
                        }
                        (Driver::Posix(start_posix()?), Backend::Posix)
                    }
                }
            }
        };
        #[cfg(feature = "tokio")]
        let reactors = (options.tokio_reactor && backend == Backend::IoUring)
            .then(|| reactor::Reactors::new(Arc::clone(&stats), options.tokio_reactor_max_in_flight));
        Ok(Io {
            inner: Arc::new(IoInner {
                #[cfg(feature = "tokio")]
                reactors,
                driver,
                backend,
                queue_depth: options.queue_depth,
                permits: Arc::new(permits::Permits::new(options.queue_depth as usize)),
                faults: options.faults,
                stats,
                sized_pools: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// The backend actually in use (never [`Backend::Auto`]).
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The bound on operations in flight.
    pub fn queue_depth(&self) -> u32 {
        self.inner.queue_depth
    }

    /// Counters since the backend started.
    pub fn stats(&self) -> IoStats {
        let s = &self.inner.stats;
        IoStats {
            ops_submitted: s.ops_submitted.load(Ordering::Relaxed),
            ops_completed: s.ops_completed.load(Ordering::Relaxed),
            kernel_enters: s.kernel_enters.load(Ordering::Relaxed),
            submitting_enters: s.submitting_enters.load(Ordering::Relaxed),
            sqes_submitted: s.sqes_submitted.load(Ordering::Relaxed),
            reactor_ops: s.reactor_ops.load(Ordering::Relaxed),
            poll_windows: s.poll_windows.load(Ordering::Relaxed),
        }
    }

    /// The pool behind [`DirectFile::pooled_buf`].
    pub(crate) fn large_bufs(&self) -> BufPool {
        self.buf_pool(LARGE_BUF_BYTES, LARGE_BUF_ALIGN)
    }

    /// This backend's pool of `capacity_bytes` buffers aligned to `align`
    /// (made at first use, shared by every caller that asks for the same
    /// shape, dropped with the backend), which keeps up to
    /// [`LARGE_BUF_MAX_IDLE`] idle buffers for [`LARGE_BUF_IDLE_TTL`]. Callers
    /// on threads that come and go (a compaction's subranges) share them.
    pub(crate) fn buf_pool(&self, capacity_bytes: usize, align: usize) -> BufPool {
        let capacity_bytes = buf::round_up(capacity_bytes.max(align), align);
        let mut pools = self.inner.sized_pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.iter().find(|p| p.buf_capacity_bytes() == capacity_bytes && p.alignment() == align) {
            return pool.clone();
        }
        let pool = BufPool::with_idle_ttl(capacity_bytes, align, LARGE_BUF_MAX_IDLE, LARGE_BUF_IDLE_TTL);
        pools.push(pool.clone());
        pool
    }

    pub(crate) fn faults(&self) -> Option<&FaultInjector> {
        self.inner.faults.as_ref()
    }

    /// Hands an op to the backend and waits for it. Waits first for an
    /// in-flight slot, so a full queue is backpressure, not growth.
    pub(crate) async fn submit(&self, op: Op) -> Completion {
        let permit = loop {
            if let Some(permit) = self.inner.permits.try_acquire_arc() {
                break permit;
            }
            if !submit_now::polling_once() {
                break self.inner.permits.acquire_arc().await;
            }
            // Polled by `poll_once`: no place in line (see `submit_now`).
            submit_now::NextPoll::new().await;
        };
        let (done, completed) = oneshot::channel();
        self.inner.stats.ops_submitted.fetch_add(1, Ordering::Relaxed);
        let submission = Submission { op, done, permit };
        #[cfg(feature = "tokio")]
        let submission = match &self.inner.reactors {
            Some(reactors) => match reactors.submit(submission) {
                Ok(()) => return receive(completed).await,
                Err(declined) => declined,
            },
            None => submission,
        };
        match &self.inner.driver {
            Driver::Uring(driver) => driver.submit(submission),
            Driver::Posix(driver) => driver.submit(submission),
        }
        receive(completed).await
    }

    /// fsyncs a directory, so that entries created, renamed or removed in it are durable.
    pub async fn sync_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let file = std::fs::File::open(dir).map_err(|source| Error::Io {
            op: IoOp::Open,
            path: dir.to_path_buf(),
            offset: None,
            source,
        })?;
        let handle = Arc::new(FileHandle { file, path: dir.to_path_buf(), direct: false, align: MIN_ALIGNMENT });
        let completion = self.submit(Op { file: handle, kind: OpKind::Sync { data_only: false } }).await;
        completion.result.map(|_| ()).map_err(|source| Error::Io {
            op: IoOp::Sync,
            path: dir.to_path_buf(),
            offset: None,
            source,
        })
    }

    /// Renames `from` to `to` and fsyncs the directories involved, so the rename is durable.
    pub async fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        std::fs::rename(from, to).map_err(|source| Error::Io {
            op: IoOp::Rename,
            path: from.to_path_buf(),
            offset: None,
            source,
        })?;
        let to_dir = parent_dir(to);
        self.sync_dir(&to_dir).await?;
        let from_dir = parent_dir(from);
        if from_dir != to_dir {
            self.sync_dir(&from_dir).await?;
        }
        Ok(())
    }

    /// Removes a file and fsyncs its directory.
    pub async fn remove_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::remove_file(path).map_err(|source| Error::Io {
            op: IoOp::Remove,
            path: path.to_path_buf(),
            offset: None,
            source,
        })?;
        self.sync_dir(parent_dir(path)).await
    }
}

async fn receive(completed: oneshot::Receiver<Completion>) -> Completion {
    match completed.await {
        Ok(completion) => completion,
        // Only if a backend thread died on a broken invariant; the ring
        // thread then leaks in-flight buffers rather than free them early.
        Err(_canceled) => Completion {
            result: Err(std::io::Error::other("the I/O backend stopped before completing the operation")),
            sync_result: None,
            buf: None,
        },
    }
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("backend", &self.inner.backend)
            .field("queue_depth", &self.inner.queue_depth)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

thread_local! {
    static ENGINE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of the engine's own: a backend's (the
/// ring thread, a posix worker) or a database's (log writer, flush,
/// compaction, timer). They complete operations and requests, and so wake,
/// and may be the last to hold, the tasks waiting for them.
pub(crate) fn mark_engine_thread() {
    ENGINE_THREAD.with(|flag| flag.set(true));
}

/// Whether the calling thread is one of the engine's own
/// ([`mark_engine_thread`]). Whatever a waker owned may be dropped there (an
/// executor's task that nobody else holds), so a drop that waits for the
/// engine must not wait on such a thread: what it waits for may need this
/// very thread (its I/O, or its own exit).
pub(crate) fn on_engine_thread() -> bool {
    ENGINE_THREAD.with(std::cell::Cell::get)
}

/// Asks the kernel to give the calling thread short time slices, so that it
/// runs soon after it wakes even when CPU-bound threads hold every CPU:
/// for the threads on the I/O path (the ring thread, the posix backend's
/// workers, the flush thread), which run briefly each time a completion or a
/// submission arrives.
///
/// Linux's EEVDF scheduler (6.12 and later) takes `sched_runtime` of a
/// normal thread as its slice request, and a woken thread with a shorter
/// slice preempts the running one; otherwise the running thread keeps the CPU
/// for its whole slice (about 3 ms), and the device sits idle behind an I/O
/// thread waiting for a CPU. Older kernels ignore the request. Best effort:
/// false if the kernel refused it.
pub(crate) fn request_short_slices() -> bool {
    /// 0.1 ms, the shortest slice the kernel grants.
    const SLICE_NS: u64 = 100_000;
    // SAFETY: getpriority takes plain integers and touches no memory of ours.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        // Keep this thread's nice value (sched_setattr sets it too).
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid, fully initialised sched_attr that outlives
    // the call, and the kernel only reads `attr.size` bytes of it.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not request short time slices for an I/O thread");
    }
    result == 0
}

#[cfg(test)]
mod tests {
    /// The calling thread's scheduler slice in ns, where the kernel reports it.
    fn slice_ns() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|line| line.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    #[test]
    fn io_threads_get_short_slices_where_the_kernel_grants_them() {
        std::thread::spawn(|| {
            let before = slice_ns();
            if !super::request_short_slices() {
                eprintln!("skipped: sched_setattr refused here");
                return;
            }
            match (before, slice_ns()) {
                (Some(before), Some(after)) => {
                    assert!(after <= 100_000 && after < before, "slice {before} ns -> {after} ns");
                }
                _ => eprintln!("skipped: this kernel does not report se.slice"),
            }
        })
        .join()
        .unwrap();
    }
}
