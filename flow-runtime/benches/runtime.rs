//! Durable-step benchmarks of the node (a bench binary; run with
//! `cargo bench -p flow-runtime --bench runtime`).
//!
//! * group commit: N flows each wake on a due timer and suspend again; one
//!   `tick` runs all N steps and commits them in ONE redb transaction
//!   (`Durability::Immediate`, quick repair as configured). Compared side
//!   by side with raw redb transactions inserting N values of the same size
//!   (the flows' checkpoint bytes), same durability settings: the ratio is
//!   the figure that counts.
//!   The raw side writes values exactly as long as the node's stored
//!   checkpoint record, at random 64-bit keys, the same keys every round.
//! * single-step latency: N = 1.
//! * `FLOW_BENCH_MILLION=1`: for 10,000 and 1,000,000 suspended flows
//!   (`FLOW_BENCH_FLOWS=a,b` to choose), a child process creates them
//!   (responders waiting for a message) and is killed with SIGKILL; a second
//!   child reopens the node, processes one message for one of them, and
//!   reports the time from start to that step's commit and its RSS.
//! * `FLOW_BENCH_BATCHES=1,1000` picks the group-commit batch sizes,
//!   `FLOW_BENCH_MODES=qr,noqr,nosync` the commit settings: durable with
//!   quick repair (the default), durable without, and no fsync at all (which
//!   shows the CPU cost per step against raw redb's).

use flow_runtime::__private as rt;
use flow_runtime::node::OsIds;
use flow_runtime::prelude::*;
use flow_runtime::registry::{NewFlow, Registry};
use flow_runtime::store::{RedbOptions, RedbStore, Store, Table, WriteBatch};
use flow_runtime::testing::HandwrittenPing;
use flow_runtime::wire::{Body, WireMessage};
use flow_runtime::{Event, NodeConfig, NodeCore, Step, Timestamp};
use flow_runtime::{FlowSession, Payload};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sleeps `every_ms` again and again; counts its wake-ups.
#[derive(Debug, Serialize, Deserialize)]
struct Ticker {
    every_ms: u64,
    wakes: u64,
    pad: serde_bytes::ByteBuf,
}

impl Flow for Ticker {
    type Output = u64;
    const NAME: &'static str = "bench::ticker";
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 1;
    fn resume(&mut self, ctx: &mut FlowContext, _event: Event) -> Step<u64> {
        self.wakes += 1;
        rt::start_sleep(ctx.sleep(Duration::from_millis(self.every_ms)), ctx);
        Step::Suspended
    }
    fn state_name(&self) -> &'static str {
        "Sleeping"
    }
}

fn node(
    path: &std::path::Path,
    options: RedbOptions,
    now: Timestamp,
) -> (NodeCore, Arc<RedbStore>) {
    let store = Arc::new(RedbStore::open(path, options).expect("open store"));
    let mut registry = Registry::new();
    registry.register_flow::<Ticker>();
    let me = Party::new("Bench", PublicKey([9; 32]));
    let config = NodeConfig {
        max_steps_per_batch: usize::MAX,
        ..NodeConfig::default()
    };
    let core = NodeCore::open(
        me,
        store.clone(),
        registry,
        Box::new(OsIds),
        Box::new(OsIds),
        config,
        now,
    )
    .expect("open node");
    (core, store)
}

fn ticker(every_ms: u64) -> NewFlow {
    NewFlow::new(&Ticker {
        every_ms,
        wakes: 0,
        pad: serde_bytes::ByteBuf::from(vec![0u8; 64]),
    })
    .expect("encode")
}

/// Runs `rounds` group commits of `batch` ticker steps each; returns steps/s,
/// seconds per commit, and the size of one stored checkpoint record (what
/// the raw side then writes).
fn group_commit(batch: usize, rounds: u32, options: RedbOptions) -> (f64, f64, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut core, store) = node(&dir.path().join("node.redb"), options, Timestamp(0));
    for _ in 0..batch {
        core.start(Timestamp(0), ticker(1), None).expect("start");
    }
    core.tick(Timestamp(0)).expect("first steps");
    let start = Instant::now();
    for r in 1..=rounds {
        core.tick(Timestamp(u64::from(r))).expect("tick");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let steps = batch as f64 * f64::from(rounds);
    let record = store
        .range(&Table::CHECKPOINTS, &[], None, 1)
        .expect("read a checkpoint")
        .first()
        .map_or(0, |(_, v)| v.len());
    (steps / elapsed, elapsed / f64::from(rounds), record)
}

