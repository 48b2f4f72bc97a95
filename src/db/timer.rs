//! A runtime-agnostic sleep for the write slowdown: one lazily started
//! thread wakes futures at their deadlines, so no executor's timer is needed.

use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

struct Timer {
    due: Mutex<BinaryHeap<Entry>>,
    changed: Condvar,
}

struct Entry {
    at: Instant,
    fired: Arc<AtomicBool>,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// The earliest deadline on top of the max-heap.
    fn cmp(&self, other: &Entry) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer =
            Box::leak(Box::new(Timer { due: Mutex::new(BinaryHeap::new()), changed: Condvar::new() }));
        std::thread::Builder::new()
            .name("ringdb-timer".into())
            .spawn(move || {
                crate::io::mark_engine_thread();
                run(timer)
            })
            .expect("the timer thread starts");
        timer
    })
}

fn run(timer: &'static Timer) {
    let mut due = timer.due.lock().unwrap_or_else(|e| e.into_inner());
    let mut to_wake = Vec::new();
    loop {
        let now = Instant::now();
        while due.peek().is_some_and(|entry| entry.at <= now) {
            let entry = due.pop().expect("peeked");
            entry.fired.store(true, Ordering::Release);
            to_wake.push(entry.waker);
        }
        if !to_wake.is_empty() {
            // Woken outside the lock: a waker may poll its task right here (some
            // executors do), and that task may sleep again and take the lock; dropping
            // a waker may also drop the last handle of a database.
            drop(due);
            to_wake.drain(..).for_each(Waker::wake);
            due = timer.due.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        due = match due.peek().map(|entry| entry.at - now) {
            Some(wait) => timer.changed.wait_timeout(due, wait).unwrap_or_else(|e| e.into_inner()).0,
            None => timer.changed.wait(due).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Completes once `duration` has passed.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep { at: Instant::now() + duration, fired: None }
}

pub(crate) struct Sleep {
    at: Instant,
    fired: Option<Arc<AtomicBool>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at || self.fired.as_ref().is_some_and(|f| f.load(Ordering::Acquire)) {
            return Poll::Ready(());
        }
        // Registered again on every poll: the newest waker is the one to wake.
        let fired = Arc::new(AtomicBool::new(false));
        self.fired = Some(Arc::clone(&fired));
        let timer = timer();
        timer.due.lock().unwrap_or_else(|e| e.into_inner()).push(Entry {
            at: self.at,
            fired,
            waker: cx.waker().clone(),
        });
        timer.changed.notify_one();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_at_least_as_long_as_asked_and_not_much_longer() {
        let start = Instant::now();
        futures::executor::block_on(async {
            let (a, b) = futures::join!(sleep(Duration::from_millis(30)), sleep(Duration::from_millis(10)));
            let _ = (a, b);
        });
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(30), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    /// A waker that polls a new sleep inside `wake()`, as an executor that runs
    /// tasks inline would; the timer must not hold its lock while it wakes.
    struct PollsInsideWake {
        polled_inside: std::sync::mpsc::SyncSender<()>,
    }

    impl futures::task::ArcWake for PollsInsideWake {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            let mut again = Box::pin(sleep(Duration::from_secs(3600)));
            let waker = futures::task::noop_waker();
            let _ = again.as_mut().poll(&mut Context::from_waker(&waker));
            let _ = arc_self.polled_inside.send(());
        }
    }

    #[test]
    fn a_waker_may_sleep_again_inside_its_wake() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let waker = futures::task::waker(Arc::new(PollsInsideWake { polled_inside: tx }));
        let mut first = Box::pin(sleep(Duration::from_millis(5)));
        assert!(first.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        rx.recv_timeout(Duration::from_secs(10)).expect("the timer woke the waker without deadlocking");
        // The timer still serves later sleeps (waited for on another thread,
        // so a wedged timer fails the test instead of hanging it).
        let (done, slept) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            futures::executor::block_on(sleep(Duration::from_millis(5)));
            let _ = done.send(());
        });
        slept.recv_timeout(Duration::from_secs(10)).expect("a later sleep ends");
    }
}
