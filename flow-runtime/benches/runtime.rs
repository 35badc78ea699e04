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
//!   The two sides run alternately, `FLOW_BENCH_TRIALS` times (default 7);
//!   each trial gives a ratio, and the median is reported with the range.
//! * single-step latency: N = 1.
//! * `FLOW_BENCH_MILLION=1`: for 10,000 and 1,000,000 suspended flows
//!   (`FLOW_BENCH_FLOWS=a,b` to choose), a child process creates them
//!   (responders waiting for a message) and is killed with SIGKILL; a second
//!   child reopens the node, processes one message for one of them, and
//!   reports the time from start to that step's commit and its RSS.
//!   `FLOW_BENCH_QUICK_REPAIR=0` does the same without quick repair (the
//!   reopening then runs redb's full repair).
//! * the node records its metrics into a Prometheus registry, as the
//!   runner's nodes do; `FLOW_BENCH_METRICS=0` turns that off.
//! * `FLOW_BENCH_BATCHES=1,1000` picks the group-commit batch sizes,
//!   `FLOW_BENCH_MODES=qr,noqr,nosync,pg` the stores: redb durable with
//!   quick repair (the default), durable without, and no fsync at all (which
//!   shows the CPU cost per step against raw redb's); `pg` is the
//!   PostgreSQL store on a throwaway local server with the server's durable
//!   defaults (fsync, `synchronous_commit = on`), compared with raw commits
//!   of the same values through the same store. Each store call of the
//!   PostgreSQL store is one round trip to the server: the `reads/commit`
//!   column (plus the commit itself) is the round trips per commit.

use flow_runtime::__private as rt;
use flow_runtime::engine::OsIds;
use flow_runtime::engine::{Body, WireMessage};
use flow_runtime::engine::{NewFlow, Registry};
use flow_runtime::prelude::*;
use flow_runtime::storage::{
    PostgresOptions, PostgresStore, RedbOptions, RedbStore, StorageCounters, Store, Table,
    TimedStore, WriteBatch,
};
use flow_runtime::testing::HandwrittenPing;
use flow_runtime::testing::TestPostgres;
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

/// A ticker node on a fresh database at `path`; its store counts into the
/// returned counters (which split the node's time into the store's commit,
/// redb's work and fsync, and the rest).
fn node(inner: Arc<dyn Store>, now: Timestamp) -> (NodeCore, Arc<dyn Store>, Arc<StorageCounters>) {
    let counters = Arc::new(StorageCounters::default());
    let store = Arc::new(TimedStore::new(inner.clone(), counters.clone()));
    let mut registry = Registry::new();
    registry.register_flow::<Ticker>();
    let me = Party::new("Bench", PublicKey([9; 32]));
    let config = NodeConfig {
        max_steps_per_batch: usize::MAX,
        ..NodeConfig::default()
    };
    let mut core = NodeCore::open(
        me,
        store.clone(),
        registry,
        Box::new(OsIds),
        Box::new(OsIds),
        config,
        now,
    )
    .expect("open node");
    record_metrics(&mut core);
    (core, inner, counters)
}

/// The store a group-commit comparison runs on.
#[derive(Clone, Copy)]
enum Backend<'a> {
    Redb(RedbOptions),
    Postgres(&'a TestPostgres),
}

impl Backend<'_> {
    /// A new, empty store (a file in `dir`, or a fresh schema).
    fn open(&self, dir: &std::path::Path, name: &str) -> Arc<dyn Store> {
        match self {
            Backend::Redb(options) => Arc::new(
                RedbStore::open(&dir.join(format!("{name}.redb")), *options).expect("open redb"),
            ),
            Backend::Postgres(server) => Arc::new(
                PostgresStore::open(&server.fresh_schema(), PostgresOptions::default())
                    .expect("open PostgreSQL"),
            ),
        }
    }
}

/// Records the node's metrics into a Prometheus registry, as every node the
/// runner starts does (`FLOW_BENCH_METRICS=0`: into nothing, to measure
/// what recording costs).
fn record_metrics(core: &mut NodeCore) {
    if std::env::var("FLOW_BENCH_METRICS").as_deref() != Ok("0") {
        core.set_metrics(flow_runtime::runner::admin::NodeMetrics::new().core());
    }
}

fn ticker(every_ms: u64) -> NewFlow {
    NewFlow::new(&Ticker {
        every_ms,
        wakes: 0,
        pad: serde_bytes::ByteBuf::from(vec![0u8; 64]),
    })
    .expect("encode")
}

