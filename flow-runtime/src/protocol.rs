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
//!   carrying the reason, which ends the initiator's session.

use crate::{FlowError, Party, Payload};
use serde::{Deserialize, Serialize};

/// The protocol version carried in every frame; a frame of another version is
/// refused rather than misread.
pub const WIRE_VERSION: u8 = 1;

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
    },
    /// A value sent with `FlowSession::send`.
    Data(Payload),
    /// The sender's flow ended: `Some` with the error it ended with (or the
    /// reason an `Init` was refused), `None` for a normal end.
    End(Option<FlowError>),
}

/// A frame with its version byte.
#[derive(Serialize, Deserialize)]
struct Frame {
    version: u8,
    message: WireMessage,
}

impl WireMessage {
    /// Encodes the frame. Encoding our own types cannot fail in practice; if
    /// it ever does, the error says which message.
    pub fn encode(&self) -> Result<Vec<u8>, FlowError> {
        rmp_serde::to_vec(&Frame {
            version: WIRE_VERSION,
            message: self.clone(),
        })
        .map_err(|e| FlowError::internal(format!("cannot encode wire message {self:?}: {e}")))
    }

    /// Decodes a frame received from a peer.
    pub fn decode(bytes: &[u8]) -> Result<WireMessage, String> {
        let frame: Frame =
            rmp_serde::from_slice(bytes).map_err(|e| format!("malformed frame: {e}"))?;
        if frame.version != WIRE_VERSION {
            return Err(format!(
                "frame of wire version {} (this node speaks {WIRE_VERSION})",
                frame.version
            ));
        }
        Ok(frame.message)
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
            },
        };
        let bytes = m.encode().unwrap();
        assert_eq!(WireMessage::decode(&bytes).unwrap(), m);
        assert!(WireMessage::decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(WireMessage::decode(&[0xff, 0x00, 0x13]).is_err());
        assert!(WireMessage::decode(&[]).is_err());
    }
}
