//! The durable node: [`NodeCore`] (the synchronous step engine shared by the
//! test network and the tokio node), its records, and operator views.
//!
//! See `docs/runtime.md` for the step, what commits when, and the session
//! protocol.

mod batch;
mod core;
mod deferrals;
pub mod delivery;
mod dump;
mod hot;
mod metrics;
mod operator;
mod receive;
pub(crate) mod records;
mod retention;
mod step;
mod upgrade_check;

pub use self::core::{NodeCore, PeerNames};
pub use deferrals::DEFERRAL_WARNING_EVERY;
pub use dump::{CheckpointDump, HospitalEntry, OperatorView, SessionDump, StateFields};
pub use metrics::{CoreMetrics, TransactionMetrics};
pub use records::{CheckpointSummary, STORE_FORMAT};
pub use upgrade_check::{UpgradeGroup, UpgradeReport, check_upgrade};

use crate::{FlowError, PublicKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A flow run's id on its node: random 64 bits, chosen when it starts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub u64);

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({:016x})", self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Tunables of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How many times a step failing with `FlowErrorKind::Transient` is
    /// retried automatically (with doubling backoff) before the flow waits in
    /// the hospital for an operator.
    pub max_transient_retries: u32,
    /// The first retry's delay; doubled on each further attempt.
    pub retry_backoff: Duration,
    /// Upper bound on steps in one group commit, so one busy flow cannot
    /// starve the node's other work; the rest runs in the next batch.
    pub max_steps_per_batch: usize,
    /// A flow waiting longer than this is logged with a warning by the tokio
    /// node's periodic check
    /// ([`long_wait_check_interval`](crate::runner::NodeBuilder::long_wait_check_interval)),
    /// and reported by
    /// [`MockNetwork::warn_long_waits`](crate::testing::MockNetwork::warn_long_waits).
    pub long_wait_warning: Duration,
    /// Memory for decoded copies of recently committed checkpoints, so the
    /// next step of a busy flow reads no store row and decodes nothing
    /// (0 turns the cache off); the same again for the records of their
    /// sessions, cached the same way. Suspended flows still live on disk:
    /// this bounds the caches, not the number of flows.
    pub checkpoint_cache_bytes: usize,
    /// How far ahead of what a session's flow will consume next a peer's
    /// message may be (default 64 sequence numbers). A message further
    /// ahead is refused: neither buffered nor acknowledged, so the sender
    /// redelivers it once the gap before it has filled.
    pub receive_window: u64,
    /// Bytes of received, not yet consumed messages one session may hold
    /// (default 4 MiB). A message beyond it is refused like one beyond the
    /// window, except the very next one the flow will consume, which is
    /// always taken so the session can move on: a session holds at most
    /// this plus one message.
    pub max_buffered_bytes_per_session: usize,
    /// Responder flows one peer may have running on this node at once
    /// (default 256). An initiation beyond it is neither acknowledged nor
    /// stored: the peer's redelivery brings it back, and it starts once one
    /// of that peer's responders has ended. An honest peer over the bound
    /// is delayed, never failed; a hostile one cannot make the node hold
    /// more than this many flows (and their sessions) for it.
    pub max_responders_per_peer: u32,
    /// How long an ended session is remembered (default 14 days): its
    /// tombstone, which makes a late redelivery of its messages a harmless
    /// duplicate, is deleted this long after the session ended, with any
    /// of our messages on it the peer never acknowledged. What makes that
    /// safe: an `Init` carries when it was created, and one older than half
    /// the retention, or dated more than a quarter of it ahead of this
    /// node's clock, is refused. A redelivery of an `Init` arriving after
    /// its tombstone expired was created before the session started, so at
    /// least `retention - retention/4` earlier, and is refused rather than
    /// starting a second responder. A peer that cannot reach this node for
    /// longer than half the retention gets its pending initiations refused
    /// (its flows fail with `Refused` and can be started again).
    pub session_retention: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            max_transient_retries: 3,
            retry_backoff: Duration::from_secs(1),
            max_steps_per_batch: 10_000,
            long_wait_warning: Duration::from_secs(3600),
            checkpoint_cache_bytes: 8 * 1024 * 1024,
            receive_window: 64,
            max_buffered_bytes_per_session: 4 * 1024 * 1024,
            max_responders_per_peer: 256,
            session_retention: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// What one committed batch released.
#[derive(Debug, Default)]
pub struct Output {
    /// Frames for the transport: `(receiver, bytes)`.
    pub frames: Vec<(PublicKey, Vec<u8>)>,
    /// Flows that finished (top-level and responders), with their `NAME`
    /// and outcome (output in MessagePack). Only top-level flows' outcomes
    /// are also kept in the store for `result`.
    pub finished: Vec<(RunId, String, Result<Vec<u8>, FlowError>)>,
    /// Progress changes.
    pub progress: Vec<(RunId, Vec<String>)>,
}

/// One unacknowledged message in a node's durable outbox, with the key it
/// is stored under. Why the key: it names the message (session end and
/// sequence number) stably across reads, so a driver can remember when it
/// last sent each one and re-send only those overdue, without decoding the
/// frame. See [`NodeCore::unacked_frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnackedFrame {
    /// The outbox key: unique per message for as long as it is
    /// unacknowledged (session id, our side, sequence number), never reused.
    pub key: Vec<u8>,
    /// The receiver.
    pub to: PublicKey,
    /// The encoded frame, exactly as first sent.
    pub frame: Vec<u8>,
}

/// A node operation that did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The store failed; the operation's batch was not committed.
    #[error("storage failed, the operation did not happen (retry it): {0}")]
    Store(String),
    /// No flow with that run id is on the node.
    #[error("no flow {0} on this node (finished, killed, or never started)")]
    UnknownRun(RunId),
    /// `retry` on a flow that is not in the hospital.
    #[error("flow {0} is not in the hospital; only hospitalised flows can be retried")]
    NotInHospital(RunId),
    /// The flow could not be prepared for starting.
    #[error("cannot start the flow: {0}")]
    Start(FlowError),
    /// The database was written in a storage format this build does not
    /// read; nothing was changed in it.
    #[error(
        "the database cannot be opened by this build: {0}. Nothing in it was changed; open it with the version of the node that wrote it"
    )]
    IncompatibleStore(String),
}

/// Session-id and run-id source backed by the operating system's randomness:
/// ids a peer cannot guess.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsIds;

impl crate::IdSource for OsIds {
    fn next_id(&mut self) -> u64 {
        rand::random()
    }
}
