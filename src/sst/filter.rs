//! The SST filter block: one bloom filter over the *user* keys of a whole table
//! (`docs/format/sst.md`, "Filter block").
//!
//! # Why
//!
//! A table's filter is pinned in memory and consulted before any data block is read, so a
//! get for a key the table does not hold usually costs no device read. A bloom filter can
//! answer "definitely absent" or "may contain"; it never loses a key (no false negatives),
//! and at the default 10 bits per key with 7 probes about 0.8% of absent keys still get
//! "may contain" and pay for the read. The filter is over user keys, not internal keys,
//! because a get asks "does this table hold *any* version of `k`?"; the sequence number is
//! resolved in the data block.
//!
//! # Encoding
//!
//! ```text
//! bits[m / 8] | num_probes u8
//! ```
//!
//! - `m = max(64, n * bits_per_key)` rounded up to a multiple of 8, where `n` is the number
//!   of keys added.
//! - `num_probes = round(bits_per_key * ln 2)` clamped to `1..=30` (7 for 10 bits per key):
//!   the number of probes that minimises the false-positive rate for that many bits per key.
//! - Bit `b` is bit `b % 8` (least significant first) of byte `b / 8`.
//! - Key `k` sets, for `i` in `0..num_probes`, bit `(h1 + i * h2) mod m`, where
//!   `h = xxh3_64(k)` (seed 0), `h1 = h as u32`, `h2 = (h >> 32) as u32 | 1`, and
//!   `h1 + i * h2` is computed in wrapping `u32` arithmetic before the `mod m` (in `u64`).
//!   This is double hashing (Kirsch and Mitzenmacher): one 64-bit hash stands in for
//!   `num_probes` independent ones at no measurable cost in false positives. `h2` is odd so
//!   it is never 0, which would put every probe on the same bit.
//!
//! The formula lives once, in `probe_bits`, shared by [`BloomBuilder`] and [`BloomFilter`]:
//! a writer and a reader that disagree on one detail would give false negatives, which a
//! filter must never do.
//!
//! Worked example: one key `apple` at 10 bits per key. `n * 10 = 10 < 64`, so `m = 64` and
//! 7 probes; they set bits 0, 1, 13, 14, 26, 39 and 52, and the block is 9 bytes:
//!
//! ```text
//! 03 60 00 04 80 00 10 00   07
//! bits[8]                   num_probes
//! ```
//!
//! # Reading untrusted bytes
//!
//! [`BloomFilter::from_block`] never fails. The block's CRC trailer is what detects damage,
//! and it is checked before the contents get here. What is left is a filter the reader does
//! not understand: an empty block, no bits, or a `num_probes` of 0 or above 30 (the format
//! doc reserves those for a newer writer's encoding). Such a filter answers "may contain"
//! to every key: a filter may only ever cost a read, never hide a key, so the safe answer
//! to "I cannot tell" is always "may contain", and the table stays readable.

use xxhash_rust::xxh3::xxh3_64;

/// Largest `num_probes` a writer emits and a reader accepts.
const MAX_PROBES: u8 = 30;

/// Fewest bits in a filter, so that a table with very few keys still gets a useful filter.
const MIN_BITS: usize = 64;

/// The hash every probe of a key derives from.
fn key_hash(user_key: &[u8]) -> u64 {
    xxh3_64(user_key)
}

/// The bit positions, each `< m`, that the key with hash `h` sets (writer) or tests
/// (reader). The one definition of the probe sequence: see the module doc.
///
/// `m` must be non-zero. Every position is below `2^32` whatever `m` is, because the
/// probe is formed in `u32`; at 10 bits per key that limits the useful size of one filter
/// to about 430 million keys, far above what one table holds.
fn probe_bits(h: u64, num_probes: u8, m: u64) -> impl Iterator<Item = u64> {
    debug_assert!(m > 0);
    let h1 = h as u32;
    let h2 = (h >> 32) as u32 | 1;
    let modulus = Modulus::new(m);
    (0..u32::from(num_probes)).map(move |i| modulus.reduce(h1.wrapping_add(i.wrapping_mul(h2))))
}

