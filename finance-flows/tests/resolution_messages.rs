//! What dependency resolution costs on the wire, and that it still fetches
//! when it must. A resolution's "done" rides on its side's next message
//! (`Ending::Deferred`), so a steady-state trade sends no resolution
//! message at all; these tests count the frames the MockNetwork delivers
//! (messages and their acks) so that a `Done` creeping back in fails, and
//! run the resolutions that do have to fetch.

mod common;

use common::*;
use finance_flows::crypto::{SecureHash, TxSignature};
use finance_flows::flows::finality::{finality, receive_finality};
use finance_flows::flows::identity::{ledger_identity, trust_issuers};
use finance_flows::flows::issue::issue_cash;
use finance_flows::flows::notarise::notarise;
use finance_flows::flows::resolve::{Ending, dependencies};
use finance_flows::flows::trade::{buy, sell};
use finance_flows::flows::{Notary, fail, ledger_db};
use finance_flows::ledger::{
    AssetKind, SignedTransaction, StateRef, TimeWindow, TransactionBuilder,
};
use finance_flows::{keys, vault};
use flow_runtime::Timestamp;
use flow_runtime::prelude::*;
use flow_runtime::testing::NodeId;

/// Frames of a steady-state trade on the MockNetwork: the offer, the
/// proposal (which ends the buyer's resolution), the signatures (which end
/// the seller's), the final transaction, the notary's request and reply,
/// the sessions' ends, and one ack each. No resolution sends a `Done` of
/// its own (each rides on its resolver's next message), and the buyer
/// sends no end of its session: the seller's end is what finishes the
/// buyer, and the runtime sends no end to a peer whose flow has already
/// ended. `trade-bench`, whose group commit hands the buyer several frames
/// at once, counts the same 20.
const STEADY_STATE_FRAMES: u64 = 20;

/// What a fetch adds: one request, one reply, an ack each.
const ONE_FETCH_FRAMES: u64 = 4;

/// Sells `paper` alone on the network; returns the final transaction and
/// the frames delivered meanwhile.
fn trade_alone(w: &mut World, paper: StateRef) -> (SignedTransaction, u64) {
    let before = w.net.stats().delivered;
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    let fin = ok(w.net.result(&h));
    (fin, w.net.stats().delivered - before)
}

/// Which of `ids` this node has recorded (as its own or as a dependency).
#[flow]
async fn holds(ctx: &mut FlowContext, ids: Vec<SecureHash>) -> Result<Vec<bool>, FlowError> {
    let db = ledger_db(ctx)?;
    ids.iter()
        .map(|id| vault::has_transaction(db, id).map_err(fail))
        .collect()
}

fn node_holds(w: &mut World, node: NodeId, ids: Vec<SecureHash>) -> Vec<bool> {
    run(&mut w.net, node, holds(ids)).unwrap()
}

#[test]
fn a_steady_state_trade_sends_no_resolution_message() {
    let mut w = World::new(21, PRICE, true);
    let first_paper = w.fund();
    let papers = [w.issue_paper_to_seller(), w.issue_paper_to_seller()];
    // The first trade: the seller lacks the buyer's cash issuance and
    // fetches it (one batch) inside receive_to_sign, before signing. The
    // notary lacks both issuances too, but the buyer sends them with its
    // request: the notary fetches nothing.
    let (fin, first) = trade_alone(&mut w, first_paper);
    assert_eq!(first, STEADY_STATE_FRAMES + ONE_FETCH_FRAMES);
    let deps = dependencies(&fin);
    let seller = w.seller;
    assert_eq!(
        node_holds(&mut w, seller, deps.clone()),
        vec![true; deps.len()],
        "the seller fetched and recorded the cash's history"
    );
    // Later trades pay from the same issuance: nothing to fetch on either
    // side, and no message spent on saying so. (The notary gets each new
    // paper's issuance with the request; the cash issuance, which it holds,
    // is not sent again.)
    for (i, paper) in papers.into_iter().enumerate() {
        let (_, frames) = trade_alone(&mut w, paper);
        assert_eq!(frames, STEADY_STATE_FRAMES, "trade {}", i + 2);
    }
    w.reconcile(3, 3, PRICE);
}

