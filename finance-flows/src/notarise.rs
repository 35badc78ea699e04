//! The notary: it signs a transaction only if none of its inputs has been
//! consumed by another transaction, and records the inputs as consumed in
//! the same write.
//!
//! It is **validating**: before it consumes anything it checks the
//! transaction as a participant would — every required signature present
//! and valid (each input's owner signs through the command that moves it,
//! which the contracts require), the inputs resolved from its own records,
//! the contracts satisfied, its clock inside the time window. The
//! requester supplies the history the notary lacks (the
//! [`notary_service`](fn@crate::flows::notarise::notary_service) flow resolves
//! it like any participant, verifying every dependency); nothing in the
//! request itself is trusted. A non-validating notary, which checks only
//! the signers a transaction names, lets anyone who has seen a state's
//! reference "consume" it with a transaction signed by itself alone, and
//! the owner's honest spend is then refused forever; this one refuses
//! that transaction, and records nothing.
//!
//! The price is that the notary sees the transactions it notarises and
//! their history. It keeps each notarised transaction (as a dependency,
//! not as states it owns), so the next spend of its outputs resolves
//! locally and the steady state costs no extra message.

use crate::crypto::{SecureHash, TxSignature};
use crate::keys::{self, KeyError};
use crate::ledger::{SignedTransaction, StateRef, VerifyError};
use crate::ledger_db::{LedgerDb, LedgerDbError, LedgerTable, decode, encode};
use crate::vault;
use flow_runtime::{Party, PublicKey, Timestamp};

/// Why the notary refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotaryError {
    /// The transaction names another notary.
    #[error("transaction {tx} names notary {named}, not this notary {us}")]
    WrongNotary {
        /// The transaction.
        tx: SecureHash,
        /// The notary it names.
        named: String,
        /// This notary.
        us: String,
    },
    /// An input was already consumed by another transaction: a double spend.
    #[error("double spend: input {input} was already consumed by transaction {consumed_by}")]
    Conflict {
        /// The input.
        input: StateRef,
        /// The transaction that consumed it first.
        consumed_by: SecureHash,
    },
    /// The notary's clock is outside the transaction's time window.
    #[error("the notary's time {now:?} is outside the transaction's time window")]
    OutsideTimeWindow {
        /// The notary's clock.
        now: Timestamp,
    },
    /// A signature is missing or invalid.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// The notary cannot sign (its key is not in its key store).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Storage failed.
    #[error(transparent)]
    LedgerDb(#[from] LedgerDbError),
}

/// Notarises `stx` as `notary` at time `now`: checks it in full (see the
/// module's docs; the transactions its inputs point at must be recorded in
/// `store` already), commits its inputs as consumed by it, records it, and
/// returns the notary's signature over its id. Refused, it writes nothing.
/// Notarising the same transaction again returns a fresh signature without
/// error (a client that retries after a crash must not be told it double
/// spent itself).
pub fn notarise(
    store: &mut dyn LedgerDb,
    notary: &Party,
    stx: &SignedTransaction,
    now: Timestamp,
) -> Result<TxSignature, NotaryError> {
    let id = stx.id();
    precheck(notary, stx, now)?;
    stx.verify_as(id, &[*notary.key()], &[], vault::resolver(store))?;
    for input in &stx.tx.inputs {
        if let Some(bytes) = store.get(LedgerTable::NotaryCommits, &input.to_key())? {
            let consumed_by: SecureHash = decode(LedgerTable::NotaryCommits, &bytes)?;
            if consumed_by != id {
                tracing::warn!(tx = %id, %input, %consumed_by, "notary rejected a double spend");
                return Err(NotaryError::Conflict {
                    input: *input,
                    consumed_by,
                });
            }
        }
    }
    let record = encode(&id)?;
    for input in &stx.tx.inputs {
        store.put(LedgerTable::NotaryCommits, &input.to_key(), &record)?;
    }
    let sig = keys::sign(store, notary.key(), &id.0)?;
    // Kept (with its signature) so that spends of its outputs verify
    // without asking the requester for it.
    vault::record_dependency_as(store, &stx.clone().with_signature(sig.clone()), &id)?;
    Ok(sig)
}

