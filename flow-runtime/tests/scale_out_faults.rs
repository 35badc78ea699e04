//! Scale-out under faults, as separate processes on 127.0.0.1 and a real
//! PostgreSQL server (skipped, saying so, where its binaries are missing):
//! Alice is a scale-out node (a gateway and two workers of the
//! `flow-ping-node` binary, 4 partitions, 1 s leases), Bob an ordinary node
//! on redb. A client queues pings from Alice to Bob; once Bob's pongs are
//! at round 300, one thing is killed:
//!
//! * a worker, with SIGKILL: the other takes its partitions over;
//! * the gateway, with SIGKILL, then started again;
//! * the PostgreSQL server (an immediate shutdown, as after a crash), then
//!   started again.
//!
//! Every ping must then finish with the exact sum of its rounds (a message
//! lost, duplicated or processed twice fails a ping with "wrong echo" or
//! hangs it), and the reconciliation reads every partition: one result per
//! client id, no flow left in flight. A few seconds each.

#![cfg(unix)]

mod tcp_common;

use flow_runtime::scale_out::Control;
use flow_runtime::testing::{TestPostgres, write_local_network};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tcp_common::NodeProcess;
use tcp_common::node_process::logs_in;
const ROUNDS: u64 = 400;
const FLOWS: u32 = 6;
const PARTITIONS: &str = "4";
const LEASE_MS: &str = "1000";
const LIMIT: Duration = Duration::from_secs(60);

/// Keys, the network map and configs: Alice on PostgreSQL (`connection`),
/// Bob on redb.
fn setup(dir: &Path, connection: &str) -> (PathBuf, PathBuf) {
    let sections = |name: &str| {
        let store = if name == "Alice" {
            format!("[store]\nkind = \"postgres\"\nconnection = \"{connection}\"\n")
        } else {
            "[store]\nquick_repair = false\n".to_owned()
        };
        format!(
            "[transport]\nbackoff_min_ms = 20\nbackoff_max_ms = 250\n\n\
             [node]\nredelivery_interval_ms = 300\n\n{store}"
        )
    };
    let mut nodes = write_local_network(dir, &["Alice", "Bob"], sections).unwrap();
    let bob = nodes.pop().unwrap();
    let alice = nodes.pop().unwrap();
    (alice.config, bob.config)
}

/// What is killed once Bob's pongs are at round 300.
enum Fault {
    Worker,
    Gateway,
    Database,
}

