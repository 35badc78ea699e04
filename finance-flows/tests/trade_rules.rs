//! The trade's pure rules and dependency resolution between two in-memory
//! vaults, without flows.

use finance_flows::crypto::KeyPair;
use finance_flows::ledger::*;
use finance_flows::ledger_db::{LedgerDb, LedgerTable, MemLedgerDb};
use finance_flows::notarise as notary;
use finance_flows::resolve::{Resolution, ResolveError, Vending};
use finance_flows::trade::{self, TradeError, TradeOffer};
use finance_flows::{keys, trust, vault};
use flow_runtime::{Party, Timestamp};

struct Net {
    notary: Party,
    notary_store: MemLedgerDb,
    bank: Party,
    bank_key: KeyPair,
    seller: MemLedgerDb,
    buyer: MemLedgerDb,
}

fn net() -> Net {
    let nk = KeyPair::from_seed([1; 32]);
    let mut notary_store = MemLedgerDb::new();
    keys::import(&mut notary_store, &nk).unwrap();
    let bk = KeyPair::from_seed([2; 32]);
    let bank = Party::new("Bank", bk.public());
    // Both accept the bank's cash.
    let mut seller = MemLedgerDb::new();
    let mut buyer = MemLedgerDb::new();
    trust::trust_issuer(&mut seller, &bank).unwrap();
    trust::trust_issuer(&mut buyer, &bank).unwrap();
    Net {
        notary: Party::new("Notary", nk.public()),
        notary_store,
        bank,
        bank_key: bk,
        seller,
        buyer,
    }
}

fn issue_cash(n: &mut Net, cents: u64, salt: u64) -> SignedTransaction {
    let owner = keys::fresh_key(&mut n.buyer).unwrap();
    let mut b = TransactionBuilder::with_salt(n.notary.clone(), salt);
    b.add_output(ContractState::Cash(Cash {
        amount: Amount::new(cents, Currency::USD),
        issuer: n.bank.clone(),
        owner,
    }));
    b.add_command(CommandData::CashIssue, vec![n.bank_key.public()]);
    let tx = b.to_wire();
    let stx = SignedTransaction::new(tx.clone()).with_signature(n.bank_key.sign(&tx.id().0));
    vault::record(&mut n.buyer, &stx).unwrap();
    stx
}

fn issue_paper(n: &mut Net) -> StateAndRef {
    let owner = keys::fresh_key(&mut n.seller).unwrap();
    let mut b = TransactionBuilder::new(n.notary.clone());
    b.add_output(ContractState::CommercialPaper(CommercialPaper {
        issuer: n.bank.clone(),
        face_value: Amount::whole(1_000, Currency::USD),
        maturity: Timestamp(1_000_000),
        owner,
    }));
    b.add_command(CommandData::PaperIssue, vec![n.bank_key.public()]);
    let tx = b.to_wire();
    let stx = SignedTransaction::new(tx.clone()).with_signature(n.bank_key.sign(&tx.id().0));
    vault::record(&mut n.seller, &stx).unwrap();
    stx.tx.out_refs().remove(0)
}

/// Resolves `ids` on `to` from `from`, the way the flows do.
fn resolve(
    from: &MemLedgerDb,
    to: &mut MemLedgerDb,
    ids: Vec<finance_flows::crypto::SecureHash>,
) -> Result<usize, ResolveError> {
    let mut vending = Vending::of(ids.clone());
    let mut r = Resolution::new(ids);
    loop {
        let req = r.next_request(to)?;
        if req.is_empty() {
            return r.finish(to);
        }
        r.accept(
            vending
                .serve(from, &req)
                .expect("an honest resolution asks only for the chain"),
        )?;
    }
}

fn offer(n: &mut Net, asset: StateAndRef, price: u64) -> TradeOffer {
    TradeOffer {
        asset,
        price: Amount::new(price, Currency::USD),
        pay_to: keys::fresh_key(&mut n.seller).unwrap(),
        history: Vec::new(),
    }
}

