//! The demo across three OS processes: the orchestrator (this code) writes
//! keys, a network map and one configuration per node into a directory,
//! starts the notary, the seller and the buyer as child processes (the same
//! executable's hidden `node` subcommand, see [`node_process`](super::node_process)),
//! and drives them through the [`protocol`](super::protocol) on their stdin/stdout:
//!
//! 1. the notary reports its ledger identity, written to
//!    `notary-identity.json` for the buyer (which checks every trade names
//!    it); the buyer, the demo's bank, reports its own, written to
//!    `trusted-issuers.json` for the seller (which accepts only that
//!    issuer's cash);
//! 2. the buyer issues one coin per trade, the seller one paper per trade;
//! 3. the seller starts the trades (every one at once, or in two halves
//!    with a crash) and streams each trade's progress step and outcome back;
//! 4. once the first half has settled, the buyer is killed with SIGKILL
//!    while it holds trades of the second half, and started again on its
//!    database — its flows continue from their checkpoints, the seller
//!    re-sends what the buyer had not acknowledged (the schedule is explained at `CrashSchedule`);
//! 5. the buyer tries to spend a coin a settled trade consumed: the notary
//!    must refuse;
//! 6. every vault is reported and reconciled, and every node is stopped.
//!
//! ```text
//! DIR/network.toml                      the network map (all three nodes)
//! DIR/{notary,seller,buyer}.toml        node configuration
//! DIR/{notary,seller,buyer}.key         identity key (mode 0600)
//! DIR/{notary,seller,buyer}.redb        the node's database: checkpoints, vault, notary index
//! DIR/{notary,seller,buyer}.log         the node's log (stderr), appended across restarts
//! DIR/notary-identity.json              the notary's ledger identity, read by the buyer
//! DIR/trusted-issuers.json              the cash issuers the seller accepts (the buyer)
//! ```
//!
//! No child can outlive the orchestrator: every child is killed when its
//! handle is dropped (any error, Ctrl-C, SIGTERM, a timeout), and a child
//! whose stdin closes (the orchestrator died, even by SIGKILL) stops
//! itself.

use super::protocol::{
    Command, Event, Reply, Request, Role, Settled, TradeOrder, decode_event, encode,
};
use super::{DemoConfig, DemoProgress, DemoSummary, reconcile};
use crate::flows::Notary;
use crate::flows::report::VaultReport;
use crate::ledger::{Amount, Currency, StateRef};
use flow_runtime::runner::{self, keys};
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use flow_runtime::{Party, Timestamp};
use rustix::process::{Pid, Signal, kill_process};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

/// The file the notary's identity is written to, for the buyer.
pub const NOTARY_IDENTITY_FILE: &str = "notary-identity.json";

/// The file the seller's trusted cash issuers (the buyer, the demo's bank)
/// are written to.
pub const TRUSTED_ISSUERS_FILE: &str = "trusted-issuers.json";

/// How long a node may take to stop after being asked before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often the progress display is refreshed at most.
const DRAW_EVERY: Duration = Duration::from_millis(100);

/// The seller's progress label once it has signed the buyer's proposal and
/// waits for the notarised transaction (set by
/// [`sell`](crate::flows::trade::sell)). A seller at this step means the
/// buyer's flow has committed its proposal.
const SELLER_AWAITS_FINAL: &str = "Waiting for the final transaction";

/// When the buyer is killed. Killing it "when about half the trades have
/// settled" by wall-clock luck would sometimes hit a buyer that had already
/// finished every flow, and the restart would show nothing. Instead:
///
/// 1. the first half of the trades runs to the end;
/// 2. the notary is paused (SIGSTOP) and the second half starts: no buyer
///    flow of it can finish, because the buyer notarises in its finality
///    step;
/// 3. once the seller reports a second-half trade at [`SELLER_AWAITS_FINAL`]
///    (the buyer committed its proposal for it), the buyer is killed with
///    SIGKILL and started again, and the notary resumes (SIGCONT).
///
/// The restarted buyer therefore always resumes flows from its checkpoints.
struct CrashSchedule {
    /// Kill and restart the buyer at all.
    crash: bool,
    /// Trades in the first half (all of them without a crash).
    first_half: usize,
}

