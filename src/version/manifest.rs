//! The MANIFEST log and the CURRENT pointer (`docs/format/manifest.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::edit::{EDIT_FORMAT_VERSION, FileMeta, VersionEdit};
use crate::io::{DirectFile, Io};
use crate::key::SeqNo;
use crate::wal::{RecoveryMode, WalWriter, read_records};
use crate::{Error, Result};

pub(crate) const CURRENT_NAME: &str = "CURRENT";

pub(crate) fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// The file number of a `MANIFEST-NNNNNN` name.
pub(crate) fn parse_manifest_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("MANIFEST-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The state the edits of a MANIFEST add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ManifestState {
    /// Live tables by file number.
    pub(crate) files: BTreeMap<u64, FileMeta>,
    pub(crate) log_number: u64,
    pub(crate) next_file_number: u64,
    pub(crate) last_sequence: SeqNo,
}

impl ManifestState {
    /// Applies one edit; the error says why it does not fit the state.
    pub(crate) fn apply(&mut self, edit: &VersionEdit) -> std::result::Result<(), String> {
        for &(level, number) in &edit.deleted_files {
            match self.files.remove(&number) {
                Some(meta) if meta.level == level => {}
                _ => return Err(format!("deletes table {number} at level {level}, which is not live there")),
            }
        }
        for meta in &edit.new_files {
            if self.files.insert(meta.file_number, meta.clone()).is_some() {
                return Err(format!("adds table {} twice", meta.file_number));
            }
        }
        if let Some(number) = edit.log_number {
            self.log_number = self.log_number.max(number);
        }
        if let Some(number) = edit.next_file_number {
            self.next_file_number = self.next_file_number.max(number);
        }
        if let Some(seq) = edit.last_sequence {
            self.last_sequence = self.last_sequence.max(seq);
        }
        Ok(())
    }

    /// The edit that recreates this state from nothing: a new MANIFEST's first record.
    pub(crate) fn snapshot_edit(&self) -> VersionEdit {
        VersionEdit {
            format_version: Some(EDIT_FORMAT_VERSION),
            log_number: Some(self.log_number),
            next_file_number: Some(self.next_file_number),
            last_sequence: Some(self.last_sequence),
            new_files: self.files.values().cloned().collect(),
            deleted_files: Vec::new(),
        }
    }
}

/// The MANIFEST number `CURRENT` names, or `None` if there is no `CURRENT`.
pub(crate) async fn read_current(io: &Io, dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(CURRENT_NAME);
    if !path.exists() {
        return Ok(None);
    }
    let file = DirectFile::open_read_only(io, &path).await?;
    let len = file.len()?;
    let corrupt = |reason: String| Error::Corruption { file: path.clone(), offset: 0, reason };
    if len == 0 || len > 256 {
        return Err(corrupt(format!("{len} bytes: not a MANIFEST name")));
    }
    let span = (len as usize).next_multiple_of(file.alignment());
    let buf = file.read_at(file.alloc_buf(span), 0, span).await?;
    let bytes = buf.get(..len as usize).ok_or_else(|| corrupt("shorter than its length".into()))?;
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))?;
    let name = text.strip_suffix('\n').ok_or_else(|| corrupt("no trailing newline".into()))?;
    parse_manifest_name(name).map(Some).ok_or_else(|| corrupt(format!("{name:?} is not a MANIFEST name")))
}

/// Points `CURRENT` at MANIFEST `number`: a temporary file, synced, renamed over it.
async fn write_current(io: &Io, dir: &Path, number: u64) -> Result<()> {
    let text = format!("{}\n", manifest_name(number));
    let temp = dir.join("CURRENT.tmp");
    let file = DirectFile::create(io, &temp).await?;
    let mut buf = file.alloc_buf(text.len().next_multiple_of(file.alignment()));
    buf.extend_from_slice(text.as_bytes());
    buf.pad_to_alignment();
    file.write_at(buf, 0).await?;
    file.set_len(text.len() as u64).await?;
    file.sync_data().await?;
    drop(file);
    io.rename(&temp, dir.join(CURRENT_NAME)).await
}

/// Replays MANIFEST `number` of `dir`.
pub(crate) async fn load(io: &Io, dir: &Path, number: u64) -> Result<ManifestState> {
    let path = dir.join(manifest_name(number));
    // The container's checksums decide where the log ends; an edit that passes
    // them and still does not decode was written by a newer build or is a bug:
    // never a torn tail to drop silently.
    let contents = read_records(io, &path, number, RecoveryMode::KeepAllOrFail, |_| Ok(())).await?;
    let mut state = ManifestState::default();
    for (payload, range) in contents.payloads().zip(&contents.groups) {
        let offset = (range.start - crate::wal::RECORD_HEADER_BYTES) as u64;
        let corrupt = |reason: String| Error::Corruption { file: path.clone(), offset, reason };
        let edit = VersionEdit::decode(payload).map_err(corrupt)?;
        state.apply(&edit).map_err(corrupt)?;
    }
    if contents.groups.is_empty() {
        return Err(Error::Corruption { file: path, offset: 0, reason: "the MANIFEST holds no edit".into() });
    }
    Ok(state)
}

