//! [`MemoryNetwork`] and [`MemoryTransport`]: tokio nodes in one process,
//! connected by channels instead of sockets.
//!
//! Why: tests of the node runner (restart from the database file,
//! redelivery, draining, results) should not need ports, keys and Noise
//! handshakes, and a program may embed several nodes in one process. The
//! nodes are the real thing — the same driver, group commit and redb file
//! as over TCP — only the wire is a channel.
//!
//! Behaviour, chosen to match what the node sees over TCP:
//!
//! * a frame goes straight into the destination's bounded [`Incoming`]
//!   queue, with the same bounds as over TCP (frames, bytes, and the
//!   sender's share of the bytes: [`IncomingLimits`]); a full queue or
//!   share refuses it ([`SendError::QueueFull`]) and the sender's outbox
//!   sends it again later, a frame larger than a whole share is
//!   [`SendError::TooLarge`];
//! * a party that joined but whose node is stopped refuses frames
//!   ([`SendError::Unreachable`]), as an unreachable TCP peer would lose
//!   them; one that never joined is [`SendError::UnknownPeer`];
//! * when a node (re)joins, every other member gets
//!   [`TransportEvent::Connected`] for it, so they redeliver to it at once
//!   what may be missing (a TCP node sees the same when its reconnect
//!   succeeds); if its previous link never shut down (the node was dropped
//!   or crashed), they get [`TransportEvent::Disconnected`] first, as a
//!   broken TCP connection would tell them;
//! * [`Transport::disconnect`] tells the offending peer its link was
//!   dropped and re-established (`Disconnected` then `Connected`), which is
//!   what a TCP peer observes when its connection is closed and it redials.
//!
//! Senders are identified by the key they joined with; every member is
//! trusted code in the same process, so there is no authentication.

use super::incoming::{self, IncomingRefused};
use super::{Incoming, IncomingLimits, IncomingSender, SendError, Transport, TransportEvent};
use crate::{Party, PublicKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

/// Link events kept per member for a slow subscriber.
const EVENT_BUFFER: usize = 256;

/// A set of in-process nodes that can send each other frames. Cheap to
/// clone; every clone is the same network.
///
/// ```
/// use flow_runtime::runner::NodeBuilder;
/// use flow_runtime::testing::ping_pong::{ping, pong};
/// use flow_runtime::transport::MemoryNetwork;
/// use flow_runtime::{Party, PublicKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let net = MemoryNetwork::new();
/// let mut nodes = Vec::new();
/// for (name, key) in [("Alice", 1), ("Bob", 2)] {
///     let party = Party::new(name, PublicKey([key; 32]));
///     let (transport, incoming) = net.join(&party);
///     let db = dir.path().join(format!("{name}.redb"));
///     let mut builder = NodeBuilder::with_transport(party, db, transport, incoming);
///     builder.flow::<ping::Flow>();
///     builder.responder::<ping::Flow>(pong);
///     nodes.push(builder.start().await?);
/// }
/// let bob = nodes[1].party().clone();
/// let handle = nodes[0].start_flow(ping(bob, 3)).await?;
/// assert_eq!(handle.result().await?, 0 + 1 + 2);
/// for node in &nodes {
///     node.shutdown().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryNetwork {
    inner: Arc<Shared>,
}

struct Shared {
    limits: IncomingLimits,
    members: Mutex<HashMap<PublicKey, Member>>,
}

