//! [`Delivery`]: the sending side of the session protocol, sans-IO. The
//! policy and how a driver uses it are on the type.

mod schedule;

use crate::PublicKey;
use crate::node::UnackedFrame;
use schedule::RedeliverySchedule;
use std::collections::{HashMap, HashSet, VecDeque};

/// A frame to hand to the transport, with the [`Receipt`] to report its
/// fate with.
#[derive(Debug)]
pub struct Transmit {
    /// The receiver.
    pub to: PublicKey,
    /// The encoded frame.
    pub frame: Vec<u8>,
    /// Give it back to [`Delivery::report`] once the transport took or
    /// refused the frame.
    pub receipt: Receipt,
}

/// What [`Delivery::report`] needs to know about a frame it handed out.
#[derive(Debug)]
pub struct Receipt {
    to: PublicKey,
    /// A message sent again from the outbox (not a batch's new frame).
    resent: bool,
    /// The outbox key of a message re-sent outside a tick (to a reconnected
    /// peer): the schedule records when it went.
    resent_between_ticks: Option<Vec<u8>>,
}

/// What the transport did with a [`Transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued (or delivered): the frame is on its way.
    Accepted,
    /// Not taken now (the peer's queue is full, or it is unreachable): the
    /// message stays in the outbox, and the re-sends queued for this peer
    /// are not tried.
    Refused,
}

/// Counters of what a [`Delivery`] did, for tests and simulations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Frames of committed batches handed out.
    pub fresh: u64,
    /// Outbox messages handed out again at a tick.
    pub resent_at_tick: u64,
    /// Outbox messages handed out again because a link came (back) up or
    /// link events were missed.
    pub resent_on_reconnect: u64,
    /// Frames the transport refused.
    pub refused: u64,
    /// Re-sends not tried because their peer had just refused a frame.
    pub skipped_after_refusal: u64,
}

/// What a peer's link may have lost since its last `Connected`: what a
/// reconnection must re-send at once.
#[derive(Debug, Default)]
struct LinkLosses {
    /// A frame for the peer was refused (queue full, unreachable): re-send
    /// all its unacknowledged messages.
    refused: bool,
    /// Outbox keys of the peer's messages unacknowledged when its link went
    /// down: the old link may have carried them.
    in_flight_at_disconnect: HashSet<Vec<u8>>,
}

/// [`Delivery`]: the sending side of the session protocol — sending,
/// re-sending and what a lost link means — as a state machine that does no
/// I/O (sans-IO, in the manner of `quinn-proto` and `h2`'s codec).
///
/// Why one module: the exactly-once guarantee rests on every unacknowledged
/// message being sent again until its ack is committed, and on not sending
/// the rest needlessly (a node with thousands of messages in flight would
/// otherwise re-send them all at every tick). That policy is subtle, and
/// every driver needs it: the tokio node, the deterministic
/// [`MockNetwork`](crate::testing::MockNetwork), benchmark harnesses. Written
/// once here, the seeded simulation runs exactly the policy production runs,
/// and a fix is made once.
///
/// How a driver uses it: it feeds in what happened — a committed batch's
/// frames ([`released`](Delivery::released)), a redelivery tick
/// ([`tick`](Delivery::tick)), a link that came up or went down
/// ([`connected`](Delivery::connected), [`disconnected`](Delivery::disconnected)),
/// missed link events ([`events_lost`](Delivery::events_lost)) — then takes
/// the frames to send with [`poll_transmit`](Delivery::poll_transmit) and
/// reports for each whether its transport took it
/// ([`report`](Delivery::report)). Delivery never calls a transport, never
/// reads a clock (a tick is whatever interval the driver chooses) and never
/// reads the store: the outbox is handed in by the caller
/// ([`NodeCore::unacked_frames`](crate::NodeCore::unacked_frames)).
///
/// The policy:
///
/// * a committed batch's frames are sent at once;
/// * at a tick, a message unacknowledged for at least one whole interval is
///   sent again, and again at every tick until its ack is committed; one
///   sent since the previous tick waits for the next (its ack is most likely
///   in flight). The first tick (start-up) re-sends the whole outbox: it may
///   hold messages of an earlier run whose connections lost them (see
///   `schedule.rs`);
/// * once a peer refuses a frame (its queue is full, it is unreachable),
///   the re-sends queued for it now are not tried: they stay in the durable
///   outbox for the next tick or the peer's reconnect, instead of collecting
///   one refusal each (a batch's new frames are each tried);
/// * when a link comes (back) up, only what it may have lost is sent again
///   at once: the peer's messages that were unacknowledged when its previous
///   link went down, or all its unacknowledged messages after a refusal. A
///   transport keeps what it accepted queued until a link carries it, so
///   after a first connection nothing is missing.
#[derive(Debug)]
pub struct Delivery {
    schedule: RedeliverySchedule,
    /// Per peer, what its next `Connected` must re-send.
    losses: HashMap<PublicKey, LinkLosses>,
    /// Frames to hand out, in order.
    queue: VecDeque<Transmit>,
    stats: DeliveryStats,
}

impl Default for Delivery {
    fn default() -> Self {
        Self::new()
    }
}

