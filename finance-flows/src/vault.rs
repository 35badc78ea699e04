//! The vault: the transactions a node has verified, the states its keys
//! own and have not spent, and coin selection with soft locks.
//!
//! All functions work on a [`LedgerDb`]; with a node they run inside a flow
//! step, so what they write commits with that step's checkpoint.
//!
//! Coin selection only ever picks cash of an issuer the node trusts (see
//! [`crate::trust`]): cash of any other issuer is recorded and reported,
//! by issuer key, but never enters the coin-selection index.

use crate::crypto::SecureHash;
use crate::keys;
use crate::ledger::{
    Amount, Cash, ContractState, Currency, InputResolver, SignedTransaction, StateAndRef, StateRef,
};
use crate::ledger_db::{
    LedgerDb, LedgerDbError, LedgerTable, decode, encode, prefix_end, prefix_range,
};
use crate::trust;
use flow_runtime::Party;
use serde::{Deserialize, Serialize};
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
    LedgerDb(#[from] LedgerDbError),
}

/// An id that marks coins reserved by one spend (e.g. one trade), so that
/// they can be released together if the spend fails.
pub type LockId = u64;

/// What [`LedgerTable::Outputs`] keeps for every output of a recorded
/// transaction: the state and the notary of the transaction that created it
/// (everything verification needs to resolve an input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The notary that guards the state.
    pub notary: Party,
    /// The state.
    pub state: ContractState,
}

/// [`OutputRecord`] by reference, to encode one without cloning the state
/// (same field order, so the same bytes).
#[derive(Serialize)]
struct OutputRecordRef<'a> {
    notary: &'a Party,
    state: &'a ContractState,
}

/// The [`LedgerTable::AvailableCash`] key of a coin: currency, then the quantity
/// inverted (largest coins first), then the state's reference.
fn available_key(cash: &Cash, state_ref: &StateRef) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + 8 + 36);
    key.extend_from_slice(&cash.amount.currency.0);
    key.extend_from_slice(&(!cash.amount.quantity).to_be_bytes());
    key.extend_from_slice(&state_ref.to_key());
    key
}

/// Where coin selection of `currency` starts reading
/// [`LedgerTable::AvailableCash`]: a key that no available coin of the currency
/// sorts before (the currency prefix itself when nothing is recorded).
///
/// Invariant, kept by every write of the index in this module: adding a
/// coin ([`make_available`]) moves the start back to it if it sorts
/// earlier; selecting coins moves it just past the last coin taken (every
/// coin before that was taken or was already gone); removing coins never
/// breaks it. So starting there skips exactly the coins earlier spends
/// took — even while their deletions are still uncommitted writes of the
/// same group commit, which a range read would otherwise walk.
fn selection_start(store: &dyn LedgerDb, currency: &Currency) -> Result<Vec<u8>, LedgerDbError> {
    match store.get(LedgerTable::AvailableCashStart, &currency.0)? {
        Some(start) if start.starts_with(&currency.0) => Ok(start),
        Some(start) => Err(LedgerDbError::Corrupt {
            table: LedgerTable::AvailableCashStart.name(),
            detail: format!(
                "the selection start of {currency:?} is a {}-byte key outside that currency",
                start.len()
            ),
        }),
        None => Ok(currency.0.to_vec()),
    }
}

/// Adds a coin to [`LedgerTable::AvailableCash`], moving its currency's
/// [`selection_start`] back to it if it sorts first.
fn make_available(
    store: &mut dyn LedgerDb,
    cash: &Cash,
    state_ref: &StateRef,
) -> Result<(), LedgerDbError> {
    let key = available_key(cash, state_ref);
    let currency = &cash.amount.currency;
    if key < selection_start(store, currency)? {
        store.put(LedgerTable::AvailableCashStart, &currency.0, &key)?;
    }
    store.put(LedgerTable::AvailableCash, &key, &[])
}

