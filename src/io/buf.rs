//! Aligned buffers for O_DIRECT and a pool that recycles them.
//!
//! O_DIRECT needs the buffer address, the length and the file offset to be
//! multiples of the file's direct-I/O alignment. [`AlignedBuf`] makes the first
//! two part of the type: its memory is allocated with that alignment and its
//! capacity is rounded up to a multiple of it. The memory is always
//! initialised (zeroed when first allocated), so handing any part of it to the
//! kernel or to safe code never exposes uninitialised bytes.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::huge::{self, HugeMemory};

/// The smallest alignment any block device uses; also the floor for discovery.
pub const MIN_ALIGNMENT: usize = 512;

const PAGE_BYTES: usize = 4096;

/// One aligned allocation, from the heap or from huge pages. Owns its memory and frees it on drop.
struct RawBuf {
    ptr: NonNull<u8>,
    /// Usable bytes: a multiple of `io_align`.
    capacity_bytes: usize,
    backing: Backing,
    /// The alignment asked for; the address may be aligned further (pages).
    io_align: usize,
}

/// Where a buffer's memory comes from, and so how it is freed.
enum Backing {
    /// The global allocator, with this layout.
    Heap(Layout),
    /// Huge pages (`huge.rs`): buffers of [`huge::MIN_BYTES`] or more, so
    /// that a large transfer is a few physically contiguous segments.
    /// The memory is freed when it drops, with the buffer.
    Huge { _memory: HugeMemory },
}

