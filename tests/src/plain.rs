//! The "plain async" twin of the flow API: a [`FlowContext`] and a
//! [`FlowSession`] with the same method names as `flow_runtime`'s, whose
//! suspending operations are ordinary Rust futures, and a tiny
//! single-threaded executor ([`run_plain`]) that drives them against a
//! scripted counterparty.
//!
//! Why: a differential test writes a flow body once and compiles it twice —
//! as a `#[flow]` state machine and as a plain `async fn` over these types.
//! The plain version is the *reference semantics*: rustc's own coroutine
//! transform decides what the body means; the macro's transform must agree
//! with it on every send, every wait and the result.
//!
//! The executor is deliberately minimal (no wakers that do anything, no
//! threads): a flow body awaits at most one operation at a time, so "poll
//! until pending, record what it waits on, hand it the next event, poll
//! again" is all a flow needs.

use crate::trace::{Counterparty, Outcome, StepTrace, Trace, TraceBuilder, panic_message};
use flow_runtime::{
    Event, FlowError, IdSource, Party, Payload, PublicKey, SeededIds, SessionId, Timestamp,
    Untrustworthy, Wait,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The names a flow body uses, for `use flow_tests::plain::prelude::*`.
pub mod prelude {
    pub use super::{FlowContext, FlowSession, PlainFlow};
    pub use flow_runtime::{FlowError, FlowErrorKind, Party, PublicKey, Untrustworthy};
}

/// What the plain flow's step records while it runs, shared by the context,
/// its sessions and the executor.
struct World {
    identity: Party,
    now: Timestamp,
    ids: SeededIds,
    /// Flow names of the running (sub-)flows, outermost first.
    frames: Vec<&'static str>,
    /// What the current step has done so far.
    step: StepTrace,
    /// Raw waits registered by the pending operation.
    wait: Option<Wait>,
    /// The event the executor hands to the pending operation.
    delivery: Option<Event>,
    trace: TraceBuilder,
}

type Shared = Rc<RefCell<World>>;

/// The plain twin of [`flow_runtime::FlowContext`].
pub struct FlowContext {
    world: Shared,
}

/// The plain twin of [`flow_runtime::FlowSession`]: the session id plus a
/// handle on the executor's world so `send` can record.
#[derive(Clone)]
pub struct FlowSession {
    id: SessionId,
    world: Shared,
}

impl std::fmt::Debug for FlowSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlowSession({})", self.id)
    }
}

impl PartialEq for FlowSession {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// A plain flow built at its start state: the flow's name (its fn name) and
/// a function that, given a context, makes the body's future. What a
/// plain-stamped flow fn returns, so that `ctx.sub_flow(child(..))` reads
/// the same as in a `#[flow]`.
pub struct PlainFlow<O> {
    name: &'static str,
    #[allow(clippy::type_complexity)]
    make: Box<dyn FnOnce(FlowContext) -> Pin<Box<dyn Future<Output = Result<O, FlowError>>>>>,
}

impl<O> PlainFlow<O> {
    /// A flow named `name` whose body is `make(ctx)`.
    pub fn new<Fut>(name: &'static str, make: impl FnOnce(FlowContext) -> Fut + 'static) -> Self
    where
        Fut: Future<Output = Result<O, FlowError>> + 'static,
    {
        Self {
            name,
            make: Box::new(move |ctx| Box::pin(make(ctx))),
        }
    }
}

impl FlowContext {
    /// The identity of the node running the flow.
    pub fn our_identity(&self) -> Party {
        self.world.borrow().identity.clone()
    }

    /// The virtual clock.
    pub fn now(&self) -> Timestamp {
        self.world.borrow().now
    }

    /// Opens a session to `party`, recording it against the innermost
    /// running flow, as `flow_runtime` does.
    pub fn initiate_flow(&mut self, party: &Party) -> FlowSession {
        let mut world = self.world.borrow_mut();
        let id = SessionId(world.ids.next_id());
        let flow = world.frames.last().copied().unwrap_or("<unknown>");
        let opened = world.trace.opened(id, party, flow);
        world.step.opened.push(opened);
        FlowSession {
            id,
            world: self.world.clone(),
        }
    }

    /// Sleeps `duration` of virtual time.
    pub fn sleep(&mut self, duration: Duration) -> impl Future<Output = ()> + use<> {
        let world = self.world.clone();
        let mut registered = false;
        std::future::poll_fn(move |_| {
            let mut w = world.borrow_mut();
            if !registered {
                registered = true;
                let until = w.now.after(duration);
                w.wait = Some(Wait::Timer(until));
                return Poll::Pending;
            }
            match w.delivery.take() {
                Some(_) => Poll::Ready(()),
                None => Poll::Pending,
            }
        })
    }

    /// Runs `flow` as a sub-flow: its sessions are opened in its name.
    pub fn sub_flow<O: 'static>(
        &mut self,
        flow: PlainFlow<O>,
    ) -> impl Future<Output = Result<O, FlowError>> + use<O> {
        let world = self.world.clone();
        async move {
            world.borrow_mut().frames.push(flow.name);
            let child = FlowContext {
                world: world.clone(),
            };
            let result = (flow.make)(child).await;
            world.borrow_mut().frames.pop();
            result
        }
    }
}

