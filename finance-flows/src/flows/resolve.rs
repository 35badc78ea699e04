//! Dependency resolution between two nodes, on a session they already share
//! (the peer that sent us a transaction serves its history on the same
//! session).
//!
//! The resolver asks ([`FetchRequest::Transactions`]) until it holds the
//! whole graph, then says it is done ([`FetchRequest::Done`]). In a
//! protocol where the resolver speaks next on the session anyway (the
//! signature round, the trade), "done" rides on that next message
//! ([`Ending::Deferred`], [`send_ending_resolution`]) and a resolution that
//! needs nothing costs no message at all.

use super::{fail, ledger_db};
use crate::crypto::SecureHash;
use crate::ledger::SignedTransaction;
use crate::resolve::{FetchReply, FetchRequest, Resolution, Vending};
use flow_runtime::prelude::*;
use flow_runtime::{FlowErrorKind, Payload};
use serde::{Deserialize, Serialize};

/// The ids of the transactions `stx` spends from: what must be resolved
/// before `stx` can be verified.
pub fn dependencies(stx: &SignedTransaction) -> Vec<SecureHash> {
    let mut ids: Vec<SecureHash> = stx.tx.inputs.iter().map(|i| i.tx_id).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// How [`resolve_transactions`](fn@resolve_transactions) tells the serving
/// side that it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// Send [`FetchRequest::Done`] as soon as the resolution is over: for a
    /// caller that has nothing else to send on the session right after.
    Done,
    /// Send nothing: this side's next message on the session ends the
    /// serving, sent with [`send_ending_resolution`] (the peer's loop must
    /// expect it there, as `collect_signatures` and `receive_to_sign` do),
    /// or, where the serving side is [`finality`](fn@super::finality::finality),
    /// the end of this side's flow. Saves the `Done` message, which in the
    /// steady state of a trade is the whole resolution.
    Deferred,
}

/// Downloads from the peer on `session` every transaction in the
/// dependency graph of `ids` that this node does not hold yet, breadth
/// first, then verifies them oldest first and records them. Returns how many
/// were recorded. The peer must serve on its end
/// ([`serve_transactions`](fn@serve_transactions), or a loop of its own
/// that answers with [`serve_request`]).
///
/// `supplied`: transactions the peer already sent with an earlier message
/// (e.g. the asset's transaction in a trade offer); those among `ids` are
/// not asked for again but verified like the rest (see
/// [`Resolution::supply`]). Pass an empty list when there are none.
///
/// `ending`: whether to send `Done` now or leave it to the caller's next
/// message (see [`Ending`]); `Ending::Done` unless the peer's protocol
/// expects otherwise.
#[flow]
pub async fn resolve_transactions(
    ctx: &mut FlowContext,
    session: FlowSession,
    ids: Vec<SecureHash>,
    supplied: Vec<SignedTransaction>,
    ending: Ending,
) -> Result<u32, FlowError> {
    ctx.set_progress("Downloading dependencies");
    let mut resolution: Resolution = Resolution::new(ids);
    resolution.supply(ledger_db(ctx)?, supplied).map_err(fail)?;
    loop {
        let request: Vec<SecureHash> = resolution.next_request(ledger_db(ctx)?).map_err(fail)?;
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
    if ending == Ending::Done {
        session.send(&FetchRequest::Done(None))?;
    }
    ctx.set_progress("Verifying dependencies");
    let recorded: usize = resolution.finish(ledger_db(ctx)?).map_err(fail)?;
    Ok(u32::try_from(recorded).unwrap_or(u32::MAX))
}

/// Sends `next` on `session` inside a [`FetchRequest::Done`]: ends a
/// resolution left open with [`Ending::Deferred`] and delivers this side's
/// next message in the same message. The peer must be waiting in a serving
/// loop that takes its next message from the `Done` (as
/// `collect_signatures` and `receive_to_sign` do); the signature round
/// sends its proposal and its signatures this way whether or not a
/// resolution was open, so either side may have resolved before it.
pub fn send_ending_resolution(
    session: &FlowSession,
    next: &(impl Serialize + ?Sized),
) -> Result<(), FlowError> {
    session.send(&FetchRequest::Done(Some(Payload::encode(next)?)))
}

/// Answers one fetch request from the vault on `session`, within the
/// chain `vending` allows (a request outside it fails the flow, and the
/// peer receives why); returns how many transactions it sent. For a
/// serving loop that also waits for the resolver's next message (see
/// [`send_ending_resolution`]).
pub fn serve_request(
    ctx: &mut FlowContext,
    session: &FlowSession,
    vending: &mut Vending,
    ids: &[SecureHash],
) -> Result<u32, FlowError> {
    let reply: FetchReply = vending.serve(ledger_db(ctx)?, ids).map_err(fail)?;
    session.send(&reply)?;
    Ok(u32::try_from(reply.len()).unwrap_or(u32::MAX))
}

/// One request of a serving loop that waits for the resolver's next message
/// (sent with [`send_ending_resolution`]): answers a fetch, skips a bare
/// `Done` (the resolver ended a resolution apart from its next message,
/// which still comes), and returns the message a `Done` carries, which ends
/// the loop. `collect_signatures` and `receive_to_sign` are such loops.
pub fn serve_until_next(
    ctx: &mut FlowContext,
    session: &FlowSession,
    vending: &mut Vending,
    request: FetchRequest,
) -> Result<Option<Payload>, FlowError> {
    match request {
        FetchRequest::Transactions(ids) => {
            serve_request(ctx, session, vending, &ids)?;
            Ok(None)
        }
        FetchRequest::Done(next) => Ok(next),
    }
}

/// How a [`serve_transactions`](fn@serve_transactions) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// How many transactions were sent.
    pub sent: u32,
    /// The resolver's next message, when it came inside its `Done` (see
    /// [`send_ending_resolution`]); the caller must decode and check it, or
    /// refuse it, since nothing else will deliver it. `None` when the
    /// resolver said `Done` alone.
    pub next: Option<Payload>,
}

/// The other end of [`resolve_transactions`](fn@resolve_transactions):
/// answers fetch requests from the vault until the peer says it is done,
/// serving only the chain `vending` allows (normally
/// [`Vending::of_dependencies`] of the transaction sent to the peer).
/// Returns what was served and the message that came with the `Done`, if
/// any.
///
/// A peer whose flow ends (normally) instead of saying `Done` fails this
/// flow with the runtime's `CounterpartyEnded` error; a caller for which
/// that means "done" (finality) checks for it.
#[flow]
pub async fn serve_transactions(
    ctx: &mut FlowContext,
    session: FlowSession,
    vending: Vending,
) -> Result<Served, FlowError> {
    let mut sent: u32 = 0;
    let mut vending: Vending = vending;
    loop {
        let request: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
        match request {
            FetchRequest::Done(next) => return Ok(Served { sent, next }),
            FetchRequest::Transactions(ids) => {
                sent = sent.saturating_add(serve_request(ctx, &session, &mut vending, &ids)?);
            }
        }
    }
}

/// Whether `error`, from a receive on a session, means the peer's flow
/// ended without a protocol error (normally, or by an internal failure it
/// does not report): for a serving side that takes the peer's end as the
/// end of its resolution.
pub fn peer_ended(error: &FlowError) -> bool {
    error.kind() == FlowErrorKind::CounterpartyEnded
}
