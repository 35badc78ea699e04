//! The link model of a [`MockNetwork`] (with [`LinkFaults`]): links dialled
//! on first use, broken with the frames on them lost, bounded queues that
//! refuse frames, reconnects — the way TCP connections behave — and the link
//! events each node's delivery hears.

use super::*;
use crate::node::NodeCore;
use crate::node::delivery::{Sent, Transmit};

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
    pub(super) fn modelled(&self) -> bool {
        *self != LinkFaults::default()
    }
}

/// The state of the link between two nodes (with [`LinkFaults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkState {
    /// Never connected: connects at the next step.
    Dialling,
    /// Carrying frames.
    Up,
    /// Broken: comes back at the next redelivery round.
    Broken,
}

impl MockNetwork {
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

    /// Puts every frame node `i`'s delivery has queued on the network,
    /// through the link model if it is on, and reports to the delivery what
    /// the network took.
    pub(super) fn transmit(&mut self, i: usize) {
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
