//! Completions through the caller's tokio reactor ([`super::IoOptions::tokio_reactor`]).
//!
//! With the ring thread alone, an operation's completion travels: device
//! interrupt, ring thread reaps the CQE, ring thread wakes the caller's task
//! (another thread's wake-up), the caller runs. fio, which waits in
//! `io_uring_enter` itself, has one wake-up fewer. On this project's 2-vCPU
//! VM that extra wake-up cost a 4 KiB QD1 read about a quarter of its time
//! under tokio: a minimal ring thread plus tokio task did 11.3-15.0 K IOPS
//! where fio's pattern did 17.2-19.6 K, and the design below 17.8-19.6 K
//! (5 alternating rounds, `docs/io.md`).
//!
//! Here each tokio runtime that submits gets a ring of its own, with an
//! eventfd registered (IORING_REGISTER_EVENTFD) that the kernel signals as it
//! posts a CQE. A submitting task pushes its SQEs and enters the kernel
//! itself. A reaper task on the runtime awaits the eventfd through tokio's
//! `AsyncFd`, so the kernel wakes the runtime's I/O driver directly; the
//! reaper then reaps the CQ and completes the ops from a worker thread, where
//! waking the waiting task is a push onto that worker's run queue.
//!
//! A reactor holds at most [`super::IoOptions::tokio_reactor_max_in_flight`]
//! ops (default [`super::REACTOR_DEFAULT_MAX_IN_FLIGHT`]); beyond that,
//! submissions go to the ring thread, which serves deep queues better on
//! small machines unless one worker does nothing but I/O.
//!
//! Only multi-thread runtimes get a reactor: a current-thread runtime runs
//! the reaper only while someone drives it, and a caller that enters the
//! runtime's context and then blocks on an op would wait forever.
//!
//! Ownership is the ring thread's: an op lives in the reactor's slab, under
//! its mutex, from when its SQEs are pushed until its last CQE. When the
//! reaper task ends (its runtime shuts down) or the last [`super::Io`] handle
//! is dropped, the reactor closes and waits, blocking, for every op still in
//! flight before anything can be freed; later submissions from that runtime
//! go to the ring thread. If a broken invariant panicked while CQEs taken off
//! the ring were not yet matched to their ops, those ops may never complete:
//! their buffers are then leaked rather than freed under the kernel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::IoUring;
use slab::Slab;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::op::{IoStatsInner, Submission};
use super::uring::{CqeOutcome, InFlight, Unconsumed, slot_and_part};

/// SQ entries of a reactor's ring: room for every SQE of `max_in_flight` ops
/// (a write and its linked sync are two), even if none was submitted yet (an
/// interrupted enter). The CQ has twice as many.
fn ring_entries(max_in_flight: usize) -> u32 {
    assert!(
        (1..=super::REACTOR_MOST_MAX_IN_FLIGHT).contains(&max_in_flight),
        "IoOptions validates the reactor's depth"
    );
    (2 * max_in_flight).next_power_of_two().max(8) as u32
}

/// The reactors of one [`super::Io`], one per tokio runtime that submitted.
pub(crate) struct Reactors {
    stats: Arc<IoStatsInner>,
    /// Each reactor's most ops in flight.
    max_in_flight: usize,
    /// Tells these reactors from those of another [`super::Io`] in
    /// [`LAST_REACTOR`]; never reused.
    id: u64,
    /// `None` if that runtime's reactor could not be set up: its submissions
    /// then go to the ring thread. Runtime ids are never reused.
    by_runtime: Mutex<Vec<(tokio::runtime::Id, Option<Arc<Reactor>>)>>,
}

impl Reactors {
    pub(crate) fn new(stats: Arc<IoStatsInner>, max_in_flight: usize) -> Reactors {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Reactors { stats, max_in_flight, id, by_runtime: Mutex::new(Vec::new()) }
    }