#[test]
fn a_full_trade_by_the_rules() {
    let mut n = net();
    issue_cash(&mut n, 60_000, 1);
    issue_cash(&mut n, 60_000, 2);
    let asset = issue_paper(&mut n);
    let offer = offer(&mut n, asset.clone(), 100_000);
    trade::check_offer(
        &offer,
        Amount::new(100_000, Currency::USD),
        AssetKind::CommercialPaper,
    )
    .unwrap();
    assert_eq!(
        resolve(&n.seller, &mut n.buyer, vec![asset.state_ref.tx_id]).unwrap(),
        1
    );
    trade::check_offered_state(&n.buyer, &offer).unwrap();
    let proposal = trade::build_proposal(&mut n.buyer, &offer, &n.notary, 7).unwrap();
    let deps: Vec<_> = proposal.tx.inputs.iter().map(|i| i.tx_id).collect();
    assert_eq!(
        resolve(&n.buyer, &mut n.seller, deps).unwrap(),
        2,
        "the buyer's two cash issuances"
    );
    trade::check_proposal(&n.seller, &proposal, &offer, &n.notary).unwrap();
    let id = proposal.id();
    let signed =
        proposal.with_signature(keys::sign(&n.seller, asset.state.owner(), &id.0).unwrap());
    // The validating notary needs the history too (the flows fetch it).
    let deps: Vec<_> = signed.tx.inputs.iter().map(|i| i.tx_id).collect();
    resolve(&n.seller, &mut n.notary_store, deps).unwrap();
    let sig = notary::notarise(&mut n.notary_store, &n.notary, &signed, Timestamp(0)).unwrap();
    let fin = signed.with_signature(sig);
    fin.verify(vault::resolver(&n.seller)).unwrap();
    vault::record(&mut n.seller, &fin).unwrap();
    vault::record(&mut n.buyer, &fin).unwrap();
    assert_eq!(
        vault::cash_total(&n.seller, Currency::USD).unwrap(),
        100_000
    );
    assert_eq!(vault::cash_total(&n.buyer, Currency::USD).unwrap(), 20_000);
    let papers = |s: &MemLedgerDb| {
        vault::unconsumed(s)
            .unwrap()
            .into_iter()
            .filter(|s| s.state.as_paper().is_some())
            .count()
    };
    assert_eq!((papers(&n.seller), papers(&n.buyer)), (0, 1));
}

#[test]
fn buyer_refuses_a_high_price_or_the_wrong_asset() {
    let mut n = net();
    let asset = issue_paper(&mut n);
    let o = offer(&mut n, asset, 100_001);
    assert!(matches!(
        trade::check_offer(
            &o,
            Amount::new(100_000, Currency::USD),
            AssetKind::CommercialPaper
        ),
        Err(TradeError::PriceTooHigh { .. })
    ));
    assert!(matches!(
        trade::check_offer(&o, Amount::new(200_000, Currency::USD), AssetKind::Cash),
        Err(TradeError::WrongAsset { .. })
    ));
    assert!(matches!(
        trade::check_offer(
            &o,
            Amount::new(200_000, Currency::EUR),
            AssetKind::CommercialPaper
        ),
        Err(TradeError::PriceTooHigh { .. })
    ));
}

#[test]
fn seller_refuses_underpayment() {
    let mut n = net();
    issue_cash(&mut n, 200_000, 1);
    let asset = issue_paper(&mut n);
    let o = offer(&mut n, asset.clone(), 100_000);
    resolve(&n.seller, &mut n.buyer, vec![asset.state_ref.tx_id]).unwrap();
    // The buyer proposes as if the price were lower.
    let cheap = TradeOffer {
        price: Amount::new(99_999, Currency::USD),
        ..o.clone()
    };
    let proposal = trade::build_proposal(&mut n.buyer, &cheap, &n.notary, 1).unwrap();
    let deps: Vec<_> = proposal.tx.inputs.iter().map(|i| i.tx_id).collect();
    resolve(&n.buyer, &mut n.seller, deps).unwrap();
    assert!(matches!(
        trade::check_proposal(&n.seller, &proposal, &o, &n.notary),
        Err(TradeError::WrongPayment { .. })
    ));
}

