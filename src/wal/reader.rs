//! Recovery: reading a WAL file back and deciding where it ends.

use std::ops::Range;
use std::path::Path;

use super::format::{
    RECORD_HEADER_BYTES, RangeCrcs, RecordAt, SECTOR_BYTES, decode_file_header, next_record_offset, record_at,
    record_at_with,
};
use crate::batch::decode_batches;
use crate::io::{DirectFile, Io};
use crate::key::SeqNo;
use crate::{Error, Result};

/// What recovery does with a WAL whose records are damaged. A torn tail (the
/// group being written when the process or machine died, never acknowledged)
/// is always dropped; the modes differ in what they do with damage elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Keep every acknowledged write or refuse to open: damage anywhere but the
    /// torn tail is an [`Error::Corruption`] naming the file and offset. The default.
    #[default]
    KeepAllOrFail,
    /// Keep the valid prefix of the log and drop everything from the first
    /// damaged group on, including later valid groups (a consistent
    /// point-in-time state, at the cost of losing acknowledged writes).
    KeepPrefixDropRest,
}

/// The valid part of a log.
#[derive(Debug)]
pub(crate) struct LogContents {
    /// The file's bytes.
    pub(crate) data: Vec<u8>,
    /// Payload ranges of the valid groups, in order.
    pub(crate) groups: Vec<Range<usize>>,
    /// Last sequence number in the log, if it holds any group.
    pub(crate) last_seq: Option<SeqNo>,
    /// Where a writer continuing this log starts (a sector boundary).
    pub(crate) end_offset: u64,
    /// Where a torn tail began, if there was one.
    pub(crate) torn_tail_at: Option<u64>,
    /// Under [`RecoveryMode::KeepPrefixDropRest`]: where damage was found and dropped, and why.
    pub(crate) dropped_at: Option<(u64, String)>,
}

impl LogContents {
    /// The payloads of the valid groups.
    pub(crate) fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.groups.iter().map(|range| &self.data[range.clone()])
    }
}

/// Reads a whole WAL file through the I/O layer and parses it.
pub(crate) async fn read_log(io: &Io, path: &Path, log_number: u64, mode: RecoveryMode) -> Result<LogContents> {
    let data = read_whole_file(io, path).await?;
    parse_log(data, path, log_number, mode)
}

async fn read_whole_file(io: &Io, path: &Path) -> Result<Vec<u8>> {
    let file = DirectFile::open_read_only(io, path).await?;
    let len = file.len()?;
    let chunk = 1 << 20;
    // The size comes from disk too: a damaged or sparse file claiming
    // terabytes is an error, not an aborted allocation.
    let mut data = Vec::new();
    if usize::try_from(len).map_or(true, |len| data.try_reserve_exact(len).is_err()) {
        return Err(Error::Corruption {
            file: path.to_path_buf(),
            offset: 0,
            reason: format!("a log of {len} bytes does not fit in memory to be replayed"),
        });
    }
    let mut buf = file.alloc_buf(chunk);
    let mut offset = 0u64;
    while offset < len {
        buf = file.read_at(buf, offset, chunk).await?;
        if buf.is_empty() {
            break;
        }
        data.extend_from_slice(&buf);
        offset += buf.len() as u64;
    }
    data.truncate(usize::try_from(len).unwrap_or(usize::MAX));
    Ok(data)
}

/// Parses a WAL image (`docs/format/wal.md`, "Reading"). Never panics on any input.
pub(crate) fn parse_log(data: Vec<u8>, path: &Path, log_number: u64, mode: RecoveryMode) -> Result<LogContents> {
    let mut last_seq: Option<SeqNo> = None;
    let mut contents = parse_records(data, path, log_number, mode, |payload| {
        let decoded = match last_seq.map(|s| s.checked_next().ok_or("sequence numbers overflow")) {
            Some(Err(reason)) => Err(reason.to_string()),
            Some(Ok(next)) => decode_batches(payload, Some(next), |_| {}),
            None => decode_batches(payload, None, |_| {}),
        };
        last_seq = Some(decoded?);
        Ok(())
    })?;
    contents.last_seq = last_seq;
    Ok(contents)
}