    /// Submits through the current runtime's reactor, or hands the submission
    /// back: not on a multi-thread tokio runtime, its reactor is closed, or
    /// it holds its most ops.
    pub(crate) fn submit(&self, submission: Submission) -> Result<(), Submission> {
        let Ok(handle) = Handle::try_current() else {
            return Err(submission);
        };
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return Err(submission);
        }
        let runtime = handle.id();
        // `try_with`: a submission from a thread-local's destructor, after
        // this one is gone, takes the slow path instead of panicking.
        let cached = LAST_REACTOR
            .try_with(|last| match &*last.borrow() {
                Some((reactors, last_runtime, reactor)) if *reactors == self.id && *last_runtime == runtime => {
                    reactor.upgrade()
                }
                _ => None,
            })
            .ok()
            .flatten();
        // A closed reactor refuses the submission under its lock (the op
        // goes to the ring thread): no need to ask `reactor_for` while it
        // lives. A runtime that shut down submits nothing more; one whose
        // reactor closed on an eventfd error gets a new one once the closed
        // one is forgotten and gone.
        if let Some(reactor) = cached {
            return reactor.submit(submission);
        }
        match self.reactor_for(&handle) {
            Some(reactor) => {
                let remembered = Some((self.id, runtime, Arc::downgrade(&reactor)));
                let _ = LAST_REACTOR.try_with(|last| *last.borrow_mut() = remembered);
                reactor.submit(submission)
            }
            None => Err(submission),
        }
    }

    fn reactor_for(&self, handle: &Handle) -> Option<Arc<Reactor>> {
        let id = handle.id();
        let mut by_runtime = lock(&self.by_runtime);
        // Forget the rings of runtimes that shut down (their reapers drained
        // them), so a process that makes runtime after runtime does not keep
        // an entry for each. (A live runtime whose reactor closed, its eventfd
        // having failed, gets a new one.) An entry without a reactor stays:
        // its runtime could not get one, and should not try at every op.
        by_runtime.retain(|(_, slot)| !slot.as_ref().is_some_and(|reactor| reactor.closed.load(Ordering::Acquire)));
        if let Some((_, slot)) = by_runtime.iter().find(|(runtime, _)| *runtime == id) {
            return slot.clone();
        }
        let reactor = match Reactor::start(handle, Arc::clone(&self.stats), self.max_in_flight) {
            Ok(reactor) => Some(reactor),
            Err(e) => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "ringdb: no io_uring for a tokio runtime's reactor ({e}); its I/O completes \
                         through the ring thread, one thread wake-up more per operation"
                    );
                }
                None
            }
        };
        by_runtime.push((id, reactor.clone()));
        reactor
    }

    /// Closes every reactor and waits, blocking, for the ops in flight on it,
    /// as the ring thread's shutdown does: once the last `Io` handle is
    /// gone, none of its writes is still to land. Each reaper then ends.
    ///
    /// The drain needs neither the reaper nor any worker to run: it reaps for
    /// itself, and the kernel posts each CQE on the thread that submitted the
    /// op, waking it from any sleep to do so (or at its exit).
    pub(crate) fn shutdown(&self) {
        let reactors: Vec<Arc<Reactor>> = lock(&self.by_runtime).drain(..).filter_map(|(_, r)| r).collect();
        for reactor in reactors {
            reactor.request_close();
            reactor.close_and_drain();
        }
    }
}

thread_local! {
    /// The reactor this thread submitted to last, with the [`Reactors`] and
    /// runtime it belongs to: a worker submits to its runtime's reactor
    /// without taking the `by_runtime` lock, which every thread of every
    /// runtime that uses the `Io` would otherwise take for every op. Weak, so
    /// a thread that outlives a runtime does not keep its ring open.
    static LAST_REACTOR: std::cell::RefCell<Option<(u64, tokio::runtime::Id, std::sync::Weak<Reactor>)>> =
        const { std::cell::RefCell::new(None) };
}

/// One runtime's ring.
pub(crate) struct Reactor {
    state: Mutex<State>,
    /// No new submissions: the reaper is finishing or gone. Set under the
    /// state lock (which submissions check it under); read without it too.
    closed: AtomicBool,
    /// The [`Reactors`] asked the reaper to finish.
    close_requested: AtomicBool,
    /// A panic unwound while CQEs taken off the ring were not yet matched to
    /// their ops: those ops may never complete, so the drain leaks them
    /// instead of waiting for good.
    cqes_lost: AtomicBool,
    eventfd: OwnedFd,
    stats: Arc<IoStatsInner>,
    /// The most ops in [`State::in_flight`]; the SQ has room for all their SQEs.
    max_in_flight: usize,
}

