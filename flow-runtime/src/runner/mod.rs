//! Running a node as a process: configuration file, identity keys, logging
//! and signals.
//!
//! A user's binary loads a [`Config`], registers its flows, and runs the
//! node until SIGINT or SIGTERM. See `docs/operations.md`.

pub mod admin;
mod builder;
mod config;
mod event_loop;
mod handle;
pub mod keys;
mod pipeline;
mod upgrade;

/// The database options a node is built with ([`NodeBuilder::store_options`]).
pub use crate::store::RedbOptions;
pub use builder::NodeBuilder;
pub use config::{
    Config, ConfigError, LoadedConfig, NodeSection, StoreChoice, StoreKind, StoreSection,
    TransportSection,
};
pub use event_loop::{MAX_FRAMES_PER_BATCH, SMALL_BATCH};
pub use handle::Node;
pub use upgrade::NodeArgs;

use crate::node::NodeError;
use crate::tcp::TransportError;

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The database could not be opened.
    #[error("cannot open the node database {path}: {message}")]
    Database {
        /// The file.
        path: String,
        /// The store's error.
        message: String,
    },
    /// The node core could not be opened on the database.
    #[error("cannot open the node: {0}")]
    Node(NodeError),
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The admin API could not start.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// Installing the signal handlers failed.
    #[error("cannot install the SIGINT/SIGTERM handlers: {0}")]
    Signals(std::io::Error),
    /// The driver stopped on a fatal error (already logged).
    #[error("the node stopped: {0}")]
    Stopped(String),
}

/// Installs a `tracing` subscriber writing one line per event to stderr,
/// filtered by the `RUST_LOG` environment variable (default `info`, e.g.
/// `RUST_LOG=flow_runtime::tcp=debug`). Each line is a timestamp, level,
/// module, message and `key=value` fields (peer, remote, error, ...).
///
/// Returns an error if a global subscriber is already installed (a binary
/// that sets up its own logging simply does not call this).
pub fn init_logging() -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
        .map_err(|e| e.to_string())
}

/// Completes when the process receives SIGINT (Ctrl-C) or SIGTERM (what
/// `kill`, systemd and container runtimes send), so the caller can shut
/// down cleanly.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}
