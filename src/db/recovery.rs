//! Opening an existing directory: the MANIFEST, the live tables, orphan
//! files, and the replay of the logs the tables do not cover.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Options;
use super::log::log_path;
use bytes::Bytes;

use crate::batch::decode_batches;
use crate::io::Io;
use crate::key::SeqNo;
use crate::memtable::Memtable;
use crate::sst::cache::BlockCache;
use crate::sst::table::TableReader;
use crate::version::manifest::{self, CURRENT_NAME, parse_manifest_name};
use crate::version::{Graveyard, LiveTable, ManifestState, TableFile, Version, table_path};
use crate::wal::{RecoveryMode, read_log};
use crate::{Error, IoOp, Result};

pub(crate) struct Recovered {
    pub(crate) memtable: Memtable,
    pub(crate) last_seq: SeqNo,
    /// Logs replayed into `memtable`, still needed until it is flushed.
    pub(crate) log_numbers: Vec<u64>,
    /// Above every file number recorded or present in the directory.
    pub(crate) next_file_number: u64,
    pub(crate) manifest: ManifestState,
    /// The MANIFEST `CURRENT` named, if any.
    pub(crate) manifest_number: Option<u64>,
    /// A log that holds nothing to replay (flushed, or never written), kept
    /// to become the open's new log; every other such log was deleted.
    pub(crate) reusable_log: Option<PathBuf>,
    pub(crate) tables: Vec<Arc<TableFile>>,
}

/// What a directory entry is to the database.
enum FileKind {
    Log(u64),
    Table(u64),
    Manifest(u64),
    /// Left by an interrupted creation: never in use.
    Temporary,
    /// A log a tolerant recovery set aside (`set_aside`): kept for the user,
    /// its number never given to another file, which a later set-aside of
    /// that number would rename over it.
    DroppedLog(u64),
    Other,
}

fn classify(name: &str) -> FileKind {
    let number = |digits: &str| digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten();
    if name.ends_with(".tmp") {
        return FileKind::Temporary;
    }
    if let Some(n) = name.strip_suffix(".wal").and_then(number) {
        return FileKind::Log(n);
    }
    if let Some(n) = name.strip_suffix(".wal.dropped").and_then(number) {
        return FileKind::DroppedLog(n);
    }
    if let Some(n) = name.strip_suffix(".sst").and_then(number) {
        return FileKind::Table(n);
    }
    if let Some(n) = parse_manifest_name(name) {
        return FileKind::Manifest(n);
    }
    FileKind::Other
}

