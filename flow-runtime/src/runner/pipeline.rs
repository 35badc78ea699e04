//! [`CommitPipeline`]: commits off the driver. A [`Store`] in front of the
//! node's real store that, while the event loop lets batches overlap,
//! queues each batch's [`WriteBatch`] for a committer thread and returns at
//! once, so the driver steps the next batch while the previous one is
//! being made durable.
//!
//! Why: a durable commit waits for the disk (one or two fsyncs). Done on
//! the driver, the driver takes no frame during that wait, so under load
//! the node alternates between stepping and waiting. Here the committer
//! takes EVERYTHING queued and writes it in one transaction with one fsync
//! (group commit across batches), and reports the highest sequence number
//! now durable through a [`watch`] channel the event loop awaits: the
//! driver's worker stays free for the transport while the disk works.
//!
//! What keeps it sound:
//! * nothing a batch produced (frames, results, progress) is released
//!   before the commit with its sequence number is durable (the event loop
//!   holds each batch's output until then);
//! * reads see queued batches: a point read looks at the queued batches
//!   newest first, then the store; a range read merges the queued writes
//!   of its table over the store's entries (or, when a queued batch removes
//!   a key range of that table, waits until that batch is written); a count
//!   waits until no queued batch touches the table;
//! * a failed background commit is fatal: the pipeline refuses every later
//!   batch and read, the driver stops with the error, and nothing of the
//!   failed or later batches was released. A restart recovers from what
//!   the disk holds, as after a crash;
//! * bounded: at most [`MAX_QUEUED_BATCHES`] batches or
//!   [`MAX_QUEUED_BYTES`] bytes wait at once; beyond that, a commit waits.
//!
//! Outside an overlap (the default: commands, timers, shutdown, and any
//! caller that drives the core synchronously) a commit is durable when it
//! returns: with nothing queued it is written on the caller's thread, as
//! without a pipeline.

use crate::fast_hash::FastMap;
use crate::store::{Entries, Store, StoreError, Table, WriteBatch, WriteOp};
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::watch;

/// The most batches queued or being written at once.
pub(crate) const MAX_QUEUED_BATCHES: usize = 8;
/// The most bytes (keys and values) queued or being written at once.
pub(crate) const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// What the committer has made durable, as the event loop sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Durable {
    /// Every batch with a sequence number up to this one is durable.
    pub seq: u64,
    /// Why the pipeline stopped, if a commit failed (fatal).
    pub failed: Option<Arc<str>>,
}

/// See the module docs.
pub(crate) struct CommitPipeline {
    shared: Arc<Shared>,
    committer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    store: Arc<dyn Store>,
    state: Mutex<State>,
    /// Signalled whenever the queue, the durable sequence or `failed`
    /// changes.
    changed: Condvar,
    durable: watch::Sender<Durable>,
    /// Reads that had to wait for the committer (a count for tests and
    /// for judging whether the message path ever waits).
    read_waits: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Batches not yet durable, oldest first; the first `writing` are being
    /// written by the committer.
    queue: VecDeque<Arc<Queued>>,
    writing: usize,
    queued_bytes: usize,
    /// The sequence number of the last batch committed or queued.
    last_seq: u64,
    durable_seq: u64,
    failed: Option<Arc<str>>,
    /// Whether commits queue and return (see [`CommitPipeline::overlap`]).
    overlap: bool,
    closing: bool,
}

/// One batch waiting for the committer.
struct Queued {
    seq: u64,
    batch: WriteBatch,
    bytes: usize,
    /// The tables the batch writes (ops or range removals).
    tables: Vec<Table>,
    /// Hash of (table, key) -> index of the batch's last op with that hash;
    /// built on the first point read that reaches this batch.
    index: OnceLock<FastMap<u64, usize>>,
}

fn key_hash(table: &Table, key: &[u8]) -> u64 {
    BuildHasherDefault::<crate::fast_hash::FastHasher>::default().hash_one((table.name(), key))
}

impl Queued {
    fn new(seq: u64, batch: WriteBatch) -> Self {
        let bytes = batch
            .ops
            .iter()
            .map(|op| op.key.len() + op.value.as_ref().map_or(0, Vec::len))
            .sum();
        let mut tables: Vec<Table> = Vec::new();
        let written = batch
            .ops
            .iter()
            .map(|op| &op.table)
            .chain(batch.removed_ranges.iter().map(|r| &r.table));
        for table in written {
            if tables.last() != Some(table) && !tables.contains(table) {
                tables.push(table.clone());
            }
        }
        Self {
            seq,
            batch,
            bytes,
            tables,
            index: OnceLock::new(),
        }
    }

    fn touches(&self, table: &Table) -> bool {
        self.tables.contains(table)
    }