impl Delivery {
    /// A node's delivery at start-up: its first [`tick`](Self::tick)
    /// re-sends the whole outbox.
    pub fn new() -> Self {
        Self {
            schedule: RedeliverySchedule::new(),
            losses: HashMap::new(),
            queue: VecDeque::new(),
            stats: DeliveryStats::default(),
        }
    }

    /// What this delivery did so far.
    pub fn stats(&self) -> DeliveryStats {
        self.stats
    }

    /// The frames a committed batch released (its `Output::frames`): sent
    /// at once.
    pub fn released(&mut self, frames: Vec<(PublicKey, Vec<u8>)>) {
        self.stats.fresh += frames.len() as u64;
        self.queue
            .extend(frames.into_iter().map(|(to, frame)| Transmit {
                to,
                frame,
                receipt: Receipt {
                    to,
                    resent: false,
                    resent_between_ticks: None,
                },
            }));
    }

    /// A redelivery tick; `outbox` is every unacknowledged message (the
    /// whole outbox, so that acknowledged ones are forgotten). Queues those
    /// unacknowledged for at least one whole interval.
    pub fn tick(&mut self, outbox: Vec<UnackedFrame>) {
        let due = self.schedule.tick(outbox);
        self.stats.resent_at_tick += due.len() as u64;
        self.queue.extend(due.into_iter().map(|m| Transmit {
            to: m.to,
            frame: m.frame,
            receipt: Receipt {
                to: m.to,
                resent: true,
                resent_between_ticks: None,
            },
        }));
    }

    /// The link to `peer` went down. `outbox` is every unacknowledged
    /// message (`None` if it could not be read: then the next `Connected`
    /// re-sends all of the peer's).
    pub fn disconnected(&mut self, peer: PublicKey, outbox: Option<Vec<UnackedFrame>>) {
        let lost = self.losses.entry(peer).or_default();
        match outbox {
            Some(outbox) => lost
                .in_flight_at_disconnect
                .extend(outbox.into_iter().filter(|m| m.to == peer).map(|m| m.key)),
            None => lost.refused = true,
        }
    }

    /// Whether a `Connected` for `peer` now would re-send anything, so a
    /// driver reads the outbox only when it must.
    pub fn has_losses(&self, peer: &PublicKey) -> bool {
        self.losses
            .get(peer)
            .is_some_and(|l| l.refused || !l.in_flight_at_disconnect.is_empty())
    }

    /// The link to `peer` came (back) up; `outbox` as for
    /// [`tick`](Self::tick) (read only if [`has_losses`](Self::has_losses)).
    /// Queues what its previous link may have lost.
    pub fn connected(&mut self, peer: PublicKey, outbox: Vec<UnackedFrame>) {
        match self.losses.remove(&peer) {
            Some(lost) if lost.refused => self.resend_now(Some(peer), None, outbox),
            Some(lost) if !lost.in_flight_at_disconnect.is_empty() => {
                self.resend_now(Some(peer), Some(&lost.in_flight_at_disconnect), outbox)
            }
            // Everything sent since the last connection is queued for
            // this link.
            _ => {}
        }
    }

    /// The driver missed link events (its event queue overflowed): every
    /// unacknowledged message is sent again at once rather than guessing.
    pub fn events_lost(&mut self, outbox: Vec<UnackedFrame>) {
        self.losses.clear();
        self.resend_now(None, None, outbox);
    }

    fn resend_now(
        &mut self,
        peer: Option<PublicKey>,
        only: Option<&HashSet<Vec<u8>>>,
        outbox: Vec<UnackedFrame>,
    ) {
        for m in outbox {
            if peer.is_some_and(|p| p != m.to) || only.is_some_and(|keys| !keys.contains(&m.key)) {
                continue;
            }
            self.stats.resent_on_reconnect += 1;
            self.queue.push_back(Transmit {
                to: m.to,
                frame: m.frame,
                receipt: Receipt {
                    to: m.to,
                    resent: true,
                    resent_between_ticks: Some(m.key),
                },
            });
        }
    }

    /// The next frame to hand to the transport, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }

    /// Whether frames are waiting to be taken with
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn has_transmits(&self) -> bool {
        !self.queue.is_empty()
    }

    /// What the transport did with a frame [`poll_transmit`](Self::poll_transmit)
    /// gave out. A refusal drops the re-sends queued for that peer (they
    /// stay in the outbox) and makes its next `Connected` re-send all of its
    /// unacknowledged messages.
    pub fn report(&mut self, receipt: Receipt, sent: Sent) {
        match sent {
            Sent::Accepted => {
                // A message re-sent to a reconnected peer is not due again
                // at the next tick; one the peer refused keeps its place.
                if let Some(key) = receipt.resent_between_ticks {
                    self.schedule.sent_between_ticks(key);
                }
            }
            Sent::Refused => {
                self.stats.refused += 1;
                self.losses.entry(receipt.to).or_default().refused = true;
                let before = self.queue.len();
                self.queue
                    .retain(|t| t.to != receipt.to || !t.receipt.resent);
                self.stats.skipped_after_refusal += (before - self.queue.len()) as u64;
            }
        }
    }
}
