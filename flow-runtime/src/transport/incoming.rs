//! [`Incoming`]: the queue of frames a transport has received and its node
//! has not taken yet, bounded in frames **and in bytes**, with a share of
//! the bytes per sending peer.
//!
//! Why bytes: a bound in frames alone lets a peer that sends maximum-size
//! frames make the node hold `frames × max_frame_len` (1,024 × 16 MiB with
//! the TCP defaults). Here every queued frame is charged its length plus
//! [`FRAME_OVERHEAD`], and a frame enters the queue only once its charge
//! fits. A transport that cannot get the budget for a frame waits before it
//! even allocates the frame (the TCP transport then stops reading that
//! peer's connection, so the peer's own TCP window pushes back on it);
//! [`IncomingSender::try_send`] refuses instead.
//!
//! Why a per-peer share as well as a global bound: with one global bound, a
//! single peer flooding while the node is busy would fill the queue, and
//! every other peer would wait for the node to read. With a share (a
//! quarter of the queue by default), one peer holds at most its share and
//! the rest stays free for the others even while the node reads nothing.
//! If several peers together fill the whole queue, the senders waiting for
//! budget are served in the order they started waiting (tokio's semaphores
//! are fair, first come first served, and each TCP connection waits for one
//! frame at a time), so as the node reads, every waiting peer gets its turn
//! within one frame of each other waiting peer: nobody starves, however
//! hard another peer pushes. The frame bound is kept too (it caps the
//! bookkeeping of many tiny frames) and is fair in the same way.
//!
//! A frame's budget is given back when the node takes the frame out of the
//! queue ([`Incoming::recv`], [`Incoming::try_recv`]); what the node then
//! holds while it processes a batch is the node's own bound (at most
//! `MAX_FRAMES_PER_BATCH` frames per batch), not the transport's.

use crate::PublicKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError, mpsc};
use tracing::debug;

pub use tokio::sync::mpsc::error::TryRecvError;

/// What one queued frame is charged beyond its own bytes: the queue entry
/// (the sender's key, the frame's vector, its accounting) and allocator
/// overhead, so that empty frames are not free.
pub const FRAME_OVERHEAD: usize = 64;

/// The bounds of an [`Incoming`] queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingLimits {
    /// Frames queued at most (default 1,024).
    pub frames: usize,
    /// Bytes queued at most, all peers together, each frame charged its
    /// length plus [`FRAME_OVERHEAD`] (default 64 MiB).
    pub bytes: usize,
    /// Bytes one sending peer may have queued at most (default 16 MiB, a
    /// quarter of `bytes`): see the [module docs](self) for why.
    pub peer_bytes: usize,
}

impl Default for IncomingLimits {
    fn default() -> Self {
        IncomingLimits {
            frames: 1024,
            bytes: 64 * 1024 * 1024,
            peer_bytes: 16 * 1024 * 1024,
        }
    }
}

