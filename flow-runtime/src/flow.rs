//! The [`Flow`] trait that `#[flow]` implements, and what a step consumes
//! and produces.

use crate::{FlowContext, FlowError, Payload, SessionId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A flow's state machine: a serializable value that advances one event at a
/// time.
///
/// `#[flow]` implements this for the enum it generates; implementing it by
/// hand is possible (the benchmarks do, as a baseline) but rarely useful.
pub trait Flow: Serialize + DeserializeOwned + Send + 'static {
    /// What the flow returns on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Stable name: module path plus fn name. Identifies the flow in
    /// checkpoints and in session-initiation messages.
    const NAME: &'static str;

    /// Protocol version, from `#[flow(version = N)]` (default 1). Sent with
    /// every session initiation.
    const VERSION: u32;

    /// A hash of the shape of every state (variant names, field names and
    /// types, nested sub-flow fingerprints). A node refuses to resume a
    /// checkpoint whose fingerprint differs from the code it runs.
    const FINGERPRINT: u64;

    /// Runs the flow from its current state, consuming `event`, until it
    /// suspends again (having registered what it waits for in the step's
    /// effects) or finishes.
    ///
    /// The first call on a freshly built flow passes [`Event::Start`].
    fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<Self::Output>;

    /// The name of the current state variant, for operators' dumps.
    fn state_name(&self) -> &'static str;
}

/// What a flow is woken with.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The flow has just been created and runs for the first time.
    Start,
    /// The next message on a session the flow waits on.
    Message {
        /// The session it arrived on.
        session: SessionId,
        /// Its serialized body.
        payload: Payload,
    },
    /// The session the flow waits on has ended; the receive fails with this
    /// error.
    SessionEnded {
        /// The session that ended.
        session: SessionId,
        /// The error the waiting receive returns.
        error: FlowError,
    },
    /// The timer the flow set with `ctx.sleep` has fired.
    Timer,
}

/// The outcome of one [`Flow::resume`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step<O> {
    /// The flow is waiting; what for is recorded in the step's effects.
    Suspended,
    /// The flow has finished.
    Done(Result<O, FlowError>),
}
