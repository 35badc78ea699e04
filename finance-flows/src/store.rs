//! The storage boundary of the finance services.
//!
//! The vault, the key manager and the notary keep everything in a few
//! key-value tables reached through the [`Store`] trait, never through a
//! database type. A node backs it with the same database transaction as the
//! flow step that causes the writes, so a step's checkpoint and its vault
//! changes commit together or not at all; [`MemStore`] backs it in memory
//! for unit tests and for nodes without durable services.
//!
//! Values are MessagePack (rmp-serde). Bytes read back are untrusted (disk
//! corruption): [`decode`] turns a bad record into a [`StoreError`], never a
//! panic.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// The entries of a table, in key order: `(key, value)` pairs.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The tables the finance services use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
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
}

impl Table {
    /// Every table, for backends that create them up front.
    pub const ALL: [Table; 6] = [
        Table::Transactions,
        Table::Unconsumed,
        Table::SoftLocks,
        Table::Keys,
        Table::NotaryCommits,
        Table::Config,
    ];

    /// A stable name, for database backends.
    pub fn name(self) -> &'static str {
        match self {
            Table::Transactions => "finance_transactions",
            Table::Unconsumed => "finance_unconsumed",
            Table::SoftLocks => "finance_soft_locks",
            Table::Keys => "finance_keys",
            Table::NotaryCommits => "finance_notary_commits",
            Table::Config => "finance_config",
        }
    }
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
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
/// `Store` value are seen by later reads through it; when they become
/// durable is up to the backend (with the node: when the step commits).
pub trait Store {
    /// The value under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key` (no error if absent).
    fn remove(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
    /// Every entry of `table`, in key order.
    fn scan(&self, table: Table) -> Result<Entries, StoreError>;
}

/// Encodes a value for storage.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(value)
        .map_err(|e| StoreError::Backend(format!("cannot encode a record: {e}")))
}

/// Decodes a stored value, reporting corruption as an error.
pub fn decode<T: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        let err = StoreError::Corrupt {
            table: table.name(),
            detail: format!("expected a `{}`: {e}", std::any::type_name::<T>()),
        };
        tracing::error!(%err, "cannot decode a stored record");
        err
    })
}

/// An in-memory [`Store`]. Cloning copies the data, which is how a test takes
/// a snapshot.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tables
            .entry(table)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if let Some(t) = self.tables.get_mut(&table) {
            t.remove(key);
        }
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Entries, StoreError> {
        Ok(self
            .tables
            .get(&table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
}

impl<S: Store + ?Sized> Store for &mut S {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(table, key)
    }
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        (**self).put(table, key, value)
    }
    fn remove(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        (**self).remove(table, key)
    }
    fn scan(&self, table: Table) -> Result<Entries, StoreError> {
        (**self).scan(table)
    }
}