/// `x mod m` for 32-bit `x` without a division per probe: a 64-bit division took most of a
/// flush's filter time (7 per key). Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation" (2019): with `c = ceil(2^64 / m)`, `x mod m = ((c * x) mod 2^64) * m >> 64`,
/// exact for every 32-bit `x` and `m`. The result is the format's `mod m`, bit for bit (a
/// property test checks it against `%`).
#[derive(Debug, Clone, Copy)]
struct Modulus {
    m: u64,
    /// `ceil(2^64 / m)` (wrapping to 0 for `m == 1`, where every remainder is 0 anyway);
    /// unused when `m` does not fit in 32 bits.
    c: u64,
}

impl Modulus {
    fn new(m: u64) -> Modulus {
        Modulus { m, c: (u64::MAX / m).wrapping_add(1) }
    }

    fn reduce(self, x: u32) -> u64 {
        if self.m > u64::from(u32::MAX) {
            // Every 32-bit probe is already below m.
            return u64::from(x);
        }
        let low = self.c.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.m)) >> 64) as u64
    }
}

/// `round(bits_per_key * ln 2)` clamped to `1..=30`.
fn num_probes_for(bits_per_key: usize) -> u8 {
    let k = (bits_per_key as f64 * std::f64::consts::LN_2).round();
    k.clamp(1.0, f64::from(MAX_PROBES)) as u8
}

/// Collects the user keys of a table and encodes its filter block.
///
/// The builder keeps only the 8-byte hash of each key, so the table builder can feed it
/// every user key as it streams data blocks and call [`finish`](Self::finish) at the end,
/// when `n` (and so the filter's size) is known.
#[derive(Debug)]
pub(crate) struct BloomBuilder {
    bits_per_key: usize,
    hashes: Vec<u64>,
}

thread_local! {
    /// The hash buffer of the last filter built on this thread, reused by the
    /// next: tables are built on a few engine threads, and a fresh buffer
    /// (8 bytes a key, 8 MiB for a 1M-entry flush) grown by doubling was a
    /// fifth of a flush's time in page faults and copies.
    static SPARE_HASHES: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
}

impl BloomBuilder {
    /// A builder that will spend `bits_per_key` bits per added key (the format's default
    /// is 10, for a false-positive rate near 0.8%).
    pub(crate) fn new(bits_per_key: usize) -> BloomBuilder {
        let mut hashes = SPARE_HASHES.take();
        hashes.clear();
        BloomBuilder { bits_per_key, hashes }
    }

    /// Adds a user key (without the internal-key trailer).
    ///
    /// Adding a key twice is harmless for correctness, but every call counts towards `n`
    /// and so grows the filter by `bits_per_key` bits without making it any more selective.
    /// The format sizes the filter per *distinct* key, so a table builder that sees several
    /// versions of one user key (they are adjacent in a table) should add it once.
    pub(crate) fn add_key(&mut self, user_key: &[u8]) {
        self.hashes.push(key_hash(user_key));
    }

    /// The hashes of the keys added so far.
    pub(crate) fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// The hashes of the keys added so far, which the builder then forgets
    /// (for a [`FilterThread`](super::filter_thread::FilterThread)); it goes
    /// on in `empty`, a batch the thread is done with (or a new vector).
    pub(crate) fn take_hashes(&mut self, mut empty: Vec<u64>) -> Vec<u64> {
        empty.clear();
        std::mem::replace(&mut self.hashes, empty)
    }

    /// Encodes the filter block: `bits[m / 8] | num_probes u8`.
    ///
    /// With no keys added this is a 64-bit filter of zero bits, which answers "absent" to
    /// every key: correct for a table with no keys.
    pub(crate) fn finish(self) -> Vec<u8> {
        let mut block = Vec::new();
        self.finish_into(&mut block);
        block
    }