impl IncomingLimits {
    /// The limits as a queue enforces them when no frame is longer than
    /// `max_frame` bytes: at least one frame; a peer's share at least one
    /// frame of `max_frame` bytes (so any frame fits an empty share); the
    /// whole queue at least one share.
    pub fn effective(self, max_frame: usize) -> Self {
        let cap = Semaphore::MAX_PERMITS;
        let peer_bytes = self
            .peer_bytes
            .max(max_frame.saturating_add(FRAME_OVERHEAD))
            .min(cap);
        IncomingLimits {
            frames: self.frames.max(1),
            bytes: self.bytes.max(peer_bytes).min(cap),
            peer_bytes,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncomingRefused {
    /// The frame is larger than a peer's whole share of the queue: it can
    /// never be queued.
    #[error("frame of {len} bytes exceeds the incoming queue's per-peer share of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The largest frame the share takes.
        max: usize,
    },
    /// `try_send` only: the peer's share, the queue's bytes or its frames
    /// are used up until the node takes frames out.
    #[error("the node's incoming queue is full")]
    Full,
    /// The [`Incoming`] was dropped: the node stopped reading.
    #[error("the node stopped reading its incoming queue")]
    Closed,
}

/// Creates an incoming queue: the [`IncomingSender`] a transport pushes
/// received frames into, and the [`Incoming`] the node reads.
///
/// `limits` are enforced as [`IncomingLimits::effective`] with no frame
/// larger than `limits.peer_bytes` minus [`FRAME_OVERHEAD`].
pub fn channel(limits: IncomingLimits) -> (IncomingSender, Incoming) {
    let limits = limits.effective(0);
    let (tx, rx) = mpsc::channel(limits.frames);
    let shared = Arc::new(Shared {
        limits,
        bytes: Semaphore::new(limits.bytes),
        shares: Mutex::new(Shares::default()),
    });
    (
        IncomingSender {
            tx,
            shared: shared.clone(),
        },
        Incoming { rx, shared },
    )
}

struct Shared {
    limits: IncomingLimits,
    /// One permit per byte of `limits.bytes`.
    bytes: Semaphore,
    shares: Mutex<Shares>,
}

/// Each sending peer's share (one permit per byte of `limits.peer_bytes`),
/// created at its first frame. Only peers a transport has authenticated
/// (or, in memory, members of the network) send, so this grows with the
/// network map, not with what strangers do.
#[derive(Default)]
struct Shares {
    closed: bool,
    by_peer: HashMap<PublicKey, Arc<Semaphore>>,
}

impl Shared {
    fn share(&self, peer: PublicKey) -> Arc<Semaphore> {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let closed = shares.closed;
        shares
            .by_peer
            .entry(peer)
            .or_insert_with(|| {
                let share = Semaphore::new(self.limits.peer_bytes);
                if closed {
                    share.close();
                }
                Arc::new(share)
            })
            .clone()
    }

    fn charge(&self, len: usize) -> Result<u32, IncomingRefused> {
        let max = self.limits.peer_bytes - FRAME_OVERHEAD;
        if len > max {
            return Err(IncomingRefused::TooLarge { len, max });
        }
        u32::try_from(len + FRAME_OVERHEAD).map_err(|_| IncomingRefused::TooLarge { len, max })
    }
}

/// A frame in the queue, holding `charge` permits of the queue's bytes and
/// of its sender's share until the node takes it.
struct Queued {
    from: PublicKey,
    frame: Vec<u8>,
    share: Arc<Semaphore>,
    charge: u32,
}

/// Frames received from peers: each with the **authenticated** sender's
/// identity key and the frame's bytes, exactly as the sender passed them
/// to [`Transport::try_send`](super::Transport::try_send). Bounded in
/// frames and bytes, with a share per peer ([`IncomingLimits`], and the
/// [module docs](self) for why); a transport that finds it full waits
/// (TCP) or refuses (memory).
///
/// Dropping it tells the transport the node stopped reading: waiting
/// senders are refused and the TCP transport closes its connections.
pub struct Incoming {
    rx: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("frames", &self.rx.len())
            .field("bytes_held", &self.bytes_held())
            .field("limits", &self.shared.limits)
            .finish()
    }
}

impl Incoming {
    /// The next frame, waiting for one; `None` once every sender is gone
    /// (the transport shut down) and the queue is empty. Cancel-safe: a
    /// frame is never lost when the future is dropped (as in `select!`).
    pub async fn recv(&mut self) -> Option<(PublicKey, Vec<u8>)> {
        let queued = self.rx.recv().await?;
        Some(self.release(queued))
    }

    /// The next frame if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Result<(PublicKey, Vec<u8>), TryRecvError> {
        let queued = self.rx.try_recv()?;
        Ok(self.release(queued))
    }

    /// The bytes charged for the frames queued now, plus the budget senders
    /// have reserved for their next frame (a sender waiting for room may
    /// already hold part of it): never more than
    /// [`limits().bytes`](IncomingLimits::bytes).
    pub fn bytes_held(&self) -> usize {
        self.shared.limits.bytes - self.shared.bytes.available_permits()
    }

