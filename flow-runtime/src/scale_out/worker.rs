//! [`Worker`]: one worker process of a scale-out node. It claims a fair
//! share of the node's partitions (leases), runs each claimed partition as
//! an ordinary node (the node core, its event loop and its delivery,
//! unchanged) on the partition's fenced store and the relay transport, starts
//! the flows clients asked for, and gives a partition up when its lease is
//! lost or other workers need a share.

use super::control::{Control, pg_err};
use super::lease::{self, Lease};
use super::relay::{RelayTransport, WorkerRelay};
use super::routing::{PartitionIds, responder_share};
use crate::Party;
use crate::registry::NewFlow;
use crate::runner::admin::Startable;
use crate::runner::{Node, NodeBuilder};
use crate::store::{Fence, PostgresOptions, PostgresStore, Store, StoreError, WriteBatch};
use crate::tcp::NetworkMap;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a worker looks for start requests.
const START_POLL: Duration = Duration::from_millis(50);
/// How long a lease round waits for a partition's node to take the flush
/// of consumed inbox rows.
const FLUSH_WAIT: Duration = Duration::from_millis(200);

/// Builds a partition's node: registers the flows, responders, startable
/// flows and services, as for a single node. Called once per claimed
/// partition.
pub type Configure = Arc<dyn Fn(&mut NodeBuilder<RelayTransport>) + Send + Sync>;

/// A worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The worker's name, unique among the node's workers (in leases and
    /// log lines).
    pub name: String,
    /// How long a claimed partition stays this worker's without renewal
    /// (default 10 s): after a crash, its partitions wait this long for a
    /// new worker. Renewed every quarter of it.
    pub lease: Duration,
    /// The node's partition count, fixed when the node is first set up
    /// (default 8; a later different value is refused).
    pub partitions: u32,
    /// Where dumps of partition nodes are written (each beside
    /// `<dir>/partition-<n>`).
    pub dump_dir: PathBuf,
}

impl WorkerSettings {
    /// Defaults for a worker called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            lease: Duration::from_secs(10),
            partitions: super::DEFAULT_PARTITIONS,
            dump_dir: std::env::temp_dir(),
        }
    }
}

/// A partition this worker runs.
struct Held {
    lease: Lease,
    node: Node<RelayTransport>,
    /// The node's fenced store (for [`Worker::flush_consumed`]).
    store: Arc<PostgresStore>,
    /// The flows start requests may name.
    startable: Startable,
}

