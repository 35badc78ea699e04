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

use crate::handle::{RawResult, RawResultFuture, ResultSource};
use crate::node::delivery::{Delivery, Sent, Transmit};
use crate::node::{CheckpointDump, HospitalEntry, NodeConfig, NodeCore, NodeError, Output, RunId};
use crate::progress::ProgressStream;
use crate::registry::{NewFlow, Registry, ResponderFn};
use crate::services::Services;
use crate::store::{RedbOptions, RedbStore, SharedMemory, Store};
use crate::{Flow, FlowError, FlowHandle, IdSource, Party, PublicKey, SeededIds, Timestamp};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Mutex, PoisonError};
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

/// Seeded link faults, modelled on TCP connections, for simulations of the
/// re-sending policy (links broken while frames are queued, refusals,
/// reconnects). With any of them set, links are *dialled*: a node's first
/// frames to a peer wait in the link's queue until the next step connects
/// it, and both ends hear that the link came up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    /// Before a step, a random link between two nodes breaks, with this
    /// probability: the frames on it are lost and each end hears that its
    /// link to the other went down. Frames sent while it is down wait in its
    /// queue (as TCP queues them while it redials); the link comes back at
    /// the next redelivery round (or [`MockNetwork::connect`]).
    pub break_link: f64,
    /// Each frame sent to another node is refused (as by a full queue) with
    /// this probability; it stays in the sender's outbox.
    pub refuse: f64,
    /// Frames a link that is not up holds at most; a frame beyond that is
    /// refused. 0: no bound.
    pub queue_limit: usize,
    /// Dial links on first use even with no fault above (a fault turns it
    /// on anyway).
    pub dial: bool,
}

impl LinkFaults {
    fn modelled(&self) -> bool {
        *self != LinkFaults::default()
    }
}

/// The state of the link between two nodes (with [`LinkFaults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Never connected: connects at the next step.
    Dialling,
    /// Carrying frames.
    Up,
    /// Broken: comes back at the next redelivery round.
    Broken,
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

/// The outcomes of flows finished on the network, shared with its handles
/// so that `FlowHandle::result().await` can answer without the network:
/// the network moves only when the test steps it, so a handle never waits,
/// it reports what is known now.
#[derive(Default)]
struct MockResults {
    finished: Mutex<HashMap<(usize, RunId), RawResult>>,
}

/// A handle's view of [`MockResults`] for the flows of one node.
struct MockResultSource {
    results: Arc<MockResults>,
    node: usize,
}

