//! An open table's pinned index block, searched through a compact array of its
//! keys' leading bytes.
//!
//! A cold point lookup searches the index of every table its key may be in: a
//! binary search over thousands of restart points (the index has one per
//! entry). Each probe in the block reads a 4-byte restart offset, then the
//! entry it points at: two cache misses, often on two pages, about 28 misses
//! in all for a 15K-block table. Timed with the caches and TLB flushed before
//! each search (an ad-hoc test, 15K 16-byte keys): about 10 µs a search.
//!
//! So the index keeps, per restart point, 8 bytes of its user key as a
//! big-endian number: the 8 bytes after the prefix that every key of the
//! table shares (often long: `user:000…`), zero-padded. Where two keys'
//! numbers differ they order as the keys do, so a search of the numbers
//! narrows the block search to the restart points whose number equals the
//! target's: usually one, and no probe of the block before the final step.
//! The numbers are searched in two levels (every 64th, then 64 of them: 512
//! bytes), so a search touches two or three pages instead of one per probe,
//! and the block handles, decoded once, are kept beside them: a get whose
//! number is unique reads its handle from there, and not the block. Timed as
//! above: 3.3 µs a search. Cost: 24 bytes of memory per data block (0.6% of
//! the data at 4 KiB blocks).

use std::cmp::Ordering;
use std::path::Path;

use crate::coding::Reader;
use crate::error::{Error, Result};
use crate::key::{ParsedInternalKey, TRAILER_LEN, compare_internal_keys};
use crate::sst::block::{Block, BlockHandle, BlockIter, Entry};

/// Numbers per second-level group (512 bytes, eight cache lines).
const GROUP_LEN: usize = 64;

/// A table's index block and a search array over its restart keys.
#[derive(Debug)]
pub(crate) struct PinnedIndex {
    block: Block,
    /// Where the index block lies in its file, for errors.
    offset: u64,
    /// The longest prefix all restart keys' user keys share.
    common: Vec<u8>,
    /// Per entry (each a restart point), [`number`] of its user key after
    /// `common`; empty when the block has no entries or restart points
    /// shared by several entries.
    numbers: Vec<u64>,
    /// Every `GROUP_LEN`th of `numbers`, starting with the first.
    group_firsts: Vec<u64>,
    /// Every entry's block handle, when the numbers exist and every handle
    /// decodes; else empty.
    handles: Vec<BlockHandle>,
}

/// What the numbers alone tell about a target.
enum Narrowed {
    /// The first restart point whose key is `>= target` (`None`: there is none).
    Exact(Option<usize>),
    /// The last restart point whose key is `< target` (or 0 if none is) lies in this range.
    Within(usize, usize),
}

/// The first 8 bytes of `suffix`, zero-padded, as a big-endian number: where
/// two suffixes' numbers differ, they order as the suffixes do.
fn number(suffix: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = suffix.len().min(8);
    bytes[..len].copy_from_slice(&suffix[..len]);
    u64::from_be_bytes(bytes)
}

/// The block handle an index entry holds; `file` and `index_offset` (the
/// index block's) name it in the error.
fn decode_handle(value: &[u8], file: &Path, index_offset: u64) -> Result<BlockHandle> {
    BlockHandle::decode_from(&mut Reader::new(value)).ok_or_else(|| Error::Corruption {
        file: file.to_path_buf(),
        offset: index_offset,
        reason: "malformed block handle in the index".into(),
    })
}

/// The user key of an internal key (the whole key if it is too short to have
/// a trailer: validated keys never are).
fn user_key(internal_key: &[u8]) -> &[u8] {
    &internal_key[..internal_key.len().saturating_sub(TRAILER_LEN)]
}

