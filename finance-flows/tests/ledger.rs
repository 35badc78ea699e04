//! The ledger model: ids, signatures and contracts, including property
//! tests for cash conservation and tamper detection.

use finance_flows::crypto::{KeyPair, SecureHash};
use finance_flows::ledger::*;
use flow_runtime::{Party, PublicKey, Timestamp};
use proptest::prelude::*;
use std::collections::HashMap;

fn pair(n: u8) -> KeyPair {
    KeyPair::from_seed([n; 32])
}

fn party(name: &str, n: u8) -> (Party, KeyPair) {
    let k = pair(n);
    (Party::new(name, k.public()), k)
}

struct World {
    notary: (Party, KeyPair),
    bank: (Party, KeyPair),
    alice: KeyPair,
    bob: KeyPair,
    txs: HashMap<SecureHash, WireTransaction>,
}

impl World {
    fn new() -> Self {
        Self {
            notary: party("Notary", 1),
            bank: party("Bank", 2),
            alice: pair(3),
            bob: pair(4),
            txs: HashMap::new(),
        }
    }

    fn usd(&self, cents: u64, owner: PublicKey) -> ContractState {
        ContractState::Cash(Cash {
            amount: Amount::new(cents, Currency::USD),
            issuer: self.bank.0.clone(),
            owner,
        })
    }

    /// Issues cash to `owner` and records the transaction as known.
    fn issue(&mut self, amounts: &[u64], owner: PublicKey) -> Vec<StateAndRef> {
        let mut b = TransactionBuilder::with_salt(self.notary.0.clone(), 7);
        for a in amounts {
            b.add_output(self.usd(*a, owner));
        }
        b.add_command(CommandData::CashIssue, vec![self.bank.1.public()]);
        let stx = SignedTransaction::new(b.to_wire())
            .with_signature(self.bank.1.sign(&b.to_wire().id().0));
        stx.verify(|id: &SecureHash| self.txs.get(id).cloned())
            .unwrap();
        self.txs.insert(stx.id(), stx.tx.clone());
        stx.tx.out_refs()
    }

    fn sign_all(&self, tx: WireTransaction, keys: &[&KeyPair]) -> SignedTransaction {
        let id = tx.id();
        let mut stx = SignedTransaction::new(tx);
        for k in keys {
            stx.add_signature(k.sign(&id.0));
        }
        stx
    }

    fn verify(&self, stx: &SignedTransaction) -> Result<LedgerTransaction, VerifyError> {
        stx.verify(|id: &SecureHash| self.txs.get(id).cloned())
    }
}

#[test]
fn transaction_id_is_pinned() {
    // The id of a fixed transaction: if this changes, the canonical encoding
    // changed and every stored id with it. Bump the domain tag instead.
    let w = World::new();
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 42);
    b.add_output(w.usd(1_000, w.alice.public()));
    b.add_command(CommandData::CashIssue, vec![w.bank.1.public()]);
    let tx = b.to_wire();
    assert_eq!(
        tx.id().to_hex(),
        "653d158b6571889e1716458a9f43f360ad100ea779896ff48d4311837bc19049"
    );
    // Re-encoding a decoded transaction gives the same id.
    let decoded: WireTransaction = rmp_serde::from_slice(&tx.canonical_bytes()).unwrap();
    assert_eq!(decoded.id(), tx.id());
}

#[test]
fn a_cash_move_with_all_signatures_verifies() {
    let mut w = World::new();
    let coins = w.issue(&[600, 500], w.alice.public());
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 1);
    let signers = b
        .add_cash_payment(
            &coins,
            Amount::new(1_000, Currency::USD),
            w.bob.public(),
            w.alice.public(),
        )
        .unwrap();
    assert_eq!(signers, vec![w.alice.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.alice, &w.notary.1]);
    let ltx = w.verify(&stx).unwrap();
    assert_eq!(ltx.inputs.len(), 2);
    // Payee gets 1000, change 100.
    let outs: Vec<_> = ltx
        .outputs
        .iter()
        .filter_map(|o| o.as_cash())
        .map(|c| (c.owner, c.amount.quantity))
        .collect();
    assert_eq!(outs, vec![(w.bob.public(), 1_000), (w.alice.public(), 100)]);
}

