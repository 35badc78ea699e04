//! The vault, key manager and notary over an in-memory store.

use finance_flows::crypto::KeyPair;
use finance_flows::ledger::*;
use finance_flows::ledger_db::{LedgerDb, LedgerDbError, LedgerEntries, LedgerTable, MemLedgerDb};
use finance_flows::notarise::{self as notary, NotaryError};
use finance_flows::{keys, trust, vault};
use flow_runtime::{Party, Timestamp};

struct Setup {
    notary: Party,
    notary_store: MemLedgerDb,
    bank: Party,
    bank_key: KeyPair,
    node: MemLedgerDb,
}

fn setup() -> Setup {
    let notary_key = KeyPair::from_seed([1; 32]);
    let mut notary_store = MemLedgerDb::new();
    keys::import(&mut notary_store, &notary_key).unwrap();
    let bank_key = KeyPair::from_seed([2; 32]);
    let bank = Party::new("Bank", bank_key.public());
    let mut node = MemLedgerDb::new();
    trust::trust_issuer(&mut node, &bank).unwrap();
    Setup {
        notary: Party::new("Notary", notary_key.public()),
        notary_store,
        bank,
        bank_key,
        node,
    }
}

fn issue_to_node(s: &mut Setup, amounts: &[u64], salt: u64) -> SignedTransaction {
    let owner = keys::fresh_key(&mut s.node).unwrap();
    let mut b = TransactionBuilder::with_salt(s.notary.clone(), salt);
    for a in amounts {
        b.add_output(ContractState::Cash(Cash {
            amount: Amount::new(*a, Currency::USD),
            issuer: s.bank.clone(),
            owner,
        }));
    }
    b.add_command(CommandData::CashIssue, vec![s.bank_key.public()]);
    let tx = b.to_wire();
    let stx = SignedTransaction::new(tx.clone()).with_signature(s.bank_key.sign(&tx.id().0));
    stx.verify(vault::resolver(&s.node)).unwrap();
    assert!(vault::record(&mut s.node, &stx).unwrap());
    // The validating notary holds the history of what it notarises (the
    // notary flow resolves it from the requester).
    vault::record_dependency(&mut s.notary_store, &stx).unwrap();
    stx
}

/// Builds, signs and notarises a payment of `amount` from the node's vault.
fn pay(s: &mut Setup, amount: u64, lock: u64) -> Result<SignedTransaction, NotaryError> {
    let coins = vault::select_coins(&mut s.node, Amount::new(amount, Currency::USD), lock).unwrap();
    let payee = KeyPair::generate().public();
    let change = keys::fresh_key(&mut s.node).unwrap();
    let mut b = TransactionBuilder::new(s.notary.clone());
    let signers = b
        .add_cash_payment(&coins, Amount::new(amount, Currency::USD), payee, change)
        .unwrap();
    let tx = b.to_wire();
    let mut stx = SignedTransaction::new(tx.clone());
    for k in signers {
        stx.add_signature(keys::sign(&s.node, &k, &tx.id().0).unwrap());
    }
    let sig = notary::notarise(&mut s.notary_store, &s.notary, &stx, Timestamp(0))?;
    Ok(stx.with_signature(sig))
}

#[test]
fn record_select_spend_and_balance() {
    let mut s = setup();
    issue_to_node(&mut s, &[500, 300, 200], 1);
    assert_eq!(vault::cash_total(&s.node, Currency::USD).unwrap(), 1_000);
    let stx = pay(&mut s, 650, 1).unwrap();
    stx.verify(vault::resolver(&s.node)).unwrap();
    // Recording twice is harmless.
    assert!(vault::record(&mut s.node, &stx).unwrap());
    assert!(!vault::record(&mut s.node, &stx).unwrap());
    assert_eq!(vault::cash_total(&s.node, Currency::USD).unwrap(), 350);
    assert_eq!(
        vault::locked_count(&s.node).unwrap(),
        0,
        "spent coins are unlocked"
    );
}

