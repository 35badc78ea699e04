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

use super::{Entries, Store, StoreError, Table, WriteBatch};
use redb::backends::InMemoryBackend;
use redb::{
    Builder, Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase,
    ReadableTableMetadata, StorageBackend, TableDefinition, TableError,
};
use std::collections::BTreeMap;
use std::path::Path;
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
pub struct RedbStore {
    db: Database,
    options: RedbOptions,
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

impl RedbStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        let db = Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
        Self::init(db, options)
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
        let mut txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err("durability", e))?;
        // The last durable commit decides how the next crash-open repairs.
        txn.set_quick_repair(self.options.quick_repair);
        txn.commit().map_err(|e| err("commit", e))
    }
}

impl RedbStore {
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
        Ok(self
            .with_table(table, |t| {
                let value = t.get(key).map_err(|e| err("get", e))?;
                Ok(value.map(|v| v.value().to_vec()))
            })?
            .flatten())
    }

    fn range(
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

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        Ok(self
            .with_table(table, |t| t.len().map_err(|e| err("len", e)))?
            .unwrap_or(0))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
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
        for r in &batch.removed_ranges {
            let mut t = txn
                .open_table(Def::new(r.table.name()))
                .map_err(|e| err("open table", e))?;
            t.retain_in::<&[u8], _>(r.from.as_slice()..r.to.as_slice(), |_, _| false)
                .map_err(|e| err("remove range", e))?;
        }
        // Group by table (keeping each table's order) so every table is
        // opened once.
        type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;
        let mut by_table: BTreeMap<Table, Ops> = BTreeMap::new();
        for op in batch.ops {
            by_table
                .entry(op.table)
                .or_default()
                .push((op.key, op.value));
        }
        for (table, mut ops) in by_table {
            // Key order walks the B-tree once instead of jumping around it;
            // the sort is stable, so ops on one key keep their order.
            ops.sort_by(|a, b| a.0.cmp(&b.0));
            let mut t = txn
                .open_table(Def::new(table.name()))
                .map_err(|e| err("open table", e))?;
            for (key, value) in ops {
                match value {
                    Some(v) => {
                        t.insert(key.as_slice(), v.as_slice())
                            .map_err(|e| err("insert", e))?;
                    }
                    None => {
                        t.remove(key.as_slice()).map_err(|e| err("remove", e))?;
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
