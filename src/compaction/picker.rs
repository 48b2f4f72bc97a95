//! Choosing the next compaction: level 0 by table count, deeper levels by
//! size against a target that grows tenfold per level.

use std::sync::Arc;

use crate::version::{NUM_LEVELS, TableFile, Version};

/// Shape of the tree. `Options` carries these; tests use tiny sizes.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// Level-0 tables that trigger a compaction into level 1. Default: 4.
    pub l0_compaction_trigger: usize,
    /// Level-0 tables from which each write is delayed (1 ms per table past
    /// this, up to 20 ms), so that compaction catches up. Default: 20.
    pub l0_slowdown_trigger: usize,
    /// Level-0 tables at which writes wait until compaction catches up. Default: 36.
    pub l0_stop_trigger: usize,
    /// Target size of level 1 in bytes; level n+1 targets `level_size_multiplier` times level n.
    /// Default: 256 MiB.
    pub level1_target_bytes: u64,
    /// Growth of the size target from one level to the next. Default: 10.
    pub level_size_multiplier: u64,
    /// Compaction outputs are split into tables of about this size, in bytes. Default: 64 MiB.
    pub sst_target_size_bytes: u64,
    /// No compaction runs by itself (and writes never wait for one); for bulk
    /// loads and tests that inspect the tables flushes make. Default: false.
    pub disable_auto_compactions: bool,
    /// Threads one compaction may split its key range over (RocksDB's
    /// `max_subcompactions`): each merges one range of user keys into its own
    /// output tables. A range is never smaller than a quarter of
    /// `sst_target_size_bytes` of input. Default: 1, as the writers, the flush
    /// and the ring thread already need the cores of a small machine.
    pub max_subcompactions: usize,
}

impl Default for CompactionOptions {
    fn default() -> CompactionOptions {
        CompactionOptions {
            l0_compaction_trigger: 4,
            l0_slowdown_trigger: 20,
            l0_stop_trigger: 36,
            level1_target_bytes: 256 << 20,
            level_size_multiplier: 10,
            sst_target_size_bytes: 64 << 20,
            disable_auto_compactions: false,
            max_subcompactions: 1,
        }
    }
}

impl CompactionOptions {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.l0_compaction_trigger == 0
            || self.l0_slowdown_trigger < self.l0_compaction_trigger
            || self.l0_stop_trigger <= self.l0_slowdown_trigger
        {
            return Err(
                "triggers must satisfy 0 < l0_compaction_trigger <= l0_slowdown_trigger < l0_stop_trigger".into()
            );
        }
        if self.max_subcompactions == 0 {
            return Err("max_subcompactions must be at least 1".into());
        }
        if self.level1_target_bytes == 0 || self.level_size_multiplier < 2 || self.sst_target_size_bytes == 0 {
            return Err(
                "level1_target_bytes and sst_target_size_bytes must be positive, level_size_multiplier >= 2".into()
            );
        }
        Ok(())
    }

    /// The size target of `level` (>= 1).
    pub(crate) fn target_bytes(&self, level: usize) -> u64 {
        (1..level).fold(self.level1_target_bytes, |target, _| target.saturating_mul(self.level_size_multiplier))
    }
}

/// What one compaction merges.
pub(crate) struct Plan {
    /// The level the inputs come from.
    pub(crate) level: usize,
    pub(crate) inputs: Vec<Arc<TableFile>>,
    /// The tables of the output level that overlap the inputs.
    pub(crate) next_inputs: Vec<Arc<TableFile>>,
    /// `level + 1`, or `level` itself when a manual compaction rewrites the
    /// bottom level in place.
    pub(crate) output_level: usize,
    /// Whether a lone input may move down unchanged (not when a manual
    /// compaction wants old versions and tombstones dropped).
    pub(crate) allow_trivial_move: bool,
}

impl Plan {
    /// A single input that overlaps nothing below moves down without a rewrite.
    pub(crate) fn is_trivial_move(&self) -> bool {
        self.allow_trivial_move && self.inputs.len() == 1 && self.next_inputs.is_empty()
    }
}

fn key_range<'a>(tables: impl Iterator<Item = &'a Arc<TableFile>>) -> (Vec<u8>, Vec<u8>) {
    let mut smallest: Option<&[u8]> = None;
    let mut largest: Option<&[u8]> = None;
    for table in tables {
        let (s, l) = (table.meta.smallest_user_key(), table.meta.largest_user_key());
        smallest = Some(smallest.map_or(s, |x| x.min(s)));
        largest = Some(largest.map_or(l, |x| x.max(l)));
    }
    (smallest.unwrap_or_default().to_vec(), largest.unwrap_or_default().to_vec())
}

/// Round-robin position per level: the largest user key compacted last, so
/// successive compactions of a level sweep its whole key space.
#[derive(Default)]
pub(crate) struct Cursors {
    next_after: Vec<Option<Vec<u8>>>,
}

/// The most urgent compaction of `version`, if any level is over its target.
pub(crate) fn pick(version: &Version, options: &CompactionOptions, cursors: &mut Cursors) -> Option<Plan> {
    if options.disable_auto_compactions {
        return None;
    }
    cursors.next_after.resize(NUM_LEVELS, None);
    let mut best: Option<(f64, usize)> = None;
    let l0_score = version.levels[0].len() as f64 / options.l0_compaction_trigger as f64;
    if l0_score >= 1.0 {
        best = Some((l0_score, 0));
    }
    for level in 1..NUM_LEVELS - 1 {
        let score = version.level_bytes(level) as f64 / options.target_bytes(level) as f64;
        if score >= 1.0 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, level));
        }
    }
    let (_, level) = best?;
    Some(plan_for(version, level, cursors))
}

/// A plan that compacts `level` (which must hold a table).
pub(crate) fn plan_for(version: &Version, level: usize, cursors: &mut Cursors) -> Plan {
    cursors.next_after.resize(NUM_LEVELS, None);
    let inputs: Vec<Arc<TableFile>> = if level == 0 {
        // All of level 0: an older level-0 table left behind could shadow
        // newer data moved below it.
        version.levels[0].clone()
    } else {
        let tables = &version.levels[level];
        let after = cursors.next_after[level].as_deref();
        let chosen = after
            .and_then(|after| tables.iter().find(|t| t.meta.smallest_user_key() > after))
            .or_else(|| tables.first())
            .expect("a level over its target holds a table");
        vec![Arc::clone(chosen)]
    };
    let plan = plan_with_inputs(version, level, inputs);
    cursors.next_after[level] = Some(key_range(plan.inputs.iter()).1);
    plan
}

/// A plan that merges `inputs` (tables of `level`) with what they overlap below.
pub(crate) fn plan_with_inputs(version: &Version, level: usize, inputs: Vec<Arc<TableFile>>) -> Plan {
    let (smallest, largest) = key_range(inputs.iter());
    let next_inputs = version.overlapping(level + 1, &smallest, &largest);
    Plan { level, inputs, next_inputs, output_level: level + 1, allow_trivial_move: true }
}
