//! One node of the multi-process demo, as its own OS process: the
//! runner's tokio [`Node`] over TCP, on its own redb file, with the flows
//! and responders of its [`Role`], driven by the orchestrator through the
//! [`protocol`](super::protocol) on stdin/stdout.
//!
//! The `trade-demo` binary runs this as its hidden `node` subcommand
//! (`trade-demo node --config DIR/buyer.toml --role buyer --notary
//! DIR/notary-identity.json`), so a node process is the same executable as
//! the orchestrator and can never be a stale build of another one.
//!
//! Life cycle: start the node (resuming any flows in its database), print
//! [`Event::Ready`], then serve requests until [`Command::Shutdown`], EOF on
//! stdin (the orchestrator is gone), or SIGINT/SIGTERM — each ends in a
//! clean shutdown. A SIGKILL ends it anywhere; the next start continues from
//! the last commit.

use super::double_spend_probe;
use super::protocol::{
    Command, Event, Reply, Request, Role, Settled, TradeOrder, decode_request, encode,
};
use crate::flows::Notary;
use crate::flows::identity::{ledger_identity, trust_issuers};
use crate::flows::issue::{issue_cash, issue_paper};
use crate::flows::notarise::{notarise, notary_service};
use crate::flows::report::vault_report;
use crate::flows::trade::{buy, sell};
use crate::ledger::{Amount, AssetKind, Currency, StateRef};
use flow_runtime::runner::{self, Config, Node, NodeBuilder};
use flow_runtime::{FlowHandle, Party, ProgressTracker, Timestamp};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How often the seller samples its trades' progress trackers.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Trades started per commit by `start_trades`: large enough that the
/// fsyncs stop mattering, small enough that one start job does not hold up
/// the node's message handling for long.
const START_CHUNK: usize = 1_000;

/// Arguments of the hidden `node` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The node's configuration file (see docs/operations.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Which node of the demo this is.
    #[arg(long, value_enum)]
    pub role: Role,
    /// The notary's identity (JSON, written by the orchestrator); the
    /// buyer needs it to check the trades it answers.
    #[arg(long)]
    pub notary: Option<PathBuf>,
    /// The cash issuers the seller accepts (a JSON list of parties, written
    /// by the orchestrator: the demo's bank, which is the buyer). Kept in
    /// the node's database; without it the seller trusts only itself.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Highest price the buyer accepts for a paper, in cents.
    #[arg(long, default_value_t = 90_000)]
    pub price: u64,
    /// Do not run the node: the runner's pre-deploy check (see the book's
    /// "Upgrading flows"): read a copy of the node's database with this
    /// build's flows for the role, print what resumes, migrates or would
    /// be refused, and exit with status 1 if anything would be refused.
    #[arg(long)]
    pub check_upgrade: bool,
}

/// Runs the node process to its end; the process's exit code.
pub fn main(args: NodeArgs) -> ExitCode {
    if let Err(e) = runner::init_logging() {
        eprintln!("cannot set up logging: {e}");
    }
    if args.check_upgrade {
        return match builder(&args) {
            Ok(builder) => builder.run_upgrade_check(),
            Err(e) => {
                eprintln!("error: the upgrade check could not run: {e}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "the demo node failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the notary identity file the orchestrator wrote.
pub fn read_notary(path: &Path) -> Result<Notary, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the notary identity {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a notary identity ({e}); it is written by the orchestrator: start a fresh demo",
            path.display()
        )
    })
}

/// Reads the trusted issuers file the orchestrator wrote.
pub fn read_issuers(path: &Path) -> Result<Vec<Party>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the trusted issuers {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a list of issuers ({e}); it is written by the orchestrator: start a fresh demo",
            path.display()
        )
    })
}

/// The node of `args.role`, with its flows and responders, not started.
fn builder(args: &NodeArgs) -> Result<NodeBuilder, String> {
    let loaded = Config::read(&args.config)
        .and_then(Config::load)
        .map_err(|e| e.to_string())?;
    let mut builder = NodeBuilder::from_config(loaded);
    builder.flow::<ledger_identity::Flow>();
    builder.flow::<vault_report::Flow>();
    match args.role {
        Role::Notary => {
            builder.responder::<notarise::Flow>(notary_service);
        }
        Role::Seller => {
            builder.flow::<sell::Flow>();
            builder.flow::<issue_paper::Flow>();
            builder.flow::<trust_issuers::Flow>();
        }
        Role::Buyer => {
            let path = args
                .notary
                .as_deref()
                .ok_or("the buyer needs --notary FILE (the notary's identity)")?;
            let notary = read_notary(path)?;
            let price = Amount::new(args.price, Currency::USD);
            builder.responder::<sell::Flow>(move |session| {
                buy(session, price, AssetKind::CommercialPaper, notary.clone())
            });
            builder.flow::<issue_cash::Flow>();
            builder.flow::<double_spend_probe::Flow>();
        }
    }
    Ok(builder)
}

