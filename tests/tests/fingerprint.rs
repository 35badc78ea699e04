//! The fingerprint sees every edit that changes what a checkpoint means, and
//! no edit that does not.
//!
//! Each edit the fingerprint must see is a pair of modules, `v1` and `v2`,
//! holding the same flow (same pinned `NAME`) before and after the edit:
//! their fingerprints must differ, and on the mock network a node that
//! checkpointed the flow with `v1` and restarts running `v2` must refuse the
//! checkpoint (the flow goes to the hospital, nothing of `v2` runs). The
//! cosmetic pairs (comments, whitespace, line numbers, code that does not
//! suspend) must keep both the constant and the full fingerprint.

use flow_runtime::prelude::*;
use flow_runtime::testing::MockNetwork;
use std::time::Duration;

/// The peer of every flow here: waits an hour (so the initiator is
/// checkpointed, waiting, when the test swaps its code), then answers 7.
#[flow]
pub async fn replier(ctx: &mut FlowContext, s: FlowSession) -> Result<(), FlowError> {
    let _hello: u32 = s.receive::<u32>().await?.validate(Ok)?;
    ctx.sleep(Duration::from_secs(3600)).await;
    s.send(&7u32)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Edit 1: the branches of an `if` swapped with its condition negated. The
// suspension points keep their names in source order (`AwaitX`, `AwaitX2`)
// but not their places.

mod branches_v1 {
    use super::*;
    #[flow(name = "fingerprint.branches")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&1u32)?;
        if flag {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(x + 100)
        } else {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(x + 200)
        }
    }
}

mod branches_v2 {
    use super::*;
    #[flow(name = "fingerprint.branches")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&1u32)?;
        if !flag {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(x + 200)
        } else {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(x + 100)
        }
    }
}

// ---------------------------------------------------------------------------
// Edit 2: a stored user struct's fields reordered. Only the serde shape,
// traced at run time, sees it: the macro's constant cannot.

mod pair_v1 {
    use super::*;
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Pair {
        pub price: u32,
        pub qty: u32,
    }
    #[flow(name = "fingerprint.pair")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&1u32)?;
        let p: Pair = Pair {
            price: 10,
            qty: u32::from(flag),
        };
        let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(p.price * 1000 + p.qty + n)
    }
}

mod pair_v2 {
    use super::*;
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Pair {
        pub qty: u32,
        pub price: u32,
    }
    #[flow(name = "fingerprint.pair")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&1u32)?;
        let p: Pair = Pair {
            price: 10,
            qty: u32::from(flag),
        };
        let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(p.price * 1000 + p.qty + n)
    }
}

// ---------------------------------------------------------------------------
// Edit 3: under one `#[state(Wait)]` label, a receive becomes a sleep.

mod op_v1 {
    use super::*;
    #[flow(name = "fingerprint.op")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&u32::from(flag))?;
        #[state(Wait)]
        let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(n)
    }
}

mod op_v2 {
    use super::*;
    #[flow(name = "fingerprint.op")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&u32::from(flag))?;
        #[state(Wait)]
        ctx.sleep(Duration::from_secs(1)).await;
        Ok(0)
    }
}

// ---------------------------------------------------------------------------
// Edit 4: a receive's message type changes.

mod message_v1 {
    use super::*;
    #[flow(name = "fingerprint.message")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&u32::from(flag))?;
        let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
        Ok(n)
    }
}

mod message_v2 {
    use super::*;
    #[flow(name = "fingerprint.message")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        s.send(&u32::from(flag))?;
        let n: String = s.receive::<String>().await?.validate(Ok)?;
        Ok(n.len() as u32)
    }
}

// ---------------------------------------------------------------------------
// Cosmetic edits of `branches_v1`: comments, whitespace and line numbers;
// then code added and changed that does not suspend and is not stored.

mod cosmetic_layout {
    use super::*;

    /// A doc comment the original does not have.
    #[flow(name = "fingerprint.branches")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        // A comment.
        let s = ctx.initiate_flow(&peer);

        s.send(&1u32)?;
        if flag {
            /* another comment */
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(x + 100)
        } else {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(x + 200)
        }
    }
}

mod cosmetic_code {
    use super::*;
    #[flow(name = "fingerprint.branches")]
    pub async fn f(ctx: &mut FlowContext, peer: Party, flag: bool) -> Result<u32, FlowError> {
        let s = ctx.initiate_flow(&peer);
        let greeting = u32::from(flag) | 1;
        s.send(&greeting)?;
        if flag {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            let bonus = 100;
            Ok(x + bonus)
        } else {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(x + 200)
        }
    }
}

// ---------------------------------------------------------------------------

macro_rules! fingerprints {
    ($m:ident) => {
        (
            <$m::f::Flow as Flow>::FINGERPRINT,
            <$m::f::Flow as Flow>::fingerprint(),
        )
    };
}

#[test]
fn the_branches_swapped_change_the_fingerprint() {
    let (c1, f1) = fingerprints!(branches_v1);
    let (c2, f2) = fingerprints!(branches_v2);
    assert_ne!(c1, c2);
    assert_ne!(f1, f2);
}

#[test]
fn a_stored_struct_with_reordered_fields_changes_the_full_fingerprint() {
    let (c1, f1) = fingerprints!(pair_v1);
    let (c2, f2) = fingerprints!(pair_v2);
    assert_eq!(c1, c2, "the macro cannot see inside `Pair`");
    assert_ne!(
        f1, f2,
        "the serde shape of `Pair` is part of the fingerprint"
    );
}

