//! [`MockNetwork`]: several durable nodes in one process, connected by an
//! in-memory, deterministic network that the test drives step by step.
//!
//! Each node is a real [`NodeCore`] on its own redb database (kept in memory
//! so that `restart_node` can drop everything the node had in memory and
//! reopen the same committed bytes). The network holds frames in flight;
//! [`step`](MockNetwork::step) moves exactly one thing forward:
//!
//! 1. a node with runnable work left from an earlier batch runs it; else
//! 2. one frame in flight is delivered (with seeded faults: dropped,
//!    duplicated, or taken out of order); else
//! 3. if some node has unacknowledged messages, a redelivery round: links
//!    that broke come back up, then every node has a redelivery tick (up to
//!    30 rounds in a row in which no node commits anything, so an
//!    undeliverable frame cannot keep the network busy); else
//! 4. the virtual clock jumps to the earliest timer and fires it; else
//! 5. the network is idle: `step` returns `false`.
//!
//! Nothing waits on the wall clock.
//!
//! What each node sends and re-sends is decided by the same
//! [`Delivery`](crate::node::delivery::Delivery) the tokio node runs: a redelivery
//! round is one tick of every node's delivery, so a message is re-sent at
//! the second round after it was sent (the first at a node's start-up),
//! exactly as production re-sends it one to two intervals later. With
//! [`LinkFaults`] the network also models links the way TCP behaves — dialled
//! on first use, broken and re-established, with bounded queues that refuse
//! frames — and feeds each node the link events a transport would, so the
//! seeded simulation exercises the production re-sending policy.

mod flows;
mod links;
mod operators;

pub use links::LinkFaults;

use crate::node::delivery::Delivery;
use crate::node::{NodeConfig, NodeCore, NodeError, Output, RunId};
use crate::progress::ProgressStream;
use crate::registry::{Registry, ResponderFn};
use crate::services::Services;
use crate::store::{RedbOptions, RedbStore, SharedMemory, Store};
use crate::{Flow, FlowError, IdSource, Party, PublicKey, SeededIds, Timestamp};
use flows::MockResults;
use links::LinkState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

/// Redelivery rounds in a row that may pass without any node committing
/// anything before the network counts as idle. Redelivery has to repeat
/// when fault injection drops the redelivered frames too; but a frame no
/// node will ever accept (addressed to a node that does not exist) must not
/// keep the network busy forever.
const MAX_FRUITLESS_REDELIVERIES: u32 = 30;

/// A node of a [`MockNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(usize);

/// Seeded fault injection: each is a probability per delivery (0.0 - 1.0).
/// Redelivery from the senders' outboxes recovers from every one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// A frame is lost.
    pub drop: f64,
    /// A frame is delivered and also stays in flight to arrive again later.
    pub duplicate: f64,
    /// A random frame in flight is delivered instead of the oldest.
    pub reorder: f64,
    /// Before a step, a random node crashes and restarts.
    pub restart: f64,
}

/// Messages `delivery` sent again from the outbox so far.
fn resent(delivery: &Delivery) -> u64 {
    let s = delivery.stats();
    s.resent_at_tick + s.resent_on_reconnect
}

/// A flow that finished on a node of a [`MockNetwork`] (responders too,
/// whose results a node does not keep): for tests that check what a
/// counterparty saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The node it ran on.
    pub node: NodeId,
    /// Its run id.
    pub run_id: RunId,
    /// Its `Flow::NAME`.
    pub flow: String,
    /// Its outcome; the output is MessagePack (decode with rmp-serde).
    pub outcome: Result<Vec<u8>, FlowError>,
}

/// Counters of what the network did, for tests and simulations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Frames handed to a node.
    pub delivered: u64,
    /// Frames lost by fault injection.
    pub dropped: u64,
    /// Frames duplicated by fault injection.
    pub duplicated: u64,
    /// Node restarts (asked for or injected).
    pub restarts: u64,
    /// Redelivery rounds.
    pub redeliveries: u64,
    /// Times the clock jumped to a timer.
    pub timer_jumps: u64,
    /// Frames a node's delivery sent again from its outbox (at a redelivery
    /// tick or to a reconnected peer).
    pub resent: u64,
    /// Frames refused (with [`LinkFaults`]).
    pub refused: u64,
    /// Links broken (with [`LinkFaults`]), and the frames lost on them.
    pub links_broken: u64,
    /// Frames delivered that the receiver had been handed before, byte for
    /// byte (re-sends of what already arrived, and injected duplicates):
    /// what the re-sending policy costs the network.
    pub redundant: u64,
}