/// Reads the MANIFEST, opens the live tables, deletes what no state refers
/// to, and replays the logs at or above the MANIFEST's log number.
pub(crate) async fn recover(
    io: &Io,
    dir: &Path,
    options: &Options,
    cache: Option<Arc<BlockCache>>,
    graveyard: &Arc<Graveyard>,
) -> Result<Recovered> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io { op: IoOp::Open, path: dir.to_path_buf(), offset: None, source })?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let kinds: Vec<(String, FileKind)> = names.into_iter().map(|name| (name.clone(), classify(&name))).collect();
    let manifest_number = manifest::read_current(io, dir).await?;
    let state = match manifest_number {
        Some(number) => manifest::load(io, dir, number).await?,
        None => {
            if kinds.iter().any(|(_, kind)| matches!(kind, FileKind::Table(_))) {
                return Err(Error::Corruption {
                    file: dir.join(CURRENT_NAME),
                    offset: 0,
                    reason: "missing, but the directory holds tables: which of them are live is unknown".into(),
                });
            }
            ManifestState::default()
        }
    };

    let mut tables = Vec::with_capacity(state.files.len());
    for meta in state.files.values() {
        let path = table_path(dir, meta.file_number);
        // Checked before the table is read: its footer's handles are bounded
        // by the file's size, and its buffers by them, so a damaged table
        // (a sparse file of a terabyte, say) cannot ask for more than the
        // size the MANIFEST recorded when the table was whole.
        let size_bytes = std::fs::metadata(&path)
            .map_err(|source| Error::Io { op: IoOp::Open, path: path.clone(), offset: None, source })?
            .len();
        if size_bytes != meta.size_bytes {
            return Err(Error::Corruption {
                file: path,
                offset: 0,
                reason: format!("{size_bytes} bytes, the MANIFEST says {}", meta.size_bytes),
            });
        }
        let reader = TableReader::open(io, &path, meta.file_number, cache.clone()).await?;
        tables.push(Arc::new(TableFile { meta: meta.clone(), reader: LiveTable::new(reader, Arc::clone(graveyard)) }));
    }
    // Checksums passed, yet the tables may not form a tree (overlapping
    // tables in a deeper level): reads would then miss keys, and the first
    // flush or compaction would trip over it. Refused here instead.
    if let Err(reason) = Version::new(tables.clone()).check() {
        let file = manifest_number.map_or_else(|| dir.join(CURRENT_NAME), |n| dir.join(manifest::manifest_name(n)));
        return Err(Error::Corruption {
            file,
            offset: 0,
            reason: format!("the live tables do not form a tree: {reason}"),
        });
    }

    let mut highest_number = state.next_file_number.saturating_sub(1);
    let mut logs = Vec::new();
    // Logs below the MANIFEST's log number: flushed and recorded.
    let mut flushed_logs = Vec::new();
    let live_tables: BTreeSet<u64> = state.files.keys().copied().collect();
    for (name, kind) in &kinds {
        let obsolete = match *kind {
            FileKind::Temporary => true,
            FileKind::Log(n) => {
                highest_number = highest_number.max(n);
                if n < state.log_number {
                    flushed_logs.push(n)
                } else {
                    logs.push(n)
                }
                // Deleted below, all but one that is reused.
                false
            }
            // A table the MANIFEST never recorded: its flush did not finish.
            FileKind::Table(n) => {
                highest_number = highest_number.max(n);
                !live_tables.contains(&n)
            }
            FileKind::Manifest(n) => {
                highest_number = highest_number.max(n);
                Some(n) != manifest_number
            }
            FileKind::DroppedLog(n) => {
                highest_number = highest_number.max(n);
                false
            }
            FileKind::Other => false,
        };
        if obsolete {
            tracing::info!(file = %name, "deleting a file no live state refers to");
            io.remove_file(dir.join(name)).await?;
        }
    }
    logs.sort_unstable();

    // The replayed memtable is flushed like any other, in parts if so configured.
    let memtable = Memtable::with_sample_interval(options.memtable_sample_bytes());
    let (last_seq, kept, empty_logs) = replay_logs(io, dir, options, &logs, state.last_sequence, &memtable).await?;
    // One log with nothing to replay becomes the new log (`Db::open`): its
    // blocks are written, so the open writes no zeroes for a new one (64 MiB
    // by default, which the disk digested under the first reads after a
    // reopen: 32 concurrent cold gets ran at two thirds of their later rate).
    let mut reusable = flushed_logs;
    reusable.extend(empty_logs);
    reusable.sort_unstable();
    let reusable_log = reusable.pop().map(|n| log_path(dir, n));
    for n in reusable {
        tracing::info!(log = n, "deleting a write-ahead log that holds nothing to replay");
        io.remove_file(log_path(dir, n)).await?;
    }
    io.sync_dir(dir).await?;
    Ok(Recovered {
        memtable,
        last_seq,
        log_numbers: kept,
        next_file_number: highest_number + 1,
        manifest: state,
        manifest_number,
        reusable_log,
        tables,
    })
}

/// Keeps a log that recovery chose not to replay, under a name that is never read again.
async fn set_aside(io: &Io, path: &Path) -> Result<()> {
    let mut dropped = path.as_os_str().to_owned();
    dropped.push(".dropped");
    io.rename(path, PathBuf::from(dropped)).await
}

