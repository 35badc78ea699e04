//! [`TcpTransport`]: listens for peers, dials peers, and moves opaque frames
//! between this node and every other party in the network map.
//!
//! Connections are one-way for data: a node sends to a peer only over the
//! connection it dialled to that peer, and receives from a peer only over
//! connections that peer dialled. Two nodes therefore hold two connections
//! between them, and there is never a race over who keeps which socket when
//! both dial at once.
//!
//! Delivery is in order within a connection and at least once overall from
//! the node's point of view only if the node re-sends: a frame handed to
//! [`TcpTransport::send`] is kept until it has been written to a connection
//! (and is written again on the next connection if the write failed), but a
//! frame written just before a connection dropped may be lost with it. The
//! node's session protocol (sequence numbers, acks, redelivery of its
//! durable outbox) turns that into exactly-once processing.
//!
//! One idea in one file, longer than most: the connections of one
//! transport (dialling, accepting, the per-peer send queue, the reader and
//! writer tasks and the events they report) share their state and are read
//! together; the record format and the handshake are in their own files.

use super::handshake::{self, HandshakeError, LocalIdentity, is_oversized};
use super::network_map::{NetworkMap, PeerEntry};
use super::records::{
    FRAME_PREFIX, MAX_HANDSHAKE_RECORD, PACK_LIMIT, RecordCodec, WireError, frames,
    max_record_plain, open_record, push_frame, seal_into, sealed_len,
};
use crate::PublicKey;
use crate::transport::incoming::{self, IncomingRefused};
use crate::transport::{
    Incoming, IncomingLimits, IncomingSender, SendError, Transport, TransportEvent,
};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, broadcast, mpsc};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Tuning knobs. The defaults suit a node on a LAN or the internet; tests
/// shorten the timeouts.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// The largest frame accepted or sent, in bytes (default 16 MiB). A peer
    /// announcing a larger record is disconnected before the record is read.
    pub max_frame_len: usize,
    /// Frames queued per peer before `send` waits and `try_send` refuses
    /// (default 16,384). Memory is bounded by
    /// [`peer_queue_bytes`](Self::peer_queue_bytes); this count is high
    /// enough that one group commit's burst to a peer (a frame for each of
    /// a thousand flows, and their acks) is queued whole: a frame refused
    /// here waits for the next redelivery tick, and at 1,024 frames that
    /// wait cut a thousand concurrent flows' round trips to about 40%.
    pub peer_queue_len: usize,
    /// Bytes of frames queued per peer, not yet written to its connection,
    /// before `send` waits and `try_send` refuses (default 64 MiB; never
    /// less than `max_frame_len`, so any frame fits an empty queue). A peer
    /// that stops reading, or cannot be reached, holds at most this much of
    /// the node's memory; what `try_send` refuses stays in the node's
    /// durable outbox and is re-sent later.
    pub peer_queue_bytes: usize,
    /// Received frames queued for the node before connections stop reading
    /// (default 1,024): a slow node slows its peers down instead of
    /// buffering without bound.
    pub incoming_queue_len: usize,
    /// Bytes of received frames queued for the node, all peers together,
    /// before connections stop reading (default 64 MiB; each frame is
    /// charged its length plus
    /// [`FRAME_OVERHEAD`](crate::transport::incoming::FRAME_OVERHEAD);
    /// never less than `incoming_peer_bytes`). A connection that finds no
    /// room waits before it decrypts (or allocates) the frame, so the peer's
    /// TCP window fills and the peer slows down; the frames it already sent
    /// wait in the kernel's socket buffers, not in the node.
    pub incoming_queue_bytes: usize,
    /// Bytes of received frames one peer may have queued for the node
    /// (default 16 MiB, a quarter of `incoming_queue_bytes`; never less
    /// than one frame of `max_frame_len`). So a single peer flooding the
    /// node cannot take the whole queue: the others keep room even while
    /// the node reads nothing, and when several peers fill it together
    /// they are served in turn (see [`crate::transport::incoming`]).
    pub incoming_peer_bytes: usize,
    /// How long a TCP connect may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long the Noise handshake may take, both directions (default
    /// 3 s; a handshake is three small messages, one and a half round
    /// trips). Bounds how long a silent or slow client holds a handshake
    /// slot.
    pub handshake_timeout: Duration,
    /// Inbound handshakes in progress at once from addresses that are not
    /// in the network map (default 128). A connection beyond it is closed
    /// at once, before a byte is read. Handshakes from the host of a party
    /// in the map (its address, when written as an IP address) do not
    /// count here, so strangers filling this cap cannot lock real peers
    /// out; they are bounded per address instead.
    pub max_handshakes: usize,
    /// Inbound handshakes in progress at once from one IP address
    /// (default 8), so one address cannot take the whole global cap.
    pub max_handshakes_per_address: usize,
    /// First reconnect delay after a failure (default 50 ms); doubles per
    /// consecutive failure, with ±25% jitter.
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 2 s).
    pub backoff_max: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_frame_len: 16 * 1024 * 1024,
            peer_queue_len: 16 * 1024,
            peer_queue_bytes: 64 * 1024 * 1024,
            incoming_queue_len: 1024,
            incoming_queue_bytes: 64 * 1024 * 1024,
            incoming_peer_bytes: 16 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(3),
            max_handshakes: 128,
            max_handshakes_per_address: 8,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl TcpConfig {
    /// The bounds of the queue of received frames, as enforced (see
    /// [`IncomingLimits::effective`]).
    pub fn incoming_limits(&self) -> IncomingLimits {
        IncomingLimits {
            frames: self.incoming_queue_len,
            bytes: self.incoming_queue_bytes,
            peer_bytes: self.incoming_peer_bytes,
        }
        .effective(self.max_frame_len)
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source} (is another node already using this port?)")]
    Bind {
        /// The address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node's own key is missing from the network map.
    #[error("this node's identity key {} is not in the network map: add an entry for it (`flow-keygen` prints one)", hex::encode(.0.0))]
    NotInMap(PublicKey),
    /// Noise could not be initialised (no system randomness).
    #[error("cannot create the Noise static key: {0}")]
    Noise(snow::Error),
    /// `bind` was called outside a tokio runtime.
    #[error("the TCP transport must be started inside a tokio runtime")]
    NoRuntime,
}

/// Which side dialled a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled the peer (we send on it).
    Outbound,
    /// The peer dialled us (we receive on it).
    Inbound,
}

