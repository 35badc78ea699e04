//! A hostile counterparty gains nothing. Each test is an attack written as
//! the attacker would write it: flows of its own on its own node ("Mallory"
//! or a rogue flow on a trading node), speaking the trade's messages to
//! honest nodes on the MockNetwork. Each shows the attack failing, the
//! victim's vault untouched, and the honest trade still working after it.

mod common;

use common::*;
use finance_flows::crypto::{SecureHash, TxSignature};
use finance_flows::flows::identity::{ledger_identity, ledger_identity_of, trust_issuers};
use finance_flows::flows::issue::issue_paper;
use finance_flows::flows::notarise::notarise;
use finance_flows::flows::resolve::{Ending, resolve_transactions, send_ending_resolution};
use finance_flows::flows::signatures::collect_signatures;
use finance_flows::flows::trade::{buy, sell, set_trade_timeout};
use finance_flows::flows::{Notary, fail, ledger_db};
use finance_flows::ledger::{
    Amount, AssetKind, Cash, Command, CommandData, ContractState, Currency, SignedTransaction,
    StateAndRef, StateRef, TransactionBuilder,
};
use finance_flows::resolve::{FetchReply, FetchRequest};
use finance_flows::trade::{self, TradeOffer};
use finance_flows::{keys, trust, vault};
use flow_runtime::Timestamp;
use flow_runtime::prelude::*;
use flow_runtime::testing::NodeId;

/// The honest world (notary, seller, buyer — the buyer is also the bank
/// whose cash the seller trusts) plus Mallory, who answers the seller's
/// `sell` with `register`'s flow.
fn world_with_mallory(seed: u64) -> (World, NodeId, StateRef) {
    let mut w = World::new(seed, PRICE, true);
    let paper = w.fund();
    let mallory = w.net.create_node("Mallory");
    (w, mallory, paper)
}

/// The seller offers `paper` to Mallory; returns the seller's outcome.
fn sell_to(
    w: &mut World,
    mallory: NodeId,
    paper: StateRef,
) -> Option<Result<SignedTransaction, FlowError>> {
    let party = w.net.party(mallory);
    let n = w.notary.clone();
    let h = w
        .net
        .start_flow(w.seller, sell(party, paper, usd(PRICE), n));
    w.net.run_network();
    w.net.result(&h)
}

/// The outcomes of every `F` (a responder) that finished on `node`.
fn results_of<F: Flow>(w: &World, node: NodeId) -> Vec<Result<F::Output, FlowError>> {
    w.net
        .finished(node)
        .into_iter()
        .filter(|f| f.flow == F::NAME)
        .map(|f| {
            f.outcome.map(|bytes| {
                rmp_serde::from_slice(&bytes).expect("the runtime encodes a flow's output")
            })
        })
        .collect()
}

/// The seller's vault is as it was before the attack: its paper, no cash,
/// nothing locked.
fn seller_untouched(w: &mut World, paper: StateRef) {
    let s = w.report(w.seller);
    assert_eq!(
        s.papers.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        vec![paper],
        "the seller still owns its paper"
    );
    assert_eq!(s.cash, Vec::new(), "the seller received nothing");
    assert_eq!(s.locked, 0, "the seller's paper is not left reserved");
}

/// The buyer's vault is as funded: all its cash, no paper, nothing locked.
fn buyer_untouched(w: &mut World) {
    let b = w.report(w.buyer);
    assert_eq!(b.cash_total(Currency::USD), COIN * u64::from(COINS));
    assert_eq!((b.papers.len(), b.locked), (0, 0));
}

/// After the attack, the honest trade of `paper` still settles.
fn honest_trade_still_works(w: &mut World, paper: StateRef) {
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    ok(w.net.result(&h));
    w.reconcile(1, 1, PRICE);
}

