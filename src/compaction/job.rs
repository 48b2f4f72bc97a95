//! Running one compaction: merge the inputs, drop what no reader can see,
//! write the outputs, and describe the change as a version edit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::picker::{CompactionOptions, Plan};
use crate::io::{DirectFile, Io};
use crate::iter::{LevelCursor, MergingIter, Source, TableCursor};
use crate::key::{ParsedInternalKey, SeqNo, ValueKind, encode_internal_key};
use crate::sst::block::BlockHandle;
use crate::sst::cache::BlockCache;
use crate::sst::table::{TableOptions, TableReader, TableWriter};
use crate::version::{FileMeta, Graveyard, LiveTable, NUM_LEVELS, TableFile, Version, VersionEdit, table_path};
use crate::{Error, Result};

/// What a job needs from the database.
pub(crate) struct JobContext<'a> {
    pub(crate) io: &'a Io,
    pub(crate) dir: &'a Path,
    pub(crate) table_options: &'a TableOptions,
    pub(crate) options: &'a CompactionOptions,
    pub(crate) cache: Option<Arc<BlockCache>>,
    pub(crate) graveyard: Arc<Graveyard>,
    /// Entries older than the newest one at or below this are invisible to every reader.
    pub(crate) oldest_snapshot: SeqNo,
    /// Hands out a new file number.
    pub(crate) next_file_number: &'a (dyn Fn() -> u64 + Sync),
    /// True once the database is closing: the job stops (its outputs are
    /// removed, its inputs stay live) instead of holding up `close`.
    pub(crate) cancelled: &'a (dyn Fn() -> bool + Sync),
}

/// A finished job: the edit to log, the new tables, and its I/O.
pub(crate) struct Outcome {
    pub(crate) edit: VersionEdit,
    pub(crate) added: Vec<Arc<TableFile>>,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
    pub(crate) entries_dropped: u64,
}

