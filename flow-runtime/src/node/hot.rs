//! [`HotCheckpoints`]: decoded copies of recently committed checkpoints, so
//! the next step of a busy flow skips the store read and the decode.
//!
//! Why: at a group commit of 1,000 steps, reading and decoding each flow's
//! checkpoint was about a fifth of the node's CPU per step, and a flow that
//! just suspended is the one most likely to be woken next (the reply to the
//! message it just sent, the timer it just set).
//!
//! The one invariant: **every entry equals the committed row**. Entries are
//! added only after the commit that wrote them succeeded, a loaded entry is
//! taken out (a step always writes or deletes what it loaded, or leaves the
//! committed row as it was), and nothing but the node writes the checkpoint
//! table. A failed commit drops the whole cache (see `NodeCore`), which is
//! always safe: the cache only ever holds a subset of the store.
//!
//! Memory is bounded by a byte budget (`NodeConfig::checkpoint_cache_bytes`)
//! with two generations: new entries go to the young map; when it holds
//! half the budget it becomes the old map and the previous old map is
//! dropped. So the cache never exceeds the budget, and a record recently
//! written survives at least half a budget's worth of newer ones.

use super::records::CheckpointRecord;
use crate::fast_hash::FastMap;

type RunMap = FastMap<u64, Box<CheckpointRecord>>;

/// Bookkeeping bytes counted per entry on top of the record's own heap
/// bytes (the map slot, the record's inline fields).
const ENTRY_OVERHEAD: usize = 256;

#[derive(Default)]
pub(crate) struct HotCheckpoints {
    young: RunMap,
    old: RunMap,
    young_bytes: usize,
    budget_bytes: usize,
}

impl HotCheckpoints {
    /// An empty cache holding at most about `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            ..Self::default()
        }
    }

    /// An empty cache with the same budget (what a failed commit leaves).
    pub fn emptied(&self) -> Self {
        Self::new(self.budget_bytes)
    }

    /// Takes `run`'s committed record out of the cache, if it is there.
    pub fn take(&mut self, run: u64) -> Option<Box<CheckpointRecord>> {
        match self.young.remove(&run) {
            Some(rec) => {
                self.young_bytes = self.young_bytes.saturating_sub(cost(&rec));
                Some(rec)
            }
            None => self.old.remove(&run),
        }
    }

    /// Records what a successful commit wrote for `run`: its new record, or
    /// `None` if the commit deleted it.
    pub fn committed(&mut self, run: u64, rec: Option<Box<CheckpointRecord>>) {
        if let Some(previous) = self.young.remove(&run) {
            self.young_bytes = self.young_bytes.saturating_sub(cost(&previous));
        }
        self.old.remove(&run);
        let Some(rec) = rec else { return };
        let bytes = cost(&rec);
        let half = self.budget_bytes / 2;
        if bytes > half {
            return; // too big to be worth a generation of its own
        }
        if self.young_bytes + bytes > half {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += bytes;
        self.young.insert(run, rec);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// The bytes an entry is counted as.
fn cost(rec: &CheckpointRecord) -> usize {
    ENTRY_OVERHEAD
        + rec.flow.len()
        + rec.state.capacity()
        + rec.state_name.len()
        + rec.progress.iter().map(|p| p.len() + 24).sum::<usize>()
        + rec.sessions.len() * std::mem::size_of::<super::records::SessionKey>()
        + rec.client_id.as_ref().map_or(0, String::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    fn record(state_len: usize, marker: u8) -> Box<CheckpointRecord> {
        Box::new(CheckpointRecord {
            flow: "f".into(),
            fingerprint: 1,
            version: 1,
            state: vec![marker; state_len],
            state_name: "S".into(),
            started: true,
            wait: None,
            waiting_since: Timestamp(0),
            progress: Vec::new(),
            sessions: Vec::new(),
            keep_result: false,
            client_id: None,
            deadline: None,
        })
    }

    #[test]
    fn a_taken_record_is_gone_until_committed_again() {
        let mut hot = HotCheckpoints::new(1 << 20);
        hot.committed(7, Some(record(10, 1)));
        assert_eq!(hot.take(7).map(|r| r.state), Some(vec![1; 10]));
        assert!(hot.take(7).is_none());
        hot.committed(7, Some(record(10, 2)));
        hot.committed(7, Some(record(10, 3)));
        assert_eq!(hot.take(7).map(|r| r.state), Some(vec![3; 10]));
    }

    #[test]
    fn a_deleted_record_leaves_both_generations() {
        let mut hot = HotCheckpoints::new(4 * (ENTRY_OVERHEAD + 100));
        hot.committed(1, Some(record(90, 1)));
        hot.committed(2, Some(record(90, 1)));
        hot.committed(3, Some(record(90, 1))); // 1 and 2 are now old
        hot.committed(1, None);
        assert!(hot.take(1).is_none());
        assert!(hot.take(2).is_some());
    }

    #[test]
    fn the_budget_bounds_the_entries_and_keeps_the_newest() {
        let per_entry = ENTRY_OVERHEAD + 100;
        let mut hot = HotCheckpoints::new(10 * per_entry);
        for run in 0..1_000 {
            hot.committed(run, Some(record(100, 0)));
        }
        assert!(hot.len() <= 10, "{} entries over budget", hot.len());
        assert!(hot.take(999).is_some(), "the newest entry was evicted");
        assert!(hot.take(0).is_none(), "the oldest entry was kept");
    }

    #[test]
    fn a_zero_budget_caches_nothing_and_big_records_are_skipped() {
        let mut off = HotCheckpoints::new(0);
        off.committed(1, Some(record(1, 1)));
        assert!(off.take(1).is_none());
        let mut hot = HotCheckpoints::new(4096);
        hot.committed(1, Some(record(4096, 1)));
        assert!(hot.take(1).is_none());
        assert_eq!(hot.emptied().budget_bytes, 4096);
    }
}
