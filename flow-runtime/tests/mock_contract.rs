//! The runtime's user-facing contract, verbatim: `#[flow]` ping and pong on a
//! `MockNetwork`, plus the contract's promises about sleep, restarts, `Party`
//! in messages and multi-megabyte payloads.

// The closures are written exactly as the contract writes them.
#![allow(clippy::redundant_closure)]

use flow_runtime::prelude::*;
use flow_runtime::testing::MockNetwork;
use serde_bytes::ByteBuf;
use std::time::Duration;

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

#[flow]
pub async fn pong(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    loop {
        let n: u32 = session.receive::<u32>().await?.validate(Ok)?;
        session.send(&n)?;
    }
}

#[flow]
pub async fn nap(ctx: &mut FlowContext, hours: u64) -> Result<u64, FlowError> {
    let before: u64 = ctx.now().0;
    ctx.sleep(Duration::from_secs(hours * 3600)).await;
    let after: u64 = ctx.now().0;
    Ok(after - before)
}

#[flow]
pub async fn who_are_you(ctx: &mut FlowContext, peer: Party) -> Result<Party, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let me: Party = ctx.our_identity().clone();
    let them: Party = session.send_and_receive::<Party>(&me).await?.validate(Ok)?;
    Ok(them)
}

#[flow]
pub async fn i_am(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let _asker: Party = session.receive::<Party>().await?.validate(Ok)?;
    let me: Party = ctx.our_identity().clone();
    session.send(&me)?;
    Ok(())
}

#[flow]
pub async fn big_echo(ctx: &mut FlowContext, peer: Party, size: u64) -> Result<u64, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let blob: ByteBuf = ByteBuf::from(vec![7u8; size as usize]);
    let back: ByteBuf = session
        .send_and_receive::<ByteBuf>(&blob)
        .await?
        .validate(Ok)?;
    // Kept across a suspension: the checkpoint is several megabytes too.
    ctx.sleep(Duration::from_secs(1)).await;
    Ok(back.iter().map(|b| u64::from(*b)).sum::<u64>() + (blob.len() as u64 - size))
}

#[flow]
pub async fn big_echo_back(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let blob: ByteBuf = session.receive::<ByteBuf>().await?.validate(Ok)?;
    session.send(&blob)?;
    Ok(())
}

#[test]
fn contract_ping_pong() {
    let mut net = MockNetwork::new(42);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, |session| pong(session));
    let handle = net.start_flow(alice, ping(net.party(bob), 10));
    while net.step() {}
    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(45)));
    net.restart_node(bob);
    assert_eq!(net.result(&handle), Some(Ok(45)));
}

#[test]
fn contract_ping_pong_with_restart_of_each_side_mid_flow() {
    let mut net = MockNetwork::new(43);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, |session| pong(session));
    let handle = net.start_flow(alice, ping(net.party(bob), 20));
    let mut n = 0u32;
    while net.step() {
        n += 1;
        if n.is_multiple_of(3) {
            net.restart_node(bob);
        }
        if n.is_multiple_of(5) {
            net.restart_node(alice);
        }
    }
    assert_eq!(net.result(&handle), Some(Ok(190)));
}

#[test]
fn an_hour_long_sleep_ends_in_a_few_steps_of_virtual_time() {
    let mut net = MockNetwork::new(44);
    let alice = net.create_node("Alice");
    let handle = net.start_flow(alice, nap(1));
    let mut steps = 0;
    while net.step() {
        steps += 1;
    }
    assert!(steps < 10, "{steps} steps");
    assert_eq!(net.result(&handle), Some(Ok(3_600_000)));
}

#[test]
fn a_flow_waiting_forever_leaves_the_network_idle_with_no_result() {
    let mut net = MockNetwork::new(45);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    // Bob answers ping with a flow that never replies.
    net.register_responder::<ping::Flow, _>(bob, |session| i_am(session));
    let handle = net.start_flow(alice, ping(net.party(bob), 1));
    net.run_network();
    // i_am received a u32 where it expected a Party: it failed, and ping was
    // told. Either way the network went idle and the result is settled.
    assert!(matches!(net.result(&handle), Some(Err(_))));

    let carol = net.create_node("Carol");
    net.register_responder::<ping::Flow, _>(carol, |session| big_echo_back(session));
    let silent = net.start_flow(alice, who_are_you(net.party(carol)));
    // Carol has no responder for who_are_you: the init is refused.
    net.run_network();
    let Some(Err(e)) = net.result(&silent) else {
        panic!("expected a refusal")
    };
    assert_eq!(e.kind(), FlowErrorKind::UnknownFlow);
}

#[test]
fn parties_travel_in_messages_and_checkpoints() {
    let mut net = MockNetwork::new(46);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<who_are_you::Flow, _>(bob, |session| i_am(session));
    let handle = net.start_flow(alice, who_are_you(net.party(bob)));
    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(net.party(bob))));
}

#[test]
fn several_megabyte_messages_and_checkpoints_work() {
    let mut net = MockNetwork::new(47);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<big_echo::Flow, _>(bob, |session| big_echo_back(session));
    let size = 3 * 1024 * 1024;
    let handle = net.start_flow(alice, big_echo(net.party(bob), size));
    let mut n = 0;
    while net.step() {
        n += 1;
        if n == 4 {
            net.restart_node(alice);
        }
    }
    assert_eq!(net.result(&handle), Some(Ok(7 * size)));
}
