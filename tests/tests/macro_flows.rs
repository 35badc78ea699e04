//! End-to-end tests of `#[flow]`: generated machines driven step by step
//! with hand-fed events, the state serialized and deserialized with
//! rmp-serde at every suspension (as the node does), covering every
//! control-flow form the macro supports.

use flow_runtime::prelude::*;
use flow_runtime::{
    Event, OpenedSession, Payload, SeededIds, SessionId, Step, StepEffects, Timestamp, Wait,
    run_step,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

// ---------------------------------------------------------------------------
// A tiny driver: runs one flow, checkpointing it at every suspension.

struct Driver<F: Flow> {
    flow: F,
    ctx: FlowContext,
    opened: Vec<OpenedSession>,
    sent: Vec<(SessionId, Payload)>,
    wait: Option<Wait>,
    result: Option<Result<F::Output, FlowError>>,
    checkpoint_sizes: Vec<usize>,
    states: Vec<&'static str>,
}

impl<F: Flow> Driver<F> {
    fn start(flow: F) -> Self {
        let me = Party::new("Alice", PublicKey([1; 32]));
        let mut d = Driver {
            flow,
            ctx: FlowContext::new(me, Timestamp(0), Box::new(SeededIds::new(7))),
            opened: Vec::new(),
            sent: Vec::new(),
            wait: None,
            result: None,
            checkpoint_sizes: Vec::new(),
            states: Vec::new(),
        };
        d.step(Event::Start);
        d
    }

    fn step(&mut self, event: Event) {
        assert!(self.result.is_none(), "stepped a finished flow");
        let (step, effects) =
            run_step(&mut self.flow, &mut self.ctx, event, StepEffects::default());
        self.opened.extend(effects.opened);
        self.sent
            .extend(effects.sends.into_iter().map(|m| (m.session, m.payload)));
        match step {
            Step::Suspended => {
                self.wait = effects.wait;
                assert!(
                    self.wait.is_some(),
                    "suspended without waiting for anything"
                );
                self.states.push(self.flow.state_name());
                // Checkpoint round trip, as a node does at every suspension.
                let bytes = rmp_serde::to_vec(&self.flow).expect("state serializes");
                self.checkpoint_sizes.push(bytes.len());
                self.flow = rmp_serde::from_slice(&bytes).expect("state deserializes");
            }
            Step::Done(r) => {
                self.wait = None;
                self.result = Some(r);
            }
        }
    }

    /// Delivers `value` on the session the flow waits on.
    fn deliver<T: Serialize>(&mut self, value: &T) {
        let Some(Wait::Receive(session)) = self.wait.clone() else {
            panic!("flow is not waiting for a message: {:?}", self.wait)
        };
        self.step(Event::Message {
            session,
            payload: Payload::encode(value).unwrap(),
        });
    }

    fn fire_timer(&mut self) {
        assert!(
            matches!(self.wait, Some(Wait::Timer(_))),
            "not sleeping: {:?}",
            self.wait
        );
        self.step(Event::Timer);
    }

    fn end_session(&mut self, error: FlowError) {
        let Some(Wait::Receive(session)) = self.wait.clone() else {
            panic!("flow is not waiting for a message")
        };
        self.step(Event::SessionEnded { session, error });
    }

    /// Everything sent so far, decoded as `T`.
    fn sent<T: DeserializeOwned>(&self) -> Vec<T> {
        self.sent
            .iter()
            .map(|(_, p)| p.decode::<T>().unwrap())
            .collect()
    }

    fn done(&self) -> Option<&Result<F::Output, FlowError>> {
        self.result.as_ref()
    }
}

fn bob() -> Party {
    Party::new("Bob", PublicKey([2; 32]))
}

fn session(id: u64) -> FlowSession {
    FlowSession::from_id(SessionId(id))
}

// ---------------------------------------------------------------------------
// The contract's ping and pong.

#[flow]
pub async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u32) -> Result<u64, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let mut total: u64 = 0;
    let mut i: u32 = 0;
    while i < rounds {
        session.send(&i)?; // buffered, no suspension
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

#[flow]
pub async fn pong(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    loop {
        let n: u32 = session.receive::<u32>().await?.validate(Ok)?;
        session.send(&n)?;
    }
}

#[test]
fn ping_echoes_every_round_and_sums() {
    let mut d = Driver::start(ping(bob(), 10));
    assert_eq!(d.opened.len(), 1);
    assert_eq!(d.opened[0].counterparty, bob());
    assert!(
        d.opened[0].initiating_flow.ends_with("macro_flows::ping"),
        "{}",
        d.opened[0].initiating_flow
    );
    while d.done().is_none() {
        let last: u32 = *d.sent::<u32>().last().unwrap();
        d.deliver(&last);
    }
    assert_eq!(d.done(), Some(&Ok(45)));
    assert_eq!(d.sent::<u32>(), (0..10).collect::<Vec<_>>());
    assert!(d.states.iter().all(|s| *s == "AwaitEcho"), "{:?}", d.states);
}

#[test]
fn ping_suspended_state_is_at_most_48_bytes() {
    let d = Driver::start(ping(bob(), 1_000_000));
    let size = d.checkpoint_sizes[0];
    println!("suspended ping state: {size} bytes in rmp-serde");
    assert!(size <= 48, "suspended ping state is {size} bytes");
}

#[test]
fn ping_fails_on_a_wrong_echo_and_on_session_end() {
    let mut d = Driver::start(ping(bob(), 3));
    d.deliver(&7u32);
    assert_eq!(d.done(), Some(&Err(FlowError::new("wrong echo"))));

    let mut d = Driver::start(ping(bob(), 3));
    d.end_session(FlowError::new("bye"));
    assert_eq!(d.done(), Some(&Err(FlowError::new("bye"))));
}

#[test]
fn pong_echoes_until_the_session_ends() {
    let mut d = Driver::start(pong(session(5)));
    for n in [3u32, 1, 4] {
        d.deliver(&n);
    }
    assert_eq!(d.sent::<u32>(), vec![3, 1, 4]);
    d.end_session(FlowError::counterparty_ended());
    assert_eq!(d.done(), Some(&Err(FlowError::counterparty_ended())));
}

// ---------------------------------------------------------------------------
// Control flow around suspension points.

/// `if`/`else`, `if let`, `match` with awaits in branches and arms, and a
/// value produced by an awaiting `if` in the middle of an expression.
#[flow]
pub async fn branches(
    ctx: &mut FlowContext,
    s: FlowSession,
    mode: u8,
) -> Result<Vec<u32>, FlowError> {
    let mut out: Vec<u32> = Vec::new();
    if mode == 0 {
        let a: u32 = s.receive::<u32>().await?.validate(Ok)?;
        out.push(a);
    } else if mode == 1 {
        out.push(100);
    } else {
        let b: u32 = s.receive::<u32>().await?.validate(Ok)?;
        out.push(b * 2);
    }
    let maybe: Option<u32> = s.receive::<Option<u32>>().await?.validate(Ok)?;
    if let Some(x) = maybe {
        let x: u32 = x;
        let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
        out.push(x + y);
    }
    let kind: u8 = s.receive::<u8>().await?.validate(Ok)?;
    match kind {
        0 => out.push(0),
        1 => {
            let z: u32 = s.receive::<u32>().await?.validate(Ok)?;
            out.push(z);
        }
        k => out.push(u32::from(k) + 1000),
    }
    let doubled = 2 * if mode == 0 {
        s.receive::<u32>().await?.validate(Ok)?
    } else {
        7
    };
    out.push(doubled);
    Ok(out)
}

#[test]
fn branches_take_every_path() {
    let mut d = Driver::start(branches(session(1), 0));
    d.deliver(&5u32);
    d.deliver(&Some(3u32));
    d.deliver(&4u32);
    d.deliver(&1u8);
    d.deliver(&9u32);
    d.deliver(&11u32);
    assert_eq!(d.done(), Some(&Ok(vec![5, 7, 9, 22])));

    let mut d = Driver::start(branches(session(1), 1));
    d.deliver(&None::<u32>);
    d.deliver(&0u8);
    assert_eq!(d.done(), Some(&Ok(vec![100, 0, 14])));

    let mut d = Driver::start(branches(session(1), 2));
    d.deliver(&6u32);
    d.deliver(&None::<u32>);
    d.deliver(&5u8);
    assert_eq!(d.done(), Some(&Ok(vec![12, 1005, 14])));
}

/// `loop` with a value-carrying `break`, `while let`, `for` over a `Vec` and
/// over ranges, labelled `break`/`continue`.
#[flow]
pub async fn loops(
    ctx: &mut FlowContext,
    s: FlowSession,
    items: Vec<u32>,
) -> Result<Vec<u32>, FlowError> {
    let mut out: Vec<u32> = Vec::new();
    let first_big = loop {
        let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
        if n > 10 {
            break n;
        }
        out.push(n);
    };
    out.push(first_big);
    let mut queue: Vec<u32> = vec![1, 2];
    while let Some(q) = queue.pop() {
        let q: u32 = q;
        let r: u32 = s.send_and_receive::<u32>(&q).await?.validate(Ok)?;
        out.push(q + r);
    }
    for item in items {
        let echoed: u32 = s.send_and_receive::<u32>(&item).await?.validate(Ok)?;
        out.push(echoed);
    }
    let n: u32 = 3;
    'outer: for i in 0..n {
        for j in 1u32..=3 {
            if j == 2 {
                continue 'outer;
            }
            if i == 2 {
                break 'outer;
            }
            let v: u32 = s.receive::<u32>().await?.validate(Ok)?;
            out.push(i * 100 + j * 10 + v);
        }
    }
    Ok(out)
}