impl FlowSession {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Records `value` as sent on this session.
    pub fn send(&self, value: &(impl Serialize + ?Sized)) -> Result<(), FlowError> {
        let payload = Payload::encode(value)?;
        let mut world = self.world.borrow_mut();
        let sent = world.trace.sent(self.id, payload);
        world.step.sends.push(sent);
        Ok(())
    }

    /// Waits for the next message on this session.
    pub fn receive<T: DeserializeOwned>(&self) -> Receive<T> {
        self.receive_after(Ok(()))
    }

    /// Sends `value`, then waits for the reply.
    pub fn send_and_receive<T: DeserializeOwned>(
        &self,
        value: &(impl Serialize + ?Sized),
    ) -> Receive<T> {
        let sent = self.send(value);
        self.receive_after(sent)
    }

    fn receive_after<T: DeserializeOwned>(&self, sent: Result<(), FlowError>) -> Receive<T> {
        Receive {
            world: self.world.clone(),
            session: self.id,
            sent: Some(sent),
            _item: PhantomData,
        }
    }
}

/// The future of a plain `receive` / `send_and_receive`: pending once (having
/// registered the wait), then ready with the event the executor delivered.
#[must_use = "a receive does nothing unless `.await`ed"]
pub struct Receive<T> {
    world: Shared,
    session: SessionId,
    /// The outcome of the preceding send; `None` once the wait is registered.
    sent: Option<Result<(), FlowError>>,
    _item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Future for Receive<T> {
    type Output = Result<Untrustworthy<T>, FlowError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut w = this.world.borrow_mut();
        if let Some(sent) = this.sent.take() {
            if let Err(e) = sent {
                return Poll::Ready(Err(e));
            }
            w.wait = Some(Wait::Receive(this.session));
            return Poll::Pending;
        }
        match w.delivery.take() {
            Some(Event::Message { payload, .. }) => {
                Poll::Ready(payload.decode::<T>().map(Untrustworthy::new))
            }
            Some(Event::SessionEnded { error, .. }) => Poll::Ready(Err(error)),
            Some(other) => Poll::Ready(Err(FlowError::internal(format!(
                "a receive was woken by {other:?}"
            )))),
            None => Poll::Pending,
        }
    }
}

/// Runs a plain flow to its end (or until the counterparty has nothing more
/// to say), as the party "Alice" with session ids from `SeededIds::new(0)` —
/// the same as `FlowDriver::new`, so both see the same session ids.
///
/// `sessions` are sessions the flow was given as arguments (a responder's),
/// made with [`plain_session`] beforehand.
pub fn run_plain<O: 'static>(
    make: &dyn Fn(&mut FlowContext) -> PlainFlow<O>,
    counterparty: &mut dyn Counterparty,
) -> Trace<O> {
    let world: Shared = Rc::new(RefCell::new(World {
        identity: Party::new("Alice", PublicKey([1; 32])),
        now: Timestamp(0),
        ids: SeededIds::new(0),
        frames: Vec::new(),
        step: StepTrace::default(),
        wait: None,
        delivery: None,
        trace: TraceBuilder::default(),
    }));
    let mut ctx = FlowContext {
        world: world.clone(),
    };
    let flow = make(&mut ctx);
    world.borrow_mut().frames.push(flow.name);
    let mut future = (flow.make)(ctx);
    let mut cx = Context::from_waker(Waker::noop());
    let mut steps = Vec::new();
    loop {
        let poll =
            match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
                Ok(poll) => poll,
                Err(payload) => {
                    // The step's effects are lost with the panic, as on a node.
                    world.borrow_mut().step = StepTrace::default();
                    steps.push(StepTrace::default());
                    return Trace {
                        steps,
                        outcome: Outcome::Panicked(panic_message(payload.as_ref())),
                    };
                }
            };
        let mut w = world.borrow_mut();
        let mut step = std::mem::take(&mut w.step);
        match poll {
            Poll::Ready(result) => {
                steps.push(step);
                return Trace {
                    steps,
                    outcome: Outcome::Done(result),
                };
            }
            Poll::Pending => {
                let Some(wait) = w.wait.take() else {
                    steps.push(step);
                    return Trace {
                        steps,
                        outcome: Outcome::SuspendedWithoutWait,
                    };
                };
                step.wait = Some(w.trace.wait(&wait));
                steps.push(step);
                let Some(event) = counterparty.answer(&wait) else {
                    return Trace {
                        steps,
                        outcome: Outcome::Waiting,
                    };
                };
                if let (Wait::Timer(at), Event::Timer) = (&wait, &event) {
                    w.now = w.now.max(*at);
                }
                w.delivery = Some(event);
            }
        }
    }
}

/// A plain session with a fixed id, for a flow that takes a session as an
/// argument (a responder). Only valid inside the `make` closure of
/// [`run_plain`].
pub fn plain_session(ctx: &FlowContext, id: SessionId) -> FlowSession {
    FlowSession {
        id,
        world: ctx.world.clone(),
    }
}