#[test]
fn missing_notary_signature_is_reported() {
    let mut w = World::new();
    let coins = w.issue(&[600], w.alice.public());
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 1);
    b.add_cash_payment(
        &coins,
        Amount::new(600, Currency::USD),
        w.bob.public(),
        w.alice.public(),
    )
    .unwrap();
    let stx = w.sign_all(b.to_wire(), &[&w.alice]);
    match w.verify(&stx) {
        Err(VerifyError::MissingSignatures { keys, .. }) => {
            assert_eq!(keys, vec![w.notary.1.public()])
        }
        other => panic!("expected a missing notary signature, got {other:?}"),
    }
    // Allowed while collecting.
    stx.verify_except(&[w.notary.1.public()], |id: &SecureHash| {
        w.txs.get(id).cloned()
    })
    .unwrap();
}

#[test]
fn trusting_signatures_still_checks_signers_and_contracts() {
    let mut w = World::new();
    let coins = w.issue(&[600], w.alice.public());
    let lookup = |w: &World| {
        let txs = w.txs.clone();
        move |id: &SecureHash| txs.get(id).cloned()
    };
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 1);
    b.add_cash_payment(
        &coins,
        Amount::new(600, Currency::USD),
        w.bob.public(),
        w.alice.public(),
    )
    .unwrap();
    let notary = [w.notary.1.public()];
    let good = w.sign_all(b.to_wire(), &[&w.alice]);
    good.verify_trusting_signatures(&notary, lookup(&w))
        .unwrap();
    // What it skips: the cryptographic check (full verification catches it).
    let mut tampered = good.clone();
    tampered.sigs[0].bytes[0] ^= 1;
    tampered
        .verify_trusting_signatures(&notary, lookup(&w))
        .unwrap();
    assert!(matches!(
        tampered.verify_except(&notary, lookup(&w)),
        Err(VerifyError::InvalidSignature { .. })
    ));
    // Known signatures are skipped; any other is still checked.
    let full = w.sign_all(b.to_wire(), &[&w.alice, &w.notary.1]);
    full.verify_knowing(&full.sigs[..1], lookup(&w)).unwrap();
    let mut bad_notary = full.clone();
    bad_notary.sigs[1].bytes[5] ^= 1;
    assert!(matches!(
        bad_notary.verify_knowing(&full.sigs[..1], lookup(&w)),
        Err(VerifyError::InvalidSignature { .. })
    ));
    let mut bad_alice = full.clone();
    bad_alice.sigs[0].bytes[5] ^= 1;
    assert!(matches!(
        bad_alice.verify_knowing(&full.sigs[..1], lookup(&w)),
        Err(VerifyError::InvalidSignature { .. })
    ));
    // What it keeps: the signer set and the contracts.
    let unsigned = w.sign_all(b.to_wire(), &[]);
    assert!(matches!(
        unsigned.verify_trusting_signatures(&notary, lookup(&w)),
        Err(VerifyError::MissingSignatures { .. })
    ));
    let stranger = w.sign_all(b.to_wire(), &[&w.alice, &w.bob]);
    assert!(matches!(
        stranger.verify_trusting_signatures(&notary, lookup(&w)),
        Err(VerifyError::UnexpectedSignature { .. })
    ));
    let mut inflating = TransactionBuilder::with_salt(w.notary.0.clone(), 2);
    inflating.add_input(coins[0].clone());
    inflating.add_output(w.usd(601, w.bob.public()));
    inflating.add_command(CommandData::CashMove, vec![w.alice.public()]);
    let inflating = w.sign_all(inflating.to_wire(), &[&w.alice]);
    assert!(matches!(
        inflating.verify_trusting_signatures(&notary, lookup(&w)),
        Err(VerifyError::Contract(_))
    ));
}

#[test]
fn issuance_needs_the_issuers_signature() {
    let w = World::new();
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 1);
    b.add_output(w.usd(100, w.alice.public()));
    b.add_command(CommandData::CashIssue, vec![w.alice.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.alice]);
    let err = w.verify(&stx).unwrap_err();
    assert!(
        matches!(err, VerifyError::Contract(ref m) if m.contains("without the issuer's signature")),
        "{err}"
    );
}