    /// The part of [`bytes_held`](Self::bytes_held) charged to frames from
    /// `peer`: never more than [`limits().peer_bytes`](IncomingLimits::peer_bytes).
    pub fn peer_bytes_held(&self, peer: &PublicKey) -> usize {
        let shares = self
            .shared
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shares.by_peer.get(peer).map_or(0, |share| {
            self.shared.limits.peer_bytes - share.available_permits()
        })
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no frame is queued now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The bounds this queue enforces.
    pub fn limits(&self) -> IncomingLimits {
        self.shared.limits
    }

    fn release(&self, queued: Queued) -> (PublicKey, Vec<u8>) {
        let charge = queued.charge as usize;
        self.shared.bytes.add_permits(charge);
        queued.share.add_permits(charge);
        (queued.from, queued.frame)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Senders waiting for budget must not wait forever for a reader
        // that is gone.
        self.shared.bytes.close();
        let mut shares = self
            .shared
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shares.closed = true;
        for share in shares.by_peer.values() {
            share.close();
        }
    }
}

/// The sending side of an [`Incoming`] queue, for a transport's
/// implementation: pushes a received frame with its sender's identity.
/// Cheap to clone; every clone feeds the same queue.
#[derive(Clone)]
pub struct IncomingSender {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IncomingSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingSender")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl IncomingSender {
    /// The bounds of the queue.
    pub fn limits(&self) -> IncomingLimits {
        self.shared.limits
    }

    /// Frames in the queue now, counting those a sender has reserved room
    /// for and not queued yet.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queues `frame` from `from` if the queue has room for it (its frames,
    /// its bytes and `from`'s share); refuses without waiting otherwise.
    pub fn try_send(&self, from: PublicKey, frame: Vec<u8>) -> Result<(), IncomingRefused> {
        self.peer(from).try_send(frame)
    }

    /// Queues `frame` from `from`, waiting until it fits.
    pub async fn send(&self, from: PublicKey, frame: Vec<u8>) -> Result<(), IncomingRefused> {
        let peer = self.peer(from);
        let reservation = peer.reserve(frame.len(), &hex::encode(from.0)).await?;
        reservation.send(frame);
        Ok(())
    }

    /// The sender for frames from one peer: looks the peer's share up once,
    /// for a connection's whole life.
    pub(crate) fn peer(&self, from: PublicKey) -> PeerSender {
        PeerSender {
            from,
            share: self.shared.share(from),
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Frames from one peer into an [`Incoming`] queue.
pub(crate) struct PeerSender {
    from: PublicKey,
    share: Arc<Semaphore>,
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

/// Room in the queue for one frame of at most the reserved length, taken
/// before the frame is allocated; given back if dropped unused.
pub(crate) struct Reservation<'a> {
    sender: &'a PeerSender,
    charge: u32,
    share: SemaphorePermit<'a>,
    bytes: SemaphorePermit<'a>,
    slot: mpsc::Permit<'a, Queued>,
}

/// Which bound a sender waited for, for the log line.
fn log_wait(peer: &str, bound: &str, charge: u32, held: usize, limit: usize) {
    debug!(
        peer,
        bound,
        frame_bytes = charge,
        held,
        limit,
        "a received frame waits for room in the node's incoming queue (the node is behind, or the peer sends faster than its share); reading from the peer paused"
    );
}

impl PeerSender {
    /// Waits until a frame of `len` bytes fits (the peer's share first, then
    /// the queue's bytes, then a frame slot) and reserves the room. `name`
    /// names the peer in the DEBUG line logged when it has to wait.
    pub(crate) async fn reserve(
        &self,
        len: usize,
        name: &str,
    ) -> Result<Reservation<'_>, IncomingRefused> {
        let charge = self.shared.charge(len)?;
        let limits = self.shared.limits;
        let closed = |_| IncomingRefused::Closed;
        let share = match self.share.try_acquire_many(charge) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(IncomingRefused::Closed),
            Err(TryAcquireError::NoPermits) => {
                let held = limits.peer_bytes - self.share.available_permits();
                log_wait(name, "incoming_peer_bytes", charge, held, limits.peer_bytes);
                self.share.acquire_many(charge).await.map_err(closed)?
            }
        };
        let bytes = match self.shared.bytes.try_acquire_many(charge) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(IncomingRefused::Closed),
            Err(TryAcquireError::NoPermits) => {
                let held = limits.bytes - self.shared.bytes.available_permits();
                log_wait(name, "incoming_queue_bytes", charge, held, limits.bytes);
                self.shared
                    .bytes
                    .acquire_many(charge)
                    .await
                    .map_err(closed)?
            }
        };
        let slot = self
            .tx
            .reserve()
            .await
            .map_err(|_| IncomingRefused::Closed)?;
        Ok(Reservation {
            sender: self,
            charge,
            share,
            bytes,
            slot,
        })
    }

