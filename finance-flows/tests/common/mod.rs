//! A three-node MockNetwork (notary, seller, buyer) with the finance flows
//! registered, and reconciliation of every vault.

#![allow(dead_code)]

use finance_flows::flows::Notary;
use finance_flows::flows::identity::{ledger_identity, trust_issuers};
use finance_flows::flows::issue::{issue_cash, issue_paper};
use finance_flows::flows::notarise::{notarise, notary_service};
use finance_flows::flows::report::{VaultReport, vault_report};
use finance_flows::flows::trade::{buy, sell};
use finance_flows::ledger::{Amount, AssetKind, Currency, SignedTransaction, StateRef};
use flow_runtime::Timestamp;
use flow_runtime::testing::{MockNetwork, NodeId};

/// One coin's value and how many the buyer gets.
pub const COIN: u64 = 100_000;
pub const COINS: u32 = 5;
/// The paper's price and face value.
pub const PRICE: u64 = 90_000;
pub const FACE: u64 = 100_000;

pub fn usd(q: u64) -> Amount {
    Amount::new(q, Currency::USD)
}

pub struct World {
    pub net: MockNetwork,
    pub notary_node: NodeId,
    pub seller: NodeId,
    pub buyer: NodeId,
    pub notary: Notary,
}

/// Runs `flow` on `node` to completion and returns its result.
pub fn run<F: flow_runtime::Flow>(
    net: &mut MockNetwork,
    node: NodeId,
    flow: F,
) -> Result<F::Output, flow_runtime::FlowError> {
    let h = net.start_flow(node, flow);
    net.run_network();
    net.result(&h)
        .expect("a one-node flow finishes once the network is idle")
}

impl World {
    /// Notary, seller and buyer; the buyer accepts paper up to `max_price`
    /// (when `honest_buyer`; otherwise the test registers its own).
    pub fn new(seed: u64, max_price: u64, honest_buyer: bool) -> Self {
        let mut net = MockNetwork::new(seed);
        let notary_node = net.create_node("Notary");
        let seller = net.create_node("Seller");
        let buyer = net.create_node("Buyer");
        net.register_responder::<notarise::Flow, _>(notary_node, notary_service);
        let party = run(&mut net, notary_node, ledger_identity()).unwrap();
        let notary = Notary {
            party,
            node: net.party(notary_node),
        };
        // The buyer issues the cash it pays with: the seller trusts it as
        // an issuer (a node's trust is its own, configured by key).
        let bank = run(&mut net, buyer, ledger_identity()).unwrap();
        run(&mut net, seller, trust_issuers(vec![bank])).unwrap();
        if honest_buyer {
            let n = notary.clone();
            net.register_responder::<sell::Flow, _>(buyer, move |s| {
                buy(s, usd(max_price), AssetKind::CommercialPaper, n.clone())
            });
        }
        Self {
            net,
            notary_node,
            seller,
            buyer,
            notary,
        }
    }

    /// Gives the buyer cash and the seller one paper; returns the paper.
    pub fn fund(&mut self) -> StateRef {
        let n = self.notary.clone();
        run(
            &mut self.net,
            self.buyer,
            issue_cash(usd(COIN), COINS, n.clone()),
        )
        .unwrap();
        self.issue_paper_to_seller()
    }

    pub fn issue_paper_to_seller(&mut self) -> StateRef {
        let n = self.notary.clone();
        let stx = run(
            &mut self.net,
            self.seller,
            issue_paper(usd(FACE), Timestamp(86_400_000), n),
        )
        .unwrap();
        stx.tx.out_refs()[0].state_ref
    }

    pub fn sell(&mut self, paper: StateRef, price: u64) -> flow_runtime::FlowHandle<sell::Flow> {
        let buyer = self.net.party(self.buyer);
        let n = self.notary.clone();
        self.net
            .start_flow(self.seller, sell(buyer, paper, usd(price), n))
    }

    pub fn report(&mut self, node: NodeId) -> VaultReport {
        run(&mut self.net, node, vault_report()).unwrap()
    }

    /// Every invariant that must hold between trades: cash conserved
    /// across seller and buyer, each paper owned by exactly one of them, no
    /// soft lock left, and the expected split of `trades_done` trades at
    /// `price`.
    pub fn reconcile(&mut self, papers: usize, trades_done: u64, price: u64) {
        let s = self.report(self.seller);
        let b = self.report(self.buyer);
        let total = COIN * u64::from(COINS);
        assert_eq!(
            s.cash_total(Currency::USD) + b.cash_total(Currency::USD),
            total,
            "cash is conserved"
        );
        assert_eq!(
            s.cash_total(Currency::USD),
            trades_done * price,
            "seller was paid for each trade"
        );
        assert_eq!(
            s.papers.len() + b.papers.len(),
            papers,
            "every paper is owned exactly once"
        );
        assert_eq!(
            b.papers.len() as u64,
            trades_done,
            "buyer owns what it bought"
        );
        let mut refs: Vec<_> = s.papers.iter().chain(&b.papers).map(|(r, _)| *r).collect();
        refs.sort();
        refs.dedup();
        assert_eq!(refs.len(), papers, "no paper is in two vaults");
        assert_eq!((s.locked, b.locked), (0, 0), "no soft lock is left behind");
    }
}

pub fn ok(result: Option<Result<SignedTransaction, flow_runtime::FlowError>>) -> SignedTransaction {
    match result {
        Some(Ok(stx)) => stx,
        other => panic!("expected a finished trade, got {other:?}"),
    }
}

pub fn err_message<T: std::fmt::Debug>(
    result: Option<Result<T, flow_runtime::FlowError>>,
) -> String {
    match result {
        Some(Err(e)) => e.message().to_owned(),
        other => panic!("expected a failed flow, got {other:?}"),
    }
}
