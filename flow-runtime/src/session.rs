//! Sessions: the typed, ordered conversation between two flows on two nodes.

use crate::context::with_effects;
use crate::{FlowError, FlowErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;

/// A session's id: random, 64 bits, so that a peer cannot guess another
/// flow's session. Serialized as a bare integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:016x})", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One end of a conversation with a flow on another node.
///
/// Obtained from [`FlowContext::initiate_flow`](crate::FlowContext::initiate_flow)
/// (initiator side) or handed to a responder flow as its argument. It is a
/// plain value (just the session id) so it can live in a checkpoint; the
/// counterparty and sequence numbers are kept by the node.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlowSession {
    id: SessionId,
}

impl fmt::Debug for FlowSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowSession({})", self.id)
    }
}

impl FlowSession {
    /// A handle for an existing session. Used by the runtime.
    pub fn from_id(id: SessionId) -> Self {
        Self { id }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Queues `value` for the counterparty. Does not suspend: sends are
    /// buffered and leave the node only when the flow's next checkpoint
    /// commits, atomically with it.
    ///
    /// Fails if the value cannot be serialized or if called outside a flow
    /// step.
    pub fn send(&self, value: &(impl Serialize + ?Sized)) -> Result<(), FlowError> {
        let payload = Payload::encode(value)?;
        with_effects(|effects| {
            effects.sends.push(OutgoingMessage {
                session: self.id,
                payload,
            })
        })
    }

    /// The party at the other end of this session, as the node
    /// authenticated it: the key its transport verified, under the name the
    /// network map lists for that key (never a name the peer wrote in a
    /// frame). A responder uses it for access control.
    ///
    /// Fails outside a flow step, or for a session this flow does not hold.
    pub fn counterparty(&self) -> Result<crate::Party, FlowError> {
        self.peer().map(|(party, _)| party)
    }

    /// The `VERSION` of the flow at the other end: for a responder, the
    /// initiating flow's (the node checked it is one the responder was
    /// registered for, see `responder_for_versions`), so a responder
    /// registered for several versions can speak each one's protocol. On
    /// the initiating side it is `None`: the responder's version is not
    /// sent back.
    ///
    /// Fails outside a flow step, or for a session this flow does not hold.
    pub fn counterparty_version(&self) -> Result<Option<u32>, FlowError> {
        self.peer().map(|(_, version)| version)
    }

    fn peer(&self) -> Result<(crate::Party, Option<u32>), FlowError> {
        let id = self.id;
        with_effects(|effects| {
            if let Some(p) = effects.peers.iter().find(|p| p.session == id) {
                return Some((p.party.clone(), p.version));
            }
            effects
                .opened
                .iter()
                .find(|o| o.id == id)
                .map(|o| (o.counterparty.clone(), None))
        })?
        .ok_or_else(|| {
            FlowError::internal(format!(
                "session {id} does not belong to this flow: it has no counterparty here"
            ))
        })
    }

    /// Waits for the next message on this session, decoded as `T`. Only
    /// meaningful as `session.receive::<T>().await` inside a `#[flow]`.
    pub fn receive<T>(&self) -> Receive<T> {
        Receive {
            session: self.id,
            sent: Ok(()),
            _item: PhantomData,
        }
    }

    /// Sends `value`, then waits for the reply, decoded as `T`. Only
    /// meaningful as `session.send_and_receive::<T>(&v).await` in a `#[flow]`.
    pub fn send_and_receive<T>(&self, value: &(impl Serialize + ?Sized)) -> Receive<T> {
        Receive {
            session: self.id,
            sent: self.send(value),
            _item: PhantomData,
        }
    }
}

/// The pending operation built by [`FlowSession::receive`] and
/// [`FlowSession::send_and_receive`]; `#[flow]` turns its `.await` into a
/// suspension point.
#[must_use = "a receive does nothing unless `.await`ed inside a #[flow]"]
#[derive(Debug)]
pub struct Receive<T> {
    pub(crate) session: SessionId,
    /// The outcome of the send that preceded the receive, if any.
    pub(crate) sent: Result<(), FlowError>,
    _item: PhantomData<fn() -> T>,
}

/// A serialized message body plus the name of the Rust type it was made
/// from, so that a receiver expecting another type can say which two types
/// disagreed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// `std::any::type_name` of the sent value.
    pub type_name: String,
    /// The value in MessagePack (rmp-serde).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl Payload {
    /// Serializes `value` with rmp-serde.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, FlowError> {
        let bytes = rmp_serde::to_vec(value).map_err(|e| {
            FlowError::internal(format!(
                "cannot serialize a `{}` to send: {e}",
                std::any::type_name::<T>()
            ))
        })?;
        Ok(Self {
            type_name: std::any::type_name::<T>().to_owned(),
            bytes,
        })
    }

    /// Decodes the body as `T`; a failure names both the sent and the
    /// expected type.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, FlowError> {
        rmp_serde::from_slice(&self.bytes).map_err(|e| {
            FlowError::with_kind(
                FlowErrorKind::TypeMismatch,
                format!(
                    "received a `{}` but expected a `{}`: {e}",
                    self.type_name,
                    std::any::type_name::<T>()
                ),
            )
        })
    }
}

/// A message a flow step queued for a counterparty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The session it belongs to.
    pub session: SessionId,
    /// The serialized value.
    pub payload: Payload,
}