/// Asks the notary to move `asset` (someone else's) to a key of this node,
/// signing as the only signer the command names. `Some(reason)` when the
/// notary refuses, `None` if it signed.
#[flow]
async fn steal(
    ctx: &mut FlowContext,
    notary: Notary,
    asset: StateAndRef,
) -> Result<Option<String>, FlowError> {
    let theft: SignedTransaction = {
        let db = ledger_db(ctx)?;
        let me = keys::fresh_key(db).map_err(fail)?;
        let mut b = TransactionBuilder::new(notary.party.clone());
        b.add_input(asset.clone());
        b.add_output(asset.state.with_owner(me));
        let command = match asset.state.kind() {
            AssetKind::CommercialPaper => CommandData::PaperMove,
            AssetKind::Cash => CommandData::CashMove,
        };
        b.add_command(command, vec![me]);
        let tx = b.to_wire();
        let sig = keys::sign(db, &me, &tx.id().0).map_err(fail)?;
        SignedTransaction::new(tx).with_signature(sig)
    };
    let node: Party = notary.node;
    let outcome: Result<TxSignature, FlowError> = ctx.sub_flow(notarise(node, theft)).await;
    Ok(outcome.err().map(|e| e.message().to_owned()))
}

/// Mallory as a buyer: takes the offer, downloads the asset's history
/// (so it can show it to the notary), then tries to freeze the asset by
/// notarising a theft of it, and walks away.
#[flow]
async fn freezing_buyer(
    ctx: &mut FlowContext,
    session: FlowSession,
    notary: Notary,
) -> Result<Option<String>, FlowError> {
    let offer: TradeOffer = session.receive::<TradeOffer>().await?.validate(Ok)?;
    let ids: Vec<SecureHash> = vec![offer.asset.state_ref.tx_id];
    let fetching: FlowSession = session.clone();
    let _n: u32 = ctx
        .sub_flow(resolve_transactions(
            fetching,
            ids,
            offer.history.clone(),
            Ending::Done,
        ))
        .await?;
    let asset: StateAndRef = offer.asset;
    let refused: Option<String> = ctx.sub_flow(steal(notary, asset)).await?;
    Ok(refused)
}

/// Attack 1, denial of state: a counterparty that saw the paper's
/// reference in an offer asks the notary to consume it with a transaction
/// only it signed. A non-validating notary would record the paper as
/// consumed and refuse the owner's every later spend.
#[test]
fn denial_of_state_a_spend_the_owner_did_not_sign_is_refused_by_the_notary() {
    let (mut w, mallory, paper) = world_with_mallory(301);
    let n = w.notary.clone();
    w.net
        .register_responder::<sell::Flow, _>(mallory, move |s| freezing_buyer(s, n.clone()));
    let outcome = sell_to(&mut w, mallory, paper);
    assert!(outcome.is_some_and(|r| r.is_err()), "Mallory walked away");
    let mallory_runs = results_of::<freezing_buyer::Flow>(&w, mallory);
    let refusal = match mallory_runs.as_slice() {
        [Ok(Some(reason))] => reason.clone(),
        other => panic!("the notary must refuse the theft: {other:?}"),
    };
    assert!(
        refusal.contains("not signed by the paper's owner"),
        "{refusal}"
    );
    assert_eq!(
        w.report(w.notary_node).notarised_inputs,
        0,
        "nothing recorded as consumed"
    );
    seller_untouched(&mut w, paper);
    honest_trade_still_works(&mut w, paper);
}

/// Attack 1b: the same theft by a node that knows only the paper's
/// reference, not its history. The notary does not take the request's
/// word for what the input is: it asks for the history, gets none, and
/// refuses.
#[test]
fn notarising_a_state_whose_history_the_requester_cannot_show_is_refused() {
    let (mut w, mallory, paper) = world_with_mallory(302);
    // What Mallory knows: the reference and what it claims to hold.
    let claimed = StateAndRef {
        state: ContractState::Cash(Cash {
            amount: usd(1),
            issuer: w.net.party(mallory),
            owner: PublicKey([0; 32]),
        }),
        state_ref: paper,
    };
    let n = w.notary.clone();
    let refusal = run(&mut w.net, mallory, steal(n, claimed)).unwrap();
    let refusal = refusal.expect("the notary must refuse");
    assert!(refusal.contains("does not have transaction"), "{refusal}");
    assert_eq!(w.report(w.notary_node).notarised_inputs, 0);
    seller_untouched(&mut w, paper);
    honest_trade_still_works(&mut w, paper);
}

