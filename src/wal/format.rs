//! Byte layout of WAL headers and group records (`docs/format/wal.md`).

use crate::coding::{Reader, put_u32, put_u64};

/// Magic bytes at the start of every WAL file.
pub(crate) const MAGIC: &[u8; 8] = b"RINGWAL1";
/// Version of the format this code writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The WAL's write unit: headers and groups start on multiples of it.
pub(crate) const SECTOR_BYTES: usize = 4096;
/// Bytes of the file header that carry data (the rest of the sector is zero).
pub(crate) const FILE_HEADER_BYTES: usize = 40;
/// Bytes of a group record header.
pub(crate) const RECORD_HEADER_BYTES: usize = 28;
/// Record type of a group of write batches. 0 is never a type: all-zero means unwritten.
pub(crate) const RECORD_TYPE_GROUP: u8 = 1;

/// The file header, filling `out` (one sector, zero-padded).
pub(crate) fn encode_file_header(out: &mut [u8], log_number: u64) {
    assert!(out.len() >= FILE_HEADER_BYTES);
    let mut header = Vec::with_capacity(FILE_HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    put_u32(&mut header, FORMAT_VERSION);
    put_u32(&mut header, SECTOR_BYTES as u32);
    put_u64(&mut header, log_number);
    let crc = crc32fast::hash(&header);
    put_u32(&mut header, crc);
    header.resize(FILE_HEADER_BYTES, 0);
    out.fill(0);
    out[..FILE_HEADER_BYTES].copy_from_slice(&header);
}

/// Parses a file header; returns (log_number, sector_bytes) or what is wrong with it.
pub(crate) fn decode_file_header(bytes: &[u8]) -> Result<(u64, usize), String> {
    let mut reader = Reader::new(bytes);
    let fields = reader.take(24).ok_or("file shorter than its header")?;
    let crc = reader.u32().ok_or("file shorter than its header")?;
    if crc != crc32fast::hash(fields) {
        return Err("header checksum mismatch".into());
    }
    let mut fields = Reader::new(fields);
    if fields.take(8) != Some(MAGIC.as_slice()) {
        return Err("not a ringdb WAL (bad magic)".into());
    }
    let version = fields.u32().expect("checked length");
    let sector = fields.u32().expect("checked length") as usize;
    let log_number = fields.u64().expect("checked length");
    if version != FORMAT_VERSION {
        return Err(format!("WAL format version {version} is not supported (this build reads {FORMAT_VERSION})"));
    }
    if sector != SECTOR_BYTES {
        return Err(format!("WAL sector size {sector} is not supported (this build uses {SECTOR_BYTES})"));
    }
    Ok((log_number, sector))
}

/// Writes a record header for `payload` into `out[..RECORD_HEADER_BYTES]`.
/// `synced_through` is the file offset below which every group was durable
/// (its fdatasync completed) when this record was built.
pub(crate) fn encode_record_header(out: &mut [u8], log_number: u64, synced_through: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("group payloads are bounded far below 4 GiB");
    let mut header = Vec::with_capacity(RECORD_HEADER_BYTES);
    put_u32(&mut header, 0); // crc, filled below
    put_u32(&mut header, len);
    header.extend_from_slice(&[RECORD_TYPE_GROUP, 0, 0, 0]);
    put_u64(&mut header, log_number);
    put_u64(&mut header, synced_through);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..]);
    hasher.update(payload);
    header[..4].copy_from_slice(&hasher.finalize().to_le_bytes());
    out[..RECORD_HEADER_BYTES].copy_from_slice(&header);
}

/// What is at a record position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecordAt<'a> {
    /// All-zero header: nothing was written here.
    Unwritten,
    /// A record that checks out.
    Valid {
        /// The encoded batches.
        payload: &'a [u8],
        /// Every group below this offset was durable when the record was built.
        synced_through: u64,
    },
    /// Anything else, with the reason.
    Invalid(String),
}

/// Examines the record at file offset `offset`, starting at `bytes[0]` (which runs to the end of the file).
pub(crate) fn record_at(bytes: &[u8], offset: usize, log_number: u64) -> RecordAt<'_> {
    record_at_with(bytes, offset, log_number, |header_tail, payload| {
        count_checksummed(header_tail.len() + payload.len());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(header_tail);
        hasher.update(payload);
        hasher.finalize()
    })
}