/// The node side of the group-commit comparison: `batch` tickers, all due
/// every millisecond, so one `tick` steps every one of them in one commit.
struct NodeSide {
    core: NodeCore,
    store: Arc<dyn Store>,
    storage: Arc<StorageCounters>,
    now: u64,
    _dir: tempfile::TempDir,
}

impl NodeSide {
    fn new(batch: usize, backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut core, store, storage) = node(backend.open(dir.path(), "node"), Timestamp(0));
        let flows = (0..batch).map(|_| (ticker(1), None)).collect();
        core.start_many(Timestamp(0), flows).expect("start");
        core.tick(Timestamp(0)).expect("first steps");
        Self {
            core,
            store,
            storage,
            now: 0,
            _dir: dir,
        }
    }

    /// Seconds taken by `rounds` more group commits, the part of them
    /// spent in the store's commit, and the store reads per commit.
    fn run(&mut self, rounds: u32) -> (f64, f64, f64) {
        let before = self.storage.snapshot();
        let start = Instant::now();
        for _ in 0..rounds {
            self.now += 1;
            self.core.tick(Timestamp(self.now)).expect("tick");
        }
        let done = self.storage.snapshot().since(&before);
        (
            start.elapsed().as_secs_f64(),
            done.commit_nanos as f64 * 1e-9,
            done.reads as f64 / done.commits.max(1) as f64,
        )
    }

    /// The size of one stored checkpoint record (what the raw side writes).
    fn record_len(&self) -> usize {
        self.store
            .range(&Table::CHECKPOINTS, &[], None, 1)
            .expect("read a checkpoint")
            .first()
            .map_or(0, |(_, v)| v.len())
    }
}

/// The raw store: transactions, each inserting `batch` values of the
/// node's record length at random 64-bit keys (like run ids), the same keys
/// every round (like the flows' checkpoints being replaced).
struct RawSide {
    store: Arc<dyn Store>,
    keys: Vec<u64>,
    value: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl RawSide {
    fn new(batch: usize, backend: Backend, value_len: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = backend.open(dir.path(), "raw");
        let mut raw = Self {
            store,
            keys: (0..batch).map(|_| rand::random()).collect(),
            value: vec![1u8; value_len],
            _dir: dir,
        };
        // The node's first round inserted its checkpoints; the timed rounds
        // replace them. Do the same here.
        raw.run(1);
        raw
    }

    /// Seconds taken by `rounds` more commits.
    fn run(&mut self, rounds: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..rounds {
            let mut w = WriteBatch::default();
            for k in &self.keys {
                w.put(
                    Table::CHECKPOINTS,
                    k.to_be_bytes().to_vec(),
                    self.value.clone(),
                );
            }
            self.store.commit(w).expect("commit");
        }
        start.elapsed().as_secs_f64()
    }
}

/// One batch size's comparison: medians over `trials` alternating runs.
struct GroupCommit {
    node_steps_per_s: f64,
    raw_inserts_per_s: f64,
    /// Median, lowest and highest per-trial ratio node / raw.
    ratio: (f64, f64, f64),
    secs_per_commit: f64,
    /// Median share of the node's time spent inside the store's commit.
    store_share: f64,
    /// Median store reads per commit.
    reads_per_commit: f64,
    record_len: usize,
}

/// Runs the node and raw redb alternately, `trials` times `rounds` commits
/// of `batch` each, and compares them trial by trial: the two sides see the
/// same machine (load, disk) within a trial, and the median ratio is robust
/// against a trial that a noisy neighbour spoiled.
fn group_commit(batch: usize, rounds: u32, trials: usize, backend: Backend) -> GroupCommit {
    let mut node = NodeSide::new(batch, backend);
    let record_len = node.record_len();
    let mut raw = RawSide::new(batch, backend, record_len);
    let steps = batch as f64 * f64::from(rounds);
    let mut node_rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut store_shares = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..trials {
        let (node_secs, store_secs, reads_per_commit) = node.run(rounds);
        store_shares.push(store_secs / node_secs);
        reads.push(reads_per_commit);
        let node_rate = steps / node_secs;
        let raw_rate = steps / raw.run(rounds);
        node_rates.push(node_rate);
        raw_rates.push(raw_rate);
        ratios.push(node_rate / raw_rate);
    }
    let node_steps_per_s = median(&mut node_rates);
    GroupCommit {
        node_steps_per_s,
        raw_inserts_per_s: median(&mut raw_rates),
        ratio: (
            median(&mut ratios),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        ),
        secs_per_commit: batch as f64 / node_steps_per_s,
        store_share: median(&mut store_shares),
        reads_per_commit: median(&mut reads),
        record_len,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
            // Every suspended flow is a responder to the one peer: past the
            // default bound its initiations would be deferred, not loaded.
            max_responders_per_peer: u32::MAX,
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
        quick_repair: quick_repair_from_env(),
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
                        created_at: Some(1),
                    },
                )
            })
            .collect();
        core.deliver(Timestamp(1), frames).expect("deliver inits");
        next = last + 1;
    }
    // One durable commit (with quick repair unless turned off) makes all
    // of it crash-safe.
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