/// Replays `logs` (ascending) into `memtable`, continuing after `flushed_seq`.
/// Returns the last sequence number, the logs kept (those holding writes)
/// and the logs that hold nothing (left in place, for reuse or deletion).
async fn replay_logs(
    io: &Io,
    dir: &Path,
    options: &Options,
    logs: &[u64],
    flushed_seq: SeqNo,
    memtable: &Memtable,
) -> Result<(SeqNo, Vec<u64>, Vec<u64>)> {
    let mut last_seq = flushed_seq;
    let mut kept = Vec::new();
    let mut empty = Vec::new();
    // Set once the tolerant mode dropped something: later logs continue after
    // the dropped writes, so replaying them would leave a gap.
    let mut stop_replay = false;
    for &log_number in logs {
        let path = log_path(dir, log_number);
        if stop_replay {
            set_aside(io, &path).await?;
            continue;
        }
        let contents = read_log(io, &path, log_number, options.recovery_mode).await?;
        if let Some(at) = contents.torn_tail_at {
            tracing::info!(log = %path.display(), offset = at, "dropped the torn tail of a write-ahead log (a group whose write did not complete)");
        }
        if let Some((at, reason)) = &contents.dropped_at {
            tracing::warn!(log = %path.display(), offset = at, %reason, "recovery mode dropped damaged log contents and every later log");
            stop_replay = true;
        }
        let mut expected = last_seq.checked_next();
        let mut replayed_groups = 0usize;
        // Where a group that does not continue the sequence starts.
        let mut gap_at = None;
        for (payload, range) in contents.payloads().zip(&contents.groups) {
            let record_offset = (range.start - crate::wal::RECORD_HEADER_BYTES) as u64;
            // `read_log` already decoded every group and checked the sequence
            // within the log, so only a log's first batch can fail here (a gap
            // after the previous log), before anything is inserted: a group is
            // never half in the memtable.
            let replayed = decode_batches(payload, expected, |entry| {
                memtable.insert(entry.key, entry.seq, entry.kind, Bytes::copy_from_slice(entry.value));
            });
            match replayed {
                Ok(last) => {
                    last_seq = last;
                    expected = last.checked_next();
                    replayed_groups += 1;
                }
                // A gap between logs: writes are missing in between.
                Err(reason) if options.recovery_mode == RecoveryMode::KeepPrefixDropRest => {
                    tracing::warn!(log = %path.display(), offset = record_offset, %reason, "recovery mode dropped a log that does not continue the previous one, and every later log");
                    stop_replay = true;
                    gap_at = Some(record_offset);
                    break;
                }
                Err(reason) => return Err(Error::Corruption { file: path.clone(), offset: record_offset, reason }),
            }
        }
        if contents.groups.is_empty() && contents.dropped_at.is_none() {
            // Nothing acknowledged lives here (at most a torn, unacknowledged
            // group, which carries this log's number, never a later one's):
            // the log can go, or be reused.
            empty.push(log_number);
        } else if stop_replay && replayed_groups == 0 {
            // Nothing of it was replayed. Kept, it would make the next open
            // find the same damage or gap and set aside every log written
            // after this open, acknowledged writes included.
            set_aside(io, &path).await?;
        } else {
            let file = crate::io::DirectFile::open(io, &path).await?;
            if let Some(at) = contents.torn_tail_at {
                // Cut the torn group off for good (this log is never appended to again).
                file.set_len(at).await?;
            }
            // Make a drop permanent (damage, or a gap after the replayed
            // groups), or the next open would find it again and set aside
            // the logs written after this one.
            let dropped_from = contents.dropped_at.as_ref().map(|(at, _)| *at).into_iter().chain(gap_at).min();
            if let Some(at) = dropped_from {
                file.set_len(at).await?;
            }
            // Written (not synced) groups of an earlier run may still sit in the
            // device cache: make them durable before new synced writes can
            // depend on them.
            file.sync_data().await?;
            kept.push(log_number);
        }
    }
    Ok((last_seq, kept, empty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoOptions;
    use crate::key::{ValueKind, encode_internal_key};
    use crate::sst::table::{TableOptions, TableWriter};
    use crate::version::ManifestWriter;
    use crate::version::edit::{FileMeta, VersionEdit};

    /// Writes table `number` holding `keys` (puts at `seq`) and returns its metadata at `level`.
    async fn table(io: &Io, dir: &Path, number: u64, level: u32, keys: &[&str], seq: u64) -> FileMeta {
        let file = crate::io::DirectFile::create(io, &table_path(dir, number)).await.unwrap();
        let mut writer = TableWriter::new(&file, TableOptions::default());
        for key in keys {
            writer.add(&encode_internal_key(key.as_bytes(), SeqNo(seq), ValueKind::Put), b"v").await.unwrap();
        }
        let size_bytes = writer.finish().await.unwrap().size_bytes;
        FileMeta {
            level,
            file_number: number,
            size_bytes,
            smallest_seq: SeqNo(seq),
            largest_seq: SeqNo(seq),
            smallest_key: encode_internal_key(keys[0].as_bytes(), SeqNo(seq), ValueKind::Put),
            largest_key: encode_internal_key(keys[keys.len() - 1].as_bytes(), SeqNo(seq), ValueKind::Put),
        }
    }

    /// A MANIFEST (number 3, logs from 3 on, next file number 4) that
    /// records `files`, as a flush of sequence numbers up to `last_seq` left it.
    async fn manifest_of(io: &Io, dir: &Path, files: Vec<FileMeta>, last_seq: u64) {
        let edit = VersionEdit {
            new_files: files,
            log_number: Some(3),
            next_file_number: Some(4),
            last_sequence: Some(SeqNo(last_seq)),
            ..VersionEdit::default()
        };
        let mut state = ManifestState::default();
        state.apply(&edit).unwrap();
        ManifestWriter::create(io, dir, 3, &state, None).await.unwrap();
    }

    async fn recover_with_defaults(io: &Io, dir: &Path) -> Result<Recovered> {
        recover(io, dir, &Options::default(), None, &Arc::new(Graveyard::default())).await
    }

    #[test]
    fn the_number_of_a_log_set_aside_is_never_given_out_again() {
        let io = Io::new(IoOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            manifest_of(&io, dir.path(), Vec::new(), 0).await;
            std::fs::write(dir.path().join("000009.wal.dropped"), b"damaged").unwrap();
            let recovered = recover_with_defaults(&io, dir.path()).await.unwrap();
            assert_eq!(recovered.next_file_number, 10);
            assert!(dir.path().join("000009.wal.dropped").exists(), "a log set aside stays");
        });
    }

    #[test]
    fn a_table_whose_size_is_not_the_recorded_one_is_corruption_before_it_is_read() {
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            // Cut short, and grown into a sparse gigabyte: the footer is not
            // where the MANIFEST's size puts it either way.
            for grown in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let meta = table(&io, dir.path(), 1, 0, &["a", "m"], 1).await;
                let recorded = meta.size_bytes;
                manifest_of(&io, dir.path(), vec![meta], 1).await;
                let path = table_path(dir.path(), 1);
                let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.set_len(if grown { recorded + (1 << 30) } else { recorded - 1 }).unwrap();
                match recover_with_defaults(&io, dir.path()).await {
                    Err(Error::Corruption { file, reason, .. }) => {
                        assert_eq!(file, path);
                        assert!(reason.contains(&format!("the MANIFEST says {recorded}")), "{reason}");
                    }
                    Err(e) => panic!("grown {grown}: {e}"),
                    Ok(_) => panic!("grown {grown}: a table of the wrong size was opened"),
                }
            }
        });
    }

    #[test]
    fn overlapping_tables_in_a_deeper_level_are_corruption_at_open() {
        let io = Io::new(IoOptions::default()).unwrap();
        futures::executor::block_on(async {
            for (second_level, overlapping) in [(1, true), (0, false)] {
                let dir = tempfile::tempdir().unwrap();
                let files = vec![
                    table(&io, dir.path(), 1, 1, &["a", "m"], 1).await,
                    table(&io, dir.path(), 2, second_level, &["g", "z"], 2).await,
                ];
                manifest_of(&io, dir.path(), files, 2).await;
                match recover_with_defaults(&io, dir.path()).await {
                    Err(Error::Corruption { file, reason, .. }) if overlapping => {
                        assert!(file.ends_with("MANIFEST-000003"), "{}", file.display());
                        assert!(reason.contains("overlap"), "{reason}");
                    }
                    Ok(recovered) if !overlapping => assert_eq!(recovered.tables.len(), 2),
                    Err(e) => panic!("level {second_level}: {e}"),
                    Ok(_) => panic!("overlapping level-1 tables were accepted"),
                }
            }
        });
    }

    /// A group whose second batch breaks the sequence is dropped whole: the
    /// log reader stops before it, so replay never inserts half of it.
    #[test]
    fn a_group_that_fails_part_way_inserts_none_of_its_batches() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(IoOptions::default()).unwrap();
        let batch = |key: &str, seq: u64, payload: &mut Vec<u8>| {
            let mut batch = crate::batch::WriteBatch::new();
            batch.put(key, "v");
            batch.encode_to(payload, SeqNo(seq));
        };
        futures::executor::block_on(async {
            let mut wal = crate::wal::WalWriter::create(&io, &log_path(dir.path(), 3), 3, 0).await.unwrap();
            let mut first = Vec::new();
            batch("one", 1, &mut first);
            wal.append_group(&first, true).await.unwrap();
            // Its first batch continues the sequence, its second does not.
            let mut second = Vec::new();
            batch("two", 2, &mut second);
            batch("ten", 10, &mut second);
            wal.append_group(&second, true).await.unwrap();
            drop(wal);
            let options = Options { recovery_mode: RecoveryMode::KeepPrefixDropRest, ..Options::default() };
            let memtable = Memtable::new();
            let (last_seq, kept, empty) =
                replay_logs(&io, dir.path(), &options, &[3], SeqNo::ZERO, &memtable).await.unwrap();
            assert_eq!(last_seq, SeqNo(1));
            assert_eq!(kept, vec![3]);
            assert!(empty.is_empty());
            assert!(memtable.get(b"one", SeqNo::MAX).is_some());
            assert_eq!(memtable.get(b"two", SeqNo::MAX), None, "nothing of the dropped group is in the memtable");
            assert_eq!(memtable.len(), 1);
        });
    }
}
