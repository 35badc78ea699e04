//! Services the node puts into every step's `ctx.services()`:
//! [`StepWrites`] (service tables committed atomically with the step) and
//! [`FlowStarter`] (starting flows from inside the node).

use crate::registry::NewFlow;
use crate::store::{Entries, Store, Table, WriteBatch};
use crate::{Flow, FlowError, FlowErrorKind};
use std::collections::BTreeMap;
use std::sync::Arc;

type Overlay = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// Key/value tables for node services (a vault, a notary's spent-input
/// index, ...) whose writes commit in the SAME store transaction as the step
/// that made them: if the step fails or panics, its writes vanish with it;
/// if it commits, they are durable together with its checkpoint and
/// messages.
///
/// Reach it in a flow step with
/// `ctx.services().get_mut::<StepWrites>()`. Reads see, in order: this
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
        let k = (Table::service(table), key.to_vec());
        if let Some(v) = self.step.get(&k).or_else(|| self.batch.get(&k)) {
            return Ok(v.clone());
        }
        self.store
            .get(&k.0, key)
            .map_err(|e| FlowError::with_kind(FlowErrorKind::Transient, e.to_string()))
    }

    /// Up to `limit` entries of `table` with `from <= key < to`, in key
    /// order, including uncommitted writes of this step and batch.
    pub fn range(
        &self,
        table: &str,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, FlowError> {
        let t = Table::service(table);
        let in_range = |k: &[u8]| k >= from && to.is_none_or(|to| k < to);
        let pending: Vec<_> = self
            .batch
            .iter()
            .chain(self.step.iter())
            .filter(|((tt, k), _)| *tt == t && in_range(k))
            .collect();
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .store
            .range(&t, from, to, limit.saturating_add(pending.len()))
            .map_err(|e| FlowError::with_kind(FlowErrorKind::Transient, e.to_string()))?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        // Batch first, then step: the step's writes win.
        for ((_, k), v) in pending {
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
            .insert((Table::service(table), key.to_vec()), Some(value.to_vec()));
    }

    /// Stages the deletion of `key` from `table`; committed with the step.
    pub fn delete(&mut self, table: &str, key: &[u8]) {
        self.step
            .insert((Table::service(table), key.to_vec()), None);
    }

    pub(crate) fn keep_step(&mut self) {
        let step = std::mem::take(&mut self.step);
        self.batch.extend(step);
    }

    pub(crate) fn discard_step(&mut self) {
        self.step.clear();
    }

    pub(crate) fn drain_into(&mut self, batch: &mut WriteBatch) {
        self.step.clear();
        for ((table, key), value) in std::mem::take(&mut self.batch) {
            match value {
                Some(v) => batch.put(table, key, v),
                None => batch.delete(table, key),
            }
        }
    }
}

/// Starts flows from inside the node: a service or flow step calls
/// `ctx.services().get_mut::<FlowStarter>().start(flow)`. The new flow is
/// created in the same commit as the step (and not at all if the step
/// fails). Refused while the node is draining, like flows started from
/// outside.
pub struct FlowStarter {
    pub(crate) draining: bool,
    pub(crate) requests: Vec<NewFlow>,
}

impl FlowStarter {
    /// Queues `flow` to start when the current step commits.
    pub fn start<F: Flow>(&mut self, flow: F) -> Result<(), FlowError> {
        if self.draining {
            return Err(FlowError::with_kind(
                FlowErrorKind::Refused,
                format!(
                    "cannot start `{}`: the node is draining (it takes no new flows until an operator stops draining)",
                    F::NAME
                ),
            ));
        }
        self.requests.push(NewFlow::new(&flow)?);
        Ok(())
    }
}
