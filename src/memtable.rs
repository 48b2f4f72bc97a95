//! The in-memory write buffer: a concurrent ordered map of internal keys to values.
//!
//! Every write lands here (after the WAL) until the memtable is full, frozen and flushed to an
//! L0 table.
//!
//! # Thread safety
//! Many writers insert and many readers read at the same time, without a global lock: the map is
//! a lock-free `crossbeam_skiplist` skip list, and every method takes `&self`. The size and
//! max-seq counters are atomics. The skip list is the crate's `base` flavour, not `SkipMap`:
//! `SkipMap` pins the epoch and bumps a node reference count on every step of an iterator,
//! which was a fifth of a flush's encoding time; here one pinned guard covers a whole walk.
//!
//! # Visibility
//! The memtable does not decide what a reader may see. An entry is visible to any `get` as soon
//! as the skiplist has linked it, including entries of a write group that is only half inserted.
//! Readers pass a snapshot sequence number and only entries with `seq <= snapshot` count. The DB
//! publishes its "visible sequence" only after a whole write group has been inserted, so a
//! reader using a published snapshot never sees part of a batch.
//!
//! # Invariants
//! 1. Each `(user_key, seq)` is inserted at most once (the DB gives every operation in a batch
//!    its own seq). Inserting the same internal key twice replaces the value and counts its size
//!    twice.
//! 2. Nothing is ever removed: a memtable only grows until it is dropped after its flush, so
//!    `len`, `approximate_size_bytes` and `max_seq` never decrease.

use std::collections::VecDeque;
use std::fmt;
use std::mem::size_of;
use std::ops::Bound;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use crossbeam_epoch::Guard;
use crossbeam_skiplist::base::{Entry, Iter, SkipList};

use crate::key::{InternalKey, SeqNo, ValueKind};

/// Bytes charged per entry on top of its encoded key and value, so that many tiny entries still
/// fill the memtable at a rate close to the memory they really use.
///
/// An estimate of a crossbeam skiplist node and its allocations on a 64-bit target: the key and
/// value handles stored inline (`InternalKey`, 40 bytes with short keys inline, and `Bytes`, 32),
/// the node's reference count and height word (8), its tower of next pointers (height is
/// geometric with p = 1/2, so 2 pointers on average: 16), and about 8 bytes of allocator
/// bookkeeping for each of up to three allocations (node, long key bytes, value bytes: 24).
/// That is 120 bytes on 64-bit.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize =
    size_of::<InternalKey>() + size_of::<Bytes>() + size_of::<usize>() + 2 * size_of::<usize>() + 3 * 8;

/// What the memtable knows about a user key at a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemtableValue {
    /// The newest visible entry is a put of this value.
    Put(Bytes),
    /// The newest visible entry is a tombstone: the key is deleted, and older layers (other
    /// memtables, SSTs) must not be consulted.
    Deleted,
}

/// A concurrent, insert-only map from internal keys to values. See the module docs for the
/// thread-safety and visibility contract.
pub(crate) struct Memtable {
    map: SkipList<InternalKey, Bytes>,
    /// Sum over entries of encoded key length + value length + [`ENTRY_OVERHEAD_BYTES`].
    size_bytes: AtomicUsize,
    /// The largest seq inserted so far; 0 while empty.
    max_seq: AtomicU64,
    /// A user key is sampled each time `size_bytes` crosses a multiple of
    /// this; 0: never (nothing flushes this memtable in parts).
    sample_every_bytes: usize,
    /// User keys sampled in insertion order, evenly by charged bytes: a
    /// flush estimates quantiles of the key range from them to cut the
    /// memtable into parts of similar size (the skiplist has no ranks).
    samples: Mutex<Vec<Vec<u8>>>,
}

impl Drop for Memtable {
    fn drop(&mut self) {
        // Freeing a flushed memtable takes tens of milliseconds; its last
        // reference may go on the flush thread or in a caller's scan.
        let collector = crossbeam_epoch::default_collector().clone();
        let map = std::mem::replace(&mut self.map, SkipList::new(collector));
        if !map.is_empty() {
            crate::reclaim::drop_in_background(map);
        }
    }
}

