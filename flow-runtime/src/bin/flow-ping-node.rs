//! `flow-ping-node`: a complete node binary built with the runner — the
//! example to copy for your own flows, and the process the multi-process
//! test and the benchmark start.
//!
//! ```text
//! # a node that answers pings until SIGINT/SIGTERM
//! flow-ping-node --config bob.toml
//! # a node that also runs 4 pings of 1000 rounds to Bob and 4 to Carol,
//! # prints each result, then stops
//! flow-ping-node --config alice.toml --ping Bob=4 --ping Carol=4 --rounds 1000
//! # before deploying this build: would it resume every flow in flight?
//! flow-ping-node --config alice.toml --check-upgrade
//! ```
//!
//! Pings are started under client ids `ping-<peer>-<i>`, so a node killed
//! and started again with the same arguments finds its flows instead of
//! starting new ones.
//!
//! Output (stdout, one line each): `STARTED`, then `RESULT <client id>
//! <total>` (or `FAILED <client id> <error>`), then `DONE <ms>`. The pong
//! side prints `MARK <n>` when it echoes round n = 300 or 600, which tests
//! use to kill a node mid-run.

use clap::Parser;
use flow_runtime::prelude::*;
use flow_runtime::runner::{self, Config, NodeArgs, NodeBuilder};
use flow_runtime::testing::ping_pong::ping;
use std::process::ExitCode;
use std::time::Instant;

/// Rounds at which `pong` prints a `MARK` line.
const MARKS: [u32; 2] = [300, 600];

#[flow]
pub async fn pong(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    loop {
        let n: u32 = session.receive::<u32>().await?.validate(Ok)?;
        if MARKS.contains(&n) {
            println!("MARK {n}");
        }
        session.send(&n)?;
    }
}

/// Run a flow node that answers pings, and optionally pings its peers.
#[derive(Parser)]
struct Args {
    /// The arguments every runner binary takes (`--config`,
    /// `--check-upgrade`).
    #[command(flatten)]
    node: NodeArgs,
    /// `NAME=COUNT`: run COUNT concurrent pings to the party NAME, print
    /// their results, then stop. Repeatable.
    #[arg(long, value_parser = parse_ping)]
    ping: Vec<(String, u32)>,
    /// Rounds per ping.
    #[arg(long, default_value_t = 1000)]
    rounds: u32,
}

fn parse_ping(s: &str) -> Result<(String, u32), String> {
    let (name, count) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=COUNT, got `{s}`"))?;
    let count = count
        .parse()
        .map_err(|e| format!("`{count}` is not a count: {e}"))?;
    Ok((name.to_owned(), count))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = runner::init_logging() {
        eprintln!("cannot set up logging: {e}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let loaded = Config::read(&args.node.config)
        .and_then(Config::load)
        .map_err(|e| e.to_string())?;
    let map = loaded.map.clone();
    let mut builder = NodeBuilder::from_config(loaded);
    builder.flow::<ping::Flow>();
    builder.responder::<ping::Flow>(pong);
    if args.node.check_upgrade {
        return Ok(builder.run_upgrade_check());
    }
    let node = builder.start().await.map_err(|e| e.to_string())?;

    if args.ping.is_empty() {
        node.run_until_signal().await.map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }

    let began = Instant::now();
    let mut handles = Vec::new();
    for (name, count) in &args.ping {
        let peer = map
            .by_name(name)
            .ok_or_else(|| format!("no party `{name}` in the network map"))?
            .party();
        for i in 0..*count {
            let id = format!("ping-{name}-{i}");
            let h = node
                .start_flow_with_client_id(&id, ping(peer.clone(), args.rounds))
                .await
                .map_err(|e| e.to_string())?;
            handles.push((id, h));
        }
    }
    println!("STARTED");
    let mut failed = false;
    for (id, h) in &handles {
        tokio::select! {
            r = node.result(h) => match r {
                Ok(total) => println!("RESULT {id} {total}"),
                Err(e) => {
                    failed = true;
                    println!("FAILED {id} {e}");
                }
            },
            s = runner::shutdown_signal() => {
                let _ = s;
                node.shutdown().await.map_err(|e| e.to_string())?;
                return Err("interrupted before every ping finished".into());
            }
        }
    }
    println!("DONE {}", began.elapsed().as_millis());
    node.shutdown().await.map_err(|e| e.to_string())?;
    if failed {
        Err("some pings failed".into())
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
