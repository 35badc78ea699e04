//! The event loop of a durable node on tokio, talking to its peers over a
//! [`Transport`] — TCP by default ([`NodeBuilder::new`],
//! [`NodeBuilder::from_config`]), or any other implementation
//! ([`NodeBuilder::with_transport`], e.g. the in-process
//! [`MemoryTransport`](crate::transport::MemoryTransport)).
//!
//! The node's state-machine manager ([`NodeCore`]) is synchronous: each of
//! its operations is one group commit (one fsync). This module drives it
//! from one tokio task, the *driver*, which owns the core and reacts to:
//!
//! * frames from peers: every frame waiting in the transport's queue is
//!   taken (up to [`MAX_FRAMES_PER_BATCH`]) and delivered as ONE batch, so
//!   under load many steps share one fsync. A batch of nothing but acks is
//!   not committed on its own: it only deletes outbox entries, so it waits
//!   for the next batch with real work (or the next redelivery tick) — see
//!   [`NodeBuilder::defer_ack_commits`];
//! * commands from [`Node`] handles (start a flow, wait for a result, drain,
//!   operator actions);
//! * the earliest timer (flow sleeps, hospital retries);
//! * redelivery: at every `redelivery_interval` tick, and when a link to a
//!   peer goes down or comes back up, the node's [`Delivery`] decides what
//!   to send again (the policy, shared with `MockNetwork`, is described in
//!   the delivery module); this loop only reads the outbox for it and hands
//!   its frames to the transport.
//!
//! * the long-wait check: every `long_wait_check_interval` (default 5 min)
//!   a scan of the checkpoints logs a warning for each flow waiting longer
//!   than `NodeConfig::long_wait_warning`. The scan reads the store on a
//!   blocking thread through an [`OperatorView`], so a node with a million
//!   suspended flows keeps committing steps during its seconds-long scan;
//!   the operator's [`Node::dump_json`] runs the same way.
//!
//! On redb the commits of frame batches and ready-ticks go through a
//! [`CommitPipeline`] (see [`NodeBuilder::pipeline_commits`](super::NodeBuilder::pipeline_commits)):
//! the driver queues a batch's writes, keeps the batch's [`Output`] with
//! its sequence number, and goes on to the next batch while a committer
//! thread makes it durable (several queued batches in one transaction);
//! each output is released once the committer reports its batch durable,
//! which the driver awaits without blocking its worker. A result a caller
//! waits for is handed over once every batch queued when it was read is
//! durable. Everything else (commands, timers, redelivery, link events,
//! shutdown) first settles the pipeline: it waits until every queued batch
//! is durable and released, then commits inline, so a caller never sees a
//! result that is not on disk.
//!
//! Inline commits block for an fsync. On a multi-threaded runtime with one
//! worker they run inside `block_in_place`, letting the transport's tasks
//! run meanwhile; with more workers they block the driver's worker, and the
//! others serve the transport (see
//! [`NodeBuilder::hand_off_worker_during_commits`](super::NodeBuilder::hand_off_worker_during_commits)).
//! Frames a commit releases are queued on the transport without waiting:
//! if a peer's queue is full, the frame stays in the durable outbox and the
//! next redelivery sends it. The driver never waits on a slow peer.

use super::pipeline::{CommitPipeline, Durable};
use crate::handle::RawResult;
use crate::node::delivery::{Delivery, Sent, Transmit};
use crate::node::{NodeError, Output, UnackedFrame};
use crate::progress::ProgressStream;
use crate::protocol::WireMessage;
use crate::transport::{Incoming, SendError, Transport, TransportEvent};
use crate::{FlowError, NodeCore, PublicKey, RunId, Timestamp};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// Progress streams of the runs a handle was asked about, shared with the event loop.
pub(super) type Observers = Arc<Mutex<HashMap<RunId, ProgressStream>>>;

