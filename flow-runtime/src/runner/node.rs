//! [`Node`]: a durable node on tokio, talking to its peers over a
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
//! * redelivery: at every `redelivery_interval` tick, the outbox messages
//!   that have been unacknowledged for at least one whole interval are sent
//!   again — and again at every tick until their ack is committed. A
//!   message sent moments before a tick (its ack most likely in flight) is
//!   left alone until the next one, so a node with thousands of messages in
//!   flight does not re-send them all every tick (see
//!   [`RedeliverySchedule`]: it remembers, in memory and per outbox key,
//!   the tick a message was last sent at; acknowledged ones are forgotten at
//!   the next tick). The first tick, at start-up, re-sends the whole outbox
//!   (it may hold messages from before a restart), and when a connection
//!   to a peer is (re-)established all that peer's unacknowledged messages
//!   are sent at once. That is what makes delivery survive dropped frames,
//!   dropped connections and restarts of either side.
//!
//! * the long-wait check: every `long_wait_check_interval` (default 5 min)
//!   a scan of the checkpoints logs a warning for each flow waiting longer
//!   than `NodeConfig::long_wait_warning`. The scan reads the store on a
//!   blocking thread through an [`OperatorView`], so a node with a million
//!   suspended flows keeps committing steps during its seconds-long scan;
//!   the operator's [`Node::dump_json`] runs the same way.
//!
//! Commits block for an fsync, so on a multi-threaded runtime they run
//! inside `block_in_place`, letting the transport's tasks run meanwhile.
//! Frames a commit releases are queued on the transport without waiting:
//! if a peer's queue is full, the frame stays in the durable outbox and the
//! next redelivery sends it. The driver never waits on a slow peer.

use super::config::LoadedConfig;
use super::redelivery::RedeliverySchedule;
use crate::handle::{RawResult, RawResultFuture, ResultSource, decode_output};
use crate::node::{NodeError, OperatorView, OsIds, Output, UnackedFrame};
use crate::progress::ProgressStream;
use crate::registry::{NewFlow, Registry, ResponderFn};
use crate::services::Services;
use crate::store::{RedbOptions, RedbStore, Store};
use crate::tcp::{SigningKey, TcpConfig, TcpTransport, TransportError};
use crate::transport::{Incoming, SendError, Transport, TransportEvent};
use crate::protocol::WireMessage;
use crate::{
    Flow, FlowError, FlowHandle, NodeConfig, NodeCore, Party, PublicKey, RunId, Timestamp,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// The most frames delivered in one group commit. Bounds the latency one
/// batch adds to every flow in it.
pub const MAX_FRAMES_PER_BATCH: usize = 1024;

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The database could not be opened.
    #[error("cannot open the node database {path}: {message}")]
    Database {
        /// The file.
        path: String,
        /// The store's error.
        message: String,
    },
    /// The node core could not be opened on the database.
    #[error("cannot open the node: {0}")]
    Node(NodeError),
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Installing the signal handlers failed.
    #[error("cannot install the SIGINT/SIGTERM handlers: {0}")]
    Signals(std::io::Error),
    /// The driver stopped on a fatal error (already logged).
    #[error("the node stopped: {0}")]
    Stopped(String),
}

type Installer = Arc<dyn Fn(&mut Services) + Send + Sync>;

/// Everything a node is built from: identity, transport, database, flows.
///
/// The transport is a type parameter so that [`Node::transport`] gives the
/// concrete transport back (its address, its events); it defaults to TCP,
/// so `NodeBuilder` and `Node` without parameters are the TCP node.
///
/// Compiled, not run: it needs a config file, keys and running peers
/// (`docs/operations.md`).
///
/// ```no_run
/// use flow_runtime::runner::{Config, NodeBuilder};
/// use flow_runtime::testing::ping_pong::{ping, pong};
/// use std::path::Path;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let loaded = Config::read(Path::new("alice.toml"))?.load()?;
/// let mut builder = NodeBuilder::from_config(loaded);
/// builder.flow::<ping::Flow>();
/// builder.responder::<ping::Flow>(|session| pong(session));
/// let node = builder.start().await?;
/// node.run_until_signal().await?;
/// # Ok(())
/// # }
/// ```
pub struct NodeBuilder<T: Transport = TcpTransport> {
    party: Party,
    database: PathBuf,
    redelivery: Duration,
    long_wait_check: Duration,
    defer_acks: bool,
    node_config: NodeConfig,
    store_options: RedbOptions,
    registry: Registry,
    installers: Vec<Installer>,
    connect: Box<dyn Connect<T>>,
}

