//! The session protocol's wire messages: what one node sends another.
//!
//! Every frame is one [`WireMessage`] in MessagePack (rmp-serde). Frames are
//! opaque bytes to the transport, which only needs the peer's identity key to
//! route them. A frame that does not decode is logged and dropped, never a
//! panic: a peer's bytes are untrusted.
//!
//! Protocol, per session and per direction:
//! * the initiator's message 0 is [`Body::Init`] (initiating flow NAME,
//!   VERSION, the initiator's identity), then its data from 1;
//! * the responder's messages count from 0;
//! * the last message of a direction is [`Body::End`] (its flow ended);
//! * every sequenced message is acknowledged with [`WireMessage::Ack`] once
//!   the receiver has committed it; the sender redelivers until then;
//! * an `Init` the receiver will not serve (unknown flow, draining) is
//!   answered with an unsequenced-looking `End` at the responder's seq 0
//!   carrying the reason, which ends the initiator's session;
//! * the responder's `Ack` of an `Init` carries its flow's VERSION, which
//!   the initiator keeps for `session.counterparty_version()`.
//!
//! Wire versions: this build writes version 2 and reads 1 and 2. Version 2
//! added the `Init`'s creation time (so a responder can refuse an
//! initiation older than its session retention, which is what lets it
//! forget ended sessions: see `NodeConfig::session_retention`) and the
//! responder's VERSION in the `Ack`. A version-1 frame reads as the same
//! message without them (`created_at: None`, `responder_version: None`); a
//! node of version 1 refuses version-2 frames, which stay in the sender's
//! outbox and are redelivered once it is upgraded.

use crate::{FlowError, Party, Payload};
use serde::{Deserialize, Serialize};

/// The protocol version carried in every frame this build writes; a frame
/// of a version it does not read is refused rather than misread.
pub const WIRE_VERSION: u8 = 2;

/// The oldest wire version this build still reads (see the module docs).
pub const OLDEST_WIRE_VERSION_READ: u8 = 1;

/// One frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireMessage {
    /// A sequenced message on a session.
    Session {
        /// The session's id (chosen by the initiator).
        session: u64,
        /// Whether the sender is the session's initiator.
        from_initiator: bool,
        /// Per-session, per-direction sequence number.
        seq: u64,
        /// The content.
        body: Body,
    },
    /// The receiver of a sequenced message has committed it.
    Ack {
        /// The session.
        session: u64,
        /// Whether the acknowledged message came from the initiator.
        from_initiator: bool,
        /// The acknowledged sequence number.
        seq: u64,
        /// In the responder's ack of an `Init`: the `Flow::VERSION` of the
        /// responder it started. `None` otherwise, and from version-1 peers.
        responder_version: Option<u32>,
    },
}

/// What a sequenced message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Opens the session: the responder registered for `flow` is started.
    Init {
        /// `Flow::NAME` of the initiating flow.
        flow: String,
        /// Its `Flow::VERSION`.
        version: u32,
        /// The initiator's identity (its key must match the transport's
        /// authenticated peer).
        initiator: Party,
        /// When the initiating node committed this `Init`, in milliseconds
        /// since the Unix epoch by its clock. Redeliveries carry the same
        /// value (the frame is re-sent from the outbox as it was written),
        /// so a responder can tell an old initiation from a new one. `None`
        /// only in version-1 frames, which are refused.
        created_at: Option<u64>,
    },
    /// A value sent with `FlowSession::send`.
    Data(Payload),
    /// The sender's flow ended: `Some` with the error it ended with (or the
    /// reason an `Init` was refused), `None` for a normal end.
    End(Option<FlowError>),
}

/// A frame with its version byte.
#[derive(Serialize)]
struct Frame<'a> {
    version: u8,
    message: &'a WireMessage,
}

/// A frame of this build's version, decoded.
#[derive(Deserialize)]
struct OwnedFrame {
    #[allow(dead_code)] // checked before the decode
    version: u8,
    message: WireMessage,
}

impl WireMessage {
    /// Encodes the frame. Encoding our own types cannot fail in practice; if
    /// it ever does, the error says which message.
    pub fn encode(&self) -> Result<Vec<u8>, FlowError> {
        // Sized up front: growing the buffer field by field (variant names,
        // the payload's type name, its bytes) cost several reallocations
        // per frame, a few percent of a busy node's CPU.
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        rmp_serde::encode::write(
            &mut out,
            &Frame {
                version: WIRE_VERSION,
                message: self,
            },
        )
        .map_err(|e| FlowError::internal(format!("cannot encode wire message {self:?}: {e}")))?;
        Ok(out)
    }

    /// About the encoded length: the fixed fields and names, plus what the
    /// body carries.
    fn encoded_len_hint(&self) -> usize {
        const FIXED: usize = 64;
        FIXED
            + match self {
                WireMessage::Session {
                    body: Body::Data(payload),
                    ..
                } => payload.type_name.len() + payload.bytes.len(),
                WireMessage::Session {
                    body:
                        Body::Init {
                            flow, initiator, ..
                        },
                    ..
                } => flow.len() + initiator.name().len() + 64,
                _ => 0,
            }
    }

