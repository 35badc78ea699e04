//! The trade demo's engine, shared by the `trade-demo` binary, its tests
//! and the benchmarks: a notary, a seller and a buyer; cash and paper
//! issued; many trades run concurrently; the buyer crashed and restarted
//! mid-run; a deliberate double spend that the notary must reject; and a
//! reconciliation of every vault at the end.
//!
//! Two ways to run it, with the same summary and the same reconciliation:
//!
//! * [`run_in_process`] ([`in_process`]): all three nodes on a
//!   `MockNetwork` (durable nodes on in-memory redb; a crash drops
//!   everything in memory and reopens the database). A quick look.
//! * [`run_multi_process`] ([`multi_process`]): each node is a separate OS
//!   process (the runner's tokio node over the Noise-encrypted TCP
//!   transport, each on its own redb file). The orchestrator drives the
//!   node processes of [`node_process`] through their admin API, as any
//!   client would (the flows it starts by name, and their arguments, are in
//!   [`api`]), and kills the buyer with SIGKILL mid-run. This is the real
//!   thing.
//!
//! This module holds what both share: configuration, progress snapshots,
//! the summary and its verdict, the double-spend probe and the
//! reconciliation.

pub mod api;
pub mod in_process;
pub mod multi_process;
pub mod node_process;

pub use in_process::run_in_process;
pub use multi_process::{MultiProcessConfig, run_multi_process};

use crate::flows::notarise::notarise;
use crate::flows::report::VaultReport;
use crate::flows::{Notary, fail, ledger_db};
use crate::keys;
use crate::ledger::{CommandData, Currency, SignedTransaction, StateRef, TransactionBuilder};
use crate::vault;
use flow_runtime::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Concurrent trades.
    pub trades: u32,
    /// Price of each paper, in cents.
    pub price: u64,
    /// Seed of the mock network (in-process mode only).
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
    /// Inputs the notary recorded as consumed (`None` if not asked).
    pub notarised_inputs: Option<u32>,
    /// Trades run before the timing started (multi-process mode: the
    /// first trade, alone, so that the timed ones find the nodes in their
    /// steady state); counted in `completed`, not in `elapsed`.
    pub untimed: u32,
    /// Part of `elapsed` spent starting the trades (multi-process mode:
    /// until the seller's node had committed every `sell` flow, in batch
    /// requests of up to 10,000 starts, each one commit).
    pub start_phase: Option<Duration>,
    /// CPU time each node process used during the trades (multi-process
    /// mode on Linux; empty otherwise). With a crash, the buyer's is the
    /// sum of both its processes.
    pub cpu: Vec<(String, Duration)>,
    /// Every reconciliation failure (empty when all is well).
    pub problems: Vec<String>,
}

impl DemoSummary {
    /// Settled trades that were timed (not [`untimed`](Self::untimed)).
    pub fn timed_completed(&self) -> u32 {
        self.completed.saturating_sub(self.untimed)
    }

