//! Version edits: the MANIFEST's record payload (`docs/format/manifest.md`).

use crate::coding::{Reader, put_varint};
use crate::key::{ParsedInternalKey, SeqNo};

/// The edit encoding this build writes.
pub(crate) const EDIT_FORMAT_VERSION: u64 = 1;

const TAG_FORMAT_VERSION: u64 = 1;
const TAG_LOG_NUMBER: u64 = 2;
const TAG_NEXT_FILE_NUMBER: u64 = 3;
const TAG_LAST_SEQUENCE: u64 = 4;
const TAG_NEW_FILE: u64 = 5;
const TAG_DELETED_FILE: u64 = 6;
/// Tags from here on may be skipped by a reader that does not know them.
const FIRST_IGNORABLE_TAG: u64 = 64;

/// What the MANIFEST knows about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMeta {
    pub(crate) level: u32,
    pub(crate) file_number: u64,
    pub(crate) size_bytes: u64,
    pub(crate) smallest_seq: SeqNo,
    pub(crate) largest_seq: SeqNo,
    /// Encoded internal keys.
    pub(crate) smallest_key: Vec<u8>,
    pub(crate) largest_key: Vec<u8>,
}

impl FileMeta {
    /// The smallest user key in the table.
    pub(crate) fn smallest_user_key(&self) -> &[u8] {
        ParsedInternalKey::parse(&self.smallest_key).expect("validated when decoded or built").user_key
    }

    /// The largest user key in the table.
    pub(crate) fn largest_user_key(&self) -> &[u8] {
        ParsedInternalKey::parse(&self.largest_key).expect("validated when decoded or built").user_key
    }
}

/// A change to the set of live files and counters; `None` fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionEdit {
    pub(crate) format_version: Option<u64>,
    pub(crate) log_number: Option<u64>,
    pub(crate) next_file_number: Option<u64>,
    pub(crate) last_sequence: Option<SeqNo>,
    pub(crate) new_files: Vec<FileMeta>,
    /// (level, file number).
    pub(crate) deleted_files: Vec<(u32, u64)>,
}

impl VersionEdit {
    /// Appends the encoded edit to `out`.
    pub(crate) fn encode_to(&self, out: &mut Vec<u8>) {
        let mut field = |tag: u64, body: &[u8]| {
            put_varint(out, tag);
            put_varint(out, body.len() as u64);
            out.extend_from_slice(body);
        };
        let varint = |value: u64| {
            let mut body = Vec::with_capacity(10);
            put_varint(&mut body, value);
            body
        };
        if let Some(version) = self.format_version {
            field(TAG_FORMAT_VERSION, &varint(version));
        }
        for file in &self.new_files {
            let mut body = Vec::with_capacity(32 + file.smallest_key.len() + file.largest_key.len());
            put_varint(&mut body, u64::from(file.level));
            put_varint(&mut body, file.file_number);
            put_varint(&mut body, file.size_bytes);
            put_varint(&mut body, file.smallest_seq.get());
            put_varint(&mut body, file.largest_seq.get());
            put_varint(&mut body, file.smallest_key.len() as u64);
            body.extend_from_slice(&file.smallest_key);
            put_varint(&mut body, file.largest_key.len() as u64);
            body.extend_from_slice(&file.largest_key);
            field(TAG_NEW_FILE, &body);
        }
        for &(level, number) in &self.deleted_files {
            let mut body = varint(u64::from(level));
            put_varint(&mut body, number);
            field(TAG_DELETED_FILE, &body);
        }
        if let Some(number) = self.log_number {
            field(TAG_LOG_NUMBER, &varint(number));
        }
        if let Some(seq) = self.last_sequence {
            field(TAG_LAST_SEQUENCE, &varint(seq.get()));
        }
        if let Some(number) = self.next_file_number {
            field(TAG_NEXT_FILE_NUMBER, &varint(number));
        }
    }

