//! The machine's limits and two durable nodes side by side, in one run:
//! every figure the node is judged by, next to the raw building block it is
//! compared with, measured in the same minute so that the load of the
//! machine hits both alike.
//!
//! Per trial (`TCP_PING_TRIALS`, default 3), in turn:
//!
//! * `commit`: a durable redb commit of one 200-byte insert, with the
//!   node's own options (`RedbOptions::default()`: fsync and quick repair),
//!   and the same without quick repair;
//! * `echo`: a plain tokio TCP echo of one ping message's size, client and
//!   server on one runtime, over 1 connection and over 16 at once;
//! * `node, 1 flow`: Alice runs `ping` against Bob, each node on its own
//!   runtime with its own redb file, over the Noise-encrypted TCP
//!   transport; one round trip is a message and its echo, each step
//!   committed before it sends. Its limit is two commits (one per node,
//!   one after the other) plus one echo; the same with quick repair off on
//!   both nodes;
//! * `node, 16 flows` and `node, 1,000 flows`: that many pings at once,
//!   started in ONE commit (`start_flows_with_client_ids`), compared with
//!   the 16-connection echo.
//!
//! Prints each figure as the median of the trials and each ratio as the
//! median of the trials' ratios, with commits per round trip on each node.
//! `TCP_PING_ROUNDS` scales the rounds (default 1: 1,000 rounds for one
//! flow, 200 per flow for 16, 100 per flow for 1,000).
//!
//! `TCP_PING_PIPELINE=1` runs every node with the commit pipeline
//! (`NodeBuilder::pipeline_commits`).
//!
//! Run: `cargo bench -p flow-runtime --bench tcp_ping`.

use flow_runtime::engine::{Body, WireMessage};
use flow_runtime::prelude::*;
use flow_runtime::runner::{Node, NodeBuilder, keys};
use flow_runtime::storage::{RedbOptions, RedbStore, Store, Table, WriteBatch};
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use flow_runtime::testing::ping_pong::{expected_total, ping, pong};
use flow_runtime::{NodeConfig, Payload};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connections of the many-connection echo (and flows of the middle node
/// workload).
const CONNECTIONS: usize = 16;

/// Flows of the large node workload.
const MANY_FLOWS: usize = 1000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The echo's runtime: one worker, client and server tasks on it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A node's runtime: as `tokio::runtime::Runtime::new()` gives the node
/// binaries (a worker per core), or `TCP_PING_WORKERS` workers.
fn node_runtime() -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("TCP_PING_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        b.worker_threads(n);
    }
    b.enable_all().build().expect("a tokio runtime")
}

/// The size of one ping message as the node puts it on the wire (before
/// encryption), so the echo moves the same bytes.
fn ping_message_len() -> usize {
    WireMessage::Session {
        session: u64::MAX,
        from_initiator: true,
        seq: 500,
        body: Body::Data(Payload::encode(&500u32).expect("encodes")),
    }
    .encode()
    .expect("encodes")
    .len()
}

/// Mean time of one durable commit of one 200-byte insert at a random key.
fn commit_latency(options: RedbOptions, commits: u64) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = RedbStore::open(&dir.path().join("commits.redb"), options).expect("opens");
    let table = Table::service("bench");
    let mut key = 0x9e37_79b9_7f4a_7c15u64;
    let commit = |key: u64| {
        let mut batch = WriteBatch::default();
        batch.put(table.clone(), key.to_be_bytes().to_vec(), vec![7u8; 200]);
        store.commit(batch).expect("commits");
    };
    // The first commits create the file's tables; not measured.
    for _ in 0..5 {
        key = key.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        commit(key);
    }
    let t = Instant::now();
    for _ in 0..commits {
        key = key.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        commit(key);
    }
    t.elapsed() / u32::try_from(commits).expect("few commits")
}

