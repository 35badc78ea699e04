//! The two-party trade on a MockNetwork: the happy path, every malicious or
//! faulty counterparty the trade must withstand, and a restart of each node
//! at every step of one trade. Balances reconcile after every test.

mod common;

use common::*;
use finance_flows::crypto::{SecureHash, TxSignature};
use finance_flows::flows::resolve::{Ending, Served, send_ending_resolution, serve_transactions};
use finance_flows::flows::signatures::receive_to_sign;
use finance_flows::flows::trade::{buy_steps, sell};
use finance_flows::flows::{Notary, fail, ledger_db};
use finance_flows::ledger::{AssetKind, SignedTransaction, StateAndRef};
use finance_flows::resolve::Vending;
use finance_flows::trade::{self, TradeOffer};
use finance_flows::{keys, vault};
use flow_runtime::Timestamp;
use flow_runtime::prelude::*;

#[test]
fn a_trade_completes_and_vaults_reconcile() {
    let mut w = World::new(1, PRICE, true);
    let paper = w.fund();
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    let fin = ok(w.net.result(&h));
    fin.verify_signatures().unwrap();
    w.reconcile(1, 1, PRICE);
    // The notary recorded the paper and the buyer's coin as consumed.
    assert_eq!(
        w.report(w.notary_node).notarised_inputs as usize,
        fin.tx.inputs.len()
    );
}

#[test]
fn buyer_refuses_a_price_above_the_acceptable_one() {
    let mut w = World::new(2, PRICE - 1, true);
    let paper = w.fund();
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    assert!(err_message(w.net.result(&h)).contains("above the acceptable"));
    w.reconcile(1, 0, PRICE);
}

#[test]
fn buyer_refuses_the_wrong_asset_type() {
    let mut w = World::new(3, PRICE, false);
    let n = w.notary.clone();
    w.net
        .register_responder::<sell::Flow, _>(w.buyer, move |s| {
            finance_flows::flows::trade::buy(s, usd(PRICE), AssetKind::Cash, n.clone())
        });
    let paper = w.fund();
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    assert!(err_message(w.net.result(&h)).contains("wants cash"));
    w.reconcile(1, 0, PRICE);
}

#[test]
fn seller_cannot_sell_a_state_it_does_not_own() {
    let mut w = World::new(4, PRICE, true);
    let paper = w.fund();
    // A paper the buyer owns, offered by the seller.
    let other_paper = {
        let n = w.notary.clone();
        let stx = run(
            &mut w.net,
            w.buyer,
            finance_flows::flows::issue::issue_paper(usd(FACE), Timestamp(1), n),
        )
        .unwrap();
        stx.tx.out_refs()[0].state_ref
    };
    let h = w.sell(other_paper, PRICE);
    w.net.run_network();
    assert!(err_message(w.net.result(&h)).contains("not an unconsumed state of this node"));
    // The seller's real paper is still there and unlocked; the buyer's own
    // paper untouched.
    let s = w.report(w.seller);
    assert_eq!(s.papers.len(), 1);
    assert_eq!(s.papers[0].0, paper);
    assert_eq!(w.report(w.buyer).papers.len(), 1);
    assert_eq!(w.report(w.buyer).locked, 0);
}