type ServiceInstaller = Arc<dyn Fn(&mut Services) + Send + Sync>;

struct Slot {
    party: Party,
    memory: SharedMemory,
    registry: Registry,
    core: Option<NodeCore>,
    store: Option<Arc<RedbStore>>,
    incarnation: u64,
    observers: HashMap<RunId, ProgressStream>,
    draining: bool,
    installers: Vec<ServiceInstaller>,
    /// What the node sends and re-sends: its delivery, new at each start.
    delivery: Delivery,
}

#[derive(Clone)]
struct InFlight {
    from: PublicKey,
    to: PublicKey,
    frame: Vec<u8>,
}

/// An in-memory network of durable nodes for testing flows from a plain
/// `#[test]`: synchronous, deterministic for a given seed, with a virtual
/// clock. See the module docs for what one step does.
pub struct MockNetwork {
    seed: u64,
    rng: SeededIds,
    clock: Timestamp,
    nodes: Vec<Slot>,
    by_key: HashMap<PublicKey, usize>,
    in_flight: VecDeque<InFlight>,
    faults: Faults,
    config: NodeConfig,
    commits: u64,
    redelivered_at: Option<u64>,
    fruitless_redeliveries: u32,
    stats: NetworkStats,
    finished: Vec<Finished>,
    results: Arc<MockResults>,
    link_faults: LinkFaults,
    /// Per pair of nodes (lower index first), with [`LinkFaults`]: the
    /// link's state (absent: never used, dialled on first use).
    links: HashMap<(usize, usize), LinkState>,
    /// Per direction, frames waiting for their link to come up.
    held: HashMap<(usize, usize), VecDeque<InFlight>>,
    /// Hashes of every frame delivered, to count [`NetworkStats::redundant`].
    delivered_frames: HashSet<u64>,
    /// The name of every node by key: the network map, shared with every
    /// node core (names of counterparties come from here).
    names: Arc<std::sync::Mutex<HashMap<PublicKey, String>>>,
}

