//! Discovering a file's direct-I/O alignment.
//!
//! Order of preference: `statx(STATX_DIOALIGN)` (Linux 6.1+, answered by the
//! filesystem itself, so it accounts for dm/md stacking and for filesystems
//! that cannot do direct I/O at all), then the logical block size of the block
//! device in sysfs, then 4096, which every Linux block device accepts. The
//! result is never below 512, the smallest logical block size there is.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::buf::MIN_ALIGNMENT;

/// The alignment used when nothing better can be discovered.
pub const DEFAULT_ALIGNMENT: usize = 4096;

/// Where an alignment figure came from (reported by `io_bench` and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignmentSource {
    /// `statx` reported `STATX_DIOALIGN`.
    Statx,
    /// The block device's `queue/logical_block_size` in sysfs.
    Sysfs,
    /// Nothing answered; the safe default was used.
    Default,
}

/// Discovers the direct-I/O alignment of an open file: `(alignment_bytes, source)`.
pub fn discover(fd: BorrowedFd<'_>) -> (usize, AlignmentSource) {
    let (dio_align, dev) = statx_dio(fd);
    if let Some(align) = dio_align {
        return (normalize(align), AlignmentSource::Statx);
    }
    // statx may be missing (old kernel, seccomp); fstat still names the device.
    let dev = dev.or_else(|| {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        let dev = std::os::unix::fs::MetadataExt::dev(&file.metadata().ok()?);
        Some((libc::major(dev), libc::minor(dev)))
    });
    if let Some((major, minor)) = dev
        && let Some(align) = sysfs_logical_block_size(major, minor)
    {
        return (normalize(align), AlignmentSource::Sysfs);
    }
    (DEFAULT_ALIGNMENT, AlignmentSource::Default)
}

fn normalize(align: usize) -> usize {
    align.max(MIN_ALIGNMENT).next_power_of_two()
}

/// Returns (DIO alignment if reported, (dev major, dev minor)).
fn statx_dio(fd: BorrowedFd<'_>) -> (Option<usize>, Option<(u32, u32)>) {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the borrow, the path is a
    // valid NUL-terminated empty string (AT_EMPTY_PATH: stat the fd itself),
    // and stx is a valid, writable statx struct.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS | libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 {
        return (None, None);
    }
    let dev = Some((stx.stx_dev_major, stx.stx_dev_minor));
    if stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align > 0 {
        let align = (stx.stx_dio_offset_align as usize).max(stx.stx_dio_mem_align as usize);
        (Some(align), dev)
    } else {
        (None, dev)
    }
}

fn sysfs_logical_block_size(major: u32, minor: u32) -> Option<usize> {
    // A partition has no queue/ of its own; its parent disk's applies.
    let base = format!("/sys/dev/block/{major}:{minor}");
    for candidate in [format!("{base}/queue/logical_block_size"), format!("{base}/../queue/logical_block_size")] {
        if let Ok(text) = std::fs::read_to_string(&candidate)
            && let Ok(size) = text.trim().parse::<usize>()
            && size > 0
        {
            return Some(size);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn discovers_a_power_of_two_at_least_512() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let (align, source) = discover(file.as_fd());
        assert!(align.is_power_of_two() && align >= 512, "{align} from {source:?}");
        assert!(align <= 64 * 1024, "implausible alignment {align}");
    }

    #[test]
    fn normalize_floors_and_rounds() {
        assert_eq!(normalize(1), 512);
        assert_eq!(normalize(512), 512);
        assert_eq!(normalize(3000), 4096);
    }
}
