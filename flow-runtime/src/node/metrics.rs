//! What the node core counts for monitoring: steps, commits, commit
//! latency, started and finished flows.
//!
//! Why handles and not the `metrics` macros: a handle is resolved once, when
//! the node starts, so recording is an atomic add (a histogram sample, a
//! lock-free push), with no name lookup per step. The core only records
//! into the handles it is given; the default handles discard everything
//! (the [`MockNetwork`](crate::testing::MockNetwork) and benchmarks run
//! without an exporter unless they install one). The tokio runner gives
//! each node handles of its own Prometheus recorder, rendered at the admin
//! API's `/metrics` (see `runner::admin`).

use metrics::{Counter, Histogram};

/// The handles [`NodeCore`](super::NodeCore) records into. Every name is
/// listed, with its meaning, in `docs/operations.md` (metrics).
#[derive(Clone)]
pub struct CoreMetrics {
    /// `flow_steps_total`: flow steps run (each resumption of a flow).
    pub steps: Counter,
    /// `flow_commits_total`: group commits (database write transactions).
    pub commits: Counter,
    /// `flow_commit_seconds`: how long each group commit took, fsync
    /// included.
    pub commit_seconds: Histogram,
    /// `flow_finished_total{outcome="ok"}`: flows that ended with a result.
    pub finished_ok: Counter,
    /// `flow_finished_total{outcome="error"}`: flows that ended with an
    /// error (their own `FlowError`, a failure, or an operator's kill).
    pub finished_error: Counter,
}

impl Default for CoreMetrics {
    /// Handles that record nothing.
    fn default() -> Self {
        Self {
            steps: Counter::noop(),
            commits: Counter::noop(),
            commit_seconds: Histogram::noop(),
            finished_ok: Counter::noop(),
            finished_error: Counter::noop(),
        }
    }
}

impl std::fmt::Debug for CoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreMetrics").finish_non_exhaustive()
    }
}
