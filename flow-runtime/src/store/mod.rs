//! The checkpoint store: where a node keeps everything that must survive a
//! crash (checkpoints, sessions, the outbox, timers, results, the hospital,
//! and services' tables).
//!
//! The node talks to storage only through the small [`Store`] trait: keyed
//! byte tables, point and range reads, and ONE atomic [`Store::commit`] of a
//! whole [`WriteBatch`]. That is all the step logic needs (a batch of steps
//! commits together or not at all), and it is small enough to implement on
//! another database without touching the node: [`RedbStore`] (embedded,
//! the default) and, with the `postgres` feature, `PostgresStore` (a
//! PostgreSQL server). No redb type appears outside the `redb_store`
//! module, and no PostgreSQL type outside `postgres_store`.

mod journal;
#[cfg(feature = "postgres")]
mod postgres_store;
mod redb_store;
mod timed;

#[cfg(feature = "postgres")]
pub(crate) use postgres_store::{ConsumedFrames, Fence, quote_ident};
#[cfg(feature = "postgres")]
pub use postgres_store::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
pub use redb_store::{RedbOptions, RedbStore, SharedMemory};
pub use timed::{StorageCounters, StorageStats, TimedStore};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{PoisonError, RwLock};

/// The name of one keyed table in a [`Store`]. Keys and values are opaque
/// bytes; keys sort lexicographically (the node writes numbers big-endian so
/// that byte order is numeric order).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Table(Cow<'static, str>);

impl Table {
    /// Suspended flows by run id.
    pub const CHECKPOINTS: Table = Table(Cow::Borrowed("checkpoints"));
    /// Session state (sequence numbers, buffered messages) by session key;
    /// also the session → run index.
    pub const SESSIONS: Table = Table(Cow::Borrowed("sessions"));
    /// Session keys of ended sessions, so a late duplicate cannot restart
    /// one; the value is when the session ended. Expire after the node's
    /// session retention.
    pub const TOMBSTONES: Table = Table(Cow::Borrowed("tombstones"));
    /// Tombstones by when their session ended (key: end time, session
    /// key; empty value), so expired ones are found oldest first.
    pub const TOMBSTONE_EXPIRY: Table = Table(Cow::Borrowed("tombstone_expiry"));
    /// Sent messages not yet acknowledged by their receiver.
    pub const OUTBOX: Table = Table(Cow::Borrowed("outbox"));
    /// Timers by (due time, run id).
    pub const TIMERS: Table = Table(Cow::Borrowed("timers"));
    /// Runs that have input waiting to be processed.
    pub const RUNNABLE: Table = Table(Cow::Borrowed("runnable"));
    /// Outcomes of finished flows, until removed.
    pub const RESULTS: Table = Table(Cow::Borrowed("results"));
    /// Flows kept by the hospital.
    pub const HOSPITAL: Table = Table(Cow::Borrowed("hospital"));
    /// Client-supplied ids → run ids.
    pub const CLIENT_IDS: Table = Table(Cow::Borrowed("client_ids"));
    /// The node's own settings that must survive a restart (e.g. whether it
    /// is draining), by name.
    pub const META: Table = Table(Cow::Borrowed("meta"));

    /// The node's own tables, created when a store is opened.
    pub const BUILT_IN: [Table; 11] = [
        Table::CHECKPOINTS,
        Table::SESSIONS,
        Table::TOMBSTONES,
        Table::TOMBSTONE_EXPIRY,
        Table::OUTBOX,
        Table::TIMERS,
        Table::RUNNABLE,
        Table::RESULTS,
        Table::HOSPITAL,
        Table::CLIENT_IDS,
        Table::META,
    ];

    /// A table owned by a node service (e.g. the vault). Prefixed with
    /// `svc/` so a service cannot clash with the node's own tables.
    ///
    /// The full name is built once per distinct `name` for the life of the
    /// process and shared after that: services look their tables up by name
    /// on every read and write of every step, and a program's service tables
    /// are a handful of names fixed in its code (never chosen by a peer), so
    /// keeping them costs a few bytes, while building one per call cost an
    /// allocation each time and another on every clone into a write batch.
    pub fn service(name: &str) -> Table {
        Table(Cow::Borrowed(interned_service_name(name)))
    }