/// [`record_at`], with the record's checksum computed by `checksum` from the
/// checksummed part of its header and its payload.
pub(crate) fn record_at_with<'a>(
    bytes: &'a [u8],
    offset: usize,
    log_number: u64,
    checksum: impl FnOnce(&[u8], &'a [u8]) -> u32,
) -> RecordAt<'a> {
    let Some(header) = bytes.get(..RECORD_HEADER_BYTES) else {
        return if bytes.iter().all(|&b| b == 0) {
            RecordAt::Unwritten
        } else {
            RecordAt::Invalid("file ends inside a record header".into())
        };
    };
    if header.iter().all(|&b| b == 0) {
        return RecordAt::Unwritten;
    }
    let mut reader = Reader::new(header);
    let crc = reader.u32().expect("28 bytes");
    let len = reader.u32().expect("28 bytes") as usize;
    let kind = reader.take(4).expect("28 bytes");
    let record_log = reader.u64().expect("28 bytes");
    let synced_through = reader.u64().expect("28 bytes");
    if kind != [RECORD_TYPE_GROUP, 0, 0, 0] {
        return RecordAt::Invalid(format!("unknown record type/reserved bytes {kind:02x?}"));
    }
    if record_log != log_number {
        return RecordAt::Invalid(format!("record of log {record_log} in log {log_number} (stale bytes)"));
    }
    if len == 0 {
        return RecordAt::Invalid("empty record".into());
    }
    // Checked: on a 32-bit target a length near 2^32 would overflow.
    let Some(payload) = RECORD_HEADER_BYTES.checked_add(len).and_then(|end| bytes.get(RECORD_HEADER_BYTES..end)) else {
        return RecordAt::Invalid(format!("record of {len} bytes runs past the end of the file"));
    };
    if checksum(&header[4..], payload) != crc {
        return RecordAt::Invalid("record checksum mismatch".into());
    }
    if synced_through > offset as u64 {
        return RecordAt::Invalid(format!("synced_through {synced_through} lies past the record itself"));
    }
    RecordAt::Valid { payload, synced_through }
}

/// The offset of the sector after a record of `payload_len` bytes starting at `offset`.
pub(crate) fn next_record_offset(offset: usize, payload_len: usize) -> usize {
    (offset + RECORD_HEADER_BYTES + payload_len).next_multiple_of(SECTOR_BYTES)
}

/// CRC-32s of ranges of one buffer after one pass over it, each for at most
/// two partial sectors of hashing and a few multiplications in GF(2) however
/// long the range: recovery's scan past damage checks a
/// record claimed at every sector, and claims may overlap (headers of this
/// log that it did not write: a crafted file, or value bytes in a torn
/// group's payload or a recycled file's stale records). Hashing each claim
/// cost work quadratic in the file's size.
///
/// CRC-32 is affine: `crc(a ‖ b) = shift(crc(a), |b|) ^ crc(b)`, where
/// `shift` appends `|b|` zero bytes' worth of state (crc32fast's `combine`
/// with a second CRC of 0). So a range's CRC is the CRC of the prefix up to
/// its end, with the shifted CRC of the prefix before it taken out.
pub(crate) struct RangeCrcs<'a> {
    data: &'a [u8],
    /// `sector_prefixes[k]`: the CRC of `data[..k * SECTOR_BYTES]`.
    sector_prefixes: Vec<u32>,
}

impl<'a> RangeCrcs<'a> {
    /// One pass over `data`.
    pub(crate) fn new(data: &'a [u8]) -> RangeCrcs<'a> {
        count_checksummed(data.len());
        let mut sector_prefixes = Vec::with_capacity(data.len() / SECTOR_BYTES + 1);
        let mut hasher = crc32fast::Hasher::new();
        sector_prefixes.push(hasher.clone().finalize());
        for sector in data.chunks_exact(SECTOR_BYTES) {
            hasher.update(sector);
            sector_prefixes.push(hasher.clone().finalize());
        }
        RangeCrcs { data, sector_prefixes }
    }

    /// The CRC of `data[..end]`: a sector prefix and at most a sector's bytes.
    fn prefix(&self, end: usize) -> u32 {
        let sector = end / SECTOR_BYTES;
        let start = sector * SECTOR_BYTES;
        count_checksummed(end - start);
        let mut hasher = crc32fast::Hasher::new_with_initial(self.sector_prefixes[sector]);
        hasher.update(&self.data[start..end]);
        hasher.finalize()
    }

    /// The CRC of `data[range]`.
    ///
    /// # Panics
    /// If the range is not within the buffer.
    pub(crate) fn crc(&self, range: std::ops::Range<usize>) -> u32 {
        assert!(range.start <= range.end && range.end <= self.data.len(), "a range of the buffer");
        self.prefix(range.end) ^ shift(self.prefix(range.start), range.len() as u64)
    }

    /// A record's checksum (see [`record_at`]): the CRC of `header_tail`
    /// followed by the payload, `data[payload_start..][..payload_len]`.
    pub(crate) fn record_crc(&self, header_tail: &[u8], payload_start: usize, payload_len: usize) -> u32 {
        count_checksummed(header_tail.len());
        let payload_crc = self.crc(payload_start..payload_start + payload_len);
        crc_concat(crc32fast::hash(header_tail), payload_crc, payload_len as u64)
    }
}

/// The CRC of `a ‖ b` from the CRCs of `a` and `b`.
fn crc_concat(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(crc_a);
    hasher.combine(&crc32fast::Hasher::new_with_initial_len(crc_b, len_b));
    hasher.finalize()
}

/// What a prefix whose CRC is `crc` contributes to the CRC of itself
/// followed by `len` more bytes (the CRC of `len` zero bytes' worth of shift).
fn shift(crc: u32, len: u64) -> u32 {
    crc_concat(crc, 0, len)
}

#[cfg(test)]
thread_local! {
    static CHECKSUMMED_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts bytes run through a CRC, for tests that bound recovery's work.
#[inline]
fn count_checksummed(_bytes: usize) {
    #[cfg(test)]
    CHECKSUMMED_BYTES.with(|count| count.set(count.get() + _bytes));
}

/// Bytes this thread has run through a record CRC or a [`RangeCrcs`] so far.
#[cfg(test)]
pub(crate) fn checksummed_bytes() -> usize {
    CHECKSUMMED_BYTES.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn range_crcs_match_hashing_the_range(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3 * SECTOR_BYTES + 100),
            a in 0usize..4 * SECTOR_BYTES,
            b in 0usize..4 * SECTOR_BYTES,
        ) {
            let (start, end) = (a.min(b).min(data.len()), a.max(b).min(data.len()));
            let crcs = RangeCrcs::new(&data);
            proptest::prop_assert_eq!(crcs.crc(start..end), crc32fast::hash(&data[start..end]));
            let (head, tail) = data[start..end].split_at((end - start) / 3);
            let concat = crc_concat(crc32fast::hash(head), crc32fast::hash(tail), tail.len() as u64);
            proptest::prop_assert_eq!(concat, crc32fast::hash(&data[start..end]));
        }
    }

