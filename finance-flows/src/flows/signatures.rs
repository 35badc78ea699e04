//! A signature round: the initiator sends a partly signed transaction, the
//! signer resolves its dependencies, checks it (its own rules, in its own
//! code between [`receive_to_sign`](fn@receive_to_sign) and
//! [`sign_and_reply`]), and returns its signatures — made with exactly the
//! keys its check approved, never with every key it holds that the
//! transaction happens to list.
//!
//! ```text
//!   initiator                                 signer
//!   collect_signatures                        receive_to_sign
//!     [its own open resolution] ── fetch ──▶    (serves it)
//!     Done(proposal) ───────────────────────▶
//!       (serves it) ◀────────────────── fetch ── resolve_transactions (deferred)
//!                   ◀──────── Done(signatures) ── sign_and_reply
//! ```
//!
//! Both messages of the round travel inside a [`FetchRequest::Done`]
//! ([`send_ending_resolution`]), so each also ends the resolution its
//! sender may have been running on the session, and a round in which
//! neither side lacks a dependency is two messages.

use super::resolve::{
    Ending, dependencies, resolve_transactions, send_ending_resolution, serve_until_next,
};
use super::{fail, ledger_db};
use crate::crypto::{SecureHash, TxSignature};
use crate::keys;
use crate::ledger::SignedTransaction;
use crate::resolve::{FetchRequest, Vending};
use crate::vault;
use flow_runtime::Payload;
use flow_runtime::prelude::*;

/// Sends `stx` to the peer on `session` (which runs
/// [`receive_to_sign`](fn@receive_to_sign)), serves the dependencies it
/// asks for, and adds the signatures it returns.
/// Each returned signature must be valid and by a key whose signature is
/// still missing. Returns the transaction with the peer's signatures added.
///
/// The proposal goes inside a [`FetchRequest::Done`]: a resolution this
/// node left open on `session` ([`Ending::Deferred`], e.g. a buyer's of the
/// offered asset's history) ends with it.
#[flow]
pub async fn collect_signatures(
    ctx: &mut FlowContext,
    session: FlowSession,
    stx: SignedTransaction,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Sending the transaction for signing");
    send_ending_resolution(&session, &stx)?;
    ctx.set_progress("Waiting for signatures");
    // The signer may fetch the proposal's history, and only that.
    let mut vending: Vending = Vending::of_dependencies(&stx);
    let reply: Payload = loop {
        let request: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
        if let Some(reply) = serve_until_next(ctx, &session, &mut vending, request)? {
            break reply;
        }
    };
    // Computed after the wait, so the checkpoint does not carry them.
    let id: SecureHash = stx.id();
    let missing: Vec<PublicKey> = stx.missing_signers().into_iter().collect();
    let sigs: Vec<TxSignature> = check_returned_signatures(reply.decode()?, &id, &missing)?;
    let mut signed: SignedTransaction = stx;
    for sig in sigs {
        signed.add_signature(sig);
    }
    Ok(signed)
}

fn check_returned_signatures(
    sigs: Vec<TxSignature>,
    id: &SecureHash,
    missing: &[PublicKey],
) -> Result<Vec<TxSignature>, FlowError> {
    if sigs.is_empty() {
        return Err(FlowError::new("the counterparty returned no signature"));
    }
    for sig in &sigs {
        if !missing.contains(&sig.by) {
            return Err(FlowError::new(format!(
                "the counterparty signed with {:?}, which the transaction does not need",
                sig.by
            )));
        }
        if !sig.is_valid_for(&id.0) {
            tracing::warn!(tx = %id, key = ?sig.by, "counterparty returned an invalid signature");
            return Err(FlowError::new(format!(
                "the counterparty's signature by {:?} is invalid (tampered)",
                sig.by
            )));
        }
    }
    Ok(sigs)
}

