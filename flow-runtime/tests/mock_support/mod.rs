//! Hand-written flows for the node's scenario tests: a ping/pong pair
//! written exactly as `#[flow]` would generate them, and a small scripted
//! flow whose behaviour (send, receive, sleep, fail, panic...) is data, so
//! each scenario can say what each side does.

#![allow(dead_code)]

use flow_runtime::__private as rt;
use flow_runtime::prelude::*;
use flow_runtime::{Event, SessionId, Step};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The contract's `ping`: sends 0..rounds, checks each echo, sums them.
#[derive(Debug, Serialize, Deserialize)]
pub enum Ping {
    Start {
        peer: Party,
        rounds: u32,
    },
    AwaitEcho {
        session: FlowSession,
        total: u64,
        i: u32,
        rounds: u32,
    },
    Done,
}

pub fn ping(peer: Party, rounds: u32) -> Ping {
    Ping::Start { peer, rounds }
}

impl Flow for Ping {
    type Output = u64;
    const NAME: &'static str = "mock_support::ping";
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 0x1111;

    fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<u64> {
        let (session, total, i, rounds) = match std::mem::replace(self, Ping::Done) {
            Ping::Start { peer, rounds } => (ctx.initiate_flow(&peer), 0u64, 0u32, rounds),
            Ping::AwaitEcho {
                session,
                total,
                i,
                rounds,
            } => {
                let echo = rt::complete_receive::<u32>(ctx, event).and_then(|u| {
                    u.validate(|n| {
                        if n == i {
                            Ok(n)
                        } else {
                            Err(FlowError::new("wrong echo"))
                        }
                    })
                });
                match echo {
                    Ok(echo) => (session, total + u64::from(echo), i + 1, rounds),
                    Err(e) => return Step::Done(Err(e)),
                }
            }
            Ping::Done => return Step::Done(Err(FlowError::internal("resumed after end"))),
        };
        if i < rounds {
            ctx.set_progress(format!("round {i}"));
            if let Err(e) = session.send(&i) {
                return Step::Done(Err(e));
            }
            if let Some(Err(e)) = rt::start_receive(session.receive::<u32>(), ctx) {
                return Step::Done(Err(e));
            }
            *self = Ping::AwaitEcho {
                session,
                total,
                i,
                rounds,
            };
            return Step::Suspended;
        }
        Step::Done(Ok(total))
    }

    fn state_name(&self) -> &'static str {
        match self {
            Ping::Start { .. } => "Start",
            Ping::AwaitEcho { .. } => "AwaitEcho",
            Ping::Done => "Done",
        }
    }
}

/// The contract's `pong`: echoes forever (ends when the session ends).
#[derive(Debug, Serialize, Deserialize)]
pub enum Pong {
    Start { session: FlowSession },
    Await { session: FlowSession },
    Done,
}

pub fn pong(session: FlowSession) -> Pong {
    Pong::Start { session }
}

impl Flow for Pong {
    type Output = ();
    const NAME: &'static str = "mock_support::pong";
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 0x2222;

    fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<()> {
        let session = match std::mem::replace(self, Pong::Done) {
            Pong::Start { session } => session,
            Pong::Await { session } => {
                match rt::complete_receive::<u32>(ctx, event).and_then(|u| u.validate(Ok)) {
                    Ok(n) => {
                        if let Err(e) = session.send(&n) {
                            return Step::Done(Err(e));
                        }
                    }
                    Err(e) => return Step::Done(Err(e)),
                }
                session
            }
            Pong::Done => return Step::Done(Err(FlowError::internal("resumed after end"))),
        };
        if let Some(Err(e)) = rt::start_receive(session.receive::<u32>(), ctx) {
            return Step::Done(Err(e));
        }
        *self = Pong::Await { session };
        Step::Suspended
    }

    fn state_name(&self) -> &'static str {
        match self {
            Pong::Start { .. } => "Start",
            Pong::Await { .. } => "Await",
            Pong::Done => "Done",
        }
    }
}

/// One instruction of a [`Script`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Open a session to the party (becomes the current session).
    Initiate(Party),
    /// Send a number on the current session.
    Send(u32),
    /// Send a string on the current session (a type the peer may not expect).
    SendText(String),
    /// Receive a number on the current session and add it to the total.
    Receive,
    /// Sleep.
    SleepMs(u64),
    /// Set the progress label.
    Progress(String),
    /// End with a protocol error.
    Fail(String),
    /// End with an error of kind Transient (the node retries).
    FailTransient(String),
    /// Fail transiently only while a `Flaky` service's counter is positive.
    Flaky,
    /// End with a protocol error while a `FailBudget` service's counter is
    /// positive (decrementing it).
    FailWhileBudget(String),
    /// Start another (empty) flow from inside the node; fail if refused.
    StartFlow,
    /// Panic.
    Panic(String),
    /// Write `key = value` to the service table "test" (committed with the step).
    Write(String, String),
    /// Run a child script as a sub-flow; `catch`: on error, record it and go on.
    Sub { child: Vec<Op>, catch: bool },
}

/// A flow that runs its ops in order and returns the sum of what it received.
/// `K` picks its NAME, so scripts can be distinct flows (initiators and
/// responders are looked up by NAME).
#[derive(Debug, Serialize, Deserialize)]
pub struct Script<const K: u8> {
    pub ops: Vec<Op>,
    pub pc: usize,
    pub session: Option<FlowSession>,
    pub total: u64,
    pub caught: Vec<String>,
    pub child: Option<Box<Script<9>>>,
    pub waiting: bool,
}

