//! The finance flows, each a `#[flow]`:
//!
//! * [`identity`]: the node's ledger identity (the key it signs
//!   issuances and notarisations with).
//! * [`resolve`]: `resolve_transactions` / `serve_transactions` — download
//!   and verify a transaction's dependencies from a peer.
//! * [`signatures`]: `collect_signatures` / `receive_to_sign` +
//!   [`signatures::sign_and_reply`] — a signature round, with the signer's
//!   own check between the two.
//! * [`notarise`]: `notarise` / `notary_service` — the notary round trip.
//! * [`finality`]: `finality` / `receive_finality` — notarise, record,
//!   and hand the final transaction to the other participants.
//! * [`trade`]: `sell` / `buy` — the two-party trade.
//! * [`issue`]: `issue_cash` / `issue_paper` — self-issuance.
//!
//! Flows reach the node's finance tables through [`ledger_db()`]; every write they
//! make there commits in the same database transaction as the step's
//! checkpoint (the runtime's `StepWrites`).

pub mod finality;
pub mod identity;
pub mod issue;
pub mod notarise;
pub mod report;
pub mod resolve;
pub mod signatures;
pub mod trade;

use crate::ledger_db::{LedgerDb, MemLedgerDb};
use flow_runtime::{FlowContext, FlowError, Party, StepWrites};
use serde::{Deserialize, Serialize};

/// The node's finance storage for this step: the runtime's `StepWrites`
/// (`ctx.step_writes()`: writes commit with the step), or else a
/// [`MemLedgerDb`] service (for driving a flow by hand in a test, e.g. with
/// `FlowDriver`). Fails rather than panics on a context with neither.
pub fn ledger_db(ctx: &mut FlowContext) -> Result<&mut dyn LedgerDb, FlowError> {
    let missing = || {
        FlowError::internal(
            "no node storage: finance flows must run on a flow_runtime node or MockNetwork (or be given a MemLedgerDb service)",
        )
    };
    if ctx.step_writes().is_some() {
        return ctx
            .step_writes()
            .map(|db| db as &mut dyn LedgerDb)
            .ok_or_else(missing);
    }
    ctx.services()
        .get_mut::<MemLedgerDb>()
        .map(|db| db as &mut dyn LedgerDb)
        .ok_or_else(missing)
}

/// Turns any error into a protocol error that ends the flow and is sent to
/// the counterparty.
pub fn fail(e: impl std::fmt::Display) -> FlowError {
    FlowError::new(e.to_string())
}

/// A notary as the trade flows need it: its ledger identity (named in
/// transactions, signs with its ledger key) and its node (where the
/// notarisation flow is sent). The two differ because a node's network key
/// belongs to the transport; the ledger key is the finance key manager's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Notary {
    /// The identity transactions name as their notary.
    pub party: Party,
    /// The network identity of the node that runs the notary service.
    pub node: Party,
}

impl LedgerDb for StepWrites {
    fn get(
        &self,
        table: crate::ledger_db::LedgerTable,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, crate::ledger_db::LedgerDbError> {
        StepWrites::get(self, table.name(), key)
            .map_err(|e| crate::ledger_db::LedgerDbError::Backend(e.to_string()))
    }

    fn put(
        &mut self,
        table: crate::ledger_db::LedgerTable,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), crate::ledger_db::LedgerDbError> {
        StepWrites::put(self, table.name(), key, value);
        Ok(())
    }

    fn remove(
        &mut self,
        table: crate::ledger_db::LedgerTable,
        key: &[u8],
    ) -> Result<(), crate::ledger_db::LedgerDbError> {
        StepWrites::delete(self, table.name(), key);
        Ok(())
    }

    fn range(
        &self,
        table: crate::ledger_db::LedgerTable,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<crate::ledger_db::LedgerEntries, crate::ledger_db::LedgerDbError> {
        StepWrites::range(self, table.name(), from, to, limit)
            .map_err(|e| crate::ledger_db::LedgerDbError::Backend(e.to_string()))
    }
}