#[test]
fn soft_locks_keep_concurrent_spends_apart() {
    let mut s = setup();
    issue_to_node(&mut s, &[100, 100, 100], 1);
    let a = vault::select_coins(&mut s.node, Amount::new(150, Currency::USD), 1).unwrap();
    let b = vault::select_coins(&mut s.node, Amount::new(100, Currency::USD), 2).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 1);
    assert!(a.iter().all(|x| !b.contains(x)));
    // Nothing left for a third spend.
    let err = vault::select_coins(&mut s.node, Amount::new(1, Currency::USD), 3).unwrap_err();
    assert!(
        matches!(err, vault::VaultError::InsufficientFunds { .. }),
        "{err}"
    );
    // The same lock selects the same coins again (a retried step).
    let again = vault::select_coins(&mut s.node, Amount::new(150, Currency::USD), 1).unwrap();
    assert_eq!(again, a);
    assert_eq!(vault::release_locks(&mut s.node, 1).unwrap(), 2);
    assert_eq!(
        vault::select_coins(&mut s.node, Amount::new(200, Currency::USD), 3)
            .unwrap()
            .len(),
        2
    );
}

fn quantities(coins: &[StateAndRef]) -> Vec<u64> {
    coins
        .iter()
        .map(|c| c.state.as_cash().unwrap().amount.quantity)
        .collect()
}

#[test]
fn coin_index_follows_locks_spends_and_releases() {
    let mut s = setup();
    issue_to_node(&mut s, &[10, 50, 30, 20, 40], 1);
    let usd = |q| Amount::new(q, Currency::USD);
    // Largest unlocked coins first, skipping what other spends hold.
    assert_eq!(
        quantities(&vault::select_coins(&mut s.node, usd(60), 1).unwrap()),
        [50, 40]
    );
    assert_eq!(
        quantities(&vault::select_coins(&mut s.node, usd(35), 2).unwrap()),
        [30, 20]
    );
    assert_eq!(
        quantities(&vault::select_coins(&mut s.node, usd(5), 3).unwrap()),
        [10]
    );
    assert!(vault::select_coins(&mut s.node, usd(1), 4).is_err());
    assert!(vault::select_coins(&mut s.node, Amount::new(1, Currency::EUR), 4).is_err());
    assert_eq!(vault::locked_count(&s.node).unwrap(), 5);
    // A released spend's coins are selectable again.
    assert_eq!(vault::release_locks(&mut s.node, 2).unwrap(), 2);
    assert_eq!(vault::release_locks(&mut s.node, 2).unwrap(), 0);
    assert_eq!(
        quantities(&vault::select_coins(&mut s.node, usd(45), 4).unwrap()),
        [30, 20]
    );
    // Spending lock 3's coin: it leaves the vault and its lock; the change
    // (a fresh coin) is selectable at once.
    assert_eq!(vault::release_locks(&mut s.node, 3).unwrap(), 1);
    let stx = pay(&mut s, 4, 5).unwrap();
    assert!(vault::record(&mut s.node, &stx).unwrap());
    assert_eq!(vault::locked_count(&s.node).unwrap(), 4);
    assert_eq!(
        quantities(&vault::select_coins(&mut s.node, usd(6), 6).unwrap()),
        [6]
    );
    assert_eq!(vault::cash_total(&s.node, Currency::USD).unwrap(), 146);
}

#[test]
fn notary_rejects_a_double_spend_and_accepts_a_retry() {
    let mut s = setup();
    let issue = issue_to_node(&mut s, &[100], 1);
    let stx = pay(&mut s, 100, 1).unwrap();
    // The same transaction again (a client retrying) is signed again.
    notary::notarise(
        &mut s.notary_store,
        &s.notary,
        &SignedTransaction {
            sigs: stx.sigs[..1].to_vec(),
            ..stx.clone()
        },
        Timestamp(0),
    )
    .unwrap();
    // Spending the same coin in another transaction is refused: force the
    // vault to hand the coin out again by releasing nothing and re-adding it.
    let coin = issue.tx.out_refs().remove(0);
    let owner = *coin.state.owner();
    let mut b = TransactionBuilder::new(s.notary.clone());
    b.add_cash_payment(
        std::slice::from_ref(&coin),
        Amount::new(100, Currency::USD),
        KeyPair::generate().public(),
        owner,
    )
    .unwrap();
    let tx = b.to_wire();
    let second = SignedTransaction::new(tx.clone())
        .with_signature(keys::sign(&s.node, &owner, &tx.id().0).unwrap());
    let err = notary::notarise(&mut s.notary_store, &s.notary, &second, Timestamp(0)).unwrap_err();
    assert_eq!(
        err,
        NotaryError::Conflict {
            input: coin.state_ref,
            consumed_by: stx.id()
        }
    );
    assert_eq!(notary::committed_count(&s.notary_store).unwrap(), 1);
}

