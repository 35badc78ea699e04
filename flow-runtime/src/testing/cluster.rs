//! A durable cluster of nodes in one process, for benchmarks: each node is
//! the runtime's real [`NodeCore`] on its own redb *file* (fsync on every
//! commit), and the cluster moves frames between them with group commit —
//! every frame waiting for a node is handed to it in one batch, which the
//! node commits in one transaction.
//!
//! Unlike `MockNetwork` (one frame per step, in-memory databases, built for
//! deterministic tests) this measures what a node's step engine and storage
//! do under load. It is single-threaded: the nodes share one core's worth
//! of time slices, with no thread wake-ups or sockets in between. What each
//! node sends and re-sends after a crash is decided by the same
//! [`Delivery`] as on a tokio node.

use crate::node::delivery::{Delivery, Sent, Transmit};
use crate::node::{CheckpointSummary, OsIds, Output};
use crate::registry::{NewFlow, Registry};
pub use crate::store::{RedbOptions, StorageStats};
use crate::store::{RedbStore, StorageCounters, Store, Table, TimedStore, WriteBatch};
use crate::{Flow, FlowError, NodeConfig, NodeCore, Party, PublicKey, RunId, Timestamp};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A flow that finished on a cluster node: `(node, run, flow name,
/// outcome)`, the outcome's output in MessagePack.
pub type FinishedRun = (usize, RunId, String, Result<Vec<u8>, FlowError>);

type Register = Arc<dyn Fn(&mut Registry) + Send + Sync>;

struct Member {
    party: Party,
    path: PathBuf,
    register: Register,
    core: Option<NodeCore>,
    store: Option<Arc<dyn Store>>,
    delivery: Delivery,
}

/// The size of one suspended flow's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSize {
    /// `Flow::NAME` of the top-level flow.
    pub flow: String,
    /// The state variant it is suspended in.
    pub state: String,
    /// Bytes of the encoded state machine.
    pub state_bytes: usize,
    /// Bytes of the whole checkpoint record (state, sessions, progress, ...).
    pub record_bytes: usize,
}

/// Counters of what the cluster did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Group commits (one database transaction each).
    pub commits: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Bytes in those frames.
    pub frame_bytes: u64,
}

/// Several durable nodes in one process; see the module docs.
pub struct Cluster {
    members: Vec<Member>,
    by_key: HashMap<PublicKey, usize>,
    in_flight: Vec<(usize, usize, Vec<u8>)>,
    started: Instant,
    options: RedbOptions,
    config: NodeConfig,
    stats: ClusterStats,
    storage: Arc<StorageCounters>,
    finished: Vec<FinishedRun>,
}

impl Cluster {
    /// An empty cluster whose databases use `options` (e.g. `durable: false`
    /// to measure without fsync) and whose nodes run with the default
    /// [`NodeConfig`].
    pub fn new(options: RedbOptions) -> Self {
        Self::with_node_config(options, NodeConfig::default())
    }

    /// An empty cluster whose nodes run with `config`. A cluster has no
    /// redelivery tick, so a limit that defers work until the next tick
    /// (such as [`NodeConfig::max_responders_per_peer`], whose excess
    /// initiations wait for the initiator's redelivery) must be set high
    /// enough for the workload, or [`run_until_idle`](Self::run_until_idle)
    /// returns with that work still waiting.
    pub fn with_node_config(options: RedbOptions, config: NodeConfig) -> Self {
        Self {
            members: Vec::new(),
            by_key: HashMap::new(),
            in_flight: Vec::new(),
            started: Instant::now(),
            options,
            config,
            stats: ClusterStats::default(),
            storage: Arc::new(StorageCounters::default()),
            finished: Vec::new(),
        }
    }

    /// Time spent in the nodes' stores so far (all nodes together).
    pub fn storage(&self) -> StorageStats {
        self.storage.snapshot()
    }