/// Issues `coins` cash states of `amount` with this node's own key as
/// issuer but under the name `name` (a well-known bank's).
#[flow]
async fn issue_as(
    ctx: &mut FlowContext,
    name: String,
    amount: Amount,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    let me = ledger_identity_of(ctx)?;
    let db = ledger_db(ctx)?;
    let issuer = Party::new(name, *me.key());
    let owner = keys::fresh_key(db).map_err(fail)?;
    let mut b = TransactionBuilder::new(notary.party);
    b.add_output(ContractState::Cash(Cash {
        amount,
        issuer,
        owner,
    }));
    b.add_command(CommandData::CashIssue, vec![*me.key()]);
    let tx = b.to_wire();
    let sig = keys::sign(db, me.key(), &tx.id().0).map_err(fail)?;
    let stx = SignedTransaction::new(tx).with_signature(sig);
    vault::record(db, &stx).map_err(fail)?;
    Ok(stx)
}

/// Attack 2, worthless cash: Mallory issues dollars under the bank's name
/// with its own key and buys with them, running the honest `buy`.
#[test]
fn worthless_cash_issued_under_the_banks_name_by_another_key_is_refused() {
    let (mut w, mallory, paper) = world_with_mallory(303);
    let bank_name = w.net.party(w.buyer).name().to_owned();
    let n = w.notary.clone();
    run(
        &mut w.net,
        mallory,
        issue_as(bank_name.clone(), usd(COIN), n.clone()),
    )
    .unwrap();
    w.net
        .register_responder::<sell::Flow, _>(mallory, move |s| {
            buy(s, usd(PRICE), AssetKind::CommercialPaper, n.clone())
        });
    let msg = err_message(sell_to(&mut w, mallory, paper));
    assert!(msg.contains("does not trust"), "{msg}");
    // The fake dollars carry the bank's name but are told apart by key.
    let m = w.report(mallory);
    let bank = run(&mut w.net, w.buyer, ledger_identity()).unwrap();
    assert_eq!(m.cash.len(), 1);
    assert_eq!(m.cash[0].0.name(), bank_name);
    assert_ne!(m.cash[0].0, bank, "same name, another issuer");
    assert_eq!(m.cash_of(&bank, Currency::USD), 0);
    assert_eq!(m.locked, 0, "Mallory's own trade released its coins");
    seller_untouched(&mut w, paper);
    honest_trade_still_works(&mut w, paper);
}

/// Records, in this node's own vault (which it controls), an issuance of
/// the bank's cash to itself that the bank never signed, and marks the
/// bank trusted so its own coin selection pays with it.
#[flow]
async fn forge_bank_cash(
    ctx: &mut FlowContext,
    bank: Party,
    amount: Amount,
    notary: Notary,
) -> Result<(), FlowError> {
    let db = ledger_db(ctx)?;
    trust::trust_issuer(db, &bank).map_err(fail)?;
    let owner = keys::fresh_key(db).map_err(fail)?;
    let mut b = TransactionBuilder::new(notary.party);
    b.add_output(ContractState::Cash(Cash {
        amount,
        issuer: bank.clone(),
        owner,
    }));
    b.add_command(CommandData::CashIssue, vec![*bank.key()]);
    let tx = b.to_wire();
    // Signed with its own key but claimed to be the bank's.
    let mut sig = keys::sign(db, &owner, &tx.id().0).map_err(fail)?;
    sig.by = *bank.key();
    vault::record(db, &SignedTransaction::new(tx).with_signature(sig)).map_err(fail)?;
    Ok(())
}

/// Attack 2b: cash that names the trusted bank, by its real key, but whose
/// issuance the bank never signed. The seller verifies the payment's chain
/// back to the issuance and finds the forgery.
#[test]
fn cash_whose_issuance_the_trusted_bank_never_signed_is_refused() {
    let (mut w, mallory, paper) = world_with_mallory(304);
    let bank = run(&mut w.net, w.buyer, ledger_identity()).unwrap();
    let n = w.notary.clone();
    run(
        &mut w.net,
        mallory,
        forge_bank_cash(bank.clone(), usd(COIN), n.clone()),
    )
    .unwrap();
    w.net
        .register_responder::<sell::Flow, _>(mallory, move |s| {
            buy(s, usd(PRICE), AssetKind::CommercialPaper, n.clone())
        });
    let msg = err_message(sell_to(&mut w, mallory, paper));
    assert!(msg.contains("is invalid"), "{msg}");
    seller_untouched(&mut w, paper);
    assert_eq!(w.report(w.notary_node).notarised_inputs, 0);
    honest_trade_still_works(&mut w, paper);
}

