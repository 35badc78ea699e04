//! The relay between the gateway's peer links and the workers' partition
//! nodes, through two PostgreSQL queues: `flow_inbox` (frames from peers,
//! tagged with their partition) and `flow_emitted` (frames for peers).
//!
//! [`RelayTransport`] is the [`Transport`] of a partition's node inside a
//! worker: what the node sends goes to `flow_emitted` (one writer thread per
//! worker batches every partition's frames into one `INSERT`), and what the
//! gateway put in `flow_inbox` for the partition arrives on the node's
//! incoming queue (one reader thread per worker, woken by `NOTIFY`, polling
//! every 100 ms as well in case a notification was missed).
//!
//! # An inbound row lives until the commit that applied it
//!
//! The reader does not delete what it reads: it hands each row's frame to
//! the partition's queue and notes the row's id in the partition's
//! [`InboxLedger`]; the partition's fenced store deletes the rows the node
//! has consumed in its next commit, the same transaction as the
//! checkpoints, outbox entries and acks that handling them produced (see
//! [`Fence`](crate::store::Fence)). Which rows the node has consumed is
//! read off the queue itself: the queue is FIFO and only the reader sends
//! to it, so of the ids handed, all but the last `queued` (frames still in
//! the queue) have been taken by the node's event loop. The event loop
//! handles the frames it takes and commits them before it takes more (one
//! group commit per batch of frames; acks are not deferred on partition
//! nodes), so at a commit every taken frame has been applied by it or an
//! earlier commit, or needed no change at all (a duplicate): such rows are
//! deleted by the next commit, or by the worker's next lease round (an
//! empty commit run on the event loop, between batches). A worker killed
//! or fenced at any point thus leaves each row either applied and deleted,
//! or unapplied and still queued: the partition's next holder reads every
//! row left, from the start.
//!
//! The queues may still lose frames (a server crash empties the unlogged
//! tables, the gateway drops frames when its writer is behind) and deliver
//! them late; the session protocol, which every partition node runs
//! unchanged, makes that exactly-once: unacknowledged messages stay in the
//! sender's durable outbox and its delivery sends them again.

use super::control::{Control, pg_err};
use crate::PublicKey;
use crate::store::ConsumedFrames;
use crate::store::StoreError;
use crate::tcp::NetworkMap;
use crate::transport::{
    Incoming, IncomingLimits, IncomingSender, SendError, Transport, TransportEvent,
};
use postgres::Client;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;
use tokio::sync::broadcast;

/// Frames a partition node may have queued for the writer.
const OUTBOUND_QUEUE: usize = 65_536;
/// A partition node's incoming queue.
const INCOMING_QUEUE: usize = 16_384;
/// Frames moved per statement.
const BATCH: usize = 2_000;
/// How often the queues are polled when no notification comes.
const POLL: Duration = Duration::from_millis(100);

