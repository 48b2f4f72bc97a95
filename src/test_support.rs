//! Helpers shared by unit tests of several modules.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Context;

/// A future that only the waker it registered owns, as an executor's task
/// owns its future once the executor is gone: waking it drops the future.
struct OwnedByWaker<F>(Mutex<Option<F>>);

impl<F: Send> futures::task::ArcWake for OwnedByWaker<F> {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        drop(arc_self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// Polls `future` once with a waker that owns it, then lets go of every
/// other reference: from then on the waker it registered (if it is pending)
/// is its only owner, and whoever wakes it drops it inside `wake()`. True if
/// it was pending.
pub(crate) fn leave_to_its_waker<F: Future + Unpin + Send + 'static>(future: F) -> bool {
    let owner = Arc::new(OwnedByWaker(Mutex::new(Some(future))));
    let waker = futures::task::waker(Arc::clone(&owner));
    let mut guard = owner.0.lock().unwrap_or_else(|e| e.into_inner());
    let pending =
        guard.as_mut().is_some_and(|future| Pin::new(future).poll(&mut Context::from_waker(&waker)).is_pending());
    drop(guard);
    pending
}
