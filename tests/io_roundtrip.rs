//! Reads and writes through `DirectFile` on whichever backend the suite runs, from
//! `futures::executor::block_on` and from a tokio multi-thread runtime.

mod common;

use common::{io, pattern};
use ringdb::io::{AlignedBuf, DirectFile};
use ringdb::{Error, IoOp};

async fn roundtrip(dir: &std::path::Path) {
    let io = io();
    let path = dir.join("data");
    let file = DirectFile::create(&io, &path).await.unwrap();
    let align = file.alignment();
    assert!(file.is_direct(), "ext4 supports O_DIRECT");
    let block = 64 * 1024;
    for i in 0..16u64 {
        let mut buf = file.alloc_buf(block);
        buf.extend_from_slice(&pattern(block, i * block as u64, 7));
        let buf = file.write_at(buf, i * block as u64).await.unwrap();
        assert_eq!(buf.len(), block, "the buffer comes back intact");
    }
    file.sync_data().await.unwrap();
    assert_eq!(file.len().unwrap(), 16 * block as u64);
    for i in (0..16u64).rev() {
        let buf = file.read_exact_at(file.alloc_buf(block), i * block as u64, block).await.unwrap();
        assert_eq!(&buf[..], &pattern(block, i * block as u64, 7)[..], "block {i}");
    }
    // An unaligned-in-the-middle read at sector granularity.
    let buf = file.read_at(file.alloc_buf(align), 3 * align as u64, align).await.unwrap();
    assert_eq!(&buf[..], &pattern(block, 0, 7)[3 * align..4 * align]);
    // Reading past the end returns what is there.
    let buf = file.read_at(file.alloc_buf(4 * block), 14 * block as u64, 4 * block).await.unwrap();
    assert_eq!(buf.len(), 2 * block);
    let err = file.read_exact_at(file.alloc_buf(4 * block), 14 * block as u64, 4 * block).await.unwrap_err();
    assert!(matches!(&err, Error::Io { op: IoOp::Read, offset: Some(o), .. } if *o == 14 * block as u64), "{err}");
}

#[test]
fn roundtrip_from_block_on() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(roundtrip(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_from_tokio_multi_thread() {
    let dir = tempfile::tempdir().unwrap();
    roundtrip(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let io = io();
    let file = std::sync::Arc::new(DirectFile::create(&io, dir.path().join("shared")).await.unwrap());
    let block = 4096usize;
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let file = file.clone();
            tokio::spawn(async move {
                for round in 0..8u64 {
                    let offset = (round * 64 + i) * block as u64;
                    let mut buf = file.alloc_buf(block);
                    buf.extend_from_slice(&pattern(block, offset, 1));
                    file.write_at(buf, offset).await.unwrap();
                    let back = file.read_exact_at(file.alloc_buf(block), offset, block).await.unwrap();
                    assert_eq!(&back[..], &pattern(block, offset, 1)[..]);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(file.len().unwrap(), 64 * 8 * block as u64);
}

#[test]
fn linked_write_and_sync_allocate_and_set_len() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let io = io();
        let path = dir.path().join("wal");
        let file = DirectFile::create(&io, &path).await.unwrap();
        file.allocate(0, 1 << 20).await.unwrap();
        assert_eq!(file.len().unwrap(), 1 << 20, "fallocate extends the size");
        let mut buf = file.alloc_buf(8192);
        buf.extend_from_slice(&pattern(8192, 0, 3));
        let before = io.stats();
        file.write_at_and_sync(buf, 4096).await.unwrap();
        let after = io.stats();
        assert_eq!(after.ops_submitted - before.ops_submitted, 1, "write and sync are one operation");
        if io.backend() == ringdb::io::Backend::IoUring {
            assert_eq!(after.sqes_submitted - before.sqes_submitted, 2, "a write SQE linked to an fsync SQE");
        }
        file.set_len(4096 + 5000).await.unwrap();
        assert_eq!(file.len().unwrap(), 9096);
        drop(file);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[4096..], &pattern(8192, 0, 3)[..5000]);
        assert!(on_disk[..4096].iter().all(|&b| b == 0));
    });
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let io = io();
        let file = DirectFile::create(&io, dir.path().join("f")).await.unwrap();
        let align = file.alignment();
        let unaligned_offset = file.read_at(file.alloc_buf(align), 1, align).await.unwrap_err();
        assert!(matches!(unaligned_offset, Error::InvalidArgument(_)), "{unaligned_offset}");
        let unaligned_len = file.read_at(file.alloc_buf(2 * align), 0, align + 1).await.unwrap_err();
        assert!(matches!(unaligned_len, Error::InvalidArgument(_)));
        let too_long = file.read_at(file.alloc_buf(align), 0, 2 * align).await.unwrap_err();
        assert!(matches!(too_long, Error::InvalidArgument(_)));
        let mut odd = AlignedBuf::new(align, align);
        odd.extend_from_slice(b"abc");
        let odd_write = file.write_at(odd, 0).await.unwrap_err();
        assert!(matches!(odd_write, Error::InvalidArgument(_)), "{odd_write}");
        drop(file);
        let read_only = DirectFile::open_read_only(&io, dir.path().join("f")).await.unwrap();
        let mut buf = read_only.alloc_buf(align);
        buf.set_len(align);
        assert!(matches!(read_only.write_at(buf, 0).await.unwrap_err(), Error::InvalidArgument(_)));
        let missing = DirectFile::open(&io, dir.path().join("missing")).await.unwrap_err();
        match missing {
            Error::Io { op: IoOp::Open, path, source, .. } => {
                assert!(path.ends_with("missing"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other}"),
        }
    });
}

#[test]
fn rename_and_remove_sync_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let io = io();
        let file = DirectFile::create(&io, dir.path().join("tmp")).await.unwrap();
        drop(file);
        io.rename(dir.path().join("tmp"), dir.path().join("CURRENT")).await.unwrap();
        assert!(dir.path().join("CURRENT").exists() && !dir.path().join("tmp").exists());
        io.remove_file(dir.path().join("CURRENT")).await.unwrap();
        assert!(!dir.path().join("CURRENT").exists());
        let err = io.remove_file(dir.path().join("CURRENT")).await.unwrap_err();
        assert!(matches!(err, Error::Io { op: IoOp::Remove, .. }));
    });
}