/// How Mallory's proposal oversteps the deal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Overreach {
    /// An extra issuance of 10^9 dollars, "Buyer"-named, whose issuer key
    /// (and so signer) is the seller's asset-owner key, paid to Mallory.
    IssuanceBySellerKey,
    /// An extra command that names the seller's payment key as a signer.
    CommandOnPaymentKey,
    /// The transaction names an impostor notary: the real notary's name,
    /// Mallory's key.
    ImpostorNotary,
}

/// Mallory as a buyer that pays honestly (it holds real cash) but adds to
/// its proposal what the seller never agreed to.
#[flow]
async fn overreaching_buyer(
    ctx: &mut FlowContext,
    session: FlowSession,
    notary: Notary,
    how: Overreach,
) -> Result<(), FlowError> {
    let received: TradeOffer = session.receive::<TradeOffer>().await?.validate(Ok)?;
    let ids: Vec<SecureHash> = vec![received.asset.state_ref.tx_id];
    let supplied: Vec<SignedTransaction> = received.history.clone();
    let offer: TradeOffer = received.without_history();
    let fetching: FlowSession = session.clone();
    let _n: u32 = ctx
        .sub_flow(resolve_transactions(
            fetching,
            ids,
            supplied,
            Ending::Deferred,
        ))
        .await?;
    let proposal: SignedTransaction = overreach(ctx, &offer, &notary, how)?;
    let signing: FlowSession = session.clone();
    let outcome: Result<SignedTransaction, FlowError> =
        ctx.sub_flow(collect_signatures(signing, proposal)).await;
    vault::release_locks(ledger_db(ctx)?, 99).map_err(fail)?;
    outcome.map(|_| ())
}

fn overreach(
    ctx: &mut FlowContext,
    offer: &TradeOffer,
    notary: &Notary,
    how: Overreach,
) -> Result<SignedTransaction, FlowError> {
    let db = ledger_db(ctx)?;
    let named = match how {
        Overreach::ImpostorNotary => {
            let fake = keys::fresh_key(db).map_err(fail)?;
            Party::new(notary.party.name(), fake)
        }
        _ => notary.party.clone(),
    };
    let honest = trade::build_proposal(db, offer, &named, 99).map_err(fail)?;
    let mut tx = honest.tx.clone();
    let seller_key = *offer.asset.state.owner();
    match how {
        Overreach::IssuanceBySellerKey => {
            let me = keys::fresh_key(db).map_err(fail)?;
            tx.outputs.push(ContractState::Cash(Cash {
                amount: usd(100_000_000_000),
                issuer: Party::new("Buyer", seller_key),
                owner: me,
            }));
            tx.commands.push(Command {
                data: CommandData::CashIssue,
                signers: vec![seller_key],
            });
        }
        Overreach::CommandOnPaymentKey => {
            let payer = honest.sigs[0].by;
            tx.commands.push(Command {
                data: CommandData::CashMove,
                signers: vec![payer, offer.pay_to],
            });
        }
        Overreach::ImpostorNotary => {}
    }
    let id = tx.id();
    let mut stx = SignedTransaction::new(tx);
    for sig in &honest.sigs {
        stx.add_signature(keys::sign(db, &sig.by, &id.0).map_err(fail)?);
    }
    Ok(stx)
}

/// Gives Mallory real cash (the bank pays it) so that only the overreach
/// can make the seller refuse.
fn fund_mallory(w: &mut World, mallory: NodeId) {
    let bank = run(&mut w.net, w.buyer, ledger_identity()).unwrap();
    run(&mut w.net, mallory, trust_issuers(vec![bank])).unwrap();
    let n = w.notary.clone();
    let to = w.net.party(mallory);
    run(&mut w.net, w.buyer, pay_to_node(to, usd(COIN), n)).unwrap();
}

/// The bank pays `amount` to a fresh key of `to` (which records it via
/// finality).
#[flow]
async fn pay_to_node(
    ctx: &mut FlowContext,
    to: Party,
    amount: Amount,
    notary: Notary,
) -> Result<SignedTransaction, FlowError> {
    let session: FlowSession = ctx.initiate_flow(&to);
    let key: PublicKey = session.receive::<PublicKey>().await?.validate(Ok)?;
    let stx: SignedTransaction = {
        let db = ledger_db(ctx)?;
        let coins = vault::select_coins(db, amount, 55).map_err(fail)?;
        let change = keys::fresh_key(db).map_err(fail)?;
        let mut b = TransactionBuilder::new(notary.party.clone());
        let signers = b
            .add_cash_payment(&coins, amount, key, change)
            .map_err(fail)?;
        let tx = b.to_wire();
        let id = tx.id();
        let mut stx = SignedTransaction::new(tx);
        for k in signers {
            stx.add_signature(keys::sign(db, &k, &id.0).map_err(fail)?);
        }
        stx
    };
    let sessions: Vec<FlowSession> = vec![session];
    let node: Party = notary.node;
    let fin: SignedTransaction = ctx
        .sub_flow(finance_flows::flows::finality::finality(
            stx, node, sessions,
        ))
        .await?;
    Ok(fin)
}

