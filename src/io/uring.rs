//! The io_uring backend: one engine thread owns the ring.
//!
//! Callers push [`Submission`]s onto a mutex-protected queue. The ring thread
//! moves everything queued into the submission queue and submits it with one
//! `io_uring_enter`, reaps completions, and sleeps in `io_uring_enter` when it
//! has nothing else to do. A read of an eventfd is always armed in the ring, so
//! a caller that finds the thread asleep wakes it with one 8-byte eventfd
//! write; callers that find it awake pay no syscall at all.
//!
//! Ownership: in-flight ops live in a slab owned by this thread, keyed by the
//! SQE's user_data, until their last CQE arrives. Nothing else can free them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;

use super::op::{IoStatsInner, Op, OpKind, Submission};

/// user_data of the eventfd read; op [`token`]s are `slot << 1 | part`, far below it.
const WAKE_TOKEN: u64 = u64::MAX;
/// How often an op is resubmitted after EAGAIN/EINTR before the error is returned.
const MAX_RETRIES: u32 = 64;

struct Queue {
    pending: VecDeque<Submission>,
    /// The ring thread is (about to be) blocked in io_uring_enter and needs an eventfd write.
    sleeping: bool,
    shutdown: bool,
    /// The ring thread died (a panic on an invariant): submissions fail at once.
    dead: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Mirrors `!queue.pending.is_empty()` (written under the lock) so the
    /// polling ring thread can look without taking the lock.
    has_pending: AtomicBool,
    eventfd: OwnedFd,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let rc = unsafe { libc::write(self.eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
        // The eventfd blocks (no EFD_NONBLOCK), so a saturated counter would
        // block this write rather than fail; it cannot saturate, as the ring
        // thread's armed read drains it after every wake. Any failure is a bug.
        debug_assert!(rc == 8, "eventfd write: {}", io::Error::last_os_error());
    }
}

/// Knobs of the ring thread, from `IoOptions`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingTuning {
    pub(crate) poll: Duration,
    pub(crate) max_sqes_per_enter: usize,
}

/// Handle to the ring thread.
pub(crate) struct UringDriver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl UringDriver {
    /// Starts the ring thread; fails if io_uring cannot be set up here.
    pub(crate) fn start(queue_depth: u32, tuning: RingTuning, stats: Arc<IoStatsInner>) -> io::Result<UringDriver> {
        // SAFETY: eventfd takes no pointers; the returned fd is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { pending: VecDeque::new(), sleeping: false, shutdown: false, dead: false }),
            has_pending: AtomicBool::new(false),
            eventfd,
        });
        // Each op needs at most two SQEs (write + linked fsync), plus the eventfd read.
        let entries = (queue_depth * 2 + 2).next_power_of_two();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("ringdb-io-uring".into()).spawn(move || {
            super::mark_engine_thread();
            // The ring is built on the thread that submits to it (SINGLE_ISSUER).
            match build_ring(entries) {
                Ok(ring) => {
                    let _ = ready_tx.send(Ok(()));
                    RingThread::new(ring, thread_shared, stats, tuning).run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(UringDriver { shared, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("io_uring thread died during setup"))
            }
        }
    }

    pub(crate) fn submit(&self, submission: Submission) {
        let wake = {
            let mut queue = self.shared.lock();
            if queue.dead {
                // Dropping the submission fails its future; nothing reached the kernel.
                return;
            }
            queue.pending.push_back(submission);
            self.shared.has_pending.store(true, Ordering::Release);
            std::mem::take(&mut queue.sleeping)
        };
        if wake {
            self.shared.wake();
        }
    }

    /// Drains queued and in-flight work, then joins the thread.
    pub(crate) fn shutdown(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    // SINGLE_ISSUER (6.0) lets the kernel skip cross-thread synchronisation;
    // COOP_TASKRUN with TASKRUN_FLAG (5.19) replaces the IPI that would interrupt
    // the polling thread with a flag it checks. Older kernels reject what they
    // do not know with EINVAL, so step down one feature at a time.
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer().setup_coop_taskrun().setup_taskrun_flag();
        },
        |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        },
        |_| {},
    ];
    let mut last = None;
    for configure in attempts {
        let mut builder = IoUring::builder();
        configure(&mut builder);
        match builder.build(entries) {
            Ok(ring) => return check_opcodes(ring),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

/// The opcodes the engine submits, with their names.
const NEEDED_OPCODES: [(u8, &str); 4] = [
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::Fallocate::CODE, "FALLOCATE"),
];

/// `ring`, if its kernel supports every opcode the engine submits. Kernels
/// 5.1 to 5.5 set up a ring but fail READ, WRITE and FALLOCATE with EINVAL,
/// which the file layer would take for a filesystem refusing O_DIRECT; the
/// error makes the caller use the portable backend instead. (Probing needs
/// 5.6 itself, so a failed probe means the same.)
fn check_opcodes(ring: IoUring) -> io::Result<IoUring> {
    let mut probe = io_uring::Probe::new();
    let unsupported =
        |what: String| io::Error::new(io::ErrorKind::Unsupported, format!("{what}: io_uring needs Linux 5.6 or later"));
    ring.submitter().register_probe(&mut probe).map_err(|e| unsupported(format!("probing opcodes failed ({e})")))?;
    match missing_opcode(&probe) {
        Some(name) => Err(unsupported(format!("the kernel lacks IORING_OP_{name}"))),
        None => Ok(ring),
    }
}

/// The first opcode the engine needs that `probe` does not list.
fn missing_opcode(probe: &io_uring::Probe) -> Option<&'static str> {
    NEEDED_OPCODES.iter().find(|(code, _)| !probe.is_supported(*code)).map(|(_, name)| *name)
}

