//! A flush that encodes a large memtable in parts, in parallel.
//!
//! Encoding a memtable of small entries costs about as much time on one core
//! as writing the table takes on the test disk, so on a faster disk a flush
//! encoded on its own thread is bound by that one core (`Options::flush_threads`
//! says when this pays). Here the memtable is cut into key ranges
//! of about equal size (from the keys it sampled as they were inserted), and
//! the threads of an [`EncoderPool`] encode one range each into staging
//! buffers in memory, taking the next range when done. The flush thread
//! appends the finished parts in key order with the table writer, writing
//! their buffers as they are and shifting their block handles to where each
//! part lands; then it writes the filter, index and footer as usual.
//!
//! Encoders run at most [`WINDOW_EXTRA_PARTS`] parts ahead of the writer
//! (beyond one per thread), so a flush holds at most that many parts in memory
//! while the disk catches up. Each part starts on a multiple of
//! `TableWriter::part_align_bytes` (a page with the default block
//! alignment): the zero bytes before it are padding like that between blocks
//! (`docs/format/sst.md`).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::io::{BufPool, DirectFile};
use crate::key::SeqNo;
use crate::memtable::Memtable;
use crate::sst::encoder::{EncodedPart, PartEncoder};
use crate::sst::filter::FilterBits;
use crate::sst::table::{TableOptions, TableWriter, stream_pool};
use crate::version::FileMeta;
use crate::{Error, Result};

/// Parts that may be encoded and not yet written, beyond one per encoder thread.
const WINDOW_EXTRA_PARTS: usize = 2;

type Task = Box<dyn FnOnce() + Send>;

