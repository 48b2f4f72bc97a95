//! Appending group records to a WAL file with O_DIRECT.

use std::path::Path;

use super::format::{RECORD_HEADER_BYTES, SECTOR_BYTES, encode_file_header, encode_record_header};
use crate::Result;
use crate::io::{AlignedBuf, DirectFile, Io};

/// Zero-fill preallocation is written in chunks of this size.
const PREALLOCATE_CHUNK_BYTES: usize = 1 << 20;

/// The largest write buffer kept from one group to the next; a larger one
/// (grown for a huge batch) is freed after its write.
const MAX_KEPT_BUF_BYTES: usize = 16 << 20;

/// Writes one log file. Not shared: the group-commit leader owns it while it
/// writes a group, and groups are written one at a time (`docs/format/wal.md`).
#[derive(Debug)]
pub(crate) struct WalWriter {
    file: DirectFile,
    log_number: u64,
    /// Where the next group starts: a sector boundary past every acknowledged byte.
    next_offset: u64,
    /// Every group below this offset is durable (its fdatasync, or a later one,
    /// completed). Stored in each record so recovery can tell damage to durable
    /// groups from unsynced groups lost in a power failure.
    synced_through: u64,
    /// Reused between groups; grows to the largest group seen.
    buf: Option<AlignedBuf>,
}

impl WalWriter {
    /// Creates a new log: the header sector, then `preallocate_bytes` of zeroes
    /// (so appends are overwrites of written blocks and fdatasync has no extent
    /// conversion or size change to commit), synced with its directory entry.
    ///
    /// The file is built under a temporary name ([`temp_path`]) and renamed into
    /// place once complete, so a crash during creation leaves no log with a
    /// missing header, only a temporary file that recovery deletes.
    pub(crate) async fn create(io: &Io, path: &Path, log_number: u64, preallocate_bytes: u64) -> Result<WalWriter> {
        let temp = temp_path(path);
        let file = DirectFile::create(io, &temp).await?;
        let mut header = file.alloc_buf(SECTOR_BYTES);
        header.set_len(SECTOR_BYTES);
        encode_file_header(&mut header, log_number);
        write_zeroes(&file, SECTOR_BYTES as u64, preallocate_bytes).await?;
        WalWriter::install(io, file, header, &temp, path, log_number).await
    }

    /// Makes the log `old` (holding nothing to replay: its memtable is flushed
    /// and recorded, or it never held a group) the new log `path`: renamed to the temporary name, its header sector
    /// rewritten for `log_number` and synced, then renamed into place. Its
    /// blocks are already written, so appends cost no extent conversion,
    /// without the zeroes [`create`](Self::create) writes (64 MiB per memtable
    /// switch by default, which competed with the flush's own writes). The
    /// stale records left behind carry the old log number, so recovery never
    /// takes them for records of this log (`docs/format/wal.md`).
    ///
    /// A crash at any step leaves either the old log (still holding nothing to
    /// replay: the next open deletes or reuses it) or the temporary file
    /// (deleted), never a `.wal` without a valid header.
    ///
    /// A file shorter than `preallocate_bytes` (recovery cut it at its torn
    /// tail, or an earlier run used a smaller `wal_preallocate_bytes`) is
    /// first filled with zeroes up to that length, as
    /// [`create`](Self::create) does, so appends never extend it.
    pub(crate) async fn recycle(
        io: &Io,
        old: &Path,
        path: &Path,
        log_number: u64,
        preallocate_bytes: u64,
    ) -> Result<WalWriter> {
        let temp = temp_path(path);
        io.rename(old, &temp).await?;
        let file = DirectFile::open(io, &temp).await?;
        // Rewriting the stale bytes of a partial last sector is harmless:
        // nothing in this file is replayed any more.
        let written_bytes = file.len()? / SECTOR_BYTES as u64 * SECTOR_BYTES as u64;
        write_zeroes(&file, written_bytes.max(SECTOR_BYTES as u64), preallocate_bytes).await?;
        let mut header = file.alloc_buf(SECTOR_BYTES);
        header.set_len(SECTOR_BYTES);
        encode_file_header(&mut header, log_number);
        WalWriter::install(io, file, header, &temp, path, log_number).await
    }

