//! The pre-deploy check from a node binary: `--check-upgrade` reads a copy
//! of the node's database with the flows this build registers and reports
//! which checkpoints it would resume and which it would refuse (see
//! `docs/upgrading.md`). The arguments every runner binary shares live
//! here, so that every binary that flattens [`NodeArgs`] into its own
//! parser has the flag.

use super::{NodeBuilder, RunnerError};
use crate::node::{UpgradeReport, check_upgrade};
use crate::store::RedbStore;
use crate::transport::Transport;
use std::path::PathBuf;
use std::process::ExitCode;

/// The command-line arguments every node binary built on the runner takes.
/// Put them in your own `clap` parser with `#[command(flatten)]`:
///
/// ```text
/// #[derive(clap::Parser)]
/// struct Args {
///     #[command(flatten)]
///     node: flow_runtime::runner::NodeArgs,
///     // ... your binary's own arguments
/// }
/// ```
///
/// then, once the builder has the build's flows, call
/// [`NodeBuilder::run_upgrade_check`] instead of starting the node when
/// [`check_upgrade`](Self::check_upgrade) is set.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The node's configuration file (see docs/operations.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Do not run the node: read a copy of its database with this build's
    /// flows, print per flow version how many checkpoints resume as they
    /// are, how many migrate and how many would be refused, and exit with
    /// status 1 if any would be (docs/upgrading.md).
    #[arg(long)]
    pub check_upgrade: bool,
}

impl<T: Transport> NodeBuilder<T> {
    /// The pre-deploy check: copies the node's database to a temporary
    /// file, reads the copy with this builder's flows (the new build's
    /// registry) and reports, per flow `NAME`, `VERSION` and fingerprint,
    /// how many checkpoints resume as they are, how many its migrations
    /// move to new code (each migration is run on each state it reads) and
    /// how many would be refused. The database itself is only copied, never opened. Run it on
    /// a stopped node's database or on a backup of it: a copy taken while
    /// the node commits may be torn.
    pub fn check_upgrade(&self) -> Result<UpgradeReport, RunnerError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let copy = std::env::temp_dir().join(format!(
            "flow-check-upgrade-{}-{stamp}.redb",
            std::process::id()
        ));
        let database_error = |message: String| RunnerError::Database {
            path: self.database.display().to_string(),
            message,
        };
        let options = match &self.store {
            Ok(super::config::StoreChoice::Redb(options)) => *options,
            Ok(_) => {
                return Err(database_error(
                    "the upgrade check reads a redb database file; this node's store is not one"
                        .into(),
                ));
            }
            Err(e) => return Err(database_error(e.clone())),
        };
        std::fs::copy(&self.database, &copy)
            .map_err(|e| database_error(format!("cannot copy it to {}: {e}", copy.display())))?;
        let report = RedbStore::open(&copy, options)
            .map_err(|e| database_error(format!("its copy does not open: {}", e.0)))
            .and_then(|store| check_upgrade(&store, &self.registry).map_err(RunnerError::Node));
        if let Err(e) = std::fs::remove_file(&copy) {
            tracing::warn!(file = %copy.display(), "cannot remove the database copy: {e}");
        }
        report
    }

    /// [`check_upgrade`](Self::check_upgrade) for a binary's `main`: prints
    /// the report on stdout (an error on stderr) and returns the exit code:
    /// success if no checkpoint would be refused, 1 if some would, 2 if
    /// the check could not run.
    pub fn run_upgrade_check(&self) -> ExitCode {
        match self.check_upgrade() {
            Ok(report) => {
                print!("{report}");
                if report.is_safe() {
                    ExitCode::SUCCESS
                } else {
                    println!(
                        "NOT SAFE: this build would refuse {} checkpoint(s); register the code that wrote them beside the new code or a migration from it, or drain the node first",
                        report.refused()
                    );
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: the upgrade check could not run: {e}");
                ExitCode::from(2)
            }
        }
    }
}