/// Raw redb: `rounds` durable transactions, each inserting `batch` values of
/// `value_len` bytes at random 64-bit keys (like run ids), the same keys
/// every round (like the flows' checkpoints being replaced).
fn raw_redb(batch: usize, rounds: u32, options: RedbOptions, value_len: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("raw.redb"), options).expect("open");
    let value = vec![1u8; value_len];
    let keys: Vec<u64> = (0..batch).map(|_| rand::random()).collect();
    // The node's first round inserted its checkpoints; the timed rounds
    // replace them. Do the same here.
    let mut w = WriteBatch::default();
    for k in &keys {
        w.put(Table::CHECKPOINTS, k.to_be_bytes().to_vec(), value.clone());
    }
    store.commit(w).expect("commit");
    let start = Instant::now();
    for _ in 0..rounds {
        let mut w = WriteBatch::default();
        for k in &keys {
            w.put(Table::CHECKPOINTS, k.to_be_bytes().to_vec(), value.clone());
        }
        store.commit(w).expect("commit");
    }
    let elapsed = start.elapsed().as_secs_f64();
    batch as f64 * f64::from(rounds) / elapsed
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The process's peak RSS (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A responder that echoes every `u32` it receives (waits on its session
/// between messages): the million suspended flows.
#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    session: FlowSession,
    started: bool,
}

impl Flow for Echo {
    type Output = ();
    const NAME: &'static str = "bench::echo";
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 1;
    fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<()> {
        if self.started {
            let n = match rt::complete_receive::<u32>(ctx, event).and_then(|u| u.validate(Ok)) {
                Ok(n) => n,
                Err(e) => return Step::Done(Err(e)),
            };
            if let Err(e) = self.session.send(&n) {
                return Step::Done(Err(e));
            }
        }
        self.started = true;
        match rt::start_receive(self.session.receive::<u32>(), ctx) {
            Some(Err(e)) => Step::Done(Err(e)),
            _ => Step::Suspended,
        }
    }
    fn state_name(&self) -> &'static str {
        "AwaitNumber"
    }
}

/// The peer that opened the sessions (only its frames exist).
fn peer() -> Party {
    Party::new("Peer", PublicKey([7; 32]))
}

fn echo_node(path: &std::path::Path, options: RedbOptions) -> (NodeCore, Arc<RedbStore>) {
    let store = Arc::new(RedbStore::open(path, options).expect("open store"));
    let mut registry = Registry::new();
    registry.register_responder::<HandwrittenPing, _>(|session| Echo {
        session,
        started: false,
    });
    let core = NodeCore::open(
        Party::new("Bench", PublicKey([9; 32])),
        store.clone(),
        registry,
        Box::new(OsIds),
        Box::new(OsIds),
        NodeConfig {
            max_steps_per_batch: usize::MAX,
            ..NodeConfig::default()
        },
        Timestamp(1),
    )
    .expect("open node");
    (core, store)
}

fn frame(session: u64, seq: u64, body: Body) -> (PublicKey, Vec<u8>) {
    let msg = WireMessage::Session {
        session,
        from_initiator: true,
        seq,
        body,
    };
    (*peer().key(), msg.encode().expect("encode frame"))
}

