//! A thread that sets a table's filter bits while the table is encoded.
//!
//! A flush knows how many keys its table holds at most, so the filter can be
//! sized before the first key (`FilterBits`). Setting a million keys' bits
//! (7 probes each, scattered over 1.25 MiB) takes 10-14 ms on the test VM,
//! about a tenth of the flush. On the flush thread that time is spent after
//! the last data block, with the device idle; when encoding is slower than
//! the device, the writer never waits for a write either, so there is no
//! idle moment to hide it in. On a thread of its own it runs beside the
//! encoding, a batch of key hashes per staged buffer, and its bitmap stays in
//! that core's cache instead of evicting the encoder's.

use futures_channel::oneshot;
use std::sync::mpsc;

use super::filter::FilterBits;

/// The thread filling one table's filter; see the module doc.
pub(crate) struct FilterThread {
    batches: mpsc::Sender<Vec<u64>>,
    /// Batches the thread is done with, to fill again: a new vector per batch
    /// came from fresh pages (a 1M-key flush sends about 1700 batches of 70
    /// KiB), and its page faults were in the flush thread's profile.
    done_batches: mpsc::Receiver<Vec<u64>>,
    filled: oneshot::Receiver<FilterBits>,
}

impl FilterThread {
    /// Starts a thread that adds the hash batches it is sent to `bits`.
    pub(crate) fn spawn(bits: FilterBits) -> std::io::Result<FilterThread> {
        FilterThread::start(bits, false)
    }

    /// [`spawn`](Self::spawn); with `inject_panic` (tests only) the thread
    /// panics before it takes its first batch.
    fn start(mut bits: FilterBits, inject_panic: bool) -> std::io::Result<FilterThread> {
        let (batches, received) = mpsc::channel::<Vec<u64>>();
        let (return_batch, done_batches) = mpsc::channel::<Vec<u64>>();
        let (done, filled) = oneshot::channel();
        std::thread::Builder::new().name("ringdb-flush-filter".into()).spawn(move || {
            #[cfg(test)]
            assert!(!inject_panic, "injected panic");
            #[cfg(not(test))]
            let _ = inject_panic;
            for batch in received {
                bits.add_hashes(&batch);
                // The writer may be gone (it failed): the batch is then dropped here.
                let _ = return_batch.send(batch);
            }
            // The writer may have failed and gone: nobody to tell.
            let _ = done.send(bits);
        })?;
        Ok(FilterThread { batches, done_batches, filled })
    }

    /// Hands over the hashes of more keys.
    pub(crate) fn send(&self, hashes: Vec<u64>) {
        // If the thread is gone (it panicked), `finish` reports it.
        let _ = self.batches.send(hashes);
    }

    /// An empty batch to fill: one the thread is done with, else a new one
    /// of `capacity`.
    pub(crate) fn empty_batch(&self, capacity: usize) -> Vec<u64> {
        self.done_batches.try_recv().unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// The filter with every batch sent; `None` if the thread stopped early
    /// (a bug: it panicked).
    pub(crate) async fn finish(self) -> Option<FilterBits> {
        let FilterThread { batches, filled, .. } = self;
        // The thread's loop ends once it has taken every batch sent.
        drop(batches);
        filled.await.ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sst::filter::BloomBuilder;

    #[test]
    fn a_filter_filled_on_its_thread_equals_one_filled_here() {
        let keys: Vec<Vec<u8>> = (0..20_000u32).map(|k| format!("key-{k:08}").into_bytes()).collect();
        let mut here = FilterBits::new(keys.len(), 10, Vec::new());
        let mut all = BloomBuilder::new(10);
        for key in &keys {
            all.add_key(key);
        }
        here.add_hashes(all.hashes());
        let thread = FilterThread::spawn(FilterBits::new(keys.len(), 10, Vec::new())).unwrap();
        for chunk in all.hashes().chunks(777) {
            thread.send(chunk.to_vec());
        }
        let filled = futures::executor::block_on(thread.finish()).expect("the thread finishes");
        assert_eq!(filled.finish(), here.finish());
    }

    #[test]
    fn batches_come_back_from_the_thread_to_be_filled_again() {
        let thread = FilterThread::spawn(FilterBits::new(1000, 10, Vec::new())).unwrap();
        let batch: Vec<u64> = (0..500).collect();
        let address = batch.as_ptr();
        thread.send(batch);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let again = loop {
            let batch = thread.empty_batch(0);
            if batch.capacity() > 0 || std::time::Instant::now() > deadline {
                break batch;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(again.as_ptr(), address, "the thread hands back the batch it was sent");
        // With nothing to hand back, a new batch of the asked capacity.
        assert!(thread.empty_batch(64).capacity() >= 64);
        assert!(futures::executor::block_on(thread.finish()).is_some());
    }

    #[test]
    fn a_filter_thread_that_panics_is_reported_not_waited_for() {
        let thread = FilterThread::start(FilterBits::new(100, 10, Vec::new()), true).unwrap();
        thread.send(vec![1, 2, 3]);
        assert!(futures::executor::block_on(thread.finish()).is_none());
    }
}
