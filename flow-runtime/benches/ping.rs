//! The contract's `ping` as a `#[flow]` state machine vs the same machine
//! written by hand: time per round-trip step and checkpoint size.
//!
//! One "round-trip step" is what a node does for every echo a suspended
//! ping receives: deserialize the checkpoint (rmp-serde), resume the flow
//! with the message (decode, validate, add, send the next number, register
//! the next receive), serialize the new checkpoint. `resume_only` measures
//! the resume alone, on a state kept in memory.
//!
//! Run: `cargo bench -p flow-runtime --bench ping`. Target: the
//! generated machine within 10% of the hand-written one, and the suspended
//! ping state at most 48 bytes. The sizes are printed before the timings
//! and asserted, so a regression fails the bench (and its smoke run under
//! `cargo test --benches`).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flow_runtime::prelude::*;
use flow_runtime::testing::HandwrittenPing;
use flow_runtime::testing::ping_pong::ping;
use flow_runtime::{
    Event, Payload, SeededIds, SessionId, Step, StepEffects, Timestamp, Wait, run_step,
};
use std::hint::black_box;

fn context() -> FlowContext {
    FlowContext::new(
        Party::new("Alice", PublicKey([1; 32])),
        Timestamp(0),
        Box::new(SeededIds::new(0)),
    )
}

/// A flow suspended in its receive, as a node holds it between steps.
struct Suspended<F> {
    flow: F,
    ctx: FlowContext,
    session: SessionId,
    /// The number the flow expects next.
    next: u32,
    effects: StepEffects,
}

/// Starts `flow` (built with practically endless rounds) and runs it into
/// its first receive.
fn suspend<F: Flow>(mut flow: F) -> Suspended<F> {
    let mut ctx = context();
    let (step, effects) = run_step(&mut flow, &mut ctx, Event::Start, StepEffects::default());
    assert!(
        matches!(step, Step::Suspended),
        "ping must suspend in its first receive"
    );
    let session = match (&effects.wait, effects.opened.first()) {
        (Some(Wait::Receive(s)), Some(opened)) if *s == opened.id => *s,
        other => panic!("ping must wait on the session it opened, got {other:?}"),
    };
    Suspended {
        flow,
        ctx,
        session,
        next: 0,
        effects,
    }
}

impl<F: Flow> Suspended<F> {
    /// Delivers the expected echo and runs one step: the flow sends the next
    /// number and suspends again.
    fn step(&mut self) {
        let payload = Payload::encode(&self.next).unwrap_or_else(|e| panic!("{e}"));
        let event = Event::Message {
            session: self.session,
            payload,
        };
        let mut effects = std::mem::take(&mut self.effects);
        effects.sends.clear();
        let (step, effects) = run_step(&mut self.flow, &mut self.ctx, event, effects);
        if let Step::Done(result) = step {
            panic!("ping ended early (ok: {})", result.is_ok());
        }
        self.effects = effects;
        self.next += 1;
    }

    /// One round trip through a checkpoint: decode the state, step,
    /// encode the new state.
    fn checkpointed_step(&mut self, bytes: &mut Vec<u8>) {
        self.flow = rmp_serde::from_slice(bytes).unwrap_or_else(|e| panic!("{e}"));
        self.step();
        bytes.clear();
        rmp_serde::encode::write(bytes, &self.flow).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn checkpoint_bytes<F: Flow>(flow: F) -> usize {
    let mut s = suspend(flow);
    s.step();
    rmp_serde::to_vec(&s.flow)
        .map(|b| b.len())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn peer() -> Party {
    Party::new("Bob", PublicKey([2; 32]))
}

fn bench(c: &mut Criterion) {
    let generated_bytes = checkpoint_bytes(ping(peer(), u32::MAX));
    let hand_bytes = checkpoint_bytes(HandwrittenPing::Start {
        peer: peer(),
        rounds: u32::MAX,
    });
    eprintln!(
        "suspended ping checkpoint (rmp-serde): generated {generated_bytes} B, hand-written {hand_bytes} B"
    );
    assert!(
        generated_bytes <= 48,
        "the suspended generated ping must checkpoint in at most 48 bytes, got {generated_bytes}"
    );

    let mut group = c.benchmark_group("ping_round_trip_step");
    {
        let mut s = suspend(ping(peer(), u32::MAX));
        let mut bytes = rmp_serde::to_vec(&s.flow).unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(BenchmarkId::new("checkpointed", "generated"), |b| {
            b.iter(|| s.checkpointed_step(black_box(&mut bytes)))
        });
    }
    {
        let mut s = suspend(HandwrittenPing::Start {
            peer: peer(),
            rounds: u32::MAX,
        });
        let mut bytes = rmp_serde::to_vec(&s.flow).unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(BenchmarkId::new("checkpointed", "hand_written"), |b| {
            b.iter(|| s.checkpointed_step(black_box(&mut bytes)))
        });
    }
    {
        let mut s = suspend(ping(peer(), u32::MAX));
        group.bench_function(BenchmarkId::new("resume_only", "generated"), |b| {
            b.iter(|| s.step())
        });
    }
    {
        let mut s = suspend(HandwrittenPing::Start {
            peer: peer(),
            rounds: u32::MAX,
        });
        group.bench_function(BenchmarkId::new("resume_only", "hand_written"), |b| {
            b.iter(|| s.step())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
