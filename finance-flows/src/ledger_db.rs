//! The ledger database: the storage boundary of the finance services.
//!
//! Not the runtime's checkpoint store (the `Store` of its `storage`
//! module): these are the finance services' own tables ([`LedgerTable`]),
//! which a node keeps in its database next to the checkpoints.
//!
//! The vault, the key manager and the notary keep everything in a few
//! key-value tables reached through the [`LedgerDb`] trait, never through a
//! database type. A node backs it with the same database transaction as the
//! flow step that causes the writes, so a step's checkpoint and its vault
//! changes commit together or not at all; [`MemLedgerDb`] backs it in memory
//! for unit tests and for nodes without durable services.
//!
//! Values are MessagePack (rmp-serde). Bytes read back are untrusted (disk
//! corruption): [`decode`] turns a bad record into a [`LedgerDbError`], never a
//! panic.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// The entries of a table, in key order: `(key, value)` pairs.
pub type LedgerEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The tables the finance services use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerTable {
    /// Transaction id -> `SignedTransaction`: every transaction the node has
    /// verified and recorded (its own and resolved dependencies).
    Transactions,
    /// `StateRef` key -> `ContractState`: states owned by this node's keys
    /// and not yet consumed.
    Unconsumed,
    /// `StateRef` key -> lock id (u64): states reserved by an unfinished
    /// spend, so two concurrent trades never pick the same coins.
    SoftLocks,
    /// Public key -> secret seed: the node's keys.
    Keys,
    /// `StateRef` key -> id of the transaction that consumed it: the notary's
    /// uniqueness log.
    NotaryCommits,
    /// Small settings by name, e.g. the node's ledger identity.
    Config,
    /// `StateRef` key -> [`OutputRecord`](crate::vault::OutputRecord): every
    /// output of every recorded transaction with its notary, so verifying a
    /// transaction reads only the states it spends (one point read each)
    /// instead of decoding whole producing transactions — an issuance of a
    /// thousand coins would otherwise be decoded for every spend of one.
    Outputs,
    /// Coin-selection index: currency (3 bytes) ++ `!quantity` (8 bytes,
    /// big-endian, so larger coins sort first) ++ `StateRef` key -> empty.
    /// Holds exactly the node's unconsumed cash that no spend has
    /// soft-locked, so selecting coins is a short range read rather than a
    /// scan of the vault.
    AvailableCash,
    /// Lock id (8 bytes, big-endian) ++ `StateRef` key -> empty: the states
    /// each unfinished spend holds, so releasing a spend's locks is a range
    /// read over its prefix.
    LocksByHolder,
    /// Currency (3 bytes) -> an [`AvailableCash`](LedgerTable::AvailableCash)
    /// key no available coin of that currency sorts before: where coin
    /// selection starts reading. Without it, the coins that earlier spends
    /// of the same group commit locked are deleted entries at the head of
    /// the index that every selection walks past (and reads from the store)
    /// until the batch commits — O(trades per batch) per selection.
    AvailableCashStart,
    /// Transaction id -> empty: which transactions
    /// [`Transactions`](LedgerTable::Transactions) holds, so that asking
    /// whether one is held does not read its bytes. A resolution asks for
    /// every transaction a proposal spends from, and the buyer's cash
    /// issuance of a thousand coins is ~100 KB: reading it to learn that it
    /// is there cost each trade more than all its other ledger reads
    /// together. Databases written before this table existed lack entries
    /// for what they recorded then; [`vault::has_transaction`] falls back to
    /// the transaction itself for those.
    ///
    /// [`vault::has_transaction`]: crate::vault::has_transaction
    TransactionIds,
}

impl LedgerTable {
    /// Every table, for backends that create them up front.
    pub const ALL: [LedgerTable; 11] = [
        LedgerTable::Transactions,
        LedgerTable::Unconsumed,
        LedgerTable::SoftLocks,
        LedgerTable::Keys,
        LedgerTable::NotaryCommits,
        LedgerTable::Config,
        LedgerTable::Outputs,
        LedgerTable::AvailableCash,
        LedgerTable::LocksByHolder,
        LedgerTable::AvailableCashStart,
        LedgerTable::TransactionIds,
    ];