    /// Settled trades per second of wall time (the timed ones).
    pub fn trades_per_second(&self) -> f64 {
        f64::from(self.timed_completed()) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Why the run is not a success: every reconciliation problem, plus a
    /// trade that did not settle or a double spend the notary did not
    /// refuse. Empty means success; the binary exits non-zero otherwise.
    pub fn verdict(&self) -> Vec<String> {
        let mut why = self.problems.clone();
        if self.completed != self.trades {
            why.push(format!(
                "only {} of {} trades completed",
                self.completed, self.trades
            ));
        }
        if self.rejected_double_spends == 0 {
            why.push("the notary did not reject the deliberate double spend".to_owned());
        }
        why
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
    let db = ledger_db(ctx)?;
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

/// Checks the end state of a run in which `issued` cash (per issuer key
/// and currency) and the `papers` were issued, and `completed` trades at
/// `config.price` (in USD) settled:
///
/// * cash is conserved per issuer and currency: what the seller and the
///   buyer hold together is exactly what was issued, and no other cash
///   exists;
/// * the seller was paid for exactly the settled trades;
/// * every paper is owned exactly once, and the buyer owns one per settled
///   trade;
/// * no state is left soft-locked and no trade failed.
///
/// Returns every problem found (empty when all is well).
pub fn reconcile(
    config: &DemoConfig,
    issued: &[(Party, Currency, u64)],
    completed: u32,
    papers: &[StateRef],
    seller: &VaultReport,
    buyer: &VaultReport,
    failures: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut held: BTreeMap<(Party, Currency), u64> = BTreeMap::new();
    for (issuer, currency, q) in seller.cash.iter().chain(&buyer.cash) {
        let sum = held.entry((issuer.clone(), *currency)).or_default();
        *sum = sum.saturating_add(*q);
    }
    let mut expected: BTreeMap<(Party, Currency), u64> = BTreeMap::new();
    for (issuer, currency, q) in issued {
        let sum = expected.entry((issuer.clone(), *currency)).or_default();
        *sum = sum.saturating_add(*q);
    }
    for ((issuer, currency), want) in &expected {
        let have = held.remove(&(issuer.clone(), *currency)).unwrap_or(0);
        if have != *want {
            problems.push(format!(
                "{currency} cash issued by {issuer} ({:?}) not conserved: the vaults hold {have}, {want} was issued",
                issuer.key()
            ));
        }
    }
    for ((issuer, currency), have) in held {
        problems.push(format!(
            "the vaults hold {have} of {currency} cash issued by {issuer} ({:?}), which was never issued",
            issuer.key()
        ));
    }
    let s_cash = seller.cash_total(Currency::USD);
    let paid = config.price.saturating_mul(u64::from(completed));
    if s_cash != paid {
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
    for (paper, who) in owners {
        if who.len() > 1 {
            problems.push(format!("paper {paper} is owned by {who:?}"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecureHash;
    use crate::ledger::{Amount, CommercialPaper};
    use flow_runtime::{Party, PublicKey, Timestamp};

    const PRICE: u64 = 90_000;

    fn paper_ref(n: u8) -> StateRef {
        StateRef {
            tx_id: SecureHash([n; 32]),
            index: 0,
        }
    }

    fn paper(owner: u8) -> CommercialPaper {
        CommercialPaper {
            issuer: Party::new("Seller", PublicKey([9; 32])),
            face_value: Amount::whole(1_000, Currency::USD),
            maturity: Timestamp(1),
            owner: PublicKey([owner; 32]),
        }
    }

    fn vault(cash: u64, papers: &[u8]) -> VaultReport {
        VaultReport {
            cash: if cash > 0 {
                vec![(bank(), Currency::USD, cash)]
            } else {
                Vec::new()
            },
            papers: papers.iter().map(|n| (paper_ref(*n), paper(*n))).collect(),
            locked: 0,
            transactions: 0,
            notarised_inputs: 0,
        }
    }

    /// Two trades, both settled: the seller holds the price of both, the
    /// buyer both papers (under their new refs).
    fn bank() -> Party {
        Party::new("Buyer", PublicKey([5; 32]))
    }

    fn settled() -> (DemoConfig, Vec<(Party, Currency, u64)>, Vec<StateRef>) {
        let config = DemoConfig {
            trades: 2,
            price: PRICE,
            ..DemoConfig::default()
        };
        let issued = vec![(bank(), Currency::USD, 2 * PRICE)];
        (config, issued, vec![paper_ref(1), paper_ref(2)])
    }

    fn summary(problems: Vec<String>, completed: u32, rejected: u32) -> DemoSummary {
        DemoSummary {
            trades: 2,
            completed,
            failures: Vec::new(),
            elapsed: Duration::from_secs(1),
            rejected_double_spends: rejected,
            restarts: 1,
            seller: vault(0, &[]),
            buyer: vault(0, &[]),
            notarised_inputs: None,
            untimed: 0,
            start_phase: None,
            cpu: Vec::new(),
            problems,
        }
    }

    #[test]
    fn a_clean_end_state_reconciles_and_succeeds() {
        let (config, issued, papers) = settled();
        let problems = reconcile(
            &config,
            &issued,
            2,
            &papers,
            &vault(2 * PRICE, &[]),
            &vault(0, &[11, 12]),
            &[],
        );
        assert_eq!(problems, Vec::<String>::new());
        assert!(summary(problems, 2, 1).verdict().is_empty());
    }

    #[test]
    fn created_or_lost_cash_is_found_and_fails_the_run() {
        let (config, issued, papers) = settled();
        let problems = reconcile(
            &config,
            &issued,
            2,
            &papers,
            &vault(2 * PRICE + 1, &[]),
            &vault(0, &[11, 12]),
            &[],
        );
        assert!(
            problems.iter().any(|p| p.contains("not conserved")),
            "{problems:?}"
        );
        assert!(!summary(problems, 2, 1).verdict().is_empty());
    }

    #[test]
    fn cash_of_an_unknown_issuer_is_found() {
        let (config, issued, papers) = settled();
        let mut buyer = vault(0, &[11, 12]);
        buyer
            .cash
            .push((Party::new("Mallory", PublicKey([6; 32])), Currency::USD, 5));
        // Cash issued under the bank's name by another key is not the bank's.
        buyer
            .cash
            .push((Party::new("Buyer", PublicKey([7; 32])), Currency::USD, 3));
        let problems = reconcile(
            &config,
            &issued,
            2,
            &papers,
            &vault(2 * PRICE, &[]),
            &buyer,
            &[],
        );
        assert!(
            problems.iter().any(|p| p.contains("Mallory")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("3 of USD cash issued by Buyer")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_paper_owned_twice_or_a_lock_left_is_found() {
        let (config, issued, papers) = settled();
        let mut seller = vault(2 * PRICE, &[11]);
        seller.locked = 1;
        let problems = reconcile(
            &config,
            &issued,
            2,
            &papers,
            &seller,
            &vault(0, &[11, 12]),
            &[],
        );
        assert!(
            problems.iter().any(|p| p.contains("owned by")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("soft-locked")),
            "{problems:?}"
        );
    }

    #[test]
    fn untimed_trades_count_as_completed_but_not_in_the_rate() {
        let mut s = summary(Vec::new(), 2, 1);
        s.untimed = 1;
        assert_eq!(s.timed_completed(), 1);
        assert!((s.trades_per_second() - 1.0).abs() < 1e-9);
        assert!(s.verdict().is_empty(), "{:?}", s.verdict());
    }

    #[test]
    fn an_unfinished_trade_or_an_accepted_double_spend_fails_the_run() {
        let verdict = summary(Vec::new(), 1, 1).verdict();
        assert!(verdict.iter().any(|v| v.contains("1 of 2")), "{verdict:?}");
        let verdict = summary(Vec::new(), 2, 0).verdict();
        assert!(
            verdict.iter().any(|v| v.contains("double spend")),
            "{verdict:?}"
        );
    }
}
