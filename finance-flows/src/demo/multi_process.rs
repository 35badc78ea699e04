//! The demo across three OS processes: the orchestrator (this code) writes
//! keys, a network map and one configuration per node into a directory,
//! starts the notary, the buyer and the seller as child processes (the same
//! executable's hidden `node` subcommand, see [`node_process`](super::node_process)),
//! and drives them through each node's admin API, as any client or operator
//! would: it starts flows by name with JSON arguments (in batches), waits
//! for their results, follows the seller's trades on its event stream and
//! reads each node's status. The flows and their arguments are in
//! [`api`](super::api).
//!
//! 1. the notary is started and asked for its ledger identity (the
//!    `ledger_identity` flow), written to `notary-identity.json` for the
//!    buyer (which checks every trade names it); the buyer, the demo's bank,
//!    is started next and asked for its own, written to
//!    `trusted-issuers.json` for the seller, started last with `--trust`
//!    (it accepts only that issuer's cash);
//! 2. the buyer issues one coin per trade, the seller one paper per trade;
//! 3. the seller starts the trades (every one at once, or in two halves
//!    with a crash); their progress comes from the seller's event stream
//!    (`GET /api/v1/events`), their outcomes from batch result requests
//!    (`POST /api/v1/flows/results`);
//! 4. once the first half has settled, the buyer is killed with SIGKILL
//!    while it holds trades of the second half, and started again on its
//!    database — its flows continue from their checkpoints, the seller
//!    re-sends what the buyer had not acknowledged (the schedule is explained at `CrashSchedule`);
//! 5. the buyer tries to spend a coin a settled trade consumed: the notary
//!    must refuse;
//! 6. every vault is reported and reconciled, and every node is stopped
//!    with SIGTERM.
//!
//! ```text
//! DIR/network.toml                      the network map (all three nodes)
//! DIR/{notary,seller,buyer}.toml        node configuration, admin API address included
//! DIR/{notary,seller,buyer}.key         identity key (mode 0600)
//! DIR/{notary,seller,buyer}.redb        the node's database: checkpoints, vault, notary index
//! DIR/{notary,seller,buyer}.redb.admin-token  the admin API's token (mode 0600)
//! DIR/{notary,seller,buyer}.redb.admin-url    the admin API's URL
//! DIR/{notary,seller,buyer}.log         the node's log (stderr), appended across restarts
//! DIR/notary-identity.json              the notary's ledger identity, read by the buyer
//! DIR/trusted-issuers.json              the cash issuers the seller accepts (the buyer)
//! ```
//!
//! No child can outlive the orchestrator: every child is killed when the
//! orchestrator gives up (any error, Ctrl-C, SIGTERM, a timeout), and a
//! child whose stdin closes (the orchestrator died, even by SIGKILL) stops
//! itself.

use super::api::{
    DOUBLE_SPEND, DoubleSpendArgs, ISSUE_CASH, ISSUE_PAPER, IssueCashArgs, IssuePaperArgs,
    LEDGER_IDENTITY, Role, SELL, SellArgs, TRUST_CLIENT_ID, VAULT_REPORT,
};
use super::{DemoConfig, DemoProgress, DemoSummary, reconcile};
use crate::flows::Notary;
use crate::flows::report::VaultReport;
use crate::ledger::{Amount, Currency, SignedTransaction, StateRef};
use flow_runtime::runner::admin::client::{AdminClient, ClientError, read_token_file};
use flow_runtime::runner::{self, keys};
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use flow_runtime::{Party, ProgressTracker, Timestamp};
use rustix::process::{Pid, Signal, kill_process};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, oneshot, watch};

/// The file the notary's identity is written to, for the buyer.
pub const NOTARY_IDENTITY_FILE: &str = "notary-identity.json";

/// The file the seller's trusted cash issuers (the buyer, the demo's bank)
/// are written to.
pub const TRUSTED_ISSUERS_FILE: &str = "trusted-issuers.json";

/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often the progress display is refreshed at most.
const DRAW_EVERY: Duration = Duration::from_millis(100);

/// How often a starting node's admin port is tried.
const UP_POLL: Duration = Duration::from_millis(20);

/// Flows started per batch request (`POST /api/v1/flows/batch`), each
/// batch ONE commit on the node: the API's largest batch. A trade's start
/// request is about 1.3 KB of JSON, so the nodes' configurations raise the
/// API's body limit to [`MAX_BODY_BYTES`].
const START_CHUNK: usize = 10_000;

/// The admin API's body limit in the nodes' configurations: room for a
/// batch of [`START_CHUNK`] trade starts (the API's default, 1 MiB, holds
/// about 800), so that every trade starts in one request and one commit.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How long one round of result collection waits on the node for the
/// trades still pending; each round answers what finished meanwhile (and
/// returns early once all have).
const RESULTS_ROUND_S: f64 = 0.2;

/// Longest wait of one result request (a request is repeated until the
/// flow has finished or the demo's deadline passes).
const LONG_WAIT_S: f64 = 30.0;

