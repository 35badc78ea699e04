//! The trade demo's engine, shared by the `trade-demo` binary and the
//! benchmarks: a notary, a seller and a buyer; cash and paper issued; many
//! trades run concurrently; the buyer crashed and restarted mid-run; a
//! deliberate double spend that the notary must reject; and a
//! reconciliation of every vault at the end.
//!
//! [`run_in_process`] runs all three nodes on a `MockNetwork` (durable
//! nodes on in-memory redb, crash = drop everything in memory and reopen).

use crate::flows::identity::ledger_identity;
use crate::flows::issue::{issue_cash, issue_paper};
use crate::flows::notarise::{notarise, notary_service};
use crate::flows::report::{VaultReport, vault_report};
use crate::flows::trade::{buy, sell};
use crate::flows::{Notary, fail, store};
use crate::keys;
use crate::ledger::{
    Amount, AssetKind, CommandData, Currency, SignedTransaction, StateRef, TransactionBuilder,
};
use crate::vault;
use flow_runtime::prelude::*;
use flow_runtime::testing::{MockNetwork, NodeId};
use flow_runtime::{FlowHandle, Timestamp};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Concurrent trades.
    pub trades: u32,
    /// Price of each paper, in cents.
    pub price: u64,
    /// Seed of the mock network.
    pub seed: u64,
    /// Crash and restart the buyer once about half the trades are done.
    pub crash_buyer: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            trades: 100,
            price: 90_000,
            seed: 1,
            crash_buyer: true,
        }
    }
}

/// A snapshot for a progress display.
#[derive(Debug, Clone, Default)]
pub struct DemoProgress {
    /// Trades finished (either way).
    pub finished: u32,
    /// Trades in flight, by the seller's current progress step.
    pub by_step: BTreeMap<String, u32>,
    /// Something notable that just happened (e.g. the crash).
    pub event: Option<String>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Trades started.
    pub trades: u32,
    /// Trades that settled.
    pub completed: u32,
    /// Error messages of trades that did not.
    pub failures: Vec<String>,
    /// Wall time from the first trade's start to the last trade's end.
    pub elapsed: Duration,
    /// Double spends the notary refused.
    pub rejected_double_spends: u32,
    /// Node crashes and restarts.
    pub restarts: u32,
    /// The final vaults.
    pub seller: VaultReport,
    /// The buyer's final vault.
    pub buyer: VaultReport,
    /// Every reconciliation failure (empty when all is well).
    pub problems: Vec<String>,
}

