//! The in-flight slots of an [`Io`](super::Io): a counting semaphore whose
//! release wakes the next waiter after unlocking.
//!
//! Why not `async_lock::Semaphore`: it is built on `event_listener`, which
//! calls `wake()` while holding its list's mutex. Permits are released on the
//! ring thread (`Submission::finish`); a waker there may be the last owner of
//! its task (an executor dropped with the task still waiting for a slot), and
//! dropping the task drops its `acquire` future, which takes that mutex again:
//! the ring thread would deadlock.
//!
//! Waiters queue in order. A release wakes the first, which then takes a
//! permit if one is still free (a `try_acquire` may take it first; the waiter
//! then queues again, and the next release wakes it). A woken waiter dropped
//! before it took a permit passes the wake-up on, so a free permit never sits
//! beside a waiter that nobody will wake.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A counting semaphore for [`Permit`]s.
pub(crate) struct Permits {
    available: AtomicUsize,
    /// How many waiters are queued: a release looks at the queue only if some are.
    queued: AtomicUsize,
    queue: Mutex<VecDeque<Waiter>>,
}

struct Waiter {
    id: u64,
    waker: Waker,
    /// Set when a release took this waiter off the queue to wake it.
    woken: Arc<AtomicBool>,
}

/// One in-flight slot, given back when dropped.
pub(crate) struct Permit {
    permits: Arc<Permits>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.release();
    }
}