#[flow]
async fn receive_payment(
    ctx: &mut FlowContext,
    session: FlowSession,
) -> Result<SignedTransaction, FlowError> {
    let key: PublicKey = keys::fresh_key(ledger_db(ctx)?).map_err(fail)?;
    session.send(&key)?;
    let fin: SignedTransaction = ctx
        .sub_flow(finance_flows::flows::finality::receive_finality(
            session,
            None,
            Vec::new(),
            Ending::Done,
        ))
        .await?;
    Ok(fin)
}

fn overreach_is_refused(seed: u64, how: Overreach, expected: &str) {
    let (mut w, mallory, paper) = world_with_mallory(seed);
    w.net
        .register_responder::<pay_to_node::Flow, _>(mallory, receive_payment);
    fund_mallory(&mut w, mallory);
    let n = w.notary.clone();
    w.net
        .register_responder::<sell::Flow, _>(mallory, move |s| {
            overreaching_buyer(s, n.clone(), how)
        });
    let msg = err_message(sell_to(&mut w, mallory, paper));
    assert!(msg.contains(expected), "{how:?}: {msg}");
    let m = w.report(mallory);
    assert_eq!(m.papers.len(), 0, "{how:?}: Mallory got no paper");
    assert_eq!(
        m.cash,
        vec![(
            run(&mut w.net, w.buyer, ledger_identity()).unwrap(),
            Currency::USD,
            COIN
        )],
        "{how:?}: Mallory holds only what the bank paid it"
    );
    assert_eq!(m.locked, 0);
    seller_untouched(&mut w, paper);
    assert_eq!(
        w.report(w.notary_node).notarised_inputs,
        1,
        "the bank's payment only"
    );
    // The honest buyer paid Mallory one coin; the rest is intact.
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    ok(w.net.result(&h));
    let s = w.report(w.seller);
    let b = w.report(w.buyer);
    assert_eq!(s.cash_total(Currency::USD), PRICE);
    assert_eq!(
        b.cash_total(Currency::USD),
        COIN * u64::from(COINS) - COIN - PRICE
    );
    assert_eq!((s.papers.len(), b.papers.len()), (0, 1));
    assert_eq!((s.locked, b.locked), (0, 0));
}

/// Attack 3, blind signing: the proposal also issues 10^9 dollars whose
/// issuer key is the seller's asset-owner key. A seller that signs with
/// every missing key it holds would have its signature authorise that
/// issuance: a claim of a billion on itself, owned by Mallory.
#[test]
fn blind_signing_an_extra_issuance_by_the_sellers_key_is_refused() {
    overreach_is_refused(
        305,
        Overreach::IssuanceBySellerKey,
        "asks for more than the deal",
    );
}

/// Attack 3b: an extra command naming the seller's payment key. The
/// seller signs only with the key the deal names (the asset owner's).
#[test]
fn blind_signing_a_command_that_names_the_sellers_payment_key_is_refused() {
    overreach_is_refused(
        306,
        Overreach::CommandOnPaymentKey,
        "asks for more than the deal",
    );
}

/// Attack 3c: the proposal names a notary with the real notary's name but
/// Mallory's key, who would then "notarise" anything. Identity is the
/// key: the seller refuses.
#[test]
fn a_proposal_naming_an_impostor_notary_with_the_real_name_is_refused() {
    overreach_is_refused(307, Overreach::ImpostorNotary, "names notary");
}

