//! The fault injector makes chosen operations fail or fall short, and the I/O
//! layer reports or recovers from each as documented. Also covers the fallbacks
//! (io_uring setup failure, O_DIRECT refused), which are driven by injected faults.

mod common;

use common::{io_with, pattern};
use ringdb::io::{Backend, DirectFile, FaultAction, FaultInjector, FaultRule, IoOptions};
use ringdb::{Error, IoOp};

fn faulty() -> (ringdb::io::Io, FaultInjector) {
    let faults = FaultInjector::new();
    (io_with(IoOptions { faults: Some(faults.clone()), ..IoOptions::default() }), faults)
}

fn block(file: &DirectFile, len: usize, tag: u64) -> ringdb::io::AlignedBuf {
    let mut buf = file.alloc_buf(len);
    buf.extend_from_slice(&pattern(len, 0, tag));
    buf
}

#[test]
fn injected_errors_carry_op_path_offset_and_errno() {
    let dir = tempfile::tempdir().unwrap();
    let (io, faults) = faulty();
    futures::executor::block_on(async {
        let file = DirectFile::create(&io, dir.path().join("000001.wal")).await.unwrap();
        faults.add(FaultRule::new(FaultAction::Error(libc::ENOSPC)).op(IoOp::Write).path_contains("wal").times(1));
        let err = file.write_at(block(&file, 8192, 1), 8192).await.unwrap_err();
        match &err {
            Error::Io { op: IoOp::Write, path, offset: Some(8192), source } => {
                assert!(path.ends_with("000001.wal"));
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("000001.wal") && err.to_string().contains("8192"), "{err}");
        // times(1): the next write goes through.
        file.write_at(block(&file, 8192, 1), 8192).await.unwrap();

        faults.add(FaultRule::new(FaultAction::Error(libc::EIO)).op(IoOp::Read).times(1));
        let err = file.read_at(file.alloc_buf(4096), 8192, 4096).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert!(matches!(err, Error::Io { op: IoOp::Read, offset: Some(8192), .. }));

        faults.add(FaultRule::new(FaultAction::Error(libc::EIO)).op(IoOp::Sync).times(1));
        let err = file.sync_data().await.unwrap_err();
        assert!(matches!(err, Error::Io { op: IoOp::Sync, .. }), "{err}");
        file.sync_data().await.unwrap();

        faults.add(FaultRule::new(FaultAction::Error(libc::ENOSPC)).op(IoOp::Allocate).times(1));
        let err = file.allocate(0, 1 << 20).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(faults.fired(), 4);
    });
}

#[test]
fn short_transfers_are_continued_transparently() {
    let dir = tempfile::tempdir().unwrap();
    let (io, faults) = faulty();
    futures::executor::block_on(async {
        let path = dir.path().join("sst");
        let file = DirectFile::create(&io, &path).await.unwrap();
        let len = 64 * 1024;
        faults.add(FaultRule::new(FaultAction::ShortTransfer { max_bytes: 4096 }).op(IoOp::Write));
        let before = io.stats().ops_submitted;
        file.write_at(block(&file, len, 2), 0).await.unwrap();
        assert_eq!(io.stats().ops_submitted - before, 16, "16 short writes of 4 KiB made up the 64 KiB");
        faults.clear();
        faults.add(FaultRule::new(FaultAction::ShortTransfer { max_bytes: 12 * 1024 }).op(IoOp::Read));
        let buf = file.read_exact_at(file.alloc_buf(len), 0, len).await.unwrap();
        assert_eq!(&buf[..], &pattern(len, 0, 2)[..]);
        assert_eq!(faults.fired(), 6, "ceil(64 / 12) short reads");
        // A short linked write: the sync rides on the continuation.
        faults.clear();
        faults.add(FaultRule::new(FaultAction::ShortTransfer { max_bytes: 4096 }).op(IoOp::Write).times(1));
        file.write_at_and_sync(block(&file, 16384, 3), 0).await.unwrap();
        drop(file);
        assert_eq!(&std::fs::read(&path).unwrap()[..16384], &pattern(16384, 0, 3)[..]);
    });
}

#[test]
fn torn_write_lands_a_prefix_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (io, faults) = faulty();
    futures::executor::block_on(async {
        let path = dir.path().join("wal");
        let file = DirectFile::create(&io, &path).await.unwrap();
        faults.add(FaultRule::new(FaultAction::TornWrite { bytes: 5000 }).op(IoOp::Write).times(1));
        let err = file.write_at_and_sync(block(&file, 16384, 4), 0).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        let align = file.alignment();
        drop(file);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 5000 / align * align, "the prefix, rounded down to the alignment, landed");
        assert_eq!(&data[..], &pattern(16384, 0, 4)[..data.len()]);
    });
}