impl<T: Transport> std::fmt::Debug for NodeBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("name", &self.party.name())
            .field("transport", &self.connect.describe())
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// A transport starting up.
type Connecting<T> = Pin<Box<dyn Future<Output = Result<(T, Incoming), TransportError>> + Send>>;

/// How a builder gets its transport when the node starts: TCP binds its
/// listener then (so a builder can be configured before any socket is
/// opened), other transports are handed over ready-made.
trait Connect<T>: Send {
    /// For `Debug` and log lines.
    fn describe(&self) -> String;
    /// Starts the transport.
    fn connect(self: Box<Self>) -> Connecting<T>;
    /// The TCP settings, if this is a TCP transport still to be started.
    fn tcp(&mut self) -> Option<&mut TcpSetup> {
        None
    }
}

/// The TCP transport's settings until the node starts.
struct TcpSetup {
    identity: SigningKey,
    listen: String,
    map: crate::tcp::NetworkMap,
    config: TcpConfig,
    listener: Option<std::net::TcpListener>,
}

impl Connect<TcpTransport> for TcpSetup {
    fn describe(&self) -> String {
        format!("tcp://{}", self.listen)
    }

    fn connect(self: Box<Self>) -> Connecting<TcpTransport> {
        let TcpSetup {
            identity,
            listen,
            map,
            config,
            listener,
        } = *self;
        Box::pin(async move {
            match listener {
                None => TcpTransport::bind(identity, &listen, map, config).await,
                Some(listener) => {
                    let listener = listener
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(listener))
                        .map_err(|source| TransportError::Bind {
                            address: listen.clone(),
                            source,
                        })?;
                    TcpTransport::from_listener(identity, listener, map, config)
                }
            }
        })
    }

    fn tcp(&mut self) -> Option<&mut TcpSetup> {
        Some(self)
    }
}

/// A transport the caller already started.
struct Ready<T> {
    transport: T,
    incoming: Incoming,
}

impl<T: Transport> Connect<T> for Ready<T> {
    fn describe(&self) -> String {
        self.transport.endpoint()
    }

    fn connect(self: Box<Self>) -> Connecting<T> {
        let Ready {
            transport,
            incoming,
        } = *self;
        Box::pin(std::future::ready(Ok((transport, incoming))))
    }
}

impl NodeBuilder<TcpTransport> {
    /// A builder from a loaded configuration file.
    pub fn from_config(loaded: LoadedConfig) -> Self {
        let LoadedConfig {
            config,
            identity,
            map,
        } = loaded;
        let mut builder = Self::new(identity, &config.listen, config.database, map);
        builder.tcp_config(config.transport.tcp_config());
        builder.redelivery = config.node.redelivery_interval();
        builder.long_wait_check = config.node.long_wait_check_interval();
        builder.node_config = config.node.node_config();
        builder.store_options = config.store.redb_options();
        builder
    }

    /// A builder from its parts, for programs that do not use a config
    /// file (tests, benchmarks, embedding). The node's name is the one the
    /// map gives `identity` (checked at start).
    pub fn new(
        identity: SigningKey,
        listen: &str,
        database: impl Into<PathBuf>,
        map: crate::tcp::NetworkMap,
    ) -> Self {
        let key = PublicKey(identity.verifying_key().to_bytes());
        let name = map
            .by_key(&key)
            .map_or_else(String::new, |e| e.name.clone());
        let setup = TcpSetup {
            identity,
            listen: listen.to_owned(),
            map,
            config: TcpConfig::default(),
            listener: None,
        };
        Self::with_connect(Party::new(name, key), database.into(), Box::new(setup))
    }

    /// Listens on an already bound socket instead of binding the configured
    /// address (tests bind port 0 to learn their addresses first). Ignored,
    /// with a warning, on a builder given a running transport
    /// ([`with_transport`](NodeBuilder::with_transport)).
    pub fn listener(&mut self, listener: std::net::TcpListener) -> &mut Self {
        match self.connect.tcp() {
            Some(tcp) => tcp.listener = Some(listener),
            None => {
                warn!("NodeBuilder::listener ignored: the builder was given a running transport")
            }
        }
        self
    }

