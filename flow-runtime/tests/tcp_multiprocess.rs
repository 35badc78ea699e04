//! Three node processes on 127.0.0.1 (the `flow-ping-node` binary): Alice
//! runs 1,000-round pings to Bob and to Carol in several concurrent flows.
//! Bob is killed with SIGKILL mid-run and started again from his database;
//! then Alice herself is killed mid-run and started again with the same
//! arguments (her flows are found again by client id). Every flow must
//! finish with the exact sum: a message lost, duplicated or processed twice
//! would make a ping fail with "wrong echo" or hang.
//!
//! Takes ~10-60 s depending on the disk's fsync latency (every step is a
//! durable commit); limited to two minutes.

#![cfg(unix)]

mod tcp_common;

use std::path::Path;
use std::time::{Duration, Instant};
use tcp_common::{NodeProcess, write_nodes};

const ROUNDS: u64 = 1000;
const FLOWS_PER_PEER: u32 = 3;
const LIMIT: Duration = Duration::from_secs(120);

/// Waits until `log` holds `needle` `times` times.
fn wait_for_log(log: &Path, needle: &str, times: usize, deadline: Instant) {
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` not logged {times} times; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of the first `<prefix>*.json` file in `dir`.
fn wait_for_dump(dir: &Path, prefix: &str, deadline: Instant, log: &Path) -> String {
    loop {
        let found = std::fs::read_dir(dir).unwrap().flatten().find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(".json")
        });
        if let Some(entry) = found {
            return std::fs::read_to_string(entry.path()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no dump file `{prefix}*.json`; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_processes_survive_sigkill_mid_run_with_exactly_once_results() {
    let started = Instant::now();
    let deadline = started + LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let files = write_nodes(
        dir.path(),
        &["Alice", "Bob", "Carol"],
        "\n[store]\nquick_repair = false\n",
    );
    let (alice_f, bob_f, carol_f) = (&files[0], &files[1], &files[2]);
    let ping_args = [
        "--ping",
        &format!("Bob={FLOWS_PER_PEER}"),
        "--ping",
        &format!("Carol={FLOWS_PER_PEER}"),
        "--rounds",
        &ROUNDS.to_string(),
    ]
    .map(|s| s.to_owned());
    let ping_args: Vec<&str> = ping_args.iter().map(String::as_str).collect();

    let mut bob = NodeProcess::start(&bob_f.config, &[], &bob_f.log);
    let carol = NodeProcess::start(&carol_f.config, &[], &carol_f.log);
    let mut alice = NodeProcess::start(&alice_f.config, &ping_args, &alice_f.log);
    alice.wait_for("STARTED", deadline);

    // Kill Bob once his pongs are at round 300, then restart him.
    bob.wait_for("MARK 300", deadline);
    bob.sigkill();
    let mut bob = NodeProcess::start(&bob_f.config, &[], &bob_f.log);

    // An operator asks Carol for a dump mid-run: a complete JSON file
    // appears beside her database (its content is tested in memory_node).
    carol.signal("USR2");
    let dump = wait_for_dump(dir.path(), "Carol.redb.dump-", deadline, &carol_f.log);
    let flows: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert!(flows.is_array(), "{dump}");

    // Kill Alice once Bob's pongs are at round 600, then restart her with
    // the same arguments: she finds her flows again by client id.
    bob.wait_for("MARK 600", deadline);
    alice.sigkill();
    let mut alice = NodeProcess::start(&alice_f.config, &ping_args, &alice_f.log);
    alice.wait_for("STARTED", deadline);

    let expected = ROUNDS * (ROUNDS - 1) / 2;
    let mut results = Vec::new();
    for _ in 0..2 * FLOWS_PER_PEER {
        let line = alice.wait_for("", deadline);
        assert!(
            line.starts_with("RESULT "),
            "a ping failed: {line}; Alice's log:\n{}",
            std::fs::read_to_string(&alice_f.log).unwrap_or_default()
        );
        results.push(line);
    }
    results.sort();
    for (line, peer_i) in results.iter().zip(
        ["Bob", "Carol"]
            .iter()
            .flat_map(|p| (0..FLOWS_PER_PEER).map(move |i| format!("ping-{p}-{i}"))),
    ) {
        assert_eq!(line, &format!("RESULT {peer_i} {expected}"));
    }
    alice.wait_for("DONE", deadline);
    assert!(alice.wait().success(), "Alice exited with an error");

    // The responders stop cleanly on SIGTERM.
    for (p, f) in [(bob, bob_f), (carol, carol_f)] {
        let status = p.sigterm();
        assert!(
            status.success(),
            "{} did not exit cleanly: {status}",
            f.config.display()
        );
        let log = std::fs::read_to_string(&f.log).unwrap();
        assert!(
            log.contains("signal=\"SIGTERM\"") || log.contains("signal=SIGTERM"),
            "{log}"
        );
        assert!(log.contains("node stopped"), "{log}");
    }
    assert!(started.elapsed() < LIMIT);
    eprintln!("multi-process run took {:?}", started.elapsed());
}

/// An operator drains Bob with SIGUSR1 (Alice's ping is refused), then
/// changes their mind and undrains him with SIGHUP, no code involved:
/// Carol's ping is answered.
#[test]
fn sighup_stops_the_draining_sigusr1_started() {
    let deadline = Instant::now() + LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let files = write_nodes(
        dir.path(),
        &["Alice", "Bob", "Carol"],
        "\n[store]\nquick_repair = false\n",
    );
    let (alice_f, bob_f, carol_f) = (&files[0], &files[1], &files[2]);
    let ping_args = ["--ping", "Bob=1", "--rounds", "3"];

    let bob = NodeProcess::start(&bob_f.config, &[], &bob_f.log);
    wait_for_log(&bob_f.log, "signals: SIGUSR1 starts draining", 1, deadline);
    bob.signal("USR1");
    wait_for_log(&bob_f.log, "draining started", 1, deadline);
    let mut alice = NodeProcess::start(&alice_f.config, &ping_args, &alice_f.log);
    let line = alice.wait_for("FAILED", deadline);
    assert!(line.contains("draining"), "{line}");
    assert!(!alice.wait().success());

    bob.signal("HUP");
    wait_for_log(&bob_f.log, "draining stopped", 1, deadline);
    let mut carol = NodeProcess::start(&carol_f.config, &ping_args, &carol_f.log);
    let line = carol.wait_for("", deadline);
    assert_eq!(line, "STARTED");
    let line = carol.wait_for("", deadline);
    assert_eq!(line, "RESULT ping-Bob-0 3");
    carol.wait_for("DONE", deadline);
    assert!(carol.wait().success());
    assert!(bob.sigterm().success());
}
