//! Frees large structures on a thread of their own.
//!
//! A flushed memtable of a million entries takes tens of milliseconds to
//! free: a walk of its skiplist, a `Bytes` release per value and an allocator
//! free per node. Whoever drops its last reference would pay for that: the
//! flush thread, delaying the next flush, or a scan that still held it, on
//! the caller's executor thread. [`drop_in_background`] hands such a value to
//! the `ringdb-reclaim` thread instead, which drops what it is sent in order.

use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

type Garbage = Box<dyn Send>;

/// The reclaim thread's queue, started on first use; `None` if the thread
/// could not start (values are then dropped where they are).
fn queue() -> Option<&'static Sender<Garbage>> {
    static QUEUE: OnceLock<Option<Sender<Garbage>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = channel::<Garbage>();
            let spawned = std::thread::Builder::new().name("ringdb-reclaim".into()).spawn(move || {
                // Ends only with the process: the sender lives in a static.
                for garbage in receiver {
                    drop(garbage);
                }
            });
            match spawned {
                Ok(_) => Some(sender),
                Err(e) => {
                    tracing::warn!(error = %e, "ringdb: no reclaim thread; flushed memtables are freed where they are dropped");
                    None
                }
            }
        })
        .as_ref()
}

/// Drops `value` on the reclaim thread (or here, if it cannot run).
pub(crate) fn drop_in_background<T: Send + 'static>(value: T) {
    let Some(queue) = queue() else {
        return drop(value);
    };
    // A failed send hands the value back inside the error, dropped here.
    let _ = queue.send(Box::new(value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    /// Reports the name of the thread that drops it.
    struct Witness(std::sync::mpsc::SyncSender<Option<String>>);

    impl Drop for Witness {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().name().map(str::to_owned));
        }
    }

    #[test]
    fn values_are_dropped_on_the_reclaim_thread_in_order() {
        let (sender, dropped_on) = sync_channel(2);
        drop_in_background(Witness(sender.clone()));
        drop_in_background(Witness(sender));
        for _ in 0..2 {
            let name = dropped_on.recv_timeout(std::time::Duration::from_secs(10)).expect("dropped");
            assert_eq!(name.as_deref(), Some("ringdb-reclaim"));
        }
    }
}
