//! [`Node`]: the handle to a running tokio node. Cheap to clone; every
//! method sends a command to the node's event loop (`event_loop.rs`) and
//! awaits its answer, so handles on any task drive one node.
use super::RunnerError;
use super::admin::{self, AdminServer};
use super::event_loop::{Command, FlowEvent, Job, Observers, in_current_dispatch, now};
use crate::handle::{RawResult, RawResultFuture, ResultSource, decode_output};
use crate::node::{NodeError, OperatorView, Output};
use crate::registry::NewFlow;
use crate::tcp::TcpTransport;
use crate::transport::Transport;
use crate::{Flow, FlowError, FlowHandle, NodeCore, Party, RunId, Timestamp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

/// The driver task, taken by the first `shutdown`.
pub(super) type DriverTask =
    Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), String>>>>>;

/// How a [`FlowHandle`] of a tokio node waits for its result: through the
/// node's command queue, held weakly so that a handle does not keep a node
/// alive (a handle outliving its node reports that the node shut down).
pub(super) struct NodeResults {
    pub(super) commands: mpsc::WeakSender<Command>,
}

impl ResultSource for NodeResults {
    fn wait(&self, run: RunId) -> RawResultFuture {
        let commands = self.commands.upgrade();
        Box::pin(async move {
            match commands {
                Some(commands) => wait_for_result(commands, run).await,
                None => Err(node_gone()),
            }
        })
    }
}

fn node_gone() -> FlowError {
    FlowError::internal(
        "the node shut down before the flow finished; start the node again and re-attach \
         (Node::reattach with the flow's client id) to read the result",
    )
}

/// Asks the driver for `run`'s result and waits for it. Takes the sender by
/// value and lets go of it once the request is queued, so a waiting caller
/// does not keep the driver running after every `Node` is gone.
async fn wait_for_result(commands: mpsc::Sender<Command>, run: RunId) -> RawResult {
    let (reply, rx) = oneshot::channel();
    commands
        .send(Command::Wait { run, reply })
        .await
        .map_err(|_| node_gone())?;
    drop(commands);
    rx.await.map_err(|_| node_gone())?
}

/// A running node. Cheap to clone; all clones drive the same node.
///
/// Generic over its [`Transport`] (TCP by default) so that
/// [`transport`](Self::transport) returns the concrete one.
pub struct Node<T: Transport = TcpTransport> {
    pub(super) party: Party,
    pub(super) transport: Arc<T>,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) results: Arc<dyn ResultSource>,
    pub(super) observers: Observers,
    /// Every flow's progress and end, while someone subscribes.
    pub(super) flow_events: broadcast::Sender<Arc<FlowEvent>>,
    pub(super) task: DriverTask,
    /// Set when the driver stops: operator scans still reading end early.
    pub(super) stopping: Arc<AtomicBool>,
    /// The database file; dumps are written beside it.
    pub(super) database: PathBuf,
    /// The admin API, if the node serves one; stopped by `shutdown`.
    pub(super) admin: Arc<Mutex<Option<admin::Running>>>,
    /// The commit pipeline's count of write transactions, if the node
    /// has one (its core then counts batches, several per transaction).
    pub(super) pipeline: Option<Arc<super::pipeline::PipelineCounters>>,
    /// The node's metrics registry (what the admin API's `/metrics` serves).
    pub(super) metrics: admin::NodeMetrics,
}

impl<T: Transport> Clone for Node<T> {
    fn clone(&self) -> Self {
        Node {
            party: self.party.clone(),
            transport: self.transport.clone(),
            commands: self.commands.clone(),
            results: self.results.clone(),
            observers: self.observers.clone(),
            flow_events: self.flow_events.clone(),
            task: self.task.clone(),
            stopping: self.stopping.clone(),
            database: self.database.clone(),
            admin: self.admin.clone(),
            pipeline: self.pipeline.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<T: Transport> std::fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("party", &self.party)
            .finish_non_exhaustive()
    }
}

fn stopped() -> NodeError {
    NodeError::Store("the node has shut down".into())
}

impl<T: Transport> Node<T> {
    /// This node's identity.
    pub fn party(&self) -> &Party {
        &self.party
    }

