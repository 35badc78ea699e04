//! The vault: the transactions a node has verified, the states its keys
//! own and have not spent, and coin selection with soft locks.
//!
//! All functions work on a [`Store`]; with a node they run inside a flow
//! step, so what they write commits with that step's checkpoint.

use crate::crypto::SecureHash;
use crate::keys;
use crate::ledger::{
    Amount, ContractState, SignedTransaction, StateAndRef, StateRef, WireTransaction,
};
use crate::store::{Store, StoreError, Table, decode, encode};
use std::collections::BTreeMap;

/// Why a vault operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// Not enough unlocked cash of the currency.
    #[error("insufficient funds: {needed} needed but only {available} is unlocked in the vault")]
    InsufficientFunds {
        /// What was asked for.
        needed: Amount,
        /// What could be selected.
        available: Amount,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An id that marks coins reserved by one spend (e.g. one trade), so that
/// they can be released together if the spend fails.
pub type LockId = u64;

/// Records a verified transaction: stores it, marks its inputs consumed
/// (and unlocked), and adds the outputs owned by the node's keys to the
/// unconsumed states. Recording the same transaction again does nothing.
/// Returns whether it was new.
///
/// The caller must have verified `stx` (signatures and contracts, its
/// dependencies recorded first): the vault trusts what it records.
pub fn record(store: &mut dyn Store, stx: &SignedTransaction) -> Result<bool, StoreError> {
    let id = stx.id();
    if store.get(Table::Transactions, &id.0)?.is_some() {
        return Ok(false);
    }
    store.put(Table::Transactions, &id.0, &encode(stx)?)?;
    for input in &stx.tx.inputs {
        store.remove(Table::Unconsumed, &input.to_key())?;
        store.remove(Table::SoftLocks, &input.to_key())?;
    }
    for out in stx.tx.out_refs() {
        if keys::is_ours(store, out.state.owner())? {
            store.put(
                Table::Unconsumed,
                &out.state_ref.to_key(),
                &encode(&out.state)?,
            )?;
        }
    }
    tracing::debug!(tx = %id, "recorded transaction");
    Ok(true)
}

/// Stores a verified dependency without changing the unconsumed states
/// (its outputs may have been spent since; a dependency is kept only to
/// verify what builds on it).
pub fn record_dependency(store: &mut dyn Store, stx: &SignedTransaction) -> Result<(), StoreError> {
    let id = stx.id();
    if store.get(Table::Transactions, &id.0)?.is_none() {
        store.put(Table::Transactions, &id.0, &encode(stx)?)?;
    }
    Ok(())
}

/// The transaction with id `id`, if recorded.
pub fn transaction(
    store: &dyn Store,
    id: &SecureHash,
) -> Result<Option<SignedTransaction>, StoreError> {
    store
        .get(Table::Transactions, &id.0)?
        .map(|bytes| decode(Table::Transactions, &bytes))
        .transpose()
}

/// True if the transaction `id` is recorded.
pub fn has_transaction(store: &dyn Store, id: &SecureHash) -> Result<bool, StoreError> {
    Ok(store.get(Table::Transactions, &id.0)?.is_some())
}

/// Every recorded transaction.
pub fn transactions(store: &dyn Store) -> Result<Vec<SignedTransaction>, StoreError> {
    store
        .scan(Table::Transactions)?
        .iter()
        .map(|(_, v)| decode(Table::Transactions, v))
        .collect()
}

/// A lookup for [`SignedTransaction::verify`] over the recorded
/// transactions. A storage error reads as "unknown", which fails
/// verification with an unresolved input (and is logged by [`decode`]).
pub fn resolver(store: &dyn Store) -> impl FnMut(&SecureHash) -> Option<WireTransaction> + '_ {
    move |id| transaction(store, id).ok().flatten().map(|stx| stx.tx)
}

/// The unconsumed state at `state_ref`, if this node owns it.
pub fn state(store: &dyn Store, state_ref: &StateRef) -> Result<Option<StateAndRef>, StoreError> {
    store
        .get(Table::Unconsumed, &state_ref.to_key())?
        .map(|bytes| {
            Ok(StateAndRef {
                state: decode(Table::Unconsumed, &bytes)?,
                state_ref: *state_ref,
            })
        })
        .transpose()
}

/// Every unconsumed state the node owns.
pub fn unconsumed(store: &dyn Store) -> Result<Vec<StateAndRef>, StoreError> {
    store
        .scan(Table::Unconsumed)?
        .iter()
        .map(|(k, v)| {
            let state_ref = StateRef::from_key(k).ok_or_else(|| StoreError::Corrupt {
                table: Table::Unconsumed.name(),
                detail: format!("a state key is {} bytes instead of 36", k.len()),
            })?;
            Ok(StateAndRef {
                state: decode(Table::Unconsumed, v)?,
                state_ref,
            })
        })
        .collect()
}