#[test]
fn loops_run_every_form() {
    let mut d = Driver::start(loops(session(2), vec![7, 8]));
    d.deliver(&1u32);
    d.deliver(&2u32);
    d.deliver(&30u32); // break 30
    d.deliver(&5u32); // q = 2
    d.deliver(&6u32); // q = 1
    d.deliver(&70u32); // item 7
    d.deliver(&80u32); // item 8
    d.deliver(&1u32); // i = 0, j = 1
    d.deliver(&2u32); // i = 1, j = 1
    assert_eq!(d.done(), Some(&Ok(vec![1, 2, 30, 7, 7, 70, 80, 11, 112])));
    assert_eq!(d.sent::<u32>(), vec![2, 1, 7, 8]);
}

/// Early `return`, `?` on a non-`FlowError` error, `let ... else`,
/// shadowing across suspensions, and a labelled block.
#[derive(Debug)]
pub struct Rejected;

impl From<Rejected> for FlowError {
    fn from(_: Rejected) -> Self {
        FlowError::new("rejected")
    }
}

fn check(n: u32) -> Result<u32, Rejected> {
    if n == 13 { Err(Rejected) } else { Ok(n) }
}

#[flow]
pub async fn exits(ctx: &mut FlowContext, s: FlowSession) -> Result<String, FlowError> {
    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
    let x: u32 = check(x)?;
    if x == 0 {
        return Ok("zero".to_string());
    }
    let label: String = {
        let x: String = format!("inner{x}");
        let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
        format!("{x}-{y}")
    };
    // `x` is the outer `u32` again.
    let Some(z) = s.receive::<Option<u32>>().await?.validate(Ok)? else {
        return Ok(format!("none after {label} and {x}"));
    };
    let z: u32 = z;
    let w: u32 = s.receive::<u32>().await?.validate(Ok)?;
    let found = 'search: {
        for k in 0..z {
            if k * k == w {
                break 'search Some(k);
            }
        }
        None
    };
    Ok(format!("{label} {x} {z} {found:?}"))
}

