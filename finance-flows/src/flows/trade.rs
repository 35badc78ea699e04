//! The two-party trade: the seller offers an asset for a price, the buyer
//! checks the offer and the asset's history, proposes a transaction that
//! pays for it, the seller checks it is paid exactly and signs, and the
//! buyer notarises the transaction and hands it back (finality).
//!
//! ```text
//!   seller                                   buyer
//!   sell(buyer, asset, price, notary)
//!     TradeOffer (+ asset tx) ──────────────▶ buy(session, max price, kind, notary)
//!                                             resolve_transactions (older history;
//!     receive_to_sign: serve ◀──── fetch ───    deferred: no Done of its own)
//!                      ◀── Done(proposal) ─── collect_signatures
//!       resolve_transactions ─── fetch ─────▶   serve (cash history)
//!       (deferred)
//!     check_proposal; sign ── Done(sigs) ───▶
//!                                             finality: notarise, record
//!     receive_finality ◀───── final tx ──────   serve
//!       resolve_transactions ─── fetch ─────▶
//!       (deferred) ── end of the seller's flow ▶ (serving over)
//! ```
//!
//! The fetches happen only when a side lacks history (the seller before it
//! holds the buyer's cash issuance; a buyer of a traded asset). In the
//! steady state a trade is four messages between the two (offer, proposal,
//! signatures, final transaction) and the notary's round trip: each
//! resolution's "done" rides on its side's next message or its flow's end
//! (see [`super::resolve::Ending`]).
//!
//! Both sides soft-lock what they put in (the seller its asset, the buyer
//! its coins) under the session's id and release the locks if the trade
//! fails, so concurrent trades never pick the same states and a failed
//! trade leaves nothing reserved.
//!
//! A silent counterparty cannot hold them forever: each side bounds its
//! waits by the node's trade timeout ([`crate::trade::trade_timeout`],
//! five minutes unless set) with a receive deadline, until the point after
//! which the transaction may become final without it — the seller's
//! signature, the buyer's request to the notary. From there each side
//! waits for the outcome: giving up then would release states the ledger
//! may already have consumed.

use super::finality::{finality, receive_finality};
use super::resolve::{Ending, resolve_transactions};
use super::signatures::{collect_signatures, receive_to_sign, sign_verified_and_reply};
use super::{Notary, fail, ledger_db};
use crate::crypto::{SecureHash, TxSignature};
use crate::keys;
use crate::ledger::{Amount, AssetKind, SignedTransaction, StateRef};
use crate::resolve::Vending;
use crate::trade::{self, TradeOffer};
use crate::vault::{self, LockId};
use flow_runtime::prelude::*;

/// Bounds the negotiation by the node's trade timeout
/// ([`trade::trade_timeout`]): a counterparty that goes silent before the
/// transaction is signed (seller) or sent for notarisation (buyer) fails
/// the trade, which releases its soft locks.
fn bound_the_negotiation(ctx: &mut FlowContext) -> Result<(), FlowError> {
    let timeout = trade::trade_timeout(ledger_db(ctx)?).map_err(fail)?;
    ctx.set_receive_deadline(timeout);
    Ok(())
}

/// Sets this node's trade timeout (see [`trade::set_trade_timeout`]); its
/// trades started afterwards use it.
#[flow]
pub async fn set_trade_timeout(ctx: &mut FlowContext, timeout_ms: u64) -> Result<(), FlowError> {
    trade::set_trade_timeout(
        ledger_db(ctx)?,
        std::time::Duration::from_millis(timeout_ms),
    )
    .map_err(fail)
}

/// Releases the trade's soft locks after a failure; the failure itself is
/// what the flow returns, so a release error is only logged.
fn release(ctx: &mut FlowContext, lock: LockId) {
    match ledger_db(ctx).map(|db| vault::release_locks(db, lock)) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(lock, "cannot release the trade's soft locks: {e}"),
        Err(e) => tracing::error!(lock, "cannot release the trade's soft locks: {e}"),
    }
}

/// Sells the state at `asset` (which this node must own) to `buyer` for
/// `price`, with `notary`. Returns the final transaction. The buyer's node
/// must have [`buy`](fn@buy) registered as the responder to `sell::Flow`.
///
/// Version 2: the resolutions' `Done` rides on the next message (see the
/// module's diagram). A peer still running version 1 fails the trade on the
/// first message it cannot decode; nothing is misread.
#[flow(version = 2)]
pub async fn sell(
    ctx: &mut FlowContext,
    buyer: Party,
    asset: StateRef,
    price: Amount,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Offering the asset");
    bound_the_negotiation(ctx)?;
    let session: FlowSession = ctx.initiate_flow(&buyer);
    let lock: LockId = session.id().0;
    let offer: TradeOffer = make_offer(ctx, asset, price, lock)?;
    let steps: FlowSession = session.clone();
    let outcome: Result<SignedTransaction, FlowError> =
        ctx.sub_flow(sell_steps(steps, offer, notary)).await;
    if outcome.is_err() {
        release(ctx, lock);
    }
    outcome
}

/// Locks the asset and builds the offer, with a fresh key to be paid to.
fn make_offer(
    ctx: &mut FlowContext,
    asset: StateRef,
    price: Amount,
    lock: LockId,
) -> Result<TradeOffer, FlowError> {
    let db = ledger_db(ctx)?;
    let state = vault::state(db, &asset).map_err(fail)?.ok_or_else(|| {
        FlowError::new(format!(
            "cannot sell {asset}: it is not an unconsumed state of this node"
        ))
    })?;
    vault::lock_states(db, &[asset], lock).map_err(fail)?;
    let pay_to = keys::fresh_key(db).map_err(fail)?;
    let history = vault::transaction(db, &asset.tx_id)
        .map_err(fail)?
        .into_iter()
        .collect();
    Ok(TradeOffer {
        asset: state,
        price,
        pay_to,
        history,
    })
}