/// The signer's first half: serves the dependencies the initiator (on
/// `session`, running [`collect_signatures`](fn@collect_signatures)) may
/// still be resolving, receives the transaction to sign and resolves its
/// dependencies from the peer. The caller then applies its own checks and, if satisfied, calls
/// [`sign_and_reply`] or [`sign_verified_and_reply`], whose reply also ends
/// this resolution (left open: [`Ending::Deferred`]); to refuse, it returns
/// an error, which the initiator receives.
///
/// While it waits it serves the initiator's fetches within `vending`: the
/// history of what this node sent the initiator before the round (e.g. an
/// offered asset's transaction), or nothing ([`Vending::default`]).
#[flow]
pub async fn receive_to_sign(
    ctx: &mut FlowContext,
    session: FlowSession,
    vending: Vending,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Receiving the transaction to sign");
    let mut vending: Vending = vending;
    let stx: SignedTransaction = loop {
        let request: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
        if let Some(proposal) = serve_until_next(ctx, &session, &mut vending, request)? {
            break proposal.decode::<SignedTransaction>()?;
        }
    };
    let deps: Vec<SecureHash> = dependencies(&stx);
    let fetching: FlowSession = session.clone();
    let _resolved: u32 = ctx
        .sub_flow(resolve_transactions(
            fetching,
            deps,
            Vec::new(),
            Ending::Deferred,
        ))
        .await?;
    Ok(stx)
}

/// The signer's second half (does not suspend): verifies `stx` — every
/// signature present valid, contracts satisfied, only the signatures of
/// `keys` and of `notary_key` missing — signs with exactly `keys`, and
/// sends the signatures on `session`. Returns the signatures made. The
/// reply ends the resolution [`receive_to_sign`](fn@receive_to_sign) left
/// open.
///
/// `keys` are the keys the caller's own check found the deal to name
/// (e.g. [`trade::check_proposal`](crate::trade::check_proposal)'s
/// result): a signature authorises every command that lists its key, so
/// the caller must have checked each of those commands before. A
/// transaction that also needs another key of this node fails the
/// verification (its signature is missing), so this node never signs
/// for more than it checked.
pub fn sign_and_reply(
    ctx: &mut FlowContext,
    session: &FlowSession,
    stx: &SignedTransaction,
    notary_key: &PublicKey,
    keys: &[PublicKey],
) -> Result<Vec<TxSignature>, FlowError> {
    let db = ledger_db(ctx)?;
    let mut allowed = keys.to_vec();
    allowed.push(*notary_key);
    stx.verify_except(&allowed, vault::resolver(db))
        .map_err(fail)?;
    sign_with(db, session, stx, keys)
}

/// As [`sign_and_reply`] without verifying `stx` again: for a caller that
/// has just verified it in full in the same step, with the same allowance
/// for the missing signatures — as
/// [`trade::check_proposal`](crate::trade::check_proposal) does — so the
/// signatures present are not checked twice (~27 µs each). Signs with
/// exactly `keys`, each of which must still be missing.
pub fn sign_verified_and_reply(
    ctx: &mut FlowContext,
    session: &FlowSession,
    stx: &SignedTransaction,
    keys: &[PublicKey],
) -> Result<Vec<TxSignature>, FlowError> {
    let db = ledger_db(ctx)?;
    sign_with(db, session, stx, keys)
}

/// Signs `stx` with exactly `ours` and sends the signatures. Each key must
/// be one the transaction still needs (and this node holds: signing fails
/// otherwise).
fn sign_with(
    db: &dyn crate::ledger_db::LedgerDb,
    session: &FlowSession,
    stx: &SignedTransaction,
    ours: &[PublicKey],
) -> Result<Vec<TxSignature>, FlowError> {
    if ours.is_empty() {
        return Err(FlowError::new("no key to sign the transaction with"));
    }
    let missing = stx.missing_signers();
    let id = stx.id();
    let mut sigs = Vec::with_capacity(ours.len());
    for key in ours {
        if !missing.contains(key) {
            return Err(FlowError::new(format!(
                "the transaction does not need a signature by {key:?}"
            )));
        }
        sigs.push(keys::sign(db, key, &id.0).map_err(fail)?);
    }
    send_ending_resolution(session, &sigs)?;
    Ok(sigs)
}