/// The `NOTIFY` channel of a node's queue `kind` (`inbox`, `emitted`),
/// within PostgreSQL's 63-byte limit on names.
pub(crate) fn channel(schema: &str, kind: &str) -> String {
    let mut name = format!("flow/{kind}/{schema}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// The partitions this worker holds: where the reader hands their frames.
pub(crate) type Routes = Arc<Mutex<HashMap<u32, Arc<InboxLedger>>>>;

/// One partition node's incoming queue and the inbox rows handed to it:
/// which of them the node has consumed (deleted with its next commit, see
/// the [module docs](self)), and where the reader continues.
pub(crate) struct InboxLedger {
    /// The node's incoming queue; only [`hand`](Self::hand) sends to it.
    queue: IncomingSender,
    rows: Mutex<LedgerRows>,
}

#[derive(Default)]
struct LedgerRows {
    /// Ids of rows handed to the queue, oldest first, not known taken yet.
    handed: VecDeque<i64>,
    /// Ids of rows the node has taken (or that were unusable), not yet
    /// deleted by a commit.
    taken: Vec<i64>,
    /// The highest id handed or skipped: the reader reads past it.
    cursor: i64,
}

impl InboxLedger {
    /// A ledger for a fresh queue; its receiving end is the node's.
    pub(crate) fn new() -> (Arc<Self>, Incoming) {
        Self::with_capacity(INCOMING_QUEUE)
    }

    /// [`new`](Self::new) with a queue of `capacity` frames.
    pub(crate) fn with_capacity(capacity: usize) -> (Arc<Self>, Incoming) {
        let (queue, incoming) = crate::transport::incoming::channel(IncomingLimits {
            frames: capacity,
            ..IncomingLimits::default()
        });
        let ledger = Self {
            queue,
            rows: Mutex::new(LedgerRows::default()),
        };
        (Arc::new(ledger), incoming)
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, LedgerRows> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id the reader continues after.
    pub(crate) fn cursor(&self) -> i64 {
        self.rows().cursor
    }

    /// Hands row `id`'s frame to the node; `false` if its queue is full
    /// (the row stays unread, and is handed again at the next read).
    pub(crate) fn hand(&self, id: i64, peer: PublicKey, frame: Vec<u8>) -> bool {
        let mut rows = self.rows();
        if id <= rows.cursor {
            return true;
        }
        match self.queue.try_send(peer, frame) {
            Ok(()) => {
                rows.handed.push_back(id);
                rows.cursor = id;
                true
            }
            Err(_) => false,
        }
    }

    /// Row `id` cannot be used (it does not name a peer): the next commit
    /// deletes it unread.
    pub(crate) fn skip(&self, id: i64) {
        let mut rows = self.rows();
        if id > rows.cursor {
            rows.taken.push(id);
            rows.cursor = id;
        }
    }
}

impl ConsumedFrames for InboxLedger {
    fn pending(&self) -> Vec<i64> {
        let mut rows = self.rows();
        // Only `hand` sends (under this lock), so the queue holds exactly
        // the last `queued` ids handed; the node took the others.
        let queued = self.queue.queued();
        let took = rows.handed.len().saturating_sub(queued);
        let newly: Vec<i64> = rows.handed.drain(..took).collect();
        rows.taken.extend(newly);
        rows.taken.clone()
    }

    fn committed(&self, ids: &[i64]) {
        let mut rows = self.rows();
        let n = ids.len().min(rows.taken.len());
        debug_assert_eq!(&rows.taken[..n], &ids[..n]);
        rows.taken.drain(..n);
    }
}

/// A partition node's transport inside a worker: frames it sends go to
/// `flow_emitted` for the gateway, frames the gateway routed to the
/// partition arrive on its incoming queue. Either may be lost; the
/// partition's delivery re-sends (see the [scale-out docs](super)).
pub struct RelayTransport {
    partition: u32,
    outbound: mpsc::SyncSender<(PublicKey, Vec<u8>)>,
    map: Arc<NetworkMap>,
    routes: Routes,
    /// Never sends: the gateway owns the links, and the partition's
    /// delivery re-sends at its ticks.
    events: broadcast::Sender<TransportEvent>,
}

impl std::fmt::Debug for RelayTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTransport")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl Transport for RelayTransport {
    fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError> {
        match self.outbound.try_send((*to, frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(_)) => Err(SendError::QueueFull(self.peer_name(to))),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(SendError::ShutDown),
        }
    }

    fn disconnect(&self, peer: &PublicKey, reason: &str) {
        tracing::warn!(peer = %self.peer_name(peer), partition = self.partition, %reason,
            "a peer sent a frame this node cannot use (the gateway holds the link)");
    }

    fn peer_name(&self, peer: &PublicKey) -> String {
        self.map
            .by_key(peer)
            .map_or_else(|| hex::encode(peer.0), |e| e.name.clone())
    }

    fn endpoint(&self) -> String {
        format!(
            "scale-out partition {} (through the gateway)",
            self.partition
        )
    }

    fn link_events(&self) -> broadcast::Receiver<TransportEvent> {
        self.events.subscribe()
    }

    async fn shutdown(&self) {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.partition);
    }
}

/// A worker's two relay threads and what partition transports share.
pub(crate) struct WorkerRelay {
    outbound: mpsc::SyncSender<(PublicKey, Vec<u8>)>,
    routes: Routes,
    map: Arc<NetworkMap>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerRelay {
    /// Starts the writer and the reader, each on a connection of its own.
    pub(crate) fn start(control: &Control, map: NetworkMap) -> Result<Self, StoreError> {
        let (outbound, frames) = mpsc::sync_channel(OUTBOUND_QUEUE);
        let routes: Routes = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer_client = control.reconnect()?;
        let mut reader_client = control.reconnect()?;
        let emitted = channel(&control.schema, "emitted");
        let inbox = channel(&control.schema, "inbox");
        let config = control.config.clone();
        let writer = std::thread::Builder::new()
            .name("scale-out-writer".into())
            .spawn(move || {
                while let Ok(first) = frames.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match frames.try_recv() {
                            Ok(f) => batch.push(f),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = push_emitted(&mut writer_client, &emitted, &batch) {
                        tracing::warn!(error = %e.0, frames = batch.len(),
                            "frames for peers not handed to the gateway; the partitions re-send them");
                        if writer_client.is_closed() {
                            match super::control::connect_patiently(&config) {
                                Ok(c) => writer_client = c,
                                Err(e) => tracing::error!(error = %e.0, "the relay writer cannot reconnect"),
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError(format!("cannot start the relay writer: {e}")))?;
        let (r, s) = (routes.clone(), stop.clone());
        let config = control.config.clone();
        let reader = std::thread::Builder::new()
            .name("scale-out-reader".into())
            .spawn(move || {
                let mut listening = false;
                while !s.load(Ordering::Relaxed) {
                    if !listening {
                        listening = reader_client
                            .batch_execute(&format!("LISTEN {}", crate::store::quote_ident(&inbox)))
                            .is_ok();
                    }
                    wait_for_notification(&mut reader_client);
                    if let Err(e) = take_inbox(&mut reader_client, &r) {
                        tracing::warn!(error = %e.0, "cannot read frames from the gateway; retrying");
                        if reader_client.is_closed() {
                            listening = false;
                            match super::control::connect_patiently(&config) {
                                Ok(c) => reader_client = c,
                                Err(e) => tracing::error!(error = %e.0, "the relay reader cannot reconnect"),
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError(format!("cannot start the relay reader: {e}")))?;
        Ok(Self {
            outbound,
            routes,
            map: Arc::new(map),
            stop,
            threads: vec![writer, reader],
        })
    }

    /// A transport for `partition`'s node, its incoming queue (frames for
    /// the partition go there from now on, starting with the oldest row
    /// queued for it), and the ledger of the rows it consumes, for its
    /// store's fence.
    pub(crate) fn transport(&self, partition: u32) -> (RelayTransport, Incoming, Arc<InboxLedger>) {
        let (ledger, rx) = InboxLedger::new();
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, ledger.clone());
        let (events, _) = broadcast::channel(1);
        (
            RelayTransport {
                partition,
                outbound: self.outbound.clone(),
                map: self.map.clone(),
                routes: self.routes.clone(),
                events,
            },
            rx,
            ledger,
        )
    }

    /// Stops the reader (the writer ends when the last transport is gone).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.outbound);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits up to [`POLL`] for a notification, then drops any others pending.
pub(crate) fn wait_for_notification(client: &mut Client) {
    use postgres::fallible_iterator::FallibleIterator;
    let mut notifications = client.notifications();
    let _ = notifications.timeout_iter(POLL).next();
    let mut pending = notifications.iter();
    while let Ok(Some(_)) = pending.next() {}
}

/// Appends `frames` to `flow_emitted` and wakes the gateway: one statement.
fn push_emitted(
    client: &mut Client,
    channel: &str,
    frames: &[(PublicKey, Vec<u8>)],
) -> Result<(), StoreError> {
    let peers: Vec<&[u8]> = frames.iter().map(|(p, _)| &p.0[..]).collect();
    let bodies: Vec<&[u8]> = frames.iter().map(|(_, f)| &f[..]).collect();
    client
        .execute(
            "WITH queued AS (INSERT INTO flow_emitted (peer, frame) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[]) RETURNING 1) \
             SELECT pg_notify($3, '') FROM (SELECT count(*) FROM queued) AS n",
            &[&peers, &bodies, &channel],
        )
        .map_err(|e| pg_err("cannot queue frames for the gateway", &e))?;
    Ok(())
}

/// Hands the rows waiting for this worker's partitions to their nodes, in
/// the order the gateway queued them, each partition from past its cursor.
/// Deletes nothing: each partition's next commit deletes what its node
/// consumed (see the [module docs](self)).
pub(crate) fn take_inbox(client: &mut Client, routes: &Routes) -> Result<(), StoreError> {
    loop {
        let held: HashMap<u32, Arc<InboxLedger>> = routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(p, l)| (*p, l.clone()))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let partitions: Vec<i32> = held.keys().map(|p| *p as i32).collect();
        let cursors: Vec<i64> = held.values().map(|l| l.cursor()).collect();
        let rows = client
            .query(
                "SELECT i.id, i.partition, i.peer, i.frame FROM flow_inbox i \
                 JOIN unnest($1::integer[], $2::bigint[]) AS c(partition, after) \
                   ON i.partition = c.partition AND i.id > c.after \
                 ORDER BY i.id LIMIT $3",
                &[&partitions, &cursors, &(BATCH as i64)],
            )
            .map_err(|e| pg_err("cannot read frames from the inbox", &e))?;
        let read = rows.len();
        let mut full: HashSet<u32> = HashSet::new();
        for row in rows {
            let id: i64 = row.get(0);
            let partition = u32::try_from(row.get::<_, i32>(1)).unwrap_or(u32::MAX);
            let peer: Vec<u8> = row.get(2);
            let frame: Vec<u8> = row.get(3);
            let Some(ledger) = held.get(&partition) else {
                continue;
            };
            if full.contains(&partition) {
                continue;
            }
            let Ok(peer) = <[u8; 32]>::try_from(peer.as_slice()) else {
                tracing::warn!(
                    partition,
                    "an inbox row whose peer is not a 32-byte key; deleted unread"
                );
                ledger.skip(id);
                continue;
            };
            // A full queue: the partition's rows wait for the next read.
            if !ledger.hand(id, PublicKey(peer), frame) {
                tracing::debug!(
                    partition,
                    "a partition's queue is full; its frames wait in the inbox"
                );
                full.insert(partition);
            }
        }
        if read < BATCH || !full.is_empty() {
            return Ok(());
        }
    }
}