/// An op between its submission to the kernel and its last CQE.
pub(super) struct InFlight {
    submission: Submission,
    parts_left: u8,
    results: [i32; 2],
    retries: u32,
    /// The kernel consumed the write of a linked pair but not its sync (see
    /// [`Unconsumed`]): the sync's result says nothing about the write.
    link_split: bool,
}

/// The user_data of SQEs pushed to a ring and not yet consumed by the kernel,
/// oldest first. The kernel may stop consuming in the middle of a batch (it
/// could not allocate a request). Stopped between a write and its linked
/// sync, it runs the write as the end of a chain, and the next enter submits
/// the sync unlinked, free to run before the write is done: a reported
/// success would then claim durability nobody has. Tracking what each enter
/// consumed spots the split, and the op is resubmitted whole.
#[derive(Default)]
pub(super) struct Unconsumed(VecDeque<u64>);

impl Unconsumed {
    /// Notes an SQE pushed with `user_data`.
    pub(super) fn pushed(&mut self, user_data: u64) {
        self.0.push_back(user_data);
    }

    /// After an enter that left `queued` SQEs in the SQ: forgets the consumed
    /// ones and returns the slot of an op whose write was consumed without
    /// its linked sync, if the enter stopped between them.
    pub(super) fn after_enter(&mut self, queued: usize) -> Option<usize> {
        let consumed = self.0.len().saturating_sub(queued);
        let last = self.0.drain(..consumed).next_back()?;
        let next = *self.0.front()?;
        if last == WAKE_TOKEN || next == WAKE_TOKEN {
            return None;
        }
        let ((slot, part), (next_slot, next_part)) = (slot_and_part(last), slot_and_part(next));
        (part == 0 && next_part == 1 && slot == next_slot).then_some(slot)
    }
}

/// The user_data of part `part` (0, or 1 for a linked sync) of the op in `slot`.
pub(super) fn token(slot: usize, part: u64) -> u64 {
    (slot as u64) << 1 | part
}

/// The slot and part a CQE's user_data names (the inverse of [`token`]).
pub(super) fn slot_and_part(user_data: u64) -> (usize, usize) {
    ((user_data >> 1) as usize, (user_data & 1) as usize)
}

/// What a CQE means for its op.
pub(super) enum CqeOutcome {
    /// The op's other SQE has not completed yet.
    Waiting,
    /// Interrupted or out of kernel resources: push its SQEs again.
    Retry,
    /// Done: [`InFlight::finish`] delivers it.
    Finished,
}

impl InFlight {
    /// Gives up on an op whose CQEs may never come (a broken invariant):
    /// its buffer and file are leaked, never freed under the kernel, while
    /// its caller gets an error (the reply channel closes) and its queue slot
    /// comes back.
    pub(super) fn leak(self) {
        let Submission { op, done, permit } = self.submission;
        std::mem::forget(op);
        drop(done);
        drop(permit);
    }