/// A malicious seller: offers `asset` (which it may not own), serves the
/// history it holds, and answers the proposal with `forge(proposal)`
/// instead of an honest signature.
#[flow]
async fn rogue_seller(
    ctx: &mut FlowContext,
    buyer: Party,
    asset: StateAndRef,
    history: Vec<SignedTransaction>,
    mode: u8,
) -> Result<(), FlowError> {
    {
        let db = ledger_db(ctx)?;
        for stx in &history {
            vault::record_dependency(db, stx).map_err(fail)?;
        }
    }
    let asset_tx: SecureHash = asset.state_ref.tx_id;
    let session: FlowSession = ctx.initiate_flow(&buyer);
    let pay_to: PublicKey = keys::fresh_key(ledger_db(ctx)?).map_err(fail)?;
    // No history with the offer: the buyer fetches the asset's transaction
    // (the path for a seller that does not send it).
    session.send(&TradeOffer {
        asset,
        price: usd(PRICE),
        pay_to,
        history: Vec::new(),
    })?;
    if mode == 3 {
        // Serve the buyer's fetch of the asset's transaction, take the
        // proposal that ends it, and disappear mid-trade.
        let serving: FlowSession = session.clone();
        let served: Served = ctx
            .sub_flow(serve_transactions(serving, Vending::of([asset_tx])))
            .await?;
        if served.next.is_none() {
            return Err(FlowError::new(
                "expected the proposal to end the resolution",
            ));
        }
        return Ok(());
    }
    // receive_to_sign serves the buyer's fetch of the asset's transaction.
    let signing: FlowSession = session.clone();
    let vending: Vending = Vending::of([asset_tx]);
    let proposal: SignedTransaction = ctx.sub_flow(receive_to_sign(signing, vending)).await?;
    let sig: TxSignature = forge(ledger_db(ctx)?, &proposal, &pay_to, mode)?;
    send_ending_resolution(&session, &vec![sig])?;
    // An honest buyer refuses the forgery, so this receive fails with its
    // error; a buyer that accepted it would send the final transaction.
    let _fin: SignedTransaction = session.receive::<SignedTransaction>().await?.validate(Ok)?;
    Ok(())
}

/// The rogue seller's answer: a signature by a key the transaction does not
/// need (mode 1), or the owner's signature with one bit flipped.
fn forge(
    db: &mut dyn finance_flows::ledger_db::LedgerDb,
    proposal: &SignedTransaction,
    pay_to: &PublicKey,
    mode: u8,
) -> Result<TxSignature, FlowError> {
    let id = proposal.id();
    if mode == 1 {
        return keys::sign(db, pay_to, &id.0).map_err(fail);
    }
    let mut owner = None;
    for k in proposal.missing_signers() {
        if keys::is_ours(db, &k).map_err(fail)? {
            owner = Some(k);
        }
    }
    let owner = owner.ok_or_else(|| FlowError::new("no key to sign with"))?;
    let mut sig = keys::sign(db, &owner, &id.0).map_err(fail)?;
    sig.bytes[10] ^= 0x01;
    Ok(sig)
}

/// Makes the buyer answer the rogue seller as it answers an honest one.
fn buyer_answers_rogue(w: &mut World) {
    let n = w.notary.clone();
    w.net
        .register_responder::<rogue_seller::Flow, _>(w.buyer, move |s| {
            finance_flows::flows::trade::buy(s, usd(PRICE), AssetKind::CommercialPaper, n.clone())
        });
}

fn paper_with_history(
    w: &mut World,
    node: flow_runtime::testing::NodeId,
) -> (StateAndRef, Vec<SignedTransaction>) {
    let n = w.notary.clone();
    let stx = run(
        &mut w.net,
        node,
        finance_flows::flows::issue::issue_paper(usd(FACE), Timestamp(1), n),
    )
    .unwrap();
    (stx.tx.out_refs().remove(0), vec![stx])
}

#[test]
fn buyer_detects_a_seller_that_does_not_own_the_asset() {
    let mut w = World::new(5, PRICE, true);
    w.fund();
    buyer_answers_rogue(&mut w);
    let victim = w.net.create_node("Victim");
    let (asset, history) = paper_with_history(&mut w, victim);
    let buyer = w.net.party(w.buyer);
    let h = w
        .net
        .start_flow(w.seller, rogue_seller(buyer, asset, history, 1));
    w.net.run_network();
    let msg = err_message(w.net.result(&h));
    assert!(msg.contains("does not need"), "{msg}");
    w.reconcile(1, 0, PRICE);
    assert_eq!(
        w.report(victim).papers.len(),
        1,
        "the victim keeps its paper"
    );
}

