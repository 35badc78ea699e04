//! [`FlowDriver`]: runs ONE flow, in memory, against a counterparty that the
//! test plays by hand.
//!
//! Why it exists: a flow is a pure state machine (`Flow::resume`) plus the
//! effects a step records (sends, opened sessions, what it waits on). Unit
//! tests of a flow body — and the differential tests that check `#[flow]`
//! against a plain `async fn` — need exactly that and nothing more: no node,
//! no database, no tokio, no second flow. The driver starts the flow, shows
//! what each step did, and lets the test answer with a message, a session
//! end or a timer, step by step.
//!
//! It can also put the state through a checkpoint round trip (rmp-serde
//! serialize + deserialize) at every suspension, exactly as a durable node
//! does, so that a test notices state that does not survive being written
//! to disk, and it records the size of every checkpoint.
//!
//! ```
//! use flow_runtime::testing::FlowDriver;
//! use flow_runtime::testing::ping_pong::ping;
//! use flow_runtime::{Party, PublicKey};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bob = Party::new("Bob", PublicKey([2; 32]));
//! let mut driver = FlowDriver::new(ping(bob.clone(), 2)).checkpoint_every_step(true);
//! driver.start()?;
//! let session = driver.opened()[0].id;
//! driver.deliver(session, &0u32)?;
//! driver.deliver(session, &1u32)?;
//! assert_eq!(driver.result(), Some(&Ok(1)));
//! assert_eq!(driver.sent_on::<u32>(session)?, vec![0, 1]);
//! # Ok(())
//! # }
//! ```

use crate::{
    Event, Flow, FlowContext, FlowError, OpenedSession, OutgoingMessage, Party, Payload, PublicKey,
    SeededIds, SessionId, Step, StepEffects, Timestamp, Wait, run_step,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// A misuse of the driver by the test, or a state that cannot be
/// checkpointed. Each message says what the flow was doing instead, so a
/// failing test shows where its script and the flow disagree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// An event was given before [`FlowDriver::start`].
    #[error("the flow has not been started: call `FlowDriver::start` first")]
    NotStarted,
    /// [`FlowDriver::start`] was called twice.
    #[error("the flow was already started; deliver events instead of starting it again")]
    AlreadyStarted,
    /// An event was given to a flow that has ended.
    #[error("the flow has already ended with {0}; it takes no more events")]
    Finished(String),
    /// The event does not match what the flow waits on.
    #[error("the flow waits on {waiting}, not on {offered}: the test script is out of step")]
    NotWaiting {
        /// What the flow waits on (`nothing` if it suspended without a wait).
        waiting: String,
        /// What the test tried to give it.
        offered: String,
    },
    /// The state failed to serialize or deserialize for the checkpoint
    /// round trip: a type in the state has a serde implementation that does
    /// not round-trip.
    #[error("checkpoint round trip of state `{state}` failed: {reason}")]
    Checkpoint {
        /// `Flow::state_name` of the state that failed.
        state: &'static str,
        /// The serde error.
        reason: String,
    },
    /// A value the test wanted to deliver could not be encoded.
    #[error("cannot encode the message to deliver: {0}")]
    Encode(FlowError),
}

/// What one step of the flow did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Sessions the step opened, in order.
    pub opened: Vec<OpenedSession>,
    /// Messages the step queued, in order.
    pub sends: Vec<OutgoingMessage>,
    /// `Flow::NAME` of each flow the step started with
    /// `ctx.start_flow` (a node would create them when the step commits;
    /// the driver only reports them).
    pub started: Vec<String>,
    /// What the flow waits on now; `None` if it finished (or, a bug in the
    /// flow's code, suspended without registering a wait).
    pub wait: Option<Wait>,
    /// Size in bytes of the rmp-serde checkpoint taken after the step;
    /// `None` if the flow finished in this step.
    pub checkpoint_bytes: Option<usize>,
    /// `true` if the flow ended in this step.
    pub finished: bool,
}

/// Runs one flow against a scripted counterparty; see the module docs.
///
/// Time is virtual: the clock starts at 0 ms and moves only when the test
/// fires a timer (to the timer's deadline) or calls
/// [`advance_clock`](FlowDriver::advance_clock).
pub struct FlowDriver<F: Flow> {
    /// The suspended flow; `None` once it has ended.
    flow: Option<F>,
    started: bool,
    outcome: Option<Result<F::Output, FlowError>>,
    ctx: FlowContext,
    now: Timestamp,
    round_trip: bool,
    wait: Option<Wait>,
    progress: Vec<String>,
    opened: Vec<OpenedSession>,
    sent: Vec<OutgoingMessage>,
    steps: Vec<StepReport>,
}