    /// Every flow (top-level, responder, or started from inside a node)
    /// that finished since the last call.
    pub fn take_finished(&mut self) -> Vec<FinishedRun> {
        std::mem::take(&mut self.finished)
    }

    fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Adds a node named `name` with its database at `path`; `register`
    /// registers its flows and responders (run again after each restart).
    pub fn add_node(
        &mut self,
        name: &str,
        path: &Path,
        register: impl Fn(&mut Registry) + Send + Sync + 'static,
    ) -> Result<usize, String> {
        let key = PublicKey(rand::random());
        let index = self.members.len();
        self.members.push(Member {
            party: Party::new(name, key),
            path: path.to_owned(),
            register: Arc::new(register),
            core: None,
            store: None,
            delivery: Delivery::new(),
        });
        self.by_key.insert(key, index);
        self.open(index)?;
        Ok(index)
    }

    fn open(&mut self, index: usize) -> Result<(), String> {
        let now = self.now();
        let m = &mut self.members[index];
        m.core = None;
        m.store = None;
        m.delivery = Delivery::new();
        let store: Arc<dyn Store> = Arc::new(TimedStore::new(
            Arc::new(RedbStore::open(&m.path, self.options).map_err(|e| e.to_string())?),
            self.storage.clone(),
        ));
        m.store = Some(store.clone());
        let mut registry = Registry::new();
        (m.register)(&mut registry);
        let core = NodeCore::open(
            m.party.clone(),
            store,
            registry,
            Box::new(OsIds),
            Box::new(OsIds),
            self.config.clone(),
            now,
        )
        .map_err(|e| e.to_string())?;
        m.core = Some(core);
        Ok(())
    }

