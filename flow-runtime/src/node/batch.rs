//! [`Batch`]: the in-memory overlay of one group commit. Every step of the
//! batch reads through it (so a second step of the same flow sees the first
//! one's checkpoint) and writes into it; nothing reaches the store until the
//! whole batch commits in one transaction.

use super::hot::{HotCheckpoints, HotSessions};
use super::records::{
    CheckpointRecord, SessionKey, SessionRecord, encode_timer_runs, parse_timer_runs, run_key,
    timer_key,
};
use crate::Timestamp;
use crate::fast_hash::FastMap;
use crate::store::{RangeRemoval, Store, StoreError, Table, WriteBatch};
use crate::{FlowError, PublicKey};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

/// A checkpoint as loaded: decoded, or the raw bytes with the reason they do
/// not decode.
pub(crate) enum Loaded {
    Ok(Box<CheckpointRecord>),
    Corrupt(String),
}

#[derive(Default)]
pub(crate) struct Batch {
    /// Checkpoints this batch wrote (`None`: deleted). Boxed, because
    /// records move between the cache, the step and this map on every step
    /// and a record is a couple of hundred bytes inline; hashed, not
    /// ordered, because `take_write_batch` sorts them once.
    checkpoints: FastMap<u64, Option<Box<CheckpointRecord>>>,
    /// The node's cache of committed checkpoints, lent to the batch: loads
    /// take from it, and a successful commit returns what it wrote.
    hot: HotCheckpoints,
    /// The checkpoint writes being committed (taken out of `checkpoints` by
    /// `take_write_batch`), for `hot` once the commit succeeded.
    committing: Vec<(u64, Option<Box<CheckpointRecord>>)>,
    /// Session ends this batch read or wrote.
    sessions: BTreeMap<SessionKey, SessionSlot>,
    /// The node's cache of committed session records, lent like `hot`.
    hot_sessions: HotSessions,
    /// Session records read or written, being committed (taken out of
    /// `sessions` by `take_write_batch`), for `hot_sessions` once the
    /// commit succeeded.
    committing_sessions: Vec<(SessionKey, Option<SessionRecord>)>,
    /// Plain table writes by table, then key (`None`: delete).
    raw: BTreeMap<Table, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Timer rows this batch changes, whole (committed runs merged in):
    /// due time -> runs. An empty row is deleted. (A list, sorted and
    /// deduplicated when written: adding is the hot path, one push;
    /// removing, only for flows that end while sleeping, scans the row.)
    timers: BTreeMap<u64, Vec<u64>>,
    /// Whether the committed hospital table was empty when the batch began
    /// (the usual case): then only this batch's own writes can have put a
    /// run there, and the check every step makes needs no store read.
    hospital_empty: bool,
    /// Key ranges removed; writes in `raw` are applied after them.
    removed_ranges: Vec<RangeRemoval>,
    /// Set by `take_write_batch`: whether the batch writes the timers
    /// table (so the node knows whether the earliest timer it remembers
    /// still holds after the commit).
    pub wrote_timers: bool,
    /// Set by `take_write_batch`: whether the batch writes the hospital
    /// table (likewise, for whether the hospital is empty).
    pub wrote_hospital: bool,
    /// Whether each run touched by this batch has unprocessed input at the
    /// end of it. Only the net change against the committed `runnable`
    /// index is written: a run woken and stepped to quiescence in the same
    /// batch costs no index write at all.
    runnable: FastMap<u64, bool>,
    /// Runs to try in this batch.
    pub wake: WakeQueue,
    /// Frames to release after the commit (new outbox entries, acks, refusals).
    pub emit: Vec<(PublicKey, Vec<u8>)>,
    /// Runs finished in this batch, with their outcome.
    pub finished: Vec<(u64, String, Result<Vec<u8>, FlowError>)>,
    /// Progress changes in this batch.
    pub progress: Vec<(u64, Vec<String>)>,
    /// Steps run in this batch.
    pub steps: usize,
}

/// A session end as a batch sees it.
struct SessionSlot {
    /// The record (`None`: there is none, or it was deleted).
    rec: Option<SessionRecord>,
    /// Written by this batch; otherwise it is the committed record, only
    /// read, and is not written again.
    dirty: bool,
}

