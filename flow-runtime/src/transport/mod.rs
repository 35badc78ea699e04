//! The [`Transport`] trait: how a tokio [`Node`](crate::runner::Node) moves
//! frames to and from its peers, whatever carries them.
//!
//! The node's driver needs very little from a transport, and this trait is
//! exactly that little:
//!
//! * queue a frame for a peer **without waiting** ([`Transport::try_send`]):
//!   the driver never blocks on a slow peer, because every frame it sends
//!   is also in the node's durable outbox and is sent again later;
//! * receive frames, each with the **authenticated** identity of its sender
//!   ([`Incoming`], handed over when the transport is created; bounded in
//!   frames and in bytes, with a share per peer, see [`incoming`]);
//! * hear when the link to a peer goes down and comes (back) up
//!   ([`TransportEvent::Disconnected`], [`TransportEvent::Connected`]), so
//!   the messages a broken link may have lost are sent again at once
//!   instead of at the next redelivery tick;
//! * drop a peer that sent a frame the node cannot use
//!   ([`Transport::disconnect`]);
//! * name peers for log lines, and shut down.
//!
//! Delivery may lose frames (a dropped connection, a restarted peer) and
//! may deliver a frame twice; the node's session protocol (sequence
//! numbers, acks, dedup committed with the checkpoint, redelivery of the
//! durable outbox) turns that into exactly-once processing. A transport
//! must only deliver frames of one sender in the order they were sent over
//! one link, and must never attribute a frame to the wrong sender.
//!
//! Two implementations:
//!
//! * [`TcpTransport`](crate::tcp::TcpTransport): between processes and
//!   machines, Noise-encrypted and mutually authenticated; the default of
//!   [`NodeBuilder::new`](crate::runner::NodeBuilder::new) and
//!   [`NodeBuilder::from_config`](crate::runner::NodeBuilder::from_config).
//! * [`MemoryTransport`] on a [`MemoryNetwork`]: several tokio nodes in one
//!   process over channels, no sockets; for tests and embedding (use it
//!   with [`NodeBuilder::with_transport`](crate::runner::NodeBuilder::with_transport)).
//!
//! # Why `MockNetwork` is not a `Transport`
//!
//! [`MockNetwork`](crate::testing::MockNetwork) is a deterministic
//! *scheduler*, not an asynchronous transport. Its contract is
//! synchronous: `net.step()` moves exactly one delivery, redelivery
//! round or timer, chosen from ONE global queue of frames in flight across
//! all nodes with a seeded random generator (drop, duplicate, reorder), and
//! it drives each [`NodeCore`](crate::NodeCore) directly, on the test's
//! thread, with a virtual clock. A `Transport` instead pushes a frame into
//! the destination's [`Incoming`] queue as soon as it is sent and lets the
//! receiving node's driver task decide when to read it, on tokio's clock.
//! Putting the mock's queue behind this trait would either give up
//! determinism (tasks racing to read their queues) or require the trait to
//! expose the global schedule, which a real network cannot offer. So the
//! two share the node core — the step logic, commits, sessions — but not
//! the transport.

pub mod incoming;
mod memory;

pub use incoming::{Incoming, IncomingLimits, IncomingSender};
pub use memory::{MemoryNetwork, MemoryTransport};

use crate::PublicKey;
use std::future::Future;
use tokio::sync::broadcast;

/// Why a frame was not queued. In every case the node keeps the message in
/// its durable outbox and sends it again later, so none of these loses a
/// message; they explain a delay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The destination is not in the network map.
    #[error("no party with identity key {} in the network map", hex::encode(.0.0))]
    UnknownPeer(PublicKey),
    /// The destination is this node itself.
    #[error("a node does not send frames to itself over a transport: deliver them locally")]
    ToSelf,
    /// The frame exceeds the transport's maximum frame size
    /// ([`TcpConfig::max_frame_len`](crate::tcp::TcpConfig::max_frame_len);
    /// in memory, a receiver's whole per-peer share,
    /// [`IncomingLimits::peer_bytes`]).
    #[error(
        "frame of {len} bytes exceeds the maximum of {max} bytes (TcpConfig::max_frame_len, or the receiver's per-peer incoming share)"
    )]
    TooLarge {
        /// The frame's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `try_send` only: the peer's queue is full (the peer is slow or
    /// unreachable). The node keeps the message in its outbox and retries.
    #[error("the queue to `{0}` is full")]
    QueueFull(String),
    /// The peer is known but not reachable right now (e.g. a
    /// [`MemoryTransport`] peer whose node is stopped). The node's outbox
    /// sends the frame again once the peer is back.
    #[error("`{0}` is not reachable right now; the frame will be sent again when it is")]
    Unreachable(String),
    /// The transport has shut down.
    #[error("the transport has shut down")]
    ShutDown,
}

/// A change of the link used to send frames to a peer.
///
/// The node relies on this contract: a frame `try_send` accepted stays
/// queued until it is written to a link, and a link that may have carried
/// frames is reported [`Disconnected`](TransportEvent::Disconnected) when
/// it goes down, before the [`Connected`](TransportEvent::Connected) of its
/// successor. On `Connected` the node then sends again at once only what
/// may be missing: its messages to that peer unacknowledged at the
/// `Disconnected`, or all of them if a frame for the peer was refused
/// since the last `Connected`. Frames queued before a first connection are
/// not sent twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// Frames for `peer` now travel over a fresh link (first connection,
    /// reconnect, or the peer's node restarted).
    Connected {
        /// The peer.
        peer: PublicKey,
    },
    /// The link to `peer` went down; frames queued for it wait (TCP) or are
    /// refused (memory) until it is back.
    Disconnected {
        /// The peer.
        peer: PublicKey,
        /// Why, in words; `None` for an orderly close.
        error: Option<String>,
    },
}

/// What a tokio node needs from the thing that carries its frames. See the
/// [module docs](self) for the delivery guarantees an implementation must
/// (and need not) give.
///
/// Implementations are shared handles (cheap to clone, all clones drive the
/// same links), used from the node's driver task and from its
/// [`Node`](crate::runner::Node) handles on any thread.
pub trait Transport: Send + Sync + 'static {
    /// Queues `frame` for `to` and returns at once; never waits for the
    /// peer. An error means the frame was not queued (it stays in the
    /// node's outbox and is sent again later).
    fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError>;

    /// Drops the link(s) from `peer` because it sent a frame that
    /// authenticated fine but that the node cannot use (a broken or
    /// hostile peer, or incompatible code). Logs `reason`. The peer may
    /// come back; it is authenticated again.
    fn disconnect(&self, peer: &PublicKey, reason: &str);

    /// A name for `peer` in log lines: its name in the network map, or its
    /// key in hex if it has none.
    fn peer_name(&self, peer: &PublicKey) -> String;

    /// Where this node can be reached, for the "node started" log line
    /// (e.g. `tcp://127.0.0.1:10001`).
    fn endpoint(&self) -> String;

    /// Observes link changes from now on. A subscriber that falls behind
    /// gets `Lagged` and should then treat every peer as reconnected.
    fn link_events(&self) -> broadcast::Receiver<TransportEvent>;

    /// Closes every link and stops the transport's tasks. Frames still
    /// queued are dropped: the node's durable outbox re-sends them after
    /// the next start.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
