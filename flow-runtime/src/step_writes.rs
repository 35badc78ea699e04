//! [`StepWrites`]: the node's service tables, whose writes commit
//! atomically with the step that made them. The runtime owns it and lends
//! it to each step through [`FlowContext::step_writes`](crate::FlowContext::step_writes).

use crate::store::{Entries, Store, Table, WriteBatch};
use crate::{FlowError, FlowErrorKind};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// Uncommitted writes of one table: `None` is a deletion.
type TableOverlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Uncommitted writes, per table, so a read of one table's range walks
/// only that table's writes in that range (O(log n + k)), however many
/// steps the group commit already holds.
type Overlay = BTreeMap<Table, TableOverlay>;

/// Key/value tables for node services (a vault, a notary's spent-input
/// index, ...) whose writes commit in the SAME store transaction as the step
/// that made them: if the step fails or panics, its writes vanish with it;
/// if it commits, they are durable together with its checkpoint and
/// messages.
///
/// Reach it in a flow step with `ctx.step_writes()`. Reads see, in order: this
/// step's own writes, the writes of earlier steps in the same group commit,
/// then committed data. Tables are named by the service (`"vault"`); they are
/// stored as `svc/<name>` so they cannot clash with the node's tables.
pub struct StepWrites {
    store: Arc<dyn Store>,
    batch: Overlay,
    step: Overlay,
}