    /// Decodes one edit. Never panics; the error says what is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Result<VersionEdit, String> {
        let mut edit = VersionEdit::default();
        let mut reader = Reader::new(bytes);
        while reader.remaining() > 0 {
            let at = reader.position();
            let tag = reader.varint().ok_or_else(|| format!("truncated tag at byte {at}"))?;
            let body = reader.length_prefixed().ok_or_else(|| format!("field {tag} at byte {at} is truncated"))?;
            let mut body = Reader::new(body);
            let bad = |what: &str| format!("malformed {what} (tag {tag}) at byte {at}");
            match tag {
                TAG_FORMAT_VERSION => {
                    let version = body.varint().ok_or_else(|| bad("format version"))?;
                    if version != EDIT_FORMAT_VERSION {
                        return Err(format!("MANIFEST edit format version {version}; this build reads version 1"));
                    }
                    edit.format_version = Some(version);
                }
                TAG_LOG_NUMBER => {
                    edit.log_number = Some(decode_file_number(&mut body).ok_or_else(|| bad("log number"))?)
                }
                TAG_NEXT_FILE_NUMBER => {
                    edit.next_file_number = Some(decode_file_number(&mut body).ok_or_else(|| bad("next file number"))?)
                }
                TAG_LAST_SEQUENCE => {
                    let seq = body.varint().and_then(SeqNo::new).ok_or_else(|| bad("last sequence"))?;
                    edit.last_sequence = Some(seq);
                }
                TAG_NEW_FILE => edit.new_files.push(decode_new_file(&mut body).ok_or_else(|| bad("new file"))?),
                TAG_DELETED_FILE => {
                    let level = decode_level(&mut body).ok_or_else(|| bad("deleted file"))?;
                    let number = decode_file_number(&mut body).ok_or_else(|| bad("deleted file"))?;
                    edit.deleted_files.push((level, number));
                }
                0 => return Err(format!("tag 0 at byte {at}")),
                tag if tag < FIRST_IGNORABLE_TAG => {
                    return Err(format!("unknown tag {tag} at byte {at}: written by a newer ringdb that needs it"));
                }
                _ => continue,
            }
            if body.remaining() != 0 {
                return Err(format!("{} unread bytes in field {tag} at byte {at}", body.remaining()));
            }
        }
        Ok(edit)
    }
}

/// File numbers (and log numbers, which share their counter) stay below
/// this: 2^48 is thousands of years of files at one a millisecond, and the
/// headroom above it keeps the counter's `+ 1`s from overflowing when a
/// damaged MANIFEST holds a number near `u64::MAX`.
pub(crate) const MAX_FILE_NUMBER: u64 = 1 << 48;

/// A file number, which must be below [`MAX_FILE_NUMBER`].
fn decode_file_number(body: &mut Reader<'_>) -> Option<u64> {
    body.varint().filter(|number| *number < MAX_FILE_NUMBER)
}

/// A level number, which must name one of the tree's levels.
fn decode_level(body: &mut Reader<'_>) -> Option<u32> {
    body.varint().filter(|level| *level < crate::version::NUM_LEVELS as u64).map(|level| level as u32)
}