/// The buyer's proposal makes a fresh key for the change only when the
/// coins exceed the price: coins that add up to it exactly leave no change
/// output, and a key made for nothing costs a scalar multiplication and a
/// write.
#[test]
fn the_buyer_makes_a_change_key_only_when_there_is_change() {
    for (coin, change) in [(100_000, 0), (150_000, 50_000)] {
        let mut n = net();
        issue_cash(&mut n, coin, 1);
        let asset = issue_paper(&mut n);
        let offer = offer(&mut n, asset.clone(), 100_000);
        resolve(&n.seller, &mut n.buyer, vec![asset.state_ref.tx_id]).unwrap();
        let keys_before = n.buyer.scan(LedgerTable::Keys).unwrap().len();
        let proposal = trade::build_proposal(&mut n.buyer, &offer, &n.notary, 7).unwrap();
        let made = n.buyer.scan(LedgerTable::Keys).unwrap().len() - keys_before;
        // The paper's new owner always; the change's owner if there is change.
        assert_eq!(made, if change > 0 { 2 } else { 1 }, "coin {coin}");
        let to_buyer: Vec<&ContractState> = proposal
            .tx
            .outputs
            .iter()
            .filter(|o| *o.owner() != offer.pay_to)
            .collect();
        assert_eq!(to_buyer.len(), made, "coin {coin}: {to_buyer:?}");
        let mut owners: Vec<_> = to_buyer.iter().map(|o| *o.owner()).collect();
        owners.dedup();
        assert_eq!(
            owners.len(),
            made,
            "each output of the buyer has a key of its own"
        );
        for owner in &owners {
            assert!(keys::is_ours(&n.buyer, owner).unwrap());
        }
        let kept: u64 = to_buyer
            .iter()
            .filter_map(|o| o.as_cash())
            .map(|c| c.amount.quantity)
            .sum();
        assert_eq!(kept, change, "coin {coin}");
    }
}

#[test]
fn a_forged_dependency_is_not_recorded() {
    let mut n = net();
    let stx = issue_cash(&mut n, 100, 1);
    // The serving side replaces the bank's signature with garbage.
    let mut evil = n.buyer.clone();
    let mut forged = stx.clone();
    forged.sigs[0].bytes[0] ^= 1;
    evil_record(&mut evil, &forged);
    let err = resolve(&evil, &mut n.seller, vec![stx.id()]).unwrap_err();
    assert!(matches!(err, ResolveError::Invalid { .. }), "{err}");
    assert!(!vault::has_transaction(&n.seller, &stx.id()).unwrap());
    // A peer without the transaction.
    let err = resolve(&MemLedgerDb::new(), &mut n.seller, vec![stx.id()]).unwrap_err();
    assert_eq!(err, ResolveError::Missing(stx.id()));
}

#[test]
fn a_download_recorded_meanwhile_is_neither_checked_nor_recorded_again() {
    let mut n = net();
    let cash = issue_cash(&mut n, 100, 1);
    // Two resolutions of the same issuance start before either has it
    // (trades in flight at once); the second's peer serves a copy whose
    // signature it garbled (same id: the id covers the transaction, not
    // its signatures).
    let mut first = Resolution::new(vec![cash.id()]);
    let mut second = Resolution::new(vec![cash.id()]);
    assert_eq!(first.next_request(&n.seller).unwrap(), vec![cash.id()]);
    assert_eq!(second.next_request(&n.seller).unwrap(), vec![cash.id()]);
    let mut garbled = cash.clone();
    garbled.sigs[0].bytes[0] ^= 1;
    first.accept(vec![Some(cash.clone())]).unwrap();
    second.accept(vec![Some(garbled)]).unwrap();
    assert_eq!(first.finish(&mut n.seller).unwrap(), 1);
    // The node verified and recorded the issuance with the first: the
    // second records nothing and keeps the verified copy.
    assert_eq!(second.finish(&mut n.seller).unwrap(), 0);
    assert_eq!(
        vault::transaction(&n.seller, &cash.id()).unwrap(),
        Some(cash.clone())
    );
    // A garbled copy of something the node does not hold is still refused.
    let other = issue_cash(&mut n, 200, 2);
    let mut third = Resolution::new(vec![other.id()]);
    assert_eq!(third.next_request(&n.seller).unwrap(), vec![other.id()]);
    let mut garbled = other.clone();
    garbled.sigs[0].bytes[0] ^= 1;
    third.accept(vec![Some(garbled)]).unwrap();
    assert!(matches!(
        third.finish(&mut n.seller),
        Err(ResolveError::Invalid { .. })
    ));
    assert!(!vault::has_transaction(&n.seller, &other.id()).unwrap());
}