#[test]
fn exits_return_early_propagate_errors_and_shadow() {
    let mut d = Driver::start(exits(session(3)));
    d.deliver(&0u32);
    assert_eq!(d.done(), Some(&Ok("zero".to_string())));

    let mut d = Driver::start(exits(session(3)));
    d.deliver(&13u32);
    assert_eq!(d.done(), Some(&Err(FlowError::new("rejected"))));

    let mut d = Driver::start(exits(session(3)));
    d.deliver(&4u32);
    d.deliver(&9u32);
    d.deliver(&None::<u32>);
    assert_eq!(d.done(), Some(&Ok("none after inner4-9 and 4".to_string())));

    let mut d = Driver::start(exits(session(3)));
    d.deliver(&4u32);
    d.deliver(&9u32);
    d.deliver(&Some(10u32));
    d.deliver(&49u32);
    assert_eq!(d.done(), Some(&Ok("inner4-9 4 10 Some(7)".to_string())));
}

/// Sub-flows (nested two deep) and sleep.
#[flow]
pub async fn child(ctx: &mut FlowContext, s: FlowSession, times: u32) -> Result<u32, FlowError> {
    let mut sum: u32 = 0;
    for _ in 0..times {
        let v: u32 = s.receive::<u32>().await?.validate(Ok)?;
        sum += v;
    }
    Ok(sum)
}