impl CrashSchedule {
    fn new(crash: bool, trades: u32) -> Self {
        let trades = trades as usize;
        CrashSchedule {
            crash,
            first_half: if crash { trades / 2 } else { trades },
        }
    }
}

/// Where the run is in its [`CrashSchedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPhase {
    /// The first half of the trades is running.
    FirstHalf,
    /// The notary is paused and the second half started.
    NotaryPaused,
    /// The buyer was restarted (or no crash was asked for).
    Done,
}

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct MultiProcessConfig {
    /// Trades, price, whether to crash the buyer.
    pub demo: DemoConfig,
    /// Where the nodes' files go; `None` for a fresh temporary directory,
    /// deleted at the end. A given directory must be new or empty (old
    /// databases would not reconcile) and is kept.
    pub dir: Option<PathBuf>,
    /// The executable whose `node` subcommand runs a node
    /// ([`node_process`](super::node_process)); the `trade-demo` binary passes itself.
    pub node_exe: PathBuf,
    /// Give up (and stop every node) if the demo has not ended by then.
    pub timeout: Duration,
}

/// Runs the demo across three node processes, calling `observe` with
/// progress as it goes. `Err` if the demo could not run at all (a node
/// failed to start, a timeout, an interruption); a run that went through
/// returns its summary, whose [`DemoSummary::verdict`] says whether it
/// reconciled.
pub fn run_multi_process(
    config: &MultiProcessConfig,
    observe: &mut dyn FnMut(&DemoProgress),
) -> Result<DemoSummary, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(run(config, observe))
}