impl PinnedIndex {
    /// Checks that every key of `block` is a well-formed internal key and
    /// that the keys ascend (a malformed or misplaced separator would
    /// otherwise send lookups to the wrong block without an error), and
    /// builds the search array. `file` and `offset` name the block in errors.
    ///
    /// Two passes over the block, keeping no key but the first and the
    /// previous: a crafted index whose prefix-compressed keys grow by a byte
    /// per 6-byte entry would otherwise cost memory quadratic in its size.
    pub(crate) fn new(block: Block, file: &Path, offset: u64) -> Result<PinnedIndex> {
        let corrupt = |reason: String| Error::Corruption { file: file.to_path_buf(), offset, reason };
        let mut handles = Vec::with_capacity(block.num_restarts());
        let mut first_user_key = Vec::new();
        let mut previous = Vec::new();
        let mut shortest_user_key = usize::MAX;
        let mut iter = block.iter();
        while let Some(value) = iter.step(file, offset)? {
            let key = iter.key();
            if ParsedInternalKey::parse(key).is_none() {
                return Err(corrupt(format!("malformed internal key of {} bytes", key.len())));
            }
            if handles.is_empty() {
                first_user_key = user_key(key).to_vec();
            } else if compare_internal_keys(&previous, key) != Ordering::Less {
                return Err(corrupt(format!("index entry {} does not follow the one before it", handles.len())));
            }
            shortest_user_key = shortest_user_key.min(user_key(key).len());
            previous.clear();
            previous.extend_from_slice(key);
            // A malformed handle is reported by the block search, when a lookup lands on it.
            handles.push(BlockHandle::decode_from(&mut Reader::new(&block.data()[value])));
        }
        let entries = handles.len();
        let mut index = PinnedIndex {
            block,
            offset,
            common: Vec::new(),
            numbers: Vec::new(),
            group_firsts: Vec::new(),
            handles: Vec::new(),
        };
        // ringdb writes indexes with a restart point per entry, and the
        // numbers stand for restart points. Another layout (or an empty
        // block, whose one restart point has no entry) is searched in the
        // block alone.
        if entries == 0 || entries != index.block.num_restarts() {
            return Ok(index);
        }
        if let Some(handles) = handles.into_iter().collect::<Option<Vec<_>>>() {
            index.handles = handles;
        }
        // Keys ascend (checked above), so what the first and last share, all share.
        let last_user_key = user_key(&previous);
        let shared = first_user_key.iter().zip(last_user_key).take_while(|(a, b)| a == b).count();
        let shared = shared.min(shortest_user_key);
        index.common = first_user_key[..shared].to_vec();
        index.numbers = Vec::with_capacity(entries);
        let mut iter = index.block.iter();
        while iter.step(file, offset)?.is_some() {
            index.numbers.push(number(&user_key(iter.key())[shared..]));
        }
        index.group_firsts = index.numbers.iter().step_by(GROUP_LEN).copied().collect();
        Ok(index)
    }

    /// An iterator from the first entry.
    pub(crate) fn iter(&self) -> BlockIter {
        self.block.iter()
    }

    /// Where the index block lies in its file (what errors about it name).
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The block handle an entry of this index holds (`value`); `file`
    /// names the table in the error.
    pub(crate) fn decode_handle(&self, value: &[u8], file: &Path) -> Result<BlockHandle> {
        decode_handle(value, file, self.offset)
    }

    /// The first entry whose key is `>= target` (an internal key), and an
    /// iterator positioned just after it: what [`Block::iter_from`] under
    /// [`compare_internal_keys`] returns, found with fewer cache misses.
    pub(crate) fn iter_from(&self, target: &[u8], file: &Path) -> Result<(BlockIter, Option<Entry>)> {
        let offset = self.offset;
        let (lo, hi) = match self.narrow(target) {
            // The restart point before it is < target: the block search checks one entry.
            Some(Narrowed::Exact(Some(first))) => (first.saturating_sub(1), first.saturating_sub(1)),
            Some(Narrowed::Exact(None)) => (self.numbers.len() - 1, self.numbers.len() - 1),
            Some(Narrowed::Within(lo, hi)) => (lo, hi),
            None => (0, self.block.num_restarts() - 1),
        };
        let (iter, found) = self.block.iter_to_within(target, compare_internal_keys, file, offset, lo, hi)?;
        let entry = found.map(|value| (iter.key().to_vec(), self.block.data().slice(value)));
        Ok((iter, entry))
    }

    /// The handle of the first block whose separator is `>= target` (an
    /// internal key): the only block that can hold it. Without touching the
    /// block when the numbers settle it, as they do for almost every lookup.
    pub(crate) fn find_handle(&self, target: &[u8], file: &Path) -> Result<Option<BlockHandle>> {
        if !self.handles.is_empty()
            && let Some(Narrowed::Exact(first)) = self.narrow(target)
        {
            return Ok(first.map(|i| self.handles[i]));
        }
        match self.iter_from(target, file)?.1 {
            Some((_, handle)) => decode_handle(&handle, file, self.offset).map(Some),
            None => Ok(None),
        }
    }

    /// What the numbers tell about `target`'s place among the restart
    /// points. A key whose number is smaller than the target's orders before
    /// it, one whose number is larger orders after it; only keys with an
    /// equal number need the block search. `None` without numbers.
    fn narrow(&self, target: &[u8]) -> Option<Narrowed> {
        let count = self.numbers.len();
        if count == 0 {
            return None;
        }
        let target = user_key(target);
        let head = &target[..target.len().min(self.common.len())];
        match head.cmp(&self.common[..head.len()]) {
            Ordering::Less => return Some(Narrowed::Exact(Some(0))),
            Ordering::Greater => return Some(Narrowed::Exact(None)),
            // A proper prefix of what every key starts with: before them all.
            Ordering::Equal if head.len() < self.common.len() => return Some(Narrowed::Exact(Some(0))),
            Ordering::Equal => {}
        }
        let wanted = number(&target[self.common.len()..]);
        let below = self.partition_point(|n| n < wanted);
        // Restart points before `below` are < target, those from `not_above` on are > target.
        let not_above = self.partition_point(|n| n <= wanted);
        if below == not_above {
            return Some(Narrowed::Exact((below < count).then_some(below)));
        }
        Some(Narrowed::Within(below.saturating_sub(1), not_above - 1))
    }