#[flow]
pub async fn middle(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    ctx.sleep(Duration::from_secs(3600)).await;
    let a: u32 = ctx.sub_flow(child(s.clone(), 2)).await?;
    let b = ctx.sub_flow(child(s, 0)).await?; // finishes at once
    Ok(a + b)
}

#[flow(version = 3)]
pub async fn parent(ctx: &mut FlowContext, s: FlowSession) -> Result<(u32, u32), FlowError> {
    let before: u32 = s.receive::<u32>().await?.validate(Ok)?;
    let inner: u32 = ctx.sub_flow(middle(s.clone())).await?;
    Ok((before, inner))
}

#[test]
fn sub_flows_nest_and_sleep() {
    assert_eq!(<parent::Flow as Flow>::VERSION, 3);
    assert_eq!(<child::Flow as Flow>::VERSION, 1);
    let mut d = Driver::start(parent(session(4)));
    d.deliver(&1u32);
    assert_eq!(d.states.last(), Some(&"AwaitInner"));
    d.fire_timer();
    d.deliver(&20u32);
    d.deliver(&22u32);
    assert_eq!(d.done(), Some(&Ok((1, 42))));
}

#[test]
fn sub_flow_errors_reach_the_parent() {
    let mut d = Driver::start(parent(session(4)));
    d.deliver(&1u32);
    d.fire_timer();
    d.end_session(FlowError::new("child's peer failed"));
    assert_eq!(d.done(), Some(&Err(FlowError::new("child's peer failed"))));
}

/// A million iterations without suspending: no stack growth, since the
/// trampoline jumps instead of recursing.
#[flow]
pub async fn long_loop(ctx: &mut FlowContext, s: FlowSession, n: u64) -> Result<u64, FlowError> {
    let mut acc: u64 = 0;
    let mut i: u64 = 0;
    loop {
        if i == n {
            break;
        }
        if i.is_multiple_of(250_000) && i > 0 {
            let k: u64 = s.receive::<u64>().await?.validate(Ok)?;
            acc += k;
        }
        acc = acc.wrapping_add(i);
        i += 1;
    }
    Ok(acc)
}