impl Memtable {
    /// An empty memtable that samples no keys.
    pub(crate) fn new() -> Memtable {
        Memtable::with_sample_interval(0)
    }

    /// An empty memtable that samples a user key (see [`split_keys`](Self::split_keys))
    /// each time its charged size crosses a multiple of `sample_every_bytes`
    /// (0: never).
    pub(crate) fn with_sample_interval(sample_every_bytes: usize) -> Memtable {
        Memtable {
            map: SkipList::new(crossbeam_epoch::default_collector().clone()),
            size_bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            sample_every_bytes,
            samples: Mutex::new(Vec::new()),
        }
    }

    /// Adds the entry `(user_key, seq, kind) -> value`, copying the key once and
    /// keeping `value` (often a slice of its write batch's buffer, which then
    /// lives as long as any of its values: in the memtable or in a reader's hands).
    ///
    /// Safe to call from many threads at once. A `Delete` normally carries an empty value. The
    /// entry is immediately visible to readers whose snapshot is at least `seq`; keeping that
    /// snapshot unpublished until the whole write group is in is the caller's job.
    pub(crate) fn insert(&self, user_key: &[u8], seq: SeqNo, kind: ValueKind, value: Bytes) {
        let key = InternalKey::new(user_key, seq, kind);
        let charge = key.encoded().len() + value.len() + ENTRY_OVERHEAD_BYTES;
        let guard = crossbeam_epoch::pin();
        self.map.insert(key, value, &guard).release(&guard);
        // Relaxed: both counters are statistics read by the flush trigger and by code that
        // already synchronized with the inserters (a frozen memtable's writers have finished).
        // They order no other memory.
        let before = self.size_bytes.fetch_add(charge, Ordering::Relaxed);
        self.max_seq.fetch_max(seq.get(), Ordering::Relaxed);
        let every = self.sample_every_bytes;
        if every != 0 && before / every != (before + charge) / every {
            self.samples.lock().unwrap_or_else(|e| e.into_inner()).push(user_key.to_vec());
        }
    }

    /// Up to `parts - 1` distinct user keys, ascending, that cut the memtable
    /// into `parts` key ranges of about equal charged size (estimated from
    /// the samples): part `i` holds the user keys from bound `i - 1`
    /// (inclusive) to bound `i` (exclusive). Fewer when there are too few
    /// samples; none for a memtable of fewer than two samples.
    pub(crate) fn split_keys(&self, parts: usize) -> Vec<Vec<u8>> {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
        samples.sort_unstable();
        samples.dedup();
        // Each part starts at a sample: the k-th of `parts` quantiles.
        let mut bounds: Vec<Vec<u8>> =
            (1..parts).filter_map(|k| samples.get(k * samples.len() / parts).cloned()).collect();
        bounds.dedup();
        bounds
    }

