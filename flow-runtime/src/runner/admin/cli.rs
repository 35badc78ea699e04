//! `flowctl`'s command line: operate and use a flow node from outside its
//! process, through its admin API (see `docs/operations.md`). The
//! `flowctl` binary is [`run`] on the process's arguments; a program or a
//! test runs the same commands in-process, with their output captured.
//!
//! ```text
//! flowctl --node http://127.0.0.1:7101 --token-file alice.redb.admin-token flows list
//! flowctl flows start my::flow --args '{"peer": "Bob"}' --client-id order-17 --wait
//! flowctl node drain on
//! flowctl graph my::flow --format dot | dot -Tsvg > my-flow.svg
//! ```
//!
//! Why a module of flow-runtime rather than a crate of its own: it is a thin
//! layer over the runtime's own API client ([`client`](super::client)), it
//! is always built from the same version as the nodes it talks to, and
//! tests run its binary as a subprocess against node processes, or its
//! commands in-process (the operations guide's transcript is replayed that
//! way against the trade demo's nodes).
//!
//! Exit codes, for scripts: 0 done; 1 the flow ended with an error
//! (`start --wait`, `wait`); 2 bad usage; 3 the flow had not finished when
//! the wait ran out; 4 the node refused the request (bad input, unknown
//! flow or run, conflict); 5 not authenticated or not allowed; 6 the node
//! is unreachable or failing.

use super::client::{AdminClient, ClientError, read_token_file};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Writes a line to `out`; a closed output (`flowctl ... | head`) is not
/// an error of the command.
macro_rules! say {
    ($out:expr) => {{
        let _ = writeln!($out);
    }};
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Operate a flow node through its admin API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The node's admin URL (its `<database>.admin-url` file holds it).
    #[arg(
        long,
        env = "FLOWCTL_NODE",
        default_value = "http://127.0.0.1:7100",
        global = true
    )]
    node: String,
    /// File holding the API token (the node creates `<database>.admin-token`).
    #[arg(long, env = "FLOWCTL_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds one request may take (waits add their own time).
    #[arg(long, default_value_t = 30, global = true)]
    request_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Flows: list, show, start, wait, kill, retry.
    Flows {
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// The node: status, draining.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Every flow with a checkpoint, in full, as JSON.
    Dump,
    /// A registered flow's state graph, to draw: Mermaid (paste it into
    /// any Markdown that renders Mermaid), Graphviz DOT (`| dot -Tsvg`)
    /// or SVG. With --json, the graph as data.
    Graph {
        /// The flow's name (as `flows list` shows it).
        flow: String,
        /// Mermaid, DOT or SVG text.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
        /// Draw this state highlighted (e.g. a flow's current state).
        #[arg(long, value_name = "STATE")]
        highlight: Option<String>,
    },
    /// The node's Prometheus metrics, as scraped.
    Metrics,
    /// Whether the node is up.
    Health,
}

