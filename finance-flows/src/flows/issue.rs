//! Issuance: a node creates cash or commercial paper with itself (its
//! ledger identity) as issuer and a fresh key of its own as owner. No
//! notary round trip is needed (nothing is consumed), so these flows finish
//! in one step; they are flows so that the issuance commits atomically with
//! the rest of the node's state and can be started like any other work.

use super::identity::ledger_identity_of;
use super::{Notary, fail, ledger_db};
use crate::keys;
use crate::ledger::{
    Amount, Cash, CommandData, CommercialPaper, ContractState, SignedTransaction,
    TransactionBuilder,
};
use crate::vault;
use flow_runtime::Timestamp;
use flow_runtime::prelude::*;

/// Issues `coins` cash states of `amount` each, owned by this node. Several
/// coins let several trades pay at the same time (coins are soft-locked per
/// trade). Returns the issuance transaction.
#[flow]
pub async fn issue_cash(
    ctx: &mut FlowContext,
    amount: Amount,
    coins: u32,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Issuing cash");
    if amount.quantity == 0 || coins == 0 {
        return Err(FlowError::new(
            "issue a positive amount in at least one coin",
        ));
    }
    let issuer = ledger_identity_of(ctx)?;
    let db = ledger_db(ctx)?;
    let owner = keys::fresh_key(db).map_err(fail)?;
    let mut builder = TransactionBuilder::new(notary.party);
    for _ in 0..coins {
        builder.add_output(ContractState::Cash(Cash {
            amount,
            issuer: issuer.clone(),
            owner,
        }));
    }
    builder.add_command(CommandData::CashIssue, vec![*issuer.key()]);
    sign_verify_record(db, builder, issuer.key())
}

/// Issues one commercial paper promising `face_value` at `maturity`, owned
/// by this node under a fresh key. Returns the issuance transaction; the
/// paper is its output 0.
#[flow]
pub async fn issue_paper(
    ctx: &mut FlowContext,
    face_value: Amount,
    maturity: Timestamp,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Issuing commercial paper");
    let issuer = ledger_identity_of(ctx)?;
    let db = ledger_db(ctx)?;
    let owner = keys::fresh_key(db).map_err(fail)?;
    let mut builder = TransactionBuilder::new(notary.party);
    builder.add_output(ContractState::CommercialPaper(CommercialPaper {
        issuer: issuer.clone(),
        face_value,
        maturity,
        owner,
    }));
    builder.add_command(CommandData::PaperIssue, vec![*issuer.key()]);
    sign_verify_record(db, builder, issuer.key())
}

fn sign_verify_record(
    db: &mut dyn crate::ledger_db::LedgerDb,
    builder: TransactionBuilder,
    issuer_key: &flow_runtime::PublicKey,
) -> Result<SignedTransaction, FlowError> {
    let tx = builder.to_wire();
    let id = tx.id();
    let sig = keys::sign(db, issuer_key, &id.0).map_err(fail)?;
    let stx = SignedTransaction::new(tx).with_signature(sig);
    stx.verify(vault::resolver(db)).map_err(fail)?;
    vault::record(db, &stx).map_err(fail)?;
    Ok(stx)
}