/// Mallory as a buyer that, instead of resolving the offered asset,
/// asks the seller for a transaction it knows the id of.
#[flow]
async fn probing_buyer(
    ctx: &mut FlowContext,
    session: FlowSession,
    secret: SecureHash,
) -> Result<u32, FlowError> {
    let _offer: TradeOffer = session.receive::<TradeOffer>().await?.validate(Ok)?;
    let request: FetchRequest = FetchRequest::Transactions(vec![secret]);
    let reply: FetchReply = session
        .send_and_receive::<FetchReply>(&request)
        .await?
        .validate(Ok)?;
    let stolen: Vec<SignedTransaction> = reply.into_iter().flatten().collect();
    let db = ledger_db(ctx)?;
    for stx in &stolen {
        vault::record_dependency(db, stx).map_err(fail)?;
    }
    Ok(u32::try_from(stolen.len()).unwrap_or(u32::MAX))
}

/// Attack 4, reading the vault: during the trade Mallory fetches a
/// transaction of the seller outside the offered asset's history (an
/// unrelated paper issuance whose id it learnt elsewhere).
#[test]
fn a_buyer_cannot_fetch_a_seller_transaction_outside_the_offered_chain() {
    let (mut w, mallory, paper) = world_with_mallory(308);
    let n = w.notary.clone();
    let private = run(
        &mut w.net,
        w.seller,
        issue_paper(usd(FACE), Timestamp(86_400_000), n),
    )
    .unwrap();
    let secret = private.id();
    w.net
        .register_responder::<sell::Flow, _>(mallory, move |s| probing_buyer(s, secret));
    let msg = err_message(sell_to(&mut w, mallory, paper));
    assert!(msg.contains("not in the dependency chain"), "{msg}");
    let runs = results_of::<probing_buyer::Flow>(&w, mallory);
    assert!(
        matches!(runs.as_slice(), [Err(e)] if e.message().contains("not in the dependency chain")),
        "{runs:?}"
    );
    assert_eq!(w.report(mallory).transactions, 0, "Mallory learnt nothing");
    let s = w.report(w.seller);
    assert_eq!((s.papers.len(), s.locked), (2, 0));
    honest_trade_after_extra_paper(&mut w, paper);
}

/// The honest trade of `paper` when the seller also holds one more paper.
fn honest_trade_after_extra_paper(w: &mut World, paper: StateRef) {
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    ok(w.net.result(&h));
    w.reconcile(2, 1, PRICE);
}

/// A seller that offers its real paper, takes the buyer's proposal, then
/// instead of signing asks the buyer for a transaction of the buyer's it
/// knows the id of.
#[flow]
async fn probing_seller(
    ctx: &mut FlowContext,
    buyer: Party,
    asset: StateRef,
    secret: SecureHash,
) -> Result<u32, FlowError> {
    let offer: TradeOffer = {
        let db = ledger_db(ctx)?;
        let state = vault::state(db, &asset)
            .map_err(fail)?
            .ok_or_else(|| FlowError::new("no such paper"))?;
        TradeOffer {
            asset: state,
            price: usd(PRICE),
            pay_to: keys::fresh_key(db).map_err(fail)?,
            history: vault::transaction(db, &asset.tx_id)
                .map_err(fail)?
                .into_iter()
                .collect(),
        }
    };
    let session: FlowSession = ctx.initiate_flow(&buyer);
    session.send(&offer)?;
    let _proposal: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
    let request: FetchRequest = FetchRequest::Transactions(vec![secret]);
    let reply: FetchReply = session
        .send_and_receive::<FetchReply>(&request)
        .await?
        .validate(Ok)?;
    let got: u32 = u32::try_from(reply.iter().flatten().count()).unwrap_or(u32::MAX);
    send_ending_resolution(&session, &Vec::<TxSignature>::new())?;
    Ok(got)
}

/// Attack 4b, the other way: a seller reads the buyer's vault while the
/// buyer waits for its signature.
#[test]
fn a_seller_cannot_fetch_a_buyer_transaction_outside_the_proposals_chain() {
    let mut w = World::new(309, PRICE, true);
    let paper = w.fund();
    let n = w.notary.clone();
    w.net
        .register_responder::<probing_seller::Flow, _>(w.buyer, move |s| {
            buy(s, usd(PRICE), AssetKind::CommercialPaper, n.clone())
        });
    // A transaction of the buyer's that has nothing to do with the trade.
    let n = w.notary.clone();
    let private = run(
        &mut w.net,
        w.buyer,
        issue_paper(usd(FACE), Timestamp(86_400_000), n),
    )
    .unwrap();
    let buyer = w.net.party(w.buyer);
    let h = w
        .net
        .start_flow(w.seller, probing_seller(buyer, paper, private.id()));
    w.net.run_network();
    let msg = err_message(w.net.result(&h));
    assert!(msg.contains("not in the dependency chain"), "{msg}");
    let b = w.report(w.buyer);
    assert_eq!(b.cash_total(Currency::USD), COIN * u64::from(COINS));
    assert_eq!((b.papers.len(), b.locked), (1, 0), "its own paper, no lock");
    let s = w.report(w.seller);
    assert_eq!(
        s.transactions, 1,
        "the seller holds its paper's issuance and learnt nothing of the buyer's"
    );
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    ok(w.net.result(&h));
    let s = w.report(w.seller);
    assert_eq!(s.cash_total(Currency::USD), PRICE);
}

