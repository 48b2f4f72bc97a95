//! Fault injection for tests: make chosen operations fail or come up short.
//!
//! The injector sits above both backends, in the code that turns a
//! [`DirectFile`](super::DirectFile) call into kernel requests, so a test sees
//! the same behaviour whichever backend runs. It is always compiled (a rule
//! check is one uncontended lock, and only when an injector was installed) so
//! that integration tests and later engine tests can use it through
//! [`IoOptions::faults`](super::IoOptions::faults).
//!
//! ```
//! use ringdb::IoOp;
//! use ringdb::io::{FaultAction, FaultInjector, FaultRule};
//! let faults = FaultInjector::new();
//! // The third write to any file whose path contains "wal" fails with ENOSPC, once.
//! faults.add(FaultRule::new(FaultAction::Error(libc::ENOSPC)).op(IoOp::Write).path_contains("wal").skip(2).times(1));
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::IoOp;

/// What happens to an operation a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The operation fails with this errno (e.g. `libc::EIO`, `libc::ENOSPC`)
    /// without reaching the kernel. On [`IoOp::Setup`] it makes io_uring setup
    /// fail; on [`IoOp::Open`] it fails the O_DIRECT open (`EINVAL` there
    /// exercises the buffered fallback).
    Error(i32),
    /// A read or write moves at most this many bytes (rounded down to the
    /// alignment, at least one alignment unit), as a kernel short transfer
    /// would; callers are expected to continue it.
    ShortTransfer {
        /// Upper bound on the bytes moved by the matched request.
        max_bytes: usize,
    },
    /// A write puts only its first `bytes` (rounded down to the alignment) on
    /// disk and then fails with `EIO`: a torn write.
    TornWrite {
        /// How many bytes land before the failure.
        bytes: usize,
    },
    /// The submitting thread sleeps this long, then the operation runs
    /// normally: a slow device as seen by whoever issued the operation (for
    /// tests of a slow flush; it blocks the thread, so use it only on
    /// operations of engine threads).
    DelayMs(u64),
}

impl FaultAction {
    fn applies_to(self, op: IoOp) -> bool {
        match self {
            FaultAction::Error(_) | FaultAction::DelayMs(_) => true,
            FaultAction::ShortTransfer { .. } => matches!(op, IoOp::Read | IoOp::Write),
            FaultAction::TornWrite { .. } => op == IoOp::Write,
        }
    }
}

/// One rule: which operations it matches and what it does to them.
///
/// A write linked to its fdatasync (`write_at_and_sync`) is checked as a
/// [`IoOp::Write`] and then as a [`IoOp::Sync`], so a rule without an `op`
/// filter sees it as two operations.
#[derive(Debug, Clone)]
pub struct FaultRule {
    op: Option<IoOp>,
    path_contains: Option<String>,
    skip: u64,
    times: Option<u64>,
    action: FaultAction,
    seen: u64,
    fired: u64,
}

impl FaultRule {
    /// A rule that applies `action` to every operation, until narrowed.
    #[must_use]
    pub fn new(action: FaultAction) -> FaultRule {
        FaultRule { op: None, path_contains: None, skip: 0, times: None, action, seen: 0, fired: 0 }
    }

    /// Match only this kind of operation.
    #[must_use]
    pub fn op(mut self, op: IoOp) -> FaultRule {
        self.op = Some(op);
        self
    }

    /// Match only files whose path contains `fragment`.
    #[must_use]
    pub fn path_contains(mut self, fragment: impl Into<String>) -> FaultRule {
        self.path_contains = Some(fragment.into());
        self
    }

    /// Let the first `count` matching operations through untouched.
    #[must_use]
    pub fn skip(mut self, count: u64) -> FaultRule {
        self.skip = count;
        self
    }

    /// Fire at most `count` times (default: every match after the skipped ones).
    #[must_use]
    pub fn times(mut self, count: u64) -> FaultRule {
        self.times = Some(count);
        self
    }

