//! The contract's ping/pong on `MockNetwork` (hand-written state machines),
//! including a restart of either side after every single delivery.

mod mock_support;

use flow_runtime::testing::MockNetwork;
use mock_support::{Ping, ping, pong};

#[test]
fn ping_pong_ten_rounds_sums_the_echoes() {
    let mut net = MockNetwork::new(1);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<Ping, _>(bob, pong);
    let handle = net.start_flow(alice, ping(net.party(bob), 10));
    assert_eq!(net.result(&handle), None);
    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(45)));
    assert_eq!(net.result(&handle), Some(Ok(45)), "readable again");
    assert_eq!(net.flows_in_flight(alice), 0);
    assert_eq!(
        net.flows_in_flight(bob),
        0,
        "pong ended when ping's session ended"
    );
}

#[test]
fn result_survives_a_restart_of_the_initiator() {
    let mut net = MockNetwork::new(2);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<Ping, _>(bob, pong);
    let handle = net.start_flow(alice, ping(net.party(bob), 3));
    net.run_network();
    net.restart_node(alice);
    assert_eq!(net.result(&handle), Some(Ok(3)));
}

#[test]
fn flow_started_then_crashed_before_its_first_step_still_runs() {
    let mut net = MockNetwork::new(3);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<Ping, _>(bob, pong);
    let handle = net.start_flow(alice, ping(net.party(bob), 4));
    net.restart_node(alice);
    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(6)));
}

fn restart_after_every_delivery(restart_alice: bool, restart_bob: bool) {
    let rounds = 100;
    let mut net = MockNetwork::new(4);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<Ping, _>(bob, pong);
    let handle = net.start_flow(alice, ping(net.party(bob), rounds));
    let mut steps = 0;
    while net.step() {
        steps += 1;
        if restart_alice {
            net.restart_node(alice);
        }
        if restart_bob {
            net.restart_node(bob);
        }
        assert!(steps < 100_000, "no progress");
    }
    assert_eq!(
        net.result(&handle),
        Some(Ok(u64::from(rounds * (rounds - 1) / 2)))
    );
    assert!(net.stats().restarts >= steps);
    assert_eq!(net.flows_in_flight(alice), 0);
    assert_eq!(net.flows_in_flight(bob), 0);
}

#[test]
fn hundred_round_ping_survives_initiator_restart_after_every_delivery() {
    restart_after_every_delivery(true, false);
}

#[test]
fn hundred_round_ping_survives_responder_restart_after_every_delivery() {
    restart_after_every_delivery(false, true);
}

#[test]
fn hundred_round_ping_survives_both_restarting_after_every_delivery() {
    restart_after_every_delivery(true, true);
}

#[test]
fn progress_is_observable_and_ends_done() {
    let mut net = MockNetwork::new(5);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<Ping, _>(bob, pong);
    let handle = net.start_flow(alice, ping(net.party(bob), 3));
    net.run_network();
    let seen: Vec<Vec<String>> = handle.progress().collect();
    assert_eq!(
        seen,
        vec![
            vec!["round 0".to_owned()],
            vec!["round 1".to_owned()],
            vec!["round 2".to_owned()],
            vec!["Done".to_owned()],
        ]
    );
}