fn worker_args(name: &str) -> Vec<String> {
    [
        "--worker",
        name,
        "--partitions",
        PARTITIONS,
        "--lease-ms",
        LEASE_MS,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn gateway_args() -> Vec<String> {
    ["--gateway", "--partitions", PARTITIONS]
        .map(str::to_owned)
        .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Waits until both workers hold partitions (the fair share settled).
fn wait_for_balance(connection: &str, deadline: Instant, dir: &Path) {
    let mut control = Control::connect(connection, 4).unwrap();
    loop {
        let status = control.status().unwrap();
        let holders = status.partitions_by_worker();
        if holders.len() == 2 && holders.values().all(|n| *n == 2) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not share the partitions: {holders:?}; logs:\n{}",
            logs_in(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(fault: Fault) {
    let own_server;
    let server = match fault {
        // Restarting the server must not disturb the other tests' server;
        // and it must be durable (`synchronous_commit` on): a crash of a
        // server that answers commits before they are in its WAL loses
        // steps whose messages already left the node.
        Fault::Database => match flow_runtime::testing::postgres_binaries() {
            None => None,
            Some(_) => {
                own_server = TestPostgres::start(true).unwrap();
                Some(&own_server)
            }
        },
        _ => TestPostgres::shared(),
    };
    let Some(server) = server else {
        eprintln!("SKIPPED on PostgreSQL: no PostgreSQL binaries on this machine");
        return;
    };
    let started = Instant::now();
    let deadline = started + LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let connection = server.fresh_schema();
    let (alice, bob_config) = setup(dir.path(), &connection);
    let d = dir.path();

    let mut bob = NodeProcess::start(&bob_config, &[], &d.join("Bob.log"));
    let mut gateway = NodeProcess::start(&alice, &strs(&gateway_args()), &d.join("gateway.log"));
    gateway.wait_for("GATEWAY", deadline);
    let w1 = NodeProcess::start(&alice, &strs(&worker_args("w1")), &d.join("w1.log"));
    let w2 = NodeProcess::start(&alice, &strs(&worker_args("w2")), &d.join("w2.log"));
    wait_for_balance(&connection, deadline, d);
    let held_by_w1: Vec<(u32, i64)> = {
        let mut control = Control::connect(&connection, 4).unwrap();
        let status = control.status().unwrap();
        status
            .leases
            .iter()
            .filter(|l| l.holder.as_deref() == Some("w1"))
            .map(|l| (l.partition, l.token))
            .collect()
    };

    let client_args = [
        "--scale-out-ping".to_owned(),
        format!("Bob={FLOWS}"),
        "--rounds".to_owned(),
        ROUNDS.to_string(),
        "--partitions".to_owned(),
        PARTITIONS.to_owned(),
    ];
    let mut client = NodeProcess::start(&alice, &strs(&client_args), &d.join("client.log"));
    client.wait_for("STARTED", deadline);
    bob.wait_for("MARK 300", deadline);
    let (w1, gateway) = match fault {
        Fault::Worker => {
            w1.sigkill();
            (None, Some(gateway))
        }
        Fault::Gateway => {
            gateway.sigkill();
            let mut again =
                NodeProcess::start(&alice, &strs(&gateway_args()), &d.join("gateway.log"));
            again.wait_for("GATEWAY", deadline);
            (Some(w1), Some(again))
        }
        Fault::Database => {
            server.restart().unwrap();
            (Some(w1), Some(gateway))
        }
    };

    let expected = ROUNDS * (ROUNDS - 1) / 2;
    let mut results = Vec::new();
    for _ in 0..FLOWS {
        let line = client.wait_for("", deadline);
        assert!(
            line.starts_with("RESULT "),
            "a ping failed: {line}; logs:\n{}",
            logs_in(d)
        );
        results.push(line);
    }
    results.sort();
    let wanted: Vec<String> = {
        let mut w: Vec<String> = (0..FLOWS)
            .map(|i| format!("RESULT ping-Bob-{i} {expected}"))
            .collect();
        w.sort();
        w
    };
    assert_eq!(results, wanted);
    client.wait_for("DONE", deadline);
    assert!(client.wait().success());

    // Reconciliation, from every partition: each client id finished once,
    // nothing in flight, no start request left.
    let mut control = Control::connect(&connection, 4).unwrap();
    let status = control.status().unwrap();
    let mut ids: Vec<String> = status
        .finished
        .iter()
        .filter_map(|f| f.client_id.clone())
        .collect();
    ids.sort();
    let mut want_ids: Vec<String> = (0..FLOWS).map(|i| format!("ping-Bob-{i}")).collect();
    want_ids.sort();
    assert_eq!(ids, want_ids, "one result per client id");
    assert_eq!(status.in_flight, 0, "no flow left in flight");
    assert_eq!(status.waiting_starts, 0);
    if let Fault::Worker = fault {
        // w2 took w1's partitions over, each with a new fencing token.
        for (p, token) in held_by_w1 {
            let lease = &status.leases[p as usize];
            assert_eq!(
                lease.holder.as_deref(),
                Some("w2"),
                "partition {p}: {lease:?}"
            );
            assert!(lease.token > token, "partition {p}: {lease:?}, was {token}");
        }
    }
    // Every frame the partitions received was consumed by a commit: the
    // inbox empties (rows of frames that changed nothing, duplicates, go
    // at the workers' next lease round).
    let mut status = status;
    while status.inbox > 0 {
        assert!(
            Instant::now() < deadline,
            "{} inbox rows were never consumed; logs:\n{}",
            status.inbox,
            logs_in(d)
        );
        std::thread::sleep(Duration::from_millis(50));
        status = control.status().unwrap();
    }
    eprintln!(
        "scale-out run took {:?}; outbox left (acks in flight): {}",
        started.elapsed(),
        status.outbox
    );
    for p in [Some(w2), w1, gateway, Some(bob)].into_iter().flatten() {
        let log = p.log().to_owned();
        assert!(
            p.sigterm().success(),
            "{} did not stop cleanly",
            log.display()
        );
    }
}

#[test]
fn a_worker_killed_mid_flow_is_taken_over_and_no_flow_is_lost_or_run_twice() {
    run(Fault::Worker);
}

#[test]
fn a_gateway_killed_mid_flow_and_started_again_loses_nothing() {
    run(Fault::Gateway);
}

#[test]
fn a_postgresql_restart_mid_flow_loses_nothing() {
    run(Fault::Database);
}