    pub(super) fn new(submission: Submission) -> InFlight {
        InFlight { submission, parts_left: 0, results: [0; 2], retries: 0, link_split: false }
    }

    /// See [`Unconsumed`]: the op's write went out without its linked sync.
    pub(super) fn mark_link_split(&mut self) {
        self.link_split = true;
    }

    /// The SQEs to push for this op, in `slot` (again, on a retry), tagged
    /// with its [`token`]s; counts them as outstanding.
    pub(super) fn entries(&mut self, slot: usize) -> [Option<squeue::Entry>; 2] {
        let entries = op_entries(&mut self.submission.op, slot);
        self.parts_left = entries.iter().flatten().count() as u8;
        // A linked write sent without its sync (cut at the SQE cap) reports
        // the sync cancelled, as after a short write.
        let linked = matches!(self.submission.op.kind, OpKind::Write { sync_after: true, .. });
        self.results = [0, if linked && entries[1].is_none() { -libc::ECANCELED } else { 0 }];
        self.link_split = false;
        entries
    }

    /// Records the result of SQE `part`.
    pub(super) fn record(&mut self, part: usize, result: i32) -> CqeOutcome {
        self.results[part] = result;
        self.parts_left -= 1;
        if self.parts_left > 0 {
            return CqeOutcome::Waiting;
        }
        let retry = self.link_split || self.results.iter().any(|r| *r == -libc::EAGAIN || *r == -libc::EINTR);
        if retry && self.retries < MAX_RETRIES {
            self.retries += 1;
            self.link_split = false;
            return CqeOutcome::Retry;
        }
        if self.link_split {
            // Never report a sync that may have run before its write as done.
            self.results[1] = -libc::EIO;
        }
        CqeOutcome::Finished
    }

    /// See [`Op::is_bulk`].
    pub(super) fn is_bulk(&self) -> bool {
        self.submission.op.is_bulk()
    }

    /// See [`Op::dispatches_alone`].
    pub(super) fn dispatches_alone(&self) -> bool {
        self.submission.op.dispatches_alone()
    }

    /// Hands the results and the buffer back to the caller.
    pub(super) fn finish(self, stats: &IoStatsInner) {
        let linked = matches!(self.submission.op.kind, OpKind::Write { sync_after: true, .. });
        let result = to_result(self.results[0]);
        let sync_result = linked.then(|| to_result(self.results[1]).map(|_| ()));
        self.submission.finish(result, sync_result, stats);
    }
}

/// The most bytes one read or write SQE moves: an SQE's length is 32 bits,
/// and the kernel moves at most 2 GiB - 4 KiB per call anyway. A power of two,
/// so a larger transfer's first part keeps any O_DIRECT alignment; the file
/// layer continues the rest as it continues any short transfer, which is what
/// the portable backend's pread/pwrite do too.
const MAX_SQE_TRANSFER_BYTES: usize = 1 << 30;

/// Whether a write of `len` bytes carries its linked sync in the same
/// submission: not when the SQE cap cuts it (see [`MAX_SQE_TRANSFER_BYTES`]).
fn links_sync(sync_after: bool, len: usize) -> bool {
    sync_after && len <= MAX_SQE_TRANSFER_BYTES
}

/// The length field of a read or write SQE for a transfer of `len` bytes.
fn sqe_len(len: usize) -> u32 {
    len.min(MAX_SQE_TRANSFER_BYTES) as u32
}

