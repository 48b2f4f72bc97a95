//! Memory for large I/O buffers on transparent huge pages.
//!
//! A transfer's buffer reaches the device as one segment per physically
//! contiguous run of memory: 64 segments for 256 KiB of scattered 4 KiB pages,
//! one from a 2 MiB huge page. On this project's VM the host's virtio backend
//! handles each segment separately, and the segment count decides the speed of
//! large transfers (`docs/io.md`, "Large buffers on huge pages"): io_bench's
//! 256 KiB and 1 MiB sequential reads and writes ran 3-6 times faster from
//! huge pages than from the heap.
//!
//! Buffers of [`MIN_BYTES`] up to one huge page share huge pages in 256 KiB
//! slots (a 1 MiB buffer takes 4 of a page's 8), so the rounding costs at most
//! 256 KiB less one byte per buffer. A larger buffer gets a mapping of its own,
//! rounded up to whole huge pages. A page is unmapped when its last slot is
//! freed. Each mapping is advised (`MADV_HUGEPAGE`) before anything touches
//! it, which is what lets the kernel back it with a huge page where THP is
//! `always` or `madvise`; elsewhere it stays on 4 KiB pages and works the same.

use std::ptr::NonNull;
use std::sync::Mutex;

/// Buffers at least this large come from here.
pub(crate) const MIN_BYTES: usize = SLOT_BYTES;
/// The unit a huge page is shared in; also the alignment of every buffer from here.
pub(crate) const SLOT_BYTES: usize = 256 << 10;
/// The size of an x86-64 (and most arm64) transparent huge page.
pub(crate) const HUGE_PAGE_BYTES: usize = 2 << 20;
const SLOTS_PER_PAGE: usize = HUGE_PAGE_BYTES / SLOT_BYTES;

/// A huge page shared by buffers of up to [`HUGE_PAGE_BYTES`].
struct SharedPage {
    base: usize,
    /// Bit i: slot i belongs to a live buffer.
    used: u8,
    /// Bit i: slot i has been handed out before, so it holds old bytes.
    touched: u8,
}

/// The shared pages of a process's large buffers.
pub(crate) static ARENA: HugeArena = HugeArena::new();

/// Huge pages shared by buffers, with at least one live buffer each.
pub(crate) struct HugeArena {
    pages: Mutex<Vec<SharedPage>>,
    /// Bytes this arena has given back to the kernel, for tests to check
    /// what was unmapped.
    #[cfg(test)]
    unmapped_bytes: std::sync::atomic::AtomicUsize,
}

/// Memory for one buffer. Freed on drop.
pub(crate) struct HugeMemory {
    ptr: NonNull<u8>,
    /// Bytes reserved: whole slots, or whole huge pages for a mapping of its own.
    reserved_bytes: usize,
    arena: &'static HugeArena,
}

// SAFETY: HugeMemory uniquely owns its range of memory; moving the owner
// between threads is as safe as moving a Box<[u8]>.
unsafe impl Send for HugeMemory {}
// SAFETY: &HugeMemory gives no access to the memory; the owner (RawBuf) decides.
unsafe impl Sync for HugeMemory {}

impl HugeArena {
    const fn new() -> HugeArena {
        HugeArena {
            pages: Mutex::new(Vec::new()),
            #[cfg(test)]
            unmapped_bytes: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn pages(&self) -> std::sync::MutexGuard<'_, Vec<SharedPage>> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unmaps `bytes` at `addr`, memory this arena handed out.
    fn unmap(&self, addr: usize, bytes: usize) {
        #[cfg(test)]
        self.unmapped_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        unmap(addr, bytes);
    }

    /// Zeroed memory of at least `bytes` (at least [`MIN_BYTES`]), aligned to
    /// [`SLOT_BYTES`]. None if the kernel refuses a mapping: the caller then
    /// allocates from the heap.
    pub(crate) fn zeroed(&'static self, bytes: usize) -> Option<HugeMemory> {
        assert!(bytes >= MIN_BYTES, "{bytes} bytes is below the huge-buffer size");
        if bytes > HUGE_PAGE_BYTES {
            // No size this large can be mapped anyway: the heap path reports it.
            let reserved_bytes = bytes.checked_next_multiple_of(HUGE_PAGE_BYTES)?;
            // A fresh anonymous mapping reads as zeroes.
            let ptr = map_huge_pages(reserved_bytes)?;
            return Some(HugeMemory { ptr, reserved_bytes, arena: self });
        }
        let slots = bytes.div_ceil(SLOT_BYTES);
        let mask = slot_mask(slots);
        let (addr, stale) = {
            let mut pages = self.pages();
            let found = pages.iter_mut().find_map(|page| free_run(page.used, mask).map(|shift| (page, shift)));
            let (page, shift) = match found {
                Some(found) => found,
                None => {
                    let base = map_huge_pages(HUGE_PAGE_BYTES)?.as_ptr() as usize;
                    pages.push(SharedPage { base, used: 0, touched: 0 });
                    (pages.last_mut().expect("just pushed"), 0)
                }
            };
            let run = mask << shift;
            page.used |= run;
            let stale = page.touched & run != 0;
            page.touched |= run;
            (page.base + shift as usize * SLOT_BYTES, stale)
        };
        let reserved_bytes = slots * SLOT_BYTES;
        let ptr = NonNull::new(addr as *mut u8).expect("a mapping is never at address 0");
        if stale {
            // SAFETY: the slots were just reserved for this buffer alone, and
            // lie inside a live mapping.
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, reserved_bytes) };
        }
        Some(HugeMemory { ptr, reserved_bytes, arena: self })
    }
}

