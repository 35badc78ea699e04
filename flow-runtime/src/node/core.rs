//! [`NodeCore`]: the synchronous state-machine manager shared by
//! `MockNetwork` and the tokio node — the engine: opening the store, the
//! group commit, timers and the wake queue.
//!
//! Its other jobs are in their own files, each an `impl NodeCore` block:
//! `receive.rs` (the receiving side of the session protocol: frames in,
//! dedup, acks), `step.rs` (running one flow step and applying its
//! effects), `operator.rs` (starting flows, results, kill, retry,
//! draining).
//!
//! Every public operation is one group commit: it builds a [`Batch`], applies
//! its input (frames from peers, a start, a kill...), fires due timers, runs
//! every flow that has become runnable (each step inside `catch_unwind`),
//! commits the whole batch in ONE store transaction, and only then releases
//! the batch's frames and completes results. If the commit fails nothing of
//! the batch is released: peers redeliver, callers see the error.

use super::batch::Batch;
use super::hot::{HotCheckpoints, HotSessions};
use super::records::*;
use super::{NodeConfig, NodeError, Output, RunId};
use crate::StepWrites;
use crate::registry::Registry;
use crate::store::{Store, Table};
use crate::{FlowContext, IdSource, Party, Timestamp};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The node's step engine. Owns the store handle, the registry and the
/// context flows run with; holds no flow in memory between operations.
pub struct NodeCore {
    pub(super) identity: Party,
    pub(super) store: Arc<dyn Store>,
    pub(super) registry: Registry,
    pub(super) ctx: FlowContext,
    pub(super) run_ids: Box<dyn IdSource>,
    pub(super) config: NodeConfig,
    pub(super) draining: bool,
    pub(super) ready: BTreeSet<u64>,
    /// The runs the store's `runnable` index holds (committed), so a batch
    /// writes only the index's net changes.
    pub(super) runnable_index: BTreeSet<u64>,
    pub(super) now: Timestamp,
    pub(super) commits: u64,
    /// Recently committed checkpoints, decoded (see `hot.rs`).
    pub(super) hot: HotCheckpoints,
    /// Recently committed session records, decoded (see `hot.rs`).
    pub(super) hot_sessions: HotSessions,
    /// Steps in the last committed batch: the next batch's size hint.
    pub(super) last_batch_runs: usize,
    /// Whether the store's `meta` table holds [`STORE_FORMAT`]; until it
    /// does, every commit writes it.
    pub(super) format_recorded: bool,
    /// Runs held in the hospital for code this node did not have, which
    /// its registry now has: the next operation frees and runs them.
    pub(super) code_retries: BTreeSet<u64>,
    /// Where steps, commits and finished flows are counted.
    pub(super) metrics: super::CoreMetrics,
    /// The names of authenticated peers (see [`NodeCore::set_peer_names`]).
    pub(super) peer_names: Option<PeerNames>,
    /// When the next sweep of expired tombstones is due (`retention.rs`).
    pub(super) next_tombstone_sweep: Timestamp,
    /// Whether every tombstone is dated (see `retention.rs`).
    pub(super) tombstones_dated: bool,
    /// What the node knows of its committed tables without reading them
    /// (see [`Committed`]).
    pub(super) known: Committed,
    /// Where operator views read, if not `store` (see
    /// [`NodeCore::set_operator_store`]).
    pub(super) operator_store: Option<Arc<dyn Store>>,
}

/// Facts about the committed store the node keeps in memory, so that an
/// operation that changes neither reads neither: the driver asks for the
/// earliest timer after every operation and every batch checks for due
/// timers and hospitalised flows, while most batches (a message in, a
/// step, a message out) write no timer and no hospital row. Each fact is
/// `None` until read, and forgotten by a commit that writes its table (or
/// that fails); nothing but the node writes these tables, so a remembered
/// fact always equals the committed one.
#[derive(Debug, Default)]
pub(super) struct Committed {
    /// The earliest due time in the timers table (`Some(None)`: no timer).
    /// A `Cell` because [`NodeCore::next_timer`] is a read (`&self`).
    pub(super) first_timer: std::cell::Cell<Option<Option<Timestamp>>>,
    /// Whether the hospital table is empty.
    pub(super) hospital_empty: Option<bool>,
}