/// `FLOW_BENCH_QUICK_REPAIR=0`: the loaded database's last durable commit
/// is made without quick repair, so reopening after the kill runs redb's
/// full repair (the other side of the trade-off in docs/performance.md).
fn quick_repair_from_env() -> bool {
    std::env::var("FLOW_BENCH_QUICK_REPAIR").as_deref() != Ok("0")
}

/// Child process 2: reopens the crashed node and processes one message for
/// one of the suspended flows.
fn child_restart(path: &std::path::Path, n: u64) {
    let t = Instant::now();
    let options = RedbOptions {
        quick_repair: quick_repair_from_env(),
        ..RedbOptions::default()
    };
    let (mut core, _store) = echo_node(path, options);
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
    let trials: usize = std::env::var("FLOW_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
        .max(1);
    let modes = std::env::var("FLOW_BENCH_MODES").unwrap_or_else(|_| "qr,noqr,nosync,pg".into());
    // Started on first use, stopped when the benchmark ends.
    let mut postgres: Option<TestPostgres> = None;
    for mode in modes.split(',') {
        let (backend, title) = match mode.trim() {
            "qr" => (
                Backend::Redb(RedbOptions::default()),
                "redb, durable commits, quick_repair = true (the default)",
            ),
            "noqr" => (
                Backend::Redb(RedbOptions {
                    quick_repair: false,
                    ..RedbOptions::default()
                }),
                "redb, durable commits, quick_repair = false",
            ),
            "nosync" => (
                Backend::Redb(RedbOptions {
                    durable: false,
                    ..RedbOptions::default()
                }),
                "redb, no fsync (CPU cost only, not a durability setting to use)",
            ),
            "pg" => {
                if postgres.is_none() {
                    match TestPostgres::start(true) {
                        Ok(server) => postgres = Some(server),
                        Err(e) => {
                            println!("PostgreSQL: skipped ({e})");
                            continue;
                        }
                    }
                }
                let Some(server) = postgres.as_ref() else {
                    continue;
                };
                (
                    Backend::Postgres(server),
                    "PostgreSQL store, local server, durable (fsync, synchronous_commit = on); raw = the same store's commits",
                )
            }
            other => {
                eprintln!("unknown FLOW_BENCH_MODES entry {other:?} (qr, noqr, nosync, pg)");
                continue;
            }
        };
        println!("{title}");
        println!(
            "{:>6} {:>14} {:>14} {:>7} {:>13} {:>14} {:>9} {:>13} {:>7}",
            "batch",
            "node steps/s",
            "raw inserts/s",
            "ratio",
            "(min-max)",
            "ms per commit",
            "in store",
            "reads/commit",
            "record"
        );
        for &batch in &batches {
            // Each side runs about 50-200 ms per trial.
            let rounds = match batch {
                0..=1 => 200,
                2..=10 => 100,
                11..=100 => 60,
                _ => 30,
            };
            let g = group_commit(batch, rounds, trials, backend);
            let per_commit = g.secs_per_commit;
            println!(
                "{batch:>6} {:>14.0} {:>14.0} {:>7.2} {:>13} {:>14.3} {:>8.0}% {:>13.1} {:>6}B",
                g.node_steps_per_s,
                g.raw_inserts_per_s,
                g.ratio.0,
                format!("({:.2}-{:.2})", g.ratio.1, g.ratio.2),
                per_commit * 1e3,
                g.store_share * 100.0,
                g.reads_per_commit,
                g.record_len
            );
            if batch == 1 {
                println!("       (single-step latency: {:.3} ms)", per_commit * 1e3);
            }
        }
    }
}