#[test]
fn a_million_iterations_run_in_one_step_without_stack_growth() {
    // On a small thread stack: recursion per iteration would overflow it.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let mut d = Driver::start(long_loop(session(9), 1_000_000));
            for _ in 0..3 {
                d.deliver(&1u64);
            }
            let expected: u64 = (0..1_000_000u64).sum::<u64>() + 3;
            assert_eq!(d.done(), Some(&Ok(expected)));
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn names_and_fingerprints() {
    assert!(<ping::Flow as Flow>::NAME.ends_with("::ping"));
    assert_ne!(
        <ping::Flow as Flow>::FINGERPRINT,
        <pong::Flow as Flow>::FINGERPRINT
    );
    assert_eq!(ping(bob(), 1).state_name(), "Start");
}

// ---------------------------------------------------------------------------
// Harder shapes: awaits in conditions and operation arguments, shadowing
// of a binding that is needed again after the inner scope, pattern
// bindings crossing suspensions, `let ... else` leaving a loop.

#[flow]
pub async fn shapes(ctx: &mut FlowContext, s: FlowSession) -> Result<Vec<u64>, FlowError> {
    let mut out: Vec<u64> = Vec::new();
    // An await in a `while` condition and in an `if` condition.
    while s.receive::<bool>().await?.validate(Ok)? {
        out.push(1);
    }
    if s.receive::<u8>().await?.validate(Ok)? == 7 {
        out.push(7);
    }
    // An await nested in the argument of another operation.
    let echoed: u64 = s
        .send_and_receive::<u64>(&(s.receive::<u64>().await?.validate(Ok)? + 1))
        .await?
        .validate(Ok)?;
    out.push(echoed);
    // Shadowing: the outer `v` is needed again after the inner block.
    let v: u64 = 10;
    {
        let v: u64 = v * 2;
        let w: u64 = s.receive::<u64>().await?.validate(Ok)?;
        out.push(v + w);
    }
    out.push(v);
    // A match arm's binding crossing a suspension (rebound with a type).
    let pair: (u64, u64) = s.receive::<(u64, u64)>().await?.validate(Ok)?;
    match pair {
        (0, _) => out.push(0),
        (a, b) => {
            let (a, b): (u64, u64) = (a, b);
            let c: u64 = s.receive::<u64>().await?.validate(Ok)?;
            out.push(a * 100 + b + c);
        }
    }
    // `let ... else` that breaks out of a lowered loop.
    let mut rounds: u32 = 0;
    loop {
        rounds += 1;
        let Some(n) = s.receive::<Option<u64>>().await?.validate(Ok)? else {
            break;
        };
        out.push(n);
    }
    out.push(u64::from(rounds));
    // A `loop` used as a value, broken with an awaited value.
    let got: u64 = loop {
        let n: u64 = s.receive::<u64>().await?.validate(Ok)?;
        if n.is_multiple_of(2) {
            break n * 10;
        }
    };
    out.push(got);
    Ok(out)
}

#[test]
fn harder_shapes_behave_like_the_async_fn() {
    let mut d = Driver::start(shapes(session(6)));
    d.deliver(&true);
    d.deliver(&true);
    d.deliver(&false); // while: two pushes
    d.deliver(&7u8); // if: push 7
    d.deliver(&41u64); // inner receive -> sends 42
    assert_eq!(d.sent::<u64>(), vec![42]);
    d.deliver(&99u64); // echo
    d.deliver(&5u64); // w: push 20 + 5, then push outer v = 10
    d.deliver(&(3u64, 4u64)); // pattern (a, b)
    d.deliver(&6u64); // c: push 300 + 4 + 6
    d.deliver(&Some(8u64));
    d.deliver(&Some(9u64));
    d.deliver(&None::<u64>); // break after 3 rounds
    d.deliver(&3u64);
    d.deliver(&4u64); // loop value 40
    assert_eq!(
        d.done(),
        Some(&Ok(vec![1, 1, 7, 99, 25, 10, 310, 8, 9, 3, 40]))
    );
}

mod shape_v1 {
    use flow_runtime::prelude::*;

    #[flow]
    pub async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
        let a: u32 = 1;
        let b: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(a + b)
    }
}

mod shape_v1_again {
    use flow_runtime::prelude::*;

    #[flow]
    pub async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
        let a: u32 = 1;
        let b: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(a + b)
    }
}

mod shape_v2 {
    use flow_runtime::prelude::*;

    // `a` is now a u64: the suspended state's shape changed.
    #[flow]
    pub async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
        let a: u64 = 1;
        let b: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(a as u32 + b)
    }
}

mod shape_v3 {
    use flow_runtime::prelude::*;

    // Same types, but the variant has another name.
    #[flow]
    pub async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
        let a: u32 = 1;
        let c: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(a + c)
    }
}

mod shape_child_changed {
    use flow_runtime::prelude::*;

    #[flow]
    pub async fn parent(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
        let n: u32 = ctx.sub_flow(super::shape_v1::f(s)).await?;
        Ok(n)
    }

    #[flow]
    pub async fn parent2(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
        let n: u32 = ctx.sub_flow(super::shape_v2::f(s)).await?;
        Ok(n)
    }
}