/// Looks up the legal name of an authenticated peer key in the network
/// map (or the test network's list of nodes): `None` for a key it does not
/// list.
pub type PeerNames = Arc<dyn Fn(&crate::PublicKey) -> Option<String> + Send + Sync>;

pub(super) fn store_err(e: crate::store::StoreError) -> NodeError {
    NodeError::Store(e.0)
}

/// Refuses a database written in another storage format; `Ok(true)` when
/// it already records the current one.
fn check_store_format(store: &dyn Store) -> Result<bool, NodeError> {
    let row = store.get(&Table::META, META_FORMAT).map_err(store_err)?;
    match decode_store_format(row.as_deref()) {
        Ok(None) => Ok(false),
        Ok(Some(STORE_FORMAT)) => Ok(true),
        Ok(Some(found)) => Err(NodeError::IncompatibleStore(format!(
            "it was written in storage format {found}; this build reads format {STORE_FORMAT}{}",
            if found > STORE_FORMAT {
                " (a newer node wrote it)"
            } else {
                " (an older node wrote it, and this build has no migration from that format)"
            }
        ))),
        Err(why) => Err(NodeError::IncompatibleStore(why)),
    }
}

/// The runs the hospital holds for code (see
/// [`HospitalRecord::awaits_code`]) whose checkpoint `registry` can resume
/// or has a migration for.
fn held_for_known_code(store: &dyn Store, registry: &Registry) -> Result<BTreeSet<u64>, NodeError> {
    let mut runs = BTreeSet::new();
    for (key, value) in store
        .range(&Table::HOSPITAL, &[], None, usize::MAX)
        .map_err(store_err)?
    {
        let Some(run) = parse_run_key(&key) else {
            continue;
        };
        let awaits_code = rmp_serde::from_slice::<HospitalRecord>(&value)
            .map(|h| h.awaits_code)
            .unwrap_or(false);
        if !awaits_code {
            continue;
        }
        let Some(bytes) = store.get(&Table::CHECKPOINTS, &key).map_err(store_err)? else {
            continue;
        };
        if let Ok(rec) = CheckpointRecord::decode(&bytes)
            && (registry
                .resuming(&rec.flow, rec.fingerprint, rec.version)
                .is_some()
                || registry.migrates(&rec.flow, rec.version, rec.fingerprint))
        {
            runs.insert(run);
        }
    }
    Ok(runs)
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Our own records are plain data (strings, numbers, byte buffers, maps
    // with integer keys): rmp-serde cannot fail on them.
    rmp_serde::to_vec(v).unwrap_or_default()
}

impl NodeCore {
    /// Opens the node on `store`: loads only the small "runnable" index
    /// (flows with unprocessed input); checkpoints stay on disk until an
    /// event arrives for them.
    pub fn open(
        identity: Party,
        store: Arc<dyn Store>,
        registry: Registry,
        session_ids: Box<dyn IdSource>,
        run_ids: Box<dyn IdSource>,
        config: NodeConfig,
        now: Timestamp,
    ) -> Result<Self, NodeError> {
        let mut ready: BTreeSet<u64> = store
            .range(&Table::RUNNABLE, &[], None, usize::MAX)
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(k, _)| parse_run_key(&k))
            .collect();
        let runnable_index = ready.iter().copied().collect();
        let format_recorded = check_store_format(store.as_ref())?;
        let code_retries = held_for_known_code(store.as_ref(), &registry)?;
        if !code_retries.is_empty() {
            tracing::info!(node = %identity, flows = code_retries.len(), "flows held for code this node did not have are freed: it has that code (or a migration) now");
        }
        ready.extend(code_retries.iter().copied());
        let draining = store
            .get(&Table::META, META_DRAINING)
            .map_err(store_err)?
            .is_some();
        if draining {
            tracing::info!(node = %identity, "the node is draining (set before the restart): it takes no new flows or sessions until an operator stops draining");
        }
        let tombstones_dated = store
            .get(&Table::META, META_TOMBSTONES_DATED)
            .map_err(store_err)?
            .is_some();
        let config_cache = config.checkpoint_cache_bytes;
        let mut ctx = FlowContext::new(identity.clone(), now, session_ids);
        ctx.install_step_writes(StepWrites::new(store.clone()));
        Ok(Self {
            identity,
            store,
            registry,
            ctx,
            run_ids,
            config,
            draining,
            ready,
            runnable_index,
            now,
            commits: 0,
            hot: HotCheckpoints::new(config_cache),
            hot_sessions: HotSessions::new(config_cache),
            last_batch_runs: 0,
            format_recorded,
            code_retries,
            metrics: super::CoreMetrics::default(),
            peer_names: None,
            next_tombstone_sweep: Timestamp(0),
            tombstones_dated,
            known: Committed::default(),
            operator_store: None,
        })
    }

    /// Records this node's steps, batches, transactions (with their
    /// latency) and finished flows into `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: super::CoreMetrics) {
        self.metrics = metrics;
    }

    /// Where the names of peers come from. A session's counterparty, and
    /// every log line and dump that names it, uses the name listed for the
    /// key the transport authenticated, never the name a peer wrote in its
    /// frames; an initiation from a key the directory does not list is
    /// refused. Every driver sets it (the runner from its transport's
    /// network map, `MockNetwork` from its nodes); a core without it (one
    /// driven by hand in a test) takes the name from the initiation frame.
    pub fn set_peer_names(&mut self, names: PeerNames) {
        self.peer_names = Some(names);
    }

    /// Makes operator views ([`NodeCore::operator_view`]) read `store`
    /// instead of the node's own: the tokio node's commit pipeline passes
    /// the store behind it, so that a dump or scan running beside the
    /// driver sees only durable data, never a batch still being written.
    pub(crate) fn set_operator_store(&mut self, store: Arc<dyn Store>) {
        self.operator_store = Some(store);
    }

    /// This node's identity.
    pub fn identity(&self) -> &Party {
        &self.identity
    }

    /// The registry, to add flows and responders.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The node's service tables as a step would see them (committed data
    /// plus this batch's writes): for tools and tests that read what flows
    /// wrote.
    pub fn service_tables(&self) -> Option<&StepWrites> {
        self.ctx.node_writes_ref()
    }

    /// The node's services (inserted into every step's `ctx.services()`).
    pub fn services(&mut self) -> &mut crate::services::Services {
        self.ctx.services()
    }

    /// Number of batches committed since open (a progress measure): each
    /// a transaction of its own, unless a commit pipeline in front of the
    /// store groups several in one.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Whether some flow has input waiting beyond the last batch's step limit.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The earliest pending timer (flow sleeps and hospital retries).
    /// Read from the store only after a commit that changed the timers.
    pub fn next_timer(&self) -> Result<Option<Timestamp>, NodeError> {
        if let Some(known) = self.known.first_timer.get() {
            return Ok(known);
        }
        let first = self
            .store
            .range(&Table::TIMERS, &[], None, 1)
            .map_err(store_err)?
            .first()
            .and_then(|(k, _)| parse_timer_key(k));
        self.known.first_timer.set(Some(first));
        Ok(first)
    }

    /// Every unacknowledged message (the durable outbox) with its outbox
    /// key, in key order: what a driver hands its
    /// [`Delivery`](super::delivery::Delivery) at a redelivery tick or a
    /// link event. The key names each message, so the delivery can track
    /// which ones it re-sent when and re-send only those overdue.
    pub fn unacked_frames(&self) -> Result<Vec<super::UnackedFrame>, NodeError> {
        let entries = self
            .store
            .range(&Table::OUTBOX, &[], None, usize::MAX)
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, v) in entries {
            match rmp_serde::from_slice::<OutboxRecord>(&v) {
                Ok(r) => out.push(super::UnackedFrame {
                    key,
                    to: r.to,
                    frame: r.frame,
                }),
                Err(e) => tracing::error!("outbox record does not decode, skipped: {e}"),
            }
        }
        Ok(out)
    }

    /// Number of flows with a checkpoint (suspended, not started, or in the
    /// hospital). Zero after draining means: safe to stop.
    pub fn flows_in_flight(&self) -> Result<u64, NodeError> {
        self.store.len(&Table::CHECKPOINTS).map_err(store_err)
    }

    /// Messages in the durable outbox not yet acknowledged by their
    /// receivers (one row count, cheap).
    pub fn outbox_len(&self) -> Result<u64, NodeError> {
        self.store.len(&Table::OUTBOX).map_err(store_err)
    }

    /// Fires due timers and runs flows left runnable.
    pub fn tick(&mut self, now: Timestamp) -> Result<Output, NodeError> {
        self.batch(now, |_, _| Ok(()))
    }

    pub(super) fn fresh_run_id(&mut self) -> Result<u64, NodeError> {
        loop {
            let id = self.run_ids.next_id();
            if self
                .store
                .get(&Table::CHECKPOINTS, &run_key(id))
                .map_err(store_err)?
                .is_none()
                && self
                    .store
                    .get(&Table::RESULTS, &run_key(id))
                    .map_err(store_err)?
                    .is_none()
            {
                return Ok(id);
            }
        }
    }

    /// Runs `f`, then everything runnable, then commits: one transaction.
    pub(super) fn batch(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Self, &mut Batch) -> Result<(), NodeError>,
    ) -> Result<Output, NodeError> {
        self.batch_inner(now, true, f)
    }

    /// [`batch`](Self::batch); with `run: false` the runs `f` woke are only
    /// committed as runnable and left for the next operation (a start
    /// commits the new flow without running its first step).
    pub(super) fn batch_inner(
        &mut self,
        now: Timestamp,
        run: bool,
        f: impl FnOnce(&mut Self, &mut Batch) -> Result<(), NodeError>,
    ) -> Result<Output, NodeError> {
        self.now = now;
        let hot = (
            std::mem::take(&mut self.hot),
            std::mem::take(&mut self.hot_sessions),
        );
        let mut b = Batch::new(
            &*self.store,
            hot,
            self.last_batch_runs,
            self.known.hospital_empty,
        )
        .map_err(store_err)?;
        let (retry_later, freed) = if run {
            (
                std::mem::take(&mut self.ready),
                std::mem::take(&mut self.code_retries),
            )
        } else {
            (BTreeSet::new(), BTreeSet::new())
        };
        let result = (|| {
            f(self, &mut b)?;
            if run {
                for &run in &freed {
                    b.delete(Table::HOSPITAL, run_key(run));
                    self.wake(&mut b, run);
                }
                self.fire_timers(&mut b)?;
                self.expire_tombstones(&mut b)?;
                for &run in &retry_later {
                    b.wake.insert(run);
                }
                self.run_woken(&mut b)?;
            }
            self.commit(&mut b)?;
            if !run {
                self.ready.extend(std::mem::take(&mut b.wake).iter());
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                let output = Output {
                    frames: std::mem::take(&mut b.emit),
                    finished: std::mem::take(&mut b.finished)
                        .into_iter()
                        .map(|(r, name, o)| (RunId(r), name, o))
                        .collect(),
                    progress: std::mem::take(&mut b.progress)
                        .into_iter()
                        .map(|(r, p)| (RunId(r), p))
                        .collect(),
                };
                self.metrics.steps.increment(b.steps as u64);
                let failed = output.finished.iter().filter(|f| f.2.is_err()).count();
                self.metrics.finished_error.increment(failed as u64);
                self.metrics
                    .finished_ok
                    .increment((output.finished.len() - failed) as u64);
                // (Capped: one huge batch should not make every later
                // batch allocate for it.)
                self.last_batch_runs = b.steps.min(16_384);
                (self.hot, self.hot_sessions) = b.into_hot(true);
                Ok(output)
            }
            Err(e) => {
                tracing::error!("batch not committed, nothing of it happened: {e}");
                if let Some(w) = self.ctx.node_writes() {
                    w.discard_step();
                    let mut sink = crate::store::WriteBatch::default();
                    w.drain_into(&mut sink);
                }
                self.ready.extend(retry_later);
                self.ready.extend(b.wake.iter());
                self.code_retries.extend(freed);
                (self.hot, self.hot_sessions) = b.into_hot(false);
                Err(e)
            }
        }
    }

    pub(super) fn commit(&mut self, b: &mut Batch) -> Result<(), NodeError> {
        let mut w = b.take_write_batch().map_err(store_err)?;
        let index_changes = b.runnable_changes(&self.runnable_index);
        for &(run, runnable) in &index_changes {
            if runnable {
                w.put(Table::RUNNABLE, run_key(run), Vec::new());
            } else {
                w.delete(Table::RUNNABLE, run_key(run));
            }
        }
        if let Some(writes) = self.ctx.node_writes() {
            writes.drain_into(&mut w);
        }
        if w.is_empty() {
            // Nothing written: what the batch read still equals the store.
            self.known.hospital_empty = Some(b.hospital_was_empty());
            b.commit_succeeded();
            return Ok(());
        }
        // Forgotten first: a failed commit may or may not have written.
        if b.wrote_timers {
            self.known.first_timer.set(None);
        }
        self.known.hospital_empty = None;
        self.commit_writes(w)?;
        if !b.wrote_hospital {
            self.known.hospital_empty = Some(b.hospital_was_empty());
        }
        b.commit_succeeded();
        for (run, runnable) in index_changes {
            if runnable {
                self.runnable_index.insert(run);
            } else {
                self.runnable_index.remove(&run);
            }
        }
        Ok(())
    }

    /// Commits `w` in one transaction, with the storage-format row until the
    /// store holds it.
    pub(super) fn commit_writes(
        &mut self,
        mut w: crate::store::WriteBatch,
    ) -> Result<(), NodeError> {
        if !self.format_recorded {
            w.put(
                Table::META,
                META_FORMAT.to_vec(),
                STORE_FORMAT.to_be_bytes().to_vec(),
            );
        }
        let started = std::time::Instant::now();
        self.store.commit(w).map_err(store_err)?;
        // A transaction only if no pipeline queued it (the pipeline's
        // handles record it then, and these record nothing).
        self.metrics.transactions.record(started);
        self.metrics.batches.increment(1);
        self.format_recorded = true;
        self.commits += 1;
        Ok(())
    }

    pub(super) fn fire_timers(&mut self, b: &mut Batch) -> Result<(), NodeError> {
        let upper = timer_key(Timestamp(self.now.0.saturating_add(1)));
        // Known: read only if something is due. Unknown (a commit changed
        // the timers): one read of what is due, as the first timer alone
        // would be a read of its own.
        let maybe_due = match self.known.first_timer.get() {
            Some(first) => first.is_some_and(|first| first <= self.now),
            None => true,
        };
        let due = if maybe_due {
            self.store
                .range(&Table::TIMERS, &[], Some(&upper), usize::MAX)
                .map_err(store_err)?
        } else {
            Vec::new()
        };
        // Every due timer fires now: the committed rows go with one range
        // removal (timer keys are due times), staged ones with them.
        for run in b.fire_timers(self.now, !due.is_empty()) {
            self.wake(b, run);
        }
        for (_, runs) in due {
            for run in parse_timer_runs(&runs) {
                self.wake(b, run);
            }
        }
        Ok(())
    }

    pub(super) fn wake(&self, b: &mut Batch, run: u64) {
        b.wake.insert(run);
        b.set_runnable(run, true);
    }

    pub(super) fn run_woken(&mut self, b: &mut Batch) -> Result<(), NodeError> {
        while let Some(run) = b.wake.pop() {
            if b.steps >= self.config.max_steps_per_batch {
                // Leave the rest for the next operation; the runnable index
                // keeps them across a crash.
                self.ready.insert(run);
                continue;
            }
            self.try_run(b, run)?;
        }
        Ok(())
    }
}
