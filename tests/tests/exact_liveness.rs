//! A state stores exactly what the rest of the body can read: no local
//! kept because of a jump that never runs (the code after a `return`, the
//! end of a `let ... else` whose `else` waits), `let ... else` in every form
//! across suspensions, and a local's declared type kept in every slot.

use flow_runtime::SessionId;
use flow_runtime::prelude::*;
use flow_runtime::testing::FlowDriver;

const S: SessionId = SessionId(1);

fn session() -> FlowSession {
    FlowSession::from_id(S)
}

#[flow]
pub async fn early_return(
    ctx: &mut FlowContext,
    s: FlowSession,
    c: bool,
) -> Result<usize, FlowError> {
    let big: Vec<u64> = vec![1, 2, 3];
    if c {
        let y: usize = s.receive::<usize>().await?.validate(Ok)?;
        return Ok(y);
    }
    Ok(big.len())
}

#[test]
fn a_branch_that_returns_does_not_store_what_only_the_fall_through_reads() {
    let mut d = FlowDriver::new(early_return(session(), true));
    d.start().unwrap();
    assert_eq!(format!("{:?}", d.state().unwrap()), "AwaitY");
    d.deliver(S, &7usize).unwrap();
    assert_eq!(d.result(), Some(&Ok(7)));

    let mut d = FlowDriver::new(early_return(session(), false));
    d.start().unwrap();
    assert_eq!(d.result(), Some(&Ok(3)));
}

#[flow]
pub async fn else_waits(
    ctx: &mut FlowContext,
    s: FlowSession,
    opt: Option<u32>,
) -> Result<u32, FlowError> {
    let Some(x): Option<u32> = opt else {
        let z: u32 = s.receive::<u32>().await?.validate(Ok)?;
        return Ok(z * 100);
    };
    let w: u32 = s.receive::<u32>().await?.validate(Ok)?;
    Ok(x + w)
}

#[test]
fn a_let_else_whose_else_waits_runs_both_ways() {
    let mut d = FlowDriver::new(else_waits(session(), None));
    d.start().unwrap();
    assert_eq!(format!("{:?}", d.state().unwrap()), "AwaitZ");
    d.deliver(S, &2u32).unwrap();
    assert_eq!(d.result(), Some(&Ok(200)));

    let mut d = FlowDriver::new(else_waits(session(), Some(4)));
    d.start().unwrap();
    assert_eq!(format!("{:?}", d.state().unwrap()), "AwaitW { x: 4 }");
    d.deliver(S, &5u32).unwrap();
    assert_eq!(d.result(), Some(&Ok(9)));
}

#[flow]
pub async fn irrefutable_else(
    ctx: &mut FlowContext,
    s: FlowSession,
    opt: Option<u32>,
) -> Result<u32, FlowError> {
    #[allow(irrefutable_let_patterns)]
    let x: u32 = opt.unwrap_or(1) else {
        let z: u32 = s.receive::<u32>().await?.validate(Ok)?;
        return Ok(z);
    };
    let w: u32 = s.receive::<u32>().await?.validate(Ok)?;
    Ok(x + w)
}

#[test]
fn an_irrefutable_let_else_with_a_waiting_else_keeps_its_binding() {
    let mut d = FlowDriver::new(irrefutable_else(session(), None));
    d.start().unwrap();
    assert_eq!(format!("{:?}", d.state().unwrap()), "AwaitW { x: 1 }");
    d.deliver(S, &5u32).unwrap();
    assert_eq!(d.result(), Some(&Ok(6)));
}

#[flow]
pub async fn typed_pattern(
    ctx: &mut FlowContext,
    s: FlowSession,
    lookup: Option<u64>,
) -> Result<u64, FlowError> {
    let Some(limit): Option<u64> = lookup else {
        return Ok(0);
    };
    let w: u64 = s.receive::<u64>().await?.validate(Ok)?;
    Ok(limit.min(w))
}

#[test]
fn a_type_on_a_let_else_pattern_types_its_binding() {
    let mut d = FlowDriver::new(typed_pattern(session(), Some(10)));
    d.start().unwrap();
    assert_eq!(format!("{:?}", d.state().unwrap()), "AwaitW { limit: 10 }");
    d.deliver(S, &50u64).unwrap();
    assert_eq!(d.result(), Some(&Ok(10)));
}

#[flow]
pub async fn reassigned(ctx: &mut FlowContext, session: FlowSession) -> Result<u64, FlowError> {
    let mut st: Vec<u64> = vec![1];
    session.send(&st.len())?;
    let x: u64 = session.send_and_receive::<u64>(&1).await?.validate(Ok)?;
    st = Vec::new();
    let y: u64 = session
        .send_and_receive::<u64>(&(st.len() as u64))
        .await?
        .validate(Ok)?;
    Ok(x + y + st.len() as u64)
}

#[test]
fn a_local_dead_across_a_suspension_keeps_its_declared_type() {
    let mut d = FlowDriver::new(reassigned(session()));
    d.start().unwrap();
    // `st` is overwritten before it is read again: not stored.
    assert_eq!(
        format!("{:?}", d.state().unwrap()),
        "AwaitX { session: FlowSession(0000000000000001) }"
    );
    d.deliver(S, &5u64).unwrap();
    d.deliver(S, &6u64).unwrap();
    assert_eq!(d.result(), Some(&Ok(11)));
}
