//! `upgrade-node`: a node binary of which the multi-process upgrade test
//! (`tests/tests/upgrade_processes.rs`) runs several builds on one
//! database. `--build` stands for what would be separate releases:
//!
//! * `v1`: the seller flow as first deployed;
//! * `v2`: the new seller flow, plus the state migration from v1 (v1's
//!   code is kept only as a type);
//! * `v2-without-migration`: the new seller flow alone.
//!
//! ```text
//! upgrade-node --config bob.toml --build v1 --gate DIR/gate     # the buyer
//! upgrade-node --config alice.toml --build v1 --sell Bob=6      # sellers
//! upgrade-node --config alice.toml --build v2 --check-upgrade
//! upgrade-node --config alice.toml --build v2-without-migration --report-held 6
//! ```
//!
//! Output lines (stdout): the seller prints `STARTED`, `AWAITING_DONE <k>`
//! whenever the number of its sellers waiting for the buyer's last answer
//! changes, then `RESULT <client id> <value>` per seller; the buyer prints
//! `QUOTED <n>`; `--report-held N` prints `HELD <run> <reason>` once N
//! flows are held in the hospital, then stops the node cleanly.

use flow_runtime::prelude::*;
use flow_runtime::runner::{self, Config, NodeBuilder};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The buyer: answers a seller's number `n` with `2n`, then its echo with
/// `3n`. It holds its first answer to even sellers and its second to odd
/// ones until the gate file exists, so that sellers wait in two different
/// states while the test swaps their node's build.
#[flow]
pub async fn buyer(ctx: &mut FlowContext, s: FlowSession, gate: String) -> Result<(), FlowError> {
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    if n.is_multiple_of(2) {
        while !Path::new(&gate).exists() {
            ctx.sleep(Duration::from_millis(20)).await;
        }
    }
    s.send(&(n * 2))?;
    println!("QUOTED {n}");
    let _echo: u32 = s.receive::<u32>().await?.validate(Ok)?;
    if !n.is_multiple_of(2) {
        while !Path::new(&gate).exists() {
            ctx.sleep(Duration::from_millis(20)).await;
        }
    }
    s.send(&(n * 3))?;
    Ok(())
}

/// The seller as first deployed: its result carries 1,000.
pub mod v1 {
    use super::*;
    #[flow(name = "upgrade.sell")]
    pub async fn sell(ctx: &mut FlowContext, peer: Party, n: u32) -> Result<u64, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&n)?;
        let quote: u32 = s.receive::<u32>().await?.validate(Ok)?;
        s.send(&quote)?;
        let done: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(u64::from(done) + 1_000)
    }
}

/// The new seller: the last answer is read as a `u64` (the fingerprint
/// changes), and its result carries 2,000.
pub mod v2 {
    use super::*;
    #[flow(name = "upgrade.sell")]
    pub async fn sell(ctx: &mut FlowContext, peer: Party, n: u32) -> Result<u64, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&n)?;
        let quote: u32 = s.receive::<u32>().await?.validate(Ok)?;
        s.send(&quote)?;
        let done: u64 = s.receive::<u64>().await?.validate(Ok)?;
        Ok(done + 2_000)
    }
}