impl HugeMemory {
    /// The start of the memory.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Drop for HugeMemory {
    fn drop(&mut self) {
        if self.reserved_bytes > HUGE_PAGE_BYTES {
            self.arena.unmap(self.ptr.as_ptr() as usize, self.reserved_bytes);
            return;
        }
        let addr = self.ptr.as_ptr() as usize;
        let base = addr & !(HUGE_PAGE_BYTES - 1);
        let run = slot_mask(self.reserved_bytes / SLOT_BYTES) << ((addr - base) / SLOT_BYTES);
        let emptied = {
            let mut pages = self.arena.pages();
            let at = pages.iter().position(|page| page.base == base).expect("a huge buffer's page is registered");
            let page = &mut pages[at];
            assert_eq!(page.used & run, run, "huge buffer slots freed twice");
            page.used &= !run;
            (page.used == 0).then(|| pages.swap_remove(at))
        };
        if let Some(page) = emptied {
            self.arena.unmap(page.base, HUGE_PAGE_BYTES);
        }
    }
}

/// The mask of `slots` consecutive slots starting at slot 0.
fn slot_mask(slots: usize) -> u8 {
    assert!((1..=SLOTS_PER_PAGE).contains(&slots), "{slots} slots");
    (((1u16 << slots) - 1) & 0xff) as u8
}

/// The lowest shift at which `mask` fits in the free slots of `used`.
fn free_run(used: u8, mask: u8) -> Option<u32> {
    let slots = mask.count_ones();
    (0..=SLOTS_PER_PAGE as u32 - slots).find(|shift| used & (mask << shift) == 0)
}

/// Maps `bytes` (a multiple of [`HUGE_PAGE_BYTES`]) on a huge-page boundary
/// and advises huge pages for it, before anything touches it.
fn map_huge_pages(bytes: usize) -> Option<NonNull<u8>> {
    debug_assert!(bytes.is_multiple_of(HUGE_PAGE_BYTES));
    // Over-reserve by one huge page, then trim, to get the alignment.
    let reserve_bytes = bytes.checked_add(HUGE_PAGE_BYTES)?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return None;
    }
    let mapped_at = mapped as usize;
    let start = mapped_at.next_multiple_of(HUGE_PAGE_BYTES);
    let head_bytes = start - mapped_at;
    let tail_bytes = reserve_bytes - head_bytes - bytes;
    if head_bytes > 0 {
        unmap(mapped_at, head_bytes);
    }
    if tail_bytes > 0 {
        unmap(start + bytes, tail_bytes);
    }
    // SAFETY: advice on our own fresh mapping. It fails only where the kernel
    // has no THP, which leaves the memory on 4 KiB pages, still usable.
    unsafe { libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
    NonNull::new(start as *mut u8)
}