#[test]
fn a_resold_asset_has_its_older_history_fetched_by_the_new_buyer() {
    let mut w = World::new(23, PRICE, true);
    let paper = w.fund();
    let (first, _) = trade_alone(&mut w, paper);
    let bought = first
        .tx
        .out_refs()
        .into_iter()
        .find(|s| s.state.kind() == AssetKind::CommercialPaper)
        .expect("the trade moves the paper")
        .state_ref;
    // A third node with cash of its own buys the paper from the buyer.
    let third = w.net.create_node("Third");
    let n = w.notary.clone();
    w.net.register_responder::<sell::Flow, _>(third, move |s| {
        buy(s, usd(PRICE), AssetKind::CommercialPaper, n.clone())
    });
    let n = w.notary.clone();
    run(&mut w.net, third, issue_cash(usd(COIN), 1, n)).unwrap();
    // The reseller accepts the third node's cash.
    let third_bank = run(&mut w.net, third, ledger_identity()).unwrap();
    run(&mut w.net, w.buyer, trust_issuers(vec![third_bank])).unwrap();
    let party = w.net.party(third);
    let n = w.notary.clone();
    let before = w.net.stats().delivered;
    let h = w
        .net
        .start_flow(w.buyer, sell(party, bought, usd(PRICE), n));
    w.net.run_network();
    let resold = ok(w.net.result(&h));
    // The offer carries the first trade's transaction; the third node
    // fetches what it spent (the paper's and the cash's issuances, one
    // batch) before its proposal ends that resolution, and the reseller
    // fetches the third node's cash issuance before signing (the notary
    // gets it with the request).
    assert_eq!(
        w.net.stats().delivered - before,
        STEADY_STATE_FRAMES + 2 * ONE_FETCH_FRAMES
    );
    let mut ids = dependencies(&first);
    ids.push(first.id());
    ids.push(resold.id());
    assert_eq!(
        node_holds(&mut w, third, ids.clone()),
        vec![true; ids.len()]
    );
    assert_eq!(
        w.report(third).papers.len(),
        1,
        "the third node owns the paper"
    );
    assert_eq!(w.report(w.buyer).papers.len(), 0);
}

/// Pays `PRICE` from this node's cash to a fresh key of its own and gives
/// the transaction to `observer` with finality. The observer holds none of
/// the cash's history, so its `receive_finality` must fetch it.
#[flow]
async fn pay_and_share(
    ctx: &mut FlowContext,
    observer: Party,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    let session: FlowSession = ctx.initiate_flow(&observer);
    let stx: SignedTransaction = {
        let db = ledger_db(ctx)?;
        let coins = vault::select_coins(db, usd(PRICE), 77).map_err(fail)?;
        let to = keys::fresh_key(db).map_err(fail)?;
        let change = keys::fresh_key(db).map_err(fail)?;
        let mut builder = TransactionBuilder::new(notary.party.clone());
        let signers = builder
            .add_cash_payment(&coins, usd(PRICE), to, change)
            .map_err(fail)?;
        let tx = builder.to_wire();
        let id = tx.id();
        let mut stx = SignedTransaction::new(tx);
        for key in signers {
            stx.add_signature(keys::sign(db, &key, &id.0).map_err(fail)?);
        }
        stx
    };
    let sessions: Vec<FlowSession> = vec![session];
    let notary_node: Party = notary.node;
    let fin: SignedTransaction = ctx.sub_flow(finality(stx, notary_node, sessions)).await?;
    Ok(fin)
}

/// The observer: records what `pay_and_share` gives it, ending its
/// resolution as `ending` says (and its flow right after).
#[flow]
async fn observe(
    ctx: &mut FlowContext,
    session: FlowSession,
    ending: Ending,
) -> Result<SignedTransaction, FlowError> {
    let fin: SignedTransaction = ctx
        .sub_flow(receive_finality(session, None, Vec::new(), ending))
        .await?;
    Ok(fin)
}