    /// What this batch leaves at `key`: `Some(Some(v))` written,
    /// `Some(None)` deleted (or inside a removed range), `None` untouched.
    fn lookup(&self, table: &Table, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if !self.touches(table) {
            return None;
        }
        let index = self.index.get_or_init(|| {
            let mut index = FastMap::with_capacity_and_hasher(self.batch.ops.len(), Default::default());
            for (i, op) in self.batch.ops.iter().enumerate() {
                index.insert(key_hash(&op.table, &op.key), i);
            }
            index
        });
        let is_it = |op: &WriteOp| op.table == *table && op.key == key;
        if let Some(&i) = index.get(&key_hash(table, key)) {
            let op = &self.batch.ops[i];
            if is_it(op) {
                return Some(op.value.clone());
            }
            // Another key with the same hash: look the slow way.
            if let Some(op) = self.batch.ops.iter().rev().find(|op| is_it(op)) {
                return Some(op.value.clone());
            }
        }
        let removed = self.batch.removed_ranges.iter().any(|r| {
            r.table == *table && r.from.as_slice() <= key && key < r.to.as_slice()
        });
        removed.then_some(None)
    }

    /// Whether a range removal of this batch on `table` overlaps
    /// `from..to`.
    fn removes_within(&self, table: &Table, from: &[u8], to: Option<&[u8]>) -> bool {
        self.batch.removed_ranges.iter().any(|r| {
            r.table == *table && r.to.as_slice() > from && to.is_none_or(|to| r.from.as_slice() < to)
        })
    }
}