    /// Replaces the transport tuning from the config file. Ignored, with a
    /// warning, on a builder given a running transport.
    pub fn tcp_config(&mut self, config: TcpConfig) -> &mut Self {
        match self.connect.tcp() {
            Some(tcp) => tcp.config = config,
            None => {
                warn!("NodeBuilder::tcp_config ignored: the builder was given a running transport")
            }
        }
        self
    }
}

impl<T: Transport> NodeBuilder<T> {
    /// A builder for a node that talks over `transport`, which the caller
    /// has already started (`incoming` is its queue of received frames),
    /// e.g. `MemoryNetwork::join`. `party` is the node's identity; the
    /// transport must deliver frames for `party.key()` to `incoming`.
    pub fn with_transport(
        party: Party,
        database: impl Into<PathBuf>,
        transport: T,
        incoming: Incoming,
    ) -> Self {
        let ready = Ready {
            transport,
            incoming,
        };
        Self::with_connect(party, database.into(), Box::new(ready))
    }

    fn with_connect(party: Party, database: PathBuf, connect: Box<dyn Connect<T>>) -> Self {
        NodeBuilder {
            party,
            database,
            redelivery: Duration::from_secs(1),
            long_wait_check: DEFAULT_LONG_WAIT_CHECK,
            defer_acks: true,
            node_config: NodeConfig::default(),
            store_options: RedbOptions::default(),
            registry: Registry::new(),
            installers: Vec::new(),
            connect,
        }
    }

    /// How often the node looks for unacknowledged messages to send again
    /// (default 1 s). At each such tick it re-sends those unacknowledged
    /// for at least one whole interval, so a message waits between one and
    /// two intervals for its next send; at start-up it re-sends all of them,
    /// and on a peer's reconnect all of that peer's at once. Shorter means
    /// faster recovery from a lost frame, longer means fewer duplicates
    /// when the peer is merely slow to acknowledge.
    pub fn redelivery_interval(&mut self, every: Duration) -> &mut Self {
        self.redelivery = every;
        self
    }

    /// How often the node scans its checkpoints and logs a warning for every
    /// flow waiting longer than [`NodeConfig::long_wait_warning`] (default
    /// every 5 minutes; `Duration::ZERO` turns the check off). The scan
    /// reads every checkpoint (about a second per million suspended flows)
    /// on a blocking thread, not in the driver, and a tick that finds the
    /// previous scan still running skips.
    pub fn long_wait_check_interval(&mut self, every: Duration) -> &mut Self {
        self.long_wait_check = every;
        self
    }

    /// Whether a batch of received frames that are all acks waits to be
    /// committed with the next batch that does real work (default `true`).
    ///
    /// Why: an ack only deletes the acknowledged message from the sender's
    /// durable outbox. Committing that alone costs a full commit (one or two
    /// fsyncs) for nothing the flows are waiting on; in a ping between two
    /// nodes it is a second commit per round trip on the side whose acks
    /// arrive apart from the data. Deferring is safe: if the node crashes
    /// before the acks are committed, it redelivers those messages and the
    /// peer, which already processed them, drops the duplicates and acks
    /// again. Deferred acks are committed at the latest at the next
    /// redelivery tick (before the outbox is read), when the driver stops,
    /// or when [`MAX_FRAMES_PER_BATCH`] of them have accumulated. Turn it
    /// off only to measure what it saves.
    pub fn defer_ack_commits(&mut self, defer: bool) -> &mut Self {
        self.defer_acks = defer;
        self
    }

    /// Makes flow type `F` known, so its checkpoints can be resumed after a
    /// restart. Every flow the node starts must be registered (flows started
    /// with [`Node::start_flow`] are registered for the current run, but a
    /// restarted node only knows what the builder registered).
    pub fn flow<F: Flow>(&mut self) -> &mut Self {
        self.registry.register_flow::<F>();
        self
    }

    /// Answers sessions opened by flow `I` with the flow `responder` builds:
    /// `builder.responder::<ping::Flow>(|session| pong(session))`. The
    /// responder's own type is registered too.
    pub fn responder<I: Flow>(&mut self, responder: impl ResponderFn) -> &mut Self {
        self.registry.register_responder::<I, _>(responder);
        self
    }

    /// Runs `install` on the node's services at start (e.g. a vault).
    pub fn services(
        &mut self,
        install: impl Fn(&mut Services) + Send + Sync + 'static,
    ) -> &mut Self {
        self.installers.push(Arc::new(install));
        self
    }

