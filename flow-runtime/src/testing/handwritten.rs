//! [`HandwrittenPing`]: the contract's `ping`, written by hand as `#[flow]`
//! would generate it.
//!
//! It exists as a reference point that does not depend on the macro: the
//! ping benchmark measures generated code against it, the differential
//! harness checks itself with it, and the runtime's own tests pin down the
//! `Flow` protocol with it. It reports no progress, so that it does exactly
//! the work of the generated ping and nothing more.

use crate::__private as rt;
use crate::{Event, Flow, FlowContext, FlowError, FlowSession, Party, Step};
use serde::{Deserialize, Serialize};

/// Sends `0..rounds` on one session, expects each number echoed back, and
/// returns their sum (`FlowError::new("wrong echo")` on a mismatch).
#[derive(Debug, Serialize, Deserialize)]
pub enum HandwrittenPing {
    /// Not started yet.
    Start {
        /// Who to ping.
        peer: Party,
        /// How many round trips.
        rounds: u32,
    },
    /// Waiting for the echo of `i`.
    AwaitEcho {
        /// The session to the peer.
        session: FlowSession,
        /// Sum of the echoes so far.
        total: u64,
        /// The number last sent.
        i: u32,
        /// How many round trips.
        rounds: u32,
    },
    /// Finished.
    Done,
}

impl HandwrittenPing {
    /// The flow at its start state.
    pub fn new(peer: Party, rounds: u32) -> Self {
        Self::Start { peer, rounds }
    }
}

impl Flow for HandwrittenPing {
    type Output = u64;
    const NAME: &'static str = "flow_runtime::testing::handwritten::ping";
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 1;

    fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<u64> {
        let (session, total, i, rounds) = match std::mem::replace(self, Self::Done) {
            Self::Start { peer, rounds } => (ctx.initiate_flow(&peer), 0u64, 0u32, rounds),
            Self::AwaitEcho {
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
            Self::Done => return Step::Done(Err(FlowError::internal("resumed after end"))),
        };
        if i < rounds {
            if let Err(e) = session.send(&i) {
                return Step::Done(Err(e));
            }
            if let Some(Err(e)) = rt::start_receive(session.receive::<u32>(), ctx) {
                return Step::Done(Err(e));
            }
            *self = Self::AwaitEcho {
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
            Self::Start { .. } => "Start",
            Self::AwaitEcho { .. } => "AwaitEcho",
            Self::Done => "Done",
        }
    }
}