impl ResultSource for MockResultSource {
    fn wait(&self, run: RunId) -> RawResultFuture {
        let known = self
            .results
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(self.node, run))
            .cloned();
        Box::pin(std::future::ready(known.unwrap_or_else(|| {
            Err(FlowError::internal(
                "the flow has not finished yet, and a MockNetwork moves only when the test steps it: \
                 call `net.run_network()` (or `net.step()`) and read the outcome with `net.result(&handle)`",
            ))
        })))
    }
}

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

    /// Makes flow type `F` known to `node`, beside the other versions of
    /// its `NAME` (e.g. to simulate deploying new code before a restart).
    pub fn register_flow<F: Flow>(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.0];
        slot.registry.register_flow::<F>();
        if let Some(core) = slot.core.as_mut() {
            core.registry_mut().register_flow::<F>();
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

    /// Starts `flow` on `node`, committed before this returns (it runs on the
    /// next steps, and survives a restart in between).
    pub fn start_flow<F: Flow>(&mut self, node: NodeId, flow: F) -> FlowHandle<F> {
        self.start(node, flow, None)
    }

    /// Starts `flow` under a client-supplied id: if a flow was already
    /// started with `client_id` on `node`, returns a handle to it and starts
    /// nothing.
    pub fn start_flow_with_client_id<F: Flow>(
        &mut self,
        node: NodeId,
        client_id: &str,
        flow: F,
    ) -> FlowHandle<F> {
        self.start(node, flow, Some(client_id.to_owned()))
    }

    /// A handle to the flow started with `client_id` (running, or finished
    /// with its result kept), e.g. after a restart.
    pub fn reattach<F: Flow>(&mut self, node: NodeId, client_id: &str) -> Option<FlowHandle<F>> {
        let run = self
            .core(node)
            .run_for_client_id(client_id)
            .map_err(|e| tracing::error!("{e}"))
            .ok()??;
        Some(self.handle(node, run))
    }

    fn handle<F>(&mut self, node: NodeId, run: RunId) -> FlowHandle<F> {
        let progress = self.nodes[node.0].observers.entry(run).or_default().clone();
        FlowHandle::new(
            run,
            node.0,
            progress,
            Arc::new(MockResultSource {
                results: self.results.clone(),
                node: node.0,
            }),
        )
    }

    fn start<F: Flow>(
        &mut self,
        node: NodeId,
        flow: F,
        client_id: Option<String>,
    ) -> FlowHandle<F> {
        self.nodes[node.0].registry.register_flow::<F>();
        let now = self.clock;
        let new = NewFlow::new(&flow);
        let core = self.core(node);
        let before = core.commits();
        let started = match new {
            Ok(new) => core.start(now, new, client_id),
            Err(e) => core.record_failed_start(now, F::NAME, e),
        };
        let delta = core.commits() - before;
        self.commits += delta;
        match started {
            Ok((run, out)) => {
                let handle = self.handle(node, run);
                self.absorb(node.0, out);
                handle
            }
            Err(e) => {
                // Only a storage failure gets here; MockNetwork's storage is
                // memory, so this is a bug worth stopping the test for.
                panic!("MockNetwork could not start `{}`: {e}", F::NAME)
            }
        }
    }

    /// The outcome of the flow: `None` while it runs (or waits forever),
    /// then its result, as often as asked.
    pub fn result<F: Flow>(&self, handle: &FlowHandle<F>) -> Option<Result<F::Output, FlowError>> {
        let core = self.nodes[handle.node_index()].core.as_ref()?;
        match core.result(handle.run_id()) {
            Ok(None) => None,
            Ok(Some(Ok(bytes))) => Some(rmp_serde::from_slice(&bytes).map_err(|e| {
                FlowError::internal(format!(
                    "the result of `{}` does not decode as its output type: {e}",
                    F::NAME
                ))
            })),
            Ok(Some(Err(e))) => Some(Err(e)),
            Err(e) => Some(Err(FlowError::internal(e.to_string()))),
        }
    }

    /// Every flow that has finished on `node` so far (responders included),
    /// in order. Kept by the network, so it survives node restarts.
    pub fn finished(&self, node: NodeId) -> Vec<Finished> {
        self.finished
            .iter()
            .filter(|f| f.node == node)
            .cloned()
            .collect()
    }

    /// Forgets a finished flow's result. `true` if there was one.
    pub fn remove_result<F>(&mut self, handle: &FlowHandle<F>) -> bool {
        let now = self.clock;
        let node = NodeId(handle.node_index());
        self.results
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(node.0, handle.run_id()));
        self.core(node)
            .remove_result(now, handle.run_id())
            .unwrap_or(false)
    }

    /// Crashes `node` (drops its in-memory state, open database, pending
    /// work) and starts it again from its database. Frames in flight stay in
    /// flight; the node redelivers its unacknowledged messages.
    pub fn restart_node(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.0];
        slot.core = None;
        if let Some(store) = slot.store.take()
            && let Err(e) = store.sync()
        {
            tracing::error!("MockNetwork: {e}");
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

    /// Breaks the link between `a` and `b` (with or without [`LinkFaults`]):
    /// the frames on it are lost, each end hears that its link to the other
    /// went down, and frames sent meanwhile wait in the link's queue until
    /// [`connect`](Self::connect) or the next redelivery round brings it
    /// back. Turns link modelling on.
    pub fn disconnect(&mut self, a: NodeId, b: NodeId) {
        if a == b {
            return;
        }
        if !self.link_faults.modelled() {
            self.link_faults.dial = true;
        }
        let pair = (a.0.min(b.0), a.0.max(b.0));
        if self.links.get(&pair) == Some(&LinkState::Broken) {
            return;
        }
        self.links.insert(pair, LinkState::Broken);
        self.stats.links_broken += 1;
        let (ka, kb) = (*self.nodes[a.0].party.key(), *self.nodes[b.0].party.key());
        let before = self.in_flight.len();
        self.in_flight
            .retain(|m| !((m.from == ka && m.to == kb) || (m.from == kb && m.to == ka)));
        self.stats.dropped += (before - self.in_flight.len()) as u64;
        for (end, peer) in [(a.0, kb), (b.0, ka)] {
            let outbox = self.nodes[end]
                .core
                .as_ref()
                .and_then(|c| c.unacked_frames().map_err(|e| tracing::error!("{e}")).ok());
            self.nodes[end].delivery.disconnected(peer, outbox);
        }
    }

    /// Brings the link between `a` and `b` up: the frames its queue held go
    /// out, and each end hears that the link came up (and re-sends what the
    /// link may have lost).
    pub fn connect(&mut self, a: NodeId, b: NodeId) {
        let pair = (a.0.min(b.0), a.0.max(b.0));
        if a == b || self.links.get(&pair) == Some(&LinkState::Up) {
            return;
        }
        self.links.insert(pair, LinkState::Up);
        for direction in [(a.0, b.0), (b.0, a.0)] {
            if let Some(held) = self.held.remove(&direction) {
                self.in_flight.extend(held);
            }
        }
        for (end, peer) in [(a.0, b.0), (b.0, a.0)] {
            let key = *self.nodes[peer].party.key();
            let outbox = if self.nodes[end].delivery.has_losses(&key) {
                match self.nodes[end].core.as_ref().map(NodeCore::unacked_frames) {
                    Some(Ok(outbox)) => outbox,
                    Some(Err(e)) => {
                        tracing::error!("{e}");
                        continue;
                    }
                    None => continue,
                }
            } else {
                Vec::new()
            };
            self.nodes[end].delivery.connected(key, outbox);
            self.transmit(end);
        }
    }

    /// Steps until idle.
    pub fn run_network(&mut self) {
        while self.step() {}
    }

    // ----------------------------------------------------------- operators

    /// Makes `node` stop (or resume) taking new flows and sessions.
    pub fn set_draining(&mut self, node: NodeId, draining: bool) {
        self.nodes[node.0].draining = draining;
        self.core(node).set_draining(draining);
    }

    /// Flows with a checkpoint on `node`; 0 once a draining node is done.
    pub fn flows_in_flight(&mut self, node: NodeId) -> u64 {
        self.core(node).flows_in_flight().unwrap_or(u64::MAX)
    }

    /// Kills a flow on `node`: counterparties told, checkpoint removed,
    /// result set to a `Killed` error.
    pub fn kill_flow(&mut self, node: NodeId, run: RunId) -> Result<(), NodeError> {
        let now = self.clock;
        self.try_operate(node.0, |c| c.kill(now, run))
    }

    /// Lets a hospitalised flow on `node` run again.
    pub fn retry_flow(&mut self, node: NodeId, run: RunId) -> Result<(), NodeError> {
        let now = self.clock;
        self.try_operate(node.0, |c| c.retry(now, run))
    }

    /// Flows in `node`'s hospital.
    pub fn hospital(&mut self, node: NodeId) -> Vec<HospitalEntry> {
        self.core(node).hospital().unwrap_or_default()
    }

    /// The operator's checkpoint dump of `node`.
    pub fn dump(&mut self, node: NodeId) -> Vec<CheckpointDump> {
        let now = self.clock;
        self.core(node).dump(now).unwrap_or_default()
    }

    /// The dump as JSON.
    pub fn dump_json(&mut self, node: NodeId) -> String {
        let now = self.clock;
        self.core(node)
            .dump_json(now)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Logs (and returns) the flows on `node` waiting longer than the
    /// configured `long_wait_warning`.
    pub fn warn_long_waits(&mut self, node: NodeId) -> Vec<RunId> {
        let now = self.clock;
        let limit = self.config.long_wait_warning;
        self.core(node)
            .warn_long_waits(now, limit)
            .unwrap_or_default()
    }

    /// Overwrites a checkpoint's state bytes (repair tool; tests use it to
    /// simulate corruption).
    pub fn replace_checkpoint_state(
        &mut self,
        node: NodeId,
        run: RunId,
        state: Vec<u8>,
    ) -> Result<(), NodeError> {
        let now = self.clock;
        self.try_operate(node.0, |c| c.replace_checkpoint_state(now, run, state))
    }

    /// Direct access to a node's engine, for checks the wrappers above do not
    /// cover.
    pub fn node_core(&mut self, node: NodeId) -> &mut NodeCore {
        self.core(node)
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

    /// Puts every frame node `i`'s delivery has queued on the network,
    /// through the link model if it is on, and reports to the delivery what
    /// the network took.
    fn transmit(&mut self, i: usize) {
        let from = *self.nodes[i].party.key();
        while let Some(Transmit { to, frame, receipt }) = self.nodes[i].delivery.poll_transmit() {
            let sent = self.offer(i, InFlight { from, to, frame });
            if sent == Sent::Refused {
                self.stats.refused += 1;
            }
            self.nodes[i].delivery.report(receipt, sent);
        }
    }

    /// What the network does with a frame node `i` sends.
    fn offer(&mut self, i: usize, msg: InFlight) -> Sent {
        let peer = self.by_key.get(&msg.to).copied();
        let Some(j) = peer.filter(|&j| j != i && self.link_faults.modelled()) else {
            self.in_flight.push_back(msg);
            return Sent::Accepted;
        };
        if self.link_faults.refuse > 0.0 && self.chance(self.link_faults.refuse) {
            return Sent::Refused;
        }
        let pair = (i.min(j), i.max(j));
        let state = *self.links.entry(pair).or_insert(LinkState::Dialling);
        if state == LinkState::Up {
            self.in_flight.push_back(msg);
            return Sent::Accepted;
        }
        let limit = self.link_faults.queue_limit;
        let held = self.held.entry((i, j)).or_default();
        if limit > 0 && held.len() >= limit {
            return Sent::Refused;
        }
        held.push_back(msg);
        Sent::Accepted
    }
}
