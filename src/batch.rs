//! `WriteBatch`: several puts and deletes applied atomically, and its encoding
//! inside a WAL group record (see `docs/format/wal.md`, "Batch").

use bytes::Bytes;

use crate::coding::{Reader, put_u32, put_u64, put_varint};
use crate::key::{SeqNo, ValueKind};
use crate::{Error, Result};

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// The longest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;
/// The largest encoded batch accepted, in bytes.
pub const MAX_BATCH_BYTES: usize = 128 * 1024 * 1024;
/// Bytes before the entries of an encoded batch: `first_seq` u64 + `count` u32.
pub(crate) const BATCH_HEADER_BYTES: usize = 12;

/// Puts and deletes that become visible together and are logged as one unit.
///
/// Building a batch never fails; limits (empty keys, [`MAX_KEY_BYTES`],
/// [`MAX_VALUE_BYTES`], [`MAX_BATCH_BYTES`]) are checked when it is written,
/// which returns [`Error::InvalidArgument`] naming the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Entries in their on-disk encoding (without the batch header).
    entries: Vec<u8>,
    count: u32,
    problem: Option<String>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds `key = value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut WriteBatch {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.check_key(key);
        if value.len() > MAX_VALUE_BYTES && self.problem.is_none() {
            self.problem = Some(format!("value of {} bytes exceeds MAX_VALUE_BYTES ({MAX_VALUE_BYTES})", value.len()));
        }
        self.entries.push(ValueKind::Put as u8);
        put_varint(&mut self.entries, key.len() as u64);
        self.entries.extend_from_slice(key);
        put_varint(&mut self.entries, value.len() as u64);
        self.entries.extend_from_slice(value);
        self.count = self.count.saturating_add(1);
        self
    }

    /// Adds a deletion of `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut WriteBatch {
        let key = key.as_ref();
        self.check_key(key);
        self.entries.push(ValueKind::Delete as u8);
        put_varint(&mut self.entries, key.len() as u64);
        self.entries.extend_from_slice(key);
        self.count = self.count.saturating_add(1);
        self
    }

    fn check_key(&mut self, key: &[u8]) {
        if self.problem.is_some() {
            return;
        }
        if key.is_empty() {
            self.problem = Some("empty keys are not allowed".into());
        } else if key.len() > MAX_KEY_BYTES {
            self.problem = Some(format!("key of {} bytes exceeds MAX_KEY_BYTES ({MAX_KEY_BYTES})", key.len()));
        }
    }

    /// Number of puts and deletes.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes everything, keeping the allocation.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.count = 0;
        self.problem = None;
    }

    /// The size of the batch in the log, in bytes.
    pub fn encoded_size_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.entries.len()
    }

    /// Checks the documented limits.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(problem) = &self.problem {
            return Err(Error::InvalidArgument(problem.clone()));
        }
        if self.encoded_size_bytes() > MAX_BATCH_BYTES {
            return Err(Error::InvalidArgument(format!(
                "batch of {} bytes exceeds MAX_BATCH_BYTES ({MAX_BATCH_BYTES})",
                self.encoded_size_bytes()
            )));
        }
        Ok(())
    }

    /// Appends the batch's log encoding, numbering its entries from `first_seq`.
    #[cfg(test)]
    pub(crate) fn encode_to(&self, out: &mut Vec<u8>, first_seq: SeqNo) {
        encode_batch(out, first_seq, self.count, &self.entries);
    }

    /// The batch as it is written: its entries move (no copy) into one shared
    /// buffer that the memtable's values are slices of. One allocation per
    /// batch instead of one per value, both when the batch is inserted (under
    /// the state lock) and when its memtable is dropped after a flush.
    pub(crate) fn freeze(self) -> FrozenBatch {
        // A lone value is copied instead, as exactly its length: sharing would
        // keep the batch's header and spare capacity alive, and turning the
        // vector into `Bytes` costs an allocation of its own.
        let entries = if self.count > 1 {
            let mut entries = self.entries;
            // The memtable charges keys and values, not the vector's spare
            // capacity (up to half of it after doubling): give that back.
            if entries.capacity() - entries.len() > entries.len() / 8 {
                entries.shrink_to_fit();
            }
            Entries::Shared(Bytes::from(entries))
        } else {
            Entries::Owned(self.entries)
        };
        FrozenBatch { entries, count: self.count }
    }
}

/// A validated batch on its way into the log and the memtable.
#[derive(Debug)]
pub(crate) struct FrozenBatch {
    entries: Entries,
    count: u32,
}

#[derive(Debug)]
enum Entries {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl std::ops::Deref for Entries {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Entries::Owned(vec) => vec,
            Entries::Shared(bytes) => bytes,
        }
    }
}

