//! A read-only summary of a node's vault, for operators, the demo's
//! reconciliation and tests. A flow (finishing in one step) so that it reads
//! the node's committed state through the same storage as every other flow.

use super::{fail, ledger_db};
use crate::ledger::{CommercialPaper, ContractState, Currency, StateRef};
use crate::notarise as notary;
use crate::vault;
use flow_runtime::prelude::*;
use serde::{Deserialize, Serialize};

/// What a node's vault holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultReport {
    /// Unconsumed cash per (issuer, currency), in minor units. Issuers are
    /// told apart by key: cash issued under a known name by another key is
    /// a line of its own.
    pub cash: Vec<(Party, Currency, u64)>,
    /// Unconsumed commercial paper, with where it lives.
    pub papers: Vec<(StateRef, CommercialPaper)>,
    /// States still soft-locked (zero when no trade is in flight).
    pub locked: u32,
    /// Transactions recorded.
    pub transactions: u32,
    /// States the node's notary service recorded as consumed (zero on a
    /// node that is not a notary).
    pub notarised_inputs: u32,
}

impl VaultReport {
    /// Total unconsumed cash of `currency`, any issuer.
    pub fn cash_total(&self, currency: Currency) -> u64 {
        self.cash
            .iter()
            .filter(|(_, c, _)| *c == currency)
            .map(|(_, _, q)| *q)
            .fold(0, u64::saturating_add)
    }

    /// Unconsumed cash of `currency` issued by `issuer` (by key).
    pub fn cash_of(&self, issuer: &Party, currency: Currency) -> u64 {
        self.cash
            .iter()
            .filter(|(i, c, _)| i == issuer && *c == currency)
            .map(|(_, _, q)| *q)
            .fold(0, u64::saturating_add)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Summarises this node's vault.
#[flow]
pub async fn vault_report(ctx: &mut FlowContext) -> Result<VaultReport, FlowError> {
    let db = ledger_db(ctx)?;
    let cash = vault::cash_balances(db)
        .map_err(fail)?
        .into_iter()
        .map(|((issuer, currency), q)| (issuer, currency, q))
        .collect();
    let papers = vault::unconsumed(db)
        .map_err(fail)?
        .into_iter()
        .filter_map(|s| match s.state {
            ContractState::CommercialPaper(p) => Some((s.state_ref, p)),
            ContractState::Cash(_) => None,
        })
        .collect();
    Ok(VaultReport {
        cash,
        papers,
        locked: count(vault::locked_count(db).map_err(fail)?),
        transactions: count(vault::transactions(db).map_err(fail)?.len()),
        notarised_inputs: count(notary::committed_count(db).map_err(fail)?),
    })
}