    #[test]
    fn range_crcs_at_sector_edges_match_hashing_the_range() {
        const S: usize = SECTOR_BYTES;
        for len in [0, 1, S - 1, S, S + 1, 2 * S, 2 * S + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let crcs = RangeCrcs::new(&data);
            let points = [0, 1, S - 1, S, S + 1, len.saturating_sub(1), len];
            for &start in points.iter().filter(|&&p| p <= len) {
                for &end in points.iter().filter(|&&p| p >= start && p <= len) {
                    assert_eq!(crcs.crc(start..end), crc32fast::hash(&data[start..end]), "len {len}, {start}..{end}");
                }
            }
        }
    }

    #[test]
    fn worked_example_of_the_format_doc() {
        let mut sector = vec![0xaa; SECTOR_BYTES];
        encode_file_header(&mut sector, 7);
        let expected_header = "52 49 4e 47 57 41 4c 31 01 00 00 00 00 10 00 00 07 00 00 00 00 00 00 00 b6 53 5c 9d";
        assert_eq!(hex(&sector[..28]), expected_header);
        assert!(sector[28..].iter().all(|&b| b == 0));
        assert_eq!(decode_file_header(&sector), Ok((7, SECTOR_BYTES)));

        // put("k", "v") as sequence 1.
        let payload = [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, b'k', 1, b'v'];
        let mut record = vec![0u8; RECORD_HEADER_BYTES];
        encode_record_header(&mut record, 7, 4096, &payload);
        record.extend_from_slice(&payload);
        assert_eq!(hex(&record), WORKED_EXAMPLE_RECORD);
        assert_eq!(record_at(&record, 4096, 7), RecordAt::Valid { payload: &payload[..], synced_through: 4096 });
        assert!(matches!(record_at(&record, 4096, 8), RecordAt::Invalid(m) if m.contains("stale")));
        assert!(matches!(record_at(&record, 0, 7), RecordAt::Invalid(m) if m.contains("synced_through")));
        assert_eq!(next_record_offset(4096, payload.len()), 8192);
    }

    /// The record of the format doc's worked example, byte for byte.
    const WORKED_EXAMPLE_RECORD: &str = "b4 e2 d3 52 11 00 00 00 01 00 00 00 07 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 01 01 6b 01 76";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn headers_reject_damage_and_newer_versions() {
        let mut sector = vec![0; SECTOR_BYTES];
        encode_file_header(&mut sector, 3);
        for cut in 0..28 {
            assert!(decode_file_header(&sector[..cut]).is_err());
        }
        let mut flipped = sector.clone();
        flipped[17] ^= 4;
        assert!(decode_file_header(&flipped).unwrap_err().contains("checksum"));
        // A newer version with a valid checksum.
        let mut newer = sector[..24].to_vec();
        newer[8] = 2;
        let crc = crc32fast::hash(&newer);
        newer.extend_from_slice(&crc.to_le_bytes());
        assert!(decode_file_header(&newer).unwrap_err().contains("version 2"));
    }

    #[test]
    fn record_examination_never_trusts_a_damaged_length() {
        let payload = vec![9u8; 100];
        let mut record = vec![0u8; RECORD_HEADER_BYTES];
        encode_record_header(&mut record, 1, 0, &payload);
        record.extend_from_slice(&payload);
        for cut in 1..record.len() {
            assert!(matches!(record_at(&record[..cut], 4096, 1), RecordAt::Invalid(_)), "cut {cut}");
        }
        for byte in 0..record.len() {
            let mut flipped = record.clone();
            flipped[byte] ^= 0x10;
            assert!(matches!(record_at(&flipped, 4096, 1), RecordAt::Invalid(_)), "flip in byte {byte}");
        }
        assert_eq!(record_at(&[0u8; 7], 4096, 1), RecordAt::Unwritten);
    }
}
