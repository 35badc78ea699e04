//! What the node core reports for monitoring: steps, commits, commit
//! latency, started and finished flows, and initiations deferred by the
//! responder bound (counted, and warned about at most once per peer per
//! interval: see `deferrals.rs`).
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
            commits: Counter::noop(),
            commit_seconds: Histogram::noop(),
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