/// Reads a whole file in the WAL container format whose payloads are not
/// write batches (the MANIFEST), checking each payload with `check`.
pub(crate) async fn read_records(
    io: &Io,
    path: &Path,
    file_number: u64,
    mode: RecoveryMode,
    check: impl FnMut(&[u8]) -> std::result::Result<(), String>,
) -> Result<LogContents> {
    let data = read_whole_file(io, path).await?;
    parse_records(data, path, file_number, mode, check)
}

/// Parses the WAL container: records are valid when their header and
/// checksum hold and `check` accepts the payload. `last_seq` is left unset.
pub(crate) fn parse_records(
    data: Vec<u8>,
    path: &Path,
    log_number: u64,
    mode: RecoveryMode,
    mut check: impl FnMut(&[u8]) -> std::result::Result<(), String>,
) -> Result<LogContents> {
    let corruption = |offset: u64, reason: String| Error::Corruption { file: path.to_path_buf(), offset, reason };
    if data.len() < SECTOR_BYTES {
        // Our O_DIRECT writes are whole sectors: a shorter file was cut or never finished.
        return Err(corruption(0, format!("file of {} bytes is shorter than its header sector", data.len())));
    }
    let (header_log, _sector) = decode_file_header(&data).map_err(|reason| corruption(0, reason))?;
    if header_log != log_number {
        return Err(corruption(16, format!("header says log {header_log}, the file name says {log_number}")));
    }
    let mut contents = LogContents {
        data: Vec::new(),
        groups: Vec::new(),
        last_seq: None,
        end_offset: 0,
        torn_tail_at: None,
        dropped_at: None,
    };
    let mut offset = SECTOR_BYTES;
    loop {
        let problem = match record_at(data.get(offset..).unwrap_or(&[]), offset, log_number) {
            RecordAt::Unwritten => None,
            RecordAt::Valid { payload, .. } => match check(payload) {
                Ok(()) => {
                    let start = offset + RECORD_HEADER_BYTES;
                    contents.groups.push(start..start + payload.len());
                    offset = next_record_offset(offset, payload.len());
                    continue;
                }
                Err(reason) => Some(format!("malformed group payload: {reason}")),
            },
            RecordAt::Invalid(reason) => Some(reason),
        };
        // The log ends here: cleanly, at a torn tail, or at damage.
        contents.end_offset = offset as u64;
        let later = later_valid_records(&data, offset + SECTOR_BYTES, log_number);
        let Some((first_later, watermark)) = later else {
            if problem.is_some() {
                contents.torn_tail_at = Some(offset as u64);
            }
            break;
        };
        if watermark <= offset as u64 {
            // Valid groups follow, but none of them was built after a sync that
            // covered this offset: a power loss can lose unsynced groups in any
            // order, so this is still the tail of what was durable.
            contents.torn_tail_at = Some(offset as u64);
            break;
        }
        let reason = problem.unwrap_or_else(|| "unwritten sector".into());
        match mode {
            RecoveryMode::KeepAllOrFail => {
                return Err(corruption(
                    offset as u64,
                    format!(
                        "{reason}, but a later group (at offset {first_later}) says everything below offset \
                         {watermark} was synced: damage in the middle of the log"
                    ),
                ));
            }
            RecoveryMode::KeepPrefixDropRest => {
                contents.dropped_at = Some((offset as u64, reason));
                // New writes must not land before the dropped groups, or a
                // later recovery would find them again.
                contents.end_offset = data.len().next_multiple_of(SECTOR_BYTES) as u64;
            }
        }
        break;
    }
    contents.data = data;
    Ok(contents)
}

