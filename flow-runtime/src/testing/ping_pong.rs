//! The contract's `ping` and `pong` (`docs/getting-started.md`) as real `#[flow]`s,
//! shared by the runtime's own tests, benchmarks and the `flow-ping-node`
//! binary so that each does not carry a copy of its own.
//!
//! `ping` sends `0..rounds` one at a time, checks that each echo equals what
//! it sent (a wrong echo is a [`FlowError`]) and returns their sum, which is
//! `rounds * (rounds - 1) / 2`: a test that checks the result checks that
//! every round happened exactly once. `pong` echoes every number until the
//! initiator ends the session.
//!
//! The contract test (`flow-runtime/tests/mock_contract.rs`) and the macro's
//! own tests keep their verbatim copies on purpose: they test the text of
//! the contract and the macro, not this module.

use crate::prelude::*;

/// Pings `peer` `rounds` times; returns the sum of the echoes.
#[flow]
pub async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u32) -> Result<u64, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let mut total: u64 = 0;
    let mut i: u32 = 0;
    while i < rounds {
        session.send(&i)?;
        let echo: u32 = session.receive::<u32>().await?.validate(|n| {
            if n == i {
                Ok(n)
            } else {
                Err(FlowError::new("wrong echo"))
            }
        })?;
        total += u64::from(echo);
        i += 1;
    }
    Ok(total)
}

/// Echoes every number it receives on `session`, until the session ends.
#[flow]
pub async fn pong(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    loop {
        let n: u32 = session.receive::<u32>().await?.validate(Ok)?;
        session.send(&n)?;
    }
}

/// The sum `ping(_, rounds)` returns when every round happened exactly once.
pub fn expected_total(rounds: u32) -> u64 {
    let n = u64::from(rounds);
    n * n.saturating_sub(1) / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockNetwork;

    #[test]
    fn ping_and_pong_sum_every_round_once() {
        let mut net = MockNetwork::new(3);
        let alice = net.create_node("Alice");
        let bob = net.create_node("Bob");
        net.register_responder::<ping::Flow, _>(bob, pong);
        let handle = net.start_flow(alice, ping(net.party(bob), 10));
        net.run_network();
        assert_eq!(net.result(&handle), Some(Ok(45)));
        assert_eq!(expected_total(10), 45);
        assert_eq!(expected_total(0), 0);
    }
}