#[derive(Subcommand)]
enum FlowsCommand {
    /// Flows in flight (running, waiting, hospitalised).
    List {
        /// Only this flow name.
        #[arg(long)]
        flow: Option<String>,
        /// Only flows in this state.
        #[arg(long)]
        state: Option<String>,
        /// Only hospitalised flows.
        #[arg(long)]
        hospital: bool,
        /// Only flows waiting longer than this many seconds.
        #[arg(long, value_name = "SECS")]
        waiting_longer_than: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One flow: state, stored fields, progress, sessions, hospital record
    /// (or its result once finished).
    Show {
        /// The run id (hex).
        run: String,
    },
    /// Start a flow registered as startable, by name.
    Start {
        /// The flow's registered name.
        flow: String,
        /// Its arguments, a JSON object.
        #[arg(long, default_value = "null")]
        args: String,
        /// Start at most once under this id (retrying is then safe).
        #[arg(long)]
        client_id: Option<String>,
        /// Wait for the result and print it.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit code 3).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Wait for a flow's result and print it.
    Wait {
        /// The run id (hex).
        run: String,
        /// Give up after this many seconds (exit code 3).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// A flow's current progress; with --follow, each change as it
    /// happens, then its result.
    Progress {
        /// The run id (hex).
        run: String,
        /// Stream the changes until the flow ends (exit code as `wait`).
        #[arg(long)]
        follow: bool,
    },
    /// End a flow (its counterparties are told).
    Kill {
        /// The run id (hex).
        run: String,
    },
    /// Retry a hospitalised flow from its last checkpoint.
    Retry {
        /// The run id (hex).
        run: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Identity, peers and links, flows in flight, hospital, draining.
    Status,
    /// Start or stop draining (no new flows or sessions while on).
    Drain {
        /// on or off.
        state: OnOff,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
    Svg,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Status { status, .. } if *status == 401 || *status == 403 => 5,
            ClientError::Status { status, .. } if *status < 500 => 4,
            ClientError::TokenFile { .. } => 2,
            _ => 6,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// Runs one `flowctl` command line (`args` with the program name first),
/// writing what it prints to `out` and its error messages to `err`; the
/// exit code (see the module docs). Help and usage errors are written as
/// clap formats them, with exit codes 0 and 2.
pub fn run(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let text = e.render().ansi().to_string();
            let _ = if code == 0 {
                write!(out, "{text}")
            } else {
                write!(err, "{text}")
            };
            return code;
        }
    };
    match command(&args, out, err) {
        Ok(code) => code,
        Err(f) => {
            let _ = writeln!(err, "flowctl: {}", f.message);
            f.code
        }
    }
}

fn client(args: &Args, extra: Duration) -> Result<AdminClient, Failure> {
    let token = match &args.token_file {
        Some(path) => read_token_file(path)?,
        None => {
            return Err(Failure {
                code: 2,
                message: "no token: give --token-file FILE or set FLOWCTL_TOKEN_FILE (the node writes <database>.admin-token)".into(),
            });
        }
    };
    Ok(AdminClient::new(
        &args.node,
        &token,
        Duration::from_secs(args.request_timeout) + extra,
    ))
}

/// Path segment escaping for user-given names and ids.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn command(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, Failure> {
    match &args.command {
        Command::Flows { command } => flows(args, command, out, err),
        Command::Node {
            command: NodeCommand::Status,
        } => {
            let status = client(args, Duration::ZERO)?.get("/api/v1/node")?;
            print_status(args.json, &status, out);
            Ok(0)
        }
        Command::Node {
            command: NodeCommand::Drain { state },
        } => {
            let on = matches!(state, OnOff::On);
            let answer = client(args, Duration::ZERO)?
                .post("/api/v1/node/drain", &json!({ "draining": on }))?;
            if args.json {
                say!(out, "{answer}");
            } else {
                say!(out, "draining {}", if on { "on" } else { "off" });
            }
            Ok(0)
        }
        Command::Dump => {
            let dump = client(args, Duration::ZERO)?.get("/api/v1/dump")?;
            say!(
                out,
                "{}",
                serde_json::to_string_pretty(&dump).unwrap_or_default()
            );
            Ok(0)
        }
        Command::Graph {
            flow,
            format,
            highlight,
        } => {
            let format = match (args.json, format) {
                (true, _) => "json",
                (false, GraphFormat::Mermaid) => "mermaid",
                (false, GraphFormat::Dot) => "dot",
                (false, GraphFormat::Svg) => "svg",
            };
            let mut path = format!("/api/v1/flow-types/{}/graph?format={format}", segment(flow));
            if let Some(state) = highlight {
                path.push_str(&format!("&highlight={}", segment(state)));
            }
            let text = client(args, Duration::ZERO)?.get_text(&path)?;
            let _ = write!(out, "{text}");
            if !text.ends_with('\n') {
                say!(out);
            }
            Ok(0)
        }
        Command::Metrics => {
            let _ = write!(
                out,
                "{}",
                client(args, Duration::ZERO)?.get_text("/metrics")?
            );
            Ok(0)
        }
        Command::Health => {
            let health = client(args, Duration::ZERO)?.get("/health")?;
            if args.json {
                say!(out, "{health}");
            } else {
                say!(out, "{}", text(&health["status"]));
            }
            Ok(0)
        }
    }
}

fn flows(
    args: &Args,
    command: &FlowsCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    match command {
        FlowsCommand::List {
            flow,
            state,
            hospital,
            waiting_longer_than,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(f) = flow {
                query.push(format!("flow={}", segment(f)));
            }
            if let Some(s) = state {
                query.push(format!("state={}", segment(s)));
            }
            if *hospital {
                query.push("hospital=true".into());
            }
            if let Some(s) = waiting_longer_than {
                query.push(format!("waiting_longer_than_s={s}"));
            }
            let list =
                client(args, Duration::ZERO)?.get(&format!("/api/v1/flows?{}", query.join("&")))?;
            if args.json {
                say!(out, "{list}");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list["flows"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|f| {
                    vec![
                        text(&f["run_id"]),
                        text(&f["flow"]),
                        text(&f["state"]),
                        format!(
                            "{:.1}s",
                            f["waiting_for_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
                        ),
                        f["progress"]
                            .as_array()
                            .and_then(|p| p.last())
                            .map(text)
                            .unwrap_or_default(),
                        if f["hospital"].is_null() {
                            String::new()
                        } else {
                            format!("yes: {}", text(&f["hospital"]["error"]))
                        },
                    ]
                })
                .collect();
            print_table(
                &["RUN", "FLOW", "STATE", "WAITING", "PROGRESS", "HOSPITAL"],
                &rows,
                out,
            );
            if list["truncated"].as_bool() == Some(true) {
                say!(
                    out,
                    "({} flows match; showing {limit}: use --limit)",
                    list["total"]
                );
            }
            Ok(0)
        }
        FlowsCommand::Show { run } => {
            let shown =
                client(args, Duration::ZERO)?.get(&format!("/api/v1/flows/{}", segment(run)))?;
            if args.json {
                say!(out, "{shown}");
            } else {
                print_show(&shown, out);
            }
            Ok(0)
        }
        FlowsCommand::Start {
            flow,
            args: flow_args,
            client_id,
            wait,
            timeout,
        } => {
            let flow_args: Value = serde_json::from_str(flow_args).map_err(|e| Failure {
                code: 2,
                message: format!("--args is not JSON: {e}"),
            })?;
            let mut body = json!({ "flow": flow, "args": flow_args });
            if let Some(id) = client_id {
                body["client_id"] = json!(id);
            }
            let started = client(args, Duration::ZERO)?.post("/api/v1/flows", &body)?;
            let run = text(&started["run_id"]);
            if !*wait {
                if args.json {
                    say!(out, "{started}");
                } else {
                    say!(out, "started {flow} as run {run}");
                }
                return Ok(0);
            }
            if !args.json {
                say!(err, "started {flow} as run {run}; waiting for its result");
            }
            wait_for(args, &run, *timeout, out, err)
        }
        FlowsCommand::Wait { run, timeout } => wait_for(args, run, *timeout, out, err),
        FlowsCommand::Progress { run, follow: true } => follow(args, run, out),
        FlowsCommand::Progress { run, follow: false } => {
            let p = client(args, Duration::ZERO)?
                .get(&format!("/api/v1/flows/{}/progress", segment(run)))?;
            if args.json {
                say!(out, "{p}");
            } else {
                say!(out, "{}", join_path(&p["progress"]));
            }
            Ok(0)
        }
        FlowsCommand::Kill { run } => {
            let answer = client(args, Duration::ZERO)?
                .post(&format!("/api/v1/flows/{}/kill", segment(run)), &json!({}))?;
            if args.json {
                say!(out, "{answer}");
            } else {
                say!(out, "killed {run}");
            }
            Ok(0)
        }
        FlowsCommand::Retry { run } => {
            let answer = client(args, Duration::ZERO)?
                .post(&format!("/api/v1/flows/{}/retry", segment(run)), &json!({}))?;
            if args.json {
                say!(out, "{answer}");
            } else {
                say!(out, "retrying {run}");
            }
            Ok(0)
        }
    }
}

/// Prints a flow's progress as it changes (the API's event stream), then
/// its outcome.
fn follow(args: &Args, run: &str, out: &mut dyn Write) -> Result<u8, Failure> {
    let events = client(args, Duration::ZERO)?.events(&format!(
        "/api/v1/flows/{}/progress?follow=true",
        segment(run)
    ))?;
    for event in events {
        let event = event?;
        if args.json {
            say!(
                out,
                "{}",
                json!({ "event": event.event, "data": event.data })
            );
        }
        match event.event.as_str() {
            "progress" if !args.json => say!(out, "{}", join_path(&event.data["progress"])),
            "finished" => {
                let ok = event.data["outcome"] == "ok";
                if !args.json {
                    print_outcome(&event.data, out);
                }
                return Ok(if ok { 0 } else { 1 });
            }
            "error" => {
                return Err(Failure {
                    code: 6,
                    message: text(&event.data["error"]),
                });
            }
            _ => {}
        }
    }
    Err(Failure {
        code: 6,
        message: format!("the node closed the progress stream of {run} before it ended (stopped?)"),
    })
}

fn print_outcome(answer: &Value, out: &mut dyn Write) {
    if answer["outcome"] == "ok" {
        say!(
            out,
            "{}",
            serde_json::to_string_pretty(&answer["output"]).unwrap_or_default()
        );
    } else {
        say!(out, "flow failed: {}", text(&answer["error"]));
    }
}

/// Long-polls the result in rounds of up to 30 s until it is there or
/// `timeout` seconds have passed.
fn wait_for(
    args: &Args,
    run: &str,
    timeout: Option<u64>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    const ROUND: u64 = 30;
    let api = client(args, Duration::from_secs(ROUND))?;
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64());
        let wait = left.map_or(ROUND as f64, |l| l.min(ROUND as f64));
        let answer = api.get(&format!(
            "/api/v1/flows/{}/result?wait_s={wait:.3}",
            segment(run)
        ))?;
        if answer["finished"].as_bool() == Some(true) {
            let ok = answer["outcome"] == "ok";
            if args.json {
                say!(out, "{answer}");
            } else {
                print_outcome(&answer, out);
            }
            return Ok(if ok { 0 } else { 1 });
        }
        if left.is_some_and(|l| l <= wait) {
            if args.json {
                say!(out, "{answer}");
            } else {
                say!(err, "flow {run} has not finished");
            }
            return Ok(3);
        }
    }
}

/// A JSON value as text: strings without quotes.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn join_path(v: &Value) -> String {
    v.as_array()
        .map(|p| p.iter().map(text).collect::<Vec<_>>().join(" > "))
        .unwrap_or_default()
}

fn print_table(headers: &[&str], rows: &[Vec<String>], out: &mut dyn Write) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!(out, "{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_show(shown: &Value, out: &mut dyn Write) {
    if shown["finished"].as_bool() == Some(true) {
        say!(out, "run       {}", text(&shown["run_id"]));
        say!(out, "finished  {}", text(&shown["outcome"]));
        if shown["outcome"] == "ok" {
            say!(out, "output    {}", shown["output"]);
        } else {
            say!(out, "error     {}", text(&shown["error"]));
        }
        return;
    }
    say!(out, "run       {}", text(&shown["run_id"]));
    say!(out, "flow      {}", text(&shown["flow"]));
    say!(out, "state     {}", text(&shown["state"]));
    say!(
        out,
        "waiting   on {} for {:.1}s",
        text(&shown["waiting_on"]),
        shown["waiting_for_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    say!(out, "progress  {}", join_path(&shown["progress"]));
    if !shown["hospital"].is_null() {
        say!(
            out,
            "hospital  {} (attempts: {})",
            text(&shown["hospital"]["error"]),
            shown["hospital"]["attempts"]
        );
    }
    say!(
        out,
        "fields    {}",
        serde_json::to_string_pretty(&shown["fields"])
            .unwrap_or_default()
            .replace('\n', "\n          ")
    );
    let sessions = shown["sessions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !sessions.is_empty() {
        let rows: Vec<Vec<String>> = sessions
            .iter()
            .map(|s| {
                vec![
                    text(&s["id"]),
                    text(&s["counterparty"]),
                    if s["initiator"].as_bool() == Some(true) {
                        "initiator"
                    } else {
                        "responder"
                    }
                    .into(),
                    text(&s["initiating_flow"]),
                    if s["counterparty_ended"].as_bool() == Some(true) {
                        "ended"
                    } else {
                        "open"
                    }
                    .into(),
                ]
            })
            .collect();
        say!(out);
        print_table(
            &["SESSION", "COUNTERPARTY", "SIDE", "FLOW", "PEER"],
            &rows,
            out,
        );
    }
}

fn print_status(as_json: bool, status: &Value, out: &mut dyn Write) {
    if as_json {
        say!(out, "{status}");
        return;
    }
    say!(
        out,
        "node             {} ({})",
        text(&status["name"]),
        text(&status["key"])
    );
    say!(out, "endpoint         {}", text(&status["endpoint"]));
    say!(out, "draining         {}", status["draining"]);
    say!(out, "flows in flight  {}", status["flows_in_flight"]);
    say!(out, "hospital         {}", status["hospital"]);
    say!(out, "outbox           {}", status["outbox"]);
    say!(out, "commits          {}", status["commits"]);
    if !status["batches"].is_null() {
        say!(out, "batches          {}", status["batches"]);
    }
    let startable: Vec<String> = status["startable"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    say!(out, "startable        {}", startable.join(", "));
    let rows: Vec<Vec<String>> = status["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| vec![text(&p["name"]), text(&p["link"]), text(&p["key"])])
        .collect();
    if !rows.is_empty() {
        say!(out);
        print_table(&["PEER", "LINK", "KEY"], &rows, out);
    }
}
