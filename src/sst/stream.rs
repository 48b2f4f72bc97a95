//! The byte stream that blocks are encoded into.
//!
//! Parts of a parallel flush are encoded into a `Vec<u8>` in memory. The
//! table writer encodes straight into an [`AlignedBuf`], the very buffer
//! that is then handed to the kernel as an O_DIRECT write: when a staging
//! buffer's worth of finished blocks has been encoded, the few bytes past
//! it (the end of the last block, the open block) move to a fresh buffer,
//! and the full one goes to the device. Encoding into a `Vec` and copying
//! each megabyte into an aligned buffer cost a tenth of a flush's encoding
//! (5-10 ms of 60-100 ms for 1M entries of 16+100 bytes on the test VM).

use crate::coding::MAX_VARINT_BYTES;
use crate::io::AlignedBuf;

/// Room for an entry's three length varints (shared, unshared, value).
pub(crate) const ENTRY_HEADER_BYTES: usize = 3 * MAX_VARINT_BYTES;

/// A growable byte buffer that blocks are encoded at the end of.
pub(crate) trait Stream {
    /// Bytes in the stream.
    fn len(&self) -> usize;
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// Appends `bytes`, growing the buffer if they do not fit.
    fn append(&mut self, bytes: &[u8]);
    /// Appends `n` zero bytes.
    fn append_zeros(&mut self, n: usize);
    /// Drops every byte from `len` on.
    fn truncate(&mut self, len: usize);
    /// Appends one block entry: the first `header_len` bytes of `header`,
    /// then `key`, then `value`.
    fn append_entry(&mut self, header: &[u8; ENTRY_HEADER_BYTES], header_len: usize, key: &[u8], value: &[u8]) {
        self.append(&header[..header_len]);
        self.append(key);
        self.append(value);
    }
}

impl Stream for Vec<u8> {
    #[inline]
    fn len(&self) -> usize {
        Vec::len(self)
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        self
    }

    #[inline]
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn append_zeros(&mut self, n: usize) {
        self.resize(Vec::len(self) + n, 0);
    }

    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

impl Stream for AlignedBuf {
    #[inline]
    fn len(&self) -> usize {
        AlignedBuf::len(self)
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        self
    }

    #[inline]
    fn append(&mut self, bytes: &[u8]) {
        if self.remaining() < bytes.len() {
            grow(self, AlignedBuf::len(self) + bytes.len());
        }
        let taken = self.extend_from_slice(bytes);
        debug_assert_eq!(taken, bytes.len());
    }

    /// One room check and no call to copy the header: a flush appends
    /// millions of entries, and three checked appends cost the encoder 6%
    /// more instructions (callgrind, 1M entries of 16+100 bytes: 511
    /// against 478 per entry).
    #[inline]
    fn append_entry(&mut self, header: &[u8; ENTRY_HEADER_BYTES], header_len: usize, key: &[u8], value: &[u8]) {
        let start = AlignedBuf::len(self);
        let end = start + header_len + key.len() + value.len();
        // The whole header array is copied (a fixed size, so no call) and
        // the key then overwrites the part past `header_len`.
        if self.capacity() < end.max(start + ENTRY_HEADER_BYTES) {
            grow(self, end.max(start + ENTRY_HEADER_BYTES));
        }
        let out = &mut self.as_full_mut_slice()[start..];
        out[..ENTRY_HEADER_BYTES].copy_from_slice(header);
        let key_end = header_len + key.len();
        out[header_len..key_end].copy_from_slice(key);
        out[key_end..key_end + value.len()].copy_from_slice(value);
        self.set_len(end);
    }

    fn append_zeros(&mut self, n: usize) {
        let (start, end) = (AlignedBuf::len(self), AlignedBuf::len(self) + n);
        if self.capacity() < end {
            grow(self, end);
        }
        self.as_full_mut_slice()[start..end].fill(0);
        self.set_len(end);
    }

    fn truncate(&mut self, len: usize) {
        if len < AlignedBuf::len(self) {
            self.set_len(len);
        }
    }
}

/// Moves `buf`'s bytes into a new buffer of at least `needed` bytes (and at
/// least twice its capacity), of the same alignment. Rare: a stream buffer
/// has room for a staging buffer and then some; only an entry larger than
/// that room gets here.
#[cold]
fn grow(buf: &mut AlignedBuf, needed: usize) {
    let mut bigger = AlignedBuf::new(needed.max(2 * buf.capacity()), buf.alignment());
    bigger.extend_from_slice(buf);
    *buf = bigger;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aligned_stream_grows_past_its_capacity_and_keeps_its_bytes_and_alignment() {
        let mut stream = AlignedBuf::new(512, 512);
        let bytes: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
        stream.append(&bytes[..400]);
        stream.append(&bytes[400..]);
        stream.append_zeros(100);
        assert!(stream.capacity() >= 1600);
        assert_eq!(stream.alignment(), 512);
        assert_eq!(&stream.bytes()[..1500], &bytes[..]);
        assert!(stream.bytes()[1500..].iter().all(|&b| b == 0));
        assert_eq!(Stream::len(&stream), 1600);
        Stream::truncate(&mut stream, 10);
        assert_eq!(stream.bytes(), &bytes[..10]);
    }

    #[test]
    fn both_streams_hold_the_same_bytes() {
        let mut vec = Vec::new();
        let mut aligned = AlignedBuf::new(4096, 4096);
        // A pooled buffer's stale bytes must not show through append_zeros.
        aligned.as_full_mut_slice().fill(0xAB);
        for stream in [&mut vec as &mut dyn Stream, &mut aligned] {
            stream.append(b"abc");
            stream.append_zeros(5);
            stream.append(b"de");
            stream.truncate(9);
        }
        assert_eq!(vec, b"abc\0\0\0\0\0d");
        assert_eq!(aligned.bytes(), &vec[..]);
    }

    #[test]
    fn an_entry_appends_its_header_key_and_value_and_nothing_more() {
        let mut header = [0xEE; ENTRY_HEADER_BYTES];
        header[..3].copy_from_slice(&[1, 2, 3]);
        // Room for the entry but not for the whole header array past it:
        // the aligned stream grows rather than copying out of bounds.
        let mut aligned = AlignedBuf::new(512, 512);
        aligned.as_full_mut_slice().fill(0xAB);
        aligned.set_len(500);
        let mut vec = vec![0xAB; 500];
        for stream in [&mut vec as &mut dyn Stream, &mut aligned] {
            stream.append_entry(&header, 3, b"key", b"value");
            stream.append_entry(&header, 2, b"", b"");
        }
        let mut want = vec![0xAB; 500];
        want.extend_from_slice(b"\x01\x02\x03keyvalue\x01\x02");
        assert_eq!(vec, want);
        assert_eq!(aligned.bytes(), &want[..]);
        assert_eq!(aligned.alignment(), 512);
    }
}