#[test]
fn a_receive_turned_sleep_under_one_label_changes_the_fingerprint() {
    let (c1, f1) = fingerprints!(op_v1);
    let (c2, f2) = fingerprints!(op_v2);
    assert_ne!(c1, c2);
    assert_ne!(f1, f2);
}

#[test]
fn a_new_message_type_changes_the_fingerprint() {
    let (c1, f1) = fingerprints!(message_v1);
    let (c2, f2) = fingerprints!(message_v2);
    assert_ne!(c1, c2);
    assert_ne!(f1, f2);
}

#[test]
fn comments_whitespace_and_lines_keep_the_fingerprint() {
    assert_eq!(fingerprints!(branches_v1), fingerprints!(cosmetic_layout));
}

#[test]
fn code_that_does_not_suspend_and_is_not_stored_keeps_the_fingerprint() {
    assert_eq!(fingerprints!(branches_v1), fingerprints!(cosmetic_code));
}

#[test]
fn the_states_of_these_flows_are_traced_not_named() {
    use flow_runtime::fingerprint::serde_shape;
    for shape in [
        serde_shape::<pair_v1::f::Flow>(),
        serde_shape::<branches_v1::f::Flow>(),
        serde_shape::<replier::Flow>(),
    ] {
        assert!(!shape.starts_with("untraceable"), "{shape}");
    }
    let pair = serde_shape::<pair_v1::f::Flow>();
    assert!(
        pair.contains("\"price\"") && pair.contains("\"qty\""),
        "{pair}"
    );
}

#[test]
fn the_full_fingerprint_is_computed_once_and_is_stable() {
    let a = <pair_v1::f::Flow as Flow>::fingerprint();
    let b = <pair_v1::f::Flow as Flow>::fingerprint();
    assert_eq!(a, b);
    assert_ne!(a, <pair_v1::f::Flow as Flow>::FINGERPRINT);
}

// ---------------------------------------------------------------------------
// End to end: checkpointed by v1, resumed by a node that now runs `next`.

/// Starts the flow `start` builds (given Bob) on Alice; it checkpoints
/// while waiting on Bob, who sleeps. When Bob's timer fires (the network
/// jumps its clock when idle), deploys `Next` instead of `V1` on Alice (same NAME),
/// restarts her and lets Bob's answer arrive. Returns the flow's result on Alice and the
/// errors in her hospital.
fn upgrade<V1: Flow, Next: Flow>(
    start: impl FnOnce(Party) -> V1,
) -> (Option<Result<V1::Output, FlowError>>, Vec<String>) {
    let mut net = MockNetwork::new(12);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<V1, _>(bob, replier);
    let handle = net.start_flow(alice, start(net.party(bob)));
    while net.stats().timer_jumps == 0 && net.step() {}
    assert!(net.result(&handle).is_none(), "v1 is waiting on Bob");
    net.unregister_flow::<V1>(alice);
    net.register_flow::<Next>(alice);
    net.restart_node(alice);
    net.run_network();
    let hospital = net.hospital(alice).into_iter().map(|h| h.error).collect();
    (net.result(&handle), hospital)
}

fn assert_refused(result: Option<Result<u32, FlowError>>, hospital: Vec<String>) {
    assert_eq!(result, None, "the v2 node must not run the v1 checkpoint");
    assert_eq!(hospital.len(), 1, "{hospital:?}");
    assert!(hospital[0].contains("fingerprint"), "{}", hospital[0]);
}

#[test]
fn the_same_code_or_a_cosmetic_edit_resumes_the_checkpoint() {
    // The control: the scenario finishes when nothing meaningful changed.
    let (result, hospital) =
        upgrade::<branches_v1::f::Flow, branches_v1::f::Flow>(|bob| branches_v1::f(bob, true));
    assert_eq!((result, hospital), (Some(Ok(107)), vec![]));
    let (result, hospital) =
        upgrade::<branches_v1::f::Flow, cosmetic_layout::f::Flow>(|bob| branches_v1::f(bob, true));
    assert_eq!((result, hospital), (Some(Ok(107)), vec![]));
    let (result, hospital) =
        upgrade::<pair_v1::f::Flow, pair_v1::f::Flow>(|bob| pair_v1::f(bob, true));
    assert_eq!((result, hospital), (Some(Ok(10_008)), vec![]));
}

#[test]
fn a_node_running_the_swapped_branches_refuses_the_old_checkpoint() {
    let (result, hospital) =
        upgrade::<branches_v1::f::Flow, branches_v2::f::Flow>(|bob| branches_v1::f(bob, true));
    assert_refused(result, hospital);
}

#[test]
fn a_node_running_the_reordered_struct_refuses_the_old_checkpoint() {
    let (result, hospital) =
        upgrade::<pair_v1::f::Flow, pair_v2::f::Flow>(|bob| pair_v1::f(bob, true));
    assert_refused(result, hospital);
}

#[test]
fn a_node_running_the_sleep_refuses_the_old_receive() {
    let (result, hospital) = upgrade::<op_v1::f::Flow, op_v2::f::Flow>(|bob| op_v1::f(bob, true));
    assert_refused(result, hospital);
}

#[test]
fn a_node_running_the_new_message_type_refuses_the_old_checkpoint() {
    let (result, hospital) =
        upgrade::<message_v1::f::Flow, message_v2::f::Flow>(|bob| message_v1::f(bob, true));
    assert_refused(result, hospital);
}