#[test]
fn notary_refuses_unsigned_or_foreign_transactions() {
    let mut s = setup();
    let issue = issue_to_node(&mut s, &[100], 1);
    let coin = issue.tx.out_refs().remove(0);
    let mut b = TransactionBuilder::new(s.notary.clone());
    b.add_cash_payment(
        &[coin],
        Amount::new(100, Currency::USD),
        KeyPair::generate().public(),
        KeyPair::generate().public(),
    )
    .unwrap();
    // Nobody signed: the notary does not burn the owner's coin.
    let unsigned = SignedTransaction::new(b.to_wire());
    let err =
        notary::notarise(&mut s.notary_store, &s.notary, &unsigned, Timestamp(0)).unwrap_err();
    assert!(
        matches!(
            err,
            NotaryError::Invalid(VerifyError::MissingSignatures { .. })
        ),
        "{err}"
    );
    assert_eq!(notary::committed_count(&s.notary_store).unwrap(), 0);
    let other = Party::new("Other", KeyPair::generate().public());
    let err = notary::notarise(&mut s.notary_store, &other, &unsigned, Timestamp(0)).unwrap_err();
    assert!(matches!(err, NotaryError::WrongNotary { .. }), "{err}");
}

#[test]
fn notary_refuses_a_spend_its_input_owner_did_not_sign() {
    let mut s = setup();
    let issue = issue_to_node(&mut s, &[100], 1);
    let coin = issue.tx.out_refs().remove(0);
    // A stranger moves the node's coin to itself and signs as the only
    // signer its command names.
    let thief = KeyPair::generate();
    let mut b = TransactionBuilder::new(s.notary.clone());
    b.add_input(coin.clone());
    b.add_output(coin.state.with_owner(thief.public()));
    b.add_command(CommandData::CashMove, vec![thief.public()]);
    let tx = b.to_wire();
    let theft = SignedTransaction::new(tx.clone()).with_signature(thief.sign(&tx.id().0));
    let err = notary::notarise(&mut s.notary_store, &s.notary, &theft, Timestamp(0)).unwrap_err();
    assert!(
        matches!(err, NotaryError::Invalid(VerifyError::Contract(ref m)) if m.contains("not signed by the cash owner")),
        "{err}"
    );
    assert_eq!(notary::committed_count(&s.notary_store).unwrap(), 0);
    // The owner's own spend still goes through.
    pay(&mut s, 100, 1).unwrap();
    assert_eq!(notary::committed_count(&s.notary_store).unwrap(), 1);
}

#[test]
fn notary_refuses_a_spend_of_a_state_it_cannot_resolve() {
    let mut s = setup();
    let issue = issue_to_node(&mut s, &[100], 1);
    let stx = pay(&mut s, 100, 1).unwrap();
    // A fresh notary store without the history: nothing is consumed.
    let mut empty = MemLedgerDb::new();
    keys::import(&mut empty, &KeyPair::from_seed([1; 32])).unwrap();
    let unsigned_by_notary = SignedTransaction {
        sigs: stx.sigs[..1].to_vec(),
        ..stx
    };
    let err =
        notary::notarise(&mut empty, &s.notary, &unsigned_by_notary, Timestamp(0)).unwrap_err();
    assert!(
        matches!(err, NotaryError::Invalid(VerifyError::UnresolvedInput(r)) if r.tx_id == issue.id()),
        "{err}"
    );
    assert_eq!(notary::committed_count(&empty).unwrap(), 0);
}

#[test]
fn notary_checks_the_time_window() {
    let mut s = setup();
    let owner = KeyPair::from_seed([5; 32]);
    let mut b = TransactionBuilder::new(s.notary.clone());
    b.add_output(ContractState::CommercialPaper(CommercialPaper {
        issuer: s.bank.clone(),
        face_value: Amount::new(100, Currency::USD),
        maturity: Timestamp(1_000_000),
        owner: owner.public(),
    }));
    b.add_command(CommandData::PaperIssue, vec![s.bank_key.public()]);
    b.set_time_window(TimeWindow {
        from: None,
        until: Some(Timestamp(100)),
    });
    let tx = b.to_wire();
    let stx = SignedTransaction::new(tx.clone()).with_signature(s.bank_key.sign(&tx.id().0));
    assert!(notary::notarise(&mut s.notary_store, &s.notary, &stx, Timestamp(50)).is_ok());
    assert_eq!(
        notary::notarise(&mut s.notary_store, &s.notary, &stx, Timestamp(100)),
        Err(NotaryError::OutsideTimeWindow {
            now: Timestamp(100)
        })
    );
}