impl FrozenBatch {
    /// Number of puts and deletes.
    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    /// The size of the batch in the log, in bytes.
    pub(crate) fn encoded_size_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.entries.len()
    }

    /// Appends the batch's log encoding, numbering its entries from `first_seq`.
    pub(crate) fn encode_to(&self, out: &mut Vec<u8>, first_seq: SeqNo) {
        encode_batch(out, first_seq, self.count, &self.entries);
    }

    /// Calls `apply` for every entry in order, numbered from `first_seq`; the
    /// values of a batch of several entries are slices of its one buffer.
    pub(crate) fn for_each_entry(&self, first_seq: SeqNo, mut apply: impl FnMut(SeqNo, ValueKind, &[u8], Bytes)) {
        let mut reader = Reader::new(&self.entries);
        for i in 0..u64::from(self.count) {
            let (kind, key, value) = decode_entry(&mut reader).expect("a batch built by WriteBatch decodes");
            let value = match &self.entries {
                _ if value.is_empty() => Bytes::new(),
                Entries::Owned(_) => Bytes::copy_from_slice(value),
                Entries::Shared(bytes) => bytes.slice_ref(value),
            };
            apply(SeqNo(first_seq.0 + i), kind, key, value);
        }
    }
}

fn encode_batch(out: &mut Vec<u8>, first_seq: SeqNo, count: u32, entries: &[u8]) {
    put_u64(out, first_seq.0);
    put_u32(out, count);
    out.extend_from_slice(entries);
}

/// One entry (kind, key, value; the value is empty for deletes), or why it is malformed.
fn decode_entry<'a>(reader: &mut Reader<'a>) -> std::result::Result<(ValueKind, &'a [u8], &'a [u8]), String> {
    let at = reader.position();
    let kind = reader.u8().and_then(ValueKind::from_u8).ok_or_else(|| format!("bad entry kind at {at}"))?;
    let key = reader.length_prefixed().ok_or_else(|| format!("truncated key at {at}"))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("key of {} bytes at {at}", key.len()));
    }
    let value = match kind {
        ValueKind::Put => reader.length_prefixed().ok_or_else(|| format!("truncated value at {at}"))?,
        ValueKind::Delete => &[],
    };
    Ok((kind, key, value))
}

/// One decoded entry of a batch, borrowing from the log payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchEntry<'a> {
    pub(crate) seq: SeqNo,
    pub(crate) kind: ValueKind,
    pub(crate) key: &'a [u8],
    /// Empty for deletes.
    pub(crate) value: &'a [u8],
}

