//! [`TimedStore`]: a [`Store`] that forwards to another and counts the work
//! done in it (reads, commits, bytes, time), so a benchmark can split a
//! node's time into storage and the rest without a profiler.

use super::{Entries, Store, StoreError, Table, WriteBatch};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What [`TimedStore`]s counted (a snapshot of [`StorageCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Point and range reads.
    pub reads: u64,
    /// Time spent in them.
    pub read_nanos: u64,
    /// Commits (one per group commit that wrote anything).
    pub commits: u64,
    /// Time spent committing, fsync included.
    pub commit_nanos: u64,
    /// Key/value writes and deletes in those commits.
    pub ops: u64,
    /// Bytes of keys and values written.
    pub bytes: u64,
}

impl StorageStats {
    /// The work done between `earlier` and `self`.
    pub fn since(&self, earlier: &StorageStats) -> StorageStats {
        StorageStats {
            reads: self.reads - earlier.reads,
            read_nanos: self.read_nanos - earlier.read_nanos,
            commits: self.commits - earlier.commits,
            commit_nanos: self.commit_nanos - earlier.commit_nanos,
            ops: self.ops - earlier.ops,
            bytes: self.bytes - earlier.bytes,
        }
    }
}

/// Counters one or more [`TimedStore`]s add to (share one `Arc` to count
/// several nodes together). Relaxed atomics: ~1 ns against reads of ~1 µs
/// and commits of ~100 µs.
#[derive(Debug, Default)]
pub struct StorageCounters {
    reads: AtomicU64,
    read_nanos: AtomicU64,
    commits: AtomicU64,
    commit_nanos: AtomicU64,
    ops: AtomicU64,
    bytes: AtomicU64,
}

impl StorageCounters {
    /// The counts so far.
    pub fn snapshot(&self) -> StorageStats {
        StorageStats {
            reads: self.reads.load(Ordering::Relaxed),
            read_nanos: self.read_nanos.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            commit_nanos: self.commit_nanos.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn read_done(&self, started: Instant) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_nanos
            .fetch_add(nanos_since(started), Ordering::Relaxed);
    }
}

fn nanos_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A [`Store`] that forwards everything to `inner` and counts it in
/// `counters`.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    counters: Arc<StorageCounters>,
}

impl TimedStore {
    /// Wraps `inner`, counting into `counters`.
    pub fn new(inner: Arc<dyn Store>, counters: Arc<StorageCounters>) -> Self {
        Self { inner, counters }
    }
}

/// Ops and bytes of keys and values a batch writes.
fn size(batch: &WriteBatch) -> (u64, u64) {
    let bytes: usize = batch
        .ops
        .iter()
        .map(|op| op.key.len() + op.value.as_ref().map_or(0, Vec::len))
        .sum();
    (batch.ops.len() as u64, bytes as u64)
}

impl TimedStore {
    /// Counts one commit (one transaction) of `ops` writes.
    fn committed(&self, started: Instant, ops: u64, bytes: u64) {
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.commit_nanos
            .fetch_add(nanos_since(started), Ordering::Relaxed);
        c.ops.fetch_add(ops, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Store for TimedStore {
    fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let started = Instant::now();
        let r = self.inner.get(table, key);
        self.counters.read_done(started);
        r
    }

    fn range(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let started = Instant::now();
        let r = self.inner.range(table, from, to, limit);
        self.counters.read_done(started);
        r
    }

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        self.inner.len(table)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let (ops, bytes) = size(&batch);
        let started = Instant::now();
        let r = self.inner.commit(batch);
        self.committed(started, ops, bytes);
        r
    }

    fn commit_group(&self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        let (ops, bytes) = batches
            .iter()
            .map(|b| size(b))
            .fold((0, 0), |(o, b), (o2, b2)| (o + o2, b + b2));
        let started = Instant::now();
        let r = self.inner.commit_group(batches);
        self.committed(started, ops, bytes);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RedbOptions, RedbStore, SharedMemory};

    #[test]
    fn counts_reads_commits_and_bytes_and_forwards_them() {
        let inner: Arc<dyn Store> = Arc::new(
            RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default()).expect("open"),
        );
        let counters = Arc::new(StorageCounters::default());
        let store = TimedStore::new(inner.clone(), counters.clone());
        let before = counters.snapshot();
        let mut w = WriteBatch::default();
        w.put(Table::META, b"k".to_vec(), b"value".to_vec());
        w.delete(Table::META, b"gone".to_vec());
        store.commit(w).expect("commit");
        assert_eq!(
            store.get(&Table::META, b"k").expect("get"),
            Some(b"value".to_vec())
        );
        assert_eq!(
            inner.get(&Table::META, b"k").expect("get"),
            Some(b"value".to_vec())
        );
        store.range(&Table::META, &[], None, 10).expect("range");
        let done = counters.snapshot().since(&before);
        assert_eq!(
            (done.commits, done.ops, done.bytes, done.reads),
            (1, 2, 10, 2)
        );
    }
}