    /// A stable name, for database backends.
    pub fn name(self) -> &'static str {
        match self {
            LedgerTable::Transactions => "finance_transactions",
            LedgerTable::Unconsumed => "finance_unconsumed",
            LedgerTable::SoftLocks => "finance_soft_locks",
            LedgerTable::Keys => "finance_keys",
            LedgerTable::NotaryCommits => "finance_notary_commits",
            LedgerTable::Config => "finance_config",
            LedgerTable::Outputs => "finance_outputs",
            LedgerTable::AvailableCash => "finance_available_cash",
            LedgerTable::LocksByHolder => "finance_locks_by_holder",
            LedgerTable::AvailableCashStart => "finance_available_cash_start",
            LedgerTable::TransactionIds => "finance_transaction_ids",
        }
    }
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerDbError {
    /// The backend failed (I/O, database error).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A stored record does not decode: the database is corrupt or was
    /// written by an incompatible version.
    #[error("corrupt record in table {table}: {detail}; restore the node's database from a backup")]
    Corrupt {
        /// The table's name.
        table: &'static str,
        /// What did not decode.
        detail: String,
    },
}

/// Key-value storage with a few named tables. Writes made through one
/// `LedgerDb` value are seen by later reads through it; when they become
/// durable is up to the backend (with the node: when the step commits).
pub trait LedgerDb {
    /// The value under `key`, if any.
    fn get(&self, table: LedgerTable, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerDbError>;
    /// Sets `key` to `value`.
    fn put(&mut self, table: LedgerTable, key: &[u8], value: &[u8]) -> Result<(), LedgerDbError>;
    /// Removes `key` (no error if absent).
    fn remove(&mut self, table: LedgerTable, key: &[u8]) -> Result<(), LedgerDbError>;
    /// Up to `limit` entries of `table` with `from <= key < to` (`to: None`:
    /// no upper bound), in key order. The services' indexes are laid out so
    /// that what they look up is one such short range, never a table scan.
    fn range(
        &self,
        table: LedgerTable,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<LedgerEntries, LedgerDbError>;

    /// Every entry of `table`, in key order (reports and reconciliation
    /// only: it reads the whole table).
    fn scan(&self, table: LedgerTable) -> Result<LedgerEntries, LedgerDbError> {
        self.range(table, &[], None, usize::MAX)
    }
}

/// The exclusive upper bound of the keys that start with `prefix`: the
/// prefix with its last non-0xff byte incremented (`None` when every key
/// above `prefix` qualifies).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Up to `limit` entries whose key starts with `prefix`.
pub fn prefix_range(
    store: &dyn LedgerDb,
    table: LedgerTable,
    prefix: &[u8],
    limit: usize,
) -> Result<LedgerEntries, LedgerDbError> {
    store.range(table, prefix, prefix_end(prefix).as_deref(), limit)
}

/// Process-wide counters of the finance code's own MessagePack work
/// (service records, and the canonical bytes hashed into transaction ids),
/// for the benchmark's split of CPU time per trade. Relaxed atomics: one
/// uncontended increment per operation. The runtime's checkpoint and
/// message encoding is not counted here.
pub mod codec_metrics {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    static ENCODES: AtomicU64 = AtomicU64::new(0);
    static ENCODE_NANOS: AtomicU64 = AtomicU64::new(0);
    static DECODES: AtomicU64 = AtomicU64::new(0);
    static DECODE_NANOS: AtomicU64 = AtomicU64::new(0);

    /// A snapshot of the counters.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct CodecMetrics {
        /// Values encoded.
        pub encodes: u64,
        /// Time spent encoding.
        pub encode_nanos: u64,
        /// Values decoded.
        pub decodes: u64,
        /// Time spent decoding.
        pub decode_nanos: u64,
    }

    impl CodecMetrics {
        /// The work done between `earlier` and `self`.
        pub fn since(&self, earlier: &CodecMetrics) -> CodecMetrics {
            CodecMetrics {
                encodes: self.encodes - earlier.encodes,
                encode_nanos: self.encode_nanos - earlier.encode_nanos,
                decodes: self.decodes - earlier.decodes,
                decode_nanos: self.decode_nanos - earlier.decode_nanos,
            }
        }
    }

    /// The counters now.
    pub fn snapshot() -> CodecMetrics {
        CodecMetrics {
            encodes: ENCODES.load(Ordering::Relaxed),
            encode_nanos: ENCODE_NANOS.load(Ordering::Relaxed),
            decodes: DECODES.load(Ordering::Relaxed),
            decode_nanos: DECODE_NANOS.load(Ordering::Relaxed),
        }
    }

    fn add(count: &AtomicU64, nanos: &AtomicU64, started: Instant) {
        count.fetch_add(1, Ordering::Relaxed);
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        nanos.fetch_add(spent, Ordering::Relaxed);
    }

    /// Counts one encoding that began at `started`.
    pub(crate) fn encoded(started: Instant) {
        add(&ENCODES, &ENCODE_NANOS, started);
    }

    /// Counts one decoding that began at `started`.
    pub(crate) fn decoded(started: Instant) {
        add(&DECODES, &DECODE_NANOS, started);
    }
}

/// Encodes a value for storage.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, LedgerDbError> {
    let started = std::time::Instant::now();
    let bytes = rmp_serde::to_vec(value)
        .map_err(|e| LedgerDbError::Backend(format!("cannot encode a record: {e}")));
    codec_metrics::encoded(started);
    bytes
}