/// Unmaps a range. munmap can fail only for want of kernel memory (splitting a
/// mapping past `vm.max_map_count`); the range then stays mapped, unused, which
/// is better than a panic in a buffer's drop on the ring thread.
fn unmap(addr: usize, bytes: usize) {
    // SAFETY: callers pass a range this module mapped and that nothing refers
    // to any more: the trimmed ends of a fresh mapping, a page whose last
    // buffer is gone, or a buffer's own mapping on its drop.
    let result = unsafe { libc::munmap(addr as *mut libc::c_void, bytes) };
    if result != 0 {
        tracing::warn!(
            "could not unmap {bytes} bytes of buffer memory at {addr:#x} ({}); they stay mapped, unused",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arena of the test's own, so that buffers of other tests running
    /// at the same time do not change its page count.
    fn arena() -> &'static HugeArena {
        Box::leak(Box::new(HugeArena::new()))
    }

    fn bytes_of(memory: &HugeMemory, len: usize) -> &[u8] {
        // SAFETY: the test reads at most the bytes it asked for, while `memory` lives.
        unsafe { std::slice::from_raw_parts(memory.ptr().as_ptr(), len) }
    }

    #[test]
    fn free_runs_are_found_lowest_first() {
        assert_eq!(free_run(0, slot_mask(8)), Some(0));
        assert_eq!(free_run(0b0000_0001, slot_mask(8)), None);
        assert_eq!(free_run(0b0000_0011, slot_mask(4)), Some(2));
        assert_eq!(free_run(0b0011_0011, slot_mask(2)), Some(2));
        assert_eq!(free_run(0b0011_0011, slot_mask(3)), None);
        assert_eq!(free_run(0b0111_1111, slot_mask(1)), Some(7));
    }

    #[test]
    fn buffers_share_pages_are_aligned_and_zeroed_and_pages_go_when_empty() {
        let arena = arena();
        let live_pages = || arena.pages().len();
        assert_eq!(live_pages(), 0);
        let a = arena.zeroed(1 << 20).unwrap();
        let b = arena.zeroed(700 << 10).unwrap();
        let c = arena.zeroed(SLOT_BYTES).unwrap();
        // 4 + 3 + 1 slots: one page holds all three.
        assert_eq!(live_pages(), 1);
        for memory in [&a, &b, &c] {
            assert_eq!(memory.ptr().as_ptr() as usize % SLOT_BYTES, 0);
        }
        let base = a.ptr().as_ptr() as usize & !(HUGE_PAGE_BYTES - 1);
        assert_eq!(b.ptr().as_ptr() as usize & !(HUGE_PAGE_BYTES - 1), base);
        assert_eq!(c.ptr().as_ptr() as usize & !(HUGE_PAGE_BYTES - 1), base);
        // A fourth buffer does not fit: a second page.
        let d = arena.zeroed(2 << 20).unwrap();
        assert_eq!(live_pages(), 2);

        // Dirty a slot, free it, and get it back: zeroed again.
        // SAFETY: `b` owns these bytes.
        unsafe { std::ptr::write_bytes(b.ptr().as_ptr(), 0xab, 700 << 10) };
        let b_at = b.ptr();
        drop(b);
        assert_eq!(live_pages(), 2, "the page still holds a and c");
        let b2 = arena.zeroed(600 << 10).unwrap();
        assert_eq!(b2.ptr(), b_at, "the freed run is reused");
        assert!(bytes_of(&b2, 600 << 10).iter().all(|byte| *byte == 0));

        let unmapped = || arena.unmapped_bytes.load(std::sync::atomic::Ordering::Relaxed);
        drop((a, b2));
        assert_eq!(unmapped(), 0, "c still holds the first page");
        drop(c);
        assert_eq!(live_pages(), 1, "the first page is unmapped once empty");
        assert_eq!(unmapped(), HUGE_PAGE_BYTES);
        drop(d);
        assert_eq!(live_pages(), 0);
        assert_eq!(unmapped(), 2 * HUGE_PAGE_BYTES);
    }

    #[test]
    fn a_run_over_used_and_fresh_slots_is_zeroed_whole() {
        let arena = arena();
        let holder = arena.zeroed(SLOT_BYTES).unwrap();
        let used = arena.zeroed(SLOT_BYTES).unwrap();
        let used_at = used.ptr();
        // SAFETY: `used` owns these bytes.
        unsafe { std::ptr::write_bytes(used_at.as_ptr(), 0xcd, SLOT_BYTES) };
        drop(used);
        // Slot 1 (dirty) and slot 2 (never handed out).
        let run = arena.zeroed(2 * SLOT_BYTES).unwrap();
        assert_eq!(run.ptr(), used_at, "the run starts at the freed slot");
        assert!(bytes_of(&run, 2 * SLOT_BYTES).iter().all(|byte| *byte == 0));
        drop((holder, run));
        assert_eq!(arena.pages().len(), 0);
    }

    #[test]
    fn larger_buffers_get_a_mapping_of_their_own() {
        let arena = arena();
        let memory = arena.zeroed(5 << 20).unwrap();
        assert_eq!(memory.reserved_bytes, 6 << 20);
        assert_eq!(memory.ptr().as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        assert!(bytes_of(&memory, 5 << 20).iter().all(|byte| *byte == 0));
        assert_eq!(arena.pages().len(), 0, "no shared page is involved");
        drop(memory);
        assert_eq!(arena.unmapped_bytes.load(std::sync::atomic::Ordering::Relaxed), 6 << 20);
    }

    #[test]
    fn sizes_past_what_can_be_mapped_are_refused_not_wrapped() {
        assert!(arena().zeroed(usize::MAX - 511).is_none());
        assert!(arena().zeroed(usize::MAX - HUGE_PAGE_BYTES + 1).is_none());
    }

    #[test]
    #[should_panic(expected = "below the huge-buffer size")]
    fn small_sizes_are_refused() {
        let _ = arena().zeroed(SLOT_BYTES - 1);
    }
}