/// Something that happened to a connection, for observers (tests,
/// metrics, the node's redelivery trigger). Every event is also logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A connection to or from `peer` passed the handshake.
    Connected {
        /// The authenticated peer.
        peer: PublicKey,
        /// Who dialled.
        direction: Direction,
    },
    /// A connection ended: an inbound one (`peer` is `None` if it never
    /// authenticated), or an established outbound one. Failed dial attempts
    /// are only logged.
    Closed {
        /// The peer, if the handshake had succeeded.
        peer: Option<PublicKey>,
        /// The socket address on the other end.
        remote: SocketAddr,
        /// Who dialled.
        direction: Direction,
        /// Why, in words; `None` for an orderly close.
        error: Option<String>,
    },
}

/// A running transport. Cheap to clone; every clone drives the same
/// connections.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("name", &self.inner.local.name())
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    local: LocalIdentity,
    map: NetworkMap,
    config: TcpConfig,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<PublicKey, PeerQueue>>,
    inbound: Mutex<HashMap<PublicKey, (u64, CancellationToken)>>,
    next_connection: AtomicU64,
    incoming: IncomingSender,
    handshakes: Arc<HandshakeSlots>,
    events: broadcast::Sender<LinkEvent>,
    /// The same events as the node sees them (outbound links only).
    link_events: broadcast::Sender<TransportEvent>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl TcpTransport {
    /// Listens on `listen` and returns the transport plus the stream of
    /// frames received from peers. `identity` must be in `map`.
    pub async fn bind(
        identity: SigningKey,
        listen: &str,
        map: NetworkMap,
        config: TcpConfig,
    ) -> Result<(TcpTransport, Incoming), TransportError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| TransportError::Bind {
                address: listen.to_owned(),
                source,
            })?;
        Self::from_listener(identity, listener, map, config)
    }

    /// Like [`bind`](Self::bind), on a listener the caller already bound
    /// (tests bind port 0 first to learn the addresses for the map).
    pub fn from_listener(
        identity: SigningKey,
        listener: TcpListener,
        map: NetworkMap,
        config: TcpConfig,
    ) -> Result<(TcpTransport, Incoming), TransportError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let key = PublicKey(identity.verifying_key().to_bytes());
        let name = map
            .by_key(&key)
            .ok_or(TransportError::NotInMap(key))?
            .name
            .clone();
        let local = LocalIdentity::new(&name, &identity).map_err(TransportError::Noise)?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Bind {
                address: "the given listener".into(),
                source,
            })?;
        let (incoming, incoming_rx) = incoming::channel(config.incoming_limits());
        let handshakes = Arc::new(HandshakeSlots::new(&config, &map));
        let (events, _) = broadcast::channel(256);
        let (link_events, _) = broadcast::channel(256);
        let inner = Arc::new(Inner {
            local,
            map,
            config,
            local_addr,
            runtime,
            peers: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            incoming,
            handshakes,
            events,
            link_events,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        info!(node = %name, listen = %local_addr, "TCP transport listening");
        inner
            .tasks
            .spawn_on(accept_loop(inner.clone(), listener), &inner.runtime);
        Ok((TcpTransport { inner }, incoming_rx))
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's identity key.
    pub fn identity(&self) -> PublicKey {
        self.inner.local.key()
    }

    /// The network map the transport authenticates against.
    pub fn network_map(&self) -> &NetworkMap {
        &self.inner.map
    }

    /// Observes connection events from now on. A subscriber that falls more
    /// than 256 events behind misses the oldest (see `broadcast`).
    pub fn events(&self) -> broadcast::Receiver<LinkEvent> {
        self.inner.events.subscribe()
    }

    /// Queues `frame` for `to`, waiting while the peer's queue is full (in
    /// frames or in bytes). Returns once the frame is queued, not when it
    /// is delivered.
    pub async fn send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError> {
        let (queue, bytes) = self.queue_for(to, frame.len())?;
        let permit = queue
            .bytes
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| SendError::ShutDown)?;
        queue
            .frames
            .send(Queued {
                frame,
                _bytes: permit,
            })
            .await
            .map_err(|_| SendError::ShutDown)
    }

    /// Queues `frame` for `to` without waiting; usable from any thread,
    /// inside or outside the runtime. Refused with
    /// [`SendError::QueueFull`] while the peer's queue is full in frames
    /// ([`TcpConfig::peer_queue_len`]) or bytes
    /// ([`TcpConfig::peer_queue_bytes`]).
    pub fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError> {
        let (queue, bytes) = self.queue_for(to, frame.len())?;
        let full = || SendError::QueueFull(self.peer_name(to));
        let permit = match queue.bytes.try_acquire_many_owned(bytes) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(full()),
            Err(TryAcquireError::Closed) => return Err(SendError::ShutDown),
        };
        queue
            .frames
            .try_send(Queued {
                frame,
                _bytes: permit,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => full(),
                mpsc::error::TrySendError::Closed(_) => SendError::ShutDown,
            })
    }

    /// Closes any inbound connection from `peer`, logging `reason`. For the
    /// node to call when a peer's frame decrypted fine but does not decode
    /// as a message: the peer is misbehaving or runs incompatible code. It
    /// may reconnect; every new connection is authenticated again.
    pub fn disconnect(&self, peer: &PublicKey, reason: &str) {
        let name = self.peer_name(peer);
        let entry = self
            .inner
            .inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(peer);
        if let Some((_, token)) = entry {
            warn!(peer = %name, reason, "closing the connection from peer: it sent a frame the node could not use");
            token.cancel();
        }
    }

    /// Stops listening, closes every connection and waits for the
    /// transport's tasks to end. Frames still queued are dropped: the
    /// node's durable outbox re-sends them after the next start.
    pub async fn shutdown(&self) {
        info!(node = %self.inner.local.name(), "TCP transport shutting down");
        self.inner.shutdown.cancel();
        self.inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn peer_name(&self, key: &PublicKey) -> String {
        self.inner
            .map
            .by_key(key)
            .map_or_else(|| hex::encode(key.0), |p| p.name.clone())
    }

    /// The queue for `to` (started on first use), and the permits a frame
    /// of `len` bytes takes from its byte bound.
    fn queue_for(&self, to: &PublicKey, len: usize) -> Result<(PeerQueue, u32), SendError> {
        let inner = &self.inner;
        let too_large = SendError::TooLarge {
            len,
            max: inner.config.max_frame_len,
        };
        if len > inner.config.max_frame_len {
            return Err(too_large);
        }
        let permits = u32::try_from(len).map_err(|_| too_large)?;
        if *to == inner.local.key() {
            return Err(SendError::ToSelf);
        }
        if inner.shutdown.is_cancelled() {
            return Err(SendError::ShutDown);
        }
        let mut peers = inner.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = peers.get(to) {
            return Ok((queue.clone(), permits));
        }
        let entry = inner.map.by_key(to).ok_or(SendError::UnknownPeer(*to))?;
        let (frames, rx) = mpsc::channel(inner.config.peer_queue_len.max(1));
        let bytes = inner
            .config
            .peer_queue_bytes
            .max(inner.config.max_frame_len)
            .min(Semaphore::MAX_PERMITS);
        let queue = PeerQueue {
            frames,
            bytes: Arc::new(Semaphore::new(bytes)),
        };
        peers.insert(*to, queue.clone());
        inner.tasks.spawn_on(
            run_peer(self.inner.clone(), entry.clone(), rx),
            &inner.runtime,
        );
        Ok((queue, permits))
    }
}

