//! Upgrading flow code while flows are in flight, on the MockNetwork: old
//! and new code of one flow registered side by side (each checkpoint
//! resumes on the code that wrote it, new starts run the new code); a
//! checkpoint the node has no code for is held in the hospital with a
//! reason that says so, and a node started again with that code frees and
//! finishes it on its own. State migrations move v1 checkpoints to v2 (and
//! on through v3): at load, at the restart that brings the migration, or
//! by an operator's retry; a migration that refuses or panics leaves the
//! flow held on v1 with the reason, and nothing is lost.

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

/// A later release: the quote is read as a `u64` too (another
/// fingerprint), and the result carries 3,000.
mod v3 {
    use super::*;
    #[flow(name = "upgrade.sell")]
    pub async fn sell(ctx: &mut FlowContext, peer: Party, n: u32) -> Result<u64, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&n)?;
        let quote: u64 = s.receive::<u64>().await?.validate(Ok)?;
        s.send(&quote)?;
        let done: u64 = s.receive::<u64>().await?.validate(Ok)?;
        Ok(done + 3_000)
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

/// The migration a v2 build ships: v1 and v2 suspend at the same two
/// points with the same live local (the session), so each v1 state maps
/// to the v2 state of the same name. A flow not started yet starts on v2.
fn v1_to_v2(old: v1::sell::Flow) -> Result<v2::sell::Flow, String> {
    use v1::sell::Flow as Old;
    use v2::sell::{Flow as New, FlowLocals};
    match old {
        Old::Start { peer, n } => Ok(v2::sell(peer, n)),
        Old::AwaitQuote { locals } => Ok(New::AwaitQuote {
            locals: FlowLocals { s: locals.s },
        }),
        Old::AwaitDone { locals } => Ok(New::AwaitDone {
            locals: FlowLocals { s: locals.s },
        }),
        Old::Done => Err("a finished flow has no checkpoint to migrate".into()),
    }
}

#[test]
fn held_flows_migrate_to_the_new_code_and_finish_on_it() {
    let (mut net, alice, _bob, handles) = sellers_in_flight(100);

    // The new build: v2 plus the migration; v1's code only as a type.
    net.unregister_flow::<v1::sell::Flow>(alice);
    net.register_migration::<v1::sell::Flow, v2::sell::Flow>(alice, v1_to_v2);
    let report = net.check_upgrade(alice).expect("the check runs");
    assert!(report.is_safe(), "{report}");
    assert_eq!(
        (report.resumed(), report.migrated(), report.refused()),
        (0, 100, 0),
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("total: resume 0, migrate 100, refused 0"),
        "{report}"
    );

    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.hospital(alice), vec![]);
    for (n, h) in handles.iter().enumerate() {
        assert_eq!(
            net.result(h),
            Some(Ok(3 * n as u64 + 2_000)),
            "flow {n} finished on v2"
        );
    }
    assert_eq!(net.flows_in_flight(alice), 0);
}

#[test]
fn flows_held_for_unknown_code_are_migrated_at_the_restart_that_brings_the_migration() {
    let (mut net, alice, _bob, handles) = sellers_in_flight(6);
    net.unregister_flow::<v1::sell::Flow>(alice);
    net.register_flow::<v2::sell::Flow>(alice);
    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.hospital(alice).len(), handles.len());
    let report = net.check_upgrade(alice).expect("the check runs");
    assert_eq!(report.refused(), handles.len() as u64, "{report}");

    net.register_migration::<v1::sell::Flow, v2::sell::Flow>(alice, v1_to_v2);
    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.hospital(alice), vec![]);
    for (n, h) in handles.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 2_000)));
    }
}