#[test]
fn fingerprint_follows_the_state_shape() {
    let v1 = <shape_v1::f::Flow as Flow>::FINGERPRINT;
    assert_eq!(
        v1,
        <shape_v1_again::f::Flow as Flow>::FINGERPRINT,
        "same shape, same fingerprint"
    );
    assert_ne!(
        v1,
        <shape_v2::f::Flow as Flow>::FINGERPRINT,
        "field type changed"
    );
    assert_ne!(
        v1,
        <shape_v3::f::Flow as Flow>::FINGERPRINT,
        "variant name changed"
    );
    assert_ne!(
        <shape_child_changed::parent::Flow as Flow>::FINGERPRINT,
        <shape_child_changed::parent2::Flow as Flow>::FINGERPRINT,
        "a child's shape is part of the parent's"
    );
    assert_ne!(
        <shape_v1::f::Flow as Flow>::NAME,
        <shape_v1_again::f::Flow as Flow>::NAME
    );
    assert!(<shape_v1::f::Flow as Flow>::NAME.ends_with("shape_v1::f"));
}

#[test]
fn states_are_named_after_bindings_operations_and_labels() {
    let mut d = Driver::start(labelled(session(8)));
    d.deliver(&1u32);
    d.deliver(&5u32);
    d.deliver(&2u32);
    d.deliver(&9u32);
    d.fire_timer();
    assert_eq!(
        d.states,
        vec!["AwaitPayment", "Receive", "AwaitB", "Receive2", "Sleep"]
    );
    assert_eq!(d.done(), Some(&Ok(3)));
}

#[flow]
pub async fn labelled(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    #[state(AwaitPayment)]
    let a: u32 = s.receive::<u32>().await?.validate(Ok)?;
    s.receive::<u32>().await?.validate(|_| Ok(()))?;
    let b: u32 = a + s.receive::<u32>().await?.validate(Ok)?;
    s.receive::<u32>().await?.validate(|_| Ok(()))?;
    ctx.sleep(Duration::from_millis(1)).await;
    Ok(b)
}

// ---------------------------------------------------------------------------
// More shapes: deferred initialisation, shadowing by patterns, awaits in
// literals and receivers, an awaiting `if` as the tail, items in the body.

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pair {
    pub a: u32,
    pub b: u32,
}

#[flow]
pub async fn more_shapes(
    ctx: &mut FlowContext,
    s: FlowSession,
    flag: bool,
) -> Result<Vec<u32>, FlowError> {
    fn double(x: u32) -> u32 {
        x * 2
    }
    let mut out: Vec<u32> = Vec::new();
    // Deferred initialisation across a suspension.
    let x: u32;
    if flag {
        x = s.receive::<u32>().await?.validate(Ok)?;
    } else {
        x = 2;
    }
    out.push(double(x));
    // An `if let` and a match arm that shadow a local needed afterwards.
    let n: u32 = 5;
    let opt: Option<u32> = s.receive::<Option<u32>>().await?.validate(Ok)?;
    if let Some(n) = opt {
        let n: u32 = n;
        let extra: u32 = s.receive::<u32>().await?.validate(Ok)?;
        out.push(n + extra);
    }
    match opt {
        Some(n) if n > 100 => out.push(n),
        _ => {
            let again: u32 = s.receive::<u32>().await?.validate(Ok)?;
            out.push(again + n);
        }
    }
    out.push(n);
    // Awaits in a struct literal, a tuple, an array and a method receiver.
    let p = Pair {
        a: 1u32,
        b: s.receive::<u32>().await?.validate(Ok)?,
    };
    let t: (u32, u32) = (p.a, s.receive::<u32>().await?.validate(Ok)?);
    let arr: [u32; 3] = [t.0, t.1, s.receive::<u32>().await?.validate(Ok)?];
    let len = s.receive::<Vec<u32>>().await?.validate(Ok)?.len() as u32;
    out.extend([p.b, t.1, arr[2], len]);
    // Closures and verbatim blocks using restored locals.
    let base: u32 = 1000;
    let mut counter: u32 = 0;
    {
        counter += 1;
    }
    let _ack: bool = s.receive::<bool>().await?.validate(Ok)?;
    out = out.iter().map(|v| v + base * counter).collect();
    // `match` directly on an awaited value; `continue` in a lowered `while`.
    let mut k: u32 = 0;
    while k < 4 {
        k += 1;
        match s.receive::<u8>().await?.validate(Ok)? {
            0 => continue,
            v => out.push(u32::from(v)),
        }
    }
    // The tail is an `if` that awaits in one branch.
    if out.len() > 100 {
        Ok(out)
    } else {
        let last: u32 = s.receive::<u32>().await?.validate(Ok)?;
        out.push(last);
        Ok(out)
    }
}