    /// Appends the filter block (see [`finish`](Self::finish)) to `out`. The
    /// bits are set where they will be written from: a separate block would be
    /// one more fresh allocation and copy per table.
    pub(crate) fn finish_into(self, out: &mut Vec<u8>) {
        let m = filter_bits(self.hashes.len(), self.bits_per_key);
        let start = out.len();
        out.resize(start + m / 8 + 1, 0);
        let num_probes = num_probes_for(self.bits_per_key);
        set_bits(&mut out[start..start + m / 8], &self.hashes, num_probes);
        out[start + m / 8] = num_probes;
    }
}

/// `m` for `keys` keys: see the module doc.
fn filter_bits(keys: usize, bits_per_key: usize) -> usize {
    keys.saturating_mul(bits_per_key).max(MIN_BITS).next_multiple_of(8)
}

/// Sets the probe bits of the keys with these hashes in `bits` (`m = 8 * bits.len()`).
fn set_bits(bits: &mut [u8], hashes: &[u64], num_probes: u8) {
    let m = bits.len() as u64 * 8;
    for &h in hashes {
        for bit in probe_bits(h, num_probes, m) {
            bits[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
}

/// The bits of a filter sized up front for at most `keys` keys, set part by
/// part: the threads of a parallel flush each fill their own copy as they
/// encode, and the copies are OR-ed into the filter block ([`merge`](Self::merge)).
/// The flush sizes it by the memtable's entry count, which counts every
/// version of a key, so the filter may get more bits per distinct key than
/// `bits_per_key` (fewer false positives; the reader takes `m` from the block).
#[derive(Debug)]
pub(crate) struct FilterBits {
    bits: Vec<u8>,
    num_probes: u8,
}

impl FilterBits {
    /// All bits clear, for up to `keys` keys; `buf` is memory to reuse.
    pub(crate) fn new(keys: usize, bits_per_key: usize, mut buf: Vec<u8>) -> FilterBits {
        buf.clear();
        buf.resize(filter_bits(keys, bits_per_key) / 8, 0);
        FilterBits { bits: buf, num_probes: num_probes_for(bits_per_key) }
    }

    /// Sets the bits of the keys with these hashes (from [`BloomBuilder`]).
    pub(crate) fn add_hashes(&mut self, hashes: &[u64]) {
        set_bits(&mut self.bits, hashes, self.num_probes);
    }

    /// Adds every key of `other`, a filter of the same size.
    pub(crate) fn merge(&mut self, other: &FilterBits) {
        assert_eq!(self.bits.len(), other.bits.len(), "only filters of one table are merged");
        for (mine, theirs) in self.bits.iter_mut().zip(&other.bits) {
            *mine |= theirs;
        }
    }

    /// The filter block's contents.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.bits.push(self.num_probes);
        self.bits
    }
}

impl Drop for BloomBuilder {
    fn drop(&mut self) {
        super::keep_spare(&SPARE_HASHES, std::mem::take(&mut self.hashes));
    }
}

/// A read-only view of a filter block.
///
/// It borrows the block rather than owning a `bytes::Bytes`: building the view is a length
/// check and one byte read, so the table reader keeps the pinned block (in whatever buffer
/// it was read into) and makes a view per lookup, and the filter code does not care who
/// owns the memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BloomFilter<'a> {
    /// The filter's bits, `m = bits.len() * 8`; empty when `num_probes` is 0.
    bits: &'a [u8],
    /// `1..=30`, or 0 for a filter this reader does not understand ("may contain" to all).
    num_probes: u8,
}

impl<'a> BloomFilter<'a> {
    /// Views the contents of a filter block (trailer already verified and stripped).
    ///
    /// Never fails, by design of the format: an empty block, a block with no bits, or a
    /// `num_probes` of 0 or above 30 gives a filter that answers "may contain" to every
    /// key. The last two are how a newer writer's encoding looks to this reader, and a
    /// filter that cannot tell must not hide keys (see the module doc).
    pub(crate) fn from_block(block: &'a [u8]) -> BloomFilter<'a> {
        match block.split_last() {
            Some((&num_probes, bits)) if (1..=MAX_PROBES).contains(&num_probes) && !bits.is_empty() => {
                BloomFilter { bits, num_probes }
            }
            _ => BloomFilter { bits: &[], num_probes: 0 },
        }
    }

    /// `false` if `user_key` was certainly not added to the filter; `true` if it may have
    /// been (always `true` for a filter this reader does not understand).
    pub(crate) fn may_contain(&self, user_key: &[u8]) -> bool {
        if self.num_probes == 0 {
            return true;
        }
        let m = self.bits.len() as u64 * 8;
        // Every probe is tested, not only those up to the first clear bit:
        // with no branch between them the loads are independent, and the CPU
        // has all of them in flight at once. A pinned filter of a large table
        // is cold, so each probe misses the cache and often the TLB; timed
        // with both flushed, a 1M-key filter answered a present key in 1.3 µs
        // this way and 2.5 µs stopping early (an absent key: 1.3 and 1.2 µs).
        probe_bits(key_hash(user_key), self.num_probes, m)
            .fold(true, |all_set, bit| all_set & (self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn taken_hashes_leave_the_builder_filling_the_batch_it_was_given_empty() {
        let mut builder = BloomBuilder::new(10);
        builder.add_key(b"a");
        builder.add_key(b"b");
        let stale: Vec<u64> = Vec::from([7, 8, 9]);
        let address = stale.as_ptr();
        let taken = builder.take_hashes(stale);
        assert_eq!(taken, [key_hash(b"a"), key_hash(b"b")]);
        assert!(builder.hashes().is_empty(), "a returned batch's old hashes are not added again");
        builder.add_key(b"c");
        assert_eq!(builder.hashes(), [key_hash(b"c")]);
        assert_eq!(builder.hashes().as_ptr(), address, "the batch's allocation is reused");
    }

    /// `count` distinct random keys of 8 to 24 bytes whose first byte is `tag`, so that key
    /// sets with different tags are disjoint.
    fn random_keys(rng: &mut StdRng, tag: u8, count: usize) -> Vec<Vec<u8>> {
        let mut keys = std::collections::HashSet::with_capacity(count);
        while keys.len() < count {
            let len = rng.gen_range(8..=24);
            let mut key = vec![tag; len];
            rng.fill(&mut key[1..]);
            keys.insert(key);
        }
        keys.into_iter().collect()
    }

    fn build(bits_per_key: usize, keys: &[Vec<u8>]) -> Vec<u8> {
        let mut builder = BloomBuilder::new(bits_per_key);
        for key in keys {
            builder.add_key(key);
        }
        builder.finish()
    }

    #[test]
    fn hash_is_xxh3_64_with_seed_0() {
        // The published XXH3_64bits value for empty input: pins the hash (not xxh64, no seed).
        assert_eq!(key_hash(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn no_false_negatives() {
        let mut rng = StdRng::seed_from_u64(1);
        let keys = random_keys(&mut rng, 0, 10_000);
        let block = build(10, &keys);
        let filter = BloomFilter::from_block(&block);
        assert_eq!(filter.num_probes, 7);
        for key in &keys {
            assert!(filter.may_contain(key), "false negative for {key:02x?}");
        }
    }

    #[test]
    fn filter_bits_filled_in_pieces_equal_the_filter_of_all_keys() {
        let mut rng = StdRng::seed_from_u64(7);
        let keys = random_keys(&mut rng, 0, 5000);
        let whole = build(10, &keys);
        // Three threads' copies, each with some of the keys, sized for all of them.
        let mut copies: Vec<FilterBits> = (0..3).map(|_| FilterBits::new(keys.len(), 10, Vec::new())).collect();
        for (i, chunk) in keys.chunks(700).enumerate() {
            let mut builder = BloomBuilder::new(10);
            for key in chunk {
                builder.add_key(key);
            }
            copies[i % 3].add_hashes(builder.hashes());
        }
        let mut copies = copies.into_iter();
        let mut merged = copies.next().unwrap();
        for copy in copies {
            merged.merge(&copy);
        }
        assert_eq!(merged.finish(), whole);
        // Sized for more keys than it holds (a memtable's entries count every
        // version): larger, and still no false negatives.
        let mut roomy = FilterBits::new(3 * keys.len(), 10, Vec::new());
        let mut builder = BloomBuilder::new(10);
        keys.iter().for_each(|key| builder.add_key(key));
        roomy.add_hashes(builder.hashes());
        let roomy = roomy.finish();
        assert!(roomy.len() > 2 * whole.len());
        assert!(keys.iter().all(|key| BloomFilter::from_block(&roomy).may_contain(key)));
    }

    #[test]
    fn false_positive_rate_at_10_bits_per_key() {
        let mut rng = StdRng::seed_from_u64(2);
        let present = random_keys(&mut rng, 0, 10_000);
        let absent = random_keys(&mut rng, 1, 100_000);
        let block = build(10, &present);
        let filter = BloomFilter::from_block(&block);
        let false_positives = absent.iter().filter(|key| filter.may_contain(key)).count();
        let rate = false_positives as f64 / absent.len() as f64;
        // Theory for m/n = 10, k = 7: (1 - e^(-7/10))^7 = 0.82%.
        eprintln!(
            "bloom false-positive rate at 10 bits/key, 7 probes: {false_positives}/{} = {:.3}% (theory 0.82%)",
            absent.len(),
            rate * 100.0
        );
        assert!((0.003..=0.02).contains(&rate), "false-positive rate {rate}");
    }

    #[test]
    fn num_probes_and_size() {
        assert_eq!(num_probes_for(10), 7);
        assert_eq!(num_probes_for(0), 1);
        assert_eq!(num_probes_for(1), 1);
        assert_eq!(num_probes_for(5), 3); // 3.47
        assert_eq!(num_probes_for(20), 14); // 13.86
        assert_eq!(num_probes_for(43), 30); // 29.8
        assert_eq!(num_probes_for(1000), 30);

        let keys: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        // n * bits_per_key, at least 64, rounded up to a multiple of 8; plus the probes byte.
        for (n, bits_per_key, block_len) in
            [(0, 10, 9), (1, 10, 9), (6, 10, 9), (7, 10, 10), (8, 10, 11), (100, 10, 126), (100, 1, 14), (3, 0, 9)]
        {
            let block = build(bits_per_key, &keys[..n]);
            assert_eq!(block.len(), block_len, "n {n}, bits_per_key {bits_per_key}");
            assert_eq!(*block.last().unwrap(), num_probes_for(bits_per_key));
        }
    }

    /// The bytes the format doc's formula gives, computed here without `probe_bits` so a
    /// change to the shared helper cannot change the test's idea of the format with it.
    fn spec_block(bits_per_key: usize, keys: &[&[u8]]) -> Vec<u8> {
        let num_probes = num_probes_for(bits_per_key) as u64;
        let m = (keys.len() * bits_per_key).max(64).div_ceil(8) * 8;
        let mut block = vec![0u8; m / 8];
        for key in keys {
            let h = xxh3_64(key);
            let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
            for i in 0..num_probes {
                let bit = ((h1 + i * h2) % (1 << 32)) as usize % m;
                block[bit / 8] |= 1 << (bit % 8);
            }
        }
        block.push(num_probes as u8);
        block
    }

    #[test]
    fn encoding_matches_the_format_doc() {
        let mut rng = StdRng::seed_from_u64(3);
        for (n, bits_per_key) in [(1, 10), (5, 10), (50, 10), (50, 3), (200, 16), (30, 60)] {
            let keys = random_keys(&mut rng, 0, n);
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let mut builder = BloomBuilder::new(bits_per_key);
            for key in &keys {
                builder.add_key(key);
            }
            assert_eq!(builder.finish(), spec_block(bits_per_key, &keys), "n {n}, bits_per_key {bits_per_key}");
        }
    }

    proptest! {
        #[test]
        fn fast_modulus_is_the_remainder(x: u32, m in 1u64..=(1u64 << 34)) {
            prop_assert_eq!(Modulus::new(m).reduce(x), u64::from(x) % m);
        }
    }

    #[test]
    fn fast_modulus_edges() {
        for m in [1u64, 2, 3, 7, 64, 65, 10_000_003, u64::from(u32::MAX) - 1, u64::from(u32::MAX), 1 << 32, u64::MAX] {
            for x in [0u32, 1, 2, 63, 64, 65, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
                assert_eq!(Modulus::new(m).reduce(x), u64::from(x) % m, "x {x}, m {m}");
            }
        }
    }

    #[test]
    fn apple_worked_example() {
        let mut builder = BloomBuilder::new(10);
        builder.add_key(b"apple");
        let block = builder.finish();
        assert_eq!(block, spec_block(10, &[b"apple"]));
        // Pinned bytes: a change here is a change to the on-disk format.
        assert_eq!(block, APPLE_BLOCK, "got {block:02x?}");
        let filter = BloomFilter::from_block(&block);
        assert!(filter.may_contain(b"apple"));
    }

    const APPLE_BLOCK: [u8; 9] = [0x03, 0x60, 0x00, 0x04, 0x80, 0x00, 0x10, 0x00, 0x07];

    #[test]
    fn empty_builder_is_a_valid_filter_that_contains_nothing() {
        let block = BloomBuilder::new(10).finish();
        assert_eq!(block, [0, 0, 0, 0, 0, 0, 0, 0, 7]);
        let filter = BloomFilter::from_block(&block);
        assert_eq!(filter.num_probes, 7);
        let mut rng = StdRng::seed_from_u64(4);
        let rejected = random_keys(&mut rng, 0, 1000).iter().filter(|key| !filter.may_contain(key)).count();
        assert!(rejected >= 990, "only {rejected} of 1000 rejected");
    }

    #[test]
    fn duplicates_cost_bits_but_are_found() {
        let mut builder = BloomBuilder::new(10);
        for _ in 0..10 {
            builder.add_key(b"same");
        }
        let block = builder.finish();
        assert_eq!(block.len(), 104 / 8 + 1, "10 adds of one key size the filter like 10 keys");
        assert!(BloomFilter::from_block(&block).may_contain(b"same"));
    }

    #[test]
    fn unreadable_filters_may_contain_everything() {
        let key = b"any key";
        assert!(BloomFilter::from_block(&[]).may_contain(key));
        // A probes byte but no bits: m would be 0.
        assert!(BloomFilter::from_block(&[7]).may_contain(key));
        for num_probes in [0, 31, 255] {
            let mut block = vec![0u8; 8];
            block.push(num_probes);
            assert!(BloomFilter::from_block(&block).may_contain(key), "num_probes {num_probes}");
        }
        // The boundary: 30 is read as a real filter, and all-zero bits reject.
        let mut block = vec![0u8; 8];
        block.push(30);
        assert!(!BloomFilter::from_block(&block).may_contain(key));
    }

    proptest! {
        #[test]
        fn garbage_blocks_never_panic(
            block in proptest::collection::vec(any::<u8>(), 0..200),
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..10),
        ) {
            let filter = BloomFilter::from_block(&block);
            for key in &keys {
                let _ = filter.may_contain(key);
            }
        }

        #[test]
        fn unknown_num_probes_may_contain_everything(
            bits in proptest::collection::vec(any::<u8>(), 0..200),
            num_probes in prop_oneof![Just(0u8), 31u8..=255],
            key in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut block = bits;
            block.push(num_probes);
            prop_assert!(BloomFilter::from_block(&block).may_contain(&key));
        }

        #[test]
        fn any_keys_any_bits_per_key_no_false_negatives(
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..200),
            bits_per_key in 0usize..50,
        ) {
            let block = build(bits_per_key, &keys);
            let filter = BloomFilter::from_block(&block);
            for key in &keys {
                prop_assert!(filter.may_contain(key));
            }
        }
    }
}