impl MockNetwork {
    /// An empty network; `seed` drives every random choice (ids, faults).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: SeededIds::new(seed ^ 0x6d6f_636b_6e65_7477),
            clock: Timestamp(0),
            nodes: Vec::new(),
            by_key: HashMap::new(),
            in_flight: VecDeque::new(),
            faults: Faults::default(),
            config: NodeConfig::default(),
            commits: 0,
            redelivered_at: None,
            fruitless_redeliveries: 0,
            stats: NetworkStats::default(),
            finished: Vec::new(),
            results: Arc::default(),
            link_faults: LinkFaults::default(),
            links: HashMap::new(),
            held: HashMap::new(),
            delivered_frames: HashSet::new(),
            names: Arc::default(),
        }
    }

    /// Turns on seeded link faults (and link modelling: see [`LinkFaults`]).
    pub fn set_link_faults(&mut self, faults: LinkFaults) {
        self.link_faults = faults;
    }

    /// Sets the node configuration used by nodes created (or restarted) from
    /// now on.
    pub fn set_node_config(&mut self, config: NodeConfig) {
        self.config = config;
    }

    /// Turns on seeded fault injection.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// What the network has done so far.
    pub fn stats(&self) -> NetworkStats {
        let resent_now: u64 = self.nodes.iter().map(|n| resent(&n.delivery)).sum();
        NetworkStats {
            resent: self.stats.resent + resent_now,
            ..self.stats
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Timestamp {
        self.clock
    }

    /// Moves the virtual clock forward by `d` (timers due by then fire on the
    /// next steps).
    pub fn advance_clock(&mut self, d: Duration) {
        self.clock = self.clock.after(d);
    }

    /// Adds a node named `name` with a fresh identity and its own database.
    pub fn create_node(&mut self, name: &str) -> NodeId {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_id().to_le_bytes());
        }
        let party = Party::new(name, PublicKey(key));
        let index = self.nodes.len();
        self.by_key.insert(PublicKey(key), index);
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(PublicKey(key), name.to_owned());
        self.nodes.push(Slot {
            party,
            memory: SharedMemory::new(),
            registry: Registry::new(),
            core: None,
            store: None,
            incarnation: 0,
            observers: HashMap::new(),
            draining: false,
            installers: Vec::new(),
            delivery: Delivery::new(),
        });
        self.open_node(index);
        NodeId(index)
    }

    /// The identity of `node`, to pass to flows.
    pub fn party(&self, node: NodeId) -> Party {
        self.nodes[node.0].party.clone()
    }

    /// Registers `responder` on `node` for sessions opened by flow `I`:
    /// `net.register_responder::<ping::Flow, _>(bob, |s| pong(s))`. Kept
    /// across restarts (registrations are code).
    pub fn register_responder<I: Flow, H: ResponderFn>(&mut self, node: NodeId, responder: H) {
        let responder = Arc::new(responder);
        let slot = &mut self.nodes[node.0];
        let r = responder.clone();
        slot.registry.register_responder::<I, _>(move |s| (*r)(s));
        if let Some(core) = slot.core.as_mut() {
            core.registry_mut()
                .register_responder::<I, _>(move |s| (*responder)(s));
        }
    }

    /// Registers `responder` on `node` for sessions opened by any version in
    /// `versions` of the flow named `I::NAME` (see
    /// [`Registry::register_responder_for_versions`]); kept across restarts.
    pub fn register_responder_for_versions<I: Flow, H: ResponderFn>(
        &mut self,
        node: NodeId,
        versions: std::ops::RangeInclusive<u32>,
        responder: H,
    ) {
        let responder = Arc::new(responder);
        let slot = &mut self.nodes[node.0];
        let r = responder.clone();
        slot.registry
            .register_responder_for_versions::<I, _>(versions.clone(), move |s| (*r)(s));
        if let Some(core) = slot.core.as_mut() {
            core.registry_mut()
                .register_responder_for_versions::<I, _>(versions, move |s| (*responder)(s));
        }
    }

    /// Makes flow type `F` known to `node`, beside the other versions of
    /// its `NAME` (e.g. to simulate deploying new code before a restart).
    pub fn register_flow<F: Flow>(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.0];
        slot.registry.register_flow::<F>();
        if let Some(core) = slot.core.as_mut() {
            core.registry_mut().register_flow::<F>();
        }
    }

    /// Registers a state migration from `Old` to `New` on `node` (see
    /// [`Registry::register_migration`](crate::engine::Registry::register_migration)):
    /// checkpoints `Old` wrote continue on `New` when they are next loaded;
    /// held ones are loaded at the node's next restart (or an operator's
    /// retry).
    pub fn register_migration<Old: Flow, New: Flow>(
        &mut self,
        node: NodeId,
        migrate: impl Fn(Old) -> Result<New, String> + Send + Sync + 'static,
    ) {
        let migrate = Arc::new(migrate);
        let slot = &mut self.nodes[node.0];
        let m = migrate.clone();
        slot.registry
            .register_migration::<Old, New>(move |old| (*m)(old));
        if let Some(core) = slot.core.as_mut() {
            core.registry_mut()
                .register_migration::<Old, New>(move |old| (*migrate)(old));
        }
    }

    /// Makes `node` forget the code of `F` from its next restart on (other
    /// versions of its `NAME` stay): simulates deploying a build without
    /// it. Starting `F` on the node registers it again.
    pub fn unregister_flow<F: Flow>(&mut self, node: NodeId) {
        self.nodes[node.0].registry.unregister_flow::<F>();
    }

    /// Runs `install` on `node`'s services now and after every restart (a
    /// restarted node rebuilds its in-memory services from code).
    pub fn install_services(
        &mut self,
        node: NodeId,
        install: impl Fn(&mut Services) + Send + Sync + 'static,
    ) {
        let install: ServiceInstaller = Arc::new(install);
        let slot = &mut self.nodes[node.0];
        if let Some(core) = slot.core.as_mut() {
            install(core.services());
        }
        slot.installers.push(install);
    }

    /// Crashes `node` (drops its in-memory state, open database, pending
    /// work) and starts it again from its database. Frames in flight stay in
    /// flight; the node redelivers its unacknowledged messages.
    pub fn restart_node(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.0];
        slot.core = None;
        if let Some(store) = slot.store.take() {
            if let Err(e) = store.sync() {
                tracing::error!("MockNetwork: {e}");
            }
            // A crash applies nothing more: the reopened store finds the
            // journal's records and applies them.
            store.close_as_if_crashed();
        }
        slot.incarnation += 1;
        self.stats.restarts += 1;
        // Its connections died with it.
        if self.link_faults.modelled() {
            for other in 0..self.nodes.len() {
                if other != node.0 {
                    self.disconnect(node, NodeId(other));
                }
            }
        }
        self.open_node(node.0);
    }

    /// Moves one delivery, redelivery round or timer forward. `false` when
    /// the network is idle.
    pub fn step(&mut self) -> bool {
        if self.faults.restart > 0.0 && !self.nodes.is_empty() && self.chance(self.faults.restart) {
            let n = (self.rng.next_id() % self.nodes.len() as u64) as usize;
            self.restart_node(NodeId(n));
        }
        if self.link_faults.break_link > 0.0
            && self.nodes.len() >= 2
            && self.chance(self.link_faults.break_link)
        {
            let a = (self.rng.next_id() % self.nodes.len() as u64) as usize;
            let b = (a + 1 + (self.rng.next_id() % (self.nodes.len() as u64 - 1)) as usize)
                % self.nodes.len();
            self.disconnect(NodeId(a), NodeId(b));
        }
        if let Some(&(a, b)) = self
            .links
            .iter()
            .filter(|(_, s)| **s == LinkState::Dialling)
            .map(|(pair, _)| pair)
            .min()
        {
            self.connect(NodeId(a), NodeId(b));
            return true;
        }
        if let Some(i) = self
            .nodes
            .iter()
            .position(|n| n.core.as_ref().is_some_and(|c| c.has_ready()))
        {
            let now = self.clock;
            self.operate(i, |c| c.tick(now));
            return true;
        }
        if !self.in_flight.is_empty() {
            let index = if self.faults.reorder > 0.0 && self.chance(self.faults.reorder) {
                (self.rng.next_id() % self.in_flight.len() as u64) as usize
            } else {
                0
            };
            let Some(msg) = self.in_flight.remove(index) else {
                return true;
            };
            if self.faults.drop > 0.0 && self.chance(self.faults.drop) {
                self.stats.dropped += 1;
                return true;
            }
            if self.faults.duplicate > 0.0 && self.chance(self.faults.duplicate) {
                self.stats.duplicated += 1;
                self.in_flight.push_back(msg.clone());
            }
            match self.by_key.get(&msg.to).copied() {
                Some(i) => {
                    self.stats.delivered += 1;
                    let hash = BuildHasherDefault::<DefaultHasher>::default()
                        .hash_one((&msg.from, &msg.to, &msg.frame));
                    if !self.delivered_frames.insert(hash) {
                        self.stats.redundant += 1;
                    }
                    let now = self.clock;
                    self.operate(i, |c| c.deliver(now, vec![(msg.from, msg.frame)]));
                }
                None => {
                    tracing::warn!(to = ?msg.to, "MockNetwork: no node with that key; frame discarded")
                }
            }
            return true;
        }
        if self.redelivered_at != Some(self.commits) {
            self.fruitless_redeliveries = 0;
        }
        if self.fruitless_redeliveries < MAX_FRUITLESS_REDELIVERIES {
            self.fruitless_redeliveries += 1;
            // Broken links come back first: their ends re-send at once what
            // the links may have lost.
            let mut broken: Vec<(usize, usize)> = self
                .links
                .iter()
                .filter(|(_, s)| **s == LinkState::Broken)
                .map(|(pair, _)| *pair)
                .collect();
            broken.sort_unstable();
            let mut any = !broken.is_empty();
            for (a, b) in broken {
                self.connect(NodeId(a), NodeId(b));
            }
            for i in 0..self.nodes.len() {
                let Some(core) = self.nodes[i].core.as_ref() else {
                    continue;
                };
                match core.unacked_frames() {
                    Ok(outbox) => {
                        any |= !outbox.is_empty();
                        self.nodes[i].delivery.tick(outbox);
                        self.transmit(i);
                    }
                    Err(e) => tracing::error!("{e}"),
                }
            }
            self.redelivered_at = Some(self.commits);
            if any {
                self.stats.redeliveries += 1;
                return true;
            }
        }
        let next = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref()?.next_timer().ok()?)
            .min();
        if let Some(t) = next {
            if t > self.clock {
                self.clock = t;
            }
            self.stats.timer_jumps += 1;
            let now = self.clock;
            for i in 0..self.nodes.len() {
                let due = self.nodes[i]
                    .core
                    .as_ref()
                    .and_then(|c| c.next_timer().ok()?)
                    .is_some_and(|t| t <= now);
                if due {
                    self.operate(i, |c| c.tick(now));
                }
            }
            return true;
        }
        false
    }

    /// Steps until idle.
    pub fn run_network(&mut self) {
        while self.step() {}
    }

    // ------------------------------------------------------------ internals

    fn chance(&mut self, p: f64) -> bool {
        (self.rng.next_id() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }

    fn core(&mut self, node: NodeId) -> &mut NodeCore {
        if self.nodes[node.0].core.is_none() {
            self.open_node(node.0);
        }
        match self.nodes[node.0].core.as_mut() {
            Some(c) => c,
            None => panic!("MockNetwork: node {} cannot be opened", node.0),
        }
    }

    fn open_node(&mut self, i: usize) {
        let slot = &mut self.nodes[i];
        // Memory-backed. Every batch a real node commits is durable; here a
        // process crash cannot lose what was written to memory, so batches
        // commit without redb's durable-commit work and `restart_node`
        // makes them durable before dropping the database: the reopened
        // node sees exactly the committed batches, as after a real crash.
        let options = RedbOptions {
            durable: false,
            quick_repair: false,
            cache_bytes: 4 * 1024 * 1024,
            ..RedbOptions::default()
        };
        let store = match RedbStore::open_in_memory(&slot.memory, options) {
            Ok(s) => Arc::new(s),
            Err(e) => panic!(
                "MockNetwork: cannot open the database of {}: {e}",
                slot.party
            ),
        };
        slot.store = Some(store.clone());
        let store: Arc<dyn Store> = store;
        // Independent streams per node, incarnation and purpose: the parts
        // are hashed (SplitMix64 streams whose seeds differ by a multiple of
        // its increment would be shifted copies of each other).
        let mix = |parts: [u64; 4]| {
            let mut x = 0u64;
            for p in parts {
                x = SeededIds::new(x ^ p).next_id();
            }
            SeededIds::new(x)
        };
        let session_ids = mix([self.seed, i as u64, slot.incarnation, 1]);
        let run_ids = mix([self.seed, i as u64, slot.incarnation, 2]);
        let mut core = match NodeCore::open(
            slot.party.clone(),
            store,
            slot.registry.clone(),
            Box::new(session_ids),
            Box::new(run_ids),
            self.config.clone(),
            self.clock,
        ) {
            Ok(c) => c,
            Err(e) => panic!("MockNetwork: cannot open node {}: {e}", slot.party),
        };
        core.set_draining(slot.draining);
        let names = self.names.clone();
        core.set_peer_names(Arc::new(move |key| {
            names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .cloned()
        }));
        // A new process: its delivery starts afresh (its first tick re-sends
        // the whole outbox). `stats.resent` keeps what the old one re-sent.
        let old = std::mem::take(&mut slot.delivery);
        self.stats.resent += resent(&old);
        for install in &slot.installers {
            install(core.services());
        }
        // A real node's first redelivery tick comes when it starts (its
        // connections lost whatever was in them). Here it comes at the next
        // idle redelivery round; resending at every restart would flood a
        // test that restarts after every step.
        slot.core = Some(core);
    }

    fn operate(&mut self, i: usize, op: impl FnOnce(&mut NodeCore) -> Result<Output, NodeError>) {
        if let Err(e) = self.try_operate(i, op) {
            tracing::error!(node = %self.nodes[i].party, "operation failed: {e}");
        }
    }

    fn try_operate(
        &mut self,
        i: usize,
        op: impl FnOnce(&mut NodeCore) -> Result<Output, NodeError>,
    ) -> Result<(), NodeError> {
        let core = self.core(NodeId(i));
        let before = core.commits();
        let result = op(core);
        let delta = core.commits() - before;
        self.commits += delta;
        let out = result?;
        self.absorb(i, out);
        Ok(())
    }

    fn absorb(&mut self, i: usize, out: Output) {
        self.nodes[i].delivery.released(out.frames);
        self.transmit(i);
        for (run_id, flow, outcome) in out.finished {
            self.results
                .finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((i, run_id), outcome.clone());
            self.finished.push(Finished {
                node: NodeId(i),
                run_id,
                flow,
                outcome,
            });
        }
        let slot = &mut self.nodes[i];
        for (run, path) in out.progress {
            slot.observers.entry(run).or_default().push(path);
        }
    }
}