#[test]
fn cash_cannot_be_created_in_a_move() {
    let mut w = World::new();
    let coins = w.issue(&[600], w.alice.public());
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 1);
    b.add_input(coins[0].clone());
    b.add_output(w.usd(601, w.bob.public()));
    b.add_command(CommandData::CashMove, vec![w.alice.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.alice, &w.notary.1]);
    let err = w.verify(&stx).unwrap_err();
    assert!(
        matches!(err, VerifyError::Contract(ref m) if m.contains("not conserved")),
        "{err}"
    );
}

#[test]
fn moving_someone_elses_cash_fails() {
    let mut w = World::new();
    let coins = w.issue(&[600], w.alice.public());
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 1);
    b.add_input(coins[0].clone());
    b.add_output(w.usd(600, w.bob.public()));
    // Bob claims the move and signs it himself.
    b.add_command(CommandData::CashMove, vec![w.bob.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.bob, &w.notary.1]);
    let err = w.verify(&stx).unwrap_err();
    assert!(
        matches!(err, VerifyError::Contract(ref m) if m.contains("not signed by the cash owner")),
        "{err}"
    );
}

#[test]
fn unknown_input_is_unresolved() {
    let w = World::new();
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 1);
    let bogus = StateAndRef {
        state: w.usd(5, w.alice.public()),
        state_ref: StateRef {
            tx_id: SecureHash([9; 32]),
            index: 0,
        },
    };
    b.add_input(bogus.clone());
    b.add_output(w.usd(5, w.bob.public()));
    b.add_command(CommandData::CashMove, vec![w.alice.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.alice, &w.notary.1]);
    assert_eq!(
        w.verify(&stx).unwrap_err(),
        VerifyError::UnresolvedInput(bogus.state_ref)
    );
}

fn paper(w: &World, owner: PublicKey, maturity: u64) -> ContractState {
    ContractState::CommercialPaper(CommercialPaper {
        issuer: w.bank.0.clone(),
        face_value: Amount::whole(1_000, Currency::USD),
        maturity: Timestamp(maturity),
        owner,
    })
}

fn issue_paper(w: &mut World, owner: PublicKey, maturity: u64) -> StateAndRef {
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 3);
    b.add_output(paper(w, owner, maturity));
    b.add_command(CommandData::PaperIssue, vec![w.bank.1.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.bank.1]);
    w.verify(&stx).unwrap();
    w.txs.insert(stx.id(), stx.tx.clone());
    stx.tx.out_refs().remove(0)
}

#[test]
fn paper_trade_for_cash_verifies_and_terms_are_kept() {
    let mut w = World::new();
    let alice = w.alice.public();
    let cp = issue_paper(&mut w, alice, 10_000);
    let coins = w.issue(&[100_000], w.bob.public());
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 5);
    b.add_cash_payment(
        &coins,
        Amount::whole(900, Currency::USD),
        w.alice.public(),
        w.bob.public(),
    )
    .unwrap();
    b.add_input(cp.clone());
    b.add_output(cp.state.with_owner(w.bob.public()));
    b.add_command(CommandData::PaperMove, vec![w.alice.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.alice, &w.bob, &w.notary.1]);
    w.verify(&stx).unwrap();

    // Changing the face value on the way is refused.
    let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 6);
    b.add_input(cp.clone());
    let ContractState::CommercialPaper(mut p) = cp.state.with_owner(w.bob.public()) else {
        unreachable!()
    };
    p.face_value = Amount::whole(2_000, Currency::USD);
    b.add_output(ContractState::CommercialPaper(p));
    b.add_command(CommandData::PaperMove, vec![w.alice.public()]);
    let stx = w.sign_all(b.to_wire(), &[&w.alice, &w.notary.1]);
    assert!(
        matches!(w.verify(&stx), Err(VerifyError::Contract(m)) if m.contains("changed the issuer"))
    );
}

