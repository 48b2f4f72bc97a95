//! A wake-up for every task waiting on a condition, like
//! `event_listener::Event::notify(usize::MAX)`, but the wakers are called
//! after the lock is released.
//!
//! Why not `event_listener`: it calls `wake()` while holding its list's
//! mutex. A waker may be the last owner of its task (an executor dropped
//! with the task still waiting); the task is then dropped inside `wake()`,
//! and dropping its listener takes that mutex again: the notifying thread,
//! one of the engine's (flush, compaction, log writer), deadlocks.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    /// How many notifications there have been.
    generation: u64,
    /// Ids for listeners.
    next_id: u64,
    /// Wakers of polled, pending listeners, by listener id.
    waiting: Vec<(u64, Waker)>,
}

/// Wakes every listener that exists when [`notify_all`](Self::notify_all) is
/// called, polled or not.
#[derive(Default)]
pub(crate) struct WakeAll {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl WakeAll {
    /// A listener that completes at the next [`notify_all`](Self::notify_all)
    /// after this call. Create it before releasing the lock under which the
    /// condition was checked, so a notification in between is not missed.
    pub(crate) fn listen(&self) -> Listener {
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        Listener { state: Arc::clone(&self.state), generation: state.generation, id }
    }

    /// Completes every listener created so far and wakes the polled ones,
    /// outside the lock.
    pub(crate) fn notify_all(&self) {
        let wakers = {
            let mut state = lock(&self.state);
            state.generation += 1;
            std::mem::take(&mut state.waiting)
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }
}

/// Completes at the first [`WakeAll::notify_all`] after it was created.
pub(crate) struct Listener {
    state: Arc<Mutex<State>>,
    generation: u64,
    id: u64,
}

impl Future for Listener {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.state);
        if state.generation != self.generation {
            // A notification took this listener's waker with the others.
            return Poll::Ready(());
        }
        match state.waiting.iter_mut().find(|(id, _)| *id == self.id) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => state.waiting.push((self.id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if state.generation == self.generation {
            state.waiting.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::{ArcWake, noop_waker};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    impl ArcWake for Counting {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(listener: &mut Listener, waker: &Waker) -> Poll<()> {
        Pin::new(listener).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_listener_completes_at_the_next_notification_even_if_polled_only_after_it() {
        let wake_all = WakeAll::default();
        let mut early = wake_all.listen();
        let waker = noop_waker();
        assert!(poll(&mut early, &waker).is_pending());
        let mut unpolled = wake_all.listen();
        wake_all.notify_all();
        let mut late = wake_all.listen();
        assert!(poll(&mut early, &waker).is_ready());
        assert!(poll(&mut unpolled, &waker).is_ready(), "created before the notification");
        assert!(poll(&mut late, &waker).is_pending(), "created after it");
    }

    #[test]
    fn polled_listeners_are_woken_once_and_dropped_ones_not_at_all() {
        let wake_all = WakeAll::default();
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = futures::task::waker(Arc::clone(&counting));
        let mut kept = wake_all.listen();
        let mut dropped = wake_all.listen();
        assert!(poll(&mut kept, &waker).is_pending());
        assert!(poll(&mut kept, &waker).is_pending(), "polled twice, registered once");
        assert!(poll(&mut dropped, &waker).is_pending());
        drop(dropped);
        wake_all.notify_all();
        assert_eq!(counting.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut kept, &waker).is_ready());
        assert!(lock(&wake_all.state).waiting.is_empty());
    }

    /// The waker is the listener's last owner, as an executor's task is of
    /// its future once the executor is gone: `wake()` drops the listener,
    /// which takes the lock. Waking under the lock would deadlock here.
    #[test]
    fn a_waker_may_drop_its_listener_inside_wake() {
        let wake_all = Arc::new(WakeAll::default());
        assert!(crate::test_support::leave_to_its_waker(wake_all.listen()));
        let (done, notified) = std::sync::mpsc::channel();
        let notifier = Arc::clone(&wake_all);
        std::thread::spawn(move || {
            notifier.notify_all();
            let _ = done.send(());
        });
        notified.recv_timeout(std::time::Duration::from_secs(10)).expect("notify_all returns");
        assert!(lock(&wake_all.state).waiting.is_empty());
    }
}