static NEXT_WAITER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Permits {
    /// A semaphore with `count` permits.
    pub(crate) fn new(count: usize) -> Permits {
        Permits { available: AtomicUsize::new(count), queued: AtomicUsize::new(0), queue: Mutex::new(VecDeque::new()) }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Waiter>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_take(&self) -> bool {
        self.available.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// A permit if one is free now.
    pub(crate) fn try_acquire_arc(self: &Arc<Self>) -> Option<Permit> {
        self.try_take().then(|| Permit { permits: Arc::clone(self) })
    }

    /// Waits for a permit, in line with the other waiters.
    pub(crate) fn acquire_arc(self: &Arc<Self>) -> Acquire {
        Acquire { permits: Arc::clone(self), id: NEXT_WAITER_ID.fetch_add(1, Ordering::Relaxed), woken: None }
    }

    fn release(&self) {
        // SeqCst on both sides: a waiter counts itself as queued before its
        // last try, a release frees its permit before it looks at the count,
        // so one of the two sees the other.
        self.available.fetch_add(1, Ordering::SeqCst);
        self.wake_next();
    }

    /// Wakes the first queued waiter, if any, outside the lock.
    fn wake_next(&self) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let next = {
            let mut queue = self.queue();
            let next = queue.pop_front();
            if let Some(waiter) = &next {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                // Under the lock: a waiter dropped from now on finds itself
                // off the queue and woken, and passes the wake-up on.
                waiter.woken.store(true, Ordering::SeqCst);
            }
            next
        };
        if let Some(waiter) = next {
            waiter.waker.wake();
        }
    }
}

/// Completes with a [`Permit`]; see [`Permits::acquire_arc`].
pub(crate) struct Acquire {
    permits: Arc<Permits>,
    id: u64,
    /// While queued, or woken and not yet polled: the flag a release sets.
    woken: Option<Arc<AtomicBool>>,
}

impl Acquire {
    /// Takes this waiter off the queue if it is still on it; true if it was
    /// (not woken by a release).
    fn leave_queue(&self, queue: &mut VecDeque<Waiter>) -> bool {
        match queue.iter().position(|waiter| waiter.id == self.id) {
            Some(at) => {
                queue.remove(at);
                self.permits.queued.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if self.permits.try_take() {
            if self.woken.take().is_some() {
                let permits = Arc::clone(&self.permits);
                self.leave_queue(&mut permits.queue());
            }
            return Poll::Ready(Permit { permits: Arc::clone(&self.permits) });
        }
        let permits = Arc::clone(&self.permits);
        let mut queue = permits.queue();
        match queue.iter_mut().find(|waiter| waiter.id == self.id) {
            Some(waiter) => waiter.waker.clone_from(cx.waker()),
            None => {
                // First poll, or woken by a release whose permit someone else
                // took: (back) in line, counted before the last try below.
                let woken = Arc::new(AtomicBool::new(false));
                queue.push_back(Waiter { id: self.id, waker: cx.waker().clone(), woken: Arc::clone(&woken) });
                permits.queued.fetch_add(1, Ordering::SeqCst);
                self.woken = Some(woken);
            }
        }
        if permits.try_take() {
            self.leave_queue(&mut queue);
            self.woken = None;
            return Poll::Ready(Permit { permits: Arc::clone(&permits) });
        }
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(woken) = self.woken.take() else { return };
        let still_queued = self.leave_queue(&mut self.permits.queue());
        // Woken for a permit this waiter will never take: the wake-up goes on
        // to the next waiter (after the lock is released).
        if !still_queued && woken.load(Ordering::SeqCst) && self.permits.available.load(Ordering::SeqCst) > 0 {
            self.permits.wake_next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::{ArcWake, noop_waker};

    fn poll(acquire: &mut Acquire, waker: &Waker) -> Poll<Permit> {
        Pin::new(acquire).poll(&mut Context::from_waker(waker))
    }

    struct Flag(AtomicBool);

    impl ArcWake for Flag {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn permits_are_counted_and_waiters_woken_in_order() {
        let permits = Arc::new(Permits::new(1));
        let held = permits.try_acquire_arc().expect("one is free");
        assert!(permits.try_acquire_arc().is_none());
        let (first_flag, second_flag) =
            (Arc::new(Flag(AtomicBool::new(false))), Arc::new(Flag(AtomicBool::new(false))));
        let (first_waker, second_waker) =
            (futures::task::waker(Arc::clone(&first_flag)), futures::task::waker(Arc::clone(&second_flag)));
        let (mut first, mut second) = (permits.acquire_arc(), permits.acquire_arc());
        assert!(poll(&mut first, &first_waker).is_pending());
        assert!(poll(&mut second, &second_waker).is_pending());
        drop(held);
        assert!(first_flag.0.load(Ordering::SeqCst), "the first in line is woken");
        assert!(!second_flag.0.load(Ordering::SeqCst));
        let Poll::Ready(taken) = poll(&mut first, &first_waker) else { panic!("a permit is free") };
        assert!(poll(&mut second, &second_waker).is_pending());
        drop(taken);
        assert!(second_flag.0.load(Ordering::SeqCst));
        let Poll::Ready(second_permit) = poll(&mut second, &second_waker) else { panic!("a permit is free") };
        assert_eq!(permits.queued.load(Ordering::SeqCst), 0);
        assert_eq!(permits.available.load(Ordering::SeqCst), 0, "the second holds the permit");
        drop(second_permit);
        assert_eq!(permits.available.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_woken_waiter_dropped_before_it_takes_the_permit_passes_the_wake_up_on() {
        let permits = Arc::new(Permits::new(1));
        let held = permits.try_acquire_arc().unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = futures::task::waker(Arc::clone(&flag));
        let (mut first, mut second) = (permits.acquire_arc(), permits.acquire_arc());
        assert!(poll(&mut first, &noop_waker()).is_pending());
        assert!(poll(&mut second, &waker).is_pending());
        drop(held);
        drop(first);
        assert!(flag.0.load(Ordering::SeqCst), "the second waiter is woken instead");
        let Poll::Ready(_second_permit) = poll(&mut second, &waker) else { panic!("a permit is free") };
        // A queued waiter dropped unwoken leaves nothing behind.
        let mut third = permits.acquire_arc();
        assert!(poll(&mut third, &noop_waker()).is_pending());
        drop(third);
        assert_eq!(permits.queued.load(Ordering::SeqCst), 0);
        assert!(permits.queue().is_empty());
    }

    /// The waker is the waiter's last owner, as an executor's task is of its
    /// future once the executor is gone: the release's `wake()` drops the
    /// `Acquire`, which takes the queue's lock. Waking under the lock would
    /// deadlock here.
    #[test]
    fn a_waker_may_drop_its_waiter_inside_wake() {
        let permits = Arc::new(Permits::new(1));
        let held = permits.try_acquire_arc().unwrap();
        assert!(crate::test_support::leave_to_its_waker(permits.acquire_arc()));
        let (done, released) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(held);
            let _ = done.send(());
        });
        released.recv_timeout(std::time::Duration::from_secs(10)).expect("the release returns");
        assert!(permits.try_acquire_arc().is_some(), "the dropped waiter took no permit");
    }

    #[test]
    fn many_threads_never_hold_more_than_the_permits() {
        let permits = Arc::new(Permits::new(3));
        let holding = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (permits, holding) = (Arc::clone(&permits), Arc::clone(&holding));
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let permit = futures::executor::block_on(permits.acquire_arc());
                        assert!(holding.fetch_add(1, Ordering::SeqCst) < 3);
                        holding.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(permits.available.load(Ordering::SeqCst), 3);
        assert_eq!(permits.queued.load(Ordering::SeqCst), 0);
    }
}