/// Decodes the batches of a group payload, calling `apply` for every entry in order.
/// Returns the last sequence number, or a reason the payload is malformed. Each
/// batch must start at `expected_first_seq` (when given) or right after the previous one.
pub(crate) fn decode_batches<'a>(
    payload: &'a [u8],
    mut expected_first_seq: Option<SeqNo>,
    mut apply: impl FnMut(BatchEntry<'a>),
) -> std::result::Result<SeqNo, String> {
    let mut reader = Reader::new(payload);
    let mut last = None;
    while reader.remaining() > 0 {
        let at = reader.position();
        let first_seq = SeqNo(reader.u64().ok_or_else(|| format!("truncated batch header at {at}"))?);
        let count = reader.u32().ok_or_else(|| format!("truncated batch header at {at}"))?;
        if count == 0 {
            return Err(format!("empty batch at {at}"));
        }
        if let Some(expected) = expected_first_seq
            && expected != first_seq
        {
            return Err(format!("batch at {at} starts at sequence {first_seq}, expected {expected}"));
        }
        let last_seq = first_seq.0.checked_add(u64::from(count) - 1).filter(|s| *s <= SeqNo::MAX.0);
        let last_seq = SeqNo(last_seq.ok_or_else(|| format!("sequence numbers of the batch at {at} overflow"))?);
        for i in 0..u64::from(count) {
            let (kind, key, value) = decode_entry(&mut reader)?;
            apply(BatchEntry { seq: SeqNo(first_seq.0 + i), kind, key, value });
        }
        last = Some(last_seq);
        expected_first_seq = last_seq.checked_next();
        if expected_first_seq.is_none() && reader.remaining() > 0 {
            return Err(format!("sequence numbers overflow after the batch at {at}"));
        }
    }
    last.ok_or_else(|| "empty payload".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Vec<(u64, ValueKind, Vec<u8>, Vec<u8>)>;

    fn decode_all(payload: &[u8], first: Option<SeqNo>) -> std::result::Result<Decoded, String> {
        let mut out = Vec::new();
        decode_batches(payload, first, |e| out.push((e.seq.0, e.kind, e.key.to_vec(), e.value.to_vec())))?;
        Ok(out)
    }

    #[test]
    fn frozen_batches_yield_every_entry_and_share_one_buffer() {
        let mut batch = WriteBatch::new();
        batch.put("k1", "v1").delete("k2").put("k3", "").put("k4", vec![9u8; 300]);
        let frozen = batch.clone().freeze();
        assert_eq!(frozen.len(), 4);
        assert_eq!(frozen.encoded_size_bytes(), batch.encoded_size_bytes());
        let (mut logged, mut expected) = (Vec::new(), Vec::new());
        frozen.encode_to(&mut logged, SeqNo(7));
        batch.encode_to(&mut expected, SeqNo(7));
        assert_eq!(logged, expected);

        let mut seen = Vec::new();
        frozen.for_each_entry(SeqNo(7), |seq, kind, key, value| seen.push((seq.0, kind, key.to_vec(), value)));
        let plain: Vec<_> = seen.iter().map(|(s, k, key, v)| (*s, *k, key.clone(), v.to_vec())).collect();
        assert_eq!(plain, decode_all(&expected, Some(SeqNo(7))).unwrap());
        // The two non-empty values are slices of one buffer, as far apart as in
        // the encoding: "v1" at entry offset 5, the 300 bytes at 22 (after
        // `1 02 k1 02 v1`, `2 02 k2`, `1 02 k3 00` and `1 02 k4 ac02`).
        let (a, b) = (&seen[0].3, &seen[3].3);
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 17, "values of one batch share its buffer");

        let mut lone = WriteBatch::new();
        lone.put("only", "value");
        let mut values = Vec::new();
        lone.freeze().for_each_entry(SeqNo(1), |seq, kind, key, value| values.push((seq.0, kind, key.to_vec(), value)));
        assert_eq!(values, vec![(1, ValueKind::Put, b"only".to_vec(), Bytes::from_static(b"value"))]);
    }

    #[test]
    fn batches_round_trip_with_consecutive_sequence_numbers() {
        let mut a = WriteBatch::new();
        a.put("k1", "v1").delete("k2").put("k3", "");
        let mut b = WriteBatch::new();
        b.put(vec![0xffu8; 300], vec![7u8; 1000]);
        let mut payload = Vec::new();
        a.encode_to(&mut payload, SeqNo(10));
        b.encode_to(&mut payload, SeqNo(13));
        assert_eq!(payload.len(), a.encoded_size_bytes() + b.encoded_size_bytes());
        let entries = decode_all(&payload, Some(SeqNo(10))).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0], (10, ValueKind::Put, b"k1".to_vec(), b"v1".to_vec()));
        assert_eq!(entries[1], (11, ValueKind::Delete, b"k2".to_vec(), vec![]));
        assert_eq!(entries[2], (12, ValueKind::Put, b"k3".to_vec(), vec![]));
        assert_eq!(entries[3].0, 13);
        assert_eq!(entries[3].3.len(), 1000);
        assert!(decode_all(&payload, Some(SeqNo(9))).is_err(), "wrong expected start");
    }

    #[test]
    fn gaps_between_batches_are_malformed() {
        let mut a = WriteBatch::new();
        a.put("k", "v");
        let mut payload = Vec::new();
        a.encode_to(&mut payload, SeqNo(1));
        a.encode_to(&mut payload, SeqNo(3));
        assert!(decode_all(&payload, None).unwrap_err().contains("expected 2"));
    }

    #[test]
    fn limits_are_invalid_arguments_naming_the_limit() {
        let mut empty_key = WriteBatch::new();
        empty_key.put("", "v");
        assert!(matches!(empty_key.validate(), Err(Error::InvalidArgument(m)) if m.contains("empty")));
        let mut long_key = WriteBatch::new();
        long_key.delete(vec![1u8; MAX_KEY_BYTES + 1]);
        assert!(matches!(long_key.validate(), Err(Error::InvalidArgument(m)) if m.contains("MAX_KEY_BYTES")));
        let mut ok = WriteBatch::new();
        ok.put(vec![1u8; MAX_KEY_BYTES], "v");
        ok.validate().unwrap();
        ok.clear();
        assert!(ok.is_empty());
    }

    #[test]
    fn every_truncation_and_many_bit_flips_fail_cleanly() {
        let mut batch = WriteBatch::new();
        batch.put("alpha", "one").delete("beta").put("gamma", vec![3u8; 200]);
        let mut payload = Vec::new();
        batch.encode_to(&mut payload, SeqNo(100));
        for cut in 0..payload.len() {
            assert!(decode_all(&payload[..cut], None).is_err(), "cut at {cut}");
        }
        for byte in 0..payload.len() {
            for bit in 0..8 {
                let mut flipped = payload.clone();
                flipped[byte] ^= 1 << bit;
                let _ = decode_all(&flipped, None); // must not panic
            }
        }
    }
}
