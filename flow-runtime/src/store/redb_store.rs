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
    Builder, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTableMetadata,
    StorageBackend, TableDefinition, TableError,
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
    /// A read transaction reused by reads until the next commit: beginning
    /// one per lookup costs more than the lookup.
    reader: Mutex<Option<Arc<ReadTransaction>>>,
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
        // Create the node's tables so reads never meet a missing table.
        let txn = store.db.begin_write().map_err(|e| err("begin", e))?;
        for table in Table::BUILT_IN {
            txn.open_table(Def::new(table.name()))
                .map_err(|e| err("create table", e))?;
        }
        txn.commit().map_err(|e| err("commit", e))?;
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
        txn.commit().map_err(|e| err("commit", e))
    }
}

impl RedbStore {
    fn reader(&self) -> Result<Arc<ReadTransaction>, StoreError> {
        let mut slot = self
            .reader
            .lock()
            .map_err(|_| StoreError("reader lock poisoned".into()))?;
        if let Some(txn) = slot.as_ref() {
            return Ok(txn.clone());
        }
        let txn = Arc::new(self.db.begin_read().map_err(|e| err("begin read", e))?);
        *slot = Some(txn.clone());
        Ok(txn)
    }

    fn invalidate_reader(&self) {
        if let Ok(mut slot) = self.reader.lock() {
            *slot = None;
        }
    }
}

impl Store for RedbStore {
    fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.reader()?;
        let t = match txn.open_table(Def::new(table.name())) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err("open table", e)),
        };
        let value = t.get(key).map_err(|e| err("get", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn range(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let txn = self.reader()?;
        let t = match txn.open_table(Def::new(table.name())) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err("open table", e)),
        };
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
    }

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        let txn = self.reader()?;
        match txn.open_table(Def::new(table.name())) {
            Ok(t) => t.len().map_err(|e| err("len", e)),
            Err(TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(err("open table", e)),
        }
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
        txn.set_durability(if self.options.durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| err("durability", e))?;
        txn.set_quick_repair(self.options.quick_repair && self.options.durable);
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
        for (table, ops) in by_table {
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