/// The smallest key above every key starting with `prefix` (`None`: there
/// is none, the prefix is empty or all `0xff`): the last byte below `0xff`
/// incremented, the bytes after it dropped.
fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// Whether `key` of `table` lies in one of `ranges`.
fn in_ranges(ranges: &[RangeRemoval], table: &Table, key: &[u8]) -> bool {
    ranges
        .iter()
        .any(|r| r.table == *table && r.from.as_slice() <= key && key < r.to.as_slice())
}

/// The runs to try in a batch, each at most once at a time, in the order
/// they were woken (deterministic for the same inputs, which the seeded
/// test network relies on). A run woken again while it runs is queued
/// again behind the others.
#[derive(Default)]
pub(crate) struct WakeQueue {
    order: VecDeque<u64>,
    queued: FastMap<u64, ()>,
}

impl WakeQueue {
    /// Queues `run` unless it is already waiting.
    pub fn insert(&mut self, run: u64) {
        if self.queued.insert(run, ()).is_none() {
            self.order.push_back(run);
        }
    }

    /// The next run to try.
    pub fn pop(&mut self) -> Option<u64> {
        let run = self.order.pop_front()?;
        self.queued.remove(&run);
        Some(run)
    }

    /// The waiting runs, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().copied()
    }
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what} record does not decode: {e}")
}

impl Batch {
    /// An empty batch over `store`'s committed state, with the node's
    /// caches of committed checkpoints and sessions.
    /// `runs_hint`: how many runs the batch will probably touch (the last
    /// batch's count), so its maps are sized once instead of regrowing.
    /// `hospital_empty`: whether the committed hospital table is empty, if
    /// the node knows (else it is counted here).
    pub fn new(
        store: &dyn Store,
        (hot, hot_sessions): (HotCheckpoints, HotSessions),
        runs_hint: usize,
        hospital_empty: Option<bool>,
    ) -> Result<Self, StoreError> {
        let hospital_empty = match hospital_empty {
            Some(known) => known,
            None => store.len(&Table::HOSPITAL)? == 0,
        };
        Ok(Self {
            hospital_empty,
            hot,
            hot_sessions,
            checkpoints: FastMap::with_capacity_and_hasher(runs_hint, Default::default()),
            runnable: FastMap::with_capacity_and_hasher(runs_hint, Default::default()),
            ..Self::default()
        })
    }

    /// `run`'s checkpoint as this batch sees it: its own write, else the
    /// committed record (from the cache when it is there).
    pub fn checkpoint(
        &mut self,
        store: &dyn Store,
        run: u64,
    ) -> Result<Option<Loaded>, StoreError> {
        if let Some(c) = self.checkpoints.get(&run) {
            return Ok(c.clone().map(Loaded::Ok));
        }
        if let Some(rec) = self.hot.take(&run) {
            return Ok(Some(Loaded::Ok(rec)));
        }
        Ok(store.get(&Table::CHECKPOINTS, &run_key(run))?.map(
            |bytes| match CheckpointRecord::decode(&bytes) {
                Ok(rec) => Loaded::Ok(Box::new(rec)),
                Err(e) => Loaded::Corrupt(decode_err("checkpoint", e)),
            },
        ))
    }

    pub fn put_checkpoint(&mut self, run: u64, rec: Box<CheckpointRecord>) {
        self.checkpoints.insert(run, Some(rec));
    }

    pub fn delete_checkpoint(&mut self, run: u64) {
        self.checkpoints.insert(run, None);
    }