    fn matches(&self, op: IoOp, path: &Path) -> bool {
        self.op.is_none_or(|want| want == op)
            && self.path_contains.as_deref().is_none_or(|frag| path.to_string_lossy().contains(frag))
    }
}

/// A shared, thread-safe set of [`FaultRule`]s. Clones share the same rules.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    rules: Arc<Mutex<Vec<FaultRule>>>,
}

impl FaultInjector {
    /// An injector with no rules (injects nothing).
    pub fn new() -> FaultInjector {
        FaultInjector::default()
    }

    /// Adds a rule. Rules are tried in the order added; the first that fires wins.
    pub fn add(&self, rule: FaultRule) {
        self.lock().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many times rules have fired in total.
    pub fn fired(&self) -> u64 {
        self.lock().iter().map(|rule| rule.fired).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The action to apply to this operation, if a rule fires. A rule whose
    /// action cannot apply to `op` (a short transfer on a sync, a torn read)
    /// neither fires nor counts the operation toward `skip`.
    pub(crate) fn check(&self, op: IoOp, path: &Path) -> Option<FaultAction> {
        let mut rules = self.lock();
        for rule in rules.iter_mut() {
            if !rule.matches(op, path) || !rule.action.applies_to(op) {
                continue;
            }
            rule.seen += 1;
            if rule.seen <= rule.skip || rule.times.is_some_and(|max| rule.fired >= max) {
                continue;
            }
            rule.fired += 1;
            return Some(rule.action);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_times_op_and_path_filters() {
        let faults = FaultInjector::new();
        faults.add(FaultRule::new(FaultAction::Error(5)).op(IoOp::Write).path_contains("wal").skip(1).times(2));
        let wal = Path::new("/db/000001.wal");
        let sst = Path::new("/db/000002.sst");
        assert_eq!(faults.check(IoOp::Write, sst), None, "path filter");
        assert_eq!(faults.check(IoOp::Read, wal), None, "op filter");
        assert_eq!(faults.check(IoOp::Write, wal), None, "skipped");
        assert_eq!(faults.check(IoOp::Write, wal), Some(FaultAction::Error(5)));
        assert_eq!(faults.check(IoOp::Write, wal), Some(FaultAction::Error(5)));
        assert_eq!(faults.check(IoOp::Write, wal), None, "times exhausted");
        assert_eq!(faults.fired(), 2);
        faults.clear();
        assert_eq!(faults.fired(), 0);
    }

    #[test]
    fn rules_skip_operations_their_action_cannot_apply_to() {
        let faults = FaultInjector::new();
        faults.add(FaultRule::new(FaultAction::TornWrite { bytes: 512 }).times(1));
        faults.add(FaultRule::new(FaultAction::ShortTransfer { max_bytes: 512 }).times(1));
        let p = Path::new("x");
        assert_eq!(faults.check(IoOp::Sync, p), None, "neither applies to a sync");
        assert_eq!(faults.check(IoOp::Read, p), Some(FaultAction::ShortTransfer { max_bytes: 512 }));
        assert_eq!(faults.check(IoOp::Write, p), Some(FaultAction::TornWrite { bytes: 512 }));
        assert_eq!(faults.fired(), 2);
    }

    #[test]
    fn first_firing_rule_wins() {
        let faults = FaultInjector::new();
        faults.add(FaultRule::new(FaultAction::Error(28)).op(IoOp::Sync).times(1));
        faults.add(FaultRule::new(FaultAction::Error(5)));
        let p = Path::new("x");
        assert_eq!(faults.check(IoOp::Sync, p), Some(FaultAction::Error(28)));
        assert_eq!(faults.check(IoOp::Sync, p), Some(FaultAction::Error(5)));
        assert_eq!(faults.check(IoOp::Read, p), Some(FaultAction::Error(5)));
    }
}