/// The [`LedgerTable::LocksByHolder`] key of a state held by `lock`.
fn holder_key(lock: LockId, state_ref: &StateRef) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 36);
    key.extend_from_slice(&lock.to_be_bytes());
    key.extend_from_slice(&state_ref.to_key());
    key
}

/// The `StateRef` at the end of an index key, or a corruption error.
fn ref_at_end(table: LedgerTable, key: &[u8]) -> Result<StateRef, LedgerDbError> {
    key.len()
        .checked_sub(36)
        .and_then(|start| StateRef::from_key(&key[start..]))
        .ok_or_else(|| LedgerDbError::Corrupt {
            table: table.name(),
            detail: format!("an index key is {} bytes, too short for a state", key.len()),
        })
}

/// Writes the [`LedgerTable::Outputs`] records of every output of `stx`.
fn record_outputs(
    store: &mut dyn LedgerDb,
    stx: &SignedTransaction,
    id: &SecureHash,
) -> Result<(), LedgerDbError> {
    for (state, index) in stx.tx.outputs.iter().zip(0u32..) {
        let record = OutputRecordRef {
            notary: &stx.tx.notary,
            state,
        };
        let state_ref = StateRef { tx_id: *id, index };
        store.put(LedgerTable::Outputs, &state_ref.to_key(), &encode(&record)?)?;
    }
    Ok(())
}

/// Marks `input` consumed: no longer unconsumed, available or locked.
fn consume(store: &mut dyn LedgerDb, input: &StateRef) -> Result<(), LedgerDbError> {
    let key = input.to_key();
    if let Some(owned) = state(store, input)? {
        if let Some(cash) = owned.state.as_cash() {
            store.remove(LedgerTable::AvailableCash, &available_key(cash, input))?;
        }
        store.remove(LedgerTable::Unconsumed, &key)?;
    }
    if let Some(holder) = lock_of(store, input)? {
        store.remove(LedgerTable::LocksByHolder, &holder_key(holder, input))?;
        store.remove(LedgerTable::SoftLocks, &key)?;
    }
    Ok(())
}

/// Records a verified transaction: stores it, marks its inputs consumed
/// (and unlocked), and adds the outputs owned by the node's keys to the
/// unconsumed states (cash also to the coin-selection index). Recording the
/// same transaction again does nothing. Returns whether it was new.
///
/// The caller must have verified `stx` (signatures and contracts, its
/// dependencies recorded first): the vault trusts what it records.
pub fn record(store: &mut dyn LedgerDb, stx: &SignedTransaction) -> Result<bool, LedgerDbError> {
    record_as(store, stx, &stx.id())
}

/// [`record`] for a caller that has just computed `id`, the transaction's
/// id, from `stx` itself (typically while verifying it: see
/// [`SignedTransaction::verify_signatures_of`]), so it is not hashed again.
pub(crate) fn record_as(
    store: &mut dyn LedgerDb,
    stx: &SignedTransaction,
    id: &SecureHash,
) -> Result<bool, LedgerDbError> {
    debug_assert_eq!(*id, stx.id(), "the id passed is not the transaction's");
    let id = *id;
    if has_transaction(store, &id)? {
        return Ok(false);
    }
    store_transaction(store, stx, &id)?;
    for input in &stx.tx.inputs {
        consume(store, input)?;
    }
    for (state, index) in stx.tx.outputs.iter().zip(0u32..) {
        if keys::is_ours(store, state.owner())? {
            let state_ref = StateRef { tx_id: id, index };
            store.put(
                LedgerTable::Unconsumed,
                &state_ref.to_key(),
                &encode(state)?,
            )?;
            if let Some(cash) = state.as_cash()
                && trust::is_trusted(store, cash.issuer.key())?
            {
                make_available(store, cash, &state_ref)?;
            }
        }
    }
    tracing::debug!(tx = %id, "recorded transaction");
    Ok(true)
}

