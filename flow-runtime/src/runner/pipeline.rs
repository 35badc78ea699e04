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
//!
//! The pipeline records the node's transaction metrics
//! ([`TransactionMetrics`]: `flow_commits_total`, `flow_commit_seconds`)
//! where each transaction is written (the committer thread, or the
//! caller's for an inline commit), so a transaction's latency is its write
//! and fsync, and the count is of fsyncs, not of the batches queued.

use crate::fast_hash::FastMap;
use crate::node::TransactionMetrics;
use crate::store::{Entries, Store, StoreError, Table, WriteBatch, WriteOp};
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;
use tokio::sync::watch;

/// The most batches queued or being written at once. The bytes bound
/// below is what limits memory; this one only caps the queue's length.
/// At 8, with 1,000 flows in flight, the driver stopped taking frames
/// while the committer wrote (the batches being written count too):
/// 64 gave 6-9% more round trips/s (`tcp_ping`, quiet A/B runs).
pub(crate) const MAX_QUEUED_BATCHES: usize = 64;
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
    counters: Arc<PipelineCounters>,
    metrics: TransactionMetrics,
}

impl Shared {
    /// Counts a transaction that began at `started`, if it succeeded.
    fn written(&self, started: Instant, result: &Result<(), StoreError>) {
        if result.is_ok() {
            self.metrics.record(started);
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a pipeline counted, shared with the node's handles.
#[derive(Debug, Default)]
pub(crate) struct PipelineCounters {
    /// Durable write transactions made (inline commits and groups): each
    /// one fsync.
    pub(crate) transactions: AtomicU64,
    /// Reads that had to wait for the committer (counts, and ranges over
    /// a queued range removal). The message path makes none; a test
    /// checks that.
    pub(crate) read_waits: AtomicU64,
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
            let mut index =
                FastMap::with_capacity_and_hasher(self.batch.ops.len(), Default::default());
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
        let removed = self
            .batch
            .removed_ranges
            .iter()
            .any(|r| r.table == *table && r.from.as_slice() <= key && key < r.to.as_slice());
        removed.then_some(None)
    }

    /// Whether a range removal of this batch on `table` overlaps
    /// `from..to`.
    fn removes_within(&self, table: &Table, from: &[u8], to: Option<&[u8]>) -> bool {
        self.batch.removed_ranges.iter().any(|r| {
            r.table == *table
                && r.to.as_slice() > from
                && to.is_none_or(|to| r.from.as_slice() < to)
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
    /// A pipeline in front of `store`, with its committer thread; each
    /// transaction is recorded in `metrics`.
    pub(crate) fn new(store: Arc<dyn Store>, metrics: TransactionMetrics) -> std::io::Result<Self> {
        let (durable, _) = watch::channel(Durable::default());
        let shared = Arc::new(Shared {
            store,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            durable,
            counters: Arc::default(),
            metrics,
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

    /// What the pipeline counts, for the node's handles.
    pub(crate) fn counters(&self) -> Arc<PipelineCounters> {
        self.shared.counters.clone()
    }

    /// Reads that waited for the committer so far.
    #[cfg(test)]
    fn read_waits(&self) -> u64 {
        self.shared.counters.read_waits.load(Ordering::Relaxed)
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
                self.shared
                    .counters
                    .read_waits
                    .fetch_add(1, Ordering::Relaxed);
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
        Ok(st
            .queue
            .iter()
            .filter(|q| q.touches(table))
            .cloned()
            .collect())
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
        let started = Instant::now();
        let result = shared.store.commit_group(&batches);
        shared.written(started, &result);
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
        // The last write per key, in key order.
        let writes: BTreeMap<&[u8], Option<&[u8]>> = ops()
            .map(|op| (op.key.as_slice(), op.value.as_deref()))
            .collect();
        Ok(crate::store::lay_over(
            stored,
            store_limit,
            limit,
            writes.into_iter(),
        ))
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
            let started = Instant::now();
            let result = shared.store.commit(batch);
            shared.written(started, &result);
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
            st = shared
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
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
            st = shared
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline's reads and failures against a store whose commits the
    //! test holds, and a node on it: nothing is released before durable,
    //! and a failed background commit stops the node with nothing of it
    //! (or of later batches) sent.
    use super::*;
    use crate::prelude::*;
    use crate::runner::admin::NodeMetrics;
    use crate::runner::{Node, NodeBuilder};
    use crate::store::{RedbOptions, RedbStore, SharedMemory};
    use crate::testing::HookedStore;
    use crate::testing::ping_pong::{expected_total, ping, pong};
    use crate::transport::{MemoryNetwork, MemoryTransport, SendError, Transport, TransportEvent};
    use std::time::Duration;

    /// Holds commits until the test lets them through; can make them fail.
    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct GateState {
        /// Commits let through in all; `None`: no limit.
        passes: Option<u64>,
        passed: u64,
        /// Commits waiting at the gate now.
        waiting: u64,
        fail: bool,
    }

    impl Gate {
        fn lock(&self) -> MutexGuard<'_, GateState> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn pass(&self) -> Result<(), StoreError> {
            let mut st = self.lock();
            st.waiting += 1;
            self.changed.notify_all();
            while st.passes.is_some_and(|n| st.passed >= n) {
                st = self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            st.waiting -= 1;
            st.passed += 1;
            if st.fail {
                return Err(StoreError("the disk is gone (test)".into()));
            }
            Ok(())
        }

        /// Lets `more` commits through, then holds the next ones.
        fn hold_after(&self, more: u64) {
            let mut st = self.lock();
            st.passes = Some(st.passed + more);
        }

        /// Lets every commit through, failing them if `fail`.
        fn open(&self, fail: bool) {
            let mut st = self.lock();
            st.passes = None;
            st.fail = fail;
            self.changed.notify_all();
        }

        fn waiting(&self) -> u64 {
            self.lock().waiting
        }
    }

    /// Opens the gate when dropped: a failing test must not leave the
    /// committer (which a node's drop waits for) held forever.
    struct OpenOnDrop(Arc<Gate>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open(true);
        }
    }

    /// An in-memory redb store on `memory` whose commits pass `gate`.
    fn gated_store(memory: &SharedMemory, gate: Arc<Gate>) -> Arc<HookedStore> {
        let inner = RedbStore::open_in_memory(memory, RedbOptions::default()).expect("open");
        Arc::new(HookedStore::new(Arc::new(inner), move |_| gate.pass()))
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(20), "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn t(name: &'static str) -> Table {
        Table::service(name)
    }

    fn put(w: &mut WriteBatch, table: &Table, key: &[u8], value: &[u8]) {
        w.put(table.clone(), key.to_vec(), value.to_vec());
    }

    /// A pipeline over a gated store holding keys a..e in `kv` and timers
    /// 1..=4 in `timers`, committed.
    fn seeded() -> (CommitPipeline, Arc<Gate>, Arc<HookedStore>) {
        seeded_with(TransactionMetrics::default())
    }

    /// [`seeded`], recording its transactions in `metrics`.
    fn seeded_with(metrics: TransactionMetrics) -> (CommitPipeline, Arc<Gate>, Arc<HookedStore>) {
        let gate = Arc::new(Gate::default());
        let store = gated_store(&SharedMemory::new(), gate.clone());
        let pipeline = CommitPipeline::new(store.clone(), metrics).expect("pipeline");
        let mut w = WriteBatch::default();
        for k in [b"a", b"b", b"c", b"d", b"e"] {
            put(&mut w, &t("kv"), k, b"old");
        }
        for k in 1u8..=4 {
            put(&mut w, &t("timers"), &[k], b"run");
        }
        pipeline.commit(w).expect("inline commit");
        (pipeline, gate, store)
    }

    #[test]
    fn reads_see_queued_writes_deletes_and_range_removals() {
        let (pipeline, gate, store) = seeded();
        gate.hold_after(0);
        pipeline.overlap(true);
        let mut w = WriteBatch::default();
        put(&mut w, &t("kv"), b"a", b"new");
        w.delete(t("kv"), b"b".to_vec());
        put(&mut w, &t("kv"), b"bb", b"added");
        w.remove_range(t("timers"), vec![1], vec![3]);
        pipeline.commit(w).expect("queued");
        let mut w = WriteBatch::default();
        w.delete(t("kv"), b"c".to_vec());
        put(&mut w, &t("kv"), b"b", b"again");
        w.delete(t("kv"), b"b".to_vec());
        pipeline.commit(w).expect("queued");
        wait_for("the committer reaches the gate", || gate.waiting() == 1);
        // Nothing is in the store yet...
        assert_eq!(store.get(&t("kv"), b"a").unwrap(), Some(b"old".to_vec()));
        // ...but reads through the pipeline see every queued batch.
        assert_eq!(pipeline.get(&t("kv"), b"a").unwrap(), Some(b"new".to_vec()));
        assert_eq!(pipeline.get(&t("kv"), b"b").unwrap(), None);
        assert_eq!(pipeline.get(&t("kv"), b"c").unwrap(), None);
        assert_eq!(pipeline.get(&t("kv"), b"d").unwrap(), Some(b"old".to_vec()));
        assert_eq!(pipeline.get(&t("timers"), &[1]).unwrap(), None);
        assert_eq!(pipeline.get(&t("timers"), &[2]).unwrap(), None);
        assert_eq!(
            pipeline.get(&t("timers"), &[3]).unwrap(),
            Some(b"run".to_vec())
        );
        // A range of a table with queued puts and deletes (no removed
        // range) is merged without waiting, and honours its limit.
        let keys = |entries: Entries| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let all = pipeline.range(&t("kv"), b"", None, usize::MAX).unwrap();
        assert_eq!(keys(all.clone()), [&b"a"[..], b"bb", b"d", b"e"]);
        assert_eq!(all[0].1, b"new");
        assert_eq!(
            keys(pipeline.range(&t("kv"), b"", None, 2).unwrap()),
            [&b"a"[..], b"bb"]
        );
        assert_eq!(
            keys(pipeline.range(&t("kv"), b"b", Some(b"e"), 10).unwrap()),
            [&b"bb"[..], b"d"]
        );
        // Past the removed range: no wait either.
        assert_eq!(
            keys(pipeline.range(&t("timers"), &[3], None, 10).unwrap()),
            [[3], [4]]
        );
        assert_eq!(pipeline.read_waits(), 0);
        gate.open(false);
        wait_for("the batches are durable", || pipeline.is_idle());
        assert_eq!(store.get(&t("kv"), b"a").unwrap(), Some(b"new".to_vec()));
        assert_eq!(store.get(&t("kv"), b"b").unwrap(), None);
        assert_eq!(
            keys(store.range(&t("timers"), &[], None, 10).unwrap()),
            [[3], [4]]
        );
    }

    #[test]
    fn a_count_and_a_range_over_a_removed_range_wait_until_written() {
        let (pipeline, gate, _store) = seeded();
        let pipeline = Arc::new(pipeline);
        gate.hold_after(0);
        pipeline.overlap(true);
        let mut w = WriteBatch::default();
        w.remove_range(t("timers"), vec![1], vec![3]);
        put(&mut w, &t("kv"), b"f", b"new");
        pipeline.commit(w).expect("queued");
        wait_for("the committer reaches the gate", || gate.waiting() == 1);
        let reader = |read: fn(&CommitPipeline) -> u64| {
            let pipeline = pipeline.clone();
            std::thread::spawn(move || read(&pipeline))
        };
        let count = reader(|p| p.len(&t("kv")).unwrap());
        wait_for("the count waits", || pipeline.read_waits() == 1);
        let timers = reader(|p| p.range(&t("timers"), &[], None, 10).unwrap().len() as u64);
        wait_for("the range waits", || pipeline.read_waits() == 2);
        // Both are blocked for as long as the commit is held.
        assert!(!count.is_finished() && !timers.is_finished());
        // A table no queued batch writes is read at once.
        assert_eq!(pipeline.len(&t("other")).unwrap(), 0);
        gate.open(false);
        assert_eq!(count.join().unwrap(), 6);
        assert_eq!(timers.join().unwrap(), 2);
    }

    #[test]
    fn a_failed_background_commit_refuses_every_later_batch_and_read() {
        let metrics = NodeMetrics::new();
        let (pipeline, gate, store) = seeded_with(metrics.transactions());
        let mut durable = pipeline.durable();
        gate.hold_after(0);
        pipeline.overlap(true);
        let mut w = WriteBatch::default();
        put(&mut w, &t("kv"), b"a", b"lost");
        pipeline.commit(w).expect("queued");
        wait_for("the committer reaches the gate", || gate.waiting() == 1);
        let mut w = WriteBatch::default();
        put(&mut w, &t("kv"), b"b", b"lost too");
        pipeline.commit(w).expect("queued behind");
        gate.open(true);
        wait_for("the failure is reported", || {
            durable.borrow_and_update().failed.is_some()
        });
        assert_eq!(
            durable.borrow().seq,
            1,
            "only the seeding commit is durable"
        );
        let mut w = WriteBatch::default();
        put(&mut w, &t("kv"), b"c", b"refused");
        assert!(pipeline.commit(w).is_err());
        assert!(pipeline.get(&t("kv"), b"a").is_err());
        assert!(pipeline.range(&t("kv"), b"", None, 1).is_err());
        gate.open(false);
        for k in [b"a", b"b", b"c"] {
            assert_eq!(store.get(&t("kv"), k).unwrap(), Some(b"old".to_vec()));
        }
        // The failed transaction is not counted as a durable one.
        let text = metrics.render();
        assert_eq!(metric(&text, "flow_commits_total"), 1, "{text}");
        assert_eq!(metric(&text, "flow_commit_seconds_count"), 1, "{text}");
    }

    #[test]
    fn batches_queued_together_are_written_in_one_commit() {
        let metrics = NodeMetrics::new();
        let (pipeline, gate, store) = seeded_with(metrics.transactions());
        gate.hold_after(0);
        pipeline.overlap(true);
        for i in 0..5u8 {
            let mut w = WriteBatch::default();
            put(&mut w, &t("kv"), b"a", &[i]);
            if i == 3 {
                w.remove_range(t("kv"), b"d".to_vec(), b"z".to_vec());
            }
            pipeline.commit(w).expect("queued");
            if i == 0 {
                wait_for("the first reaches the gate", || gate.waiting() == 1);
            }
        }
        gate.open(false);
        wait_for("durable", || pipeline.is_idle());
        // One commit for the first batch, one for the other four (after
        // the seeding one), and the metrics count those transactions.
        assert_eq!(gate.lock().passed, 1 + 2);
        let text = metrics.render();
        assert_eq!(metric(&text, "flow_commits_total"), 3, "{text}");
        assert_eq!(metric(&text, "flow_commit_seconds_count"), 3, "{text}");
        assert_eq!(store.get(&t("kv"), b"a").unwrap(), Some(vec![4]));
        assert_eq!(store.len(&t("kv")).unwrap(), 3);
    }

    /// A transport that counts the frames it takes.
    struct Counting {
        inner: MemoryTransport,
        sent: Arc<AtomicU64>,
    }

    impl Transport for Counting {
        fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError> {
            self.inner.try_send(to, frame)?;
            self.sent.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn disconnect(&self, peer: &PublicKey, reason: &str) {
            self.inner.disconnect(peer, reason);
        }
        fn peer_name(&self, peer: &PublicKey) -> String {
            self.inner.peer_name(peer)
        }
        fn endpoint(&self) -> String {
            self.inner.endpoint()
        }
        fn link_events(&self) -> tokio::sync::broadcast::Receiver<TransportEvent> {
            self.inner.link_events()
        }
        fn shutdown(&self) -> impl Future<Output = ()> + Send {
            self.inner.shutdown()
        }
    }

    struct Alice {
        node: Node<Counting>,
        sent: Arc<AtomicU64>,
    }

    /// Alice on `memory` behind `gate`, pipelined, every batch of frames
    /// handed to the committer (never committed inline).
    async fn alice(net: &MemoryNetwork, memory: &SharedMemory, gate: Arc<Gate>) -> Alice {
        let party = Party::new("Alice", PublicKey([1; 32]));
        let (transport, incoming) = net.join(&party);
        let sent = Arc::new(AtomicU64::new(0));
        let transport = Counting {
            inner: transport,
            sent: sent.clone(),
        };
        let mut b = NodeBuilder::with_transport(party, "alice.redb", transport, incoming);
        b.custom_store = Some(gated_store(memory, gate));
        b.pipeline_commits(true);
        b.commit_inline_when_idle(false);
        b.redelivery_interval(Duration::from_secs(3600));
        b.flow::<ping::Flow>();
        b.responder::<ping::Flow>(pong);
        Alice {
            node: b.start().await.expect("alice starts"),
            sent,
        }
    }

    /// Bob on a file in `dir`, with a commit pipeline or without.
    async fn bob(
        net: &MemoryNetwork,
        dir: &std::path::Path,
        pipelined: bool,
    ) -> Node<MemoryTransport> {
        let party = Party::new("Bob", PublicKey([2; 32]));
        let (transport, incoming) = net.join(&party);
        let mut b = NodeBuilder::with_transport(party, dir.join("bob.redb"), transport, incoming);
        b.pipeline_commits(pipelined);
        b.redelivery_interval(Duration::from_millis(100));
        b.flow::<ping::Flow>();
        b.responder::<ping::Flow>(pong);
        b.start().await.expect("bob starts")
    }

    /// Alice (pipelined, her commits behind `gate`) and Bob on one memory
    /// network: the set-up of every node test here.
    struct Pair {
        /// Declared first to drop first: a failing test must not leave
        /// Alice's committer held while her node is dropped.
        _open: OpenOnDrop,
        gate: Arc<Gate>,
        net: MemoryNetwork,
        /// Alice's database, to restart her on.
        memory: SharedMemory,
        alice: Alice,
        bob: Node<MemoryTransport>,
        _dir: tempfile::TempDir,
    }

    async fn pair(bob_pipelined: bool) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let net = MemoryNetwork::new();
        let memory = SharedMemory::new();
        let gate = Arc::new(Gate::default());
        let alice = alice(&net, &memory, gate.clone()).await;
        let bob = bob(&net, dir.path(), bob_pipelined).await;
        Pair {
            _open: OpenOnDrop(gate.clone()),
            gate,
            net,
            memory,
            alice,
            bob,
            _dir: dir,
        }
    }

    impl Pair {
        /// Checks that no read on either node's message path waited for
        /// its committer, and stops both nodes.
        async fn finish(self) {
            let pipelines = [&self.alice.node.pipeline, &self.bob.pipeline];
            for counters in pipelines.into_iter().flatten() {
                assert_eq!(
                    counters.read_waits.load(Ordering::Relaxed),
                    0,
                    "a read on the message path waited for the committer"
                );
            }
            self.alice.node.shutdown().await.unwrap();
            self.bob.shutdown().await.unwrap();
        }
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(20), "{what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The value of the unlabelled metric `name` in a Prometheus text
    /// exposition; 0 if it is not there.
    fn metric(text: &str, name: &str) -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    }

    /// A node's batches and transactions, as its core, its commit counts
    /// and its metrics say.
    #[derive(Debug)]
    struct Counts {
        /// [`NodeCore::commits`].
        batches: u64,
        /// What [`Node::commits`] reports.
        transactions: u64,
        /// `flow_batches_total`.
        batches_total: u64,
        /// `flow_commits_total`.
        commits_total: u64,
        /// `flow_commit_seconds_count`.
        commit_seconds_count: u64,
    }

    /// Reads [`Counts`] on `node`'s driver, once every queued batch is
    /// durable, so that they all speak of the same moment.
    async fn counts<T: Transport>(node: &Node<T>) -> Counts {
        let metrics = node.metrics().clone();
        let handle = node.clone();
        let counts = node.call(move |core, _| {
            let text = metrics.render();
            let counts = Counts {
                batches: core.commits(),
                transactions: handle.transactions_for(core.commits()),
                batches_total: metric(&text, "flow_batches_total"),
                commits_total: metric(&text, "flow_commits_total"),
                commit_seconds_count: metric(&text, "flow_commit_seconds_count"),
            };
            (counts, None)
        });
        counts.await.expect("the node answers")
    }

    impl Counts {
        /// The metrics agree with the counts: batches with the core's,
        /// transactions (and latency samples) with the node's.
        fn assert_consistent(&self) {
            assert!(self.batches > 0, "{self:?}");
            assert_eq!(self.batches_total, self.batches, "{self:?}");
            assert_eq!(self.commits_total, self.transactions, "{self:?}");
            assert_eq!(self.commit_seconds_count, self.transactions, "{self:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_leaves_the_node_before_its_batch_is_durable() {
        let p = pair(true).await;
        let (alice, bob, gate) = (&p.alice, &p.bob, &p.gate);
        // A first flow with every commit let through: the links are up and
        // every frame of it acknowledged.
        let warm_up = alice
            .node
            .start_flow(ping(bob.party().clone(), 2))
            .await
            .unwrap();
        assert_eq!(alice.node.result(&warm_up).await, Ok(expected_total(2)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The start, then the first step (it sends the initiation and ping
        // 0), commit; the
        // next commit (the step that takes the echo and finishes the flow)
        // is held.
        gate.hold_after(2);
        let before = alice.sent.load(Ordering::SeqCst);
        let handle = alice
            .node
            .start_flow(ping(bob.party().clone(), 1))
            .await
            .unwrap();
        eventually("the last step's commit reaches the gate", || {
            gate.waiting() == 1
        })
        .await;
        let mut result = Box::pin(alice.node.result(&handle));
        // Held: no waiter completes and no frame of that batch (the ack
        // of the echo, the session's end) is sent.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut result)
                .await
                .is_err(),
            "the result was released before its commit was durable"
        );
        assert_eq!(
            alice.sent.load(Ordering::SeqCst),
            before + 2,
            "only the session's initiation and ping 0 were sent"
        );
        gate.open(false);
        let outcome = tokio::time::timeout(Duration::from_secs(20), result)
            .await
            .expect("the result once durable");
        assert_eq!(outcome, Ok(expected_total(1)));
        eventually("the held batch's frames are sent", || {
            alice.sent.load(Ordering::SeqCst) > before + 2
        })
        .await;
        p.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_flows_through_two_pipelined_nodes_finish_and_no_read_waits() {
        let p = pair(true).await;
        let (alice, bob) = (&p.alice, &p.bob);
        let flows: Vec<(String, ping::Flow)> = (0..50)
            .map(|i| (format!("ping-{i}"), ping(bob.party().clone(), 5)))
            .collect();
        let handles = alice.node.start_flows_with_client_ids(flows).await.unwrap();
        for handle in &handles {
            let outcome = tokio::time::timeout(Duration::from_secs(30), alice.node.result(handle))
                .await
                .expect("the flow finishes");
            assert_eq!(outcome, Ok(expected_total(5)));
        }
        assert!(alice.node.pipeline.is_some() && bob.pipeline.is_some());
        let alice_counts = counts(&alice.node).await;
        alice_counts.assert_consistent();
        assert!(
            alice_counts.transactions <= alice_counts.batches,
            "{alice_counts:?}"
        );
        let bob_counts = counts(bob).await;
        bob_counts.assert_consistent();
        assert!(
            bob_counts.transactions <= bob_counts.batches,
            "{bob_counts:?}"
        );
        p.finish().await;
    }

    /// The commit metrics tell batches from durable transactions: behind a
    /// held commit, three batches queue on Alice and are written in two
    /// transactions, which is what `flow_commits_total` and the latency
    /// histogram count; Bob, without a pipeline, writes each batch in a
    /// transaction of its own and all his figures agree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_commit_metrics_count_durable_transactions_apart_from_batches() {
        let p = pair(false).await;
        assert!(p.bob.pipeline.is_none(), "Bob has no pipeline");
        let warm_up = p
            .bob
            .start_flow(ping(p.alice.node.party().clone(), 1))
            .await
            .unwrap();
        assert_eq!(p.bob.result(&warm_up).await, Ok(expected_total(1)));
        // Read without a command (one would wait for the held commit).
        let batches = || metric(&p.alice.node.metrics().render(), "flow_batches_total");
        p.gate.hold_after(0);
        let mut handles = Vec::new();
        for i in 0..3 {
            let before = batches();
            let flow = ping(p.alice.node.party().clone(), 1);
            handles.push(p.bob.start_flow(flow).await.unwrap());
            eventually("Alice commits a batch for the new flow", || {
                batches() > before
            })
            .await;
            if i == 0 {
                eventually("the committer holds it", || p.gate.waiting() == 1).await;
            }
        }
        p.gate.open(false);
        for handle in &handles {
            let outcome = tokio::time::timeout(Duration::from_secs(30), p.bob.result(handle))
                .await
                .expect("the flow finishes");
            assert_eq!(outcome, Ok(expected_total(1)));
        }
        let alice = counts(&p.alice.node).await;
        alice.assert_consistent();
        assert!(
            alice.transactions < alice.batches,
            "the two batches queued behind the held one took one transaction: {alice:?}"
        );
        let bob = counts(&p.bob).await;
        bob.assert_consistent();
        assert_eq!(bob.transactions, bob.batches, "{bob:?}");
        p.finish().await;
    }

    /// Bob answering Alice's pings with `inline_max_frames` set (`None`:
    /// the default), his store counting the commits of steps made on his
    /// committer thread and elsewhere (his driver) while the flows ran:
    /// `(on the committer, elsewhere)`.
    async fn bobs_commits_by_thread(inline_max_frames: Option<usize>) -> (u64, u64) {
        let net = MemoryNetwork::new();
        let alice = Party::new("Alice", PublicKey([1; 32]));
        let (transport, incoming) = net.join(&alice);
        let dir = tempfile::tempdir().unwrap();
        let mut b =
            NodeBuilder::with_transport(alice, dir.path().join("alice.redb"), transport, incoming);
        b.store_options(RedbOptions {
            durable: false,
            ..RedbOptions::default()
        });
        b.flow::<ping::Flow>();
        let alice = b.start().await.expect("alice starts");

        let counted = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let counting = counted.clone();
        let store = HookedStore::new(
            Arc::new(
                RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default()).unwrap(),
            ),
            move |batches| {
                // Steps (a received message moves its session), not the
                // deferred acks a redelivery tick commits on the driver.
                let steps = batches
                    .iter()
                    .any(|b| b.ops.iter().any(|op| op.table == Table::SESSIONS));
                let on_committer = std::thread::current().name() == Some("flow-committer");
                if steps {
                    counting[usize::from(!on_committer)].fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            },
        );
        let bob = Party::new("Bob", PublicKey([2; 32]));
        let (transport, incoming) = net.join(&bob);
        let mut b = NodeBuilder::with_transport(bob, "bob.redb", transport, incoming);
        b.custom_store = Some(Arc::new(store));
        b.pipeline_commits(true);
        b.redelivery_interval(Duration::from_secs(3600));
        if let Some(frames) = inline_max_frames {
            b.inline_commit_max_frames(frames);
        }
        b.responder::<ping::Flow>(pong);
        let bob = b.start().await.expect("bob starts");

        let before = [0, 1].map(|i| counted[i].load(Ordering::SeqCst));
        // One flow at a time: Bob's batches are a frame or two each.
        for _ in 0..3 {
            let flow = alice
                .start_flow(ping(bob.party().clone(), 4))
                .await
                .unwrap();
            assert_eq!(alice.result(&flow).await, Ok(expected_total(4)));
        }
        let after = [0, 1].map(|i| counted[i].load(Ordering::SeqCst));
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        (after[0] - before[0], after[1] - before[1])
    }

    /// By default an idle node commits a batch of a few frames on its
    /// driver (a lone flow's round trip saves the hand-off's thread
    /// wake-ups); with the bound at 0 every batch goes to the committer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_node_commits_small_batches_on_its_driver_unless_told_not_to() {
        let (committer, driver) = bobs_commits_by_thread(None).await;
        assert!(
            driver > 0,
            "no small batch was committed on the driver ({committer} on the committer)"
        );
        let (committer, driver) = bobs_commits_by_thread(Some(0)).await;
        assert_eq!(driver, 0, "a batch was committed on the driver");
        assert!(committer > 0, "Bob committed his steps");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_background_commit_stops_the_node_and_a_restart_finishes_the_flows_once() {
        let p = pair(true).await;
        let (alice_node, bob, gate) = (&p.alice, &p.bob, &p.gate);
        // Bob pings Alice; every commit of Alice's from now on is held.
        gate.hold_after(0);
        let mut handles = Vec::new();
        let first = bob
            .start_flow(ping(alice_node.node.party().clone(), 3))
            .await
            .unwrap();
        handles.push(first);
        eventually("Alice's first batch reaches the gate", || {
            gate.waiting() == 1
        })
        .await;
        // More frames arrive; Alice steps them behind the held commit.
        for _ in 0..3 {
            handles.push(
                bob.start_flow(ping(alice_node.node.party().clone(), 3))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = alice_node.sent.load(Ordering::SeqCst);
        assert_eq!(sent, 0, "nothing was released while the commit was held");
        gate.open(true);
        let stopped = tokio::time::timeout(Duration::from_secs(20), alice_node.node.shutdown())
            .await
            .expect("the driver stops");
        let error = stopped.expect_err("the driver stops with the commit's error");
        assert!(error.to_string().contains("the disk is gone"), "{error}");
        assert_eq!(
            alice_node.sent.load(Ordering::SeqCst),
            0,
            "no frame of the failed batch or of a later one was sent"
        );
        // A restart on the same database: every flow finishes, each
        // round exactly once (the sum says so).
        let alice_again = alice(&p.net, &p.memory, Arc::new(Gate::default())).await;
        for handle in &handles {
            let outcome = tokio::time::timeout(Duration::from_secs(30), bob.result(handle))
                .await
                .expect("the flow finishes after the restart");
            assert_eq!(outcome, Ok(expected_total(3)));
        }
        alice_again.node.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
    }
}
