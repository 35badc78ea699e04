use flow_runtime::testing::MockNetwork;
use hello_flows::{ping, pong};

#[test]
fn ping_adds_up_the_echoes() {
    let mut net = MockNetwork::new(42);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, pong);

    let handle = net.start_flow(alice, ping(net.party(bob), 10));
    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(45)));
}

#[test]
fn a_crashed_responder_carries_on_from_its_checkpoint() {
    let mut net = MockNetwork::new(7);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ping::Flow, _>(bob, pong);

    let handle = net.start_flow(alice, ping(net.party(bob), 10));
    for _ in 0..5 {
        net.step();
    }
    net.restart_node(bob); // drops Bob's memory; reopens his database
    net.run_network();
    assert_eq!(net.result(&handle), Some(Ok(45)));
}