    /// `numbers.partition_point(pred)` for a `pred` true up to some point and
    /// false after it, searched group by group: the group firsts, then one group.
    fn partition_point(&self, pred: impl Fn(u64) -> bool) -> usize {
        let groups = self.group_firsts.partition_point(|n| pred(*n));
        let Some(group) = groups.checked_sub(1) else {
            return 0;
        };
        let start = group * GROUP_LEN;
        let end = (start + GROUP_LEN).min(self.numbers.len());
        start + self.numbers[start..end].partition_point(|n| pred(*n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{SeqNo, ValueKind, encode_internal_key};
    use crate::sst::block::{BlockBuilder, verify_trailer};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn path() -> &'static Path {
        Path::new("000011.sst")
    }

    fn block_of(keys: &[Vec<u8>], interval: usize) -> Block {
        let mut builder = BlockBuilder::new(interval);
        for (i, key) in keys.iter().enumerate() {
            builder.add(key, &handle_bytes(i));
        }
        let mut raw = Vec::new();
        builder.finish_into(&mut raw);
        Block::new(verify_trailer(Bytes::from(raw), path(), 0).unwrap(), path(), 0).unwrap()
    }

    /// The block handle the test indexes hold for their entry `i`, encoded.
    fn handle_bytes(i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        BlockHandle { offset: i as u64 * 4096, size: 4000 + i as u64 }.encode_to(&mut out);
        out
    }

    fn internal(user_key: &[u8], seq: u64) -> Vec<u8> {
        encode_internal_key(user_key, SeqNo::new(seq).unwrap(), ValueKind::Put)
    }

    /// Bytes from a small alphabet (with 0 and 0xff), so that keys often
    /// share long prefixes and differ only where the numbers cannot see.
    fn key_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(0xff), any::<u8>()], 0..max_len)
    }

    /// Sorted, distinct internal keys whose user keys start with `common`
    /// (so the index strips a shared prefix) and go on for up to 24 bytes.
    fn sorted_keys(common: Vec<u8>) -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec((key_bytes(24), 1u64..4), 1..200).prop_map(move |raw| {
            let mut keys: Vec<Vec<u8>> =
                raw.iter().map(|(k, seq)| internal(&[common.as_slice(), k].concat(), *seq)).collect();
            keys.sort_by(|a, b| compare_internal_keys(a, b));
            keys.dedup();
            keys
        })
    }

    fn keys_and_common() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
        key_bytes(12).prop_flat_map(|common| (Just(common.clone()), sorted_keys(common)))
    }

    proptest! {
        /// Every target, present or absent, inside or outside the keys'
        /// shared prefix, finds what the plain block search finds.
        #[test]
        fn finds_what_the_block_search_finds(
            (common, keys) in keys_and_common(),
            interval in 1usize..5,
            targets in prop::collection::vec((any::<bool>(), key_bytes(24), 0u64..5), 1..50),
        ) {
            let block = block_of(&keys, interval);
            let index = PinnedIndex::new(block.clone(), path(), 0).unwrap();
            // The search array exists exactly when every entry is a restart point.
            let every_entry_restarts = interval == 1 || keys.len() == 1;
            prop_assert_eq!(index.numbers.len(), if every_entry_restarts { keys.len() } else { 0 });
            prop_assert_eq!(index.handles.len(), index.numbers.len());
            let mut all_targets: Vec<Vec<u8>> = targets
                .iter()
                .map(|(inside, k, seq)| {
                    let user_key = if *inside { [common.as_slice(), k].concat() } else { k.clone() };
                    internal(&user_key, *seq)
                })
                .collect();
            all_targets.extend(keys.iter().cloned());
            for target in &all_targets {
                let (mut fast_iter, fast) = index.iter_from(target, path()).unwrap();
                let (mut plain_iter, plain) = block.iter_from(target, compare_internal_keys, path(), 0).unwrap();
                prop_assert_eq!(&fast, &plain);
                // Both iterators go on from the same place.
                prop_assert_eq!(fast_iter.next_entry(path(), 0).unwrap(), plain_iter.next_entry(path(), 0).unwrap());
                let plain_handle = plain.map(|(_, value)| BlockHandle::decode_from(&mut Reader::new(&value)).unwrap());
                prop_assert_eq!(index.find_handle(target, path()).unwrap(), plain_handle);
            }
        }
    }

    #[test]
    fn a_long_shared_prefix_is_stripped_before_the_numbers() {
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| internal(format!("user:{:016}", i * 7).as_bytes(), 1)).collect();
        let index = PinnedIndex::new(block_of(&keys, 1), path(), 0).unwrap();
        assert_eq!(index.common, b"user:000000000000"); // 6993 = 999 * 7 has 4 digits
        // Every key has a number of its own, so a search never probes the block until its last step.
        assert!(index.numbers.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(index.group_firsts.len(), 1000usize.div_ceil(GROUP_LEN));
    }

    #[test]
    fn keys_with_equal_numbers_are_told_apart_by_the_full_key() {
        // Nothing shared by the first and last key; then 8 equal bytes and
        // 4 that differ, for all but the last.
        let mut keys: Vec<Vec<u8>> = (0..200u32).map(|i| internal(format!("axxxxxxxx{i:04}").as_bytes(), 1)).collect();
        keys.push(internal(b"b", 1));
        let index = PinnedIndex::new(block_of(&keys, 1), path(), 0).unwrap();
        assert!(index.common.is_empty());
        assert!(index.numbers[..200].iter().all(|n| *n == index.numbers[0]));
        for (i, key) in keys.iter().enumerate() {
            let (_, found) = index.iter_from(key, path()).unwrap();
            let (found_key, value) = found.unwrap();
            assert_eq!(&found_key, key);
            assert_eq!(value.as_ref(), handle_bytes(i));
            let handle = index.find_handle(key, path()).unwrap().unwrap();
            assert_eq!(handle.offset, i as u64 * 4096);
        }
    }

    #[test]
    fn runs_of_keys_with_equal_numbers_find_what_the_block_finds() {
        for run in 0..=12u32 {
            // Keys around a run of `run` keys whose first 8 bytes agree: the
            // numbers cannot order them, so the search must leave them to the
            // block search (its `Within` answer), however long the run.
            let mut user_keys: Vec<Vec<u8>> = vec![b"a0".to_vec(), b"m".to_vec()];
            user_keys.extend((0..run).map(|i| format!("mxxxxxxx{i:02}5").into_bytes()));
            user_keys.extend([b"mxxxxxxy".to_vec(), b"z".to_vec()]);
            let keys: Vec<Vec<u8>> = user_keys.iter().map(|k| internal(k, 1)).collect();
            let block = block_of(&keys, 1);
            let index = PinnedIndex::new(block.clone(), path(), 0).unwrap();
            let mut targets = keys.clone();
            // Between, before and after the keys of the run, and at other sequence numbers.
            targets.extend((0..=run).map(|i| internal(format!("mxxxxxxx{i:02}").as_bytes(), 7)));
            targets.extend([b"mxxxxxxx".as_slice(), b"mxxxxxxx~", b"a", b"zz"].map(|k| internal(k, 3)));
            for target in &targets {
                let (_, plain) = block.iter_from(target, compare_internal_keys, path(), 0).unwrap();
                let (_, fast) = index.iter_from(target, path()).unwrap();
                assert_eq!(fast, plain, "run of {run}, target {target:?}");
                let plain_handle = plain.map(|(_, value)| BlockHandle::decode_from(&mut Reader::new(&value)).unwrap());
                assert_eq!(index.find_handle(target, path()).unwrap(), plain_handle, "run of {run}, target {target:?}");
            }
        }
    }

    #[test]
    fn an_index_whose_keys_do_not_ascend_is_corruption() {
        let ascending: Vec<Vec<u8>> = (0..10u32).map(|i| internal(format!("key{i:02}").as_bytes(), 1)).collect();
        for (a, b) in [(3, 4), (0, 9), (5, 5)] {
            let mut keys = ascending.clone();
            if a == b {
                keys.insert(a, keys[a].clone()); // a duplicate
            } else {
                keys.swap(a, b);
            }
            match PinnedIndex::new(block_of(&keys, 1), path(), 4096) {
                Err(Error::Corruption { offset: 4096, reason, .. }) => {
                    assert!(reason.contains("does not follow"), "{reason}")
                }
                other => panic!("keys out of order ({a}, {b}) gave {other:?}"),
            }
        }
        assert!(PinnedIndex::new(block_of(&ascending, 1), path(), 4096).is_ok());
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = PinnedIndex::new(block_of(&[], 1), path(), 0).unwrap();
        assert!(index.numbers.is_empty());
        let (_, found) = index.iter_from(&internal(b"k", 1), path()).unwrap();
        assert_eq!(found, None);
    }
}
