//! Upgrading flow code while flows are in flight, on the MockNetwork: old
//! and new code of one flow registered side by side (each checkpoint
//! resumes on the code that wrote it, new starts run the new code); a
//! checkpoint the node has no code for is held in the hospital with a
//! reason that says so, and a node started again with that code frees and
//! finishes it on its own.

use flow_runtime::FlowHandle;
use flow_runtime::prelude::*;
use flow_runtime::testing::{MockNetwork, NodeId};
use std::time::Duration;

/// The buyer every seller talks to: answers the first message with twice
/// its number and the second with three times it. It sleeps an hour before
/// the first answer for even numbers and before the second for odd ones, so
/// that sellers are checkpointed in two different states while it sleeps.
#[flow]
pub async fn buyer(ctx: &mut FlowContext, s: FlowSession) -> Result<(), FlowError> {
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    if n.is_multiple_of(2) {
        ctx.sleep(Duration::from_secs(3600)).await;
    }
    s.send(&(n * 2))?;
    let _echo: u32 = s.receive::<u32>().await?.validate(Ok)?;
    if !n.is_multiple_of(2) {
        ctx.sleep(Duration::from_secs(3600)).await;
    }
    s.send(&(n * 3))?;
    Ok(())
}

/// The code as first deployed: its result carries 1,000 so a test can tell
/// which version finished a flow.
mod v1 {
    use super::*;
    #[flow(name = "upgrade.sell")]
    pub async fn sell(ctx: &mut FlowContext, peer: Party, n: u32) -> Result<u64, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&n)?;
        let quote: u32 = s.receive::<u32>().await?.validate(Ok)?;
        s.send(&quote)?;
        let done: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(u64::from(done) + 1_000)
    }
}

/// The new code: the last message is read as a `u64` (a change of meaning
/// the fingerprint sees), and the result carries 2,000.
mod v2 {
    use super::*;
    #[flow(name = "upgrade.sell")]
    pub async fn sell(ctx: &mut FlowContext, peer: Party, n: u32) -> Result<u64, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&n)?;
        let quote: u32 = s.receive::<u32>().await?.validate(Ok)?;
        s.send(&quote)?;
        let done: u64 = s.receive::<u64>().await?.validate(Ok)?;
        Ok(done + 2_000)
    }
}

/// Alice starts `count` sellers on v1 (numbers 0..count) and the network
/// runs until every buyer on Bob sleeps: the even sellers wait for their
/// quote, the odd ones for the final answer.
fn sellers_in_flight(count: u32) -> (MockNetwork, NodeId, NodeId, Vec<FlowHandle<v1::sell::Flow>>) {
    let mut net = MockNetwork::new(15);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<v1::sell::Flow, _>(bob, buyer);
    let handles = (0..count)
        .map(|n| net.start_flow(alice, v1::sell(net.party(bob), n)))
        .collect::<Vec<_>>();
    while net.stats().timer_jumps == 0 && net.step() {}
    for h in &handles {
        assert!(net.result(h).is_none(), "every seller waits on Bob");
    }
    let states: std::collections::BTreeSet<String> =
        net.dump(alice).into_iter().map(|d| d.state).collect();
    assert_eq!(states.len(), 2, "sellers wait in two states: {states:?}");
    (net, alice, bob, handles)
}

#[test]
fn held_flows_are_freed_when_the_node_restarts_with_their_code() {
    let (mut net, alice, _bob, handles) = sellers_in_flight(6);

    // Deploy only v2: every v1 checkpoint is held, and says why.
    net.unregister_flow::<v1::sell::Flow>(alice);
    net.register_flow::<v2::sell::Flow>(alice);
    net.restart_node(alice);
    net.run_network();
    let hospital = net.hospital(alice);
    assert_eq!(hospital.len(), handles.len(), "{hospital:?}");
    for h in &hospital {
        assert!(h.error.contains("upgrade.sell"), "{}", h.error);
        assert!(h.error.contains("fingerprint"), "{}", h.error);
        assert_eq!(h.retry_at, None, "held for an operator or new code");
    }
    for h in &handles {
        assert_eq!(net.result(h), None, "v2 must not run a v1 checkpoint");
    }

    // A restart with the same code keeps them held.
    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.hospital(alice).len(), handles.len());

    // Deploy v1 again, beside v2: the restart frees them, and they finish
    // on v1.
    net.register_flow::<v1::sell::Flow>(alice);
    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.hospital(alice), vec![]);
    for (n, h) in handles.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 1_000)));
    }
    assert_eq!(net.flows_in_flight(alice), 0);
}

#[test]
fn old_and_new_code_side_by_side_each_flow_finishes_on_its_own_version() {
    let (mut net, alice, bob, old) = sellers_in_flight(100);

    // The new build has v2 and keeps v1 (registered when the v1 flows were
    // started); new starts run v2.
    net.register_flow::<v2::sell::Flow>(alice);
    net.restart_node(alice);
    let bob = net.party(bob);
    let new: Vec<_> = (0..10)
        .map(|n| net.start_flow(alice, v2::sell(bob.clone(), n)))
        .collect();
    net.run_network();

    assert_eq!(net.hospital(alice), vec![]);
    for (n, h) in old.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 1_000)), "v1 flow {n}");
    }
    for (n, h) in new.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 2_000)), "v2 flow {n}");
    }
    assert_eq!(net.flows_in_flight(alice), 0);
}