/// Trades run alone before the timed ones, as `trade-bench` walks one
/// trade before it times the others. The buyer pays with coins of ONE
/// issuance (a transaction with a coin per trade, ~100 bytes a coin); a
/// node that does not hold it yet fetches it (the seller, resolving the
/// buyer's proposal) or is sent it (the notary, with a request). Trades
/// that all start before any of them has finished would each move and
/// check that whole transaction again, a cold start that says nothing about
/// the steady state of a trade; after one trade both nodes hold it.
const WARM_UP_TRADES: usize = 1;

/// Each API request may take this long beyond its own wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Follow each trade's progress on the seller's event stream, for a
    /// display (the crash schedule follows it whatever this says). Without
    /// it, and without a crash, the outcomes are collected by one result
    /// request that waits for them all, and the seller publishes nothing.
    pub follow_progress: bool,
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
    let nodes = write_node_files(&dir, config.demo.trades)?;
    let mut cluster = Cluster::new(&dir, config, nodes);
    let result = demo(&mut cluster, config, observe).await;
    if result.is_err() {
        cluster.kill_all().await;
    }
    result
}

/// The trades of the run: which run is which trade, where each is, how
/// each ended.
#[derive(Default)]
struct Trades {
    /// Trade number by the seller's run id.
    by_run: HashMap<String, u32>,
    /// Run id by trade number.
    runs: BTreeMap<u32, String>,
    /// Current step of each trade in flight.
    steps: HashMap<u32, String>,
    /// Outcome of each ended trade (`Err`: the flow's error).
    done: BTreeMap<u32, Result<(), String>>,
}

impl Trades {
    fn add(&mut self, started: impl IntoIterator<Item = (u32, String)>) {
        for (trade, run) in started {
            self.by_run.insert(run.clone(), trade);
            self.runs.insert(trade, run);
        }
    }

    /// Run ids of the trades started and not ended.
    fn pending(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|(trade, _)| !self.done.contains_key(trade))
            .map(|(_, run)| run.clone())
            .collect()
    }

    fn absorb(&mut self, incoming: Incoming) -> Result<(), String> {
        match incoming {
            Incoming::Progress { run, step } => {
                if let Some(trade) = self.by_run.get(&run)
                    && !self.done.contains_key(trade)
                    && step != ProgressTracker::DONE
                {
                    self.steps.insert(*trade, step);
                }
            }
            Incoming::Finished(ended) => {
                for (run, outcome) in ended {
                    if let Some(trade) = self.by_run.get(&run) {
                        self.steps.remove(trade);
                        self.done.insert(*trade, outcome);
                    }
                }
            }
            Incoming::StreamEnded(why) => {
                return Err(format!("the seller's event stream ended: {why}"));
            }
        }
        Ok(())
    }

    /// Whether the seller reports a trade numbered `first` or later waiting
    /// for its final transaction: the buyer holds that trade's flow.
    fn buyer_holds_a_trade(&self, first: usize) -> bool {
        self.steps
            .iter()
            .any(|(trade, step)| *trade as usize >= first && step == SELLER_AWAITS_FINAL)
    }

    fn progress(&self) -> DemoProgress {
        let mut p = DemoProgress {
            finished: u32::try_from(self.done.len()).unwrap_or(u32::MAX),
            ..DemoProgress::default()
        };
        for step in self.steps.values() {
            *p.by_step.entry(step.clone()).or_default() += 1;
        }
        p
    }
}

