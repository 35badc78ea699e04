//! `trade-demo`: many concurrent trades of commercial paper for cash
//! between a seller and a buyer, with a notary; the buyer is killed and
//! restarted mid-run; live progress; a deliberate double spend; a
//! reconciliation of every vault at the end. Exits non-zero if anything
//! does not reconcile or a trade did not complete.
//!
//! ```sh
//! trade-demo                        # three node processes over TCP (default)
//! trade-demo --dir demo-files       # ... keeping keys, configs, databases and logs
//! trade-demo --in-process           # all nodes on the in-memory MockNetwork
//! trade-demo --trades 1000 --no-crash --quiet   # a throughput figure
//! ```
//!
//! In the default mode this same executable is started three times more,
//! as `trade-demo node --role ...` (a hidden subcommand): one OS process
//! per node. See `finance_flows::demo::multi_process`.

use clap::{Parser, Subcommand};
use finance_flows::demo::node_process::{self, NodeArgs};
use finance_flows::demo::{
    DemoConfig, DemoProgress, DemoSummary, MultiProcessConfig, run_in_process, run_multi_process,
};
use finance_flows::ledger::{Amount, Currency};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc for every process this executable runs, node processes
/// included: a node allocates and frees on every message (frames, records,
/// decoded states), and glibc's allocator spent ~14% of a node's CPU in a
/// trade (`perf record` of the demo's processes), much of it consolidating
/// and splitting its free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    about = "Trade commercial paper for cash between durable flow nodes, crash one, reconcile",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    node: Option<Sub>,
    /// Run all nodes in this process on the in-memory MockNetwork (a quick
    /// look) instead of as three processes over TCP.
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
    /// Keep the nodes' files (keys, configs, databases, logs) in this new
    /// or empty directory instead of a temporary one.
    #[arg(long, conflicts_with = "in_process")]
    dir: Option<PathBuf>,
    /// Stop every node and fail if the demo has not ended by then.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run one node of the multi-process demo (started by the demo itself).
    #[command(hide = true)]
    Node(NodeArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Sub::Node(node)) = args.node {
        return node_process::main(node);
    }
    let config = DemoConfig {
        trades: args.trades,
        seed: args.seed,
        crash_buyer: !args.no_crash,
        ..DemoConfig::default()
    };
    if config.trades == 0 {
        eprintln!("--trades must be at least 1");
        return ExitCode::from(2);
    }
    let mut display = Display::new(config.trades, args.quiet);
    let mut observe = |p: &DemoProgress| display.show(p);
    let outcome = if args.in_process {
        run_in_process(&config, &mut observe)
    } else {
        let node_exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("cannot find this executable to start the node processes: {e}");
                return ExitCode::FAILURE;
            }
        };
        run_multi_process(
            &MultiProcessConfig {
                demo: config.clone(),
                dir: args.dir.clone(),
                node_exe,
                timeout: Duration::from_secs(args.timeout_secs),
                follow_progress: !args.quiet,
            },
            &mut observe,
        )
    };
    display.finish();
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            eprintln!("the demo could not run: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_summary(&summary, args.in_process);
    if let Some(dir) = &args.dir {
        println!(
            "node files              {} (keys, configs, databases, logs)",
            dir.display()
        );
    }
    let verdict = summary.verdict();
    if verdict.is_empty() {
        println!(
            "reconciliation          OK: cash conserved, every paper owned exactly once, no locks left"
        );
        ExitCode::SUCCESS
    } else {
        println!("reconciliation          FAILED");
        for p in &verdict {
            println!("  - {p}");
        }
        ExitCode::FAILURE
    }
}

fn print_summary(summary: &DemoSummary, in_process: bool) {
    println!();
    println!(
        "mode                    {}",
        if in_process {
            "in-process (MockNetwork, in-memory databases)"
        } else {
            "three node processes over TCP, redb files with fsync"
        }
    );
    println!(
        "trades completed        {} / {}",
        summary.completed, summary.trades
    );
    if summary.untimed > 0 {
        println!(
            "elapsed                 {:.3} s for the last {} trades (the first {} ran alone before, untimed)",
            summary.elapsed.as_secs_f64(),
            summary.timed_completed(),
            summary.untimed
        );
    } else {
        println!(
            "elapsed                 {:.3} s",
            summary.elapsed.as_secs_f64()
        );
    }
    println!("trades/s                {:.0}", summary.trades_per_second());
    if let Some(start) = summary.start_phase {
        println!(
            "  of which starting     {:.3} s (batch starts through the seller's admin API, up to 10,000 trades a request and a commit)",
            start.as_secs_f64()
        );
    }
    if !summary.cpu.is_empty() {
        let total: Duration = summary.cpu.iter().map(|(_, d)| *d).sum();
        let per_node: Vec<String> = summary
            .cpu
            .iter()
            .map(|(name, d)| format!("{name} {:.2} s", d.as_secs_f64()))
            .collect();
        println!(
            "node CPU during trades  {:.2} s = {:.0} us per trade ({})",
            total.as_secs_f64(),
            total.as_secs_f64() * 1e6 / f64::from(summary.timed_completed().max(1)),
            per_node.join(", ")
        );
    }
    println!("node restarts (crash)   {}", summary.restarts);
    println!("rejected double spends  {}", summary.rejected_double_spends);
    for (name, vault) in [("seller", &summary.seller), ("buyer", &summary.buyer)] {
        println!(
            "{:<24}{} cash, {} papers, {} locked",
            format!("{name} vault"),
            Amount::new(vault.cash_total(Currency::USD), Currency::USD),
            vault.papers.len(),
            vault.locked
        );
    }
    if let Some(n) = summary.notarised_inputs {
        println!("notary                  {n} inputs consumed");
    }
}

/// The live progress bars: trades settled, and trades in flight per step
/// of the seller's flow.
struct Display {
    bars: MultiProgress,
    style: ProgressStyle,
    total: ProgressBar,
    trades: u32,
    steps: Vec<(String, ProgressBar)>,
}

impl Display {
    fn new(trades: u32, quiet: bool) -> Self {
        let bars = MultiProgress::new();
        if quiet {
            bars.set_draw_target(ProgressDrawTarget::hidden());
        }
        let style = ProgressStyle::with_template("{prefix:>34} [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let total = bars.add(ProgressBar::new(u64::from(trades)));
        total.set_style(style.clone());
        total.set_prefix("trades settled");
        Display {
            bars,
            style,
            total,
            trades,
            steps: Vec::new(),
        }
    }

    fn show(&mut self, p: &DemoProgress) {
        self.total.set_position(u64::from(p.finished));
        for (step, count) in &p.by_step {
            let bar = match self.steps.iter().find(|(s, _)| s == step) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = self.bars.add(ProgressBar::new(u64::from(self.trades)));
                    b.set_style(self.style.clone());
                    b.set_prefix(step.clone());
                    self.steps.push((step.clone(), b.clone()));
                    b
                }
            };
            bar.set_position(u64::from(*count));
        }
        for (step, bar) in &self.steps {
            if !p.by_step.contains_key(step) {
                bar.set_position(0);
            }
        }
        if let Some(event) = &p.event {
            if self.bars.is_hidden() {
                println!("-- {event}");
            } else {
                let _ = self.bars.println(format!("-- {event}"));
            }
        }
    }

    fn finish(&self) {
        self.total.finish();
        for (_, b) in &self.steps {
            b.finish_and_clear();
        }
    }
}