/// Stores a verified dependency without changing the unconsumed states
/// (its outputs may have been spent since; a dependency is kept only to
/// verify what builds on it).
pub fn record_dependency(
    store: &mut dyn LedgerDb,
    stx: &SignedTransaction,
) -> Result<(), LedgerDbError> {
    record_dependency_as(store, stx, &stx.id())
}

/// [`record_dependency`] for a caller that has just computed `id`, the
/// transaction's id, from `stx` itself (see [`record_as`]).
pub(crate) fn record_dependency_as(
    store: &mut dyn LedgerDb,
    stx: &SignedTransaction,
    id: &SecureHash,
) -> Result<(), LedgerDbError> {
    debug_assert_eq!(*id, stx.id(), "the id passed is not the transaction's");
    if !has_transaction(store, id)? {
        store_transaction(store, stx, id)?;
    }
    Ok(())
}

/// Writes `stx` (whose id is `id`), its entry in
/// [`LedgerTable::TransactionIds`] and its outputs' records.
fn store_transaction(
    store: &mut dyn LedgerDb,
    stx: &SignedTransaction,
    id: &SecureHash,
) -> Result<(), LedgerDbError> {
    store.put(LedgerTable::Transactions, &id.0, &encode(stx)?)?;
    store.put(LedgerTable::TransactionIds, &id.0, &[])?;
    record_outputs(store, stx, id)
}

/// The transaction with id `id`, if recorded.
pub fn transaction(
    store: &dyn LedgerDb,
    id: &SecureHash,
) -> Result<Option<SignedTransaction>, LedgerDbError> {
    store
        .get(LedgerTable::Transactions, &id.0)?
        .map(|bytes| decode(LedgerTable::Transactions, &bytes))
        .transpose()
}

/// True if the transaction `id` is recorded: a point read of
/// [`LedgerTable::TransactionIds`], which never reads the transaction's
/// bytes, then (for a database that recorded it before that table existed,
/// or that does not hold it) of the transaction itself.
pub fn has_transaction(store: &dyn LedgerDb, id: &SecureHash) -> Result<bool, LedgerDbError> {
    Ok(store.get(LedgerTable::TransactionIds, &id.0)?.is_some()
        || store.get(LedgerTable::Transactions, &id.0)?.is_some())
}

/// Every recorded transaction.
pub fn transactions(store: &dyn LedgerDb) -> Result<Vec<SignedTransaction>, LedgerDbError> {
    store
        .scan(LedgerTable::Transactions)?
        .iter()
        .map(|(_, v)| decode(LedgerTable::Transactions, v))
        .collect()
}

/// An [`InputResolver`] over the recorded transactions, for
/// [`SignedTransaction::verify`]: one point read of [`LedgerTable::Outputs`] per
/// input (falling back to the whole producing transaction if its outputs
/// were not indexed). A storage error reads as "unknown", which fails
/// verification with an unresolved input (and is logged by [`decode`]).
pub fn resolver(store: &dyn LedgerDb) -> VaultResolver<'_> {
    VaultResolver { store }
}

/// See [`resolver`].
pub struct VaultResolver<'a> {
    store: &'a dyn LedgerDb,
}

impl InputResolver for VaultResolver<'_> {
    fn resolve_input(&mut self, input: &StateRef) -> Option<(ContractState, Party)> {
        match self.store.get(LedgerTable::Outputs, &input.to_key()) {
            Ok(Some(bytes)) => decode::<OutputRecord>(LedgerTable::Outputs, &bytes)
                .ok()
                .map(|r| (r.state, r.notary)),
            Ok(None) => {
                let tx = transaction(self.store, &input.tx_id).ok().flatten()?.tx;
                let state = tx.outputs.into_iter().nth(input.index as usize)?;
                Some((state, tx.notary))
            }
            Err(e) => {
                tracing::error!(%input, "cannot read a recorded output: {e}");
                None
            }
        }
    }
}