/// Everything after the files are written.
async fn demo(
    cluster: &mut Cluster,
    config: &MultiProcessConfig,
    observe: &mut dyn FnMut(&DemoProgress),
) -> Result<DemoSummary, String> {
    let trades = config.demo.trades;
    let price = Amount::new(config.demo.price, Currency::USD);
    let mut progress = Trades::default();
    let mut show = |cluster: &mut Cluster, progress: &Trades| {
        let p = progress.progress();
        observe(&p);
        for note in std::mem::take(&mut cluster.notes) {
            observe(&DemoProgress {
                event: Some(note),
                ..p.clone()
            });
        }
    };

    cluster
        .notes
        .push("starting the notary, buyer and seller processes".into());
    show(cluster, &progress);
    cluster.spawn(Role::Notary)?;
    cluster.wait_up(Role::Notary).await?;
    let ledger: Party = cluster
        .run_flow(Role::Notary, LEDGER_IDENTITY, Value::Null)
        .await?;
    let notary = Notary {
        party: ledger,
        node: cluster.party(Role::Notary),
    };
    write_notary(&cluster.dir, &notary)?;
    cluster.spawn(Role::Buyer)?;
    cluster.wait_up(Role::Buyer).await?;
    // The buyer is the demo's bank: the seller is told to accept its cash.
    let buyer_ledger: Party = cluster
        .run_flow(Role::Buyer, LEDGER_IDENTITY, Value::Null)
        .await?;
    write_issuers(&cluster.dir, std::slice::from_ref(&buyer_ledger))?;
    cluster.spawn(Role::Seller)?;
    cluster.wait_up(Role::Seller).await?;
    cluster.wait_trusted().await?;

    cluster.notes.push(format!(
        "issuing {trades} coins to the buyer and {trades} papers to the seller"
    ));
    show(cluster, &progress);
    let _: SignedTransaction = cluster
        .run_flow(
            Role::Buyer,
            ISSUE_CASH,
            to_json(&IssueCashArgs {
                amount: price,
                coins: trades,
                notary: notary.clone(),
            })?,
        )
        .await?;
    let papers = cluster.issue_papers(trades, &notary).await?;

    cluster.notes.push(format!(
        "{trades} trades: the seller sells each paper to the buyer for {price}"
    ));
    show(cluster, &progress);
    let orders: Vec<(u32, StateRef)> = (0..).zip(papers.iter().copied()).collect();
    let buyer = cluster.party(Role::Buyer);
    // The first trade runs alone, untimed (see `WARM_UP_TRADES`).
    let (warm, orders) = orders.split_at(WARM_UP_TRADES.min(orders.len().saturating_sub(1)));
    if !warm.is_empty() {
        cluster.notes.push(format!(
            "{} trade first, alone and untimed: the seller and the notary then hold the buyer's cash issuance",
            warm.len()
        ));
        show(cluster, &progress);
        let runs = cluster.start_trades(warm, &buyer, price, &notary).await?;
        progress.add(runs.clone());
        for (_, run) in runs {
            let outcome = cluster
                .call(Role::Seller, "give a trade's result", move |api| {
                    wait_result(api, &run)
                })
                .await?;
            progress.absorb(Incoming::Finished(vec![(
                text(&outcome["run_id"]),
                outcome_of(&outcome),
            )]))?;
        }
    }
    // With a crash, the trades start in two halves so that the buyer is
    // killed while it provably has flows in flight (see `CrashSchedule`).
    let timed = u32::try_from(orders.len()).unwrap_or(u32::MAX);
    let schedule = CrashSchedule::new(config.demo.crash_buyer, timed);
    let (first, second) = orders.split_at(schedule.first_half);
    if config.follow_progress || schedule.crash {
        cluster.follow_seller().await?;
    } else {
        // Nothing to show between the start and the end: one result
        // request waits for every trade.
        cluster.round_wait_s = LONG_WAIT_S;
    }
    cluster.start_cpu_accounting();
    let started = Instant::now();
    progress.add(cluster.start_trades(first, &buyer, price, &notary).await?);
    let start_phase = started.elapsed();
    let mut restarts = 0;
    let mut phase = CrashPhase::FirstHalf;
    let mut drawn = Instant::now();
    let mut ended = started;
    while progress.done.len() < trades as usize {
        match phase {
            CrashPhase::FirstHalf
                if schedule.crash && progress.done.len() >= warm.len() + first.len() =>
            {
                cluster.signal(Role::Notary, Signal::STOP)?;
                progress.add(cluster.start_trades(second, &buyer, price, &notary).await?);
                phase = CrashPhase::NotaryPaused;
            }
            CrashPhase::NotaryPaused
                if progress.buyer_holds_a_trade(warm.len() + schedule.first_half) =>
            {
                let finished = progress.done.len();
                cluster.notes.push(format!(
                    "buyer killed with SIGKILL after {finished} of {trades} trades settled; starting it again from {}",
                    cluster.file(Role::Buyer, "redb").display()
                ));
                cluster.crash(Role::Buyer).await?;
                cluster.signal(Role::Notary, Signal::CONT)?;
                restarts += 1;
                phase = CrashPhase::Done;
            }
            _ => {}
        }
        if !cluster.notes.is_empty() || drawn.elapsed() >= DRAW_EVERY {
            show(cluster, &progress);
            drawn = Instant::now();
        }
        let incoming = cluster.next(&progress.pending()).await?;
        if matches!(incoming, Incoming::Finished(_)) {
            ended = Instant::now();
        }
        progress.absorb(incoming)?;
    }
    let elapsed = ended.duration_since(started);
    let cpu = cluster.stop_cpu_accounting();
    show(cluster, &progress);

    let mut completed = 0;
    let mut failures = Vec::new();
    let mut settled = None;
    for (trade, outcome) in &progress.done {
        match outcome {
            Ok(()) => {
                completed += 1;
                settled = settled.or(Some(*trade));
            }
            Err(e) => failures.push(e.clone()),
        }
    }

    let mut rejected_double_spends = 0;
    if let Some(trade) = settled {
        let coin = cluster
            .spent_coin(&progress.runs[&trade], papers[trade as usize])
            .await?;
        cluster.notes.push(format!(
            "the buyer tries to spend coin {coin} a second time"
        ));
        show(cluster, &progress);
        let probe = to_json(&DoubleSpendArgs {
            coin,
            notary: notary.clone(),
        })?;
        match cluster
            .run_flow::<String>(Role::Buyer, DOUBLE_SPEND, probe)
            .await
        {
            Ok(reason) if reason.contains("double spend") => rejected_double_spends += 1,
            Ok(other) => failures.push(format!(
                "the double spend was refused for another reason: {other}"
            )),
            Err(e) => failures.push(e),
        }
    }

    let seller: VaultReport = cluster
        .run_flow(Role::Seller, VAULT_REPORT, Value::Null)
        .await?;
    let buyer: VaultReport = cluster
        .run_flow(Role::Buyer, VAULT_REPORT, Value::Null)
        .await?;
    let notary_report: VaultReport = cluster
        .run_flow(Role::Notary, VAULT_REPORT, Value::Null)
        .await?;
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
    show(cluster, &progress);
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
        untimed: u32::try_from(warm.len()).unwrap_or(u32::MAX),
        start_phase: Some(start_phase),
        cpu,
        problems,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| format!("cannot encode flow arguments: {e}"))
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