/// Engine threads that encode flush parts. They live as long as the flush
/// thread, so each keeps its buffers warm from one flush to the next.
pub(crate) struct EncoderPool {
    tasks: Option<mpsc::Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl EncoderPool {
    /// Starts `threads` encoder threads.
    pub(crate) fn new(threads: usize) -> std::io::Result<EncoderPool> {
        let (sender, receiver) = mpsc::channel::<Task>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut pool = EncoderPool { tasks: Some(sender), threads: Vec::new() };
        for i in 0..threads {
            let receiver = Arc::clone(&receiver);
            let thread = std::thread::Builder::new().name(format!("ringdb-flush-enc-{i}")).spawn(move || {
                loop {
                    let task = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(task) = task else { break };
                    // A panic is a bug in the encoder; the part never arrives,
                    // the writer sees its channel close and fails the flush.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
                }
            })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Number of encoder threads.
    pub(crate) fn threads(&self) -> usize {
        self.threads.len()
    }

    fn run(&self, task: Task) {
        let sender = self.tasks.as_ref().expect("the pool is open while it exists");
        sender.send(task).expect("encoder threads live as long as the pool");
    }
}

impl Drop for EncoderPool {
    fn drop(&mut self) {
        drop(self.tasks.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Hands out part numbers in order, at most `size` ahead of the parts written.
struct Window {
    state: Mutex<WindowState>,
    changed: Condvar,
    size: usize,
    parts: usize,
}

struct WindowState {
    next_part: usize,
    written_parts: usize,
    closed: bool,
}

impl Window {
    fn lock(&self) -> MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next part to encode, once the window has room; `None` when all
    /// are taken or the writer gave up.
    fn claim(&self) -> Option<usize> {
        let mut state = self.lock();
        loop {
            if state.closed || state.next_part >= self.parts {
                return None;
            }
            if state.next_part < state.written_parts + self.size {
                state.next_part += 1;
                return Some(state.next_part - 1);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn part_written(&self) {
        self.lock().written_parts += 1;
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// Closes the job's window when the writer is done or gives up, so no
/// encoder waits for room that will never come.
struct CloseOnDrop(Arc<Job>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.window.close();
    }
}

/// Closes the window if the thread panics while holding it.
struct CloseOnPanic<'a>(&'a Window);

impl Drop for CloseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close();
        }
    }
}

/// What an encoder thread sends the writer.
enum Message {
    Part(Box<Part>),
    /// The thread is done: the filter bits of the keys of its parts.
    Filter(FilterBits),
}

/// One encoded part.
struct Part {
    index: usize,
    encoded: EncodedPart,
    /// First and last internal key and the seq range, if the part has entries.
    bounds: Option<(Vec<u8>, Vec<u8>, SeqNo, SeqNo)>,
    encode_time: Duration,
}

/// What the encoder threads of one flush share.
struct Job {
    memtable: Arc<Memtable>,
    /// The user keys that cut the memtable into parts.
    bounds: Vec<Vec<u8>>,
    window: Window,
    options: TableOptions,
    part_align_bytes: usize,
    /// Where the parts' stream buffers come from.
    stream_bufs: BufPool,
}

/// Encodes part after part of the job's memtable until none is left, then
/// sends the filter bits of the keys it encoded.
fn encode_parts(job: &Job, messages: &futures_channel::mpsc::UnboundedSender<Message>) {
    // If this thread panics (a bug), its part never arrives: the other
    // encoders must stop too, so that every sender drops and the writer
    // fails the flush instead of waiting for it.
    let _stop_on_panic = CloseOnPanic(&job.window);
    let mut filter = FilterBits::new(job.memtable.len(), job.options.bloom_bits_per_key, Vec::new());
    while let Some(index) = job.window.claim() {
        #[cfg(test)]
        assert_ne!(index, tests::PANIC_IN_PART.load(std::sync::atomic::Ordering::Relaxed), "injected panic");
        let started = Instant::now();
        let start = index.checked_sub(1).map(|i| job.bounds[i].as_slice());
        let end = job.bounds.get(index).map(Vec::as_slice);
        let mut encoder = PartEncoder::new(job.options.clone(), job.stream_bufs.clone());
        let (mut first, mut last) = (None, None);
        let (mut smallest_seq, mut largest_seq) = (SeqNo::MAX, SeqNo::ZERO);
        let guard = crossbeam_epoch::pin();
        for entry in job.memtable.entries_between(start, end, &guard) {
            let key = entry.key();
            encoder.add(key.encoded(), entry.value());
            smallest_seq = smallest_seq.min(key.seq());
            largest_seq = largest_seq.max(key.seq());
            if first.is_none() {
                first = Some(entry.clone());
            }
            last = Some(entry);
        }
        let bounds = first.zip(last).map(|(first, last)| {
            (first.key().encoded().to_vec(), last.key().encoded().to_vec(), smallest_seq, largest_seq)
        });
        drop(guard);
        let encoded = encoder.finish(job.part_align_bytes, &mut filter);
        let part = Part { index, encoded, bounds, encode_time: started.elapsed() };
        if messages.unbounded_send(Message::Part(Box::new(part))).is_err() {
            return; // The writer gave up.
        }
    }
    let _ = messages.unbounded_send(Message::Filter(filter));
}

/// How many parts a flush of `memtable` is cut into: one per `part_bytes`
/// of its charged size.
pub(crate) fn part_count(memtable: &Memtable, part_bytes: usize) -> usize {
    memtable.approximate_size_bytes().div_ceil(part_bytes.max(1))
}

/// Writes `memtable` as a table into `file` (created, its space reserved),
/// encoding it in about `parts` parts on `pool`. Returns the table's
/// metadata (with `table_number`) and its encoding time: the parts' encoding
/// time divided by the encoder threads, plus the writer's own encoding (the
/// filter, index and footer).
pub(crate) async fn build_in_parts(
    file: &DirectFile,
    memtable: &Arc<Memtable>,
    table_number: u64,
    options: &TableOptions,
    pool: &EncoderPool,
    parts: usize,
) -> Result<(FileMeta, Duration)> {
    let mut writer = TableWriter::new(file, options.clone());
    // Each encoder thread fills its own copy of the filter as it goes, sized
    // up front by the entry count; the writer only ORs them.
    writer.filter_built_elsewhere();
    let bounds = memtable.split_keys(parts);
    let parts = bounds.len() + 1;
    let job = Arc::new(Job {
        memtable: Arc::clone(memtable),
        bounds,
        window: Window {
            state: Mutex::new(WindowState { next_part: 0, written_parts: 0, closed: false }),
            changed: Condvar::new(),
            size: pool.threads() + WINDOW_EXTRA_PARTS,
            parts,
        },
        options: options.clone(),
        part_align_bytes: writer.part_align_bytes(),
        stream_bufs: stream_pool(file, options),
    });
    let _close = CloseOnDrop(Arc::clone(&job));
    let (sender, mut receiver) = futures_channel::mpsc::unbounded();
    for _ in 0..pool.threads() {
        let (job, sender) = (Arc::clone(&job), sender.clone());
        pool.run(Box::new(move || encode_parts(&job, &sender)));
    }
    drop(sender);

    let mut arrived: BTreeMap<usize, Part> = BTreeMap::new();
    let mut filters = Vec::new();
    let (mut smallest_key, mut largest_key) = (None, Vec::new());
    let (mut smallest_seq, mut largest_seq) = (SeqNo::MAX, SeqNo::ZERO);
    let mut parts_encode = Duration::ZERO;
    // Parts in order; between them, whatever arrives.
    for index in 0..parts {
        let part = loop {
            if let Some(part) = arrived.remove(&index) {
                break part;
            }
            receive(&mut receiver, &mut arrived, &mut filters, file).await?;
        };
        parts_encode += part.encode_time;
        if let Some((first, last, low, high)) = part.bounds {
            smallest_key.get_or_insert(first);
            largest_key = last;
            smallest_seq = smallest_seq.min(low);
            largest_seq = largest_seq.max(high);
        }
        writer.append_part(part.encoded).await?;
        job.window.part_written();
    }
    // Then every thread's filter bits (they come once its last part is done).
    while filters.len() < pool.threads() {
        receive(&mut receiver, &mut arrived, &mut filters, file).await?;
    }
    let waited_before_finish = writer.io_wait();
    let finishing = Instant::now();
    let mut filters = filters.into_iter();
    let mut filter = filters.next().expect("one filter per encoder thread");
    for other in filters {
        filter.merge(&other);
    }
    let info = writer.finish_with_filter(filter.finish()).await?;
    let finish_encode = finishing.elapsed().saturating_sub(info.io_wait - waited_before_finish);
    let parts_encode = parts_encode / pool.threads().max(1) as u32;
    let meta = FileMeta {
        level: 0,
        file_number: table_number,
        size_bytes: info.size_bytes,
        smallest_seq,
        largest_seq,
        smallest_key: smallest_key.expect("frozen memtables are never empty"),
        largest_key,
    };
    Ok((meta, parts_encode + finish_encode))
}

/// Takes the next message from the encoder threads.
async fn receive(
    receiver: &mut futures_channel::mpsc::UnboundedReceiver<Message>,
    arrived: &mut BTreeMap<usize, Part>,
    filters: &mut Vec<FilterBits>,
    file: &DirectFile,
) -> Result<()> {
    match receiver.next().await {
        Some(Message::Part(part)) => {
            arrived.insert(part.index, *part);
        }
        Some(Message::Filter(filter)) => filters.push(filter),
        None => return Err(encoder_stopped(file)),
    }
    Ok(())
}

/// The error of a flush whose encoder thread stopped (a bug: it panicked).
fn encoder_stopped(file: &DirectFile) -> Error {
    Error::Io {
        op: crate::IoOp::Setup,
        path: file.path().to_path_buf(),
        offset: None,
        source: std::io::Error::other("a flush encoder thread stopped before its work was done"),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::io::{Io, IoOptions};
    use crate::key::ValueKind;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The part whose encoder panics (a stand-in for a bug); `usize::MAX`: none.
    pub(crate) static PANIC_IN_PART: AtomicUsize = AtomicUsize::new(usize::MAX);

    #[test]
    fn an_encoder_that_panics_fails_the_flush_and_the_pool_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let (done, outcome) = mpsc::channel();
        let path = dir.path().to_path_buf();
        // On a thread of its own, so that a hang fails the test instead of stalling it.
        std::thread::spawn(move || {
            let io = Io::new(IoOptions::default()).unwrap();
            let memtable = Arc::new(Memtable::with_sample_interval(1024));
            for i in 0..5000u64 {
                let key = format!("key-{i:06}");
                memtable.insert(key.as_bytes(), SeqNo(i + 1), ValueKind::Put, Bytes::from(vec![7u8; 100]));
            }
            let pool = EncoderPool::new(2).unwrap();
            let options = TableOptions::default();
            let flush = |n: u64| {
                let (io, memtable, pool, options, path) = (&io, &memtable, &pool, &options, &path);
                futures::executor::block_on(async move {
                    let file = DirectFile::create(io, &path.join(format!("{n}.sst"))).await.unwrap();
                    build_in_parts(&file, memtable, n, options, pool, 8).await.map(|(meta, _)| meta)
                })
            };
            let healthy = flush(1).unwrap();
            PANIC_IN_PART.store(3, Ordering::Relaxed);
            let failed = flush(2);
            PANIC_IN_PART.store(usize::MAX, Ordering::Relaxed);
            let after = flush(3).unwrap();
            done.send((healthy, failed.map(|_| ()), after)).unwrap();
        });
        let (healthy, failed, after) = outcome.recv_timeout(std::time::Duration::from_secs(60)).expect("no hang");
        let error = failed.expect_err("a part was lost");
        assert!(error.to_string().contains("encoder thread stopped"), "{error}");
        assert_eq!((healthy.size_bytes, &healthy.smallest_key), (after.size_bytes, &after.smallest_key));
        assert_eq!((healthy.smallest_seq.0, healthy.largest_seq.0), (1, 5000));
    }
}
