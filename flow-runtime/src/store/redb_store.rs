//! [`RedbStore`]: the embedded default [`Store`], one redb database per node.
//!
//! Durability settings (see `docs/runtime.md` for the measurements):
//! * every batch commits with `Durability::Immediate` (one fsync per group
//!   commit): a step whose messages left the node is on disk;
//! * `quick_repair` is on by default: redb then writes its allocator state
//!   with each commit (a second fsync), so that opening the file after a
//!   crash takes milliseconds instead of a full repair that grows with the
//!   file (hundreds of ms for a million checkpoints). Group commit amortises
//!   the extra fsync over the batch. Turn it off with
//!   [`RedbOptions::quick_repair`] when commit latency matters more than
//!   restart time.
//!
//! A damaged file is an error, never a panic: see [`RedbStore`]'s guard.

use super::{Entries, Store, StoreError, Table, WriteBatch};
use redb::backends::InMemoryBackend;
use redb::{
    Builder, Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase,
    ReadableTableMetadata, StorageBackend, TableDefinition, TableError,
};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Def<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// How a [`RedbStore`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// fsync every commit (`true`, the default) or leave it to the OS (only
    /// for throwaway databases: a crash then loses recent commits).
    pub durable: bool,
    /// Record redb's allocator state with each commit so that opening after
    /// a crash is fast (default `true`; costs a second fsync per commit).
    pub quick_repair: bool,
    /// redb's page cache size in bytes.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            durable: true,
            quick_repair: true,
            cache_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A [`Store`] on one redb database (a file, or memory for tests).
///
/// Every call into redb runs under a guard that turns a panic inside redb
/// into a [`StoreError`]. redb reports most damage as errors, but some
/// damaged pages make it panic instead: 64 bytes flipped in a B-tree page
/// of a node's file panicked at open (debug builds) or on the first read
/// (release builds) in about half of the places tried. A node must answer a
/// damaged file with an error that says what to do, not die inside redb;
/// and since a `Database` that panicked mid-operation may hold inconsistent
/// state in memory, the store then refuses every later call.
pub struct RedbStore {
    db: Database,
    options: RedbOptions,
    /// redb panicked in an earlier call: nothing more is read or written.
    damaged: AtomicBool,
    /// A read snapshot reused by reads until the next commit: beginning a
    /// transaction (and opening a table in it) per lookup costs more than
    /// the lookup itself.
    reader: Mutex<Option<Reader>>,
}

type ReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The current read snapshot and the tables opened in it so far (a short
/// list scanned by name: cheaper than hashing the name for a dozen tables).
struct Reader {
    txn: ReadTransaction,
    /// `None`: the table does not exist in this snapshot.
    tables: Vec<(Table, Option<ReadTable>)>,
}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

/// What a guarded call answers once redb has panicked on the file.
const DAMAGED_ADVICE: &str = "the database file is damaged; the node wrote nothing more to it. \
     Restore it from a backup, or move it aside to start the node on a new database \
     (its flows are then lost)";

/// Runs `op` (one call into redb), turning a panic inside it into an error
/// that says the file is damaged. See [`RedbStore`].
fn guarded<R>(what: &str, op: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
    catch_unwind(AssertUnwindSafe(op)).unwrap_or_else(|panic| Err(damaged(what, &*panic)))
}

/// The error for a panic inside redb, logged once here.
fn damaged(what: &str, panic: &(dyn std::any::Any + Send)) -> StoreError {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message");
    tracing::error!(
        operation = what,
        panic = detail,
        "redb failed on a damaged database file"
    );
    StoreError(format!(
        "{DAMAGED_ADVICE} (redb failed while {what}: {detail})"
    ))
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        let shown = path.display();
        guarded(&format!("opening {shown}"), || {
            let db = Builder::new()
                .set_cache_size(options.cache_bytes)
                .create(path)
                .map_err(|e| err(&format!("cannot open {shown}"), e))?;
            Self::init(db, options)
        })
        .map_err(|e| StoreError(format!("{shown}: {}", e.0)))
    }

    /// Opens a database kept in memory by `memory`. Dropping the store and
    /// opening `memory` again behaves like a process restart: every
    /// committed batch is still there. Used by `MockNetwork`.
    pub fn open_in_memory(memory: &SharedMemory, options: RedbOptions) -> Result<Self, StoreError> {
        let db = Builder::new()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(memory.clone())
            .map_err(|e| err("cannot open in-memory database", e))?;
        Self::init(db, options)
    }

    fn init(db: Database, options: RedbOptions) -> Result<Self, StoreError> {
        let store = Self {
            db,
            options,
            damaged: AtomicBool::new(false),
            reader: Mutex::new(None),
        };
        // Create the node's tables so reads never meet a missing table. Only
        // a new (or older) database needs the write: reopening an existing
        // node must not cost a commit, and a commit here without quick
        // repair would make the NEXT crash-restart run redb's full repair.
        let missing = {
            let txn = store.db.begin_read().map_err(|e| err("begin read", e))?;
            Table::BUILT_IN.iter().any(|t| {
                matches!(
                    txn.open_table(Def::new(t.name())),
                    Err(TableError::TableDoesNotExist(_))
                )
            })
        };
        if missing {
            let mut txn = store.db.begin_write().map_err(|e| err("begin", e))?;
            txn.set_quick_repair(options.quick_repair);
            for table in Table::BUILT_IN {
                txn.open_table(Def::new(table.name()))
                    .map_err(|e| err("create table", e))?;
            }
            txn.commit().map_err(|e| err("commit", e))?;
        }
        Ok(store)
    }
}

