//! Starting an operation now and awaiting it later.
//!
//! A flush submits a table write and goes on encoding; table open starts its
//! filter read before it reads the index; read-ahead starts the next chunk.
//! Each polls the operation's future once, with a waker that does nothing,
//! and awaits it later. That is fine while an in-flight slot is free. When
//! all `queue_depth` slots are taken, a future polled that way would join the
//! queue for a slot (the semaphore's listener list) with nobody to poll it
//! when its turn comes: the slot released for it would sit unclaimed, the
//! next release would go to the same unpolled listener (the semaphore
//! notifies one listener that has not been notified yet, and this one has),
//! and every other waiter, the flush's own next write included, would wait
//! for good. So while [`poll_once`] polls, [`Io::submit`](super::Io) takes a
//! slot only if one is free and otherwise returns `Pending` without queueing;
//! the operation queues when it is awaited for real.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

thread_local! {
    static POLLING_ONCE: Cell<bool> = const { Cell::new(false) };
}

/// Polls `future` once, with a waker that does nothing; `Some` if it
/// finished. An operation it starts is submitted now if an in-flight slot is
/// free; otherwise it waits, without holding a place in line, until the
/// future is polled again by a real executor.
pub(crate) fn poll_once<T>(future: &mut Pin<Box<dyn Future<Output = T> + Send + '_>>) -> Option<T> {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            POLLING_ONCE.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(POLLING_ONCE.with(|flag| flag.replace(true)));
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

/// Whether the current poll comes from [`poll_once`].
pub(super) fn polling_once() -> bool {
    POLLING_ONCE.with(Cell::get)
}

/// Pending once, then ready: where an operation that found no free slot
/// under [`poll_once`] waits for its next, real poll.
pub(super) struct NextPoll(bool);

impl NextPoll {
    pub(super) fn new() -> NextPoll {
        NextPoll(false)
    }
}

impl Future for NextPoll {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            // Only `poll_once`, whose waker does nothing, polls an operation
            // while `polling_once` is set; waking anyway makes this a plain
            // yield should anything else ever poll it (nothing may run an
            // executor inside a future polled by `poll_once`).
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Backend, DirectFile, Io, IoOptions};

    /// With every slot taken, a read started by `poll_once` and never polled
    /// again must not stand in the way of a read that waits for real.
    #[test]
    fn an_op_polled_once_does_not_hold_a_place_in_line() {
        for backend in [Backend::IoUring, Backend::Posix] {
            let dir = tempfile::tempdir().unwrap();
            let io = Io::new(IoOptions { backend, queue_depth: 1, ..IoOptions::default() }).unwrap();
            let file = futures::executor::block_on(async {
                let file = DirectFile::create(&io, dir.path().join("f")).await.unwrap();
                let mut buf = file.alloc_buf(4096);
                buf.extend_from_slice(&[7u8; 4096]);
                file.write_at(buf, 0).await.unwrap();
                file
            });
            let file = std::sync::Arc::new(file);
            let held = io.inner.permits.try_acquire_arc().expect("the only slot");
            let mut started: Pin<Box<dyn Future<Output = _> + Send + '_>> =
                Box::pin(file.read_at(file.alloc_buf(4096), 0, 4096));
            assert!(poll_once(&mut started).is_none(), "no slot is free");
            let (done, finished) = std::sync::mpsc::channel();
            // Detached: if the slot never reaches it, the test fails instead of hanging.
            let reader = std::sync::Arc::clone(&file);
            std::thread::spawn(move || {
                let read = futures::executor::block_on(reader.read_at(reader.alloc_buf(4096), 0, 4096));
                let _ = done.send(read.map(|buf| buf.len()));
            });
            // The waiting read has queued for the slot by now (or queues later: either way it gets it).
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
            let read = finished.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(read.expect("the released slot went to the read that waits for it").unwrap(), 4096);
            // Polled for real, the first read gets its slot too.
            assert_eq!(futures::executor::block_on(started).unwrap().len(), 4096, "{backend:?}");
        }
    }
}
