//! The node's metrics registry and its Prometheus rendering (`/metrics`).
//!
//! Why `metrics` + `metrics-exporter-prometheus`: they are the Rust
//! community's usual pair (the `metrics` facade is what tokio-ecosystem
//! libraries record into; the exporter renders the Prometheus text format
//! and its histograms correctly). Each node gets a recorder of its own
//! rather than the process-global one, so several nodes in one process
//! (tests, the in-process demo, an embedding program) keep apart, and a
//! program that installs its own global recorder is not disturbed.
//!
//! What is recorded where:
//! * the node core: steps, committed batches, finished flows, initiations
//!   deferred by the responder bound ([`CoreMetrics`]);
//! * whatever writes the store's transactions (the core, or the commit
//!   pipeline's committer when there is one): durable transactions and
//!   their latency ([`TransactionMetrics`]);
//! * the driver: redelivered frames and frames refused from peers
//!   ([`DriverMetrics`]);
//! * the admin server: per-peer link state (from the transport's link
//!   events), and, refreshed at each scrape, flows in flight, the
//!   hospital's size, the outbox's size and draining; flows by name and
//!   state from a scan of the checkpoints at most every
//!   [`FLOWS_BY_STATE_EVERY`].

use crate::node::{CoreMetrics, TransactionMetrics};
use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Flows by name and state come from a scan of every checkpoint (about a
/// second per million suspended flows): a scrape reuses the last scan's
/// counts for this long.
pub const FLOWS_BY_STATE_EVERY: Duration = Duration::from_secs(15);

const METADATA: Metadata<'static> =
    Metadata::new("flow_runtime", Level::INFO, Some("flow_runtime"));

/// Commit latency buckets, seconds: from a page-cache commit to a slow
/// disk's fsync.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What the driver counts.
#[derive(Clone)]
pub struct DriverMetrics {
    /// `flow_redelivered_frames_total`: outbox messages sent again
    /// (redelivery ticks and reconnections).
    pub redelivered: Counter,
    /// `flow_refused_frames_total`: frames from peers dropped because
    /// they do not decode as session messages.
    pub refused: Counter,
}

impl Default for DriverMetrics {
    fn default() -> Self {
        Self {
            redelivered: Counter::noop(),
            refused: Counter::noop(),
        }
    }
}

/// One node's metrics: the recorder, and the handles given to its parts.
#[derive(Clone)]
pub struct NodeMetrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    gauges: Gauges,
    flows_by_state: Arc<Mutex<FlowsByState>>,
}

#[derive(Clone)]
struct Gauges {
    in_flight: Gauge,
    hospital: Gauge,
    outbox: Gauge,
    draining: Gauge,
}