/// A node as the orchestrator knows it before it starts.
#[derive(Debug, Clone)]
struct NodeFiles {
    /// Its network identity.
    party: Party,
    /// Where its admin API listens.
    admin: std::net::SocketAddr,
}

/// A free TCP port on 127.0.0.1 (bound, then released for the node).
fn free_port() -> Result<std::net::SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// Writes a key and a configuration per node and the network map; returns
/// each node's network identity and admin address. Ports are chosen by
/// binding port 0 on 127.0.0.1 and releasing it just before the nodes
/// start; a restarted node keeps its ports.
///
/// Every node may run a responder flow per trade at once
/// (`max_responders_per_peer` at least `trades`): the buyer answers every
/// trade the seller starts and the notary every buyer's notarisation. With
/// the default bound (256) the initiations beyond it would be refused
/// until the initiator's next redelivery tick, and 1,000 trades started
/// at once would run in waves a tick apart.
fn write_node_files(dir: &Path, trades: u32) -> Result<HashMap<Role, NodeFiles>, String> {
    let responders = trades.max(256);
    let mut entries = Vec::new();
    let mut nodes = HashMap::new();
    for role in Role::ALL {
        let stem = role.file_stem();
        let key = keys::generate_identity().map_err(|e| e.to_string())?;
        keys::write_key_file(&dir.join(format!("{stem}.key")), &key).map_err(|e| e.to_string())?;
        let address = free_port()?.to_string();
        let admin = free_port()?;
        let public = keys::public_key(&key);
        nodes.insert(
            role,
            NodeFiles {
                party: Party::new(role.name(), public),
                admin,
            },
        );
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
             redelivery_interval_ms = 300\n\
             # Every trade of the run may be in flight at once.\n\
             max_responders_per_peer = {responders}\n\n\
             # The admin API: the orchestrator drives the node through it,\n\
             # as `flowctl` does (token in {stem}.redb.admin-token).\n\
             [admin]\n\
             listen = \"{admin}\"\n\
             # Every trade starts in one batch request.\n\
             max_body_bytes = {MAX_BODY_BYTES}\n",
            name = role.name(),
        );
        write(&dir.join(format!("{stem}.toml")), &config)?;
    }
    let map = NetworkMap::new(entries).map_err(|e| e.to_string())?;
    write(&dir.join("network.toml"), &map.to_toml_string())?;
    Ok(nodes)
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

/// What the orchestrator hears while the trades run.
enum Incoming {
    /// A seller run's innermost progress step (from its event stream).
    Progress { run: String, step: String },
    /// Runs that ended, with their outcomes (from a result round).
    Finished(Vec<(String, Result<(), String>)>),
    /// The seller's event stream ended or failed.
    StreamEnded(String),
}

/// A running node process. Its child is owned by a watcher task, which
/// reports the exit and kills it on request (or when the runtime ends).
struct NodeProcess {
    generation: u32,
    pid: u32,
    /// Held open: the node stops when it closes (`--stop-when-stdin-closes`).
    _stdin: ChildStdin,
    /// Asks the watcher to kill the child (SIGKILL).
    kill: Option<oneshot::Sender<()>>,
    /// The exit status, once it exited.
    exited: watch::Receiver<Option<ExitStatus>>,
    /// Its admin API client, once it is up.
    api: Option<AdminClient>,
    /// Its CPU clock ticks when CPU accounting started (or it started).
    cpu_base: Option<u64>,
}

type StopSignal = Pin<Box<dyn Future<Output = std::io::Result<&'static str>>>>;

/// What ends a wait early: an interruption, the deadline, or a node
/// process that exited.
struct Watch {
    stop: StopSignal,
    deadline: tokio::time::Instant,
    timeout: Duration,
    /// `(role, generation, status)` of every node process that exits.
    exits: mpsc::UnboundedReceiver<(Role, u32, ExitStatus)>,
}

enum Trouble {
    /// Give up: why.
    Stop(String),
    /// A node process exited (maybe one that was meant to).
    Exit(Role, u32, ExitStatus),
}

impl Watch {
    async fn trouble(&mut self) -> Trouble {
        tokio::select! {
            signal = &mut self.stop => Trouble::Stop(format!(
                "interrupted by {}; every node process was stopped",
                signal.unwrap_or("a signal")
            )),
            () = tokio::time::sleep_until(self.deadline) => Trouble::Stop(format!(
                "the demo did not finish within {} s (raise --timeout-secs, or see the node logs with --dir)",
                self.timeout.as_secs()
            )),
            exit = self.exits.recv() => match exit {
                Some((role, generation, status)) => Trouble::Exit(role, generation, status),
                None => Trouble::Stop("internal: the exit channel closed".into()),
            },
        }
    }
}

/// A result-collection round in flight: the node's answer.
type Round = tokio::task::JoinHandle<Result<Value, ClientError>>;