#[test]
fn more_shapes_behave_like_the_async_fn() {
    let mut d = Driver::start(more_shapes(session(11), true));
    d.deliver(&21u32); // x
    d.deliver(&Some(7u32)); // opt
    d.deliver(&3u32); // extra: push 10
    d.deliver(&4u32); // again: push 4 + 5 (outer n)
    d.deliver(&8u32); // p.b
    d.deliver(&9u32); // t.1
    d.deliver(&10u32); // arr[2]
    d.deliver(&vec![1u32, 2, 3]); // len 3
    d.deliver(&true);
    for v in [0u8, 6, 0, 7] {
        d.deliver(&v);
    }
    d.deliver(&99u32);
    assert_eq!(
        d.done(),
        Some(&Ok(vec![
            1042, 1010, 1009, 1005, 1008, 1009, 1010, 1003, 6, 7, 99
        ]))
    );

    let mut d = Driver::start(more_shapes(session(11), false));
    d.deliver(&None::<u32>);
    d.deliver(&1u32); // again
    for v in [8u32, 9, 10] {
        d.deliver(&v);
    }
    d.deliver(&Vec::<u32>::new());
    d.deliver(&false);
    for v in [1u8, 1, 1, 1] {
        d.deliver(&v);
    }
    d.deliver(&5u32);
    assert_eq!(
        d.done(),
        Some(&Ok(vec![
            1004, 1006, 1005, 1008, 1009, 1010, 1000, 1, 1, 1, 1, 5
        ]))
    );
}

// ---------------------------------------------------------------------------
// The runtime's user-facing contract, on the mock network: generated machines
// checkpointed in each node's store, a restart of either side included.

#[test]
#[allow(clippy::redundant_closure)] // written exactly as in the contract
fn contract_ping_pong_on_the_mock_network() {
    use flow_runtime::testing::MockNetwork;
    let mut net = MockNetwork::new(42);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, |session| pong(session));
    let handle = net.start_flow(alice, ping(net.party(bob), 10));
    let mut steps: u32 = 0;
    while net.step() {
        steps += 1;
        if steps.is_multiple_of(3) {
            net.restart_node(if steps.is_multiple_of(2) { alice } else { bob });
        }
    }
    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(45)));
}

/// `AwaitV1` twice would be `AwaitV12`, which is also the name of the
/// state of `v12`: the duplicate suffix skips names already taken.
#[flow]
pub async fn name_clash(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let v12: u32 = s.receive::<u32>().await?.validate(Ok)?;
    let v1: u32 = s.receive::<u32>().await?.validate(Ok)?;
    let v1: u32 = v1 + s.receive::<u32>().await?.validate(Ok)?;
    Ok(v12 + v1)
}

#[test]
fn duplicate_state_names_never_collide() {
    let mut d = Driver::start(name_clash(session(12)));
    for v in [1u32, 2, 3] {
        d.deliver(&v);
    }
    assert_eq!(d.states, vec!["AwaitV12", "AwaitV1", "AwaitV13"]);
    assert_eq!(d.done(), Some(&Ok(6)));
}

// ---------------------------------------------------------------------------
// The state graph (`Flow::STATE_GRAPH`) against the runs above.

