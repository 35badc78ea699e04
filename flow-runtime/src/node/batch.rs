//! [`Batch`]: the in-memory overlay of one group commit. Every step of the
//! batch reads through it (so a second step of the same flow sees the first
//! one's checkpoint) and writes into it; nothing reaches the store until the
//! whole batch commits in one transaction.

use super::records::{CheckpointRecord, SessionKey, SessionRecord, run_key};
use crate::store::{Store, StoreError, Table, WriteBatch};
use crate::{FlowError, PublicKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A checkpoint as loaded: decoded, or the raw bytes with the reason they do
/// not decode.
pub(crate) enum Loaded {
    Ok(CheckpointRecord),
    Corrupt(String),
}

#[derive(Default)]
pub(crate) struct Batch {
    checkpoints: HashMap<u64, Option<CheckpointRecord>>,
    sessions: HashMap<SessionKey, Option<SessionRecord>>,
    raw: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
    /// Runs to try in this batch.
    pub wake: BTreeSet<u64>,
    /// Frames to release after the commit (new outbox entries, acks, refusals).
    pub emit: Vec<(PublicKey, Vec<u8>)>,
    /// Runs finished in this batch, with their outcome.
    pub finished: Vec<(u64, String, Result<Vec<u8>, FlowError>)>,
    /// Progress changes in this batch.
    pub progress: Vec<(u64, Vec<String>)>,
    /// Steps run in this batch.
    pub steps: usize,
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what} record does not decode: {e}")
}

impl Batch {
    pub fn checkpoint(
        &mut self,
        store: &dyn Store,
        run: u64,
    ) -> Result<Option<Loaded>, StoreError> {
        if let Some(c) = self.checkpoints.get(&run) {
            return Ok(c.clone().map(Loaded::Ok));
        }
        Ok(store
            .get(&Table::CHECKPOINTS, &run_key(run))?
            .map(|bytes| match rmp_serde::from_slice(&bytes) {
                Ok(rec) => Loaded::Ok(rec),
                Err(e) => Loaded::Corrupt(decode_err("checkpoint", e)),
            }))
    }

    pub fn put_checkpoint(&mut self, run: u64, rec: CheckpointRecord) {
        self.checkpoints.insert(run, Some(rec));
    }

    pub fn delete_checkpoint(&mut self, run: u64) {
        self.checkpoints.insert(run, None);
    }

    /// A session end; `Err` with a message if its record is corrupt (treated
    /// by callers like a missing session, after logging).
    pub fn session(
        &mut self,
        store: &dyn Store,
        key: SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        if let Some(s) = self.sessions.get(&key) {
            return Ok(s.clone());
        }
        match store.get(&Table::SESSIONS, &key.bytes())? {
            None => Ok(None),
            Some(bytes) => match rmp_serde::from_slice(&bytes) {
                Ok(rec) => Ok(Some(rec)),
                Err(e) => {
                    tracing::error!(session = %key.id, "{}", decode_err("session", e));
                    Ok(None)
                }
            },
        }
    }

    pub fn put_session(&mut self, key: SessionKey, rec: SessionRecord) {
        self.sessions.insert(key, Some(rec));
    }

    pub fn delete_session(&mut self, key: SessionKey) {
        self.sessions.insert(key, None);
    }

    pub fn get(
        &self,
        store: &dyn Store,
        table: &Table,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.raw.get(&(table.clone(), key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => store.get(table, key),
        }
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.raw.insert((table, key), Some(value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.raw.insert((table, key), None);
    }

    /// Keys of `table` starting with `prefix`, committed or staged, minus
    /// staged deletions.
    pub fn keys_with_prefix(
        &self,
        store: &dyn Store,
        table: &Table,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut end = prefix.to_vec();
        // The prefixes used are fixed-width keys; incrementing the last byte
        // with carry gives the exclusive upper bound.
        let upper = loop {
            match end.pop() {
                None => break None,
                Some(0xff) => continue,
                Some(b) => {
                    end.push(b + 1);
                    break Some(end);
                }
            }
        };
        let mut keys: BTreeSet<Vec<u8>> = store
            .range(table, prefix, upper.as_deref(), usize::MAX)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for ((t, k), v) in &self.raw {
            if t == table && k.starts_with(prefix) {
                if v.is_some() {
                    keys.insert(k.clone());
                } else {
                    keys.remove(k);
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Everything to write, encoded.
    pub fn take_write_batch(&mut self) -> Result<WriteBatch, StoreError> {
        let mut w = WriteBatch::default();
        for (run, rec) in self.checkpoints.drain() {
            match rec {
                Some(rec) => w.put(
                    Table::CHECKPOINTS,
                    run_key(run),
                    rmp_serde::to_vec(&rec)
                        .map_err(|e| StoreError(format!("cannot encode checkpoint: {e}")))?,
                ),
                None => w.delete(Table::CHECKPOINTS, run_key(run)),
            }
        }
        for (key, rec) in self.sessions.drain() {
            match rec {
                Some(rec) => w.put(
                    Table::SESSIONS,
                    key.bytes(),
                    rmp_serde::to_vec(&rec)
                        .map_err(|e| StoreError(format!("cannot encode session: {e}")))?,
                ),
                None => w.delete(Table::SESSIONS, key.bytes()),
            }
        }
        for ((table, key), value) in std::mem::take(&mut self.raw) {
            match value {
                Some(v) => w.put(table, key, v),
                None => w.delete(table, key),
            }
        }
        Ok(w)
    }
}
