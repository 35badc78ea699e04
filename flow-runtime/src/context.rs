//! [`FlowContext`]: what a flow reaches the node through, and the per-step
//! effects buffer everything a step does is recorded in.
//!
//! A step runs synchronously on one thread. While it runs, the runtime
//! installs a [`StepEffects`] buffer in a thread-local slot (see
//! [`run_step`]); `FlowSession::send`, `FlowContext::initiate_flow`,
//! `FlowContext::start_flow`, sleeps and progress append to it, and the
//! runtime takes it back when the step ends and commits it with the
//! checkpoint. That is why a `FlowSession` can be a bare id and still send.
//! It is the one channel for a step's effects: the node's writes to service
//! tables go through [`FlowContext::step_writes`], which the runtime owns
//! (it is not in [`FlowContext::services`], so no flow can remove it and
//! make its step non-atomic).

use crate::registry::NewFlow;
use crate::{Flow, FlowError, FlowErrorKind, FlowSession, Party, SessionId, Step, StepWrites};
use std::cell::RefCell;
use std::time::Duration;

/// Milliseconds since the Unix epoch (on `MockNetwork`: since the virtual
/// clock's origin).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This instant plus `d`, saturating.
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// What a suspended flow waits for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Wait {
    /// The next message on this session.
    Receive(SessionId),
    /// The clock to reach this time.
    Timer(Timestamp),
}

/// A session opened by `initiate_flow` during the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedSession {
    /// The new session's id.
    pub id: SessionId,
    /// Who it talks to.
    pub counterparty: Party,
    /// `Flow::NAME` of the (sub-)flow that opened it: the responder is looked
    /// up by this name.
    pub initiating_flow: &'static str,
    /// `Flow::VERSION` of that flow.
    pub initiating_version: u32,
}

/// One level of flow nesting while a step runs: the top-level flow, then
/// each sub-flow inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// `Flow::NAME`.
    pub name: &'static str,
    /// `Flow::VERSION`.
    pub version: u32,
}

/// Everything a step did besides changing its own state. Committed
/// atomically with the step's checkpoint.
#[derive(Debug, Default)]
pub struct StepEffects {
    /// Messages queued with `FlowSession::send`.
    pub sends: Vec<crate::OutgoingMessage>,
    /// Sessions opened with `initiate_flow`.
    pub opened: Vec<OpenedSession>,
    /// What the flow waits for, if it suspended.
    pub wait: Option<Wait>,
    /// The flow nesting of the running code.
    pub frames: Vec<Frame>,
    /// The progress path: one step label per nesting level (top-level flow
    /// first). Loaded from the checkpoint before the step, saved after it.
    pub progress: Vec<String>,
    /// Flows started with [`FlowContext::start_flow`], created when the step
    /// commits.
    pub started: Vec<NewFlow>,
    /// The run's receive deadline (see
    /// [`FlowContext::set_receive_deadline`]). Loaded from the checkpoint
    /// before the step, saved after it.
    pub deadline: Option<Timestamp>,
    /// The other end of each session the flow held when the step began,
    /// filled in by the node (see [`FlowSession::counterparty`]).
    pub peers: Vec<SessionPeer>,
}

/// Who is at the other end of one of the running flow's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPeer {
    /// The session.
    pub session: SessionId,
    /// The counterparty, as the node authenticated it.
    pub party: Party,
    /// The `VERSION` of the counterparty's flow, when known.
    pub version: Option<u32>,
}

thread_local! {
    static CURRENT: RefCell<Option<StepEffects>> = const { RefCell::new(None) };
}

/// Runs `f` against the effects of the step running on this thread.
/// Fails if no step is running (e.g. `session.send` called outside a flow).
pub(crate) fn with_effects<R>(f: impl FnOnce(&mut StepEffects) -> R) -> Result<R, FlowError> {
    CURRENT.with(|slot| match slot.borrow_mut().as_mut() {
        Some(effects) => Ok(f(effects)),
        None => Err(FlowError::internal(
            "no flow step is running on this thread: sessions can only be used inside a #[flow]",
        )),
    })
}

/// Runs one step of `flow`: installs `effects` as the thread's step buffer,
/// pushes the top-level frame, calls [`Flow::resume`], and hands back the
/// outcome with the effects the step produced. Panics are *not* caught here;
/// the node catches them around this call and discards the effects.
pub fn run_step<F: Flow>(
    flow: &mut F,
    ctx: &mut FlowContext,
    event: crate::Event,
    mut effects: StepEffects,
) -> (Step<F::Output>, StepEffects) {
    effects.frames.clear();
    effects.frames.push(Frame {
        name: F::NAME,
        version: F::VERSION,
    });
    effects.wait = None;
    let previous = CURRENT.with(|slot| slot.borrow_mut().replace(effects));
    // Restore the slot even if the flow panics, so a caught panic does not
    // leave a stale buffer behind for the next step on this thread.
    struct Restore(Option<Option<StepEffects>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                CURRENT.with(|slot| *slot.borrow_mut() = previous);
            }
        }
    }
    let mut guard = Restore(Some(previous));
    let step = flow.resume(ctx, event);
    let previous = guard.0.take().unwrap_or(None);
    let effects = CURRENT
        .with(|slot| std::mem::replace(&mut *slot.borrow_mut(), previous))
        .unwrap_or_default();
    (step, effects)
}

