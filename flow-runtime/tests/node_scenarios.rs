//! What the node promises (exactly-once delivery, errors and panics reaching
//! the counterparty, sleep across restarts, the hospital, draining, client
//! ids, dumps, service writes), one test each, on `MockNetwork` with
//! hand-written scripted flows (see `mock_support`).

mod mock_support;

use flow_runtime::prelude::*;
use flow_runtime::testing::{Faults, MockNetwork, NodeId};
use flow_runtime::{Event, Step};
use mock_support::*;

fn net2(seed: u64) -> (MockNetwork, NodeId, NodeId) {
    let mut net = MockNetwork::new(seed);
    let a = net.create_node("Alice");
    let b = net.create_node("Bob");
    (net, a, b)
}

fn responder_outcomes(net: &MockNetwork, node: NodeId) -> Vec<Result<Vec<u8>, FlowError>> {
    net.finished(node).into_iter().map(|f| f.outcome).collect()
}

fn err_of<T: std::fmt::Debug>(r: Option<Result<T, FlowError>>) -> FlowError {
    match r {
        Some(Err(e)) => e,
        other => panic!("expected a flow error, got {other:?}"),
    }
}

#[test]
fn duplicated_and_reordered_deliveries_are_processed_once() {
    for seed in 0..5 {
        let (mut net, a, b) = net2(100 + seed);
        net.register_responder::<Ping, _>(b, pong);
        net.set_faults(Faults {
            duplicate: 0.4,
            reorder: 0.5,
            ..Faults::default()
        });
        let h1 = net.start_flow(a, ping(net.party(b), 30));
        let h2 = net.start_flow(a, ping(net.party(b), 30));
        net.run_network();
        // A duplicate processed twice would make pong echo twice, and ping
        // would see a wrong echo.
        assert_eq!(net.result(&h1), Some(Ok(435)), "seed {seed}");
        assert_eq!(net.result(&h2), Some(Ok(435)), "seed {seed}");
        assert!(net.stats().duplicated > 0);
        assert_eq!(net.flows_in_flight(b), 0);
    }
}

#[test]
fn dropped_deliveries_are_redelivered() {
    let (mut net, a, b) = net2(7);
    net.register_responder::<Ping, _>(b, pong);
    net.set_faults(Faults {
        drop: 0.3,
        ..Faults::default()
    });
    let h = net.start_flow(a, ping(net.party(b), 25));
    net.run_network();
    assert_eq!(net.result(&h), Some(Ok(300)));
    assert!(net.stats().dropped > 0 && net.stats().redeliveries > 0);
}

#[test]
fn flow_error_propagates_from_initiator_to_responder() {
    let (mut net, a, b) = net2(1);
    net.register_responder::<Script<0>, _>(b, responder::<1>(vec![Op::Receive, Op::Receive]));
    let h = net.start_flow(
        a,
        script::<0>(vec![
            Op::Initiate(net.party(b)),
            Op::Send(1),
            Op::Fail("nope".into()),
        ]),
    );
    net.run_network();
    let e = err_of(net.result(&h));
    assert_eq!((e.kind(), e.message()), (FlowErrorKind::Flow, "nope"));
    let seen = responder_outcomes(&net, b);
    assert_eq!(seen.len(), 1);
    let e = seen[0].clone().unwrap_err();
    assert_eq!((e.kind(), e.message()), (FlowErrorKind::Flow, "nope"));
}

#[test]
fn flow_error_propagates_from_responder_to_initiator() {
    let (mut net, a, b) = net2(2);
    net.register_responder::<Script<0>, _>(
        b,
        responder::<1>(vec![Op::Receive, Op::Fail("bad amount".into())]),
    );
    let h = net.start_flow(
        a,
        script::<0>(vec![Op::Initiate(net.party(b)), Op::Send(1), Op::Receive]),
    );
    net.run_network();
    let e = err_of(net.result(&h));
    assert_eq!((e.kind(), e.message()), (FlowErrorKind::Flow, "bad amount"));
}