/// The node's unconsumed cash, summed per (issuer name, currency).
pub fn cash_balances(
    store: &dyn Store,
) -> Result<BTreeMap<(String, crate::ledger::Currency), u64>, StoreError> {
    let mut balances = BTreeMap::new();
    for s in unconsumed(store)? {
        if let ContractState::Cash(c) = s.state {
            *balances
                .entry((c.issuer.name().to_owned(), c.amount.currency))
                .or_insert(0u64) += c.amount.quantity;
        }
    }
    Ok(balances)
}

/// The node's total unconsumed cash of `currency`, any issuer.
pub fn cash_total(store: &dyn Store, currency: crate::ledger::Currency) -> Result<u64, StoreError> {
    Ok(cash_balances(store)?
        .iter()
        .filter(|((_, c), _)| *c == currency)
        .map(|(_, q)| *q)
        .sum())
}

fn lock_of(store: &dyn Store, state_ref: &StateRef) -> Result<Option<LockId>, StoreError> {
    store
        .get(Table::SoftLocks, &state_ref.to_key())?
        .map(|b| decode(Table::SoftLocks, &b))
        .transpose()
}

/// Picks unlocked cash of `amount`'s currency worth at least `amount`
/// (largest coins first, so spends stay small) and soft-locks it under
/// `lock`. Coins already locked by `lock` are selected again, so a retried
/// step picks the same coins.
pub fn select_coins(
    store: &mut dyn Store,
    amount: Amount,
    lock: LockId,
) -> Result<Vec<StateAndRef>, VaultError> {
    let mut candidates = Vec::new();
    for s in unconsumed(store)? {
        let Some(cash) = s.state.as_cash() else {
            continue;
        };
        if cash.amount.currency != amount.currency {
            continue;
        }
        match lock_of(store, &s.state_ref)? {
            Some(holder) if holder != lock => continue,
            _ => candidates.push(s),
        }
    }
    candidates
        .sort_by_key(|s| std::cmp::Reverse(s.state.as_cash().map_or(0, |c| c.amount.quantity)));
    let mut chosen = Vec::new();
    let mut total: u64 = 0;
    for s in candidates {
        if total >= amount.quantity {
            break;
        }
        total = total.saturating_add(s.state.as_cash().map_or(0, |c| c.amount.quantity));
        chosen.push(s);
    }
    if total < amount.quantity {
        return Err(VaultError::InsufficientFunds {
            needed: amount,
            available: Amount::new(total, amount.currency),
        });
    }
    for s in &chosen {
        store.put(Table::SoftLocks, &s.state_ref.to_key(), &encode(&lock)?)?;
    }
    Ok(chosen)
}

/// Soft-locks specific states (e.g. the paper a seller offers) under `lock`.
/// Fails if one is not in the vault or is locked by another spend.
pub fn lock_states(
    store: &mut dyn Store,
    refs: &[StateRef],
    lock: LockId,
) -> Result<(), VaultLockError> {
    for r in refs {
        if state(store, r)?.is_none() {
            return Err(VaultLockError::NotInVault(*r));
        }
        if let Some(holder) = lock_of(store, r)?
            && holder != lock
        {
            return Err(VaultLockError::Locked(*r));
        }
    }
    for r in refs {
        store.put(Table::SoftLocks, &r.to_key(), &encode(&lock)?)?;
    }
    Ok(())
}

/// Why specific states could not be locked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultLockError {
    /// The node does not own this unconsumed state.
    #[error("state {0} is not an unconsumed state of this node")]
    NotInVault(StateRef),
    /// Another unfinished spend holds it.
    #[error("state {0} is reserved by another unfinished transaction")]
    Locked(StateRef),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Releases every state locked under `lock` (a spend that failed).
pub fn release_locks(store: &mut dyn Store, lock: LockId) -> Result<usize, StoreError> {
    let mut released = 0;
    for (k, v) in store.scan(Table::SoftLocks)? {
        if decode::<LockId>(Table::SoftLocks, &v)? == lock {
            store.remove(Table::SoftLocks, &k)?;
            released += 1;
        }
    }
    Ok(released)
}

/// How many states are soft-locked (for reconciliation: zero once every
/// trade has ended).
pub fn locked_count(store: &dyn Store) -> Result<usize, StoreError> {
    Ok(store.scan(Table::SoftLocks)?.len())
}
