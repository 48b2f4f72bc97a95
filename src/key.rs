//! Sequence numbers, value kinds and internal keys: the ordering every LSM layer agrees on.
//!
//! An *internal key* is the user key followed by an 8-byte trailer, as in LevelDB:
//!
//! ```text
//! +-------------------+----------------------------------------------+
//! | user key (n bytes)| trailer: u64 little-endian = seq << 8 | kind |
//! +-------------------+----------------------------------------------+
//! ```
//!
//! Worked example: user key `"ab"`, seq 1, kind `Put` (1). The trailer is `(1 << 8) | 1 = 0x101`,
//! so the encoded key is `61 62 01 01 00 00 00 00 00 00`.
//!
//! Internal keys sort by user key ascending (bytewise), then seq *descending*, then kind
//! descending. Within one user key the newest version comes first, so "the value of `k` at
//! snapshot `s`" is the first entry at or after [`InternalKey::lookup`]`(k, s)`.
//!
//! The encoding is embedded in WAL records and SST blocks: the trailer layout and the
//! [`ValueKind`] numbers never change.

use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;

/// Length of the trailer that follows the user key in an internal key.
pub(crate) const TRAILER_LEN: usize = 8;

/// A write's position in the database's total order of writes.
///
/// Sequence numbers are 56-bit, because they share the internal key's 8-byte trailer with the
/// 8-bit [`ValueKind`].
///
/// Invariant: the value is at most [`SeqNo::MAX`]. The field is visible in the crate so that
/// code holding a number it knows to be in range (tests, a counter it advanced with
/// [`SeqNo::next`]) can write `SeqNo(n)`; numbers read from disk go through [`SeqNo::new`].
/// Encoding an out-of-range `SeqNo` into a key panics rather than truncating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct SeqNo(pub(crate) u64);

impl SeqNo {
    /// The smallest sequence number. The DB gives writes numbers from 1 upward, so a snapshot at
    /// `ZERO` sees nothing and a memtable whose `max_seq` is `ZERO` is empty.
    pub(crate) const ZERO: SeqNo = SeqNo(0);

    /// The largest sequence number that fits in the 56 bits of the trailer. Also the snapshot
    /// that sees every write.
    pub(crate) const MAX: SeqNo = SeqNo((1 << 56) - 1);

    /// `Some` if `value` fits in 56 bits. Use this for numbers read from disk (untrusted):
    /// `None` there means corruption.
    pub(crate) const fn new(value: u64) -> Option<SeqNo> {
        if value <= SeqNo::MAX.0 { Some(SeqNo(value)) } else { None }
    }

    /// The number as a plain `u64` (at most `2^56 - 1`).
    pub(crate) const fn get(self) -> u64 {
        self.0
    }

    /// The following sequence number.
    ///
    /// # Panics
    /// If `self` is [`SeqNo::MAX`]. Reaching it takes 2^56 writes (over 200 years at 10 million
    /// writes per second), so running out is a bug, not an operating condition.
    #[must_use]
    pub(crate) const fn next(self) -> SeqNo {
        match self.checked_next() {
            Some(next) => next,
            None => panic!("sequence numbers exhausted"),
        }
    }

    /// The following sequence number, or `None` after [`SeqNo::MAX`]. For numbers derived from
    /// disk data, where reaching the end means corruption rather than a bug.
    pub(crate) const fn checked_next(self) -> Option<SeqNo> {
        if self.0 < SeqNo::MAX.0 { Some(SeqNo(self.0 + 1)) } else { None }
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What an entry records about its user key.
///
/// The numbers are the low byte of the internal key trailer. Their order matters too: within one
/// (user key, seq) the larger kind sorts first, and [`InternalKey::lookup`] relies on
/// [`ValueKind::MAX`] being the largest.
// DO NOT RENUMBER: embedded in on-disk data (WAL records, SST internal keys).
// A retired kind keeps its number reserved; a new kind takes a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub(crate) enum ValueKind {
    /// A tombstone: the key has no value as of this entry's seq.
    Delete = 0,
    /// The key holds the entry's value as of this entry's seq.
    Put = 1,
}

impl ValueKind {
    /// The kind with the largest number. Update it when adding a kind (a test checks).
    pub(crate) const MAX: ValueKind = ValueKind::Put;