/// A source of fresh session ids. The node uses the operating system's
/// randomness; `MockNetwork` uses a seeded generator so runs replay.
pub trait IdSource: Send {
    /// A fresh, unpredictable 64-bit id.
    fn next_id(&mut self) -> u64;
}

/// A deterministic [`IdSource`] (SplitMix64) for tests and simulations.
#[derive(Debug, Clone)]
pub struct SeededIds(u64);

impl SeededIds {
    /// A generator that replays the same ids for the same seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl IdSource for SeededIds {
    fn next_id(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The node, as a flow sees it during one step.
///
/// Never kept across a suspension (`#[flow]` does not store it): services
/// such as the clock, the identity and the node's own services are reached
/// through it afresh after each `.await`.
pub struct FlowContext {
    our_identity: Party,
    now: Timestamp,
    ids: Box<dyn IdSource>,
    services: crate::services::Services,
    /// The node's service tables for this step (absent outside a node,
    /// e.g. under `FlowDriver`). Owned by the runtime, set when it opens.
    writes: Option<StepWrites>,
    /// Whether the node is draining (it then starts no new flows).
    draining: bool,
}

impl FlowContext {
    /// A context for one step on the node `our_identity`, at time `now`.
    pub fn new(our_identity: Party, now: Timestamp, ids: Box<dyn IdSource>) -> Self {
        Self {
            our_identity,
            now,
            ids,
            services: crate::services::Services::default(),
            writes: None,
            draining: false,
        }
    }

    /// Gives the context the node's service tables (when the node opens).
    pub(crate) fn install_step_writes(&mut self, writes: StepWrites) {
        self.writes = Some(writes);
    }

    /// The node's service tables, for the node itself between steps.
    pub(crate) fn node_writes(&mut self) -> Option<&mut StepWrites> {
        self.writes.as_mut()
    }

    /// The node's service tables, read-only.
    pub(crate) fn node_writes_ref(&self) -> Option<&StepWrites> {
        self.writes.as_ref()
    }

    /// Tells the steps that follow whether the node is draining.
    pub(crate) fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// The identity of the node running this flow.
    pub fn our_identity(&self) -> &Party {
        &self.our_identity
    }

    /// The node's clock at the start of this step.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Sets the clock (the runtime does this before each step).
    pub fn set_now(&mut self, now: Timestamp) {
        self.now = now;
    }

    /// The node's services (a vault, a key manager...), installed by the
    /// node's code. The step's own machinery is not among them: see
    /// [`step_writes`](Self::step_writes) and [`start_flow`](Self::start_flow).
    pub fn services(&mut self) -> &mut crate::services::Services {
        &mut self.services
    }

    /// The node's key/value service tables, whose writes commit in the same
    /// transaction as this step (see [`StepWrites`]). `None` when the flow
    /// does not run on a node (e.g. driven by hand with `FlowDriver`).
    pub fn step_writes(&mut self) -> Option<&mut StepWrites> {
        self.writes.as_mut()
    }

    /// Starts `flow` on this node as a new top-level flow, created in the
    /// same commit as this step (and not at all if the step fails). Refused
    /// while the node is draining, like flows started from outside, and
    /// outside a step (start those with the node's `start_flow`).
    pub fn start_flow<F: Flow>(&mut self, flow: F) -> Result<(), FlowError> {
        if self.draining {
            return Err(FlowError::with_kind(
                FlowErrorKind::Refused,
                format!(
                    "cannot start `{}`: the node is draining (it takes no new flows until an operator stops draining)",
                    F::NAME
                ),
            ));
        }
        let new = NewFlow::new(&flow)?;
        with_effects(|effects| effects.started.push(new)).map_err(|_| {
            FlowError::internal(format!(
                "cannot start `{}`: flows are started from a flow only inside a step (they commit with it); from outside a step, start it with the node's start_flow",
                F::NAME
            ))
        })
    }

    /// Opens a session to `party`. The counterparty's node starts the
    /// responder registered for the flow that runs this call (the innermost
    /// sub-flow, if any) when the session's first message arrives.
    pub fn initiate_flow(&mut self, party: &Party) -> FlowSession {
        let id = SessionId(self.ids.next_id());
        // Outside a step there is no effects buffer; the session then simply
        // never opens, and its first send reports the error.
        let _ = with_effects(|effects| {
            let frame = effects.frames.last().copied().unwrap_or(Frame {
                name: "<unknown>",
                version: 0,
            });
            effects.opened.push(OpenedSession {
                id,
                counterparty: party.clone(),
                initiating_flow: frame.name,
                initiating_version: frame.version,
            });
        });
        FlowSession::from_id(id)
    }

    /// The counterparty of `session`, as known when it was opened during this
    /// step; the node resolves sessions opened earlier.
    pub fn opened_session(&self, session: &FlowSession) -> Option<Party> {
        with_effects(|effects| {
            effects
                .opened
                .iter()
                .find(|o| o.id == session.id())
                .map(|o| o.counterparty.clone())
        })
        .ok()
        .flatten()
    }

    /// Suspends the flow for `duration` (node clock). Only meaningful as
    /// `ctx.sleep(d).await` inside a `#[flow]`; the timer survives restarts.
    pub fn sleep(&mut self, duration: Duration) -> Sleep {
        Sleep { duration }
    }

    /// Runs `flow` as a sub-flow of the running one. Only meaningful as
    /// `ctx.sub_flow(child(..)).await` inside a `#[flow]`; the child's state
    /// is kept inside the parent's checkpoint.
    pub fn sub_flow<F: Flow>(&mut self, flow: F) -> SubFlow<F> {
        SubFlow { flow }
    }

    /// Bounds every wait for a message from now on: a receive (in this
    /// flow or any sub-flow of it) still waiting at `now + within` fails
    /// with a [`FlowError`] saying the counterparty went silent, which the
    /// flow handles like any failed receive (e.g. releasing what it
    /// reserved). Not a suspension point. The deadline is part of the
    /// checkpoint, so it holds across restarts; the runtime's timer wakes
    /// the flow when it passes (virtual time on the `MockNetwork`). Calling
    /// it again moves the deadline; sleeps are not affected.
    pub fn set_receive_deadline(&mut self, within: Duration) {
        let at = self.now().after(within);
        let _ = with_effects(|effects| effects.deadline = Some(at));
    }

    /// Removes the deadline [`set_receive_deadline`](Self::set_receive_deadline)
    /// set: receives wait as long as it takes again (e.g. once the outcome
    /// no longer depends on the counterparty answering in time).
    pub fn clear_receive_deadline(&mut self) {
        let _ = with_effects(|effects| effects.deadline = None);
    }

    /// Records the current progress step of the running (sub-)flow. The
    /// position is saved with the next checkpoint and streamed to the
    /// flow's observers.
    pub fn set_progress(&mut self, step: impl Into<String>) {
        let step = step.into();
        let _ = with_effects(|effects| {
            let depth = effects.frames.len().saturating_sub(1);
            effects.progress.truncate(depth + 1);
            while effects.progress.len() <= depth {
                effects.progress.push(String::new());
            }
            effects.progress[depth] = step;
        });
    }
}

/// The pending operation built by [`FlowContext::sleep`].
#[must_use = "a sleep does nothing unless `.await`ed inside a #[flow]"]
#[derive(Debug)]
pub struct Sleep {
    pub(crate) duration: Duration,
}

/// The pending operation built by [`FlowContext::sub_flow`].
#[must_use = "a sub-flow does nothing unless `.await`ed inside a #[flow]"]
#[derive(Debug)]
pub struct SubFlow<F> {
    pub(crate) flow: F,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_flow_works_only_inside_a_step_and_not_while_draining() {
        let peer = Party::new("Bob", crate::PublicKey([2; 32]));
        let flow = || crate::testing::HandwrittenPing::new(peer.clone(), 1);
        let mut ctx = FlowContext::new(peer.clone(), Timestamp(0), Box::new(SeededIds::new(1)));
        let outside = ctx.start_flow(flow()).expect_err("no step to commit with");
        assert!(
            outside.message().contains("only inside a step"),
            "{outside}"
        );
        // A step is running on this thread (as `run_step` installs it).
        CURRENT.with(|slot| *slot.borrow_mut() = Some(StepEffects::default()));
        ctx.set_draining(true);
        let draining = ctx.start_flow(flow()).expect_err("draining");
        assert_eq!(draining.kind(), FlowErrorKind::Refused);
        ctx.set_draining(false);
        ctx.start_flow(flow()).expect("inside a step");
        let effects = CURRENT.with(|slot| slot.borrow_mut().take());
        assert_eq!(effects.expect("installed").started.len(), 1);
        assert!(ctx.start_flow(flow()).is_err(), "the step is over");
    }

    #[test]
    fn the_step_machinery_is_not_among_the_services() {
        let me = Party::new("Alice", crate::PublicKey([1; 32]));
        let mut ctx = FlowContext::new(me, Timestamp(0), Box::new(SeededIds::new(1)));
        assert!(
            ctx.step_writes().is_none(),
            "outside a node: no node storage"
        );
        let store = std::sync::Arc::new(
            crate::store::RedbStore::open_in_memory(
                &crate::store::SharedMemory::new(),
                crate::store::RedbOptions::default(),
            )
            .expect("memory store"),
        );
        ctx.install_step_writes(StepWrites::new(store));
        assert!(ctx.step_writes().is_some());
        assert!(ctx.services().get::<StepWrites>().is_none());
    }
}
