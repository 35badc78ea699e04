//! The `trade-bench` binary completes every trade it starts, also past the
//! node's default per-peer responder bound (256): its in-process cluster has
//! no redelivery tick to bring back initiations refused at that bound, so a
//! bench that kept the default would stop with trades still waiting.

use std::process::Command;

#[test]
fn trade_bench_completes_more_trades_than_the_default_responder_bound() {
    let out = Command::new(env!("CARGO_BIN_EXE_trade-bench"))
        .args(["--trades", "300", "--no-fsync"])
        .output()
        .expect("run trade-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "trade-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // "trades completed  N / M": the timed trades (all but a warm-up one).
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("trades completed"))
        .unwrap_or_else(|| panic!("no `trades completed` line in:\n{stdout}"));
    let counts: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{line}");
    assert_eq!(counts[0], counts[1], "{line}");
    assert!(counts[0] > 256, "{line}");
}