    /// The table's name in the database.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The `svc/<name>` table names handed out so far, by service name.
static SERVICE_NAMES: RwLock<BTreeMap<&'static str, &'static str>> = RwLock::new(BTreeMap::new());

/// `svc/<name>`, built and leaked on the first call for `name`, shared
/// after that (see [`Table::service`] for why leaking is bounded).
fn interned_service_name(name: &str) -> &'static str {
    // A poisoned lock only means another thread panicked while inserting;
    // the map itself is always consistent (one insert of leaked strings).
    if let Some(full) = SERVICE_NAMES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
    {
        return full;
    }
    let mut names = SERVICE_NAMES
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(full) = names.get(name) {
        return full;
    }
    let full: &'static str = Box::leak(format!("svc/{name}").into_boxed_str());
    names.insert(&full[4..], full);
    full
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Key/value pairs read from a table, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One change in a [`WriteBatch`]: `value: None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    /// The table written.
    pub table: Table,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// Removal of every key `from <= key < to` of a table (e.g. all timers due
/// by now): one range operation instead of one delete per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRemoval {
    /// The table.
    pub table: Table,
    /// The first key removed.
    pub from: Vec<u8>,
    /// The first key kept (exclusive end).
    pub to: Vec<u8>,
}

/// Everything one group commit writes. Applied atomically: first the
/// `removed_ranges`, then the `ops` in order.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Key ranges to empty, applied before `ops` (so a put of a key inside
    /// a removed range, in the same batch, stays).
    pub removed_ranges: Vec<RangeRemoval>,
    /// The changes, applied in order (a later op on the same key wins).
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// Adds an insert-or-replace.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp {
            table,
            key,
            value: Some(value),
        });
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(WriteOp {
            table,
            key,
            value: None,
        });
    }

    /// Adds the removal of every key `from <= key < to` of `table`.
    pub fn remove_range(&mut self, table: Table, from: Vec<u8>, to: Vec<u8>) {
        self.removed_ranges.push(RangeRemoval { table, from, to });
    }

    /// Whether the batch writes nothing (the node then skips the commit).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.removed_ranges.is_empty()
    }
}

/// A storage failure. The node treats it as "this batch did not happen":
/// nothing of it is released, and senders redeliver.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store: {0}")]
pub struct StoreError(pub String);

/// Durable keyed tables with atomic batch commits: everything the node needs
/// from a database. Implementations must make [`commit`](Store::commit)
/// all-or-nothing and durable according to their documented settings, and
/// must make reads see every committed batch.
pub trait Store: Send + Sync {
    /// The value at `key`, if any.
    fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with `from <= key < to` (`to: None`: no upper
    /// bound), in key order.
    fn range(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError>;

    /// The number of entries in `table`.
    fn len(&self, table: &Table) -> Result<u64, StoreError>;

    /// Applies every op of `batch` in one atomic transaction.
    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Applies `batches` in order, as if committed one after the other:
    /// each all-or-nothing, and a later one only if every earlier one was
    /// applied. A store that can should write them in ONE transaction (one
    /// fsync for all: the node's commit pipeline groups the batches that
    /// queued while the previous group was written). The default commits
    /// them one by one.
    fn commit_group(&self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        for batch in batches {
            self.commit((*batch).clone())?;
        }
        Ok(())
    }
}

/// `stored` (a table's entries in a key range, read with a limit of
/// `store_limit`, in key order) with newer `writes` in that range laid
/// over them (in key order, one per key; `None` deletes), at most `limit`
/// entries: what a range read answers when some writes are not in the
/// table yet (the commit pipeline's queued batches, the redb store's
/// journal). The caller reads one more stored entry per delete among
/// `writes`, so that `limit` entries remain known; a write past the last
/// stored entry of a full read is left out, since stored entries before
/// it may be missing. A merge of the two sorted sequences: range reads
/// of a busy table run it on every call.
pub(crate) fn lay_over<'a>(
    stored: Entries,
    store_limit: usize,
    limit: usize,
    writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Entries {
    use std::cmp::Ordering;
    let last = (stored.len() == store_limit)
        .then(|| stored.last().map(|(k, _)| k.clone()))
        .flatten();
    let mut out = Vec::with_capacity(stored.len().min(limit));
    let mut stored = stored.into_iter().peekable();
    let mut writes = writes
        .take_while(|(k, _)| last.as_deref().is_none_or(|last| *k <= last))
        .peekable();
    while out.len() < limit {
        let next = match (stored.peek(), writes.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((stored_key, _)), Some((written_key, _))) => {
                stored_key.as_slice().cmp(written_key)
            }
        };
        if next == Ordering::Less {
            out.extend(stored.next());
            continue;
        }
        if next == Ordering::Equal {
            // The write replaces (or deletes) the stored entry.
            stored.next();
        }
        if let Some((key, Some(value))) = writes.next() {
            out.push((key.to_vec(), value.to_vec()));
        }
    }
    out
}
