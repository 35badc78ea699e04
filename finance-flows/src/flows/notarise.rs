//! The notary round trip: a client sends a transaction, the notary fetches
//! the history it lacks (the client serves it), validates the transaction
//! and signs it or refuses it (see [`crate::notarise`]).
//!
//! ```text
//!   client (notarise)                         notary (notary_service)
//!     transaction ─────────────────────────────▶ checks notary, time window
//!       (serves it) ◀──────────────── fetch ──── resolve_transactions (deferred)
//!                   ◀──── Done(Signed | Rejected) notary::notarise
//! ```

use super::identity::ledger_identity_of;
use super::resolve::{
    Ending, dependencies, resolve_transactions, send_ending_resolution, serve_until_next,
};
use super::{fail, ledger_db};
use crate::crypto::{SecureHash, TxSignature};
use crate::ledger::SignedTransaction;
use crate::notarise::{self as notary, NotaryError};
use crate::resolve::{FetchRequest, Vending};
use flow_runtime::Payload;
use flow_runtime::prelude::*;
use serde::{Deserialize, Serialize};

/// What a client sends the notary: the transaction, and the transactions
/// it spends from that the notary is not known to hold
/// ([`notary::history_to_supply`]), so that in the steady state the
/// notary asks for nothing. Untrusted like any download: the notary keeps
/// only the ones it needs and verifies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotaryRequest {
    /// The transaction to notarise.
    pub transaction: SignedTransaction,
    /// History sent ahead of the notary's fetches.
    pub history: Vec<SignedTransaction>,
}

/// The notary's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotaryResponse {
    /// The notary's signature over the transaction id.
    Signed(TxSignature),
    /// Why it refused (e.g. a double spend).
    Rejected(String),
}

/// Asks the notary running on `notary_node` to notarise `stx`; returns its
/// signature. The notary validates `stx` and fetches the history it lacks
/// from this node (only `stx`'s dependency chain is served). A refusal
/// (double spend, time window, missing signature, contract) fails the flow
/// with the notary's reason.
#[flow]
pub async fn notarise(
    ctx: &mut FlowContext,
    notary_node: Party,
    stx: SignedTransaction,
) -> Result<TxSignature, FlowError> {
    ctx.set_progress("Requesting the notary's signature");
    let session: FlowSession = ctx.initiate_flow(&notary_node);
    let notary_key: PublicKey = *stx.tx.notary.key();
    let id: SecureHash = stx.id();
    // The notary may fetch the transaction's history, and only that.
    let mut vending: Vending = Vending::of_dependencies(&stx);
    let db = ledger_db(ctx)?;
    let history: Vec<SignedTransaction> =
        notary::history_to_supply(db, &notary_key, &stx).map_err(fail)?;
    // Remembered as it is sent, in the step that sends it (the two commit
    // together), not once the notary has signed: a thousand trades paying
    // from one issuance each sent it while the first one's answer was
    // still on its way. Should the notary not keep it after all (it
    // refused the request before resolving it), it fetches it from a
    // later request's requester, as any history it lacks.
    let remember = notary::worth_remembering(&stx, &history);
    notary::remember_supplied(db, &notary_key, &remember).map_err(fail)?;
    session.send(&NotaryRequest {
        transaction: stx,
        history,
    })?;
    let reply: Payload = loop {
        let request: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
        if let Some(reply) = serve_until_next(ctx, &session, &mut vending, request)? {
            break reply;
        }
    };
    match reply.decode::<NotaryResponse>()? {
        NotaryResponse::Signed(sig) if sig.by == notary_key && sig.is_valid_for(&id.0) => Ok(sig),
        NotaryResponse::Signed(_) => Err(FlowError::new(
            "the notary's signature is invalid or not by the transaction's notary",
        )),
        NotaryResponse::Rejected(reason) => {
            Err(FlowError::new(format!("the notary refused: {reason}")))
        }
    }
}

/// The notary's side of [`notarise`]: register it as the responder to
/// `notarise::Flow` on the notary node.
///
/// Receives the transaction, makes the checks that need no history (the
/// notary named, the time window), fetches the history it lacks from the
/// requester (verified like any resolution; a requester that cannot
/// supply it gets the resolution's error), then validates and commits
/// through [`notary::notarise`]. Its answer ends the resolution.
#[flow]
pub async fn notary_service(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let request: NotaryRequest = session.receive::<NotaryRequest>().await?.validate(Ok)?;
    let stx: SignedTransaction = request.transaction;
    let me = ledger_identity_of(ctx)?;
    let now = ctx.now();
    if let Err(e) = notary::precheck(&me, &stx, now) {
        tracing::info!(tx = %stx.id(), reason = %e, "notarisation refused");
        send_ending_resolution(&session, &NotaryResponse::Rejected(e.to_string()))?;
        return Ok(());
    }
    let deps: Vec<SecureHash> = dependencies(&stx);
    let fetching: FlowSession = session.clone();
    let _resolved: u32 = ctx
        .sub_flow(resolve_transactions(
            fetching,
            deps,
            request.history,
            Ending::Deferred,
        ))
        .await?;
    let me = ledger_identity_of(ctx)?;
    let now = ctx.now();
    let response = match notary::notarise(ledger_db(ctx)?, &me, &stx, now) {
        Ok(sig) => NotaryResponse::Signed(sig),
        Err(NotaryError::LedgerDb(e)) => {
            // Our own storage failed: not the client's fault, and nothing
            // was committed. Fail the step so the node retries it.
            return Err(FlowError::internal(format!("notary storage failed: {e}")));
        }
        Err(e) => {
            tracing::info!(tx = %stx.id(), reason = %e, "notarisation refused");
            NotaryResponse::Rejected(e.to_string())
        }
    };
    send_ending_resolution(&session, &response)?;
    Ok(())
}