#[test]
fn paper_redeems_only_after_maturity_and_against_face_value() {
    let mut w = World::new();
    let alice = w.alice.public();
    let cp = issue_paper(&mut w, alice, 10_000);
    let bank_cash = w.issue(&[100_000, 50_000], w.bank.1.public());
    let redeem = |w: &World, from: u64, pay: u64| {
        let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 9);
        b.add_input(cp.clone());
        b.add_cash_payment(
            &bank_cash,
            Amount::new(pay, Currency::USD),
            w.alice.public(),
            w.bank.1.public(),
        )
        .unwrap();
        b.add_command(CommandData::PaperRedeem, vec![w.alice.public()]);
        b.set_time_window(TimeWindow {
            from: Some(Timestamp(from)),
            until: None,
        });
        let stx = w.sign_all(b.to_wire(), &[&w.alice, &w.bank.1, &w.notary.1]);
        w.verify(&stx)
    };
    redeem(&w, 10_000, 100_000).unwrap();
    assert!(
        matches!(redeem(&w, 9_999, 100_000), Err(VerifyError::Contract(m)) if m.contains("before its maturity"))
    );
    assert!(
        matches!(redeem(&w, 10_000, 99_999), Err(VerifyError::Contract(m)) if m.contains("face value"))
    );
}

#[test]
fn inputs_under_another_notary_are_refused() {
    let mut w = World::new();
    let coins = w.issue(&[600], w.alice.public());
    let (other, other_key) = party("OtherNotary", 8);
    let mut b = TransactionBuilder::with_salt(other, 1);
    b.add_cash_payment(
        &coins,
        Amount::new(600, Currency::USD),
        w.bob.public(),
        w.alice.public(),
    )
    .unwrap();
    let stx = w.sign_all(b.to_wire(), &[&w.alice, &other_key]);
    assert!(matches!(
        w.verify(&stx),
        Err(VerifyError::WrongNotary { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any payment built from any coins conserves cash per issuer, and
    /// moving one unit of value from one output to a new one, or dropping
    /// it, breaks verification.
    #[test]
    fn payments_conserve_cash(
        coins in prop::collection::vec(1u64..10_000, 1..6),
        pay_fraction in 0.0f64..1.0,
        skim in 1u64..100,
    ) {
        let mut w = World::new();
        let refs = w.issue(&coins, w.alice.public());
        let total: u64 = coins.iter().sum();
        let pay = ((total as f64 * pay_fraction) as u64).clamp(1, total);
        let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 11);
        b.add_cash_payment(&refs, Amount::new(pay, Currency::USD), w.bob.public(), w.alice.public()).unwrap();
        let tx = b.to_wire();
        let stx = w.sign_all(tx.clone(), &[&w.alice, &w.notary.1]);
        let ltx = w.verify(&stx).unwrap();
        let out: u64 = ltx.outputs.iter().filter_map(|o| o.as_cash()).map(|c| c.amount.quantity).sum();
        prop_assert_eq!(out, total);
        let paid: u64 = ltx.outputs.iter().filter_map(|o| o.as_cash()).filter(|c| c.owner == w.bob.public()).map(|c| c.amount.quantity).sum();
        prop_assert_eq!(paid, pay);

        // Inflate the first output: conservation must fail.
        let mut bad = tx.clone();
        if let ContractState::Cash(c) = &mut bad.outputs[0] {
            c.amount.quantity += skim;
        }
        let stx = w.sign_all(bad, &[&w.alice, &w.notary.1]);
        let inflated = matches!(w.verify(&stx), Err(VerifyError::Contract(_)));
        prop_assert!(inflated);
    }

    /// Changing any byte of a signature, or any output after signing, is
    /// detected.
    #[test]
    fn tampering_is_detected(byte in 0usize..64, bit in 0u8..8, new_amount in 1u64..10_000) {
        let mut w = World::new();
        let refs = w.issue(&[10_000], w.alice.public());
        let mut b = TransactionBuilder::with_salt(w.notary.0.clone(), 13);
        b.add_cash_payment(&refs, Amount::new(10_000, Currency::USD), w.bob.public(), w.alice.public()).unwrap();
        let stx = w.sign_all(b.to_wire(), &[&w.alice, &w.notary.1]);
        prop_assert!(w.verify(&stx).is_ok());

        let mut bad_sig = stx.clone();
        bad_sig.sigs[0].bytes[byte] ^= 1 << bit;
        let rejected = matches!(w.verify(&bad_sig), Err(VerifyError::InvalidSignature { .. }));
        prop_assert!(rejected);

        let mut bad_tx = stx.clone();
        if let ContractState::Cash(c) = &mut bad_tx.tx.outputs[0] {
            c.owner = w.alice.public();
            c.amount.quantity = new_amount;
        }
        let rejected = matches!(w.verify(&bad_tx), Err(VerifyError::InvalidSignature { .. }));
        prop_assert!(rejected);
    }
}