/// What is queued for one peer: the frames, and the bytes they may take.
#[derive(Clone)]
struct PeerQueue {
    frames: mpsc::Sender<Queued>,
    /// One permit per byte of [`TcpConfig::peer_queue_bytes`]; each queued
    /// frame holds as many as it has bytes until it is written or dropped.
    bytes: Arc<Semaphore>,
}

/// A frame queued for a peer, holding its share of the peer's byte bound
/// until it has been written to a connection (or the transport drops it).
struct Queued {
    frame: Vec<u8>,
    _bytes: OwnedSemaphorePermit,
}

fn emit(inner: &Inner, event: LinkEvent) {
    // Only the sending side of a link matters to the node: frames for a
    // peer travel over the connection we dialled.
    let node_event = match &event {
        LinkEvent::Connected {
            peer,
            direction: Direction::Outbound,
        } => Some(TransportEvent::Connected { peer: *peer }),
        LinkEvent::Closed {
            peer: Some(peer),
            direction: Direction::Outbound,
            error,
            ..
        } => Some(TransportEvent::Disconnected {
            peer: *peer,
            error: error.clone(),
        }),
        _ => None,
    };
    // No subscribers is the normal case.
    if let Some(e) = node_event {
        let _ = inner.link_events.send(e);
    }
    let _ = inner.events.send(event);
}