fn evil_record(store: &mut MemLedgerDb, stx: &SignedTransaction) {
    use finance_flows::ledger_db::{LedgerDb, LedgerTable, encode};
    store
        .put(
            LedgerTable::Transactions,
            &stx.id().0,
            &encode(stx).unwrap(),
        )
        .unwrap();
}

#[test]
fn a_supplied_transaction_is_not_fetched_but_still_verified() {
    let mut n = net();
    let cash = issue_cash(&mut n, 100, 1);
    // The cash issuance, supplied with an earlier message: nothing to ask.
    let mut r = Resolution::new(vec![cash.id()]);
    assert_eq!(r.supply(&n.seller, vec![cash.clone()]).unwrap(), 1);
    assert!(r.next_request(&n.seller).unwrap().is_empty());
    assert_eq!(r.finish(&mut n.seller).unwrap(), 1);
    assert!(vault::has_transaction(&n.seller, &cash.id()).unwrap());

    // A transaction nobody asked for is ignored, not recorded.
    let other = issue_cash(&mut n, 200, 2);
    let wanted = issue_cash(&mut n, 300, 3);
    let mut r = Resolution::new(vec![wanted.id()]);
    assert_eq!(r.supply(&n.seller, vec![other.clone()]).unwrap(), 0);
    assert_eq!(r.next_request(&n.seller).unwrap(), vec![wanted.id()]);
    r.accept(
        Vending::of([wanted.id()])
            .serve(&n.buyer, &[wanted.id()])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.finish(&mut n.seller).unwrap(), 1);
    assert!(!vault::has_transaction(&n.seller, &other.id()).unwrap());

    // A supplied transaction with a forged signature fails the resolution.
    let victim = issue_cash(&mut n, 400, 4);
    let mut forged = victim.clone();
    forged.sigs[0].bytes[0] ^= 1;
    let mut r = Resolution::new(vec![victim.id()]);
    assert_eq!(r.supply(&n.seller, vec![forged]).unwrap(), 1);
    assert!(r.next_request(&n.seller).unwrap().is_empty());
    let err = r.finish(&mut n.seller).unwrap_err();
    assert!(matches!(err, ResolveError::Invalid { .. }), "{err}");
    assert!(!vault::has_transaction(&n.seller, &victim.id()).unwrap());
}

#[test]
fn a_supplied_transaction_s_own_dependencies_are_fetched() {
    let mut n = net();
    let cash = issue_cash(&mut n, 100, 1);
    // The buyer pays the seller: the payment spends the issuance.
    let coin = cash.tx.out_refs().remove(0);
    let owner = *coin.state.owner();
    let to = keys::fresh_key(&mut n.seller).unwrap();
    let mut b = TransactionBuilder::new(n.notary.clone());
    b.add_input(coin.clone());
    b.add_output(coin.state.with_owner(to));
    b.add_command(CommandData::CashMove, vec![owner]);
    let tx = b.to_wire();
    let pay = SignedTransaction::new(tx.clone())
        .with_signature(keys::sign(&n.buyer, &owner, &tx.id().0).unwrap());
    resolve(&n.buyer, &mut n.notary_store, vec![cash.id()]).unwrap();
    let pay = pay.clone().with_signature(
        notary::notarise(&mut n.notary_store, &n.notary, &pay, Timestamp(0)).unwrap(),
    );
    vault::record(&mut n.buyer, &pay).unwrap();
    let mut r = Resolution::new(vec![pay.id()]);
    assert_eq!(r.supply(&n.seller, vec![pay.clone()]).unwrap(), 1);
    // Only the issuance it spends is asked for.
    assert_eq!(r.next_request(&n.seller).unwrap(), vec![cash.id()]);
    r.accept(
        Vending::of([cash.id()])
            .serve(&n.buyer, &[cash.id()])
            .unwrap(),
    )
    .unwrap();
    assert!(r.next_request(&n.seller).unwrap().is_empty());
    assert_eq!(r.finish(&mut n.seller).unwrap(), 2);
}
