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
//! * writes reach the tables through a journal ([`RedbOptions::journal_bytes`],
//!   on by default): each group commit appends ONE record, and the tables
//!   are rewritten once per many commits (see the `journal` module for why
//!   and how it stays correct).
//!
//! A damaged file is an error, never a panic: see [`RedbStore`]'s guard.

use super::journal::{self, Overlay};
use super::{Entries, Store, StoreError, Table, WriteBatch};
use redb::backends::InMemoryBackend;
use redb::{
    Builder, Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageBackend, TableDefinition, TableError, WriteTransaction,
};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
    /// Journal the writes of each commit as one record and apply them to
    /// the tables once the records not yet applied reach this many bytes
    /// (default 4 MiB; `0`: write every commit to the tables directly).
    ///
    /// With many flows in flight a commit otherwise rewrites nearly every
    /// page of the tables it touches; with the journal it writes about the
    /// bytes that changed. The writes not yet applied are also held in
    /// memory (at most this many bytes), and opening the file after a
    /// crash applies them (bounded by this too). A clean close applies
    /// them, so a file left by a clean shutdown holds no journal.
    pub journal_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            durable: true,
            quick_repair: true,
            cache_bytes: 32 * 1024 * 1024,
            journal_bytes: DEFAULT_JOURNAL_BYTES,
        }
    }
}

