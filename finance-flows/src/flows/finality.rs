//! Finality: get the notary's signature, record the transaction, and give
//! it to every other participant, who verify it and record it too.

use super::notarise::notarise;
use super::resolve::{
    Ending, Served, dependencies, peer_ended, resolve_transactions, serve_transactions,
};
use super::{fail, ledger_db};
use crate::crypto::{SecureHash, TxSignature};
use crate::ledger::SignedTransaction;
use crate::resolve::Vending;
use crate::vault;
use flow_runtime::prelude::*;

/// Verifies `stx` (all signatures but the notary's), notarises it through
/// `notary_node` if it needs a notary, records it in the vault, then sends
/// it on each of `sessions` and serves the dependencies each peer asks for
/// (each peer runs [`receive_finality`](fn@receive_finality)). Returns the
/// final transaction.
///
/// Serving a peer ends when it says `Done` or when its flow ends (a peer
/// that passed [`Ending::Deferred`] to `receive_finality` sends nothing
/// more): either way it holds what it wanted, and this node's own outcome,
/// the recorded transaction, does not depend on it. A peer that ends with
/// a protocol error fails this flow with that error, as before.
///
/// `stx` comes from this node's own code, not from a peer. When it needs a
/// notary, its signatures are not checked cryptographically here: the
/// notary verifies every one of them before signing (and nothing is
/// recorded without the notary's signature, itself verified by
/// [`notarise`]), so checking them here too would only double the cost.
/// The signer set and the contracts are checked here: the vault records
/// only what this node verified itself. A transaction without a notary is
/// verified in full.
#[flow]
pub async fn finality(
    ctx: &mut FlowContext,
    stx: SignedTransaction,
    notary_node: Party,
    sessions: Vec<FlowSession>,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Verifying the transaction");
    let notary_key = *stx.tx.notary.key();
    if stx.tx.needs_notary() {
        stx.verify_trusting_signatures(&[notary_key], vault::resolver(ledger_db(ctx)?))
            .map_err(fail)?;
    } else {
        stx.verify(vault::resolver(ledger_db(ctx)?)).map_err(fail)?;
    }
    let mut fin: SignedTransaction = stx;
    if fin.tx.needs_notary() {
        ctx.set_progress("Notarising");
        let to_notarise: SignedTransaction = fin.clone();
        let sig: TxSignature = ctx.sub_flow(notarise(notary_node, to_notarise)).await?;
        fin.add_signature(sig);
    }
    vault::record(ledger_db(ctx)?, &fin).map_err(fail)?;
    ctx.set_progress("Sending the final transaction");
    for session in sessions {
        session.send(&fin)?;
        let vending: Vending = Vending::of_dependencies(&fin);
        let served: Result<Served, FlowError> =
            ctx.sub_flow(serve_transactions(session, vending)).await;
        match served {
            Ok(Served { next: None, .. }) => {}
            Ok(Served { next: Some(_), .. }) => {
                return Err(FlowError::new(
                    "the peer sent a message with the end of its resolution of the final transaction, which finality does not expect: receive_finality's caller must send nothing on the session until it returns",
                ));
            }
            Err(e) if peer_ended(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(fin)
}

/// The other end of [`finality`](fn@finality): receives the final transaction (which must
/// have the id `expected`, if given), resolves its dependencies, verifies it
/// fully and records it.
///
/// `verified`: signatures over `expected` that this node has already
/// verified or made itself (e.g. the proposal's signatures and its own);
/// a signature of the final transaction equal to one of them is not checked
/// again (~27 µs each). Ignored without `expected`. Pass an empty list when
/// in doubt.
///
/// `ending`: [`Ending::Done`] tells the peer at once that the resolution is
/// over. [`Ending::Deferred`] saves that message for a caller whose flow
/// ends right after this returns (the trade's seller): `finality` then
/// takes the end of the flow as the end of the resolution, so the caller
/// must send nothing more on `session`.
#[flow]
pub async fn receive_finality(
    ctx: &mut FlowContext,
    session: FlowSession,
    expected: Option<SecureHash>,
    verified: Vec<TxSignature>,
    ending: Ending,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Waiting for the final transaction");
    let stx: SignedTransaction = session
        .receive::<SignedTransaction>()
        .await?
        .validate(|stx| match expected {
            Some(id) if stx.id() != id => Err(FlowError::new(format!(
                "expected the final transaction {id} but received {}",
                stx.id()
            ))),
            _ => Ok(stx),
        })?;
    let deps: Vec<SecureHash> = dependencies(&stx);
    let fetching: FlowSession = session.clone();
    let _resolved: u32 = ctx
        .sub_flow(resolve_transactions(fetching, deps, Vec::new(), ending))
        .await?;
    ctx.set_progress("Recording the final transaction");
    let db = ledger_db(ctx)?;
    // The received id was checked against `expected` above, so signatures
    // verified over `expected` hold for it, and it is the id (not hashed
    // again).
    let (id, known): (SecureHash, &[TxSignature]) = match expected {
        Some(id) => (id, &verified),
        None => (stx.id(), &[]),
    };
    stx.verify_as(id, &[], known, vault::resolver(db))
        .map_err(fail)?;
    vault::record_as(db, &stx, &id).map_err(fail)?;
    Ok(stx)
}