/// Appends edits to the MANIFEST in use.
pub(crate) struct ManifestWriter {
    log: WalWriter,
    path: PathBuf,
    number: u64,
}

impl ManifestWriter {
    /// Starts MANIFEST `number` holding `state`, makes `CURRENT` point at it,
    /// and removes the MANIFEST it replaces (`previous`).
    pub(crate) async fn create(
        io: &Io,
        dir: &Path,
        number: u64,
        state: &ManifestState,
        previous: Option<u64>,
    ) -> Result<ManifestWriter> {
        let path = dir.join(manifest_name(number));
        let mut log = WalWriter::create(io, &path, number, 0).await?;
        let mut payload = Vec::new();
        state.snapshot_edit().encode_to(&mut payload);
        log.append_group(&payload, true).await?;
        write_current(io, dir, number).await?;
        // From here the switch has happened; a MANIFEST left behind is
        // deleted by the next open, so failing to remove it fails nothing.
        if let Some(old) = previous.filter(|old| *old != number)
            && let Err(e) = io.remove_file(dir.join(manifest_name(old))).await
        {
            tracing::warn!(error = %e, "could not delete the MANIFEST that was replaced; the next open will");
        }
        Ok(ManifestWriter { log, path, number })
    }

    /// Appends `edit` durably (one write linked to an fdatasync).
    pub(crate) async fn append(&mut self, edit: &VersionEdit) -> Result<()> {
        let mut payload = Vec::new();
        edit.encode_to(&mut payload);
        self.log.append_group(&payload, true).await
    }

    /// Bytes of the MANIFEST so far.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// The MANIFEST's file number.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// The MANIFEST's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoOptions;
    use crate::key::{ValueKind, encode_internal_key};

    fn meta(number: u64) -> FileMeta {
        FileMeta {
            level: 0,
            file_number: number,
            size_bytes: 1000 + number,
            smallest_seq: SeqNo(number),
            largest_seq: SeqNo(number + 10),
            smallest_key: encode_internal_key(b"a", SeqNo(number + 10), ValueKind::Put),
            largest_key: encode_internal_key(b"z", SeqNo(number), ValueKind::Delete),
        }
    }

    #[test]
    fn edits_survive_a_reopen_and_current_names_the_newest_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            assert_eq!(read_current(&io, dir.path()).await.unwrap(), None);
            let mut state = ManifestState { next_file_number: 3, ..ManifestState::default() };
            let mut writer = ManifestWriter::create(&io, dir.path(), 2, &state, None).await.unwrap();
            for number in [5, 6] {
                let edit = VersionEdit {
                    new_files: vec![meta(number)],
                    log_number: Some(number + 2),
                    last_sequence: Some(SeqNo(number + 10)),
                    next_file_number: Some(number + 3),
                    ..VersionEdit::default()
                };
                writer.append(&edit).await.unwrap();
                state.apply(&edit).unwrap();
            }
            drop(writer);
            assert_eq!(read_current(&io, dir.path()).await.unwrap(), Some(2));
            let loaded = load(&io, dir.path(), 2).await.unwrap();
            assert_eq!(loaded, state);
            assert_eq!(loaded.log_number, 8);
            assert_eq!(loaded.files.len(), 2);

            // A new MANIFEST replaces the old one.
            ManifestWriter::create(&io, dir.path(), 9, &loaded, Some(2)).await.unwrap();
            assert_eq!(read_current(&io, dir.path()).await.unwrap(), Some(9));
            assert!(!dir.path().join(manifest_name(2)).exists());
            assert_eq!(load(&io, dir.path(), 9).await.unwrap(), state);
        });
    }

    #[test]
    fn inconsistent_edits_and_damaged_files_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            let state = ManifestState::default();
            let mut writer = ManifestWriter::create(&io, dir.path(), 1, &state, None).await.unwrap();
            writer.append(&VersionEdit { deleted_files: vec![(0, 42)], ..VersionEdit::default() }).await.unwrap();
            drop(writer);
            match load(&io, dir.path(), 1).await {
                Err(Error::Corruption { offset, reason, .. }) => {
                    assert_eq!(offset, 8192, "the second record");
                    assert!(reason.contains("42"), "{reason}");
                }
                other => panic!("expected corruption, got {other:?}"),
            }
            for garbage in [&b""[..], b"MANIFEST-\n", b"MANIFEST-12", b"xyz\n", &[0xff; 300]] {
                std::fs::write(dir.path().join(CURRENT_NAME), garbage).unwrap();
                assert!(matches!(read_current(&io, dir.path()).await, Err(Error::Corruption { .. })), "{garbage:?}");
            }
            // A MANIFEST cut inside its first record has no edit at all.
            let path = dir.path().join(manifest_name(1));
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(4096 + 10).unwrap();
            assert!(matches!(load(&io, dir.path(), 1).await, Err(Error::Corruption { .. })));
        });
    }
}
