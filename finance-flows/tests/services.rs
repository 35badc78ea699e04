//! The vault, key manager and notary over an in-memory store.

use finance_flows::crypto::KeyPair;
use finance_flows::ledger::*;
use finance_flows::notary::{self, NotaryError};
use finance_flows::store::{MemStore, Store, Table};
use finance_flows::{keys, vault};
use flow_runtime::{Party, Timestamp};

struct Setup {
    notary: Party,
    notary_store: MemStore,
    bank: Party,
    bank_key: KeyPair,
    node: MemStore,
}

fn setup() -> Setup {
    let notary_key = KeyPair::from_seed([1; 32]);
    let mut notary_store = MemStore::new();
    keys::import(&mut notary_store, &notary_key).unwrap();
    let bank_key = KeyPair::from_seed([2; 32]);
    Setup {
        notary: Party::new("Notary", notary_key.public()),
        notary_store,
        bank: Party::new("Bank", bank_key.public()),
        bank_key,
        node: MemStore::new(),
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
    let (k, _) = s.node.scan(Table::Unconsumed).unwrap().remove(0);
    s.node.put(Table::Unconsumed, &k, b"\xc1garbage").unwrap();
    assert!(vault::unconsumed(&s.node).is_err());
    assert!(vault::select_coins(&mut s.node, Amount::new(1, Currency::USD), 1).is_err());
}