fn decode_new_file(body: &mut Reader<'_>) -> Option<FileMeta> {
    let level = decode_level(body)?;
    let file_number = decode_file_number(body)?;
    let size_bytes = body.varint()?;
    let smallest_seq = SeqNo::new(body.varint()?)?;
    let largest_seq = SeqNo::new(body.varint()?)?;
    let smallest_key = body.length_prefixed()?.to_vec();
    let largest_key = body.length_prefixed()?.to_vec();
    ParsedInternalKey::parse(&smallest_key)?;
    ParsedInternalKey::parse(&largest_key)?;
    if smallest_seq > largest_seq {
        return None;
    }
    Some(FileMeta { level, file_number, size_bytes, smallest_seq, largest_seq, smallest_key, largest_key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ValueKind, encode_internal_key};
    use crate::version::NUM_LEVELS;
    use proptest::prelude::*;

    fn doc_example() -> VersionEdit {
        VersionEdit {
            log_number: Some(8),
            next_file_number: Some(9),
            last_sequence: Some(SeqNo(3)),
            new_files: vec![FileMeta {
                level: 0,
                file_number: 7,
                size_bytes: 16384,
                smallest_seq: SeqNo(1),
                largest_seq: SeqNo(3),
                smallest_key: encode_internal_key(b"a", SeqNo(3), ValueKind::Put),
                largest_key: encode_internal_key(b"c", SeqNo(1), ValueKind::Put),
            }],
            ..VersionEdit::default()
        }
    }

    #[test]
    fn the_worked_example_of_the_format_doc() {
        let mut out = Vec::new();
        doc_example().encode_to(&mut out);
        let expected: Vec<u8> = [
            &[0x05, 0x1b, 0x00, 0x07, 0x80, 0x80, 0x01, 0x01, 0x03][..],
            &[0x09, 0x61, 0x01, 0x03, 0, 0, 0, 0, 0, 0],
            &[0x09, 0x63, 0x01, 0x01, 0, 0, 0, 0, 0, 0],
            &[0x02, 0x01, 0x08, 0x04, 0x01, 0x03, 0x03, 0x01, 0x09],
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(out.len(), 38);
        assert_eq!(VersionEdit::decode(&out).unwrap(), doc_example());
    }

    #[test]
    fn levels_beyond_the_tree_do_not_decode() {
        for (level, decodes) in
            [(crate::version::NUM_LEVELS as u32 - 1, true), (crate::version::NUM_LEVELS as u32, false)]
        {
            let mut added = doc_example();
            added.new_files[0].level = level;
            let mut out = Vec::new();
            added.encode_to(&mut out);
            assert_eq!(VersionEdit::decode(&out).is_ok(), decodes, "new file at level {level}");
            let deleted = VersionEdit { deleted_files: vec![(level, 7)], ..VersionEdit::default() };
            let mut out = Vec::new();
            deleted.encode_to(&mut out);
            assert_eq!(VersionEdit::decode(&out).is_ok(), decodes, "deleted file at level {level}");
        }
    }

    #[test]
    fn unknown_tags_are_skipped_only_in_the_ignorable_range() {
        let mut out = Vec::new();
        doc_example().encode_to(&mut out);
        let mut ignorable = out.clone();
        ignorable.extend_from_slice(&[64, 3, 1, 2, 3]);
        assert_eq!(VersionEdit::decode(&ignorable).unwrap(), doc_example());
        let mut required = out.clone();
        required.extend_from_slice(&[63, 1, 0]);
        let err = VersionEdit::decode(&required).unwrap_err();
        assert!(err.contains("unknown tag 63"), "{err}");
        let mut zero = out;
        zero.extend_from_slice(&[0, 0]);
        assert!(VersionEdit::decode(&zero).is_err());
    }

    #[test]
    fn file_numbers_from_the_bound_up_are_refused_in_every_field() {
        let file = |file_number| FileMeta {
            level: 0,
            file_number,
            size_bytes: 1,
            smallest_seq: SeqNo(1),
            largest_seq: SeqNo(1),
            smallest_key: encode_internal_key(b"a", SeqNo(1), ValueKind::Put),
            largest_key: encode_internal_key(b"a", SeqNo(1), ValueKind::Put),
        };
        let edits = |n: u64| {
            [
                VersionEdit { log_number: Some(n), ..VersionEdit::default() },
                VersionEdit { next_file_number: Some(n), ..VersionEdit::default() },
                VersionEdit { new_files: vec![file(n)], ..VersionEdit::default() },
                VersionEdit { deleted_files: vec![(1, n)], ..VersionEdit::default() },
            ]
        };
        for edit in edits(MAX_FILE_NUMBER - 1) {
            let mut out = Vec::new();
            edit.encode_to(&mut out);
            assert_eq!(VersionEdit::decode(&out).unwrap(), edit);
        }
        for n in [MAX_FILE_NUMBER, u64::MAX] {
            for edit in edits(n) {
                let mut out = Vec::new();
                edit.encode_to(&mut out);
                assert!(VersionEdit::decode(&out).unwrap_err().contains("malformed"), "{edit:?}");
            }
        }
    }

    #[test]
    fn a_newer_format_version_is_refused() {
        let edit = VersionEdit { format_version: Some(2), ..VersionEdit::default() };
        let mut out = Vec::new();
        edit.encode_to(&mut out);
        assert!(VersionEdit::decode(&out).unwrap_err().contains("version 2"));
    }

    proptest! {
        #[test]
        fn round_trip(
            log in proptest::option::of(0..MAX_FILE_NUMBER),
            next in proptest::option::of(0..MAX_FILE_NUMBER),
            seq in proptest::option::of(0u64..(1 << 56)),
            files in proptest::collection::vec((0u32..NUM_LEVELS as u32, 0..MAX_FILE_NUMBER, any::<u64>(), 0u64..1000, proptest::collection::vec(any::<u8>(), 0..20)), 0..5),
            deleted in proptest::collection::vec((0u32..NUM_LEVELS as u32, 0..MAX_FILE_NUMBER), 0..5),
        ) {
            let edit = VersionEdit {
                format_version: Some(EDIT_FORMAT_VERSION),
                log_number: log,
                next_file_number: next,
                last_sequence: seq.map(SeqNo),
                new_files: files.into_iter().map(|(level, file_number, size_bytes, s, key)| FileMeta {
                    level, file_number, size_bytes,
                    smallest_seq: SeqNo(s), largest_seq: SeqNo(s + 5),
                    smallest_key: encode_internal_key(&key, SeqNo(s), ValueKind::Put),
                    largest_key: encode_internal_key(&key, SeqNo(s + 5), ValueKind::Delete),
                }).collect(),
                deleted_files: deleted,
            };
            let mut out = Vec::new();
            edit.encode_to(&mut out);
            prop_assert_eq!(VersionEdit::decode(&out).unwrap(), edit);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = VersionEdit::decode(&bytes);
        }

        #[test]
        fn truncations_decode_only_at_field_boundaries(len in 0usize..=38) {
            let mut out = Vec::new();
            doc_example().encode_to(&mut out);
            let at_boundary = [0, 29, 32, 35, 38].contains(&len);
            prop_assert_eq!(VersionEdit::decode(&out[..len]).is_ok(), at_boundary);
        }
    }
}
