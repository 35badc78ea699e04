//! `flowctl` as an operator runs it: a subprocess against two running
//! `flow-ping-node` processes. Start by name (with a client id, waiting for
//! the result), list and show, kill (followed with `progress --follow`),
//! retry of a hospitalised flow, drain
//! on and off across a restart of the node, scraping `/metrics`, the exit
//! codes scripts rely on, and the operator actions in the node's log with
//! who took them.

#![cfg(unix)]

use flow_runtime::testing::write_local_network;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_flow-ping-node");
const FLOWCTL: &str = env!("CARGO_BIN_EXE_flowctl");
const PING: &str = "flow_runtime::testing::ping_pong::ping";
const MARKER: &str = "flow_ping_node::await_marker";
const LIMIT: Duration = Duration::from_secs(60);

/// A node process, killed when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Files {
    config: PathBuf,
    log: PathBuf,
    url_file: PathBuf,
    token_file: PathBuf,
}

fn setup(dir: &Path) -> Vec<Files> {
    let sections = |_: &str| {
        "[transport]\nbackoff_min_ms = 20\nbackoff_max_ms = 250\n\n\
         [node]\nredelivery_interval_ms = 300\nmax_transient_retries = 0\n\n\
         [store]\nquick_repair = false\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
            .to_owned()
    };
    write_local_network(dir, &["Alice", "Bob"], sections)
        .unwrap()
        .into_iter()
        .map(|node| Files {
            log: dir.join(format!("{}.log", node.name)),
            url_file: dir.join(format!("{}.redb.admin-url", node.name)),
            token_file: dir.join(format!("{}.redb.admin-token", node.name)),
            config: node.config,
        })
        .collect()
}