struct State {
    ring: IoUring,
    in_flight: Slab<InFlight>,
    unconsumed: Unconsumed,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The eventfd as the reaper's `AsyncFd` sees it; the [`Reactor`] owns it and
/// outlives the reaper's `AsyncFd`.
struct EventFd(RawFd);

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Reactor {
    /// A ring with its eventfd registered, and its reaper spawned on `handle`.
    fn start(handle: &Handle, stats: Arc<IoStatsInner>, max_in_flight: usize) -> io::Result<Arc<Reactor>> {
        let ring = IoUring::new(ring_entries(max_in_flight))?;
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let ready = {
            // AsyncFd registers with the runtime of the current context.
            let _context = handle.enter();
            // SAFETY: the eventfd is owned by the Reactor, which the reaper
            // holds (`Reaper::drain`) until after its AsyncFd is dropped
            // (`Reaper::ready`, dropped first), so the fd stays open and the
            // same for the AsyncFd's whole life.
            unsafe { AsyncFd::register_with_interest(EventFd(eventfd.as_raw_fd()), Interest::READABLE) }
                .map_err(io::Error::from)?
        };
        let reactor = Arc::new(Reactor {
            state: Mutex::new(State { ring, in_flight: Slab::new(), unconsumed: Unconsumed::default() }),
            closed: AtomicBool::new(false),
            close_requested: AtomicBool::new(false),
            cqes_lost: AtomicBool::new(false),
            eventfd,
            stats,
            max_in_flight,
        });
        // The guard is part of the task from the start, so even a task that
        // is dropped unpolled (its runtime shutting down) drains the ring.
        handle.spawn(reap_until_closed(Reaper { ready, drain: DrainOnDrop(Arc::clone(&reactor)) }));
        Ok(reactor)
    }

    fn submit(&self, submission: Submission) -> Result<(), Submission> {
        let mut state = lock(&self.state);
        if self.closed.load(Ordering::Acquire) || state.in_flight.len() >= self.max_in_flight {
            return Err(submission);
        }
        let State { ring, in_flight, unconsumed } = &mut *state;
        let slot = in_flight.vacant_entry();
        let mut flight = InFlight::new(submission);
        // Built before the op enters the slab: an assertion here leaves
        // nothing behind that waits for a CQE.
        let entries = flight.entries(slot.key());
        push(ring, unconsumed, entries, &self.stats);
        slot.insert(flight);
        self.stats.reactor_ops.fetch_add(1, Ordering::Relaxed);
        self.enter(&mut state, 0);
        Ok(())
    }

    /// One io_uring_enter: submits what is queued; with `wait`, blocks for CQEs.
    fn enter(&self, state: &mut State, wait: usize) {
        let State { ring, in_flight, unconsumed } = state;
        self.stats.kernel_enters.fetch_add(1, Ordering::Relaxed);
        if !ring.submission().is_empty() {
            self.stats.submitting_enters.fetch_add(1, Ordering::Relaxed);
        }
        match ring.submit_and_wait(wait) {
            Ok(_) => {}
            // Interrupted, or the kernel is short of memory or CQ space: the
            // SQEs stay queued. Wake the reaper, whose reap enters again.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => self.signal(),
            Err(e) => panic!("io_uring_enter on a reactor ring failed: {e}"),
        }
        let left = ring.submission().len();
        if let Some(slot) = unconsumed.after_enter(left) {
            in_flight[slot].mark_link_split();
        }
    }

    /// Reaps every CQE; completes finished ops after the lock is released.
    fn reap(&self) {
        let finished = {
            let mut state = lock(&self.state);
            let State { ring, in_flight, unconsumed } = &mut *state;
            let mut finished = Vec::new();
            let unmatched = LostIfUnwound(&self.cqes_lost);
            let cqes: Vec<(u64, i32)> = ring.completion().map(|cqe| (cqe.user_data(), cqe.result())).collect();
            for (user_data, result) in cqes {
                let (slot, part) = slot_and_part(user_data);
                let flight = in_flight.get_mut(slot).expect("CQE for an unknown slot");
                match flight.record(part, result) {
                    CqeOutcome::Waiting => {}
                    CqeOutcome::Retry => push(ring, unconsumed, flight.entries(slot), &self.stats),
                    CqeOutcome::Finished => finished.push(in_flight.remove(slot)),
                }
            }
            std::mem::forget(unmatched);
            if !ring.submission().is_empty() {
                self.enter(&mut state, 0);
            }
            finished
        };
        for flight in finished {
            flight.finish(&self.stats);
        }
    }

    fn request_close(&self) {
        self.close_requested.store(true, Ordering::Release);
        self.signal();
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let rc = unsafe { libc::write(self.eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
        // EAGAIN: the counter is saturated, so the reaper is woken anyway.
        debug_assert!(rc == 8 || io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN));
    }

    /// Stops submissions, then waits (blocking) until every op in flight has
    /// its last CQE and is completed: only then may their buffers go.
    fn close_and_drain(&self) {
        {
            let _state = lock(&self.state);
            self.closed.store(true, Ordering::Release);
        }
        loop {
            if self.cqes_lost.load(Ordering::Acquire) {
                // A broken invariant panicked mid-reap: CQEs may be lost, so
                // waiting could last forever. Leak what is in flight rather
                // than free it under the kernel.
                let mut state = lock(&self.state);
                for (_, flight) in std::mem::take(&mut state.in_flight) {
                    flight.leak();
                }
                return;
            }
            self.reap();
            let mut state = lock(&self.state);
            if state.in_flight.is_empty() {
                return;
            }
            if state.ring.completion().is_empty() {
                // Under the lock: submissions of this runtime wait at most
                // this long to learn that the reactor closed.
                self.enter(&mut state, 1);
            }
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // Normally a no-op: the reaper drained it. Never free a buffer the
        // kernel may still write into.
        if std::thread::panicking() {
            let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            for (_, flight) in std::mem::take(&mut state.in_flight) {
                flight.leak();
            }
        } else {
            self.close_and_drain();
        }
    }
}

/// Pushes SQEs; the SQ has room for every SQE of the reactor's most ops.
fn push(
    ring: &mut IoUring,
    unconsumed: &mut Unconsumed,
    entries: [Option<io_uring::squeue::Entry>; 2],
    stats: &IoStatsInner,
) {
    // Checked for all of them first: a failure after the first of a linked
    // pair was queued would unwind and free its buffer under a queued SQE.
    let room = {
        let sq = ring.submission();
        sq.capacity() - sq.len()
    };
    assert!(entries.iter().flatten().count() <= room, "a reactor's SQ has room for all its ops' SQEs");
    for entry in entries.into_iter().flatten() {
        // SAFETY: the buffer and file this entry points into are owned by the
        // op's InFlight, which is in (or, before the lock is released, put
        // into) the slab, and leaves it only after its last CQE.
        let pushed = unsafe { ring.submission().push(&entry) };
        assert!(pushed.is_ok(), "a reactor's SQ has room for all its ops' SQEs");
        unconsumed.pushed(entry.get_user_data());
        stats.sqes_submitted.fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks a reactor's CQEs lost if dropped, which only a panic does: a
/// successful pass `forget`s it.
struct LostIfUnwound<'a>(&'a AtomicBool);

impl Drop for LostIfUnwound<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Closes and drains the reactor when the reaper ends in any way: finished,
/// or dropped with its runtime.
struct DrainOnDrop(Arc<Reactor>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.0.close_and_drain();
    }
}

/// What the reaper task owns. Fields drop in order: the `AsyncFd` is
/// deregistered before the reactor (and with it the eventfd) can go.
struct Reaper {
    ready: AsyncFd<EventFd>,
    drain: DrainOnDrop,
}

async fn reap_until_closed(reaper: Reaper) {
    let Reaper { ready, drain } = &reaper;
    let reactor = &drain.0;
    loop {
        match ready.readable().await {
            // Clear first: a CQE posted after this signals the eventfd again.
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                tracing::warn!(error = %e, "ringdb: a reactor's eventfd failed; its ops complete as it closes");
                return;
            }
        }
        // The eventfd's counter is never read back: tokio registers it
        // edge-triggered, and the kernel raises an edge for every signal
        // whatever the counter holds, so reading it (one syscall per wake-up,
        // of three per op at QD1) bought nothing. It cannot fill up: the
        // kernel's signals saturate, and ours are one per close or retry.
        reactor.reap();
        if reactor.close_requested.load(Ordering::Acquire) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::io::{Backend, DirectFile, Io, IoOptions};

    /// Runtime after runtime, each submitting through a reactor of its own
    /// and then shut down: the `Io` keeps no entry for the ones gone.
    #[test]
    fn reactors_of_runtimes_that_shut_down_are_forgotten() {
        let io = Io::new(IoOptions { tokio_reactor: true, ..IoOptions::default() }).unwrap();
        if io.backend() != Backend::IoUring {
            eprintln!("skipped: no io_uring, so no reactors");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::sync::Arc::new(futures::executor::block_on(DirectFile::create(&io, &path)).unwrap());
        let mut block = file.alloc_buf(4096);
        block.extend_from_slice(&[7u8; 4096]);
        futures::executor::block_on(file.write_at(block, 0)).unwrap();
        let entries = || super::lock(&io.inner.reactors.as_ref().unwrap().by_runtime).len();
        for _ in 0..5 {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let before = io.stats().reactor_ops;
            runtime.block_on(async {
                tokio::spawn({
                    let file = std::sync::Arc::clone(&file);
                    async move { file.read_at(file.alloc_buf(4096), 0, 4096).await.unwrap() }
                })
                .await
                .unwrap();
            });
            assert_eq!(io.stats().reactor_ops, before + 1, "the read went through this runtime's reactor");
            drop(runtime);
        }
        assert!(entries() <= 1, "{} entries kept for 5 runtimes, 4 of them gone before the last began", entries());
    }
}