impl<F: Flow> FlowDriver<F> {
    /// A driver for `flow` (built at its start state, e.g. `ping(bob, 3)`),
    /// running as the party "Alice" with session ids from `SeededIds::new(0)`.
    /// Nothing runs until [`start`](Self::start).
    pub fn new(flow: F) -> Self {
        let me = Party::new("Alice", PublicKey([1; 32]));
        Self::with_context(
            flow,
            FlowContext::new(me, Timestamp(0), Box::new(SeededIds::new(0))),
        )
    }

    /// A driver that runs `flow` with `ctx`: choose the node identity, the
    /// id source, the start time, or install services the flow uses.
    pub fn with_context(flow: F, ctx: FlowContext) -> Self {
        let now = ctx.now();
        Self {
            flow: Some(flow),
            started: false,
            outcome: None,
            ctx,
            now,
            round_trip: false,
            wait: None,
            progress: Vec::new(),
            opened: Vec::new(),
            sent: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// If `on`, the state is serialized and *replaced by its deserialized
    /// copy* at every suspension, as a durable node does between steps.
    /// Checkpoint sizes are recorded either way.
    pub fn checkpoint_every_step(mut self, on: bool) -> Self {
        self.round_trip = on;
        self
    }

    /// Runs the flow's first step.
    pub fn start(&mut self) -> Result<&StepReport, DriverError> {
        if self.started {
            return Err(DriverError::AlreadyStarted);
        }
        self.started = true;
        self.step(Event::Start)
    }

    /// Delivers `value` as the next message on `session`; the flow must be
    /// waiting on that session.
    pub fn deliver<T: Serialize + ?Sized>(
        &mut self,
        session: SessionId,
        value: &T,
    ) -> Result<&StepReport, DriverError> {
        let payload = Payload::encode(value).map_err(DriverError::Encode)?;
        self.deliver_payload(session, payload)
    }

    /// Delivers an already encoded message (e.g. one of the wrong type, to
    /// test how the flow rejects it).
    pub fn deliver_payload(
        &mut self,
        session: SessionId,
        payload: Payload,
    ) -> Result<&StepReport, DriverError> {
        self.expect_wait(
            |w| w == &Wait::Receive(session),
            || format!("a message on session {session}"),
        )?;
        self.step(Event::Message { session, payload })
    }

    /// Ends `session` from the counterparty's side: the flow's pending
    /// receive on it fails with `error`.
    pub fn end_session(
        &mut self,
        session: SessionId,
        error: FlowError,
    ) -> Result<&StepReport, DriverError> {
        self.expect_wait(
            |w| w == &Wait::Receive(session),
            || format!("the end of session {session}"),
        )?;
        self.step(Event::SessionEnded { session, error })
    }

    /// Fires the timer the flow sleeps on, moving the clock to its deadline
    /// first (never backwards).
    pub fn fire_timer(&mut self) -> Result<&StepReport, DriverError> {
        self.expect_wait(|w| matches!(w, Wait::Timer(_)), || "a timer".to_owned())?;
        if let Some(Wait::Timer(deadline)) = self.wait {
            self.now = self.now.max(deadline);
        }
        self.step(Event::Timer)
    }

    /// Moves the virtual clock forward by `d` (what the next step sees as
    /// `ctx.now()`).
    pub fn advance_clock(&mut self, d: Duration) {
        self.now = self.now.after(d);
    }

    /// The virtual clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// What the flow waits on; `None` before it starts, after it ends, or
    /// if it suspended without a wait (a bug in hand-written flows).
    pub fn waiting_on(&self) -> Option<&Wait> {
        self.wait.as_ref()
    }

    /// The flow's outcome, once it has ended.
    pub fn result(&self) -> Option<&Result<F::Output, FlowError>> {
        self.outcome.as_ref()
    }

    /// The flow's outcome, consuming the driver; `None` if it has not ended.
    pub fn into_result(self) -> Option<Result<F::Output, FlowError>> {
        self.outcome
    }

    /// Takes the flow's outcome out of the driver (`None` if it has not
    /// ended, or was already taken).
    pub fn take_result(&mut self) -> Option<Result<F::Output, FlowError>> {
        self.outcome.take()
    }

    /// The current state (before start or while suspended), e.g. to look at
    /// `state_name()`.
    pub fn state(&self) -> Option<&F> {
        self.flow.as_ref()
    }

    /// Every session the flow (and its sub-flows) opened, in order.
    pub fn opened(&self) -> &[OpenedSession] {
        &self.opened
    }

    /// Every message the flow sent, on all sessions, in order.
    pub fn sent(&self) -> &[OutgoingMessage] {
        &self.sent
    }

    /// The messages sent on `session`, decoded as `T`.
    pub fn sent_on<T: DeserializeOwned>(&self, session: SessionId) -> Result<Vec<T>, FlowError> {
        self.sent
            .iter()
            .filter(|m| m.session == session)
            .map(|m| m.payload.decode())
            .collect()
    }

    /// What each step did, in order (the first is the start step).
    pub fn steps(&self) -> &[StepReport] {
        &self.steps
    }

    /// The rmp-serde size of every checkpoint taken so far, in order.
    pub fn checkpoint_sizes(&self) -> Vec<usize> {
        self.steps
            .iter()
            .filter_map(|s| s.checkpoint_bytes)
            .collect()
    }

    /// The progress path the flow last reported (`ctx.set_progress`), one
    /// entry per nesting level.
    pub fn progress(&self) -> &[String] {
        &self.progress
    }

    /// The context the flow runs with, e.g. to install a service.
    pub fn context(&mut self) -> &mut FlowContext {
        &mut self.ctx
    }

    fn expect_wait(
        &self,
        matches: impl FnOnce(&Wait) -> bool,
        offered: impl FnOnce() -> String,
    ) -> Result<(), DriverError> {
        if let Some(result) = &self.outcome {
            return Err(DriverError::Finished(describe(result)));
        }
        if !self.started {
            return Err(DriverError::NotStarted);
        }
        match &self.wait {
            Some(wait) if matches(wait) => Ok(()),
            other => Err(DriverError::NotWaiting {
                waiting: match other {
                    Some(Wait::Receive(s)) => format!("a message on session {s}"),
                    Some(Wait::Timer(t)) => format!("a timer at {} ms", t.0),
                    None => "nothing (it suspended without registering a wait)".to_owned(),
                },
                offered: offered(),
            }),
        }
    }

    fn step(&mut self, event: Event) -> Result<&StepReport, DriverError> {
        let Some(flow) = self.flow.as_mut() else {
            return Err(DriverError::Finished(
                self.outcome.as_ref().map(describe).unwrap_or_default(),
            ));
        };
        self.ctx.set_now(self.now);
        let effects = StepEffects {
            progress: std::mem::take(&mut self.progress),
            ..StepEffects::default()
        };
        let (step, effects) = run_step(flow, &mut self.ctx, event, effects);
        self.progress = effects.progress;
        let mut report = StepReport {
            opened: effects.opened,
            sends: effects.sends,
            started: effects
                .started
                .iter()
                .map(|f| f.flow_type.name().to_owned())
                .collect(),
            wait: None,
            checkpoint_bytes: None,
            finished: false,
        };
        match step {
            Step::Suspended => {
                let bytes = rmp_serde::to_vec(flow).map_err(|e| DriverError::Checkpoint {
                    state: flow.state_name(),
                    reason: e.to_string(),
                })?;
                if self.round_trip {
                    *flow = rmp_serde::from_slice(&bytes).map_err(|e| DriverError::Checkpoint {
                        state: flow.state_name(),
                        reason: e.to_string(),
                    })?;
                }
                report.checkpoint_bytes = Some(bytes.len());
                report.wait = effects.wait;
            }
            Step::Done(result) => {
                report.finished = true;
                self.flow = None;
                self.outcome = Some(result);
            }
        }
        self.wait = report.wait.clone();
        self.opened.extend(report.opened.iter().cloned());
        self.sent.extend(report.sends.iter().cloned());
        let index = self.steps.len();
        self.steps.push(report);
        Ok(&self.steps[index])
    }
}

fn describe<O>(result: &Result<O, FlowError>) -> String {
    match result {
        Ok(_) => "success".to_owned(),
        Err(e) => format!("error `{e}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::__private as rt;
    use serde::Deserialize;

    /// Opens a session, sends 1, waits for `n`, sleeps 5 s, returns `n` plus
    /// the clock in seconds.
    #[derive(Debug, Serialize, Deserialize)]
    enum Echo {
        Start { peer: Party },
        AwaitReply { session: crate::FlowSession },
        Sleeping { n: u64 },
        Done,
    }

    impl Flow for Echo {
        type Output = u64;
        const NAME: &'static str = "driver_tests::echo";
        const VERSION: u32 = 1;
        const FINGERPRINT: u64 = 1;

        fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<u64> {
            match std::mem::replace(self, Echo::Done) {
                Echo::Start { peer } => {
                    let session = ctx.initiate_flow(&peer);
                    if let Some(Err(e)) =
                        rt::start_receive(session.send_and_receive::<u32>(&1u32), ctx)
                    {
                        return Step::Done(Err(e));
                    }
                    *self = Echo::AwaitReply { session };
                    Step::Suspended
                }
                Echo::AwaitReply { .. } => {
                    match rt::complete_receive::<u32>(ctx, event).and_then(|u| u.validate(Ok)) {
                        Ok(n) => {
                            rt::start_sleep(ctx.sleep(Duration::from_secs(5)), ctx);
                            *self = Echo::Sleeping { n: u64::from(n) };
                            Step::Suspended
                        }
                        Err(e) => Step::Done(Err(e)),
                    }
                }
                Echo::Sleeping { n } => Step::Done(Ok(n + ctx.now().0 / 1000)),
                Echo::Done => Step::Done(Err(FlowError::internal("resumed after end"))),
            }
        }

        fn state_name(&self) -> &'static str {
            match self {
                Echo::Start { .. } => "Start",
                Echo::AwaitReply { .. } => "AwaitReply",
                Echo::Sleeping { .. } => "Sleeping",
                Echo::Done => "Done",
            }
        }
    }

    fn bob() -> Party {
        Party::new("Bob", PublicKey([2; 32]))
    }

    #[test]
    fn drives_a_flow_through_receive_and_timer() {
        let mut driver = FlowDriver::new(Echo::Start { peer: bob() }).checkpoint_every_step(true);
        let report = driver.start().unwrap().clone();
        assert_eq!(report.opened.len(), 1);
        assert_eq!(report.opened[0].counterparty, bob());
        assert_eq!(report.opened[0].initiating_flow, "driver_tests::echo");
        let session = report.opened[0].id;
        assert_eq!(report.wait, Some(Wait::Receive(session)));
        assert_eq!(driver.sent_on::<u32>(session).unwrap(), vec![1]);
        assert_eq!(driver.state().map(Flow::state_name), Some("AwaitReply"));

        let report = driver.deliver(session, &41u32).unwrap();
        assert_eq!(report.wait, Some(Wait::Timer(Timestamp(5000))));
        assert!(report.sends.is_empty());
        let report = driver.fire_timer().unwrap();
        assert!(report.finished);
        assert_eq!(driver.now(), Timestamp(5000));
        assert_eq!(driver.result(), Some(&Ok(46)));
        assert_eq!(driver.checkpoint_sizes().len(), 2);
        assert!(driver.checkpoint_sizes().iter().all(|&n| n > 0 && n < 32));
    }

    #[test]
    fn an_event_the_flow_does_not_wait_for_is_refused_and_changes_nothing() {
        let mut driver = FlowDriver::new(Echo::Start { peer: bob() });
        assert_eq!(
            driver.deliver(SessionId(9), &1u32).unwrap_err(),
            DriverError::NotStarted
        );
        driver.start().unwrap();
        let session = driver.opened()[0].id;
        let err = driver.deliver(SessionId(9), &1u32).unwrap_err();
        assert!(matches!(err, DriverError::NotWaiting { .. }), "{err}");
        assert!(err.to_string().contains(&session.to_string()), "{err}");
        assert!(matches!(
            driver.fire_timer().unwrap_err(),
            DriverError::NotWaiting { .. }
        ));
        assert_eq!(driver.start().unwrap_err(), DriverError::AlreadyStarted);
        // Still waiting on the session: the refused events did not step it.
        assert_eq!(driver.steps().len(), 1);
        assert_eq!(driver.waiting_on(), Some(&Wait::Receive(session)));
    }

    #[test]
    fn session_end_and_wrong_types_fail_the_pending_receive() {
        let mut driver = FlowDriver::new(Echo::Start { peer: bob() });
        driver.start().unwrap();
        let session = driver.opened()[0].id;
        driver
            .end_session(session, FlowError::new("no thanks"))
            .unwrap();
        assert_eq!(driver.result(), Some(&Err(FlowError::new("no thanks"))));
        assert!(matches!(
            driver.deliver(session, &1u32).unwrap_err(),
            DriverError::Finished(_)
        ));

        let mut driver = FlowDriver::new(Echo::Start { peer: bob() });
        driver.start().unwrap();
        let session = driver.opened()[0].id;
        driver
            .deliver_payload(session, Payload::encode("text").unwrap())
            .unwrap();
        let Some(Err(e)) = driver.into_result() else {
            panic!("a string where a u32 is expected must fail the flow")
        };
        assert_eq!(e.kind(), crate::FlowErrorKind::TypeMismatch);
    }

    #[test]
    fn advance_clock_is_what_the_next_step_sees() {
        let mut driver = FlowDriver::new(Echo::Start { peer: bob() });
        driver.start().unwrap();
        let session = driver.opened()[0].id;
        driver.advance_clock(Duration::from_secs(10));
        // The sleep starts at 10 s, so the timer is at 15 s.
        let report = driver.deliver(session, &0u32).unwrap();
        assert_eq!(report.wait, Some(Wait::Timer(Timestamp(15_000))));
        driver.fire_timer().unwrap();
        assert_eq!(driver.result(), Some(&Ok(15)));
    }
}
