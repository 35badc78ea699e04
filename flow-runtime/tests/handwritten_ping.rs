//! A hand-written state machine for the contract's `ping` flow, driven
//! step by step with scripted counterparty messages. It pins down the
//! `Flow` trait's protocol (what `#[flow]` must generate) independently of
//! the macro.

use flow_runtime::prelude::*;
use flow_runtime::testing::HandwrittenPing;
use flow_runtime::{Event, Payload, SeededIds, StepEffects, Timestamp, Wait, run_step};

fn ctx() -> FlowContext {
    let me = Party::new("Alice", PublicKey([1; 32]));
    FlowContext::new(me, Timestamp(0), Box::new(SeededIds::new(7)))
}

#[test]
fn handwritten_ping_echoes_every_round_and_sums() {
    let mut ctx = ctx();
    let bob = Party::new("Bob", PublicKey([2; 32]));
    let mut flow = HandwrittenPing::Start {
        peer: bob.clone(),
        rounds: 3,
    };
    let (step, effects) = run_step(&mut flow, &mut ctx, Event::Start, StepEffects::default());
    assert_eq!(step, flow_runtime::Step::Suspended);
    assert_eq!(effects.opened.len(), 1);
    assert_eq!(effects.opened[0].counterparty, bob);
    assert_eq!(effects.opened[0].initiating_flow, HandwrittenPing::NAME);
    let session = effects.opened[0].id;
    assert_eq!(effects.wait, Some(Wait::Receive(session)));
    let mut sent: Vec<u32> = effects
        .sends
        .iter()
        .map(|m| m.payload.decode().unwrap())
        .collect();
    let mut effects = StepEffects::default();
    loop {
        let n = *sent.last().unwrap();
        // Checkpoint round trip at every suspension.
        flow = rmp_serde::from_slice(&rmp_serde::to_vec(&flow).unwrap()).unwrap();
        let event = Event::Message {
            session,
            payload: Payload::encode(&n).unwrap(),
        };
        let (step, next) = run_step(&mut flow, &mut ctx, event, effects);
        effects = next;
        sent.extend(
            effects
                .sends
                .drain(..)
                .map(|m| m.payload.decode::<u32>().unwrap()),
        );
        if let flow_runtime::Step::Done(result) = step {
            assert_eq!(result, Ok(3));
            break;
        }
    }
    assert_eq!(sent, vec![0, 1, 2]);
}

#[test]
fn wrong_message_type_names_both_types() {
    let mut ctx = ctx();
    let mut flow = HandwrittenPing::Start {
        peer: Party::new("Bob", PublicKey([2; 32])),
        rounds: 1,
    };
    let (_, effects) = run_step(&mut flow, &mut ctx, Event::Start, StepEffects::default());
    let session = effects.opened[0].id;
    let event = Event::Message {
        session,
        payload: Payload::encode("hello").unwrap(),
    };
    let (step, _) = run_step(&mut flow, &mut ctx, event, StepEffects::default());
    let flow_runtime::Step::Done(Err(e)) = step else {
        panic!("expected failure, got {step:?}")
    };
    assert_eq!(e.kind(), FlowErrorKind::TypeMismatch);
    assert!(
        e.message().contains("str") && e.message().contains("u32"),
        "{e}"
    );
}

#[test]
fn send_outside_a_step_is_an_error_not_a_panic() {
    let session = FlowSession::from_id(flow_runtime::SessionId(1));
    let err = session.send(&1u32).unwrap_err();
    assert_eq!(err.kind(), FlowErrorKind::Internal);
}