/// The checks that need no history and no storage: `stx` names this
/// notary and `now` is inside its time window. The notary service makes
/// them before fetching anything from the requester; [`notarise`] makes
/// them again.
pub fn precheck(
    notary: &Party,
    stx: &SignedTransaction,
    now: Timestamp,
) -> Result<(), NotaryError> {
    if stx.tx.notary != *notary {
        return Err(NotaryError::WrongNotary {
            tx: stx.id(),
            named: stx.tx.notary.name().to_owned(),
            us: notary.name().to_owned(),
        });
    }
    if let Some(window) = stx.tx.time_window
        && !window.contains(now)
    {
        return Err(NotaryError::OutsideTimeWindow { now });
    }
    Ok(())
}

/// The [`LedgerTable::Config`] key prefix of what a client knows `notary` holds:
/// transactions it supplied with a request the notary signed.
const HOLDS_PREFIX: &[u8] = b"notary-holds/";

fn holds_key(notary: &PublicKey, tx: &SecureHash) -> Vec<u8> {
    let mut k = Vec::with_capacity(HOLDS_PREFIX.len() + 64);
    k.extend_from_slice(HOLDS_PREFIX);
    k.extend_from_slice(&notary.0);
    k.extend_from_slice(&tx.0);
    k
}

/// The client's side: the transactions `stx` spends from that the notary
/// (by key) is not known to hold, to send with the request so that the
/// notary need not ask for them (a round trip). The notary is known to
/// hold what it signed (it keeps what it notarises) and what this node
/// has already sent it with a request ([`remember_supplied`], in the step
/// that sends it). A guess either way costs only time: the notary verifies
/// what it is sent, ignores what it holds, and asks for whatever is still
/// missing (a request it refused before resolving its history left that
/// history unrecorded, and the next spend from it is then fetched).
pub fn history_to_supply(
    store: &dyn LedgerDb,
    notary: &PublicKey,
    stx: &SignedTransaction,
) -> Result<Vec<SignedTransaction>, LedgerDbError> {
    let mut ids: Vec<SecureHash> = stx.tx.inputs.iter().map(|i| i.tx_id).collect();
    ids.sort();
    ids.dedup();
    let mut supply = Vec::new();
    for id in ids {
        if store
            .get(LedgerTable::Config, &holds_key(notary, &id))?
            .is_some()
        {
            continue;
        }
        if let Some(dep) = vault::transaction(store, &id)?
            && !dep.sigs.iter().any(|s| s.by == *notary)
        {
            supply.push(dep);
        }
    }
    Ok(supply)
}

/// The ids among `supplied` worth remembering as sent to the notary with
/// `stx`: those with outputs `stx` does not consume (later spends may
/// need them; a transaction whose outputs are all spent never will).
pub fn worth_remembering(
    stx: &SignedTransaction,
    supplied: &[SignedTransaction],
) -> Vec<SecureHash> {
    supplied
        .iter()
        .filter_map(|dep| {
            let id = dep.id();
            let spent = stx.tx.inputs.iter().filter(|i| i.tx_id == id).count();
            (dep.tx.outputs.len() > spent).then_some(id)
        })
        .collect()
}

/// Records that `notary` holds `ids` (sent to it with a request, in the
/// step that sends it).
pub fn remember_supplied(
    store: &mut dyn LedgerDb,
    notary: &PublicKey,
    ids: &[SecureHash],
) -> Result<(), LedgerDbError> {
    for id in ids {
        store.put(LedgerTable::Config, &holds_key(notary, id), &[])?;
    }
    Ok(())
}

/// How many states the notary has recorded as consumed.
pub fn committed_count(store: &dyn LedgerDb) -> Result<usize, LedgerDbError> {
    Ok(store.scan(LedgerTable::NotaryCommits)?.len())
}