async fn run(args: NodeArgs) -> Result<(), String> {
    let node = builder(&args)?.start().await.map_err(|e| e.to_string())?;
    if let Some(path) = &args.trust {
        let issuers = read_issuers(path)?;
        run_flow(&node, trust_issuers(issuers)).await?;
    }

    let (out, out_rx) = mpsc::unbounded_channel::<Event>();
    let writer = tokio::spawn(write_events(out_rx));
    let flows_in_flight = node.flows_in_flight().await.map_err(|e| e.to_string())?;
    send(
        &out,
        Event::Ready {
            name: node.party().name().to_owned(),
            listen: node.transport().local_addr().to_string(),
            flows_in_flight,
        },
    );

    let result = serve(&node, &out).await;
    if let Err(e) = node.shutdown().await {
        warn!(error = %e, "the node did not shut down cleanly");
    }
    drop(out);
    let _ = writer.await;
    result
}

/// Serves requests until told to stop; `Err` if stdin fails.
async fn serve(node: &Node, out: &mpsc::UnboundedSender<Event>) -> Result<(), String> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let signal = runner::shutdown_signal();
    tokio::pin!(signal);
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            received = &mut signal => {
                info!(signal = received.unwrap_or("a signal"), "shutting down");
                return Ok(());
            }
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => {
                info!("stdin closed (the orchestrator has gone); shutting down");
                return Ok(());
            }
            Err(e) => return Err(format!("cannot read the control stream: {e}")),
        };
        if line.trim().is_empty() {
            continue;
        }
        let Request { id, command } = match decode_request(&line) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "ignored a control line");
                continue;
            }
        };
        if command == Command::Shutdown {
            send(
                out,
                Event::Reply {
                    id,
                    result: Ok(Reply::Stopping),
                },
            );
            return Ok(());
        }
        let node = node.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let result = execute(&node, command, &out).await;
            if let Err(e) = &result {
                warn!(request = id, error = %e, "a control command failed");
            }
            send(&out, Event::Reply { id, result });
        });
    }
}

fn send(out: &mpsc::UnboundedSender<Event>, event: Event) {
    if out.send(event).is_err() {
        tracing::debug!(
            "the event writer has stopped (the orchestrator is gone); an event was dropped"
        );
    }
}

/// Writes events to stdout, one line each, flushing after each burst.
async fn write_events(mut events: mpsc::UnboundedReceiver<Event>) {
    let mut stdout = tokio::io::stdout();
    while let Some(first) = events.recv().await {
        let mut text = String::new();
        let mut next = Some(first);
        while let Some(event) = next {
            match encode(&event) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(e) => error!(error = %e, "an event could not be encoded"),
            }
            next = events.try_recv().ok();
        }
        if let Err(e) = async {
            stdout.write_all(text.as_bytes()).await?;
            stdout.flush().await
        }
        .await
        {
            warn!(error = %e, "cannot write to the orchestrator (gone?); events dropped");
            return;
        }
    }
}

async fn execute(
    node: &Node,
    command: Command,
    out: &mpsc::UnboundedSender<Event>,
) -> Result<Reply, String> {
    match command {
        Command::LedgerIdentity => Ok(Reply::Identity(run_flow(node, ledger_identity()).await?)),
        Command::IssueCash {
            amount,
            coins,
            notary,
        } => {
            let stx = run_flow(node, issue_cash(amount, coins, notary)).await?;
            Ok(Reply::Cash(
                stx.tx.out_refs().into_iter().map(|s| s.state_ref).collect(),
            ))
        }
        Command::IssuePapers {
            count,
            face_value,
            maturity,
            notary,
        } => issue_papers(node, count, face_value, maturity, notary).await,
        Command::Sell {
            orders,
            buyer,
            price,
            notary,
        } => start_trades(node, orders, buyer, price, notary, out).await,
        Command::DoubleSpend { coin, notary } => Ok(Reply::Refused(
            run_flow(node, double_spend_probe(coin, notary)).await?,
        )),
        Command::Report => Ok(Reply::Report(run_flow(node, vault_report()).await?)),
        Command::Shutdown => Ok(Reply::Stopping),
    }
}