impl Transport for TcpTransport {
    fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError> {
        TcpTransport::try_send(self, to, frame)
    }

    fn disconnect(&self, peer: &PublicKey, reason: &str) {
        TcpTransport::disconnect(self, peer, reason);
    }

    fn peer_name(&self, peer: &PublicKey) -> String {
        TcpTransport::peer_name(self, peer)
    }

    fn endpoint(&self) -> String {
        format!("tcp://{}", self.inner.local_addr)
    }

    fn link_events(&self) -> broadcast::Receiver<TransportEvent> {
        self.inner.link_events.subscribe()
    }

    async fn shutdown(&self) {
        TcpTransport::shutdown(self).await;
    }
}

// ---------------------------------------------------------------- inbound

/// Admission control for unauthenticated connections: how many handshakes
/// may be in progress at once, globally (for strangers) and per remote IP
/// address. A slot is held from accept until the handshake ends, which the
/// handshake deadline bounds; a connection that finds no free slot is
/// closed before anything is read from it.
struct HandshakeSlots {
    max_strangers: usize,
    max_per_address: usize,
    /// IP addresses of the parties in the network map: their handshakes do
    /// not compete with strangers for the global cap.
    known_hosts: HashSet<IpAddr>,
    counts: Mutex<SlotCounts>,
    /// Refusals not yet logged (the WARN line is rate-limited: a flood
    /// must not flood the log too).
    refused: AtomicU64,
    last_refusal_log: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct SlotCounts {
    strangers: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection found no handshake slot.
#[derive(Debug, Clone, Copy)]
enum NoSlot {
    PerAddress,
    Global,
}

/// A handshake slot, given back when dropped.
struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    ip: IpAddr,
    stranger: bool,
}

/// At most one refusal line per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl HandshakeSlots {
    fn new(config: &TcpConfig, map: &NetworkMap) -> Self {
        let known_hosts = map
            .entries()
            .iter()
            .filter_map(|e| e.address.parse::<SocketAddr>().ok())
            .map(|a| a.ip())
            .collect();
        HandshakeSlots {
            max_strangers: config.max_handshakes,
            max_per_address: config.max_handshakes_per_address,
            known_hosts,
            counts: Mutex::new(SlotCounts::default()),
            refused: AtomicU64::new(0),
            last_refusal_log: Mutex::new(None),
        }
    }

    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakeSlot, NoSlot> {
        let stranger = !self.known_hosts.contains(&ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_ip = counts.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_address {
            return Err(NoSlot::PerAddress);
        }
        if stranger && counts.strangers >= self.max_strangers {
            return Err(NoSlot::Global);
        }
        *counts.per_address.entry(ip).or_insert(0) += 1;
        if stranger {
            counts.strangers += 1;
        }
        Ok(HandshakeSlot {
            slots: self.clone(),
            ip,
            stranger,
        })
    }

    /// Counts a refusal and logs it, at most once per second.
    fn log_refusal(&self, remote: SocketAddr, why: NoSlot) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_refusal_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        self.refused.fetch_sub(refused, Ordering::Relaxed);
        let cap = match why {
            NoSlot::PerAddress => "max_handshakes_per_address",
            NoSlot::Global => "max_handshakes",
        };
        warn!(%remote, cap, refused,
            "refused inbound connections: too many handshakes in progress (a flood of unauthenticated connections?); `refused` counts them since the last such line");
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self
            .slots
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
        if self.stranger {
            counts.strangers -= 1;
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    // Checked here, before a task or a buffer exists for
                    // the connection: a refused one costs nothing more.
                    let slot = match inner.handshakes.try_take(remote.ip()) {
                        Ok(slot) => slot,
                        Err(why) => {
                            inner.handshakes.log_refusal(remote, why);
                            drop(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    inner.tasks.spawn_on(serve_inbound(inner.clone(), stream, remote, slot), &inner.runtime);
                }
                Err(error) => {
                    // Typically out of file descriptors: wait rather than spin.
                    warn!(%error, "cannot accept a connection; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn serve_inbound(
    inner: Arc<Inner>,
    stream: TcpStream,
    remote: SocketAddr,
    slot: HandshakeSlot,
) {
    let mut framed = Framed::new(stream, handshake::codec(MAX_HANDSHAKE_RECORD));
    let timeout = inner.config.handshake_timeout;
    let handshake = tokio::select! {
        _ = inner.shutdown.cancelled() => return,
        r = tokio::time::timeout(timeout, handshake::respond(&mut framed, &inner.local, &inner.map)) => {
            r.unwrap_or(Err(HandshakeError::Timeout(timeout)))
        }
    };
    // The slot covers exactly the unauthenticated part of the connection.
    drop(slot);
    let (mut noise, peer) = match handshake {
        Ok(ok) => ok,
        Err(error) => {
            warn!(%remote, %error, "rejected inbound connection: handshake failed; connection closed");
            emit(
                &inner,
                LinkEvent::Closed {
                    peer: None,
                    remote,
                    direction: Direction::Inbound,
                    error: Some(error.to_string()),
                },
            );
            return;
        }
    };
    let max = inner.config.max_frame_len;
    let max_plain = max_record_plain(max);
    framed.codec_mut().set_max_record(sealed_len(max_plain));

    // A new connection from a peer replaces its previous one, so frames of
    // one peer never arrive over two connections at once.
    let id = inner.next_connection.fetch_add(1, Ordering::Relaxed);
    let token = inner.shutdown.child_token();
    let previous = inner
        .inbound
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(peer.key, (id, token.clone()));
    if let Some((_, old)) = previous {
        old.cancel();
    }
    let to_node = inner.incoming.peer(peer.key);
    info!(peer = %peer.name, %remote, "peer connected (inbound)");
    emit(
        &inner,
        LinkEvent::Connected {
            peer: peer.key,
            direction: Direction::Inbound,
        },
    );

    // One record's plaintext at a time, reused: its frames are copied out
    // one by one, each once it has room in the node's queue.
    let mut plain = Vec::new();
    let error: Option<String> = 'connection: loop {
        let record = tokio::select! {
            biased;
            _ = token.cancelled() => break None,
            r = framed.next() => r,
        };
        let record = match record {
            None => break None,
            Some(Ok(record)) => record,
            Some(Err(e)) if is_oversized(&e) => {
                warn!(peer = %peer.name, %remote, max_frame_len = max,
                    "peer announced a frame larger than the maximum; closing the connection");
                break Some(format!("frame larger than the maximum of {max} bytes"));
            }
            Some(Err(e)) => {
                warn!(peer = %peer.name, %remote, error = %e, "connection error; closing the connection");
                break Some(e.to_string());
            }
        };
        match open_record(&mut noise, &record, max_plain, &mut plain) {
            Ok(()) => {}
            Err(error @ WireError::Decrypt(_)) => {
                warn!(peer = %peer.name, %remote, %error,
                    "frame failed authentication (corrupted, forged or replayed); closing the connection");
                break Some(error.to_string());
            }
            Err(error) => {
                warn!(peer = %peer.name, %remote, %error, "invalid frame; closing the connection");
                break Some(error.to_string());
            }
        }
        drop(record);
        for frame in frames(&plain, max) {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    warn!(peer = %peer.name, %remote, %error, "invalid frame; closing the connection");
                    break 'connection Some(error.to_string());
                }
            };
            // Room in the node's queue first, then the frame's own copy: a
            // peer the node cannot keep up with is made to wait here, with
            // nothing allocated for it.
            let reserved = tokio::select! {
                biased;
                _ = token.cancelled() => break 'connection None,
                r = to_node.reserve(frame.len(), &peer.name) => r,
            };
            match reserved {
                Ok(room) => room.send(frame.to_vec()),
                Err(IncomingRefused::Closed) => {
                    debug!(peer = %peer.name, "the node stopped reading frames; closing the connection");
                    break 'connection None;
                }
                Err(error) => {
                    // The share holds a frame of `max` bytes, and longer
                    // frames were refused above: a bug, not worth a panic.
                    warn!(peer = %peer.name, %remote, %error, "frame does not fit the incoming queue; closing the connection");
                    break 'connection Some(error.to_string());
                }
            }
        }
        if plain.capacity() > KEEP_BUFFER {
            plain = Vec::new();
        }
    };
    {
        let mut inbound = inner.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        if inbound
            .get(&peer.key)
            .is_some_and(|(current, _)| *current == id)
        {
            inbound.remove(&peer.key);
        }
    }
    if error.is_none() {
        info!(peer = %peer.name, %remote, "inbound connection closed");
    }
    emit(
        &inner,
        LinkEvent::Closed {
            peer: Some(peer.key),
            remote,
            direction: Direction::Inbound,
            error,
        },
    );
}

// --------------------------------------------------------------- outbound

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot resolve or connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

type Connection = (
    Framed<TcpStream, RecordCodec>,
    snow::TransportState,
    SocketAddr,
);

async fn dial(inner: &Inner, peer: &PeerEntry) -> Result<Connection, DialError> {
    let connect = TcpStream::connect(peer.address.as_str());
    let stream = match tokio::time::timeout(inner.config.connect_timeout, connect).await {
        Err(_) => return Err(DialError::ConnectTimeout(peer.address.clone())),
        Ok(Err(source)) => {
            return Err(DialError::Connect {
                address: peer.address.clone(),
                source,
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    let remote = stream.peer_addr().map_err(|source| DialError::Connect {
        address: peer.address.clone(),
        source,
    })?;
    let mut framed = Framed::new(stream, handshake::codec(MAX_HANDSHAKE_RECORD));
    let timeout = inner.config.handshake_timeout;
    let noise = tokio::time::timeout(
        timeout,
        handshake::initiate(&mut framed, &inner.local, &inner.map, peer),
    )
    .await
    .unwrap_or(Err(HandshakeError::Timeout(timeout)))?;
    // The codec checks the limit on reads; `write_batch` on writes.
    framed
        .codec_mut()
        .set_max_record(sealed_len(max_record_plain(inner.config.max_frame_len)));
    Ok((framed, noise, remote))
}

/// Delay with ±25% jitter, so that many nodes restarting together do not
/// reconnect in lockstep.
fn jittered(base: Duration) -> Duration {
    let factor = rand::random_range(0.75..1.25);
    base.mul_f64(factor)
}

/// How long a connection must stay up before its failure counts as a fresh
/// problem rather than one more consecutive failure.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// Frames written per flush: enough to amortise the syscall, small enough
/// to keep the re-send set after a failed write modest.
const BATCH: usize = 64;

/// Bytes of records written to a connection's buffer before it is flushed
/// within a batch: large frames go out as they are sealed instead of
/// piling up in memory.
const FLUSH_AT: usize = 256 * 1024;

/// A per-connection scratch buffer (a record's plaintext) larger than this
/// after use is freed rather than kept: one huge frame must not pin its
/// size for the connection's life.
const KEEP_BUFFER: usize = 1024 * 1024;

async fn run_peer(inner: Arc<Inner>, peer: PeerEntry, mut rx: mpsc::Receiver<Queued>) {
    let cancel = inner.shutdown.clone();
    let mut unsent: VecDeque<Queued> = VecDeque::new();
    // A record's plaintext, reused from record to record.
    let mut plain = Vec::new();
    let mut backoff = inner.config.backoff_min;
    loop {
        // Connect lazily: only when there is something to send.
        if unsent.is_empty() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                frame = rx.recv() => match frame {
                    Some(frame) => unsent.push_back(frame),
                    None => return,
                },
            }
        }
        let dialled = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = dial(&inner, &peer) => r,
        };
        let failure = match dialled {
            Err(error) => {
                let wait = jittered(backoff);
                warn!(peer = %peer.name, address = %peer.address, %error,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    queued = unsent.len() + rx.len(), "cannot connect to peer; will retry");
                Some(wait)
            }
            Ok((mut framed, mut noise, remote)) => {
                info!(peer = %peer.name, %remote, "connected to peer (outbound)");
                emit(
                    &inner,
                    LinkEvent::Connected {
                        peer: peer.key,
                        direction: Direction::Outbound,
                    },
                );
                let since = Instant::now();
                let end = pump(
                    &mut framed,
                    &mut noise,
                    &mut unsent,
                    &mut rx,
                    &cancel,
                    &mut plain,
                )
                .await;
                let error = match end {
                    PumpEnd::Shutdown => {
                        // Best effort: a clean close lets the peer log an
                        // orderly disconnect rather than an error.
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            SinkExt::<Bytes>::close(&mut framed),
                        )
                        .await;
                        return;
                    }
                    PumpEnd::Lost(error) => error,
                };
                if since.elapsed() >= STABLE_CONNECTION {
                    backoff = inner.config.backoff_min;
                }
                let wait = jittered(backoff);
                warn!(peer = %peer.name, %remote, %error, queued = unsent.len() + rx.len(),
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "connection to peer lost; reconnecting");
                emit(
                    &inner,
                    LinkEvent::Closed {
                        peer: Some(peer.key),
                        remote,
                        direction: Direction::Outbound,
                        error: Some(error),
                    },
                );
                Some(wait)
            }
        };
        if let Some(wait) = failure {
            backoff = (backoff * 2).min(inner.config.backoff_max);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

enum PumpEnd {
    Shutdown,
    Lost(String),
}

/// Writes queued frames to an established connection until it fails or the
/// transport shuts down. Frames leave `unsent` only once flushed to the
/// socket.
async fn pump(
    framed: &mut Framed<TcpStream, RecordCodec>,
    noise: &mut snow::TransportState,
    unsent: &mut VecDeque<Queued>,
    rx: &mut mpsc::Receiver<Queued>,
    cancel: &CancellationToken,
    plain: &mut Vec<u8>,
) -> PumpEnd {
    loop {
        while unsent.len() < BATCH {
            match rx.try_recv() {
                Ok(frame) => unsent.push_back(frame),
                Err(_) => break,
            }
        }
        if !unsent.is_empty() {
            let written = tokio::select! {
                biased;
                _ = cancel.cancelled() => return PumpEnd::Shutdown,
                r = write_batch(framed, noise, unsent, plain) => r,
            };
            match written {
                Ok(()) => {
                    unsent.clear();
                    continue;
                }
                Err(error) => return PumpEnd::Lost(error),
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return PumpEnd::Shutdown,
            frame = rx.recv() => match frame {
                Some(frame) => unsent.push_back(frame),
                None => return PumpEnd::Shutdown,
            },
            read = framed.next() => {
                return PumpEnd::Lost(match read {
                    None => "the peer closed the connection".to_owned(),
                    Some(Ok(_)) => "the peer sent data on a send-only connection".to_owned(),
                    Some(Err(e)) => e.to_string(),
                });
            }
        }
    }
}

/// Writes `frames` as records (consecutive frames packed into one record
/// while its plaintext stays within [`PACK_LIMIT`]) and flushes them:
/// one encryption per record, one write for the whole batch unless it
/// passes [`FLUSH_AT`]. `plain` is the connection's scratch buffer.
async fn write_batch<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RecordCodec>,
    noise: &mut snow::TransportState,
    frames: &VecDeque<Queued>,
    plain: &mut Vec<u8>,
) -> Result<(), String> {
    let max_record = framed.codec().max_record();
    let mut next = 0;
    while next < frames.len() {
        plain.clear();
        while let Some(queued) = frames.get(next) {
            let packed = plain.len() + FRAME_PREFIX + queued.frame.len();
            if !plain.is_empty() && packed > PACK_LIMIT {
                break;
            }
            push_frame(plain, &queued.frame);
            next += 1;
        }
        let sealed = sealed_len(plain.len());
        let prefix = u32::try_from(sealed)
            .ok()
            .filter(|_| sealed <= max_record)
            .ok_or_else(|| {
                format!("record of {sealed} bytes exceeds the maximum of {max_record}")
            })?;
        let buffer = framed.write_buffer_mut();
        buffer.reserve(4 + sealed);
        buffer.extend_from_slice(&prefix.to_be_bytes());
        seal_into(noise, plain, buffer).map_err(|e| e.to_string())?;
        if plain.capacity() > KEEP_BUFFER {
            *plain = Vec::new();
        }
        if framed.write_buffer().len() >= FLUSH_AT {
            SinkExt::<Bytes>::flush(framed)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    SinkExt::<Bytes>::flush(framed)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::records::{in_memory_transport_pair, open_record};

    /// Writes `frames` with `write_batch` and returns the frames of each
    /// record the other end reads, record by record.
    async fn records_on_the_wire(frames: Vec<Vec<u8>>, max_frame: usize) -> Vec<Vec<Vec<u8>>> {
        let (mut sealer, mut opener) = in_memory_transport_pair().unwrap();
        let (near, far) = tokio::io::duplex(1 << 20);
        let max_plain = max_record_plain(max_frame);
        let mut framed = Framed::new(near, RecordCodec::new(sealed_len(max_plain)));
        let budget = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        let queued: VecDeque<Queued> = frames
            .into_iter()
            .map(|frame| Queued {
                _bytes: budget.clone().try_acquire_many_owned(1).unwrap(),
                frame,
            })
            .collect();
        write_batch(&mut framed, &mut sealer, &queued, &mut Vec::new())
            .await
            .unwrap();
        drop(framed);
        let mut reader = Framed::new(far, RecordCodec::new(sealed_len(max_plain)));
        let mut records = Vec::new();
        let mut plain = Vec::new();
        while let Some(record) = reader.next().await {
            open_record(&mut opener, &record.unwrap(), max_plain, &mut plain).unwrap();
            let frames = crate::tcp::records::frames(&plain, max_frame);
            records.push(frames.map(|f| f.unwrap().to_vec()).collect());
        }
        records
    }

    #[tokio::test]
    async fn frames_queued_together_share_records_in_order() {
        // 100 frames of 200 bytes: one record.
        let small: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 200]).collect();
        let records = records_on_the_wire(small.clone(), 1 << 20).await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0], small);

        // 100 frames of 1,000 bytes: two records, the first as full as
        // the pack limit allows.
        let medium: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 1000]).collect();
        let records = records_on_the_wire(medium.clone(), 1 << 20).await;
        let per_record = PACK_LIMIT / (FRAME_PREFIX + 1000);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].len(), per_record);
        assert_eq!(records.concat(), medium);

        // A frame larger than a pack travels alone, between packs.
        let mixed = vec![vec![1; 10], vec![2; 100_000], vec![3; 10], vec![4; 10]];
        let records = records_on_the_wire(mixed.clone(), 1 << 20).await;
        assert_eq!(records.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 2]);
        assert_eq!(records.concat(), mixed);
    }
}
