//! Upgrading a node process with flows in flight, over TCP: Alice runs
//! build v1 of a seller flow with six sellers talking to Bob (three waiting
//! for Bob's quote, three for his last answer) and is killed with SIGKILL;
//! the next build starts on the same database.
//!
//! * With v2 and the state migration, every seller finishes on v2.
//! * With v2 and no migration, the pre-deploy check reports the six and
//!   exits 1, the node holds them in the hospital with the reason, and
//!   nothing is lost: the build with the migration, started next on the
//!   same database, frees them at start-up and they finish on v2.
//!
//! The builds are `upgrade-node --build v1|v2|v2-without-migration`
//! (tests/src/bin/upgrade-node.rs).

#![cfg(unix)]

use flow_runtime::testing::write_local_network;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_upgrade-node");
const SELLERS: u32 = 6;
/// Only a bound on a hung test: every wait ends on an event.
const PATIENCE: Duration = Duration::from_secs(90);

/// A running node process and its stdout lines.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(NODE)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line for which `pred` holds; panics on exit or after
    /// [`PATIENCE`].
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} in {PATIENCE:?}; output: {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the node ended before {what}; output: {:?}", self.seen)
                }
            }
        }
    }

    /// Every remaining line once the process has exited by itself.
    fn finish(mut self) -> Vec<String> {
        let status = self.child.wait().expect("the node is waited for");
        self.seen.extend(self.lines.iter());
        assert!(status.success(), "{status}; output: {:?}", self.seen);
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    alice: String,
    gate: PathBuf,
    bob: Running,
}

/// Bob running; Alice's v1 sellers started and killed with SIGKILL while
/// the even ones wait for their quote and the odd ones for the last answer.
fn sellers_in_flight_on_v1() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // Keys, configs and the network map of Alice and Bob.
    write_local_network(dir.path(), &["Alice", "Bob"], |_| String::new()).unwrap();
    let path = |f: &str| dir.path().join(f).display().to_string();
    let alice = path("Alice.toml");
    let gate = dir.path().join("gate");
    let bob = Running::start(&[
        "--config",
        &path("Bob.toml"),
        "--build",
        "v1",
        "--gate",
        &gate.display().to_string(),
    ]);
    let sell = format!("Bob={SELLERS}");
    let mut v1 = Running::start(&["--config", &alice, "--build", "v1", "--sell", &sell]);
    v1.wait_for("STARTED", |l| l == "STARTED");
    let odd = (SELLERS / 2).to_string();
    v1.wait_for("the odd sellers waiting for the last answer", |l| {
        l.strip_prefix("AWAITING_DONE ") == Some(odd.as_str())
    });
    v1.child.kill().expect("SIGKILL");
    v1.child.wait().unwrap();
    Setup {
        _dir: dir,
        alice,
        gate,
        bob,
    }
}

/// Runs `--check-upgrade` with `build`: (exit code, report).
fn check(alice: &str, build: &str) -> (Option<i32>, String) {
    let out = Command::new(NODE)
        .args(["--config", alice, "--build", build, "--check-upgrade"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Starts the v2 build with the migration for the same sellers and checks
/// every one finishes on v2 with its own result.
fn v2_finishes_every_seller(setup: &Setup) {
    let sell = format!("Bob={SELLERS}");
    let v2 = Running::start(&["--config", &setup.alice, "--build", "v2", "--sell", &sell]);
    std::fs::write(&setup.gate, b"open").unwrap();
    let lines = v2.finish();
    for n in 0..SELLERS {
        let expected = format!("RESULT sell-{n} {}", 3 * u64::from(n) + 2_000);
        assert!(lines.contains(&expected), "{expected} in {lines:?}");
    }
}

#[test]
fn a_killed_v1_node_restarted_as_v2_with_a_migration_finishes_every_flow_on_v2() {
    let setup = sellers_in_flight_on_v1();
    let (code, report) = check(&setup.alice, "v2");
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("total: resume 0, migrate {SELLERS}, refused 0")),
        "{report}"
    );
    v2_finishes_every_seller(&setup);
    drop(setup.bob);
}

#[test]
fn without_a_migration_the_flows_are_reported_and_held_then_a_build_with_one_finishes_them() {
    let setup = sellers_in_flight_on_v1();
    let (code, report) = check(&setup.alice, "v2-without-migration");
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("total: resume 0, migrate 0, refused {SELLERS}")),
        "{report}"
    );
    assert!(report.contains("upgrade.sell"), "{report}");
    assert!(report.contains("NOT SAFE"), "{report}");

    // Deployed anyway: Bob's answers reach sellers the node has no code
    // for, and each is held with the reason.
    let held = Running::start(&[
        "--config",
        &setup.alice,
        "--build",
        "v2-without-migration",
        "--report-held",
        &SELLERS.to_string(),
    ]);
    std::fs::write(&setup.gate, b"open").unwrap();
    let lines = held.finish();
    let held: Vec<&String> = lines.iter().filter(|l| l.starts_with("HELD ")).collect();
    assert_eq!(held.len(), SELLERS as usize, "{lines:?}");
    for line in held {
        assert!(line.contains("upgrade.sell"), "{line}");
        assert!(line.contains("fingerprint"), "{line}");
    }

    // Nothing lost: the build with the migration finishes them.
    let (code, report) = check(&setup.alice, "v2");
    assert_eq!(code, Some(0), "{report}");
    v2_finishes_every_seller(&setup);
    drop(setup.bob);
}