impl RedbStore {
    /// Makes every earlier commit durable with one empty durable commit
    /// (only needed when `durable` is off).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.guard("syncing", || {
            let mut txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| err("durability", e))?;
            // The last durable commit decides how the next crash-open repairs.
            txn.set_quick_repair(self.options.quick_repair);
            txn.commit().map_err(|e| err("commit", e))
        })
    }
}

impl RedbStore {
    /// Runs one call into redb under the guard (see [`RedbStore`]); after a
    /// panic every later call is refused.
    fn guard<R>(
        &self,
        what: &str,
        op: impl FnOnce() -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.damaged.load(Ordering::Relaxed) {
            return Err(StoreError(format!(
                "{DAMAGED_ADVICE} (refused {what}: redb failed on it earlier)"
            )));
        }
        catch_unwind(AssertUnwindSafe(op)).unwrap_or_else(|panic| {
            self.damaged.store(true, Ordering::Relaxed);
            Err(damaged(what, &*panic))
        })
    }

    /// Runs `read` on `table` in the current read snapshot (the table is
    /// opened once per snapshot); `None` if the table does not exist.
    fn with_table<R>(
        &self,
        table: &Table,
        read: impl FnOnce(&ReadTable) -> Result<R, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let mut slot = self
            .reader
            .lock()
            .map_err(|_| StoreError("reader lock poisoned".into()))?;
        let reader = match slot.as_mut() {
            Some(r) => r,
            None => slot.insert(Reader {
                txn: self.db.begin_read().map_err(|e| err("begin read", e))?,
                tables: Vec::new(),
            }),
        };
        let i = match reader.tables.iter().position(|(t, _)| t == table) {
            Some(i) => i,
            None => {
                let t = match reader.txn.open_table(Def::new(table.name())) {
                    Ok(t) => Some(t),
                    Err(TableError::TableDoesNotExist(_)) => None,
                    Err(e) => return Err(err("open table", e)),
                };
                reader.tables.push((table.clone(), t));
                reader.tables.len() - 1
            }
        };
        match &reader.tables[i].1 {
            Some(t) => read(t).map(Some),
            None => Ok(None),
        }
    }

    fn invalidate_reader(&self) {
        if let Ok(mut slot) = self.reader.lock() {
            *slot = None;
        }
    }
}

impl Store for RedbStore {
    fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.guard("reading", || {
            Ok(self
                .with_table(table, |t| {
                    let value = t.get(key).map_err(|e| err("get", e))?;
                    Ok(value.map(|v| v.value().to_vec()))
                })?
                .flatten())
        })
    }

    fn range(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.guard("reading a range", || {
            self.range_unguarded(table, from, to, limit)
        })
    }

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        self.guard("counting", || {
            Ok(self
                .with_table(table, |t| t.len().map_err(|e| err("len", e)))?
                .unwrap_or(0))
        })
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.guard("committing", || self.commit_unguarded(&[&batch]))
    }

    fn commit_group(&self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        self.guard("committing", || self.commit_unguarded(batches))
    }
}

impl RedbStore {
    fn range_unguarded(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        Ok(self
            .with_table(table, |t| {
                let iter = match to {
                    Some(to) => t.range::<&[u8]>(from..to),
                    None => t.range::<&[u8]>(from..),
                }
                .map_err(|e| err("range", e))?;
                let mut out = Vec::new();
                for entry in iter.take(limit) {
                    let (k, v) = entry.map_err(|e| err("range", e))?;
                    out.push((k.value().to_vec(), v.value().to_vec()));
                }
                Ok(out)
            })?
            .unwrap_or_default())
    }