#[test]
fn corrupt_vault_records_are_errors_not_panics() {
    let mut s = setup();
    issue_to_node(&mut s, &[100], 1);
    let (k, _) = s.node.scan(LedgerTable::Unconsumed).unwrap().remove(0);
    s.node
        .put(LedgerTable::Unconsumed, &k, b"\xc1garbage")
        .unwrap();
    assert!(vault::unconsumed(&s.node).is_err());
    assert!(vault::select_coins(&mut s.node, Amount::new(1, Currency::USD), 1).is_err());
}

#[test]
fn a_coin_locked_by_one_spend_is_never_selected_by_another() {
    // As in a group commit of many trades: equal coins, one spend after
    // another, none committed or released in between.
    let mut s = setup();
    issue_to_node(&mut s, &[100; 40], 1);
    let usd = |q| Amount::new(q, Currency::USD);
    let mut taken = std::collections::BTreeSet::new();
    for lock in 0..20u64 {
        for coin in vault::select_coins(&mut s.node, usd(150), lock).unwrap() {
            assert!(
                taken.insert(coin.state_ref),
                "spend {lock} selected {}, which an earlier spend holds",
                coin.state_ref
            );
        }
    }
    assert_eq!(taken.len(), 40);
    assert!(vault::select_coins(&mut s.node, usd(1), 99).is_err());
    // A released spend's coins are selectable again, and only those.
    vault::release_locks(&mut s.node, 7).unwrap();
    let again = vault::select_coins(&mut s.node, usd(200), 100).unwrap();
    assert_eq!(again.len(), 2);
    assert!(vault::select_coins(&mut s.node, usd(1), 101).is_err());
}

/// A [`LedgerDb`] that keeps uncommitted writes in an overlay, deletions as
/// tombstones, the way the runtime's `StepWrites` does within one group
/// commit, and counts the entries its range reads walk — what a selection
/// costs while the batch's earlier spends are not committed yet.
struct BatchStore {
    committed: MemLedgerDb,
    pending: std::collections::BTreeMap<(LedgerTable, Vec<u8>), Option<Vec<u8>>>,
    walked: std::cell::Cell<usize>,
}

impl BatchStore {
    fn over(committed: MemLedgerDb) -> Self {
        Self {
            committed,
            pending: Default::default(),
            walked: Default::default(),
        }
    }
}

