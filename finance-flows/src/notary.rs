//! The notary's uniqueness service: it signs a transaction only if none of
//! its inputs has been consumed by another transaction, and records the
//! inputs as consumed in the same write. It is non-validating (it does not
//! run the contracts, so it learns nothing of the states) but it does check
//! the signatures of every other required signer: otherwise anyone could
//! "consume" someone else's states with a bogus transaction.

use crate::crypto::{SecureHash, TxSignature};
use crate::keys::{self, KeyError};
use crate::ledger::{SignedTransaction, StateRef, VerifyError};
use crate::store::{Store, StoreError, Table, decode, encode};
use flow_runtime::{Party, Timestamp};

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
    Store(#[from] StoreError),
}

/// Notarises `stx` as `notary` at time `now`: checks it, commits its inputs
/// as consumed by it, and returns the notary's signature over its id.
/// Notarising the same transaction again returns a fresh signature without
/// error (a client that retries after a crash must not be told it double
/// spent itself).
pub fn notarise(
    store: &mut dyn Store,
    notary: &Party,
    stx: &SignedTransaction,
    now: Timestamp,
) -> Result<TxSignature, NotaryError> {
    let id = stx.id();
    if stx.tx.notary != *notary {
        return Err(NotaryError::WrongNotary {
            tx: id,
            named: stx.tx.notary.name().to_owned(),
            us: notary.name().to_owned(),
        });
    }
    stx.verify_signatures_except(&[*notary.key()])?;
    if let Some(window) = stx.tx.time_window
        && !window.contains(now)
    {
        return Err(NotaryError::OutsideTimeWindow { now });
    }
    for input in &stx.tx.inputs {
        if let Some(bytes) = store.get(Table::NotaryCommits, &input.to_key())? {
            let consumed_by: SecureHash = decode(Table::NotaryCommits, &bytes)?;
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
        store.put(Table::NotaryCommits, &input.to_key(), &record)?;
    }
    Ok(keys::sign(store, notary.key(), &id.0)?)
}

/// How many states the notary has recorded as consumed.
pub fn committed_count(store: &dyn Store) -> Result<usize, StoreError> {
    Ok(store.scan(Table::NotaryCommits)?.len())
}