    /// The entries whose user keys lie in `[start, end)` (`None`: unbounded),
    /// in internal-key order, by reference while `guard` stays pinned.
    pub(crate) fn entries_between<'a>(
        &'a self,
        start: Option<&[u8]>,
        end: Option<&'a [u8]>,
        guard: &'a Guard,
    ) -> impl Iterator<Item = Entry<'a, 'a, InternalKey, Bytes>> + 'a {
        let first = match start {
            // Sorts before every version of `start`.
            Some(start) => self.map.lower_bound(Bound::Included(&InternalKey::lookup(start, SeqNo::MAX)), guard),
            None => self.map.front(guard),
        };
        std::iter::successors(first, |entry| entry.next())
            .take_while(move |entry| end.is_none_or(|end| entry.key().user_key() < end))
    }

    /// The newest entry for `user_key` with `seq <= snapshot`, or `None` if the memtable holds no
    /// such entry (the caller then looks in older memtables and tables).
    pub(crate) fn get(&self, user_key: &[u8], snapshot: SeqNo) -> Option<MemtableValue> {
        // Entries for one user key sort newest first, and the lookup key sorts just before the
        // newest entry with seq <= snapshot (see `InternalKey::lookup`). The first entry at or
        // after it is therefore that entry, if it belongs to `user_key` at all; otherwise it is
        // the first entry of the next user key, or there is none.
        let lookup = InternalKey::lookup(user_key, snapshot);
        let guard = crossbeam_epoch::pin();
        let entry = self.map.lower_bound(Bound::Included(&lookup), &guard)?;
        let found = entry.key().parsed();
        if found.user_key != user_key {
            return None;
        }
        debug_assert!(found.seq <= snapshot, "lower_bound returned an entry newer than the snapshot");
        Some(match found.kind {
            ValueKind::Put => MemtableValue::Put(entry.value().clone()),
            ValueKind::Delete => MemtableValue::Deleted,
        })
    }

    /// All entries in internal-key order (user key ascending, newest version first), cloned:
    /// for tests, which compare whole contents.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (InternalKey, Bytes)> {
        let guard = crossbeam_epoch::pin();
        let entries: Vec<(InternalKey, Bytes)> =
            self.map.iter(&guard).map(|entry| (entry.key().clone(), entry.value().clone())).collect();
        entries.into_iter()
    }

    /// The first entry of all: where a cursor starts.
    pub(crate) fn first(&self) -> Option<(InternalKey, Bytes)> {
        let guard = crossbeam_epoch::pin();
        let entry = self.map.front(&guard)?;
        Some((entry.key().clone(), entry.value().clone()))
    }

    /// All entries in internal-key order, by reference, while `guard` stays
    /// pinned (from [`crossbeam_epoch::pin`]): a flush reads every key and value
    /// once, and neither cloning each value's `Bytes` nor pinning per step is free.
    pub(crate) fn entries<'a>(&'a self, guard: &'a Guard) -> Iter<'a, 'a, InternalKey, Bytes> {
        self.map.iter(guard)
    }

    /// The first entry at or after `key` (with `inclusive`), or strictly after it:
    /// a cursor step for iterators, which hold no borrow of the map between steps.
    pub(crate) fn entry_from(&self, key: &InternalKey, inclusive: bool) -> Option<(InternalKey, Bytes)> {
        let bound = if inclusive { Bound::Included(key) } else { Bound::Excluded(key) };
        let guard = crossbeam_epoch::pin();
        let entry = self.map.lower_bound(bound, &guard)?;
        Some((entry.key().clone(), entry.value().clone()))
    }

    /// Appends to `out` up to `max` entries strictly after `key`, in order: a
    /// forward cursor refills a batch with one search instead of searching
    /// for every step (a scan of a large memtable was four times slower per
    /// entry than a scan of tables).
    pub(crate) fn entries_after(&self, key: &InternalKey, max: usize, out: &mut VecDeque<(InternalKey, Bytes)>) {
        let guard = crossbeam_epoch::pin();
        let mut entry = self.map.lower_bound(Bound::Excluded(key), &guard);
        for _ in 0..max {
            let Some(found) = entry else { break };
            out.push_back((found.key().clone(), found.value().clone()));
            entry = found.next();
        }
    }

    /// The last entry at or before `key` (with `inclusive`), or strictly before
    /// it; with `None`, the last entry of all. For reverse cursors.
    pub(crate) fn entry_before(&self, key: Option<&InternalKey>, inclusive: bool) -> Option<(InternalKey, Bytes)> {
        let guard = crossbeam_epoch::pin();
        let entry = match key {
            None => self.map.back(&guard)?,
            Some(key) => {
                self.map.upper_bound(if inclusive { Bound::Included(key) } else { Bound::Excluded(key) }, &guard)?
            }
        };
        Some((entry.key().clone(), entry.value().clone()))
    }

    /// Memory charged to this memtable: for every entry its encoded key, its value and
    /// [`ENTRY_OVERHEAD_BYTES`]. Compared against `write_buffer_size` to decide when to freeze.
    pub(crate) fn approximate_size_bytes(&self) -> usize {
        self.size_bytes.load(Ordering::Relaxed)
    }

    /// The largest seq inserted, or [`SeqNo::ZERO`] if nothing has been (the DB numbers writes
    /// from 1). For a frozen memtable this is the newest write it covers: once it is flushed,
    /// the WAL up to this seq is no longer needed.
    pub(crate) fn max_seq(&self) -> SeqNo {
        SeqNo::new(self.max_seq.load(Ordering::Relaxed)).expect("only SeqNo values are stored")
    }

    /// Number of entries (every version and tombstone counts).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing has been inserted.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Default for Memtable {
    fn default() -> Memtable {
        Memtable::new()
    }
}