#[test]
fn a_refused_migration_holds_the_flow_with_its_reason_and_loses_nothing() {
    let (mut net, alice, _bob, handles) = sellers_in_flight(10);
    let states: std::collections::BTreeMap<String, String> = net
        .dump(alice)
        .into_iter()
        .map(|d| (d.run_id, d.state))
        .collect();

    // This migration refuses the flows already past their quote.
    net.unregister_flow::<v1::sell::Flow>(alice);
    net.register_migration::<v1::sell::Flow, v2::sell::Flow>(alice, |old| match old {
        v1::sell::Flow::AwaitDone { .. } => Err("a quoted sale cannot move yet".into()),
        other => v1_to_v2(other),
    });
    let report = net.check_upgrade(alice).expect("the check runs");
    assert!(!report.is_safe());
    assert_eq!((report.migrated(), report.refused()), (5, 5), "{report}");
    assert!(
        report.to_string().contains("a quoted sale cannot move yet"),
        "{report}"
    );

    net.restart_node(alice);
    net.run_network();
    let hospital = net.hospital(alice);
    assert_eq!(hospital.len(), 5, "{hospital:?}");
    for h in &hospital {
        assert_eq!(states[&h.run_id.to_string()], "AwaitDone");
        assert!(
            h.error
                .contains("refused the checkpoint: a quoted sale cannot move yet"),
            "{}",
            h.error
        );
        assert!(h.error.contains("upgrade.sell"), "{}", h.error);
    }
    // The others moved to v2 (the buyers of odd sellers sleep before their
    // last answer, so the even ones are done and the odd ones wait).
    for (n, h) in handles.iter().enumerate() {
        let expected = (n % 2 == 0).then_some(Ok(3 * n as u64 + 2_000));
        assert_eq!(net.result(h), expected, "flow {n}");
    }
    // Still held, still on v1, after another restart.
    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.hospital(alice).len(), 5);
    for d in net.dump(alice) {
        assert_eq!(d.state, "AwaitDone");
    }

    // A fixed migration, on the running node: an operator's retry moves
    // each held flow to v2, and it finishes there.
    net.register_migration::<v1::sell::Flow, v2::sell::Flow>(alice, v1_to_v2);
    for h in net.hospital(alice) {
        net.retry_flow(alice, h.run_id).expect("the flow is held");
    }
    net.run_network();
    assert_eq!(net.hospital(alice), vec![]);
    for (n, h) in handles.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 2_000)), "flow {n}");
    }
    assert_eq!(net.flows_in_flight(alice), 0);
}

#[test]
fn migrations_chain_and_take_precedence_over_old_code_registered_beside_them() {
    let (mut net, alice, _bob, handles) = sellers_in_flight(10);
    // v1 stays registered (it was when the flows started); the migrations
    // still move every v1 checkpoint, through v2, to v3.
    net.register_migration::<v1::sell::Flow, v2::sell::Flow>(alice, v1_to_v2);
    net.register_migration::<v2::sell::Flow, v3::sell::Flow>(alice, |old| {
        use v2::sell::Flow as Old;
        use v3::sell::{Flow as New, FlowLocals};
        match old {
            Old::Start { peer, n } => Ok(v3::sell(peer, n)),
            Old::AwaitQuote { locals } => Ok(New::AwaitQuote {
                locals: FlowLocals { s: locals.s },
            }),
            Old::AwaitDone { locals } => Ok(New::AwaitDone {
                locals: FlowLocals { s: locals.s },
            }),
            Old::Done => Err("finished".into()),
        }
    });
    let report = net.check_upgrade(alice).expect("the check runs");
    assert_eq!((report.resumed(), report.migrated()), (0, 10), "{report}");
    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.hospital(alice), vec![]);
    for (n, h) in handles.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 3_000)), "flow {n}");
    }
}

#[test]
fn a_migration_that_panics_holds_the_flows_like_a_refusal() {
    let (mut net, alice, _bob, handles) = sellers_in_flight(4);
    net.unregister_flow::<v1::sell::Flow>(alice);
    net.register_migration::<v1::sell::Flow, v2::sell::Flow>(alice, |_old| {
        panic!("this migration is broken")
    });
    let report = net.check_upgrade(alice).expect("the check runs");
    assert_eq!(report.refused(), 4, "{report}");
    net.restart_node(alice);
    net.run_network();
    let hospital = net.hospital(alice);
    assert_eq!(hospital.len(), 4, "{hospital:?}");
    for h in &hospital {
        assert!(
            h.error
                .contains("the migration panicked: this migration is broken"),
            "{}",
            h.error
        );
    }
    for h in &handles {
        assert_eq!(net.result(h), None);
    }
    net.register_migration::<v1::sell::Flow, v2::sell::Flow>(alice, v1_to_v2);
    net.restart_node(alice);
    net.run_network();
    for (n, h) in handles.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 2_000)), "flow {n}");
    }
}

#[test]
fn a_migration_by_fingerprint_reads_the_old_state_with_the_type_it_is_given() {
    let (mut net, alice, _bob, handles) = sellers_in_flight(6);
    // Registered on the running node, from the NAME, VERSION and
    // fingerprint the checkpoints carry; the next event of each flow
    // migrates it.
    net.node_core(alice)
        .registry_mut()
        .register_migration_from_fingerprint::<v1::sell::Flow, v2::sell::Flow>(
            "upgrade.sell",
            1,
            <v1::sell::Flow as Flow>::fingerprint(),
            v1_to_v2,
        );
    net.run_network();
    assert_eq!(net.hospital(alice), vec![]);
    for (n, h) in handles.iter().enumerate() {
        assert_eq!(net.result(h), Some(Ok(3 * n as u64 + 2_000)), "flow {n}");
    }
}