    /// Replaces the node core's tuning (retries, batch sizes).
    pub fn node_config(&mut self, config: NodeConfig) -> &mut Self {
        self.node_config = config;
        self
    }

    /// Replaces the database options (e.g. `quick_repair`).
    pub fn store_options(&mut self, options: RedbOptions) -> &mut Self {
        self.store_options = options;
        self
    }

    /// Opens the database, starts the transport and the driver. Flows that
    /// were in flight when the node last stopped continue from their
    /// checkpoints; unacknowledged messages are sent again.
    pub async fn start(self) -> Result<Node<T>, RunnerError> {
        let path = self.database.display().to_string();
        let store = RedbStore::open(&self.database, self.store_options).map_err(|e| {
            RunnerError::Database {
                path: path.clone(),
                message: e.0,
            }
        })?;
        let store: Arc<dyn Store> = Arc::new(store);
        let party = self.party;
        let long_wait_limit = self.node_config.long_wait_warning;
        let mut core = NodeCore::open(
            party.clone(),
            store,
            self.registry,
            Box::new(OsIds),
            Box::new(OsIds),
            self.node_config,
            now(),
        )
        .map_err(RunnerError::Node)?;
        for install in &self.installers {
            install(core.services());
        }
        let (transport, incoming) = self.connect.connect().await?;
        let transport = Arc::new(transport);
        let in_flight = core.flows_in_flight().unwrap_or(0);
        info!(node = %party, endpoint = %transport.endpoint(), database = %path, flows_in_flight = in_flight,
            "node started");

        let (commands, command_rx) = mpsc::channel(256);
        let observers: Observers = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            core: Box::new(core),
            transport: transport.clone(),
            incoming,
            events: transport.link_events(),
            events_open: true,
            commands: command_rx,
            observers: observers.clone(),
            waiters: HashMap::new(),
            loopback: VecDeque::new(),
            redelivery: self.redelivery,
            schedule: RedeliverySchedule::new(),
            losses: HashMap::new(),
            defer_acks: self.defer_acks,
            pending_acks: Vec::new(),
            drained_reported: false,
            long_waits: LongWaitCheck {
                every: self.long_wait_check,
                limit: long_wait_limit,
                scan: None,
            },
            stopping: stopping.clone(),
            multi_thread: tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread,
        };
        let results: Arc<dyn ResultSource> = Arc::new(NodeResults {
            commands: commands.downgrade(),
        });
        let task = tokio::spawn(driver.run());
        Ok(Node {
            party,
            transport,
            commands,
            results,
            observers,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
            stopping,
            database: self.database,
        })
    }
}

type Observers = Arc<Mutex<HashMap<RunId, ProgressStream>>>;
/// The driver task, taken by the first `shutdown`.
type DriverTask = Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), String>>>>>;
type Job = Box<dyn FnOnce(&mut NodeCore, Timestamp) -> Option<Output> + Send>;

