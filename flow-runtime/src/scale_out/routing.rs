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