/// The node processes and how to reach them.
struct Cluster {
    dir: PathBuf,
    exe: PathBuf,
    price: u64,
    nodes: HashMap<Role, NodeFiles>,
    procs: HashMap<Role, NodeProcess>,
    generations: u32,
    watch: Watch,
    exit_tx: mpsc::UnboundedSender<(Role, u32, ExitStatus)>,
    /// Progress from the seller's event stream.
    incoming_tx: mpsc::UnboundedSender<Incoming>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// The result round in flight.
    round: Option<Round>,
    /// How long a result round waits on the node
    /// ([`RESULTS_ROUND_S`] while progress is followed).
    round_wait_s: f64,
    /// Notable events not yet shown.
    notes: Vec<String>,
    /// CPU clock ticks used per node while accounting is on.
    cpu: Option<HashMap<Role, u64>>,
}

impl Cluster {
    fn new(dir: &Path, config: &MultiProcessConfig, nodes: HashMap<Role, NodeFiles>) -> Self {
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        Cluster {
            dir: dir.to_owned(),
            exe: config.node_exe.clone(),
            price: config.demo.price,
            nodes,
            procs: HashMap::new(),
            generations: 0,
            watch: Watch {
                stop: Box::pin(runner::shutdown_signal()),
                deadline: tokio::time::Instant::now() + config.timeout,
                timeout: config.timeout,
                exits,
            },
            exit_tx,
            incoming_tx,
            incoming,
            round: None,
            round_wait_s: RESULTS_ROUND_S,
            notes: Vec::new(),
            cpu: None,
        }
    }

    fn file(&self, role: Role, extension: &str) -> PathBuf {
        self.dir.join(format!("{}.{extension}", role.file_stem()))
    }