/// Something a committed batch did to a flow, for subscribers that follow
/// every flow of the node at once (the admin API's event streams and its
/// batch result wait). Sent only while someone subscribes, so a node
/// nobody watches pays nothing for it.
#[derive(Debug, Clone)]
pub(crate) enum FlowEvent {
    /// The flow's progress path changed (committed).
    Progress {
        /// The run.
        run: RunId,
        /// Its new path, outermost step first.
        path: Vec<String>,
    },
    /// The flow ended (committed); responders too.
    Finished {
        /// The run.
        run: RunId,
        /// Its `Flow::NAME`.
        flow: String,
        /// Its outcome, the output in MessagePack.
        result: RawResult,
    },
}

/// How many events a subscriber may fall behind before it misses some
/// (and is told so: `RecvError::Lagged`).
pub(crate) const FLOW_EVENTS_CAPACITY: usize = 16 * 1024;
pub(super) type Job = Box<dyn FnOnce(&mut NodeCore, Timestamp) -> Option<Output> + Send>;

pub(super) enum Command {
    /// Run something on the core; its output (if any) is released.
    Job(Job),
    /// Reply when the run has a result.
    Wait {
        run: RunId,
        reply: oneshot::Sender<RawResult>,
    },
    /// Stop the driver.
    Shutdown,
}

/// The default of [`NodeBuilder::inline_commit_max_frames`](super::NodeBuilder::inline_commit_max_frames):
/// a batch of at most this many frames, stepped while nothing is queued
/// and no frame waits, is committed on the driver. The frames of a busy
/// node arrive in batches of tens to hundreds (~150 with 1,000 ping
/// flows), which go to the committer.
pub const SMALL_BATCH: usize = 4;

/// The most frames delivered in one group commit. Bounds the latency one
/// batch adds to every flow in it.
pub const MAX_FRAMES_PER_BATCH: usize = 1024;

/// Milliseconds since the Unix epoch, the node's clock.
pub(super) fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

pub(super) struct EventLoop<T> {
    pub(super) core: Box<NodeCore>,
    pub(super) transport: Arc<T>,
    pub(super) incoming: Incoming,
    pub(super) events: broadcast::Receiver<TransportEvent>,
    /// `false` once `events` is closed.
    pub(super) events_open: bool,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) observers: Observers,
    /// Every flow's progress and end, for subscribers ([`FlowEvent`]).
    pub(super) flow_events: broadcast::Sender<Arc<FlowEvent>>,
    pub(super) waiters: HashMap<RunId, Vec<oneshot::Sender<RawResult>>>,
    /// Frames the node addressed to itself (a flow talking to its own
    /// node), delivered in the next batch.
    pub(super) loopback: VecDeque<(PublicKey, Vec<u8>)>,
    pub(super) redelivery: Duration,
    /// What to send, re-send and when: the session protocol's sending side.
    pub(super) delivery: Delivery,
    /// See [`NodeBuilder::defer_ack_commits`].
    pub(super) defer_acks: bool,
    /// Received acks not yet committed (only deletions from the outbox).
    pub(super) pending_acks: Vec<(PublicKey, WireMessage)>,
    pub(super) drained_reported: bool,
    pub(super) long_waits: LongWaitCheck,
    /// Set when the driver stops; shared with the `Node` handles.
    pub(super) stopping: Arc<AtomicBool>,
    /// Redelivered and refused frames.
    pub(super) metrics: super::admin::metrics::DriverMetrics,
    /// Commits run inside `block_in_place` (see
    /// [`NodeBuilder::hand_off_worker_during_commits`](super::NodeBuilder::hand_off_worker_during_commits)).
    pub(super) hand_off_commits: bool,
    /// The commit pipeline, when the node's store has one.
    pub(super) pipeline: Option<Pipelined>,
}