/// Child process 1: creates `n` suspended responders (the peer's `Init`s
/// delivered in big group commits, not fsynced, then one durable commit),
/// reports, and waits to be killed.
fn child_load(path: &std::path::Path, n: u64) {
    let t = Instant::now();
    let load = RedbOptions {
        durable: false,
        ..RedbOptions::default()
    };
    let (mut core, store) = echo_node(path, load);
    let chunk = 50_000u64;
    let mut next = 1u64;
    while next <= n {
        let last = (next + chunk - 1).min(n);
        let frames = (next..=last)
            .map(|session| {
                frame(
                    session,
                    0,
                    Body::Init {
                        flow: HandwrittenPing::NAME.into(),
                        version: HandwrittenPing::VERSION,
                        initiator: peer(),
                    },
                )
            })
            .collect();
        core.deliver(Timestamp(1), frames).expect("deliver inits");
        next = last + 1;
    }
    // One durable commit (with quick repair) makes all of it crash-safe.
    store.sync().expect("sync");
    let in_flight = core.flows_in_flight().expect("count");
    println!(
        "  loaded {in_flight} suspended flows in {:.1} s (RSS while loading: peak {:.0} MB)",
        t.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
    println!("READY");
    // The parent kills this process: a crash, the database is never closed.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Child process 2: reopens the crashed node and processes one message for
/// one of the suspended flows.
fn child_restart(path: &std::path::Path, n: u64) {
    let t = Instant::now();
    let (mut core, _store) = echo_node(path, RedbOptions::default());
    let opened = t.elapsed();
    let target = n / 2 + 1;
    let payload = Payload::encode(&41u32).expect("encode");
    let out = core
        .deliver(Timestamp(2), vec![frame(target, 1, Body::Data(payload))])
        .expect("first message");
    let first = t.elapsed();
    let echoed = out.frames.iter().any(|(to, bytes)| {
        to == peer().key()
            && matches!(
                WireMessage::decode(bytes),
                Ok(WireMessage::Session {
                    body: Body::Data(_),
                    ..
                })
            )
    });
    assert!(echoed, "the flow did not answer the first message");
    println!(
        "  restart after kill -9: open {:.1} ms, first message processed and committed {:.1} ms after start; RSS {:.1} MB (peak {:.1} MB)",
        opened.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        rss_mb(),
        peak_rss_mb()
    );
    let t = Instant::now();
    let slow = core
        .warn_long_waits(Timestamp(2), Duration::ZERO)
        .expect("long-wait scan");
    println!(
        "  long-wait scan over {} waiting flows: {:.0} ms (peak RSS now {:.1} MB)",
        slow.len(),
        t.elapsed().as_secs_f64() * 1e3,
        peak_rss_mb()
    );
}

/// Runs `FLOW_BENCH_CHILD` phases in child processes for each size in
/// `FLOW_BENCH_FLOWS` (default `10000,1000000`).
fn million() {
    let sizes: Vec<u64> = std::env::var("FLOW_BENCH_FLOWS")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let exe = std::env::current_exe().expect("own path");
    for n in sizes {
        println!("{n} suspended flows:");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.redb");
        let mut load = Command::new(&exe)
            .env("FLOW_BENCH_CHILD", "load")
            .env("FLOW_BENCH_PATH", &path)
            .env("FLOW_BENCH_N", n.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn loader");
        let stdout = load.stdout.take().expect("loader stdout");
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("loader output");
            if line == "READY" {
                break;
            }
            println!("{line}");
        }
        load.kill().expect("kill the loader"); // SIGKILL: a crash
        let _ = load.wait();
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        println!("  database file {:.0} MB", size as f64 / 1e6);
        let status = Command::new(&exe)
            .env("FLOW_BENCH_CHILD", "restart")
            .env("FLOW_BENCH_PATH", &path)
            .env("FLOW_BENCH_N", n.to_string())
            .status()
            .expect("run restart");
        assert!(status.success(), "restart phase failed");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes bench binaries with --list
    }
    if let Ok(phase) = std::env::var("FLOW_BENCH_CHILD") {
        let path = std::path::PathBuf::from(std::env::var("FLOW_BENCH_PATH").expect("path"));
        let n: u64 = std::env::var("FLOW_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("FLOW_BENCH_N");
        match phase.as_str() {
            "load" => child_load(&path, n),
            _ => child_restart(&path, n),
        }
        return;
    }
    if std::env::var("FLOW_BENCH_MILLION").is_ok() {
        million();
        return;
    }
    let batches: Vec<usize> = std::env::var("FLOW_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,10,100,1000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let modes = std::env::var("FLOW_BENCH_MODES").unwrap_or_else(|_| "qr,noqr,nosync".into());
    for mode in modes.split(',') {
        let (options, title) = match mode.trim() {
            "qr" => (
                RedbOptions::default(),
                "durable commits, quick_repair = true (the default)",
            ),
            "noqr" => (
                RedbOptions {
                    quick_repair: false,
                    ..RedbOptions::default()
                },
                "durable commits, quick_repair = false",
            ),
            "nosync" => (
                RedbOptions {
                    durable: false,
                    ..RedbOptions::default()
                },
                "no fsync (CPU cost only, not a durability setting to use)",
            ),
            other => {
                eprintln!("unknown FLOW_BENCH_MODES entry {other:?} (qr, noqr, nosync)");
                continue;
            }
        };
        println!("{title}");
        println!(
            "{:>6} {:>16} {:>16} {:>7} {:>14} {:>8}",
            "batch", "node steps/s", "raw inserts/s", "ratio", "ms per commit", "record"
        );
        for &batch in &batches {
            let rounds = match batch {
                0..=1 => 200,
                2..=10 => 100,
                11..=100 => 50,
                _ => 10,
            };
            let (steps, per_commit, record) = group_commit(batch, rounds, options);
            let raw = raw_redb(batch, rounds, options, record);
            println!(
                "{batch:>6} {steps:>16.0} {raw:>16.0} {:>7.2} {:>14.3} {record:>7}B",
                steps / raw,
                per_commit * 1e3
            );
            if batch == 1 {
                println!("       (single-step latency: {:.3} ms)", per_commit * 1e3);
            }
        }
    }
}