struct Member {
    name: String,
    /// `None` while the member's node is stopped.
    inbox: Option<IncomingSender>,
    events: broadcast::Sender<TransportEvent>,
    /// Which join the inbox belongs to, so a stale transport shutting down
    /// does not take a newer incarnation offline.
    incarnation: u64,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members = self.lock();
        let mut names: Vec<&str> = members.values().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        f.debug_struct("MemoryNetwork")
            .field("members", &names)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryNetwork {
    /// An empty network; each node's incoming queue has the default
    /// [`IncomingLimits`] (1,024 frames, 64 MiB, 16 MiB per sender).
    pub fn new() -> Self {
        Self::with_limits(IncomingLimits::default())
    }

    /// An empty network whose nodes queue at most `queue_len` incoming
    /// frames (at least 1), with the default byte bounds; senders beyond
    /// that are refused and redeliver later, which is how a slow node slows
    /// its peers down.
    pub fn with_queue_len(queue_len: usize) -> Self {
        Self::with_limits(IncomingLimits {
            frames: queue_len,
            ..IncomingLimits::default()
        })
    }

    /// An empty network whose nodes' incoming queues have `limits`.
    pub fn with_limits(limits: IncomingLimits) -> Self {
        MemoryNetwork {
            inner: Arc::new(Shared {
                limits: limits.effective(0),
                members: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PublicKey, Member>> {
        self.inner
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects `party` to the network and returns its transport and the
    /// queue of frames sent to it. Joining again with the same key (a node
    /// restarting) replaces the previous link: frames still queued for the
    /// old one are lost, exactly as with a restarted TCP node, and the
    /// senders' outboxes redeliver them.
    pub fn join(&self, party: &Party) -> (MemoryTransport, Incoming) {
        let key = *party.key();
        let (tx, rx) = incoming::channel(self.inner.limits);
        let incarnation;
        {
            let mut members = self.lock();
            let member = members.entry(key).or_insert_with(|| Member {
                name: party.name().to_owned(),
                inbox: None,
                events: broadcast::channel(EVENT_BUFFER).0,
                incarnation: 0,
            });
            member.name = party.name().to_owned();
            // Replacing a link that never shut down (its node was dropped
            // or crashed): what was queued on it is lost, as when a TCP
            // connection breaks, so the others hear that first.
            let replaced_live_link = member.inbox.replace(tx).is_some();
            member.incarnation += 1;
            // A fresh event channel per incarnation: the previous node's
            // subscribers must not see the new node's events.
            member.events = broadcast::channel(EVENT_BUFFER).0;
            incarnation = member.incarnation;
            for (other, m) in members.iter() {
                if *other != key && m.inbox.is_some() {
                    if replaced_live_link {
                        let _ = m.events.send(TransportEvent::Disconnected {
                            peer: key,
                            error: Some("the peer joined again".into()),
                        });
                    }
                    let _ = m.events.send(TransportEvent::Connected { peer: key });
                }
            }
        }
        info!(node = %party, "joined the in-memory network");
        let transport = MemoryTransport {
            network: self.clone(),
            me: key,
            name: party.name().to_owned(),
            incarnation,
            shut_down: Arc::new(AtomicBool::new(false)),
        };
        (transport, rx)
    }

    /// Whether `party`'s node is currently connected (joined and not shut
    /// down).
    pub fn is_online(&self, party: &PublicKey) -> bool {
        self.lock().get(party).is_some_and(|m| m.inbox.is_some())
    }
}

/// One node's link to a [`MemoryNetwork`]. Cheap to clone; every clone is
/// the same link.
#[derive(Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    me: PublicKey,
    name: String,
    incarnation: u64,
    shut_down: Arc<AtomicBool>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("name", &self.name)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// This node's identity key.
    pub fn identity(&self) -> PublicKey {
        self.me
    }

    /// The network this transport belongs to.
    pub fn network(&self) -> &MemoryNetwork {
        &self.network
    }
}

impl Transport for MemoryTransport {
    fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(SendError::ShutDown);
        }
        if *to == self.me {
            return Err(SendError::ToSelf);
        }
        let members = self.network.lock();
        let member = members.get(to).ok_or(SendError::UnknownPeer(*to))?;
        let inbox = member
            .inbox
            .as_ref()
            .ok_or_else(|| SendError::Unreachable(member.name.clone()))?;
        inbox.try_send(self.me, frame).map_err(|e| match e {
            IncomingRefused::Full => SendError::QueueFull(member.name.clone()),
            IncomingRefused::TooLarge { len, max } => SendError::TooLarge { len, max },
            // The node stopped reading without shutting its transport down
            // (its driver ended): as good as offline.
            IncomingRefused::Closed => SendError::Unreachable(member.name.clone()),
        })
    }

    fn disconnect(&self, peer: &PublicKey, reason: &str) {
        let name = self.peer_name(peer);
        warn!(peer = %name, reason, "dropping the link from peer: it sent a frame the node could not use");
        let members = self.network.lock();
        if let Some(m) = members.get(peer) {
            let _ = m.events.send(TransportEvent::Disconnected {
                peer: self.me,
                error: Some(reason.to_owned()),
            });
            let _ = m.events.send(TransportEvent::Connected { peer: self.me });
        }
    }

    fn peer_name(&self, peer: &PublicKey) -> String {
        self.network
            .lock()
            .get(peer)
            .map_or_else(|| hex::encode(peer.0), |m| m.name.clone())
    }

    fn endpoint(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn link_events(&self) -> broadcast::Receiver<TransportEvent> {
        let members = self.network.lock();
        match members.get(&self.me) {
            Some(m) if m.incarnation == self.incarnation => m.events.subscribe(),
            // A newer node joined with this key: this link is stale and
            // will never see events.
            _ => broadcast::channel(1).1,
        }
    }

    async fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut members = self.network.lock();
        let current = members
            .get_mut(&self.me)
            .filter(|m| m.incarnation == self.incarnation);
        if let Some(m) = current {
            m.inbox = None;
            for (other, m) in members.iter() {
                if *other != self.me && m.inbox.is_some() {
                    let _ = m.events.send(TransportEvent::Disconnected {
                        peer: self.me,
                        error: None,
                    });
                }
            }
        }
        debug!(node = %self.name, "left the in-memory network");
    }
}
