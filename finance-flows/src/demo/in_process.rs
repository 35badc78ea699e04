//! The demo on a `MockNetwork`: all three nodes in this process, durable
//! on in-memory redb, stepped one delivery at a time. A crash is
//! `MockNetwork::restart_node` (everything in memory dropped, the database
//! reopened). Quick, deterministic for a seed, no sockets or files.

use super::{DemoConfig, DemoProgress, DemoSummary, double_spend_probe, reconcile};
use crate::flows::Notary;
use crate::flows::identity::{ledger_identity, trust_issuers};
use crate::flows::issue::{issue_cash, issue_paper};
use crate::flows::notarise::{notarise, notary_service};
use crate::flows::report::vault_report;
use crate::flows::trade::{buy, sell};
use crate::ledger::{Amount, AssetKind, Currency};
use flow_runtime::prelude::*;
use flow_runtime::testing::{MockNetwork, NodeId};
use flow_runtime::{FlowHandle, Timestamp};
use std::time::Instant;

/// Runs one flow on `node` to its end.
fn run<F: Flow>(net: &mut MockNetwork, node: NodeId, flow: F) -> Result<F::Output, String> {
    let h = net.start_flow(node, flow);
    net.run_network();
    match net.result(&h) {
        Some(r) => r.map_err(|e| e.to_string()),
        None => Err(format!("flow {} did not finish", F::NAME)),
    }
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

    // The buyer is the demo's bank: the seller accepts its cash.
    let bank = run(&mut net, buyer, ledger_identity())?;
    run(&mut net, seller, trust_issuers(vec![bank.clone()]))?;

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
    let issued = [(
        bank,
        Currency::USD,
        price.quantity * u64::from(config.trades),
    )];
    let problems = reconcile(
        config,
        &issued,
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
        notarised_inputs: Some(run(&mut net, notary_node, vault_report())?.notarised_inputs),
        untimed: 0,
        start_phase: None,
        cpu: Vec::new(),
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