/// The unconsumed state at `state_ref`, if this node owns it.
pub fn state(
    store: &dyn LedgerDb,
    state_ref: &StateRef,
) -> Result<Option<StateAndRef>, LedgerDbError> {
    store
        .get(LedgerTable::Unconsumed, &state_ref.to_key())?
        .map(|bytes| {
            Ok(StateAndRef {
                state: decode(LedgerTable::Unconsumed, &bytes)?,
                state_ref: *state_ref,
            })
        })
        .transpose()
}

/// Every unconsumed state the node owns.
pub fn unconsumed(store: &dyn LedgerDb) -> Result<Vec<StateAndRef>, LedgerDbError> {
    store
        .scan(LedgerTable::Unconsumed)?
        .iter()
        .map(|(k, v)| {
            let state_ref = StateRef::from_key(k).ok_or_else(|| LedgerDbError::Corrupt {
                table: LedgerTable::Unconsumed.name(),
                detail: format!("a state key is {} bytes instead of 36", k.len()),
            })?;
            Ok(StateAndRef {
                state: decode(LedgerTable::Unconsumed, v)?,
                state_ref,
            })
        })
        .collect()
}

/// The node's unconsumed cash, summed per (issuer, currency). Issuers are
/// told apart by key (see [`Party`]): cash a stranger issued under a
/// well-known name is a line of its own, not part of the real issuer's.
pub fn cash_balances(
    store: &dyn LedgerDb,
) -> Result<BTreeMap<(Party, crate::ledger::Currency), u64>, LedgerDbError> {
    let mut balances = BTreeMap::new();
    for s in unconsumed(store)? {
        if let ContractState::Cash(c) = s.state {
            let sum = balances
                .entry((c.issuer, c.amount.currency))
                .or_insert(0u64);
            *sum = sum.saturating_add(c.amount.quantity);
        }
    }
    Ok(balances)
}

/// The node's total unconsumed cash of `currency` from the issuers it
/// trusts (see [`crate::trust`]): what it can pay with. Cash of other
/// issuers is in [`cash_balances`] but is worth nothing here.
pub fn cash_total(
    store: &dyn LedgerDb,
    currency: crate::ledger::Currency,
) -> Result<u64, LedgerDbError> {
    let mut total = 0u64;
    for ((issuer, c), q) in cash_balances(store)? {
        if c == currency && trust::is_trusted(store, issuer.key())? {
            total = total.saturating_add(q);
        }
    }
    Ok(total)
}

fn lock_of(store: &dyn LedgerDb, state_ref: &StateRef) -> Result<Option<LockId>, LedgerDbError> {
    store
        .get(LedgerTable::SoftLocks, &state_ref.to_key())?
        .map(|b| decode(LedgerTable::SoftLocks, &b))
        .transpose()
}