#[derive(Default)]
struct FlowsByState {
    last: Option<Instant>,
    /// The label sets set last time, so ones that vanished go to zero.
    shown: BTreeMap<(String, String), Gauge>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// A fresh registry, with every metric described (the `# HELP` lines).
    pub fn new() -> Self {
        // Buckets are only refused when empty; the constant has twelve.
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("flow_commit_seconds".into()), &COMMIT_BUCKETS)
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "commit latency buckets refused; reporting a summary");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let describe = |kind: Kind, name: &'static str, help: &'static str| {
            let key = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            match kind {
                Kind::Counter => recorder.describe_counter(key, None, help),
                Kind::Gauge => recorder.describe_gauge(key, None, help),
                Kind::Histogram => {
                    recorder.describe_histogram(key, Some(metrics::Unit::Seconds), help)
                }
            }
        };
        for (kind, name, help) in DESCRIPTIONS {
            describe(kind, name, help);
        }
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &METADATA);
        let gauges = Gauges {
            in_flight: gauge("flow_in_flight"),
            hospital: gauge("flow_hospital_size"),
            outbox: gauge("flow_outbox_size"),
            draining: gauge("flow_draining"),
        };
        Self {
            recorder: Arc::new(recorder),
            handle,
            gauges,
            flows_by_state: Arc::default(),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// Handles for a node core that writes its own transactions (no commit
    /// pipeline in front of its store).
    pub fn core(&self) -> CoreMetrics {
        CoreMetrics {
            steps: self.counter("flow_steps_total", vec![]),
            batches: self.counter("flow_batches_total", vec![]),
            transactions: self.transactions(),
            finished_ok: self.counter("flow_finished_total", vec![Label::new("outcome", "ok")]),
            finished_error: self
                .counter("flow_finished_total", vec![Label::new("outcome", "error")]),
            deferred_initiations: self.counter("flow_deferred_initiations_total", vec![]),
            ..CoreMetrics::default()
        }
    }

    /// Handles for a node core whose commits go through a commit pipeline:
    /// the pipeline records the transactions (with
    /// [`transactions`](Self::transactions)), the core only its batches.
    pub fn pipelined_core(&self) -> CoreMetrics {
        CoreMetrics {
            transactions: TransactionMetrics::default(),
            ..self.core()
        }
    }

    /// Handles for whatever writes the store's transactions.
    pub fn transactions(&self) -> TransactionMetrics {
        TransactionMetrics {
            commits: self.counter("flow_commits_total", vec![]),
            commit_seconds: self
                .recorder
                .register_histogram(&Key::from_static_name("flow_commit_seconds"), &METADATA),
        }
    }

    /// Handles for the driver.
    pub fn driver(&self) -> DriverMetrics {
        DriverMetrics {
            redelivered: self.counter("flow_redelivered_frames_total", vec![]),
            refused: self.counter("flow_refused_frames_total", vec![]),
        }
    }

    /// Sets `flow_peer_link_up{peer}` (1 up, 0 down).
    pub fn set_link(&self, peer: &str, up: bool) {
        self.recorder
            .register_gauge(
                &Key::from_parts(
                    "flow_peer_link_up",
                    vec![Label::new("peer", peer.to_owned())],
                ),
                &METADATA,
            )
            .set(if up { 1.0 } else { 0.0 });
    }

    /// Sets the gauges read at each scrape.
    pub fn set_node_gauges(&self, in_flight: u64, hospital: usize, outbox: u64, draining: bool) {
        self.gauges.in_flight.set(in_flight as f64);
        self.gauges.hospital.set(hospital as f64);
        self.gauges.outbox.set(outbox as f64);
        self.gauges.draining.set(if draining { 1.0 } else { 0.0 });
    }

    /// Whether the flows-by-state gauges are older than
    /// [`FLOWS_BY_STATE_EVERY`].
    pub fn flows_by_state_due(&self) -> bool {
        let fbs = self
            .flows_by_state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        fbs.last.is_none_or(|t| t.elapsed() >= FLOWS_BY_STATE_EVERY)
    }

    /// Sets `flow_flows{flow,state}` from a scan's counts; label sets no
    /// longer seen go to zero.
    pub fn set_flows_by_state(&self, counts: BTreeMap<(String, String), u64>) {
        let mut fbs = self
            .flows_by_state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (labels, gauge) in &fbs.shown {
            if !counts.contains_key(labels) {
                gauge.set(0.0);
            }
        }
        for ((flow, state), n) in counts {
            let gauge = fbs
                .shown
                .entry((flow.clone(), state.clone()))
                .or_insert_with(|| {
                    self.recorder.register_gauge(
                        &Key::from_parts(
                            "flow_flows",
                            vec![Label::new("flow", flow), Label::new("state", state)],
                        ),
                        &METADATA,
                    )
                });
            gauge.set(n as f64);
        }
        fbs.last = Some(Instant::now());
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; call every few seconds
    /// so memory stays bounded between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its help text (also listed in docs/operations.md).
const DESCRIPTIONS: [(Kind, &str, &str); 14] = [
    (
        Kind::Counter,
        "flow_steps_total",
        "Flow steps run (resumptions of a flow).",
    ),
    (
        Kind::Counter,
        "flow_batches_total",
        "Batches of steps, starts and commands committed: each written in its own transaction or queued for the commit pipeline.",
    ),
    (
        Kind::Counter,
        "flow_commits_total",
        "Durable database write transactions (one fsync each); with the commit pipeline one holds every batch queued meanwhile.",
    ),
    (
        Kind::Histogram,
        "flow_commit_seconds",
        "Duration of each durable write transaction, measured where it is written, fsync included.",
    ),
    (
        Kind::Counter,
        "flow_finished_total",
        "Flows that ended, by outcome (ok, error).",
    ),
    (
        Kind::Counter,
        "flow_deferred_initiations_total",
        "Session initiations deferred because their peer had max_responders_per_peer responder flows running.",
    ),
    (
        Kind::Counter,
        "flow_redelivered_frames_total",
        "Unacknowledged messages sent again.",
    ),
    (
        Kind::Counter,
        "flow_refused_frames_total",
        "Frames from peers dropped as undecodable.",
    ),
    (
        Kind::Gauge,
        "flow_peer_link_up",
        "Per peer: 1 while a link is up, 0 after it went down.",
    ),
    (
        Kind::Gauge,
        "flow_in_flight",
        "Flows with a checkpoint (running, waiting, hospitalised).",
    ),
    (
        Kind::Gauge,
        "flow_hospital_size",
        "Flows kept in the hospital.",
    ),
    (
        Kind::Gauge,
        "flow_outbox_size",
        "Messages sent and not yet acknowledged.",
    ),
    (
        Kind::Gauge,
        "flow_draining",
        "1 while the node is draining.",
    ),
    (
        Kind::Gauge,
        "flow_flows",
        "Flows in flight by flow name and state (refreshed at most every 15 s).",
    ),
];
