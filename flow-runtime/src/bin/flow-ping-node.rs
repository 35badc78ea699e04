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
//! Pings are started under client ids `ping-<peer>-<i>`, all of them in
//! one commit, so a node killed and started again with the same arguments
//! finds its flows instead of starting new ones.
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
//! A node whose `[store]` is PostgreSQL can also run scale-out
//! (`docs/scale-out.md` §6): one gateway process and any number of
//! worker processes, all with the same config file:
//!
//! ```text
//! flow-ping-node --config alice.toml --gateway
//! flow-ping-node --config alice.toml --worker w1
//! flow-ping-node --config alice.toml --worker w2
//! # queue 8 pings to Bob for the workers, print their results, stop
//! flow-ping-node --config alice.toml --scale-out-ping Bob=8 --rounds 100
//! ```
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
    /// Scale-out: run this node's gateway (holds the key and the links).
    #[arg(long, conflicts_with_all = ["worker", "scale_out_ping", "ping"])]
    gateway: bool,
    /// Scale-out: run a worker of this node, with this name.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["scale_out_ping", "ping"])]
    worker: Option<String>,
    /// Scale-out: `NAME=COUNT` pings to queue for the workers; prints
    /// their results once all have finished, then stops. Repeatable.
    #[arg(long, value_parser = parse_ping, conflicts_with = "ping")]
    scale_out_ping: Vec<(String, u32)>,
    /// Scale-out: the node's partition count (fixed at its first start).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Scale-out: a worker's lease, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
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
    if args.gateway || args.worker.is_some() || !args.scale_out_ping.is_empty() {
        return match scale_out::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
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
    register(&mut builder, &map, marker_dir);
    if args.node.check_upgrade {
        return Ok(builder.run_upgrade_check());
    }
    let node = builder.start().await.map_err(|e| e.to_string())?;

    if args.ping.is_empty() {
        node.run_until_signal().await.map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }

    let began = Instant::now();
    // Every ping in one batch: one commit for all of them, however many
    // (a start of its own per ping would be a durable commit each).
    let mut batch = Vec::new();
    for (name, count) in &args.ping {
        let peer = map
            .by_name(name)
            .ok_or_else(|| format!("no party `{name}` in the network map"))?
            .party();
        for i in 0..*count {
            batch.push((format!("ping-{name}-{i}"), ping(peer.clone(), args.rounds)));
        }
    }
    let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
    let started = node
        .start_flows_with_client_ids(batch)
        .await
        .map_err(|e| e.to_string())?;
    let handles: Vec<_> = ids.into_iter().zip(started).collect();
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

/// Registers the ping and pong flows and the startable flows on any node
/// (a single node, or a scale-out partition).
fn register<T: flow_runtime::transport::Transport>(
    builder: &mut NodeBuilder<T>,
    map: &flow_runtime::tcp::NetworkMap,
    marker_dir: String,
) {
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
}

/// The scale-out roles: gateway, worker, and the client that queues pings.
#[cfg(feature = "postgres")]
mod scale_out {
    use super::{Args, register};
    use flow_runtime::Flow;
    use flow_runtime::runner::{self, Config, StoreChoice};
    use flow_runtime::scale_out::{Control, Gateway, Worker, WorkerSettings};
    use flow_runtime::tcp::TcpTransport;
    use flow_runtime::testing::ping_pong::ping;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    pub(super) fn run(args: &Args) -> Result<(), String> {
        let loaded = Config::read(&args.node.config)
            .and_then(Config::load)
            .map_err(|e| e.to_string())?;
        let connection = match loaded.config.store.choice()? {
            StoreChoice::Postgres { connection } => connection,
            StoreChoice::Redb(_) => {
                return Err("scale-out needs `[store] kind = \"postgres\"` in the config".into());
            }
        };
        if !args.scale_out_ping.is_empty() {
            return queue_pings(args, &connection);
        }
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let on_signal = stop.clone();
        runtime.spawn(async move {
            let _ = runner::shutdown_signal().await;
            on_signal.store(true, Ordering::Relaxed);
        });
        if args.gateway {
            let gateway = Gateway::connect(&connection, args.partitions).map_err(|e| e.0)?;
            let listen = loaded.config.listen.clone();
            let tcp = loaded.config.transport.tcp_config();
            let (transport, incoming) = runtime
                .block_on(TcpTransport::bind(
                    loaded.identity,
                    &listen,
                    loaded.map,
                    tcp,
                ))
                .map_err(|e| e.to_string())?;
            println!("GATEWAY");
            return gateway
                .run(runtime.handle(), transport, incoming, stop)
                .map_err(|e| e.0);
        }
        let name = args.worker.clone().unwrap_or_default();
        let map = loaded.map.clone();
        let key = flow_runtime::PublicKey(loaded.identity.verifying_key().to_bytes());
        let party = map
            .by_key(&key)
            .ok_or("the node's key is not in the network map")?
            .party();
        let marker_dir = args
            .node
            .config
            .parent()
            .map_or_else(|| ".".to_owned(), |d| d.display().to_string());
        let configure_map = map.clone();
        let mut settings = WorkerSettings::new(&name);
        settings.partitions = args.partitions;
        settings.lease = Duration::from_millis(args.lease_ms.max(100));
        settings.dump_dir = loaded
            .config
            .database
            .parent()
            .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
        let worker = Worker::new(
            &connection,
            party,
            map,
            settings,
            Arc::new(move |builder| register(builder, &configure_map, marker_dir.clone())),
            runtime.handle().clone(),
        )
        .map_err(|e| e.0)?;
        println!("WORKER {name}");
        worker.run(&stop).map_err(|e| e.0)
    }

    /// Queues the pings (client ids `ping-<peer>-<i>`, so running it again
    /// queues nothing new), then waits for all their results.
    fn queue_pings(args: &Args, connection: &str) -> Result<(), String> {
        let began = Instant::now();
        let mut control = Control::connect(connection, args.partitions).map_err(|e| e.0)?;
        let mut ids = BTreeSet::new();
        for (peer, count) in &args.scale_out_ping {
            for i in 0..*count {
                let id = format!("ping-{peer}-{i}");
                let json = serde_json::json!({"peer": peer, "rounds": args.rounds});
                control
                    .request_start(&id, <ping::Flow as Flow>::NAME, &json)
                    .map_err(|e| e.0)?;
                ids.insert(id);
            }
        }
        println!("STARTED");
        let mut failed = false;
        while !ids.is_empty() {
            // The database may be restarting: wait for it (up to the
            // connection's 30 s patience) rather than give up.
            let status = match control.status() {
                Ok(status) => status,
                Err(e) => {
                    eprintln!("cannot read the results yet ({}); retrying", e.0);
                    std::thread::sleep(Duration::from_millis(200));
                    if let Ok(again) = Control::connect(connection, args.partitions) {
                        control = again;
                    }
                    continue;
                }
            };
            for f in status.finished {
                let Some(id) = f.client_id else { continue };
                if !ids.remove(&id) {
                    continue;
                }
                match f.outcome {
                    Ok(bytes) => match rmp_serde::from_slice::<u64>(&bytes) {
                        Ok(total) => println!("RESULT {id} {total}"),
                        Err(e) => {
                            failed = true;
                            println!("FAILED {id} undecodable output: {e}");
                        }
                    },
                    Err(e) => {
                        failed = true;
                        println!("FAILED {id} {e}");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("DONE {}", began.elapsed().as_millis());
        if failed {
            Err("some pings failed".into())
        } else {
            Ok(())
        }
    }
}

/// Without the `postgres` feature there is no scale-out.
#[cfg(not(feature = "postgres"))]
mod scale_out {
    pub(super) fn run(_: &super::Args) -> Result<(), String> {
        Err(
            "this build has no PostgreSQL support (flow-runtime's `postgres` feature is off)"
                .into(),
        )
    }
}