    /// The checkpoint of every flow suspended on node `index`. Reads the
    /// runtime's checkpoint table directly (a measurement tool) and decodes
    /// each record with the runtime's `CheckpointSummary` (a record that does
    /// not decode is reported with its size and an empty name).
    pub fn checkpoint_sizes(&self, index: usize) -> Result<Vec<CheckpointSize>, String> {
        let Some(store) = &self.members[index].store else {
            return Err(format!("node {index} is not open"));
        };
        let rows = store
            .range(&Table::CHECKPOINTS, &[], None, usize::MAX)
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(_, v)| match CheckpointSummary::decode(&v) {
                Ok(view) => CheckpointSize {
                    flow: view.flow,
                    state: view.state_name,
                    state_bytes: view.state_bytes,
                    record_bytes: v.len(),
                },
                Err(_) => CheckpointSize {
                    flow: String::new(),
                    state: String::new(),
                    state_bytes: 0,
                    record_bytes: v.len(),
                },
            })
            .collect())
    }

    /// The network identity of node `index`.
    pub fn party(&self, index: usize) -> Party {
        self.members[index].party.clone()
    }

    fn core(&mut self, index: usize) -> Result<&mut NodeCore, String> {
        self.members[index]
            .core
            .as_mut()
            .ok_or_else(|| format!("node {index} is not open"))
    }

    /// Starts `flow` on node `index` (committed before this returns).
    pub fn start<F: Flow>(&mut self, index: usize, flow: F) -> Result<RunId, String> {
        let now = self.now();
        let new = NewFlow::new(&flow).map_err(|e| e.to_string())?;
        let (run, out) = self
            .core(index)?
            .start(now, new, None)
            .map_err(|e| e.to_string())?;
        self.stats.commits += 1;
        self.absorb(index, out);
        Ok(run)
    }

    fn absorb(&mut self, from: usize, out: Output) {
        self.finished.extend(
            out.finished
                .into_iter()
                .map(|(run, name, outcome)| (from, run, name, outcome)),
        );
        self.members[from].delivery.released(out.frames);
        self.transmit(from);
    }

    /// Moves every frame node `from`'s delivery queued into flight (the
    /// cluster's network never refuses one).
    fn transmit(&mut self, from: usize) {
        while let Some(Transmit { to, frame, receipt }) =
            self.members[from].delivery.poll_transmit()
        {
            match self.by_key.get(&to) {
                Some(&to) => self.in_flight.push((from, to, frame)),
                None => tracing::warn!(?to, "frame for a node outside the cluster dropped"),
            }
            self.members[from].delivery.report(receipt, Sent::Accepted);
        }
    }

    /// Runs until no frame is in flight and no node has runnable work:
    /// each round hands every node all frames waiting for it (one group
    /// commit per node), then lets nodes with work left run it.
    pub fn run_until_idle(&mut self) -> Result<(), String> {
        while self.run_round()? {}
        Ok(())
    }

    /// One round of [`run_until_idle`](Self::run_until_idle); `false` when
    /// there was nothing to do.
    pub fn run_round(&mut self) -> Result<bool, String> {
        {
            let frames = std::mem::take(&mut self.in_flight);
            let mut per_node: Vec<Vec<(PublicKey, Vec<u8>)>> = vec![Vec::new(); self.members.len()];
            for (from, to, frame) in frames {
                self.stats.frames += 1;
                self.stats.frame_bytes += frame.len() as u64;
                per_node[to].push((self.members[from].party.key().to_owned(), frame));
            }
            let mut worked = false;
            for (index, batch) in per_node.into_iter().enumerate() {
                let now = self.now();
                let core = self.core(index)?;
                let out = if !batch.is_empty() {
                    core.deliver(now, batch).map_err(|e| e.to_string())?
                } else if core.has_ready() {
                    core.tick(now).map_err(|e| e.to_string())?
                } else {
                    continue;
                };
                worked = true;
                self.stats.commits += 1;
                self.absorb(index, out);
            }
            Ok(worked || !self.in_flight.is_empty())
        }
    }

    /// Crashes node `index` (drops everything it holds in memory, without
    /// any shutdown) and reopens it from its database file; then every node
    /// retransmits what its peers have not acknowledged, as a real transport
    /// does on reconnection.
    pub fn crash_and_restart(&mut self, index: usize) -> Result<(), String> {
        self.in_flight.retain(|(_, to, _)| *to != index);
        self.open(index)?;
        let crashed = *self.members[index].party.key();
        for i in 0..self.members.len() {
            let outbox = self.core(i)?.unacked_frames().map_err(|e| e.to_string())?;
            let delivery = &mut self.members[i].delivery;
            if i == index {
                // Its first tick: everything unacknowledged goes again.
                delivery.tick(outbox);
            } else {
                // Its link to the crashed node broke and is back.
                delivery.disconnected(crashed, Some(outbox.clone()));
                delivery.connected(crashed, outbox);
            }
            self.transmit(i);
        }
        Ok(())
    }

    /// The outcome of run `run` on node `index`, once it has finished.
    pub fn result<F: Flow>(
        &mut self,
        index: usize,
        run: RunId,
    ) -> Result<Option<Result<F::Output, FlowError>>, String> {
        let Some(outcome) = self.core(index)?.result(run).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        Ok(Some(outcome.and_then(|bytes| {
            rmp_serde::from_slice(&bytes)
                .map_err(|e| FlowError::internal(format!("undecodable result: {e}")))
        })))
    }

    /// What the cluster did so far.
    pub fn stats(&self) -> ClusterStats {
        self.stats
    }
}

/// Commits per second of the bare store: `n` commits of one 200-byte row
/// each to a fresh database at `path`, with nothing of a node around them.
/// The floor a node's commit rate is measured against.
pub fn raw_commits_per_s(path: &Path, options: RedbOptions, n: u64) -> Result<f64, String> {
    let store = RedbStore::open(path, options).map_err(|e| e.to_string())?;
    let table = Table::service("raw");
    let started = Instant::now();
    for i in 0..n {
        let mut batch = WriteBatch::default();
        batch.put(table.clone(), i.to_be_bytes().to_vec(), vec![7; 200]);
        store.commit(batch).map_err(|e| e.to_string())?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
