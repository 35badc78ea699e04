//! `trade-demo`: many concurrent trades of commercial paper for cash
//! between a seller and a buyer, with a notary; the buyer crashes and
//! restarts mid-run; live progress; a reconciliation of every vault at the
//! end. Exits non-zero if anything does not reconcile.

use clap::Parser;
use finance_flows::demo::{DemoConfig, DemoProgress, run_in_process};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    about = "Trade commercial paper for cash between durable flow nodes, crash one, reconcile"
)]
struct Args {
    /// Run all nodes in this process on the in-memory MockNetwork.
    #[arg(long)]
    in_process: bool,
    /// How many trades to run concurrently.
    #[arg(long, default_value_t = 100)]
    trades: u32,
    /// Seed for the in-process network.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not crash the buyer mid-run.
    #[arg(long)]
    no_crash: bool,
    /// No progress bars (e.g. in CI logs).
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.in_process {
        eprintln!(
            "multi-process mode needs the TCP node runner, which is not available in this build; \
             run with --in-process"
        );
        return ExitCode::from(2);
    }
    let config = DemoConfig {
        trades: args.trades,
        seed: args.seed,
        crash_buyer: !args.no_crash,
        ..DemoConfig::default()
    };
    let bars = MultiProgress::new();
    if args.quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>28} [{bar:40}] {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let total = bars.add(ProgressBar::new(u64::from(config.trades)));
    total.set_style(style.clone());
    total.set_prefix("trades settled");
    let mut step_bars: Vec<(String, ProgressBar)> = Vec::new();
    let mut observe = |p: &DemoProgress| {
        total.set_position(u64::from(p.finished));
        for (step, count) in &p.by_step {
            let bar = match step_bars.iter().find(|(s, _)| s == step) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = bars.add(ProgressBar::new(u64::from(config.trades)));
                    b.set_style(style.clone());
                    b.set_prefix(step.clone());
                    step_bars.push((step.clone(), b.clone()));
                    b
                }
            };
            bar.set_position(u64::from(*count));
        }
        for (step, bar) in &step_bars {
            if !p.by_step.contains_key(step) {
                bar.set_position(0);
            }
        }
        if let Some(event) = &p.event {
            let _ = bars.println(format!("!! {event}"));
        }
    };
    let summary = match run_in_process(&config, &mut observe) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("the demo could not run: {e}");
            return ExitCode::FAILURE;
        }
    };
    total.finish();
    for (_, b) in &step_bars {
        b.finish_and_clear();
    }
    println!();
    println!(
        "trades completed        {} / {}",
        summary.completed, summary.trades
    );
    println!(
        "elapsed                 {:.3} s",
        summary.elapsed.as_secs_f64()
    );
    println!("trades/s                {:.0}", summary.trades_per_second());
    println!("node restarts (crash)   {}", summary.restarts);
    println!("rejected double spends  {}", summary.rejected_double_spends);
    println!(
        "seller vault            {} cash, {} papers, {} locked",
        fmt_cash(
            summary
                .seller
                .cash_total(finance_flows::ledger::Currency::USD)
        ),
        summary.seller.papers.len(),
        summary.seller.locked
    );
    println!(
        "buyer vault             {} cash, {} papers, {} locked",
        fmt_cash(
            summary
                .buyer
                .cash_total(finance_flows::ledger::Currency::USD)
        ),
        summary.buyer.papers.len(),
        summary.buyer.locked
    );
    if summary.problems.is_empty() && summary.rejected_double_spends > 0 {
        println!(
            "reconciliation          OK: cash conserved, every paper owned exactly once, no locks left"
        );
        ExitCode::SUCCESS
    } else {
        println!("reconciliation          FAILED");
        for p in &summary.problems {
            println!("  - {p}");
        }
        if summary.rejected_double_spends == 0 {
            println!("  - the notary did not reject the deliberate double spend");
        }
        ExitCode::FAILURE
    }
}

fn fmt_cash(cents: u64) -> String {
    finance_flows::ledger::Amount::new(cents, finance_flows::ledger::Currency::USD).to_string()
}