/// Picks unlocked cash of `amount`'s currency worth at least `amount`
/// (largest coins first, so spends stay small) and soft-locks it under
/// `lock`. Coins already locked by `lock` are selected first, so a spend
/// that asks again keeps what it holds.
///
/// Cost: a range read of `lock`'s holdings and one of the coin-selection
/// index from its recorded start (the `AvailableCashStart` table),
/// stopping at the first coins that cover `amount` — independent of how
/// many coins the vault holds or other spends have locked, in this group
/// commit or before.
pub fn select_coins(
    store: &mut dyn LedgerDb,
    amount: Amount,
    lock: LockId,
) -> Result<Vec<StateAndRef>, VaultError> {
    let mut chosen = Vec::new();
    let mut total: u64 = 0;
    for (key, _) in prefix_range(
        store,
        LedgerTable::LocksByHolder,
        &lock.to_be_bytes(),
        usize::MAX,
    )? {
        let r = ref_at_end(LedgerTable::LocksByHolder, &key)?;
        if let Some(s) = state(store, &r)?
            && let Some(cash) = s.state.as_cash()
            && cash.amount.currency == amount.currency
        {
            total = total.saturating_add(cash.amount.quantity);
            chosen.push(s);
        }
    }
    const PAGE: usize = 16;
    let end = prefix_end(&amount.currency.0);
    let mut from = selection_start(store, &amount.currency)?;
    let mut new_coins = Vec::new();
    'pages: while total < amount.quantity {
        let page = store.range(LedgerTable::AvailableCash, &from, end.as_deref(), PAGE)?;
        let full = page.len() == PAGE;
        for (key, _) in page {
            if total >= amount.quantity {
                break 'pages;
            }
            let r = ref_at_end(LedgerTable::AvailableCash, &key)?;
            let s = state(store, &r)?.ok_or_else(|| LedgerDbError::Corrupt {
                table: LedgerTable::AvailableCash.name(),
                detail: format!("the coin index names {r}, which is not an unconsumed state"),
            })?;
            let quantity = s.state.as_cash().map_or(0, |c| c.amount.quantity);
            total = total.saturating_add(quantity);
            chosen.push(s);
            new_coins.push(key.clone());
            from = key;
            from.push(0);
        }
        if !full {
            break;
        }
    }
    if total < amount.quantity {
        return Err(VaultError::InsufficientFunds {
            needed: amount,
            available: Amount::new(total, amount.currency),
        });
    }
    let lock_bytes = encode(&lock)?;
    for (s, key) in chosen.iter().rev().zip(new_coins.iter().rev()) {
        store.put(LedgerTable::SoftLocks, &s.state_ref.to_key(), &lock_bytes)?;
        store.put(
            LedgerTable::LocksByHolder,
            &holder_key(lock, &s.state_ref),
            &[],
        )?;
        store.remove(LedgerTable::AvailableCash, key)?;
    }
    // Every available coin before `from` (just past the last coin taken)
    // was taken above or was gone already.
    if !new_coins.is_empty() {
        store.put(LedgerTable::AvailableCashStart, &amount.currency.0, &from)?;
    }
    Ok(chosen)
}