    /// The kind numbered `byte`, or `None` for a number no kind has (corrupt or newer data).
    pub(crate) const fn from_u8(byte: u8) -> Option<ValueKind> {
        match byte {
            0 => Some(ValueKind::Delete),
            1 => Some(ValueKind::Put),
            _ => None,
        }
    }
}

/// The trailer word for `(seq, kind)`: `seq << 8 | kind`.
///
/// # Panics
/// If `seq` is above [`SeqNo::MAX`] (a broken invariant): its top bits would be lost.
const fn pack_trailer(seq: SeqNo, kind: ValueKind) -> u64 {
    assert!(seq.0 <= SeqNo::MAX.0, "SeqNo above 2^56 - 1");
    (seq.0 << 8) | kind as u64
}

/// Splits an encoded internal key into user key and trailer word, or `None` if it is shorter
/// than the trailer.
fn split_trailer(encoded: &[u8]) -> Option<(&[u8], u64)> {
    let user_len = encoded.len().checked_sub(TRAILER_LEN)?;
    let (user_key, trailer) = encoded.split_at_checked(user_len)?;
    let trailer: [u8; TRAILER_LEN] = trailer.try_into().ok()?;
    Some((user_key, u64::from_le_bytes(trailer)))
}

/// Appends the internal key for `(user_key, seq, kind)` to `out`.
pub(crate) fn encode_internal_key_to(out: &mut Vec<u8>, user_key: &[u8], seq: SeqNo, kind: ValueKind) {
    out.reserve(user_key.len() + TRAILER_LEN);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&pack_trailer(seq, kind).to_le_bytes());
}

/// The internal key for `(user_key, seq, kind)` in a new, exactly sized `Vec`.
pub(crate) fn encode_internal_key(user_key: &[u8], seq: SeqNo, kind: ValueKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    encode_internal_key_to(&mut out, user_key, seq, kind);
    out
}

/// An encoded internal key taken apart, borrowing the user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParsedInternalKey<'a> {
    /// The key the user wrote.
    pub(crate) user_key: &'a [u8],
    /// When it was written.
    pub(crate) seq: SeqNo,
    /// Whether it was a put or a delete.
    pub(crate) kind: ValueKind,
}

