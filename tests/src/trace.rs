//! What a differential test compares: a [`Trace`] of every step (sessions
//! opened, messages sent, what the flow then waits on) and the outcome,
//! normalised so that two runs of the same body compare equal exactly when
//! they behaved the same; plus the scripted counterparty ([`Script`]) that
//! answers both runs identically.

use flow_runtime::{Event, FlowError, Party, Payload, SessionId, Wait};
use proptest::prelude::*;
use std::collections::HashMap;

/// A session opened during a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedTrace {
    /// The session, numbered in order of first appearance.
    pub session: usize,
    /// The counterparty's name.
    pub counterparty: String,
    /// The fn name of the (sub-)flow that opened it: the last segment of
    /// `Flow::NAME` (the generated side's module path differs from the
    /// plain side's, the fn name does not).
    pub flow: String,
}

/// A message sent during a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentTrace {
    /// The session, numbered in order of first appearance.
    pub session: usize,
    /// The encoded message (type name + MessagePack bytes).
    pub payload: Payload,
}

/// What a flow waits on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitTrace {
    /// A message on the session with this number.
    Receive(usize),
    /// A timer at this virtual time (ms).
    Timer(u64),
}

/// One step: everything the flow did between two suspensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepTrace {
    /// Sessions opened, in order.
    pub opened: Vec<OpenedTrace>,
    /// Messages sent, in order.
    pub sends: Vec<SentTrace>,
    /// What it waits on afterwards (`None` on the final step).
    pub wait: Option<WaitTrace>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<O> {
    /// The flow returned.
    Done(Result<O, FlowError>),
    /// The flow waits, and the counterparty has nothing more to say.
    Waiting,
    /// The flow suspended without saying what it waits on (a transform bug).
    SuspendedWithoutWait,
    /// The driver refused to go on, e.g. a checkpoint did not round-trip.
    Broken(String),
    /// The body panicked (e.g. an arithmetic overflow) with this message:
    /// both twins must panic at the same step with the same message.
    Panicked(String),
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<a panic without a message>".to_owned()
    }
}

/// The whole observable behaviour of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace<O> {
    /// Every step, the start step first.
    pub steps: Vec<StepTrace>,
    /// How it ended.
    pub outcome: Outcome<O>,
}

/// Numbers sessions by first appearance, so that traces compare by
/// structure rather than by id.
#[derive(Debug, Default)]
pub struct TraceBuilder {
    numbers: HashMap<SessionId, usize>,
}

impl TraceBuilder {
    /// The number of `id`, assigning the next one on first sight.
    pub fn number(&mut self, id: SessionId) -> usize {
        let next = self.numbers.len();
        *self.numbers.entry(id).or_insert(next)
    }

    /// Records a session opening.
    pub fn opened(&mut self, id: SessionId, party: &Party, flow_name: &str) -> OpenedTrace {
        OpenedTrace {
            session: self.number(id),
            counterparty: party.name().to_owned(),
            flow: flow_name.rsplit("::").next().unwrap_or("").to_owned(),
        }
    }

    /// Records a send.
    pub fn sent(&mut self, id: SessionId, payload: Payload) -> SentTrace {
        SentTrace {
            session: self.number(id),
            payload,
        }
    }

    /// Records a wait.
    pub fn wait(&mut self, wait: &Wait) -> WaitTrace {
        match wait {
            Wait::Receive(id) => WaitTrace::Receive(self.number(*id)),
            Wait::Timer(t) => WaitTrace::Timer(t.0),
        }
    }
}

/// The other side of every session: asked what happens next whenever the
/// flow suspends.
pub trait Counterparty {
    /// The event that wakes a flow waiting on `wait`; `None` if nothing
    /// more will come (the run then ends with [`Outcome::Waiting`]).
    fn answer(&mut self, wait: &Wait) -> Option<Event>;
}

/// One scripted answer to a receive.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A `u32` message: the type every differential body receives.
    Value(u32),
    /// A message of the wrong type: the receive fails with `TypeMismatch`.
    Text(String),
    /// The counterparty ends the session with a protocol error.
    End,
}

/// A counterparty that answers the n-th receive (on whatever session) with
/// the n-th [`Input`] and fires every timer at once. Runs that behave the
/// same receive the same answers.
#[derive(Debug, Clone)]
pub struct Script {
    inputs: Vec<Input>,
    next: usize,
    timers: usize,
}

/// Timers a script fires before it gives up: bounds a body that sleeps in
/// an endless loop (a bug the test should report, not hang on).
const MAX_TIMERS: usize = 10_000;

impl Script {
    /// A script answering receives with `inputs`, in order.
    pub fn new(inputs: &[Input]) -> Self {
        Self {
            inputs: inputs.to_vec(),
            next: 0,
            timers: 0,
        }
    }
}

impl Counterparty for Script {
    fn answer(&mut self, wait: &Wait) -> Option<Event> {
        match wait {
            Wait::Timer(_) => {
                self.timers += 1;
                (self.timers <= MAX_TIMERS).then_some(Event::Timer)
            }
            Wait::Receive(session) => {
                let input = self.inputs.get(self.next)?;
                self.next += 1;
                let session = *session;
                Some(match input {
                    Input::Value(v) => Event::Message {
                        session,
                        payload: encode(v),
                    },
                    Input::Text(s) => Event::Message {
                        session,
                        payload: encode(s),
                    },
                    Input::End => Event::SessionEnded {
                        session,
                        error: FlowError::new("the counterparty refused"),
                    },
                })
            }
        }
    }
}

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Payload {
    // A u32 or a String always encodes; should that ever change, the failure
    // still shows up in the trace as an undecodable message.
    Payload::encode(value).unwrap_or_else(|e| Payload {
        type_name: format!("<unencodable: {e}>"),
        bytes: Vec::new(),
    })
}

/// Counterparty inputs for property tests: mostly small numbers (so that
/// `if`/`match` on them take every branch), sometimes any number, rarely a
/// wrongly typed message or a session end.
pub fn inputs(max_len: usize) -> impl Strategy<Value = Vec<Input>> {
    let input = prop_oneof![
        40 => (0u32..8).prop_map(Input::Value),
        4 => any::<u32>().prop_map(Input::Value),
        1 => "[a-z]{0,4}".prop_map(Input::Text),
        1 => Just(Input::End),
    ];
    proptest::collection::vec(input, 0..=max_len)
}