/// Decodes a stored value, reporting corruption as an error.
pub fn decode<T: DeserializeOwned>(table: LedgerTable, bytes: &[u8]) -> Result<T, LedgerDbError> {
    let started = std::time::Instant::now();
    let value = rmp_serde::from_slice(bytes);
    codec_metrics::decoded(started);
    value.map_err(|e| {
        let err = LedgerDbError::Corrupt {
            table: table.name(),
            detail: format!("expected a `{}`: {e}", std::any::type_name::<T>()),
        };
        tracing::error!(%err, "cannot decode a stored record");
        err
    })
}

/// An in-memory [`LedgerDb`]. Cloning copies the data, which is how a test takes
/// a snapshot.
#[derive(Debug, Clone, Default)]
pub struct MemLedgerDb {
    tables: BTreeMap<LedgerTable, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemLedgerDb {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LedgerDb for MemLedgerDb {
    fn get(&self, table: LedgerTable, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerDbError> {
        Ok(self.tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn put(&mut self, table: LedgerTable, key: &[u8], value: &[u8]) -> Result<(), LedgerDbError> {
        self.tables
            .entry(table)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, table: LedgerTable, key: &[u8]) -> Result<(), LedgerDbError> {
        if let Some(t) = self.tables.get_mut(&table) {
            t.remove(key);
        }
        Ok(())
    }

    fn range(
        &self,
        table: LedgerTable,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<LedgerEntries, LedgerDbError> {
        use std::ops::Bound;
        let Some(t) = self.tables.get(&table) else {
            return Ok(Vec::new());
        };
        if to.is_some_and(|to| to <= from) {
            return Ok(Vec::new());
        }
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(t.range::<[u8], _>((Bound::Included(from), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl<S: LedgerDb + ?Sized> LedgerDb for &mut S {
    fn get(&self, table: LedgerTable, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerDbError> {
        (**self).get(table, key)
    }
    fn put(&mut self, table: LedgerTable, key: &[u8], value: &[u8]) -> Result<(), LedgerDbError> {
        (**self).put(table, key, value)
    }
    fn remove(&mut self, table: LedgerTable, key: &[u8]) -> Result<(), LedgerDbError> {
        (**self).remove(table, key)
    }
    fn range(
        &self,
        table: LedgerTable,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<LedgerEntries, LedgerDbError> {
        (**self).range(table, from, to, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }

    #[test]
    fn mem_store_ranges_are_bounded_and_ordered() {
        let mut s = MemLedgerDb::new();
        for k in [b"a1", b"b1", b"b2", b"b3", b"c1"] {
            s.put(LedgerTable::Config, k, k).unwrap();
        }
        let keys = |e: LedgerEntries| e.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(prefix_range(&s, LedgerTable::Config, b"b", 10).unwrap()),
            vec![b"b1".to_vec(), b"b2".to_vec(), b"b3".to_vec()]
        );
        assert_eq!(
            keys(prefix_range(&s, LedgerTable::Config, b"b", 2).unwrap()),
            vec![b"b1".to_vec(), b"b2".to_vec()]
        );
        assert_eq!(
            keys(s.range(LedgerTable::Config, b"c", Some(b"b"), 9).unwrap()),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(s.scan(LedgerTable::Config).unwrap().len(), 5);
    }
}
