//! The operator's actions on a [`MockNetwork`]'s nodes (drain, kill,
//! retry, the hospital, dumps) and direct access to a node's engine.

use super::*;
use crate::node::{
    CheckpointDump, HospitalEntry, NodeCore, NodeError, RunId, UpgradeReport, check_upgrade,
};

impl MockNetwork {
    /// Makes `node` stop (or resume) taking new flows and sessions.
    pub fn set_draining(&mut self, node: NodeId, draining: bool) {
        self.nodes[node.0].draining = draining;
        self.core(node).set_draining(draining);
    }

    /// Flows with a checkpoint on `node`; 0 once a draining node is done.
    pub fn flows_in_flight(&mut self, node: NodeId) -> u64 {
        self.core(node).flows_in_flight().unwrap_or(u64::MAX)
    }

    /// Kills a flow on `node`: counterparties told, checkpoint removed,
    /// result set to a `Killed` error.
    pub fn kill_flow(&mut self, node: NodeId, run: RunId) -> Result<(), NodeError> {
        let now = self.clock;
        self.try_operate(node.0, |c| c.kill(now, run))
    }

    /// Lets a hospitalised flow on `node` run again.
    pub fn retry_flow(&mut self, node: NodeId, run: RunId) -> Result<(), NodeError> {
        let now = self.clock;
        self.try_operate(node.0, |c| c.retry(now, run))
    }

    /// Flows in `node`'s hospital.
    pub fn hospital(&mut self, node: NodeId) -> Vec<HospitalEntry> {
        self.core(node).hospital().unwrap_or_default()
    }

    /// The pre-deploy check on `node`'s database with the code its next
    /// restart registers (after [`register_flow`](Self::register_flow),
    /// [`unregister_flow`](Self::unregister_flow) and
    /// [`register_migration`](Self::register_migration)): what a node
    /// binary's `--check-upgrade` prints. Reads, never writes.
    pub fn check_upgrade(&mut self, node: NodeId) -> Result<UpgradeReport, NodeError> {
        self.core(node);
        let slot = &self.nodes[node.0];
        match &slot.store {
            Some(store) => check_upgrade(store.as_ref(), &slot.registry),
            None => Err(NodeError::Store(format!(
                "node {} has no database open",
                node.0
            ))),
        }
    }

    /// The operator's checkpoint dump of `node`.
    pub fn dump(&mut self, node: NodeId) -> Vec<CheckpointDump> {
        let now = self.clock;
        self.core(node).dump(now).unwrap_or_default()
    }

    /// The dump as JSON.
    pub fn dump_json(&mut self, node: NodeId) -> String {
        let now = self.clock;
        self.core(node)
            .dump_json(now)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Logs (and returns) the flows on `node` waiting longer than the
    /// configured `long_wait_warning`.
    pub fn warn_long_waits(&mut self, node: NodeId) -> Vec<RunId> {
        let now = self.clock;
        let limit = self.config.long_wait_warning;
        self.core(node)
            .warn_long_waits(now, limit)
            .unwrap_or_default()
    }

    /// Overwrites a checkpoint's state bytes (repair tool; tests use it to
    /// simulate corruption).
    pub fn replace_checkpoint_state(
        &mut self,
        node: NodeId,
        run: RunId,
        state: Vec<u8>,
    ) -> Result<(), NodeError> {
        let now = self.clock;
        self.try_operate(node.0, |c| c.replace_checkpoint_state(now, run, state))
    }

    /// Direct access to a node's engine, for checks the wrappers above do not
    /// cover.
    pub fn node_core(&mut self, node: NodeId) -> &mut NodeCore {
        self.core(node)
    }
}
