//! [`NodeCore`]: the synchronous state-machine manager shared by
//! `MockNetwork` and the tokio node.
//!
//! Every public operation is one group commit: it builds a [`Batch`], applies
//! its input (frames from peers, a start, a kill...), fires due timers, runs
//! every flow that has become runnable (each step inside `catch_unwind`),
//! commits the whole batch in ONE store transaction, and only then releases
//! the batch's frames and completes results. If the commit fails nothing of
//! the batch is released: peers redeliver, callers see the error.

use super::batch::{Batch, Loaded};
use super::dump::OperatorView;
use super::hot::HotCheckpoints;
use super::records::*;
use super::step_services::{FlowStarter, StepWrites};
use super::{NodeConfig, NodeError, Output, RunId};
use crate::registry::{ErasedStep, FlowType, NewFlow, Registry};
use crate::store::{Store, Table};
use crate::protocol::{Body, WireMessage};
use crate::{
    Event, FlowContext, FlowError, FlowErrorKind, FlowSession, IdSource, Party, PublicKey,
    SessionId, StepEffects, Timestamp, Wait,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// What a runnable flow is woken with, and what that consumes.
struct Wake {
    event: Event,
    consumes: Option<(SessionKey, u64)>,
}

/// The node's step engine. Owns the store handle, the registry and the
/// context flows run with; holds no flow in memory between operations.
pub struct NodeCore {
    identity: Party,
    store: Arc<dyn Store>,
    registry: Registry,
    ctx: FlowContext,
    run_ids: Box<dyn IdSource>,
    config: NodeConfig,
    draining: bool,
    ready: BTreeSet<u64>,
    /// The runs the store's `runnable` index holds (committed), so a batch
    /// writes only the index's net changes.
    runnable_index: BTreeSet<u64>,
    now: Timestamp,
    commits: u64,
    /// Recently committed checkpoints, decoded (see `hot.rs`).
    hot: HotCheckpoints,
    /// Steps in the last committed batch: the next batch's size hint.
    last_batch_runs: usize,
    /// Whether the store's `meta` table holds [`STORE_FORMAT`]; until it
    /// does, every commit writes it.
    format_recorded: bool,
}

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

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
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
        let ready: BTreeSet<u64> = store
            .range(&Table::RUNNABLE, &[], None, usize::MAX)
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(k, _)| parse_run_key(&k))
            .collect();
        let runnable_index = ready.iter().copied().collect();
        let format_recorded = check_store_format(store.as_ref())?;
        let draining = store
            .get(&Table::META, META_DRAINING)
            .map_err(store_err)?
            .is_some();
        if draining {
            tracing::info!(node = %identity, "the node is draining (set before the restart): it takes no new flows or sessions until an operator stops draining");
        }
        let config_cache = config.checkpoint_cache_bytes;
        let mut ctx = FlowContext::new(identity.clone(), now, session_ids);
        ctx.services().insert(StepWrites::new(store.clone()));
        ctx.services().insert(FlowStarter::default());
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
            last_batch_runs: 0,
            format_recorded,
        })
    }

    /// A view of this node's database for operator tools, to run apart from
    /// the node (see [`OperatorView`]).
    pub fn operator_view(&self) -> OperatorView {
        OperatorView::new(self.store.clone(), self.registry.clone())
    }

    /// This node's identity.
    pub fn identity(&self) -> &Party {
        &self.identity
    }

    /// The registry, to add flows and responders.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The node's services (inserted into every step's `ctx.services()`).
    pub fn services(&mut self) -> &mut crate::services::Services {
        self.ctx.services()
    }

    /// Number of successful commits since open (a progress measure).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Whether some flow has input waiting beyond the last batch's step limit.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Stops (or resumes) taking new flows and sessions. The setting is
    /// stored with the node, so a node restarted while draining is still
    /// draining. If the store cannot record it, the node switches anyway
    /// (for this process's life) and logs an error; use
    /// [`try_set_draining`](Self::try_set_draining) to see the failure.
    pub fn set_draining(&mut self, draining: bool) {
        if let Err(e) = self.try_set_draining(draining) {
            tracing::error!(
                draining,
                "draining switched in memory only, it will not survive a restart: {e}"
            );
            self.draining = draining;
        }
    }

    /// [`set_draining`](Self::set_draining), committed to the store before
    /// it takes effect: on `Err` nothing changed.
    pub fn try_set_draining(&mut self, draining: bool) -> Result<(), NodeError> {
        if self.draining == draining {
            return Ok(());
        }
        let mut w = crate::store::WriteBatch::default();
        if draining {
            w.put(Table::META, META_DRAINING.to_vec(), vec![1]);
        } else {
            w.delete(Table::META, META_DRAINING.to_vec());
        }
        self.commit_writes(w)?;
        self.draining = draining;
        Ok(())
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The earliest pending timer (flow sleeps and hospital retries).
    pub fn next_timer(&self) -> Result<Option<Timestamp>, NodeError> {
        Ok(self
            .store
            .range(&Table::TIMERS, &[], None, 1)
            .map_err(store_err)?
            .first()
            .and_then(|(k, _)| parse_timer_key(k)))
    }

    /// Every unacknowledged frame, for redelivery (at start-up and on a
    /// retransmission timer).
    pub fn unacked(&self) -> Result<Vec<(PublicKey, Vec<u8>)>, NodeError> {
        Ok(self
            .unacked_frames()?
            .into_iter()
            .map(|f| (f.to, f.frame))
            .collect())
    }

    /// Every unacknowledged frame with its outbox key, in key order: what
    /// [`unacked`](Self::unacked) gives, plus the key that names each
    /// message, so a driver can track which ones it re-sent when and
    /// re-send only those overdue (see `runner::node`).
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

    /// Creates a flow and commits it (its first step runs in the next
    /// operation). With a `client_id` already used, returns that run and
    /// starts nothing. The same as [`start_many`](Self::start_many) with one
    /// flow.
    pub fn start(
        &mut self,
        now: Timestamp,
        flow: NewFlow,
        client_id: Option<String>,
    ) -> Result<(RunId, Output), NodeError> {
        let (runs, out) = self.start_many(now, vec![(flow, client_id)])?;
        match runs.as_slice() {
            [run] => Ok((*run, out)),
            _ => Err(NodeError::Store(format!(
                "internal error: starting one flow gave {} runs (report this bug)",
                runs.len()
            ))),
        }
    }

    /// Creates all `flows` in ONE commit (their first steps run in the next
    /// operation) and returns their runs in the order given. Why: every
    /// commit costs the disk two fsyncs, so a client with many flows to
    /// start pays for one instead of one per flow. Per flow it means exactly
    /// [`start`](Self::start): a `client_id` already used — before, or
    /// earlier in this same call — gives that run and starts nothing; while
    /// draining each new flow is finished at once with a `Refused` error.
    /// On `Err` none of them was started (retrying with client ids is safe).
    pub fn start_many(
        &mut self,
        now: Timestamp,
        flows: Vec<(NewFlow, Option<String>)>,
    ) -> Result<(Vec<RunId>, Output), NodeError> {
        let mut runs = Vec::with_capacity(flows.len());
        let mut new_runs = Vec::with_capacity(flows.len());
        // Client ids given a run by this call (not yet in the store).
        let mut claimed: HashMap<String, u64> = HashMap::new();
        let mut taken: HashSet<u64> = HashSet::new();
        for (flow, client_id) in flows {
            if let Some(id) = &client_id {
                if let Some(&run) = claimed.get(id) {
                    runs.push(RunId(run));
                    continue;
                }
                if let Some(run) = self.run_for_client_id(id)? {
                    runs.push(run);
                    continue;
                }
            }
            self.registry.insert_type(flow.flow_type.clone());
            // Random ids: one already given out in this call is not in the
            // store yet, so check it here.
            let mut run = self.fresh_run_id()?;
            while !taken.insert(run) {
                run = self.fresh_run_id()?;
            }
            if let Some(id) = &client_id {
                claimed.insert(id.clone(), run);
            }
            runs.push(RunId(run));
            new_runs.push((run, flow, client_id));
        }
        if new_runs.is_empty() {
            return Ok((runs, Output::default()));
        }
        let draining = self.draining;
        let out = self.batch_inner(now, false, |core, b| {
            for (run, flow, client_id) in new_runs {
                if let Some(id) = &client_id {
                    b.put(Table::CLIENT_IDS, id.as_bytes().to_vec(), run_key(run));
                }
                if draining {
                    let err = FlowError::with_kind(
                        FlowErrorKind::Refused,
                        format!(
                            "cannot start `{}`: the node is draining (it takes no new flows until an operator stops draining)",
                            flow.flow_type.name()
                        ),
                    );
                    core.store_result(b, run, flow.flow_type.name(), client_id, Err(err));
                    continue;
                }
                core.create_run(b, run, flow, Vec::new(), true, client_id);
            }
            Ok(())
        })?;
        Ok((runs, out))
    }

    /// Records a flow that could not even be prepared (its start state does
    /// not serialize) as finished with `error`, so its handle reports it.
    pub fn record_failed_start(
        &mut self,
        now: Timestamp,
        flow: &str,
        error: FlowError,
    ) -> Result<(RunId, Output), NodeError> {
        let run = self.fresh_run_id()?;
        let out = self.batch(now, |core, b| {
            core.store_result(b, run, flow, None, Err(error));
            Ok(())
        })?;
        Ok((RunId(run), out))
    }

    /// Processes frames received from peers (authenticated by the transport
    /// as coming from `from`), as one group commit.
    pub fn deliver(
        &mut self,
        now: Timestamp,
        frames: Vec<(PublicKey, Vec<u8>)>,
    ) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            for (from, frame) in frames {
                core.on_frame(b, &from, &frame)?;
            }
            Ok(())
        })
    }

    /// Fires due timers and runs flows left runnable.
    pub fn tick(&mut self, now: Timestamp) -> Result<Output, NodeError> {
        self.batch(now, |_, _| Ok(()))
    }

    /// Ends a flow by operator decision: its counterparties are told (kind
    /// `Killed`), its checkpoint removed, its result set to a `Killed` error.
    pub fn kill(&mut self, now: Timestamp, run: RunId) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            let error = FlowError::with_kind(
                FlowErrorKind::Killed,
                format!("flow {run} was killed by an operator"),
            );
            match b.checkpoint(&*core.store, run.0).map_err(store_err)? {
                Some(Loaded::Ok(rec)) => {
                    core.end_run(b, run.0, &rec, Err(error.clone()), Some(error));
                }
                Some(Loaded::Corrupt(_)) => {
                    // The record does not say which sessions it owns: find
                    // them by scanning the session table (operator action,
                    // rare).
                    let sessions = core.sessions_of(run.0)?;
                    let rec = CheckpointRecord {
                        flow: "<undecodable checkpoint>".into(),
                        fingerprint: 0,
                        version: 0,
                        state: Vec::new(),
                        state_name: String::new(),
                        started: true,
                        wait: None,
                        waiting_since: now,
                        progress: Vec::new(),
                        sessions,
                        keep_result: true,
                        client_id: None,
                    };
                    core.end_run(b, run.0, &rec, Err(error.clone()), Some(error));
                }
                None => return Err(NodeError::UnknownRun(run)),
            }
            Ok(())
        })
    }

    /// Lets a hospitalised flow run again now (after the operator fixed the
    /// cause: deployed the right code, restored a service...).
    pub fn retry(&mut self, now: Timestamp, run: RunId) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            if b.get(&*core.store, &Table::HOSPITAL, &run_key(run.0))
                .map_err(store_err)?
                .is_none()
            {
                return Err(NodeError::NotInHospital(run));
            }
            b.delete(Table::HOSPITAL, run_key(run.0));
            core.wake(b, run.0);
            Ok(())
        })
    }

    /// The outcome of a finished flow started with a kept result.
    pub fn result(&self, run: RunId) -> Result<Option<Result<Vec<u8>, FlowError>>, NodeError> {
        let Some(bytes) = self
            .store
            .get(&Table::RESULTS, &run_key(run.0))
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        match rmp_serde::from_slice::<ResultRecord>(&bytes) {
            Ok(r) => Ok(Some(r.outcome.map(|b| b.into_vec()))),
            Err(e) => Ok(Some(Err(FlowError::internal(format!(
                "the stored result of run {run} does not decode: {e}"
            ))))),
        }
    }

    /// Forgets a finished flow's result (and its client id). `true` if there
    /// was one.
    pub fn remove_result(&mut self, now: Timestamp, run: RunId) -> Result<bool, NodeError> {
        let Some(bytes) = self
            .store
            .get(&Table::RESULTS, &run_key(run.0))
            .map_err(store_err)?
        else {
            return Ok(false);
        };
        let client_id = rmp_serde::from_slice::<ResultRecord>(&bytes)
            .ok()
            .and_then(|r| r.client_id);
        self.batch(now, |_, b| {
            b.delete(Table::RESULTS, run_key(run.0));
            if let Some(id) = client_id {
                b.delete(Table::CLIENT_IDS, id.into_bytes());
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// The run started with `client_id`, if any (running or finished with its
    /// result kept).
    pub fn run_for_client_id(&self, client_id: &str) -> Result<Option<RunId>, NodeError> {
        Ok(self
            .store
            .get(&Table::CLIENT_IDS, client_id.as_bytes())
            .map_err(store_err)?
            .and_then(|v| parse_run_key(&v))
            .map(RunId))
    }

    /// Overwrites the encoded state of a checkpoint: an operator's repair tool
    /// (and how tests simulate disk corruption). The flow is tried again.
    pub fn replace_checkpoint_state(
        &mut self,
        now: Timestamp,
        run: RunId,
        state: Vec<u8>,
    ) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            match b.checkpoint(&*core.store, run.0).map_err(store_err)? {
                Some(Loaded::Ok(mut rec)) => {
                    rec.state = state;
                    b.put_checkpoint(run.0, rec);
                }
                _ => return Err(NodeError::UnknownRun(run)),
            }
            Ok(())
        })
    }

    // ----------------------------------------------------------------- batch

    fn fresh_run_id(&mut self) -> Result<u64, NodeError> {
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
    fn batch(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Self, &mut Batch) -> Result<(), NodeError>,
    ) -> Result<Output, NodeError> {
        self.batch_inner(now, true, f)
    }

    /// [`batch`](Self::batch); with `run: false` the runs `f` woke are only
    /// committed as runnable and left for the next operation (a start
    /// commits the new flow without running its first step).
    fn batch_inner(
        &mut self,
        now: Timestamp,
        run: bool,
        f: impl FnOnce(&mut Self, &mut Batch) -> Result<(), NodeError>,
    ) -> Result<Output, NodeError> {
        self.now = now;
        let hot = std::mem::take(&mut self.hot);
        let mut b = Batch::new(&*self.store, hot, self.last_batch_runs).map_err(store_err)?;
        let retry_later = if run {
            std::mem::take(&mut self.ready)
        } else {
            BTreeSet::new()
        };
        let result = (|| {
            f(self, &mut b)?;
            if run {
                self.fire_timers(&mut b)?;
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
                // (Capped: one huge batch should not make every later
                // batch allocate for it.)
                self.last_batch_runs = b.steps.min(16_384);
                self.hot = b.into_hot(true);
                Ok(output)
            }
            Err(e) => {
                tracing::error!("batch not committed, nothing of it happened: {e}");
                if let Some(w) = self.ctx.services().get_mut::<StepWrites>() {
                    w.discard_step();
                    let mut sink = crate::store::WriteBatch::default();
                    w.drain_into(&mut sink);
                }
                self.ready.extend(retry_later);
                self.ready.extend(b.wake.iter());
                self.hot = b.into_hot(false);
                Err(e)
            }
        }
    }

    fn commit(&mut self, b: &mut Batch) -> Result<(), NodeError> {
        let mut w = b.take_write_batch().map_err(store_err)?;
        let index_changes = b.runnable_changes(&self.runnable_index);
        for &(run, runnable) in &index_changes {
            if runnable {
                w.put(Table::RUNNABLE, run_key(run), Vec::new());
            } else {
                w.delete(Table::RUNNABLE, run_key(run));
            }
        }
        if let Some(writes) = self.ctx.services().get_mut::<StepWrites>() {
            writes.drain_into(&mut w);
        }
        if w.is_empty() {
            return Ok(());
        }
        self.commit_writes(w)?;
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
    fn commit_writes(&mut self, mut w: crate::store::WriteBatch) -> Result<(), NodeError> {
        if !self.format_recorded {
            w.put(
                Table::META,
                META_FORMAT.to_vec(),
                STORE_FORMAT.to_be_bytes().to_vec(),
            );
        }
        self.store.commit(w).map_err(store_err)?;
        self.format_recorded = true;
        self.commits += 1;
        Ok(())
    }

    fn fire_timers(&mut self, b: &mut Batch) -> Result<(), NodeError> {
        let upper = timer_key(Timestamp(self.now.0.saturating_add(1)));
        let due = self
            .store
            .range(&Table::TIMERS, &[], Some(&upper), usize::MAX)
            .map_err(store_err)?;
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

    fn wake(&self, b: &mut Batch, run: u64) {
        b.wake.insert(run);
        b.set_runnable(run, true);
    }

    fn run_woken(&mut self, b: &mut Batch) -> Result<(), NodeError> {
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

    // ------------------------------------------------------------- frames

    fn on_frame(&mut self, b: &mut Batch, from: &PublicKey, frame: &[u8]) -> Result<(), NodeError> {
        let msg = match WireMessage::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = ?from, "dropped a frame: {e}");
                return Ok(());
            }
        };
        match msg {
            WireMessage::Ack {
                session,
                from_initiator,
                seq,
            } => {
                let side = if from_initiator {
                    Side::Initiator
                } else {
                    Side::Responder
                };
                let key = outbox_key(
                    SessionKey {
                        id: SessionId(session),
                        side,
                    },
                    seq,
                );
                if let Some(v) = b
                    .get(&*self.store, &Table::OUTBOX, &key)
                    .map_err(store_err)?
                {
                    match rmp_serde::from_slice::<OutboxRecord>(&v) {
                        Ok(r) if r.to != *from => {
                            tracing::warn!(peer = ?from, "ignored an ack for a message sent to another peer")
                        }
                        _ => b.delete(Table::OUTBOX, key),
                    }
                }
                Ok(())
            }
            WireMessage::Session {
                session,
                from_initiator,
                seq,
                body,
            } => {
                let key = SessionKey {
                    id: SessionId(session),
                    side: if from_initiator {
                        Side::Responder
                    } else {
                        Side::Initiator
                    },
                };
                let ack = WireMessage::Ack {
                    session,
                    from_initiator,
                    seq,
                };
                match body {
                    Body::Init {
                        flow,
                        version,
                        initiator,
                    } => self.on_init(b, from, key, seq, &flow, version, initiator, ack),
                    Body::Data(payload) => {
                        self.on_sequenced(b, from, key, seq, Inbound::Data(payload), ack)
                    }
                    Body::End(error) => {
                        self.on_sequenced(b, from, key, seq, Inbound::End(error), ack)
                    }
                }
            }
        }
    }

    fn emit(&self, b: &mut Batch, to: &PublicKey, msg: &WireMessage) {
        match msg.encode() {
            Ok(frame) => b.emit.push((*to, frame)),
            Err(e) => tracing::error!("{e}"),
        }
    }

    fn tombstoned(&self, b: &Batch, key: SessionKey) -> Result<bool, NodeError> {
        Ok(b.get(&*self.store, &Table::TOMBSTONES, &key.bytes())
            .map_err(store_err)?
            .is_some())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_init(
        &mut self,
        b: &mut Batch,
        from: &PublicKey,
        key: SessionKey,
        seq: u64,
        flow: &str,
        version: u32,
        initiator: Party,
        ack: WireMessage,
    ) -> Result<(), NodeError> {
        if key.side != Side::Responder || seq != 0 || initiator.key() != from {
            tracing::warn!(peer = ?from, session = %key.id, "dropped a malformed session init");
            return Ok(());
        }
        let collision = match b.session(&*self.store, key).map_err(store_err)? {
            Some(existing) if existing.counterparty.key() == from => {
                self.emit(b, from, &ack); // duplicate: already processed
                return Ok(());
            }
            Some(_) => true,
            None => false,
        };
        if self.tombstoned(b, key)? {
            self.emit(b, from, &ack);
            return Ok(());
        }
        let refuse = |core: &Self, b: &mut Batch, error: FlowError| {
            tracing::info!(peer = ?from, flow, "refused a session: {}", error.message());
            let end = WireMessage::Session {
                session: key.id.0,
                from_initiator: false,
                seq: 0,
                body: Body::End(Some(error)),
            };
            core.emit(b, from, &end);
        };
        if collision {
            refuse(
                self,
                b,
                FlowError::with_kind(
                    FlowErrorKind::Refused,
                    format!(
                        "{} already has a session {} with another peer: `{flow}` was not started; start the flow again (it will pick a new session id)",
                        self.identity, key.id
                    ),
                ),
            );
            return Ok(());
        }
        if self.draining {
            refuse(
                self,
                b,
                FlowError::with_kind(
                    FlowErrorKind::Refused,
                    format!(
                        "{} is draining and takes no new sessions: `{flow}` was not started; try again after its upgrade",
                        self.identity
                    ),
                ),
            );
            return Ok(());
        }
        let new_flow = match self.registry.responder(flow, FlowSession::from_id(key.id)) {
            None => {
                refuse(
                    self,
                    b,
                    FlowError::with_kind(
                        FlowErrorKind::UnknownFlow,
                        format!(
                            "{} has no responder registered for flow `{flow}` (version {version}): register one on that node with `responder::<{flow}::Flow>(..)`",
                            self.identity
                        ),
                    ),
                );
                return Ok(());
            }
            Some(Err(e)) => {
                refuse(self, b, e);
                return Ok(());
            }
            Some(Ok(f)) => f,
        };
        let run = self.fresh_run_id()?;
        b.put_session(
            key,
            SessionRecord {
                run,
                counterparty: initiator,
                initiating_flow: flow.to_owned(),
                next_send: 0,
                next_consume: 1,
                inbox: Default::default(),
                ended: None,
            },
        );
        self.create_run(b, run, new_flow, vec![key], false, None);
        self.emit(b, from, &ack);
        Ok(())
    }

    fn on_sequenced(
        &mut self,
        b: &mut Batch,
        from: &PublicKey,
        key: SessionKey,
        seq: u64,
        item: Inbound,
        ack: WireMessage,
    ) -> Result<(), NodeError> {
        let Some(mut rec) = b.session(&*self.store, key).map_err(store_err)? else {
            if self.tombstoned(b, key)? {
                // Our end is gone: acknowledge so the sender stops resending.
                self.emit(b, from, &ack);
            } else {
                // Probably ahead of its session's init: the sender redelivers.
                tracing::debug!(peer = ?from, session = %key.id, seq, "message for an unknown session dropped");
            }
            return Ok(());
        };
        if rec.counterparty.key() != from {
            tracing::warn!(peer = ?from, session = %key.id, "dropped a message from a peer that is not the session's counterparty");
            return Ok(());
        }
        if seq < rec.next_consume || rec.inbox.contains_key(&seq) || rec.ended.is_some() {
            self.emit(b, from, &ack); // duplicate
            return Ok(());
        }
        if matches!(item, Inbound::End(_)) {
            // The peer will read nothing more: stop redelivering to it.
            let our_side = SessionKey {
                id: key.id,
                side: key.side,
            };
            for k in b
                .keys_with_prefix(&*self.store, &Table::OUTBOX, &our_side.bytes())
                .map_err(store_err)?
            {
                b.delete(Table::OUTBOX, k);
            }
        }
        rec.inbox.insert(seq, item);
        let run = rec.run;
        b.put_session(key, rec);
        self.wake(b, run);
        self.emit(b, from, &ack);
        Ok(())
    }

    // --------------------------------------------------------------- runs

    fn create_run(
        &mut self,
        b: &mut Batch,
        run: u64,
        flow: NewFlow,
        sessions: Vec<SessionKey>,
        keep_result: bool,
        client_id: Option<String>,
    ) {
        let t = &flow.flow_type;
        b.put_checkpoint(
            run,
            Box::new(CheckpointRecord {
                flow: t.name().to_owned(),
                fingerprint: t.fingerprint(),
                version: t.version(),
                state_name: t.state_name(&flow.state).unwrap_or("?").to_owned(),
                state: flow.state,
                started: false,
                wait: None,
                waiting_since: self.now,
                progress: Vec::new(),
                sessions,
                keep_result,
                client_id,
            }),
        );
        self.wake(b, run);
    }

    fn sessions_of(&self, run: u64) -> Result<Vec<SessionKey>, NodeError> {
        Ok(self
            .store
            .range(&Table::SESSIONS, &[], None, usize::MAX)
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(k, v)| {
                let rec: SessionRecord = rmp_serde::from_slice(&v).ok()?;
                if rec.run != run || k.len() != 9 {
                    return None;
                }
                Some(SessionKey {
                    id: SessionId(u64::from_be_bytes(k[..8].try_into().ok()?)),
                    side: if k[8] == 0 {
                        Side::Initiator
                    } else {
                        Side::Responder
                    },
                })
            })
            .collect())
    }

    fn hospitalize(
        &mut self,
        b: &mut Batch,
        run: u64,
        error: String,
        transient: bool,
    ) -> Result<(), NodeError> {
        let previous: Option<HospitalRecord> = b
            .get(&*self.store, &Table::HOSPITAL, &run_key(run))
            .map_err(store_err)?
            .and_then(|v| rmp_serde::from_slice(&v).ok());
        let attempts = previous.as_ref().map_or(0, |p| p.attempts) + 1;
        let retry_at = if transient && attempts <= self.config.max_transient_retries {
            let factor = 1u32 << (attempts - 1).min(16);
            Some(self.now.after(self.config.retry_backoff * factor))
        } else {
            None
        };
        match retry_at {
            Some(t) => {
                tracing::warn!(run = %RunId(run), attempt = attempts, "flow failed transiently, retrying from its last checkpoint at {}: {error}", t.0);
                b.add_timer(&*self.store, t, run).map_err(store_err)?;
            }
            None => {
                tracing::error!(run = %RunId(run), "flow kept in the hospital for an operator (retry or kill): {error}")
            }
        }
        let rec = HospitalRecord {
            error,
            attempts,
            retry_at,
            since: previous.map_or(self.now, |p| p.since),
        };
        b.put(Table::HOSPITAL, run_key(run), encode(&rec));
        b.set_runnable(run, false);
        Ok(())
    }

    /// What `rec` is woken with now, if anything.
    fn next_event(&self, b: &mut Batch, rec: &CheckpointRecord) -> Result<Option<Wake>, NodeError> {
        if !rec.started {
            return Ok(Some(Wake {
                event: Event::Start,
                consumes: None,
            }));
        }
        match &rec.wait {
            Some(Wait::Timer(t)) => Ok((*t <= self.now).then_some(Wake {
                event: Event::Timer,
                consumes: None,
            })),
            Some(Wait::Receive(sid)) => {
                let Some(key) = rec.sessions.iter().find(|k| k.id == *sid).copied() else {
                    return Ok(Some(Wake {
                        event: Event::SessionEnded {
                            session: *sid,
                            error: FlowError::internal(format!(
                                "the flow waits on session {sid}, which it does not own"
                            )),
                        },
                        consumes: None,
                    }));
                };
                let Some(s) = b.session(&*self.store, key).map_err(store_err)? else {
                    return Ok(Some(Wake {
                        event: Event::SessionEnded {
                            session: *sid,
                            error: FlowError::counterparty_ended(),
                        },
                        consumes: None,
                    }));
                };
                if let Some(item) = s.inbox.get(&s.next_consume) {
                    let event = match item {
                        Inbound::Data(p) => Event::Message {
                            session: *sid,
                            payload: p.clone(),
                        },
                        Inbound::End(e) => Event::SessionEnded {
                            session: *sid,
                            error: e.clone().unwrap_or_else(FlowError::counterparty_ended),
                        },
                    };
                    return Ok(Some(Wake {
                        event,
                        consumes: Some((key, s.next_consume)),
                    }));
                }
                Ok(s.ended.clone().map(|error| Wake {
                    event: Event::SessionEnded {
                        session: *sid,
                        error,
                    },
                    consumes: None,
                }))
            }
            None => Ok(Some(Wake {
                // A suspended flow always registers a wait; a record without
                // one can only come from a foreign writer.
                event: Event::SessionEnded {
                    session: SessionId(0),
                    error: FlowError::internal("the checkpoint records no wait"),
                },
                consumes: None,
            })),
        }
    }

    fn try_run(&mut self, b: &mut Batch, run: u64) -> Result<(), NodeError> {
        let in_hospital = match b.hospital(&*self.store, run).map_err(store_err)? {
            None => false,
            Some(h) => {
                let due = rmp_serde::from_slice::<HospitalRecord>(&h)
                    .ok()
                    .and_then(|h| h.retry_at)
                    .is_some_and(|t| t <= self.now);
                if !due {
                    b.set_runnable(run, false);
                    return Ok(());
                }
                true
            }
        };
        let rec = match b.checkpoint(&*self.store, run).map_err(store_err)? {
            None => {
                b.set_runnable(run, false);
                return Ok(());
            }
            Some(Loaded::Corrupt(e)) => return self.hospitalize(b, run, e, false),
            Some(Loaded::Ok(rec)) => rec,
        };
        let Some(wake) = self.next_event(b, &rec)? else {
            b.set_runnable(run, false);
            return Ok(());
        };
        let Some(flow_type) = self.registry.flow(&rec.flow) else {
            let e = format!(
                "no flow named `{}` is registered on this node: deploy the code that has it (or kill the flow)",
                rec.flow
            );
            return self.hospitalize(b, run, e, false);
        };
        if flow_type.fingerprint() != rec.fingerprint || flow_type.version() != rec.version {
            let e = format!(
                "the checkpoint of `{}` was written by version {} (fingerprint {:016x}) but this node runs version {} (fingerprint {:016x}): the flow's state shape changed; deploy the code it was written with to finish it, or kill it",
                rec.flow,
                rec.version,
                rec.fingerprint,
                flow_type.version(),
                flow_type.fingerprint()
            );
            return self.hospitalize(b, run, e, false);
        }
        self.step(b, run, rec, flow_type, wake, in_hospital)
    }

    fn step(
        &mut self,
        b: &mut Batch,
        run: u64,
        mut rec: Box<CheckpointRecord>,
        flow_type: Arc<dyn FlowType>,
        wake: Wake,
        in_hospital: bool,
    ) -> Result<(), NodeError> {
        b.steps += 1;
        self.ctx.set_now(self.now);
        let draining = self.draining;
        if let Some(starter) = self.ctx.services().get_mut::<FlowStarter>() {
            starter.begin_step(draining);
        }
        let effects = StepEffects {
            progress: rec.progress.clone(),
            ..StepEffects::default()
        };
        let ctx = &mut self.ctx;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            flow_type.step(&rec.state, ctx, wake.event, effects)
        }));
        let requests = self
            .ctx
            .services()
            .get_mut::<FlowStarter>()
            .map(FlowStarter::end_step)
            .unwrap_or_default();
        let (erased, effects) = match outcome {
            Err(panic) => {
                self.discard_step_writes();
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                tracing::error!(run = %RunId(run), flow = %rec.flow, "flow panicked: {msg}");
                let error = FlowError::internal(format!("flow `{}` panicked: {msg}", rec.flow));
                self.end_run(b, run, &rec, Err(error), None);
                return Ok(());
            }
            Ok(Err(decode)) => {
                self.discard_step_writes();
                return self.hospitalize(b, run, decode, false);
            }
            Ok(Ok(r)) => r,
        };
        if let ErasedStep::Done(Err(e)) = &erased
            && e.kind() == FlowErrorKind::Transient
        {
            self.discard_step_writes();
            return self.hospitalize(b, run, e.message().to_owned(), true);
        }
        // Every send must be on a session this run owns or just opened.
        let opened: Vec<SessionKey> = effects
            .opened
            .iter()
            .map(|o| SessionKey {
                id: o.id,
                side: Side::Initiator,
            })
            .collect();
        let owns = |id: SessionId| {
            rec.sessions
                .iter()
                .chain(&opened)
                .find(|k| k.id == id)
                .copied()
        };
        if let Some(bad) = effects.sends.iter().find(|m| owns(m.session).is_none()) {
            self.discard_step_writes();
            let e = FlowError::internal(format!(
                "flow `{}` sent on session {}, which it does not own",
                rec.flow, bad.session
            ));
            tracing::error!(run = %RunId(run), "{}", e.message());
            self.end_run(b, run, &rec, Err(e), None);
            return Ok(());
        }
        if let Some(w) = self.ctx.services().get_mut::<StepWrites>() {
            w.keep_step();
        }
        if in_hospital {
            b.delete(Table::HOSPITAL, run_key(run));
        }
        // The consumed message.
        if let Some((key, seq)) = wake.consumes
            && let Some(mut s) = b.session(&*self.store, key).map_err(store_err)?
        {
            if let Some(Inbound::End(e)) = s.inbox.remove(&seq) {
                s.ended = Some(e.unwrap_or_else(FlowError::counterparty_ended));
            }
            s.next_consume = seq + 1;
            b.put_session(key, s);
        }
        // New sessions: their Init goes first.
        for o in &effects.opened {
            let key = SessionKey {
                id: o.id,
                side: Side::Initiator,
            };
            b.put_session(
                key,
                SessionRecord {
                    run,
                    counterparty: o.counterparty.clone(),
                    initiating_flow: o.initiating_flow.to_owned(),
                    next_send: 1,
                    next_consume: 0,
                    inbox: Default::default(),
                    ended: None,
                },
            );
            rec.sessions.push(key);
            let init = WireMessage::Session {
                session: o.id.0,
                from_initiator: true,
                seq: 0,
                body: Body::Init {
                    flow: o.initiating_flow.to_owned(),
                    version: o.initiating_version,
                    initiator: self.identity.clone(),
                },
            };
            self.send_sequenced(b, key, 0, o.counterparty.key(), &init);
        }
        for m in effects.sends {
            let Some(key) = rec.sessions.iter().find(|k| k.id == m.session).copied() else {
                continue; // checked above
            };
            let Some(mut s) = b.session(&*self.store, key).map_err(store_err)? else {
                continue;
            };
            if s.peer_ended() {
                tracing::debug!(session = %key.id, "message to a counterparty that has ended dropped");
                continue;
            }
            let seq = s.next_send;
            s.next_send += 1;
            let msg = WireMessage::Session {
                session: key.id.0,
                from_initiator: key.side == Side::Initiator,
                seq,
                body: Body::Data(m.payload),
            };
            let to = *s.counterparty.key();
            b.put_session(key, s);
            self.send_sequenced(b, key, seq, &to, &msg);
        }
        for f in requests {
            let new_run = self.fresh_run_id()?;
            self.registry.insert_type(f.flow_type.clone());
            self.create_run(b, new_run, f, Vec::new(), false, None);
        }
        match erased {
            ErasedStep::Suspended { state, state_name } => {
                let Some(wait) = effects.wait else {
                    let e = FlowError::internal(format!(
                        "flow `{}` suspended in state {state_name} without waiting on anything",
                        rec.flow
                    ));
                    self.end_run(b, run, &rec, Err(e), None);
                    return Ok(());
                };
                if rec.progress != effects.progress {
                    b.progress.push((run, effects.progress.clone()));
                }
                if let Wait::Timer(t) = wait {
                    b.add_timer(&*self.store, t, run).map_err(store_err)?;
                }
                rec.state = state;
                if rec.state_name != state_name {
                    rec.state_name = state_name.to_owned();
                }
                rec.started = true;
                rec.wait = Some(wait);
                rec.waiting_since = self.now;
                rec.progress = effects.progress;
                // It may be runnable at once (a message already buffered, a
                // zero sleep): then it runs again in this batch.
                if self.next_event(b, &rec)?.is_some() {
                    self.wake(b, run);
                } else {
                    b.set_runnable(run, false);
                }
                b.put_checkpoint(run, rec);
            }
            ErasedStep::Done(result) => {
                let to_peers = match &result {
                    Err(e) if e.kind() != FlowErrorKind::Internal => Some(e.clone()),
                    _ => None,
                };
                self.end_run(b, run, &rec, result, to_peers);
            }
        }
        Ok(())
    }

    fn discard_step_writes(&mut self) {
        if let Some(w) = self.ctx.services().get_mut::<StepWrites>() {
            w.discard_step();
        }
    }

    fn send_sequenced(
        &self,
        b: &mut Batch,
        key: SessionKey,
        seq: u64,
        to: &PublicKey,
        msg: &WireMessage,
    ) {
        match msg.encode() {
            Ok(frame) => {
                b.put(
                    Table::OUTBOX,
                    outbox_key(key, seq),
                    encode(&OutboxRecord {
                        to: *to,
                        frame: frame.clone(),
                    }),
                );
                b.emit.push((*to, frame));
            }
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Ends `run`: tells every counterparty still there (`to_peers`, or the
    /// generic "counterparty ended"), removes its checkpoint, sessions and
    /// timers, and keeps its outcome if a client wants it.
    fn end_run(
        &mut self,
        b: &mut Batch,
        run: u64,
        rec: &CheckpointRecord,
        outcome: Result<Vec<u8>, FlowError>,
        to_peers: Option<FlowError>,
    ) {
        for key in &rec.sessions {
            let s = match b.session(&*self.store, *key) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{e}");
                    None
                }
            };
            if let Some(s) = s
                && !s.peer_ended()
            {
                let msg = WireMessage::Session {
                    session: key.id.0,
                    from_initiator: key.side == Side::Initiator,
                    seq: s.next_send,
                    body: Body::End(to_peers.clone()),
                };
                self.send_sequenced(b, *key, s.next_send, s.counterparty.key(), &msg);
            }
            b.delete_session(*key);
            b.put(Table::TOMBSTONES, key.bytes(), Vec::new());
        }
        // (A timer left behind would only wake a run that is gone, which
        // does nothing: a failed read here is logged, not fatal.)
        if let Some(Wait::Timer(t)) = rec.wait
            && let Err(e) = b.remove_timer(&*self.store, t, run)
        {
            tracing::error!("{e}");
        }
        if let Ok(Some(h)) = b.get(&*self.store, &Table::HOSPITAL, &run_key(run)) {
            if let Some(t) = rmp_serde::from_slice::<HospitalRecord>(&h)
                .ok()
                .and_then(|h| h.retry_at)
                && let Err(e) = b.remove_timer(&*self.store, t, run)
            {
                tracing::error!("{e}");
            }
            b.delete(Table::HOSPITAL, run_key(run));
        }
        b.set_runnable(run, false);
        b.delete_checkpoint(run);
        match &outcome {
            Ok(_) => tracing::debug!(run = %RunId(run), flow = %rec.flow, "flow finished"),
            Err(e) => {
                tracing::info!(run = %RunId(run), flow = %rec.flow, "flow ended with an error: {e}")
            }
        }
        if rec.keep_result {
            self.store_result(b, run, &rec.flow, rec.client_id.clone(), outcome);
        } else {
            b.finished.push((run, rec.flow.clone(), outcome));
        }
    }

    fn store_result(
        &self,
        b: &mut Batch,
        run: u64,
        flow: &str,
        client_id: Option<String>,
        outcome: Result<Vec<u8>, FlowError>,
    ) {
        let rec = ResultRecord {
            flow: flow.to_owned(),
            client_id,
            outcome: outcome.clone().map(serde_bytes::ByteBuf::from),
        };
        b.put(Table::RESULTS, run_key(run), encode(&rec));
        b.progress
            .push((run, vec![crate::progress::ProgressTracker::DONE.to_owned()]));
        b.finished.push((run, flow.to_owned(), outcome));
    }
}
