//! The `trade-demo` binary in its default mode: three node processes over
//! TCP, a small number of trades, the buyer killed with SIGKILL mid-run and
//! restarted, the deliberate double spend, and the reconciliation. Runs the
//! built binary as a user would and checks its exit status and summary.
//!
//! Takes a few seconds (every step is an fsync'ed commit on a real file);
//! the demo's own `--timeout-secs` bounds it.

#![cfg(unix)]

use std::process::Command;

const DEMO: &str = env!("CARGO_BIN_EXE_trade-demo");

/// The value printed after `label` on its summary line.
fn field<'a>(stdout: &'a str, label: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
}

#[test]
fn three_processes_trade_survive_a_sigkill_and_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("demo");
    let out = Command::new(DEMO)
        .args(["--trades", "16", "--quiet", "--timeout-secs", "90", "--dir"])
        .arg(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: String = ["notary", "seller", "buyer"]
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(files.join(format!("{n}.log"))).unwrap_or_default();
            format!("--- {n}.log\n{log}")
        })
        .collect();
    assert!(
        out.status.success(),
        "trade-demo failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\n{logs}",
        out.status
    );
    assert_eq!(
        field(&stdout, "trades completed"),
        Some("16 / 16"),
        "{stdout}"
    );
    assert_eq!(
        field(&stdout, "node restarts (crash)"),
        Some("1"),
        "{stdout}"
    );
    assert_eq!(
        field(&stdout, "rejected double spends"),
        Some("1"),
        "{stdout}"
    );
    assert_eq!(
        field(&stdout, "seller vault"),
        Some("14400.00 USD cash, 0 papers, 0 locked"),
        "{stdout}"
    );
    assert_eq!(
        field(&stdout, "buyer vault"),
        Some("0.00 USD cash, 16 papers, 0 locked"),
        "{stdout}"
    );
    assert!(
        field(&stdout, "reconciliation").is_some_and(|r| r.starts_with("OK")),
        "{stdout}"
    );
    let tps: f64 = field(&stdout, "trades/s").unwrap().parse().unwrap();
    assert!(tps > 0.0, "{stdout}");

    // The buyer was killed mid-run: its process was started twice, and the
    // second start resumed flows from its database.
    assert!(
        stdout.contains("buyer killed with SIGKILL after"),
        "{stdout}"
    );
    let buyer_log = std::fs::read_to_string(files.join("buyer.log")).unwrap();
    let starts: Vec<&str> = buyer_log
        .lines()
        .filter(|l| l.contains("node started"))
        .collect();
    assert_eq!(starts.len(), 2, "{buyer_log}");
    assert!(!starts[1].contains("flows_in_flight=0"), "{buyer_log}");
    // Every node stopped cleanly at the end.
    for n in ["notary", "seller", "buyer"] {
        let log = std::fs::read_to_string(files.join(format!("{n}.log"))).unwrap();
        assert!(
            log.contains("node stopped"),
            "{n} did not stop cleanly:\n{log}"
        );
    }
}

#[test]
fn a_directory_with_old_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("seller.redb"), b"old").unwrap();
    let out = Command::new(DEMO)
        .args(["--trades", "2", "--quiet", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not empty"), "{stderr}");
}