/// One worker process of a scale-out node (see the [module docs](super)).
pub struct Worker {
    control: Control,
    party: Party,
    settings: WorkerSettings,
    configure: Configure,
    relay: Option<WorkerRelay>,
    held: BTreeMap<u32, Held>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.settings.name)
            .field("held", &self.held.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Connects to the node's control schema `connection` (setting it up
    /// if new) and starts the relay. `party` is the node's identity (the
    /// gateway holds its key), `map` names peers. Call from a thread that
    /// is not a tokio runtime's; partition nodes run on `runtime`.
    pub fn new(
        connection: &str,
        party: Party,
        map: NetworkMap,
        settings: WorkerSettings,
        configure: Configure,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, StoreError> {
        let control = Control::connect(connection, settings.partitions)?;
        let relay = WorkerRelay::start(&control, map)?;
        Ok(Self {
            control,
            party,
            settings,
            configure,
            relay: Some(relay),
            held: BTreeMap::new(),
            runtime,
        })
    }

    /// Runs until `stop` is set: heartbeat, renew, give up lost or surplus
    /// partitions, claim a fair share, take start requests, every quarter
    /// of the lease. Then stops its partition nodes and releases their
    /// leases, so other workers take them over at once.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), StoreError> {
        let every = self.settings.lease / 4;
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            if let Err(e) = self.round() {
                tracing::warn!(worker = %self.settings.name, error = %e.0, "a lease round failed; retrying");
                if self.control.client.is_closed()
                    && let Ok(client) = self.control.reconnect()
                {
                    self.control.client = client;
                }
            }
            // Start requests are looked for more often than leases are
            // renewed: a client waits for them.
            while !stop.load(Ordering::Relaxed) && began.elapsed() < every {
                std::thread::sleep(START_POLL.min(every));
                if let Err(e) = self.take_start_requests() {
                    tracing::warn!(worker = %self.settings.name, error = %e.0, "cannot take start requests; retrying");
                    break;
                }
            }
        }
        let partitions: Vec<u32> = self.held.keys().copied().collect();
        for p in partitions {
            self.give_up(p, true);
        }
        let _ = lease::leave(&mut self.control.client, &self.settings.name);
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
        tracing::info!(worker = %self.settings.name, "worker stopped");
        Ok(())
    }

    /// The partitions this worker holds now.
    pub fn held(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    fn round(&mut self) -> Result<(), StoreError> {
        let ttl = self.settings.lease;
        let alive = lease::heartbeat(&mut self.control.client, &self.settings.name, ttl)?;
        let leases: Vec<Lease> = self.held.values().map(|h| h.lease).collect();
        let kept = lease::renew(&mut self.control.client, &leases, ttl)?;
        for l in leases {
            if !kept.contains(&l) {
                tracing::warn!(worker = %self.settings.name, partition = l.partition,
                    "lost the lease on a partition (it expired); stopping its node");
                self.give_up(l.partition, false);
            }
        }
        let stopped: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.node.is_stopped())
            .map(|(p, _)| *p)
            .collect();
        for p in stopped {
            tracing::warn!(worker = %self.settings.name, partition = p,
                "a partition's node stopped by itself; releasing the partition");
            self.give_up(p, true);
        }
        self.flush_consumed();
        let share = self.control.partitions.div_ceil(alive) as usize;
        while self.held.len() > share {
            let Some(&p) = self.held.keys().next_back() else {
                break;
            };
            tracing::info!(worker = %self.settings.name, partition = p, workers = alive,
                "handing a partition over for a fair share");
            self.give_up(p, true);
        }
        while self.held.len() < share {
            let Some(claimed) = lease::claim(&mut self.control.client, &self.settings.name, ttl)?
            else {
                break;
            };
            match self.start_partition(claimed) {
                Ok((node, store, startable)) => {
                    tracing::info!(worker = %self.settings.name, partition = claimed.partition,
                        token = claimed.token, "claimed a partition");
                    self.held.insert(
                        claimed.partition,
                        Held {
                            lease: claimed,
                            node,
                            store,
                            startable,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(worker = %self.settings.name, partition = claimed.partition,
                        error = %e, "cannot start a claimed partition; releasing it");
                    let _ = lease::release(&mut self.control.client, claimed);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Commits, on each partition's event loop (between two batches of
    /// frames, so every frame its node took is handled), the deletion of
    /// inbox rows consumed without changing anything (duplicates): the
    /// commits of steps delete the others.
    fn flush_consumed(&self) {
        for (p, held) in &self.held {
            let store = held.store.clone();
            let flush = held
                .node
                .call(move |_, _| (store.commit(WriteBatch::default()), None));
            // A busy node takes the job later; the round (and the renewal
            // of the leases) does not wait for it.
            let flushed = self
                .runtime
                .block_on(async { tokio::time::timeout(FLUSH_WAIT, flush).await });
            match flushed {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(partition = p, error = %e.0, "cannot delete consumed inbox rows; the next commit does")
                }
                Ok(Err(e)) => {
                    tracing::debug!(partition = p, error = %e, "a partition's node did not take the flush")
                }
                Err(_) => {
                    tracing::debug!(
                        partition = p,
                        "a partition's node is busy; it flushes when it gets to it"
                    )
                }
            }
        }
    }

    /// Opens `lease`'s partition on its fenced store and starts its node.
    fn start_partition(
        &mut self,
        lease: Lease,
    ) -> Result<(Node<RelayTransport>, Arc<PostgresStore>, Startable), String> {
        let p = lease.partition;
        let relay = self
            .relay
            .as_ref()
            .ok_or_else(|| "the relay has stopped".to_owned())?;
        let (transport, incoming, ledger) = relay.transport(p);
        let fence = Fence {
            control_schema: self.control.schema.clone(),
            partition: p as i32,
            token: lease.token,
            consumed: Some(ledger),
        };
        let store = Arc::new(
            PostgresStore::open_with(
                self.control.partition_config(p),
                PostgresOptions::default(),
                Some(fence),
            )
            .map_err(|e| e.0)?,
        );
        let mut builder = NodeBuilder::with_transport(
            self.party.clone(),
            self.settings.dump_dir.join(format!("partition-{p}")),
            transport,
            incoming,
        );
        (self.configure)(&mut builder);
        // The responder bound is the node's: each partition admits its
        // share of it (see `responder_share`).
        let config = &mut builder.node_config;
        config.max_responders_per_peer =
            responder_share(config.max_responders_per_peer, p, self.control.partitions);
        // Every batch of frames commits at once (acks too): a frame's inbox
        // row is deleted with the commit of its batch (see the relay).
        builder.defer_ack_commits(false);
        builder.custom_store = Some(store.clone());
        builder.session_ids = Some(Box::new(PartitionIds {
            partition: p,
            partitions: self.control.partitions,
        }));
        let startable = std::mem::take(&mut builder.startable);
        let node = self
            .runtime
            .block_on(builder.start())
            .map_err(|e| e.to_string())?;
        Ok((node, store, startable))
    }

    /// Stops partition `p`'s node; with `release`, gives its lease up at
    /// once (a lost lease is not ours to release).
    fn give_up(&mut self, p: u32, release: bool) {
        let Some(Held { lease, node, .. }) = self.held.remove(&p) else {
            return;
        };
        if let Err(e) = self.runtime.block_on(node.shutdown()) {
            tracing::warn!(partition = p, error = %e, "a partition's node stopped with an error");
        }
        drop(node);
        if release && let Err(e) = lease::release(&mut self.control.client, lease) {
            tracing::warn!(partition = p, error = %e.0, "cannot release a lease; it expires instead");
        }
    }

    /// Starts the flows clients queued for the partitions held, each under
    /// its client id (so a request taken twice starts one flow), all of a
    /// partition's in ONE commit, and removes the requests once started.
    fn take_start_requests(&mut self) -> Result<(), StoreError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held: Vec<i32> = self.held.keys().map(|p| *p as i32).collect();
        let rows = self
            .control
            .client
            .query(
                "SELECT client_id, partition, flow, args FROM flow_starts \
                 WHERE partition = ANY($1) ORDER BY client_id LIMIT 1000",
                &[&held],
            )
            .map_err(|e| pg_err("cannot read start requests", &e))?;
        let mut done: Vec<String> = Vec::new();
        let mut batches: BTreeMap<u32, Vec<(String, NewFlow)>> = BTreeMap::new();
        for row in rows {
            let (client_id, partition, flow, args): (String, i32, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let Some(held) = self.held.get(&(partition as u32)) else {
                continue;
            };
            let refused = match serde_json::from_str(&args) {
                Err(e) => format!("the arguments are not JSON: {e}"),
                Ok(args) => match held.startable.build(&flow, args) {
                    None => "no flow of that name is startable".into(),
                    Some(Err(why)) => why,
                    Some(Ok(new)) => {
                        batches
                            .entry(partition as u32)
                            .or_default()
                            .push((client_id, new));
                        continue;
                    }
                },
            };
            tracing::error!(%client_id, %flow, why = %refused, "a start request cannot be served; removed");
            done.push(client_id);
        }
        for (partition, batch) in batches {
            let Some(held) = self.held.get(&partition) else {
                continue;
            };
            let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            let flows: Vec<(NewFlow, Option<String>)> =
                batch.into_iter().map(|(id, new)| (new, Some(id))).collect();
            let call = held
                .node
                .call(move |core, now| match core.start_many(now, flows) {
                    Ok((_, out)) => (Ok(()), Some(out)),
                    Err(e) => (Err(e.to_string()), None),
                });
            let why = match self.runtime.block_on(call) {
                Ok(Ok(())) => {
                    done.extend(ids);
                    continue;
                }
                Ok(Err(why)) => why,
                Err(e) => e.to_string(),
            };
            tracing::warn!(partition, requests = ids.len(), %why, "start requests failed; retried later");
        }
        if !done.is_empty() {
            self.control
                .client
                .execute(
                    "DELETE FROM flow_starts WHERE client_id = ANY($1)",
                    &[&done],
                )
                .map_err(|e| pg_err("cannot remove served start requests", &e))?;
        }
        Ok(())
    }
}
