//! [`HookedStore`]: a [`Store`] that forwards every call to another one and
//! asks a hook before each commit, for fault tests of one's own: a disk
//! that fails on demand, a commit held until the test lets it through, a
//! failure only for batches that write some table.
//!
//! Why a hook and not a fault model: what a test needs to do at a commit
//! varies (count, fail, block, look at the batches), while the forwarding
//! never does. The hook sees the batches of one transaction; reads go
//! straight through.

use crate::store::{Entries, Store, StoreError, Table, WriteBatch};
use std::sync::Arc;

/// What a [`HookedStore`] calls before each transaction, with the batches
/// it would write (one for [`Store::commit`], the group for
/// [`Store::commit_group`]). `Err` fails the commit without writing
/// anything; blocking holds it.
pub type CommitHook = dyn Fn(&[&WriteBatch]) -> Result<(), StoreError> + Send + Sync;

/// A [`Store`] that forwards every call to another one and runs a hook
/// before each transaction, for fault tests of one's own: a disk that
/// fails on demand, a commit held until the test lets it through, a
/// failure only for batches that write some table. Reads go straight
/// through.
///
/// ```
/// use flow_runtime::storage::{RedbOptions, RedbStore, SharedMemory, Store, StoreError, Table, WriteBatch};
/// use flow_runtime::testing::HookedStore;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// let inner = RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default()).unwrap();
/// let disk_full = Arc::new(AtomicBool::new(false));
/// let full = disk_full.clone();
/// let store = HookedStore::new(Arc::new(inner), move |_| {
///     if full.load(Ordering::SeqCst) {
///         return Err(StoreError("injected: the disk is full".into()));
///     }
///     Ok(())
/// });
/// let mut w = WriteBatch::default();
/// w.put(Table::META, b"k".to_vec(), b"v".to_vec());
/// disk_full.store(true, Ordering::SeqCst);
/// assert!(store.commit(w.clone()).is_err());
/// assert_eq!(store.get(&Table::META, b"k").unwrap(), None);
/// disk_full.store(false, Ordering::SeqCst);
/// store.commit(w).unwrap();
/// assert_eq!(store.get(&Table::META, b"k").unwrap(), Some(b"v".to_vec()));
/// ```
pub struct HookedStore {
    inner: Arc<dyn Store>,
    before_commit: Box<CommitHook>,
}

impl HookedStore {
    /// Forwards to `inner`, calling `before_commit` before each of its
    /// transactions.
    pub fn new(
        inner: Arc<dyn Store>,
        before_commit: impl Fn(&[&WriteBatch]) -> Result<(), StoreError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            before_commit: Box::new(before_commit),
        }
    }

    /// The store this one forwards to.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

impl std::fmt::Debug for HookedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore").finish_non_exhaustive()
    }
}

impl Store for HookedStore {
    fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn range(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.inner.range(table, from, to, limit)
    }

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        self.inner.len(table)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        (self.before_commit)(&[&batch])?;
        self.inner.commit(batch)
    }

    /// One hook call for the whole group: it is one transaction.
    fn commit_group(&self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        (self.before_commit)(batches)?;
        self.inner.commit_group(batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RedbOptions, RedbStore, SharedMemory};
    use std::sync::Mutex;

    fn put(key: &[u8]) -> WriteBatch {
        let mut w = WriteBatch::default();
        w.put(Table::META, key.to_vec(), b"v".to_vec());
        w
    }

    #[test]
    fn the_hook_sees_each_transaction_and_a_refusal_writes_nothing() {
        let inner: Arc<dyn Store> = Arc::new(
            RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default()).expect("open"),
        );
        let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
        let log = seen.clone();
        let store = HookedStore::new(inner.clone(), move |batches| {
            log.lock().unwrap().push(batches.len());
            if batches
                .iter()
                .any(|b| b.ops.iter().any(|op| op.key == b"refused"))
            {
                return Err(StoreError("refused (test)".into()));
            }
            Ok(())
        });
        store.commit(put(b"a")).expect("commit");
        let (b, c) = (put(b"b"), put(b"c"));
        store.commit_group(&[&b, &c]).expect("group");
        assert!(store.commit(put(b"refused")).is_err());
        let refused = put(b"refused");
        assert!(store.commit_group(&[&put(b"d"), &refused]).is_err());
        assert_eq!(*seen.lock().unwrap(), [1, 2, 1, 2]);
        // Reads go through, and see only what the hook let through.
        assert_eq!(store.len(&Table::META).unwrap(), 3);
        assert_eq!(inner.get(&Table::META, b"d").unwrap(), None);
        assert_eq!(store.get(&Table::META, b"c").unwrap(), Some(b"v".to_vec()));
        let keys: Vec<Vec<u8>> = store
            .range(&Table::META, b"b", None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, [b"b".to_vec(), b"c".to_vec()]);
        assert!(Arc::ptr_eq(store.inner(), &inner));
    }
}