fn in_bounds(key: &[u8], from: &[u8], to: Option<&[u8]>) -> bool {
    key >= from && to.is_none_or(|to| key < to)
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CommitPipeline {
    /// A pipeline in front of `store`, with its committer thread.
    pub(crate) fn new(store: Arc<dyn Store>) -> std::io::Result<Self> {
        let (durable, _) = watch::channel(Durable::default());
        let shared = Arc::new(Shared {
            store,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            durable,
            read_waits: AtomicU64::new(0),
        });
        let for_thread = shared.clone();
        let committer = std::thread::Builder::new()
            .name("flow-committer".into())
            .spawn(move || commit_loop(&for_thread))?;
        Ok(Self {
            shared,
            committer: Some(committer),
        })
    }

    /// Follows what is durable (for the event loop).
    pub(crate) fn durable(&self) -> watch::Receiver<Durable> {
        self.shared.durable.subscribe()
    }

    /// From now on, commits queue and return at once (`true`) or return
    /// only once durable (`false`, the default).
    pub(crate) fn overlap(&self, on: bool) {
        lock(&self.shared).overlap = on;
    }

    /// The sequence number of the last batch committed or queued: a batch
    /// stepped now is durable once the durable sequence reaches it.
    pub(crate) fn last_seq(&self) -> u64 {
        lock(&self.shared).last_seq
    }

    /// Whether nothing is queued or being written.
    pub(crate) fn is_idle(&self) -> bool {
        lock(&self.shared).queue.is_empty()
    }

    /// Whether another batch may queue without waiting.
    pub(crate) fn has_room(&self) -> bool {
        let st = lock(&self.shared);
        st.queue.len() < MAX_QUEUED_BATCHES && st.queued_bytes < MAX_QUEUED_BYTES
    }

    /// Reads that waited for the committer so far.
    pub(crate) fn read_waits(&self) -> u64 {
        self.shared.read_waits.load(Ordering::Relaxed)
    }

    /// Waits (blocking) until no queued batch satisfies `busy`; counts the
    /// wait. Errors once the pipeline has failed.
    fn wait_until_clear(&self, busy: impl Fn(&Queued) -> bool) -> Result<(), StoreError> {
        let mut st = lock(&self.shared);
        let mut counted = false;
        loop {
            if let Some(why) = &st.failed {
                return Err(failed_error(why));
            }
            if !st.queue.iter().any(|q| busy(q)) {
                return Ok(());
            }
            if !counted {
                self.shared.read_waits.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The queued batches that write `table`, oldest first.
    fn queued_for(&self, table: &Table) -> Result<Vec<Arc<Queued>>, StoreError> {
        let st = lock(&self.shared);
        if let Some(why) = &st.failed {
            return Err(failed_error(why));
        }
        Ok(st.queue.iter().filter(|q| q.touches(table)).cloned().collect())
    }
}

fn failed_error(why: &str) -> StoreError {
    StoreError(format!(
        "an earlier commit failed, so nothing more is written: {why}"
    ))
}

impl Drop for CommitPipeline {
    fn drop(&mut self) {
        lock(&self.shared).closing = true;
        self.shared.changed.notify_all();
        if let Some(committer) = self.committer.take() {
            // The committer writes what is still queued, then ends; joined
            // so that the store is closed when the node is.
            let _ = committer.join();
        }
    }
}

/// The committer thread: writes everything queued as one group, again and
/// again, until the pipeline closes (with nothing queued) or a commit
/// fails.
fn commit_loop(shared: &Shared) {
    loop {
        let group: Vec<Arc<Queued>> = {
            let mut st = lock(shared);
            while st.queue.is_empty() && !st.closing {
                st = shared
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if st.queue.is_empty() || st.failed.is_some() {
                return;
            }
            st.writing = st.queue.len();
            st.queue.iter().cloned().collect()
        };
        let batches: Vec<&WriteBatch> = group.iter().map(|q| &q.batch).collect();
        let result = shared.store.commit_group(&batches);
        let mut st = lock(shared);
        st.writing = 0;
        match result {
            Ok(()) => {
                for q in st.queue.drain(..group.len()).collect::<Vec<_>>() {
                    st.queued_bytes -= q.bytes;
                }
                st.durable_seq = group.last().map_or(st.durable_seq, |q| q.seq);
            }
            Err(e) => {
                tracing::error!(error = %e, batches = group.len(), "a background commit failed; the node writes nothing more");
                st.failed = Some(e.0.into());
                st.queue.clear();
                st.queued_bytes = 0;
            }
        }
        let stop = st.failed.is_some();
        publish(shared, &st);
        drop(st);
        shared.changed.notify_all();
        if stop {
            return;
        }
    }
}

fn publish(shared: &Shared, st: &State) {
    shared.durable.send_replace(Durable {
        seq: st.durable_seq,
        failed: st.failed.clone(),
    });
}

impl Store for CommitPipeline {
    fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        {
            let st = lock(&self.shared);
            if let Some(why) = &st.failed {
                return Err(failed_error(why));
            }
            for q in st.queue.iter().rev() {
                if let Some(found) = q.lookup(table, key) {
                    return Ok(found);
                }
            }
        }
        self.shared.store.get(table, key)
    }

    fn range(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let mut queued = self.queued_for(table)?;
        if queued.iter().any(|q| q.removes_within(table, from, to)) {
            // A removed range can hide any number of stored entries: read
            // once that batch is written.
            self.wait_until_clear(|q| q.removes_within(table, from, to))?;
            queued = self.queued_for(table)?;
        }
        if queued.is_empty() {
            return self.shared.store.range(table, from, to, limit);
        }
        // Each queued delete hides at most one stored entry: read that many
        // more, then overlay the queued writes, oldest batch first.
        let ops = || {
            queued.iter().flat_map(|q| {
                q.batch
                    .ops
                    .iter()
                    .filter(|op| op.table == *table && in_bounds(&op.key, from, to))
            })
        };
        let deletes = ops().filter(|op| op.value.is_none()).count();
        let store_limit = limit.saturating_add(deletes);
        let stored = self.shared.store.range(table, from, to, store_limit)?;
        // If the store had more, keys past its last one are unknown here.
        let last = (stored.len() == store_limit)
            .then(|| stored.last().map(|(k, _)| k.clone()))
            .flatten();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        for op in ops() {
            if last.as_ref().is_some_and(|last| op.key > *last) {
                continue;
            }
            match &op.value {
                Some(v) => {
                    merged.insert(op.key.clone(), v.clone());
                }
                None => {
                    merged.remove(&op.key);
                }
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        self.wait_until_clear(|q| q.touches(table))?;
        self.shared.store.len(table)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let shared = &*self.shared;
        let mut st = lock(shared);
        if let Some(why) = &st.failed {
            return Err(failed_error(why));
        }
        if !st.overlap && st.queue.is_empty() {
            // Nothing ahead of it: write it here, as without a pipeline.
            st.last_seq += 1;
            let seq = st.last_seq;
            drop(st);
            let result = shared.store.commit(batch);
            let mut st = lock(shared);
            match &result {
                Ok(()) => st.durable_seq = seq,
                Err(e) => st.failed = Some(e.0.as_str().into()),
            }
            publish(shared, &st);
            return result;
        }
        while st.overlap
            && (st.queue.len() >= MAX_QUEUED_BATCHES || st.queued_bytes >= MAX_QUEUED_BYTES)
            && st.failed.is_none()
        {
            st = shared.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(why) = &st.failed {
            return Err(failed_error(why));
        }
        st.last_seq += 1;
        let queued = Queued::new(st.last_seq, batch);
        let seq = queued.seq;
        st.queued_bytes += queued.bytes;
        st.queue.push_back(Arc::new(queued));
        let overlap = st.overlap;
        shared.changed.notify_all();
        if overlap {
            return Ok(());
        }
        // Outside an overlap a commit returns once durable.
        while st.durable_seq < seq {
            if let Some(why) = &st.failed {
                return Err(failed_error(why));
            }
            st = shared.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }
}