/// Runs `pay_and_share` to a fresh observer that ends its resolution as
/// `ending` says; returns the frames delivered.
fn finality_that_fetches(seed: u64, ending: Ending) -> u64 {
    let mut w = World::new(seed, PRICE, true);
    w.fund();
    let observer = w.net.create_node("Observer");
    w.net
        .register_responder::<pay_and_share::Flow, _>(observer, move |s| observe(s, ending));
    let party = w.net.party(observer);
    let notary = w.notary.clone();
    let before = w.net.stats().delivered;
    let h = w.net.start_flow(w.buyer, pay_and_share(party, notary));
    w.net.run_network();
    let fin = ok(w.net.result(&h));
    let frames = w.net.stats().delivered - before;
    // The observer fetched the cash issuance and recorded both.
    let mut ids = dependencies(&fin);
    ids.push(fin.id());
    assert_eq!(
        node_holds(&mut w, observer, ids.clone()),
        vec![true; ids.len()],
        "{ending:?}"
    );
    frames
}

#[test]
fn finality_serves_a_receiver_that_fetches_with_either_ending() {
    let deferred = finality_that_fetches(22, Ending::Deferred);
    let done = finality_that_fetches(22, Ending::Done);
    // `Done` is one more message and its ack; with it the observer's end
    // of the session does not come first, so the payer sends its own end
    // too (and gets its ack).
    assert_eq!(done, deferred + 4, "deferred {deferred}, done {done}");
}

/// Asks the notary to sign a payment of `PRICE` from this node's cash
/// that it must refuse before looking at the payment's history: its time
/// window opens long after the notary's clock. Returns the refusal.
#[flow]
async fn notarise_too_early(ctx: &mut FlowContext, notary: Notary) -> Result<String, FlowError> {
    let stx: SignedTransaction = {
        let db = ledger_db(ctx)?;
        let coins = vault::select_coins(db, usd(PRICE), 78).map_err(fail)?;
        let to = keys::fresh_key(db).map_err(fail)?;
        let mut builder = TransactionBuilder::new(notary.party.clone());
        let signers = builder
            .add_cash_payment(&coins, usd(PRICE), to, to)
            .map_err(fail)?;
        builder.set_time_window(TimeWindow {
            from: Some(Timestamp(u64::MAX / 2)),
            until: None,
        });
        let tx = builder.to_wire();
        let id = tx.id();
        let mut stx = SignedTransaction::new(tx);
        for key in signers {
            stx.add_signature(keys::sign(db, &key, &id.0).map_err(fail)?);
        }
        stx
    };
    let notary_node: Party = notary.node;
    let outcome: Result<TxSignature, FlowError> = ctx.sub_flow(notarise(notary_node, stx)).await;
    vault::release_locks(ledger_db(ctx)?, 78).map_err(fail)?;
    match outcome {
        Ok(_) => Err(FlowError::new(
            "the notary signed a transaction outside its time window",
        )),
        Err(e) => Ok(e.message().to_owned()),
    }
}

#[test]
fn history_sent_to_a_notary_is_not_sent_again_and_is_fetched_if_it_was_not_kept() {
    let mut w = World::new(24, PRICE, true);
    let n = w.notary.clone();
    let cash = run(&mut w.net, w.buyer, issue_cash(usd(COIN), COINS, n))
        .unwrap()
        .id();
    let paper = w.issue_paper_to_seller();
    // The buyer sends the cash issuance with this request and remembers
    // that it did, in the step that sends it; the notary refuses the
    // request before resolving anything, so it does not keep the issuance.
    let notary = w.notary.clone();
    let refusal = run(&mut w.net, w.buyer, notarise_too_early(notary)).unwrap();
    assert!(refusal.contains("time window"), "{refusal}");
    let notary_node = w.notary_node;
    assert_eq!(node_holds(&mut w, notary_node, vec![cash]), vec![false]);
    // The trade's request therefore goes without it (remembered as sent),
    // and the notary fetches it from the buyer: one fetch more than a
    // first trade whose request carries it.
    let (fin, frames) = trade_alone(&mut w, paper);
    assert_eq!(frames, STEADY_STATE_FRAMES + 2 * ONE_FETCH_FRAMES);
    assert_eq!(node_holds(&mut w, notary_node, vec![cash]), vec![true]);
    assert!(dependencies(&fin).contains(&cash));
    w.reconcile(1, 1, PRICE);
}