    /// Decodes a frame received from a peer, of any version this build
    /// reads.
    pub fn decode(bytes: &[u8]) -> Result<WireMessage, String> {
        // A frame is a MessagePack array of two (0x92) whose first element
        // is the version, a positive fixint (below 0x80).
        let version = match bytes {
            [0x92, v, ..] if *v < 0x80 => *v,
            _ => return Err("malformed frame: not a versioned frame".to_owned()),
        };
        match version {
            WIRE_VERSION => {
                let frame: OwnedFrame =
                    rmp_serde::from_slice(bytes).map_err(|e| format!("malformed frame: {e}"))?;
                Ok(frame.message)
            }
            1 => v1::decode(bytes),
            v => Err(format!(
                "frame of wire version {v} (this node reads {OLDEST_WIRE_VERSION_READ} to {WIRE_VERSION})"
            )),
        }
    }
}

/// Wire version 1, read so that an upgraded node still understands what a
/// node of the previous version sends (and what its own outbox holds from
/// before the upgrade). The types mirror version 1 exactly: same variants,
/// in the same order, with the same fields.
mod v1 {
    use super::{Body as Current, WireMessage as CurrentMessage};
    use crate::{FlowError, Party, Payload};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Frame {
        #[allow(dead_code)] // checked by the caller, before this decode
        version: u8,
        message: WireMessage,
    }

    /// Lists the same fields as the current [`super::WireMessage`] on
    /// purpose, and must not be merged with it or derived from it: this
    /// copy pins version 1's format, which is frozen (nodes of version 1
    /// and outboxes written before an upgrade still send it), while the
    /// current type changes with each wire version. A field added to the
    /// current message is never added here.
    #[derive(Deserialize)]
    enum WireMessage {
        Session {
            session: u64,
            from_initiator: bool,
            seq: u64,
            body: Body,
        },
        Ack {
            session: u64,
            from_initiator: bool,
            seq: u64,
        },
    }

    /// Version 1's `Body`, frozen like [`WireMessage`] above.
    #[derive(Deserialize)]
    enum Body {
        Init {
            flow: String,
            version: u32,
            initiator: Party,
        },
        Data(Payload),
        End(Option<FlowError>),
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<CurrentMessage, String> {
        let frame: Frame =
            rmp_serde::from_slice(bytes).map_err(|e| format!("malformed frame: {e}"))?;
        Ok(match frame.message {
            WireMessage::Session {
                session,
                from_initiator,
                seq,
                body,
            } => CurrentMessage::Session {
                session,
                from_initiator,
                seq,
                body: match body {
                    Body::Init {
                        flow,
                        version,
                        initiator,
                    } => Current::Init {
                        flow,
                        version,
                        initiator,
                        created_at: None,
                    },
                    Body::Data(p) => Current::Data(p),
                    Body::End(e) => Current::End(e),
                },
            },
            WireMessage::Ack {
                session,
                from_initiator,
                seq,
            } => CurrentMessage::Ack {
                session,
                from_initiator,
                seq,
                responder_version: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PublicKey;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let m = WireMessage::Session {
            session: 7,
            from_initiator: true,
            seq: 0,
            body: Body::Init {
                flow: "a::b".into(),
                version: 2,
                initiator: Party::new("A", PublicKey([1; 32])),
                created_at: Some(1_700_000_000_000),
            },
        };
        let bytes = m.encode().unwrap();
        assert_eq!(WireMessage::decode(&bytes).unwrap(), m);
        assert!(WireMessage::decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(WireMessage::decode(&[0xff, 0x00, 0x13]).is_err());
        assert!(WireMessage::decode(&[]).is_err());
    }

    /// Version-1 frames, as a node of the previous version wrote them (the
    /// bytes spelled out, so a change to the types cannot hide a break),
    /// still decode: an `Init` without its creation time, an `Ack` without
    /// the responder's version.
    #[test]
    fn version_one_frames_still_read() {
        #[derive(Serialize)]
        enum V1Message {
            Session {
                session: u64,
                from_initiator: bool,
                seq: u64,
                body: V1Body,
            },
            Ack {
                session: u64,
                from_initiator: bool,
                seq: u64,
            },
        }
        #[derive(Serialize)]
        enum V1Body {
            Init {
                flow: String,
                version: u32,
                initiator: Party,
            },
        }
        let alice = Party::new("Alice", PublicKey([1; 32]));
        let init = rmp_serde::to_vec(&(
            1u8,
            V1Message::Session {
                session: 5,
                from_initiator: true,
                seq: 0,
                body: V1Body::Init {
                    flow: "a::b".into(),
                    version: 3,
                    initiator: alice.clone(),
                },
            },
        ))
        .unwrap();
        assert_eq!(
            WireMessage::decode(&init).unwrap(),
            WireMessage::Session {
                session: 5,
                from_initiator: true,
                seq: 0,
                body: Body::Init {
                    flow: "a::b".into(),
                    version: 3,
                    initiator: alice,
                    created_at: None,
                },
            }
        );
        let ack = rmp_serde::to_vec(&(
            1u8,
            V1Message::Ack {
                session: 5,
                from_initiator: false,
                seq: 9,
            },
        ))
        .unwrap();
        assert_eq!(
            WireMessage::decode(&ack).unwrap(),
            WireMessage::Ack {
                session: 5,
                from_initiator: false,
                seq: 9,
                responder_version: None,
            }
        );
        // A version this build does not read is refused, naming it.
        let mut v3 = ack.clone();
        v3[1] = 3;
        assert!(
            WireMessage::decode(&v3)
                .unwrap_err()
                .contains("wire version 3")
        );
    }
}