#[test]
fn panic_in_a_responder_gives_the_initiator_a_generic_error() {
    let (mut net, a, b) = net2(3);
    net.register_responder::<Script<0>, _>(
        b,
        responder::<1>(vec![Op::Receive, Op::Panic("secret detail".into())]),
    );
    let h = net.start_flow(
        a,
        script::<0>(vec![Op::Initiate(net.party(b)), Op::Send(1), Op::Receive]),
    );
    net.run_network();
    let e = err_of(net.result(&h));
    assert_eq!(e.kind(), FlowErrorKind::CounterpartyEnded);
    assert!(!e.message().contains("secret"), "details leaked: {e}");
    assert_eq!(net.flows_in_flight(b), 0, "the panicking flow ended");
}

#[test]
fn panic_in_an_initiator_ends_it_and_tells_the_responder() {
    let (mut net, a, b) = net2(4);
    net.register_responder::<Script<0>, _>(
        b,
        responder::<1>(vec![Op::Receive, Op::Send(2), Op::Receive]),
    );
    let h = net.start_flow(
        a,
        script::<0>(vec![
            Op::Initiate(net.party(b)),
            Op::Send(1),
            Op::Receive,
            Op::Panic("kaboom".into()),
        ]),
    );
    net.run_network();
    let e = err_of(net.result(&h));
    assert_eq!(e.kind(), FlowErrorKind::Internal);
    assert!(
        e.message().contains("panicked") && e.message().contains("kaboom"),
        "{e}"
    );
    let seen = responder_outcomes(&net, b);
    assert_eq!(
        seen[0].clone().unwrap_err(),
        FlowError::counterparty_ended()
    );
}

#[test]
fn unknown_responder_fails_the_initiator_naming_the_flow() {
    let (mut net, a, b) = net2(5);
    let h = net.start_flow(
        a,
        script::<0>(vec![Op::Initiate(net.party(b)), Op::Send(1), Op::Receive]),
    );
    net.run_network();
    let e = err_of(net.result(&h));
    assert_eq!(e.kind(), FlowErrorKind::UnknownFlow);
    assert!(
        e.message().contains("script::a") && e.message().contains("Bob"),
        "{e}"
    );
    assert_eq!(net.flows_in_flight(b), 0);
    assert_eq!(net.flows_in_flight(a), 0);
}

#[test]
fn wrong_message_type_is_a_clear_error_on_both_sides() {
    let (mut net, a, b) = net2(6);
    net.register_responder::<Script<0>, _>(b, responder::<1>(vec![Op::Receive, Op::Send(2)]));
    let h = net.start_flow(
        a,
        script::<0>(vec![
            Op::Initiate(net.party(b)),
            Op::SendText("hello".into()),
            Op::Receive,
        ]),
    );
    net.run_network();
    let receiver = responder_outcomes(&net, b)[0].clone().unwrap_err();
    assert_eq!(receiver.kind(), FlowErrorKind::TypeMismatch);
    assert!(
        receiver.message().contains("String") && receiver.message().contains("u32"),
        "{receiver}"
    );
    let sender = err_of(net.result(&h));
    assert_eq!(sender, receiver, "the sender is told the same error");
}

#[test]
fn session_ended_while_the_other_side_waits_fails_its_receive() {
    let (mut net, a, b) = net2(7);
    // Bob's responder returns normally without replying.
    net.register_responder::<Script<0>, _>(b, responder::<1>(vec![Op::Receive]));
    let h = net.start_flow(
        a,
        script::<0>(vec![Op::Initiate(net.party(b)), Op::Send(1), Op::Receive]),
    );
    net.run_network();
    assert_eq!(err_of(net.result(&h)), FlowError::counterparty_ended());
}

