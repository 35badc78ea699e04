//! `trade-bench`: end-to-end trades per second on durable nodes in one
//! process (the runtime's `NodeCore` on redb files, group commit), the CPU
//! time per trade spent signing, verifying and hashing, and the checkpoint
//! size of every suspended trade flow.
//!
//! ```sh
//! cargo run --release -p finance-flows --bin trade-bench -- --trades 2000
//! ```

use clap::Parser;
use finance_flows::cluster::{CheckpointSize, Cluster};
use finance_flows::crypto::metrics;
use finance_flows::flows::Notary;
use finance_flows::flows::identity::ledger_identity;
use finance_flows::flows::issue::{issue_cash, issue_paper};
use finance_flows::flows::notarise::{notarise, notary_service};
use finance_flows::flows::trade::{buy, sell};
use finance_flows::ledger::{Amount, AssetKind, Currency, SignedTransaction};
use flow_runtime::store::RedbOptions;
use flow_runtime::{Flow, RunId, Timestamp};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the two-party trade on durable in-process nodes")]
struct Args {
    /// Trades to run concurrently.
    #[arg(long, default_value_t = 1000)]
    trades: u32,
    /// Commit without fsync (to see what the disk costs).
    #[arg(long)]
    no_fsync: bool,
    /// Directory for the databases (default: a fresh temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn wait<F: Flow>(c: &mut Cluster, node: usize, run: RunId) -> Result<F::Output, String> {
    c.run_until_idle()?;
    match c.result::<F>(node, run)? {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("{} did not finish", F::NAME)),
    }
}

fn main() -> ExitCode {
    match bench(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: Args) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let options = RedbOptions {
        durable: !args.no_fsync,
        ..RedbOptions::default()
    };
    let price = Amount::new(90_000, Currency::USD);
    let mut c = Cluster::new(options);

    let notary_node = c.add_node("Notary", &dir.join("notary.redb"), |r| {
        r.register_responder::<notarise::Flow, _>(notary_service);
        r.register_flow::<ledger_identity::Flow>();
    })?;
    let run = c.start(notary_node, ledger_identity())?;
    let party = wait::<ledger_identity::Flow>(&mut c, notary_node, run)?;
    let notary = Notary {
        party,
        node: c.party(notary_node),
    };
    let n = notary.clone();
    let buyer = c.add_node("Buyer", &dir.join("buyer.redb"), move |r| {
        let n = n.clone();
        r.register_responder::<sell::Flow, _>(move |s| {
            buy(s, price, AssetKind::CommercialPaper, n.clone())
        });
        r.register_flow::<issue_cash::Flow>();
    })?;
    let seller = c.add_node("Seller", &dir.join("seller.redb"), |r| {
        r.register_flow::<sell::Flow>();
        r.register_flow::<issue_paper::Flow>();
    })?;

    let run = c.start(buyer, issue_cash(price, args.trades, notary.clone()))?;
    wait::<issue_cash::Flow>(&mut c, buyer, run)?;
    let mut issues = Vec::new();
    for _ in 0..args.trades {
        issues.push(c.start(
            seller,
            issue_paper(
                Amount::whole(1_000, Currency::USD),
                Timestamp(u64::MAX / 2),
                notary.clone(),
            ),
        )?);
    }
    c.run_until_idle()?;
    let mut papers = Vec::new();
    for run in issues {
        let stx: SignedTransaction = c
            .result::<issue_paper::Flow>(seller, run)?
            .ok_or("paper issuance did not finish")?
            .map_err(|e| e.to_string())?;
        papers.push(stx.tx.out_refs()[0].state_ref);
    }

    // One trade alone, round by round, to read every checkpoint it leaves.
    let buyer_party = c.party(buyer);
    let first = papers.remove(0);
    let run = c.start(
        seller,
        sell(buyer_party.clone(), first, price, notary.clone()),
    )?;
    // flow name -> the state sizes it went through, in order.
    let mut sizes: BTreeMap<String, Vec<CheckpointSize>> = BTreeMap::new();
    loop {
        for node in [notary_node, buyer, seller] {
            for s in c.checkpoint_sizes(node)? {
                let seen = sizes.entry(s.flow.clone()).or_default();
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
            }
        }
        if !c.run_round()? {
            break;
        }
    }
    let fin: SignedTransaction = c
        .result::<sell::Flow>(seller, run)?
        .ok_or("first trade did not finish")?
        .map_err(|e| e.to_string())?;
    let tx_bytes = rmp_serde::to_vec(&fin).map_err(|e| e.to_string())?.len();

    // The timed run: every other trade at once.
    let trades = papers.len();
    let before = metrics::snapshot();
    let stats_before = c.stats();
    let started = Instant::now();
    let mut runs = Vec::with_capacity(trades);
    for p in &papers {
        runs.push(c.start(seller, sell(buyer_party.clone(), *p, price, notary.clone()))?);
    }
    c.run_until_idle()?;
    let elapsed = started.elapsed();
    let crypto = metrics::snapshot().since(&before);
    let stats = c.stats();
    let mut completed = 0;
    for run in runs {
        if let Some(Ok(_)) = c.result::<sell::Flow>(seller, run)? {
            completed += 1;
        }
    }

    let per = |nanos: u64| nanos as f64 / 1_000.0 / completed.max(1) as f64;
    println!(
        "durable in-process trade benchmark ({} fsync)",
        if args.no_fsync { "without" } else { "with" }
    );
    println!("  trades completed          {completed} / {trades}");
    println!("  elapsed                   {:.3} s", elapsed.as_secs_f64());
    println!(
        "  trades/s                  {:.0}",
        completed as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  group commits             {} ({:.1} per trade)",
        stats.commits - stats_before.commits,
        (stats.commits - stats_before.commits) as f64 / completed.max(1) as f64
    );
    println!(
        "  frames                    {} ({:.0} bytes per trade)",
        stats.frames - stats_before.frames,
        (stats.frame_bytes - stats_before.frame_bytes) as f64 / completed.max(1) as f64
    );
    println!(
        "  wall time per trade       {:.1} us",
        elapsed.as_secs_f64() * 1e6 / completed.max(1) as f64
    );
    println!(
        "    signing                 {:.1} us ({:.1} signatures)",
        per(crypto.sign_nanos),
        crypto.signs as f64 / completed.max(1) as f64
    );
    println!(
        "    verifying               {:.1} us ({:.1} verifications)",
        per(crypto.verify_nanos),
        crypto.verifies as f64 / completed.max(1) as f64
    );
    println!(
        "    hashing (tx ids)        {:.1} us ({:.1} hashes)",
        per(crypto.hash_nanos),
        crypto.hashes as f64 / completed.max(1) as f64
    );
    println!(
        "    everything else         {:.1} us (serialization, storage, fsync, flow logic)",
        elapsed.as_secs_f64() * 1e6 / completed.max(1) as f64
            - per(crypto.sign_nanos)
            - per(crypto.verify_nanos)
            - per(crypto.hash_nanos)
    );
    println!(
        "checkpoints of one trade, at every suspension (state bytes / whole record; the final transaction is {tx_bytes} bytes)"
    );
    for (flow, seen) in &sizes {
        let list: Vec<String> = seen
            .iter()
            .map(|s| format!("{}/{}", s.state_bytes, s.record_bytes))
            .collect();
        let max = seen.iter().map(|s| s.state_bytes).max().unwrap_or(0);
        println!("  {flow}: max {max} B state; {}", list.join(", "));
    }
    if completed != trades {
        return Err(format!("only {completed} of {trades} trades completed"));
    }
    Ok(())
}