    /// `role`'s network identity.
    fn party(&self, role: Role) -> Party {
        self.nodes[&role].party.clone()
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
            .arg(role.file_stem())
            .arg("--stop-when-stdin-closes");
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
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot start {} as the {role} node: {e}",
                self.exe.display()
            )
        })?;
        let (Some(stdin), Some(pid)) = (child.stdin.take(), child.id()) else {
            return Err(format!("the {role} node process has no stdin pipe or pid"));
        };
        self.generations += 1;
        let generation = self.generations;
        let (kill, kill_rx) = oneshot::channel::<()>();
        let (exited_tx, exited) = watch::channel(None);
        let exits = self.exit_tx.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            if let Ok(status) = status {
                let _ = exited_tx.send(Some(status));
                let _ = exits.send((role, generation, status));
            }
        });
        self.procs.insert(
            role,
            NodeProcess {
                generation,
                pid,
                _stdin: stdin,
                kill: Some(kill),
                exited,
                api: None,
                cpu_base: None,
            },
        );
        Ok(())
    }

    fn is_current(&self, role: Role, generation: u32) -> bool {
        self.procs
            .get(&role)
            .is_some_and(|p| p.generation == generation)
    }

    /// The error for a node that exited while it should not have.
    fn exited(&mut self, role: Role, status: ExitStatus) -> String {
        self.procs.remove(&role);
        format!(
            "the {role} node process exited unexpectedly ({status}); its log:\n{}",
            tail(&self.file(role, "log"), 20)
        )
    }

    /// Waits for `fut`, unless the demo is interrupted, times out, or a node
    /// process exits first.
    async fn guard<R>(&mut self, fut: impl Future<Output = R>) -> Result<R, String> {
        tokio::pin!(fut);
        loop {
            let trouble = tokio::select! {
                r = &mut fut => return Ok(r),
                t = self.watch.trouble() => t,
            };
            match trouble {
                Trouble::Stop(why) => return Err(why),
                Trouble::Exit(role, generation, status) => {
                    if self.is_current(role, generation) {
                        return Err(self.exited(role, status));
                    }
                }
            }
        }
    }

    /// Runs `f` with `role`'s API client on a blocking thread (the client
    /// is a blocking one), guarded like [`guard`](Self::guard).
    async fn call<R: Send + 'static>(
        &mut self,
        role: Role,
        what: &str,
        f: impl FnOnce(&AdminClient) -> Result<R, ClientError> + Send + 'static,
    ) -> Result<R, String> {
        let api = self
            .procs
            .get(&role)
            .and_then(|p| p.api.clone())
            .ok_or_else(|| format!("the {role} node is not running"))?;
        let job = tokio::task::spawn_blocking(move || f(&api));
        match self.guard(job).await? {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("the {role} node's API failed to {what}: {e}")),
            Err(e) => Err(format!(
                "internal: a request to the {role} node failed: {e}"
            )),
        }
    }

    /// Waits until `role`'s admin API answers: its port accepts, its token
    /// file is there (the node writes it before it listens) and `/health`
    /// says ok. Notes the flows it resumed, if any.
    async fn wait_up(&mut self, role: Role) -> Result<(), String> {
        let addr = self.nodes[&role].admin;
        let token_file =
            PathBuf::from(format!("{}.admin-token", self.file(role, "redb").display()));
        let url = format!("http://{addr}");
        loop {
            let accepts = self.guard(tokio::net::TcpStream::connect(addr)).await?;
            if accepts.is_ok() {
                break;
            }
            self.guard(tokio::time::sleep(UP_POLL)).await?;
        }
        let token = read_token_file(&token_file).map_err(|e| e.to_string())?;
        let api = AdminClient::new(&url, &token, REQUEST_TIMEOUT);
        if let Some(p) = self.procs.get_mut(&role) {
            p.api = Some(api);
        }
        let status = self
            .call(role, "answer its status", |api| {
                api.get("/health")?;
                api.get("/api/v1/node")
            })
            .await?;
        let in_flight = status["flows_in_flight"].as_u64().unwrap_or(0);
        if in_flight > 0 {
            self.notes.push(format!(
                "{role} node up again on its database: {in_flight} flows in flight continue from their checkpoints"
            ));
        }
        Ok(())
    }

    /// Starts `flow` on `role` by name and waits for its output.
    async fn run_flow<R: DeserializeOwned + Send + 'static>(
        &mut self,
        role: Role,
        flow: &'static str,
        args: Value,
    ) -> Result<R, String> {
        let outcome = self
            .call(role, &format!("run {flow}"), move |api| {
                let started = api.post("/api/v1/flows", &json!({ "flow": flow, "args": args }))?;
                wait_result(api, &text(&started["run_id"]))
            })
            .await?;
        output(role, flow, &outcome)
    }

    /// Waits until the seller has run `trust_issuers` (started under
    /// [`TRUST_CLIENT_ID`] by `--trust`).
    async fn wait_trusted(&mut self) -> Result<(), String> {
        let outcome = self
            .call(Role::Seller, "trust the buyer's cash", |api| {
                let path = format!("/api/v1/client-ids/{TRUST_CLIENT_ID}");
                let found = loop {
                    match api.get(&path) {
                        // Started just after the API came up: not yet.
                        Err(ClientError::Status { status: 404, .. }) => {
                            std::thread::sleep(UP_POLL);
                        }
                        other => break other?,
                    }
                };
                wait_result(api, &text(&found["run_id"]))
            })
            .await?;
        output::<Value>(Role::Seller, "trust_issuers", &outcome).map(drop)
    }

    /// Issues `count` papers on the seller (one batch start, one result
    /// wait); their refs, in order.
    async fn issue_papers(&mut self, count: u32, notary: &Notary) -> Result<Vec<StateRef>, String> {
        let args = to_json(&IssuePaperArgs {
            face_value: Amount::whole(1_000, Currency::USD),
            maturity: a_year_from_now(),
            notary: notary.clone(),
        })?;
        let starts: Vec<Value> = (0..count)
            .map(|_| json!({ "flow": ISSUE_PAPER, "args": args }))
            .collect();
        let outcomes = self
            .call(Role::Seller, "issue the papers", move |api| {
                let runs = start_batch(api, starts)?;
                collect(api, runs, true)
            })
            .await?;
        outcomes
            .iter()
            .map(|outcome| {
                let stx: SignedTransaction = output(Role::Seller, ISSUE_PAPER, outcome)?;
                stx.tx
                    .out_refs()
                    .first()
                    .map(|s| s.state_ref)
                    .ok_or_else(|| "a paper issuance has no output".to_owned())
            })
            .collect()
    }

    /// Starts a trade per order on the seller (client id `trade-N`: asked
    /// twice, it starts once), in batches; `(trade, run id)` of each.
    async fn start_trades(
        &mut self,
        orders: &[(u32, StateRef)],
        buyer: &Party,
        price: Amount,
        notary: &Notary,
    ) -> Result<Vec<(u32, String)>, String> {
        let mut starts = Vec::with_capacity(orders.len());
        for (trade, paper) in orders {
            let args = to_json(&SellArgs {
                buyer: buyer.clone(),
                paper: *paper,
                price,
                notary: notary.clone(),
            })?;
            starts
                .push(json!({ "flow": SELL, "args": args, "client_id": format!("trade-{trade}") }));
        }
        let trades: Vec<u32> = orders.iter().map(|(t, _)| *t).collect();
        let runs = self
            .call(Role::Seller, "start the trades", move |api| {
                start_batch(api, starts)
            })
            .await?;
        Ok(trades.into_iter().zip(runs).collect())
    }

    /// Opens the seller's event stream (`GET /api/v1/events`) and forwards
    /// each flow's innermost progress step as [`Incoming::Progress`] from a
    /// thread of its own. Returns once the stream is open, so no step of a
    /// trade started afterwards is missed.
    async fn follow_seller(&mut self) -> Result<(), String> {
        let events = self
            .call(Role::Seller, "open its event stream", |api| {
                Ok((api.events("/api/v1/events")?, api.clone()))
            })
            .await?;
        let to = self.incoming_tx.clone();
        std::thread::Builder::new()
            .name("seller-events".into())
            .spawn(move || forward_progress(events.0, &events.1, &to))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(())
    }

    /// The next thing heard while trades run: a progress step, or the
    /// outcomes of a result round over `pending` (started here when none is
    /// in flight).
    async fn next(&mut self, pending: &[String]) -> Result<Incoming, String> {
        if self.round.is_none() && !pending.is_empty() {
            let api = self
                .procs
                .get(&Role::Seller)
                .and_then(|p| p.api.clone())
                .ok_or("the seller node is not running")?;
            let body = json!({ "run_ids": pending, "wait_s": self.round_wait_s, "output": false });
            self.round = Some(tokio::task::spawn_blocking(move || {
                api.post("/api/v1/flows/results", &body)
            }));
        }
        loop {
            let trouble = tokio::select! {
                incoming = self.incoming.recv() => {
                    return incoming.ok_or_else(|| "internal: the progress channel closed".to_owned());
                }
                answer = async {
                    match self.round.as_mut() {
                        Some(round) => round.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.round = None;
                    let answer = answer
                        .map_err(|e| format!("internal: a result request failed: {e}"))?
                        .map_err(|e| format!("the seller node's API failed to give results: {e}"))?;
                    return Ok(Incoming::Finished(finished(&answer)));
                }
                t = self.watch.trouble() => t,
            };
            match trouble {
                Trouble::Stop(why) => return Err(why),
                Trouble::Exit(role, generation, status) => {
                    if self.is_current(role, generation) {
                        return Err(self.exited(role, status));
                    }
                }
            }
        }
    }

    /// The coin a settled trade's buyer paid with: an input of the trade's
    /// transaction other than the paper (from the trade's full result).
    async fn spent_coin(&mut self, run: &str, paper: StateRef) -> Result<StateRef, String> {
        let run = run.to_owned();
        let outcome = self
            .call(Role::Seller, "give a trade's result", move |api| {
                wait_result(api, &run)
            })
            .await?;
        let stx: SignedTransaction = output(Role::Seller, SELL, &outcome)?;
        stx.tx
            .inputs
            .iter()
            .copied()
            .find(|i| *i != paper)
            .ok_or_else(|| "a settled trade spent no cash".to_owned())
    }

    /// Starts counting the CPU time the node processes use from now on.
    fn start_cpu_accounting(&mut self) {
        self.cpu = Some(HashMap::new());
        for proc in self.procs.values_mut() {
            proc.cpu_base = cpu_ticks(proc.pid);
        }
    }

    /// Adds what `role`'s process used since its base to the count (before
    /// it is killed, or at the end).
    fn account_cpu(&mut self, role: Role) {
        let Some(cpu) = &mut self.cpu else { return };
        let Some(proc) = self.procs.get_mut(&role) else {
            return;
        };
        let now = cpu_ticks(proc.pid);
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

    /// Sends `signal` to `role`'s process (the crash schedule pauses and
    /// resumes the notary with SIGSTOP and SIGCONT; the end stops every
    /// node with SIGTERM).
    fn signal(&self, role: Role, signal: Signal) -> Result<(), String> {
        let proc = self
            .procs
            .get(&role)
            .ok_or_else(|| format!("the {role} node is not running"))?;
        let pid = i32::try_from(proc.pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| format!("the {role} node has no process id"))?;
        kill_process(pid, signal)
            .map_err(|e| format!("cannot send {signal:?} to the {role} node: {e}"))
    }

    /// Kills `role`'s process with SIGKILL and starts it again on the same
    /// files, waiting until its API answers.
    async fn crash(&mut self, role: Role) -> Result<(), String> {
        self.account_cpu(role);
        let Some(mut proc) = self.procs.remove(&role) else {
            return Err(format!("the {role} node is not running"));
        };
        if let Some(kill) = proc.kill.take() {
            let _ = kill.send(());
        }
        self.guard(proc.exited.wait_for(Option::is_some))
            .await?
            .map_err(|_| format!("the killed {role} node could not be reaped"))?;
        self.spawn(role)?;
        self.wait_up(role).await
    }

    /// Stops every node with SIGTERM and waits for each; returns a problem
    /// for a node that did not stop cleanly.
    async fn stop_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for role in Role::ALL {
            if let Err(e) = self.signal(role, Signal::TERM) {
                problems.push(format!("cannot stop the {role} node: {e}"));
            }
            let Some(mut proc) = self.procs.remove(&role) else {
                continue;
            };
            let exited = tokio::time::timeout(STOP_GRACE, proc.exited.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|s| *s));
            match exited {
                Some(status) if status.success() => {}
                Some(status) => problems.push(format!(
                    "the {role} node exited with {status}; see {}",
                    self.file(role, "log").display()
                )),
                None => {
                    if let Some(kill) = proc.kill.take() {
                        let _ = kill.send(());
                    }
                    let _ = proc.exited.wait_for(Option::is_some).await;
                    problems.push(format!(
                        "the {role} node did not stop within {} s and was killed",
                        STOP_GRACE.as_secs()
                    ));
                }
            }
        }
        problems
    }

    /// Kills every node process and waits for each (error paths).
    async fn kill_all(&mut self) {
        for (_, mut proc) in self.procs.drain() {
            if let Some(kill) = proc.kill.take() {
                let _ = kill.send(());
            }
            let _ = proc.exited.wait_for(Option::is_some).await;
        }
    }
}

