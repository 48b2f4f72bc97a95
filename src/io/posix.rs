//! The portable backend: pread/pwrite/fdatasync on engine threads.
//!
//! Used when io_uring cannot be set up (old kernel, seccomp, sysctl
//! `kernel.io_uring_disabled`) or when forced. Same API and semantics as the
//! ring: ops are queued, a bounded set of worker threads runs them, and each
//! op keeps its buffer until it is done. What it costs: one blocking syscall
//! per op and per thread, so the queue depth reaching the device is the
//! number of worker threads, not the number of ops in flight.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::op::{IoStatsInner, Op, OpKind, Submission};

struct Queue {
    pending: VecDeque<Submission>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to the worker threads.
pub(crate) struct PosixDriver {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl PosixDriver {
    pub(crate) fn start(threads: usize, stats: Arc<IoStatsInner>) -> io::Result<PosixDriver> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { pending: VecDeque::new(), shutdown: false }),
            ready: Condvar::new(),
        });
        let mut driver = PosixDriver { shared, threads: Vec::new() };
        for index in 0..threads.max(1) {
            let shared = Arc::clone(&driver.shared);
            let stats = Arc::clone(&stats);
            let thread = std::thread::Builder::new().name(format!("ringdb-io-posix-{index}")).spawn(move || {
                // Like the ring thread: every operation passes through here.
                super::request_short_slices();
                super::mark_engine_thread();
                worker(&shared, &stats)
            });
            match thread {
                Ok(thread) => driver.threads.push(thread),
                Err(e) => {
                    driver.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(driver)
    }

    pub(crate) fn submit(&self, submission: Submission) {
        self.shared.lock().pending.push_back(submission);
        self.shared.ready.notify_one();
    }

    /// Runs everything queued, then joins the workers.
    pub(crate) fn shutdown(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.ready.notify_all();
        let me = std::thread::current().id();
        for thread in self.threads.drain(..) {
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

fn worker(shared: &Shared, stats: &IoStatsInner) {
    loop {
        let submission = {
            let mut queue = shared.lock();
            loop {
                if let Some(submission) = queue.pending.pop_front() {
                    break submission;
                }
                if queue.shutdown {
                    return;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut submission = submission;
        // A panic here is a broken invariant (an assert on a request). The
        // syscall has returned, so dropping the op frees nothing the kernel
        // still uses; its future fails and this worker keeps serving the queue.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(&mut submission.op)));
        if let Ok((result, sync_result)) = outcome {
            submission.finish(result, sync_result, stats);
        }
    }
}

/// Retries a syscall interrupted by a signal, as the ring backend resubmits on EINTR.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn execute(op: &mut Op) -> (io::Result<usize>, Option<io::Result<()>>) {
    op.assert_aligned();
    let file = &op.file.file;
    match &mut op.kind {
        OpKind::Read { buf, start, len, offset } => {
            let target = &mut buf.as_full_mut_slice()[*start..*start + *len];
            (retry(|| file.read_at(target, *offset)), None)
        }
        OpKind::Write { buf, start, len, offset, sync_after } => {
            let source = &buf.as_full_mut_slice()[*start..*start + *len];
            let result = retry(|| file.write_at(source, *offset));
            let sync_result = sync_after.then(|| match &result {
                // Same rule as an io_uring link: the sync runs only after a complete write.
                Ok(written) if *written == *len => retry(|| file.sync_data()),
                _ => Err(io::Error::from_raw_os_error(libc::ECANCELED)),
            });
            (result, sync_result)
        }
        OpKind::Sync { data_only } => {
            let result = if *data_only { retry(|| file.sync_data()) } else { retry(|| file.sync_all()) };
            (result.map(|()| 0), None)
        }
        OpKind::Allocate { offset, len } => {
            let result = retry(|| {
                // SAFETY: fallocate takes no pointers; the fd is open for the call.
                let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, *offset as i64, *len as i64) };
                if rc == 0 { Ok(0) } else { Err(io::Error::last_os_error()) }
            });
            (result, None)
        }
    }
}