/// Round trips per second of a plain tokio TCP echo over `connections`
/// connections at once, each doing `rounds` round trips of `len` bytes.
fn tcp_echo(connections: usize, rounds: u64, len: usize) -> f64 {
    let rt = runtime();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                s.set_nodelay(true).expect("nodelay");
                tokio::spawn(async move {
                    let mut buf = vec![0u8; len];
                    while s.read_exact(&mut buf).await.is_ok() {
                        if s.write_all(&buf).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let mut clients = Vec::new();
        for _ in 0..connections {
            let c = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            c.set_nodelay(true).expect("nodelay");
            clients.push(c);
        }
        let t = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut buf = vec![7u8; len];
                    for _ in 0..rounds {
                        c.write_all(&buf).await.expect("writes");
                        c.read_exact(&mut buf).await.expect("reads");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("the echo client ran");
        }
        (connections as u64 * rounds) as f64 / t.elapsed().as_secs_f64()
    })
}

/// Alice and Bob, each on its own runtime with its own redb file.
struct TwoNodes {
    _dir: tempfile::TempDir,
    alice_rt: tokio::runtime::Runtime,
    alice: Node,
    bob_party: Party,
    _bob_rt: tokio::runtime::Runtime,
    bob: Node,
    /// Client ids already used (each batch start needs fresh ones).
    started: u64,
}

/// `hand_off`: `NodeBuilder::hand_off_worker_during_commits`, or `None`
/// for the node's default.
fn two_nodes(options: RedbOptions, hand_off: Option<bool>) -> TwoNodes {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ka = keys::generate_identity().expect("a key");
    let kb = keys::generate_identity().expect("a key");
    let la = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let lb = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let entry = |name: &str, l: &std::net::TcpListener, key| PeerEntry {
        name: name.into(),
        address: l.local_addr().expect("an address").to_string(),
        key,
    };
    let map = NetworkMap::new([
        entry("Alice", &la, keys::public_key(&ka)),
        entry("Bob", &lb, keys::public_key(&kb)),
    ])
    .expect("a network map");
    let start = |rt: &tokio::runtime::Runtime, key, l, db, map: &NetworkMap| {
        let mut b = NodeBuilder::new(key, "", db, map.clone());
        b.listener(l);
        b.flow::<ping::Flow>();
        b.responder::<ping::Flow>(pong);
        b.store_options(options);
        // Every flow of a workload runs at once, each with a responder on
        // Bob: the per-peer responder bound must admit them all, or the
        // initiations past it wait for Alice's redelivery tick and the
        // workload measures that wait instead of the node.
        let flows = env_u64("TCP_PING_FLOWS", 1).max(MANY_FLOWS as u64);
        b.node_config(NodeConfig {
            max_responders_per_peer: u32::try_from(flows).unwrap_or(u32::MAX),
            ..NodeConfig::default()
        });
        if let Some(hand_off) = hand_off {
            b.hand_off_worker_during_commits(hand_off);
        }
        if std::env::var("TCP_PING_PIPELINE").is_ok() {
            b.pipeline_commits(true);
        }
        rt.block_on(b.start()).expect("the node starts")
    };
    let alice_rt = node_runtime();
    let bob_rt = node_runtime();
    let bob = start(&bob_rt, kb, lb, dir.path().join("bob.redb"), &map);
    let alice = start(&alice_rt, ka, la, dir.path().join("alice.redb"), &map);
    let mut nodes = TwoNodes {
        bob_party: bob.party().clone(),
        _dir: dir,
        alice_rt,
        alice,
        _bob_rt: bob_rt,
        bob,
        started: 0,
    };
    // Connect both ways and create the files' tables before measuring.
    nodes.run(1, 2);
    nodes
}

/// One node workload's outcome.
struct Run {
    round_trips_per_s: f64,
    /// Commits per round trip on Alice and on Bob.
    commits_per_round_trip: (f64, f64),
}

impl TwoNodes {
    /// Stops both nodes (their drivers end before the runtimes drop).
    fn stop(self) {
        self.alice_rt.block_on(async {
            self.alice.shutdown().await.expect("Alice stops");
            self.bob.shutdown().await.expect("Bob stops");
        });
    }

    /// Runs `flows` pings of `rounds` rounds at once, all started in one
    /// commit; the clock covers the start and every round.
    fn run(&mut self, flows: usize, rounds: u32) -> Run {
        let first = self.started;
        self.started += flows as u64;
        let batch: Vec<_> = (0..flows as u64)
            .map(|i| {
                (
                    format!("bench-{}", first + i),
                    ping(self.bob_party.clone(), rounds),
                )
            })
            .collect();
        self.alice_rt.block_on(async {
            let before = (
                self.alice.commits().await.expect("commits"),
                self.bob.commits().await.expect("commits"),
            );
            let t = Instant::now();
            let handles = self
                .alice
                .start_flows_with_client_ids(batch)
                .await
                .expect("the pings start");
            for h in &handles {
                assert_eq!(h.result().await, Ok(expected_total(rounds)));
            }
            let elapsed = t.elapsed().as_secs_f64();
            let after = (
                self.alice.commits().await.expect("commits"),
                self.bob.commits().await.expect("commits"),
            );
            let round_trips = flows as f64 * f64::from(rounds);
            Run {
                round_trips_per_s: round_trips / elapsed,
                commits_per_round_trip: (
                    (after.0 - before.0) as f64 / round_trips,
                    (after.1 - before.1) as f64 / round_trips,
                ),
            }
        })
    }
}

/// Every figure of one trial.
#[derive(Default, Clone)]
struct Trial {
    commit_us: f64,
    commit_no_qr_us: f64,
    echo_1: f64,
    echo_16: f64,
    one_flow: f64,
    one_flow_no_qr: f64,
    one_flow_no_fsync: f64,
    flows_16: f64,
    flows_1000: f64,
    one_flow_other: f64,
    flows_16_other: f64,
    flows_1000_other: f64,
    commits: Vec<(f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes bench binaries with --list
    }
    let trials = env_u64("TCP_PING_TRIALS", 3).max(1);
    let scale = env_u64("TCP_PING_ROUNDS", 1).max(1);
    let scale32 = u32::try_from(scale).expect("a small scale");
    let (rounds_1, rounds_16, rounds_1000) = (1000 * scale32, 200 * scale32, 100 * scale32);
    let len = ping_message_len();
    let no_qr = RedbOptions {
        quick_repair: false,
        ..RedbOptions::default()
    };
    let no_fsync = RedbOptions {
        durable: false,
        ..RedbOptions::default()
    };
    if std::env::var("TCP_PING_PROFILE").is_ok() {
        // One flow without fsync, for a profiler: what the node and the
        // transport cost per round trip beyond the disk.
        let hand_off = match std::env::var("TCP_PING_PROFILE").as_deref() {
            Ok("block") => Some(false),
            Ok("hand-off") => Some(true),
            _ => None,
        };
        let durable = std::env::var("TCP_PING_DURABLE").is_ok();
        let options = if durable {
            RedbOptions::default()
        } else {
            no_fsync
        };
        let mut nodes = two_nodes(options, hand_off);
        let flows = usize::try_from(env_u64("TCP_PING_FLOWS", 1)).expect("a flow count");
        let rounds = if flows > 1 {
            100
        } else if durable {
            200
        } else {
            5000
        } * scale32;
        let run = nodes.run(flows, rounds);
        println!(
            "{flows} flow(s), durable {durable}, {rounds} rounds: {:.0} round trips/s, \
             {:.1} µs per round trip; commits per round trip: Alice {:.4}, Bob {:.4}",
            run.round_trips_per_s,
            1e6 / run.round_trips_per_s,
            run.commits_per_round_trip.0,
            run.commits_per_round_trip.1,
        );
        nodes.stop();
        return;
    }
    // The node's default, and its other setting beside it.
    let workers = node_runtime().metrics().num_workers();
    let hand_off_default = workers == 1;
    let mut nodes = two_nodes(RedbOptions::default(), None);
    let mut nodes_no_qr = two_nodes(no_qr, None);
    let mut nodes_other = two_nodes(RedbOptions::default(), Some(!hand_off_default));
    let mut nodes_no_fsync = two_nodes(no_fsync, None);

    let mut all = Vec::new();
    for trial in 1..=trials {
        let mut t = Trial {
            commit_us: commit_latency(RedbOptions::default(), 200 * scale).as_secs_f64() * 1e6,
            commit_no_qr_us: commit_latency(no_qr, 200 * scale).as_secs_f64() * 1e6,
            echo_1: tcp_echo(1, 20_000 * scale, len),
            echo_16: tcp_echo(CONNECTIONS, 10_000 * scale, len),
            ..Trial::default()
        };
        let one = nodes.run(1, rounds_1);
        let one_no_qr = nodes_no_qr.run(1, rounds_1);
        t.one_flow_no_fsync = nodes_no_fsync.run(1, rounds_1).round_trips_per_s;
        let sixteen = nodes.run(CONNECTIONS, rounds_16);
        let thousand = nodes.run(MANY_FLOWS, rounds_1000);
        t.one_flow_other = nodes_other.run(1, rounds_1).round_trips_per_s;
        t.flows_16_other = nodes_other.run(CONNECTIONS, rounds_16).round_trips_per_s;
        t.flows_1000_other = nodes_other.run(MANY_FLOWS, rounds_1000).round_trips_per_s;
        t.one_flow = one.round_trips_per_s;
        t.one_flow_no_qr = one_no_qr.round_trips_per_s;
        t.flows_16 = sixteen.round_trips_per_s;
        t.flows_1000 = thousand.round_trips_per_s;
        t.commits = vec![
            one.commits_per_round_trip,
            one_no_qr.commits_per_round_trip,
            sixteen.commits_per_round_trip,
            thousand.commits_per_round_trip,
        ];
        eprintln!(
            "trial {trial}/{trials}: commit {:.0} µs ({:.0} µs without quick repair), \
             echo {:.0}/s (16 connections: {:.0}/s), node: 1 flow {:.0}/s \
             ({:.0}/s without quick repair), 16 flows {:.0}/s, 1,000 flows {:.0}/s",
            t.commit_us,
            t.commit_no_qr_us,
            t.echo_1,
            t.echo_16,
            t.one_flow,
            t.one_flow_no_qr,
            t.flows_16,
            t.flows_1000
        );
        all.push(t);
    }
    for nodes in [nodes, nodes_no_qr, nodes_other, nodes_no_fsync] {
        nodes.stop();
    }
    report(&all, len, (rounds_1, rounds_16, rounds_1000), workers);
}

fn report(all: &[Trial], len: usize, rounds: (u32, u32, u32), workers: usize) {
    let med = |f: &dyn Fn(&Trial) -> f64| median(all.iter().map(f).collect());
    let echo_us = |t: &Trial| 1e6 / t.echo_1;
    // The limit of one durable round trip: a commit on each node, one after
    // the other, and the loopback trip between them.
    let limit_us = |t: &Trial| 2.0 * t.commit_us + echo_us(t);
    let limit_no_qr_us = |t: &Trial| 2.0 * t.commit_no_qr_us + echo_us(t);
    let one_us = |t: &Trial| 1e6 / t.one_flow;
    let one_no_qr_us = |t: &Trial| 1e6 / t.one_flow_no_qr;
    let commits = |i: usize| {
        (
            med(&|t: &Trial| t.commits[i].0),
            med(&|t: &Trial| t.commits[i].1),
        )
    };
    let (r1, r16, r1000) = rounds;
    println!(
        "tcp_ping: {} trial(s), medians; ratios are the median of each trial's ratio",
        all.len()
    );
    println!("limits measured in the same run:");
    println!(
        "  durable redb commit, 1 insert (node's options, quick repair on): {:>8.0} µs",
        med(&|t| t.commit_us)
    );
    println!(
        "  durable redb commit, 1 insert, quick repair off:                 {:>8.0} µs",
        med(&|t| t.commit_no_qr_us)
    );
    println!(
        "  tokio TCP echo, {len} B, 1 connection:  {:>9.0} round trips/s ({:.1} µs each)",
        med(&|t| t.echo_1),
        med(&|t| echo_us(t))
    );
    println!(
        "  tokio TCP echo, {len} B, {CONNECTIONS} connections: {:>9.0} round trips/s",
        med(&|t| t.echo_16)
    );
    println!(
        "  one durable round trip's limit (2 commits + 1 echo): {:.0} µs; quick repair off: {:.0} µs",
        med(&limit_us),
        med(&limit_no_qr_us)
    );
    println!(
        "two durable nodes over TCP (Noise), {workers} runtime worker(s) each, all flows started in one commit:"
    );
    let c = commits(0);
    println!(
        "  1 flow, {r1} rounds:            {:>7.0} µs per round trip, {:.2}x the limit \
         (commits per round trip: Alice {:.2}, Bob {:.2})",
        med(&one_us),
        med(&|t| one_us(t) / limit_us(t)),
        c.0,
        c.1
    );
    let c = commits(1);
    println!(
        "  1 flow, quick repair off:       {:>7.0} µs per round trip, {:.2}x its limit \
         (commits per round trip: Alice {:.2}, Bob {:.2})",
        med(&one_no_qr_us),
        med(&|t| one_no_qr_us(t) / limit_no_qr_us(t)),
        c.0,
        c.1
    );
    println!(
        "  1 flow without fsync:           {:>7.1} µs per round trip, {:.1}x the echo (the node's CPU and wake-ups)",
        med(&|t| 1e6 / t.one_flow_no_fsync),
        med(&|t| t.echo_1 / t.one_flow_no_fsync),
    );
    let c = commits(2);
    println!(
        "  {CONNECTIONS} flows x {r16} rounds:        {:>7.0} round trips/s, {:.3}x the {CONNECTIONS}-connection echo \
         (commits per round trip: Alice {:.3}, Bob {:.3})",
        med(&|t| t.flows_16),
        med(&|t| t.flows_16 / t.echo_16),
        c.0,
        c.1
    );
    let c = commits(3);
    println!(
        "  {MANY_FLOWS} flows x {r1000} rounds:     {:>7.0} round trips/s, {:.3}x the {CONNECTIONS}-connection echo \
         (commits per round trip: Alice {:.4}, Bob {:.4})",
        med(&|t| t.flows_1000),
        med(&|t| t.flows_1000 / t.echo_16),
        c.0,
        c.1
    );
    // The default hands the worker off only on a one-worker runtime.
    let other = if workers > 1 {
        "worker handed off during commits"
    } else {
        "commits block the worker"
    };
    println!(
        "  {other}: 1 flow {:.2}x, {CONNECTIONS} flows {:.2}x, {MANY_FLOWS} flows {:.2}x the default's round trips/s",
        med(&|t| t.one_flow_other / t.one_flow),
        med(&|t| t.flows_16_other / t.flows_16),
        med(&|t| t.flows_1000_other / t.flows_1000),
    );
}