/// Attack 5: a buyer pays part in the bank's real cash and part in its own
/// cash under the bank's name; every coin paid must come from a trusted
/// issuer.
#[test]
fn a_payment_mixing_real_and_self_issued_cash_is_refused() {
    let (mut w, mallory, paper) = world_with_mallory(310);
    w.net
        .register_responder::<pay_to_node::Flow, _>(mallory, receive_payment);
    // Half the price from the bank, the rest Mallory's own "Buyer" dollars.
    let bank = run(&mut w.net, w.buyer, ledger_identity()).unwrap();
    run(&mut w.net, mallory, trust_issuers(vec![bank.clone()])).unwrap();
    let n = w.notary.clone();
    let to = w.net.party(mallory);
    run(
        &mut w.net,
        w.buyer,
        pay_to_node(to, usd(PRICE / 2), n.clone()),
    )
    .unwrap();
    run(
        &mut w.net,
        mallory,
        issue_as(bank.name().to_owned(), usd(PRICE / 2), n.clone()),
    )
    .unwrap();
    w.net
        .register_responder::<sell::Flow, _>(mallory, move |s| {
            buy(s, usd(PRICE), AssetKind::CommercialPaper, n.clone())
        });
    let msg = err_message(sell_to(&mut w, mallory, paper));
    assert!(msg.contains("does not trust"), "{msg}");
    let m = w.report(mallory);
    assert_eq!(m.cash_of(&bank, Currency::USD), PRICE / 2);
    assert_eq!((m.papers.len(), m.locked), (0, 0));
    seller_untouched(&mut w, paper);
    let h = w.sell(paper, PRICE);
    w.net.run_network();
    ok(w.net.result(&h));
    let s = w.report(w.seller);
    assert_eq!(s.cash, vec![(bank, Currency::USD, PRICE)]);
}

/// Attack 6: a node the seller never traded with asks the notary to
/// consume the seller's paper with its own signature and a copy of the
/// paper's history it obtained (here: the issuance, handed over by a
/// careless third party). The notary still refuses: the owner did not
/// sign.
#[test]
fn a_stranger_holding_the_history_still_cannot_consume_the_paper() {
    let (mut w, mallory, paper) = world_with_mallory(311);
    // Mallory obtains the paper's issuance through an honest trade
    // offer it then abandons before any proposal (the history comes with
    // the offer).
    let n = w.notary.clone();
    w.net
        .register_responder::<sell::Flow, _>(mallory, move |s| freezing_buyer(s, n.clone()));
    let _ = sell_to(&mut w, mallory, paper);
    // A second attempt by a plain flow, history now in Mallory's vault.
    let asset = {
        let s = w.report(w.seller);
        let (r, p) = s.papers[0].clone();
        StateAndRef {
            state: ContractState::CommercialPaper(p),
            state_ref: r,
        }
    };
    let n = w.notary.clone();
    let refusal = run(&mut w.net, mallory, steal(n, asset)).unwrap();
    assert!(
        refusal.is_some_and(|r| r.contains("not signed by the paper's owner")),
        "the notary must refuse"
    );
    assert_eq!(w.report(w.notary_node).notarised_inputs, 0);
    seller_untouched(&mut w, paper);
    buyer_untouched(&mut w);
    honest_trade_still_works(&mut w, paper);
}