impl fmt::Debug for Memtable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memtable")
            .field("len", &self.len())
            .field("approximate_size_bytes", &self.approximate_size_bytes())
            .field("max_seq", &self.max_seq())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn seq(n: u64) -> SeqNo {
        SeqNo::new(n).expect("test seq fits in 56 bits")
    }

    fn put(value: &[u8]) -> Option<MemtableValue> {
        Some(MemtableValue::Put(Bytes::copy_from_slice(value)))
    }

    /// A value that reports the name of the thread that frees it.
    struct Witness(std::sync::mpsc::Sender<Option<String>>);

    impl AsRef<[u8]> for Witness {
        fn as_ref(&self) -> &[u8] {
            b"value"
        }
    }

    impl Drop for Witness {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().name().map(str::to_owned));
        }
    }

    #[test]
    fn a_dropped_memtable_is_freed_on_the_reclaim_thread() {
        let (sender, freed_on) = std::sync::mpsc::channel();
        let memtable = Memtable::new();
        for i in 0..1000u32 {
            memtable.insert(&i.to_be_bytes(), seq(u64::from(i) + 1), ValueKind::Put, Bytes::copy_from_slice(b"v"));
        }
        memtable.insert(b"watched", seq(5000), ValueKind::Put, Bytes::from_owner(Witness(sender)));
        drop(memtable);
        let name = freed_on.recv_timeout(std::time::Duration::from_secs(10)).expect("the value was freed");
        assert_eq!(name.as_deref(), Some("ringdb-reclaim"));
    }

    #[test]
    fn overhead_constant_matches_its_documentation_on_64_bit() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(ENTRY_OVERHEAD_BYTES, 120);
        }
    }

    #[test]
    fn get_sees_the_newest_version_at_or_below_the_snapshot() {
        let memtable = Memtable::new();
        memtable.insert(b"a", seq(1), ValueKind::Put, Bytes::from_static(b"1"));
        memtable.insert(b"a", seq(5), ValueKind::Put, Bytes::from_static(b"2"));
        memtable.insert(b"a", seq(7), ValueKind::Delete, Bytes::from_static(b""));

        assert_eq!(memtable.get(b"a", SeqNo::ZERO), None);
        for s in 1..=4 {
            assert_eq!(memtable.get(b"a", seq(s)), put(b"1"), "snapshot {s}");
        }
        for s in 5..=6 {
            assert_eq!(memtable.get(b"a", seq(s)), put(b"2"), "snapshot {s}");
        }
        for s in [7, 8, 1000, SeqNo::MAX.get()] {
            assert_eq!(memtable.get(b"a", seq(s)), Some(MemtableValue::Deleted), "snapshot {s}");
        }
        assert_eq!(memtable.get(b"b", SeqNo::MAX), None);
        assert_eq!(memtable.get(b"", SeqNo::MAX), None);
    }

    #[test]
    fn a_put_at_exactly_the_snapshot_is_visible() {
        let memtable = Memtable::new();
        memtable.insert(b"k", seq(3), ValueKind::Put, Bytes::from_static(b"v"));
        assert_eq!(memtable.get(b"k", seq(2)), None);
        assert_eq!(memtable.get(b"k", seq(3)), put(b"v"));
    }

    #[test]
    fn user_keys_that_are_prefixes_of_each_other_do_not_bleed() {
        let memtable = Memtable::new();
        memtable.insert(b"a", seq(1), ValueKind::Put, Bytes::from_static(b"a"));
        memtable.insert(b"ab", seq(2), ValueKind::Put, Bytes::from_static(b"ab"));
        memtable.insert(b"a\0", seq(3), ValueKind::Put, Bytes::from_static(b"a0"));
        memtable.insert(b"", seq(4), ValueKind::Put, Bytes::from_static(b"empty"));

        assert_eq!(memtable.get(b"a", SeqNo::MAX), put(b"a"));
        assert_eq!(memtable.get(b"ab", SeqNo::MAX), put(b"ab"));
        assert_eq!(memtable.get(b"a\0", SeqNo::MAX), put(b"a0"));
        assert_eq!(memtable.get(b"", SeqNo::MAX), put(b"empty"));
        // Snapshots older than a key's only version must not fall through to a neighbour.
        assert_eq!(memtable.get(b"ab", seq(1)), None);
        assert_eq!(memtable.get(b"a\0", seq(2)), None);
        assert_eq!(memtable.get(b"", seq(3)), None);
        // Keys between, before and after the stored ones.
        assert_eq!(memtable.get(b"a\0\0", SeqNo::MAX), None);
        assert_eq!(memtable.get(b"aa", SeqNo::MAX), None);
        assert_eq!(memtable.get(b"b", SeqNo::MAX), None);
    }

    #[test]
    fn size_len_and_max_seq_track_inserts() {
        let memtable = Memtable::new();
        assert!(memtable.is_empty());
        assert_eq!(memtable.len(), 0);
        assert_eq!(memtable.approximate_size_bytes(), 0);
        assert_eq!(memtable.max_seq(), SeqNo::ZERO);

        memtable.insert(b"key", seq(10), ValueKind::Put, Bytes::from_static(b"value"));
        let first = 3 + 8 + 5 + ENTRY_OVERHEAD_BYTES;
        assert_eq!(memtable.approximate_size_bytes(), first);
        memtable.insert(b"key", seq(4), ValueKind::Delete, Bytes::from_static(b""));
        assert_eq!(memtable.approximate_size_bytes(), first + 3 + 8 + ENTRY_OVERHEAD_BYTES);

        assert!(!memtable.is_empty());
        assert_eq!(memtable.len(), 2);
        assert_eq!(memtable.max_seq(), seq(10), "max_seq keeps the largest, not the latest");
    }

    #[test]
    fn entries_after_continues_strictly_after_the_key_in_batches() {
        let memtable = Memtable::new();
        for i in 0..100u32 {
            memtable.insert(format!("k{i:03}").as_bytes(), seq(u64::from(i) + 1), ValueKind::Put, Bytes::new());
        }
        let all: Vec<InternalKey> = memtable.iter().map(|(k, _)| k).collect();
        let mut out = VecDeque::new();
        memtable.entries_after(&all[10], 5, &mut out);
        assert_eq!(out.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), all[11..16].to_vec());
        // Near the end it stops at the last entry; past it, nothing.
        out.clear();
        memtable.entries_after(&all[97], 5, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        memtable.entries_after(&all[99], 5, &mut out);
        assert!(out.is_empty());
        // A key between entries (a lookup key sorts before its user key's entries).
        memtable.entries_after(&InternalKey::lookup(b"k050", seq(1000)), 1, &mut out);
        assert_eq!(out[0].0, all[50]);
    }

    #[test]
    fn iter_yields_internal_key_order() {
        let memtable = Memtable::new();
        memtable.insert(b"b", seq(1), ValueKind::Put, Bytes::from_static(b"b1"));
        memtable.insert(b"a", seq(2), ValueKind::Put, Bytes::from_static(b"a2"));
        memtable.insert(b"a", seq(9), ValueKind::Delete, Bytes::from_static(b""));
        memtable.insert(b"a", seq(5), ValueKind::Put, Bytes::from_static(b"a5"));

        let entries: Vec<(Vec<u8>, u64, ValueKind, Bytes)> =
            memtable.iter().map(|(k, v)| (k.user_key().to_vec(), k.seq().get(), k.kind(), v)).collect();
        assert_eq!(
            entries,
            vec![
                (b"a".to_vec(), 9, ValueKind::Delete, Bytes::new()),
                (b"a".to_vec(), 5, ValueKind::Put, Bytes::from_static(b"a5")),
                (b"a".to_vec(), 2, ValueKind::Put, Bytes::from_static(b"a2")),
                (b"b".to_vec(), 1, ValueKind::Put, Bytes::from_static(b"b1")),
            ]
        );
    }

    #[test]
    fn concurrent_inserts_from_four_threads_are_all_readable() {
        const THREADS: u64 = 4;
        const KEYS_PER_THREAD: u64 = 10_000;
        let key = |t: u64, i: u64| format!("t{t}-{i:05}").into_bytes();
        let seq_of = |t: u64, i: u64| seq(t * KEYS_PER_THREAD + i + 1);

        let memtable = Memtable::new();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let memtable = &memtable;
                scope.spawn(move || {
                    for i in 0..KEYS_PER_THREAD {
                        memtable.insert(
                            &key(t, i),
                            seq_of(t, i),
                            ValueKind::Put,
                            Bytes::copy_from_slice(&i.to_le_bytes()),
                        );
                    }
                });
            }
        });

        let total = (THREADS * KEYS_PER_THREAD) as usize;
        assert_eq!(memtable.len(), total);
        assert_eq!(memtable.max_seq(), seq(THREADS * KEYS_PER_THREAD));
        let key_bytes: usize = (0..THREADS).flat_map(|t| (0..KEYS_PER_THREAD).map(move |i| key(t, i).len())).sum();
        assert_eq!(memtable.approximate_size_bytes(), key_bytes + total * (8 + 8 + ENTRY_OVERHEAD_BYTES));
        for t in 0..THREADS {
            for i in 0..KEYS_PER_THREAD {
                let k = key(t, i);
                assert_eq!(memtable.get(&k, SeqNo::MAX), put(&i.to_le_bytes()), "key {t}-{i}");
                let before = SeqNo::new(seq_of(t, i).get() - 1).expect("fits");
                assert_eq!(memtable.get(&k, before), None, "key {t}-{i} before its write");
            }
        }
        let keys: Vec<InternalKey> = memtable.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), total);
        assert!(keys.is_sorted());
    }

    /// One write in the model test: user key, value (`None` for a delete).
    type Op = (Vec<u8>, Option<Vec<u8>>);
    /// The model: user key -> every version written, as (seq, value or `None` for a delete).
    type Model = BTreeMap<Vec<u8>, Vec<(u64, Option<Vec<u8>>)>>;

    fn ops_strategy() -> impl Strategy<Value = Vec<(u64, Op)>> {
        let user_key = proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..3);
        let value = proptest::option::weighted(0.8, proptest::collection::vec(any::<u8>(), 0..4));
        proptest::collection::vec((user_key, value), 0..40)
            // Distinct seqs with gaps (1, 4, 7, ...), inserted in a random order: the memtable
            // must not depend on inserts arriving in seq order.
            .prop_map(|ops| ops.into_iter().enumerate().map(|(i, op)| (i as u64 * 3 + 1, op)).collect::<Vec<_>>())
            .prop_shuffle()
    }

    proptest! {
        #[test]
        fn get_matches_a_btreemap_model(
            ops in ops_strategy(),
            queries in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..3), 0..130u64),
                0..60,
            ),
        ) {
            let memtable = Memtable::new();
            let mut model = Model::new();
            for (s, (user_key, value)) in &ops {
                let kind = if value.is_some() { ValueKind::Put } else { ValueKind::Delete };
                memtable.insert(user_key, seq(*s), kind, Bytes::copy_from_slice(value.as_deref().unwrap_or_default()));
                model.entry(user_key.clone()).or_default().push((*s, value.clone()));
            }

            let expect = |user_key: &[u8], snapshot: u64| -> Option<MemtableValue> {
                let (_, value) = model
                    .get(user_key)?
                    .iter()
                    .filter(|(s, _)| *s <= snapshot)
                    .max_by_key(|(s, _)| *s)?;
                Some(match value {
                    Some(v) => MemtableValue::Put(Bytes::copy_from_slice(v)),
                    None => MemtableValue::Deleted,
                })
            };
            for (user_key, snapshot) in &queries {
                prop_assert_eq!(memtable.get(user_key, seq(*snapshot)), expect(user_key, *snapshot));
            }
            for (user_key, versions) in &model {
                for (s, _) in versions {
                    prop_assert_eq!(memtable.get(user_key, seq(*s)), expect(user_key, *s));
                    prop_assert_eq!(memtable.get(user_key, seq(*s - 1)), expect(user_key, *s - 1));
                }
                prop_assert_eq!(memtable.get(user_key, SeqNo::MAX), expect(user_key, SeqNo::MAX.get()));
            }

            // iter() is the model flattened: user key ascending, newest first.
            let mut flat: Vec<(Vec<u8>, u64)> = model
                .iter()
                .flat_map(|(k, versions)| versions.iter().map(move |(s, _)| (k.clone(), *s)))
                .collect();
            flat.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let iterated: Vec<(Vec<u8>, u64)> = memtable.iter().map(|(k, _)| (k.user_key().to_vec(), k.seq().get())).collect();
            prop_assert_eq!(iterated, flat);
            prop_assert_eq!(memtable.len(), ops.len());
            prop_assert_eq!(memtable.max_seq().get(), ops.iter().map(|(s, _)| *s).max().unwrap_or(0));
        }
    }

    #[test]
    fn split_keys_cut_sequential_keys_into_parts_of_about_equal_size() {
        let memtable = Memtable::with_sample_interval(4096);
        for i in 0..20_000u32 {
            memtable.insert(
                format!("k{i:06}").as_bytes(),
                seq(u64::from(i) + 1),
                ValueKind::Put,
                Bytes::from_static(b"v"),
            );
        }
        let bounds = memtable.split_keys(8);
        assert_eq!(bounds.len(), 7, "{bounds:?}");
        let guard = crossbeam_epoch::pin();
        let starts = std::iter::once(None).chain(bounds.iter().map(|b| Some(b.as_slice())));
        let ends = bounds.iter().map(|b| Some(b.as_slice())).chain(std::iter::once(None));
        for (start, end) in starts.zip(ends) {
            let part = memtable.entries_between(start, end, &guard).count();
            // 2500 each if the samples were perfect quantiles.
            assert!((1500..=3500).contains(&part), "{part} entries in {start:?}..{end:?}");
        }
        assert!(Memtable::with_sample_interval(1 << 30).split_keys(8).is_empty(), "no samples, no cuts");
        let unsampled = Memtable::new();
        unsampled.insert(b"k", seq(1), ValueKind::Put, Bytes::from_static(b"v"));
        assert!(unsampled.samples.lock().unwrap().is_empty(), "Memtable::new samples nothing");
    }

    proptest! {
        #[test]
        fn parts_between_the_split_keys_hold_every_entry_once_in_order(
            ops in ops_strategy(),
            sample_every_bytes in 1usize..400,
            parts in 1usize..12,
        ) {
            let memtable = Memtable::with_sample_interval(sample_every_bytes);
            for (s, (user_key, value)) in &ops {
                let kind = if value.is_some() { ValueKind::Put } else { ValueKind::Delete };
                memtable.insert(user_key, seq(*s), kind, Bytes::copy_from_slice(value.as_deref().unwrap_or_default()));
            }
            let bounds = memtable.split_keys(parts);
            prop_assert!(bounds.len() < parts.max(1));
            prop_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "strictly ascending: {:?}", bounds);
            let guard = crossbeam_epoch::pin();
            let mut joined = Vec::new();
            for i in 0..=bounds.len() {
                let start = i.checked_sub(1).map(|j| bounds[j].as_slice());
                let end = bounds.get(i).map(Vec::as_slice);
                for entry in memtable.entries_between(start, end, &guard) {
                    let user_key = entry.key().user_key();
                    prop_assert!(start.is_none_or(|s| user_key >= s) && end.is_none_or(|e| user_key < e));
                    joined.push(entry.key().clone());
                }
            }
            let all: Vec<InternalKey> = memtable.iter().map(|(k, _)| k).collect();
            prop_assert_eq!(joined, all);
        }
    }
}
