//! What the node core reports for monitoring: steps, committed batches,
//! durable transactions with their latency, finished flows, and
//! initiations deferred by the responder bound (counted, and warned about
//! at most once per peer per interval: see `deferrals.rs`).
//!
//! Batches and transactions are counted apart because they differ under
//! the tokio node's commit pipeline: the core hands each batch to the
//! pipeline, whose committer writes every batch queued meanwhile in ONE
//! transaction. A transaction is recorded where it is written (see
//! [`TransactionMetrics`]), so its latency is the real write and fsync,
//! never the time to queue a batch.
//!
//! Why handles and not the `metrics` macros: a handle is resolved once, when
//! the node starts, so recording is an atomic add (a histogram sample, a
//! lock-free push), with no name lookup per step. The core only records
//! into the handles it is given; the default handles discard everything
//! (the [`MockNetwork`](crate::testing::MockNetwork) and benchmarks run
//! without an exporter unless they install one). The tokio runner gives
//! each node handles of its own Prometheus recorder, rendered at the admin
//! API's `/metrics` (see `runner::admin`).

use super::deferrals::DeferralWarnings;
use metrics::{Counter, Histogram};
use std::time::Instant;

/// The handles [`NodeCore`](super::NodeCore) records into. Every name is
/// listed, with its meaning, in `docs/operations.md` (metrics).
#[derive(Clone)]
pub struct CoreMetrics {
    /// `flow_steps_total`: flow steps run (each resumption of a flow).
    pub steps: Counter,
    /// `flow_batches_total`: batches the core committed (the steps of one
    /// batch of events, a start, an operator's command), each written in a
    /// transaction of its own or queued for the commit pipeline.
    pub batches: Counter,
    /// The durable transactions, recorded by the core only when each of
    /// its commits is one (no commit pipeline in front of its store). A
    /// pipelined node gives these handles to the pipeline and the core
    /// handles that record nothing.
    pub transactions: TransactionMetrics,
    /// `flow_finished_total{outcome="ok"}`: flows that ended with a result.
    pub finished_ok: Counter,
    /// `flow_finished_total{outcome="error"}`: flows that ended with an
    /// error (their own `FlowError`, a failure, or an operator's kill).
    pub finished_error: Counter,
    /// `flow_deferred_initiations_total`: session initiations not started
    /// (nor acknowledged) because their peer already had
    /// [`NodeConfig::max_responders_per_peer`](super::NodeConfig::max_responders_per_peer)
    /// responder flows running; each redelivery deferred again counts again.
    pub deferred_initiations: Counter,
    /// When each peer's deferrals were last logged at WARN. Kept with the
    /// handles because it is part of the same reporting: the counter says
    /// how many, the rate-limited WARN says which peer and what to raise.
    pub(crate) deferral_warnings: DeferralWarnings,
}

impl Default for CoreMetrics {
    /// Handles that record nothing.
    fn default() -> Self {
        Self {
            steps: Counter::noop(),
            batches: Counter::noop(),
            transactions: TransactionMetrics::default(),
            finished_ok: Counter::noop(),
            finished_error: Counter::noop(),
            deferred_initiations: Counter::noop(),
            deferral_warnings: DeferralWarnings::default(),
        }
    }
}

impl std::fmt::Debug for CoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreMetrics").finish_non_exhaustive()
    }
}

/// The handles of the store's write transactions, recorded by whatever
/// writes them: the core when it commits to its store directly, the commit
/// pipeline (its committer thread for a group, the driver for an inline
/// commit) when there is one. Only transactions that succeeded count.
#[derive(Clone)]
pub struct TransactionMetrics {
    /// `flow_commits_total`: write transactions made durable (one fsync
    /// each, with a durable store).
    pub commits: Counter,
    /// `flow_commit_seconds`: how long each took to write and make
    /// durable, fsync included.
    pub commit_seconds: Histogram,
}

impl TransactionMetrics {
    /// Records one durable transaction that began at `started`.
    pub(crate) fn record(&self, started: Instant) {
        self.commit_seconds.record(started.elapsed().as_secs_f64());
        self.commits.increment(1);
    }
}

impl Default for TransactionMetrics {
    /// Handles that record nothing.
    fn default() -> Self {
        Self {
            commits: Counter::noop(),
            commit_seconds: Histogram::noop(),
        }
    }
}

impl std::fmt::Debug for TransactionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionMetrics").finish_non_exhaustive()
    }
}