impl LedgerDb for BatchStore {
    fn get(&self, table: LedgerTable, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerDbError> {
        match self.pending.get(&(table, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.committed.get(table, key),
        }
    }
    fn put(&mut self, table: LedgerTable, key: &[u8], value: &[u8]) -> Result<(), LedgerDbError> {
        self.pending
            .insert((table, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }
    fn remove(&mut self, table: LedgerTable, key: &[u8]) -> Result<(), LedgerDbError> {
        self.pending.insert((table, key.to_vec()), None);
        Ok(())
    }
    fn range(
        &self,
        table: LedgerTable,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<LedgerEntries, LedgerDbError> {
        let in_range = |k: &[u8]| k >= from && to.is_none_or(|to| k < to);
        let pending: Vec<_> = self
            .pending
            .iter()
            .filter(|((t, k), _)| *t == table && in_range(k))
            .collect();
        // Each pending write may hide a committed entry: read that many more.
        let committed =
            self.committed
                .range(table, from, to, limit.saturating_add(pending.len()))?;
        self.walked
            .set(self.walked.get() + pending.len() + committed.len());
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            committed.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for ((_, k), v) in pending {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }
}

#[test]
fn selection_skips_the_coins_earlier_spends_of_the_batch_took() {
    let mut s = setup();
    issue_to_node(&mut s, &[100; 300], 1);
    let mut batch = BatchStore::over(s.node.clone());
    let mut most = 0;
    for lock in 0..300u64 {
        batch.walked.set(0);
        let coins = vault::select_coins(&mut batch, Amount::new(100, Currency::USD), lock).unwrap();
        assert_eq!(coins.len(), 1);
        most = most.max(batch.walked.get());
    }
    // A page of the index plus the few writes around its start — not the
    // hundreds of coins the batch's earlier spends deleted.
    assert!(
        most <= 24,
        "a selection walked {most} index entries: it walks the batch's earlier selections"
    );
    assert!(vault::select_coins(&mut batch, Amount::new(1, Currency::USD), 999).is_err());
}

/// One operation on a vault, for the model test below.
#[derive(Debug, Clone)]
enum VaultOp {
    Issue(Vec<u64>),
    Select {
        lock: u64,
        amount: u64,
    },
    Release(u64),
    /// Spends what `lock` holds, with change of half of it.
    Spend(u64),
}

fn vault_op() -> impl proptest::strategy::Strategy<Value = VaultOp> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::collection::vec(1u64..50, 1..6).prop_map(VaultOp::Issue),
        (0u64..4, 1u64..120).prop_map(|(lock, amount)| VaultOp::Select { lock, amount }),
        (0u64..4).prop_map(VaultOp::Release),
        (0u64..4).prop_map(VaultOp::Spend),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Coin selection against a plain model: a spend first keeps what it
    /// holds, then takes the largest unlocked coins (ties by state
    /// reference); a failed selection changes nothing; no coin is ever
    /// held by two spends.
    #[test]
    fn coin_selection_matches_a_largest_first_model(
        ops in proptest::collection::vec(vault_op(), 1..40)
    ) {
        use std::collections::BTreeMap;
        let mut s = setup();
        let owner = keys::fresh_key(&mut s.node).unwrap();
        let mut coins: BTreeMap<StateRef, u64> = BTreeMap::new();
        let mut locks: BTreeMap<StateRef, u64> = BTreeMap::new();
        let cash = |q, owner| ContractState::Cash(Cash {
            amount: Amount::new(q, Currency::USD),
            issuer: s.bank.clone(),
            owner,
        });
        for (salt, op) in (0u64..).zip(ops) {
            match op {
                VaultOp::Issue(amounts) => {
                    let mut b = TransactionBuilder::with_salt(s.notary.clone(), salt);
                    for a in &amounts {
                        b.add_output(cash(*a, owner));
                    }
                    let stx = SignedTransaction::new(b.to_wire());
                    vault::record(&mut s.node, &stx).unwrap();
                    for (out, a) in stx.tx.out_refs().into_iter().zip(amounts) {
                        coins.insert(out.state_ref, a);
                    }
                }
                VaultOp::Select { lock, amount } => {
                    let held: Vec<StateRef> =
                        locks.iter().filter(|(_, l)| **l == lock).map(|(r, _)| *r).collect();
                    let mut total: u64 = held.iter().map(|r| coins[r]).sum();
                    let mut free: Vec<(u64, StateRef)> = coins
                        .iter()
                        .filter(|(r, _)| !locks.contains_key(*r))
                        .map(|(r, q)| (*q, *r))
                        .collect();
                    free.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.to_key().cmp(&b.1.to_key())));
                    let mut expected = held.clone();
                    for (q, r) in free {
                        if total >= amount {
                            break;
                        }
                        total += q;
                        expected.push(r);
                    }
                    let got = vault::select_coins(&mut s.node, Amount::new(amount, Currency::USD), lock);
                    if total < amount {
                        proptest::prop_assert!(got.is_err());
                    } else {
                        let got: Vec<StateRef> = got.unwrap().into_iter().map(|c| c.state_ref).collect();
                        proptest::prop_assert_eq!(&got, &expected);
                        for r in expected {
                            locks.insert(r, lock);
                        }
                    }
                }
                VaultOp::Release(lock) => {
                    vault::release_locks(&mut s.node, lock).unwrap();
                    locks.retain(|_, l| *l != lock);
                }
                VaultOp::Spend(lock) => {
                    let held: Vec<StateRef> =
                        locks.iter().filter(|(_, l)| **l == lock).map(|(r, _)| *r).collect();
                    if held.is_empty() {
                        continue;
                    }
                    let mut b = TransactionBuilder::with_salt(s.notary.clone(), salt);
                    let mut sum = 0;
                    for r in &held {
                        let input = vault::state(&s.node, r).unwrap().unwrap();
                        b.add_input(input);
                        sum += coins[r];
                    }
                    let change = sum / 2;
                    if change > 0 {
                        b.add_output(cash(change, owner));
                    }
                    let stx = SignedTransaction::new(b.to_wire());
                    vault::record(&mut s.node, &stx).unwrap();
                    for r in &held {
                        coins.remove(r);
                        locks.remove(r);
                    }
                    if change > 0 {
                        coins.insert(stx.tx.out_refs()[0].state_ref, change);
                    }
                }
            }
            let vault_total = vault::cash_total(&s.node, Currency::USD).unwrap();
            proptest::prop_assert_eq!(vault_total, coins.values().sum::<u64>());
            proptest::prop_assert_eq!(vault::locked_count(&s.node).unwrap(), locks.len());
        }
    }
}