impl<'a> ParsedInternalKey<'a> {
    /// Parses an encoded internal key. `None` if it is shorter than the 8-byte trailer or the
    /// kind byte is unknown; callers reading from disk turn that into `Error::Corruption`.
    pub(crate) fn parse(encoded: &'a [u8]) -> Option<ParsedInternalKey<'a>> {
        let (user_key, trailer) = split_trailer(encoded)?;
        let kind = ValueKind::from_u8((trailer & 0xff) as u8)?;
        // `trailer >> 8` has at most 56 significant bits, so it is always a valid SeqNo.
        let seq = SeqNo(trailer >> 8);
        Some(ParsedInternalKey { user_key, seq, kind })
    }

    /// Encodes it back (appending to `out`).
    #[cfg_attr(not(test), allow(dead_code))] // range scans and compaction (issue 5)
    pub(crate) fn encode_to(&self, out: &mut Vec<u8>) {
        encode_internal_key_to(out, self.user_key, self.seq, self.kind);
    }
}

/// Orders two encoded internal keys: user key ascending (bytewise), then seq descending, then
/// kind descending.
///
/// Comparing the trailer words descending gives "seq descending, then kind descending" in one
/// step, because the seq occupies the high 56 bits and the kind the low 8.
///
/// Both inputs must be well-formed (at least 8 bytes); decoders validate keys read from disk
/// before they reach a comparator. A malformed key is a bug: it panics in debug builds, and in
/// release builds it compares as if the whole slice were the user key with a zero trailer, so a
/// missed validation cannot crash a production process from inside a sort or a seek.
pub(crate) fn compare_internal_keys(a: &[u8], b: &[u8]) -> Ordering {
    let (a_user, a_trailer) = split_or_whole(a);
    let (b_user, b_trailer) = split_or_whole(b);
    a_user.cmp(b_user).then_with(|| b_trailer.cmp(&a_trailer))
}

/// The first 16 bytes of an internal key's user key, zero-padded, as a
/// big-endian number. Where two keys' prefixes differ, they order as
/// [`compare_internal_keys`] orders the keys; where they are equal, only the
/// full comparison can tell. A merge compares these first: one integer
/// comparison settles almost every step.
pub(crate) fn user_key_prefix(encoded: &[u8]) -> u128 {
    let (user_key, _) = split_or_whole(encoded);
    let mut bytes = [0u8; 16];
    let len = user_key.len().min(16);
    bytes[..len].copy_from_slice(&user_key[..len]);
    u128::from_be_bytes(bytes)
}

/// Keys read from disk are compared (in block seeks and merges) before the
/// code that interprets them parses them and reports a malformed one as
/// `Corruption`; until then a key shorter than its trailer orders as a user
/// key with trailer 0, so the comparison stays total and never panics.
fn split_or_whole(encoded: &[u8]) -> (&[u8], u64) {
    split_trailer(encoded).unwrap_or((encoded, 0))
}

/// An owned, validated internal key: the skiplist key of the memtable and the unit later code
/// hands around.
///
/// Keys of up to [`INLINE_KEY_BYTES`] encoded bytes (user keys up to 30 bytes) are stored
/// inline, so a skiplist node holds its key and a search touches one cache line per node
/// instead of two (measured: random inserts into a 280k-entry memtable spent 43% of their
/// time in the skiplist search with heap keys). Longer keys, and keys made from bytes read
/// elsewhere ([`InternalKey::from_encoded`]), share a [`Bytes`].
///
/// Invariant: the bytes always parse as a [`ParsedInternalKey`] (at least 8 bytes, known kind).
/// Every constructor upholds it, so the accessors need no error path.
///
/// `Ord` is [`compare_internal_keys`]. `Eq` is byte equality, which agrees with it: two valid
/// keys compare equal exactly when user key and trailer are equal, that is when their bytes are.
#[derive(Clone)]
pub(crate) struct InternalKey(KeyRepr);

/// Encoded keys up to this length are stored inline in an [`InternalKey`].
pub(crate) const INLINE_KEY_BYTES: usize = 38;

#[derive(Clone)]
enum KeyRepr {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES] },
    Shared(Bytes),
}

impl KeyRepr {
    fn as_slice(&self) -> &[u8] {
        match self {
            KeyRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyRepr::Shared(bytes) => bytes,
        }
    }
}

impl PartialEq for InternalKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}

impl Eq for InternalKey {}

impl std::hash::Hash for InternalKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_slice().hash(state);
    }
}

impl InternalKey {
    /// The key for an entry `(user_key, seq, kind)`; copies `user_key` once.
    pub(crate) fn new(user_key: &[u8], seq: SeqNo, kind: ValueKind) -> InternalKey {
        let encoded_len = user_key.len() + TRAILER_LEN;
        if encoded_len <= INLINE_KEY_BYTES {
            assert!(seq <= SeqNo::MAX, "sequence number {seq} exceeds 56 bits");
            let mut bytes = [0u8; INLINE_KEY_BYTES];
            bytes[..user_key.len()].copy_from_slice(user_key);
            bytes[user_key.len()..encoded_len].copy_from_slice(&((seq.0 << 8) | kind as u64).to_le_bytes());
            return InternalKey(KeyRepr::Inline { len: encoded_len as u8, bytes });
        }
        InternalKey(KeyRepr::Shared(Bytes::from(encode_internal_key(user_key, seq, kind))))
    }