/// A JSON value as text: strings without quotes.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Waits for `run`'s result (in rounds of [`LONG_WAIT_S`]).
fn wait_result(api: &AdminClient, run: &str) -> Result<Value, ClientError> {
    loop {
        let answer = api.get(&format!("/api/v1/flows/{run}/result?wait_s={LONG_WAIT_S}"))?;
        if answer["finished"].as_bool() == Some(true) {
            return Ok(answer);
        }
    }
}

/// A finished run's output as `R`, or the flow's error.
fn output<R: DeserializeOwned>(role: Role, flow: &str, outcome: &Value) -> Result<R, String> {
    if outcome["outcome"] != "ok" {
        return Err(format!(
            "{flow} failed on the {role} node: {}",
            text(&outcome["error"])
        ));
    }
    serde_json::from_value(outcome["output"].clone()).map_err(|e| {
        format!("the {role} node's output of {flow} is not what the flow returns: {e}")
    })
}

/// Starts `starts` (start request bodies) in batches of [`START_CHUNK`];
/// their run ids, in order.
fn start_batch(api: &AdminClient, starts: Vec<Value>) -> Result<Vec<String>, ClientError> {
    let mut runs = Vec::with_capacity(starts.len());
    for chunk in starts.chunks(START_CHUNK) {
        let answer = api.post("/api/v1/flows/batch", &json!({ "flows": chunk }))?;
        let started = answer["runs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if started.len() != chunk.len() {
            return Err(ClientError::BadAnswer {
                url: api.base_url().to_owned(),
                message: format!("{} runs for {} starts", started.len(), chunk.len()),
            });
        }
        runs.extend(started.iter().map(|r| text(&r["run_id"])));
    }
    Ok(runs)
}