/// Checks that every state a run passed through is in `F`'s graph, and
/// every step from one to the next (from `Start`, to `Done` for a run that
/// finished) is one of its transitions. A parent stays in its sub-flow
/// state while the child steps: those repeats are one stay.
fn assert_run_in_graph<F: Flow>(d: &Driver<F>) {
    let graph = &F::STATE_GRAPH;
    let mut path = vec!["Start"];
    for state in &d.states {
        let in_sub_flow = graph.state(state).is_some_and(|s| s.sub_flow.is_some());
        if !(in_sub_flow && path.last() == Some(state)) {
            path.push(state);
        }
    }
    if matches!(d.done(), Some(Ok(_))) {
        path.push("Done");
    }
    for pair in path.windows(2) {
        assert!(
            graph
                .transitions
                .iter()
                .any(|t| t.from == pair[0] && t.to == pair[1]),
            "{}: no transition {} -> {} in {:#?}",
            graph.title,
            pair[0],
            pair[1],
            graph.transitions
        );
    }
    for state in &path {
        assert!(
            graph.state(state).is_some(),
            "{}: no state {state}",
            graph.title
        );
    }
}

#[test]
fn every_run_follows_transitions_of_the_state_graph() {
    for mode in 0u8..3 {
        let mut d = Driver::start(branches(session(1), mode));
        match mode {
            0 => {
                d.deliver(&5u32);
                d.deliver(&Some(3u32));
                d.deliver(&4u32);
                d.deliver(&1u8);
                d.deliver(&9u32);
                d.deliver(&11u32);
            }
            1 => {
                d.deliver(&None::<u32>);
                d.deliver(&0u8);
            }
            _ => {
                d.deliver(&6u32);
                d.deliver(&None::<u32>);
                d.deliver(&5u8);
            }
        }
        assert!(matches!(d.done(), Some(Ok(_))));
        assert_run_in_graph(&d);
    }

    let mut d = Driver::start(loops(session(2), vec![7, 8]));
    for v in [1u32, 2, 30, 5, 6, 70, 80, 1, 2] {
        d.deliver(&v);
    }
    assert!(matches!(d.done(), Some(Ok(_))));
    assert_run_in_graph(&d);

    let mut d = Driver::start(exits(session(3)));
    d.deliver(&0u32); // an early `return`
    assert_run_in_graph(&d);
    let mut d = Driver::start(exits(session(3)));
    d.deliver(&4u32);
    d.deliver(&9u32);
    d.deliver(&None::<u32>); // the `else` of a `let ... else`
    assert_run_in_graph(&d);

    let mut d = Driver::start(parent(session(4)));
    d.deliver(&1u32);
    d.fire_timer();
    d.deliver(&20u32);
    d.deliver(&22u32);
    assert_run_in_graph(&d);
}

#[test]
fn a_sub_flow_state_holds_the_childs_graph() {
    let graph = &parent::Flow::STATE_GRAPH;
    assert_eq!(graph.title, "parent");
    assert_eq!(graph.flow, <parent::Flow as Flow>::NAME);
    let inner = graph.state("AwaitInner").expect("the sub-flow's state");
    let middle_graph = inner.sub_flow.expect("it nests the child's graph");
    assert_eq!(middle_graph, &middle::Flow::STATE_GRAPH);
    let nested: Vec<&str> = middle_graph
        .states
        .iter()
        .filter_map(|s| s.sub_flow.map(|g| g.title))
        .collect();
    assert_eq!(nested, ["child", "child"]);
    let sleep = middle_graph.state("Sleep").expect("middle sleeps first");
    assert_eq!(
        sleep.awaits.map(|o| o.code),
        Some("ctx.sleep(Duration::from_secs(3600))")
    );
    // What each state stores: `before` is kept while the child runs.
    let stored: Vec<&str> = graph.fields_of(inner).iter().map(|f| f.name).collect();
    assert_eq!(stored, ["before"]);
    let mermaid = graph.to_mermaid(Some("AwaitInner"));
    assert!(
        mermaid.contains("    state \"AwaitInner<br>before#58; u32\" as AwaitInner {\n"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("        state \"AwaitA<br>s#58; FlowSession\" as AwaitInner__AwaitA {\n"),
        "{mermaid}"
    );
    assert!(
        mermaid.ends_with("    class AwaitInner current\n"),
        "{mermaid}"
    );
}
