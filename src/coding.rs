//! Fixed-width little-endian and LEB128 varint helpers for on-disk formats.
//!
//! Decoders take untrusted bytes and return `None` on truncation or overlong
//! input; callers turn that into `Error::Corruption` with the file and offset.
//! Nothing pointer-sized ever reaches disk: only `u8`/`u32`/`u64`.

/// Appends `value` as 4 little-endian bytes.
pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value` as 8 little-endian bytes.
pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value` as a LEB128 varint (1 to 10 bytes).
pub(crate) fn put_varint(out: &mut Vec<u8>, value: u64) {
    let mut bytes = [0u8; MAX_VARINT_BYTES];
    let len = write_varint(&mut bytes, 0, value);
    out.extend_from_slice(&bytes[..len]);
}

/// The most bytes a varint takes.
pub(crate) const MAX_VARINT_BYTES: usize = 10;

/// Writes `value` as a LEB128 varint into `out` at `at` and returns where it
/// ends (for encoders that gather several fields before one append).
pub(crate) fn write_varint(out: &mut [u8], mut at: usize, mut value: u64) -> usize {
    while value >= 0x80 {
        out[at] = (value as u8) | 0x80;
        value >>= 7;
        at += 1;
    }
    out[at] = value as u8;
    at + 1
}

/// The number of bytes [`put_varint`] writes for `value`.
pub(crate) fn varint_len(value: u64) -> usize {
    // One byte per started group of 7 bits, and one byte for 0.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A LEB128 varint of at most 10 bytes that fits in a u64.
    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return None; // overflows u64
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A varint length followed by that many bytes.
    pub(crate) fn length_prefixed(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn varint_len_matches_what_put_varint_writes() {
        let mut values = vec![0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX - 1, u64::MAX];
        values.extend((0..64).map(|shift| 1u64 << shift));
        values.extend((1..64).map(|shift| (1u64 << shift) - 1));
        for value in values {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(varint_len(value), out.len(), "value {value}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(values in proptest::collection::vec(any::<u64>(), 0..50)) {
            let mut out = Vec::new();
            for v in &values {
                put_varint(&mut out, *v);
            }
            let mut reader = Reader::new(&out);
            for v in &values {
                prop_assert_eq!(reader.varint(), Some(*v));
            }
            prop_assert_eq!(reader.remaining(), 0);
        }

        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut reader = Reader::new(&bytes);
            while reader.remaining() > 0 {
                if reader.length_prefixed().is_none() {
                    break;
                }
            }
        }
    }

    #[test]
    fn fixed_width_is_little_endian_and_truncation_is_none() {
        let mut out = Vec::new();
        put_u32(&mut out, 0x0403_0201);
        put_u64(&mut out, 0x0c0b_0a09_0807_0605);
        assert_eq!(out, (1..=12).collect::<Vec<u8>>());
        let mut reader = Reader::new(&out);
        assert_eq!(reader.u32(), Some(0x0403_0201));
        assert_eq!(reader.u32(), Some(0x0807_0605));
        assert_eq!(reader.u64(), None, "only 4 bytes left");
        assert_eq!(reader.position(), 8);
    }

    #[test]
    fn overlong_varints_are_rejected() {
        assert_eq!(Reader::new(&[0x80; 11]).varint(), None);
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).varint(), None);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).varint(), Some(u64::MAX));
    }
}