/// Starts the node and waits for its admin URL file; returns the URL.
fn start(f: &Files) -> (Proc, String) {
    let _ = std::fs::remove_file(&f.url_file);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f.log)
        .unwrap();
    let child = Command::new(NODE)
        .arg("--config")
        .arg(&f.config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let proc = Proc { child };
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(url) = std::fs::read_to_string(&f.url_file)
            && url.ends_with('\n')
        {
            return (proc, url.trim().to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "no admin URL file; log:\n{}",
            std::fs::read_to_string(&f.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs flowctl: exit code, stdout, stderr.
fn flowctl(url: &str, token_file: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(FLOWCTL)
        .args(args)
        .env("FLOWCTL_NODE", url)
        .env("FLOWCTL_TOKEN_FILE", token_file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs flowctl and expects exit code 0; its stdout.
fn ok(url: &str, token_file: &Path, args: &[&str]) -> String {
    let (code, out, err) = flowctl(url, token_file, args);
    assert_eq!(code, 0, "flowctl {args:?} failed: {err}{out}");
    out
}

/// `flowctl --json flows start FLOW --args ARGS [more]`, which must
/// succeed: its JSON answer.
fn start_json(url: &str, token_file: &Path, flow: &str, args: &str, more: &[&str]) -> Value {
    let mut argv = vec!["--json", "flows", "start", flow, "--args", args];
    argv.extend_from_slice(more);
    json(&ok(url, token_file, &argv))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `flowctl --json flows list ARGS` until `pred` holds.
fn wait_listed(url: &str, token: &Path, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LIMIT;
    let mut full = vec!["--json", "flows", "list"];
    full.extend_from_slice(args);
    loop {
        let list = json(&ok(url, token, &full));
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "list never matched: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_operator_runs_the_node_with_flowctl() {
    let dir = tempfile::tempdir().unwrap();
    let files = setup(dir.path());
    let (alice_f, bob_f) = (&files[0], &files[1]);
    let (_bob, _) = start(bob_f);
    let (alice, url) = start(alice_f);
    let token = alice_f.token_file.as_path();

    // Start by name with JSON arguments and a client id, wait for the
    // result; the same client id again starts nothing new.
    let out = ok(
        &url,
        token,
        &[
            "flows",
            "start",
            PING,
            "--args",
            r#"{"peer": "Bob", "rounds": 10}"#,
            "--client-id",
            "order-1",
            "--wait",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(out.trim(), "45");
    let first = start_json(
        &url,
        token,
        PING,
        r#"{"peer": "Bob", "rounds": 10}"#,
        &["--client-id", "order-1"],
    );
    let again = start_json(
        &url,
        token,
        PING,
        r#"{"peer": "Bob", "rounds": 10}"#,
        &["--client-id", "order-1"],
    );
    assert_eq!(first["run_id"], again["run_id"]);

    // A flow that fails lands in the hospital; listed, shown; a retry once
    // the cause is fixed finishes it.
    let started = start_json(&url, token, MARKER, r#"{"name": "go"}"#, &[]);
    let run = started["run_id"].as_str().unwrap().to_owned();
    wait_listed(&url, token, &["--hospital"], |l| l["total"] == 1);
    let table = ok(&url, token, &["flows", "list", "--hospital"]);
    assert!(table.starts_with("RUN "), "{table}");
    assert!(
        table.contains(&run) && table.contains("marker file `go` does not exist"),
        "{table}"
    );
    let shown = ok(&url, token, &["flows", "show", &run]);
    assert!(
        shown.contains(MARKER) && shown.contains("hospital"),
        "{shown}"
    );
    let (code, _, _) = flowctl(&url, token, &["flows", "wait", &run, "--timeout", "1"]);
    assert_eq!(code, 3, "not finished within the wait");
    std::fs::write(dir.path().join("go"), "").unwrap();
    ok(&url, token, &["flows", "retry", &run]);
    let out = ok(&url, token, &["flows", "wait", &run, "--timeout", "60"]);
    assert_eq!(out.trim(), "\"found\"");

    // Kill a hospitalised flow: its wait ends with the error (exit 1).
    let started = start_json(&url, token, MARKER, r#"{"name": "never"}"#, &[]);
    let victim = started["run_id"].as_str().unwrap().to_owned();
    wait_listed(&url, token, &["--hospital"], |l| l["total"] == 1);
    // Followed while it is killed: `progress --follow` prints where the
    // flow is (no step: an empty line), streams until it ends, then prints
    // its outcome and exits as `wait` does.
    let mut follow = Command::new(FLOWCTL)
        .args(["flows", "progress", &victim, "--follow"])
        .env("FLOWCTL_NODE", &url)
        .env("FLOWCTL_TOKEN_FILE", token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "", "its current progress");
    ok(&url, token, &["flows", "kill", &victim]);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert_eq!(follow.wait().unwrap().code(), Some(1), "{rest:?}");
    assert!(
        rest.last()
            .is_some_and(|l| l.starts_with("flow failed:") && l.contains("killed by an operator")),
        "{rest:?}"
    );
    let (code, out, _) = flowctl(&url, token, &["flows", "wait", &victim]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("killed by an operator"), "{out}");

    // Exit codes: refused request, not allowed, unreachable, bad usage.
    assert_eq!(
        flowctl(&url, token, &["flows", "show", "00000000000000ff"]).0,
        4
    );
    assert_eq!(flowctl(&url, token, &["flows", "start", "no::such"]).0, 4);
    let bad_token = dir.path().join("bad-token");
    std::fs::write(&bad_token, "not-the-token\n").unwrap();
    assert_eq!(flowctl(&url, &bad_token, &["node", "status"]).0, 5);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        flowctl(&format!("http://{closed}"), token, &["node", "status"]).0,
        6
    );
    assert_eq!(
        flowctl(&url, token, &["flows", "start", PING, "--args", "{"]).0,
        2
    );

    // Node status and metrics.
    let status = ok(&url, token, &["node", "status"]);
    assert!(
        status.contains("Alice") && status.contains("Bob"),
        "{status}"
    );
    for line in ["commits ", "batches "] {
        assert!(
            status.lines().any(|l| l.starts_with(line)),
            "{line} in:\n{status}"
        );
    }
    let metrics = ok(&url, token, &["metrics"]);
    for needle in [
        "flow_steps_total ",
        "flow_batches_total ",
        "flow_commit_seconds_bucket",
        "flow_peer_link_up{peer=\"Bob\"} 1",
        "flow_finished_total{outcome=\"error\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }

    // Drain on survives a restart; off again lets flows start.
    ok(&url, token, &["node", "drain", "on"]);
    drop(alice); // SIGKILL
    let (alice, url) = start(alice_f);
    let status = json(&ok(&url, token, &["--json", "node", "status"]));
    assert_eq!(status["draining"], true, "{status}");
    let (code, _, err) = flowctl(
        &url,
        token,
        &[
            "flows",
            "start",
            PING,
            "--args",
            r#"{"peer": "Bob", "rounds": 3}"#,
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("draining"), "{err}");
    ok(&url, token, &["node", "drain", "off"]);
    let out = ok(
        &url,
        token,
        &[
            "flows",
            "start",
            PING,
            "--args",
            r#"{"peer": "Bob", "rounds": 3}"#,
            "--wait",
        ],
    );
    assert_eq!(out.trim(), "3");
    let dump = json(&ok(&url, token, &["dump"]));
    assert!(dump.is_array());
    drop(alice);

    // Each operator action is in the node's log, with who took it.
    let log = std::fs::read_to_string(&alice_f.log).unwrap();
    for action in [
        "operator action: kill",
        "operator action: retry",
        "operator action: drain on",
        "operator action: drain off",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(action) && l.contains("user=admin")),
            "`{action}` by admin not logged:\n{log}"
        );
    }
}

#[test]
fn flowctl_draws_a_registered_flows_state_graph() {
    let dir = tempfile::tempdir().unwrap();
    let files = setup(dir.path());
    let alice_f = &files[0];
    let (_alice, url) = start(alice_f);
    let token = alice_f.token_file.as_path();

    let mermaid = ok(&url, token, &["graph", PING]);
    assert!(mermaid.starts_with("stateDiagram-v2\n"), "{mermaid}");
    assert!(
        mermaid.contains("    Start --> AwaitEcho : while i #60; rounds<br>await session.receive#58;#58;#60;u32#62;()\n"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("    AwaitEcho : total#58; u64\n"),
        "{mermaid}"
    );
    assert!(!mermaid.contains("class AwaitEcho current"), "{mermaid}");

    let dot = ok(
        &url,
        token,
        &["graph", PING, "--format", "dot", "--highlight", "AwaitEcho"],
    );
    assert!(dot.starts_with("digraph \"ping\" {\n"), "{dot}");
    let lit: Vec<&str> = dot.lines().filter(|l| l.contains("penwidth=3")).collect();
    assert_eq!(lit.len(), 1, "{dot}");
    assert!(lit[0].trim_start().starts_with("\"AwaitEcho\" ["), "{dot}");

    let svg = ok(
        &url,
        token,
        &["graph", PING, "--format", "svg", "--highlight", "AwaitEcho"],
    );
    assert!(svg.starts_with("<svg "), "{svg}");
    assert!(
        svg.contains("class=\"flow-state current\" data-state=\"AwaitEcho\""),
        "{svg}"
    );

    let data = json(&ok(&url, token, &["--json", "graph", MARKER]));
    assert_eq!(data["flow"], MARKER);
    assert_eq!(data["states"][0]["name"], "Start");

    // An unknown flow is refused by the node (exit 4), a bad format by
    // flowctl itself (exit 2).
    let (code, _, err) = flowctl(&url, token, &["graph", "no::such::flow"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no flow type `no::such::flow`"), "{err}");
    let (code, _, _) = flowctl(&url, token, &["graph", PING, "--format", "png"]);
    assert_eq!(code, 2);
}