/// The event loop's side of a [`CommitPipeline`].
pub(super) struct Pipelined {
    pub(super) pipeline: Arc<CommitPipeline>,
    /// What the committer has made durable.
    pub(super) durable: watch::Receiver<Durable>,
    /// Outputs of batches not yet durable, oldest first, each with the
    /// sequence number that must be durable before it is released.
    pub(super) pending: VecDeque<(u64, Output)>,
    /// Results read for waiting callers while batches were queued: a
    /// result may come from a queued batch, so it is handed over once
    /// everything queued when it was read is durable.
    pub(super) replies: VecDeque<(u64, oneshot::Sender<RawResult>, RawResult)>,
    /// With nothing queued and no frame waiting, commit a batch of at
    /// most this many frames on the driver instead of handing it to the
    /// committer thread (see [`NodeBuilder::inline_commit_max_frames`](super::NodeBuilder::inline_commit_max_frames)).
    pub(super) inline_max_frames: usize,
}

impl Pipelined {
    pub(super) fn new(pipeline: Arc<CommitPipeline>, inline_max_frames: usize) -> Self {
        Self {
            durable: pipeline.durable(),
            pipeline,
            pending: VecDeque::new(),
            replies: VecDeque::new(),
            inline_max_frames,
        }
    }
}

/// [`durable_at`] on the pipeline's receiver; without a pipeline, never
/// ready. (`select!` builds the future of a disabled branch too.)
async fn pending_durable(
    durable: Option<&mut watch::Receiver<Durable>>,
    seq: u64,
) -> Result<u64, String> {
    match durable {
        Some(durable) => durable_at(durable, seq).await,
        None => std::future::pending().await,
    }
}

/// Waits until the batch with sequence number `seq` is durable; the
/// durable sequence number then, or why the pipeline failed.
async fn durable_at(durable: &mut watch::Receiver<Durable>, seq: u64) -> Result<u64, String> {
    match durable
        .wait_for(|d| d.seq >= seq || d.failed.is_some())
        .await
    {
        Ok(d) => match &d.failed {
            Some(why) => Err(format!("a commit failed: {why}")),
            None => Ok(d.seq),
        },
        Err(_) => Err("the commit pipeline stopped".into()),
    }
}

/// The long-wait check's default interval.
pub(super) const DEFAULT_LONG_WAIT_CHECK: Duration = Duration::from_secs(300);

/// The driver's periodic long-wait check.
pub(super) struct LongWaitCheck {
    /// Between scans; zero: never.
    pub(super) every: Duration,
    /// A flow waiting longer than this is logged.
    pub(super) limit: Duration,
    /// The scan in progress or last finished.
    pub(super) scan: Option<tokio::task::JoinHandle<()>>,
}

/// `f`, made to log to the subscriber that is current here, wherever it
/// runs (a blocking thread has no subscriber of its own).
pub(super) fn in_current_dispatch<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    move || tracing::dispatcher::with_default(&dispatch, f)
}

impl<T: Transport> EventLoop<T> {
    pub(super) async fn run(mut self) -> Result<(), String> {
        let result = self.run_until_stopped().await;
        // However the driver stopped: end the operator scans, so none keeps
        // the database open after the node.
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(scan) = self.long_waits.scan.take() {
            let _ = scan.await;
        }
        result
    }