/// Starts `flow` and waits for its outcome.
async fn run_flow<F: flow_runtime::Flow>(node: &Node, flow: F) -> Result<F::Output, String> {
    let handle = node.start_flow(flow).await.map_err(|e| e.to_string())?;
    node.result(&handle).await.map_err(|e| e.to_string())
}

async fn issue_papers(
    node: &Node,
    count: u32,
    face_value: Amount,
    maturity: Timestamp,
    notary: Notary,
) -> Result<Reply, String> {
    let mut handles = Vec::new();
    for _ in 0..count {
        let flow = issue_paper(face_value, maturity, notary.clone());
        handles.push(node.start_flow(flow).await.map_err(|e| e.to_string())?);
    }
    let mut papers = Vec::new();
    for h in &handles {
        let stx = node.result(h).await.map_err(|e| e.to_string())?;
        let paper = stx
            .tx
            .out_refs()
            .into_iter()
            .next()
            .ok_or("a paper issuance has no output")?;
        papers.push(paper.state_ref);
    }
    Ok(Reply::Papers(papers))
}

/// Starts one `sell` per order (client id `trade-N`: sent twice, it starts
/// once), [`START_CHUNK`] trades per commit, then reports each trade's
/// progress and outcome as events.
async fn start_trades(
    node: &Node,
    orders: Vec<TradeOrder>,
    buyer: Party,
    price: Amount,
    notary: Notary,
    out: &mpsc::UnboundedSender<Event>,
) -> Result<Reply, String> {
    // One commit per chunk, not per trade: each commit is two fsyncs, which
    // made starting the trades most of the demo's run time. Chunks bound
    // the node task's time per job (other work waits behind it).
    let mut started = Vec::with_capacity(orders.len());
    for chunk in orders.chunks(START_CHUNK) {
        let flows = chunk
            .iter()
            .map(|order| {
                (
                    format!("trade-{}", order.trade),
                    sell(buyer.clone(), order.paper, price, notary.clone()),
                )
            })
            .collect();
        let handles = node
            .start_flows_with_client_ids(flows)
            .await
            .map_err(|e| e.to_string())?;
        started.extend(chunk.iter().cloned().zip(handles));
    }
    let remaining = Arc::new(AtomicUsize::new(started.len()));
    for (order, handle) in &started {
        let (node, out, remaining) = (node.clone(), out.clone(), remaining.clone());
        let (order, handle) = (order.clone(), handle.clone());
        tokio::spawn(async move {
            let outcome = node
                .result(&handle)
                .await
                .map(|stx| Settled {
                    coins: stx
                        .tx
                        .inputs
                        .iter()
                        .filter(|i| **i != order.paper)
                        .copied()
                        .collect::<Vec<StateRef>>(),
                })
                .map_err(|e| e.to_string());
            remaining.fetch_sub(1, Ordering::SeqCst);
            send(
                &out,
                Event::TradeDone {
                    trade: order.trade,
                    outcome,
                },
            );
        });
    }
    let watched: Vec<(u32, FlowHandle<sell::Flow>)> =
        started.into_iter().map(|(o, h)| (o.trade, h)).collect();
    tokio::spawn(watch_progress(watched, remaining, out.clone()));
    Ok(Reply::Started)
}

/// Samples every trade's progress tracker and sends each change of its
/// innermost step, until every trade has ended.
async fn watch_progress(
    trades: Vec<(u32, FlowHandle<sell::Flow>)>,
    remaining: Arc<AtomicUsize>,
    out: mpsc::UnboundedSender<Event>,
) {
    let mut last: Vec<String> = vec![String::new(); trades.len()];
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tick.tick().await;
        for ((trade, handle), last) in trades.iter().zip(last.iter_mut()) {
            let Some(step) = handle.progress().current().pop() else {
                continue;
            };
            if step != *last && step != ProgressTracker::DONE {
                last.clone_from(&step);
                send(
                    &out,
                    Event::Progress {
                        trade: *trade,
                        step,
                    },
                );
            }
        }
        if remaining.load(Ordering::SeqCst) == 0 || out.is_closed() {
            return;
        }
    }
}