enum Command {
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

/// How a [`FlowHandle`] of a tokio node waits for its result: through the
/// node's command queue, held weakly so that a handle does not keep a node
/// alive (a handle outliving its node reports that the node shut down).
struct NodeResults {
    commands: mpsc::WeakSender<Command>,
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
    party: Party,
    transport: Arc<T>,
    commands: mpsc::Sender<Command>,
    results: Arc<dyn ResultSource>,
    observers: Observers,
    task: DriverTask,
    /// Set when the driver stops: operator scans still reading end early.
    stopping: Arc<AtomicBool>,
    /// The database file; dumps are written beside it.
    database: PathBuf,
}

impl<T: Transport> Clone for Node<T> {
    fn clone(&self) -> Self {
        Node {
            party: self.party.clone(),
            transport: self.transport.clone(),
            commands: self.commands.clone(),
            results: self.results.clone(),
            observers: self.observers.clone(),
            task: self.task.clone(),
            stopping: self.stopping.clone(),
            database: self.database.clone(),
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

    async fn call<R: Send + 'static>(
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

    /// Group commits (database write transactions) since the node
    /// started. Commits, not messages, are what a node's disk pays for, so
    /// "commits per round trip" is the figure to watch when tuning
    /// throughput (the `tcp_ping` benchmark prints it).
    pub async fn commits(&self) -> Result<u64, NodeError> {
        self.call(|core, _| (core.commits(), None)).await
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
    /// [`NodeConfig::long_wait_warning`]); returns their run ids.
    pub async fn long_waiting_flows(&self, limit: Duration) -> Result<Vec<RunId>, NodeError> {
        self.operator_scan(move |view, now| view.warn_long_waits(now, limit))
            .await
    }

    /// Runs `scan` on an [`OperatorView`] of the node, on a blocking thread.
    async fn operator_scan<R: Send + 'static>(
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
        self.transport.shutdown().await;
        info!(node = %self.party, "node stopped");
        outcome
    }

    /// Runs until SIGINT or SIGTERM, then shuts down cleanly. SIGUSR1
    /// starts draining (the node logs "node drained" once no flow is in
    /// flight; stop it then). SIGUSR2 writes a checkpoint dump beside the
    /// database ([`write_dump`](Self::write_dump)) and logs its path.
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
        loop {
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

/// Milliseconds since the Unix epoch, the node's clock.
fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

struct Driver<T> {
    core: Box<NodeCore>,
    transport: Arc<T>,
    incoming: Incoming,
    events: broadcast::Receiver<TransportEvent>,
    /// `false` once `events` is closed.
    events_open: bool,
    commands: mpsc::Receiver<Command>,
    observers: Observers,
    waiters: HashMap<RunId, Vec<oneshot::Sender<RawResult>>>,
    /// Frames the node addressed to itself (a flow talking to its own
    /// node), delivered in the next batch.
    loopback: VecDeque<(PublicKey, Vec<u8>)>,
    redelivery: Duration,
    /// Which unacknowledged messages are overdue at a redelivery tick.
    schedule: RedeliverySchedule,
    /// Per peer, what its next `Connected` must re-send (see [`LinkLosses`]).
    losses: HashMap<PublicKey, LinkLosses>,
    /// See [`NodeBuilder::defer_ack_commits`].
    defer_acks: bool,
    /// Received acks not yet committed (only deletions from the outbox).
    pending_acks: Vec<(PublicKey, Vec<u8>)>,
    drained_reported: bool,
    long_waits: LongWaitCheck,
    /// Set when the driver stops; shared with the `Node` handles.
    stopping: Arc<AtomicBool>,
    multi_thread: bool,
}

/// What a peer's link may have lost since its last `Connected`: what a
/// reconnection must re-send at once.
///
/// Why not everything unacknowledged: a transport keeps the frames it
/// accepted queued until they are written to a link (TCP queues them while
/// it connects). Only frames that a link which then went down may have
/// carried, and frames the transport refused, can be missing at the peer.
/// Re-sending every unacknowledged message on every `Connected` sent each
/// frame queued before a node's first connection twice: about 1,000
/// duplicate frames per node at the start of the 1,000-trade demo.
#[derive(Debug, Default)]
struct LinkLosses {
    /// A frame for the peer was refused (queue full, unreachable): re-send
    /// all its unacknowledged messages.
    refused: bool,
    /// Outbox keys of the peer's messages unacknowledged when its link went
    /// down: the old link may have carried them.
    in_flight_at_disconnect: HashSet<Vec<u8>>,
}

/// The long-wait check's default interval.
const DEFAULT_LONG_WAIT_CHECK: Duration = Duration::from_secs(300);

/// The driver's periodic long-wait check.
struct LongWaitCheck {
    /// Between scans; zero: never.
    every: Duration,
    /// A flow waiting longer than this is logged.
    limit: Duration,
    /// The scan in progress or last finished.
    scan: Option<tokio::task::JoinHandle<()>>,
}

/// `f`, made to log to the subscriber that is current here, wherever it
/// runs (a blocking thread has no subscriber of its own).
fn in_current_dispatch<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    move || tracing::dispatcher::with_default(&dispatch, f)
}

impl<T: Transport> Driver<T> {
    async fn run(mut self) -> Result<(), String> {
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
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    None | Some(Command::Shutdown) => {
                        self.flush_acks()?;
                        break;
                    }
                    Some(Command::Job(job)) => {
                        let out = self.blocking(|core| job(core, now()));
                        if let Some(out) = out {
                            self.release(out);
                        }
                    }
                    Some(Command::Wait { run, reply }) => self.wait(run, reply),
                },
                frame = self.incoming.recv() => match frame {
                    Some(first) => self.deliver(Some(first))?,
                    None => {
                        info!("the transport stopped; stopping the node driver");
                        self.flush_acks()?;
                        break;
                    }
                },
                _ = std::future::ready(()), if !self.loopback.is_empty() => self.deliver(None)?,
                event = self.events.recv(), if self.events_open => self.on_link_event(event)?,
                _ = redeliver.tick() => self.redeliver_overdue()?,
                _ = long_waits.tick(), if check_long_waits => self.start_long_wait_scan(),
                _ = tokio::time::sleep(timer.unwrap_or(Duration::ZERO)), if timer.is_some() => {
                    self.operate(|core| core.tick(now()))?;
                }
                _ = std::future::ready(()), if ready => self.operate(|core| core.tick(now()))?,
            }
            ready = self.core.has_ready();
            self.report_drained();
        }
        Ok(())
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
        if self.multi_thread {
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
                self.release(out);
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "the node cannot commit; stopping (restart it once the database is writable again)");
                Err(e.to_string())
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
        // A frame that decrypted (so it really comes from `peer`) but is not
        // a session message means a broken or hostile peer: drop the frame
        // and close the peer's connection.
        let me = *self.core.identity().key();
        let mut only_acks = true;
        frames.retain(|(peer, frame)| match WireMessage::decode(frame) {
            Ok(message) => {
                only_acks &= matches!(message, WireMessage::Ack { .. });
                true
            }
            Err(e) => {
                let name = self.transport.peer_name(peer);
                warn!(peer = %name, error = %e, "dropped a frame that does not decode as a session message");
                if *peer != me {
                    self.transport.disconnect(peer, &e);
                }
                false
            }
        });
        if frames.is_empty() {
            return Ok(());
        }
        if self.defer_acks
            && only_acks
            && self.pending_acks.len() + frames.len() < MAX_FRAMES_PER_BATCH
        {
            self.pending_acks.append(&mut frames);
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.pending_acks);
        batch.append(&mut frames);
        debug!(frames = batch.len(), "delivering a batch");
        self.operate(|core| core.deliver(now(), batch))
    }