    async fn run_until_stopped(&mut self) -> Result<(), String> {
        let mut redeliver = tokio::time::interval(self.redelivery);
        redeliver.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let check_long_waits = !self.long_waits.every.is_zero();
        let mut long_waits = tokio::time::interval_at(
            tokio::time::Instant::now() + self.long_waits.every,
            self.long_waits.every.max(Duration::from_millis(1)),
        );
        long_waits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Flows left runnable by the last run (and any timers due) go first.
        let mut ready = true;
        loop {
            let timer = self.next_timer_delay();
            // Frames and ready-ticks wait while the pipeline is full.
            let room = self.pipeline.as_ref().is_none_or(|p| p.pipeline.has_room());
            let first_pending = self.pipeline.as_ref().and_then(|p| {
                let output = p.pending.front().map(|(seq, _)| *seq);
                let reply = p.replies.front().map(|(seq, _, _)| *seq);
                output.into_iter().chain(reply).min()
            });
            tokio::select! {
                biased;
                durable = pending_durable(
                    self.pipeline.as_mut().map(|p| &mut p.durable),
                    first_pending.unwrap_or(0),
                ), if first_pending.is_some() => {
                    let durable = durable.inspect_err(|e| self.stopped_by(e))?;
                    self.release_durable(durable);
                }
                command = self.commands.recv() => match command {
                    None | Some(Command::Shutdown) => {
                        self.settle().await?;
                        self.flush_acks()?;
                        break;
                    }
                    Some(Command::Job(job)) => {
                        self.settle().await?;
                        let out = self.blocking(|core| job(core, now()));
                        if let Some(out) = out {
                            self.release(out);
                        }
                    }
                    Some(Command::Wait { run, reply }) => self.wait(run, reply),
                },
                frame = self.incoming.recv(), if room => match frame {
                    Some(first) => self.deliver(Some(first))?,
                    None => {
                        info!("the transport stopped; stopping the node driver");
                        self.settle().await?;
                        self.flush_acks()?;
                        break;
                    }
                },
                _ = std::future::ready(()), if room && !self.loopback.is_empty() => self.deliver(None)?,
                event = self.events.recv(), if self.events_open => {
                    self.settle().await?;
                    self.on_link_event(event)?;
                }
                _ = redeliver.tick() => {
                    self.settle().await?;
                    self.redeliver_overdue()?;
                }
                _ = long_waits.tick(), if check_long_waits => self.start_long_wait_scan(),
                _ = tokio::time::sleep(timer.unwrap_or(Duration::ZERO)), if timer.is_some() => {
                    self.settle().await?;
                    self.operate(|core| core.tick(now()))?;
                }
                _ = std::future::ready(()), if ready && room => self.step(usize::MAX, |core| core.tick(now()))?,
            }
            ready = self.core.has_ready();
            self.report_drained();
        }
        Ok(())
    }

    /// Logs that the driver stops because a commit failed.
    fn stopped_by(&self, e: &str) {
        error!(error = %e, "the node cannot commit; stopping (restart it once the database is writable again)");
    }

    /// Waits until every queued batch is durable and releases their
    /// outputs (nothing to do without a pipeline).
    async fn settle(&mut self) -> Result<(), String> {
        let Some(p) = self.pipeline.as_mut() else {
            return Ok(());
        };
        let last = p.pipeline.last_seq();
        let durable = durable_at(&mut p.durable, last)
            .await
            .inspect_err(|e| self.stopped_by(e))?;
        self.release_durable(durable);
        Ok(())
    }