/// The first valid record of this log at a sector boundary at or after `from`,
/// and the highest `synced_through` of all valid records from there on. Each
/// valid record found is skipped past (its payload holds no other record).
/// Claims are checked through [`RangeCrcs`], so the scan costs one pass over
/// the file and a few sectors per claim however long the claims are. The pass
/// is made at the first claim: most logs end in zeroes or stale records of
/// another log, which need no checksum.
fn later_valid_records(data: &[u8], from: usize, log_number: u64) -> Option<(usize, u64)> {
    let crcs = std::cell::OnceCell::new();
    let mut found: Option<(usize, u64)> = None;
    let mut offset = from;
    while offset < data.len() {
        let payload_start = offset + RECORD_HEADER_BYTES;
        let record = record_at_with(&data[offset..], offset, log_number, |header_tail, payload| {
            crcs.get_or_init(|| RangeCrcs::new(data)).record_crc(header_tail, payload_start, payload.len())
        });
        if let RecordAt::Valid { payload, synced_through } = record {
            let (_, watermark) = found.get_or_insert((offset, 0));
            *watermark = (*watermark).max(synced_through);
            offset = next_record_offset(offset, payload.len());
            continue;
        }
        offset += SECTOR_BYTES;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_file_header, encode_record_header};
    use super::*;
    use crate::batch::WriteBatch;
    use proptest::prelude::*;

    /// A log image with one group per batch of `sizes[i]` puts, numbered from 1,
    /// every group synced (each record's watermark is its own offset).
    fn image(log_number: u64, sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
        image_with(log_number, sizes, |start| start)
    }

    /// Like [`image`], with each record's `synced_through` chosen from its offset.
    fn image_with(log_number: u64, sizes: &[usize], watermark: impl Fn(u64) -> u64) -> (Vec<u8>, Vec<usize>) {
        let mut data = vec![0u8; SECTOR_BYTES];
        encode_file_header(&mut data, log_number);
        let mut seq = 1;
        let mut starts = Vec::new();
        for (g, &n) in sizes.iter().enumerate() {
            let mut batch = WriteBatch::new();
            for i in 0..n {
                batch.put(format!("key-{g}-{i}"), vec![g as u8; 50 + i * 37]);
            }
            let mut payload = Vec::new();
            batch.encode_to(&mut payload, SeqNo(seq));
            seq += n as u64;
            let start = data.len();
            starts.push(start);
            let mut header = [0u8; RECORD_HEADER_BYTES];
            encode_record_header(&mut header, log_number, watermark(start as u64), &payload);
            data.extend_from_slice(&header);
            data.extend_from_slice(&payload);
            data.resize(data.len().next_multiple_of(SECTOR_BYTES), 0);
        }
        (data, starts)
    }

    fn parse(data: Vec<u8>, mode: RecoveryMode) -> Result<LogContents> {
        parse_log(data, Path::new("000005.wal"), 5, mode)
    }

    #[test]
    fn clean_log_with_preallocated_zeroes() {
        let (mut data, starts) = image(5, &[1, 3, 200]);
        data.resize(data.len() + 10 * SECTOR_BYTES, 0);
        let contents = parse(data, RecoveryMode::KeepAllOrFail).unwrap();
        assert_eq!(contents.groups.len(), 3);
        assert_eq!(contents.last_seq, Some(SeqNo(204)));
        assert_eq!(contents.torn_tail_at, None);
        assert!(contents.end_offset as usize > starts[2]);
        assert_eq!(contents.end_offset % SECTOR_BYTES as u64, 0);
    }

    #[test]
    fn torn_last_group_is_dropped_and_reported() {
        let (mut data, starts) = image(5, &[2, 2, 300]);
        // The last group spans several sectors; its second sector never landed.
        let torn = starts[2] + SECTOR_BYTES;
        data[torn..torn + SECTOR_BYTES].fill(0);
        let contents = parse(data, RecoveryMode::KeepAllOrFail).unwrap();
        assert_eq!(contents.groups.len(), 2);
        assert_eq!(contents.last_seq, Some(SeqNo(4)));
        assert_eq!(contents.torn_tail_at, Some(starts[2] as u64));
        assert_eq!(contents.end_offset, starts[2] as u64, "the next writer overwrites the torn group");
    }

    #[test]
    fn damage_before_a_valid_group_is_corruption_unless_tolerated() {
        let (mut data, starts) = image(5, &[2, 2, 2]);
        data[starts[1] + RECORD_HEADER_BYTES + 3] ^= 0x40;
        match parse(data.clone(), RecoveryMode::KeepAllOrFail) {
            Err(Error::Corruption { offset, reason, .. }) => {
                assert_eq!(offset, starts[1] as u64);
                assert!(reason.contains("middle"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        let contents = parse(data, RecoveryMode::KeepPrefixDropRest).unwrap();
        assert_eq!(contents.groups.len(), 1);
        assert_eq!(contents.dropped_at.as_ref().map(|d| d.0), Some(starts[1] as u64));
        assert!(contents.end_offset as usize > starts[2], "new groups go after the dropped ones");
    }

    #[test]
    fn a_log_whose_every_sector_claims_the_rest_of_the_file_costs_one_pass_to_check() {
        // A crafted file: after one valid group, every sector holds a header
        // of this log claiming the rest of the file, with a wrong checksum.
        // Hashing every claim would checksum about 8 GiB for these 8 MiB.
        let (mut data, _) = image(5, &[1]);
        let damaged_at = data.len();
        let sectors = 2048;
        data.resize(damaged_at + sectors * SECTOR_BYTES, 0xAB);
        for at in (damaged_at..data.len()).step_by(SECTOR_BYTES) {
            let claim = u32::try_from(data.len() - at - RECORD_HEADER_BYTES).unwrap();
            let header = &mut data[at..at + RECORD_HEADER_BYTES];
            header[..4].copy_from_slice(&0xDEAD_BEEF_u32.to_le_bytes());
            header[4..8].copy_from_slice(&claim.to_le_bytes());
            header[8..12].copy_from_slice(&[super::super::format::RECORD_TYPE_GROUP, 0, 0, 0]);
            header[12..20].copy_from_slice(&5u64.to_le_bytes());
            header[20..28].copy_from_slice(&0u64.to_le_bytes());
        }
        let before = super::super::format::checksummed_bytes();
        assert_eq!(later_valid_records(&data, damaged_at + SECTOR_BYTES, 5), None);
        let checksummed = super::super::format::checksummed_bytes() - before;
        // One pass, and at most two partial sectors and a header per claim.
        assert!(checksummed <= data.len() + sectors * (2 * SECTOR_BYTES + RECORD_HEADER_BYTES), "{checksummed}");
        // No valid group follows the damage: a torn tail, in both modes.
        for mode in [RecoveryMode::KeepAllOrFail, RecoveryMode::KeepPrefixDropRest] {
            let contents = parse(data.clone(), mode).unwrap();
            assert_eq!(contents.groups.len(), 1);
            assert_eq!(contents.torn_tail_at, Some(damaged_at as u64));
        }
    }

    #[test]
    fn the_scan_past_zeroes_and_another_logs_records_checksums_nothing() {
        let (mut data, _) = image(5, &[1, 3]);
        let end = data.len();
        data.resize(end + 1000 * SECTOR_BYTES, 0);
        // A recycled file's stale records, of log 4.
        let (stale, _) = image(4, &[2, 40, 2]);
        data.extend_from_slice(&stale[SECTOR_BYTES..]);
        let before = super::super::format::checksummed_bytes();
        assert_eq!(later_valid_records(&data, end + SECTOR_BYTES, 5), None);
        assert_eq!(super::super::format::checksummed_bytes(), before);
    }

    #[test]
    fn a_claim_checked_through_range_crcs_is_valid_exactly_when_hashing_it_says_so() {
        let (mut data, starts) = image(5, &[2, 300, 2]);
        fn crcs_of(data: &[u8], at: usize) -> RecordAt<'_> {
            let crcs = RangeCrcs::new(data);
            let payload_start = at + RECORD_HEADER_BYTES;
            record_at_with(&data[at..], at, 5, |header_tail, payload| {
                crcs.record_crc(header_tail, payload_start, payload.len())
            })
        }
        for &at in &starts {
            assert_eq!(crcs_of(&data, at), record_at(&data[at..], at, 5));
            assert!(matches!(crcs_of(&data, at), RecordAt::Valid { .. }));
        }
        // A flipped payload byte in a group that spans many sectors.
        data[starts[1] + 3 * SECTOR_BYTES + 17] ^= 0x10;
        assert_eq!(crcs_of(&data, starts[1]), RecordAt::Invalid("record checksum mismatch".into()));
        assert_eq!(record_at(&data[starts[1]..], starts[1], 5), RecordAt::Invalid("record checksum mismatch".into()));
    }

    #[test]
    fn the_scan_past_damage_skips_each_valid_group_and_keeps_the_highest_watermark() {
        let sizes = [2, 300, 2, 300, 2];
        let (_, starts) = image(5, &sizes);
        // The first group after the damage carries the highest watermark.
        let first_later = starts[2] as u64;
        let (mut data, same_starts) =
            image_with(5, &sizes, |start| if start == first_later { start } else { start / 4 });
        assert_eq!(same_starts, starts);
        // A record of this log inside group 3's payload, at a sector boundary,
        // claiming a higher watermark; group 3 is sealed again around it, so
        // it is a valid group whose payload holds a valid-looking record.
        let inner = starts[3] + 2 * SECTOR_BYTES;
        assert!(inner + SECTOR_BYTES < starts[4], "group 3 spans the planted sector");
        let planted_payload = [7u8; 100];
        let mut header = [0u8; RECORD_HEADER_BYTES];
        encode_record_header(&mut header, 5, inner as u64, &planted_payload);
        data[inner..inner + RECORD_HEADER_BYTES].copy_from_slice(&header);
        data[inner + RECORD_HEADER_BYTES..inner + RECORD_HEADER_BYTES + 100].copy_from_slice(&planted_payload);
        let field = |data: &[u8], at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
        let len3 = field(&data, starts[3] + 4) as u32 as usize;
        let synced3 = field(&data, starts[3] + 20);
        let payload3 = data[starts[3] + RECORD_HEADER_BYTES..starts[3] + RECORD_HEADER_BYTES + len3].to_vec();
        encode_record_header(&mut header, 5, synced3, &payload3);
        data[starts[3]..starts[3] + RECORD_HEADER_BYTES].copy_from_slice(&header);
        assert!(matches!(record_at(&data[inner..], inner, 5), RecordAt::Valid { .. }));
        assert!(matches!(record_at(&data[starts[3]..], starts[3], 5), RecordAt::Valid { .. }));

        data[starts[1] + RECORD_HEADER_BYTES] ^= 1;
        let later = later_valid_records(&data, starts[1] + SECTOR_BYTES, 5);
        assert_eq!(later, Some((starts[2], first_later)));
    }

    #[test]
    fn losing_unsynced_groups_in_any_order_is_a_tail_not_corruption() {
        // Nothing was ever synced after the header: a power loss may keep group 3 and lose group 2.
        let (mut data, starts) = image_with(5, &[2, 2, 2], |_| SECTOR_BYTES as u64);
        data[starts[1]..starts[1] + SECTOR_BYTES].fill(0);
        let contents = parse(data.clone(), RecoveryMode::KeepAllOrFail).unwrap();
        assert_eq!(contents.groups.len(), 1);
        assert_eq!(contents.torn_tail_at, Some(starts[1] as u64));
        // Group 2 was synced (group 3's watermark is past it): losing it is corruption.
        let (mut synced, starts) = image_with(5, &[2, 2, 2], |start| if start > 8192 { start } else { 4096 });
        synced[starts[1] + 40] ^= 1;
        assert!(matches!(parse(synced, RecoveryMode::KeepAllOrFail), Err(Error::Corruption { .. })));
    }

    #[test]
    fn a_zeroed_sector_before_valid_groups_is_corruption() {
        let (mut data, starts) = image(5, &[1, 1, 1]);
        data[starts[1]..starts[1] + SECTOR_BYTES].fill(0);
        assert!(matches!(parse(data, RecoveryMode::KeepAllOrFail), Err(Error::Corruption { .. })));
    }

    #[test]
    fn stale_records_of_a_recycled_log_are_not_trusted() {
        let (old, _) = image(4, &[3, 3, 3, 3]);
        let (new, _) = image(5, &[1]);
        let mut recycled = old.clone();
        recycled[..new.len()].copy_from_slice(&new);
        let contents = parse(recycled, RecoveryMode::KeepAllOrFail).unwrap();
        assert_eq!(contents.groups.len(), 1, "log 4's groups are stale");
        assert_eq!(contents.last_seq, Some(SeqNo(1)));
        assert!(contents.torn_tail_at.is_some(), "the stale bytes after the end look like a torn tail");
    }

    #[test]
    fn bad_headers_and_short_files_are_corruption() {
        let (data, _) = image(5, &[1]);
        assert!(matches!(
            parse(data[..30].to_vec(), RecoveryMode::KeepAllOrFail),
            Err(Error::Corruption { offset: 0, .. })
        ));
        assert!(matches!(parse(Vec::new(), RecoveryMode::KeepAllOrFail), Err(Error::Corruption { .. })));
        let mut other_log = data.clone();
        encode_file_header(&mut other_log[..SECTOR_BYTES], 6);
        assert!(matches!(parse(other_log, RecoveryMode::KeepAllOrFail), Err(Error::Corruption { offset: 16, .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_files_never_panic(
            garbage in proptest::collection::vec(any::<u8>(), 0..3 * SECTOR_BYTES),
            with_header in any::<bool>(),
        ) {
            let mut data = garbage;
            if with_header && data.len() >= SECTOR_BYTES {
                encode_file_header(&mut data[..SECTOR_BYTES], 5);
            }
            for mode in [RecoveryMode::KeepAllOrFail, RecoveryMode::KeepPrefixDropRest] {
                match parse(data.clone(), mode) {
                    Ok(contents) => prop_assert!(contents.groups.is_empty() || with_header),
                    Err(Error::Corruption { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }
        }

        #[test]
        fn never_panics_and_keeps_a_prefix(
            sizes in proptest::collection::vec(1usize..40, 1..6),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            truncate_to in proptest::option::of(any::<usize>()),
            zero_from in proptest::option::of(any::<usize>()),
        ) {
            let (mut data, _) = image(5, &sizes);
            for (at, byte) in damage {
                let at = at % data.len();
                data[at] = byte;
            }
            if let Some(zero_from) = zero_from {
                let from = zero_from % data.len();
                data[from..].fill(0);
            }
            if let Some(len) = truncate_to {
                data.truncate(len % (data.len() + 1));
            }
            for mode in [RecoveryMode::KeepAllOrFail, RecoveryMode::KeepPrefixDropRest] {
                if let Ok(contents) = parse(data.clone(), mode) {
                    // Whatever is kept is a valid prefix: consecutive from sequence 1.
                    let mut expected = SeqNo(1);
                    for payload in contents.payloads() {
                        let last = decode_batches(payload, Some(expected), |_| {}).unwrap();
                        expected = last.next();
                    }
                    prop_assert!(contents.groups.len() <= sizes.len());
                }
            }
        }
    }

    #[test]
    fn a_log_claiming_terabytes_is_corruption_not_an_abort() {
        // Only where the kernel refuses allocations past memory (its default
        // heuristic, mode 0, as on the test machines): with overcommit always
        // on, the reservation would succeed and the test would read 8 TiB.
        if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").map_or(true, |mode| mode.trim() != "0") {
            eprintln!("skipped: vm.overcommit_memory is not 0");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000007.wal");
        // Sparse: no disk space, a length far past this machine's memory.
        std::fs::File::create(&path).unwrap().set_len(8 << 40).unwrap();
        let io = crate::io::Io::new(crate::io::IoOptions::default()).unwrap();
        match futures::executor::block_on(read_log(&io, &path, 7, RecoveryMode::KeepAllOrFail)) {
            Err(Error::Corruption { file, offset: 0, reason }) => {
                assert_eq!(file, path);
                assert!(reason.contains("does not fit"), "{reason}");
            }
            other => panic!("expected corruption, got {:?}", other.map(|c| c.groups.len())),
        }
    }
}
