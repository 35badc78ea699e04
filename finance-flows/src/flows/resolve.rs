//! Dependency resolution between two nodes, on a session they already share
//! (the peer that sent us a transaction serves its history on the same
//! session).

use super::{fail, store};
use crate::crypto::SecureHash;
use crate::ledger::SignedTransaction;
use crate::resolution::{self, FetchReply, FetchRequest, Resolution};
use flow_runtime::prelude::*;

/// The ids of the transactions `stx` spends from: what must be resolved
/// before `stx` can be verified.
pub fn dependencies(stx: &SignedTransaction) -> Vec<SecureHash> {
    let mut ids: Vec<SecureHash> = stx.tx.inputs.iter().map(|i| i.tx_id).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Downloads from the peer on `session` every transaction in the
/// dependency graph of `ids` that this node does not hold yet, breadth
/// first, then verifies them oldest first and records them. Returns how many
/// were recorded. The peer must run [`serve_transactions`] on its end.
///
/// `supplied`: transactions the peer already sent with an earlier message
/// (e.g. the asset's transaction in a trade offer); those among `ids` are
/// not asked for again but verified like the rest (see
/// [`Resolution::supply`]). Pass an empty list when there are none.
#[flow]
pub async fn resolve_transactions(
    ctx: &mut FlowContext,
    session: FlowSession,
    ids: Vec<SecureHash>,
    supplied: Vec<SignedTransaction>,
) -> Result<u32, FlowError> {
    ctx.set_progress("Downloading dependencies");
    let mut resolution: Resolution = Resolution::new(ids);
    resolution.supply(store(ctx)?, supplied).map_err(fail)?;
    loop {
        let request: Vec<SecureHash> = resolution.next_request(store(ctx)?).map_err(fail)?;
        if request.is_empty() {
            break;
        }
        let message: FetchRequest = FetchRequest::Transactions(request);
        let reply: FetchReply = session
            .send_and_receive::<FetchReply>(&message)
            .await?
            .validate(Ok)?;
        resolution.accept(reply).map_err(fail)?;
    }
    session.send(&FetchRequest::Done)?;
    ctx.set_progress("Verifying dependencies");
    let recorded: usize = resolution.finish(store(ctx)?).map_err(fail)?;
    Ok(u32::try_from(recorded).unwrap_or(u32::MAX))
}

/// The other end of [`resolve_transactions`]: answers fetch requests from
/// the vault until the peer says it is done. Returns how many transactions
/// were sent.
#[flow]
pub async fn serve_transactions(
    ctx: &mut FlowContext,
    session: FlowSession,
) -> Result<u32, FlowError> {
    let mut served: u32 = 0;
    loop {
        let request: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
        let ids: Vec<SecureHash> = match request {
            FetchRequest::Done => break,
            FetchRequest::Transactions(ids) => ids,
        };
        let reply: FetchReply = resolution::serve(store(ctx)?, &ids).map_err(fail)?;
        served = served.saturating_add(u32::try_from(reply.len()).unwrap_or(u32::MAX));
        session.send(&reply)?;
    }
    Ok(served)
}