async fn run(
    config: &MultiProcessConfig,
    observe: &mut dyn FnMut(&DemoProgress),
) -> Result<DemoSummary, String> {
    // Declared before the cluster so that it is deleted only after every
    // node process is gone.
    let temp;
    let dir = match &config.dir {
        Some(dir) => {
            prepare_dir(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("trade-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            temp.path().to_owned()
        }
    };
    let parties = write_node_files(&dir)?;
    let mut cluster = Cluster::new(&dir, config)?;
    let result = demo(&mut cluster, config, &parties, observe).await;
    if result.is_err() {
        cluster.kill_all().await;
    }
    result
}

/// Everything after the files are written.
async fn demo(
    cluster: &mut Cluster,
    config: &MultiProcessConfig,
    parties: &HashMap<Role, Party>,
    observe: &mut dyn FnMut(&DemoProgress),
) -> Result<DemoSummary, String> {
    let trades = config.demo.trades;
    let price = Amount::new(config.demo.price, Currency::USD);
    let party = |role: Role| {
        parties
            .get(&role)
            .cloned()
            .ok_or_else(|| format!("internal: no {role} in the network map"))
    };

    cluster.note(observe, "starting the notary, buyer and seller processes");
    cluster.spawn(Role::Notary)?;
    cluster.wait_ready(Role::Notary).await?;
    let Reply::Identity(ledger) = cluster
        .request(Role::Notary, Command::LedgerIdentity)
        .await?
    else {
        return Err("the notary answered its identity with something else".into());
    };
    let notary = Notary {
        party: ledger,
        node: party(Role::Notary)?,
    };
    write_notary(&cluster.dir, &notary)?;
    cluster.spawn(Role::Buyer)?;
    cluster.wait_ready(Role::Buyer).await?;
    // The buyer is the demo's bank: the seller is told to accept its cash.
    let Reply::Identity(buyer_ledger) = cluster
        .request(Role::Buyer, Command::LedgerIdentity)
        .await?
    else {
        return Err("the buyer answered its identity with something else".into());
    };
    write_issuers(&cluster.dir, std::slice::from_ref(&buyer_ledger))?;
    cluster.spawn(Role::Seller)?;
    cluster.wait_ready(Role::Seller).await?;

    cluster.note(
        observe,
        &format!("issuing {trades} coins to the buyer and {trades} papers to the seller"),
    );
    cluster
        .request(
            Role::Buyer,
            Command::IssueCash {
                amount: price,
                coins: trades,
                notary: notary.clone(),
            },
        )
        .await?;
    let Reply::Papers(papers) = cluster
        .request(
            Role::Seller,
            Command::IssuePapers {
                count: trades,
                face_value: Amount::whole(1_000, Currency::USD),
                maturity: a_year_from_now(),
                notary: notary.clone(),
            },
        )
        .await?
    else {
        return Err("the seller answered the paper issuance with something else".into());
    };

    cluster.note(
        observe,
        &format!("{trades} trades: the seller sells each paper to the buyer for {price}"),
    );
    let orders: Vec<TradeOrder> = papers
        .iter()
        .zip(0..)
        .map(|(paper, trade)| TradeOrder {
            trade,
            paper: *paper,
        })
        .collect();
    // With a crash, the trades start in two halves so that the buyer is
    // killed while it provably has flows in flight (see `CrashSchedule`).
    let schedule = CrashSchedule::new(config.demo.crash_buyer, trades);
    let (first, second) = orders.split_at(schedule.first_half);
    let buyer = party(Role::Buyer)?;
    let sell = |orders: &[TradeOrder]| Command::Sell {
        orders: orders.to_vec(),
        buyer: buyer.clone(),
        price,
        notary: notary.clone(),
    };
    cluster.start_cpu_accounting();
    let started = Instant::now();
    cluster.request(Role::Seller, sell(first)).await?;
    let start_phase = started.elapsed();
    let mut restarts = 0;
    let mut phase = CrashPhase::FirstHalf;
    let mut drawn = Instant::now();
    let mut ended = started;
    while cluster.done.len() < trades as usize {
        match phase {
            CrashPhase::FirstHalf if schedule.crash && cluster.done.len() >= first.len() => {
                cluster.signal(Role::Notary, Signal::STOP)?;
                cluster.request(Role::Seller, sell(second)).await?;
                phase = CrashPhase::NotaryPaused;
            }
            CrashPhase::NotaryPaused if cluster.buyer_holds_a_trade(schedule.first_half) => {
                let finished = cluster.done.len();
                cluster.crash(Role::Buyer).await?;
                cluster.signal(Role::Notary, Signal::CONT)?;
                restarts += 1;
                phase = CrashPhase::Done;
                cluster.notes.push(format!(
                    "buyer killed with SIGKILL after {finished} of {trades} trades settled; starting it again from {}",
                    cluster.file(Role::Buyer, "redb").display()
                ));
            }
            _ => {}
        }
        if !cluster.notes.is_empty() || drawn.elapsed() >= DRAW_EVERY {
            cluster.draw(observe);
            drawn = Instant::now();
        }
        let (from, event) = cluster.next().await?;
        if matches!(event, Event::TradeDone { .. }) {
            ended = Instant::now();
        }
        cluster.absorb(from, event);
    }
    let elapsed = ended.duration_since(started);
    let cpu = cluster.stop_cpu_accounting();
    cluster.draw(observe);

    let mut completed = 0;
    let mut failures = Vec::new();
    let mut spent_coin: Option<StateRef> = None;
    for outcome in cluster.done.values() {
        match outcome {
            Ok(Settled { coins }) => {
                completed += 1;
                spent_coin = spent_coin.or_else(|| coins.first().copied());
            }
            Err(e) => failures.push(e.clone()),
        }
    }

    let mut rejected_double_spends = 0;
    if let Some(coin) = spent_coin {
        cluster.note(
            observe,
            &format!("the buyer tries to spend coin {coin} a second time"),
        );
        let probe = Command::DoubleSpend {
            coin,
            notary: notary.clone(),
        };
        match cluster.request(Role::Buyer, probe).await {
            Ok(Reply::Refused(reason)) if reason.contains("double spend") => {
                rejected_double_spends += 1;
            }
            Ok(other) => failures.push(format!(
                "the double spend was refused for another reason: {other:?}"
            )),
            Err(e) => failures.push(e),
        }
    }

    let seller = report(cluster, Role::Seller).await?;
    let buyer = report(cluster, Role::Buyer).await?;
    let notary_report = report(cluster, Role::Notary).await?;
    let issued = [(
        buyer_ledger.clone(),
        Currency::USD,
        config.demo.price.saturating_mul(u64::from(trades)),
    )];
    let mut problems = reconcile(
        &config.demo,
        &issued,
        completed,
        &papers,
        &seller,
        &buyer,
        &failures,
    );
    problems.extend(cluster.stop_all().await);
    cluster.draw(observe);
    Ok(DemoSummary {
        trades,
        completed,
        failures,
        elapsed,
        rejected_double_spends,
        restarts,
        seller,
        buyer,
        notarised_inputs: Some(notary_report.notarised_inputs),
        start_phase: Some(start_phase),
        cpu,
        problems,
    })
}

async fn report(cluster: &mut Cluster, role: Role) -> Result<VaultReport, String> {
    match cluster.request(role, Command::Report).await? {
        Reply::Report(r) => Ok(r),
        other => Err(format!(
            "the {role} node answered a vault report with {other:?}"
        )),
    }
}

fn a_year_from_now() -> Timestamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(now.saturating_add(365 * 86_400_000))
}

/// Creates `dir` if needed; refuses one that already holds files.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the directory {}: {e}", dir.display()))?;
    if entries.next().is_some() {
        return Err(format!(
            "{} is not empty; the demo needs fresh databases: give a new or empty --dir",
            dir.display()
        ));
    }
    Ok(())
}

