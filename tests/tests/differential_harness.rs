//! Self-tests of the differential kit, independent of `#[flow]`: a
//! hand-written state machine for the contract's `ping` must agree with the
//! plain `async` ping, and a plain twin that differs in one send, one wait or
//! the result must be caught.

use flow_runtime::prelude::*;
use flow_runtime::testing::HandwrittenPing;
use flow_tests::differential::{Twins, check_flow, check_flow_with, compare};
use flow_tests::trace::{Input, Outcome, WaitTrace};
use proptest::test_runner::{Config, RngSeed};

mod plain {
    use flow_tests::plain::prelude::*;

    /// The contract's ping as a plain async fn; `skew` breaks it on purpose
    /// (0 = faithful, 1 = sends a wrong number, 2 = returns a wrong total).
    pub fn ping(peer: Party, rounds: u32, skew: u32) -> PlainFlow<u64> {
        PlainFlow::new("ping", move |mut ctx: FlowContext| async move {
            let session = ctx.initiate_flow(&peer);
            let mut total: u64 = 0;
            let mut i: u32 = 0;
            while i < rounds {
                session.send(&(if skew == 1 && i == 2 { 99 } else { i }))?;
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
            Ok(if skew == 2 { total + 1 } else { total })
        })
    }
}

fn bob() -> Party {
    Party::new("Bob", PublicKey([2; 32]))
}

/// The hand-written machine and the plain ping skewed by `skew`.
fn twins(skew: u32) -> Twins<'static, u64> {
    Twins::new(
        || HandwrittenPing::Start {
            peer: bob(),
            rounds: 4,
        },
        move |_| plain::ping(bob(), 4, skew),
    )
}

#[test]
fn handwritten_ping_and_plain_ping_agree_on_every_input() {
    let coverage = check_flow("ping", 6, &twins(0)).unwrap_or_else(|e| panic!("{e}"));
    // Random inputs rarely echo correctly; what matters is that both ways of
    // ending were compared.
    assert!(coverage.err > 0 && coverage.waiting > 0, "{coverage:?}");
}

#[test]
fn an_echoing_counterparty_gets_the_sum() {
    let inputs: Vec<Input> = (0..4).map(Input::Value).collect();
    let trace = compare(&twins(0), &inputs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(trace.outcome, Outcome::Done(Ok(6)));
    assert_eq!(trace.steps.len(), 5);
    assert_eq!(trace.steps[0].opened.len(), 1);
    assert_eq!(trace.steps[0].opened[0].counterparty, "Bob");
    assert_eq!(trace.steps[0].opened[0].flow, "ping");
    assert_eq!(trace.steps[1].wait, Some(WaitTrace::Receive(0)));
    assert_eq!(trace.steps[4].wait, None);
}

#[test]
fn a_twin_that_sends_something_else_is_caught() {
    let inputs: Vec<Input> = (0..4).map(Input::Value).collect();
    for skew in [1, 2] {
        let err = compare(&twins(skew), &inputs).expect_err("the twins differ");
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}

#[test]
fn a_twin_that_differs_only_on_some_inputs_is_found_by_proptest() {
    // skew 1 differs only once round 2 is reached, i.e. only when the first
    // two inputs echo 0 and 1: proptest must find such an input.
    let config = Config {
        cases: 2048,
        rng_seed: RngSeed::Fixed(1),
        failure_persistence: None,
        ..Config::default()
    };
    let result = check_flow_with(config, "ping", 6, &twins(1));
    let err = result.expect_err("proptest must find the diverging input");
    assert!(err.contains("minimal inputs: [Value(0), Value(1)"), "{err}");
}
