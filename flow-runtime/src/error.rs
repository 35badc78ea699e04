//! [`FlowError`]: the one error type a flow returns and a counterparty receives.

use serde::{Deserialize, Serialize};

/// Why a flow (or one of its sessions) failed.
///
/// A `FlowError` that a flow *returns* is part of its protocol: it is
/// delivered to every counterparty, whose next `receive` on that session fails
/// with an equal error (the same kind and message). Any other failure (a
/// panic, an undecodable checkpoint, an internal error) reaches counterparties
/// only as [`FlowErrorKind::CounterpartyEnded`], with no details.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct FlowError {
    kind: FlowErrorKind,
    message: String,
}

/// The broad class of a [`FlowError`], for code that must react differently
/// to, say, a counterparty that vanished and one that said "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FlowErrorKind {
    /// Raised by flow code with [`FlowError::new`]: part of the protocol.
    Flow,
    /// The counterparty's flow ended (normally, or by an internal failure)
    /// while this side still expected to talk to it.
    CounterpartyEnded,
    /// The counterparty has no responder registered for the initiating flow.
    UnknownFlow,
    /// A received message did not decode as the type the receiver asked for.
    TypeMismatch,
    /// An operator killed the flow.
    Killed,
    /// The node refused to start the flow or session (e.g. it is draining).
    Refused,
    /// Something inside the runtime went wrong; see the node's log.
    Internal,
    /// A temporary failure (a service or database briefly unavailable): the
    /// node does not end the flow but retries the step from its last
    /// checkpoint with backoff, then keeps it in the hospital for an
    /// operator.
    Transient,
}

impl FlowError {
    /// A protocol error raised by flow code. It ends the flow and is delivered
    /// to every counterparty.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind(FlowErrorKind::Flow, message)
    }

    /// An error of a specific kind; mostly for the runtime itself.
    pub fn with_kind(kind: FlowErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The error's class.
    pub fn kind(&self) -> FlowErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The generic error a counterparty sees when this side ended without a
    /// protocol error (normal return, panic, internal failure).
    pub fn counterparty_ended() -> Self {
        Self::with_kind(
            FlowErrorKind::CounterpartyEnded,
            "counterparty flow ended unexpectedly",
        )
    }

    /// A temporary failure: returning it from a flow step makes the node
    /// retry the step from the last checkpoint instead of ending the flow.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::with_kind(FlowErrorKind::Transient, message)
    }

    /// An internal runtime error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::with_kind(FlowErrorKind::Internal, message)
    }
}
