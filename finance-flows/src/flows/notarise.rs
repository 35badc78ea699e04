//! The notary round trip: a client sends a transaction, the notary's
//! uniqueness service signs it or refuses it.

use super::identity::ledger_identity_of;
use super::store;
use crate::crypto::TxSignature;
use crate::ledger::SignedTransaction;
use crate::notary::{self, NotaryError};
use flow_runtime::prelude::*;
use serde::{Deserialize, Serialize};

/// The notary's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotaryResponse {
    /// The notary's signature over the transaction id.
    Signed(TxSignature),
    /// Why it refused (e.g. a double spend).
    Rejected(String),
}

/// Asks the notary running on `notary_node` to notarise `stx`; returns its
/// signature. A refusal (double spend, time window, missing signature)
/// fails the flow with the notary's reason.
#[flow]
pub async fn notarise(
    ctx: &mut FlowContext,
    notary_node: Party,
    stx: SignedTransaction,
) -> Result<TxSignature, FlowError> {
    ctx.set_progress("Requesting the notary's signature");
    let session: FlowSession = ctx.initiate_flow(&notary_node);
    let notary_key: PublicKey = *stx.tx.notary.key();
    let id: crate::crypto::SecureHash = stx.id();
    let response: NotaryResponse = session
        .send_and_receive::<NotaryResponse>(&stx)
        .await?
        .validate(Ok)?;
    match response {
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
#[flow]
pub async fn notary_service(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let stx: SignedTransaction = session.receive::<SignedTransaction>().await?.validate(Ok)?;
    let me = ledger_identity_of(ctx)?;
    let now = ctx.now();
    let response = match notary::notarise(store(ctx)?, &me, &stx, now) {
        Ok(sig) => NotaryResponse::Signed(sig),
        Err(NotaryError::Store(e)) => {
            // Our own storage failed: not the client's fault, and nothing
            // was committed. Fail the step so the node retries it.
            return Err(FlowError::internal(format!("notary storage failed: {e}")));
        }
        Err(e) => {
            tracing::info!(tx = %stx.id(), reason = %e, "notarisation refused");
            NotaryResponse::Rejected(e.to_string())
        }
    };
    session.send(&response)?;
    Ok(())
}