    /// The node's transport (its address, connection events).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Where the node's admin API listens, if it serves one.
    pub fn admin_server(&self) -> Option<AdminServer> {
        self.admin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|r| r.server)
    }

    /// Whether the node's driver has stopped (shut down, or stopped by a
    /// failed commit).
    pub(crate) fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }

    /// Every flow's committed progress changes and ends from now on (the
    /// admin API's event streams and batch result wait).
    pub(crate) fn flow_events(&self) -> broadcast::Receiver<Arc<FlowEvent>> {
        self.flow_events.subscribe()
    }

    /// Waits for `run`'s raw result (the admin API's wait).
    pub(crate) async fn wait_raw(&self, run: RunId) -> RawResult {
        wait_for_result(self.commands.clone(), run).await
    }

    /// Runs `f` on the core in the event loop (one job, between batches).
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeCore, Timestamp) -> (R, Option<Output>) + Send + 'static,
    ) -> Result<R, NodeError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |core, now| {
            let (r, out) = f(core, now);
            let _ = tx.send(r);
            out
        });
        self.commands
            .send(Command::Job(job))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Starts `flow`; it is committed to the database before this returns.
    pub async fn start_flow<F: Flow>(&self, flow: F) -> Result<FlowHandle<F>, NodeError> {
        self.start(flow, None).await
    }

    /// Starts `flow` under a client-chosen id, once: if a flow was already
    /// started with `client_id` (even before a restart), returns a handle to
    /// that one and starts nothing. Makes "start" safe to retry.
    pub async fn start_flow_with_client_id<F: Flow>(
        &self,
        client_id: &str,
        flow: F,
    ) -> Result<FlowHandle<F>, NodeError> {
        self.start(flow, Some(client_id.to_owned())).await
    }

    /// Starts many flows under client-chosen ids in ONE database commit
    /// and returns their handles in the order given. Why: each start on its
    /// own is a durable commit (two fsyncs), which caps how fast a client
    /// can hand work to the node; a batch pays for one. Each flow behaves
    /// exactly as with [`start_flow_with_client_id`](Self::start_flow_with_client_id):
    /// an id already used (before, or earlier in this list) gives a handle
    /// to that flow and starts nothing; a draining node refuses each one; a
    /// flow whose state does not serialize gets a handle reporting that
    /// error. On `Err` retrying the same call is safe: flows that were
    /// started are found again by their client ids.
    pub async fn start_flows_with_client_ids<F: Flow>(
        &self,
        flows: Vec<(String, F)>,
    ) -> Result<Vec<FlowHandle<F>>, NodeError> {
        // Prepare outside the node task (serialization is the caller's CPU).
        let prepared: Vec<(String, Result<NewFlow, FlowError>)> = flows
            .into_iter()
            .map(|(client_id, flow)| (client_id, NewFlow::new(&flow)))
            .collect();
        let runs = self
            .call(move |core, now| {
                core.registry_mut().register_flow::<F>();
                let mut slots: Vec<Option<RunId>> = vec![None; prepared.len()];
                let mut good = Vec::with_capacity(prepared.len());
                let mut good_slots = Vec::with_capacity(prepared.len());
                let mut failed = Vec::new();
                for (i, (client_id, new)) in prepared.into_iter().enumerate() {
                    match new {
                        Ok(new) => {
                            good.push((new, Some(client_id)));
                            good_slots.push(i);
                        }
                        Err(e) => failed.push((i, e)),
                    }
                }
                let mut out = Output::default();
                if !good.is_empty() {
                    match core.start_many(now, good) {
                        Ok((runs, o)) => {
                            for (i, run) in good_slots.into_iter().zip(runs) {
                                slots[i] = Some(run);
                            }
                            merge_output(&mut out, o);
                        }
                        Err(e) => return (Err(e), None),
                    }
                }
                // Rare: a state that does not serialize, recorded as failed
                // like `start_flow_with_client_id` does (its own commit).
                for (i, e) in failed {
                    match core.record_failed_start(now, F::NAME, e) {
                        Ok((run, o)) => {
                            slots[i] = Some(run);
                            merge_output(&mut out, o);
                        }
                        Err(e) => return (Err(e), Some(out)),
                    }
                }
                (
                    Ok(slots.into_iter().flatten().collect::<Vec<_>>()),
                    Some(out),
                )
            })
            .await??;
        Ok(runs.into_iter().map(|run| self.handle(run)).collect())
    }

    async fn start<F: Flow>(
        &self,
        flow: F,
        client_id: Option<String>,
    ) -> Result<FlowHandle<F>, NodeError> {
        let new = NewFlow::new(&flow);
        let run = self
            .call(move |core, now| {
                core.registry_mut().register_flow::<F>();
                let started = match new {
                    Ok(new) => core.start(now, new, client_id),
                    Err(e) => core.record_failed_start(now, F::NAME, e),
                };
                match started {
                    Ok((run, out)) => (Ok(run), Some(out)),
                    Err(e) => (Err(e), None),
                }
            })
            .await??;
        Ok(self.handle(run))
    }

    /// A handle to the flow started with `client_id`, if there is one (in
    /// flight, or finished with its result kept) — e.g. after a restart.
    pub async fn reattach<F: Flow>(
        &self,
        client_id: &str,
    ) -> Result<Option<FlowHandle<F>>, NodeError> {
        let id = client_id.to_owned();
        let run = self
            .call(move |core, _| (core.run_for_client_id(&id), None))
            .await??;
        Ok(run.map(|run| self.handle(run)))
    }

    fn handle<F>(&self, run: RunId) -> FlowHandle<F> {
        let progress = self
            .observers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(run)
            .or_default()
            .clone();
        FlowHandle::new(run, 0, progress, self.results.clone())
    }

    /// Waits for the flow to finish and returns its outcome. Can be called
    /// any number of times; the result stays on the node until
    /// [`remove_result`](Self::remove_result). The same as
    /// [`FlowHandle::result`], for a handle of this node.
    pub async fn result<F: Flow>(&self, handle: &FlowHandle<F>) -> Result<F::Output, FlowError> {
        let bytes = wait_for_result(self.commands.clone(), handle.run_id()).await?;
        decode_output::<F>(&bytes)
    }

    /// The outcome if the flow has finished, without waiting.
    pub async fn try_result<F: Flow>(
        &self,
        handle: &FlowHandle<F>,
    ) -> Result<Option<Result<F::Output, FlowError>>, NodeError> {
        let run = handle.run_id();
        let r = self.call(move |core, _| (core.result(run), None)).await??;
        Ok(r.map(|r| {
            r.and_then(|bytes| {
                rmp_serde::from_slice(&bytes).map_err(|e| {
                    FlowError::internal(format!("the result of `{}` does not decode: {e}", F::NAME))
                })
            })
        }))
    }

    /// Forgets a finished flow's result. `true` if there was one.
    pub async fn remove_result<F>(&self, handle: &FlowHandle<F>) -> Result<bool, NodeError> {
        let run = handle.run_id();
        self.call(move |core, now| (core.remove_result(now, run), None))
            .await?
    }

    /// Starts (`true`) or stops draining: a draining node takes no new
    /// flows and no new sessions from peers, and finishes the ones in
    /// flight. When none remain it logs "node drained".
    pub async fn set_draining(&self, draining: bool) -> Result<(), NodeError> {
        self.call(move |core, _| {
            core.set_draining(draining);
            info!(
                draining,
                "draining {}",
                if draining { "started" } else { "stopped" }
            );
            ((), None)
        })
        .await
    }

    /// Flows with a checkpoint on this node (running, waiting, or in the
    /// hospital). Zero while draining means it is safe to stop the node.
    pub async fn flows_in_flight(&self) -> Result<u64, NodeError> {
        self.call(|core, _| (core.flows_in_flight(), None)).await?
    }

    /// Drains the node: stops taking new work and waits until no flow is in
    /// flight. A flow stuck in the hospital keeps this waiting; see
    /// [`hospital`](Self::hospital).
    pub async fn drain(&self) -> Result<(), NodeError> {
        self.set_draining(true).await?;
        loop {
            if self.flows_in_flight().await? == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Durable write transactions (group commits) since the node started:
    /// with the commit pipeline, one holds every batch queued while the
    /// previous one was written. Commits, not messages, are what a node's
    /// disk pays for, so "commits per round trip" is the figure to watch
    /// when tuning throughput (the `tcp_ping` benchmark prints it).
    pub async fn commits(&self) -> Result<u64, NodeError> {
        // (A command: the node first makes every queued batch durable.)
        let batches = self.call(|core, _| (core.commits(), None)).await?;
        Ok(self.transactions_for(batches))
    }

    /// The write transactions made so far, given the `batches` the core
    /// committed (each its own transaction without a pipeline). Exact on
    /// the driver, when no batch is queued.
    pub(super) fn transactions_for(&self, batches: u64) -> u64 {
        match &self.pipeline {
            Some(counters) => counters.transactions.load(Ordering::Relaxed),
            None => batches,
        }
    }

    /// The node's metrics registry: what the admin API's `/metrics`
    /// serves, for a program that exports them itself
    /// ([`NodeMetrics::render`](admin::NodeMetrics::render) gives the
    /// Prometheus text). A node records into it whether or not it serves
    /// an admin API.
    pub fn metrics(&self) -> &admin::NodeMetrics {
        &self.metrics
    }

    /// Flows kept for an operator after failing repeatedly.
    pub async fn hospital(&self) -> Result<Vec<crate::node::HospitalEntry>, NodeError> {
        self.call(|core, _| (core.hospital(), None)).await?
    }

    /// The checkpoint dump (see [`OperatorView::dump`]) as pretty JSON: per
    /// suspended flow its name, state, what it waits on and for how long,
    /// its sessions, progress and hospital record. It reads every
    /// checkpoint on a blocking thread while the node keeps running, so it
    /// is not one snapshot: a flow that steps meanwhile shows the state it
    /// had when the scan reached it.
    pub async fn dump_json(&self) -> Result<String, NodeError> {
        self.operator_scan(|view, now| view.dump_json(now)).await
    }

    /// Writes [`dump_json`](Self::dump_json) to a new file beside the
    /// database, `<database>.dump-<unix ms>.json`, and returns its path
    /// (what SIGUSR2 makes [`run_until_signal`](Self::run_until_signal) do).
    /// The file appears complete or not at all: it is written under a
    /// temporary name and renamed.
    pub async fn write_dump(&self) -> Result<PathBuf, NodeError> {
        let database = self.database.clone();
        self.operator_scan(move |view, now| {
            let json = view.dump_json(now)?;
            let mut name = database.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".dump-{}.json", now.0));
            let path = database.with_file_name(name);
            let partial = path.with_extension("json.partial");
            std::fs::write(&partial, json)
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(|e| {
                    NodeError::Store(format!("cannot write the dump to {}: {e}", path.display()))
                })?;
            Ok(path)
        })
        .await
    }

    /// Scans the checkpoints now and logs a warning for every flow waiting
    /// longer than `limit` (as the periodic check does with
    /// [`NodeConfig::long_wait_warning`](crate::NodeConfig::long_wait_warning)); returns their run ids.
    pub async fn long_waiting_flows(&self, limit: Duration) -> Result<Vec<RunId>, NodeError> {
        self.operator_scan(move |view, now| view.warn_long_waits(now, limit))
            .await
    }

    /// Runs `scan` on an [`OperatorView`] of the node, on a blocking thread.
    pub(crate) async fn operator_scan<R: Send + 'static>(
        &self,
        scan: impl FnOnce(&OperatorView, Timestamp) -> Result<R, NodeError> + Send + 'static,
    ) -> Result<R, NodeError> {
        let view = self.call(|core, _| (core.operator_view(), None)).await?;
        let view = view.stopping_on(self.stopping.clone());
        let stopping = self.stopping.clone();
        let result = tokio::task::spawn_blocking(in_current_dispatch(move || scan(&view, now())))
            .await
            .map_err(|e| NodeError::Store(format!("the operator scan failed: {e}")))?;
        if stopping.load(Ordering::Relaxed) {
            return Err(stopped()); // it may have stopped reading early
        }
        result
    }

    /// Ends a flow by operator decision (its counterparties are told).
    pub async fn kill_flow(&self, run: RunId) -> Result<(), NodeError> {
        self.call(move |core, now| match core.kill(now, run) {
            Ok(out) => (Ok(()), Some(out)),
            Err(e) => (Err(e), None),
        })
        .await?
    }

    /// Retries a hospitalised flow from its last checkpoint.
    pub async fn retry_flow(&self, run: RunId) -> Result<(), NodeError> {
        self.call(move |core, now| match core.retry(now, run) {
            Ok(out) => (Ok(()), Some(out)),
            Err(e) => (Err(e), None),
        })
        .await?
    }

    /// Stops the node cleanly: the driver finishes its current batch, the
    /// database is closed, the transport's connections are closed. Flows in
    /// flight resume from their checkpoints at the next start.
    pub async fn shutdown(&self) -> Result<(), RunnerError> {
        let _ = self.commands.send(Command::Shutdown).await;
        let outcome = match self.task.lock().await.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(RunnerError::Stopped(e)),
                Err(e) => Err(RunnerError::Stopped(format!(
                    "the node driver panicked: {e}"
                ))),
            },
            None => Ok(()),
        };
        let admin = self
            .admin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(admin) = admin {
            let _ = admin.stop.send(true);
            // Requests still running end quickly once the event loop is gone.
            let abort = admin.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), admin.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.transport.shutdown().await;
        info!(node = %self.party, "node stopped");
        outcome
    }

    /// Runs until SIGINT or SIGTERM, then shuts down cleanly. SIGUSR1
    /// starts draining (the node logs "node drained" once no flow is in
    /// flight; stop it then); SIGHUP stops draining (an operator who
    /// drained, then decided not to stop the node, needs no code for it).
    /// SIGUSR2 writes a checkpoint dump beside the database
    /// ([`write_dump`](Self::write_dump)) and logs its path.
    pub async fn run_until_signal(&self) -> Result<(), RunnerError> {
        let signal = super::shutdown_signal();
        tokio::pin!(signal);
        #[cfg(unix)]
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(RunnerError::Signals)?;
        #[cfg(unix)]
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
                .map_err(RunnerError::Signals)?;
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(RunnerError::Signals)?;
        #[cfg(unix)]
        info!(
            "signals: SIGUSR1 starts draining, SIGHUP stops it, SIGUSR2 writes a checkpoint dump, SIGINT or SIGTERM stops the node"
        );
        loop {
            #[cfg(unix)]
            let undrain_requested = hup.recv();
            #[cfg(not(unix))]
            let undrain_requested = std::future::pending::<Option<()>>();
            #[cfg(unix)]
            let drain_requested = usr1.recv();
            #[cfg(not(unix))]
            let drain_requested = std::future::pending::<Option<()>>();
            #[cfg(unix)]
            let dump_requested = usr2.recv();
            #[cfg(not(unix))]
            let dump_requested = std::future::pending::<Option<()>>();
            tokio::select! {
                received = &mut signal => {
                    let name = received.map_err(RunnerError::Signals)?;
                    info!(signal = name, "shutting down");
                    return self.shutdown().await;
                }
                _ = drain_requested => {
                    if let Err(e) = self.set_draining(true).await {
                        warn!(error = %e, "cannot start draining");
                    }
                }
                _ = undrain_requested => {
                    if let Err(e) = self.set_draining(false).await {
                        warn!(error = %e, "cannot stop draining");
                    }
                }
                _ = dump_requested => {
                    // A dump of many flows takes seconds: not in this loop,
                    // which must stay ready for SIGTERM.
                    let node = self.clone();
                    tokio::spawn(async move {
                        match node.write_dump().await {
                            Ok(path) => info!(path = %path.display(), "wrote the checkpoint dump"),
                            Err(e) => warn!(error = %e, "cannot write the checkpoint dump"),
                        }
                    });
                }
                _ = self.finished() => {
                    return self.shutdown().await;
                }
            }
        }
    }

    /// Completes if the driver stops on its own (a fatal error).
    async fn finished(&self) {
        loop {
            if self.commands.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Appends `more` to `out`, for a job that runs several node operations and
/// must hand all their frames, results and progress to the runner.
fn merge_output(out: &mut Output, more: Output) {
    out.frames.extend(more.frames);
    out.finished.extend(more.finished);
    out.progress.extend(more.progress);
}