// SAFETY: RawBuf is a uniquely owned allocation with no interior sharing;
// moving it between threads is as safe as moving a Box<[u8]>.
unsafe impl Send for RawBuf {}
// SAFETY: shared references only allow reads of initialised bytes.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    fn new(capacity_bytes: usize, align: usize) -> RawBuf {
        assert!(align.is_power_of_two() && align >= MIN_ALIGNMENT, "bad alignment {align}");
        let capacity_bytes = round_up(capacity_bytes.max(align), align);
        // As `Vec` does: no allocation may exceed `isize::MAX` bytes.
        assert!(capacity_bytes <= isize::MAX as usize, "capacity overflow: a buffer of {capacity_bytes} bytes");
        // A buffer of a page or more starts on a page boundary: the kernel then
        // pins one page per 4 KiB and builds one segment per page, instead of
        // straddling two pages per block (measured: +20% IOPS on 4 KiB reads).
        let mem_align = if capacity_bytes >= PAGE_BYTES { align.max(PAGE_BYTES) } else { align };
        if capacity_bytes >= huge::MIN_BYTES
            && align <= huge::SLOT_BYTES
            && let Some(memory) = huge::ARENA.zeroed(capacity_bytes)
        {
            let ptr = memory.ptr();
            return RawBuf { ptr, capacity_bytes, backing: Backing::Huge { _memory: memory }, io_align: align };
        }
        let layout = Layout::from_size_align(capacity_bytes, mem_align).expect("buffer layout");
        // SAFETY: layout has a non-zero size (at least `align` bytes).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else { std::alloc::handle_alloc_error(layout) };
        RawBuf { ptr, capacity_bytes, backing: Backing::Heap(layout), io_align: align }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        if let Backing::Heap(layout) = self.backing {
            // SAFETY: ptr was returned by alloc_zeroed with exactly this layout
            // and is freed only here, once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two).
///
/// # Panics
/// If the result does not fit in a `usize` (a buffer that large could not
/// be allocated anyway).
pub(crate) const fn round_up(value: usize, align: usize) -> usize {
    match value.checked_add(align - 1) {
        Some(sum) => sum & !(align - 1),
        None => panic!("capacity overflow: a buffer size rounds up past usize::MAX"),
    }
}

/// A buffer whose address and capacity are multiples of an alignment, ready for O_DIRECT.
///
/// Buffers of 256 KiB or more live on transparent huge pages where the kernel
/// grants them, so that a large transfer reaches the device in a few
/// physically contiguous segments (`docs/io.md`, "Large buffers on huge pages").
///
/// `len` counts the meaningful bytes (what a write sends, what a read filled);
/// `capacity` is the allocation. A buffer taken from a [`BufPool`] goes back to
/// it when dropped, wherever that happens: in the caller, in the ring thread
/// after the kernel completed an operation, or as the owner of [`Bytes`].
pub struct AlignedBuf {
    raw: Option<RawBuf>,
    len: usize,
    home: Option<Arc<PoolShared>>,
}

impl AlignedBuf {
    /// Allocates a zeroed buffer of at least `capacity_bytes`, rounded up to a multiple of `align`.
    ///
    /// # Panics
    /// If `align` is not a power of two of at least 512 bytes (a programming
    /// error), or, as `Vec::with_capacity` does, if the rounded capacity
    /// exceeds `isize::MAX` bytes.
    pub fn new(capacity_bytes: usize, align: usize) -> AlignedBuf {
        AlignedBuf { raw: Some(RawBuf::new(capacity_bytes, align)), len: 0, home: None }
    }

    fn raw(&self) -> &RawBuf {
        self.raw.as_ref().expect("AlignedBuf used after its memory was released")
    }

    /// The alignment asked for, in bytes: the address and the capacity are
    /// multiples of it, and [`pad_to_alignment`](Self::pad_to_alignment) pads to it.
    /// (Buffers of a page or more are also page-aligned in memory.)
    pub fn alignment(&self) -> usize {
        self.raw().io_align
    }

    /// The usable size in bytes (a multiple of [`alignment`](Self::alignment)).
    pub fn capacity(&self) -> usize {
        self.raw().capacity_bytes
    }

    /// The number of meaningful bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `len` is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the number of meaningful bytes. The bytes are whatever the buffer holds
    /// (zeroes for a new buffer, earlier contents for a pooled one).
    ///
    /// # Panics
    /// If `len_bytes` exceeds the capacity.
    pub fn set_len(&mut self, len_bytes: usize) {
        assert!(len_bytes <= self.capacity(), "len {len_bytes} > capacity {}", self.capacity());
        self.len = len_bytes;
    }

    /// Sets `len` to zero.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes that still fit after `len`.
    pub fn remaining(&self) -> usize {
        self.capacity() - self.len
    }

    /// Appends as much of `data` as fits and returns how many bytes were taken.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let taken = data.len().min(self.remaining());
        let start = self.len;
        self.as_full_mut_slice()[start..start + taken].copy_from_slice(&data[..taken]);
        self.len += taken;
        taken
    }

    /// Zero-fills from `len` up to the next multiple of the alignment and returns the new `len`.
    pub fn pad_to_alignment(&mut self) -> usize {
        let padded = round_up(self.len, self.alignment());
        let start = self.len;
        self.as_full_mut_slice()[start..padded].fill(0);
        self.len = padded;
        padded
    }

    /// The whole allocation, including bytes past `len`.
    pub fn as_full_mut_slice(&mut self) -> &mut [u8] {
        let raw = self.raw();
        let (ptr, size) = (raw.ptr.as_ptr(), raw.capacity_bytes);
        // SAFETY: the allocation is `size` initialised bytes owned by self, and
        // &mut self guarantees exclusive access for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(ptr, size) }
    }

    /// Turns the buffer into [`Bytes`] without copying; the buffer (or its pool slot)
    /// is released when the last `Bytes` referring to it is dropped.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }

    /// Raw pointer to the start of the allocation, for building kernel requests.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.raw().ptr.as_ptr()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let raw = self.raw();
        // SAFETY: the first `len <= size` bytes are initialised and owned by self;
        // the shared borrow of self keeps them alive and unaliased by writers.
        unsafe { std::slice::from_raw_parts(raw.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.as_full_mut_slice()[..len]
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("alignment", &self.alignment())
            .field("pooled", &self.home.is_some())
            .finish()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let (Some(raw), Some(home)) = (self.raw.take(), self.home.take()) {
            home.put(raw);
        }
    }
}

struct PoolShared {
    capacity_bytes: usize,
    align: usize,
    max_idle: usize,
    /// Idle buffers unused for longer are freed at the next `put`.
    idle_ttl: Option<Duration>,
    /// Oldest first; `get` takes the newest (its memory is the most likely
    /// to be cached), so the oldest age out.
    idle: Mutex<Vec<(RawBuf, Instant)>>,
}

impl PoolShared {
    fn put(&self, raw: RawBuf) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ttl) = self.idle_ttl {
            let expired = idle.iter().take_while(|(_, since)| now.duration_since(*since) > ttl).count();
            idle.drain(..expired);
        }
        if idle.len() < self.max_idle {
            idle.push((raw, now));
        }
        // else: raw drops here and its memory is freed.
    }
}

/// A pool of equally sized [`AlignedBuf`]s, so hot paths do not allocate per I/O.
///
/// Cloning the pool is cheap and shares it. Buffers return to the pool when
/// dropped; at most `max_idle` are kept, the rest are freed.
#[derive(Clone)]
pub struct BufPool {
    shared: Arc<PoolShared>,
}

