//! [`HotCache`]: decoded copies of recently committed records, so the next
//! step of a busy flow skips the store read and the decode:
//! [`HotCheckpoints`] (checkpoints by run) and [`HotSessions`] (session
//! ends by session key).
//!
//! Why: at a group commit of 1,000 steps, reading and decoding each flow's
//! checkpoint was about a fifth of the node's CPU per step, and a flow that
//! just suspended is the one most likely to be woken next (the reply to the
//! message it just sent, the timer it just set). The same holds for the
//! session the reply arrives on: without its cache every message costs a
//! store read (a read snapshot and the table opened in it) and a
//! MessagePack decode of the session record.
//!
//! The one invariant: **every entry equals the committed row**. Entries are
//! added only after the commit that wrote them succeeded (or, for a record
//! a batch only read, once that batch has committed or written nothing), a
//! loaded entry is taken out (a step always writes or deletes what it
//! loaded, or leaves the committed row as it was), and nothing but the node
//! writes these tables. A failed commit drops the whole cache (see
//! `NodeCore`), which is always safe: the cache only ever holds a subset
//! of the store.
//!
//! Memory is bounded by a byte budget (`NodeConfig::checkpoint_cache_bytes`,
//! each cache its own) with two generations: new entries go to the young
//! map; when it holds half the budget it becomes the old map and the
//! previous old map is dropped. So the cache never exceeds the budget, and
//! a record recently written survives at least half a budget's worth of
//! newer ones.

use super::records::{CheckpointRecord, Inbound, SessionKey, SessionRecord};
use crate::fast_hash::FastHasher;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hash};

/// Bookkeeping bytes counted per entry on top of the record's own heap
/// bytes (the map slot, the record's inline fields).
const ENTRY_OVERHEAD: usize = 256;

/// A record's size as a cache entry.
pub(crate) trait Cost {
    /// The bytes the entry is counted as.
    fn cost(&self) -> usize;
}

/// Checkpoints by run id (ids this node picked: a cheap hash is safe).
pub(crate) type HotCheckpoints =
    HotCache<u64, Box<CheckpointRecord>, BuildHasherDefault<FastHasher>>;

/// Session ends by key. Session ids of sessions peers initiated are
/// chosen by the peer, so this map keeps the standard library's keyed
/// hash.
pub(crate) type HotSessions = HotCache<SessionKey, SessionRecord, RandomState>;

pub(crate) struct HotCache<K, V, S> {
    young: HashMap<K, V, S>,
    old: HashMap<K, V, S>,
    young_bytes: usize,
    budget_bytes: usize,
}

impl<K, V, S: Default> Default for HotCache<K, V, S> {
    fn default() -> Self {
        Self {
            young: HashMap::default(),
            old: HashMap::default(),
            young_bytes: 0,
            budget_bytes: 0,
        }
    }
}

impl<K: Hash + Eq, V: Cost, S: BuildHasher + Default> HotCache<K, V, S> {
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

    /// Takes `key`'s committed record out of the cache, if it is there.
    pub fn take(&mut self, key: &K) -> Option<V> {
        match self.young.remove(key) {
            Some(rec) => {
                self.young_bytes = self.young_bytes.saturating_sub(rec.cost());
                Some(rec)
            }
            None => self.old.remove(key),
        }
    }

    /// Records what a successful commit wrote for `key` (or what it left
    /// as it was): its record, or `None` if the commit deleted it.
    pub fn committed(&mut self, key: K, rec: Option<V>) {
        if let Some(previous) = self.young.remove(&key) {
            self.young_bytes = self.young_bytes.saturating_sub(previous.cost());
        }
        self.old.remove(&key);
        let Some(rec) = rec else { return };
        let bytes = rec.cost();
        let half = self.budget_bytes / 2;
        if bytes > half {
            return; // too big to be worth a generation of its own
        }
        if self.young_bytes + bytes > half {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += bytes;
        self.young.insert(key, rec);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

impl Cost for Box<CheckpointRecord> {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + self.flow.len()
            + self.state.capacity()
            + self.state_name.len()
            + self.progress.iter().map(|p| p.len() + 24).sum::<usize>()
            + self.sessions.len() * std::mem::size_of::<SessionKey>()
            + self.client_id.as_ref().map_or(0, String::len)
    }
}

impl Cost for SessionRecord {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + self.counterparty.name().len()
            + self.initiating_flow.len()
            + self
                .inbox
                .values()
                .map(|m| Inbound::size(m) + 64)
                .sum::<usize>()
            + self.ended.as_ref().map_or(0, |e| e.message().len() + 32)
    }
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
        assert_eq!(hot.take(&7).map(|r| r.state), Some(vec![1; 10]));
        assert!(hot.take(&7).is_none());
        hot.committed(7, Some(record(10, 2)));
        hot.committed(7, Some(record(10, 3)));
        assert_eq!(hot.take(&7).map(|r| r.state), Some(vec![3; 10]));
    }

    #[test]
    fn a_deleted_record_leaves_both_generations() {
        let mut hot = HotCheckpoints::new(4 * (ENTRY_OVERHEAD + 100));
        hot.committed(1, Some(record(90, 1)));
        hot.committed(2, Some(record(90, 1)));
        hot.committed(3, Some(record(90, 1))); // 1 and 2 are now old
        hot.committed(1, None);
        assert!(hot.take(&1).is_none());
        assert!(hot.take(&2).is_some());
    }

    #[test]
    fn the_budget_bounds_the_entries_and_keeps_the_newest() {
        let per_entry = ENTRY_OVERHEAD + 100;
        let mut hot = HotCheckpoints::new(10 * per_entry);
        for run in 0..1_000 {
            hot.committed(run, Some(record(100, 0)));
        }
        assert!(hot.len() <= 10, "{} entries over budget", hot.len());
        assert!(hot.take(&999).is_some(), "the newest entry was evicted");
        assert!(hot.take(&0).is_none(), "the oldest entry was kept");
    }

    #[test]
    fn a_zero_budget_caches_nothing_and_big_records_are_skipped() {
        let mut off = HotCheckpoints::new(0);
        off.committed(1, Some(record(1, 1)));
        assert!(off.take(&1).is_none());
        let mut hot = HotCheckpoints::new(4096);
        hot.committed(1, Some(record(4096, 1)));
        assert!(hot.take(&1).is_none());
        assert_eq!(hot.emptied().budget_bytes, 4096);
    }
}