#[test]
fn failed_linked_sync_is_reported_as_a_sync_error() {
    let dir = tempfile::tempdir().unwrap();
    let (io, faults) = faulty();
    futures::executor::block_on(async {
        let file = DirectFile::create(&io, dir.path().join("wal")).await.unwrap();
        faults.add(FaultRule::new(FaultAction::Error(libc::EIO)).op(IoOp::Sync).times(1));
        let err = file.write_at_and_sync(block(&file, 4096, 5), 0).await.unwrap_err();
        assert!(matches!(err, Error::Io { op: IoOp::Sync, .. }), "{err}");
        // The write itself happened; only durability was not confirmed.
        let back = file.read_exact_at(file.alloc_buf(4096), 0, 4096).await.unwrap();
        assert_eq!(&back[..], &pattern(4096, 0, 5)[..]);
    });
}

#[test]
fn io_uring_setup_failure_falls_back_in_auto_and_errors_when_forced() {
    let faults = FaultInjector::new();
    faults.add(FaultRule::new(FaultAction::Error(libc::EPERM)).op(IoOp::Setup));
    let auto = IoOptions { backend: Backend::Auto, faults: Some(faults.clone()), ..IoOptions::default() };
    // Auto consults RINGDB_IO_BACKEND first: forced io_uring must then fail, not fall back.
    let env: Backend = std::env::var(ringdb::io::BACKEND_ENV).unwrap_or_default().parse().unwrap();
    if env == Backend::IoUring {
        assert!(matches!(ringdb::io::Io::new(auto), Err(Error::Io { op: IoOp::Setup, .. })));
    } else {
        let io = io_with(auto);
        assert_eq!(io.backend(), Backend::Posix, "seccomp-like EPERM at setup means the portable backend");
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let file = DirectFile::create(&io, dir.path().join("f")).await.unwrap();
            file.write_at_and_sync(block(&file, 4096, 6), 0).await.unwrap();
            let back = file.read_exact_at(file.alloc_buf(4096), 0, 4096).await.unwrap();
            assert_eq!(&back[..], &pattern(4096, 0, 6)[..]);
        });
    }
    let forced = IoOptions { backend: Backend::IoUring, faults: Some(faults), ..IoOptions::default() };
    match ringdb::io::Io::new(forced) {
        Err(Error::Io { op: IoOp::Setup, source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EPERM)),
        other => panic!("forced io_uring must fail: {other:?}"),
    }
}

#[test]
fn o_direct_refused_at_open_falls_back_to_buffered_with_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (io, faults) = faulty();
    faults.add(FaultRule::new(FaultAction::Error(libc::EINVAL)).op(IoOp::Open).path_contains("tmpfs-like"));
    futures::executor::block_on(async {
        let path = dir.path().join("tmpfs-like");
        let file = DirectFile::create(&io, &path).await.unwrap();
        assert!(!file.is_direct());
        file.write_at(block(&file, 8192, 7), 0).await.unwrap();
        let back = file.read_exact_at(file.alloc_buf(8192), 0, 8192).await.unwrap();
        assert_eq!(&back[..], &pattern(8192, 0, 7)[..]);
        // Alignment rules are unchanged, so code tested here works on O_DIRECT files too.
        let err = file.read_at(file.alloc_buf(4096), 100, 4096).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        // Other files still get O_DIRECT.
        let other = DirectFile::create(&io, dir.path().join("ext4")).await.unwrap();
        assert!(other.is_direct());
    });
}

#[test]
fn o_direct_refused_at_first_io_falls_back_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (io, faults) = faulty();
    futures::executor::block_on(async {
        let path = dir.path().join("overlay-like");
        let file = DirectFile::create(&io, &path).await.unwrap();
        assert!(file.is_direct());
        // EINVAL on the first transfer of an aligned request: the filesystem's refusal.
        faults.add(FaultRule::new(FaultAction::Error(libc::EINVAL)).op(IoOp::Write).times(1));
        file.write_at(block(&file, 4096, 8), 0).await.unwrap();
        assert!(!file.is_direct(), "reopened buffered after EINVAL on the first transfer");
        let back = file.read_exact_at(file.alloc_buf(4096), 0, 4096).await.unwrap();
        assert_eq!(&back[..], &pattern(4096, 0, 8)[..]);
        // After a successful transfer, EINVAL is an error, not a reason to fall back.
        let second = DirectFile::open(&io, &path).await.unwrap();
        second.read_exact_at(second.alloc_buf(4096), 0, 4096).await.unwrap();
        faults.add(FaultRule::new(FaultAction::Error(libc::EINVAL)).op(IoOp::Read).times(1));
        let err = second.read_at(second.alloc_buf(4096), 0, 4096).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(second.is_direct());
    });
}
