//! [`RedeliverySchedule`]: which unacknowledged outbox messages a node's
//! [`Delivery`](super::Delivery) re-sends at a redelivery tick.
//!
//! Why: the outbox holds every message whose ack has not been committed yet,
//! and under load most of them were sent moments ago with their acks simply
//! in flight. Re-sending the whole outbox at every tick costs the sender and
//! the peer (which drops the duplicates) work proportional to everything in
//! flight. A message is re-sent only once it has been unacknowledged for at
//! least one full interval.
//!
//! How, without send times on disk or decoding every frame the driver
//! releases: the schedule counts ticks and remembers, per outbox key, the
//! last tick up to which that message needs no re-send (its *quiet-until*
//! tick). At each tick the driver reads the outbox and hands every entry to
//! [`RedeliverySchedule::tick`]:
//!
//! * an entry the schedule has not seen at an earlier tick was sent by a
//!   commit since the previous tick, so less than one interval ago: it is
//!   not re-sent now, and becomes due at the next tick;
//! * an entry seen at an earlier tick (or re-sent at one) is due: it has been
//!   unacknowledged for at least one full interval. It is re-sent, and again
//!   at every following tick until its ack is committed — the at-least-once
//!   guarantee does not depend on the schedule's memory;
//! * at the very first tick (node start-up) every entry is due: the outbox
//!   may hold messages of a previous run of the node, whose connections lost
//!   whatever was in them.
//!
//! Messages re-sent outside the ticks (a peer reconnected: all its
//! unacknowledged messages go at once) are recorded with
//! [`RedeliverySchedule::sent_between_ticks`], so the next tick treats them
//! like fresh sends. So a message is re-sent between one and two intervals
//! after it was last sent, never sooner.
//!
//! Memory: the schedule is rebuilt from the outbox at every tick, so it
//! holds at most one small entry per outbox message (plus those re-sent to a
//! reconnected peer since the last tick, which are in the outbox too). An
//! acknowledged message is forgotten at the next tick.

use crate::node::UnackedFrame;
use std::collections::HashMap;

/// The driver's record of when each unacknowledged message was last sent,
/// in redelivery ticks. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct RedeliverySchedule {
    /// Ticks so far (the first tick is 1).
    ticks: u64,
    /// Outbox key -> the last tick at which that message is not re-sent.
    quiet_until: HashMap<Vec<u8>, u64>,
}

impl RedeliverySchedule {
    /// An empty schedule: its first tick re-sends everything.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A redelivery tick: `outbox` is every unacknowledged message (the
    /// whole outbox, not a subset, so that acknowledged messages are
    /// forgotten). Returns those to re-send now.
    pub(crate) fn tick(&mut self, outbox: Vec<UnackedFrame>) -> Vec<UnackedFrame> {
        self.ticks += 1;
        let now = self.ticks;
        let first = now == 1;
        let mut next = HashMap::with_capacity(outbox.len());
        let mut due = Vec::new();
        for entry in outbox {
            let quiet_until = match self.quiet_until.remove(&entry.key) {
                Some(until) => until,
                // Start-up: it may have waited since before a restart.
                None if first => 0,
                // Sent since the last tick: quiet until this one.
                None => now,
            };
            if quiet_until < now {
                next.insert(entry.key.clone(), now);
                due.push(entry);
            } else {
                next.insert(entry.key, quiet_until);
            }
        }
        self.quiet_until = next;
        due
    }

    /// Records that the message with outbox key `key` was just sent outside
    /// a tick (to a reconnected peer): the next tick leaves it alone, the
    /// one after re-sends it if it is still unacknowledged.
    pub(crate) fn sent_between_ticks(&mut self, key: Vec<u8>) {
        self.quiet_until.insert(key, self.ticks + 1);
    }

    /// How many messages the schedule remembers (at most the outbox's size
    /// at the last tick plus those re-sent since). For tests.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.quiet_until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PublicKey;

    fn entry(n: u8) -> UnackedFrame {
        UnackedFrame {
            key: vec![n],
            to: PublicKey([9; 32]),
            frame: vec![n, n],
        }
    }

    fn keys(frames: &[UnackedFrame]) -> Vec<u8> {
        frames.iter().map(|f| f.key[0]).collect()
    }

    #[test]
    fn the_first_tick_resends_everything() {
        let mut s = RedeliverySchedule::new();
        assert_eq!(keys(&s.tick(vec![entry(1), entry(2)])), vec![1, 2]);
        // ...and, still unacknowledged, at every tick after.
        assert_eq!(keys(&s.tick(vec![entry(1), entry(2)])), vec![1, 2]);
        assert_eq!(keys(&s.tick(vec![entry(1), entry(2)])), vec![1, 2]);
    }

    #[test]
    fn a_message_sent_since_the_last_tick_waits_one_more_tick() {
        let mut s = RedeliverySchedule::new();
        assert!(s.tick(vec![]).is_empty());
        // 3 was committed and sent between tick 1 and tick 2.
        assert!(s.tick(vec![entry(3)]).is_empty());
        // Unacknowledged for a whole interval now: re-sent, then at every
        // tick until acknowledged.
        for _ in 0..5 {
            assert_eq!(keys(&s.tick(vec![entry(3)])), vec![3]);
        }
    }

    #[test]
    fn acknowledged_messages_are_forgotten() {
        let mut s = RedeliverySchedule::new();
        s.tick((0..100).map(entry).collect());
        assert_eq!(s.remembered(), 100);
        // 90 acknowledged, 1 new.
        let due = s.tick((90..101).map(entry).collect());
        assert_eq!(keys(&due), (90..100).collect::<Vec<_>>());
        assert_eq!(s.remembered(), 11);
        assert!(s.tick(vec![]).is_empty());
        assert_eq!(s.remembered(), 0);
    }

    #[test]
    fn a_message_resent_to_a_reconnected_peer_skips_the_next_tick() {
        let mut s = RedeliverySchedule::new();
        s.tick(vec![entry(1), entry(2)]);
        // Between ticks 1 and 2 the peer of 1 reconnects: 1 goes at once.
        s.sent_between_ticks(vec![1]);
        assert_eq!(keys(&s.tick(vec![entry(1), entry(2)])), vec![2]);
        assert_eq!(keys(&s.tick(vec![entry(1), entry(2)])), vec![1, 2]);
    }

    #[test]
    fn a_fresh_message_resent_on_reconnect_still_waits_a_whole_interval() {
        let mut s = RedeliverySchedule::new();
        s.tick(vec![]);
        // Sent by a commit, then again to its reconnected peer, both
        // between ticks 1 and 2.
        s.sent_between_ticks(vec![7]);
        assert!(s.tick(vec![entry(7)]).is_empty());
        assert_eq!(keys(&s.tick(vec![entry(7)])), vec![7]);
    }

    #[test]
    fn a_restarted_node_resends_everything_at_once() {
        let mut before = RedeliverySchedule::new();
        before.tick(vec![]);
        assert!(before.tick(vec![entry(1)]).is_empty());
        // The node restarts: a new driver, a new schedule.
        let mut after = RedeliverySchedule::new();
        assert_eq!(keys(&after.tick(vec![entry(1)])), vec![1]);
    }
}
