//! [`NodeProcess`]: a `flow-ping-node` process under a test's or a bench's
//! control: started with a config file and arguments, its stdout lines
//! (`STARTED`, `RESULT ...`, `MARK n`, `DONE ...`, `FAILED ...`) on a
//! channel, its stderr (the node's log) appended to a file, and signals.
//! Dropped while still running, it is killed, so a failing test leaves no
//! process behind.
//!
//! Shared by the multi-process tests (`tcp_multiprocess.rs`,
//! `scale_out_faults.rs`, through `tcp_common`) and the scale-out bench
//! (`benches/scale_out.rs` includes this file with `#[path]`), so it uses
//! nothing else of `tcp_common`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// The node binary the tests and benches run.
pub const NODE: &str = env!("CARGO_BIN_EXE_flow-ping-node");

/// A running `flow-ping-node` (see the module docs).
pub struct NodeProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `flow-ping-node --config <config> <extra...>` logging at
    /// `info` to `log` (appended: a restarted node's log continues).
    pub fn start(config: &Path, extra: &[&str], log: &Path) -> NodeProcess {
        Self::start_logging(config, extra, log, "info")
    }

    /// [`start`](Self::start) with `RUST_LOG=<level>`.
    pub fn start_logging(config: &Path, extra: &[&str], log: &Path, level: &str) -> NodeProcess {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open the log {}: {e}", log.display()));
        let mut child = Command::new(NODE)
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NODE}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeProcess {
            child,
            lines,
            log: log.to_owned(),
        }
    }

    /// Where its log goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits for a stdout line starting with `prefix` (`""`: the next
    /// line) and returns it. Panics, with the logs beside its own, if none
    /// comes before `deadline` or if a `FAILED` line comes first.
    pub fn wait_for(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) if line.starts_with("FAILED") => panic!(
                    "`{line}` from {} while waiting for `{prefix}`; logs:\n{}",
                    self.log.display(),
                    logs_beside(&self.log)
                ),
                Ok(_) => {}
                Err(_) => panic!(
                    "no `{prefix}` line from {} before the deadline; logs:\n{}",
                    self.log.display(),
                    logs_beside(&self.log)
                ),
            }
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("waiting for a node process")
    }

    /// Kills it with SIGKILL (a crash: no shutdown of any kind).
    pub fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL"); // SIGKILL on unix
        self.child.wait().expect("waiting for a killed node");
    }

    /// Sends the signal `name` (as `kill -<name>` spells it: `USR1`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Asks it to stop (SIGTERM) and waits for its exit.
    pub fn sigterm(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }
}

impl Drop for NodeProcess {
    /// A process still running (a test failed, or a bench is done) is
    /// killed.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The logs beside `log` (see [`logs_in`]).
fn logs_beside(log: &Path) -> String {
    log.parent().map(logs_in).unwrap_or_default()
}

/// The last 60 lines of every `.log` file in `dir` (a test's processes'
/// logs), for a failure's message.
pub fn logs_in(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("NOTICE"))
            .rev()
            .take(60)
            .collect();
        out.push_str(&format!("==== {} (last lines)\n", path.display()));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