impl StepWrites {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            batch: Overlay::new(),
            step: Overlay::new(),
        }
    }

    /// The value of `key` in the service table `table`.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, FlowError> {
        let t = Table::service(table);
        let pending = [&self.step, &self.batch]
            .into_iter()
            .find_map(|o| o.get(&t).and_then(|m| m.get(key)));
        if let Some(v) = pending {
            return Ok(v.clone());
        }
        self.store
            .get(&t, key)
            .map_err(|e| FlowError::with_kind(FlowErrorKind::Transient, e.to_string()))
    }

    /// Up to `limit` entries of `table` with `from <= key < to`, in key
    /// order, including uncommitted writes of this step and batch.
    ///
    /// Cost: a range walk of this table's uncommitted writes, stopping once
    /// `limit` of them are values, then one bounded store range — never a
    /// pass over the whole batch.
    pub fn range(
        &self,
        table: &str,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, FlowError> {
        if limit == 0 || to.is_some_and(|to| to <= from) {
            return Ok(Vec::new());
        }
        let t = Table::service(table);
        let bounds = (
            Bound::Included(from),
            to.map_or(Bound::Unbounded, Bound::Excluded),
        );
        // Merge the batch's and the step's writes in key order (the step's
        // write wins on the same key); stop at the `limit`-th value, past
        // which nothing can be returned.
        let (mut batch, mut step) = (
            walk(&self.batch, &t, bounds).peekable(),
            walk(&self.step, &t, bounds).peekable(),
        );
        let mut pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = Vec::new();
        let mut values = 0;
        loop {
            let next = match (batch.peek(), step.peek()) {
                (None, None) => break,
                (Some(_), None) => batch.next(),
                (None, Some(_)) => step.next(),
                (Some((kb, _)), Some((ks, _))) => match kb.cmp(ks) {
                    Ordering::Less => batch.next(),
                    Ordering::Greater => step.next(),
                    Ordering::Equal => {
                        batch.next();
                        step.next()
                    }
                },
            };
            let Some((k, v)) = next else { break };
            pending.push((k, v));
            if v.is_some() {
                values += 1;
                if values == limit {
                    break;
                }
            }
        }
        // Every result lies at or below the last pending key once `limit`
        // pending values were found: bound the store read there.
        let cut = (values == limit).then(|| {
            let mut end = pending
                .last()
                .map(|(k, _)| (*k).clone())
                .unwrap_or_default();
            end.push(0);
            end
        });
        let store_to = cut.as_deref().or(to);
        // Each pending write hides or replaces at most one stored entry.
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .store
            .range(&t, from, store_to, limit.saturating_add(pending.len()))
            .map_err(|e| FlowError::with_kind(FlowErrorKind::Transient, e.to_string()))?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (k, v) in pending {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    /// Stages `key = value` in `table`; committed with the step.
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) {
        self.step
            .entry(Table::service(table))
            .or_default()
            .insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Stages the deletion of `key` from `table`; committed with the step.
    pub fn delete(&mut self, table: &str, key: &[u8]) {
        self.step
            .entry(Table::service(table))
            .or_default()
            .insert(key.to_vec(), None);
    }

    pub(crate) fn keep_step(&mut self) {
        for (table, writes) in std::mem::take(&mut self.step) {
            let kept = self.batch.entry(table).or_default();
            if kept.is_empty() {
                *kept = writes;
            } else {
                kept.extend(writes);
            }
        }
    }

    pub(crate) fn discard_step(&mut self) {
        self.step.clear();
    }

    pub(crate) fn drain_into(&mut self, batch: &mut WriteBatch) {
        self.step.clear();
        for (table, writes) in std::mem::take(&mut self.batch) {
            for (key, value) in writes {
                match value {
                    Some(v) => batch.put(table.clone(), key, v),
                    None => batch.delete(table.clone(), key),
                }
            }
        }
    }
}

/// The writes of `table` in `overlay` within `bounds`, in key order.
fn walk<'a>(
    overlay: &'a Overlay,
    table: &Table,
    bounds: (Bound<&'a [u8]>, Bound<&'a [u8]>),
) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
    overlay
        .get(table)
        .into_iter()
        .flat_map(move |m| m.range::<[u8], _>(bounds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RedbOptions, RedbStore, SharedMemory};

    /// A tiny deterministic generator, so the test needs no seed plumbing.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn store_with(committed: &[(u8, u8)]) -> Arc<dyn Store> {
        let store = RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default())
            .expect("in-memory store");
        let mut batch = WriteBatch::default();
        for (k, v) in committed {
            batch.put(Table::service("t"), vec![*k], vec![*v]);
        }
        store.commit(batch).expect("commit");
        Arc::new(store)
    }

    #[test]
    fn range_sees_step_over_batch_over_store_and_honours_limits() {
        let mut rng = Lcg(7);
        for round in 0..40 {
            // The model: what a reader must see, key -> value.
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let committed: Vec<(u8, u8)> = (0..rng.next(12))
                .map(|_| (rng.next(32) as u8, rng.next(255) as u8))
                .collect();
            for (k, v) in &committed {
                model.insert(vec![*k], vec![*v]);
            }
            let mut w = StepWrites::new(store_with(&committed));
            for phase in 0..2 {
                for _ in 0..rng.next(20) {
                    let k = vec![rng.next(32) as u8];
                    if rng.next(3) == 0 {
                        w.delete("t", &k);
                        model.remove(&k);
                    } else {
                        let v = vec![rng.next(255) as u8];
                        w.put("t", &k, &v);
                        model.insert(k, v);
                    }
                }
                // A write to another table never shows up.
                w.put("other", &[5], &[5]);
                if phase == 0 {
                    w.keep_step();
                }
            }
            for _ in 0..20 {
                let from = vec![rng.next(34) as u8];
                let to = (rng.next(4) != 0).then(|| vec![rng.next(34) as u8]);
                let limit = rng.next(10) as usize;
                let expected: Entries = model
                    .iter()
                    .filter(|(k, _)| **k >= from && to.as_ref().is_none_or(|to| *k < to))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let got = w.range("t", &from, to.as_deref(), limit).expect("range");
                assert_eq!(
                    got, expected,
                    "round {round}: {from:?}..{to:?} limit {limit}"
                );
            }
            for k in 0..34u8 {
                assert_eq!(w.get("t", &[k]).expect("get"), model.get(&vec![k]).cloned());
            }
        }
    }

    #[test]
    fn service_tables_keep_their_stored_names_and_are_built_once() {
        for (name, stored) in [
            ("vault", "svc/vault"),
            ("t", "svc/t"),
            ("", "svc/"),
            ("svc/x", "svc/svc/x"),
        ] {
            let table = Table::service(name);
            assert_eq!(table.name(), stored);
            // Looked up by content, not by the caller's pointer.
            let owned = String::from(name);
            let again = Table::service(owned.as_str());
            assert_eq!(again, table);
            assert!(
                std::ptr::eq(again.name(), table.name()),
                "{name}: the name is shared, not built again"
            );
        }
        assert_ne!(Table::service("a"), Table::service("b"));
    }

    #[test]
    fn step_writes_land_in_the_svc_table() {
        let store = store_with(&[]);
        let mut w = StepWrites::new(store.clone());
        w.put("ledger", b"k", b"v");
        w.keep_step();
        let mut batch = WriteBatch::default();
        w.drain_into(&mut batch);
        let tables: Vec<&str> = batch.ops.iter().map(|op| op.table.name()).collect();
        assert_eq!(tables, ["svc/ledger"]);
        store.commit(batch).expect("commit");
        assert_eq!(
            StepWrites::new(store).get("ledger", b"k").expect("get"),
            Some(b"v".to_vec())
        );
    }
}