/// Writes a key and a configuration per node and the network map; returns
/// each node's network identity. Ports are chosen by binding port 0 on
/// 127.0.0.1 and releasing it just before the nodes start.
fn write_node_files(dir: &Path) -> Result<HashMap<Role, Party>, String> {
    let mut entries = Vec::new();
    let mut parties = HashMap::new();
    for role in Role::ALL {
        let stem = role.file_stem();
        let key = keys::generate_identity().map_err(|e| e.to_string())?;
        keys::write_key_file(&dir.join(format!("{stem}.key")), &key).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?
            .port();
        let address = format!("127.0.0.1:{port}");
        let public = keys::public_key(&key);
        parties.insert(role, Party::new(role.name(), public));
        entries.push(PeerEntry {
            name: role.name().into(),
            address: address.clone(),
            key: public,
        });
        let config = format!(
            "# {name} of the trade demo; see docs/operations.md\n\
             name = \"{name}\"\n\
             identity_key = \"{stem}.key\"\n\
             listen = \"{address}\"\n\
             database = \"{stem}.redb\"\n\
             network_map = \"network.toml\"\n\n\
             # Reconnect and re-send quickly: the demo restarts the buyer.\n\
             [transport]\n\
             backoff_min_ms = 20\n\
             backoff_max_ms = 250\n\n\
             [node]\n\
             redelivery_interval_ms = 300\n",
            name = role.name(),
        );
        write(&dir.join(format!("{stem}.toml")), &config)?;
    }
    let map = NetworkMap::new(entries).map_err(|e| e.to_string())?;
    write(&dir.join("network.toml"), &map.to_toml_string())?;
    Ok(parties)
}

fn write_notary(dir: &Path, notary: &Notary) -> Result<(), String> {
    let text = serde_json::to_string_pretty(notary)
        .map_err(|e| format!("cannot encode the notary identity: {e}"))?;
    write(&dir.join(NOTARY_IDENTITY_FILE), &text)
}

