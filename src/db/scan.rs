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

    fn past_end(&self, user_key: &[u8]) -> bool {
        match &self.end {
            Bound::Included(end) => user_key > end.as_slice(),
            Bound::Excluded(end) => user_key >= end.as_slice(),
            Bound::Unbounded => false,
        }
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
            let Some((key, value)) = self.merged.current() else {
                self.done = true;
                return Ok(None);
            };
            let parsed = ParsedInternalKey::parse(key).ok_or_else(|| Error::Corruption {
                file: std::path::PathBuf::from("<scan>"),
                offset: 0,
                reason: "malformed internal key".into(),
            })?;
            let newer_than_snapshot = parsed.seq > self.snapshot;
            let older_version = self.last_user_key.as_deref() == Some(parsed.user_key);
            if newer_than_snapshot || older_version {
                self.merged.advance().await?;
                continue;
            }
            if self.past_end(parsed.user_key) {
                self.done = true;
                return Ok(None);
            }
            self.last_user_key = Some(parsed.user_key.to_vec());
            let excluded = matches!(&self.start, Bound::Excluded(start) if start.as_slice() == parsed.user_key);
            let item = (parsed.kind == ValueKind::Put && !excluded)
                .then(|| (Bytes::copy_from_slice(parsed.user_key), value.clone()));
            self.merged.advance().await?;
            if item.is_some() {
                return Ok(item);
            }
        }
    }
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