#[test]
fn a_parent_catches_a_sub_flow_error_and_retries() {
    let (mut net, a, b) = net2(8);
    net.install_services(b, |s| s.insert(FailBudget(1)));
    net.register_responder::<Script<9>, _>(
        b,
        responder::<2>(vec![
            Op::Receive,
            Op::FailWhileBudget("not yet".into()),
            Op::Send(5),
        ]),
    );
    let child = vec![Op::Initiate(net.party(b)), Op::Send(1), Op::Receive];
    let h = net.start_flow(
        a,
        script::<0>(vec![
            Op::Sub {
                child: child.clone(),
                catch: true,
            },
            Op::Sub {
                child,
                catch: false,
            },
        ]),
    );
    net.run_network();
    assert_eq!(net.result(&h), Some(Ok(5)));
    let outcomes = responder_outcomes(&net, b);
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].clone().unwrap_err().message(), "not yet");
}

#[test]
fn sleep_survives_a_restart() {
    let (mut net, a, _) = net2(9);
    let h = net.start_flow(a, script::<0>(vec![Op::SleepMs(3_600_000), Op::SleepMs(1)]));
    assert!(net.step(), "first step runs and sets the timer");
    net.restart_node(a);
    assert_eq!(net.result(&h), None);
    net.run_network();
    assert_eq!(net.result(&h), Some(Ok(0)));
    assert!(net.now().0 >= 3_600_001);
}

#[test]
fn ten_thousand_concurrent_flows_on_two_nodes() {
    let (mut net, a, b) = net2(10);
    net.register_responder::<Ping, _>(b, pong);
    net.register_responder::<Ping, _>(a, pong);
    let mut handles = Vec::new();
    // All 10,000 are started (and committed) before any of them runs.
    for i in 0..5_000u32 {
        handles.push(net.start_flow(a, ping(net.party(b), 1 + i % 2)));
        handles.push(net.start_flow(b, ping(net.party(a), 1)));
    }
    net.run_network();
    for (i, h) in handles.iter().enumerate() {
        let rounds = if i % 2 == 0 {
            1 + (i / 2) as u64 % 2
        } else {
            1
        };
        assert_eq!(
            net.result(h),
            Some(Ok(rounds * (rounds - 1) / 2)),
            "flow {i}"
        );
    }
    assert_eq!(net.flows_in_flight(a), 0);
    assert_eq!(net.flows_in_flight(b), 0);
    let pongs = [a, b]
        .iter()
        .flat_map(|n| net.finished(*n))
        .filter(|f| f.flow == <Pong as Flow>::NAME)
        .count();
    assert_eq!(pongs, 10_000, "one responder each");
}

#[test]
fn transient_failures_are_retried_with_backoff() {
    let (mut net, a, _) = net2(11);
    net.install_services(a, |s| s.insert(Flaky(2)));
    let h = net.start_flow(
        a,
        script::<0>(vec![Op::Progress("flaky".into()), Op::Flaky]),
    );
    net.run_network();
    assert_eq!(net.result(&h), Some(Ok(0)));
    // Two retries: after 1 s and after 2 s more.
    assert_eq!(net.now().0, 3_000);
    assert!(net.hospital(a).is_empty());
}

#[test]
fn hospital_keeps_a_persistent_failure_for_an_operator_retry() {
    let (mut net, a, _) = net2(12);
    net.install_services(a, |s| s.insert(Flaky(100)));
    let h = net.start_flow(a, script::<0>(vec![Op::Flaky]));
    net.run_network();
    assert_eq!(net.result(&h), None, "kept, not ended");
    let kept = net.hospital(a);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].run_id, h.run_id());
    assert_eq!(kept[0].retry_at, None, "waits for an operator");
    assert_eq!(kept[0].attempts, 4, "first try + 3 automatic retries");
    assert!(kept[0].error.contains("flaky service unavailable"));
    // The operator fixes the service and retries.
    if let Some(f) = net.node_core(a).services().get_mut::<Flaky>() {
        f.0 = 0;
    }
    net.retry_flow(a, h.run_id()).expect("retry");
    net.run_network();
    assert_eq!(net.result(&h), Some(Ok(0)));
    assert!(net.hospital(a).is_empty());
}