#[test]
fn buyer_detects_a_tampered_signature() {
    let mut w = World::new(6, PRICE, true);
    w.fund();
    buyer_answers_rogue(&mut w);
    let seller = w.seller;
    let (asset, history) = paper_with_history(&mut w, seller);
    let buyer = w.net.party(w.buyer);
    let h = w
        .net
        .start_flow(w.seller, rogue_seller(buyer, asset, history, 2));
    w.net.run_network();
    let msg = err_message(w.net.result(&h));
    assert!(msg.contains("invalid (tampered)"), "{msg}");
    let b = w.report(w.buyer);
    assert_eq!((b.papers.len(), b.locked), (0, 0));
    assert_eq!(
        b.cash_total(finance_flows::ledger::Currency::USD),
        COIN * u64::from(COINS)
    );
    assert_eq!(
        w.report(w.notary_node).notarised_inputs,
        0,
        "nothing reached the notary"
    );
}

#[test]
fn buyer_fails_cleanly_on_a_missing_dependency() {
    let mut w = World::new(7, PRICE, true);
    w.fund();
    buyer_answers_rogue(&mut w);
    let victim = w.net.create_node("Victim");
    // The seller does not hold the asset's history at all.
    let (asset, _) = paper_with_history(&mut w, victim);
    let buyer = w.net.party(w.buyer);
    let h = w
        .net
        .start_flow(w.seller, rogue_seller(buyer, asset, vec![], 1));
    w.net.run_network();
    let msg = err_message(w.net.result(&h));
    assert!(msg.contains("does not have transaction"), "{msg}");
    w.reconcile(1, 0, PRICE);
}

#[test]
fn a_seller_that_disappears_mid_trade_leaves_nothing_locked() {
    let mut w = World::new(8, PRICE, true);
    w.fund();
    buyer_answers_rogue(&mut w);
    let seller = w.seller;
    let (asset, history) = paper_with_history(&mut w, seller);
    let buyer = w.net.party(w.buyer);
    let h = w
        .net
        .start_flow(w.seller, rogue_seller(buyer, asset, history, 3));
    w.net.run_network();
    assert_eq!(w.net.result(&h), Some(Ok(())));
    let b = w.report(w.buyer);
    assert_eq!((b.papers.len(), b.locked), (0, 0));
    assert_eq!(
        b.cash_total(finance_flows::ledger::Currency::USD),
        COIN * u64::from(COINS)
    );
}

/// A buyer that proposes to pay `short` less than asked.
#[flow]
async fn stingy_buyer(
    ctx: &mut FlowContext,
    session: FlowSession,
    notary: Notary,
    short: u64,
) -> Result<(), FlowError> {
    let offer: TradeOffer = session.receive::<TradeOffer>().await?.validate(Ok)?;
    let ids: Vec<SecureHash> = vec![offer.asset.state_ref.tx_id];
    let fetching: FlowSession = session.clone();
    let _n: u32 = ctx
        .sub_flow(finance_flows::flows::resolve::resolve_transactions(
            fetching,
            ids,
            offer.history.clone(),
            Ending::Deferred,
        ))
        .await?;
    let cheap = TradeOffer {
        price: usd(offer.price.quantity - short),
        ..offer
    };
    let proposal =
        trade::build_proposal(ledger_db(ctx)?, &cheap, &notary.party, 99).map_err(fail)?;
    let signing: FlowSession = session.clone();
    let outcome: Result<SignedTransaction, FlowError> = ctx
        .sub_flow(finance_flows::flows::signatures::collect_signatures(
            signing, proposal,
        ))
        .await;
    vault::release_locks(ledger_db(ctx)?, 99).map_err(fail)?;
    outcome.map(|_| ())
}