/// A seller that offers its real paper, takes the buyer's proposal and
/// then goes silent: it never signs and never ends.
#[flow]
async fn silent_seller(
    ctx: &mut FlowContext,
    buyer: Party,
    asset: StateRef,
) -> Result<(), FlowError> {
    let offer: TradeOffer = {
        let db = ledger_db(ctx)?;
        let state = vault::state(db, &asset)
            .map_err(fail)?
            .ok_or_else(|| FlowError::new("no such paper"))?;
        TradeOffer {
            asset: state,
            price: usd(PRICE),
            pay_to: keys::fresh_key(db).map_err(fail)?,
            history: vault::transaction(db, &asset.tx_id)
                .map_err(fail)?
                .into_iter()
                .collect(),
        }
    };
    let session: FlowSession = ctx.initiate_flow(&buyer);
    session.send(&offer)?;
    let _proposal: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
    // Wait for a message the buyer never sends.
    let _never: FetchRequest = session.receive::<FetchRequest>().await?.validate(Ok)?;
    Ok(())
}

/// Attack 7, holding the buyer's coins: any node can start a trade with
/// the buyer, make it lock coins for a proposal, and never answer. The
/// buyer gives up at its trade deadline and releases them.
#[test]
fn a_seller_that_goes_silent_cannot_hold_the_buyers_coins() {
    let mut w = World::new(312, PRICE, true);
    let paper = w.fund();
    let n = w.notary.clone();
    w.net
        .register_responder::<silent_seller::Flow, _>(w.buyer, move |s| {
            buy(s, usd(PRICE), AssetKind::CommercialPaper, n.clone())
        });
    let buyer = w.net.party(w.buyer);
    let started = w.net.now();
    let h = w.net.start_flow(w.seller, silent_seller(buyer, paper));
    // The network runs the conversation, then jumps its virtual clock to
    // the buyer's deadline.
    w.net.run_network();
    let msg = err_message(w.net.result(&h));
    assert!(msg.contains("went silent"), "{msg}");
    let waited = w.net.now().0 - started.0;
    assert!(
        (300_000..301_000).contains(&waited),
        "the default trade timeout is five minutes: {waited} ms"
    );
    buyer_untouched(&mut w);
    honest_trade_still_works(&mut w, paper);
}

/// A buyer that takes the offer and then waits for a message the seller
/// never sends: it never proposes and never ends.
#[flow]
async fn silent_buyer(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let _offer: TradeOffer = session.receive::<TradeOffer>().await?.validate(Ok)?;
    let _never: TradeOffer = session.receive::<TradeOffer>().await?.validate(Ok)?;
    Ok(())
}

/// Attack 8, holding the seller's paper: a buyer that never proposes. The
/// seller gives up at its deadline (set by its operator to one minute
/// here) and its paper is free to sell again.
#[test]
fn a_buyer_that_goes_silent_cannot_hold_the_sellers_paper() {
    let (mut w, mallory, paper) = world_with_mallory(313);
    run(&mut w.net, w.seller, set_trade_timeout(60_000)).unwrap();
    w.net
        .register_responder::<sell::Flow, _>(mallory, silent_buyer);
    let started = w.net.now();
    let msg = err_message(sell_to(&mut w, mallory, paper));
    assert!(msg.contains("went silent"), "{msg}");
    let waited = w.net.now().0 - started.0;
    assert!((60_000..61_000).contains(&waited), "{waited} ms");
    seller_untouched(&mut w, paper);
    honest_trade_still_works(&mut w, paper);
}

/// The deadline is part of the checkpoint: a seller restarted while it
/// waits on a silent buyer still gives up at the deadline it set before
/// the restart, and releases its paper.
#[test]
fn a_trade_deadline_survives_a_restart() {
    let (mut w, mallory, paper) = world_with_mallory(314);
    w.net
        .register_responder::<sell::Flow, _>(mallory, silent_buyer);
    let party = w.net.party(mallory);
    let n = w.notary.clone();
    let started = w.net.now();
    let h = w
        .net
        .start_flow(w.seller, sell(party, paper, usd(PRICE), n));
    // Run until Mallory holds the offer (and the seller its ack).
    let before = w.net.stats().delivered;
    while w.net.stats().delivered < before + 2 {
        assert!(w.net.step());
    }
    assert!(w.net.result(&h).is_none(), "the seller is still waiting");
    assert_eq!(w.net.now(), started, "no timer fired yet");
    w.net.restart_node(w.seller);
    w.net.run_network();
    let msg = err_message(w.net.result(&h));
    assert!(msg.contains("went silent"), "{msg}");
    assert_eq!(w.net.now().0 - started.0, 300_000);
    seller_untouched(&mut w, paper);
    honest_trade_still_works(&mut w, paper);
}