    /// Releases, in order, the outputs of every batch up to `durable`,
    /// and the results read before it.
    fn release_durable(&mut self, durable: u64) {
        while let Some(p) = self.pipeline.as_mut() {
            match p.pending.front() {
                Some((seq, _)) if *seq <= durable => {
                    if let Some((_, out)) = p.pending.pop_front() {
                        self.release(out);
                    }
                }
                _ => break,
            }
        }
        if let Some(p) = self.pipeline.as_mut() {
            while p.replies.front().is_some_and(|(seq, _, _)| *seq <= durable) {
                if let Some((_, reply, result)) = p.replies.pop_front() {
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// A tick of the long-wait check: scans the checkpoints on a blocking
    /// thread, unless the previous scan is still at it.
    fn start_long_wait_scan(&mut self) {
        if self
            .long_waits
            .scan
            .as_ref()
            .is_some_and(|scan| !scan.is_finished())
        {
            debug!("the previous long-wait scan is still running; skipping this one");
            return;
        }
        let view = self.core.operator_view().stopping_on(self.stopping.clone());
        let limit = self.long_waits.limit;
        let scan = in_current_dispatch(move || match view.warn_long_waits(now(), limit) {
            Ok(slow) if !slow.is_empty() => {
                info!(
                    flows = slow.len(),
                    limit_ms = limit.as_millis(),
                    "long-wait check: flows waiting longer than the limit (each logged above)"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "the long-wait check could not read the checkpoints"),
        });
        self.long_waits.scan = Some(tokio::task::spawn_blocking(scan));
    }

    /// Runs `f` on the core, letting other tasks use this worker thread
    /// while it blocks on the database.
    fn blocking<R>(&mut self, f: impl FnOnce(&mut NodeCore) -> R) -> R {
        let core = &mut *self.core;
        if self.hand_off_commits {
            tokio::task::block_in_place(|| f(core))
        } else {
            f(core)
        }
    }

    /// Runs a committing operation and releases its output. A storage error
    /// is fatal for the driver: nothing of the batch happened, the database
    /// is consistent, and a restart retries from there.
    fn operate(
        &mut self,
        f: impl FnOnce(&mut NodeCore) -> Result<Output, NodeError>,
    ) -> Result<(), String> {
        match self.blocking(f) {
            Ok(out) => {
                // Outputs of earlier batches first (all durable now: this
                // commit returned after them).
                if let Some(p) = &self.pipeline {
                    let durable = p.durable.borrow().seq;
                    self.release_durable(durable);
                }
                self.release(out);
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                self.stopped_by(&e);
                Err(e)
            }
        }
    }

    /// Like [`operate`](Self::operate) for a batch whose commit may overlap
    /// the next batches (frames, ready-ticks): with a pipeline, the batch's
    /// writes are queued and its output waits in `pending` until durable.
    /// With nothing queued and no frame waiting it is committed inline when
    /// that is the faster choice: a batch of at most
    /// [`Pipelined::inline_max_frames`] `frames` (`usize::MAX` for flows
    /// left runnable, whose batch size is not known beforehand).
    fn step(
        &mut self,
        frames: usize,
        f: impl FnOnce(&mut NodeCore) -> Result<Output, NodeError>,
    ) -> Result<(), String> {
        let Some(p) = self.pipeline.as_mut() else {
            return self.operate(f);
        };
        if frames <= p.inline_max_frames
            && p.pending.is_empty()
            && self.incoming.is_empty()
            && p.pipeline.is_idle()
        {
            return self.operate(f);
        }
        p.pipeline.overlap(true);
        let result = f(&mut self.core);
        p.pipeline.overlap(false);
        match result {
            Ok(out) => {
                let seq = p.pipeline.last_seq();
                p.pending.push_back((seq, out));
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                self.stopped_by(&e);
                Err(e)
            }
        }
    }

    fn deliver(&mut self, first: Option<(PublicKey, Vec<u8>)>) -> Result<(), String> {
        let mut frames: Vec<(PublicKey, Vec<u8>)> = self.loopback.drain(..).collect();
        frames.extend(first);
        while frames.len() < MAX_FRAMES_PER_BATCH {
            match self.incoming.try_recv() {
                Ok(frame) => frames.push(frame),
                Err(_) => break,
            }
        }
        // Each frame is decoded once, here; the core takes the messages. A
        // frame that decrypted (so it really comes from `peer`) but is not a
        // session message means a broken or hostile peer: drop the frame and
        // close the peer's connection.
        let me = *self.core.identity().key();
        let mut only_acks = true;
        let mut messages = Vec::with_capacity(frames.len());
        for (peer, frame) in frames {
            match WireMessage::decode(&frame) {
                Ok(message) => {
                    only_acks &= matches!(message, WireMessage::Ack { .. });
                    messages.push((peer, message));
                }
                Err(e) => {
                    let name = self.transport.peer_name(&peer);
                    self.metrics.refused.increment(1);
                    warn!(peer = %name, error = %e, "dropped a frame that does not decode as a session message");
                    if peer != me {
                        self.transport.disconnect(&peer, &e);
                    }
                }
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        if self.defer_acks
            && only_acks
            && self.pending_acks.len() + messages.len() < MAX_FRAMES_PER_BATCH
        {
            self.pending_acks.append(&mut messages);
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.pending_acks);
        batch.append(&mut messages);
        debug!(frames = batch.len(), "delivering a batch");
        self.step(batch.len(), |core| core.deliver_messages(now(), batch))
    }

    /// Commits the acks held back by [`deliver`](Self::deliver).
    fn flush_acks(&mut self) -> Result<(), String> {
        if self.pending_acks.is_empty() {
            return Ok(());
        }
        let acks = std::mem::take(&mut self.pending_acks);
        debug!(acks = acks.len(), "committing deferred acks");
        self.operate(|core| core.deliver_messages(now(), acks))
    }

    /// Answers `reply` with `run`'s result once it is durable: at once if
    /// nothing is queued, else once every batch queued now is durable (a
    /// finished flow's waiters are answered when its batch is released).
    fn wait(&mut self, run: RunId, reply: oneshot::Sender<RawResult>) {
        match self.core.result(run) {
            Ok(Some(result)) => match self.pipeline.as_mut() {
                Some(p) if p.durable.borrow().seq < p.pipeline.last_seq() => {
                    p.replies.push_back((p.pipeline.last_seq(), reply, result));
                }
                _ => {
                    let _ = reply.send(result);
                }
            },
            Ok(None) => self.waiters.entry(run).or_default().push(reply),
            Err(e) => {
                let _ = reply.send(Err(FlowError::internal(e.to_string())));
            }
        }
    }

    /// Hands a committed batch's effects to the world: frames to the
    /// transport (through the delivery), results to waiters, progress to
    /// observers.
    fn release(&mut self, out: Output) {
        self.delivery.released(out.frames);
        self.transmit();
        if self.flow_events.receiver_count() > 0 {
            self.publish(&out.progress, &out.finished);
        }
        for (run, _flow, result) in out.finished {
            for waiter in self.waiters.remove(&run).unwrap_or_default() {
                let _ = waiter.send(result.clone());
            }
        }
        if !out.progress.is_empty() {
            let mut observers = self
                .observers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (run, path) in out.progress {
                observers.entry(run).or_default().push(path);
            }
        }
    }

    /// Tells the subscribers what `out` did to flows: progress first, then
    /// ends (a flow's last progress update comes before its end).
    fn publish(&self, progress: &[(RunId, Vec<String>)], finished: &[(RunId, String, RawResult)]) {
        for (run, path) in progress {
            let _ = self.flow_events.send(Arc::new(FlowEvent::Progress {
                run: *run,
                path: path.clone(),
            }));
        }
        for (run, flow, result) in finished {
            let _ = self.flow_events.send(Arc::new(FlowEvent::Finished {
                run: *run,
                flow: flow.clone(),
                result: result.clone(),
            }));
        }
    }

    /// Hands every frame the delivery has queued to the transport (frames
    /// for this node itself to its loopback queue, delivered in the next
    /// batch) and reports to the delivery what the transport took.
    fn transmit(&mut self) {
        let me = *self.core.identity().key();
        while let Some(Transmit { to, frame, receipt }) = self.delivery.poll_transmit() {
            let sent = if to == me {
                self.loopback.push_back((me, frame));
                Sent::Accepted
            } else {
                self.try_send(&to, frame)
            };
            self.delivery.report(receipt, sent);
        }
        let stats = self.delivery.stats();
        self.metrics
            .redelivered
            .absolute(stats.resent_at_tick + stats.resent_on_reconnect);
    }

    /// Queues `frame` for `to` on the transport without waiting. Refused
    /// when the peer takes nothing more right now (its queue is full or it
    /// is unreachable); the message stays in the outbox either way.
    fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Sent {
        match self.transport.try_send(to, frame) {
            Ok(()) => Sent::Accepted,
            Err(SendError::QueueFull(peer)) => {
                debug!(%peer, "peer queue full; the message stays in the outbox for redelivery");
                Sent::Refused
            }
            Err(SendError::Unreachable(peer)) => {
                debug!(%peer, "peer unreachable; the message stays in the outbox for redelivery");
                Sent::Refused
            }
            Err(e) => {
                warn!(error = %e, "cannot send a message; it stays in the outbox");
                Sent::Accepted
            }
        }
    }

    /// A redelivery tick: the delivery re-sends the messages unacknowledged
    /// for at least one full interval (every one at the first tick). Deferred
    /// acks are committed first, so that what they acknowledge is not sent
    /// again.
    fn redeliver_overdue(&mut self) -> Result<(), String> {
        self.flush_acks()?;
        let Some(outbox) = self.read_outbox() else {
            return Ok(());
        };
        let unacknowledged = outbox.len();
        let before = self.delivery.stats();
        self.delivery.tick(outbox);
        self.transmit();
        let after = self.delivery.stats();
        let overdue = after.resent_at_tick - before.resent_at_tick;
        if overdue > 0 {
            debug!(
                overdue,
                unacknowledged,
                deferred = after.skipped_after_refusal - before.skipped_after_refusal,
                "redelivered messages unacknowledged for a whole interval"
            );
        }
        Ok(())
    }

    fn on_link_event(
        &mut self,
        event: Result<TransportEvent, broadcast::error::RecvError>,
    ) -> Result<(), String> {
        match event {
            Ok(TransportEvent::Connected { peer }) => {
                // The outbox is read only when the old link may have lost
                // something; deferred acks first, so what they acknowledge
                // is not sent again.
                let outbox = if self.delivery.has_losses(&peer) {
                    self.flush_acks()?;
                    match self.read_outbox() {
                        Some(outbox) => outbox,
                        None => return Ok(()),
                    }
                } else {
                    Vec::new()
                };
                self.delivery.connected(peer, outbox);
                self.transmit();
                Ok(())
            }
            Ok(TransportEvent::Disconnected { peer, .. }) => {
                let outbox = self.read_outbox();
                self.delivery.disconnected(peer, outbox);
                Ok(())
            }
            // Missed events: resend everything rather than guess.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.flush_acks()?;
                if let Some(outbox) = self.read_outbox() {
                    self.delivery.events_lost(outbox);
                    self.transmit();
                }
                Ok(())
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The transport will send no more events; the redelivery
                // tick alone keeps delivery going. Stop polling a closed
                // channel (it would be ready forever).
                debug!("the transport's link events ended");
                self.events_open = false;
                Ok(())
            }
        }
    }

    /// The whole outbox, or `None` (logged) if it cannot be read; the next
    /// tick tries again.
    fn read_outbox(&self) -> Option<Vec<UnackedFrame>> {
        match self.core.unacked_frames() {
            Ok(outbox) => Some(outbox),
            Err(e) => {
                error!(error = %e, "cannot read the outbox for redelivery");
                None
            }
        }
    }

    fn next_timer_delay(&self) -> Option<Duration> {
        match self.core.next_timer() {
            Ok(Some(t)) => Some(Duration::from_millis(t.0.saturating_sub(now().0))),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "cannot read the timer table; retrying in 1 s");
                Some(Duration::from_secs(1))
            }
        }
    }

    fn report_drained(&mut self) {
        if !self.core.is_draining() {
            self.drained_reported = false;
            return;
        }
        if self.drained_reported {
            return;
        }
        if self.core.flows_in_flight().is_ok_and(|n| n == 0) {
            info!("node drained: no flows in flight; it is safe to stop it now");
            self.drained_reported = true;
        }
    }
}