    /// The batch's slot for a session end, loaded on first use: from the
    /// cache of committed records, else from the store. A corrupt record
    /// is logged and treated like a missing session.
    fn session_slot(
        &mut self,
        store: &dyn Store,
        key: SessionKey,
    ) -> Result<&mut SessionSlot, StoreError> {
        use std::collections::btree_map::Entry;
        match self.sessions.entry(key) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let rec = match self.hot_sessions.take(&key) {
                    Some(rec) => Some(rec),
                    None => match store.get(&Table::SESSIONS, &key.bytes())? {
                        None => None,
                        Some(bytes) => match rmp_serde::from_slice(&bytes) {
                            Ok(rec) => Some(rec),
                            Err(e) => {
                                tracing::error!(session = %key.id, "{}", decode_err("session", e));
                                None
                            }
                        },
                    },
                };
                Ok(e.insert(SessionSlot { rec, dirty: false }))
            }
        }
    }

    /// A session end as this batch sees it (see
    /// [`session_ref`](Self::session_ref)), cloned.
    pub fn session(
        &mut self,
        store: &dyn Store,
        key: SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.session_ref(store, key)?.cloned())
    }

    /// A session end as this batch sees it: its own write, else the
    /// committed record. A corrupt record is logged and treated like a
    /// missing session.
    pub fn session_ref(
        &mut self,
        store: &dyn Store,
        key: SessionKey,
    ) -> Result<Option<&SessionRecord>, StoreError> {
        Ok(self.session_slot(store, key)?.rec.as_ref())
    }

    /// A session end to change in place: it is written with the batch.
    pub fn session_mut(
        &mut self,
        store: &dyn Store,
        key: SessionKey,
    ) -> Result<Option<&mut SessionRecord>, StoreError> {
        let slot = self.session_slot(store, key)?;
        if slot.rec.is_some() {
            slot.dirty = true;
        }
        Ok(slot.rec.as_mut())
    }

    pub fn put_session(&mut self, key: SessionKey, rec: SessionRecord) {
        self.sessions.insert(
            key,
            SessionSlot {
                rec: Some(rec),
                dirty: true,
            },
        );
    }

    pub fn delete_session(&mut self, key: SessionKey) {
        self.sessions.insert(
            key,
            SessionSlot {
                rec: None,
                dirty: true,
            },
        );
    }

    /// Whether the committed hospital table was empty when the batch began.
    pub fn hospital_was_empty(&self) -> bool {
        self.hospital_empty
    }

    /// Records whether `run` has unprocessed input (see `runnable`).
    pub fn set_runnable(&mut self, run: u64, runnable: bool) {
        self.runnable.insert(run, runnable);
    }

    /// The runnable-index changes against `committed` (the runs the store's
    /// index holds): `(run, now runnable)` for every run whose entry must be
    /// written or removed.
    pub fn runnable_changes(&mut self, committed: &BTreeSet<u64>) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.runnable)
            .into_iter()
            .filter(|(run, want)| committed.contains(run) != *want)
            .collect()
    }

    pub fn get(
        &self,
        store: &dyn Store,
        table: &Table,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.raw.get(table).and_then(|t| t.get(key)) {
            return Ok(v.clone());
        }
        if self.in_removed_range(table, key) || (self.hospital_empty && *table == Table::HOSPITAL) {
            return Ok(None);
        }
        store.get(table, key)
    }

    /// `run`'s hospital record, if it is there (no lookup at all while
    /// the hospital is empty, the usual case).
    pub fn hospital(&self, store: &dyn Store, run: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if self.hospital_empty && !self.raw.contains_key(&Table::HOSPITAL) {
            return Ok(None);
        }
        self.get(store, &Table::HOSPITAL, &run_key(run))
    }

    fn in_removed_range(&self, table: &Table, key: &[u8]) -> bool {
        in_ranges(&self.removed_ranges, table, key)
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.raw.entry(table).or_default().insert(key, Some(value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.raw.entry(table).or_default().insert(key, None);
    }

    /// The staged timer row due at `at`, loaded from the store on first use.
    fn timer_row(&mut self, store: &dyn Store, at: Timestamp) -> Result<&mut Vec<u64>, StoreError> {
        Ok(match self.timers.entry(at.0) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let key = timer_key(at);
                let committed = if in_ranges(&self.removed_ranges, &Table::TIMERS, &key) {
                    None
                } else {
                    store.get(&Table::TIMERS, &key)?
                };
                e.insert(committed.map(|v| parse_timer_runs(&v)).unwrap_or_default())
            }
        })
    }

    /// Schedules a wake-up of `run` at `at`.
    pub fn add_timer(
        &mut self,
        store: &dyn Store,
        at: Timestamp,
        run: u64,
    ) -> Result<(), StoreError> {
        self.timer_row(store, at)?.push(run);
        Ok(())
    }

    /// Cancels the wake-up of `run` at `at`.
    pub fn remove_timer(
        &mut self,
        store: &dyn Store,
        at: Timestamp,
        run: u64,
    ) -> Result<(), StoreError> {
        self.timer_row(store, at)?.retain(|r| *r != run);
        Ok(())
    }

    /// Takes every timer due by `now` out of the batch and returns the runs
    /// of those staged in it so far. With `committed_due` (the caller found
    /// committed rows due), those rows are removed with one range removal.
    pub fn fire_timers(&mut self, now: Timestamp, committed_due: bool) -> Vec<u64> {
        let upper = now.0.saturating_add(1);
        let later = self.timers.split_off(&upper);
        let due = std::mem::replace(&mut self.timers, later);
        if committed_due {
            self.remove_range(Table::TIMERS, Vec::new(), timer_key(Timestamp(upper)));
        }
        due.into_values().flatten().collect()
    }

    /// Deletes every committed key `from <= key < to` of `table` with one
    /// range operation (keys written later in this batch stay).
    pub fn remove_range(&mut self, table: Table, from: Vec<u8>, to: Vec<u8>) {
        if let Some(t) = self.raw.get_mut(&table) {
            // Staged deletes inside the range are now implied.
            t.retain(|k, v| v.is_some() || k.as_slice() < from.as_slice() || k >= &to);
        }
        self.removed_ranges.push(RangeRemoval { table, from, to });
    }

    /// Keys of `table` starting with `prefix`, committed or staged, minus
    /// staged deletions and removed ranges, in key order.
    ///
    /// Cost: the committed keys under the prefix plus a range walk of this
    /// table's staged writes under it. Never a pass over every staged
    /// write of the batch: the receive path calls this once per incoming
    /// message, so a walk over the whole batch would make a big group
    /// commit quadratic.
    pub fn keys_with_prefix(
        &self,
        store: &dyn Store,
        table: &Table,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let upper = prefix_upper_bound(prefix);
        let committed = store.range(table, prefix, upper.as_deref(), usize::MAX)?;
        let bounds = (
            Bound::Included(prefix),
            upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        );
        let mut staged = self
            .raw
            .get(table)
            .into_iter()
            .flat_map(|t| t.range::<[u8], _>(bounds))
            .peekable();
        // Both sides are in key order: merge them, a staged write winning
        // over the committed key it shadows.
        let mut keys = Vec::with_capacity(committed.len());
        let mut committed = committed.into_iter().map(|(k, _)| k).peekable();
        loop {
            let staged_first = match (committed.peek(), staged.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(c), Some((s, _))) => match c.as_slice().cmp(s.as_slice()) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Equal => {
                        committed.next();
                        true
                    }
                },
            };
            if staged_first {
                if let Some((k, Some(_))) = staged.next() {
                    keys.push(k.clone());
                }
            } else if let Some(k) = committed.next()
                && !self.in_removed_range(table, &k)
            {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// Everything to write, encoded.
    pub fn take_write_batch(&mut self) -> Result<WriteBatch, StoreError> {
        let mut w = WriteBatch::default();
        let mut checkpoints: Vec<_> = std::mem::take(&mut self.checkpoints).into_iter().collect();
        checkpoints.sort_unstable_by_key(|(run, _)| *run);
        self.committing.reserve(checkpoints.len());
        for (run, rec) in checkpoints {
            match &rec {
                Some(rec) => w.put(Table::CHECKPOINTS, run_key(run), rec.encode()),
                None => w.delete(Table::CHECKPOINTS, run_key(run)),
            }
            self.committing.push((run, rec));
        }
        self.committing_sessions.reserve(self.sessions.len());
        for (key, slot) in std::mem::take(&mut self.sessions) {
            if slot.dirty {
                match &slot.rec {
                    Some(rec) => w.put(
                        Table::SESSIONS,
                        key.bytes(),
                        rmp_serde::to_vec(rec)
                            .map_err(|e| StoreError(format!("cannot encode session: {e}")))?,
                    ),
                    None => w.delete(Table::SESSIONS, key.bytes()),
                }
            } else if slot.rec.is_none() {
                continue; // nothing there, nothing to remember
            }
            self.committing_sessions.push((key, slot.rec));
        }
        self.wrote_hospital = self.raw.contains_key(&Table::HOSPITAL);
        self.wrote_timers = !self.timers.is_empty()
            || self.raw.contains_key(&Table::TIMERS)
            || self.removed_ranges.iter().any(|r| r.table == Table::TIMERS);
        for (table, writes) in std::mem::take(&mut self.raw) {
            for (key, value) in writes {
                match value {
                    Some(v) => w.put(table.clone(), key, v),
                    None => w.delete(table.clone(), key),
                }
            }
        }
        for (at, runs) in std::mem::take(&mut self.timers) {
            let key = timer_key(Timestamp(at));
            if runs.is_empty() {
                w.delete(Table::TIMERS, key);
            } else {
                let mut runs = runs;
                runs.sort_unstable();
                runs.dedup();
                w.put(Table::TIMERS, key, encode_timer_runs(&runs));
            }
        }
        w.removed_ranges = std::mem::take(&mut self.removed_ranges);
        Ok(w)
    }

    /// The write batch of [`take_write_batch`](Self::take_write_batch) is
    /// committed: its checkpoints become the cache's.
    pub fn commit_succeeded(&mut self) {
        for (run, rec) in self.committing.drain(..) {
            self.hot.committed(run, rec);
        }
        for (key, rec) in self.committing_sessions.drain(..) {
            self.hot_sessions.committed(key, rec);
        }
    }

    /// The cache back, for the next batch. Only a batch that committed (or
    /// wrote nothing) returns its entries; otherwise the cache comes back
    /// empty, which is always safe.
    pub fn into_hot(mut self, committed: bool) -> (HotCheckpoints, HotSessions) {
        if committed {
            (
                std::mem::take(&mut self.hot),
                std::mem::take(&mut self.hot_sessions),
            )
        } else {
            (self.hot.emptied(), self.hot_sessions.emptied())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RedbOptions, RedbStore, SharedMemory, WriteBatch};
    use proptest::prelude::*;

    /// The definition `keys_with_prefix` must keep: every committed key
    /// under the prefix outside the removed ranges, then every staged write
    /// of the table applied on top, one by one.
    fn naive_keys_with_prefix(
        batch: &Batch,
        store: &dyn Store,
        table: &Table,
        prefix: &[u8],
    ) -> Vec<Vec<u8>> {
        let mut keys: BTreeSet<Vec<u8>> = store
            .range(table, &[], None, usize::MAX)
            .expect("range")
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(prefix) && !batch.in_removed_range(table, k))
            .collect();
        for (k, v) in batch.raw.get(table).into_iter().flatten() {
            if k.starts_with(prefix) {
                if v.is_some() {
                    keys.insert(k.clone());
                } else {
                    keys.remove(k);
                }
            }
        }
        keys.into_iter().collect()
    }

    /// Short keys over a tiny alphabet (with `0xff`, for the prefix's
    /// upper bound), so that prefixes, ranges and writes overlap often.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xfe, 0xff]), 0..4)
    }

    /// One staged change: a put, a delete, or a range removal.
    #[derive(Debug, Clone)]
    enum Staged {
        Put(Table, Vec<u8>),
        Delete(Table, Vec<u8>),
        RemoveRange(Table, Vec<u8>, Vec<u8>),
    }

    fn table() -> impl Strategy<Value = Table> {
        prop::sample::select(vec![Table::OUTBOX, Table::RESULTS])
    }

    fn staged() -> impl Strategy<Value = Staged> {
        prop_oneof![
            3 => (table(), key()).prop_map(|(t, k)| Staged::Put(t, k)),
            2 => (table(), key()).prop_map(|(t, k)| Staged::Delete(t, k)),
            1 => (table(), key(), key()).prop_map(|(t, a, b)| Staged::RemoveRange(t, a, b)),
        ]
    }

    proptest! {
        #[test]
        fn keys_with_prefix_matches_the_naive_merge(
            committed in prop::collection::vec((table(), key()), 0..24),
            writes in prop::collection::vec(staged(), 0..32),
            prefix in key(),
        ) {
            let store = RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default())
                .expect("in-memory store");
            let mut w = WriteBatch::default();
            for (t, k) in &committed {
                w.put(t.clone(), k.clone(), vec![1]);
            }
            store.commit(w).expect("commit");
            let mut batch = Batch::default();
            for write in writes {
                match write {
                    Staged::Put(t, k) => batch.put(t, k, vec![2]),
                    Staged::Delete(t, k) => batch.delete(t, k),
                    Staged::RemoveRange(t, a, b) => batch.remove_range(t, a, b),
                }
            }
            for t in [Table::OUTBOX, Table::RESULTS] {
                let got = batch.keys_with_prefix(&store, &t, &prefix).expect("keys");
                prop_assert_eq!(got, naive_keys_with_prefix(&batch, &store, &t, &prefix));
            }
        }
    }

    #[test]
    fn the_prefix_upper_bound_carries_over_0xff() {
        assert_eq!(prefix_upper_bound(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_upper_bound(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_upper_bound(&[0xff]), None);
        assert_eq!(prefix_upper_bound(&[]), None);
    }
}
