//! Range scans: a merging iterator over the memtables and tables of one
//! moment, filtered to what a snapshot sees (the newest version of each user
//! key at or below its sequence number, tombstones hidden).

use std::ops::Bound;

use bytes::Bytes;

use crate::iter::MergingIter;
use crate::key::{InternalKey, ParsedInternalKey, SeqNo, ValueKind};
use crate::{Error, Result};

pub(crate) struct Scan {
    merged: MergingIter,
    snapshot: SeqNo,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    /// The user key whose visible version was handled last: older versions of it are skipped.
    last_user_key: Option<Vec<u8>>,
    started: bool,
    pub(crate) done: bool,
}

impl Scan {
    pub(crate) fn new(merged: MergingIter, snapshot: SeqNo, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan {
        Scan { merged, snapshot, start, end, last_user_key: None, started: false, done: false }
    }

    /// The next visible (key, value), or `None` at the end of the range.
    pub(crate) async fn next(&mut self) -> Result<Option<(Bytes, Bytes)>> {
        if !self.started {
            self.started = true;
            match &self.start {
                Bound::Included(key) | Bound::Excluded(key) => {
                    let target = InternalKey::lookup(key, self.snapshot);
                    self.merged.seek(target.encoded()).await?;
                }
                Bound::Unbounded => self.merged.seek_to_first().await?,
            }
        }
        loop {
            let Some((key, _)) = self.merged.current() else {
                self.done = true;
                return Ok(None);
            };
            let parsed = parse(key)?;
            let newer_than_snapshot = parsed.seq > self.snapshot;
            let older_version = self.last_user_key.as_deref() == Some(parsed.user_key);
            if newer_than_snapshot || older_version {
                self.merged.advance().await?;
                continue;
            }
            if past_end(&self.end, parsed.user_key) {
                self.done = true;
                return Ok(None);
            }
            self.last_user_key = Some(parsed.user_key.to_vec());
            let excluded = matches!(&self.start, Bound::Excluded(start) if start.as_slice() == parsed.user_key);
            let item = (parsed.kind == ValueKind::Put && !excluded).then(|| {
                let value = self.merged.current_value().expect("the merge is at this entry");
                (Bytes::copy_from_slice(parsed.user_key), value)
            });
            self.merged.advance().await?;
            if item.is_some() {
                return Ok(item);
            }
        }
    }
}

/// The newest entry of a user key visible at the snapshot: its kind and value.
type Visible = (ValueKind, Bytes);

/// A backwards scan: user keys from the end of the range down. Moving back,
/// the versions of a user key come oldest first, so the newest one visible at
/// the snapshot is the last one seen before the user key changes (LevelDB's
/// `DBIter::Prev`).
pub(crate) struct RevScan {
    merged: MergingIter,
    snapshot: SeqNo,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    started: bool,
    pub(crate) done: bool,
}

impl RevScan {
    pub(crate) fn new(merged: MergingIter, snapshot: SeqNo, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> RevScan {
        RevScan { merged, snapshot, start, end, started: false, done: false }
    }

    fn before_start(&self, user_key: &[u8]) -> bool {
        match &self.start {
            Bound::Included(start) => user_key < start.as_slice(),
            Bound::Excluded(start) => user_key <= start.as_slice(),
            Bound::Unbounded => false,
        }
    }

    pub(crate) async fn next(&mut self) -> Result<Option<(Bytes, Bytes)>> {
        if !self.started {
            self.started = true;
            match &self.end {
                // The largest internal key of `end` is its entry with sequence 0.
                Bound::Included(end) | Bound::Excluded(end) => {
                    let target = InternalKey::new(end, SeqNo::ZERO, ValueKind::Delete);
                    self.merged.seek(target.encoded()).await?;
                }
                Bound::Unbounded => self.merged.seek_to_first().await?,
            }
        }
        // The user key being gathered and its newest visible entry so far.
        let mut gathering: Option<(Vec<u8>, Option<Visible>)> = None;
        loop {
            let entry = match self.merged.current() {
                Some((key, _)) => {
                    let parsed = parse(key)?;
                    let value = self.merged.current_value().expect("the merge is at this entry");
                    Some((parsed.user_key.to_vec(), parsed.seq, parsed.kind, value))
                }
                None => None,
            };
            let key_changed = match (&gathering, &entry) {
                (Some((user_key, _)), Some((next, ..))) => user_key != next,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if key_changed {
                let (user_key, newest) = gathering.take().expect("checked");
                if let Some((ValueKind::Put, value)) = newest {
                    return Ok(Some((Bytes::from(user_key), value)));
                }
            }
            let Some((user_key, seq, kind, value)) = entry else {
                self.done = true;
                return Ok(None);
            };
            if self.before_start(&user_key) {
                self.done = true;
                return Ok(None);
            }
            self.merged.advance().await?;
            if past_end(&self.end, &user_key) {
                continue;
            }
            let slot = gathering.get_or_insert_with(|| (user_key, None));
            if seq <= self.snapshot {
                // Later (newer) visible versions replace earlier ones.
                slot.1 = Some((kind, value));
            }
        }
    }
}

fn past_end(end: &Bound<Vec<u8>>, user_key: &[u8]) -> bool {
    match end {
        Bound::Included(end) => user_key > end.as_slice(),
        Bound::Excluded(end) => user_key >= end.as_slice(),
        Bound::Unbounded => false,
    }
}

/// Keys reach a scan from validated blocks and memtables; a key that still
/// does not parse is reported, not trusted.
fn parse(key: &[u8]) -> Result<ParsedInternalKey<'_>> {
    ParsedInternalKey::parse(key).ok_or_else(|| Error::Corruption {
        file: std::path::PathBuf::from("<scan>"),
        offset: 0,
        reason: "malformed internal key".into(),
    })
}

/// A scan in either direction.
pub(crate) enum AnyScan {
    Forward(Scan),
    Reverse(RevScan),
}

impl AnyScan {
    async fn next(&mut self) -> Result<Option<(Bytes, Bytes)>> {
        match self {
            AnyScan::Forward(scan) => scan.next().await,
            AnyScan::Reverse(scan) => scan.next().await,
        }
    }

    fn done(&self) -> bool {
        match self {
            AnyScan::Forward(scan) => scan.done,
            AnyScan::Reverse(scan) => scan.done,
        }
    }

    fn finish(&mut self) {
        match self {
            AnyScan::Forward(scan) => scan.done = true,
            AnyScan::Reverse(scan) => scan.done = true,
        }
    }
}

/// The scan as a stream; it ends after the range or after its first error.
pub(crate) fn into_stream(scan: AnyScan) -> impl futures_util::Stream<Item = Result<(Bytes, Bytes)>> + Send + 'static {
    futures_util::stream::unfold(scan, |mut scan| async move {
        if scan.done() {
            return None;
        }
        match scan.next().await {
            Ok(Some(entry)) => Some((Ok(entry), scan)),
            Ok(None) => None,
            Err(e) => {
                scan.finish();
                Some((Err(e), scan))
            }
        }
    })
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