/// [`RedbOptions::journal_bytes`]'s default.
pub const DEFAULT_JOURNAL_BYTES: usize = 4 * 1024 * 1024;

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
    /// The journal's writes not yet applied to the tables. Every read holds
    /// it (shared) for the whole read, and a commit takes it (exclusive)
    /// only to publish what it made durable, together with a new read
    /// snapshot: a reader never pairs an old snapshot with a newer overlay
    /// or the reverse.
    overlay: RwLock<Overlay>,
    /// Held for a whole commit: the record number and the overlay's size
    /// are read before the transaction and published after it.
    committing: Mutex<()>,
    /// Close as a crash would: leave the journal for the next open (the
    /// simulations' node crashes; see [`RedbStore::close_as_if_crashed`]).
    leave_journal: AtomicBool,
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
            overlay: RwLock::new(Overlay::default()),
            committing: Mutex::new(()),
            leave_journal: AtomicBool::new(false),
        };
        // Create the node's tables so reads never meet a missing table. Only
        // a new (or older) database needs the write: reopening an existing
        // node must not cost a commit, and a commit here without quick
        // repair would make the NEXT crash-restart run redb's full repair.
        let missing = {
            let txn = store.db.begin_read().map_err(|e| err("begin read", e))?;
            let names = Table::BUILT_IN.iter().map(Table::name);
            names.chain([journal::TABLE]).any(|name| {
                matches!(
                    txn.open_table(Def::new(name)),
                    Err(TableError::TableDoesNotExist(_))
                )
            })
        };
        if missing {
            let mut txn = store.db.begin_write().map_err(|e| err("begin", e))?;
            txn.set_quick_repair(options.quick_repair);
            let names = Table::BUILT_IN.iter().map(Table::name);
            for name in names.chain([journal::TABLE]) {
                txn.open_table(Def::new(name))
                    .map_err(|e| err("create table", e))?;
            }
            txn.commit().map_err(|e| err("commit", e))?;
        }
        store.apply_journal_left_by_a_crash()?;
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
    /// Makes the store close, when dropped, as a crashed process leaves it:
    /// without applying its journal (the next open does). The simulations
    /// crash nodes with it, so that every simulated restart opens a file
    /// with a journal to apply.
    pub(crate) fn close_as_if_crashed(&self) {
        self.leave_journal.store(true, Ordering::Relaxed);
    }

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
        let overlay = self.read_overlay();
        if let Some(value) = overlay.get(table, key) {
            return Ok(value.map(<[u8]>::to_vec));
        }
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
        let overlay = self.read_overlay();
        if overlay.table(table).is_none() {
            return self.guard("reading a range", || {
                self.range_unguarded(table, from, to, limit)
            });
        }
        let store_limit = overlay.range_read_limit(table, from, to, limit);
        let stored = self.guard("reading a range", || {
            self.range_unguarded(table, from, to, store_limit)
        })?;
        Ok(overlay.lay_over(table, from, to, stored, store_limit, limit))
    }

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        let overlay = self.read_overlay();
        self.guard("counting", || {
            Ok(self
                .with_table(table, |t| {
                    let mut len = t.len().map_err(|e| err("len", e))?;
                    // Each journaled write adds or removes at most the one
                    // entry at its key: look each up (counts are rare).
                    for (key, value) in overlay.table(table).into_iter().flatten() {
                        let stored = t.get(key.as_slice()).map_err(|e| err("get", e))?.is_some();
                        match (stored, value.is_some()) {
                            (false, true) => len += 1,
                            (true, false) => len -= 1,
                            _ => {}
                        }
                    }
                    Ok(len)
                })?
                .unwrap_or_else(|| {
                    let written = overlay.table(table).into_iter().flatten();
                    written.filter(|(_, v)| v.is_some()).count() as u64
                }))
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

    /// Writes `batches` in order in ONE transaction (one fsync for all):
    /// as one journal record, or (when the journal is off, full, or a
    /// batch removes a key range) by applying the journal's writes so far
    /// and then the batches to the tables, deleting the records.
    fn commit_unguarded(&self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        // End the read snapshot first: while a read transaction is open,
        // redb must keep every page it can see, so the pages this commit
        // replaces could not be reused by the next one (more pages to
        // allocate, write and track per commit).
        let _one_at_a_time = self
            .committing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.invalidate_reader();
        let txn = self.begin_write()?;
        let record = self.journal_record(batches)?;
        let next_record = self.read_overlay().next_record;
        if let Some(record) = &record {
            let mut t = txn
                .open_table(Def::new(journal::TABLE))
                .map_err(|e| err("open table", e))?;
            t.insert(next_record.to_be_bytes().as_slice(), record.as_slice())
                .map_err(|e| err("journal", e))?;
        } else {
            self.apply_overlay(&txn)?;
            apply_batches(&txn, batches)?;
        }
        txn.commit().map_err(|e| err("commit", e))?;
        // Publish what is durable now with a fresh snapshot, atomically
        // for readers (see `overlay`).
        let mut overlay = self.write_overlay();
        self.invalidate_reader();
        match record {
            Some(record) => {
                overlay.add(batches);
                overlay.record_bytes += record.len();
                overlay.next_record = next_record + 1;
            }
            None => overlay.clear(),
        }
        Ok(())
    }

    /// `batches` as one journal record, or `None` when they go to the
    /// tables directly (the module docs of `journal` say when).
    fn journal_record(&self, batches: &[&WriteBatch]) -> Result<Option<Vec<u8>>, StoreError> {
        let limit = self.options.journal_bytes;
        let no_writes = batches.iter().all(|b| b.ops.is_empty());
        if limit == 0 || no_writes || batches.iter().any(|b| !b.removed_ranges.is_empty()) {
            return Ok(None);
        }
        let mut record = Vec::new();
        journal::encode(batches, &mut record)?;
        let held = self.read_overlay().record_bytes;
        Ok((held + record.len() <= limit).then_some(record))
    }

    /// Writes the journal's writes not yet applied to their tables and
    /// deletes the records, in `txn`.
    fn apply_overlay(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let overlay = self.read_overlay();
        if overlay.is_empty() {
            return Ok(());
        }
        for (table, writes) in overlay.tables_in_key_order() {
            write_table(txn, table, writes)?;
        }
        let mut records = txn
            .open_table(Def::new(journal::TABLE))
            .map_err(|e| err("open table", e))?;
        records
            .retain(|_, _| false)
            .map_err(|e| err("clear the journal", e))?;
        Ok(())
    }

    /// Opening: applies the records a crash left (a clean close left none)
    /// in one commit, before anything reads the tables.
    fn apply_journal_left_by_a_crash(&self) -> Result<(), StoreError> {
        let mut overlay = Overlay::default();
        {
            let txn = self.db.begin_read().map_err(|e| err("begin read", e))?;
            let records = txn
                .open_table(Def::new(journal::TABLE))
                .map_err(|e| err("open the journal", e))?;
            for entry in records.iter().map_err(|e| err("read the journal", e))? {
                let (key, value) = entry.map_err(|e| err("read the journal", e))?;
                let damaged =
                    |what: &str| StoreError(format!("{DAMAGED_ADVICE} (a journal record {what})"));
                let number = <[u8; 8]>::try_from(key.value())
                    .map(u64::from_be_bytes)
                    .map_err(|_| damaged("has a malformed key"))?;
                let writes = journal::decode(value.value())
                    .map_err(|what| damaged(&format!("numbered {number}: {what}")))?;
                overlay.add_decoded(writes);
                overlay.record_bytes += value.value().len();
            }
        }
        if overlay.is_empty() {
            return Ok(());
        }
        tracing::info!(
            bytes = overlay.record_bytes,
            "applying the journal records the last run left (it did not close cleanly)"
        );
        *self.write_overlay() = overlay;
        self.commit_unguarded(&[])
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
        txn.set_durability(if self.options.durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| err("durability", e))?;
        txn.set_quick_repair(self.options.quick_repair && self.options.durable);
        Ok(txn)
    }

    fn read_overlay(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_overlay(&self) -> RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RedbStore {
    /// A clean close applies the journal, so that the file holds no
    /// records (an older build, which knows no journal, can open it).
    fn drop(&mut self) {
        if self.damaged.load(Ordering::Relaxed)
            || self.leave_journal.load(Ordering::Relaxed)
            || self.read_overlay().is_empty()
        {
            return;
        }
        // A commit of nothing applies the journal (see `commit_unguarded`).
        if let Err(e) = self.guard("closing", || self.commit_unguarded(&[])) {
            tracing::warn!(error = %e, "could not apply the journal on close; the next open applies it");
        }
    }
}

/// Writes `writes` (key, value; `None` deletes) into `table`, in order,
/// in `txn`.
fn write_table<'a>(
    txn: &WriteTransaction,
    table: &Table,
    writes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<(), StoreError> {
    let mut t = txn
        .open_table(Def::new(table.name()))
        .map_err(|e| err("open table", e))?;
    for (key, value) in writes {
        match value {
            Some(v) => {
                t.insert(key, v).map_err(|e| err("insert", e))?;
            }
            None => {
                t.remove(key).map_err(|e| err("remove", e))?;
            }
        }
    }
    Ok(())
}

/// Writes `batches` in order into their tables, in `txn`. Each batch
/// applies its range removals, then its ops; consecutive batches without
/// range removals are applied together, table by table, in key order.
fn apply_batches(txn: &WriteTransaction, batches: &[&WriteBatch]) -> Result<(), StoreError> {
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
            write_table(txn, table, ops)?;
        }
    }
    Ok(())
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

    /// What a store must answer after the commits a test made.
    type Model = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

    #[derive(Debug, Clone)]
    enum Op {
        Put(usize, u8, usize),
        Delete(usize, u8),
        RemoveRange(usize, u8, u8),
    }

    const TABLES: [Table; 2] = [Table::CHECKPOINTS, Table::OUTBOX];

    fn apply_to_model(model: &mut Model, batch: &WriteBatch) {
        for r in &batch.removed_ranges {
            if let Some(t) = model.get_mut(&r.table) {
                t.retain(|k, _| {
                    !(r.from.as_slice() <= k.as_slice() && k.as_slice() < r.to.as_slice())
                });
            }
        }
        for op in &batch.ops {
            let t = model.entry(op.table.clone()).or_default();
            match &op.value {
                Some(v) => {
                    t.insert(op.key.clone(), v.clone());
                }
                None => {
                    t.remove(&op.key);
                }
            }
        }
    }

    /// Every kind of read, against the model.
    fn assert_reads(store: &RedbStore, model: &Model) {
        for table in &TABLES {
            let empty = BTreeMap::new();
            let want = model.get(table).unwrap_or(&empty);
            assert_eq!(
                store.len(table).unwrap(),
                want.len() as u64,
                "len of {table:?}"
            );
            for key in 0..8u8 {
                assert_eq!(
                    store.get(table, &[key]).unwrap().as_ref(),
                    want.get(&vec![key])
                );
            }
            for (from, to, limit) in [
                (0u8, None, usize::MAX),
                (2, Some(6u8), 2),
                (1, None, 3),
                (5, Some(7), 1),
            ] {
                let expected: Entries = want
                    .range(vec![from]..)
                    .take_while(|(k, _)| to.is_none_or(|to| k.as_slice() < [to].as_slice()))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let to = to.map(|to| vec![to]);
                let read = store.range(table, &[from], to.as_deref(), limit).unwrap();
                assert_eq!(
                    read, expected,
                    "range of {table:?} from {from} to {to:?}, {limit} at most"
                );
            }
        }
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..2usize, 0..8u8, 0..300usize).prop_map(|(t, k, len)| Op::Put(t, k, len)),
            2 => (0..2usize, 0..8u8).prop_map(|(t, k)| Op::Delete(t, k)),
            1 => (0..2usize, 0..8u8, 0..8u8).prop_map(|(t, a, b)| Op::RemoveRange(t, a.min(b), a.max(b))),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever is journaled, applied, crashed or closed: every read
        /// answers what the commits so far left, and so does every reopen.
        #[test]
        fn reads_see_every_commit_through_the_journal_and_across_reopens(
            groups in proptest::collection::vec(
                (proptest::collection::vec(proptest::collection::vec(op(), 0..6), 1..4), 0..6u8),
                1..24,
            ),
            journal_bytes in proptest::sample::select(vec![0usize, 700, 4000, 1 << 20]),
        ) {
            let memory = SharedMemory::new();
            let options = RedbOptions { journal_bytes, ..RedbOptions::default() };
            let mut store = RedbStore::open_in_memory(&memory, options).unwrap();
            let mut model = Model::new();
            let mut value = 0u8;
            for (group, reopen) in groups {
                let batches: Vec<WriteBatch> = group.iter().map(|ops| {
                    let mut batch = WriteBatch::default();
                    for op in ops {
                        match *op {
                            Op::Put(t, k, len) => {
                                value = value.wrapping_add(1);
                                batch.put(TABLES[t].clone(), vec![k], vec![value; len]);
                            }
                            Op::Delete(t, k) => batch.delete(TABLES[t].clone(), vec![k]),
                            Op::RemoveRange(t, a, b) => batch.remove_range(TABLES[t].clone(), vec![a], vec![b]),
                        }
                    }
                    batch
                }).collect();
                let refs: Vec<&WriteBatch> = batches.iter().collect();
                store.commit_group(&refs).unwrap();
                for batch in &batches {
                    apply_to_model(&mut model, batch);
                }
                assert_reads(&store, &model);
                match reopen {
                    0 => {
                        store.close_as_if_crashed();
                        drop(store);
                        store = RedbStore::open_in_memory(&memory, options).unwrap();
                        assert_reads(&store, &model);
                    }
                    1 => {
                        drop(store);
                        store = RedbStore::open_in_memory(&memory, options).unwrap();
                        assert_reads(&store, &model);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The journal's effect on the file itself, read with redb directly:
    /// commits under the limit leave records and untouched tables; a crash
    /// leaves the records, which the next open applies; a clean close
    /// leaves none.
    #[test]
    fn commits_append_journal_records_that_open_and_clean_close_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let raw = |path: &Path| {
            let db = Database::open(path).unwrap();
            let txn = db.begin_read().unwrap();
            let count = |name: &str| txn.open_table(Def::new(name)).unwrap().len().unwrap();
            (count(journal::TABLE), count(Table::CHECKPOINTS.name()))
        };
        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        for i in 0..3u8 {
            let mut batch = WriteBatch::default();
            batch.put(Table::CHECKPOINTS, vec![i], vec![i; 100]);
            store.commit(batch).unwrap();
        }
        assert_eq!(store.len(&Table::CHECKPOINTS).unwrap(), 3);
        store.close_as_if_crashed();
        drop(store);
        assert_eq!(
            raw(&path),
            (3, 0),
            "three records, the table not yet written"
        );

        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        assert_eq!(
            store.get(&Table::CHECKPOINTS, &[2]).unwrap(),
            Some(vec![2; 100])
        );
        let mut batch = WriteBatch::default();
        batch.put(Table::CHECKPOINTS, vec![9], vec![9; 100]);
        store.commit(batch).unwrap();
        drop(store);
        assert_eq!(raw(&path), (0, 4), "a clean close applies the journal");

        // Off: every commit goes to the tables.
        let off = RedbOptions {
            journal_bytes: 0,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(&path, off).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(Table::CHECKPOINTS, vec![10], vec![1; 100]);
        store.commit(batch).unwrap();
        store.close_as_if_crashed();
        drop(store);
        assert_eq!(raw(&path), (0, 5));
    }

    /// A group larger than the journal's limit, or one removing a range,
    /// is written to the tables with the records before it.
    #[test]
    fn a_full_journal_or_a_range_removal_applies_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let options = RedbOptions {
            journal_bytes: 1000,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(&path, options).unwrap();
        let put = |key: u8, len: usize| {
            let mut batch = WriteBatch::default();
            batch.put(Table::CHECKPOINTS, vec![key], vec![key; len]);
            batch
        };
        store.commit(put(1, 300)).unwrap();
        store.commit(put(2, 300)).unwrap();
        assert_eq!(
            store.read_overlay().record_bytes,
            2 * (1 + 2 + 11 + 4 + 1 + 4 + 300)
        );
        store.commit(put(3, 600)).unwrap();
        assert!(store.read_overlay().is_empty(), "past the limit: applied");
        store.commit(put(4, 10)).unwrap();
        let mut remove = WriteBatch::default();
        remove.remove_range(Table::CHECKPOINTS, vec![2], vec![4]);
        store.commit(remove).unwrap();
        assert!(store.read_overlay().is_empty(), "a range removal: applied");
        let keys: Vec<Vec<u8>> = store
            .range(&Table::CHECKPOINTS, &[], None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![vec![1], vec![4]]);
    }
}