    /// The key to seek to for "the newest entry for `user_key` visible at snapshot `snapshot`".
    ///
    /// Entries for `user_key` sort by seq descending, and within one seq by kind descending. The
    /// lookup key `(user_key, snapshot, ValueKind::MAX)` therefore sorts before or equal to every
    /// entry `(user_key, seq <= snapshot, any kind)` and after every entry with
    /// `seq > snapshot`, so the first entry at or after it (`lower_bound(Included)`) is the
    /// newest visible one, if its user key matches. With a smaller kind (say `Delete`), a `Put`
    /// written at exactly `snapshot` would sort *before* the lookup key and be skipped.
    pub(crate) fn lookup(user_key: &[u8], snapshot: SeqNo) -> InternalKey {
        InternalKey::new(user_key, snapshot, ValueKind::MAX)
    }

    /// Wraps encoded bytes (for example a key read from a block) after checking that they parse.
    /// `None` means corruption.
    #[cfg_attr(not(test), allow(dead_code))] // range scans and compaction (issue 5)
    pub(crate) fn from_encoded(encoded: Bytes) -> Option<InternalKey> {
        ParsedInternalKey::parse(&encoded)?;
        Some(InternalKey(KeyRepr::Shared(encoded)))
    }

    /// The whole encoded key (user key + trailer), as written to WAL and SST.
    pub(crate) fn encoded(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// The parsed view of this key.
    pub(crate) fn parsed(&self) -> ParsedInternalKey<'_> {
        ParsedInternalKey::parse(self.encoded()).expect("InternalKey invariant: bytes parse")
    }

    /// The user key, borrowed.
    #[cfg_attr(not(test), allow(dead_code))] // range scans and compaction (issue 5)
    pub(crate) fn user_key(&self) -> &[u8] {
        &self.encoded()[..self.user_key_len()]
    }

    /// The user key as [`Bytes`]: a zero-copy slice for shared keys, a copy of
    /// (at most 30) bytes for inline ones.
    #[cfg_attr(not(test), allow(dead_code))] // range scans and compaction (issue 5)
    pub(crate) fn user_key_bytes(&self) -> Bytes {
        match &self.0 {
            KeyRepr::Shared(bytes) => bytes.slice(..self.user_key_len()),
            KeyRepr::Inline { .. } => Bytes::copy_from_slice(self.user_key()),
        }
    }

    /// The entry's sequence number.
    pub(crate) fn seq(&self) -> SeqNo {
        self.parsed().seq
    }

    /// The entry's kind.
    #[cfg_attr(not(test), allow(dead_code))] // range scans and compaction (issue 5)
    pub(crate) fn kind(&self) -> ValueKind {
        self.parsed().kind
    }