    /// Commits the acks held back by [`deliver`](Self::deliver).
    fn flush_acks(&mut self) -> Result<(), String> {
        if self.pending_acks.is_empty() {
            return Ok(());
        }
        let acks = std::mem::take(&mut self.pending_acks);
        debug!(acks = acks.len(), "committing deferred acks");
        self.operate(|core| core.deliver(now(), acks))
    }

    fn wait(&mut self, run: RunId, reply: oneshot::Sender<RawResult>) {
        match self.core.result(run) {
            Ok(Some(result)) => {
                let _ = reply.send(result);
            }
            Ok(None) => self.waiters.entry(run).or_default().push(reply),
            Err(e) => {
                let _ = reply.send(Err(FlowError::internal(e.to_string())));
            }
        }
    }

    /// Hands a committed batch's effects to the world: frames to the
    /// transport, results to waiters, progress to observers.
    fn release(&mut self, out: Output) {
        let me = *self.core.identity().key();
        for (to, frame) in out.frames {
            if to == me {
                self.loopback.push_back((me, frame));
                continue;
            }
            self.send(&to, frame);
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

    /// Queues `frame` for `to` on the transport. `false` when the peer
    /// takes nothing more right now (its queue is full or it is
    /// unreachable), so a redelivery stops trying it until later; the
    /// message stays in the outbox either way.
    fn send(&mut self, to: &PublicKey, frame: Vec<u8>) -> bool {
        match self.transport.try_send(to, frame) {
            Ok(()) => true,
            Err(SendError::QueueFull(peer)) => {
                debug!(%peer, "peer queue full; the message stays in the outbox for redelivery");
                self.losses.entry(*to).or_default().refused = true;
                false
            }
            Err(SendError::Unreachable(peer)) => {
                debug!(%peer, "peer unreachable; the message stays in the outbox for redelivery");
                self.losses.entry(*to).or_default().refused = true;
                false
            }
            Err(e) => {
                warn!(error = %e, "cannot send a message; it stays in the outbox");
                true
            }
        }
    }

    /// A redelivery tick: re-sends the messages unacknowledged for at least
    /// one full interval — every one at the first tick (start-up), see
    /// [`RedeliverySchedule`]. Deferred acks are committed first, so that
    /// what they acknowledge is not sent again. Once a peer refuses a frame
    /// (full queue, unreachable) the rest of its messages wait for the next
    /// tick (or its reconnect) instead of being refused one by one.
    fn redeliver_overdue(&mut self) -> Result<(), String> {
        self.flush_acks()?;
        let Some(outbox) = self.read_outbox() else {
            return Ok(());
        };
        let unacknowledged = outbox.len();
        let due = self.schedule.tick(outbox);
        let overdue = due.len();
        let mut refusing = HashSet::new();
        let mut deferred = 0usize;
        for message in due {
            if refusing.contains(&message.to) {
                deferred += 1;
            } else if !self.resend(message.to, message.frame) {
                refusing.insert(message.to);
            }
        }
        if overdue > 0 {
            debug!(
                overdue,
                unacknowledged,
                deferred,
                "redelivered messages unacknowledged for a whole interval"
            );
        }
        Ok(())
    }

    /// The link to `peer` came (back) up: sends it again at once, whenever
    /// they were last sent, the unacknowledged messages the previous link
    /// may have lost (see [`LinkLosses`]).
    fn on_connected(&mut self, peer: PublicKey) -> Result<(), String> {
        match self.losses.remove(&peer) {
            Some(lost) if lost.refused => self.redeliver_to(Some(peer), None),
            Some(lost) if !lost.in_flight_at_disconnect.is_empty() => {
                self.redeliver_to(Some(peer), Some(&lost.in_flight_at_disconnect))
            }
            // Everything sent since the last connection is queued for
            // this link.
            _ => Ok(()),
        }
    }

    /// The link to `peer` went down: notes which of its messages the link
    /// may have been carrying, for [`on_connected`](Self::on_connected).
    fn on_disconnected(&mut self, peer: PublicKey) {
        let Some(outbox) = self.read_outbox() else {
            // Cannot tell which: re-send everything on reconnect.
            self.losses.entry(peer).or_default().refused = true;
            return;
        };
        let lost = self.losses.entry(peer).or_default();
        lost.in_flight_at_disconnect
            .extend(outbox.into_iter().filter(|m| m.to == peer).map(|m| m.key));
    }

    /// Sends unacknowledged messages to `peer` (to every peer if `None`)
    /// again at once, whenever they were last sent: all of them, or only
    /// those with keys in `only`. Deferred acks are committed first.
    fn redeliver_to(
        &mut self,
        peer: Option<PublicKey>,
        only: Option<&HashSet<Vec<u8>>>,
    ) -> Result<(), String> {
        self.flush_acks()?;
        let Some(outbox) = self.read_outbox() else {
            return Ok(());
        };
        let mut count = 0usize;
        let mut refusing = HashSet::new();
        for message in outbox {
            if peer.is_some_and(|p| p != message.to)
                || refusing.contains(&message.to)
                || only.is_some_and(|keys| !keys.contains(&message.key))
            {
                continue;
            }
            count += 1;
            // A message the peer refused keeps its place in the schedule:
            // due at the next tick if it was already overdue.
            if self.resend(message.to, message.frame) {
                self.schedule.sent_between_ticks(message.key);
            } else {
                refusing.insert(message.to);
            }
        }
        if count > 0 {
            debug!(
                messages = count,
                "redelivered unacknowledged messages over a new link"
            );
        }
        Ok(())
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

    /// Sends an outbox message again (to this node's own loopback queue if
    /// it is addressed to itself). `false` as [`send`](Self::send).
    fn resend(&mut self, to: PublicKey, frame: Vec<u8>) -> bool {
        let me = *self.core.identity().key();
        if to == me {
            self.loopback.push_back((me, frame));
            true
        } else {
            self.send(&to, frame)
        }
    }

    fn on_link_event(
        &mut self,
        event: Result<TransportEvent, broadcast::error::RecvError>,
    ) -> Result<(), String> {
        match event {
            Ok(TransportEvent::Connected { peer }) => self.on_connected(peer),
            Ok(TransportEvent::Disconnected { peer, .. }) => {
                self.on_disconnected(peer);
                Ok(())
            }
            // Missed events: resend everything rather than guess.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.losses.clear();
                self.redeliver_to(None, None)
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

/// Appends `more` to `out`, for a job that runs several node operations and
/// must hand all their frames, results and progress to the runner.
fn merge_output(out: &mut Output, more: Output) {
    out.frames.extend(more.frames);
    out.finished.extend(more.finished);
    out.progress.extend(more.progress);
}