impl BufPool {
    /// A pool of buffers of `capacity_bytes` (rounded up to `align`), keeping up to `max_idle` idle ones.
    ///
    /// # Panics
    /// If `align` is not a power of two of at least 512 bytes.
    pub fn new(capacity_bytes: usize, align: usize, max_idle: usize) -> BufPool {
        BufPool::build(capacity_bytes, align, max_idle, None)
    }

    /// Like [`new`](Self::new), but an idle buffer unused for longer than
    /// `idle_ttl` is freed when another buffer comes back: a burst may keep
    /// many buffers for reuse without holding them once it is over.
    pub fn with_idle_ttl(capacity_bytes: usize, align: usize, max_idle: usize, idle_ttl: Duration) -> BufPool {
        BufPool::build(capacity_bytes, align, max_idle, Some(idle_ttl))
    }

    fn build(capacity_bytes: usize, align: usize, max_idle: usize, idle_ttl: Option<Duration>) -> BufPool {
        assert!(align.is_power_of_two() && align >= MIN_ALIGNMENT, "bad alignment {align}");
        BufPool {
            shared: Arc::new(PoolShared {
                capacity_bytes: round_up(capacity_bytes.max(align), align),
                align,
                max_idle,
                idle_ttl,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Takes an idle buffer (contents unspecified, `len` 0) or allocates a zeroed one.
    pub fn get(&self) -> AlignedBuf {
        let reused = self.shared.idle.lock().unwrap_or_else(|e| e.into_inner()).pop().map(|(raw, _)| raw);
        let raw = reused.unwrap_or_else(|| RawBuf::new(self.shared.capacity_bytes, self.shared.align));
        AlignedBuf { raw: Some(raw), len: 0, home: Some(Arc::clone(&self.shared)) }
    }

    /// The capacity of every buffer in the pool, in bytes.
    pub fn buf_capacity_bytes(&self) -> usize {
        self.shared.capacity_bytes
    }

    /// The alignment of every buffer in the pool, in bytes.
    pub fn alignment(&self) -> usize {
        self.shared.align
    }

    /// How many idle buffers the pool holds right now.
    pub fn idle_count(&self) -> usize {
        self.shared.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufPool")
            .field("buf_capacity_bytes", &self.shared.capacity_bytes)
            .field("alignment", &self.shared.align)
            .field("idle", &self.idle_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_and_capacity_are_aligned() {
        for align in [512, 4096, 8192] {
            for cap in [1, 511, 512, 4095, 4097, 100_000] {
                let mut buf = AlignedBuf::new(cap, align);
                assert_eq!(buf.as_mut_ptr() as usize % align, 0);
                assert_eq!(buf.capacity() % align, 0);
                assert!(buf.capacity() >= cap);
                assert!(buf.as_full_mut_slice().iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn large_buffers_are_zeroed_aligned_and_keep_their_capacity() {
        for (cap, align) in [(256 << 10, 512), (1 << 20, 4096), ((1 << 20) + 512, 512), (3 << 20, 4096)] {
            let mut buf = AlignedBuf::new(cap, align);
            assert!(matches!(buf.raw().backing, Backing::Huge { .. }), "{cap} bytes should be on huge pages");
            assert_eq!(buf.as_mut_ptr() as usize % 4096, 0);
            assert_eq!(buf.capacity(), cap.next_multiple_of(align));
            assert!(buf.as_full_mut_slice().iter().all(|&b| b == 0));
        }
        // (That reused slots come back zeroed is checked on an arena of the
        // test's own in `io::huge`: here other tests share the process's.)
        // Smaller ones stay on the heap.
        assert!(matches!(AlignedBuf::new((256 << 10) - 4096, 4096).raw().backing, Backing::Heap(_)));
    }

    /// Where the kernel offers transparent huge pages for advised memory, a
    /// large buffer really is on one: `AnonHugePages` of its mapping in
    /// /proc/self/smaps counts it once the buffer has been touched.
    #[test]
    fn large_buffers_land_on_huge_pages_where_the_kernel_has_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if !(thp.contains("[always]") || thp.contains("[madvise]")) {
            eprintln!("skipped: transparent huge pages are off ({})", thp.trim());
            return;
        }
        let mut buf = AlignedBuf::new(2 << 20, 4096);
        buf.as_full_mut_slice().fill(1);
        let addr = buf.as_mut_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_mapping = false;
        let mut huge_kib = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
            {
                in_mapping = (start..end).contains(&addr);
            } else if in_mapping && let Some(kib) = line.strip_prefix("AnonHugePages:") {
                huge_kib = kib.trim().trim_end_matches(" kB").trim().parse::<u64>().ok();
            }
        }
        assert!(huge_kib.unwrap_or(0) >= 2048, "the buffer's mapping has {huge_kib:?} KiB of huge pages");
    }

    #[test]
    #[should_panic(expected = "capacity overflow")]
    fn a_size_that_rounds_past_usize_max_panics_as_vec_does() {
        let _ = AlignedBuf::new(usize::MAX, 512);
    }

    #[test]
    #[should_panic(expected = "capacity overflow")]
    fn a_size_past_isize_max_panics_as_vec_does() {
        // A multiple of the alignment: it rounds to itself, on the huge-page path.
        let _ = AlignedBuf::new(usize::MAX - 511, 512);
    }

    #[test]
    fn page_sized_buffers_are_page_aligned_but_pad_to_the_io_alignment() {
        let mut buf = AlignedBuf::new(4608, 512);
        assert_eq!(buf.as_mut_ptr() as usize % 4096, 0);
        assert_eq!((buf.alignment(), buf.capacity()), (512, 4608));
        buf.extend_from_slice(&[1u8; 4100]);
        assert_eq!(buf.pad_to_alignment(), 4608);
    }

    #[test]
    fn extend_and_pad() {
        let mut buf = AlignedBuf::new(1024, 512);
        assert_eq!(buf.extend_from_slice(b"hello"), 5);
        assert_eq!(&buf[..], b"hello");
        assert_eq!(buf.pad_to_alignment(), 512);
        assert_eq!(&buf[..5], b"hello");
        assert!(buf[5..].iter().all(|&b| b == 0));
        assert_eq!(buf.extend_from_slice(&[7u8; 1000]), 512);
        assert_eq!(buf.len(), 1024);
        assert_eq!(buf.remaining(), 0);
    }

    #[test]
    fn idle_buffers_past_their_ttl_are_freed_when_another_comes_back() {
        // A ttl nothing reaches: every returned buffer is kept, up to max_idle.
        let keeping = BufPool::with_idle_ttl(4096, 512, 3, Duration::from_secs(3600));
        let bufs: Vec<_> = (0..4).map(|_| keeping.get()).collect();
        drop(bufs);
        assert_eq!(keeping.idle_count(), 3);

        // Long enough that a descheduled test thread does not outlive it
        // between the first two drops.
        let aging = BufPool::with_idle_ttl(4096, 512, 8, Duration::from_millis(300));
        let (a, b, c) = (aging.get(), aging.get(), aging.get());
        drop((a, b));
        assert_eq!(aging.idle_count(), 2, "expiry is checked when a buffer comes back, not before");
        std::thread::sleep(Duration::from_millis(600));
        drop(c);
        assert_eq!(aging.idle_count(), 1, "the two old buffers were freed, the new one kept");
        // The newest comes out first.
        let mut again = aging.get();
        assert_eq!(aging.idle_count(), 0);
        assert_eq!(again.capacity(), 4096);
        assert!(again.as_full_mut_slice().len() == 4096);
    }

    #[test]
    fn pool_recycles_and_bounds_idle() {
        let pool = BufPool::new(4096, 4096, 2);
        let mut a = pool.get();
        let addr = a.as_mut_ptr() as usize;
        a.extend_from_slice(b"x");
        drop(a);
        assert_eq!(pool.idle_count(), 1);
        let mut b = pool.get();
        assert_eq!(b.as_mut_ptr() as usize, addr, "the idle buffer is reused");
        assert!(b.is_empty());
        let bufs: Vec<_> = (0..5).map(|_| pool.get()).collect();
        drop(bufs);
        drop(b);
        assert_eq!(pool.idle_count(), 2, "at most max_idle buffers are kept");
    }

    #[test]
    fn bytes_conversion_is_zero_copy_and_returns_to_pool() {
        let pool = BufPool::new(4096, 512, 4);
        let mut buf = pool.get();
        buf.extend_from_slice(b"abcdef");
        let addr = buf.as_ptr() as usize;
        let bytes = buf.into_bytes();
        assert_eq!(bytes.as_ptr() as usize, addr);
        let tail = bytes.slice(2..);
        drop(bytes);
        assert_eq!(pool.idle_count(), 0, "still referenced by a slice");
        assert_eq!(&tail[..], b"cdef");
        drop(tail);
        assert_eq!(pool.idle_count(), 1);
    }
}
