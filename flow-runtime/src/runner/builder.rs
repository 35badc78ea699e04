//! [`NodeBuilder`]: everything a tokio node is built from (identity,
//! transport, database, flows, tuning), and [`NodeBuilder::start`], which
//! opens the database, starts the transport and spawns the node's event
//! loop (`event_loop.rs`), handing back a [`Node`] handle (`handle.rs`).
use super::RunnerError;
use super::admin::{self, AdminSettings, NodeMetrics, Startable};
use super::config::LoadedConfig;
use super::config::StoreChoice;
use super::event_loop::Observers;
use super::event_loop::{
    DEFAULT_LONG_WAIT_CHECK, EventLoop, FLOW_EVENTS_CAPACITY, LongWaitCheck, Pipelined, now,
};
use super::handle::{Node, NodeResults};
use super::pipeline::CommitPipeline;
use crate::handle::ResultSource;
use crate::node::OsIds;
use crate::registry::{Registry, ResponderFn};
use crate::services::Services;
use crate::store::{RedbOptions, RedbStore, Store};
use crate::tcp::{SigningKey, TcpConfig, TcpTransport, TransportError};
use crate::transport::{Incoming, Transport};
use crate::{Flow, NodeConfig, NodeCore, Party, PublicKey};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

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
    pub(super) database: PathBuf,
    redelivery: Duration,
    long_wait_check: Duration,
    defer_acks: bool,
    hand_off_commits: Option<bool>,
    /// See [`NodeBuilder::pipeline_commits`]; `None`: the store's default.
    pipeline_commits: Option<bool>,
    /// See [`NodeBuilder::inline_commit_max_frames`].
    pub(crate) inline_commit_max_frames: usize,
    /// (Crate-visible: a scale-out worker divides the responder bound
    /// among the partitions.)
    pub(crate) node_config: NodeConfig,
    /// The store `start` opens; an error from the configuration is
    /// reported by `start`.
    pub(super) store: Result<StoreChoice, String>,
    pub(super) registry: Registry,
    installers: Vec<Installer>,
    connect: Box<dyn Connect<T>>,
    /// The admin API's settings; `None`: no admin API.
    admin: Option<AdminSettings>,
    /// Flows clients may start by name through the admin API.
    pub(crate) startable: Startable,
    /// The peers the node knows (for the admin API's status).
    known_peers: Vec<Party>,
    /// A store opened by the caller, used instead of `store` (a scale-out
    /// partition's fenced store).
    pub(crate) custom_store: Option<Arc<dyn Store>>,
    /// Where session ids come from (default: random); a scale-out
    /// partition's ids name the partition.
    pub(crate) session_ids: Option<Box<dyn crate::IdSource>>,
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
        let admin = AdminSettings::from_section(&config.admin, &config.database);
        let mut builder = Self::new(identity, &config.listen, config.database, map);
        builder.tcp_config(config.transport.tcp_config());
        builder.redelivery = config.node.redelivery_interval();
        builder.long_wait_check = config.node.long_wait_check_interval();
        builder.node_config = config.node.node_config();
        builder.store = config.store.choice();
        builder.admin = Some(admin);
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
        let known_peers = map
            .entries()
            .iter()
            .filter(|e| e.key != key)
            .map(|e| e.party())
            .collect();
        let setup = TcpSetup {
            identity,
            listen: listen.to_owned(),
            map,
            config: TcpConfig::default(),
            listener: None,
        };
        let mut builder =
            Self::with_connect(Party::new(name, key), database.into(), Box::new(setup));
        builder.known_peers = known_peers;
        builder
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
            hand_off_commits: None,
            pipeline_commits: None,
            inline_commit_max_frames: super::event_loop::SMALL_BATCH,
            node_config: NodeConfig::default(),
            store: Ok(StoreChoice::Redb(RedbOptions::default())),
            registry: Registry::new(),
            installers: Vec::new(),
            connect,
            admin: None,
            startable: Startable::default(),
            known_peers: Vec::new(),
            custom_store: None,
            session_ids: None,
        }
    }

    /// Serves the admin/client API ([`admin`](super::admin)) with
    /// `settings` once the node starts. A node built
    /// [`from_config`](NodeBuilder::from_config) always serves it (from its
    /// `[admin]` section, loopback by default); one built from its parts
    /// only when asked here.
    pub fn admin(&mut self, settings: AdminSettings) -> &mut Self {
        self.admin = Some(settings);
        self
    }

    /// Makes a flow startable by name through the admin API (`POST
    /// /api/v1/flows`, `flowctl flows start`), under its `Flow::NAME`: the
    /// request's JSON `args` are decoded as `A` (serde checks every field
    /// and type) and `make` builds the flow, or refuses with a message the
    /// client gets as a 400. Registers the flow's type too. Only flows
    /// registered here can be started from outside (responders and
    /// sub-flows are not).
    ///
    /// ```no_run
    /// # use flow_runtime::runner::NodeBuilder;
    /// # use flow_runtime::testing::ping_pong::ping;
    /// # use flow_runtime::Party;
    /// #[derive(serde::Deserialize)]
    /// #[serde(deny_unknown_fields)]
    /// struct PingArgs { peer: Party, rounds: u32 }
    /// # fn f(builder: &mut NodeBuilder) {
    /// builder.startable(|a: PingArgs| {
    ///     if a.rounds > 1000 { return Err("at most 1000 rounds".into()); }
    ///     Ok(ping(a.peer, a.rounds))
    /// });
    /// # }
    /// ```
    pub fn startable<A, F>(
        &mut self,
        make: impl Fn(A) -> Result<F, String> + Send + Sync + 'static,
    ) -> &mut Self
    where
        A: serde::de::DeserializeOwned,
        F: Flow,
    {
        self.registry.register_flow::<F>();
        self.startable.register(make);
        self
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
    /// or when [`MAX_FRAMES_PER_BATCH`](super::MAX_FRAMES_PER_BATCH) of them have accumulated. Turn it
    /// off only to measure what it saves.
    pub fn defer_ack_commits(&mut self, defer: bool) -> &mut Self {
        self.defer_acks = defer;
        self
    }

    /// Whether, on a multi-threaded tokio runtime, the driver hands its
    /// worker thread to the runtime while a commit waits for the disk
    /// (`tokio::task::block_in_place`: `true`) or blocks the worker for the
    /// commit (`false`). By default it hands off only on a runtime with a
    /// single worker; a current-thread runtime always blocks.
    ///
    /// Why: handing off lets the node's other tasks (connections, the admin
    /// API) run during the fsync, but tokio then moves the runtime to
    /// another thread, so every commit wakes a thread to take over and the
    /// frames it releases are written by a thread that has to be woken
    /// first: about five context switches per commit instead of one, and
    /// more CPU per step. With two or more workers the other workers serve
    /// the connections while one blocks, so blocking costs nothing there;
    /// with one worker, blocking would stop every connection for the
    /// length of each commit.
    pub fn hand_off_worker_during_commits(&mut self, hand_off: bool) -> &mut Self {
        self.hand_off_commits = Some(hand_off);
        self
    }

    /// Whether batches of frames from peers commit through a pipeline
    /// (`true`) or one at a time on the node's driver (`false`). Default:
    /// on with the embedded redb store, off with PostgreSQL.
    ///
    /// With the pipeline, the driver hands a batch's writes to a committer
    /// thread and goes on stepping the next frames while the disk works;
    /// the committer writes everything queued meanwhile in one transaction
    /// (one fsync for several batches). Nothing a batch produced (messages
    /// to peers, results, progress) leaves the node before its commit is
    /// durable, and a failed commit stops the node as without the
    /// pipeline. It takes redb's commit work off the driver's thread: more
    /// round trips per second with many flows in flight, the same CPU per
    /// round trip, and one flow's round trip unchanged (see the book's
    /// performance chapter). With PostgreSQL, which serialises every call
    /// on one connection, the next batch's reads would queue behind the
    /// commit and little would overlap: off there unless turned on here.
    pub fn pipeline_commits(&mut self, pipeline: bool) -> &mut Self {
        self.pipeline_commits = Some(pipeline);
        self
    }

    /// With the commit pipeline ([`pipeline_commits`](Self::pipeline_commits)):
    /// a batch of at most `frames` frames, stepped while nothing is queued
    /// and no frame waits, is committed on the driver itself; larger ones
    /// (and flows left runnable) are handed to the committer thread.
    /// Default [`SMALL_BATCH`](super::SMALL_BATCH) (4); `0` hands
    /// every batch off, `usize::MAX` commits every batch of an idle node
    /// inline ([`commit_inline_when_idle`](Self::commit_inline_when_idle)
    /// sets one or the other).
    ///
    /// Why: handing a commit off costs two thread wake-ups, which were
    /// 40% of one flow's round trip without fsync on the reference
    /// machine (64 µs committing inline against 110 µs handing off),
    /// while committing on the driver blocks its worker for the fsync,
    /// which under load is often: with 1,000 flows in flight, committing
    /// every idle batch inline halved the round trips per second. A busy
    /// node's frames come in batches of tens to hundreds, so the small
    /// ones are the node's lone flows. See the book's performance chapter.
    pub fn inline_commit_max_frames(&mut self, frames: usize) -> &mut Self {
        self.inline_commit_max_frames = frames;
        self
    }

    /// With the commit pipeline ([`pipeline_commits`](Self::pipeline_commits)):
    /// whether every batch stepped while nothing is queued and no frame
    /// waits is committed on the driver itself (`true`), or every batch is
    /// handed to the committer thread (`false`). The default lies between:
    /// see [`inline_commit_max_frames`](Self::inline_commit_max_frames).
    ///
    /// Tests that run a node on tokio's paused clock
    /// (`#[tokio::test(start_paused = true)]`) should set `true`: while the
    /// driver waits for the committer's (real) thread, the paused runtime
    /// sees nothing to do and jumps its clock to the next timer.
    pub fn commit_inline_when_idle(&mut self, inline: bool) -> &mut Self {
        self.inline_commit_max_frames = if inline { usize::MAX } else { 0 };
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

    /// Moves checkpoints written by the code of `Old` to `New` with
    /// `migrate` when they are loaded (a refusal, `Err(reason)`, keeps the
    /// flow held with the reason): see
    /// [`Registry::register_migration`](crate::engine::Registry::register_migration)
    /// and the book's chapter "Upgrading flows". `New` is registered too.
    pub fn migration<Old: Flow, New: Flow>(
        &mut self,
        migrate: impl Fn(Old) -> Result<New, String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.registry.register_migration::<Old, New>(migrate);
        self
    }

    /// [`migration`](Self::migration) from checkpoints whose code this
    /// build no longer has, named by the `name`, `version` and
    /// `fingerprint` they were written with and read as `S`: see
    /// [`Registry::register_migration_from_fingerprint`](crate::engine::Registry::register_migration_from_fingerprint).
    pub fn migration_from_fingerprint<S, New>(
        &mut self,
        name: &str,
        version: u32,
        fingerprint: u64,
        migrate: impl Fn(S) -> Result<New, String> + Send + Sync + 'static,
    ) -> &mut Self
    where
        S: serde::de::DeserializeOwned + 'static,
        New: Flow,
    {
        self.registry.register_migration_from_fingerprint::<S, New>(
            name,
            version,
            fingerprint,
            migrate,
        );
        self
    }

    /// Answers sessions opened by flow `I` with the flow `responder` builds:
    /// `builder.responder::<ping::Flow>(|session| pong(session))`. The
    /// responder's own type is registered too.
    pub fn responder<I: Flow>(&mut self, responder: impl ResponderFn) -> &mut Self {
        self.registry.register_responder::<I, _>(responder);
        self
    }

    /// Answers sessions opened by any version in `versions` of the flow
    /// `I` (by its `NAME`): `builder.responder_for_versions::<ping::Flow>(1..=2,
    /// pong)`. [`responder`](Self::responder) registers exactly `I::VERSION`;
    /// an initiation by a version no registration speaks is refused with an
    /// error the initiating flow sees, naming both versions. Register one
    /// responder per range to run several versions side by side; the
    /// responder reads the initiator's version with
    /// [`FlowSession::counterparty_version`](crate::FlowSession::counterparty_version).
    /// See [`Registry::register_responder_for_versions`](crate::engine::Registry::register_responder_for_versions).
    pub fn responder_for_versions<I: Flow>(
        &mut self,
        versions: std::ops::RangeInclusive<u32>,
        responder: impl ResponderFn,
    ) -> &mut Self {
        self.registry
            .register_responder_for_versions::<I, _>(versions, responder);
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

    /// Keeps the checkpoints in the redb file `database` names, with
    /// `options` (e.g. `quick_repair`). This is the default.
    pub fn store_options(&mut self, options: RedbOptions) -> &mut Self {
        self.store = Ok(StoreChoice::Redb(options));
        self
    }

    /// Chooses the store: redb (the default) or a PostgreSQL schema. With
    /// PostgreSQL, `database` only names where dumps are written.
    pub fn store(&mut self, choice: StoreChoice) -> &mut Self {
        self.store = Ok(choice);
        self
    }

    /// Opens the chosen store; `path` is what errors call it.
    fn open_store(&mut self, path: &str) -> Result<Arc<dyn Store>, RunnerError> {
        if let Some(store) = self.custom_store.take() {
            return Ok(store);
        }
        let failed = |message: String| RunnerError::Database {
            path: path.to_owned(),
            message,
        };
        match self.store.clone().map_err(failed)? {
            StoreChoice::Redb(options) => Ok(Arc::new(
                RedbStore::open(&self.database, options).map_err(|e| failed(e.0))?,
            )),
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres { connection } => Ok(Arc::new(
                crate::store::PostgresStore::open(&connection, Default::default())
                    .map_err(|e| failed(e.0))?,
            )),
            #[cfg(not(feature = "postgres"))]
            StoreChoice::Postgres { .. } => Err(failed(
                "this build has no PostgreSQL store (flow-runtime's `postgres` feature is off)"
                    .into(),
            )),
        }
    }

    /// Opens the database, starts the transport and the driver. Flows that
    /// were in flight when the node last stopped continue from their
    /// checkpoints; unacknowledged messages are sent again.
    pub async fn start(mut self) -> Result<Node<T>, RunnerError> {
        let path = match &self.store {
            Ok(StoreChoice::Postgres { .. }) => "in PostgreSQL".to_owned(),
            _ => self.database.display().to_string(),
        };
        // On by default with redb (see `pipeline_commits`); off for a
        // store opened by the caller: a scale-out partition accounts for
        // its inbox at each commit.
        let pipelined = self.pipeline_commits.unwrap_or(
            self.custom_store.is_none() && matches!(self.store, Ok(StoreChoice::Redb(_))),
        );
        let store = self.open_store(&path)?;
        let durable_store = store.clone();
        let metrics = NodeMetrics::new();
        let mut counters = None;
        let (store, pipeline) = if pipelined {
            let pipeline = Arc::new(CommitPipeline::new(store, metrics.transactions()).map_err(
                |e| RunnerError::Database {
                    path: path.clone(),
                    message: format!("cannot start the commit thread: {e}"),
                },
            )?);
            counters = Some(pipeline.counters());
            (pipeline.clone() as Arc<dyn Store>, Some(pipeline))
        } else {
            (store, None)
        };
        let party = self.party;
        let long_wait_limit = self.node_config.long_wait_warning;
        let mut core = NodeCore::open(
            party.clone(),
            store,
            self.registry,
            self.session_ids.unwrap_or_else(|| Box::new(OsIds)),
            Box::new(OsIds),
            self.node_config,
            now(),
        )
        .map_err(RunnerError::Node)?;
        if pipeline.is_some() {
            core.set_operator_store(durable_store);
        }
        for install in &self.installers {
            install(core.services());
        }
        // Transactions are recorded where they are written: by the
        // pipeline when there is one, else by the core.
        core.set_metrics(if pipeline.is_some() {
            metrics.pipelined_core()
        } else {
            metrics.core()
        });
        let (transport, incoming) = self.connect.connect().await?;
        let transport = Arc::new(transport);
        // Names of peers come from the transport's directory (the network
        // map for TCP), which only lists keys it authenticates.
        let names = transport.clone();
        core.set_peer_names(Arc::new(move |key| Some(names.peer_name(key))));
        let in_flight = core.flows_in_flight().unwrap_or(0);
        info!(node = %party, endpoint = %transport.endpoint(), database = %path, flows_in_flight = in_flight,
            "node started");

        let (commands, command_rx) = mpsc::channel(256);
        let observers: Observers = Arc::default();
        let (flow_events, _) = broadcast::channel(FLOW_EVENTS_CAPACITY);
        let stopping = Arc::new(AtomicBool::new(false));
        let driver = EventLoop {
            core: Box::new(core),
            transport: transport.clone(),
            incoming,
            events: transport.link_events(),
            events_open: true,
            commands: command_rx,
            observers: observers.clone(),
            flow_events: flow_events.clone(),
            waiters: HashMap::new(),
            loopback: VecDeque::new(),
            redelivery: self.redelivery,
            delivery: crate::node::delivery::Delivery::new(),
            defer_acks: self.defer_acks,
            pending_acks: Vec::new(),
            drained_reported: false,
            long_waits: LongWaitCheck {
                every: self.long_wait_check,
                limit: long_wait_limit,
                scan: None,
            },
            stopping: stopping.clone(),
            metrics: metrics.driver(),
            hand_off_commits: hand_off_commits(self.hand_off_commits),
            pipeline: pipeline.map(|p| Pipelined::new(p, self.inline_commit_max_frames)),
        };
        let results: Arc<dyn ResultSource> = Arc::new(NodeResults {
            commands: commands.downgrade(),
        });
        let task = tokio::spawn(driver.run());
        let node = Node {
            party,
            transport,
            commands,
            results,
            observers,
            flow_events,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
            stopping,
            database: self.database,
            admin: Arc::default(),
            pipeline: counters,
            metrics: metrics.clone(),
        };
        if let Some(settings) = self.admin {
            let served = admin::serve(
                node.clone(),
                settings,
                self.startable,
                metrics,
                self.known_peers,
                &node.database,
            )
            .await;
            match served {
                Ok(running) => {
                    *node.admin.lock().unwrap_or_else(PoisonError::into_inner) = Some(running);
                }
                Err(e) => {
                    let _ = node.shutdown().await;
                    return Err(e.into());
                }
            }
        }
        Ok(node)
    }
}

/// Whether the driver runs its commits inside `block_in_place` (see
/// [`NodeBuilder::hand_off_worker_during_commits`]): never on a
/// current-thread runtime; by default only on a runtime with one worker.
fn hand_off_commits(chosen: Option<bool>) -> bool {
    let runtime = tokio::runtime::Handle::current();
    if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return false;
    }
    chosen.unwrap_or_else(|| runtime.metrics().num_workers() == 1)
}

#[cfg(test)]
mod tests {
    use super::hand_off_commits;

    fn on_runtime(workers: Option<usize>, f: impl FnOnce() -> bool + Send) -> bool {
        let runtime = match workers {
            None => tokio::runtime::Builder::new_current_thread().build(),
            Some(n) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .build(),
        }
        .expect("a runtime");
        runtime.block_on(async { f() })
    }

    #[test]
    fn commits_hand_off_the_worker_only_on_a_one_worker_runtime_by_default() {
        assert!(on_runtime(Some(1), || hand_off_commits(None)));
        assert!(!on_runtime(Some(2), || hand_off_commits(None)));
        assert!(!on_runtime(None, || hand_off_commits(None)));
    }

    #[test]
    fn the_builder_setting_wins_except_on_a_current_thread_runtime() {
        assert!(on_runtime(Some(2), || hand_off_commits(Some(true))));
        assert!(!on_runtime(Some(1), || hand_off_commits(Some(false))));
        // block_in_place panics on a current-thread runtime: never there.
        assert!(!on_runtime(None, || hand_off_commits(Some(true))));
    }
}