fn write_issuers(dir: &Path, issuers: &[Party]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(issuers)
        .map_err(|e| format!("cannot encode the trusted issuers: {e}"))?;
    write(&dir.join(TRUSTED_ISSUERS_FILE), &text)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A line from a node process, or the end of its stdout.
enum Incoming {
    Line {
        role: Role,
        generation: u32,
        line: String,
    },
    Closed {
        role: Role,
        generation: u32,
    },
}

/// A running node process. Killed (SIGKILL) if dropped while running.
struct NodeProcess {
    generation: u32,
    /// It has reported [`Event::Ready`].
    ready: bool,
    /// Its CPU clock ticks when CPU accounting started (or it started).
    cpu_base: Option<u64>,
    child: Child,
    stdin: ChildStdin,
}

type StopSignal = Pin<Box<dyn Future<Output = std::io::Result<&'static str>>>>;

/// The node processes and what they reported.
struct Cluster {
    dir: PathBuf,
    exe: PathBuf,
    price: u64,
    procs: HashMap<Role, NodeProcess>,
    generations: u32,
    lines: mpsc::UnboundedSender<Incoming>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    stop: StopSignal,
    deadline: tokio::time::Instant,
    timeout: Duration,
    next_id: u64,
    /// Current step of each trade in flight.
    steps: HashMap<u32, String>,
    /// Outcome of each ended trade.
    done: BTreeMap<u32, Result<Settled, String>>,
    /// Notable events not yet shown.
    notes: Vec<String>,
    /// CPU clock ticks used per node while accounting is on.
    cpu: Option<HashMap<Role, u64>>,
}

impl Cluster {
    fn new(dir: &Path, config: &MultiProcessConfig) -> Result<Self, String> {
        let (lines, incoming) = mpsc::unbounded_channel();
        Ok(Cluster {
            dir: dir.to_owned(),
            exe: config.node_exe.clone(),
            price: config.demo.price,
            procs: HashMap::new(),
            generations: 0,
            lines,
            incoming,
            stop: Box::pin(runner::shutdown_signal()),
            deadline: tokio::time::Instant::now() + config.timeout,
            timeout: config.timeout,
            next_id: 1,
            steps: HashMap::new(),
            done: BTreeMap::new(),
            notes: Vec::new(),
            cpu: None,
        })
    }

    fn file(&self, role: Role, extension: &str) -> PathBuf {
        self.dir.join(format!("{}.{extension}", role.file_stem()))
    }

    /// Starts `role`'s node process.
    fn spawn(&mut self, role: Role) -> Result<(), String> {
        let log_path = self.file(role, "log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .arg("node")
            .arg("--config")
            .arg(self.file(role, "toml"))
            .arg("--role")
            .arg(role.file_stem());
        if role == Role::Seller {
            command
                .arg("--trust")
                .arg(self.dir.join(TRUSTED_ISSUERS_FILE));
        }
        if role == Role::Buyer {
            command
                .arg("--notary")
                .arg(self.dir.join(NOTARY_IDENTITY_FILE))
                .arg("--price")
                .arg(self.price.to_string());
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot start {} as the {role} node: {e}",
                self.exe.display()
            )
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("the {role} node process has no stdin/stdout pipe"));
        };
        self.generations += 1;
        let generation = self.generations;
        tokio::spawn(read_lines(role, generation, stdout, self.lines.clone()));
        self.procs.insert(
            role,
            NodeProcess {
                generation,
                ready: false,
                cpu_base: None,
                child,
                stdin,
            },
        );
        Ok(())
    }

    /// The next event of a current node process. Fails on an interruption,
    /// the deadline, a node that exits unexpectedly or a malformed line.
    async fn next(&mut self) -> Result<(Role, Event), String> {
        loop {
            let incoming = tokio::select! {
                incoming = self.incoming.recv() => incoming,
                signal = &mut self.stop => {
                    return Err(format!(
                        "interrupted by {}; every node process was stopped",
                        signal.unwrap_or("a signal")
                    ));
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    return Err(format!(
                        "the demo did not finish within {} s (raise --timeout-secs, or see the node logs with --dir)",
                        self.timeout.as_secs()
                    ));
                }
            };
            match incoming {
                None => return Err("internal: the node event channel closed".into()),
                Some(Incoming::Line {
                    role,
                    generation,
                    line,
                }) => {
                    if !self.is_current(role, generation) {
                        continue;
                    }
                    let event = decode_event(&line)
                        .map_err(|e| format!("the {role} node sent a bad line: {e}"))?;
                    return Ok((role, event));
                }
                Some(Incoming::Closed { role, generation }) => {
                    if !self.is_current(role, generation) {
                        continue;
                    }
                    let status = match self.procs.get_mut(&role) {
                        Some(p) => match p.child.wait().await {
                            Ok(s) => s.to_string(),
                            Err(e) => format!("unknown status ({e})"),
                        },
                        None => "unknown status".to_owned(),
                    };
                    self.procs.remove(&role);
                    return Err(format!(
                        "the {role} node process exited unexpectedly ({status}); its log:\n{}",
                        tail(&self.file(role, "log"), 20)
                    ));
                }
            }
        }
    }

    fn is_current(&self, role: Role, generation: u32) -> bool {
        self.procs
            .get(&role)
            .is_some_and(|p| p.generation == generation)
    }

    /// Sends `command` to `role` and waits for its reply, taking in every
    /// other event meanwhile.
    async fn request(&mut self, role: Role, command: Command) -> Result<Reply, String> {
        let id = self.next_id;
        self.next_id += 1;
        let what = format!("{command:?}");
        let mut line = encode(&Request { id, command })?;
        line.push('\n');
        let proc = self
            .procs
            .get_mut(&role)
            .ok_or_else(|| format!("the {role} node is not running"))?;
        if let Err(e) = async {
            proc.stdin.write_all(line.as_bytes()).await?;
            proc.stdin.flush().await
        }
        .await
        {
            return Err(format!("cannot send a command to the {role} node: {e}"));
        }
        loop {
            let (from, event) = self.next().await?;
            match event {
                Event::Reply { id: got, result } if from == role && got == id => {
                    return result.map_err(|e| {
                        let what: String = what.chars().take(60).collect();
                        format!("the {role} node failed to do {what}…: {e}")
                    });
                }
                other => self.absorb(from, other),
            }
        }
    }

    /// Waits until `role`'s current process reports it is up.
    async fn wait_ready(&mut self, role: Role) -> Result<(), String> {
        while !self.procs.get(&role).is_some_and(|p| p.ready) {
            let (from, event) = self.next().await?;
            self.absorb(from, event);
        }
        Ok(())
    }

    /// Takes in an event that is not the reply being waited for.
    fn absorb(&mut self, from: Role, event: Event) {
        match event {
            Event::Ready {
                flows_in_flight, ..
            } => {
                if let Some(p) = self.procs.get_mut(&from) {
                    p.ready = true;
                }
                if flows_in_flight > 0 {
                    self.notes.push(format!(
                        "{from} node up again on its database: {flows_in_flight} flows in flight continue from their checkpoints"
                    ));
                }
            }
            Event::Progress { trade, step } => {
                if !self.done.contains_key(&trade) {
                    self.steps.insert(trade, step);
                }
            }
            Event::TradeDone { trade, outcome } => {
                self.steps.remove(&trade);
                self.done.insert(trade, outcome);
            }
            Event::Reply { id, result } => {
                tracing::warn!(node = %from, id, ?result, "a reply nobody waits for was dropped");
            }
        }
    }

    /// Hands a progress snapshot (and pending notes) to `observe`.
    fn draw(&mut self, observe: &mut dyn FnMut(&DemoProgress)) {
        let mut p = DemoProgress {
            finished: u32::try_from(self.done.len()).unwrap_or(u32::MAX),
            ..DemoProgress::default()
        };
        for step in self.steps.values() {
            *p.by_step.entry(step.clone()).or_default() += 1;
        }
        observe(&p);
        for note in std::mem::take(&mut self.notes) {
            observe(&DemoProgress {
                event: Some(note),
                ..p.clone()
            });
        }
    }

    /// Starts counting the CPU time the node processes use from now on.
    fn start_cpu_accounting(&mut self) {
        self.cpu = Some(HashMap::new());
        for proc in self.procs.values_mut() {
            proc.cpu_base = proc.child.id().and_then(cpu_ticks);
        }
    }

    /// Adds what `role`'s process used since its base to the count (before
    /// it is killed, or at the end).
    fn account_cpu(&mut self, role: Role) {
        let Some(cpu) = &mut self.cpu else { return };
        let Some(proc) = self.procs.get_mut(&role) else {
            return;
        };
        let now = proc.child.id().and_then(cpu_ticks);
        if let Some(now) = now {
            *cpu.entry(role).or_default() += now.saturating_sub(proc.cpu_base.unwrap_or(0));
        }
        proc.cpu_base = now;
    }

    /// Stops counting; the CPU time each node used meanwhile (empty where
    /// `/proc` is not available).
    fn stop_cpu_accounting(&mut self) -> Vec<(String, Duration)> {
        for role in Role::ALL {
            self.account_cpu(role);
        }
        let Some(cpu) = self.cpu.take() else {
            return Vec::new();
        };
        Role::ALL
            .iter()
            .filter_map(|role| {
                let ticks = cpu.get(role)?;
                Some((
                    role.name().to_owned(),
                    Duration::from_millis(ticks.saturating_mul(1000) / CLOCK_TICKS_PER_S),
                ))
            })
            .collect()
    }

    /// Shows `text` now, with the current progress.
    fn note(&mut self, observe: &mut dyn FnMut(&DemoProgress), text: &str) {
        self.notes.push(text.to_owned());
        self.draw(observe);
    }

    /// Sends `signal` to `role`'s process (the crash schedule pauses and
    /// resumes the notary with SIGSTOP and SIGCONT).
    fn signal(&self, role: Role, signal: Signal) -> Result<(), String> {
        let proc = self
            .procs
            .get(&role)
            .ok_or_else(|| format!("the {role} node is not running"))?;
        let pid = proc
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| format!("the {role} node has no process id"))?;
        kill_process(pid, signal)
            .map_err(|e| format!("cannot send {signal:?} to the {role} node: {e}"))
    }

    /// Whether the seller reports a trade numbered `first` or later waiting
    /// for its final transaction: the buyer holds that trade's flow.
    fn buyer_holds_a_trade(&self, first: usize) -> bool {
        self.steps
            .iter()
            .any(|(trade, step)| *trade as usize >= first && step == SELLER_AWAITS_FINAL)
    }

    /// Kills `role`'s process with SIGKILL and starts it again on the same
    /// files.
    async fn crash(&mut self, role: Role) -> Result<(), String> {
        self.account_cpu(role);
        let Some(mut proc) = self.procs.remove(&role) else {
            return Err(format!("the {role} node is not running"));
        };
        proc.child
            .start_kill()
            .map_err(|e| format!("cannot kill the {role} node: {e}"))?;
        proc.child
            .wait()
            .await
            .map_err(|e| format!("the killed {role} node could not be reaped: {e}"))?;
        self.spawn(role)
    }

    /// Asks every node to stop and waits for each; returns a problem for a
    /// node that did not stop cleanly.
    async fn stop_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for role in Role::ALL {
            match self.request(role, Command::Shutdown).await {
                Ok(_) => {}
                Err(e) => problems.push(format!("cannot stop the {role} node: {e}")),
            }
            let Some(mut proc) = self.procs.remove(&role) else {
                continue;
            };
            match tokio::time::timeout(STOP_GRACE, proc.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => problems.push(format!(
                    "the {role} node exited with {status}; see {}",
                    self.file(role, "log").display()
                )),
                Ok(Err(e)) => problems.push(format!("cannot wait for the {role} node: {e}")),
                Err(_) => {
                    let _ = proc.child.start_kill();
                    let _ = proc.child.wait().await;
                    problems.push(format!(
                        "the {role} node did not stop within {} s and was killed",
                        STOP_GRACE.as_secs()
                    ));
                }
            }
        }
        problems
    }

    /// Kills every node process and reaps it (error paths).
    async fn kill_all(&mut self) {
        for (role, mut proc) in self.procs.drain() {
            if let Err(e) = proc.child.start_kill() {
                tracing::warn!(node = %role, error = %e, "cannot kill a node process");
            }
            let _ = proc.child.wait().await;
        }
    }
}

/// Forwards a node's stdout lines, then tells that it closed.
async fn read_lines(
    role: Role,
    generation: u32,
    stdout: ChildStdout,
    to: mpsc::UnboundedSender<Incoming>,
) {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if to
                    .send(Incoming::Line {
                        role,
                        generation,
                        line,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = to.send(Incoming::Closed { role, generation });
                return;
            }
        }
    }
}

/// The unit of the CPU times in `/proc/PID/stat` (`USER_HZ`, fixed at 100
/// in Linux's user-space ABI).
const CLOCK_TICKS_PER_S: u64 = 100;

/// User plus system CPU time of process `pid` so far, in clock ticks, from
/// `/proc/PID/stat`; `None` where that is not available.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing parenthesis. utime and stime are
    // fields 14 and 15 of the line, so 12th and 13th after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The last `n` lines of a log file, for an error message.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
