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
//! Started with a config file, the node serves the admin API (see
//! `flowctl`), where two flows are startable by name:
//!
//! * `flow_runtime::testing::ping_pong::ping` with `{"peer": "Bob",
//!   "rounds": 10}` (the peer by its name in the network map);
//! * `flow_ping_node::await_marker` with `{"name": "go"}`: ends with
//!   `"found"` if the file `go` exists beside the config file, and fails
//!   transiently otherwise, so it lands in the hospital (immediately with
//!   `[node] max_transient_retries = 0`) until an operator creates the file
//!   and retries it. It shows the hospital and `flowctl flows retry`.
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

/// Ends with `"found"` once the marker file `name` exists in `dir`; fails
/// transiently (so it is retried, then hospitalised) while it does not.
#[flow]
pub async fn await_marker(
    _ctx: &mut FlowContext,
    dir: String,
    name: String,
) -> Result<String, FlowError> {
    if std::path::Path::new(&dir).join(&name).exists() {
        Ok("found".to_owned())
    } else {
        Err(FlowError::transient(format!(
            "the marker file `{name}` does not exist yet"
        )))
    }
}

/// `ping`'s arguments through the admin API.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PingArgs {
    /// The peer's name in the network map.
    peer: String,
    /// Rounds, 1 to 100,000.
    rounds: u32,
}

/// `await_marker`'s arguments through the admin API.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkerArgs {
    /// A file name: letters, digits, `-` and `_` only.
    name: String,
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
    let marker_dir = args
        .node
        .config
        .parent()
        .map_or_else(|| ".".to_owned(), |d| d.display().to_string());
    let mut builder = NodeBuilder::from_config(loaded);
    builder.flow::<ping::Flow>();
    builder.responder::<ping::Flow>(pong);
    let peers = map.clone();
    builder.startable(move |a: PingArgs| {
        let peer = peers
            .by_name(&a.peer)
            .ok_or_else(|| format!("no party `{}` in the network map", a.peer))?;
        if a.rounds == 0 || a.rounds > 100_000 {
            return Err("rounds must be 1 to 100000".to_owned());
        }
        Ok(ping(peer.party(), a.rounds))
    });
    builder.startable(move |a: MarkerArgs| {
        let valid = !a.name.is_empty()
            && a.name.len() <= 64
            && a.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err("name must be 1 to 64 letters, digits, `-` or `_`".to_owned());
        }
        Ok(await_marker(marker_dir.clone(), a.name))
    });
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