/// The SQEs of an op: one, or a write and the fdatasync linked to it. Part
/// `i` carries user_data `token(slot, i)`. Asserts the O_DIRECT rules first.
fn op_entries(op: &mut Op, slot: usize) -> [Option<squeue::Entry>; 2] {
    op.assert_aligned();
    let fd = types::Fd(op.file.file.as_raw_fd());
    let entries = match &mut op.kind {
        OpKind::Read { buf, start, len, offset } => {
            // SAFETY (pointer arithmetic): start + len <= capacity was asserted.
            let ptr = buf.as_mut_ptr().wrapping_add(*start);
            [Some(opcode::Read::new(fd, ptr, sqe_len(*len)).offset(*offset).build()), None]
        }
        OpKind::Write { buf, start, len, offset, sync_after } => {
            let ptr = buf.as_mut_ptr().wrapping_add(*start).cast_const();
            let write = opcode::Write::new(fd, ptr, sqe_len(*len)).offset(*offset).build();
            // A write cut at the SQE cap is short on purpose: the kernel would
            // see a complete SQE and run the linked sync after the first part.
            // The sync comes with the continuation instead.
            if links_sync(*sync_after, *len) {
                let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build();
                [Some(write.flags(squeue::Flags::IO_LINK)), Some(sync)]
            } else {
                [Some(write), None]
            }
        }
        OpKind::Sync { data_only } => {
            let flags = if *data_only { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
            [Some(opcode::Fsync::new(fd).flags(flags).build()), None]
        }
        OpKind::Allocate { offset, len } => [Some(opcode::Fallocate::new(fd, *len).offset(*offset).build()), None],
    };
    let mut part = 0;
    entries.map(|entry| {
        entry.map(|entry| {
            let tagged = entry.user_data(token(slot, part));
            part += 1;
            tagged
        })
    })
}

/// Whether the ring thread polls before it sleeps, with `in_flight` ops of
/// which `latency_bound` are not bulk transfers. Not with only bulk transfers
/// in flight (see `RingThread::run`). Not on a single CPU with more than one
/// latency-bound op in flight either: there the spin holds the CPU that the
/// threads handling completions and making the next submissions need. Pinned
/// to one vCPU, 4 KiB reads at QD32 did 55-62K IOPS with the poll and 64-82K
/// without, while at QD1 the poll kept its 15-17K (`docs/io.md`).
fn polls(single_cpu: bool, in_flight: usize, latency_bound: usize) -> bool {
    let only_bulk = in_flight > 0 && latency_bound == 0;
    !only_bulk && (!single_cpu || latency_bound <= 1)
}

/// Whether the calling thread may run on one CPU only (its affinity, or the
/// cgroup's CPU quota); threads inherit this from the thread that spawns them.
fn runs_on_one_cpu() -> bool {
    std::thread::available_parallelism().map_or(true, |cpus| cpus.get() == 1)
}

struct RingThread {
    ring: IoUring,
    shared: Arc<Shared>,
    stats: Arc<IoStatsInner>,
    in_flight: Slab<InFlight>,
    /// Slots whose SQEs must be (re)pushed, in submission order: new ops and retries.
    to_push: VecDeque<usize>,
    unconsumed: Unconsumed,
    /// Op SQEs pushed since the last io_uring_enter.
    unsubmitted_op_sqes: usize,
    /// How long to poll for work before sleeping in the kernel.
    poll: Duration,
    /// Ops in the slab that are not bulk transfers (`Op::is_bulk`).
    latency_bound_in_flight: usize,
    /// Op SQEs per io_uring_enter, at most (see IoOptions::max_sqes_per_enter).
    max_sqes_per_enter: usize,
    /// This thread may run on one CPU only (affinity, cgroup quota).
    single_cpu: bool,
    /// Target of the armed eventfd read; boxed so its address is stable.
    wake_buf: Box<u64>,
    wake_armed: bool,
}

impl RingThread {
    fn new(ring: IoUring, shared: Arc<Shared>, stats: Arc<IoStatsInner>, tuning: RingTuning) -> RingThread {
        RingThread {
            ring,
            shared,
            stats,
            in_flight: Slab::new(),
            to_push: VecDeque::new(),
            unconsumed: Unconsumed::default(),
            unsubmitted_op_sqes: 0,
            poll: tuning.poll,
            latency_bound_in_flight: 0,
            max_sqes_per_enter: tuning.max_sqes_per_enter.max(1),
            single_cpu: runs_on_one_cpu(),
            wake_buf: Box::new(0),
            wake_armed: false,
        }
    }

    fn run(mut self) {
        // Every submission and completion passes through here.
        super::request_short_slices();
        let mut last_activity = Instant::now();
        loop {
            let moved = self.take_pending();
            self.push_sqes();
            let reaped = self.reap();
            // Re-arm after reaping, so the eventfd read rides on the same enter as the ops.
            self.arm_wake();
            if !self.ring.submission().is_empty() {
                self.enter(0);
            }
            if moved || reaped {
                last_activity = Instant::now();
                continue;
            }
            // With only bulk transfers in flight, the next completion is a
            // millisecond or so away: sleep at once and leave the CPU to the
            // threads that feed them (a flush encoding its next megabyte).
            // Measured on a 1M-entry flush: build 103-107 ms against 109-110
            // with the poll, whose spinning took a third of a vCPU.
            let polls = polls(self.single_cpu, self.in_flight.len(), self.latency_bound_in_flight);
            if polls && self.poll_for_work(last_activity + self.poll) {
                continue;
            }
            // Nothing to do: sleep, unless work arrived or it is time to go.
            {
                let mut queue = self.shared.lock();
                if !queue.pending.is_empty() {
                    continue;
                }
                if queue.shutdown && self.in_flight.is_empty() {
                    break;
                }
                queue.sleeping = true;
            }
            self.enter(1);
            self.shared.lock().sleeping = false;
        }
        self.retire_wake();
    }

    /// Busy-polls the submission queue and the CQ until `deadline`, so a caller
    /// that submits right after its previous op completed needs no eventfd
    /// write and no thread wake-up. True if work turned up.
    fn poll_for_work(&mut self, deadline: Instant) -> bool {
        if self.poll.is_zero() {
            return false;
        }
        self.stats.poll_windows.fetch_add(1, Ordering::Relaxed);
        loop {
            if self.shared.has_pending.load(Ordering::Acquire) || !self.ring.completion().is_empty() {
                return true;
            }
            if self.ring.submission().taskrun() {
                // COOP_TASKRUN: completions are waiting for us to enter the kernel.
                self.enter(0);
                continue;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// One io_uring_enter: submits what is in the SQ and, with `wait`, blocks for a CQE.
    fn enter(&mut self, wait: usize) {
        let queued = self.ring.submission().len();
        self.stats.kernel_enters.fetch_add(1, Ordering::Relaxed);
        if self.unsubmitted_op_sqes > 0 {
            self.stats.submitting_enters.fetch_add(1, Ordering::Relaxed);
            self.unsubmitted_op_sqes = 0;
        }
        match self.ring.submit_and_wait(wait) {
            Ok(_consumed) => {}
            // Interrupted, or the kernel is short of memory/CQ space: reap and try again.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
            Err(e) => panic!("io_uring_enter failed with {queued} SQEs queued: {e}"),
        }
        let left = self.ring.submission().len();
        if let Some(slot) = self.unconsumed.after_enter(left) {
            self.in_flight[slot].mark_link_split();
        }
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let entry =
            opcode::Read::new(types::Fd(self.shared.eventfd.as_raw_fd()), (&raw mut *self.wake_buf).cast::<u8>(), 8)
                .build()
                .user_data(WAKE_TOKEN);
        // SAFETY: wake_buf is a heap u64 owned by this thread that outlives the
        // request: retire_wake waits for its CQE before the thread exits.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.unconsumed.pushed(WAKE_TOKEN);
            self.wake_armed = true;
        }
    }

    /// Moves queued submissions into the slab (bounded by the semaphore upstream).
    fn take_pending(&mut self) -> bool {
        if !self.shared.has_pending.load(Ordering::Acquire) {
            return false;
        }
        let batch: Vec<Submission> = {
            let mut queue = self.shared.lock();
            self.shared.has_pending.store(false, Ordering::Release);
            queue.pending.drain(..).collect()
        };
        let moved = !batch.is_empty();
        for submission in batch {
            self.latency_bound_in_flight += usize::from(!submission.op.is_bulk());
            let slot = self.in_flight.insert(InFlight::new(submission));
            self.to_push.push_back(slot);
        }
        moved
    }

    fn push_sqes(&mut self) {
        while let Some(&slot) = self.to_push.front() {
            if self.unsubmitted_op_sqes >= self.max_sqes_per_enter {
                self.enter(0);
            }
            let free = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if free < 2 {
                self.enter(0);
                continue;
            }
            self.to_push.pop_front();
            for entry in self.in_flight[slot].entries(slot).into_iter().flatten() {
                // SAFETY: the buffer and file this entry points into are owned by
                // the slab entry, which is removed only after its last CQE.
                let pushed = unsafe { self.ring.submission().push(&entry) };
                assert!(pushed.is_ok(), "SQ space was checked");
                self.unconsumed.pushed(entry.get_user_data());
                self.unsubmitted_op_sqes += 1;
                self.stats.sqes_submitted.fetch_add(1, Ordering::Relaxed);
            }
            if self.in_flight[slot].dispatches_alone() {
                self.enter(0);
            }
        }
    }

    fn reap(&mut self) -> bool {
        let mut any = false;
        let cqes: Vec<(u64, i32)> = self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result())).collect();
        for (user_data, result) in cqes {
            any = true;
            if user_data == WAKE_TOKEN {
                self.wake_armed = false;
                continue;
            }
            let (slot, part) = slot_and_part(user_data);
            let flight = self.in_flight.get_mut(slot).expect("CQE for an unknown slot");
            match flight.record(part, result) {
                CqeOutcome::Waiting => {}
                CqeOutcome::Retry => self.to_push.push_back(slot),
                CqeOutcome::Finished => {
                    let flight = self.in_flight.remove(slot);
                    self.latency_bound_in_flight -= usize::from(!flight.is_bulk());
                    flight.finish(&self.stats);
                }
            }
        }
        any
    }

    /// Completes the armed eventfd read so no request is left pointing at wake_buf.
    fn retire_wake(&mut self) {
        while self.wake_armed {
            self.shared.wake();
            self.enter(1);
            self.reap();
        }
    }
}

impl Drop for RingThread {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // A broken invariant killed the thread while the kernel may still own
        // buffers: leak them (and the eventfd target) rather than free them
        // under a pending DMA, and fail every waiting future.
        for (_, flight) in std::mem::take(&mut self.in_flight) {
            flight.leak();
        }
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        let mut queue = self.shared.lock();
        queue.dead = true;
        queue.pending.clear();
    }
}