pub(crate) async fn run(plan: &Plan, version: &Version, ctx: &JobContext<'_>) -> Result<Outcome> {
    let output_level = plan.output_level;
    let mut edit = VersionEdit::default();
    for table in &plan.inputs {
        edit.deleted_files.push((plan.level as u32, table.meta.file_number));
    }
    for table in &plan.next_inputs {
        edit.deleted_files.push((output_level as u32, table.meta.file_number));
    }
    if plan.is_trivial_move() {
        let table = &plan.inputs[0];
        let meta = FileMeta { level: output_level as u32, ..table.meta.clone() };
        edit.new_files.push(meta.clone());
        let moved = Arc::new(TableFile { meta, reader: Arc::clone(&table.reader) });
        return Ok(Outcome { edit, added: vec![moved], bytes_read: 0, bytes_written: 0, entries_dropped: 0 });
    }
    let bytes_read = plan.inputs.iter().chain(&plan.next_inputs).map(|t| t.meta.size_bytes).sum();
    let bounds = split_keys(plan, ctx.options);
    let ranges: Vec<KeyRange<'_>> = (0..=bounds.len())
        .map(|i| (i.checked_sub(1).map(|j| bounds[j].as_slice()), bounds.get(i).map(Vec::as_slice)))
        .collect();
    let outputs: Vec<RangeOutput> = if ranges.len() == 1 {
        vec![run_range(plan, version, ctx, None, None).await]
    } else {
        // One engine thread per key range; this (the compaction) thread waits.
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .enumerate()
                .map(|(i, &(start, end))| {
                    std::thread::Builder::new().name(format!("ringdb-subcompact-{i}")).spawn_scoped(scope, move || {
                        futures_executor::block_on(run_range(plan, version, ctx, start, end))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| match handle {
                    Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err(e) => RangeOutput {
                        added: Vec::new(),
                        written_paths: Vec::new(),
                        result: Err(Error::Io {
                            op: crate::IoOp::Setup,
                            path: ctx.dir.to_path_buf(),
                            offset: None,
                            source: e,
                        }),
                    },
                })
                .collect()
        })
    };
    if outputs.iter().any(|output| output.result.is_err()) {
        // Nothing of a failed compaction is recorded: remove every range's files.
        let mut first_error = None;
        for output in outputs {
            drop(output.added);
            for path in output.written_paths {
                let _ = ctx.io.remove_file(&path).await;
            }
            if let Err(e) = output.result {
                first_error.get_or_insert(e);
            }
        }
        return Err(first_error.expect("a range failed"));
    }
    let (mut added, mut entries_dropped) = (Vec::new(), 0);
    for output in outputs {
        entries_dropped += output.result.expect("no range failed");
        added.extend(output.added);
    }
    let bytes_written = added.iter().map(|t: &Arc<TableFile>| t.meta.size_bytes).sum();
    edit.new_files.extend(added.iter().map(|t| t.meta.clone()));
    Ok(Outcome { edit, added, bytes_read, bytes_written, entries_dropped })
}

/// User keys `[start, end)`, unbounded where `None`.
type KeyRange<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// What merging one key range produced: its tables, every file it created
/// (removed again if any range fails), and the entries it dropped.
struct RangeOutput {
    added: Vec<Arc<TableFile>>,
    written_paths: Vec<PathBuf>,
    result: Result<u64>,
}

/// Merges the user keys in `[start, end)` (unbounded where `None`) of the
/// plan's inputs into output tables.
async fn run_range(
    plan: &Plan,
    version: &Version,
    ctx: &JobContext<'_>,
    start: Option<&[u8]>,
    end: Option<&[u8]>,
) -> RangeOutput {
    // Every version of `start` sorts at or after this internal key.
    let seek_key = start.map(|user_key| encode_internal_key(user_key, SeqNo::MAX, ValueKind::MAX));
    let mut sources = Vec::new();
    if plan.level == 0 {
        for table in &plan.inputs {
            let fetch = match &seek_key {
                None => crate::iter::sequential(table),
                Some(key) => crate::iter::sequential_from(table, key),
            };
            sources.push(Source::Table(TableCursor::new(Arc::clone(table), fetch)));
        }
    }
    let level_fetch = if seek_key.is_none() { crate::iter::sequential } else { crate::iter::sequential_unprimed };
    if plan.level != 0 {
        sources.push(Source::Level(LevelCursor::new(plan.inputs.clone(), level_fetch)));
    }
    if !plan.next_inputs.is_empty() {
        sources.push(Source::Level(LevelCursor::new(plan.next_inputs.clone(), level_fetch)));
    }
    let mut merged = MergingIter::new(sources);
    let mut output = RangeOutput { added: Vec::new(), written_paths: Vec::new(), result: Ok(0) };
    let positioned = match &seek_key {
        None => merged.seek_to_first().await,
        Some(key) => merged.seek(key).await,
    };
    output.result = match positioned {
        Ok(()) => {
            merge_into_tables(
                &mut merged,
                version,
                plan.output_level,
                ctx,
                end,
                &mut output.added,
                &mut output.written_paths,
            )
            .await
        }
        Err(e) => Err(e),
    };
    output
}

/// User keys that cut the plan's inputs into at most `max_subcompactions`
/// ranges of about equal input bytes, each at least a quarter of
/// `sst_target_size_bytes`. The inputs' index entries (pinned in memory, one
/// per data block) are the samples: each stands for its block's bytes at
/// its separator's user key.
fn split_keys(plan: &Plan, options: &CompactionOptions) -> Vec<Vec<u8>> {
    let total_bytes: u64 = plan.inputs.iter().chain(&plan.next_inputs).map(|t| t.meta.size_bytes).sum();
    let min_range_bytes = (options.sst_target_size_bytes / 4).max(1);
    let ranges = (options.max_subcompactions as u64).min(total_bytes / min_range_bytes).max(1);
    if ranges == 1 {
        return Vec::new();
    }
    let mut samples: Vec<(Vec<u8>, u64)> = Vec::new();
    for table in plan.inputs.iter().chain(&plan.next_inputs) {
        let reader = &table.reader;
        let mut index = reader.index().iter();
        // A damaged index only costs the split: the merge reports it.
        while let Ok(Some((separator, handle))) = index.next_entry(reader.path(), 0) {
            let handle = BlockHandle::decode_from(&mut crate::coding::Reader::new(&handle));
            if let (Some(parsed), Some(handle)) = (ParsedInternalKey::parse(&separator), handle) {
                samples.push((parsed.user_key.to_vec(), handle.size));
            }
        }
    }
    samples.sort_unstable();
    let sampled_bytes: u64 = samples.iter().map(|(_, bytes)| bytes).sum();
    let mut bounds: Vec<Vec<u8>> = Vec::new();
    let mut cumulative = 0u64;
    let mut next_cut = 1;
    for (user_key, bytes) in samples {
        cumulative += bytes;
        if next_cut < ranges && cumulative * ranges >= sampled_bytes * next_cut {
            // A separator is >= every key of its block: the range ends after it.
            let mut bound = user_key;
            bound.push(0);
            if bounds.last().is_none_or(|last| *last < bound) {
                bounds.push(bound);
            }
            next_cut += 1;
        }
    }
    bounds
}

/// Whether no level below `output_level` can hold `user_key`: a tombstone
/// that reaches such a level has nothing left to hide.
fn is_base_level_for_key(version: &Version, output_level: usize, user_key: &[u8]) -> bool {
    (output_level + 1..NUM_LEVELS).all(|level| version.overlapping(level, user_key, user_key).is_empty())
}

/// Writes the merged stream into tables of about `sst_target_size_bytes`,
/// split only between user keys (so tables of a level never share one).
/// Returns the number of entries dropped.
async fn merge_into_tables(
    merged: &mut MergingIter,
    version: &Version,
    output_level: usize,
    ctx: &JobContext<'_>,
    end: Option<&[u8]>,
    added: &mut Vec<Arc<TableFile>>,
    written_paths: &mut Vec<PathBuf>,
) -> Result<u64> {
    // The user key being merged (reused: set once per user key, not allocated).
    let mut current_user_key: Vec<u8> = Vec::new();
    let mut have_user_key = false;
    // The sequence number of the previous entry of the current user key.
    let mut newer_seq = SeqNo::MAX;
    let mut dropped = 0u64;
    let past_end = |user_key: &[u8]| end.is_some_and(|end| user_key >= end);
    let mut done = false;
    while let Some((key, _)) = merged.current() {
        if done || ParsedInternalKey::parse(key).is_some_and(|parsed| past_end(parsed.user_key)) {
            break;
        }
        let number = (ctx.next_file_number)();
        let path = table_path(ctx.dir, number);
        written_paths.push(path.clone());
        let file = DirectFile::create(ctx.io, &path).await?;
        // See the flush: writes inside the file size run asynchronously. The
        // output ends at the first user key past the target, then the filter
        // and index follow: about 2% of the data at 100-byte values (1.1 MB
        // for 64 MiB), more for smaller ones, so a fixed 1 MiB margin let the
        // last writes extend the file. `finish` cuts what is not used.
        let target = ctx.options.sst_target_size_bytes;
        let reserve = (target + target / 16 + (1 << 20)).next_multiple_of(file.alignment() as u64);
        file.allocate(0, reserve).await?;
        let mut writer = TableWriter::new(&file, ctx.table_options.clone());
        let mut smallest_key: Option<Vec<u8>> = None;
        let mut largest_key = Vec::new();
        let (mut smallest_seq, mut largest_seq) = (SeqNo::MAX, SeqNo::ZERO);
        let mut entries = 0u64;
        while let Some((key, value)) = merged.current() {
            let parsed = ParsedInternalKey::parse(key).ok_or_else(|| Error::Corruption {
                file: path.clone(),
                offset: 0,
                reason: "compaction input holds a malformed internal key".into(),
            })?;
            if !have_user_key || current_user_key != parsed.user_key {
                if past_end(parsed.user_key) {
                    done = true;
                    break;
                }
                if entries > 0 && writer.estimated_size_bytes() >= ctx.options.sst_target_size_bytes {
                    break;
                }
                current_user_key.clear();
                current_user_key.extend_from_slice(parsed.user_key);
                have_user_key = true;
                newer_seq = SeqNo::MAX;
            }
            // A newer entry of this key that every reader sees hides this one;
            // a tombstone every reader sees, with nothing below, hides nothing.
            let hidden = newer_seq <= ctx.oldest_snapshot;
            let useless_tombstone = parsed.kind == ValueKind::Delete
                && parsed.seq <= ctx.oldest_snapshot
                && is_base_level_for_key(version, output_level, parsed.user_key);
            newer_seq = parsed.seq;
            if hidden || useless_tombstone {
                dropped += 1;
            } else {
                writer.add(key, value).await?;
                if smallest_key.is_none() {
                    smallest_key = Some(key.to_vec());
                }
                largest_key.clear();
                largest_key.extend_from_slice(key);
                smallest_seq = smallest_seq.min(parsed.seq);
                largest_seq = largest_seq.max(parsed.seq);
                entries += 1;
            }
            merged.advance().await?;
            if (entries + dropped).is_multiple_of(4096) && (ctx.cancelled)() {
                return Err(Error::Closed);
            }
        }
        let Some(smallest_key) = smallest_key else {
            // Everything in this stretch was dropped: no table.
            drop(writer);
            drop(file);
            ctx.io.remove_file(&path).await?;
            written_paths.pop();
            continue;
        };
        let info = writer.finish().await?;
        drop(file);
        let meta = FileMeta {
            level: output_level as u32,
            file_number: number,
            size_bytes: info.size_bytes,
            smallest_seq,
            largest_seq,
            smallest_key,
            largest_key,
        };
        let reader = TableReader::open(ctx.io, &path, number, ctx.cache.clone()).await?;
        added.push(Arc::new(TableFile { meta, reader: LiveTable::new(reader, Arc::clone(&ctx.graveyard)) }));
    }
    ctx.io.sync_dir(ctx.dir).await?;
    Ok(dropped)
}