    /// Writes the header sector of the log built at `temp` (linked to an
    /// fdatasync, so everything written before it is durable too), renames it
    /// to `path` and opens it for appending after the header.
    async fn install(
        io: &Io,
        file: DirectFile,
        header: AlignedBuf,
        temp: &Path,
        path: &Path,
        log_number: u64,
    ) -> Result<WalWriter> {
        file.write_at_and_sync(header, 0).await?;
        drop(file);
        io.rename(temp, path).await?;
        let file = DirectFile::open(io, path).await?;
        let first = SECTOR_BYTES as u64;
        Ok(WalWriter { file, log_number, next_offset: first, synced_through: first, buf: None })
    }

    #[cfg(test)]
    /// Continues an existing log at `next_offset` (from recovery's `end_offset`).
    pub(crate) async fn open_for_append(io: &Io, path: &Path, log_number: u64, next_offset: u64) -> Result<WalWriter> {
        if next_offset < SECTOR_BYTES as u64 || !next_offset.is_multiple_of(SECTOR_BYTES as u64) {
            return Err(crate::Error::InvalidArgument(format!(
                "WAL append offset {next_offset} is not a record position"
            )));
        }
        let file = DirectFile::open(io, path).await?;
        // Recovery made everything before `next_offset` durable before handing it over.
        Ok(WalWriter { file, log_number, next_offset, synced_through: next_offset, buf: None })
    }

    /// The log's file number.
    pub(crate) fn log_number(&self) -> u64 {
        self.log_number
    }

    /// Bytes of the file in use (header and groups, with padding).
    pub(crate) fn size_bytes(&self) -> u64 {
        self.next_offset
    }

    /// Appends one group record holding `payload` (encoded batches), padded to
    /// the next sector, with one O_DIRECT write; with `sync`, the write is
    /// linked to an fdatasync. Returns once the write (and sync) completed.
    ///
    /// On error nothing is known about the group's bytes on disk; the offset
    /// does not advance, and the caller must treat the log as failed (the
    /// database refuses further writes).
    pub(crate) async fn append_group(&mut self, payload: &[u8], sync: bool) -> Result<()> {
        assert!(!payload.is_empty(), "a group holds at least one batch");
        let record_bytes = RECORD_HEADER_BYTES + payload.len();
        let padded = record_bytes.next_multiple_of(SECTOR_BYTES);
        let mut buf = match self.buf.take() {
            Some(buf) if buf.capacity() >= padded => buf,
            _ => self.file.alloc_buf(padded.next_power_of_two().max(64 * 1024)),
        };
        {
            let bytes = buf.as_full_mut_slice();
            encode_record_header(&mut bytes[..RECORD_HEADER_BYTES], self.log_number, self.synced_through, payload);
            bytes[RECORD_HEADER_BYTES..record_bytes].copy_from_slice(payload);
            bytes[record_bytes..padded].fill(0);
        }
        buf.set_len(padded);
        let offset = self.next_offset;
        let written =
            if sync { self.file.write_at_and_sync(buf, offset).await } else { self.file.write_at(buf, offset).await };
        let buf = written?;
        // Kept for the next group unless a huge one grew it: a log lives long.
        self.buf = (buf.capacity() <= MAX_KEPT_BUF_BYTES).then_some(buf);
        self.next_offset = offset + padded as u64;
        if sync {
            self.synced_through = self.next_offset;
        }
        Ok(())
    }

    /// fdatasync of everything appended so far.
    pub(crate) async fn sync(&mut self) -> Result<()> {
        self.file.sync_data().await?;
        self.synced_through = self.next_offset;
        Ok(())
    }
}

/// Writes zeroes from `from` (a sector boundary) up to `to_bytes`, rounded up
/// to a sector, in [`PREALLOCATE_CHUNK_BYTES`] writes; nothing if the file
/// already reaches that far.
async fn write_zeroes(file: &DirectFile, from: u64, to_bytes: u64) -> Result<()> {
    assert!(from.is_multiple_of(SECTOR_BYTES as u64), "zeroes start on a sector boundary");
    let end = to_bytes.next_multiple_of(SECTOR_BYTES as u64);
    if from >= end {
        return Ok(());
    }
    let mut zeroes = file.alloc_buf(PREALLOCATE_CHUNK_BYTES);
    let mut offset = from;
    while offset < end {
        let len = (end - offset).min(PREALLOCATE_CHUNK_BYTES as u64) as usize;
        zeroes.set_len(len);
        zeroes.as_full_mut_slice()[..len].fill(0);
        zeroes = file.write_at(zeroes, offset).await?;
        offset += len as u64;
    }
    Ok(())
}