    /// Queues `frame` if it fits now; refuses otherwise.
    pub(crate) fn try_send(&self, frame: Vec<u8>) -> Result<(), IncomingRefused> {
        let charge = self.shared.charge(frame.len())?;
        let refused = |e| match e {
            TryAcquireError::Closed => IncomingRefused::Closed,
            TryAcquireError::NoPermits => IncomingRefused::Full,
        };
        let share = self.share.try_acquire_many(charge).map_err(refused)?;
        let bytes = self
            .shared
            .bytes
            .try_acquire_many(charge)
            .map_err(refused)?;
        let slot = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => IncomingRefused::Full,
            mpsc::error::TrySendError::Closed(()) => IncomingRefused::Closed,
        })?;
        Reservation {
            sender: self,
            charge,
            share,
            bytes,
            slot,
        }
        .send(frame);
        Ok(())
    }
}

impl Reservation<'_> {
    /// Queues `frame`, which must be no longer than the reserved length
    /// (the charge stays what was reserved).
    pub(crate) fn send(self, frame: Vec<u8>) {
        debug_assert!(frame.len() + FRAME_OVERHEAD <= self.charge as usize);
        // The permits now belong to the queued frame: the reader gives
        // them back when it takes the frame.
        self.share.forget();
        self.bytes.forget();
        self.slot.send(Queued {
            from: self.sender.from,
            frame,
            share: self.sender.share.clone(),
            charge: self.charge,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PublicKey = PublicKey([1; 32]);
    const B: PublicKey = PublicKey([2; 32]);

    fn limits() -> IncomingLimits {
        IncomingLimits {
            frames: 100,
            bytes: 4 * (1000 + FRAME_OVERHEAD),
            peer_bytes: 2 * (1000 + FRAME_OVERHEAD),
        }
    }

    #[test]
    fn a_peer_fills_its_share_and_the_others_still_get_in() {
        let (tx, mut rx) = channel(limits());
        let charge = 1000 + FRAME_OVERHEAD;
        tx.try_send(A, vec![1; 1000]).unwrap();
        tx.try_send(A, vec![2; 1000]).unwrap();
        assert_eq!(tx.try_send(A, vec![3; 1000]), Err(IncomingRefused::Full));
        assert_eq!(rx.peer_bytes_held(&A), 2 * charge);
        tx.try_send(B, vec![4; 1000]).unwrap();
        tx.try_send(B, vec![5; 1000]).unwrap();
        assert_eq!(rx.bytes_held(), 4 * charge);
        assert_eq!(rx.len(), 4);
        // Taking A's first frame gives its budget back, to A.
        assert_eq!(rx.try_recv().unwrap(), (A, vec![1; 1000]));
        assert_eq!(rx.peer_bytes_held(&A), charge);
        tx.try_send(A, vec![3; 1000]).unwrap();
        assert_eq!(rx.bytes_held(), 4 * charge);
    }

    #[test]
    fn frames_larger_than_a_share_are_refused_and_empty_ones_are_charged() {
        let (tx, rx) = channel(limits());
        let max = 2 * (1000 + FRAME_OVERHEAD) - FRAME_OVERHEAD;
        assert_eq!(
            tx.try_send(A, vec![0; max + 1]),
            Err(IncomingRefused::TooLarge { len: max + 1, max })
        );
        tx.try_send(A, Vec::new()).unwrap();
        assert_eq!(rx.bytes_held(), FRAME_OVERHEAD);
    }

    #[test]
    fn the_frame_bound_still_holds() {
        let (tx, _rx) = channel(IncomingLimits {
            frames: 2,
            ..IncomingLimits::default()
        });
        tx.try_send(A, vec![]).unwrap();
        tx.try_send(B, vec![]).unwrap();
        assert_eq!(tx.try_send(A, vec![]), Err(IncomingRefused::Full));
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_in_once_the_node_reads_and_is_refused_once_it_stops() {
        let (tx, mut rx) = channel(limits());
        tx.try_send(A, vec![1; 1000]).unwrap();
        tx.try_send(A, vec![2; 1000]).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(A, vec![3; 1000]).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(rx.recv().await, Some((A, vec![1; 1000])));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.len(), 2);

        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(A, vec![4; 1000]).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(IncomingRefused::Closed));
        assert_eq!(tx.try_send(B, vec![]), Err(IncomingRefused::Closed));
    }
}