impl DemoSummary {
    /// Settled trades per second of wall time.
    pub fn trades_per_second(&self) -> f64 {
        f64::from(self.completed) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs one flow on `node` to its end.
fn run<F: Flow>(net: &mut MockNetwork, node: NodeId, flow: F) -> Result<F::Output, String> {
    let h = net.start_flow(node, flow);
    net.run_network();
    match net.result(&h) {
        Some(r) => r.map_err(|e| e.to_string()),
        None => Err(format!("flow {} did not finish", F::NAME)),
    }
}

/// Tries to spend `coin` (already consumed by a trade) again: builds a
/// transaction moving it to a fresh key, signs it with the key that owned
/// it, and asks the notary. Returns the notary's refusal, or an error if the
/// notary signed (which would be a bug).
#[flow]
pub async fn double_spend_probe(
    ctx: &mut FlowContext,
    coin: StateRef,
    notary: Notary,
) -> Result<String, FlowError> {
    ctx.set_progress("Building a transaction that re-spends a coin");
    let stx: SignedTransaction = build_respend(ctx, coin, &notary)?;
    let node: flow_runtime::Party = notary.node;
    let outcome: Result<crate::crypto::TxSignature, FlowError> =
        ctx.sub_flow(notarise(node, stx)).await;
    match outcome {
        Ok(_) => Err(FlowError::new("the notary signed a double spend")),
        Err(e) => Ok(e.message().to_owned()),
    }
}

fn build_respend(
    ctx: &mut FlowContext,
    coin: StateRef,
    notary: &Notary,
) -> Result<SignedTransaction, FlowError> {
    let db = store(ctx)?;
    let spent = vault::transaction(db, &coin.tx_id)
        .map_err(fail)?
        .and_then(|stx| stx.tx.out_ref(coin.index as usize))
        .ok_or_else(|| FlowError::new(format!("the coin {coin} is not known to this node")))?;
    let owner = *spent.state.owner();
    let to = keys::fresh_key(db).map_err(fail)?;
    let mut builder = TransactionBuilder::new(notary.party.clone());
    builder.add_input(spent.clone());
    builder.add_output(spent.state.with_owner(to));
    builder.add_command(CommandData::CashMove, vec![owner]);
    let tx = builder.to_wire();
    let sig = keys::sign(db, &owner, &tx.id().0).map_err(fail)?;
    Ok(SignedTransaction::new(tx).with_signature(sig))
}

/// Runs the demo on a `MockNetwork`, calling `observe` as it goes.
pub fn run_in_process(
    config: &DemoConfig,
    observe: &mut dyn FnMut(&DemoProgress),
) -> Result<DemoSummary, String> {
    let mut net = MockNetwork::new(config.seed);
    let notary_node = net.create_node("Notary");
    let seller = net.create_node("Seller");
    let buyer = net.create_node("Buyer");
    net.register_responder::<notarise::Flow, _>(notary_node, notary_service);
    let party = run(&mut net, notary_node, ledger_identity())?;
    let notary = Notary {
        party,
        node: net.party(notary_node),
    };
    let price = Amount::new(config.price, Currency::USD);
    let n = notary.clone();
    net.register_responder::<sell::Flow, _>(buyer, move |s| {
        buy(s, price, AssetKind::CommercialPaper, n.clone())
    });

    // Issue: one coin per trade for the buyer, one paper per trade for the
    // seller.
    run(
        &mut net,
        buyer,
        issue_cash(price, config.trades, notary.clone()),
    )?;
    let mut papers = Vec::new();
    for _ in 0..config.trades {
        let stx = run(
            &mut net,
            seller,
            issue_paper(
                Amount::whole(1_000, Currency::USD),
                Timestamp(365 * 86_400_000),
                notary.clone(),
            ),
        )?;
        papers.push(stx.tx.out_refs()[0].state_ref);
    }

    let started = Instant::now();
    let buyer_party = net.party(buyer);
    let handles: Vec<FlowHandle<sell::Flow>> = papers
        .iter()
        .map(|p| net.start_flow(seller, sell(buyer_party.clone(), *p, price, notary.clone())))
        .collect();
    let mut restarts = 0;
    let mut steps: u64 = 0;
    loop {
        let progressed = net.step();
        steps += 1;
        if steps.is_multiple_of(64) || !progressed {
            let mut p = progress_of(&net, &handles);
            if config.crash_buyer && restarts == 0 && p.finished * 2 >= config.trades {
                net.restart_node(buyer);
                restarts += 1;
                p.event = Some(format!(
                    "buyer crashed and restarted after {} settled trades",
                    p.finished
                ));
            }
            observe(&p);
        }
        if !progressed {
            break;
        }
    }
    let elapsed = started.elapsed();

    let mut completed = 0;
    let mut failures = Vec::new();
    let mut spent_coin = None;
    for h in &handles {
        match net.result(h) {
            Some(Ok(stx)) => {
                completed += 1;
                if spent_coin.is_none() {
                    spent_coin = stx.tx.inputs.iter().find(|i| !papers.contains(i)).copied();
                }
            }
            Some(Err(e)) => failures.push(e.to_string()),
            None => failures.push("a trade never finished".to_owned()),
        }
    }

    // A deliberate double spend: the notary must refuse it.
    let mut rejected_double_spends = 0;
    if let Some(coin) = spent_coin {
        match run(&mut net, buyer, double_spend_probe(coin, notary.clone())) {
            Ok(reason) if reason.contains("double spend") => rejected_double_spends += 1,
            Ok(other) => failures.push(format!(
                "the double spend was refused for another reason: {other}"
            )),
            Err(e) => failures.push(e),
        }
    }

    let seller_report = run(&mut net, seller, vault_report())?;
    let buyer_report = run(&mut net, buyer, vault_report())?;
    let problems = reconcile(
        config,
        completed,
        &papers,
        &seller_report,
        &buyer_report,
        &failures,
    );
    Ok(DemoSummary {
        trades: config.trades,
        completed,
        failures,
        elapsed,
        rejected_double_spends,
        restarts,
        seller: seller_report,
        buyer: buyer_report,
        problems,
    })
}

fn progress_of(net: &MockNetwork, handles: &[FlowHandle<sell::Flow>]) -> DemoProgress {
    let mut p = DemoProgress::default();
    for h in handles {
        if net.result(h).is_some() {
            p.finished += 1;
        } else {
            let path = h.progress().current();
            let step = path
                .last()
                .cloned()
                .unwrap_or_else(|| "Waiting to start".to_owned());
            *p.by_step.entry(step).or_default() += 1;
        }
    }
    p
}

/// Checks the end state: cash conserved, every paper owned exactly once,
/// the seller paid for exactly the settled trades, nothing left locked.
pub fn reconcile(
    config: &DemoConfig,
    completed: u32,
    papers: &[StateRef],
    seller: &VaultReport,
    buyer: &VaultReport,
    failures: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    let total = config.price * u64::from(config.trades);
    let (s_cash, b_cash) = (
        seller.cash_total(Currency::USD),
        buyer.cash_total(Currency::USD),
    );
    if s_cash + b_cash != total {
        problems.push(format!(
            "cash not conserved: seller {s_cash} + buyer {b_cash} != issued {total}"
        ));
    }
    if s_cash != config.price * u64::from(completed) {
        problems.push(format!(
            "seller holds {s_cash} but {completed} trades at {} settled",
            config.price
        ));
    }
    let mut owners: BTreeMap<StateRef, Vec<&str>> = BTreeMap::new();
    for (r, _) in &seller.papers {
        owners.entry(*r).or_default().push("seller");
    }
    for (r, _) in &buyer.papers {
        owners.entry(*r).or_default().push("buyer");
    }
    let owned = seller.papers.len() + buyer.papers.len();
    if owned != papers.len() {
        problems.push(format!("{} papers issued but {owned} owned", papers.len()));
    }
    if buyer.papers.len() != completed as usize {
        problems.push(format!(
            "buyer owns {} papers after {completed} trades",
            buyer.papers.len()
        ));
    }
    for (tx, who) in owners {
        if who.len() > 1 {
            problems.push(format!("paper {tx} is owned by {who:?}"));
        }
    }
    if seller.locked + buyer.locked != 0 {
        problems.push(format!(
            "{} states still soft-locked",
            seller.locked + buyer.locked
        ));
    }
    if !failures.is_empty() {
        problems.push(format!(
            "{} trades failed; first: {}",
            failures.len(),
            failures[0]
        ));
    }
    problems
}