    #[cfg_attr(not(test), allow(dead_code))] // range scans and compaction (issue 5)
    fn user_key_len(&self) -> usize {
        // Cannot underflow: the invariant guarantees at least TRAILER_LEN bytes.
        self.encoded().len() - TRAILER_LEN
    }
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_internal_keys(self.encoded(), other.encoded())
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parsed = self.parsed();
        write!(f, "InternalKey(\"{}\" @ {} {:?})", parsed.user_key.escape_ascii(), parsed.seq, parsed.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;

    fn seq(n: u64) -> SeqNo {
        SeqNo::new(n).expect("test seq fits in 56 bits")
    }

    #[test]
    fn encoding_matches_the_documented_bytes() {
        let encoded = encode_internal_key(b"ab", seq(1), ValueKind::Put);
        assert_eq!(encoded, [0x61, 0x62, 0x01, 0x01, 0, 0, 0, 0, 0, 0]);
        let encoded = encode_internal_key(b"", SeqNo::MAX, ValueKind::Delete);
        assert_eq!(encoded, [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn round_trip_encode_parse() {
        for (user_key, s, kind) in [
            (&b""[..], SeqNo::ZERO, ValueKind::Delete),
            (b"a", seq(1), ValueKind::Put),
            (b"key\0with\xffbytes", seq(0x00ab_cdef_0123_4567), ValueKind::Put),
            (b"max", SeqNo::MAX, ValueKind::Delete),
        ] {
            let encoded = encode_internal_key(user_key, s, kind);
            assert_eq!(encoded.len(), user_key.len() + TRAILER_LEN);
            let parsed = ParsedInternalKey::parse(&encoded).expect("parses");
            assert_eq!(parsed, ParsedInternalKey { user_key, seq: s, kind });
            let mut again = Vec::new();
            parsed.encode_to(&mut again);
            assert_eq!(again, encoded);

            let key = InternalKey::new(user_key, s, kind);
            assert_eq!(key.encoded(), encoded.as_slice());
            assert_eq!((key.user_key(), key.seq(), key.kind()), (user_key, s, kind));
            assert_eq!(key.user_key_bytes().as_ref(), user_key);
            assert_eq!(InternalKey::from_encoded(Bytes::from(encoded)), Some(key));
        }
    }

    #[test]
    fn parse_rejects_short_input() {
        for len in 0..TRAILER_LEN {
            let bytes = vec![1u8; len];
            assert_eq!(ParsedInternalKey::parse(&bytes), None, "len {len}");
            assert_eq!(InternalKey::from_encoded(Bytes::from(bytes)), None, "len {len}");
        }
        // Exactly 8 bytes is an empty user key.
        assert!(ParsedInternalKey::parse(&[1, 0, 0, 0, 0, 0, 0, 0]).is_some());
    }

    #[test]
    fn parse_rejects_unknown_kind_bytes() {
        for byte in 0..=u8::MAX {
            let mut encoded = b"k".to_vec();
            encoded.extend_from_slice(&((7u64 << 8) | u64::from(byte)).to_le_bytes());
            let parsed = ParsedInternalKey::parse(&encoded);
            match ValueKind::from_u8(byte) {
                Some(kind) => assert_eq!(parsed.map(|p| (p.seq, p.kind)), Some((seq(7), kind))),
                None => assert_eq!(parsed, None, "kind byte {byte}"),
            }
        }
    }

    #[test]
    fn kind_numbers_are_stable_and_max_is_the_largest() {
        // On-disk values: this test failing means the format changed.
        assert_eq!(ValueKind::Delete as u8, 0);
        assert_eq!(ValueKind::Put as u8, 1);
        for byte in 0..=u8::MAX {
            if let Some(kind) = ValueKind::from_u8(byte) {
                assert_eq!(kind as u8, byte);
                assert!(kind <= ValueKind::MAX, "{kind:?} is larger than ValueKind::MAX");
            }
        }
    }

    #[test]
    fn seqno_limits() {
        assert_eq!(SeqNo::MAX.get(), (1 << 56) - 1);
        assert_eq!(SeqNo::new(1 << 56), None);
        assert_eq!(SeqNo::new(u64::MAX), None);
        assert_eq!(SeqNo::ZERO.next(), seq(1));
        assert_eq!(SeqNo::MAX.checked_next(), None);
        assert_eq!(seq(6).checked_next(), Some(seq(7)));
        assert_eq!(seq(41).next().to_string(), "42");
    }

    #[test]
    #[should_panic(expected = "sequence numbers exhausted")]
    fn seqno_next_past_max_panics() {
        let _ = SeqNo::MAX.next();
    }

    #[test]
    #[should_panic(expected = "SeqNo above 2^56 - 1")]
    fn encoding_an_out_of_range_seqno_panics_instead_of_truncating() {
        let _ = encode_internal_key(b"k", SeqNo(1 << 56), ValueKind::Put);
    }

    #[test]
    fn ordering_is_user_key_asc_then_seq_desc_then_kind_desc() {
        let ordered = [
            InternalKey::new(b"a", seq(9), ValueKind::Put),
            InternalKey::new(b"a", seq(2), ValueKind::Put),
            InternalKey::new(b"a", seq(2), ValueKind::Delete),
            InternalKey::new(b"a", seq(1), ValueKind::Put),
            InternalKey::new(b"a\0", SeqNo::MAX, ValueKind::Put),
            InternalKey::new(b"a\0", seq(1), ValueKind::Put),
            InternalKey::new(b"ab", seq(100), ValueKind::Delete),
            InternalKey::new(b"b", seq(1), ValueKind::Put),
        ];
        for (i, x) in ordered.iter().enumerate() {
            for (j, y) in ordered.iter().enumerate() {
                assert_eq!(x.cmp(y), i.cmp(&j), "{x:?} vs {y:?}");
                assert_eq!(compare_internal_keys(x.encoded(), y.encoded()), i.cmp(&j));
            }
        }
    }

    #[test]
    fn lookup_key_sits_between_invisible_and_visible_versions() {
        let lookup = InternalKey::lookup(b"k", seq(5));
        assert!(InternalKey::new(b"k", seq(6), ValueKind::Put) < lookup);
        assert!(InternalKey::new(b"k", seq(6), ValueKind::Delete) < lookup);
        assert!(InternalKey::new(b"k", seq(5), ValueKind::Put) >= lookup);
        assert!(InternalKey::new(b"k", seq(5), ValueKind::Delete) > lookup);
        assert!(InternalKey::new(b"k", seq(4), ValueKind::Put) > lookup);
        assert!(InternalKey::new(b"j", SeqNo::ZERO, ValueKind::Delete) < lookup);
        assert!(InternalKey::new(b"k\0", SeqNo::MAX, ValueKind::Put) > lookup);
    }

    fn user_key_strategy() -> impl Strategy<Value = Vec<u8>> {
        // A tiny alphabet makes equal keys, prefixes and embedded zero bytes common.
        proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(0xff)], 0..4)
    }

    fn seq_strategy() -> impl Strategy<Value = SeqNo> {
        prop_oneof![0..8u64, 0..=SeqNo::MAX.get(), Just(SeqNo::MAX.get())].prop_map(seq)
    }

    fn kind_strategy() -> impl Strategy<Value = ValueKind> {
        prop_oneof![Just(ValueKind::Delete), Just(ValueKind::Put)]
    }

    proptest! {
        #[test]
        fn differing_prefixes_order_like_the_comparator(
            // Short alphabets and lengths around 16 make equal prefixes,
            // zero bytes and keys that are prefixes of others common.
            a in proptest::collection::vec(0u8..3, 0..40),
            b in proptest::collection::vec(0u8..3, 0..40),
        ) {
            // Raw bytes as well: keys shorter than a trailer compare too.
            for (x, y) in [(a.clone(), b.clone()), (encode_internal_key(&a, SeqNo(1), ValueKind::Put), encode_internal_key(&b, SeqNo(2), ValueKind::Put))] {
                let (px, py) = (user_key_prefix(&x), user_key_prefix(&y));
                if px != py {
                    prop_assert_eq!(px.cmp(&py), compare_internal_keys(&x, &y));
                }
            }
        }

        #[test]
        fn comparator_sort_equals_tuple_sort(
            entries in proptest::collection::vec((user_key_strategy(), seq_strategy(), kind_strategy()), 0..40),
        ) {
            let mut by_comparator: Vec<Vec<u8>> =
                entries.iter().map(|(k, s, kind)| encode_internal_key(k, *s, *kind)).collect();
            by_comparator.sort_by(|a, b| compare_internal_keys(a, b));

            let mut by_tuple = entries.clone();
            by_tuple.sort_by_key(|(k, s, kind)| (k.clone(), Reverse(*s), Reverse(*kind)));
            let by_tuple: Vec<Vec<u8>> =
                by_tuple.iter().map(|(k, s, kind)| encode_internal_key(k, *s, *kind)).collect();

            prop_assert_eq!(by_comparator, by_tuple);
        }

        #[test]
        fn parse_never_panics_and_round_trips_what_it_accepts(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            if let Some(parsed) = ParsedInternalKey::parse(&bytes) {
                let mut again = Vec::new();
                parsed.encode_to(&mut again);
                prop_assert_eq!(again, bytes);
            }
        }
    }
}