    /// Writes `batches` in order in ONE transaction (one fsync for all).
    /// Each batch applies its range removals, then its ops; consecutive
    /// batches without range removals are applied together, table by
    /// table, in key order.
    fn commit_unguarded(&self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        // End the read snapshot first: while a read transaction is open,
        // redb must keep every page it can see, so the pages this commit
        // replaces could not be reused by the next one (more pages to
        // allocate, write and track per commit).
        self.invalidate_reader();
        let mut txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
        txn.set_durability(if self.options.durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| err("durability", e))?;
        txn.set_quick_repair(self.options.quick_repair && self.options.durable);
        let mut rest = batches;
        while let Some((first, _)) = rest.split_first() {
            // A segment: one batch and the following ones that remove no
            // range (their ops may be applied together, in order).
            let len = 1 + rest[1..]
                .iter()
                .take_while(|b| b.removed_ranges.is_empty())
                .count();
            let (segment, next) = rest.split_at(len);
            rest = next;
            for r in &first.removed_ranges {
                let mut t = txn
                    .open_table(Def::new(r.table.name()))
                    .map_err(|e| err("open table", e))?;
                t.retain_in::<&[u8], _>(r.from.as_slice()..r.to.as_slice(), |_, _| false)
                    .map_err(|e| err("remove range", e))?;
            }
            // Group by table (keeping each table's order) so every table
            // is opened once.
            type Ops<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;
            let mut by_table: BTreeMap<&Table, Ops> = BTreeMap::new();
            for op in segment.iter().flat_map(|b| &b.ops) {
                by_table
                    .entry(&op.table)
                    .or_default()
                    .push((op.key.as_slice(), op.value.as_deref()));
            }
            for (table, mut ops) in by_table {
                // Key order walks the B-tree once instead of jumping around
                // it; the sort is stable, so ops on one key keep their order.
                ops.sort_by(|a, b| a.0.cmp(b.0));
                let mut t = txn
                    .open_table(Def::new(table.name()))
                    .map_err(|e| err("open table", e))?;
                for (key, value) in ops {
                    match value {
                        Some(v) => {
                            t.insert(key, v).map_err(|e| err("insert", e))?;
                        }
                        None => {
                            t.remove(key).map_err(|e| err("remove", e))?;
                        }
                    }
                }
            }
        }
        let result = txn.commit().map_err(|e| err("commit", e));
        self.invalidate_reader();
        result
    }
}

/// Memory that holds a redb database across "restarts" of a node in
/// `MockNetwork`: cloning shares the same bytes.
#[derive(Debug, Clone, Default)]
pub struct SharedMemory(Arc<InMemoryBackend>);

impl SharedMemory {
    /// Fresh, empty memory.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StorageBackend for SharedMemory {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads every built-in table to the end; the first error, if any.
    fn read_everything(store: &RedbStore) -> Result<usize, StoreError> {
        let mut entries = 0;
        for table in Table::BUILT_IN {
            entries += store.len(&table).map(|_| 0)?;
            entries += store.range(&table, &[], None, usize::MAX)?.len();
        }
        Ok(entries)
    }

    /// A damaged file makes redb panic in some places (see [`RedbStore`]);
    /// the node must get an error instead, and the store must refuse every
    /// later call. 64 bytes are flipped at the start of each of the file's
    /// first pages and at a few places further in.
    #[test]
    fn a_damaged_file_is_an_error_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.redb");
        {
            let store = RedbStore::open(&good, RedbOptions::default()).unwrap();
            for b in 0..20u32 {
                let mut batch = WriteBatch::default();
                for i in 0..200u32 {
                    let key = (b * 1000 + i).to_be_bytes().to_vec();
                    batch.put(Table::CHECKPOINTS, key.clone(), vec![7; 300]);
                    batch.put(Table::SESSIONS, key, vec![9; 40]);
                }
                store.commit(batch).unwrap();
            }
            assert_eq!(read_everything(&store).unwrap(), 8000);
        }
        let bytes = std::fs::read(&good).unwrap();
        let n = bytes.len();
        let mut offsets: Vec<usize> = (1..12).map(|page| page * 4096).collect();
        offsets.extend([n / 3, n / 2, 2 * n / 3, n - 4096]);
        let mut damaged = 0;
        for offset in offsets {
            let mut copy = bytes.clone();
            for b in &mut copy[offset..(offset + 64).min(n)] {
                *b ^= 0xA5;
            }
            let path = dir.path().join(format!("damaged-{offset}.redb"));
            std::fs::write(&path, &copy).unwrap();
            let outcome = RedbStore::open(&path, RedbOptions::default())
                .and_then(|store| read_everything(&store).map(|_| store));
            match outcome {
                Ok(_) => {}
                Err(e) if e.0.contains("damaged") => {
                    damaged += 1;
                    assert!(e.0.contains("Restore it from a backup"), "{e:?}");
                }
                Err(_) => {}
            }
        }
        // Without the guard these panic (and so fail the test); with it,
        // some of them must have been caught, or the test proves nothing.
        assert!(damaged > 0, "no offset hit a page redb panics on");
    }

    #[test]
    fn after_a_panic_inside_redb_every_call_is_refused() {
        let store =
            RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default()).unwrap();
        let caught = store.guard("testing", || -> Result<(), StoreError> {
            panic!("a page that cannot be")
        });
        assert!(caught.unwrap_err().0.contains("a page that cannot be"));
        let later = store.get(&Table::META, b"x").unwrap_err();
        assert!(later.0.contains("redb failed on it earlier"), "{later:?}");
        assert!(store.commit(WriteBatch::default()).is_err());
    }
}
