//! Durable-step benchmarks of the node (a bench binary; run with
//! `cargo bench -p flow-runtime --bench runtime`).
//!
//! * group commit: N flows each wake on a due timer and suspend again; one
//!   `tick` runs all N steps and commits them in ONE redb transaction
//!   (`Durability::Immediate`, quick repair as configured). Compared side
//!   by side with raw redb transactions inserting N values of the same size
//!   (the flows' checkpoint bytes), same durability settings: the ratio is
//!   the figure that counts.
//! * single-step latency: N = 1.
//! * `FLOW_BENCH_MILLION=1`: RSS with 1,000,000 suspended flows on one node,
//!   and the time to reopen that node after a crash (the database is leaked,
//!   not closed) and run the first step.

use flow_runtime::__private as rt;
use flow_runtime::node::OsIds;
use flow_runtime::prelude::*;
use flow_runtime::registry::{NewFlow, Registry};
use flow_runtime::store::{RedbOptions, RedbStore, Store, Table, WriteBatch};
use flow_runtime::{Event, NodeConfig, NodeCore, Step, Timestamp};
use serde::{Deserialize, Serialize};
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

fn group_commit(batch: usize, rounds: u32, options: RedbOptions) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut core, _) = node(&dir.path().join("node.redb"), options, Timestamp(0));
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
    (steps / elapsed, elapsed / f64::from(rounds))
}

fn checkpoint_size() -> usize {
    rmp_serde::to_vec(&Ticker {
        every_ms: 1,
        wakes: 1,
        pad: serde_bytes::ByteBuf::from(vec![0u8; 64]),
    })
    .map(|v| v.len() + 60) // + the record envelope (name, fingerprint, wait...)
    .unwrap_or(0)
}

fn raw_redb(batch: usize, rounds: u32, options: RedbOptions) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("raw.redb"), options).expect("open");
    let value = vec![1u8; checkpoint_size()];
    let keys: Vec<u64> = (0..batch).map(|_| rand::random()).collect();
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

fn million() {
    let n: usize = std::env::var("FLOW_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("million.redb");
    let load = RedbOptions {
        durable: false,
        ..RedbOptions::default()
    };
    let t = Instant::now();
    {
        let (mut core, store) = node(&path, load, Timestamp(0));
        let mut started = 0;
        while started < n {
            let chunk = (n - started).min(10_000);
            for _ in 0..chunk {
                core.start(Timestamp(0), ticker(3_600_000_000), None)
                    .expect("start");
            }
            core.tick(Timestamp(0)).expect("first steps");
            started += chunk;
        }
        store.sync().expect("sync");
        println!(
            "loaded {n} suspended flows in {:.1} s; RSS {:.0} MB",
            t.elapsed().as_secs_f64(),
            rss_mb()
        );
        // Crash: never close the database.
        std::mem::forget(core);
        std::mem::forget(store);
    }
    let before = rss_mb();
    let t = Instant::now();
    let (mut core, _) = node(&path, RedbOptions::default(), Timestamp(1));
    let opened = t.elapsed();
    core.start(Timestamp(1), ticker(1), None).expect("start");
    let out = core.tick(Timestamp(1)).expect("first step");
    let first = t.elapsed();
    println!(
        "restart after crash with {n} suspended flows: open {:.1} ms, first step committed after {:.1} ms ({} finished); RSS of the reopened node {:.0} MB (process, incl. the leaked first instance: {:.0} MB before reopening)",
        opened.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        out.finished.len(),
        rss_mb() - before,
        before
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes bench binaries with --list
    }
    if std::env::var("FLOW_BENCH_MILLION").is_ok() {
        million();
        return;
    }
    for quick_repair in [true, false] {
        let options = RedbOptions {
            quick_repair,
            ..RedbOptions::default()
        };
        println!("durable commits, quick_repair = {quick_repair}");
        println!(
            "{:>6} {:>16} {:>16} {:>7} {:>14}",
            "batch", "node steps/s", "raw inserts/s", "ratio", "ms per commit"
        );
        for (batch, rounds) in [(1usize, 200u32), (10, 100), (100, 50), (1000, 10)] {
            let (steps, per_commit) = group_commit(batch, rounds, options);
            let raw = raw_redb(batch, rounds, options);
            println!(
                "{batch:>6} {steps:>16.0} {raw:>16.0} {:>7.2} {:>14.3}",
                steps / raw,
                per_commit * 1e3
            );
        }
    }
}