#[test]
fn killing_a_flow_tells_its_counterparty_and_completes_its_handle() {
    let (mut net, a, b) = net2(13);
    net.register_responder::<Script<0>, _>(b, responder::<1>(vec![Op::Receive, Op::Receive]));
    let h = net.start_flow(
        a,
        script::<0>(vec![
            Op::Initiate(net.party(b)),
            Op::Send(1),
            Op::SleepMs(10_000_000),
        ]),
    );
    for _ in 0..4 {
        net.step();
    }
    assert_eq!(net.flows_in_flight(a), 1);
    net.kill_flow(a, h.run_id()).expect("kill");
    let e = err_of(net.result(&h));
    assert_eq!(e.kind(), FlowErrorKind::Killed);
    net.run_network();
    assert_eq!(net.flows_in_flight(a), 0);
    let told = responder_outcomes(&net, b)[0].clone().unwrap_err();
    assert_eq!(told.kind(), FlowErrorKind::Killed);
    assert!(net.kill_flow(a, h.run_id()).is_err(), "already gone");
}

#[test]
fn draining_refuses_new_flows_and_sessions_and_reports_when_empty() {
    let (mut net, a, b) = net2(14);
    net.register_responder::<Ping, _>(b, pong);
    net.register_responder::<Ping, _>(a, pong);
    let in_flight = net.start_flow(a, ping(net.party(b), 5));
    net.step();
    net.step();
    net.set_draining(a, true);
    // New flows from outside...
    let refused = net.start_flow(a, ping(net.party(b), 1));
    assert_eq!(err_of(net.result(&refused)).kind(), FlowErrorKind::Refused);
    // ...new sessions from peers...
    let from_bob = net.start_flow(b, ping(net.party(a), 1));
    net.run_network();
    assert_eq!(err_of(net.result(&from_bob)).kind(), FlowErrorKind::Refused);
    // ...and flows started inside the node are refused; the one in flight finishes.
    assert_eq!(net.result(&in_flight), Some(Ok(10)));
    assert_eq!(net.flows_in_flight(a), 0, "drained");
    net.set_draining(a, false);
    let inside = net.start_flow(a, script::<0>(vec![Op::StartFlow]));
    net.set_draining(a, true);
    net.run_network();
    assert_eq!(err_of(net.result(&inside)).kind(), FlowErrorKind::Refused);
    net.set_draining(a, false);
    let inside = net.start_flow(a, script::<0>(vec![Op::StartFlow]));
    net.run_network();
    assert_eq!(net.result(&inside), Some(Ok(0)));
}

#[test]
fn corrupt_checkpoint_goes_to_the_hospital_and_others_keep_running() {
    let (mut net, a, b) = net2(15);
    net.register_responder::<Ping, _>(b, pong);
    let victim = net.start_flow(a, script::<0>(vec![Op::SleepMs(1_000)]));
    net.step();
    net.replace_checkpoint_state(a, victim.run_id(), vec![0xc1, 0xff, 0x00])
        .expect("overwrite");
    let other = net.start_flow(a, ping(net.party(b), 3));
    net.run_network();
    assert_eq!(net.result(&other), Some(Ok(3)));
    assert_eq!(net.result(&victim), None);
    let kept = net.hospital(a);
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].error.contains("does not decode"),
        "{}",
        kept[0].error
    );
    net.kill_flow(a, victim.run_id()).expect("kill");
    assert_eq!(err_of(net.result(&victim)).kind(), FlowErrorKind::Killed);
}

/// `Script<0>` with another state shape: same NAME, other FINGERPRINT.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ScriptV2(Script<0>);

impl Flow for ScriptV2 {
    type Output = u64;
    const NAME: &'static str = <Script<0> as Flow>::NAME;
    const VERSION: u32 = 1;
    const FINGERPRINT: u64 = 0xdead_beef;
    fn resume(&mut self, ctx: &mut FlowContext, event: Event) -> Step<u64> {
        self.0.resume(ctx, event)
    }
    fn state_name(&self) -> &'static str {
        self.0.state_name()
    }
}