fn to_result(res: i32) -> io::Result<usize> {
    if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(res as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::op::FileHandle;

    #[test]
    fn on_one_cpu_the_ring_thread_polls_only_for_a_lone_op() {
        // (single_cpu, in flight, latency-bound of them) -> polls
        let cases = [
            ((false, 0, 0), true),
            ((false, 32, 32), true),
            ((false, 4, 0), false),
            ((true, 0, 0), true),
            ((true, 1, 1), true),
            ((true, 3, 1), true),
            ((true, 2, 2), false),
            ((true, 32, 32), false),
            ((true, 4, 0), false),
        ];
        for ((single_cpu, in_flight, latency_bound), expected) in cases {
            assert_eq!(
                polls(single_cpu, in_flight, latency_bound),
                expected,
                "{single_cpu} {in_flight} {latency_bound}"
            );
        }
    }

    /// Restricts the calling thread to the CPU it is running on.
    fn pin_to_current_cpu() {
        // SAFETY: sched_getcpu takes no arguments.
        let cpu = unsafe { libc::sched_getcpu() };
        assert!(cpu >= 0, "sched_getcpu: {}", io::Error::last_os_error());
        // SAFETY: an all-zero cpu_set_t is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is a CPU number from the kernel and `set` a live cpu_set_t.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: `set` is a live, initialised cpu_set_t of the size passed.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) };
        assert_eq!(rc, 0, "sched_setaffinity: {}", io::Error::last_os_error());
    }

    #[test]
    fn a_thread_pinned_to_one_cpu_and_the_threads_it_spawns_know_it() {
        let multi_cpu = std::thread::available_parallelism().unwrap().get() > 1;
        assert_eq!(std::thread::spawn(runs_on_one_cpu).join().unwrap(), !multi_cpu);
        let (pinned, child) = std::thread::spawn(|| {
            pin_to_current_cpu();
            (runs_on_one_cpu(), std::thread::spawn(runs_on_one_cpu).join().unwrap())
        })
        .join()
        .unwrap();
        assert!(pinned && child, "pinned {pinned}, its child {child}");
    }

    #[test]
    fn a_kernel_without_the_needed_opcodes_is_refused() {
        // A probe nothing filled in: what a kernel knowing none of them reports.
        assert_eq!(missing_opcode(&io_uring::Probe::new()), Some("READ"));
        // This machine's kernel (6.x) has them all.
        let ring = build_ring(8).expect("io_uring on the test machine");
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).unwrap();
        assert_eq!(missing_opcode(&probe), None);
    }

    #[test]
    fn an_enter_that_stops_between_a_write_and_its_sync_is_spotted() {
        let mut unconsumed = Unconsumed::default();
        let pair = |unconsumed: &mut Unconsumed, slot| {
            unconsumed.pushed(token(slot, 0));
            unconsumed.pushed(token(slot, 1));
        };
        pair(&mut unconsumed, 3);
        assert_eq!(unconsumed.after_enter(2), None, "nothing consumed");
        assert_eq!(unconsumed.after_enter(1), Some(3), "the write went, its sync stayed");
        assert_eq!(unconsumed.after_enter(0), None, "the sync went on its own");
        // Whole pairs, a lone op and the wake read around them.
        unconsumed.pushed(token(1, 0));
        unconsumed.pushed(WAKE_TOKEN);
        pair(&mut unconsumed, 2);
        pair(&mut unconsumed, 5);
        assert_eq!(unconsumed.after_enter(4), None, "stopped after the wake read");
        assert_eq!(unconsumed.after_enter(2), None, "stopped between two pairs");
        assert_eq!(unconsumed.after_enter(0), None);
        pair(&mut unconsumed, 7);
        unconsumed.pushed(WAKE_TOKEN);
        assert_eq!(unconsumed.after_enter(2), Some(7));
        assert_eq!(unconsumed.after_enter(0), None);
    }

    #[test]
    fn a_split_link_resubmits_the_op_and_never_reports_its_sync_done() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let handle = Arc::new(FileHandle { file, path: dir.path().join("f"), direct: false, align: 512 });
        let permits = Arc::new(crate::io::permits::Permits::new(1));
        let (done, _receiver) = futures_channel::oneshot::channel();
        let buf = crate::io::AlignedBuf::new(512, 512);
        let op = Op { file: handle, kind: OpKind::Write { buf, start: 0, len: 512, offset: 0, sync_after: true } };
        let submission = Submission { op, done, permit: permits.try_acquire_arc().unwrap() };
        let mut flight = InFlight::new(submission);
        let mut rounds = 0;
        loop {
            let entries = flight.entries(0);
            assert!(entries[1].is_some(), "a write with its linked sync");
            flight.mark_link_split();
            flight.record(0, 512);
            rounds += 1;
            match flight.record(1, 0) {
                CqeOutcome::Retry => continue,
                CqeOutcome::Finished => break,
                CqeOutcome::Waiting => panic!("both parts are in"),
            }
        }
        assert_eq!(rounds, MAX_RETRIES + 1, "resubmitted while retries last");
        assert_eq!(flight.results, [512, -libc::EIO], "then the sync is an error, not a success");
        // Without a split, the same results finish at once.
        flight.entries(0);
        flight.record(0, 512);
        assert!(matches!(flight.record(1, 0), CqeOutcome::Finished));
        assert_eq!(flight.results, [512, 0]);
    }

    #[test]
    fn a_write_cut_at_the_cap_leaves_its_sync_to_the_continuation() {
        assert!(links_sync(true, 4096));
        assert!(links_sync(true, MAX_SQE_TRANSFER_BYTES));
        // Linked, the sync would run after the first GiB and its result be lost.
        assert!(!links_sync(true, MAX_SQE_TRANSFER_BYTES + 4096));
        assert!(!links_sync(false, 4096));
    }

    #[test]
    fn transfers_of_4_gib_and_more_are_cut_not_wrapped() {
        assert_eq!(sqe_len(4096), 4096);
        assert_eq!(sqe_len(MAX_SQE_TRANSFER_BYTES), MAX_SQE_TRANSFER_BYTES as u32);
        // `as u32` alone made 4 GiB a 0-byte read: end of file to the caller.
        assert_eq!(sqe_len(4 << 30), MAX_SQE_TRANSFER_BYTES as u32);
        assert_eq!(sqe_len((4 << 30) + 4096), MAX_SQE_TRANSFER_BYTES as u32);
        assert_eq!(sqe_len(usize::MAX), MAX_SQE_TRANSFER_BYTES as u32);
    }
}