/// Where a log is built before it is renamed to `path`.
pub(crate) fn temp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    name.into()
}

#[cfg(test)]
mod tests {
    use super::super::reader::{RecoveryMode, read_log};
    use super::*;
    use crate::IoOp;
    use crate::batch::{WriteBatch, decode_batches};
    use crate::io::{FaultAction, FaultInjector, FaultRule, IoOptions};
    use crate::key::SeqNo;

    fn group(first: u64, n: usize) -> Vec<u8> {
        let mut batch = WriteBatch::new();
        for i in 0..n {
            batch.put(format!("k{first}-{i}"), format!("v{i}"));
        }
        let mut payload = Vec::new();
        batch.encode_to(&mut payload, SeqNo(first));
        payload
    }

    #[test]
    fn appended_groups_recover_in_order_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000003.wal");
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let mut wal = WalWriter::create(&io, &path, 3, 256 * 1024).await.unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 256 * 1024, "preallocated with zeroes");
            wal.append_group(&group(1, 1), true).await.unwrap();
            wal.append_group(&group(2, 50), false).await.unwrap();
            wal.append_group(&group(52, 2000), true).await.unwrap();
            let end = wal.size_bytes();
            drop(wal);
            let contents = read_log(&io, &path, 3, RecoveryMode::KeepAllOrFail).await.unwrap();
            assert_eq!(contents.groups.len(), 3);
            assert_eq!(contents.last_seq, Some(SeqNo(2051)));
            assert_eq!(contents.end_offset, end);
            let mut keys = 0;
            for payload in contents.payloads() {
                decode_batches(payload, None, |_| keys += 1).unwrap();
            }
            assert_eq!(keys, 2051);
            let mut wal = WalWriter::open_for_append(&io, &path, 3, contents.end_offset).await.unwrap();
            wal.append_group(&group(2052, 1), true).await.unwrap();
            let contents = read_log(&io, &path, 3, RecoveryMode::KeepAllOrFail).await.unwrap();
            assert_eq!(contents.last_seq, Some(SeqNo(2052)));
        });
    }

    #[test]
    fn the_write_buffer_is_kept_between_groups_unless_a_huge_one_grew_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000005.wal");
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let mut wal = WalWriter::create(&io, &path, 5, 0).await.unwrap();
            wal.append_group(&group(1, 10), false).await.unwrap();
            assert!(wal.buf.is_some(), "a small group's buffer is kept");
            // About 20 MiB of entries.
            let mut batch = WriteBatch::new();
            batch.put("huge", vec![7u8; 20 << 20]);
            let mut payload = Vec::new();
            batch.encode_to(&mut payload, SeqNo(11));
            wal.append_group(&payload, false).await.unwrap();
            assert!(wal.buf.is_none(), "a buffer grown past {MAX_KEPT_BUF_BYTES} bytes is freed");
            wal.append_group(&group(12, 10), true).await.unwrap();
            assert!(wal.buf.as_ref().is_some_and(|b| b.capacity() <= MAX_KEPT_BUF_BYTES));
            drop(wal);
            let contents = read_log(&io, &path, 5, RecoveryMode::KeepAllOrFail).await.unwrap();
            assert_eq!(contents.last_seq, Some(SeqNo(21)));
        });
    }

    #[test]
    fn a_failed_append_leaves_acknowledged_groups_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000004.wal");
        let faults = FaultInjector::new();
        let io = Io::new(IoOptions { faults: Some(faults.clone()), ..IoOptions::default() }).unwrap();
        futures::executor::block_on(async {
            let mut wal = WalWriter::create(&io, &path, 4, 64 * 1024).await.unwrap();
            wal.append_group(&group(1, 3), true).await.unwrap();
            faults.add(FaultRule::new(FaultAction::TornWrite { bytes: 4096 }).op(IoOp::Write).times(1));
            let err = wal.append_group(&group(4, 3000), true).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO));
            let contents = read_log(&io, &path, 4, RecoveryMode::KeepAllOrFail).await.unwrap();
            assert_eq!(contents.last_seq, Some(SeqNo(3)), "the torn group is dropped, the first is kept");
            assert!(contents.torn_tail_at.is_some());
        });
    }
}
