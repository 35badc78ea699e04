//! One node of the multi-process demo, as its own OS process: the
//! runner's tokio [`Node`](flow_runtime::runner::Node) over TCP, on its own
//! redb file, with the flows and responders of its [`Role`], serving the
//! admin API like any node built on the runner. Everything the demo's
//! orchestrator asks of it goes through that API: the flows of
//! [`Role::startable`] are started by name with JSON arguments
//! ([`api`](super::api)), results are read and progress followed there.
//!
//! The `trade-demo` binary runs this as its hidden `node` subcommand
//! (`trade-demo node --config DIR/buyer.toml --role buyer --notary
//! DIR/notary-identity.json`), so a node process is the same executable as
//! the orchestrator and can never be a stale build of another one.
//!
//! Life cycle: start the node (resuming any flows in its database), run
//! `trust_issuers` once if given `--trust`, then serve until SIGINT or
//! SIGTERM (a clean shutdown) or, with `--stop-when-stdin-closes`, until its
//! standard input closes: the orchestrator holds the other end, so a node
//! never outlives the demo, even one killed with SIGKILL. A SIGKILL ends
//! the node anywhere; the next start continues from the last commit.

use super::api::{DoubleSpendArgs, IssueCashArgs, IssuePaperArgs, Role, SellArgs, TRUST_CLIENT_ID};
use super::double_spend_probe;
use crate::flows::Notary;
use crate::flows::identity::{ledger_identity, trust_issuers};
use crate::flows::issue::issue_paper;
use crate::flows::notarise::{notarise, notary_service};
use crate::flows::report::vault_report;
use crate::flows::trade::{buy, sell};
use crate::ledger::{Amount, AssetKind, Currency};
use flow_runtime::Party;
use flow_runtime::runner::{self, Config, NodeBuilder};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing::{error, info};

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
    /// the node's database, by `trust_issuers` run under the client id
    /// `trust-issuers`; without it the seller trusts only itself.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Highest price the buyer accepts for a paper, in cents.
    #[arg(long, default_value_t = 90_000)]
    pub price: u64,
    /// Stop cleanly when standard input closes (the orchestrator holds it,
    /// so the node never outlives the demo).
    #[arg(long)]
    pub stop_when_stdin_closes: bool,
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

/// The node of `args.role`, with its flows, responders and startable flows.
fn builder(args: &NodeArgs) -> Result<NodeBuilder, String> {
    let loaded = Config::read(&args.config)
        .and_then(Config::load)
        .map_err(|e| e.to_string())?;
    let mut builder = NodeBuilder::from_config(loaded);
    builder.startable(|(): ()| Ok(ledger_identity()));
    builder.startable(|(): ()| Ok(vault_report()));
    match args.role {
        Role::Notary => {
            builder.responder::<notarise::Flow>(notary_service);
        }
        Role::Seller => {
            builder.startable(|a: SellArgs| Ok(sell(a.buyer, a.paper, a.price, a.notary)));
            builder
                .startable(|a: IssuePaperArgs| Ok(issue_paper(a.face_value, a.maturity, a.notary)));
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
            builder.startable(IssueCashArgs::flow);
            builder.startable(|a: DoubleSpendArgs| Ok(double_spend_probe(a.coin, a.notary)));
        }
    }
    Ok(builder)
}

async fn run(args: NodeArgs) -> Result<(), String> {
    let node = builder(&args)?.start().await.map_err(|e| e.to_string())?;
    if let Some(path) = &args.trust {
        let issuers = read_issuers(path)?;
        // Under a client id: a client finds the run and waits for it, and
        // a restarted seller does not run it again.
        node.start_flow_with_client_id(TRUST_CLIENT_ID, trust_issuers(issuers))
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(admin) = node.admin_server() {
        info!(url = %admin.url(), role = %args.role, "demo node ready");
    }
    if args.stop_when_stdin_closes {
        tokio::select! {
            r = node.run_until_signal() => r.map_err(|e| e.to_string()),
            () = stdin_closed() => {
                info!("stdin closed (the orchestrator has gone); shutting down");
                node.shutdown().await.map_err(|e| e.to_string())
            }
        }
    } else {
        node.run_until_signal().await.map_err(|e| e.to_string())
    }
}

/// Resolves once standard input is at its end (or fails); what is read is
/// ignored. Read on a thread of its own, not tokio's blocking pool: the
/// runtime would otherwise wait for that read, forever, when the node
/// stops for another reason.
async fn stdin_closed() {
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    let reader = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            while let Ok(n) = std::io::Read::read(&mut stdin, &mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = closed.send(());
        });
    match reader {
        Ok(_) => {
            let _ = on_close.await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch stdin; the node stops on a signal only");
            std::future::pending::<()>().await;
        }
    }
}