/// The migration the v2 build ships: both versions suspend at the same
/// points with the same live local, the session.
fn v1_to_v2(old: v1::sell::Flow) -> Result<v2::sell::Flow, String> {
    use v1::sell::Flow as Old;
    use v2::sell::{Flow as New, FlowLocals};
    match old {
        Old::Start { peer, n } => Ok(v2::sell(peer, n)),
        Old::AwaitQuote { locals } => Ok(New::AwaitQuote {
            locals: FlowLocals { s: locals.s },
        }),
        Old::AwaitDone { locals } => Ok(New::AwaitDone {
            locals: FlowLocals { s: locals.s },
        }),
        Old::Done => Err("a finished flow has no checkpoint to migrate".into()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Build {
    V1,
    V2,
    V2WithoutMigration,
}

struct Args {
    config: PathBuf,
    build: Build,
    gate: Option<String>,
    sell: Option<(String, u32)>,
    check_upgrade: bool,
    report_held: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut build = None;
    let mut gate = None;
    let mut sell = None;
    let mut check_upgrade = false;
    let mut report_held = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--build" => {
                build = Some(match value()?.as_str() {
                    "v1" => Build::V1,
                    "v2" => Build::V2,
                    "v2-without-migration" => Build::V2WithoutMigration,
                    other => return Err(format!("unknown build `{other}`")),
                })
            }
            "--gate" => gate = Some(value()?),
            "--sell" => {
                let v = value()?;
                let (peer, count) = v.split_once('=').ok_or("--sell PEER=COUNT")?;
                let count = count.parse().map_err(|e| format!("--sell count: {e}"))?;
                sell = Some((peer.to_owned(), count));
            }
            "--check-upgrade" => check_upgrade = true,
            "--report-held" => {
                report_held = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--report-held: {e}"))?,
                )
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        config: config.ok_or("--config is required")?,
        build: build.ok_or("--build is required")?,
        gate,
        sell,
        check_upgrade,
        report_held,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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
    let loaded = Config::read(&args.config)
        .and_then(Config::load)
        .map_err(|e| e.to_string())?;
    let map = loaded.map.clone();
    let mut builder = NodeBuilder::from_config(loaded);
    match args.build {
        Build::V1 => {
            builder.flow::<v1::sell::Flow>();
        }
        Build::V2 => {
            builder.flow::<v2::sell::Flow>();
            builder.migration::<v1::sell::Flow, v2::sell::Flow>(v1_to_v2);
        }
        Build::V2WithoutMigration => {
            builder.flow::<v2::sell::Flow>();
        }
    }
    if let Some(gate) = args.gate.clone() {
        builder.responder::<v1::sell::Flow>(move |s| buyer(s, gate.clone()));
    }
    if args.check_upgrade {
        return Ok(builder.run_upgrade_check());
    }
    let node = builder.start().await.map_err(|e| e.to_string())?;

    if let Some(count) = args.report_held {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let held = loop {
            let held = node.hospital().await.map_err(|e| e.to_string())?;
            if held.len() >= count {
                break held;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("only {} flows held after 60 s", held.len()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for h in held {
            println!("HELD {} {}", h.run_id, h.error);
        }
        node.shutdown().await.map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }

    let Some((peer, count)) = args.sell else {
        node.run_until_signal().await.map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    };
    let peer = map
        .by_name(&peer)
        .ok_or_else(|| format!("no party `{peer}` in the network map"))?
        .party();
    let ids: Vec<String> = (0..count).map(|n| format!("sell-{n}")).collect();
    let mut results = Vec::new();
    match args.build {
        Build::V1 => {
            let mut handles = Vec::new();
            for (n, id) in (0..count).zip(&ids) {
                let h = node
                    .start_flow_with_client_id(id, v1::sell(peer.clone(), n))
                    .await
                    .map_err(|e| e.to_string())?;
                handles.push(h);
            }
            println!("STARTED");
            report_states(&node, &handles).await?;
            for h in &handles {
                results.push(node.result(h).await);
            }
        }
        Build::V2 | Build::V2WithoutMigration => {
            let mut handles = Vec::new();
            for (n, id) in (0..count).zip(&ids) {
                let h = node
                    .start_flow_with_client_id(id, v2::sell(peer.clone(), n))
                    .await
                    .map_err(|e| e.to_string())?;
                handles.push(h);
            }
            println!("STARTED");
            for h in &handles {
                results.push(node.result(h).await);
            }
        }
    }
    for (id, r) in ids.iter().zip(results) {
        match r {
            Ok(v) => println!("RESULT {id} {v}"),
            Err(e) => println!("FAILED {id} {e}"),
        }
    }
    node.shutdown().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `AWAITING_DONE <k>` whenever the number of sellers suspended in
/// `AwaitDone` changes, until every seller has finished (the test kills a
/// v1 seller node while it waits here).
async fn report_states(
    node: &runner::Node,
    handles: &[flow_runtime::FlowHandle<v1::sell::Flow>],
) -> Result<(), String> {
    let mut last = None;
    loop {
        let dump = node.dump_json().await.map_err(|e| e.to_string())?;
        let waiting_done = dump.matches("\"state\": \"AwaitDone\"").count();
        if last != Some(waiting_done) {
            println!("AWAITING_DONE {waiting_done}");
            last = Some(waiting_done);
        }
        let mut finished = 0;
        for h in handles {
            if node.try_result(h).await.is_ok_and(|r| r.is_some()) {
                finished += 1;
            }
        }
        if finished == handles.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