#[test]
fn seller_refuses_a_buyer_paying_less() {
    let mut w = World::new(9, PRICE, false);
    let n = w.notary.clone();
    w.net
        .register_responder::<sell::Flow, _>(w.buyer, move |s| stingy_buyer(s, n.clone(), 1));
    let paper = w.fund();
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    let msg = err_message(w.net.result(&h));
    assert!(msg.contains("instead of exactly"), "{msg}");
    w.reconcile(1, 0, PRICE);
}

#[test]
fn notary_rejects_the_second_spend_of_the_same_cash() {
    // A careless buyer that reserves every trade's coins under the same
    // lock, so two trades pick the same coin.
    let mut w = World::new(10, PRICE, false);
    let n = w.notary.clone();
    w.net
        .register_responder::<sell::Flow, _>(w.buyer, move |s| {
            buy_steps(s, usd(PRICE), AssetKind::CommercialPaper, n.clone(), 7)
        });
    // One big coin only.
    let n = w.notary.clone();
    run(
        &mut w.net,
        w.buyer,
        finance_flows::flows::issue::issue_cash(usd(COIN * u64::from(COINS)), 1, n),
    )
    .unwrap();
    let p1 = w.issue_paper_to_seller();
    let p2 = w.issue_paper_to_seller();
    let h1 = w.sell(p1, PRICE);
    let h2 = w.sell(p2, PRICE);
    w.net.run_network();
    let results = [w.net.result(&h1), w.net.result(&h2)];
    let done = results.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
    assert_eq!(done, 1, "exactly one trade settles: {results:?}");
    let failed = results
        .iter()
        .find(|r| matches!(r, Some(Err(_))))
        .cloned()
        .flatten();
    let msg = err_message(failed.map(|r| r.map(|_| ())));
    assert!(
        msg.contains("double spend") || msg.contains("notary refused"),
        "{msg}"
    );
    // The careless buyer leaves its lock on the change; clear it to reconcile.
    let s = w.report(w.seller);
    let b = w.report(w.buyer);
    assert_eq!(
        s.cash_total(finance_flows::ledger::Currency::USD)
            + b.cash_total(finance_flows::ledger::Currency::USD),
        COIN * u64::from(COINS)
    );
    assert_eq!(s.papers.len() + b.papers.len(), 2);
    assert_eq!(
        s.locked, 0,
        "the seller of the rejected trade got its paper back"
    );
}

/// Runs one trade, restarting `which` after `k` network steps; returns
/// false once `k` is past the end of the trade. With `steady`, a first
/// trade runs undisturbed before, so that the restarted one resolves
/// nothing: every resolution's end rides on the next message or the
/// seller's end.
fn trade_with_restart(seed: u64, which: usize, k: usize, steady: bool) -> bool {
    let mut w = World::new(seed, PRICE, true);
    let mut paper = w.fund();
    if steady {
        let h = w.sell(paper, PRICE);
        w.net.run_network();
        ok(w.net.result(&h));
        paper = w.issue_paper_to_seller();
    }
    let trades = 1 + u64::from(steady);
    let h = w.sell(paper, PRICE);
    let node = [w.notary_node, w.seller, w.buyer][which];
    let mut steps = 0;
    while steps < k {
        if !w.net.step() {
            // The trade ended before the k-th step: nothing left to test.
            assert!(w.net.result(&h).is_some());
            return false;
        }
        steps += 1;
    }
    w.net.restart_node(node);
    w.net.run_network();
    ok(w.net.result(&h));
    w.reconcile(trades as usize, trades, PRICE);
    true
}

#[test]
fn every_node_restarts_at_every_step_of_a_trade() {
    for which in 0..3 {
        let mut k = 0;
        while trade_with_restart(100 + k as u64, which, k, false) {
            k += 1;
        }
        assert!(k > 5, "the trade takes several steps");
    }
}

#[test]
fn every_node_restarts_at_every_step_of_a_steady_state_trade() {
    for which in 0..3 {
        let mut k = 0;
        while trade_with_restart(200 + k as u64, which, k, true) {
            k += 1;
        }
        assert!(k > 5, "the trade takes several steps");
    }
}