/// Waits until every one of `runs` has finished; their outcomes, in order
/// (with their outputs if `outputs`).
fn collect(api: &AdminClient, runs: Vec<String>, outputs: bool) -> Result<Vec<Value>, ClientError> {
    let mut done: HashMap<String, Value> = HashMap::with_capacity(runs.len());
    let mut pending = runs.clone();
    while !pending.is_empty() {
        let answer = api.post(
            "/api/v1/flows/results",
            &json!({ "run_ids": pending, "wait_s": LONG_WAIT_S, "output": outputs }),
        )?;
        for result in answer["results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            done.insert(text(&result["run_id"]), result.clone());
        }
        pending.retain(|r| !done.contains_key(r));
    }
    Ok(runs.iter().filter_map(|r| done.remove(r)).collect())
}

/// The outcomes in a result round's answer.
fn finished(answer: &Value) -> Vec<(String, Result<(), String>)> {
    answer["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| (text(&r["run_id"]), outcome_of(r)))
        .collect()
}

/// A finished run's outcome (as the result routes give it): `Ok`, or the
/// flow's error.
fn outcome_of(result: &Value) -> Result<(), String> {
    if result["outcome"] == "ok" {
        Ok(())
    } else {
        Err(text(&result["error"]))
    }
}

/// Forwards the innermost step of each progress event; after missed
/// events (`lagged`), the progress of every trade in flight from a list.
/// Ends with [`Incoming::StreamEnded`] unless the orchestrator is gone.
fn forward_progress(
    events: flow_runtime::runner::admin::client::EventStream,
    api: &AdminClient,
    to: &mpsc::UnboundedSender<Incoming>,
) {
    let send_step = |run: String, path: &Value| {
        let step = path
            .as_array()
            .and_then(|p| p.last())
            .map(text)
            .unwrap_or_default();
        to.send(Incoming::Progress { run, step }).is_ok()
    };
    for event in events {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                let _ = to.send(Incoming::StreamEnded(e.to_string()));
                return;
            }
        };
        match event.event.as_str() {
            "progress" if !send_step(text(&event.data["run_id"]), &event.data["progress"]) => {
                return;
            }
            "lagged" => match api.get(&format!("/api/v1/flows?flow={SELL}&limit=100000")) {
                Ok(list) => {
                    for flow in list["flows"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                    {
                        if !send_step(text(&flow["run_id"]), &flow["progress"]) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = to.send(Incoming::StreamEnded(format!(
                        "events were missed and the flows could not be listed: {e}"
                    )));
                    return;
                }
            },
            _ => {}
        }
    }
    let _ = to.send(Incoming::StreamEnded("the node closed it".into()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use flow_runtime::runner::Config;

    /// Every node may run a responder per trade at once, and the seller's
    /// API takes every start of the run in one request: what the written
    /// configurations say, as the node reads them.
    #[test]
    fn node_configs_allow_every_trade_in_flight_and_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = write_node_files(dir.path(), 1_000).unwrap();
        assert_eq!(nodes.len(), Role::ALL.len());
        for role in Role::ALL {
            let config =
                Config::read(&dir.path().join(format!("{}.toml", role.file_stem()))).unwrap();
            assert_eq!(config.node.max_responders_per_peer, Some(1_000), "{role}");
            let body = config.admin.max_body_bytes.unwrap();
            // A trade's start request is about 1.3 KB of JSON.
            assert!(body >= START_CHUNK * 1_300, "{role}: {body}");
        }
        // Fewer trades never lower the node's default bound.
        let dir = tempfile::tempdir().unwrap();
        write_node_files(dir.path(), 10).unwrap();
        let config = Config::read(&dir.path().join("buyer.toml")).unwrap();
        assert_eq!(config.node.max_responders_per_peer, Some(256));
    }

    #[test]
    fn a_result_reads_as_its_outcome() {
        assert_eq!(outcome_of(&json!({ "outcome": "ok" })), Ok(()));
        assert_eq!(
            outcome_of(&json!({ "outcome": "error", "error": "refused" })),
            Err("refused".to_owned())
        );
        let round = json!({ "results": [
            { "run_id": "a", "outcome": "ok" },
            { "run_id": "b", "outcome": "error", "error": "no" },
        ] });
        assert_eq!(
            finished(&round),
            vec![
                ("a".to_owned(), Ok(())),
                ("b".to_owned(), Err("no".to_owned()))
            ]
        );
    }
}