pub fn script<const K: u8>(ops: Vec<Op>) -> Script<K> {
    Script {
        ops,
        pc: 0,
        session: None,
        total: 0,
        caught: Vec::new(),
        child: None,
        waiting: false,
    }
}

pub fn responder<const K: u8>(
    ops: Vec<Op>,
) -> impl Fn(FlowSession) -> Script<K> + Send + Sync + 'static {
    move |session| Script {
        session: Some(session),
        ..script(ops.clone())
    }
}

/// A service counting down protocol failures.
pub struct FailBudget(pub u32);

/// A service counting down transient failures.
pub struct Flaky(pub u32);

impl<const K: u8> Flow for Script<K> {
    type Output = u64;
    const NAME: &'static str = match K {
        0 => "script::a",
        1 => "script::b",
        2 => "script::c",
        3 => "script::d",
        _ => "script::child",
    };
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 0x5c21 + K as u64;

    fn resume(&mut self, ctx: &mut FlowContext, mut event: Event) -> Step<u64> {
        loop {
            if self.waiting {
                self.waiting = false;
                match self.ops.get(self.pc).cloned() {
                    Some(Op::Receive) => {
                        match rt::complete_receive::<u32>(ctx, event.clone())
                            .and_then(|u| u.validate(Ok))
                        {
                            Ok(n) => self.total += u64::from(n),
                            Err(e) => return Step::Done(Err(e)),
                        }
                    }
                    Some(Op::SleepMs(_)) => rt::complete_sleep(ctx, event.clone()),
                    Some(Op::Sub { catch, .. }) => {
                        let Some(child) = self.child.as_mut() else {
                            return Step::Done(Err(FlowError::internal("no child")));
                        };
                        match rt::resume_sub_flow(&mut **child, ctx, event.clone()) {
                            None => {
                                self.waiting = true;
                                return Step::Suspended;
                            }
                            Some(r) => {
                                self.child = None;
                                match r {
                                    Ok(n) => self.total += n,
                                    Err(e) if catch => self.caught.push(e.message().to_owned()),
                                    Err(e) => return Step::Done(Err(e)),
                                }
                            }
                        }
                    }
                    _ => return Step::Done(Err(FlowError::internal("bad resume"))),
                }
                self.pc += 1;
            }
            let Some(op) = self.ops.get(self.pc).cloned() else {
                return Step::Done(Ok(self.total));
            };
            let session = self
                .session
                .clone()
                .unwrap_or_else(|| FlowSession::from_id(SessionId(0)));
            match op {
                Op::Initiate(p) => self.session = Some(ctx.initiate_flow(&p)),
                Op::Send(n) => {
                    if let Err(e) = session.send(&n) {
                        return Step::Done(Err(e));
                    }
                }
                Op::SendText(s) => {
                    if let Err(e) = session.send(&s) {
                        return Step::Done(Err(e));
                    }
                }
                Op::Receive => {
                    if let Some(r) = rt::start_receive(session.receive::<u32>(), ctx) {
                        return Step::Done(r.map(|_| self.total));
                    }
                    self.waiting = true;
                    return Step::Suspended;
                }
                Op::SleepMs(ms) => {
                    rt::start_sleep(ctx.sleep(Duration::from_millis(ms)), ctx);
                    self.waiting = true;
                    return Step::Suspended;
                }
                Op::Progress(p) => ctx.set_progress(p),
                Op::Fail(m) => return Step::Done(Err(FlowError::new(m))),
                Op::FailTransient(m) => return Step::Done(Err(FlowError::transient(m))),
                Op::Flaky => {
                    if let Some(f) = ctx.services().get_mut::<Flaky>()
                        && f.0 > 0
                    {
                        f.0 -= 1;
                        return Step::Done(Err(FlowError::transient("flaky service unavailable")));
                    }
                }
                Op::FailWhileBudget(m) => {
                    if let Some(f) = ctx.services().get_mut::<FailBudget>()
                        && f.0 > 0
                    {
                        f.0 -= 1;
                        return Step::Done(Err(FlowError::new(m)));
                    }
                }
                Op::StartFlow => {
                    if let Err(e) = ctx.start_flow(script::<3>(vec![])) {
                        return Step::Done(Err(e));
                    }
                }
                Op::Panic(m) => panic!("{m}"),
                Op::Write(k, v) => {
                    if let Some(w) = ctx.step_writes() {
                        w.put("test", k.as_bytes(), v.as_bytes());
                    }
                }
                Op::Sub { child, catch } => {
                    let sub = ctx.sub_flow(script::<9>(child));
                    match rt::start_sub_flow(sub, ctx) {
                        Err(child) => {
                            self.child = Some(Box::new(child));
                            self.waiting = true;
                            return Step::Suspended;
                        }
                        Ok(Ok(n)) => self.total += n,
                        Ok(Err(e)) if catch => self.caught.push(e.message().to_owned()),
                        Ok(Err(e)) => return Step::Done(Err(e)),
                    }
                }
            }
            self.pc += 1;
            event = Event::Start;
        }
    }

    fn state_name(&self) -> &'static str {
        if self.waiting { "Waiting" } else { "Running" }
    }
}