#[test]
fn fingerprint_mismatch_goes_to_the_hospital_with_a_clear_error() {
    let (mut net, a, b) = net2(16);
    net.register_responder::<Ping, _>(b, pong);
    let old = net.start_flow(a, script::<0>(vec![Op::SleepMs(1_000)]));
    net.step();
    // New code deployed (without the old), then the node restarts.
    net.unregister_flow::<Script<0>>(a);
    net.register_flow::<ScriptV2>(a);
    net.restart_node(a);
    let other = net.start_flow(a, ping(net.party(b), 2));
    net.run_network();
    assert_eq!(net.result(&other), Some(Ok(1)));
    assert_eq!(net.result(&old), None);
    let kept = net.hospital(a);
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].error.contains("fingerprint") && kept[0].error.contains("script::a"),
        "{}",
        kept[0].error
    );
    // Deploying the old code back and retrying finishes it.
    net.register_flow::<Script<0>>(a);
    net.retry_flow(a, old.run_id()).expect("retry");
    net.run_network();
    assert_eq!(net.result(&old), Some(Ok(0)));
}

#[test]
fn client_supplied_id_starts_once_and_reattaches_after_restart() {
    let (mut net, a, b) = net2(17);
    net.register_responder::<Ping, _>(b, pong);
    let first = net.start_flow_with_client_id(a, "order-1", ping(net.party(b), 4));
    let second = net.start_flow_with_client_id(a, "order-1", ping(net.party(b), 4));
    assert_eq!(first.run_id(), second.run_id());
    net.run_network();
    assert_eq!(net.finished(b).len(), 1, "ran once");
    net.restart_node(a);
    let again: flow_runtime::FlowHandle<Ping> = net.reattach(a, "order-1").expect("kept");
    assert_eq!(net.result(&again), Some(Ok(6)));
    let third = net.start_flow_with_client_id(a, "order-1", ping(net.party(b), 4));
    assert_eq!(
        third.run_id(),
        first.run_id(),
        "still deduplicated after the restart"
    );
    assert!(net.remove_result(&again));
    assert_eq!(net.result(&again), None);
    assert!(net.reattach::<Ping>(a, "order-1").is_none());
}

#[test]
fn checkpoint_dump_shows_what_each_flow_waits_on() {
    let (mut net, a, b) = net2(18);
    net.register_responder::<Script<0>, _>(b, responder::<1>(vec![Op::Receive, Op::Receive]));
    let _h = net.start_flow(
        a,
        script::<0>(vec![
            Op::Progress("talking".into()),
            Op::Initiate(net.party(b)),
            Op::Send(1),
            Op::Receive,
        ]),
    );
    net.run_network();
    net.advance_clock(std::time::Duration::from_secs(5));
    let json = net.dump_json(a);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let f = &v[0];
    assert_eq!(f["flow"], "script::a");
    assert_eq!(f["state"], "Waiting");
    assert!(
        f["waiting_on"]
            .as_str()
            .unwrap()
            .contains("message on session"),
        "{json}"
    );
    assert_eq!(f["waiting_for_ms"], 5_000);
    assert_eq!(f["progress"][0], "talking");
    assert_eq!(f["sessions"][0]["counterparty"], "Bob");
    assert_eq!(f["hospital"], serde_json::Value::Null);
    // And the long-wait warning finds it once past the limit.
    assert!(net.warn_long_waits(a).is_empty());
    net.advance_clock(std::time::Duration::from_secs(3600));
    assert_eq!(net.warn_long_waits(a).len(), 1);
}

#[test]
fn service_writes_commit_with_the_step_and_vanish_with_a_failed_one() {
    let (mut net, a, _) = net2(19);
    let ok = net.start_flow(
        a,
        script::<0>(vec![Op::Write("k1".into(), "v1".into()), Op::SleepMs(10)]),
    );
    let bad = net.start_flow(
        a,
        script::<0>(vec![
            Op::Write("k2".into(), "v2".into()),
            Op::Panic("no".into()),
        ]),
    );
    net.run_network();
    assert_eq!(net.result(&ok), Some(Ok(0)));
    assert!(matches!(net.result(&bad), Some(Err(_))));
    net.restart_node(a);
    let w = net.node_core(a).service_tables().expect("installed");
    assert_eq!(w.get("test", b"k1").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(w.get("test", b"k2").unwrap(), None);
}