/// The seller's conversation, after the offer is prepared. The caller must
/// send nothing more on `session` afterwards: the buyer's finality takes
/// the end of the seller's flow as the end of its last resolution.
#[flow]
pub async fn sell_steps(
    ctx: &mut FlowContext,
    session: FlowSession,
    offer: TradeOffer,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    session.send(&offer)?;
    // The buyer may fetch the asset's history, and only that.
    let mut vending: Vending = Vending::of([offer.asset.state_ref.tx_id]);
    for sent in &offer.history {
        vending.allow_dependencies_of(sent);
    }
    let offer: TradeOffer = offer.without_history();
    // receive_to_sign serves the older history the buyer may still fetch
    // before its proposal ends that resolution.
    ctx.set_progress("Waiting for the buyer's proposal");
    let signing: FlowSession = session.clone();
    let proposal: SignedTransaction = ctx.sub_flow(receive_to_sign(signing, vending)).await?;
    ctx.set_progress("Checking the buyer's proposal");
    let keys: Vec<PublicKey> =
        trade::check_proposal(ledger_db(ctx)?, &proposal, &offer, &notary.party).map_err(fail)?;
    ctx.set_progress("Signing");
    // check_proposal verified the proposal in full: sign, with exactly the
    // key it approved, without a second pass.
    let ours: Vec<TxSignature> = sign_verified_and_reply(ctx, &session, &proposal, &keys)?;
    // Signed: the buyer may notarise at any moment, so the paper stays
    // reserved until the final transaction comes, however long that takes.
    ctx.clear_receive_deadline();
    ctx.set_progress("Waiting for the final transaction");
    let expected: Option<SecureHash> = Some(proposal.id());
    // The buyer's signatures were verified above and ours we just made: the
    // final transaction's copies of them need no second check.
    let mut verified: Vec<TxSignature> = proposal.sigs.clone();
    verified.extend(ours);
    // This flow (and `sell`) ends right after: the end of the flow tells
    // the buyer's finality that the resolution is over.
    let fin: SignedTransaction = ctx
        .sub_flow(receive_finality(
            session,
            expected,
            verified,
            Ending::Deferred,
        ))
        .await?;
    Ok(fin)
}

/// Buys what the seller on `session` offers, if it is of kind `wanted` and
/// costs at most `acceptable_price`, paying from this node's vault. Returns
/// the final transaction. Register it as the responder to `sell::Flow`.
#[flow]
pub async fn buy(
    ctx: &mut FlowContext,
    session: FlowSession,
    acceptable_price: Amount,
    wanted: AssetKind,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Buying");
    bound_the_negotiation(ctx)?;
    let lock: LockId = session.id().0;
    let steps: FlowSession = session.clone();
    let outcome: Result<SignedTransaction, FlowError> = ctx
        .sub_flow(buy_steps(steps, acceptable_price, wanted, notary, lock))
        .await;
    if outcome.is_err() {
        release(ctx, lock);
    }
    outcome
}

/// The buyer's conversation; its coins are soft-locked under `lock`.
#[flow]
pub async fn buy_steps(
    ctx: &mut FlowContext,
    session: FlowSession,
    acceptable_price: Amount,
    wanted: AssetKind,
    notary: Notary,
    lock: LockId,
) -> Result<SignedTransaction, FlowError> {
    ctx.set_progress("Checking the offer");
    let received: TradeOffer = session.receive::<TradeOffer>().await?.validate(|offer| {
        match trade::check_offer(&offer, acceptable_price, wanted) {
            Ok(()) => Ok(offer),
            Err(e) => Err(fail(e)),
        }
    })?;
    ctx.set_progress("Verifying the asset's history");
    let mut offer: TradeOffer = received;
    // Moved out, not copied: the resolution keeps what it needs.
    let supplied: Vec<SignedTransaction> = std::mem::take(&mut offer.history);
    let fetching: FlowSession = session.clone();
    let asset_tx: Vec<SecureHash> = vec![offer.asset.state_ref.tx_id];
    let _resolved: u32 = ctx
        .sub_flow(resolve_transactions(
            fetching,
            asset_tx,
            supplied,
            Ending::Deferred,
        ))
        .await?;
    trade::check_offered_state(ledger_db(ctx)?, &offer).map_err(fail)?;
    ctx.set_progress("Building the transaction");
    let proposal: SignedTransaction =
        trade::build_proposal(ledger_db(ctx)?, &offer, &notary.party, lock).map_err(fail)?;
    ctx.set_progress("Collecting the seller's signature");
    // The proposal also ends the resolution above (left open: deferred).
    let signing: FlowSession = session.clone();
    let signed: SignedTransaction = ctx.sub_flow(collect_signatures(signing, proposal)).await?;
    ctx.set_progress("Finalising");
    // From here the notary may consume the coins at any moment: wait for
    // the outcome rather than give up and release them.
    ctx.clear_receive_deadline();
    let sessions: Vec<FlowSession> = vec![session];
    let notary_node: Party = notary.node;
    let fin: SignedTransaction = ctx
        .sub_flow(finality(signed, notary_node, sessions))
        .await?;
    Ok(fin)
}