/// Soft-locks specific states (e.g. the paper a seller offers) under `lock`.
/// Fails if one is not in the vault or is locked by another spend.
pub fn lock_states(
    store: &mut dyn LedgerDb,
    refs: &[StateRef],
    lock: LockId,
) -> Result<(), VaultLockError> {
    let mut states = Vec::with_capacity(refs.len());
    for r in refs {
        let Some(s) = state(store, r)? else {
            return Err(VaultLockError::NotInVault(*r));
        };
        if let Some(holder) = lock_of(store, r)?
            && holder != lock
        {
            return Err(VaultLockError::Locked(*r));
        }
        states.push(s);
    }
    let lock_bytes = encode(&lock)?;
    for s in &states {
        store.put(LedgerTable::SoftLocks, &s.state_ref.to_key(), &lock_bytes)?;
        store.put(
            LedgerTable::LocksByHolder,
            &holder_key(lock, &s.state_ref),
            &[],
        )?;
        if let Some(cash) = s.state.as_cash() {
            store.remove(
                LedgerTable::AvailableCash,
                &available_key(cash, &s.state_ref),
            )?;
        }
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
    LedgerDb(#[from] LedgerDbError),
}

/// Releases every state locked under `lock` (a spend that failed); its
/// unconsumed cash becomes selectable again. A range read of `lock`'s
/// holdings, not a scan of every lock.
pub fn release_locks(store: &mut dyn LedgerDb, lock: LockId) -> Result<usize, LedgerDbError> {
    let held = prefix_range(
        store,
        LedgerTable::LocksByHolder,
        &lock.to_be_bytes(),
        usize::MAX,
    )?;
    for (key, _) in &held {
        let r = ref_at_end(LedgerTable::LocksByHolder, key)?;
        store.remove(LedgerTable::SoftLocks, &r.to_key())?;
        store.remove(LedgerTable::LocksByHolder, key)?;
        if let Some(s) = state(store, &r)?
            && let Some(cash) = s.state.as_cash()
            && trust::is_trusted(store, cash.issuer.key())?
        {
            make_available(store, cash, &r)?;
        }
    }
    Ok(held.len())
}

/// How many states are soft-locked (for reconciliation: zero once every
/// trade has ended).
pub fn locked_count(store: &dyn LedgerDb) -> Result<usize, LedgerDbError> {
    Ok(store.scan(LedgerTable::SoftLocks)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyPair;
    use crate::ledger::{CommandData, TransactionBuilder};
    use crate::ledger_db::{LedgerEntries, MemLedgerDb};
    use std::cell::RefCell;

    /// A [`MemLedgerDb`] that counts the reads of each table.
    #[derive(Default)]
    struct CountingDb {
        inner: MemLedgerDb,
        reads: RefCell<BTreeMap<LedgerTable, usize>>,
    }

    impl CountingDb {
        fn reads_of(&self, table: LedgerTable) -> usize {
            self.reads.borrow().get(&table).copied().unwrap_or(0)
        }
    }

    impl LedgerDb for CountingDb {
        fn get(&self, table: LedgerTable, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerDbError> {
            *self.reads.borrow_mut().entry(table).or_default() += 1;
            self.inner.get(table, key)
        }
        fn put(
            &mut self,
            table: LedgerTable,
            key: &[u8],
            value: &[u8],
        ) -> Result<(), LedgerDbError> {
            self.inner.put(table, key, value)
        }
        fn remove(&mut self, table: LedgerTable, key: &[u8]) -> Result<(), LedgerDbError> {
            self.inner.remove(table, key)
        }
        fn range(
            &self,
            table: LedgerTable,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> Result<LedgerEntries, LedgerDbError> {
            *self.reads.borrow_mut().entry(table).or_default() += 1;
            self.inner.range(table, from, to, limit)
        }
    }

    fn issuance(salt: u64) -> SignedTransaction {
        let bank = KeyPair::from_seed([11; 32]);
        let issuer = Party::new("Bank", bank.public());
        let mut builder = TransactionBuilder::with_salt(issuer.clone(), salt);
        builder.add_output(ContractState::Cash(Cash {
            amount: Amount::new(100, Currency::USD),
            issuer: issuer.clone(),
            owner: bank.public(),
        }));
        builder.add_command(CommandData::CashIssue, vec![bank.public()]);
        let tx = builder.to_wire();
        let sig = bank.sign(&tx.id().0);
        SignedTransaction::new(tx).with_signature(sig)
    }

    #[test]
    fn a_recorded_transaction_is_known_without_reading_it() {
        let mut db = CountingDb::default();
        let held = issuance(1);
        let dependency = issuance(2);
        assert!(record(&mut db, &held).unwrap());
        record_dependency(&mut db, &dependency).unwrap();
        let before = db.reads_of(LedgerTable::Transactions);
        assert!(has_transaction(&db, &held.id()).unwrap());
        assert!(has_transaction(&db, &dependency.id()).unwrap());
        assert!(!record(&mut db, &held).unwrap(), "recorded once");
        assert_eq!(
            db.reads_of(LedgerTable::Transactions),
            before,
            "the transactions' bytes were read to learn that they are held"
        );
        assert_eq!(transaction(&db, &held.id()).unwrap(), Some(held));
    }

    #[test]
    fn a_transaction_recorded_before_the_id_index_is_still_known() {
        // A database written before `TransactionIds` existed holds the
        // transaction alone.
        let mut db = MemLedgerDb::new();
        let old = issuance(3);
        db.put(
            LedgerTable::Transactions,
            &old.id().0,
            &encode(&old).unwrap(),
        )
        .unwrap();
        assert!(has_transaction(&db, &old.id()).unwrap());
        assert!(!record(&mut db, &old).unwrap(), "not recorded twice");
        assert!(!has_transaction(&db, &issuance(4).id()).unwrap());
    }
}
