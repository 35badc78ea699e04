//! Which partition a frame from a peer belongs to, computed by the gateway
//! from the frame alone, with no lookup.
//!
//! A session is held by ONE partition (its flow's). Sessions this node
//! initiates get ids the partition chooses with [`PartitionIds`]: ids with
//! `id % partitions == partition`. Sessions a peer initiates carry the
//! peer's id; the partition is a hash of the peer's key and that id. Every
//! frame says which kind it is: a `Session` message `from_initiator` comes
//! from the initiator (the peer initiated), an `Ack` `from_initiator`
//! acknowledges a message of the initiator (this node initiated).

use crate::protocol::WireMessage;
use crate::{IdSource, PublicKey};

/// The partition holding the session `message` belongs to, for a message
/// the transport authenticated as coming from `peer`.
pub(crate) fn partition_of(peer: &PublicKey, message: &WireMessage, partitions: u32) -> u32 {
    let (session, we_initiated) = match message {
        WireMessage::Session {
            session,
            from_initiator,
            ..
        } => (*session, !from_initiator),
        WireMessage::Ack {
            session,
            from_initiator,
            ..
        } => (*session, *from_initiator),
    };
    if we_initiated {
        (session % u64::from(partitions)) as u32
    } else {
        peer_session_partition(peer, session, partitions)
    }
}

/// The partition of a session `peer` initiated with id `session` (FNV-1a
/// over the key and the id: stable across builds, unlike std's hasher).
fn peer_session_partition(peer: &PublicKey, session: u64, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in peer.0.iter().chain(session.to_be_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

/// How many responder flows of one peer partition `partition` of
/// `partitions` may run at once, for a node-wide bound of `node_wide`
/// (`NodeConfig::max_responders_per_peer`). A peer's sessions spread over
/// every partition (by hash), and each partition keeps its own count, in
/// its own schema, committed only by its lease holder: the bound is split
/// into shares that add up to `node_wide`, so a peer never has more than
/// that many responders running on the node, whichever workers run them.
/// Every share is at least 1 (a session hashed to a partition must be
/// servable), so with fewer than `partitions` the bound is `partitions`.
pub(crate) fn responder_share(node_wide: u32, partition: u32, partitions: u32) -> u32 {
    let partitions = partitions.max(1);
    let base = node_wide / partitions;
    let extra = u32::from(partition < node_wide % partitions);
    (base + extra).max(1)
}

/// Random session ids of one partition: `id % partitions == partition`, so
/// the gateway routes the peer's answers back to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionIds {
    pub(crate) partition: u32,
    pub(crate) partitions: u32,
}

impl IdSource for PartitionIds {
    fn next_id(&mut self) -> u64 {
        let n = u64::from(self.partitions);
        let id: u64 = rand::random::<u64>() / n * n;
        id + u64::from(self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Body;

    #[test]
    fn answers_to_our_sessions_go_to_the_partition_that_chose_the_id() {
        let peer = PublicKey([7; 32]);
        for partition in 0..5 {
            let mut ids = PartitionIds {
                partition,
                partitions: 5,
            };
            for _ in 0..100 {
                let session = ids.next_id();
                let reply = WireMessage::Session {
                    session,
                    from_initiator: false,
                    seq: 3,
                    body: Body::End(None),
                };
                let ack = WireMessage::Ack {
                    session,
                    from_initiator: true,
                    seq: 0,
                    responder_version: Some(1),
                };
                assert_eq!(partition_of(&peer, &reply, 5), partition);
                assert_eq!(partition_of(&peer, &ack, 5), partition);
            }
        }
    }

    #[test]
    fn responder_shares_add_up_to_the_node_wide_bound() {
        for (node_wide, partitions, total) in [
            (256, 8, 256),
            (10, 4, 10),
            (4, 4, 4),
            (3, 4, 4),
            (1, 8, 8),
            (7, 1, 7),
        ] {
            let shares: Vec<u32> = (0..partitions)
                .map(|p| responder_share(node_wide, p, partitions))
                .collect();
            assert_eq!(
                shares.iter().sum::<u32>(),
                total,
                "{node_wide} over {partitions}"
            );
            assert!(shares.iter().all(|s| *s >= 1));
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_peers_session_stays_in_one_partition_and_sessions_spread() {
        let peer = PublicKey([9; 32]);
        let mut seen = std::collections::BTreeSet::new();
        for session in 0..200u64 {
            let data = WireMessage::Session {
                session,
                from_initiator: true,
                seq: 1,
                body: Body::End(None),
            };
            let ack = WireMessage::Ack {
                session,
                from_initiator: false,
                seq: 4,
                responder_version: None,
            };
            let p = partition_of(&peer, &data, 4);
            assert_eq!(partition_of(&peer, &ack, 4), p);
            assert!(p < 4);
            seen.insert(p);
        }
        assert_eq!(seen.len(), 4, "200 sessions use every one of 4 partitions");
    }
}
